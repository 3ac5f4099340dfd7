//! The seed's rate-limit service: one check per operation, a status query,
//! and the fail-open policy when the store is unavailable.

use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::Limits;
use crate::gcra::{CostExceedsCapacity, Decision, Outcome, Quota, Status, Step, ceil_secs};
use crate::key::{Identifier, IdentifierKind, Key, Operation};
use crate::memory::MemoryStore;
use crate::policy::{CircuitBreaker, FailureMode, FailurePolicy, Permit, ShadowMode};
use crate::store::{Store, StoreError};
use crate::telemetry::DecisionMetrics;

/// Checks requests against each operation's quota, with state kept in a [`Store`].
///
/// Create one per process (per Lambda container) and share it: it holds no
/// per-request state.
///
/// ```
/// use ratelimiter::{Limits, RateLimitError, RateLimitService};
///
/// # tokio_test_block_on(async {
/// let service = RateLimitService::in_memory(Limits::default());
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
    limits: Limits,
    policy: FailurePolicy,
    shadow: ShadowMode,
    breaker: CircuitBreaker,
    /// Decides for operations in [`FailureMode::Local`] while the store is away.
    local: MemoryStore,
    metrics: DecisionMetrics,
}

/// Keys the local fallback limiter keeps at most.
const LOCAL_FALLBACK_KEYS: usize = 10_000;

/// The outcome of one check, allowed or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The operation that was checked.
    pub operation: Operation,
    /// The decision's numbers.
    pub decision: Decision,
    /// True when the operation runs in shadow mode: a denial is reported in
    /// `decision` and logged, but the request is allowed.
    pub shadow: bool,
    /// True when the store could not be used and the operation's failure
    /// mode decided instead: allowed with the numbers of a fresh bucket
    /// (`open`), denied (`closed`), or decided by this process alone (`local`).
    pub degraded: bool,
}

impl Verdict {
    /// Whether the request may proceed.
    #[inline]
    pub fn allowed(&self) -> bool {
        self.decision.allowed || self.shadow
    }

    /// Whether the limit would have denied the request, had the operation
    /// not been in shadow mode.
    pub fn would_deny(&self) -> bool {
        self.shadow && !self.decision.allowed
    }

    /// `Ok(self)` when allowed, the seed's rate-limit error when denied.
    #[inline]
    pub fn into_result(self) -> Result<Self, RateLimitError> {
        if self.allowed() {
            Ok(self)
        } else {
            Err(RateLimitError::Exceeded {
                operation: self.operation,
                retry_after: self.retry_after_secs(),
                limit: self.decision.limit,
            })
        }
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
    /// The request is over its operation's limit.
    #[error("rate limit exceeded for {operation}; retry after {retry_after} seconds")]
    Exceeded {
        /// The operation whose limit was reached.
        operation: Operation,
        /// Whole seconds until the same request would be allowed (at least 1).
        retry_after: u64,
        /// The operation's limit.
        limit: u32,
    },
    /// The request asked for more tokens than the operation's bucket holds.
    #[error("invalid cost for {operation}: {source}")]
    InvalidCost {
        /// The operation that was checked.
        operation: Operation,
        /// What was wrong with the cost.
        source: CostExceedsCapacity,
    },
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
    pub fn in_memory(limits: Limits) -> Self {
        Self::new(MemoryStore::new(), limits)
    }
}

impl<S: Store> RateLimitService<S, SystemClock> {
    /// A service on `store`, using the system clock.
    pub fn new(store: S, limits: Limits) -> Self {
        Self::with_clock(store, limits, SystemClock)
    }
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// A service on `store`, taking time from `clock`.
    pub fn with_clock(store: S, limits: Limits, clock: C) -> Self {
        Self {
            store,
            clock,
            limits,
            policy: FailurePolicy::default(),
            shadow: ShadowMode::default(),
            breaker: CircuitBreaker::default(),
            local: MemoryStore::with_max_keys(LOCAL_FALLBACK_KEYS),
            metrics: DecisionMetrics::register(),
        }
    }

