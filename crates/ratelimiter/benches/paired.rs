//! Paired comparison with governor: the ratio of our time to governor's,
//! measured in alternating short rounds so that both sides see the same
//! machine state. On a small shared machine, two-thread timings swing by 2x
//! from one second to the next; a ratio taken within one round does not.
//!
//! `cargo bench -p ratelimiter --bench paired`
//!
//! Prints, for each workload, the median ratio over the rounds and the
//! 10th and 90th percentiles. A ratio below 1.0 means faster than governor.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, RateLimiter};
use ratelimiter::{Builder, LimitSpec, Policy, PolicyId, RateLimitService};

const ROUNDS: usize = 201;
const DECISIONS_PER_ROUND: usize = 100_000;

struct Contenders {
    ours: RateLimitService,
    governor: DefaultKeyedRateLimiter<String>,
    ids: Vec<String>,
}

impl Contenders {
    fn new(keys: usize) -> Self {
        let huge = NonZeroU32::MAX;
        let contenders = Self {
            ours: Builder::new()
                .policy(
                    Policy::new(
                        "connection_attempt",
                        ratelimiter::Kind::IP,
                        &[LimitSpec {
                            count: huge.get(),
                            period: Duration::from_secs(1),
                        }],
                    )
                    .unwrap(),
                )
                .in_memory(),
            governor: RateLimiter::keyed(governor::Quota::per_second(huge)),
            ids: (0..keys)
                .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
                .collect(),
        };
        for i in 0..keys {
            contenders.ours(i);
            contenders.governor(i);
        }
        contenders
    }

    fn ours(&self, i: usize) {
        let id = &self.ids[i % self.ids.len()];
        let verdict = self.ours.decide_sync((PolicyId::CONNECTION_ATTEMPT, id));
        assert!(black_box(verdict).is_ok());
    }

    fn governor(&self, i: usize) {
        let id = &self.ids[i % self.ids.len()];
        assert!(black_box(self.governor.check_key(id)).is_ok());
    }
}

/// Wall time for `threads` threads to make `n` decisions each.
fn timed(threads: usize, n: usize, decide: &(dyn Fn(usize) + Sync)) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        (0..n).for_each(decide);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    (0..n).for_each(|i| decide(t * 7919 + i));
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        handles.into_iter().for_each(|h| h.join().unwrap());
        start.elapsed()
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter may follow.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!("workload                      ours ns  governor ns  ratio p50  (p10..p90)");
    for keys in [1usize, 10_000] {
        let contenders = Contenders::new(keys);
        for threads in [1usize, 2] {
            let name = format!("{keys}_keys/{threads}_threads");
            if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                continue;
            }
            let mut ratios = Vec::with_capacity(ROUNDS);
            let (mut ours_total, mut governor_total) = (Duration::ZERO, Duration::ZERO);
            for round in 0..ROUNDS {
                // Alternate which side goes first, so neither always runs warm.
                let (ours, governor) = if round % 2 == 0 {
                    let o = timed(threads, DECISIONS_PER_ROUND, &|i| contenders.ours(i));
                    (
                        o,
                        timed(threads, DECISIONS_PER_ROUND, &|i| contenders.governor(i)),
                    )
                } else {
                    let g = timed(threads, DECISIONS_PER_ROUND, &|i| contenders.governor(i));
                    (
                        timed(threads, DECISIONS_PER_ROUND, &|i| contenders.ours(i)),
                        g,
                    )
                };
                ratios.push(ours.as_secs_f64() / governor.as_secs_f64());
                ours_total += ours;
                governor_total += governor;
            }
            ratios.sort_by(f64::total_cmp);
            // Per decision on one thread; for two threads, per pair of decisions.
            let per =
                |total: Duration| total.as_nanos() as f64 / (ROUNDS * DECISIONS_PER_ROUND) as f64;
            println!(
                "{name:<28} {:>8.1} {:>12.1} {:>10.2}  ({:.2}..{:.2})",
                per(ours_total),
                per(governor_total),
                percentile(&ratios, 0.5),
                percentile(&ratios, 0.1),
                percentile(&ratios, 0.9),
            );
        }
    }
}
