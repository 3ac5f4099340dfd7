//! The rate-limit service: checks requests against policies, with the
//! seed's API (one check per built-in policy, a status query) and the
//! failure modes for an unavailable store.
//!
//! One decision: the policy's limits (or its tier's) give one GCRA step per
//! limit at the same instant; the store applies them to the buckets of one
//! item atomically; the verdict reports the tightest limit and every limit's
//! numbers. Before the store is called, it may answer from what this process
//! knows (a cached denial); when it fails, or the circuit breaker keeps it
//! out, the policy's failure mode decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::failure::{CircuitBreaker, FailureMode, Permit};
use crate::gcra::{self, CostExceedsCapacity, Decision, Nanos, Quota, Status, ceil_secs};
use crate::key::{Key, KeySecret, Kind, Slot, shorten};
use crate::memory::MemoryStore;
use crate::policy::{Limit, MAX_LIMITS, Policies, Policy, PolicyId, PolicyName};
use crate::store::{Op, Outcome, Store, StoreError, StoreErrorKind};
use crate::telemetry::DecisionMetrics;

/// Checks requests against policies, with state kept in a [`Store`].
///
/// Create one per process (per Lambda container) and share it: it holds no
/// per-request state. [`crate::Builder`] makes one from the environment.
///
/// ```
/// use ratelimiter::{RateLimitError, RateLimitService};
///
/// # tokio_test_block_on(async {
/// let service = RateLimitService::in_memory(Default::default());
/// service.check_heartbeat_limit("conn-1").await.unwrap();
/// service.check_heartbeat_limit("conn-1").await.unwrap();
/// match service.check_heartbeat_limit("conn-1").await {
///     Err(RateLimitError::Exceeded { retry_after, .. }) => assert_eq!(retry_after, 30),
///     other => panic!("expected a denial, got {other:?}"),
/// }
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct RateLimitService<S = MemoryStore, C = SystemClock> {
    store: S,
    clock: C,
    policies: Policies,
    secret: Option<KeySecret>,
    tier_field: String,
    breaker: CircuitBreaker,
    /// Decides for policies in [`FailureMode::Local`] while the store is away.
    local: MemoryStore,
    metrics: DecisionMetrics,
    /// Per policy: how long an item of its kind must be kept (ns).
    retention: Box<[Nanos]>,
    /// Per policy: whether an unknown tier was already reported.
    warned_tier: Box<[AtomicBool]>,
    /// Keys the store throttled or gave up on lately.
    hot_keys: HotKeys,
}

/// Keys the store throttled or gave up on: until when each is decided here
/// without asking the store, and when it was last reported. Built once, so
/// that a decision pays one relaxed load to learn that no key is hot.
#[derive(Debug)]
struct HotKeys {
    buckets: MemoryStore,
    /// Whether any key was ever marked: the common case skips the lookup.
    any: AtomicBool,
    /// The bucket holding until when a key is held.
    hold: Slot,
    /// The bucket that lets a hot key be reported once a minute.
    report: Slot,
    report_quota: Quota,
}

impl HotKeys {
    fn new() -> Self {
        Self {
            buckets: MemoryStore::with_max_keys(LOCAL_FALLBACK_KEYS),
            any: AtomicBool::new(false),
            hold: Slot::new("hot-key-hold"),
            report: Slot::new("hot-key-report@60"),
            report_quota: Quota::per_minute(std::num::NonZeroU32::MIN),
        }
    }

    /// Whether `key` is held at `now`: decided here without asking the store.
    #[inline]
    fn held(&self, key: &Key<'_>, now: Nanos) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .buckets
                .get_now(key, &self.hold)
                .is_some_and(|until| until > now)
    }

    /// Holds `key` for [`HOT_KEY_HOLD`] from `now`; true when it is time to
    /// report it (once a minute per key).
    fn mark(&self, key: &Key<'_>, now: Nanos) -> bool {
        self.any.store(true, Ordering::Relaxed);
        let until = now.saturating_add(HOT_KEY_HOLD.as_nanos() as Nanos);
        self.buckets.record_now(key, &self.hold, until, now);
        let step = self.report_quota.step(now, 1).expect("one token fits");
        matches!(
            self.buckets.apply_step(key, &self.report, &step),
            gcra::Outcome::Allowed { .. }
        )
    }
}

/// One request made ready for the store: its policy, the limits that apply,
/// its key and one op per limit.
struct Plan<'s> {
    policy: &'s Policy,
    limits: &'s [Limit],
    key: Key<'s>,
    ops: Vec<Op<'s>>,
}

