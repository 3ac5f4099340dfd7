//! Batches: tokens a process takes from a shared bucket in one write and
//! spends itself, for a key too busy for one write per decision (a hot
//! key, past the store's per-item ceiling).
//!
//! A batch is a range of the bucket's timeline, from `start` to `end`: the
//! process took it with one step of cost `B` (which the store allowed like
//! any step), and that step moved the shared TAT from `start` to
//! `end = start + B×T`. The process then admits its own requests from the
//! range with the GCRA rule on a TAT of its own that starts at `start`: a
//! request of cost `n` at `now` takes the range from `max(tat, now)` to
//! `max(tat, now) + n×T`, if that ends by `end`. Tokens whose place in the
//! range `now` has passed are lost.
//!
//! **Never more than exact.** Every admitted request, from a batch or
//! decided by the store directly, owns a part of the shared timeline that
//! no other request owns:
//! - it starts no earlier than the request's arrival (its base is at least
//!   `now`);
//! - it ends no later than the arrival plus `τ` (a batch ends by its taking
//!   time plus `τ`, since the store allowed it, and is spent after).
//!
//! So the requests admitted in a span `w` own disjoint parts of a span of
//! `w + τ`: at most `limit + w / T` tokens, the exact bound
//! (`tests/batch_properties.rs` checks it against an exact model).
//!
//! **What is lost** is at most each process's batch: tokens whose place
//! passes before a request of that process comes. A batch sized from the
//! process's own recent rate on the key loses little.

use crate::gcra::{Nanos, Quota, Step};

mod table;

pub(crate) use table::{
    BATCH_HOLD, Batched, Batches, Pending, Plan, Set, Taking, Took, available, batched_for_rate,
    need, ready_at,
};

/// Tokens a process took in one write: the part of the shared timeline it
/// owns, and how far it has spent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The process's own TAT in the batch: the range before it is spent
    /// (or lost).
    tat: Nanos,
    /// Where the batch ends: the shared TAT its step left.
    end: Nanos,
    /// `T`, the quota's emission interval.
    emission: u64,
    /// `τ`, the time an empty bucket takes to refill: no request owns a
    /// part of the timeline beyond its arrival plus this.
    capacity: u64,
}

impl Batch {
    /// The batch that `step` of `quota` took, which a store allowed and
    /// which left the bucket's TAT at `after`.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use ratelimiter::batch::Batch;
    /// use ratelimiter::gcra::{Outcome, Quota};
    ///
    /// let quota = Quota::per_second(NonZeroU32::new(100).unwrap());
    /// let now = 1_700_000_000_000_000_000;
    /// // Ten tokens in one write.
    /// let step = quota.step(now, 10).unwrap();
    /// let (outcome, after) = step.apply(0);
    /// assert_eq!(outcome, Outcome::Allowed);
    /// let mut batch = Batch::taken(&quota, &step, after);
    /// // Spent here, one at a time, with no write.
    /// for _ in 0..10 {
    ///     assert!(batch.spend(now, 1));
    /// }
    /// assert!(!batch.spend(now, 1), "spent");
    /// ```
    pub fn taken(quota: &Quota, step: &Step, after: Nanos) -> Self {
        Self {
            tat: after.saturating_sub(step.increment()),
            end: after,
            emission: quota.emission_interval().as_nanos() as u64,
            capacity: quota.capacity_ns(),
        }
    }

    /// Takes `cost` tokens at `now`, if the batch still holds them where
    /// `now` has not passed: whether it did.
    #[inline]
    pub fn spend(&mut self, now: Nanos, cost: u32) -> bool {
        let fits = self.fits(now, cost);
        if fits {
            self.tat = self.tat.max(now) + self.emission * u64::from(cost);
        }
        fits
    }

    /// Whether the batch still holds `cost` tokens at `now`, where `now`
    /// has not passed: whether [`Batch::spend`] would take them. (A
    /// request whose `now` is older than the batch, read before another
    /// task took it, gets no part beyond its own horizon, `now + τ`.)
    #[inline]
    pub fn fits(&self, now: Nanos, cost: u32) -> bool {
        let base = self.tat.max(now);
        let end = base.saturating_add(self.emission * u64::from(cost));
        end <= self.end && end <= now.saturating_add(self.capacity)
    }

    /// The whole tokens left at `now`: those whose place `now` has not
    /// passed.
    #[inline]
    pub fn left(&self, now: Nanos) -> u32 {
        let from = self.tat.max(now);
        (self.end.saturating_sub(from) / self.emission).min(u64::from(u32::MAX)) as u32
    }

    /// The bucket's TAT as this process knows it at `now`, with the
    /// batch's unspent tokens counted as still there: what a decision
    /// spent from it reports.
    #[inline]
    pub(crate) fn tat_with_unspent(&self, now: Nanos) -> Nanos {
        self.end
            .saturating_sub(self.emission * u64::from(self.left(now)))
    }

    /// Where the batch ends: the shared TAT its step left, at least.
    #[inline]
    pub fn end(&self) -> Nanos {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    const NOW: Nanos = 1_700_000_000_000_000_000;
    const MS: Nanos = 1_000_000;

    /// A request whose `now` was read before another task took the batch
    /// gets no part of it beyond its own horizon.
    #[test]
    fn a_stale_request_gets_nothing_past_its_horizon() {
        let quota = Quota::per_second(NonZeroU32::new(10).unwrap());
        // Taken at NOW + 1 s from a full bucket: the range NOW + 1 s to
        // NOW + 2 s.
        let step = quota.step(NOW + 1_000 * MS, 10).unwrap();
        let (_, after) = step.apply(0);
        let mut batch = Batch::taken(&quota, &step, after);
        // A request of NOW (horizon NOW + 1 s) may not own any of it.
        assert!(!batch.fits(NOW, 1));
        assert!(batch.spend(NOW + 1_000 * MS, 10));
    }
}
