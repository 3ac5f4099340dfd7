//! Properties of the decision core that must hold for any traffic.

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use ratelimiter::gcra::{Decision, Nanos, Outcome, Quota};
use ratelimiter::key::{Key, Kind, Slot};
use ratelimiter::memory::MemoryStore;
use ratelimiter::policy::{LimitSpec, Policy};
use ratelimiter::store::Op;

const START: Nanos = 1_700_000_000_000_000_000;

fn quotas() -> impl Strategy<Value = Quota> {
    (1u32..=30, 1u64..=7_200_000).prop_map(|(limit, period_ms)| {
        Quota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_millis(period_ms),
        )
        .unwrap()
    })
}

/// A quota and requests against it: (gap since the previous request, cost).
/// Gaps are mostly short, so that buckets run dry, with some long pauses.
fn traffic() -> impl Strategy<Value = (Quota, Vec<(Nanos, u32)>)> {
    quotas().prop_flat_map(|quota| {
        let period = quota.period().as_nanos() as u64;
        let gap = prop_oneof![
            4 => 0..=period / quota.limit() as u64 / 2,
            2 => 0..=period / 4,
            1 => 0..=period * 2,
        ];
        let cost = 1..=quota.limit();
        (Just(quota), prop::collection::vec((gap, cost), 1..120))
    })
}

/// One decision on one TAT, as a store and the service make it: the
/// decision, and the new TAT when allowed.
struct Decided {
    decision: Decision,
    new_tat: Option<Nanos>,
}

fn decide(quota: &Quota, tat: Nanos, now: Nanos, cost: u32) -> Decided {
    let step = quota.step(now, cost).unwrap();
    let (outcome, after) = step.apply(tat);
    Decided {
        decision: quota.decision(&step, outcome, after),
        new_tat: (outcome == Outcome::Allowed).then_some(after),
    }
}

