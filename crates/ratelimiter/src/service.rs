//! The rate-limit service: decides requests against policies, on a store.
//!
//! One decision: the policy's limits (or its tier's) give one GCRA step per
//! limit at the same instant; the stages of [`RateLimitService::run`] then
//! read top to bottom: the deny cache, a held hot key, the circuit breaker,
//! the store, the failure mode, the verdict. Each decision is recorded
//! (metrics, latency, the shadow-mode line) once, by
//! [`RateLimitService::record`], whatever path decided it.
//!
//! `$connect`'s two decisions in one round trip are in the `pair` module,
//! status and reset in `state`, and the seed's API, a thin facade, in
//! `seed`: each adds methods to [`RateLimitService`].

use std::sync::atomic::{AtomicBool, Ordering};

use crate::batch::{Batched, Batches};
use crate::cache::DenyCache;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::failure::{CircuitBreaker, Failures, Permit};
use crate::gcra::{self, Nanos, Outcome, ceil_secs};
use crate::key::{Key, KeySecret, shorten};
use crate::lease::{Lease, Seats};
use crate::memory::MemoryStore;
use crate::policy::{Limit, MAX_LIMITS, Policies, Policy, PolicyId};
use crate::store::{Op, Store};
use crate::telemetry::DecisionMetrics;
use crate::verdict::{Degradation, RateLimitError, Request, Verdict};

/// Decides requests against policies, with state kept in a [`Store`].
///
/// Create one per process (per Lambda container) with [`crate::Builder`],
/// and share it: it holds no per-request state.
///
/// ```
/// use ratelimiter::{Builder, PolicyId};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let limiter = Builder::new().in_memory();
/// let verdict = limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?;
/// assert!(verdict.allowed());
/// assert_eq!(verdict.decision.remaining, 1);
/// # Ok::<(), ratelimiter::RateLimitError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct RateLimitService<S = MemoryStore, C = SystemClock> {
    pub(crate) store: S,
    pub(crate) clock: C,
    pub(crate) policies: Policies,
    secret: Option<KeySecret>,
    tier_field: String,
    /// What this process saw of a shared store; `None` for a store in
    /// this process, which has nothing to save.
    pub(crate) cache: Option<DenyCache>,
    /// Hot keys' batches, beside the deny cache that sizes them.
    pub(crate) batches: Option<Batches>,
    pub(crate) failures: Failures,
    pub(crate) metrics: DecisionMetrics,
    /// Per policy: how long an item of its kind must be kept (ns).
    retention: Box<[Nanos]>,
    /// Per policy: whether an unknown tier was already reported.
    warned_tier: Box<[AtomicBool]>,
}

