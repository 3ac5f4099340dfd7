//! What to do when the store fails: the failure mode of each operation, and
//! a circuit breaker that stops calling a failing store for a while.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ConfigError;
use crate::gcra::Nanos;
use crate::key::Operation;

/// How an operation behaves while its store is unavailable.
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

impl FromStr for FailureMode {
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

/// The variable that sets the failure mode of every operation.
pub const FAILURE_MODE_VAR: &str = "RATE_LIMIT_FAILURE_MODE";

/// The variable that overrides the failure mode of one operation, such as
/// `RATE_LIMIT_FAILURE_MODE_HEARTBEAT`.
pub fn failure_mode_var(operation: Operation) -> String {
    per_operation_var(FAILURE_MODE_VAR, operation)
}

/// `<base>_<OPERATION>`, such as `RATE_LIMIT_SHADOW_MODE_SESSION_CREATE`.
fn per_operation_var(base: &str, operation: Operation) -> String {
    format!("{base}_{}", operation.as_str().to_ascii_uppercase())
}

/// One setting per operation: `default`, overridden for every operation by
/// `base`, then for each one by `<base>_<OPERATION>`. A value `parse` rejects
/// is an error naming the variable, the value and the `expected` values.
fn per_operation<T: Copy>(
    lookup: impl Fn(&str) -> Option<String>,
    base: &str,
    default: T,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<[T; 4], ConfigError> {
    let read = |var: &str| -> Result<Option<T>, ConfigError> {
        match lookup(var) {
            None => Ok(None),
            Some(value) => parse(value.trim()).map(Some).ok_or(ConfigError::NotOneOf {
                var: var.to_owned(),
                value,
                expected,
            }),
        }
    };
    let mut settings = [read(base)?.unwrap_or(default); 4];
    for operation in Operation::ALL {
        if let Some(value) = read(&per_operation_var(base, operation))? {
            settings[operation as usize] = value;
        }
    }
    Ok(settings)
}

/// The failure mode of each operation.
///
/// ```
/// use ratelimiter::key::Operation;
/// use ratelimiter::policy::{FailureMode, FailurePolicy};
///
/// let policy = FailurePolicy::from_lookup(|var| match var {
///     "RATE_LIMIT_FAILURE_MODE" => Some("local".into()),
///     "RATE_LIMIT_FAILURE_MODE_HEARTBEAT" => Some("open".into()),
///     _ => None,
/// })
/// .unwrap();
/// assert_eq!(policy.mode(Operation::ListenerJoin), FailureMode::Local);
/// assert_eq!(policy.mode(Operation::Heartbeat), FailureMode::Open);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailurePolicy {
    modes: [FailureMode; 4],
}

impl FailurePolicy {
    /// Every operation in `mode`.
    pub fn all(mode: FailureMode) -> Self {
        Self { modes: [mode; 4] }
    }

    /// The policy set by the process environment (`open` when unset).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// The policy set by `lookup`: [`FAILURE_MODE_VAR`] for every operation,
    /// then [`failure_mode_var`] for each one.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let modes = per_operation(
            lookup,
            FAILURE_MODE_VAR,
            FailureMode::default(),
            "open, closed, local",
            |value| value.parse().ok(),
        )?;
        Ok(Self { modes })
    }

    /// The same policy, with `operation` in `mode`.
    #[must_use]
    pub fn with(mut self, operation: Operation, mode: FailureMode) -> Self {
        self.modes[operation as usize] = mode;
        self
    }

    /// The failure mode of `operation`.
    pub fn mode(&self, operation: Operation) -> FailureMode {
        self.modes[operation as usize]
    }
}

/// The variable that puts every operation in shadow mode (`true` or `false`).
pub const SHADOW_MODE_VAR: &str = "RATE_LIMIT_SHADOW_MODE";