/// Runs `requests` through the pure core; returns (time, cost, allowed) for each.
fn simulate(quota: &Quota, requests: &[(Nanos, u32)]) -> Vec<(Nanos, u32, bool)> {
    let mut tat = 0;
    let mut now = START;
    requests
        .iter()
        .map(|&(gap, cost)| {
            now += gap;
            let decided = decide(quota, tat, now, cost);
            if let Some(new) = decided.new_tat {
                tat = new;
            }
            (now, cost, decided.decision.allowed)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// In any window of length `period`, tokens granted never exceed the
    /// burst plus what refilled between the window's first and last grant.
    #[test]
    fn no_window_admits_more_than_limit_plus_refill((quota, requests) in traffic()) {
        let period = quota.period().as_nanos() as u64;
        let emission = quota.emission_interval().as_nanos() as u64;
        let allowed: Vec<(Nanos, u32)> = simulate(&quota, &requests)
            .into_iter()
            .filter(|r| r.2)
            .map(|r| (r.0, r.1))
            .collect();
        for (i, &(start, _)) in allowed.iter().enumerate() {
            let window: Vec<_> = allowed[i..].iter().take_while(|r| r.0 < start + period).collect();
            let tokens: u64 = window.iter().map(|r| u64::from(r.1)).sum();
            let span = window.last().unwrap().0 - start;
            let refill = span / emission;
            prop_assert!(
                tokens <= u64::from(quota.limit()) + refill,
                "{tokens} tokens in a window from {start} (limit {}, refill {refill})",
                quota.limit()
            );
            // And never more than twice the limit in one period, whatever the refill.
            prop_assert!(tokens <= 2 * u64::from(quota.limit()));
        }
    }

    /// A denied request is allowed exactly `retry_after` later, and not a
    /// nanosecond before.
    #[test]
    fn retry_after_is_exact((quota, requests) in traffic()) {
        let mut tat = 0;
        let mut now = START;
        for (gap, cost) in requests {
            now += gap;
            let decided = decide(&quota, tat, now, cost);
            match decided.new_tat {
                Some(new) => {
                    prop_assert_eq!(decided.decision.retry_after, Duration::ZERO);
                    tat = new;
                }
                None => {
                    let wait = decided.decision.retry_after.as_nanos() as u64;
                    prop_assert!(wait > 0);
                    prop_assert!(decide(&quota, tat, now + wait, cost).decision.allowed);
                    prop_assert!(!decide(&quota, tat, now + wait - 1, cost).decision.allowed);
                }
            }
        }
    }

    /// Status and decisions never report negative or over-limit counts, and
    /// an allowed decision's `remaining` is what a status query then sees.
    #[test]
    fn counts_stay_within_bounds((quota, requests) in traffic()) {
        let mut tat = 0;
        let mut now = START;
        let period_secs = quota.period().as_secs_f64().ceil() as u64;
        for (gap, cost) in requests {
            now += gap;
            let decided = decide(&quota, tat, now, cost);
            let d = decided.decision;
            prop_assert!(d.remaining <= d.limit);
            prop_assert!(d.reset_after <= quota.emission_interval() * quota.limit());
            if let Some(new) = decided.new_tat {
                tat = new;
                prop_assert_eq!(quota.limit() - quota.status(tat, now).count, d.remaining);
            }
            let status = quota.status(tat, now);
            prop_assert!(status.count <= status.limit, "{status:?}");
            prop_assert_eq!(status.limit, quota.limit());
            prop_assert_eq!(status.window_duration, period_secs);
            prop_assert!(status.reset_in_seconds <= period_secs + 1, "{status:?}");
        }
    }

    /// The in-memory store decides exactly as the pure core does.
    #[test]
    fn memory_store_agrees_with_the_core((quota, requests) in traffic()) {
        let store = MemoryStore::new();
        let key = Key::new(&Kind::IP, "198.51.100.1");
        let slot = Slot::new("listener_join@60");
        let expected = simulate(&quota, &requests);
        let mut now = START;
        for ((gap, cost), (_, _, allowed)) in requests.iter().zip(expected) {
            now += gap;
            let outcome = store.apply_step(&key, &slot, &quota.step(now, *cost).unwrap());
            prop_assert_eq!(outcome.0 == Outcome::Allowed, allowed);
        }
    }
}

/// A policy of one to four limits with distinct periods (1 s to 1 h), and
/// requests against it: (gap, cost), with costs within every limit.
fn multi_limit_traffic() -> impl Strategy<Value = (Policy, Vec<(Nanos, u32)>)> {
    prop::collection::btree_map(1u64..=3600, 1u32..=20, 1..=4).prop_flat_map(|limits| {
        let specs: Vec<LimitSpec> = limits
            .iter()
            .map(|(&secs, &count)| LimitSpec {
                count,
                period: Duration::from_secs(secs),
            })
            .collect();
        let policy = Policy::new("p", Kind::CONNECTION, &specs).unwrap();
        let shortest = specs
            .iter()
            .map(|s| s.period.as_nanos() as u64)
            .min()
            .unwrap();
        let longest = specs
            .iter()
            .map(|s| s.period.as_nanos() as u64)
            .max()
            .unwrap();
        let max_cost = specs.iter().map(|s| s.count).min().unwrap();
        let gap = prop_oneof![
            4 => 0..=shortest / 8,
            2 => 0..=shortest,
            1 => 0..=longest,
        ];
        (
            Just(policy),
            prop::collection::vec((gap, 1..=max_cost), 1..150),
        )
    })
}

/// Whether every limit allows `cost` at `now` on `tats`, by the pure rule.
fn all_allow(policy: &Policy, tats: &[Nanos], now: Nanos, cost: u32) -> bool {
    policy.limits().iter().zip(tats).all(|(limit, &tat)| {
        limit.quota().step(now, cost).unwrap().apply(tat).0 == Outcome::Allowed
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Through the store, a policy's limits are checked and consumed
    /// together: no limit over-admits in any window, a denial changes no
    /// TAT, and the verdict's `retry_after` (the longest of the limits') is
    /// exactly when every limit allows the request again.
    #[test]
    fn several_limits_are_exact_together((policy, requests) in multi_limit_traffic()) {
        let store = MemoryStore::new();
        let key = Key::new(&Kind::CONNECTION, "c");
        let n = policy.limits().len();
        let mut tats = vec![0; n];
        let mut granted: Vec<(Nanos, u32)> = Vec::new();
        let mut now = START;
        for (gap, cost) in requests {
            now += gap;
            let ops: Vec<Op<'_>> = policy
                .limits()
                .iter()
                .map(|l| Op::new(l.slot(), l.quota().step(now, cost).unwrap()))
                .collect();
            let before = tats.clone();
            let expect = all_allow(&policy, &before, now, cost);
            let mut reported = vec![0; n];
            let outcome = store.apply_sync(&key, &ops, &mut reported);
            prop_assert_eq!(outcome == Outcome::Allowed, expect);
            if expect {
                tats = reported;
                granted.push((now, cost));
            } else {
                // Nothing consumed in any limit.
                prop_assert_eq!(&reported, &before);
                let wait = policy
                    .limits()
                    .iter()
                    .zip(&ops)
                    .zip(&before)
                    .map(|((limit, op), &tat)| {
                        let decision = limit.quota().decision(&op.step, Outcome::Denied, tat);
                        decision.retry_after.as_nanos() as u64
                    })
                    .max()
                    .unwrap();
                prop_assert!(wait > 0);
                prop_assert!(all_allow(&policy, &before, now + wait, cost));
                prop_assert!(!all_allow(&policy, &before, now + wait - 1, cost));
            }
        }
        // Each limit on its own: never more than its burst plus its refill.
        for limit in policy.limits() {
            let period = limit.quota().period().as_nanos() as u64;
            let emission = limit.quota().emission_interval().as_nanos() as u64;
            for (i, &(start, _)) in granted.iter().enumerate() {
                let window: Vec<_> = granted[i..].iter().take_while(|r| r.0 < start + period).collect();
                let tokens: u64 = window.iter().map(|r| u64::from(r.1)).sum();
                let refill = (window.last().unwrap().0 - start) / emission;
                prop_assert!(tokens <= u64::from(limit.quota().limit()) + refill);
            }
        }
    }
}