    /// The same service, with `policy` deciding what happens when the store fails.
    #[must_use]
    pub fn with_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same service, with the operations `shadow` names in shadow mode.
    #[must_use]
    pub fn with_shadow(mut self, shadow: ShadowMode) -> Self {
        self.shadow = shadow;
        self
    }

    /// The same service, with `breaker` guarding the store.
    #[must_use]
    pub fn with_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// The failure policy in force.
    pub fn policy(&self) -> &FailurePolicy {
        &self.policy
    }

    /// The circuit breaker guarding the store.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The quotas in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store the state lives in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counts a connection attempt from `ip` (default 20 per minute).
    pub async fn check_connection_attempt_limit(
        &self,
        ip: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check(Operation::ConnectionAttempt, Identifier::ip(ip), 1)
            .await
    }

    /// Counts a session created by `user_id` (default 50 per hour).
    pub async fn check_session_creation_limit(
        &self,
        user_id: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check(Operation::SessionCreate, Identifier::user(user_id), 1)
            .await
    }

    /// Counts a listener joining from `ip` (default 10 per minute).
    pub async fn check_listener_join_limit(&self, ip: &str) -> Result<Verdict, RateLimitError> {
        self.check(Operation::ListenerJoin, Identifier::ip(ip), 1)
            .await
    }

    /// Counts a heartbeat on `connection_id` (default 2 per minute).
    pub async fn check_heartbeat_limit(
        &self,
        connection_id: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check(
            Operation::Heartbeat,
            Identifier::connection(connection_id),
            1,
        )
        .await
    }

    /// Consumes `cost` tokens of `operation` for `identifier`; a denial is an
    /// [`RateLimitError::Exceeded`] error.
    pub async fn check(
        &self,
        operation: Operation,
        identifier: Identifier<'_>,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        self.decide(operation, identifier, cost)
            .await?
            .into_result()
    }

    /// Consumes `cost` tokens of `operation` for `identifier` and reports the
    /// verdict, allowed or denied, as a value.
    ///
    /// When the store fails, or the circuit breaker keeps the store out of a
    /// failing period, the operation's [`FailureMode`] decides and the verdict
    /// is marked degraded: by default the request is allowed with a warning
    /// logged (the seed's graceful degradation).
    pub async fn decide(
        &self,
        operation: Operation,
        identifier: Identifier<'_>,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        let (quota, step) = self.step(operation, cost)?;
        let verdict = self.decide_step(operation, identifier, quota, &step).await;
        let elapsed = self.clock.now().saturating_sub(step.now());
        self.metrics.latency(operation, elapsed);
        Ok(verdict)
    }

    async fn decide_step(
        &self,
        operation: Operation,
        identifier: Identifier<'_>,
        quota: &Quota,
        step: &Step,
    ) -> Verdict {
        let key = Key::new(operation, identifier);
        if self.breaker.permit(step.now()) == Permit::Skip {
            tracing::debug!(
                operation = operation.as_str(),
                "circuit breaker open; not calling the rate-limit store"
            );
            return self.finish(self.degraded(&key, quota, step), identifier);
        }
        match self.store.apply(&key, step).await {
            Ok(outcome) => {
                if self.breaker.record_success() {
                    tracing::info!("rate-limit store answered again; circuit breaker closed");
                }
                self.finish(verdict(operation, quota, step, outcome), identifier)
            }
            Err(error) => {
                let mode = self.policy.mode(operation);
                tracing::warn!(
                    operation = operation.as_str(),
                    key_type = identifier.kind.as_str(),
                    failure_mode = mode.as_str(),
                    %error,
                    "rate-limit store unavailable; deciding by the failure mode{}",
                    if mode == FailureMode::Open { " (fail open: allowed)" } else { "" }
                );
                if self.breaker.record_failure(self.clock.now()) {
                    tracing::warn!(
                        cool_down_ms = self.breaker.cool_down().as_millis() as u64,
                        "circuit breaker opened: the rate-limit store is skipped until the cool-down ends"
                    );
                }
                self.finish(self.degraded(&key, quota, step), identifier)
            }
        }
    }

