//! One key past the per-item write ceiling: how many requests 4 limiters
//! admit together, against the exact bound, and how many writes the item
//! takes.
//!
//! `cargo bench -p ratelimiter-dynamodb --bench hot_key`
//!
//! A stand-in for DynamoDB's ceiling of about 1 000 writes a second per
//! item, scaled to what dynoxide serves on a small machine: the fault
//! proxy forwards at most `CEILING` requests a second naming the key and
//! answers the rest with `ThrottlingException`. 4 limiters (4 services,
//! each with its own client, deny cache and hints, as 4 Lambda containers)
//! decide on one tenant's key of `LIMIT`/s from 4 tasks each, as fast as
//! they can, for `WINDOW`. The exact GCRA bound over the window is the
//! burst plus what refills: `LIMIT × (1 + WINDOW)`. "Admitted" counts the
//! allowed verdicts of all 4; "writes/s" the requests on the key the proxy
//! forwarded (the item's writes), over the window.
//!
//! Each run is made three times: with the policy's `batch = "off"` (a
//! throttled key decided in each process at its own limits, as before
//! batches), with the default, `auto` (the key served from batches once
//! it is hot), and with `batch = 100` (from the first request). Each task
//! yields after each decision, as a server between requests does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratelimiter::{Builder, Config, Key, Kind, RateLimitService};
use ratelimiter_dynamodb::DynamoDbStore;

mod common;
use ratelimiter_testing::faults::{Fault, FaultProxy};

/// The policy's limit per second (also its burst).
const LIMIT: u64 = 600;
/// Writes per second the proxy lets through on the key.
const CEILING: usize = 300;
const LIMITERS: usize = 4;
const TASKS: usize = 4;
const WINDOW: Duration = Duration::from_secs(3);

struct Row {
    admitted: u64,
    decisions: u64,
    degraded: u64,
    forwarded: u64,
    throttled: u64,
}

async fn run(endpoint: &str, tenant: &str, batch: &str) -> Row {
    let proxy = FaultProxy::start(endpoint).await;
    let file =
        format!("[policy.hot]\nkey = \"tenant\"\nlimits = [\"{LIMIT}/s\"]\nbatch = {batch}\n");
    let mut limiters: Vec<Arc<RateLimitService<DynamoDbStore>>> = Vec::new();
    for _ in 0..LIMITERS {
        let store = common::store(proxy.endpoint(), Duration::from_millis(100)).await;
        let config = Config::from_file_text("limits.toml", &file, |_| None).expect("valid");
        limiters.push(Arc::new(Builder::from_config(config).build(store)));
    }
    let policy = limiters[0].policy_id("hot").expect("the bench's policy");
    let pk = Key::new(&Kind::new("tenant").expect("a kind"), tenant).to_string();
    proxy.set(Fault::CeilingKey {
        key: pk,
        per_sec: CEILING,
    });
    let (admitted, decisions, degraded) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in &limiters {
        for _ in 0..TASKS {
            let (limiter, admitted, decisions, degraded, tenant) = (
                limiter.clone(),
                admitted.clone(),
                decisions.clone(),
                degraded.clone(),
                tenant.to_owned(),
            );
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < WINDOW {
                    let verdict = limiter
                        .decide((policy, tenant.as_str()))
                        .await
                        .expect("a decision");
                    decisions.fetch_add(1, Ordering::Relaxed);
                    if verdict.allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    if verdict.is_degraded() {
                        degraded.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("a task");
    }
    Row {
        admitted: admitted.load(Ordering::Relaxed),
        decisions: decisions.load(Ordering::Relaxed),
        degraded: degraded.load(Ordering::Relaxed),
        forwarded: proxy.forwarded(),
        throttled: proxy.throttled(),
    }
}

fn main() {
    common::runtime().block_on(async {
        let endpoint = common::table().await;
        let bound = LIMIT * (1 + WINDOW.as_secs());
        println!(
            "one key of {LIMIT}/s, a ceiling of {CEILING} writes/s, {LIMITERS} limiters x {TASKS} tasks, {} s; exact bound {bound}",
            WINDOW.as_secs()
        );
        println!(
            "{:<6} {:<5} {:>9} {:>9} {:>10} {:>11} {:>9} {:>9} {:>10}",
            "run", "batch", "decisions", "admitted", "over bound", "utilisation", "degraded", "writes/s", "throttled"
        );
        for round in 1..=3 {
            for (i, batch) in ["\"off\"", "\"auto\"", "100"].into_iter().enumerate() {
                let row = run(&endpoint, &format!("acme-{i}-{round}"), batch).await;
                let batch = batch.trim_matches('"');
                println!(
                    "{round:<6} {batch:<5} {:>9} {:>9} {:>10} {:>10.0}% {:>9} {:>9.0} {:>10}",
                    row.decisions,
                    row.admitted,
                    row.admitted.saturating_sub(bound),
                    100.0 * row.admitted.min(bound) as f64 / bound as f64,
                    row.degraded,
                    row.forwarded as f64 / WINDOW.as_secs_f64(),
                    row.throttled
                );
            }
        }
    });
}
