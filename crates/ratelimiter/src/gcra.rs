//! The decision core: a token bucket expressed as GCRA (generic cell rate algorithm).
//!
//! Everything here is pure arithmetic on integers: no I/O, no clock, no
//! allocation. The whole state of one key is a single number, its
//! *theoretical arrival time* (TAT) in nanoseconds since the Unix epoch. A
//! key that was never seen, or whose item was deleted, has TAT 0; any TAT at
//! or before `now` means the same thing: the bucket is full.
//!
//! With `T = period / limit` (the emission interval) and `τ = limit × T`
//! (the time it takes to refill an empty bucket), a request of cost `n` at
//! `now` is allowed iff `max(TAT, now) + n×T ≤ now + τ`, and then the TAT
//! becomes `max(TAT, now) + n×T`. The number of tokens left is how many whole
//! emission intervals fit between the new TAT and `now + τ`.
//!
//! Stores never implement this rule themselves. A consuming request is
//! described by a [`Step`]; a store applies it atomically to one key (with
//! [`Step::apply`], or with the two linear pieces [`Step::idle_target`] and
//! [`Step::busy_ceiling`] when its conditional writes cannot express `max`)
//! and reports an [`Outcome`] and the TAT it left, from which
//! [`Quota::decision`] derives the numbers callers see.
//!
//! # Tolerance
//!
//! A quota may have a *tolerance* `δ ≤ T` ([`Quota::with_tolerance`]): a
//! TAT up to `δ` before `now` is then charged from itself instead of from
//! `now` (`base = TAT` if `TAT > now − δ`, else `now`). A client that comes
//! back a little early or late keeps one write shape (busy), which saves a
//! store of two shapes its second call; in exchange it may bank up to `δ`
//! of idle time, never more (the bank is reset, not summed), so that in any
//! span of time it gets at most one request more than the exact rule
//! allows. Without a tolerance (the default) the rule is exact.

use std::num::NonZeroU32;
use std::time::Duration;

/// A point in time, in nanoseconds since the Unix epoch.
///
/// Wall-clock time rather than a monotonic instant, because the state is
/// shared between processes (Lambda containers) through a store.
pub type Nanos = u64;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The longest period a quota, and so a policy's limit, may have: one day.
/// Longer windows are better served by a quota over a shorter one (a token
/// bucket's burst is its whole limit), and the bound keeps every sum far
/// below `u64::MAX`.
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// `limit` requests per `period`, with a burst capacity of `limit`.
///
/// A fresh key may spend all `limit` tokens at once; tokens then come back
/// continuously, one every `period / limit`.
///
/// ```
/// use std::num::NonZeroU32;
/// use ratelimiter::gcra::Quota;
///
/// let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
/// let now = 1_700_000_000_000_000_000;
/// let step = quota.step(now, 1).unwrap();
/// let (outcome, tat) = step.apply(0); // a full bucket
/// let decision = quota.decision(&step, outcome, tat);
/// assert!(decision.allowed);
/// assert_eq!(decision.remaining, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period: Duration,
    /// `T`, rounded up so that rounding can only make the limiter stricter.
    emission: u64,
    /// `δ`, at most `T`: how far before `now` a TAT is still charged from
    /// itself (see the module's "Tolerance").
    tolerance: u64,
}

/// Why a [`Quota`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The period was zero.
    #[error("a quota period must be longer than zero")]
    ZeroPeriod,
    /// The period was longer than [`MAX_PERIOD`].
    #[error("a quota period must not exceed one day, got {period:?}")]
    PeriodTooLong {
        /// The period that was asked for.
        period: Duration,
    },
    /// The tolerance was longer than the emission interval.
    #[error(
        "a tolerance of {tolerance:?} exceeds the emission interval of {interval:?} (period / limit)"
    )]
    ToleranceTooLong {
        /// The tolerance that was asked for.
        tolerance: Duration,
        /// The quota's emission interval, the most it may be.
        interval: Duration,
    },
}

/// A request asked for more tokens than the bucket can ever hold.
///
/// Denying it would be wrong (it would never succeed, so no `retry_after`
/// is true), so it is an error instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a cost of {cost} exceeds the capacity of {capacity} tokens")]
pub struct CostExceedsCapacity {
    /// The cost that was asked for.
    pub cost: u32,
    /// The bucket's capacity, the quota's limit.
    pub capacity: u32,
}