    /// Marks `verdict` as shadowed when its operation is in shadow mode, logs
    /// the denial that did not happen, and counts the decision.
    #[inline]
    fn finish(&self, mut verdict: Verdict, identifier: Identifier<'_>) -> Verdict {
        verdict.shadow = self.shadow.is_shadow(verdict.operation);
        if verdict.would_deny() {
            tracing::info!(
                operation = verdict.operation.as_str(),
                key_type = identifier.kind.as_str(),
                retry_after = ceil_secs(verdict.decision.retry_after),
                "rate limit would deny (shadow mode): allowed"
            );
        }
        self.metrics.count(&verdict);
        verdict
    }

    /// The verdict when the store cannot be used, by the operation's failure mode.
    fn degraded(&self, key: &Key<'_>, quota: &Quota, step: &Step) -> Verdict {
        let operation = key.operation();
        let decision = match self.policy.mode(operation) {
            FailureMode::Open => Decision {
                allowed: true,
                limit: quota.limit(),
                remaining: quota.limit() - step.cost(),
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
            },
            FailureMode::Closed => {
                // Ask the client to come back once the store may be back.
                let wait = self
                    .breaker
                    .open_until(step.now())
                    .map_or(0, |until| until - step.now());
                Decision {
                    allowed: false,
                    limit: quota.limit(),
                    remaining: 0,
                    retry_after: Duration::from_nanos(wait).max(Duration::from_secs(1)),
                    reset_after: Duration::ZERO,
                }
            }
            FailureMode::Local => quota.decision(step, self.local.apply_now(key, step)),
        };
        Verdict {
            operation,
            decision,
            shadow: false,
            degraded: true,
        }
    }

    fn step(&self, operation: Operation, cost: u32) -> Result<(&Quota, Step), RateLimitError> {
        let quota = self.limits.quota(operation);
        let step = quota
            .step(self.clock.now(), cost)
            .map_err(|source| RateLimitError::InvalidCost { operation, source })?;
        Ok((quota, step))
    }

    /// The seed's status of one key, without consuming anything.
    pub async fn get_rate_limit_status(
        &self,
        operation: Operation,
        identifier_type: IdentifierKind,
        identifier_value: &str,
    ) -> Result<Status, RateLimitError> {
        let key = Key::new(
            operation,
            Identifier {
                kind: identifier_type,
                value: identifier_value,
            },
        );
        let tat = self.store.load(&key).await?;
        Ok(self.limits.quota(operation).status(tat, self.clock.now()))
    }

    /// Forgets one key's usage, so its bucket is full again.
    pub async fn reset(
        &self,
        operation: Operation,
        identifier: Identifier<'_>,
    ) -> Result<(), RateLimitError> {
        Ok(self.store.remove(&Key::new(operation, identifier)).await?)
    }
}

impl<C: Clock> RateLimitService<MemoryStore, C> {
    /// [`RateLimitService::decide`] without a future, for synchronous callers
    /// of an in-memory service.
    pub fn decide_now(
        &self,
        operation: Operation,
        identifier: Identifier<'_>,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        let (quota, step) = self.step(operation, cost)?;
        let outcome = self
            .store
            .apply_now(&Key::new(operation, identifier), &step);
        Ok(self.finish(verdict(operation, quota, &step, outcome), identifier))
    }

    /// [`RateLimitService::check`] without a future.
    pub fn check_now(
        &self,
        operation: Operation,
        identifier: Identifier<'_>,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        self.decide_now(operation, identifier, cost)
            .and_then(Verdict::into_result)
    }
}

/// The verdict on a step the store applied.
#[inline]
fn verdict(operation: Operation, quota: &Quota, step: &Step, outcome: Outcome) -> Verdict {
    Verdict {
        operation,
        decision: quota.decision(step, outcome),
        shadow: false,
        degraded: false,
    }
}
