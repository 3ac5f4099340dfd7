//! Batches against an exact model: processes that take tokens from one
//! shared bucket in batches and spend them themselves never admit more
//! than exact GCRA allows in any span of time, and lose little.

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use ratelimiter::batch::Batch;
use ratelimiter::gcra::{Nanos, Outcome, Quota};

mod model;

use model::{START, worst_excess};

/// Requests on one key, from `processes` processes: (gap since the
/// previous request, which process), with each process's batch size.
#[derive(Clone, Debug)]
struct Traffic {
    quota: Quota,
    batches: Vec<u32>,
    requests: Vec<(Nanos, usize)>,
}

fn traffic() -> impl Strategy<Value = Traffic> {
    (1u32..=40, 1u64..=60_000, 1usize..=5).prop_flat_map(|(limit, period_ms, processes)| {
        let quota = Quota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_millis(period_ms),
        )
        .unwrap();
        let t = quota.emission_interval().as_nanos() as u64;
        let gap = prop_oneof![
            5 => 0..=t / 4,
            3 => 0..=t,
            1 => 0..=t * 8,
        ];
        (
            Just(quota),
            prop::collection::vec(1..=limit, processes),
            prop::collection::vec((gap, 0..processes), 1..300),
        )
            .prop_map(|(quota, batches, requests)| Traffic {
                quota,
                batches,
                requests,
            })
    })
}

/// Runs the traffic: each process spends its batch, and when it cannot,
/// takes a new one of its size from the shared bucket, as the service
/// would: only when what it last saw of the bucket says a batch is there
/// (so, by its deny cache, no write while it is not), asking once more with
/// what it learns if another process took tokens meanwhile. Returns the times of the admissions, and the writes to the
/// shared bucket (its steps, allowed or not).
fn run(traffic: &Traffic) -> (Vec<Nanos>, u64) {
    let quota = &traffic.quota;
    let t = quota.emission_interval().as_nanos() as u64;
    let tau = t * u64::from(quota.limit());
    // Whole tokens the bucket has at `now` if its TAT is `tat`.
    let available = |tat: Nanos, now: Nanos| ((now + tau).saturating_sub(tat.max(now)) / t) as u32;
    let mut shared: Nanos = 0;
    let processes = traffic.batches.len();
    let mut batches: Vec<Option<Batch>> = vec![None; processes];
    let mut seen: Vec<Nanos> = vec![0; processes];
    let mut now = START;
    let (mut admitted, mut writes) = (Vec::new(), 0);
    for &(gap, process) in &traffic.requests {
        now += gap;
        if batches[process].as_mut().is_some_and(|b| b.spend(now, 1)) {
            admitted.push(now);
            continue;
        }
        let size = traffic.batches[process];
        for _ in 0..2 {
            if available(seen[process], now) < size {
                // Known not to hold a batch: no write. The tokens stay in
                // the bucket (up to its burst) until it does.
                break;
            }
            let step = quota.step(now, size).unwrap();
            writes += 1;
            let (outcome, after) = step.apply(shared);
            seen[process] = after;
            if outcome == Outcome::Allowed {
                shared = after;
                let mut taken = Batch::taken(quota, &step, after);
                assert!(taken.spend(now, 1), "a fresh batch holds its first token");
                batches[process] = Some(taken);
                admitted.push(now);
                break;
            }
        }
    }
    (admitted, writes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the batch sizes, processes and traffic: never more than the
    /// exact bound in any span.
    #[test]
    fn batches_never_admit_more_than_exact(traffic in traffic()) {
        let (admitted, _) = run(&traffic);
        prop_assert_eq!(worst_excess(&traffic.quota, &admitted), 0);
    }

    /// Batches of one token are the exact rule itself: the same requests
    /// are admitted as by one process deciding each on the shared bucket.
    #[test]
    fn batches_of_one_admit_what_the_exact_rule_does(mut traffic in traffic()) {
        for size in &mut traffic.batches {
            *size = 1;
        }
        let (batched, _) = run(&traffic);
        let (mut tat, mut now, mut exact) = (0, START, Vec::new());
        for &(gap, _) in &traffic.requests {
            now += gap;
            let (outcome, after) = traffic.quota.step(now, 1).unwrap().apply(tat);
            if outcome == Outcome::Allowed {
                tat = after;
                exact.push(now);
            }
        }
        prop_assert_eq!(batched, exact);
    }
}

/// Four processes saturating one key of 100/s, each taking batches of 10:
/// the key's rate nearly all used, in far fewer writes than admissions.
/// (At saturation, the four learn the bucket's state from the same writes
/// and ask for the next batch at once: one wins, three lose a write each,
/// so about 4 writes per 10 tokens here.)
#[test]
fn busy_processes_use_nearly_all_of_the_rate_in_far_fewer_writes() {
    let quota = Quota::per_second(NonZeroU32::new(100).unwrap());
    let t = quota.emission_interval().as_nanos() as u64;
    // Each process asks every millisecond, in turn, for 10 s.
    let requests: Vec<(Nanos, usize)> = (0..40_000).map(|i| (t / 40, i % 4)).collect();
    let traffic = Traffic {
        quota,
        batches: vec![10; 4],
        requests,
    };
    let (admitted, writes) = run(&traffic);
    // The exact bound over 10 s: 100 + 100 × 10.
    let span = traffic.requests.iter().map(|r| r.0).sum::<u64>();
    let bound = 100 + span / t;
    assert_eq!(worst_excess(&quota, &admitted), 0);
    assert!(
        admitted.len() as u64 * 100 >= bound * 95,
        "{} of {bound}",
        admitted.len()
    );
    // A write per batch, and the losers' failed ones: under one write per
    // two admissions (one per admission without batches).
    assert!(
        writes * 2 <= admitted.len() as u64,
        "{writes} writes for {} admissions",
        admitted.len()
    );
}
