//! What happens when the store cannot be used: the circuit breaker that
//! stops calling a failing store for a while, the hot keys decided in this
//! process, and the policy's failure mode, with the local fallback limiter.
//!
//! The service asks [`Failures`] before each call (is the breaker open, is
//! the key held as hot?), tells it how the call went, and lets it decide
//! when the store cannot: by the policy's [`FailureMode`], or, for a hot
//! key, in this process at the key's own limits.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::gcra::{Decision, Nanos, Outcome, Quota};
use crate::key::{Key, Slot};
use crate::lease::Seats;
use crate::memory::MemoryStore;
use crate::policy::{Batching, FailureMode, Limit, Policy, PolicyId};
use crate::store::{Op, StoreError};
use crate::verdict::{Degradation, Verdict};

/// How long a throttled or contended key is decided in this process without
/// asking the store again: calling a throttled partition only adds to its
/// throttling.
pub const HOT_KEY_HOLD: Duration = Duration::from_secs(1);

/// How long a key the store throttled is remembered as hot after its hold:
/// a batching policy takes larger batches for it meanwhile.
pub(crate) const HOT_KEY_MEMORY: Duration = Duration::from_secs(10);

/// Buckets the local fallback limiter, and the hot-key list, keep at most.
const LOCAL_FALLBACK_KEYS: usize = 10_000;

/// The failure handling of one service: the breaker, the hot keys and the
/// local fallback limiter.
#[derive(Debug)]
pub(crate) struct Failures {
    pub(crate) breaker: CircuitBreaker,
    hot_keys: HotKeys,
    /// Decides for policies in [`FailureMode::Local`] while the store is away.
    local: MemoryStore,
    /// Whether the service serves hot keys from batches (see
    /// [`crate::policy::Batching`]): then a throttled key of a batching
    /// policy is refused until a batch can be taken, never decided here.
    batching: bool,
}

impl Failures {
    pub(crate) fn new(breaker: CircuitBreaker, batching: bool) -> Self {
        Self {
            breaker,
            hot_keys: HotKeys::new(),
            local: MemoryStore::with_max_keys(LOCAL_FALLBACK_KEYS),
            batching,
        }
    }

    /// Why a decision at `now` on `key` must not call the store, if it must
    /// not: the breaker is open, or the key is held as hot.
    #[inline]
    pub(crate) fn skip(&self, key: &Key<'_>, now: Nanos) -> Option<Degradation> {
        if self.breaker.open_until(now).is_some() {
            Some(Degradation::BreakerOpen)
        } else if self.hot_keys.held(key, now) {
            // Held as hot: decided here, as the store's last answer asked.
            Some(Degradation::Throttled)
        } else {
            None
        }
    }

    /// Whether `key` is held as hot at `now`.
    #[inline]
    pub(crate) fn held(&self, key: &Key<'_>, now: Nanos) -> bool {
        self.hot_keys.held(key, now)
    }

    /// When the store last throttled `key` (or gave up on it), if this
    /// process remembers it.
    #[inline]
    pub(crate) fn throttled_at(&self, key: &Key<'_>) -> Option<Nanos> {
        self.hot_keys.marked_at(key)
    }

    /// The store answered: a success for the breaker.
    #[inline]
    pub(crate) fn answered(&self) {
        if self.breaker.record_success() {
            tracing::info!("rate-limit store answered again; circuit breaker closed");
        }
    }

    /// Logs a store's failure on a call that started in the breaker's
    /// `generation` with `permit`, counts it for the breaker unless it only
    /// says the key is hot, and says why the decision is degraded.
    pub(crate) fn failed(
        &self,
        policy: &Policy,
        key: &Key<'_>,
        error: &StoreError,
        generation: u64,
        permit: Permit,
        now: Nanos,
    ) -> Degradation {
        let why = Degradation::from(error.kind());
        if why.is_hot_key() {
            if permit == Permit::Probe {
                // A throttled or contended probe still found the store
                // answering: that settles the probe, and closes the breaker.
                self.answered();
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

    /// The verdict when the store cannot be used, by the policy's failure
    /// mode; `tats` holds what this process knows of the buckets.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide(
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
                    window: limit.quota().period(),
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
        // A key that can be batched is refused instead, until a batch can
        // be taken: deciding it here, in every process, admits up to one
        // limit per process.
        let mode = if !why.is_hot_key() {
            policy.failure_mode()
        } else if self.batching && policy.batching() != Batching::Off {
            FailureMode::Closed
        } else {
            FailureMode::Local
        };
        if let Some(cap) = policy.cap() {
            // Seats are not counted here in `local` mode: the release of a
            // seat taken here would reach another process's store, and the
            // holder would be refused for two hours. So `local` admits, as
            // `open` does, and `closed` refuses, as a hot key is (never
            // failed open: its seats cannot be counted here).
            let allowed = mode != FailureMode::Closed && !why.is_hot_key();
            let mut decision = cap.decision(Seats::default(), allowed);
            if !allowed {
                decision.retry_after = Duration::from_secs(1);
            }
            let mut verdict = Verdict::single(id, decision);
            verdict.degraded = Some(why);
            return verdict;
        }
        let mut verdict = match mode {
            FailureMode::Open => Verdict::from_decisions(id, fixed(true, Duration::ZERO)),
            FailureMode::Closed => {
                // Ask the client to come back once the store may be back.
                let now = ops[0].step.now();
                let wait = self.breaker.open_until(now).map_or(0, |until| until - now);
                Verdict::from_decisions(
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
                        self.local.record(key, op.slot, tat, op.step.now());
                    }
                }
                let outcome = self.local.apply_sync(key, ops, tats);
                Verdict::from_ops(id, limits, ops, tats, outcome)
            }
        };
        verdict.degraded = Some(why);
        verdict
    }
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
                .get(key, &self.hold)
                .is_some_and(|until| until > now)
    }

    /// When `key` was last marked, if it was.
    #[inline]
    fn marked_at(&self, key: &Key<'_>) -> Option<Nanos> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let until = self.buckets.get(key, &self.hold)?;
        Some(until.saturating_sub(HOT_KEY_HOLD.as_nanos() as Nanos))
    }

    /// Holds `key` for [`HOT_KEY_HOLD`] from `now`; true when it is time to
    /// report it (once a minute per key).
    fn mark(&self, key: &Key<'_>, now: Nanos) -> bool {
        self.any.store(true, Ordering::Relaxed);
        let until = now.saturating_add(HOT_KEY_HOLD.as_nanos() as Nanos);
        self.buckets.record(key, &self.hold, until, now);
        let step = self.report_quota.step(now, 1).expect("one token fits");
        self.buckets.apply_step(key, &self.report, &step).0 == Outcome::Allowed
    }
}

/// What the breaker allows for one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Permit {
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
    pub(crate) fn permit(&self, now: Nanos) -> Permit {
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
    pub(crate) fn record_success(&self) -> bool {
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
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A call that started in `generation` failed at `now`. Returns true if
    /// this opened the breaker.
    pub(crate) fn record_failure(&self, generation: u64, now: Nanos) -> bool {
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