/// A request made ready for the store: its policy, the limits that apply,
/// its key, and how long the item it writes must be kept.
pub(crate) struct Resolved<'s> {
    pub(crate) id: PolicyId,
    pub(crate) policy: &'s Policy,
    pub(crate) limits: &'s [Limit],
    pub(crate) key: Key<'s>,
    pub(crate) retention: Nanos,
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// A service on `store`: [`crate::Builder`] is the one way to make one.
    pub(crate) fn new(
        store: S,
        config: Config,
        clock: C,
        breaker: CircuitBreaker,
        cache: Option<DenyCache>,
    ) -> Self {
        let Config {
            policies,
            secret,
            tier_field,
        } = config;
        let retention = policies
            .iter()
            .map(|(_, p)| policies.retention(p.kind()).as_nanos() as Nanos)
            .collect();
        let warned_tier = policies.iter().map(|_| AtomicBool::new(false)).collect();
        Self {
            metrics: DecisionMetrics::register(&policies, S::CALLS_METRIC),
            store,
            clock,
            policies,
            secret,
            tier_field,
            batches: cache.as_ref().map(|_| Batches::default()),
            failures: Failures::new(breaker, cache.is_some()),
            cache,
            retention,
            warned_tier,
        }
    }

    /// Takes the request's tokens, if every limit of its policy (or tier)
    /// allows it, and reports the verdict, allowed or not, as a value.
    ///
    /// `Err` is for what is not a decision: an unknown policy, a cost no
    /// bucket can hold. When the store fails, or the circuit breaker keeps
    /// it out, the policy's failure mode decides and the verdict says why
    /// (`degraded`): by default the request is allowed and a warning logged
    /// (the seed's graceful degradation).
    ///
    /// ```
    /// use ratelimiter::{Builder, PolicyId, Request};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Builder::new().in_memory();
    /// let request = Request::from((PolicyId::CONNECTION_ATTEMPT, "203.0.113.7")).cost(20);
    /// assert!(limiter.decide(request).await?.allowed());
    /// let verdict = limiter.decide((PolicyId::CONNECTION_ATTEMPT, "203.0.113.7")).await?;
    /// assert!(!verdict.allowed());
    /// assert_eq!(verdict.retry_after_secs(), 3);
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn decide<'r>(
        &self,
        request: impl Into<Request<'r>>,
    ) -> Result<Verdict, RateLimitError> {
        let request = request.into();
        let started = self.clock.now();
        let verdict = self.decide_at(&request, started).await?;
        Ok(self.record(verdict, Some(started)))
    }

    /// The policies in force.
    ///
    /// ```
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// assert_eq!(limiter.policies().len(), 4);
    /// ```
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The id of the policy called `name` (`-` may stand for `_`).
    ///
    /// ```
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// assert_eq!(limiter.policy_id("session-create"), Some(ratelimiter::PolicyId::SESSION_CREATE));
    /// ```
    pub fn policy_id(&self, name: &str) -> Option<PolicyId> {
        self.policies.id(name)
    }

    /// The authorizer-context field that holds a caller's tier.
    ///
    /// ```
    /// assert_eq!(ratelimiter::Builder::new().in_memory().tier_field(), "tier");
    /// ```
    pub fn tier_field(&self) -> &str {
        &self.tier_field
    }

    /// The store the state lives in: for what it offers of its own (the
    /// DynamoDB store's call count, its table). Decisions go through the
    /// service, which keeps the deny cache in step with the store.
    ///
    /// ```
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// assert!(limiter.store().is_empty());
    /// ```
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The circuit breaker guarding the store.
    ///
    /// ```
    /// use ratelimiter::failure::BreakerState;
    ///
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// assert_eq!(limiter.breaker().state(0), BreakerState::Closed);
    /// ```
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.failures.breaker
    }

    /// Now, in milliseconds since the Unix epoch, by the service's clock:
    /// the timestamp of responses.
    ///
    /// ```
    /// let clock = ratelimiter::FakeClock::at_secs(1_700_000_000);
    /// let limiter = ratelimiter::Builder::new().clock(clock).in_memory();
    /// assert_eq!(limiter.now_ms(), 1_700_000_000_000);
    /// ```
    pub fn now_ms(&self) -> u64 {
        self.clock.now() / 1_000_000
    }

    /// [`RateLimitService::decide`] at `now`, not yet recorded.
    pub(crate) async fn decide_at(
        &self,
        request: &Request<'_>,
        now: Nanos,
    ) -> Result<Verdict, RateLimitError> {
        let resolved = self.prepare(request)?;
        if let Some(lease) = self.lease(request, &resolved, now)? {
            return Ok(self.run(&resolved, &mut [], Some(&lease), &mut []).await);
        }
        match self.batched(request, &resolved, now)? {
            Batched::Plain => {}
            Batched::Decided(verdict) => return Ok(verdict),
            // Boxed: only a take waits for the store on this path, and
            // its future would otherwise grow every decision's.
            Batched::Take(pending) => {
                return Box::pin(self.batch_take(&resolved, pending, now)).await;
            }
        }
        let limits = resolved.limits;
        if let [limit] = limits {
            let mut ops = [Op::new(
                limit.slot(),
                self.step(resolved.policy, limit, now, request.cost)?,
            )];
            Ok(self.run(&resolved, &mut ops, None, &mut [0]).await)
        } else {
            let mut ops = self.ops(resolved.policy, limits, now, request.cost)?;
            let mut tats = [0; MAX_LIMITS];
            let n = limits.len();
            Ok(self
                .run(&resolved, &mut ops[..n], None, &mut tats[..n])
                .await)
        }
    }

    /// The stages of one decision, in order. `tats` is as long as `ops`.
    pub(crate) async fn run(
        &self,
        r: &Resolved<'_>,
        ops: &mut [Op<'_>],
        lease: Option<&Lease<'_>>,
        tats: &mut [Nanos],
    ) -> Verdict {
        // 1. The deny cache: a key this process knows to be exhausted (a
        // cap's seats are never cached: one frees whenever a holder goes).
        if let Some(cache) = &self.cache
            && cache.denies(&r.key, ops, tats)
        {
            let mut verdict = self.verdict(r, ops, tats, Outcome::Denied, Seats::default());
            verdict.cached = true;
            return verdict;
        }
        // 2. A held hot key, and 3. the circuit breaker. The breaker's
        // permit is taken last: it may be the one probe, which must then
        // call the store.
        let now = lease.map_or_else(|| ops[0].step.now(), |lease| lease.now);
        let permit = match self.failures.skip(&r.key, now) {
            Some(why) => Err(why),
            None => match self.failures.breaker.permit(now) {
                Permit::Skip => Err(Degradation::BreakerOpen),
                permit => Ok(permit),
            },
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(why) => {
                if why == Degradation::BreakerOpen {
                    tracing::debug!(
                        policy = r.policy.name(),
                        "circuit breaker open; not calling the rate-limit store"
                    );
                }
                return self.degraded(r, ops, tats, why);
            }
        };
        // 4. The store.
        let generation = self.failures.breaker.generation();
        let applied = self
            .store
            .apply(&r.key, ops, lease, r.retention, tats)
            .await;
        // 5. The failure mode, or 6. the verdict.
        let spent = applied.spent();
        let mut verdict = match applied.outcome {
            Ok(outcome) => {
                self.answered(&r.key, ops, outcome, tats);
                self.verdict(r, ops, tats, outcome, applied.seats)
            }
            Err(error) => {
                let now = self.clock.now();
                let why = self
                    .failures
                    .failed(r.policy, &r.key, &error, generation, permit, now);
                self.degraded(r, ops, tats, why)
            }
        };
        verdict.set_spent(spent);
        verdict
    }

    /// The store answered `outcome` with `tats`: the breaker and the deny
    /// cache learn it.
    #[inline]
    pub(crate) fn answered(&self, key: &Key<'_>, ops: &[Op<'_>], outcome: Outcome, tats: &[Nanos]) {
        self.failures.answered();
        if let Some(cache) = &self.cache {
            cache.learn(key, ops, outcome, tats);
        }
    }

    /// The failure mode's verdict, without calling the store.
    pub(crate) fn degraded(
        &self,
        r: &Resolved<'_>,
        ops: &[Op<'_>],
        tats: &mut [Nanos],
        why: Degradation,
    ) -> Verdict {
        let verdict = self
            .failures
            .decide(r.id, r.policy, r.limits, &r.key, ops, tats, why);
        self.settle(verdict, r.policy)
    }

    /// Marks `verdict` as shadowed when its policy is in shadow mode.
    #[inline]
    pub(crate) fn settle(&self, mut verdict: Verdict, policy: &Policy) -> Verdict {
        verdict.shadow = policy.shadow();
        verdict
    }

    /// Records one decision: counts it, times it from `started` (when
    /// timed), logs a denial that shadow mode let through, and keeps the
    /// policy's name on a denial. Every decision returned passes here once.
    #[inline]
    pub(crate) fn record(&self, mut verdict: Verdict, started: Option<Nanos>) -> Verdict {
        let policy = &self.policies[verdict.policy];
        verdict.name_denial(policy.shared_name());
        if verdict.would_deny() {
            tracing::info!(
                policy = policy.name(),
                key_type = policy.kind().as_str(),
                retry_after = ceil_secs(verdict.decision.retry_after),
                "rate limit would deny (shadow mode): allowed"
            );
        }
        self.metrics.count(&verdict);
        if let Some(started) = started {
            let elapsed = self.clock.now().saturating_sub(started);
            self.metrics.latency(verdict.policy, elapsed);
        }
        verdict
    }

    /// The policy, limits, key and retention of `request`.
    #[inline]
    pub(crate) fn prepare<'s>(
        &'s self,
        request: &Request<'s>,
    ) -> Result<Resolved<'s>, RateLimitError> {
        let (policy, limits) = self.resolve(request)?;
        Ok(Resolved {
            id: request.policy,
            policy,
            limits,
            key: self.key(request, policy),
            retention: self.retention(request),
        })
    }

    /// The item `request` counts in: its identifier as the request's kind,
    /// else the policy's.
    #[inline]
    pub(crate) fn key<'s>(&'s self, request: &Request<'s>, policy: &'s Policy) -> Key<'s> {
        let kind = request.kind.unwrap_or(policy.kind());
        Key::with_secret(kind, request.identifier, self.secret.as_ref())
    }

    /// How long the item `request` writes must be kept: until every bucket
    /// of any policy on its kind is full again.
    #[inline]
    pub(crate) fn retention(&self, request: &Request<'_>) -> Nanos {
        match request.kind {
            // Counted as another kind: that kind's policies decide.
            Some(kind) => self.policies.retention(kind).as_nanos() as Nanos,
            None => self.retention[request.policy.index()],
        }
    }

    #[inline]
    pub(crate) fn policy(&self, id: PolicyId) -> Result<&Policy, RateLimitError> {
        self.policies
            .get(id)
            .ok_or(RateLimitError::UnknownPolicy(id))
    }

    /// The policy and the limits that apply to `request`.
    #[inline]
    pub(crate) fn resolve(
        &self,
        request: &Request<'_>,
    ) -> Result<(&Policy, &[Limit]), RateLimitError> {
        let policy = self.policy(request.policy)?;
        if let Some(tier) = request.tier
            && policy.tier(tier).is_none()
            && !self.warned_tier[request.policy.index()].swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                policy = policy.name(),
                tier = %shorten(tier),
                "unknown tier: the policy's default limits apply (reported once per policy)"
            );
        }
        Ok((policy, policy.limits_for(request.tier)))
    }

    #[inline]
    pub(crate) fn step(
        &self,
        policy: &Policy,
        limit: &Limit,
        now: Nanos,
        cost: u32,
    ) -> Result<gcra::Step, RateLimitError> {
        limit
            .quota()
            .step(now, cost)
            .map_err(|source| RateLimitError::InvalidCost {
                policy: policy.shared_name().clone(),
                source,
            })
    }

    /// One op per limit, in an array as long as the longest policy.
    pub(crate) fn ops<'p>(
        &self,
        policy: &Policy,
        limits: &'p [Limit],
        now: Nanos,
        cost: u32,
    ) -> Result<[Op<'p>; MAX_LIMITS], RateLimitError> {
        let first = Op::new(limits[0].slot(), self.step(policy, &limits[0], now, cost)?);
        let mut ops = [first; MAX_LIMITS];
        for (op, limit) in ops.iter_mut().zip(limits).skip(1) {
            *op = Op::new(limit.slot(), self.step(policy, limit, now, cost)?);
        }
        Ok(ops)
    }
}

