//! Several policies on one action, all or nothing: a message on a route
//! limited by a count and a byte quota, per connection and per user.
//!
//! [`RateLimitService::decide_all`] allows the action only if every request
//! is allowed; a refused action takes nothing from any of them. Requests
//! that share an item (the same identifier, counted as the same kind) are
//! decided in one store call, their steps applied atomically together;
//! requests on other items are decided at once, and what the allowed ones
//! took is given back when another refused.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::clock::Clock;
use crate::failure::Permit;
use crate::gcra::{Nanos, Outcome};
use crate::lease::{Lease, Seats};
use crate::policy::Limit;
use crate::service::RateLimitService;
use crate::store::{Op, Spent, Store};
use crate::verdict::{RateLimitError, Request, Verdict};
use crate::verdicts::{Plan, keep_refusals};

/// What one item's requests came to.
struct Decided<'s> {
    /// Allowed: every verdict, in the requests' order. Refused: the
    /// verdicts of the requests that refused.
    verdicts: Vec<Verdict>,
    /// Whether every request of the item was allowed.
    allowed: bool,
    /// What the store took for the item, to give back if another item
    /// refuses: the ops of its allowed, stored (not degraded) decisions,
    /// and the leases they took.
    taken: Vec<Op<'s>>,
    leases: Vec<Lease<'s>>,
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// Decides `requests` as one action: allowed only if every request is
    /// allowed, and then each takes its tokens; refused if any is refused,
    /// and then none takes anything.
    ///
    /// When allowed, the result holds every verdict, in the order of
    /// `requests`; when refused, the verdicts of the requests that refused
    /// it (at least one), the first of which counts every store call made.
    /// Requests on one item cost one store call together.
    ///
    /// ```
    /// use ratelimiter::{Builder, Config, Request};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let config = Config::from_file_text("limits.toml", r#"
    ///     [policy.messages]
    ///     key = "connection"
    ///     limits = ["5/s"]
    ///     [policy.message_bytes]
    ///     key = "connection"
    ///     unit = "bytes"
    ///     limits = ["1000/min"]
    /// "#, |_| None)?;
    /// let limiter = Builder::from_config(config).in_memory();
    /// let (messages, bytes) = (limiter.policy_id("messages").unwrap(), limiter.policy_id("message_bytes").unwrap());
    /// let send = |size| [Request::from((messages, "conn-1")), Request::from((bytes, "conn-1")).cost(size)];
    ///
    /// let verdicts = limiter.decide_all(&send(600)).await?;
    /// assert!(verdicts.iter().all(|v| v.allowed()));
    /// // 600 more bytes do not fit: refused, and the message is not counted.
    /// let refused = limiter.decide_all(&send(600)).await?;
    /// assert_eq!(refused.len(), 1);
    /// assert_eq!(refused[0].policy, bytes);
    /// let verdicts = limiter.decide_all(&send(10)).await?;
    /// assert_eq!(verdicts[0].decision.remaining, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn decide_all(
        &self,
        requests: &[Request<'_>],
    ) -> Result<Vec<Verdict>, RateLimitError> {
        let started = self.clock.now();
        let verdicts = self.all_at(requests, started).await?;
        Ok(verdicts
            .into_iter()
            .map(|verdict| self.record(verdict, Some(started)))
            .collect())
    }

    /// [`RateLimitService::decide_all`] at `now`, not yet recorded.
    pub(crate) async fn all_at(
        &self,
        requests: &[Request<'_>],
        now: Nanos,
    ) -> Result<Vec<Verdict>, RateLimitError> {
        if let [request] = requests {
            return Ok(vec![self.decide_at(request, now).await?]);
        }
        // Every request planned before anything is asked: a bad one takes
        // nothing from the others.
        let plans = requests
            .iter()
            .map(|request| self.plan(request, now))
            .collect::<Result<Vec<_>, _>>()?;
        let mut items: Vec<Vec<usize>> = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            match items
                .iter_mut()
                .find(|item| plans[item[0]].resolved.key == plan.resolved.key)
            {
                Some(item) => item.push(i),
                None => items.push(vec![i]),
            }
        }
        if let [_] = items.as_slice() {
            let plans: Vec<&Plan<'_>> = plans.iter().collect();
            return Ok(self.item(requests, &plans, now).await?.verdicts);
        }
        let decisions = join_all(items.iter().map(|item| {
            let requests: Vec<Request<'_>> = item.iter().map(|&i| requests[i]).collect();
            let plans: Vec<&Plan<'_>> = item.iter().map(|&i| &plans[i]).collect();
            Box::pin(async move { self.item(&requests, &plans, now).await })
                as Pin<Box<dyn Future<Output = _> + Send + '_>>
        }))
        .await;
        let mut decided: Vec<(&Vec<usize>, Decided<'_>)> = Vec::with_capacity(decisions.len());
        for (item, result) in items.iter().zip(decisions) {
            decided.push((item, result?));
        }
        if decided.iter().all(|(_, d)| d.allowed) {
            let mut verdicts: Vec<(usize, Verdict)> = decided
                .into_iter()
                .flat_map(|(item, d)| item.iter().copied().zip(d.verdicts))
                .collect();
            verdicts.sort_by_key(|(i, _)| *i);
            return Ok(verdicts.into_iter().map(|(_, v)| v).collect());
        }
        // Refused: what the allowed items took is given back.
        let mut spent = Spent::default();
        let mut refused = Vec::new();
        for (item, d) in decided {
            spent += d.verdicts.iter().map(Verdict::spent).sum();
            if d.allowed {
                spent += self.give_back(&plans[item[0]], &d.taken, &d.leases).await;
            } else {
                refused.extend(d.verdicts);
            }
        }
        refused[0].set_spent(spent);
        Ok(refused)
    }

    /// The requests of one item (`plans` share a key): one store call for
    /// all of their steps, unless the process already knows the answer or
    /// may not call the store.
    async fn item<'p>(
        &self,
        requests: &[Request<'_>],
        plans: &[&Plan<'p>],
        now: Nanos,
    ) -> Result<Decided<'p>, RateLimitError> {
        // One request needs no merging; a shadow policy's denial must not
        // stop the others, as the store's all-or-nothing write would: such
        // items are decided one by one. A store call takes one lease.
        let mut leases = plans.iter().filter_map(|plan| plan.lease.as_ref());
        let lease = leases.next();
        if plans.len() == 1
            || leases.next().is_some()
            || plans.iter().any(|plan| plan.resolved.policy.shadow())
        {
            return self.in_turn(requests, plans, now).await;
        }
        let key = &plans[0].resolved.key;
        let mut ops: Vec<Op<'p>> = plans.iter().flat_map(|p| p.ops.iter().copied()).collect();
        let mut tats = vec![0; ops.len()];
        if let Some(cache) = &self.cache
            && cache.denies(key, &mut ops, &mut tats)
        {
            let mut verdicts = self.refused(plans, &ops, &tats, Seats::default());
            for verdict in &mut verdicts {
                verdict.cached = true;
            }
            return Ok(Decided {
                verdicts,
                allowed: false,
                taken: Vec::new(),
                leases: Vec::new(),
            });
        }
        // The breaker last: its one probe must call the store.
        let permit = if self.failures.held(key, now) {
            Permit::Skip
        } else {
            self.failures.breaker.permit(now)
        };
        if permit == Permit::Skip {
            return self.in_turn(requests, plans, now).await;
        }
        let retention = plans.iter().map(|p| p.resolved.retention).max();
        let generation = self.failures.breaker.generation();
        let applied = self
            .store
            .apply(key, &ops, lease, retention.unwrap_or(0), &mut tats)
            .await;
        let seats = applied.seats;
        let spent = applied.spent();
        let mut decided = match applied.outcome {
            Ok(outcome) => {
                self.answered(key, &ops, outcome, &tats);
                match outcome {
                    Outcome::Allowed => Decided {
                        verdicts: self.verdicts(plans, &ops, &tats, Outcome::Allowed, seats),
                        allowed: true,
                        taken: ops,
                        // A seat its holder had already stays with it.
                        leases: lease.copied().into_iter().filter(|_| seats.fresh).collect(),
                    },
                    Outcome::Denied => Decided {
                        verdicts: self.refused(plans, &ops, &tats, seats),
                        allowed: false,
                        taken: Vec::new(),
                        leases: Vec::new(),
                    },
                }
            }
            Err(error) => {
                // Perhaps written, perhaps not: each policy's failure mode
                // decides, and nothing is given back.
                let first = &plans[0].resolved;
                let why = self.failures.failed(
                    first.policy,
                    key,
                    &error,
                    generation,
                    permit,
                    self.clock.now(),
                );
                let mut verdicts = self.degraded_each(plans, &ops, &mut tats, why);
                Decided {
                    allowed: keep_refusals(&mut verdicts),
                    verdicts,
                    taken: Vec::new(),
                    leases: Vec::new(),
                }
            }
        };
        decided.verdicts[0].set_spent(spent);
        Ok(decided)
    }

    /// The requests of one item, one after the other, each with the
    /// service's whole pipeline; the first refusal stops them, and what
    /// the earlier ones took is given back.
    async fn in_turn<'p>(
        &self,
        requests: &[Request<'_>],
        plans: &[&Plan<'p>],
        now: Nanos,
    ) -> Result<Decided<'p>, RateLimitError> {
        let mut verdicts = Vec::with_capacity(requests.len());
        let mut taken: Vec<Op<'p>> = Vec::new();
        let mut leases: Vec<Lease<'p>> = Vec::new();
        for (request, plan) in requests.iter().zip(plans) {
            let mut verdict = self.decide_at(request, now).await?;
            if verdict.allowed() {
                // Only what the store really took is given back: not a
                // shadow policy's would-be denial, nor a failure mode's.
                if verdict.took_from_store() {
                    taken.extend(plan.ops.iter().copied());
                    leases.extend(plan.lease.filter(|_| verdict.fresh_seat));
                }
                verdicts.push(verdict);
                continue;
            }
            verdict.add_spent(verdicts.iter().map(Verdict::spent).sum());
            verdict.add_spent(self.give_back(plan, &taken, &leases).await);
            return Ok(Decided {
                verdicts: vec![verdict],
                allowed: false,
                taken: Vec::new(),
                leases: Vec::new(),
            });
        }
        Ok(Decided {
            verdicts,
            allowed: true,
            taken,
            leases,
        })
    }

    /// The resolved request and its ops at `now`, in a vector, or its
    /// lease for a cap.
    pub(crate) fn plan<'s>(
        &'s self,
        request: &Request<'s>,
        now: Nanos,
    ) -> Result<Plan<'s>, RateLimitError> {
        let resolved = self.prepare(request)?;
        let ops = resolved
            .limits
            .iter()
            .map(|limit: &Limit| {
                Ok(Op::new(
                    limit.slot(),
                    self.step(resolved.policy, limit, now, request.cost)?,
                ))
            })
            .collect::<Result<_, RateLimitError>>()?;
        let lease = self.lease(request, &resolved, now)?;
        Ok(Plan {
            resolved,
            ops,
            lease,
        })
    }

    /// Gives back what a check of `plans` took, if it was allowed (a
    /// refused check took nothing): each stored (not degraded) decision's
    /// tokens, and the seats it took; the calls that cost. `verdicts` are
    /// the check's, one per plan when allowed.
    pub(crate) async fn give_back_check(&self, plans: &[Plan<'_>], verdicts: &[Verdict]) -> Spent {
        let mut spent = Spent::default();
        if !verdicts.iter().all(Verdict::allowed) {
            return spent;
        }
        for (plan, verdict) in plans.iter().zip(verdicts) {
            if verdict.took_from_store() {
                // A seat its holder had already stays with it.
                let fresh = plan.lease.filter(|_| verdict.fresh_seat);
                let leases: Vec<_> = fresh.into_iter().collect();
                spent += self.give_back(plan, &plan.ops, &leases).await;
            }
        }
        spent
    }

    /// Gives back `taken` and `leases` on `plan`'s item, for an action
    /// refused after they were taken; the calls that cost.
    pub(crate) async fn give_back(
        &self,
        plan: &Plan<'_>,
        taken: &[Op<'_>],
        leases: &[Lease<'_>],
    ) -> Spent {
        let key = &plan.resolved.key;
        let mut spent = Spent::default();
        // A probe (cost 0) took nothing: no call to give it back.
        let taken: Vec<Op<'_>> = taken
            .iter()
            .filter(|op| op.step.increment() > 0)
            .copied()
            .collect();
        let taken = taken.as_slice();
        if !taken.is_empty() {
            spent.calls += 1;
            if let Some(cache) = &self.cache {
                cache.refund(key, taken);
            }
            match self.store.refund(key, taken).await {
                Ok(capacity) => spent.capacity += capacity,
                // The tokens stay taken: stricter, never looser.
                Err(error) => tracing::warn!(
                    policy = plan.resolved.policy.name(),
                    %error,
                    "could not give back a refused request's tokens"
                ),
            }
        }
        for lease in leases {
            spent.calls += 1;
            match self.store.release(key, lease).await {
                Ok(capacity) => spent.capacity += capacity,
                // The seat stays taken until the lease ends: stricter.
                Err(error) => tracing::warn!(
                    policy = plan.resolved.policy.name(),
                    %error,
                    "could not give back a refused request's seat"
                ),
            }
        }
        spent
    }
}

/// Polls every future until all are done: one decision per item, at once.
async fn join_all<F: Future + Unpin>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<F>> = futures.map(Some).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(future) = slot
                && let Poll::Ready(value) = Pin::new(future).poll(cx)
            {
                *out = Some(value);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            Poll::Ready(done.iter_mut().map(|o| o.take().expect("set")).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}
