//! Stores for testing the service's error paths, kept in one place: a
//! [`Faulty`] memory store that counts its calls and can be made to fail,
//! throttle one key, or lose its answers; and a [`Slow`] one whose answers
//! take fake time.
//!
//! Each is a cheap handle on shared state: keep a clone to steer the store
//! and read its counts after handing it to `Builder::build`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratelimiter::gcra::Nanos;
use ratelimiter::lease::{Lease, Seats};
use ratelimiter::store::{Applied, Capacity, Op};
use ratelimiter::{FakeClock, Key, MemoryStore, Slot, Store, StoreError, StoreErrorKind};

/// A memory store that counts the calls that reach it and fails as told:
/// every decision ([`Faulty::down`]: `apply` times out), every operation
/// ([`Faulty::broken`]: a table that is not there), one key's decisions
/// ([`Faulty::throttle`], as DynamoDB throttles a hot partition), or only
/// its answers ([`Faulty::lose_answers`]: each call is applied, then times
/// out).
#[derive(Clone, Debug, Default)]
pub struct Faulty(Arc<FaultyState>);

#[derive(Debug, Default)]
struct FaultyState {
    memory: MemoryStore,
    down: AtomicBool,
    gone: AtomicBool,
    answers_lost: AtomicBool,
    hot: Mutex<Option<String>>,
    calls: AtomicU32,
}

impl Faulty {
    /// A store whose every operation fails: `apply` as an unavailable
    /// table, the others as timeouts.
    pub fn broken() -> Self {
        let store = Self::default();
        store.0.gone.store(true, Ordering::SeqCst);
        store
    }

    /// Times out every `apply` from now on (`true`), or answers again
    /// (`false`); reads, refunds and removals still work.
    pub fn down(&self, down: bool) {
        self.0.down.store(down, Ordering::SeqCst);
    }

    /// Throttles every call on the item `key` (as `Key`'s `Display` writes
    /// it: `connection#hot`), or none.
    pub fn throttle(&self, key: Option<&str>) {
        *self.0.hot.lock().unwrap() = key.map(str::to_owned);
    }

    /// Applies each call and then loses its answer (`true`): a timeout after
    /// the write.
    pub fn lose_answers(&self, lost: bool) {
        self.0.answers_lost.store(lost, Ordering::SeqCst);
    }

    /// Calls to `apply` so far.
    pub fn calls(&self) -> u32 {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// The TAT the store holds for `slot` of `key`'s item (0 for none),
    /// whatever it answered.
    pub async fn tat(&self, key: &Key<'_>, slot: &Slot) -> Nanos {
        let mut tats = [0];
        self.0
            .memory
            .load(key, &[slot], &mut tats)
            .await
            .expect("the memory store always loads");
        tats[0]
    }

    fn failure<T>(&self, kind: StoreErrorKind, message: &str) -> Result<T, StoreError> {
        Err(StoreError::new(kind, message))
    }

    fn gone(&self) -> bool {
        self.0.gone.load(Ordering::SeqCst)
    }
}

impl Store for Faulty {
    async fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let failed = |kind, message: &str| Applied {
            outcome: Err(StoreError::new(kind, message)),
            calls: 1,
            capacity: Capacity::default(),
            seats: Seats::default(),
        };
        if self.gone() {
            return failed(StoreErrorKind::Unavailable, "table RateLimits not found");
        }
        if self.0.down.load(Ordering::SeqCst) {
            return failed(StoreErrorKind::Timeout, "no answer");
        }
        if self.0.hot.lock().unwrap().as_deref() == Some(&*key.to_string()) {
            return failed(StoreErrorKind::Throttled, "ThrottlingException");
        }
        let known = tats.to_vec();
        let applied = self.0.memory.apply(key, ops, lease, retention, tats).await;
        if self.0.answers_lost.load(Ordering::SeqCst) {
            // What the table did never reaches the caller.
            tats.copy_from_slice(&known);
            return failed(StoreErrorKind::Timeout, "no answer");
        }
        applied
    }

    async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<Capacity, StoreError> {
        if self.gone() {
            return self.failure(StoreErrorKind::Timeout, "no answer");
        }
        self.0.memory.refund(key, ops).await
    }

    async fn leases(&self, key: &Key<'_>, slot: &Slot) -> Result<Vec<String>, StoreError> {
        if self.gone() {
            return Err(StoreError::new(StoreErrorKind::Timeout, "no answer"));
        }
        self.0.memory.leases(key, slot).await
    }

    async fn release(&self, key: &Key<'_>, lease: &Lease<'_>) -> Result<Capacity, StoreError> {
        if self.gone() {
            return self.failure(StoreErrorKind::Timeout, "no answer");
        }
        self.0.memory.release(key, lease).await
    }

    async fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        if self.gone() {
            return self.failure(StoreErrorKind::Timeout, "no answer");
        }
        self.0.memory.load(key, slots, tats).await
    }

    async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        if self.gone() {
            return self.failure(StoreErrorKind::Timeout, "no answer");
        }
        self.0.memory.remove(key, slots).await
    }
}

/// A memory store whose every `apply` takes `delay` of a fake clock's
/// time, and counts as a call under its own metric (`SlowCalls`).
#[derive(Debug)]
pub struct Slow {
    memory: MemoryStore,
    clock: FakeClock,
    delay: Duration,
}

impl Slow {
    /// A store whose answers take `delay` on `clock`.
    pub fn new(clock: FakeClock, delay: Duration) -> Self {
        Self {
            memory: MemoryStore::new(),
            clock,
            delay,
        }
    }
}

impl Store for Slow {
    const CALLS_METRIC: Option<&'static str> = Some("SlowCalls");

    async fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        self.clock.advance(self.delay);
        self.memory.apply(key, ops, lease, retention, tats).await
    }

    async fn leases(&self, key: &Key<'_>, slot: &Slot) -> Result<Vec<String>, StoreError> {
        self.memory.leases(key, slot).await
    }

    async fn release(&self, key: &Key<'_>, lease: &Lease<'_>) -> Result<Capacity, StoreError> {
        self.clock.advance(self.delay);
        self.memory.release(key, lease).await
    }

    async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<Capacity, StoreError> {
        self.clock.advance(self.delay);
        self.memory.refund(key, ops).await
    }

    async fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        self.memory.load(key, slots, tats).await
    }

    async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        self.memory.remove(key, slots).await
    }
}
