//! Policies: what is limited, per what, and how much.
//!
//! A [`Policy`] has a name, the [`Kind`] of identifier it counts, and one or
//! more [`Limit`]s (N per period), each a GCRA bucket with burst N. All of a
//! policy's limits are checked and consumed together: a request is allowed
//! only if every limit allows it. A policy may give other limits to named
//! tiers (`pro`, `free`, ...).
//!
//! [`Policies`] is the one registry: a [`PolicyId`] indexes everything the
//! service keeps per policy (limits, failure mode, shadow mode, metric
//! handles). The seed's four policies are always there, at fixed ids
//! ([`PolicyId::SESSION_CREATE`], ...); a configuration may change their
//! limits and add its own policies after them.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::key::{Kind, NameError, Slot, check_name, shorten};
use crate::lease::{Cap, LEASE_LIFETIME, MAX_CLOCK_AHEAD, MAX_CONCURRENT};

mod limits;
mod registry;
mod spec;

mod batching;
pub use batching::Batching;
use batching::check_batch;
pub use limits::Limit;
use limits::{build_limits, tolerate};

pub use spec::{LimitError, LimitSpec};

pub use registry::{
    BUILTINS, Builtin, ConnectChecks, DEFAULT_ROUTE, MAX_ROUTE_POLICIES, Policies, RouteError,
    UnknownPolicy,
};

/// The most limits one policy (or tier) may have.
pub const MAX_LIMITS: usize = 8;

/// The shortest period a limit may have.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);

/// What one token of a policy stands for: what a request's cost counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One request (the cost is 1 unless the caller says otherwise).
    #[default]
    Requests,
    /// One byte of the request's content: a route handler charges a
    /// message's size, so a quota bounds bandwidth instead of counts.
    Bytes,
    /// One open connection: the unit of a cap (`concurrent = N`), which
    /// only [`Policy::concurrent`] makes.
    Connections,
}

impl Unit {
    /// The name in configuration: `requests` or `bytes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Bytes => "bytes",
            Unit::Connections => "connections",
        }
    }
}

impl std::str::FromStr for Unit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "requests" => Ok(Unit::Requests),
            "bytes" => Ok(Unit::Bytes),
            "connections" => Err(
                "unit \"connections\" is a cap's: write concurrent = N instead of limits"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown unit {:?}: use \"requests\" or \"bytes\"",
                shorten(other)
            )),
        }
    }
}

/// How a policy behaves while its store is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// Allow the request and log a warning: the seed's graceful degradation.
    #[default]
    Open,
    /// Deny the request.
    Closed,
    /// Decide with an in-memory limiter in this process, which still stops
    /// one abusive client while the shared store is away.
    Local,
}

impl FailureMode {
    /// The configuration name: `open`, `closed` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
            FailureMode::Local => "local",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FailureMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            "local" => Ok(FailureMode::Local),
            _ => Err(()),
        }
    }
}

/// The index of a policy in its [`Policies`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(u16);

impl PolicyId {
    /// The seed's session creations: 50 per hour per user.
    pub const SESSION_CREATE: PolicyId = PolicyId(0);
    /// The seed's listener joins: 10 per minute per IP address.
    pub const LISTENER_JOIN: PolicyId = PolicyId(1);
    /// The seed's connection attempts: 20 per minute per IP address.
    pub const CONNECTION_ATTEMPT: PolicyId = PolicyId(2);
    /// The seed's heartbeats: 2 per minute per connection.
    pub const HEARTBEAT: PolicyId = PolicyId(3);

    /// The position in the registry, for tables indexed by policy.
    #[inline]
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A policy's name, shared cheaply by verdicts and errors.
pub type PolicyName = std::sync::Arc<str>;

/// What is limited, per what, and how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    name: PolicyName,
    kind: Kind,
    limits: Box<[Limit]>,
    tiers: Vec<(Box<str>, Box<[Limit]>)>,
    failure_mode: FailureMode,
    shadow: bool,
    unit: Unit,
    /// A cap on open connections instead of limits.
    cap: Option<Cap>,
    /// Every limit's tolerance (see [`crate::gcra`], "Tolerance").
    tolerance: Duration,
    /// How its hot keys are served.
    batching: Batching,
}

