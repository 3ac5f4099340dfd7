//! What a decision takes and gives: the [`Request`], the [`Verdict`] (allowed
//! or not, and how it was reached), the [`Denied`] error that keeps a denied
//! verdict whole, and [`RateLimitError`] for what is not a decision.
//!
//! A decision is a value: [`crate::RateLimitService::decide`] returns the
//! verdict whether the request was allowed or not. Where a denial should stop
//! the caller, [`Verdict::into_result`] turns it into a `Result` whose error
//! carries the whole verdict (as governor's `NotUntil` keeps its state), so
//! that `?` works and nothing is lost on the denial path:
//!
//! ```
//! use ratelimiter::{Builder, Denied, PolicyId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = Builder::new().in_memory();
//! for _ in 0..2 {
//!     limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?.into_result()?;
//! }
//! let denied: Denied = limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?.into_result().unwrap_err();
//! assert_eq!(denied.retry_after_secs(), 30);
//! assert_eq!(denied.policy_name(), "heartbeat");
//! assert!(!denied.verdict().cached);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::time::Duration;

use crate::gcra::{CostExceedsCapacity, Decision, Nanos, Outcome, ceil_secs};
use crate::key::Kind;
use crate::lease::{Holder, HolderError};
use crate::policy::{Limit, PolicyId, PolicyName};
use crate::store::{Capacity, Op, Spent, StoreError, StoreErrorKind};

/// One request to decide: a policy and an identifier, and optionally a tier,
/// a cost and another kind of identifier than the policy's.
///
/// A policy and an identifier convert into a request, so
/// `limiter.decide((PolicyId::HEARTBEAT, "conn-1"))` takes one token of the
/// default tier; the optional parts are set on the request:
///
/// ```
/// use ratelimiter::{PolicyId, Request};
///
/// let request = Request::from((PolicyId::SESSION_CREATE, "user-1")).tier(Some("pro")).cost(2);
/// assert_eq!((request.identifier, request.tier, request.cost), ("user-1", Some("pro"), 2));
/// ```
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
    /// Who takes a seat, for a cap (`concurrent = N`): the connection and
    /// when it started. A cap needs one; a rate ignores it, so one holder
    /// may go with every check of a `$connect`.
    pub holder: Option<Holder<'a>>,
}

impl<'a, I: AsRef<str> + ?Sized> From<(PolicyId, &'a I)> for Request<'a> {
    /// One token of `policy` for `identifier` (a `&str`, a `&String`, ...),
    /// default tier.
    #[inline]
    fn from((policy, identifier): (PolicyId, &'a I)) -> Self {
        Self {
            policy,
            identifier: identifier.as_ref(),
            tier: None,
            cost: 1,
            kind: None,
            holder: None,
        }
    }
}

impl<'a> Request<'a> {
    /// The same request in `tier` (none when `None`).
    #[must_use]
    pub fn tier(mut self, tier: Option<&'a str>) -> Self {
        self.tier = tier;
        self
    }

    /// The same request, taking `cost` tokens (1 unless set). A cost of 0
    /// is a probe: allowed while a token is left, and taking none.
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

    /// The same request, taking a seat for `holder` if its policy is a cap.
    #[must_use]
    pub fn holder(mut self, holder: Holder<'a>) -> Self {
        self.holder = Some(holder);
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

/// The outcome of one decision, allowed or not, and how it was reached.
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
    /// The capacity those calls consumed (DynamoDB's capacity units).
    pub capacity: Capacity,
    /// True when this process answered from what it already knew (a
    /// denial from the deny cache), without calling the store.
    pub cached: bool,
    /// The policy's name, kept for a denial only: what [`Denied`] says.
    /// An allowed verdict does not pay for it.
    name: Option<PolicyName>,
    /// For a cap: whether this decision took a seat its holder did not hold
    /// before, the only kind a refused action gives back.
    pub(crate) fresh_seat: bool,
    /// Whether this process decided it from a batch of tokens taken
    /// earlier ([`crate::batch`]): nothing of it is the store's to give back.
    pub(crate) batched: bool,
}

impl Verdict {
    /// The calls and capacity this verdict accounts for.
    pub(crate) fn spent(&self) -> Spent {
        Spent {
            calls: self.calls,
            capacity: self.capacity,
        }
    }

    /// Accounts exactly `spent` under this verdict.
    pub(crate) fn set_spent(&mut self, spent: Spent) {
        self.calls = spent.calls;
        self.capacity = spent.capacity;
    }

    /// Accounts `spent` more under this verdict.
    pub(crate) fn add_spent(&mut self, spent: Spent) {
        let mut sum = self.spent();
        sum += spent;
        self.set_spent(sum);
    }

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

    /// The verdict when the request may proceed, or the denial, which keeps
    /// the whole verdict: `limiter.decide(request).await?.into_result()?`.
    #[inline]
    pub fn into_result(self) -> Result<Verdict, Denied> {
        if self.allowed() {
            Ok(self)
        } else {
            Err(Denied(Box::new(self)))
        }
    }