/// The variable that sets shadow mode for one operation, such as
/// `RATE_LIMIT_SHADOW_MODE_SESSION_CREATE`.
pub fn shadow_mode_var(operation: Operation) -> String {
    per_operation_var(SHADOW_MODE_VAR, operation)
}

/// Which operations run in shadow mode: their decisions are computed, logged
/// and counted, but nothing is denied. This is how a limit is introduced or
/// tightened safely.
///
/// ```
/// use ratelimiter::key::Operation;
/// use ratelimiter::policy::ShadowMode;
///
/// let shadow = ShadowMode::from_lookup(|var| {
///     (var == "RATE_LIMIT_SHADOW_MODE_HEARTBEAT").then(|| "true".into())
/// })
/// .unwrap();
/// assert!(shadow.is_shadow(Operation::Heartbeat));
/// assert!(!shadow.is_shadow(Operation::SessionCreate));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowMode {
    operations: [bool; 4],
}

impl ShadowMode {
    /// Every operation in shadow mode, or none.
    pub fn all(shadow: bool) -> Self {
        Self {
            operations: [shadow; 4],
        }
    }

    /// Shadow mode as the process environment sets it (off when unset).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Shadow mode as `lookup` sets it: [`SHADOW_MODE_VAR`] for every
    /// operation, then [`shadow_mode_var`] for each one; `true` or `false`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let operations =
            per_operation(
                lookup,
                SHADOW_MODE_VAR,
                false,
                "true, false",
                |value| match value {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                },
            )?;
        Ok(Self { operations })
    }

    /// The same, with `operation` in shadow mode or not.
    #[must_use]
    pub fn with(mut self, operation: Operation, shadow: bool) -> Self {
        self.operations[operation as usize] = shadow;
        self
    }

    /// Whether `operation` is in shadow mode.
    pub fn is_shadow(&self, operation: Operation) -> bool {
        self.operations[operation as usize]
    }
}

/// What the breaker allows for one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Call the store.
    Call,
    /// Call the store as the one probe after a cool-down; its result closes
    /// or reopens the breaker.
    Probe,
    /// Do not call the store: it failed recently.
    Skip,
}

/// The breaker's state, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the cool-down ends.
    Open,
    /// The cool-down has ended; the next call is a probe.
    HalfOpen,
}

/// Stops calling a failing store for a cool-down, then lets one probe through.
///
/// After `threshold` consecutive failures the breaker opens: decisions skip
/// the store (and take microseconds instead of a timeout) until `cool_down`
/// has passed. Then one decision probes the store; success closes the
/// breaker, failure opens it for another cool-down.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Nanos,
    failures: AtomicU32,
    /// When the current cool-down ends; 0 while closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

/// Consecutive failures that open the breaker by default.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;

/// How long the breaker stays open by default.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(DEFAULT_BREAKER_THRESHOLD, DEFAULT_BREAKER_COOL_DOWN)
    }
}

impl CircuitBreaker {
    /// A breaker that opens after `threshold` consecutive failures (at least
    /// one) and stays open for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down: cool_down.as_nanos() as u64,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// How long the breaker stays open after it opens.
    pub fn cool_down(&self) -> Duration {
        Duration::from_nanos(self.cool_down)
    }

