//! The exact model the property tests compare against: the GCRA bound on
//! admissions in any span of time.

use ratelimiter::gcra::{Nanos, Quota};

/// When the simulated traffic starts.
pub const START: Nanos = 1_700_000_000_000_000_000;

/// The most admissions (one token each, at `times`, in order) beyond the
/// exact bound `limit + ⌊span / T⌋`, over every span between two
/// admissions: 0 when the bound holds.
pub fn worst_excess(quota: &Quota, times: &[Nanos]) -> u64 {
    let t = quota.emission_interval().as_nanos() as u64;
    let mut worst = 0;
    for i in 0..times.len() {
        for j in i..times.len() {
            let bound = u64::from(quota.limit()) + (times[j] - times[i]) / t;
            worst = worst.max(((j - i + 1) as u64).saturating_sub(bound));
        }
    }
    worst
}