    /// Whether the store took this verdict's tokens (allowed, neither
    /// decided by a failure mode nor from a batch): only those are given
    /// back when another check refuses the action.
    #[inline]
    pub(crate) fn took_from_store(&self) -> bool {
        self.decision.allowed && self.degraded.is_none() && !self.batched
    }

    /// A verdict on one limit's decision.
    #[inline]
    pub(crate) fn single(policy: PolicyId, decision: Decision) -> Self {
        Self {
            policy,
            decision,
            limits: None,
            shadow: false,
            degraded: None,
            calls: 0,
            capacity: Capacity::default(),
            cached: false,
            name: None,
            fresh_seat: false,
            batched: false,
        }
    }

    /// The verdict on `ops` a store applied (or refused), from the TATs it
    /// reported.
    #[inline]
    pub(crate) fn from_ops(
        policy: PolicyId,
        limits: &[Limit],
        ops: &[Op<'_>],
        tats: &[Nanos],
        outcome: Outcome,
    ) -> Self {
        let decide = |(limit, (op, &tat)): (&Limit, (&Op<'_>, &Nanos))| {
            limit.quota().decision(&op.step, outcome, tat)
        };
        if let ([limit], [op], [tat]) = (limits, ops, tats) {
            return Self::single(policy, decide((limit, (op, tat))));
        }
        Self::from_decisions(
            policy,
            limits
                .iter()
                .zip(ops.iter().zip(tats))
                .map(decide)
                .collect(),
        )
    }

    /// The verdict on several limits' decisions: the tightest leads.
    pub(crate) fn from_decisions(policy: PolicyId, decisions: Vec<Decision>) -> Self {
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
        let mut verdict = Self::single(policy, decision);
        verdict.limits = (decisions.len() > 1).then(|| decisions.into_boxed_slice());
        verdict
    }

    /// Keeps the policy's name on a denial, for [`Denied`] to say.
    #[inline]
    pub(crate) fn name_denial(&mut self, name: &PolicyName) {
        if !self.allowed() {
            self.name = Some(name.clone());
        }
    }
}

/// A denied request: the whole [`Verdict`], as an error.
///
/// What [`Verdict::into_result`] and the seed's checks
/// ([`crate::RateLimitService::check_heartbeat_limit`], ...) report; a
/// handler builds its response from it (`retry_after`, every limit's
/// numbers) and logs how it was reached (`cached`, `calls`, `degraded`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied(Box<Verdict>);

impl Denied {
    /// The verdict that denied the request.
    pub fn verdict(&self) -> &Verdict {
        &self.0
    }

    /// The verdict, by value.
    pub fn into_verdict(self) -> Verdict {
        *self.0
    }

    /// The name of the policy whose limit was reached.
    pub fn policy_name(&self) -> &str {
        self.0.name.as_deref().unwrap_or("?")
    }

    /// How long until the same request would be allowed.
    pub fn retry_after(&self) -> Duration {
        self.0.decision.retry_after
    }

    /// [`Denied::retry_after`] in whole seconds, rounded up, at least 1: the
    /// seed's `retry_after`.
    pub fn retry_after_secs(&self) -> u64 {
        self.0.retry_after_secs()
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rate limit exceeded for {}; retry after {} seconds",
            self.policy_name(),
            self.retry_after_secs()
        )
    }
}

impl std::error::Error for Denied {}

/// What stopped a request other than a denial, or (from the seed's checks
/// and `?` on [`Verdict::into_result`]) the denial itself.
///
/// [`crate::RateLimitService::decide`] never returns
/// [`RateLimitError::Exceeded`]: a denial is a verdict. Its errors are what
/// is not a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The request is over its policy's limit.
    #[error(transparent)]
    Exceeded(#[from] Denied),
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
    /// A seat given back on a policy that is not a cap.
    #[error("policy {0} is not a cap (concurrent = N): it has no seats to release")]
    NotACap(PolicyName),
    /// A cap was asked without a holder, or with one that cannot be a
    /// live connection.
    #[error("cap {policy}: {problem}")]
    Holder {
        /// The cap.
        policy: PolicyName,
        /// What was wrong: no holder, or a bad one.
        problem: HolderProblem,
    },
    /// The store failed where no failure mode decides (status, reset).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was wrong with a cap's holder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HolderProblem {
    /// The request named none.
    #[error("a cap needs a holder (Request::holder): the connection that takes the seat")]
    Missing,
    /// The holder cannot be a live connection.
    #[error(transparent)]
    Invalid(#[from] HolderError),
}

impl RateLimitError {
    /// The denial, when this is one.
    pub fn denied(&self) -> Option<&Denied> {
        match self {
            RateLimitError::Exceeded(denied) => Some(denied),
            _ => None,
        }
    }
}
