//! The contract between the limiter and the place where TATs live.
//!
//! A store persists one item per [`Key`], holding one TAT per bucket
//! ([`Slot`]), and applies a request's [`Step`]s to some buckets of one item
//! atomically: it never decides anything itself. The rule lives in
//! [`crate::gcra`]; a store only has to make "read the TATs, apply the
//! steps if every one allows, write the results" indivisible, however it
//! does that (a compare-and-swap or a lock in memory, one conditional write
//! in DynamoDB).
//!
//! Caching and the failure policy are not a store's business: the service
//! keeps the deny cache, and applies the failure modes and the circuit
//! breaker, around whatever store it has.

use std::future::Future;

use crate::gcra::{Nanos, Outcome, Step};
use crate::key::{Key, Slot};
use crate::lease::{Lease, Seats};

/// One bucket of an item and the step a request takes on it.
#[derive(Clone, Copy, Debug)]
pub struct Op<'a> {
    /// The bucket.
    pub slot: &'a Slot,
    /// What the request does to it.
    pub step: Step,
    /// What this process expects of the bucket, never trusted for the
    /// decision: stores whose conditional writes come in two shapes
    /// (DynamoDB) try the likely one first.
    pub hint: Hint,
}

impl<'a> Op<'a> {
    /// `step` on `slot`, with no hint.
    #[inline]
    pub fn new(slot: &'a Slot, step: Step) -> Self {
        Self {
            slot,
            step,
            hint: Hint::None,
        }
    }

    /// Whether the bucket's TAT is probably after the step's
    /// [`Step::busy_floor`] (the busy shape applies), by the hint.
    #[inline]
    pub fn likely_busy(&self) -> bool {
        match self.hint {
            Hint::None => false,
            Hint::Seen(tat) => tat > self.step.busy_floor(),
            Hint::Guess { busy } => busy,
        }
    }
}

/// What a process expects of a bucket before asking its store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hint {
    /// Nothing.
    #[default]
    None,
    /// The last TAT this process saw for the bucket.
    Seen(Nanos),
    /// A guess for a bucket this process has not seen, or last saw full
    /// (its TAT at or before the step's busy floor: another process may
    /// have written it since), from how such buckets of the same slot
    /// turned out lately.
    Guess {
        /// Whether such buckets were mostly not full.
        busy: bool,
    },
}

/// Capacity units a store's backing service charged for calls: DynamoDB's
/// consumed capacity, in whole units (a write of an item up to 1 KB is one
/// write unit, a consistent read of up to 4 KB one read unit). Zero for a
/// store without a backing service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Write capacity units.
    pub write: u32,
    /// Read capacity units.
    pub read: u32,
}

impl std::ops::AddAssign for Capacity {
    fn add_assign(&mut self, other: Self) {
        self.write = self.write.saturating_add(other.write);
        self.read = self.read.saturating_add(other.read);
    }
}

/// Calls to a store's backing service and the capacity they consumed: what
/// a decision accounts under its verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Spent {
    pub(crate) calls: u32,
    pub(crate) capacity: Capacity,
}

impl std::ops::AddAssign for Spent {
    fn add_assign(&mut self, other: Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.capacity += other.capacity;
    }
}

impl std::iter::Sum for Spent {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut sum, s| {
            sum += s;
            sum
        })
    }
}

/// What a store reports for one request: the outcome, or why there is none,
/// and how many calls to its backing service it made for it.
#[derive(Debug)]
pub struct Applied {
    /// The outcome, or the error that prevented one.
    pub outcome: Result<Outcome, StoreError>,
    /// Calls made to the backing service (1 for one in-memory atomic
    /// section).
    pub calls: u32,
    /// The capacity those calls consumed.
    pub capacity: Capacity,
    /// The cap's seats, when the request had a lease and the store
    /// answered: after the request if allowed, as found if denied.
    pub seats: Seats,
}

impl Applied {
    /// The calls and capacity this report accounts for.
    pub(crate) fn spent(&self) -> Spent {
        Spent {
            calls: self.calls,
            capacity: self.capacity,
        }
    }
}

/// Where TATs live.
///
/// Implementations must be safe to call from many tasks and threads at once,
/// and must never admit a request that [`Step::apply`] would deny on a
/// bucket's TAT at the moment of the write.
pub trait Store: Send + Sync {
    /// The metric that counts calls to the backing service per policy
    /// (`DynamoDbCalls`), or `None` for a store without one.
    const CALLS_METRIC: Option<&'static str> = None;

    /// Atomically applies every op to its bucket of `key`'s item (a missing
    /// bucket has TAT 0), and takes `lease`'s seat if there is one: either
    /// every step allows and the lease [fits](Lease::fits) among the live
    /// leases of its slot, and every TAT and the lease are written, or
    /// nothing is. Then `tats[i]` holds the TAT of `ops[i]`'s bucket: the
    /// new one when allowed, the current one when denied; and
    /// [`Applied::seats`] the lease's slot as found (denied) or left
    /// (allowed).
    ///
    /// `tats` is as long as `ops`. An item not written for `retention`
    /// holds only full buckets, so a store may forget it after that; an
    /// item holding a lease must be kept at least until the lease
    /// [expires](Lease::expires).
    fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> impl Future<Output = Applied> + Send;

    /// The members of the lease set `slot` of `key`'s item, read
    /// consistently, as [`Lease::member`] names them: ended ones included
    /// (the caller skips them with [`Lease::live_at`]).
    fn leases(
        &self,
        key: &Key<'_>,
        slot: &Slot,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Gives back `lease`'s seat, if it is held; releasing a lease that is
    /// not held does nothing. Returns the capacity the call consumed.
    fn release(
        &self,
        key: &Key<'_>,
        lease: &Lease<'_>,
    ) -> impl Future<Output = Result<Capacity, StoreError>> + Send;

    /// Gives back what allowed `ops` took, where the bucket still holds it
    /// (its TAT is at least the step's [`Step::refund_floor`]): for a
    /// request that was allowed and then, as a whole, refused. Returns the
    /// capacity the call consumed.
    fn refund(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
    ) -> impl Future<Output = Result<Capacity, StoreError>> + Send;

    /// The TATs of `slots` of `key`'s item, read consistently, into `tats`
    /// (0 for a missing bucket).
    fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets `slots` of `key`'s item, so that those buckets are full again.
    fn remove(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
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
    /// Other writers kept changing the key between the store's reads and
    /// writes, until it gave up: the key is hot, the store is fine.
    Contended,
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