/// Why a policy could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy or tier name is not a valid name.
    #[error("policy name: {0}")]
    Name(NameError),
    /// A tier name is not a valid name.
    #[error("tier name: {0}")]
    Tier(NameError),
    /// No limits.
    #[error("a policy needs at least one limit")]
    NoLimits,
    /// Too many limits.
    #[error("a policy may have at most {MAX_LIMITS} limits, got {0}")]
    TooManyLimits(usize),
    /// Two limits with one period.
    #[error("two limits have the same period ({0}); keep one")]
    SamePeriod(String),
    /// More seats than a cap may have.
    #[error("a cap may have at most {MAX_CONCURRENT} seats, got {0}: cap a smaller group")]
    TooManySeats(u32),
    /// Limits or tiers asked of a cap, which counts open connections.
    #[error("a cap (concurrent = N) counts open connections: it takes no {0}")]
    Cap(&'static str),
    /// A fixed batch larger than a limit.
    #[error(
        "a batch of {size} tokens exceeds the limit {limit}: a batch may be at most the smallest limit's count"
    )]
    Batch {
        /// The batch size asked for.
        size: u32,
        /// The limit it does not fit.
        limit: LimitSpec,
    },
    /// A tolerance longer than a limit's emission interval.
    #[error(
        "tolerance {tolerance:?} exceeds the emission interval of {limit} ({interval:?}); it may be at most period / count"
    )]
    Tolerance {
        /// The tolerance asked for.
        tolerance: Duration,
        /// The limit it does not fit.
        limit: LimitSpec,
        /// That limit's emission interval.
        interval: Duration,
    },
}

