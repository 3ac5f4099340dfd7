//! Hot keys served from batches: the service's stage that decides a
//! request on a hot key from tokens this process took from the shared
//! bucket in one write ([`crate::batch`] shows why that never admits more
//! than the exact rule). It lets one key be decided past the store's
//! per-item write ceiling, exactly, where deciding a throttled key in each
//! process at its own limits would admit up to one limit per process.
//!
//! Per key (and limits), this process keeps what it asked for in the last
//! 100 ms, which sizes its batches; the batch it spends and the next one,
//! taken ahead; whether a take is under way (one at a time); and when the
//! store last throttled the key. A request on a key of a batching policy
//! ([`Batching`]):
//! 1. is spent from the batch in hand, when that holds its cost: no call.
//!    If that leaves less than half a batch, the request also takes the
//!    next one (one write, its own answer already known);
//! 2. on a cold key (`auto`: fewer than 20 requests in the last 100 ms,
//!    and no throttle lately) is decided as any request is, in one write;
//! 3. else takes a batch of B for itself, if the bucket, as this process
//!    last saw it, holds at least half of B, or 100 ms of refill if that
//!    is less (then at most what it holds). A lost race (others took the
//!    bucket meanwhile) tells the bucket's state, and is tried once more on
//!    it, if it holds that much;
//! 4. else is refused here: until the bucket, as last seen, holds that
//!    much again; while another task of this process is taking a batch;
//!    for 100 ms after the store throttled the key.
//!
//! Waiting for half a batch is what keeps a saturated key's writes down:
//! each process writes about once per half batch, not once per token.
//!
//! **What it costs in exactness.** Never more admitted than the exact rule
//! allows, across any number of processes. Fewer, within bounds:
//! - tokens of a batch whose place passes before this process spends them
//!   lapse: at most a batch per process and key, when the key cools;
//! - a request refused while the bucket holds less than half a batch (at
//!   most 100 ms of refill), or during another task's take, would have
//!   been admitted one at a time;
//! - a batched decision of an action refused by another of its checks is
//!   not given back (the store's refund would hand back tokens this process
//!   still spends): one request's tokens.

use std::time::Duration;

use crate::batch::{
    BATCH_HOLD, Batched, Batches, Pending, Plan, Set, Taking, Took, available, batched_for_rate,
    need, ready_at,
};
use crate::clock::Clock;
use crate::failure::Permit;
use crate::gcra::{Decision, Nanos, Outcome};
use crate::policy::{Batching, MAX_LIMITS};
use crate::service::{RateLimitService, Resolved};
use crate::store::{Op, Spent, Store};
use crate::verdict::{Degradation, RateLimitError, Request, Verdict};

