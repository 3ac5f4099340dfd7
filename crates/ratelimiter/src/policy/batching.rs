//! How a policy's hot keys are served: [`Batching`].

use std::fmt;
use std::num::NonZeroU32;

use super::{Limit, Policy, PolicyError};

/// How a policy's hot keys are served: from *batches*, tokens a process
/// takes from the shared bucket in one write and spends itself (see
/// [`crate::batch`]), so that one key may be decided past the store's
/// per-item write ceiling (about 1 000 writes a second on DynamoDB), and
/// never more than exactly.
///
/// Batches need a shared store and the deny cache (its last seen state
/// sizes them): a service [`crate::Builder::in_memory`], or one built with
/// `deny_cache(0)`, never batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Batching {
    /// Batch a key this process was asked for at least 20 times in the
    /// last 100 ms (200 a second), in batches of the tokens asked in 100 ms,
    /// at most half the smallest limit (so a limit under 40 is never
    /// batched for its rate alone); and a key the store throttled in the
    /// last 10 s, in batches of ten times that, at least 2 tokens. Every
    /// other key costs one write per decision and is exact, as with `Off`.
    /// The default.
    #[default]
    Auto,
    /// Never: one write per decision, and a throttled key is decided in
    /// this process at its own limits for a second (which, across many
    /// processes, admits more than the limit).
    Off,
    /// Every key, in batches of this many tokens (at most the smallest
    /// limit): for keys known to be hot, such as a per-tenant limit of
    /// thousands a second, where `auto`'s first 100 ms of one write per
    /// decision are too many.
    Fixed(NonZeroU32),
}

impl fmt::Display for Batching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batching::Auto => f.write_str("auto"),
            Batching::Off => f.write_str("off"),
            Batching::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Whether a batch of `batching` fits every one of `limits`.
pub(super) fn check_batch(batching: Batching, limits: &[Limit]) -> Result<(), PolicyError> {
    if let Batching::Fixed(size) = batching
        && let Some(limit) = limits.iter().find(|l| l.quota().limit() < size.get())
    {
        return Err(PolicyError::Batch {
            size: size.get(),
            limit: limit.spec(),
        });
    }
    Ok(())
}

impl Policy {
    /// The same policy with its hot keys served as `batching` says (by
    /// default [`Batching::Auto`]). A fixed batch may be at most every
    /// limit's count, tiers included.
    ///
    /// ```
    /// use ratelimiter::{Kind, Policy};
    /// use ratelimiter::policy::Batching;
    ///
    /// let api = Policy::new("api", Kind::new("tenant")?, &["5000/s".parse()?])?
    ///     .with_batching(Batching::Fixed(200.try_into()?))?;
    /// assert_eq!(api.batching().to_string(), "200");
    /// assert!(api.with_batching(Batching::Fixed(6000.try_into()?)).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_batching(mut self, batching: Batching) -> Result<Self, PolicyError> {
        if self.cap.is_some() {
            return Err(PolicyError::Cap("batch"));
        }
        check_batch(batching, &self.limits)?;
        for (_, limits) in &self.tiers {
            check_batch(batching, limits)?;
        }
        self.batching = batching;
        Ok(self)
    }

    /// How the policy's hot keys are served; a cap's never are (a seat is
    /// its holder's, not a token to spend).
    #[inline]
    pub fn batching(&self) -> Batching {
        self.batching
    }
}
