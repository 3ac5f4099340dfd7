//! Two decisions in a row, in one round trip: `$connect`'s connection
//! attempt, then its session creation or listener join
//! ([`RateLimitService::decide_both`]), and two checks of several policies
//! each, as a configured `$connect` has them
//! ([`RateLimitService::decide_in_turn`]).
//!
//! [`RateLimitService::decide_both`] has the result of two checks in a row (a
//! refused second still counts the first; a refused first takes nothing from
//! the second) at the cost of one round trip when both are allowed: one store
//! call when both count the same identifier (their buckets share an item),
//! else two calls at once, the second's tokens given back if the first was
//! refused. Whatever the path, each verdict returned is recorded once, and a
//! decision made and given back is not recorded at all: only its store calls
//! count, under the first request.

use crate::clock::Clock;
use crate::failure::Permit;
use crate::gcra::{Nanos, Outcome};
use crate::lease::Seats;
use crate::service::RateLimitService;
use crate::store::{Op, Store};
use crate::verdict::{RateLimitError, Request, Verdict};
use crate::verdicts::{Plan, keep_refusals, refuses, spans};

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// Decides `first`, and `second` only if `first` is allowed, with the
    /// result of two decisions in a row: a refused `second` still counts
    /// `first`, and a refused `first` takes nothing from `second` (whose
    /// verdict is then `None`).
    ///
    /// ```
    /// use ratelimiter::{Builder, PolicyId};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Builder::new().in_memory();
    /// let attempt = (PolicyId::CONNECTION_ATTEMPT, "203.0.113.7");
    /// let join = (PolicyId::LISTENER_JOIN, "203.0.113.7");
    /// for _ in 0..10 {
    ///     let (first, second) = limiter.decide_both(attempt, join).await?;
    ///     assert!(first.allowed() && second.is_some_and(|v| v.allowed()));
    /// }
    /// // The 11th join is refused; its attempt still counts.
    /// let (first, second) = limiter.decide_both(attempt, join).await?;
    /// assert_eq!(first.decision.remaining, 9);
    /// assert!(!second.unwrap().allowed());
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn decide_both<'a, 'b>(
        &self,
        first: impl Into<Request<'a>>,
        second: impl Into<Request<'b>>,
    ) -> Result<(Verdict, Option<Verdict>), RateLimitError> {
        let (first, second) = (first.into(), second.into());
        let started = self.clock.now();
        let (v1, v2) = self.pair(&first, &second, started).await?;
        let v1 = self.record(v1, Some(started));
        Ok((v1, v2.map(|v2| self.record(v2, Some(started)))))
    }

    /// [`RateLimitService::decide_both`] at `now`, not yet recorded.
    async fn pair(
        &self,
        first: &Request<'_>,
        second: &Request<'_>,
        now: Nanos,
    ) -> Result<(Verdict, Option<Verdict>), RateLimitError> {
        // Both planned before anything is asked: a bad request takes nothing.
        let plan1 = self.plan(first, now)?;
        let plan2 = self.plan(second, now)?;
        if plan1.lease.is_some() || plan2.lease.is_some() {
            // A cap: `decide_in_turn` is `$connect`'s path for those.
            return self.pair_in_turn(first, second, now).await;
        }
        if plan1.resolved.key != plan2.resolved.key {
            return self.pair_apart(first, plan1, second, plan2, now).await;
        }
        let (r1, r2) = (&plan1.resolved, &plan2.resolved);
        let key = &r1.key;
        let n1 = plan1.ops.len();
        let mut ops = plan1.ops;
        ops.extend(plan2.ops);
        let mut tats = vec![0; ops.len()];
        let known_denied = self
            .cache
            .as_ref()
            .is_some_and(|cache| cache.denies(key, &mut ops, &mut tats));
        // The breaker last: when it hands out its one probe, the store must
        // be called, and a cached denial or a held key would not call it.
        let permit = if known_denied || self.failures.held(key, now) {
            Permit::Skip
        } else {
            self.failures.breaker.permit(now)
        };
        if permit == Permit::Skip {
            // Not the common case: decide them one after the other, each
            // with the cache, the breaker and the failure modes.
            return self.pair_in_turn(first, second, now).await;
        }
        let retention = r1.retention.max(r2.retention);
        let generation = self.failures.breaker.generation();
        let applied = self
            .store
            .apply(key, &ops, None, retention, &mut tats)
            .await;
        let spent = applied.spent();
        if let Ok(outcome) = applied.outcome {
            self.answered(key, &ops, outcome, &tats);
        }
        let (ops1, ops2) = ops.split_at(n1);
        let (tats1, tats2) = tats.split_at_mut(n1);
        let outcome = match applied.outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                // Perhaps written, perhaps not: never call again for it.
                let failed = self.clock.now();
                let why = self
                    .failures
                    .failed(r1.policy, key, &error, generation, permit, failed);
                let mut v1 = self.degraded(r1, ops1, tats1, why);
                v1.set_spent(spent);
                if !v1.allowed() {
                    return Ok((v1, None));
                }
                return Ok((v1, Some(self.degraded(r2, ops2, tats2, why))));
            }
        };
        if outcome == Outcome::Allowed {
            // One call decided both; it is counted under the first.
            let mut v1 = self.verdict(r1, ops1, tats1, Outcome::Allowed, Seats::default());
            v1.set_spent(spent);
            let v2 = self.verdict(r2, ops2, tats2, Outcome::Allowed, Seats::default());
            return Ok((v1, Some(v2)));
        }
        let first_alone = ops1
            .iter()
            .zip(tats1.iter())
            .all(|(op, &tat)| op.step.apply(tat).0 == Outcome::Allowed);
        if !first_alone {
            let mut v1 = self.verdict(r1, ops1, tats1, Outcome::Denied, Seats::default());
            v1.set_spent(spent);
            if !v1.allowed() {
                return Ok((v1, None));
            }
            // Denied in shadow mode: let through, so the second is decided
            // as it would be after it.
            return Ok((v1, Some(self.decide_at(second, now).await?)));
        }
        // Only `second` refused: `first` still counts, in a call of its own.
        let v2 = self.verdict(r2, ops2, tats2, Outcome::Denied, Seats::default());
        let mut v1 = self.decide_at(first, now).await?;
        v1.add_spent(spent);
        if !v1.allowed() {
            return Ok((v1, None));
        }
        Ok((v1, Some(v2)))
    }

    /// The two decisions one after the other, each on its own.
    async fn pair_in_turn(
        &self,
        first: &Request<'_>,
        second: &Request<'_>,
        now: Nanos,
    ) -> Result<(Verdict, Option<Verdict>), RateLimitError> {
        let v1 = self.decide_at(first, now).await?;
        if !v1.allowed() {
            return Ok((v1, None));
        }
        Ok((v1, Some(self.decide_at(second, now).await?)))
    }

    /// The two decisions on two items, with their plans: both at once, then
    /// `second`'s tokens given back if `first` was refused.
    async fn pair_apart(
        &self,
        first: &Request<'_>,
        mut plan1: Plan<'_>,
        second: &Request<'_>,
        plan2: Plan<'_>,
        now: Nanos,
    ) -> Result<(Verdict, Option<Verdict>), RateLimitError> {
        // Already known to refuse `first`: `second` is not asked at all.
        let mut tats = vec![0; plan1.ops.len()];
        if let Some(cache) = &self.cache
            && cache.denies(&plan1.resolved.key, &mut plan1.ops, &mut tats)
        {
            return self.pair_in_turn(first, second, now).await;
        }
        let (v1, v2) = join(self.decide_at(first, now), self.decide_at(second, now)).await;
        let (mut v1, v2) = (v1?, v2?);
        if v1.allowed() {
            return Ok((v1, Some(v2)));
        }
        // The second's decision is not reported (a refused first takes
        // nothing from it), but its calls were made for this one.
        v1.add_spent(v2.spent());
        if v2.took_from_store() {
            v1.add_spent(self.give_back(&plan2, &plan2.ops, &[]).await);
        }
        Ok((v1, None))
    }
}