/// What one take came to.
enum Taken {
    /// The request's own take was allowed: its TATs to report.
    Allowed([Nanos; MAX_LIMITS]),
    /// Refused: the buckets' TATs (the store's, or the deny cache's).
    Lost([Nanos; MAX_LIMITS]),
    /// The store was not asked, or failed: why.
    Failed(Degradation),
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// The decision on `request` by this process's batches, without
    /// waiting: decided already (spent from a batch in hand, or refused
    /// here), a batch to take first, or not served from batches at all
    /// (see the module's docs). Only a take awaits the store, in a future
    /// of its own ([`RateLimitService::batch_take`]), so that a decision
    /// that needs none stays as small as before.
    pub(crate) fn batched<'s>(
        &'s self,
        request: &Request<'_>,
        r: &Resolved<'s>,
        now: Nanos,
    ) -> Result<Batched<'s>, RateLimitError> {
        let (Some(cache), Some(batches)) = (&self.cache, &self.batches) else {
            return Ok(Batched::Plain);
        };
        // A probe takes nothing; a cap's seats are not tokens.
        if r.policy.batching() == Batching::Off || request.cost == 0 || r.limits.is_empty() {
            return Ok(Batched::Plain);
        }
        let throttled = self.failures.throttled_at(&r.key);
        // A key `auto` can batch only once throttled keeps no state here:
        // most keys of most policies.
        if r.policy.batching() == Batching::Auto
            && throttled.is_none()
            && !batched_for_rate(r.limits)
        {
            return Ok(Batched::Plain);
        }
        let n = r.limits.len();
        // The request's own steps: a cost no bucket holds is an error here too.
        let ops = self.ops(r.policy, r.limits, now, request.cost)?;
        let name = Batches::name(&r.key, r.limits[0].slot());
        let mut seen = [None; MAX_LIMITS];
        for (seen, limit) in seen.iter_mut().zip(r.limits) {
            *seen = cache.seen(&r.key, limit.slot());
        }
        let plan = batches.plan(
            &name,
            r.policy.batching(),
            r.limits,
            request.cost,
            now,
            &seen[..n],
            throttled,
        );
        Ok(match plan {
            Plan::Plain => Batched::Plain,
            Plan::Spent { tats, next } => {
                let verdict = self.spent_from_batch(r, &ops[..n], &tats);
                match next {
                    None => Batched::Decided(verdict),
                    // The take is marked under way: the guard clears it
                    // whatever becomes of the future.
                    Some(size) => Batched::Take(Box::new(Pending {
                        ops,
                        seen,
                        taking: Taking::new(batches, name),
                        size,
                        spent: Some(verdict),
                    })),
                }
            }
            Plan::Wait { until, held } => {
                let why = held.then_some(Degradation::Throttled);
                Batched::Decided(self.waiting(r, &seen[..n], until, now, why))
            }
            Plan::Take(size) => Batched::Take(Box::new(Pending {
                ops,
                seen,
                taking: Taking::new(batches, name),
                size,
                spent: None,
            })),
        })
    }

    /// Takes the batch `pending` needs: the next one, after a request
    /// spent from the one in hand, or one for the request itself.
    pub(crate) async fn batch_take(
        &self,
        r: &Resolved<'_>,
        pending: Box<Pending<'_>>,
        now: Nanos,
    ) -> Result<Verdict, RateLimitError> {
        let n = r.limits.len();
        let Pending {
            ops,
            seen,
            taking,
            size,
            spent,
        } = *pending;
        if let Some(mut verdict) = spent {
            let (_, spent) = self.take(r, size, now, taking, None).await?;
            verdict.set_spent(spent);
            return Ok(verdict);
        }
        self.take_for(r, &ops[..n], size, now, taking, &seen[..n])
            .await
    }

    /// A request that found no batch in hand: a batch taken for it, or a
    /// refusal until one can be.
    async fn take_for(
        &self,
        r: &Resolved<'_>,
        ops: &[Op<'_>],
        size: u32,
        now: Nanos,
        taking: Taking<'_>,
        seen: &[Option<Nanos>],
    ) -> Result<Verdict, RateLimitError> {
        let cost = ops[0].step.cost();
        let batches = taking.batches();
        let name = taking.name().to_owned();
        let (mut taken, mut spent) = self.take(r, size, now, taking, Some(cost)).await?;
        let need = need(r.limits, cost, size);
        // A lost race told the buckets' state: once more on it, if it
        // holds half a batch.
        if let Taken::Lost(tats) = &taken {
            let holds = available(r.limits, &known(tats, ops.len()), now);
            if holds >= need && batches.retake(&name) {
                let taking = Taking::new(batches, name);
                let (again, more) = self
                    .take(r, size.min(holds), now, taking, Some(cost))
                    .await?;
                spent += more;
                taken = again;
            }
        }
        let mut verdict = match taken {
            Taken::Allowed(tats) => self.spent_from_batch(r, ops, &tats),
            Taken::Lost(tats) => {
                let seen = known(&tats, ops.len());
                let until = ready_at(r.limits, &seen, need, now);
                self.waiting(r, &seen, until, now, None)
            }
            Taken::Failed(why) if why.is_hot_key() => {
                let until = now.saturating_add(BATCH_HOLD);
                self.waiting(r, seen, until, now, Some(why))
            }
            Taken::Failed(why) => {
                // The failure mode decides the request itself, from what
                // this process knows of the buckets.
                let mut tats: Vec<Nanos> = seen.iter().map(|s| s.unwrap_or(0)).collect();
                self.degraded(r, ops, &mut tats, why)
            }
        };
        verdict.set_spent(spent);
        Ok(verdict)
    }

    /// Takes a batch of `size` on `r`'s key (for a request of cost `own`,
    /// spent from it at once, or ahead of need), through the deny cache,
    /// the breaker and the store, as any decision goes (the plan already
    /// held the key, for its own shorter hold).
    async fn take(
        &self,
        r: &Resolved<'_>,
        size: u32,
        now: Nanos,
        taking: Taking<'_>,
        own: Option<u32>,
    ) -> Result<(Taken, Spent), RateLimitError> {
        let n = r.limits.len();
        let mut ops = self.ops(r.policy, r.limits, now, size)?;
        let ops = &mut ops[..n];
        let mut tats = [0; MAX_LIMITS];
        if let Some(cache) = &self.cache
            && cache.denies(&r.key, ops, &mut tats[..n])
        {
            taking.finish(Took::Lost, now);
            return Ok((Taken::Lost(tats), Spent::default()));
        }
        // Only the breaker is asked, not the hot-key hold: the plan held
        // the key for its own, shorter hold already.
        let permit = self.failures.breaker.permit(now);
        if permit == Permit::Skip {
            taking.finish(Took::Lost, now);
            return Ok((Taken::Failed(Degradation::BreakerOpen), Spent::default()));
        }
        let generation = self.failures.breaker.generation();
        let applied = self
            .store
            .apply(&r.key, ops, None, r.retention, &mut tats[..n])
            .await;
        let spent = applied.spent();
        let taken = match applied.outcome {
            Ok(outcome) => {
                self.answered(&r.key, ops, outcome, &tats[..n]);
                if outcome == Outcome::Allowed {
                    let set = Set::taken(r.limits, ops, &tats[..n]);
                    match taking.finish(Took::Batch(set, own), now) {
                        Some(tats) => Taken::Allowed(tats),
                        None => Taken::Lost(tats),
                    }
                } else {
                    taking.finish(Took::Lost, now);
                    Taken::Lost(tats)
                }
            }
            Err(error) => {
                // Perhaps written, perhaps not: the batch lapses either way.
                let failed = self.clock.now();
                let why = self
                    .failures
                    .failed(r.policy, &r.key, &error, generation, permit, failed);
                taking.finish(Took::Lost, now);
                Taken::Failed(why)
            }
        };
        Ok((taken, spent))
    }

    /// The verdict on a request spent from a batch, reported with `tats`.
    fn spent_from_batch(&self, r: &Resolved<'_>, ops: &[Op<'_>], tats: &[Nanos]) -> Verdict {
        let n = ops.len();
        let mut verdict = Verdict::from_ops(r.id, r.limits, ops, &tats[..n], Outcome::Allowed);
        verdict.batched = true;
        self.settle(verdict, r.policy)
    }

    /// A refusal here until `until`, by what this process saw of the
    /// buckets (`why`: the store throttles the key).
    fn waiting(
        &self,
        r: &Resolved<'_>,
        seen: &[Option<Nanos>],
        until: Nanos,
        now: Nanos,
        why: Option<Degradation>,
    ) -> Verdict {
        let wait = Duration::from_nanos(until.saturating_sub(now));
        let decisions = r
            .limits
            .iter()
            .zip(seen)
            .map(|(limit, seen)| Decision {
                allowed: false,
                limit: limit.quota().limit(),
                window: limit.quota().period(),
                // What the bucket holds, as last seen: less than the
                // request, or than the batch it waits for.
                remaining: seen.map_or(limit.quota().limit(), |tat| {
                    limit.quota().available(tat, now)
                }),
                retry_after: wait,
                reset_after: Duration::from_nanos(seen.unwrap_or(0).saturating_sub(now)),
            })
            .collect();
        let mut verdict = Verdict::from_decisions(r.id, decisions);
        verdict.degraded = why;
        verdict.batched = true;
        self.settle(verdict, r.policy)
    }
}

/// `tats`' first `n`, as seen.
fn known(tats: &[Nanos], n: usize) -> Vec<Option<Nanos>> {
    tats[..n].iter().map(|&t| Some(t)).collect()
}
