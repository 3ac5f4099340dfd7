//! The deny cache and hints: what this process learnt from a shared store,
//! kept to save calls to it. A decorator around any [`Store`].
//!
//! [`Cached`] remembers the last TAT it saw for each bucket (up to a bound,
//! in a [`MemoryStore`]). Since a TAT never moves backwards except when a
//! bucket is removed, a request that the last TAT seen already denies is
//! denied again without calling the store, with the right `retry_after` for
//! what is known; a flood from one client costs one call per blocking
//! period. For other requests the same memory gives the store a hint about
//! each bucket ([`Hint::Seen`]), and for buckets never seen, a guess from
//! how lately unseen buckets of the same slot turned out ([`Hint::Guess`]):
//! that lets a store whose writes come in two shapes pick the right one
//! first.

use std::sync::atomic::{AtomicI8, Ordering};

use crate::gcra::{self, Nanos};
use crate::key::{Key, Slot};
use crate::memory::MemoryStore;
use crate::store::{Applied, Hint, Op, Outcome, Store, StoreError};

/// How many buckets the cache remembers by default.
pub const DEFAULT_CACHED_BUCKETS: usize = 10_000;

/// How far the guesses may lean either way, so that a change in traffic
/// turns them around after a few decisions.
const MAX_VOTE: i8 = 8;

/// Slots share this many vote counters (by fingerprint); two slots that
/// share one only make each other's guesses a little worse.
const VOTES: usize = 64;

/// A store with a deny cache and hints in front of it.
///
/// ```
/// use ratelimiter::cache::Cached;
/// use ratelimiter::gcra::Quota;
/// use ratelimiter::key::{Key, Kind, Slot};
/// use ratelimiter::memory::MemoryStore;
/// use ratelimiter::store::{Op, Outcome, Store};
///
/// let store = Cached::new(MemoryStore::new());
/// let (key, slot) = (Key::new(&Kind::IP, "203.0.113.7"), Slot::new("listener_join@60"));
/// let step = Quota::per_minute(1.try_into().unwrap()).step(1_700_000_000_000_000_000, 1).unwrap();
/// let mut tats = [0];
/// # futures_lite(async {
/// assert_eq!(store.apply(&key, &[Op::new(&slot, step)], 0, &mut tats).await.outcome.unwrap(), Outcome::Allowed);
/// # });
/// // The next request is denied from what the first one taught.
/// let mut ops = [Op::new(&slot, step)];
/// assert_eq!(store.prepare(&key, &mut ops, &mut tats), Some(Outcome::Denied));
/// # fn futures_lite(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct Cached<S> {
    inner: S,
    seen: MemoryStore,
    /// Per slot (by fingerprint): positive when unseen buckets were mostly busy.
    votes: [AtomicI8; VOTES],
}

impl<S> Cached<S> {
    /// `inner` with a cache of [`DEFAULT_CACHED_BUCKETS`] buckets.
    pub fn new(inner: S) -> Self {
        Self::with_capacity(inner, DEFAULT_CACHED_BUCKETS)
    }

    /// `inner` with a cache of about `buckets` buckets.
    pub fn with_capacity(inner: S, buckets: usize) -> Self {
        Self {
            inner,
            seen: MemoryStore::with_max_keys(buckets),
            votes: std::array::from_fn(|_| AtomicI8::new(0)),
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn votes(&self, slot: &Slot) -> &AtomicI8 {
        &self.votes[slot.fingerprint() as usize % VOTES]
    }

    /// Remembers the TATs a call reported, and for buckets that were
    /// guessed, whether the guess was right.
    fn learn(&self, key: &Key<'_>, ops: &[Op<'_>], outcome: Outcome, tats: &[Nanos]) {
        for (op, &tat) in ops.iter().zip(tats) {
            let now = op.step.now();
            self.seen.record_now(key, op.slot, tat, now);
            if !matches!(op.hint, Hint::Seen(_)) {
                // Allowed: the TAT was busy iff the step did not start from now.
                let busy = match outcome {
                    Outcome::Allowed => tat > op.step.idle_target(),
                    Outcome::Denied => tat > now,
                };
                let delta = if busy { 1 } else { -1 };
                let _ =
                    self.votes(op.slot)
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            Some((v + delta).clamp(-MAX_VOTE, MAX_VOTE))
                        });
            }
        }
    }
}

impl<S: Store> Store for Cached<S> {
    const CALLS_METRIC: Option<&'static str> = S::CALLS_METRIC;