impl Quota {
    /// A quota of `limit` requests per `period`.
    pub fn new(limit: NonZeroU32, period: Duration) -> Result<Self, QuotaError> {
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        if period > MAX_PERIOD {
            return Err(QuotaError::PeriodTooLong { period });
        }
        // Fits: MAX_PERIOD is about 8.6e13 ns.
        let period_ns = period.as_nanos() as u64;
        let emission = period_ns.div_ceil(u64::from(limit.get()));
        Ok(Self {
            limit,
            period,
            emission,
            tolerance: 0,
        })
    }

    /// The same quota with a tolerance of `tolerance`, at most its
    /// emission interval (see the module's "Tolerance"); zero is exact.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use std::time::Duration;
    /// use ratelimiter::gcra::{Outcome, Quota};
    ///
    /// let quota = Quota::per_minute(NonZeroU32::new(2).unwrap())
    ///     .with_tolerance(Duration::from_secs(3))?;
    /// let now = 1_700_000_000_000_000_000;
    /// // The bucket's TAT is 2 s before now: charged from it, not from now.
    /// let tat = now - 2_000_000_000;
    /// assert_eq!(quota.step(now, 1)?.apply(tat), (Outcome::Allowed, tat + 30_000_000_000));
    /// assert!(Quota::per_minute(NonZeroU32::new(2).unwrap())
    ///     .with_tolerance(Duration::from_secs(31))
    ///     .is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_tolerance(mut self, tolerance: Duration) -> Result<Self, QuotaError> {
        let nanos = u64::try_from(tolerance.as_nanos()).unwrap_or(u64::MAX);
        if nanos > self.emission {
            return Err(QuotaError::ToleranceTooLong {
                tolerance,
                interval: self.emission_interval(),
            });
        }
        self.tolerance = nanos;
        Ok(self)
    }

    /// The tolerance: zero unless set by [`Quota::with_tolerance`].
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.tolerance)
    }

    /// `limit` requests per second.
    pub fn per_second(limit: NonZeroU32) -> Self {
        Self::new(limit, Duration::from_secs(1)).expect("one second is a valid period")
    }

    /// `limit` requests per minute.
    pub fn per_minute(limit: NonZeroU32) -> Self {
        Self::new(limit, Duration::from_secs(60)).expect("one minute is a valid period")
    }

    /// `limit` requests per hour.
    pub fn per_hour(limit: NonZeroU32) -> Self {
        Self::new(limit, Duration::from_secs(3600)).expect("one hour is a valid period")
    }

    /// The number of requests allowed per period, which is also the burst capacity.
    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    /// The period over which `limit` requests are allowed.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time one token takes to come back (`period / limit`, rounded up to a nanosecond).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission)
    }

    /// `τ`: the time an empty bucket takes to refill.
    #[inline]
    pub(crate) fn capacity_ns(&self) -> u64 {
        self.emission * u64::from(self.limit.get())
    }

    /// Describes a request of `cost` tokens at `now`, for a store to apply.
    ///
    /// A cost of 0 is a *probe*: allowed while at least one token is left,
    /// denied (with the `retry_after` of a one-token request) when none
    /// is, and it takes nothing either way. A store applies it like any
    /// step: its increment is 0, its busy ceiling one token below the
    /// horizon.
    #[inline]
    pub fn step(&self, now: Nanos, cost: u32) -> Result<Step, CostExceedsCapacity> {
        if cost > self.limit.get() {
            return Err(CostExceedsCapacity {
                cost,
                capacity: self.limit.get(),
            });
        }
        let full = now.saturating_add(self.capacity_ns());
        Ok(Step {
            now,
            floor: now.saturating_sub(self.tolerance),
            cost,
            increment: self.emission * u64::from(cost),
            // A probe needs one token's room without taking it.
            horizon: if cost == 0 {
                full - self.emission
            } else {
                full
            },
        })
    }

    /// The numbers a caller sees once a store has applied `step`: its
    /// `outcome`, and the bucket's TAT after it (new when allowed, unchanged
    /// when denied), as [`Step::apply`] reports them.
    #[inline]
    pub fn decision(&self, step: &Step, outcome: Outcome, tat: Nanos) -> Decision {
        // The horizon of a taking step; a probe's is one token lower.
        let full = step.now.saturating_add(self.capacity_ns());
        match outcome {
            Outcome::Allowed => Decision {
                allowed: true,
                limit: self.limit(),
                window: self.period,
                remaining: self.tokens_between(tat, full),
                retry_after: Duration::ZERO,
                reset_after: Duration::from_nanos(tat.saturating_sub(step.now)),
            },
            Outcome::Denied => {
                let base = tat.max(step.now);
                Decision {
                    allowed: false,
                    limit: self.limit(),
                    window: self.period,
                    remaining: self.tokens_between(base, full),
                    retry_after: Duration::from_nanos(
                        base.saturating_add(step.increment.max(self.emission))
                            .saturating_sub(full),
                    ),
                    reset_after: Duration::from_nanos(base - step.now),
                }
            }
        }
    }

    /// The seed's status fields for a key at `now`, without consuming anything.
    pub fn status(&self, tat: Nanos, now: Nanos) -> Status {
        let base = tat.max(now);
        let horizon = now.saturating_add(self.capacity_ns());
        Status {
            count: self.limit() - self.tokens_between(base, horizon),
            limit: self.limit(),
            reset_in_seconds: ceil_secs(Duration::from_nanos(base - now)),
            window_duration: ceil_secs(self.period),
        }
    }

    /// Whole tokens a request at `now` could take from a bucket at `tat`,
    /// charged as [`Step::apply`] charges them (the tolerance included):
    /// what a batch may ask for.
    #[inline]
    pub(crate) fn available(&self, tat: Nanos, now: Nanos) -> u32 {
        let base = if tat > now.saturating_sub(self.tolerance) {
            tat
        } else {
            now
        };
        self.tokens_between(base, now.saturating_add(self.capacity_ns()))
    }

    /// The first instant at which a bucket at `tat` holds `tokens` whole
    /// tokens, without a tolerance (so never too early).
    #[inline]
    pub(crate) fn ready_at(&self, tat: Nanos, tokens: u32) -> Nanos {
        tat.saturating_add(self.emission * u64::from(tokens))
            .saturating_sub(self.capacity_ns())
    }

    /// Whole tokens that fit between `tat` and `horizon`, capped at the limit.
    #[inline]
    fn tokens_between(&self, tat: Nanos, horizon: Nanos) -> u32 {
        let tokens = horizon.saturating_sub(tat) / self.emission;
        tokens.min(u64::from(self.limit.get())) as u32
    }
}

