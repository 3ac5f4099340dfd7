//! Two checks in a row with caps among them, as a `$connect` with
//! `concurrent = N` policies has them: the rates first, then the seats.
//!
//! A rate counts attempts, a cap counts what is open: a connection refused
//! by a full cap still counts against the rates it passed, so a client
//! retrying against a full cap runs out of connection attempts, and its
//! next retries are refused by the deny cache at no store call. The caps
//! themselves are all or nothing: a seat taken under one cap is given back
//! when another is full. The seats are asked for at once with the rates,
//! and given back when a rate refuses, so that an allowed connection waits
//! for one round trip. When everything is on one item with one cap (a
//! listener capped per address), [`RateLimitService::decide_in_turn`]
//! decides it all in its one call and comes here only when that call was
//! refused. On several items (a speaker: its address and its user), each
//! check goes in its items' calls at once, seats included
//! ([`RateLimitService::caps_apart`]), and only a refusal costs more: what
//! was taken is given back and the checks are decided again, rates first.

use crate::clock::Clock;
use crate::gcra::Nanos;
use crate::lease::{Cap, Holder, Lease};
use crate::pair::join;
use crate::policy::Policy;
use crate::service::{RateLimitService, Resolved};
use crate::store::{Spent, Store};
use crate::verdict::{HolderProblem, RateLimitError, Request, Verdict};
use crate::verdicts::Plan;

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// `first` and `second`'s rates in turn, then their caps, all or
    /// nothing. `plans` are the caller's plans of both checks' requests.
    /// `full`, when the caller's store call already found the rates within
    /// their limits and a cap full, holds that cap's refusal: it is not
    /// asked again.
    ///
    /// A refused cap's verdicts stand in place of the check it is listed
    /// in; the rates before it stay counted.
    pub(crate) async fn rates_then_caps(
        &self,
        first: &[Request<'_>],
        second: &[Request<'_>],
        plans: &[&Plan<'_>],
        now: Nanos,
        full: Option<Vec<Verdict>>,
    ) -> Result<(Vec<Verdict>, Option<Vec<Verdict>>), RateLimitError> {
        let is_cap = |r: &&Request<'_>| self.policy(r.policy).is_ok_and(|p| p.cap().is_some());
        let (caps1, rates1): (Vec<Request<'_>>, Vec<Request<'_>>) =
            first.iter().partition(|r| is_cap(r));
        let (caps2, rates2): (Vec<Request<'_>>, Vec<Request<'_>>) =
            second.iter().partition(|r| is_cap(r));
        let caps: Vec<Request<'_>> = caps1.iter().chain(&caps2).copied().collect();
        // The seats are asked for at once with the rates, and given back
        // if a rate refuses: the common case, everything allowed, takes
        // one round trip. Not when this process knows a rate refuses: then
        // the rates alone, from its cache, at no call.
        let rate_plans = plans.iter().copied().filter(|plan| plan.lease.is_none());
        let rates = Box::pin(self.in_turn_at(&rates1, &rates2, now));
        let (rated, mut seats) = match full {
            Some(refused) => (rates.await?, refused),
            None if self.known_denied(rate_plans) => {
                let rated = rates.await?;
                let (v1, v2) = &rated;
                let allowed = v1.iter().chain(v2.iter().flatten()).all(Verdict::allowed);
                let seats = if allowed && v2.is_some() {
                    self.all_at(&caps, now).await?
                } else {
                    Vec::new()
                };
                (rated, seats)
            }
            None => {
                let (rated, seats) = join(rates, self.all_at(&caps, now)).await;
                (rated?, seats?)
            }
        };
        let seat_spent: Spent = seats.iter().map(Verdict::spent).sum();
        for v in &mut seats {
            v.set_spent(Spent::default());
        }
        let (mut v1, mut v2) = rated;
        let rates_allowed = v1.iter().all(Verdict::allowed)
            && v2
                .as_ref()
                .is_some_and(|v2| v2.iter().all(Verdict::allowed));
        if !rates_allowed {
            let mut spent = seat_spent;
            if seats.iter().all(Verdict::allowed) {
                // Allowed, `seats` holds a verdict per cap, in order.
                for (cap, verdict) in caps.iter().zip(&seats) {
                    // A seat its holder had already stays with it.
                    if verdict.fresh_seat {
                        match self.release_spent(*cap).await {
                            Ok(released) => spent += released,
                            Err(error) => {
                                spent.calls += 1;
                                // The seat ends with its lease: stricter.
                                tracing::warn!(%error, "could not give back a refused connection's seat");
                            }
                        }
                    }
                }
            }
            count_calls(&mut v1, v2.as_mut(), spent);
            return Ok((v1, v2));
        }
        let mut v2 = v2.expect("rates allowed in both checks");
        let mut spent: Spent = v1.iter().chain(&v2).map(Verdict::spent).sum();
        spent += seat_spent;
        for v in v1.iter_mut().chain(v2.iter_mut()) {
            v.set_spent(Spent::default());
        }
        if seats.iter().all(Verdict::allowed) {
            let in_second = seats.split_off(caps1.len());
            v1.extend(seats);
            v2.extend(in_second);
        } else {
            let refused_first = seats
                .iter()
                .any(|v| !v.allowed() && caps1.iter().any(|r| r.policy == v.policy));
            if refused_first {
                v1 = seats;
            } else {
                v2 = seats;
            }
        }
        // There is a verdict to count them under: the caps have verdicts.
        count_calls(&mut v1, Some(&mut v2), spent);
        Ok((v1, Some(v2)))
    }

    /// Two checks on several items with caps among them, optimistically:
    /// each check all or nothing, both at once, a seat in the call of the
    /// item it shares with its check's rates, so that an allowed speaker
    /// capped per address costs a call per item. If anything refused, what
    /// was taken is given back and [`RateLimitService::rates_then_caps`]
    /// decides again with the exact order (rates first, then seats).
    pub(crate) async fn caps_apart(
        &self,
        first: &[Request<'_>],
        plans1: &[Plan<'_>],
        second: &[Request<'_>],
        plans2: &[Plan<'_>],
        now: Nanos,
    ) -> Result<(Vec<Verdict>, Option<Vec<Verdict>>), RateLimitError> {
        let (v1, v2) = join(self.all_at(first, now), self.all_at(second, now)).await;
        let (v1, v2) = (v1?, v2?);
        let allowed = |v: &[Verdict]| v.iter().all(Verdict::allowed);
        if allowed(&v1) && allowed(&v2) {
            return Ok((v1, Some(v2)));
        }
        let mut spent: Spent = v1.iter().chain(&v2).map(Verdict::spent).sum();
        spent += self.give_back_check(plans1, &v1).await;
        spent += self.give_back_check(plans2, &v2).await;
        let plans: Vec<&Plan<'_>> = plans1.iter().chain(plans2).collect();
        let (mut v1, mut v2) = self
            .rates_then_caps(first, second, &plans, now, None)
            .await?;
        count_calls(&mut v1, v2.as_mut(), spent);
        Ok((v1, v2))
    }

    /// The lease `request` takes at `now`, if its policy is a cap.
    pub(crate) fn lease<'s>(
        &self,
        request: &Request<'s>,
        r: &Resolved<'s>,
        now: Nanos,
    ) -> Result<Option<Lease<'s>>, RateLimitError> {
        let Some(cap) = r.policy.cap() else {
            return Ok(None);
        };
        let holder = holder_of(r.policy, request)?;
        Lease::new(cap, holder, now)
            .map(Some)
            .map_err(|e| holder_error(r.policy, HolderProblem::Invalid(e)))
    }
}

/// Counts `spent` under the first verdict returned, `first`'s or else
/// `second`'s: every call of a decision is counted once, there.
fn count_calls(first: &mut [Verdict], second: Option<&mut Vec<Verdict>>, spent: Spent) {
    let lead = match first.first_mut() {
        Some(v) => Some(v),
        None => second.and_then(|v| v.first_mut()),
    };
    if let Some(v) = lead {
        v.add_spent(spent);
    }
}

/// `policy`'s cap, or the error for asking a rate for seats.
pub(crate) fn cap_of(policy: &Policy) -> Result<&Cap, RateLimitError> {
    policy
        .cap()
        .ok_or_else(|| RateLimitError::NotACap(policy.shared_name().clone()))
}

/// The holder of `request` on the cap `policy`, or the error for a cap
/// asked without one.
pub(crate) fn holder_of<'r>(
    policy: &Policy,
    request: &Request<'r>,
) -> Result<Holder<'r>, RateLimitError> {
    request
        .holder
        .ok_or_else(|| holder_error(policy, HolderProblem::Missing))
}

fn holder_error(policy: &Policy, problem: HolderProblem) -> RateLimitError {
    RateLimitError::Holder {
        policy: policy.shared_name().clone(),
        problem,
    }
}
