//! A policy's limits: each `count` per `period`, a quota and its bucket,
//! built from their specs with the policy's tolerance.

use std::num::NonZeroU32;
use std::time::Duration;

use super::{LimitSpec, MAX_LIMITS, PolicyError};
use crate::gcra::Quota;
use crate::key::Slot;

/// One of a policy's limits: `count` requests per `period`, as a quota and
/// the bucket it is kept in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub(super) quota: Quota,
    pub(super) slot: Slot,
}

impl Limit {
    /// The quota: count, period, burst.
    #[inline]
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The bucket this limit is kept in.
    #[inline]
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// The limit as written in configuration: `100/min`, `3/10s`.
    pub fn spec(&self) -> LimitSpec {
        LimitSpec {
            count: self.quota.limit(),
            period: self.quota.period(),
        }
    }
}

/// `limits`, each with a tolerance of `tolerance`.
pub(super) fn tolerate(
    limits: Box<[Limit]>,
    tolerance: Duration,
) -> Result<Box<[Limit]>, PolicyError> {
    let mut limits = limits.into_vec();
    for limit in &mut limits {
        limit.quota =
            limit
                .quota
                .with_tolerance(tolerance)
                .map_err(|_| PolicyError::Tolerance {
                    tolerance,
                    limit: limit.spec(),
                    interval: limit.quota.emission_interval(),
                })?;
    }
    Ok(limits.into_boxed_slice())
}

/// The limits of `specs`, kept in buckets named `<prefix>@<period in seconds>`.
pub(super) fn build_limits(prefix: &str, specs: &[LimitSpec]) -> Result<Box<[Limit]>, PolicyError> {
    if specs.is_empty() {
        return Err(PolicyError::NoLimits);
    }
    if specs.len() > MAX_LIMITS {
        return Err(PolicyError::TooManyLimits(specs.len()));
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(specs.len());
    for spec in specs {
        if let Some(same) = limits.iter().find(|l| l.quota.period() == spec.period) {
            return Err(PolicyError::SamePeriod(format!(
                "{} and {spec}",
                same.spec()
            )));
        }
        let count = NonZeroU32::new(spec.count).expect("LimitSpec counts are positive");
        let quota = Quota::new(count, spec.period).expect("LimitSpec periods are valid");
        limits.push(Limit {
            quota,
            slot: Slot::new(format!("{prefix}@{}", spec.period.as_secs())),
        });
    }
    Ok(limits.into_boxed_slice())
}