/// One consuming request, ready for a store to apply atomically to a key's TAT.
///
/// A store either evaluates [`Step::apply`] inside its own atomic section
/// (an in-memory compare-and-swap), or uses the two linear pieces of the rule
/// as conditional writes:
/// - *idle*: if the TAT is at or before [`Step::busy_floor`], set it to
///   [`Step::idle_target`];
/// - *busy*: if the TAT is after `busy_floor` and at or before
///   [`Step::busy_ceiling`], add [`Step::increment`] to it.
///
/// A TAT after `busy_ceiling` means the request is denied. Without a
/// tolerance, `busy_floor` is `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    now: Nanos,
    /// `now − δ`: a TAT above it is charged from itself.
    floor: Nanos,
    cost: u32,
    increment: u64,
    horizon: Nanos,
}

impl Step {
    /// The time of the request.
    #[inline]
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// The number of tokens the request asks for.
    #[inline]
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// `cost × T`: how far an allowed request moves the TAT.
    #[inline]
    pub fn increment(&self) -> u64 {
        self.increment
    }

    /// The new TAT when the bucket was full (TAT at or before
    /// [`Step::busy_floor`]).
    #[inline]
    pub fn idle_target(&self) -> Nanos {
        self.now.saturating_add(self.increment)
    }

    /// The TAT above which the busy shape applies (the increment is added
    /// to the TAT): `now`, less the quota's tolerance.
    #[inline]
    pub fn busy_floor(&self) -> Nanos {
        self.floor
    }

    /// The largest TAT from which the request is still allowed.
    #[inline]
    pub fn busy_ceiling(&self) -> Nanos {
        self.horizon - self.increment
    }