/// How long a throttled or contended key is decided in this process without
/// asking the store again: calling a throttled partition only adds to its
/// throttling.
pub const HOT_KEY_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// Buckets the local fallback limiter keeps at most.
const LOCAL_FALLBACK_KEYS: usize = 10_000;

/// One request to decide: a policy, an identifier, and optionally a tier, a
/// cost and another kind than the policy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The policy whose limits apply.
    pub policy: PolicyId,
    /// Who is counted: a user id, an IP address, a connection id, ...
    pub identifier: &'a str,
    /// The caller's tier, if it has one; an unknown tier gets the default limits.
    pub tier: Option<&'a str>,
    /// Tokens to take from each limit (1 unless said otherwise).
    pub cost: u32,
    /// Count the identifier as this kind instead of the policy's.
    pub kind: Option<&'a Kind>,
}

impl<'a> Request<'a> {
    /// One token of `policy` for `identifier`, default tier.
    pub fn new(policy: PolicyId, identifier: &'a str) -> Self {
        Self {
            policy,
            identifier,
            tier: None,
            cost: 1,
            kind: None,
        }
    }

    /// The same request in `tier` (none when `None`).
    #[must_use]
    pub fn tier(mut self, tier: Option<&'a str>) -> Self {
        self.tier = tier;
        self
    }

    /// The same request, taking `cost` tokens.
    #[must_use]
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// The same request, counting the identifier as a `kind`.
    #[must_use]
    pub fn kind(mut self, kind: Option<&'a Kind>) -> Self {
        self.kind = kind;
        self
    }
}

/// Why a decision was made without the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Degradation {
    /// The store did not answer in time.
    Timeout,
    /// The store asked to slow down.
    Throttled,
    /// The store could not be reached, refused, or has no table.
    Unavailable,
    /// The store refused the credentials.
    Unauthorized,
    /// The store answered something unexpected.
    Protocol,
    /// Other writers kept changing the key until the store gave up: a hot
    /// key, decided in this process at its own limits.
    Contended,
    /// The circuit breaker kept the store out after recent failures.
    BreakerOpen,
}

impl Degradation {
    /// The name used in logs and JSON: `timeout`, `breaker_open`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Degradation::Timeout => "timeout",
            Degradation::Throttled => "throttled",
            Degradation::Unavailable => "unavailable",
            Degradation::Unauthorized => "unauthorized",
            Degradation::Protocol => "protocol",
            Degradation::Contended => "contended",
            Degradation::BreakerOpen => "breaker_open",
        }
    }

    /// Whether the store is fine and only this key is hot (throttled or
    /// contended): such a key is decided in this process at its own limits,
    /// whatever the failure mode, and the breaker does not count it.
    pub fn is_hot_key(self) -> bool {
        matches!(self, Degradation::Throttled | Degradation::Contended)
    }
}

impl From<StoreErrorKind> for Degradation {
    fn from(kind: StoreErrorKind) -> Self {
        match kind {
            StoreErrorKind::Timeout => Degradation::Timeout,
            StoreErrorKind::Throttled => Degradation::Throttled,
            StoreErrorKind::Unauthorized => Degradation::Unauthorized,
            StoreErrorKind::Protocol => Degradation::Protocol,
            StoreErrorKind::Contended => Degradation::Contended,
            _ => Degradation::Unavailable,
        }
    }
}

/// The outcome of one check, allowed or not, and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The policy that was checked.
    pub policy: PolicyId,
    /// The numbers of the tightest limit: for a denial, the limit that
    /// makes the caller wait longest; otherwise the one with the fewest
    /// tokens left.
    pub decision: Decision,
    /// Every limit's numbers, when the policy has more than one.
    limits: Option<Box<[Decision]>>,
    /// True when the policy runs in shadow mode: a denial is reported in
    /// `decision` and logged, but the request is allowed.
    pub shadow: bool,
    /// Why the store was not used, when the policy's failure mode decided:
    /// allowed with the numbers of a fresh bucket (`open`), denied
    /// (`closed`), or decided by this process alone (`local`).
    pub degraded: Option<Degradation>,
    /// Calls the store made to its backing service for this decision.
    pub calls: u32,
    /// True when this process answered from what it already knew (a
    /// denial from the deny cache), without calling the store.
    pub cached: bool,
}