    /// Whether a decision at `now` may call the store.
    #[inline]
    pub fn permit(&self, now: Nanos) -> Permit {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            Permit::Call
        } else if now < open_until {
            Permit::Skip
        } else if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Permit::Probe
        } else {
            Permit::Skip
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Nanos) -> BreakerState {
        match self.open_until.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if now < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// When the current cool-down ends, if the breaker is open at `now`.
    pub fn open_until(&self, now: Nanos) -> Option<Nanos> {
        let until = self.open_until.load(Ordering::Acquire);
        (until > now).then_some(until)
    }

    /// A call succeeded. Returns true if this closed an open breaker.
    #[inline]
    pub fn record_success(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        true
    }

    /// A call failed at `now`. Returns true if this opened the breaker.
    pub fn record_failure(&self, now: Nanos) -> bool {
        let reopen = now.saturating_add(self.cool_down);
        if self.probing.swap(false, Ordering::AcqRel) {
            self.open_until.store(reopen, Ordering::Release);
            return true;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold
            && self
                .open_until
                .compare_exchange(0, reopen, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn modes_parse_and_name_bad_values() {
        let policy = FailurePolicy::from_lookup(|_| None).unwrap();
        assert!(
            Operation::ALL
                .iter()
                .all(|op| policy.mode(*op) == FailureMode::Open)
        );
        let policy = FailurePolicy::from_lookup(|v| {
            (v == "RATE_LIMIT_FAILURE_MODE").then(|| "closed".into())
        })
        .unwrap();
        assert_eq!(policy.mode(Operation::SessionCreate), FailureMode::Closed);
        let err = FailurePolicy::from_lookup(|v| {
            (v == "RATE_LIMIT_FAILURE_MODE_LISTENER_JOIN").then(|| "sometimes".into())
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "RATE_LIMIT_FAILURE_MODE_LISTENER_JOIN must be one of open, closed, local, got \"sometimes\""
        );
        assert!(FailurePolicy::from_lookup(|_| Some(String::new())).is_err());
    }

    #[test]
    fn per_operation_variables_are_named_after_the_operation() {
        assert_eq!(
            failure_mode_var(Operation::ConnectionAttempt),
            "RATE_LIMIT_FAILURE_MODE_CONNECTION_ATTEMPT"
        );
    }

    #[test]
    fn shadow_mode_parses_strictly() {
        assert_eq!(
            ShadowMode::from_lookup(|_| None).unwrap(),
            ShadowMode::all(false)
        );
        let shadow = ShadowMode::from_lookup(|v| match v {
            "RATE_LIMIT_SHADOW_MODE" => Some("true".into()),
            "RATE_LIMIT_SHADOW_MODE_LISTENER_JOIN" => Some("false".into()),
            _ => None,
        })
        .unwrap();
        assert!(shadow.is_shadow(Operation::Heartbeat));
        assert!(!shadow.is_shadow(Operation::ListenerJoin));
        for bad in ["yes", "1", "", "TRUE"] {
            let err =
                ShadowMode::from_lookup(|v| (v == "RATE_LIMIT_SHADOW_MODE").then(|| bad.into()))
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains("RATE_LIMIT_SHADOW_MODE must be one of true, false"),
                "{err}"
            );
        }
    }

    #[test]
    fn breaker_opens_after_threshold_and_probes_after_cool_down() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(5));
        let t = 100 * SEC;
        assert_eq!(breaker.permit(t), Permit::Call);
        assert!(!breaker.record_failure(t));
        assert!(!breaker.record_failure(t));
        assert!(breaker.record_failure(t));
        assert_eq!(breaker.state(t), BreakerState::Open);
        assert_eq!(breaker.permit(t + 4 * SEC), Permit::Skip);
        // After the cool-down exactly one decision probes.
        assert_eq!(breaker.permit(t + 5 * SEC), Permit::Probe);
        assert_eq!(breaker.permit(t + 5 * SEC), Permit::Skip);
        // The probe fails: open for another cool-down.
        assert!(breaker.record_failure(t + 5 * SEC));
        assert_eq!(breaker.permit(t + 9 * SEC), Permit::Skip);
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Probe);
        // The probe succeeds: closed.
        assert!(breaker.record_success());
        assert_eq!(breaker.state(t + 10 * SEC), BreakerState::Closed);
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Call);
    }

    #[test]
    fn a_success_resets_the_count_of_failures() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(1));
        breaker.record_failure(0);
        assert!(!breaker.record_success());
        assert!(!breaker.record_failure(0));
        assert_eq!(breaker.permit(0), Permit::Call);
    }
}