    /// The TAT after giving back what this step took, when `tat` may still
    /// hold it (it is at least [`Step::refund_floor`]); `None` when the
    /// bucket was reset or refilled since, and there is nothing to give
    /// back.
    ///
    /// Giving back leaves a state equivalent, for every later decision, to
    /// the one the step found.
    #[inline]
    pub fn refund(&self, tat: Nanos) -> Option<Nanos> {
        (tat >= self.refund_floor()).then(|| tat - self.increment)
    }

    /// The least TAT that may still hold what this step took: every TAT it
    /// writes is at least this (`busy_floor + increment`; without a
    /// tolerance, [`Step::idle_target`]).
    #[inline]
    pub fn refund_floor(&self) -> Nanos {
        self.floor.saturating_add(self.increment)
    }

    /// The whole rule on one TAT: what a store that can run code atomically
    /// does. Returns the outcome and the bucket's TAT after the step: the
    /// new one when allowed, `tat` unchanged when denied.
    #[inline]
    pub fn apply(&self, tat: Nanos) -> (Outcome, Nanos) {
        // Without a tolerance, `max(tat, now)`.
        let base = if tat > self.floor { tat } else { self.now };
        if base <= self.busy_ceiling() {
            (Outcome::Allowed, base + self.increment)
        } else {
            (Outcome::Denied, tat)
        }
    }
}

/// Whether a request was allowed: by one bucket ([`Step::apply`]), or by a
/// store for all the buckets of a request at once (every step allowed, and
/// every TAT written, or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed: the request took its tokens.
    Allowed,
    /// Denied: nothing was taken.
    Denied,
}

/// The result of one decision, as a caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The quota's limit (also the burst capacity).
    pub limit: u32,
    /// The quota's period: `limit` tokens come back over this long.
    pub window: Duration,
    /// Whole tokens left after this decision.
    pub remaining: u32,
    /// How long until the same request would be allowed; zero when allowed.
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset_after: Duration,
}

/// The seed's rate-limit status, field for field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Tokens in use: `limit − remaining`.
    pub count: u32,
    /// The quota's limit.
    pub limit: u32,
    /// Whole seconds, rounded up, until the bucket is full again.
    pub reset_in_seconds: u64,
    /// The quota's period in whole seconds (rounded up).
    pub window_duration: u64,
}

impl Status {
    /// Of several limits' statuses, the one whose bucket is fullest (the
    /// highest share of its limit in use; the first of equals): what the
    /// seed's single status reports for a policy of several limits.
    pub fn fullest(statuses: &[Status]) -> Option<Status> {
        statuses.iter().rev().copied().max_by(|a, b| {
            (u64::from(a.count) * u64::from(b.limit))
                .cmp(&(u64::from(b.count) * u64::from(a.limit)))
        })
    }
}