impl Verdict {
    /// Whether the request may proceed.
    #[inline]
    pub fn allowed(&self) -> bool {
        self.decision.allowed || self.shadow
    }

    /// Whether the failure mode decided instead of the store.
    #[inline]
    pub fn is_degraded(&self) -> bool {
        self.degraded.is_some()
    }

    /// Every limit's numbers, in the order of the policy's (or tier's) limits.
    pub fn limits(&self) -> &[Decision] {
        match &self.limits {
            Some(limits) => limits,
            None => std::slice::from_ref(&self.decision),
        }
    }

    /// Whether the limit would have denied the request, had the policy
    /// not been in shadow mode.
    pub fn would_deny(&self) -> bool {
        self.shadow && !self.decision.allowed
    }

    /// `retry_after` in whole seconds, rounded up; never 0 for a denial.
    #[inline]
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed() {
            0
        } else {
            ceil_secs(self.decision.retry_after).max(1)
        }
    }
}

/// Why a check did not let a request through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The request is over its policy's limit.
    #[error("rate limit exceeded for {policy}; retry after {retry_after} seconds")]
    Exceeded {
        /// The policy whose limit was reached.
        policy: PolicyName,
        /// Whole seconds until the same request would be allowed (at least 1).
        retry_after: u64,
        /// The limit of the tightest limit.
        limit: u32,
    },
    /// The request asked for more tokens than one of the policy's buckets holds.
    #[error("invalid cost for {policy}: {source}")]
    InvalidCost {
        /// The policy that was checked.
        policy: PolicyName,
        /// What was wrong with the cost.
        source: CostExceedsCapacity,
    },
    /// The policy id does not belong to this service's registry.
    #[error("no policy with id {0:?} in this service")]
    UnknownPolicy(PolicyId),
    /// The store failed where failing open does not apply (status, reset).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RateLimitError {
    /// Whole seconds to wait, when this is a rate-limit denial.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RateLimitError::Exceeded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl RateLimitService<MemoryStore, SystemClock> {
    /// A service keeping its state in this process's memory.
    pub fn in_memory(config: Config) -> Self {
        Self::new(MemoryStore::new(), config)
    }
}