/// Polls two futures until both are done: `$connect`'s two decisions at once.
pub(crate) async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(out) = a.as_mut().poll(cx)
        {
            ra = Some(out);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(out) = b.as_mut().poll(cx)
        {
            rb = Some(out);
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().expect("set"), rb.take().expect("set")))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// Two checks in a row, each of several policies, all or nothing
    /// ([`RateLimitService::decide_all`]): `second` is decided only if
    /// `first` is allowed, a refused `first` takes nothing from `second`
    /// (whose verdicts are then `None`), and a refused `second` still
    /// counts `first`. What a configured `$connect` checks.
    ///
    /// When every request counts the same item (a listener's checks, all
    /// per address), both are decided in one store call; otherwise both at
    /// once, one call per item, and what `second` took is given back if
    /// `first` was refused. Each result holds, like `decide_all`'s, every
    /// verdict when allowed, the refusing ones when not.
    ///
    /// ```
    /// use ratelimiter::{Builder, Config, PolicyId, Request};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let config = Config::from_file_text("limits.toml",
    ///     "[policy.hourly]\nkey = \"ip\"\nlimits = [\"100/h\"]\n", |_| None)?;
    /// let limiter = Builder::from_config(config).in_memory();
    /// let hourly = limiter.policy_id("hourly").unwrap();
    /// let ip = "203.0.113.7";
    /// let everyone = [Request::from((PolicyId::CONNECTION_ATTEMPT, ip)), Request::from((hourly, ip))];
    /// let listener = [Request::from((PolicyId::LISTENER_JOIN, ip))];
    /// let (first, second) = limiter.decide_in_turn(&everyone, &listener).await?;
    /// assert_eq!(first.len(), 2);
    /// assert!(second.unwrap()[0].allowed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn decide_in_turn(
        &self,
        first: &[Request<'_>],
        second: &[Request<'_>],
    ) -> Result<(Vec<Verdict>, Option<Vec<Verdict>>), RateLimitError> {
        let started = self.clock.now();
        let (v1, v2) = self.in_turn_at(first, second, started).await?;
        let record = |verdicts: Vec<Verdict>| -> Vec<Verdict> {
            verdicts
                .into_iter()
                .map(|v| self.record(v, Some(started)))
                .collect()
        };
        Ok((record(v1), v2.map(record)))
    }

    /// [`RateLimitService::decide_in_turn`] at `now`, not yet recorded.
    pub(crate) async fn in_turn_at(
        &self,
        first: &[Request<'_>],
        second: &[Request<'_>],
        now: Nanos,
    ) -> Result<(Vec<Verdict>, Option<Vec<Verdict>>), RateLimitError> {
        // Every request planned before anything is asked.
        let plans1 = first
            .iter()
            .map(|r| self.plan(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        let plans2 = second
            .iter()
            .map(|r| self.plan(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        let all: Vec<&Plan<'_>> = plans1.iter().chain(&plans2).collect();
        // One store call takes at most one lease.
        let mut leases = all.iter().filter_map(|p| p.lease.as_ref());
        let lease = leases.next();
        let one_item = match all.first() {
            Some(lead) => {
                leases.next().is_none()
                    && all
                        .iter()
                        .all(|p| p.resolved.key == lead.resolved.key && !p.resolved.policy.shadow())
            }
            None => false,
        };
        let mut ops: Vec<Op<'_>> = all.iter().flat_map(|p| p.ops.iter().copied()).collect();
        let mut tats = vec![0; ops.len()];
        let one_call = one_item && !plans1.is_empty() && {
            let key = &all[0].resolved.key;
            let known_denied = self
                .cache
                .as_ref()
                .is_some_and(|cache| cache.denies(key, &mut ops, &mut tats));
            !known_denied && !self.failures.held(key, now)
        };
        // The breaker's permit last: its one probe must call the store.
        let permit = if one_call {
            self.failures.breaker.permit(now)
        } else {
            Permit::Skip
        };
        if permit == Permit::Skip {
            if lease.is_some() {
                let apart = !one_item && !plans1.is_empty() && !plans2.is_empty();
                if apart && !self.known_denied(all.iter().copied()) {
                    return self.caps_apart(first, &plans1, second, &plans2, now).await;
                }
                return self.rates_then_caps(first, second, &all, now, None).await;
            }
            if one_item || plans1.is_empty() || plans2.is_empty() {
                return self.one_then_other(first, second, now).await;
            }
            return self
                .in_turn_apart(first, &plans1, second, &plans2, now)
                .await;
        }
        let key = &all[0].resolved.key;
        let retention = all.iter().map(|p| p.resolved.retention).max().unwrap_or(0);
        let generation = self.failures.breaker.generation();
        let applied = self
            .store
            .apply(key, &ops, lease, retention, &mut tats)
            .await;
        let seats = applied.seats;
        let n1: usize = plans1.iter().map(|p| p.ops.len()).sum();
        let (p1, p2): (Vec<&Plan<'_>>, Vec<&Plan<'_>>) =
            (plans1.iter().collect(), plans2.iter().collect());
        let spent = applied.spent();
        let outcome = match applied.outcome {
            Ok(outcome) => {
                self.answered(key, &ops, outcome, &tats);
                outcome
            }
            Err(error) => {
                // Perhaps written, perhaps not: each policy's failure mode
                // decides, in turn.
                let why = self.failures.failed(
                    all[0].resolved.policy,
                    key,
                    &error,
                    generation,
                    permit,
                    self.clock.now(),
                );
                let (ops1, ops2) = ops.split_at(n1);
                let (tats1, tats2) = tats.split_at_mut(n1);
                let mut v1 = self.degraded_each(&p1, ops1, tats1, why);
                v1[0].set_spent(spent);
                if !keep_refusals(&mut v1) {
                    return Ok((v1, None));
                }
                let mut v2 = self.degraded_each(&p2, ops2, tats2, why);
                keep_refusals(&mut v2);
                return Ok((v1, Some(v2)));
            }
        };
        let (ops1, ops2) = ops.split_at(n1);
        let (tats1, tats2) = tats.split_at(n1);
        if outcome == Outcome::Allowed {
            // One call decided both; it is counted under the first.
            let mut v1 = self.verdicts(&p1, ops1, tats1, Outcome::Allowed, seats);
            v1[0].set_spent(spent);
            let v2 = self.verdicts(&p2, ops2, tats2, Outcome::Allowed, seats);
            return Ok((v1, Some(v2)));
        }
        if lease.is_some() {
            // A cap refused, or a rate: the rates count in turn before the
            // seat is asked for, so they are decided again, without it. If
            // the rates fit, the answer says the cap is full.
            let rates_fit = !spans(&all).any(|(plan, span)| {
                plan.lease.is_none() && refuses(plan, &ops[span.clone()], &tats[span], seats)
            });
            let full = rates_fit.then(|| self.refused(&all, &ops, &tats, seats));
            let (mut v1, v2) = self.rates_then_caps(first, second, &all, now, full).await?;
            if let Some(v) = v1.first_mut() {
                v.add_spent(spent);
            }
            return Ok((v1, v2));
        }
        let first_alone =
            !spans(&p1).any(|(plan, span)| refuses(plan, &ops1[span.clone()], &tats1[span], seats));
        if !first_alone {
            let mut v1 = self.refused(&p1, ops1, tats1, seats);
            v1[0].set_spent(spent);
            return Ok((v1, None));
        }
        // Only `second` refused: `first` still counts, in a call of its own.
        let v2 = self.refused(&p2, ops2, tats2, seats);
        let mut v1 = self.all_at(first, now).await?;
        v1[0].add_spent(spent);
        if !v1.iter().all(Verdict::allowed) {
            return Ok((v1, None));
        }
        Ok((v1, Some(v2)))
    }

    /// Each check on its own, with the cache, the breaker and the failure
    /// modes: `second` only if `first` was allowed.
    async fn one_then_other(
        &self,
        first: &[Request<'_>],
        second: &[Request<'_>],
        now: Nanos,
    ) -> Result<(Vec<Verdict>, Option<Vec<Verdict>>), RateLimitError> {
        let v1 = self.all_at(first, now).await?;
        if !v1.iter().all(Verdict::allowed) {
            return Ok((v1, None));
        }
        Ok((v1, Some(self.all_at(second, now).await?)))
    }

    /// Two checks on different items: both at once, then what `second`
    /// took given back if `first` was refused (as `decide_both` does for
    /// a speaker), unless `first` is already known to be refused.
    async fn in_turn_apart(
        &self,
        first: &[Request<'_>],
        plans1: &[Plan<'_>],
        second: &[Request<'_>],
        plans2: &[Plan<'_>],
        now: Nanos,
    ) -> Result<(Vec<Verdict>, Option<Vec<Verdict>>), RateLimitError> {
        if self.known_denied(plans1) {
            return self.one_then_other(first, second, now).await;
        }
        let (v1, v2) = join(self.all_at(first, now), self.all_at(second, now)).await;
        let (mut v1, v2) = (v1?, v2?);
        if v1.iter().all(Verdict::allowed) {
            return Ok((v1, Some(v2)));
        }
        // A refused first takes nothing from the second: what it took is
        // given back; its calls were made for this decision.
        v1[0].add_spent(v2.iter().map(Verdict::spent).sum());
        v1[0].add_spent(self.give_back_check(plans2, &v2).await);
        Ok((v1, None))
    }
}