    fn prepare(&self, key: &Key<'_>, ops: &mut [Op<'_>], tats: &mut [Nanos]) -> Option<Outcome> {
        let mut denied = false;
        for (op, tat) in ops.iter_mut().zip(tats.iter_mut()) {
            match self.seen.get_now(key, op.slot) {
                Some(seen) => {
                    *tat = seen;
                    op.hint = Hint::Seen(seen);
                    // Denied on what this process saw last; the real TAT is no smaller.
                    denied |= matches!(op.step.outcome(seen), gcra::Outcome::Denied { .. });
                }
                None => {
                    *tat = 0;
                    op.hint = Hint::Guess {
                        busy: self.votes(op.slot).load(Ordering::Relaxed) > 0,
                    };
                }
            }
        }
        if denied {
            return Some(Outcome::Denied);
        }
        self.inner.prepare(key, ops, tats)
    }

    async fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        let applied = self.inner.apply(key, ops, retention, tats).await;
        if let Ok(outcome) = applied.outcome {
            self.learn(key, ops, outcome, tats);
        }
        applied
    }

    async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<(), StoreError> {
        self.seen.refund_now(key, ops);
        self.inner.refund(key, ops).await
    }

    async fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        self.inner.load(key, slots, tats).await
    }

    async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        self.seen.remove_now(key, slots);
        self.inner.remove(key, slots).await
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::gcra::Quota;
    use crate::key::Kind;

    const NOW: Nanos = 1_700_000_000_000_000_000;
    const SEC: Nanos = 1_000_000_000;

    /// A memory store that counts the calls that reach it and the hints it got.
    #[derive(Default)]
    struct Counting {
        store: MemoryStore,
        calls: AtomicU32,
        busy_hints: AtomicU32,
    }

    impl Store for Counting {
        async fn apply(
            &self,
            key: &Key<'_>,
            ops: &[Op<'_>],
            retention: Nanos,
            tats: &mut [Nanos],
        ) -> Applied {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let busy = ops.iter().filter(|op| op.likely_busy()).count() as u32;
            self.busy_hints.fetch_add(busy, Ordering::SeqCst);
            self.store.apply(key, ops, retention, tats).await
        }
        async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<(), StoreError> {
            self.store.refund(key, ops).await
        }
        async fn load(
            &self,
            key: &Key<'_>,
            slots: &[&Slot],
            tats: &mut [Nanos],
        ) -> Result<(), StoreError> {
            self.store.load(key, slots, tats).await
        }
        async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
            self.store.remove(key, slots).await
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// One decision through the cache, as the service makes it.
    fn decide(
        store: &Cached<Counting>,
        key: &Key<'_>,
        slot: &Slot,
        quota: &Quota,
        now: Nanos,
    ) -> Outcome {
        let mut ops = [Op::new(slot, quota.step(now, 1).unwrap())];
        let mut tats = [0];
        if let Some(outcome) = store.prepare(key, &mut ops, &mut tats) {
            return outcome;
        }
        run(store.apply(key, &ops, 0, &mut tats)).outcome.unwrap()
    }

    #[test]
    fn known_denials_make_no_call_until_a_token_is_back() {
        let store = Cached::new(Counting::default());
        let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
        let (key, slot) = (Key::new(&Kind::CONNECTION, "c"), Slot::new("heartbeat@60"));
        assert_eq!(decide(&store, &key, &slot, &quota, NOW), Outcome::Allowed);
        assert_eq!(decide(&store, &key, &slot, &quota, NOW), Outcome::Allowed);
        for _ in 0..100 {
            assert_eq!(
                decide(&store, &key, &slot, &quota, NOW + SEC),
                Outcome::Denied
            );
        }
        // Two calls allowed, one learnt the denial... none: the second
        // allowed call already told the TAT.
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 2);
        // 30 s on, a token is back: the store is asked again.
        assert_eq!(
            decide(&store, &key, &slot, &quota, NOW + 30 * SEC),
            Outcome::Allowed
        );
        assert_eq!(store.inner().calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_removed_bucket_is_forgotten_and_refunds_are_given_back() {
        let store = Cached::new(Counting::default());
        let quota = Quota::per_minute(NonZeroU32::new(1).unwrap());
        let (key, slot) = (Key::new(&Kind::IP, "a"), Slot::new("listener_join@60"));
        decide(&store, &key, &slot, &quota, NOW);
        assert_eq!(decide(&store, &key, &slot, &quota, NOW), Outcome::Denied);
        run(store.remove(&key, &[&slot])).unwrap();
        assert_eq!(decide(&store, &key, &slot, &quota, NOW), Outcome::Allowed);
        let op = Op::new(&slot, quota.step(NOW, 1).unwrap());
        run(store.refund(&key, &[op])).unwrap();
        assert_eq!(decide(&store, &key, &slot, &quota, NOW), Outcome::Allowed);
    }

    #[test]
    fn unseen_buckets_are_guessed_from_how_others_turned_out() {
        let store = Cached::new(Counting::default());
        let quota = Quota::per_minute(NonZeroU32::new(10).unwrap());
        let slot = Slot::new("listener_join@60");
        // Another process made every one of these keys busy.
        let ids: Vec<String> = (0..20).map(|i| format!("10.0.0.{i}")).collect();
        for id in &ids {
            let key = Key::new(&Kind::IP, id);
            let step = quota.step(NOW, 1).unwrap();
            store.inner().store.apply_step(&key, &slot, &step);
        }
        for id in &ids {
            decide(&store, &Key::new(&Kind::IP, id), &slot, &quota, NOW + SEC);
        }
        // The first guesses were idle; after a few, busy.
        let busy = store.inner().busy_hints.load(Ordering::SeqCst);
        assert!((15..20).contains(&busy), "{busy} busy hints");
    }
}