impl<S: Store> RateLimitService<S, SystemClock> {
    /// A service on `store`, using the system clock.
    pub fn new(store: S, config: Config) -> Self {
        Self::with_clock(store, config, SystemClock)
    }
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// A service on `store`, taking time from `clock`.
    pub fn with_clock(store: S, config: Config, clock: C) -> Self {
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
            breaker: CircuitBreaker::default(),
            local: MemoryStore::with_max_keys(LOCAL_FALLBACK_KEYS),
            retention,
            warned_tier,
            hot_keys: HotKeys::new(),
        }
    }

    /// The same service, with `breaker` guarding the store.
    #[must_use]
    pub fn with_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// The circuit breaker guarding the store.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The policies in force.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The id of the policy called `name` (`-` may stand for `_`).
    pub fn policy_id(&self, name: &str) -> Option<PolicyId> {
        self.policies.id(name)
    }

    /// The authorizer-context field that holds a caller's tier.
    pub fn tier_field(&self) -> &str {
        &self.tier_field
    }

    /// The store the state lives in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock decisions take their time from.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Now, in milliseconds since the Unix epoch, by the service's clock:
    /// the timestamp of responses.
    pub fn now_ms(&self) -> u64 {
        self.clock.now() / 1_000_000
    }

    /// Counts a connection attempt from `ip` (default 20 per minute).
    pub async fn check_connection_attempt_limit(
        &self,
        ip: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check(PolicyId::CONNECTION_ATTEMPT, ip, 1).await
    }

    /// Counts a session created by `user_id` (default 50 per hour).
    pub async fn check_session_creation_limit(
        &self,
        user_id: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check(PolicyId::SESSION_CREATE, user_id, 1).await
    }

    /// Counts a listener joining from `ip` (default 10 per minute).
    pub async fn check_listener_join_limit(&self, ip: &str) -> Result<Verdict, RateLimitError> {
        self.check(PolicyId::LISTENER_JOIN, ip, 1).await
    }

    /// Counts a heartbeat on `connection_id` (default 2 per minute).
    pub async fn check_heartbeat_limit(
        &self,
        connection_id: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check(PolicyId::HEARTBEAT, connection_id, 1).await
    }

    /// Takes `cost` tokens of `policy` for `identifier`; a denial is an
    /// [`RateLimitError::Exceeded`] error.
    pub async fn check(
        &self,
        policy: PolicyId,
        identifier: &str,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        let verdict = self
            .decide_request(&Request::new(policy, identifier).cost(cost))
            .await?;
        self.to_result(verdict)
    }

    /// [`RateLimitService::check`] for a full request.
    pub async fn check_request(&self, request: &Request<'_>) -> Result<Verdict, RateLimitError> {
        let verdict = self.decide_request(request).await?;
        self.to_result(verdict)
    }

    /// Takes `cost` tokens of `policy` for `identifier` and reports the
    /// verdict, allowed or denied, as a value.
    pub async fn decide(
        &self,
        policy: PolicyId,
        identifier: &str,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        self.decide_request(&Request::new(policy, identifier).cost(cost))
            .await
    }

    /// Decides one request and reports the verdict, allowed or denied, as a
    /// value.
    ///
    /// When the store fails, or the circuit breaker keeps the store out of a
    /// failing period, the policy's [`FailureMode`] decides and the verdict
    /// is marked degraded: by default the request is allowed with a warning
    /// logged (the seed's graceful degradation).
    pub async fn decide_request(&self, request: &Request<'_>) -> Result<Verdict, RateLimitError> {
        self.decide_at(request, self.clock.now()).await
    }

    /// [`RateLimitService::decide_request`] at `now`.
    async fn decide_at(
        &self,
        request: &Request<'_>,
        now: Nanos,
    ) -> Result<Verdict, RateLimitError> {
        let (policy, limits) = self.resolve(request)?;
        let kind = request.kind.unwrap_or(policy.kind());
        let key = Key::with_secret(kind, request.identifier, self.secret.as_ref());
        let retention = self.retention(request);
        let verdict = if let [limit] = limits {
            let mut ops = [Op::new(
                limit.slot(),
                self.step(policy, limit, now, request.cost)?,
            )];
            self.run(
                request.policy,
                policy,
                limits,
                &key,
                &mut ops,
                &mut [0],
                retention,
            )
            .await
        } else {
            let mut ops = self.ops(policy, limits, now, request.cost)?;
            let mut tats = [0; MAX_LIMITS];
            let n = limits.len();
            self.run(
                request.policy,
                policy,
                limits,
                &key,
                &mut ops[..n],
                &mut tats[..n],
                retention,
            )
            .await
        };
        self.metrics
            .latency(request.policy, self.clock.now().saturating_sub(now));
        Ok(verdict)
    }

    /// Decides `first`, and `second` only if `first` is allowed, with the
    /// result of two checks in a row: a refused `second` still counts
    /// `first`, and a refused `first` takes nothing from `second` (whose
    /// verdict is then `None`). A `$connect` is one: the connection
    /// attempt, then the session creation or listener join.
    ///
    /// It takes one round trip when both are allowed: one store call when
    /// both count the same identifier (their buckets share an item), else
    /// two calls at once; if `first` is then refused, what `second` took is
    /// given back ([`Store::refund`]).
    pub async fn decide_both(
        &self,
        first: &Request<'_>,
        second: &Request<'_>,
    ) -> Result<(Verdict, Option<Verdict>), RateLimitError> {
        let now = self.clock.now();
        let plan1 = self.plan(first, now)?;
        let plan2 = self.plan(second, now)?;
        if plan1.key != plan2.key {
            return self
                .decide_both_apart(first, plan1, second, plan2, now)
                .await;
        }
        let Plan {
            policy: policy1,
            limits: limits1,
            key,
            mut ops,
        } = plan1;
        let Plan {
            policy: policy2,
            limits: limits2,
            ops: ops2,
            ..
        } = plan2;
        let n1 = ops.len();
        ops.extend(ops2);
        let mut tats = vec![0; ops.len()];
        let answer = self.store.prepare(&key, &mut ops, &mut tats);
        // The breaker last: when it hands out its one probe, the store must
        // be called, and a cached denial or a held key would not call it.
        let permit = if answer == Some(Outcome::Denied) || self.hot_keys.held(&key, now) {
            Permit::Skip
        } else {
            self.breaker.permit(now)
        };
        if permit == Permit::Skip {
            // Not the common case: decide them one after the other, each
            // with the cache, the breaker and the failure modes.
            return self.decide_both_in_turn(first, second, now).await;
        }
        let retention = self.retention(first).max(self.retention(second));
        let generation = self.breaker.generation();
        let applied = self.store.apply(&key, &ops, retention, &mut tats).await;
        let outcome = match applied.outcome {
            Ok(outcome) => {
                self.store_answered();
                outcome
            }
            Err(error) => {
                // Perhaps written, perhaps not: never call again for it.
                let why = self.store_failed(policy1, &key, &error, generation, permit);
                let (ops1, ops2) = ops.split_at(n1);
                let (tats1, tats2) = tats.split_at_mut(n1);
                let mut v1 = self.degraded(first.policy, policy1, limits1, &key, ops1, tats1, why);
                v1.calls = applied.calls;
                let v1 = self.finish(v1, policy1);
                if !v1.allowed() {
                    return Ok((v1, None));
                }
                let v2 = self.degraded(second.policy, policy2, limits2, &key, ops2, tats2, why);
                return Ok((v1, Some(self.finish(v2, policy2))));
            }
        };
        let elapsed = self.clock.now().saturating_sub(now);
        self.metrics.latency(first.policy, elapsed);
        self.metrics.latency(second.policy, elapsed);
        let (ops1, ops2) = ops.split_at(n1);
        if outcome == Outcome::Allowed {
            // One call decided both; it is counted under the first.
            let mut v1 = verdict(first.policy, limits1, ops1, &tats[..n1], Outcome::Allowed);
            v1.calls = applied.calls;
            let v2 = verdict(second.policy, limits2, ops2, &tats[n1..], Outcome::Allowed);
            return Ok((self.finish(v1, policy1), Some(self.finish(v2, policy2))));
        }
        let first_alone = ops1
            .iter()
            .zip(&tats[..n1])
            .all(|(op, &tat)| matches!(op.step.outcome(tat), gcra::Outcome::Allowed { .. }));
        if !first_alone {
            let mut v1 = verdict(first.policy, limits1, ops1, &tats[..n1], Outcome::Denied);
            v1.calls = applied.calls;
            return Ok((self.finish(v1, policy1), None));
        }
        // Only `second` refused: `first` still counts, in a call of its own.
        let v2 = verdict(second.policy, limits2, ops2, &tats[n1..], Outcome::Denied);
        let mut v1 = self.decide_at(first, now).await?;
        v1.calls += applied.calls;
        if !v1.allowed() {
            return Ok((v1, None));
        }
        Ok((v1, Some(self.finish(v2, policy2))))
    }

    /// [`RateLimitService::decide_both`] as two checks in a row.
    async fn decide_both_in_turn(
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

    /// [`RateLimitService::decide_both`] for two items, with their plans:
    /// both at once, then `second`'s tokens given back if `first` was
    /// refused.
    async fn decide_both_apart(
        &self,
        first: &Request<'_>,
        mut plan1: Plan<'_>,
        second: &Request<'_>,
        plan2: Plan<'_>,
        now: Nanos,
    ) -> Result<(Verdict, Option<Verdict>), RateLimitError> {
        // Already known to refuse `first`: `second` is not asked at all.
        let mut tats = vec![0; plan1.ops.len()];
        if self.store.prepare(&plan1.key, &mut plan1.ops, &mut tats) == Some(Outcome::Denied) {
            return self.decide_both_in_turn(first, second, now).await;
        }
        let (v1, v2) = join(self.decide_at(first, now), self.decide_at(second, now)).await;
        let (v1, v2) = (v1?, v2?);
        if v1.allowed() {
            return Ok((v1, Some(v2)));
        }
        if v2.decision.allowed
            && v2.degraded.is_none()
            && let Err(error) = self.store.refund(&plan2.key, &plan2.ops).await
        {
            // The tokens stay taken: stricter, never looser.
            tracing::warn!(policy = plan2.policy.name(), %error, "could not give back a refused request's tokens");
        }
        Ok((v1, None))
    }

    /// The policy, limits, key and ops of `request` at `now`, the ops in a
    /// vector: for the paths other than the single decision.
    fn plan<'s>(&'s self, request: &Request<'s>, now: Nanos) -> Result<Plan<'s>, RateLimitError> {
        let (policy, limits) = self.resolve(request)?;
        let kind = request.kind.unwrap_or(policy.kind());
        let key = Key::with_secret(kind, request.identifier, self.secret.as_ref());
        let ops = limits
            .iter()
            .map(|limit| {
                Ok(Op::new(
                    limit.slot(),
                    self.step(policy, limit, now, request.cost)?,
                ))
            })
            .collect::<Result<_, RateLimitError>>()?;
        Ok(Plan {
            policy,
            limits,
            key,
            ops,
        })
    }

    /// How long the item `request` writes must be kept: until every bucket
    /// of any policy on its kind is full again.
    #[inline]
    fn retention(&self, request: &Request<'_>) -> Nanos {
        match request.kind {
            // Counted as another kind: that kind's policies decide.
            Some(kind) => self.policies.retention(kind).as_nanos() as Nanos,
            None => self.retention[request.policy.index()],
        }
    }

    /// The policy and the limits that apply to `request`.
    #[inline]
    fn resolve(&self, request: &Request<'_>) -> Result<(&Policy, &[Limit]), RateLimitError> {
        let policy = self
            .policies
            .get(request.policy)
            .ok_or(RateLimitError::UnknownPolicy(request.policy))?;
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
    fn step(
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
    fn ops<'p>(
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

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        id: PolicyId,
        policy: &Policy,
        limits: &[Limit],
        key: &Key<'_>,
        ops: &mut [Op<'_>],
        tats: &mut [Nanos],
        retention: Nanos,
    ) -> Verdict {
        if let Some(outcome) = self.store.prepare(key, ops, tats) {
            let mut verdict = verdict(id, limits, ops, tats, outcome);
            verdict.cached = true;
            return self.finish(verdict, policy);
        }
        let now = ops[0].step.now();
        // The breaker's state before the held key, and its permit after:
        // the permit may be the one probe, which must then call the store.
        let skip = if self.breaker.open_until(now).is_some() {
            Some(Degradation::BreakerOpen)
        } else if self.hot_keys.held(key, now) {
            // Held as hot: decided here, as the store's last answer asked.
            Some(Degradation::Throttled)
        } else {
            None
        };
        let permit = match skip {
            Some(_) => Permit::Skip,
            None => self.breaker.permit(now),
        };
        if permit == Permit::Skip {
            let why = skip.unwrap_or(Degradation::BreakerOpen);
            if why == Degradation::BreakerOpen {
                tracing::debug!(
                    policy = policy.name(),
                    "circuit breaker open; not calling the rate-limit store"
                );
            }
            let verdict = self.degraded(id, policy, limits, key, ops, tats, why);
            return self.finish(verdict, policy);
        }
        let generation = self.breaker.generation();
        let applied = self.store.apply(key, ops, retention, tats).await;
        let mut verdict = match applied.outcome {
            Ok(outcome) => {
                self.store_answered();
                verdict(id, limits, ops, tats, outcome)
            }
            Err(error) => {
                let why = self.store_failed(policy, key, &error, generation, permit);
                self.degraded(id, policy, limits, key, ops, tats, why)
            }
        };
        verdict.calls = applied.calls;
        self.finish(verdict, policy)
    }

    /// The store answered: a success for the breaker.
    fn store_answered(&self) {
        if self.breaker.record_success() {
            tracing::info!("rate-limit store answered again; circuit breaker closed");
        }
    }

    /// Logs a store's failure on a call that started in the breaker's
    /// `generation` with `permit`, counts it for the breaker unless it only
    /// says the key is hot, and says why the decision is degraded.
    fn store_failed(
        &self,
        policy: &Policy,
        key: &Key<'_>,
        error: &StoreError,
        generation: u64,
        permit: Permit,
    ) -> Degradation {
        let why = Degradation::from(error.kind());
        let now = self.clock.now();
        if why.is_hot_key() {
            if permit == Permit::Probe {
                // A throttled or contended probe still found the store
                // answering: that settles the probe, and closes the breaker.
                self.store_answered();
            }
            if self.hot_keys.mark(key, now) {
                tracing::warn!(
                    policy = policy.name(),
                    key_type = key.kind().as_str(),
                    %error,
                    "hot key: the rate-limit store refused it ({}); deciding it in this process at its own limits (reported once a minute per key)",
                    why.as_str()
                );
            }
            return why;
        }
        let mode = policy.failure_mode();
        tracing::warn!(
            policy = policy.name(),
            key_type = key.kind().as_str(),
            failure_mode = mode.as_str(),
            %error,
            "rate-limit store unavailable; deciding by the failure mode{}",
            if mode == FailureMode::Open { " (fail open: allowed)" } else { "" }
        );
        if self.breaker.record_failure(generation, now) {
            tracing::warn!(
                cool_down_ms = self.breaker.cool_down().as_millis() as u64,
                "circuit breaker opened: the rate-limit store is skipped until the cool-down ends"
            );
        }
        why
    }

    /// Marks `verdict` as shadowed when its policy is in shadow mode, logs
    /// the denial that did not happen, and counts the decision.
    #[inline]
    fn finish(&self, mut verdict: Verdict, policy: &Policy) -> Verdict {
        verdict.shadow = policy.shadow();
        if verdict.would_deny() {
            tracing::info!(
                policy = policy.name(),
                key_type = policy.kind().as_str(),
                retry_after = ceil_secs(verdict.decision.retry_after),
                "rate limit would deny (shadow mode): allowed"
            );
        }
        self.metrics.count(&verdict);
        verdict
    }

    /// The verdict when the store cannot be used, by the policy's failure mode.
    #[allow(clippy::too_many_arguments)]
    fn degraded(
        &self,
        id: PolicyId,
        policy: &Policy,
        limits: &[Limit],
        key: &Key<'_>,
        ops: &[Op<'_>],
        tats: &mut [Nanos],
        why: Degradation,
    ) -> Verdict {
        let fixed = |allowed: bool, retry_after: Duration| {
            limits
                .iter()
                .zip(ops)
                .map(|(limit, op)| Decision {
                    allowed,
                    limit: limit.quota().limit(),
                    remaining: if allowed {
                        limit.quota().limit() - op.step.cost()
                    } else {
                        0
                    },
                    retry_after,
                    reset_after: Duration::ZERO,
                })
                .collect::<Vec<_>>()
        };
        // A hot key is decided here at its own limits, whatever the mode:
        // failing open on it would hand an attacker who makes a key hot
        // the admissions the limit exists to refuse.
        let mode = if why.is_hot_key() {
            FailureMode::Local
        } else {
            policy.failure_mode()
        };
        let mut verdict = match mode {
            FailureMode::Open => from_decisions(id, fixed(true, Duration::ZERO)),
            FailureMode::Closed => {
                // Ask the client to come back once the store may be back.
                let now = ops[0].step.now();
                let wait = self.breaker.open_until(now).map_or(0, |until| until - now);
                from_decisions(
                    id,
                    fixed(
                        false,
                        Duration::from_nanos(wait).max(Duration::from_secs(1)),
                    ),
                )
            }
            FailureMode::Local => {
                // The local limiter starts from what this process knows of
                // the buckets (the TATs the store last reported, in `tats`),
                // never from less: knowledge is never thrown away.
                for (op, &tat) in ops.iter().zip(tats.iter()) {
                    if tat > op.step.now() {
                        self.local.record_now(key, op.slot, tat, op.step.now());
                    }
                }
                let outcome = self.local.apply_now(key, ops, tats);
                verdict(id, limits, ops, tats, outcome)
            }
        };
        verdict.degraded = Some(why);
        verdict
    }

    /// The seed's error ([`RateLimitError::Exceeded`]) for a denied
    /// verdict, or the verdict.
    #[inline]
    pub fn to_result(&self, verdict: Verdict) -> Result<Verdict, RateLimitError> {
        if verdict.allowed() {
            Ok(verdict)
        } else {
            Err(RateLimitError::Exceeded {
                policy: self.policies[verdict.policy].shared_name().clone(),
                retry_after: verdict.retry_after_secs(),
                limit: verdict.decision.limit,
            })
        }
    }

    /// The status of every limit of `request`'s policy (or tier) for its
    /// identifier, without consuming anything, in the order of the limits.
    pub async fn statuses(&self, request: &Request<'_>) -> Result<Vec<Status>, RateLimitError> {
        let (policy, limits) = self.resolve(request)?;
        let kind = request.kind.unwrap_or(policy.kind());
        let key = Key::with_secret(kind, request.identifier, self.secret.as_ref());
        let slots: Vec<_> = limits.iter().map(Limit::slot).collect();
        let mut tats = vec![0; slots.len()];
        self.store.load(&key, &slots, &mut tats).await?;
        let now = self.clock.now();
        Ok(limits
            .iter()
            .zip(tats)
            .map(|(limit, tat)| limit.quota().status(tat, now))
            .collect())
    }

    /// The seed's status of one key, without consuming anything: for a
    /// policy with several limits, the one whose bucket is fullest.
    pub async fn get_rate_limit_status(
        &self,
        policy: PolicyId,
        identifier_type: &Kind,
        identifier_value: &str,
    ) -> Result<Status, RateLimitError> {
        let request = Request::new(policy, identifier_value).kind(Some(identifier_type));
        let statuses = self.statuses(&request).await?;
        Ok(Status::fullest(&statuses).expect("a policy has at least one limit"))
    }

    /// Forgets `identifier`'s usage of `policy` (every limit and tier), so
    /// that its buckets are full again. Other policies sharing the item keep
    /// theirs.
    pub async fn reset(
        &self,
        policy: PolicyId,
        identifier: &str,
        kind: Option<&Kind>,
    ) -> Result<(), RateLimitError> {
        let found = self
            .policies
            .get(policy)
            .ok_or(RateLimitError::UnknownPolicy(policy))?;
        let key = Key::with_secret(
            kind.unwrap_or(found.kind()),
            identifier,
            self.secret.as_ref(),
        );
        let mut slots: Vec<_> = found.limits().iter().map(Limit::slot).collect();
        for (_, limits) in found.tiers() {
            for limit in limits {
                if !slots.contains(&limit.slot()) {
                    slots.push(limit.slot());
                }
            }
        }
        Ok(self.store.remove(&key, &slots).await?)
    }
}

impl<C: Clock> RateLimitService<MemoryStore, C> {
    /// [`RateLimitService::decide`] without a future, for synchronous callers
    /// of an in-memory service.
    #[inline]
    pub fn decide_now(
        &self,
        policy: PolicyId,
        identifier: &str,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        let request = Request::new(policy, identifier).cost(cost);
        let (found, limits) = self.resolve(&request)?;
        let now = self.clock.now();
        let key = Key::with_secret(found.kind(), identifier, self.secret.as_ref());
        let mut verdict = if let [limit] = limits {
            let step = self.step(found, limit, now, cost)?;
            let outcome = self.store.apply_step(&key, limit.slot(), &step);
            single(policy, limit.quota().decision(&step, outcome))
        } else {
            let ops = self.ops(found, limits, now, cost)?;
            let mut tats = [0; MAX_LIMITS];
            let n = limits.len();
            let outcome = self.store.apply_now(&key, &ops[..n], &mut tats[..n]);
            verdict(policy, limits, &ops[..n], &tats[..n], outcome)
        };
        // One atomic section of the memory store.
        verdict.calls = 1;
        Ok(self.finish(verdict, found))
    }

    /// [`RateLimitService::check`] without a future.
    #[inline]
    pub fn check_now(
        &self,
        policy: PolicyId,
        identifier: &str,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        let verdict = self.decide_now(policy, identifier, cost)?;
        self.to_result(verdict)
    }
}

/// Polls two futures until both are done: `$connect`'s two decisions at once.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
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

/// A verdict on one limit's decision, from the store.
#[inline]
fn single(policy: PolicyId, decision: Decision) -> Verdict {
    Verdict {
        policy,
        decision,
        limits: None,
        shadow: false,
        degraded: None,
        calls: 0,
        cached: false,
    }
}

/// The verdict on ops a store applied (or refused), from the TATs it reported.
#[inline]
fn verdict(
    policy: PolicyId,
    limits: &[Limit],
    ops: &[Op<'_>],
    tats: &[Nanos],
    outcome: Outcome,
) -> Verdict {
    let decide = |(limit, (op, &tat)): (&Limit, (&Op<'_>, &Nanos))| {
        let outcome = match outcome {
            Outcome::Allowed => gcra::Outcome::Allowed { tat },
            Outcome::Denied => gcra::Outcome::Denied { tat },
        };
        limit.quota().decision(&op.step, outcome)
    };
    if let ([limit], [op], [tat]) = (limits, ops, tats) {
        return single(policy, decide((limit, (op, tat))));
    }
    from_decisions(
        policy,
        limits
            .iter()
            .zip(ops.iter().zip(tats))
            .map(decide)
            .collect(),
    )
}

/// The verdict on several limits' decisions: the tightest leads.
fn from_decisions(policy: PolicyId, decisions: Vec<Decision>) -> Verdict {
    let allowed = decisions.iter().all(|d| d.allowed);
    let tightest = if allowed {
        decisions.iter().min_by_key(|d| d.remaining)
    } else {
        // The earliest time every limit allows is the latest of their times.
        decisions.iter().rev().max_by_key(|d| d.retry_after)
    };
    // Every decision already says the request's fate: the store's outcome,
    // or the failure mode's, is one for all limits.
    let decision = *tightest.expect("a policy has at least one limit");
    Verdict {
        policy,
        decision,
        limits: (decisions.len() > 1).then(|| decisions.into_boxed_slice()),
        shadow: false,
        degraded: None,
        calls: 0,
        cached: false,
    }
}
