//! What to do when the store fails: failure modes, and a circuit breaker
//! that stops calling a failing store for a while.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::gcra::Nanos;

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

/// The variable that sets the failure mode of every policy.
pub const FAILURE_MODE_VAR: &str = "RATE_LIMIT_FAILURE_MODE";

/// The variable that puts every policy in shadow mode (`true` or `false`).
pub const SHADOW_MODE_VAR: &str = "RATE_LIMIT_SHADOW_MODE";

/// `<base>_<POLICY>`, such as `RATE_LIMIT_SHADOW_MODE_SESSION_CREATE`: the
/// variable that sets `base` for one policy.
pub fn per_policy_var(base: &str, policy: &str) -> String {
    format!("{base}_{}", policy.to_ascii_uppercase())
}

/// Parses a shadow-mode value: exactly `true` or `false` (surrounding white
/// space aside).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
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
/// It opens on sustained failure, not on one stall: a failure counts only
/// if no other failure was counted while its call was in flight (each call
/// takes the breaker's [`CircuitBreaker::generation`] when it starts). The
/// calls that one stall catches in flight (16 at once, say) all fail
/// together, but count once; a store that keeps failing fails calls made
/// after each failure, and each of those counts. After `threshold` counted failures in
/// a row (no success in between) the breaker opens: decisions skip the store
/// (and take microseconds instead of a timeout) until `cool_down` has
/// passed. Then one decision probes the store; success closes the breaker,
/// failure opens it for another cool-down.
///
/// With the defaults (3 counted failures) and a 100 ms timeout, an outage
/// under steady traffic opens the breaker after about 300 ms; a single
/// stall of any length below that, whatever the number of calls in flight,
/// does not.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Nanos,
    failures: AtomicU32,
    /// Counted failures ever: a call that fails after the generation it
    /// started in has passed was in flight during a counted failure, and
    /// its failure is the same event.
    generation: AtomicU64,
    /// When the current cool-down ends; 0 while closed.
    open_until: AtomicU64,
    /// Until when the probe given out after a cool-down is waited for; 0
    /// when none is out. A lease, not a flag: a decision that took the
    /// probe and never settled it (its future was dropped, or it ended
    /// without calling the store) cannot keep the breaker open for good.
    probe_until: AtomicU64,
}

/// Counted failures in a row that open the breaker by default.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;

/// How long the breaker stays open by default.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(DEFAULT_BREAKER_THRESHOLD, DEFAULT_BREAKER_COOL_DOWN)
    }
}

impl CircuitBreaker {
    /// A breaker that opens after `threshold` counted failures in a row (at
    /// least one) and stays open for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down: cool_down.as_nanos() as u64,
            failures: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            probe_until: AtomicU64::new(0),
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
        } else {
            // Half-open: one probe at a time, for at most a cool-down each.
            let out = self.probe_until.load(Ordering::Acquire);
            let lease = now.saturating_add(self.cool_down);
            if out <= now
                && self
                    .probe_until
                    .compare_exchange(out, lease, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                Permit::Probe
            } else {
                Permit::Skip
            }
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
        self.probe_until.store(0, Ordering::Release);
        true
    }

    /// The generation a call starts in: take it before calling the store,
    /// and give it to [`CircuitBreaker::record_failure`].
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A call that started in `generation` failed at `now`. Returns true if
    /// this opened the breaker.
    pub fn record_failure(&self, generation: u64, now: Nanos) -> bool {
        let reopen = now.saturating_add(self.cool_down);
        if self.probe_until.swap(0, Ordering::AcqRel) != 0 {
            self.open_until.store(reopen, Ordering::Release);
            return true;
        }
        if self
            .generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // In flight when another failure was counted: the same stall.
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        failures >= self.threshold
            && self
                .open_until
                .compare_exchange(0, reopen, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn modes_and_flags_parse_strictly() {
        assert_eq!("open".parse(), Ok(FailureMode::Open));
        assert_eq!(" local\n".parse(), Ok(FailureMode::Local));
        assert!("Open".parse::<FailureMode>().is_err());
        assert_eq!(parse_bool("true"), Some(true));
        for bad in ["yes", "1", "", "TRUE"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        assert_eq!(
            per_policy_var(FAILURE_MODE_VAR, "send_message"),
            "RATE_LIMIT_FAILURE_MODE_SEND_MESSAGE"
        );
    }

    #[test]
    fn breaker_opens_after_threshold_and_probes_after_cool_down() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(5));
        let t = 100 * SEC;
        assert_eq!(breaker.permit(t), Permit::Call);
        assert!(!breaker.record_failure(breaker.generation(), t));
        assert!(!breaker.record_failure(breaker.generation(), t));
        assert!(breaker.record_failure(breaker.generation(), t));
        assert_eq!(breaker.state(t), BreakerState::Open);
        assert_eq!(breaker.permit(t + 4 * SEC), Permit::Skip);
        // After the cool-down exactly one decision probes.
        assert_eq!(breaker.permit(t + 5 * SEC), Permit::Probe);
        assert_eq!(breaker.permit(t + 5 * SEC), Permit::Skip);
        // The probe fails: open for another cool-down.
        assert!(breaker.record_failure(breaker.generation(), t + 5 * SEC));
        assert_eq!(breaker.permit(t + 9 * SEC), Permit::Skip);
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Probe);
        // The probe succeeds: closed.
        assert!(breaker.record_success());
        assert_eq!(breaker.state(t + 10 * SEC), BreakerState::Closed);
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Call);
    }

    #[test]
    fn a_probe_never_settled_is_given_again_after_a_cool_down() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(5));
        let t = 100 * SEC;
        assert!(breaker.record_failure(breaker.generation(), t));
        // The probe is taken, and its decision never calls the store.
        assert_eq!(breaker.permit(t + 5 * SEC), Permit::Probe);
        assert_eq!(breaker.permit(t + 9 * SEC), Permit::Skip);
        // One cool-down on, it is given out again, once.
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Probe);
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Skip);
        assert!(breaker.record_success());
        assert_eq!(breaker.permit(t + 10 * SEC), Permit::Call);
    }

    #[test]
    fn a_success_resets_the_count_of_failures() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(1));
        breaker.record_failure(breaker.generation(), 0);
        assert!(!breaker.record_success());
        assert!(!breaker.record_failure(breaker.generation(), 0));
        assert_eq!(breaker.permit(0), Permit::Call);
    }

    #[test]
    fn one_stall_counts_once_however_many_calls_it_catches() {
        let breaker = CircuitBreaker::default();
        let (t, timeout) = (100 * SEC, SEC / 10);
        // 16 calls in flight at t all time out together.
        let started = breaker.generation();
        let opened: Vec<bool> = (0..16)
            .map(|_| breaker.record_failure(started, t + timeout))
            .collect();
        assert!(opened.iter().all(|o| !o));
        assert_eq!(breaker.state(t + timeout), BreakerState::Closed);
        // The store keeps failing: calls made after each failure count.
        assert!(!breaker.record_failure(breaker.generation(), t + 2 * timeout));
        assert!(breaker.record_failure(breaker.generation(), t + 3 * timeout));
        assert_eq!(breaker.state(t + 3 * timeout), BreakerState::Open);
    }
}
