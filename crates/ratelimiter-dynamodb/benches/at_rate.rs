//! Keys at their own rate: DynamoDB calls per decision, and admissions
//! against the exact GCRA bound.
//!
//! `cargo bench -p ratelimiter-dynamodb --bench at_rate`
//!
//! The steady at-rate scenario: 40 connections heartbeat at their limit
//! (the seed's 2 a minute: one every 30 s), each interval jittered by up
//! to ±15%, through 4 containers (4 services, each with its own deny cache
//! and hints) on one table: each heartbeat goes to a container picked at
//! random, as Lambda does. Time is simulated (one `FakeClock`), the table
//! is real (dynoxide, release build, over loopback), so every call is a
//! real conditional `UpdateItem`.
//!
//! A client at its rate leaves its bucket's state at about "now", so each
//! arrival is a coin toss between the two write shapes (idle and busy),
//! and a wrong first shape costs a second call. The bench counts calls per
//! decision, and checks every key's admissions against the exact GCRA
//! bound: in any span of time `w`, at most `limit + ⌊w / T⌋` (one more
//! with a tolerance, the most it may give).

use std::time::Duration;

use ratelimiter::clock::FakeClock;
use ratelimiter::{Builder, Clock, Config, RateLimitService, Request};
use ratelimiter_dynamodb::DynamoDbStore;

mod common;

const KEYS: usize = 40;
const CONTAINERS: usize = 4;
/// Heartbeats per key.
const BEATS: usize = 150;
/// The heartbeat limit: 2 a minute, T = 30 s.
const LIMIT: u64 = 2;
const T: u64 = 30_000_000_000;
/// Each interval is T × (1 ± JITTER).
const JITTER: f64 = 0.15;

/// A small deterministic generator (xorshift64*): the same arrivals in
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Admissions of one key beyond the exact bound, over every span between
/// two of its admissions (`allowance` more tolerated).
fn beyond_bound(admitted: &[u64], allowance: u64) -> u64 {
    let mut worst = 0;
    for i in 0..admitted.len() {
        for j in i..admitted.len() {
            let count = (j - i + 1) as u64;
            let bound = LIMIT + (admitted[j] - admitted[i]) / T + allowance;
            worst = worst.max(count.saturating_sub(bound));
        }
    }
    worst
}

struct Row {
    decisions: u64,
    calls: u64,
    allowed: u64,
    beyond: u64,
}

/// One run of the scenario on the policy `beat` of `config`; `allowance`
/// is what its bound tolerates beyond exact (1 with a tolerance).
async fn run(endpoint: &str, config: &str, label: &str, seed: u64, allowance: u64) -> Row {
    let clock = FakeClock::at_secs(1_800_000_000);
    let mut containers: Vec<RateLimitService<DynamoDbStore, FakeClock>> = Vec::new();
    for _ in 0..CONTAINERS {
        let store = common::store(endpoint, Duration::from_secs(5)).await;
        let config = Config::from_file_text("limits.toml", config, |_| None).expect("a valid file");
        containers.push(
            Builder::from_config(config)
                .clock(clock.clone())
                .build(store),
        );
    }
    let policy = containers[0].policy_id("beat").expect("the bench's policy");
    let mut rng = Rng(seed);
    // Every key's next arrival, staggered over the first interval.
    let mut next: Vec<u64> = (0..KEYS)
        .map(|_| clock.now() + (rng.unit() * T as f64) as u64)
        .collect();
    let mut beats = vec![0usize; KEYS];
    let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); KEYS];
    let (mut decisions, mut calls, mut allowed) = (0, 0, 0);
    while let Some(key) = (0..KEYS)
        .filter(|&k| beats[k] < BEATS)
        .min_by_key(|&k| next[k])
    {
        let now = next[key];
        clock.set(now);
        let container = &containers[(rng.next() % CONTAINERS as u64) as usize];
        let id = format!("{label}-{key}");
        let verdict = container
            .decide(Request::from((policy, id.as_str())))
            .await
            .expect("the table answers");
        assert!(!verdict.is_degraded(), "{verdict:?}");
        decisions += 1;
        calls += u64::from(verdict.calls);
        if verdict.allowed() {
            allowed += 1;
            admitted[key].push(now);
        }
        beats[key] += 1;
        let jitter = 1.0 + JITTER * (2.0 * rng.unit() - 1.0);
        next[key] = now + (T as f64 * jitter) as u64;
    }
    let beyond = admitted.iter().map(|a| beyond_bound(a, allowance)).sum();
    Row {
        decisions,
        calls,
        allowed,
        beyond,
    }
}

fn main() {
    common::runtime().block_on(async {
        let endpoint = common::table().await;
        println!(
            "{KEYS} keys at their rate (2/min, ±{:.0}% jitter), {CONTAINERS} containers, {BEATS} heartbeats per key",
            JITTER * 100.0
        );
        println!(
            "{:<28} {:>9} {:>8} {:>14} {:>8} {:>14}",
            "policy", "decisions", "allowed", "calls/decision", "denied", "beyond bound"
        );
        let rows = [
            (
                "exact",
                "[policy.beat]\nkey = \"connection\"\nlimits = [\"2/min\"]\n",
                0,
            ),
            (
                "tolerance 9s (0.3 T)",
                "[policy.beat]\nkey = \"connection\"\nlimits = [\"2/min\"]\ntolerance = \"9s\"\n",
                1,
            ),
        ];
        for (round, (name, config, allowance)) in rows.iter().enumerate() {
            for seed in [1u64, 2, 3] {
                let label = format!("r{round}-s{seed}");
                let row = run(&endpoint, config, &label, seed, *allowance).await;
                println!(
                    "{:<28} {:>9} {:>8} {:>14.3} {:>8} {:>14}",
                    format!("{name}, seed {seed}"),
                    row.decisions,
                    row.allowed,
                    row.calls as f64 / row.decisions as f64,
                    row.decisions - row.allowed,
                    row.beyond
                );
            }
        }
    });
}