impl<C: Clock> RateLimitService<MemoryStore, C> {
    /// [`RateLimitService::decide`] for a service on this process's memory
    /// ([`crate::Builder::in_memory`]), synchronously: for callers without
    /// an async runtime, and where tens of nanoseconds count. Counted like
    /// any decision, but not timed: reading the clock again would add a
    /// third of its cost.
    ///
    /// ```
    /// use ratelimiter::{Builder, PolicyId};
    ///
    /// let limiter = Builder::new().in_memory();
    /// let verdict = limiter.decide_sync((PolicyId::HEARTBEAT, "conn-1"))?;
    /// assert_eq!(verdict.decision.remaining, 1);
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// ```
    #[inline]
    pub fn decide_sync<'r>(
        &self,
        request: impl Into<Request<'r>>,
    ) -> Result<Verdict, RateLimitError> {
        let request = request.into();
        let (policy, limits) = self.resolve(&request)?;
        let now = self.clock.now();
        let key = self.key(&request, policy);
        let mut verdict = if let [limit] = limits {
            let step = self.step(policy, limit, now, request.cost)?;
            let (outcome, tat) = self.store.apply_step(&key, limit.slot(), &step);
            Verdict::single(request.policy, limit.quota().decision(&step, outcome, tat))
        } else {
            let ops = self.ops(policy, limits, now, request.cost)?;
            let mut tats = [0; MAX_LIMITS];
            let n = limits.len();
            let outcome = self.store.apply_sync(&key, &ops[..n], &mut tats[..n]);
            Verdict::from_ops(request.policy, limits, &ops[..n], &tats[..n], outcome)
        };
        // One atomic section of the memory store.
        verdict.calls = 1;
        let verdict = self.settle(verdict, policy);
        Ok(self.record(verdict, None))
    }
}
