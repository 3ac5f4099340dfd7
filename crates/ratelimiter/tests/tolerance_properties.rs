//! The tolerance's bound, against an exact model: with a tolerance `δ ≤ T`,
//! a key gets at most one request more than exact GCRA in any span of
//! time, and a store of two conditional shapes (DynamoDB's) decides as the
//! rule does.

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use ratelimiter::gcra::{Nanos, Outcome, Quota, Step};

mod model;

use model::{START, worst_excess};

/// A quota, a tolerance from 0 to its emission interval, and requests of
/// cost 1: gaps around the emission interval (a client at its rate, early
/// or late), some bursts and some pauses.
fn traffic() -> impl Strategy<Value = (Quota, u64, Vec<Nanos>)> {
    (1u32..=20, 1u64..=600_000, 0u64..=1000).prop_flat_map(|(limit, period_ms, per_mille)| {
        let quota = Quota::new(
            NonZeroU32::new(limit).unwrap(),
            Duration::from_millis(period_ms),
        )
        .unwrap();
        let t = quota.emission_interval().as_nanos() as u64;
        let tolerance = t * per_mille / 1000;
        let gap = prop_oneof![
            6 => (t * 7 / 10)..=(t * 13 / 10),
            2 => 0..=t / 2,
            1 => 0..=t * 4,
        ];
        (
            Just(quota),
            Just(tolerance),
            prop::collection::vec(gap, 1..150),
        )
    })
}

/// The times of the requests `quota` admits, one token each.
fn admitted(quota: &Quota, gaps: &[Nanos]) -> Vec<Nanos> {
    let (mut tat, mut now, mut times) = (0, START, Vec::new());
    for gap in gaps {
        now += gap;
        let (outcome, after) = quota.step(now, 1).unwrap().apply(tat);
        if outcome == Outcome::Allowed {
            tat = after;
            times.push(now);
        }
    }
    times
}

/// One step as a store of two conditional shapes applies it, each shape
/// tried on its own condition: the DynamoDB store's expressions.
fn two_shapes(step: &Step, tat: Nanos) -> (Outcome, Nanos) {
    if tat <= step.busy_floor() {
        // Idle: `b <= :floor`, then `b = :idle_target`.
        (Outcome::Allowed, step.idle_target())
    } else if tat <= step.busy_ceiling() {
        // Busy: `:floor < b <= :ceiling`, then `b = b + :increment`.
        (Outcome::Allowed, tat + step.increment())
    } else {
        (Outcome::Denied, tat)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The exact rule never exceeds `limit + ⌊span / T⌋`; with a tolerance,
    /// by at most one request.
    #[test]
    fn a_tolerance_admits_at_most_one_request_more_than_exact((quota, tolerance, gaps) in traffic()) {
        prop_assert_eq!(worst_excess(&quota, &admitted(&quota, &gaps)), 0);
        let tolerant = quota.with_tolerance(Duration::from_nanos(tolerance)).unwrap();
        let excess = worst_excess(&tolerant, &admitted(&tolerant, &gaps));
        prop_assert!(excess <= 1, "{} more than exact", excess);
    }

    /// The two shapes, each on its condition, decide as the rule does, for
    /// any TAT around the step, with or without a tolerance, any cost.
    #[test]
    fn the_two_shapes_decide_as_the_rule_does(
        (quota, tolerance, _) in traffic(),
        offset in -2_000_000_000_000i64..2_000_000_000_000,
        cost_share in 0u32..=100,
    ) {
        let quota = quota.with_tolerance(Duration::from_nanos(tolerance)).unwrap();
        let cost = quota.limit() * cost_share / 100;
        let step = quota.step(START, cost).unwrap();
        let tat = START.saturating_add_signed(offset);
        prop_assert_eq!(two_shapes(&step, tat), step.apply(tat));
        // A missing bucket (TAT 0) is idle in either shape.
        prop_assert_eq!(two_shapes(&step, 0), step.apply(0));
        // What an allowed step took can be given back, to a state no
        // earlier than the step's floor.
        if let (Outcome::Allowed, after) = step.apply(tat) {
            let back = step.refund(after);
            prop_assert!(back.is_some());
            prop_assert!(back.unwrap() >= step.busy_floor().min(after));
        }
    }
}

/// A client at its rate with jitter: late by 5 s, then early by 5 s. The
/// exact rule charges the late arrival from now and refuses the early one
/// after it; a tolerance of 9 s charges it from the bucket and lets both
/// through, one request more than exact in those spans, never two.
#[test]
fn a_client_at_its_rate_with_jitter_is_let_through_within_the_bound() {
    let t = 30_000_000_000; // 1 every 30 s
    let quota = Quota::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(30)).unwrap();
    let tolerant = quota.with_tolerance(Duration::from_secs(9)).unwrap();
    let mut gaps = vec![0];
    for _ in 0..20 {
        gaps.extend([t + 5_000_000_000, t - 5_000_000_000]);
    }
    let exact = admitted(&quota, &gaps);
    let tolerated = admitted(&tolerant, &gaps);
    assert_eq!(worst_excess(&quota, &exact), 0);
    assert_eq!(tolerated.len(), gaps.len(), "every heartbeat passes");
    assert!(exact.len() < tolerated.len(), "{} exact", exact.len());
    assert_eq!(worst_excess(&tolerant, &tolerated), 1);
    // The late arrival is charged from the bucket, 5 s behind; one 10 s
    // behind is charged from now.
    let step = tolerant.step(START, 1).unwrap();
    assert_eq!(step.busy_floor(), START - 9_000_000_000);
    assert_eq!(
        step.apply(START - 5_000_000_000),
        (Outcome::Allowed, START - 5_000_000_000 + t)
    );
    assert_eq!(
        step.apply(START - 10_000_000_000),
        (Outcome::Allowed, START + t)
    );
}
