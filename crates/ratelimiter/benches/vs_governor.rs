//! One allowed decision on the in-memory store against governor's keyed
//! limiter, on the same workload, in the same run.
//!
//! `cargo bench -p ratelimiter --bench vs_governor`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use ratelimiter::{Builder, LimitSpec, Policy, PolicyId, RateLimitService};

/// Polls a future that is ready at once, as the in-memory store's are.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("in-memory decisions never wait"),
    }
}

/// Both limiters, with a quota that allows every request of the run.
struct Contenders {
    ours: RateLimitService,
    governor: DefaultKeyedRateLimiter<String>,
    ids: Vec<String>,
}

impl Contenders {
    fn new(keys: usize) -> Self {
        let huge = NonZeroU32::MAX;
        Self {
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
        }
    }

    /// The synchronous API of the in-memory service.
    fn ours(&self, i: usize) {
        let id = &self.ids[i % self.ids.len()];
        let verdict = self.ours.decide_sync((PolicyId::CONNECTION_ATTEMPT, id));
        assert!(black_box(verdict).is_ok());
    }

    /// The seed's async API on the same service.
    fn ours_async(&self, i: usize) {
        let id = &self.ids[i % self.ids.len()];
        let verdict = ready(self.ours.check_connection_attempt_limit(id));
        assert!(black_box(verdict).is_ok());
    }

    fn governor(&self, i: usize) {
        let id = &self.ids[i % self.ids.len()];
        assert!(black_box(self.governor.check_key(id)).is_ok());
    }
}

/// Runs `iters` decisions on each of `threads` threads at once; returns the wall time.
fn on_threads(threads: usize, iters: u64, decide: &(dyn Fn(usize) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    // Threads start on different keys, as different clients would.
                    let offset = t * 7919;
                    for i in 0..iters as usize {
                        decide(offset + i);
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        handles.into_iter().for_each(|h| h.join().unwrap());
        start.elapsed()
    })
}

fn allowed_decision(c: &mut Criterion) {
    for keys in [1usize, 10_000] {
        let contenders = Contenders::new(keys);
        // Warm both maps so that every measured decision finds its key.
        for i in 0..keys {
            contenders.ours(i);
            contenders.governor(i);
        }
        for threads in [1usize, 2] {
            let mut group =
                c.benchmark_group(format!("allowed_decision/{keys}_keys/{threads}_threads"));
            group.throughput(criterion::Throughput::Elements(threads as u64));
            if threads == 1 {
                let mut i = 0;
                group.bench_function("ratelimiter", |b| {
                    b.iter(|| {
                        i += 1;
                        contenders.ours(i)
                    })
                });
                let mut i = 0;
                group.bench_function("ratelimiter_async", |b| {
                    b.iter(|| {
                        i += 1;
                        contenders.ours_async(i)
                    })
                });
                let mut i = 0;
                group.bench_function("governor", |b| {
                    b.iter(|| {
                        i += 1;
                        contenders.governor(i)
                    })
                });
            } else {
                group.bench_function("ratelimiter", |b| {
                    b.iter_custom(|iters| on_threads(threads, iters, &|i| contenders.ours(i)))
                });
                group.bench_function("ratelimiter_async", |b| {
                    b.iter_custom(|iters| on_threads(threads, iters, &|i| contenders.ours_async(i)))
                });
                group.bench_function("governor", |b| {
                    b.iter_custom(|iters| on_threads(threads, iters, &|i| contenders.governor(i)))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, allowed_decision);
criterion_main!(benches);
