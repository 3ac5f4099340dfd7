//! The contract between the limiter and the place where TATs live.
//!
//! A store persists one number per key and applies a [`Step`] to it
//! atomically: it never decides anything itself. The rule lives in
//! [`crate::gcra`]; a store only has to make "read the TAT, apply the step,
//! write the result" indivisible, however it does that (a compare-and-swap in
//! memory, conditional writes in DynamoDB).

use std::future::Future;

use crate::gcra::{Nanos, Outcome, Step};
use crate::key::Key;

/// Where TATs live.
///
/// Implementations must be safe to call from many tasks and threads at once,
/// and must never admit a request that [`Step::outcome`] would deny on the
/// key's TAT at the moment of the write.
pub trait Store: Send + Sync {
    /// Atomically applies `step` to the TAT of `key` (0 when the key is absent)
    /// and reports what happened.
    fn apply(
        &self,
        key: &Key<'_>,
        step: &Step,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;

    /// The TAT of `key`, or 0 when it has none, read consistently.
    fn load(&self, key: &Key<'_>) -> impl Future<Output = Result<Nanos, StoreError>> + Send;

    /// Forgets `key`, so that its bucket is full again.
    fn remove(&self, key: &Key<'_>) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What went wrong in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backing service could not be reached, refused, or does not have the table.
    Unavailable,
    /// The backing service did not answer in time.
    Timeout,
    /// The backing service asked to slow down.
    Throttled,
    /// Credentials or permissions were refused.
    Unauthorized,
    /// The backing service answered with something the store does not understand.
    Protocol,
}

/// A store could not apply, read or remove a key.
///
/// One pointer wide, so that results carrying it stay small on the hot path.
#[derive(Debug)]
pub struct StoreError(Box<StoreErrorInner>);

#[derive(Debug)]
struct StoreErrorInner {
    kind: StoreErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind`, described by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(StoreErrorInner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    /// The same error, caused by `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.0.kind
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rate-limit store {:?}: {}", self.0.kind, self.0.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_deref().map(|e| e as _)
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn apply(
        &self,
        key: &Key<'_>,
        step: &Step,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send {
        (**self).apply(key, step)
    }

    fn load(&self, key: &Key<'_>) -> impl Future<Output = Result<Nanos, StoreError>> + Send {
        (**self).load(key)
    }

    fn remove(&self, key: &Key<'_>) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).remove(key)
    }
}