impl Policy {
    /// A policy `name` counting per `kind`, with `limits`, open on failure,
    /// not in shadow mode.
    ///
    /// ```
    /// use ratelimiter::key::Kind;
    /// use ratelimiter::policy::Policy;
    ///
    /// let policy = Policy::new("send_message", Kind::CONNECTION, &["3/10s".parse()?, "100/min".parse()?])?;
    /// assert_eq!(policy.limits().len(), 2);
    /// assert_eq!(policy.limits()[1].slot().name(), "send_message@60");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(name: &str, kind: Kind, limits: &[LimitSpec]) -> Result<Self, PolicyError> {
        check_name(name).map_err(PolicyError::Name)?;
        let limits = build_limits(name, limits)?;
        Ok(Self {
            name: name.into(),
            kind,
            limits,
            tiers: Vec::new(),
            failure_mode: FailureMode::default(),
            shadow: false,
            unit: Unit::Requests,
            cap: None,
            tolerance: Duration::ZERO,
            batching: Batching::Auto,
        })
    }

    /// A cap called `name`: at most `concurrent` open connections per
    /// identifier of `kind`, each holding a lease from `$connect` to
    /// `$disconnect` (see [`crate::lease`]).
    ///
    /// ```
    /// use ratelimiter::{Kind, Policy};
    ///
    /// let cap = Policy::concurrent("open_per_ip", Kind::IP, 2.try_into()?)?;
    /// assert_eq!(cap.cap().map(|c| c.concurrent()), Some(2));
    /// assert!(cap.limits().is_empty());
    /// assert!(cap.with_tier("pro", &["5/s".parse()?]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn concurrent(name: &str, kind: Kind, concurrent: NonZeroU32) -> Result<Self, PolicyError> {
        check_name(name).map_err(PolicyError::Name)?;
        if concurrent.get() > MAX_CONCURRENT {
            return Err(PolicyError::TooManySeats(concurrent.get()));
        }
        Ok(Self {
            name: name.into(),
            kind,
            limits: Box::new([]),
            tiers: Vec::new(),
            failure_mode: FailureMode::default(),
            shadow: false,
            unit: Unit::Connections,
            cap: Some(Cap::new(concurrent, Slot::new(format!("{name}#open")))),
            tolerance: Duration::ZERO,
            batching: Batching::Off,
        })
    }

    /// The same policy, with `tier` limited by `limits` instead of the
    /// default limits, in buckets of its own (`<policy>.<tier>@<period>`):
    /// a caller moved to another tier starts with that tier's buckets full.
    /// A tier given twice keeps the last limits.
    pub fn with_tier(mut self, tier: &str, limits: &[LimitSpec]) -> Result<Self, PolicyError> {
        if self.cap.is_some() {
            return Err(PolicyError::Cap("tiers"));
        }
        check_name(tier).map_err(PolicyError::Tier)?;
        let limits = tolerate(
            build_limits(&format!("{}.{tier}", self.name), limits)?,
            self.tolerance,
        )?;
        check_batch(self.batching, &limits)?;
        self.tiers.retain(|(name, _)| &**name != tier);
        self.tiers.push((tier.into(), limits));
        Ok(self)
    }

    /// The same policy with `limits` as its default limits.
    pub fn with_limits(mut self, limits: &[LimitSpec]) -> Result<Self, PolicyError> {
        if self.cap.is_some() {
            return Err(PolicyError::Cap("limits"));
        }
        let limits = tolerate(build_limits(&self.name, limits)?, self.tolerance)?;
        check_batch(self.batching, &limits)?;
        self.limits = limits;
        Ok(self)
    }

    /// The same policy with a tolerance of `tolerance` on every limit,
    /// tiers included: a bucket whose state lies up to that much before
    /// now is charged from its state, which lets a client at its rate (a
    /// heartbeat) be decided in one write, for at most one request more
    /// than the exact rule in any span of time (see [`crate::gcra`],
    /// "Tolerance"). It may be at most the shortest emission interval
    /// (period / count) of the policy's limits. Zero, the default, is exact.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ratelimiter::{Kind, Policy};
    ///
    /// let beat = Policy::new("beat", Kind::CONNECTION, &["2/min".parse()?])?
    ///     .with_tolerance(Duration::from_secs(9))?;
    /// assert_eq!(beat.limits()[0].quota().tolerance(), Duration::from_secs(9));
    /// assert!(beat.with_tolerance(Duration::from_secs(31)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_tolerance(mut self, tolerance: Duration) -> Result<Self, PolicyError> {
        if self.cap.is_some() {
            return Err(PolicyError::Cap("tolerance"));
        }
        self.limits = tolerate(self.limits, tolerance)?;
        for (_, limits) in &mut self.tiers {
            *limits = tolerate(std::mem::take(limits), tolerance)?;
        }
        self.tolerance = tolerance;
        Ok(self)
    }

    /// Every limit's tolerance: zero unless set by [`Policy::with_tolerance`].
    #[inline]
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// The policy's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn shared_name(&self) -> &PolicyName {
        &self.name
    }

    /// The kind of identifier the policy counts.
    #[inline]
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The default limits.
    #[inline]
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The tiers with limits of their own, in the order they were added.
    pub fn tiers(&self) -> impl Iterator<Item = (&str, &[Limit])> {
        self.tiers.iter().map(|(name, limits)| (&**name, &**limits))
    }

    /// The limits of `tier`, or `None` when the policy has no such tier.
    #[inline]
    pub fn tier(&self, tier: &str) -> Option<&[Limit]> {
        self.tiers
            .iter()
            .find(|(name, _)| &**name == tier)
            .map(|(_, limits)| &**limits)
    }

    /// The limits a request in `tier` gets: the tier's, or the policy's
    /// own for no tier or one the policy does not have (the service decides
    /// with these).
    #[inline]
    pub fn limits_for(&self, tier: Option<&str>) -> &[Limit] {
        tier.and_then(|tier| self.tier(tier))
            .unwrap_or(&self.limits)
    }

    /// What happens while the store is unavailable.
    #[inline]
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// Whether decisions are only logged and counted, never enforced.
    #[inline]
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// The same policy in `mode` when the store fails.
    #[must_use]
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// The same policy, in shadow mode or not.
    #[must_use]
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The cap, for a policy that caps open connections instead of
    /// limiting a rate; then [`Policy::limits`] is empty.
    #[inline]
    pub fn cap(&self) -> Option<&Cap> {
        self.cap.as_ref()
    }

    /// What one token stands for.
    #[inline]
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The same policy, counting `unit`s.
    #[must_use]
    pub fn with_unit(mut self, unit: Unit) -> Self {
        self.unit = unit;
        self
    }

    /// Sets the failure mode in place (see [`Policy::with_failure_mode`]).
    pub fn set_failure_mode(&mut self, mode: FailureMode) {
        self.failure_mode = mode;
    }

    /// Sets shadow mode in place (see [`Policy::with_shadow`]).
    pub fn set_shadow(&mut self, shadow: bool) {
        self.shadow = shadow;
    }

    /// The longest time any of the policy's buckets takes to refill: no TAT
    /// it writes is ever further than this ahead of the write. For a cap,
    /// the longest a lease lasts.
    pub fn capacity(&self) -> Duration {
        if self.cap.is_some() {
            // An item holding a lease must outlive it (see `Store::apply`).
            return LEASE_LIFETIME + MAX_CLOCK_AHEAD;
        }
        self.tiers
            .iter()
            .flat_map(|(_, limits)| limits.iter())
            .chain(self.limits.iter())
            .map(|limit| limit.quota().emission_interval() * limit.quota().limit())
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> LimitSpec {
        text.parse().unwrap()
    }

    #[test]
    fn limits_parse_in_every_unit() {
        for (text, count, secs) in [
            ("100/min", 100, 60),
            ("3/10s", 3, 10),
            ("5/15min", 5, 900),
            ("1000/h", 1000, 3600),
            ("7/d", 7, 86_400),
            (" 2 / 1s ", 2, 1),
            ("1/24h", 1, 86_400),
        ] {
            assert_eq!(
                spec(text),
                LimitSpec {
                    count,
                    period: Duration::from_secs(secs)
                },
                "{text}"
            );
        }
        assert_eq!(spec("100/60s").to_string(), "100/min");
        assert_eq!(spec("3/10s").to_string(), "3/10s");
        assert_eq!(spec("1/24h").to_string(), "1/d");
        assert_eq!(spec("9/90min").to_string(), "9/90min");
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        for (text, expect) in [
            ("100", "is not a limit"),
            ("0/min", "count must be"),
            ("-1/min", "count must be"),
            ("x/min", "count must be"),
            ("5/fortnight", "unknown unit \"fortnight\""),
            ("5/10m", "unknown unit \"m\""),
            ("5/", "unknown unit \"\""),
            ("5/0s", "from 1s to 1d"),
            ("5/2d", "from 1s to 1d"),
            ("5/99999999999999999999s", "from 1s to 1d"),
        ] {
            let err = text.parse::<LimitSpec>().unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
        let long = format!("1/{}", "s".repeat(10_000));
        let err = long.parse::<LimitSpec>().unwrap_err().to_string();
        assert!(err.len() < 400, "the message quotes the input in full");
    }

    #[test]
    fn policies_check_their_limits() {
        let kind = Kind::CONNECTION;
        assert_eq!(
            Policy::new("p", kind.clone(), &[]).unwrap_err(),
            PolicyError::NoLimits
        );
        assert!(matches!(
            Policy::new("p", kind.clone(), &[spec("1/min"), spec("5/60s")]),
            Err(PolicyError::SamePeriod(_))
        ));
        let nine: Vec<_> = (1..=9).map(|s| spec(&format!("1/{s}s"))).collect();
        assert_eq!(
            Policy::new("p", kind.clone(), &nine).unwrap_err(),
            PolicyError::TooManyLimits(9)
        );
        assert!(matches!(
            Policy::new("bad-name", kind.clone(), &[spec("1/s")]),
            Err(PolicyError::Name(_))
        ));
        let policy = Policy::new("p", kind, &[spec("1/s")])
            .unwrap()
            .with_tier("pro", &[spec("10/s"), spec("100/h")])
            .unwrap();
        assert_eq!(policy.tier("pro").unwrap().len(), 2);
        assert_eq!(policy.tier("pro").unwrap()[1].slot().name(), "p.pro@3600");
        assert!(policy.tier("free").is_none());
        assert_eq!(policy.capacity(), Duration::from_secs(3600));
    }

    #[test]
    fn builtins_keep_their_ids_when_replaced() {
        let mut policies = Policies::builtin();
        assert_eq!(policies.len(), 4);
        for (i, builtin) in BUILTINS.iter().enumerate() {
            let id = policies.id(builtin.name).unwrap();
            assert_eq!(id.index(), i);
            assert_eq!(policies[id].limits()[0].quota().limit(), builtin.count);
        }
        let id = policies.insert(
            Policy::new(
                "heartbeat",
                Kind::CONNECTION,
                &[spec("5/min"), spec("100/h")],
            )
            .unwrap(),
        );
        assert_eq!(id, PolicyId::HEARTBEAT);
        assert_eq!(policies.len(), 4);
        assert_eq!(
            policies.retention(&Kind::CONNECTION),
            Duration::from_secs(3600)
        );
        assert_eq!(policies.retention(&Kind::IP), Duration::from_secs(60));
        let err = policies.find("sessions").unwrap_err().to_string();
        assert!(
            err.contains("\"sessions\"") && err.contains("heartbeat"),
            "{err}"
        );
    }
}
