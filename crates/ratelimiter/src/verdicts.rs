//! What one store answer says of each request of a call: the plans' ops
//! laid end to end, each plan's share of them, and the verdicts, refusals
//! and failure-mode decisions read off the TATs and a cap's seats.

use std::ops::Range;

use crate::clock::Clock;
use crate::gcra::{Nanos, Outcome};
use crate::lease::{Lease, Seats};
use crate::service::{RateLimitService, Resolved};
use crate::store::{Op, Store};
use crate::verdict::{Degradation, Verdict};

/// A request made ready, with one op per limit, or a cap's lease.
pub(crate) struct Plan<'s> {
    pub(crate) resolved: Resolved<'s>,
    pub(crate) ops: Vec<Op<'s>>,
    pub(crate) lease: Option<Lease<'s>>,
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// Whether this process's deny cache already refuses one of `plans`:
    /// a store call for them would be made in vain.
    pub(crate) fn known_denied<'a, 'p: 'a>(
        &self,
        plans: impl IntoIterator<Item = &'a Plan<'p>>,
    ) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        plans.into_iter().any(|plan| {
            let mut ops = plan.ops.clone();
            let mut tats = vec![0; ops.len()];
            cache.denies(&plan.resolved.key, &mut ops, &mut tats)
        })
    }

    /// The verdicts of the plans whose own steps are refused on `tats`
    /// (their share of `ops`), or whose lease does not fit in `seats`:
    /// what refused the item.
    pub(crate) fn refused(
        &self,
        plans: &[&Plan<'_>],
        ops: &[Op<'_>],
        tats: &[Nanos],
        seats: Seats,
    ) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for (plan, span) in spans(plans) {
            let (ops, tats) = (&ops[span.clone()], &tats[span]);
            if refuses(plan, ops, tats, seats) {
                verdicts.push(self.verdict(&plan.resolved, ops, tats, Outcome::Denied, seats));
            }
        }
        if verdicts.is_empty() {
            // Only steps on one bucket together could refuse what each
            // allows alone: one policy twice on one key. Its first says so.
            let plan = plans[0];
            let n = plan.ops.len();
            verdicts.push(self.verdict(
                &plan.resolved,
                &ops[..n],
                &tats[..n],
                Outcome::Denied,
                seats,
            ));
        }
        verdicts
    }

    /// Each plan's verdict on its share of `ops` and `tats` (the plans'
    /// ops end to end), or on `seats` for a cap, after one store answer.
    pub(crate) fn verdicts(
        &self,
        plans: &[&Plan<'_>],
        ops: &[Op<'_>],
        tats: &[Nanos],
        outcome: Outcome,
        seats: Seats,
    ) -> Vec<Verdict> {
        spans(plans)
            .map(|(plan, span)| {
                self.verdict(
                    &plan.resolved,
                    &ops[span.clone()],
                    &tats[span],
                    outcome,
                    seats,
                )
            })
            .collect()
    }

    /// Each plan's verdict by its policy's failure mode, `why` the store
    /// could not answer, on its share of `ops` and `tats`.
    pub(crate) fn degraded_each(
        &self,
        plans: &[&Plan<'_>],
        ops: &[Op<'_>],
        tats: &mut [Nanos],
        why: Degradation,
    ) -> Vec<Verdict> {
        spans(plans)
            .map(|(plan, span)| {
                self.degraded(&plan.resolved, &ops[span.clone()], &mut tats[span], why)
            })
            .collect()
    }

    /// The verdict on a store's answer, with the policy's shadow mode: a
    /// cap's from `seats`, a rate's from its buckets' TATs.
    pub(crate) fn verdict(
        &self,
        r: &Resolved<'_>,
        ops: &[Op<'_>],
        tats: &[Nanos],
        outcome: Outcome,
        seats: Seats,
    ) -> Verdict {
        let verdict = match r.policy.cap() {
            Some(cap) => {
                let allowed = outcome == Outcome::Allowed;
                let mut verdict = Verdict::single(r.id, cap.decision(seats, allowed));
                verdict.fresh_seat = allowed && seats.fresh;
                verdict
            }
            None => Verdict::from_ops(r.id, r.limits, ops, tats, outcome),
        };
        self.settle(verdict, r.policy)
    }
}

/// Each plan with the range of its ops among the plans' ops laid end to
/// end, as one store call takes them.
pub(crate) fn spans<'a, 'p>(
    plans: &'a [&'a Plan<'p>],
) -> impl Iterator<Item = (&'a Plan<'p>, Range<usize>)> + 'a {
    plans.iter().scan(0, |at, plan| {
        let span = *at..*at + plan.ops.len();
        *at = span.end;
        Some((*plan, span))
    })
}

/// Whether `plan` refuses on its share of a store's answer: a step its
/// bucket's TAT denies, or a lease that does not fit in `seats`.
pub(crate) fn refuses(plan: &Plan<'_>, ops: &[Op<'_>], tats: &[Nanos], seats: Seats) -> bool {
    let steps = ops
        .iter()
        .zip(tats)
        .any(|(op, &tat)| op.step.apply(tat).0 == Outcome::Denied);
    steps || plan.lease.is_some_and(|lease| !lease.fits(seats))
}

/// Drops the allowed verdicts of a refused action, keeping those that
/// refused it; returns whether the action was allowed.
pub(crate) fn keep_refusals(verdicts: &mut Vec<Verdict>) -> bool {
    let allowed = verdicts.iter().all(Verdict::allowed);
    if !allowed {
        verdicts.retain(|v| !v.allowed());
    }
    allowed
}