/// Whole seconds in `duration`, rounded up.
pub fn ceil_secs(duration: Duration) -> u64 {
    (duration.as_nanos() as u64).div_ceil(NANOS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Nanos = 1_700_000_000 * NANOS_PER_SEC;
    const SEC: u64 = NANOS_PER_SEC;

    fn per_minute(limit: u32) -> Quota {
        Quota::per_minute(NonZeroU32::new(limit).unwrap())
    }

    /// One decision on one TAT, as a store and the service make it.
    #[derive(Debug)]
    struct Decided {
        decision: Decision,
        new_tat: Option<Nanos>,
    }

    trait Decide {
        fn decide(&self, tat: Nanos, now: Nanos, cost: u32)
        -> Result<Decided, CostExceedsCapacity>;
    }

    impl Decide for Quota {
        fn decide(
            &self,
            tat: Nanos,
            now: Nanos,
            cost: u32,
        ) -> Result<Decided, CostExceedsCapacity> {
            let step = self.step(now, cost)?;
            let (outcome, after) = step.apply(tat);
            Ok(Decided {
                decision: self.decision(&step, outcome, after),
                new_tat: (outcome == Outcome::Allowed).then_some(after),
            })
        }
    }

    /// Runs `n` requests of cost 1 at `now`, threading the TAT through.
    fn spend(quota: &Quota, tat: &mut Nanos, now: Nanos, n: u32) -> Vec<Decision> {
        (0..n)
            .map(|_| {
                let decided = quota.decide(*tat, now, 1).unwrap();
                if let Some(new) = decided.new_tat {
                    *tat = new;
                }
                decided.decision
            })
            .collect()
    }

    #[test]
    fn heartbeat_default_third_within_a_minute_waits_thirty_seconds() {
        let quota = per_minute(2);
        let mut tat = 0;
        let d = spend(&quota, &mut tat, NOW, 3);
        assert!(d[0].allowed && d[1].allowed);
        assert_eq!((d[0].remaining, d[1].remaining), (1, 0));
        assert!(!d[2].allowed);
        assert_eq!(d[2].retry_after, Duration::from_secs(30));
        assert_eq!(d[2].reset_after, Duration::from_secs(60));
        // Exactly then, the same request goes through.
        let later = quota.decide(tat, NOW + 30 * SEC, 1).unwrap();
        assert!(later.decision.allowed);
        assert_eq!(later.decision.remaining, 0);
    }

    #[test]
    fn session_default_fifty_first_in_an_hour_is_denied() {
        let quota = Quota::per_hour(NonZeroU32::new(50).unwrap());
        let mut tat = 0;
        // Spread the fifty over the first minute: refill is 72 s a token.
        for i in 0..50u64 {
            let d = quota.decide(tat, NOW + i * SEC, 1).unwrap();
            assert!(d.decision.allowed, "session {} denied", i + 1);
            tat = d.new_tat.unwrap();
        }
        let d = quota.decide(tat, NOW + 50 * SEC, 1).unwrap().decision;
        assert!(!d.allowed);
        // One token came back 72 s after the first request: 22 s from now.
        assert_eq!(d.retry_after, Duration::from_secs(22));
    }

    #[test]
    fn listener_and_connection_defaults() {
        for (limit, emission) in [(10, 6), (20, 3)] {
            let quota = per_minute(limit);
            let mut tat = 0;
            let d = spend(&quota, &mut tat, NOW, limit + 1);
            assert!(d[..limit as usize].iter().all(|d| d.allowed));
            assert!(!d[limit as usize].allowed);
            assert_eq!(d[limit as usize].retry_after, Duration::from_secs(emission));
        }
    }

    #[test]
    fn refills_continuously() {
        let quota = per_minute(10);
        let mut tat = 0;
        spend(&quota, &mut tat, NOW, 10);
        // 6 s a token: after 18 s, three are back.
        let status = quota.status(tat, NOW + 18 * SEC);
        assert_eq!(status.limit - status.count, 3);
        assert_eq!(status.reset_in_seconds, 42);
        let d = spend(&quota, &mut tat, NOW + 18 * SEC, 4);
        assert_eq!(d.iter().filter(|d| d.allowed).count(), 3);
        // After a full period the bucket is full again whatever happened.
        assert_eq!(quota.status(tat, NOW + 78 * SEC).count, 0);
    }

    #[test]
    fn cost_above_one_takes_several_tokens() {
        let quota = per_minute(10);
        let d = quota.decide(0, NOW, 4).unwrap();
        assert!(d.decision.allowed);
        assert_eq!(d.decision.remaining, 6);
        let tat = d.new_tat.unwrap();
        let d = quota.decide(tat, NOW, 7).unwrap().decision;
        assert!(!d.allowed);
        assert_eq!(d.remaining, 6);
        // One token (6 s) short.
        assert_eq!(d.retry_after, Duration::from_secs(6));
        assert!(quota.decide(tat, NOW, 6).unwrap().decision.allowed);
    }

    #[test]
    fn cost_larger_than_capacity_is_an_error() {
        let quota = per_minute(10);
        assert_eq!(
            quota.decide(0, NOW, 11).unwrap_err(),
            CostExceedsCapacity {
                cost: 11,
                capacity: 10
            }
        );
        assert!(quota.decide(0, NOW, 10).unwrap().decision.allowed);
    }

    #[test]
    fn a_probe_is_allowed_while_a_token_is_left_and_takes_none() {
        let quota = per_minute(2);
        let mut tat = 0;
        // A full bucket: allowed, both tokens still there.
        let probe = quota.decide(tat, NOW, 0).unwrap();
        assert!(probe.decision.allowed);
        assert_eq!(probe.decision.remaining, 2);
        spend(&quota, &mut tat, NOW, 1);
        let probe = quota.decide(tat, NOW, 0).unwrap();
        assert!(probe.decision.allowed);
        assert_eq!(probe.decision.remaining, 1);
        // Taking nothing: the TAT it leaves is where it found it.
        assert_eq!(probe.new_tat, Some(tat));
        spend(&quota, &mut tat, NOW, 1);
        // Empty: denied, told to come back when a one-token request would
        // pass, as a request of cost 1 is.
        let probe = quota.decide(tat, NOW, 0).unwrap();
        let one = quota.decide(tat, NOW, 1).unwrap();
        assert!(!probe.decision.allowed);
        assert_eq!(probe.decision, one.decision);
        assert_eq!(probe.decision.retry_after, Duration::from_secs(30));
        // Half a minute later a token is back: the probe passes.
        assert!(
            quota
                .decide(tat, NOW + 30 * SEC, 0)
                .unwrap()
                .decision
                .allowed
        );
        assert!(
            !quota
                .decide(tat, NOW + 30 * SEC - 1, 0)
                .unwrap()
                .decision
                .allowed
        );
    }

    #[test]
    fn a_one_token_bucket_probed_tells_taken_from_untouched() {
        // How a mark works: one token per long period, taken once; a probe
        // is refused from then until the period ends.
        let quota = Quota::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(7500)).unwrap();
        assert!(quota.decide(0, NOW, 0).unwrap().decision.allowed);
        let marked = quota.decide(0, NOW, 1).unwrap().new_tat.unwrap();
        assert!(
            !quota
                .decide(marked, NOW + 7499 * SEC, 0)
                .unwrap()
                .decision
                .allowed
        );
        assert!(
            quota
                .decide(marked, NOW + 7500 * SEC, 0)
                .unwrap()
                .decision
                .allowed
        );
    }

    #[test]
    fn status_before_and_after_decisions() {
        let quota = Quota::per_hour(NonZeroU32::new(50).unwrap());
        assert_eq!(
            quota.status(0, NOW),
            Status {
                count: 0,
                limit: 50,
                reset_in_seconds: 0,
                window_duration: 3600
            }
        );
        let mut tat = 0;
        for _ in 0..15 {
            tat = quota.decide(tat, NOW, 1).unwrap().new_tat.unwrap();
        }
        assert_eq!(
            quota.status(tat, NOW),
            Status {
                count: 15,
                limit: 50,
                reset_in_seconds: 15 * 72,
                window_duration: 3600
            }
        );
        // 100 s later one token is back (72 s) and the second is on its way.
        let status = quota.status(tat, NOW + 100 * SEC);
        assert_eq!(status.count, 14);
        assert_eq!(status.reset_in_seconds, 15 * 72 - 100);
    }

    #[test]
    fn step_pieces_agree_with_the_whole_rule() {
        let quota = per_minute(10);
        let step = quota.step(NOW, 3).unwrap();
        assert_eq!(step.idle_target(), NOW + 18 * SEC);
        assert_eq!(step.busy_ceiling(), NOW + 42 * SEC);
        assert_eq!(step.apply(0), (Outcome::Allowed, NOW + 18 * SEC));
        assert_eq!(
            step.apply(NOW + 42 * SEC),
            (Outcome::Allowed, NOW + 60 * SEC)
        );
        assert_eq!(
            step.apply(NOW + 42 * SEC + 1),
            (Outcome::Denied, NOW + 42 * SEC + 1)
        );
    }

    #[test]
    fn periods_that_do_not_divide_round_towards_strictness() {
        let quota = Quota::new(NonZeroU32::new(7).unwrap(), Duration::from_secs(60)).unwrap();
        // A fresh key still gets its whole burst.
        let mut tat = 0;
        let d = spend(&quota, &mut tat, NOW, 8);
        assert_eq!(d.iter().filter(|d| d.allowed).count(), 7);
        assert!(quota.emission_interval() * 7 >= Duration::from_secs(60));
    }

    #[test]
    fn bad_periods_are_errors() {
        let one = NonZeroU32::new(1).unwrap();
        assert_eq!(Quota::new(one, Duration::ZERO), Err(QuotaError::ZeroPeriod));
        assert!(matches!(
            Quota::new(one, MAX_PERIOD + Duration::from_secs(1)),
            Err(QuotaError::PeriodTooLong { .. })
        ));
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
    }
}
