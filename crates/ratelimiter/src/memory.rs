//! An in-memory [`Store`]: concurrent, sharded, bounded.
//!
//! Each key's TAT is an `AtomicU64`, so deciding on a key that exists takes a
//! shard's read lock and one compare-and-swap: threads never wait for each
//! other unless one of them is inserting a new key into the same shard.
//! Memory is bounded: keys whose bucket has been full again for a while are
//! swept away when a shard grows (forgetting them changes no decision), and a
//! hard cap evicts the keys nearest to full when live keys alone exceed it.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use crate::gcra::{Nanos, Outcome, Step};
use crate::key::{Key, OwnedKey};
use crate::store::{Store, StoreError};

/// How long a key's bucket must have been full before a sweep forgets it.
/// The margin covers clocks of different threads that disagree slightly.
const SWEEP_GRACE: Nanos = 1_000_000_000;

/// A shard is not swept before it holds this many keys.
const MIN_SWEEP_LEN: usize = 64;

/// The default bound on the number of keys kept.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// An in-memory store of TATs, shared by all threads of a process.
///
/// ```
/// use ratelimiter::gcra::{Outcome, Quota};
/// use ratelimiter::key::{Identifier, Key, Operation};
/// use ratelimiter::memory::MemoryStore;
///
/// let store = MemoryStore::new();
/// let quota = Quota::per_minute(2.try_into().unwrap());
/// let key = Key::new(Operation::Heartbeat, Identifier::connection("abc"));
/// let now = 1_700_000_000_000_000_000;
/// let step = quota.step(now, 1).unwrap();
/// assert!(matches!(store.apply_now(&key, &step), Outcome::Allowed { .. }));
/// assert!(matches!(store.apply_now(&key, &step), Outcome::Allowed { .. }));
/// assert!(matches!(store.apply_now(&key, &step), Outcome::Denied { .. }));
/// ```
pub struct MemoryStore {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    shard_mask: usize,
    max_keys_per_shard: usize,
}

// Padding keeps two shards' locks off one cache line.
#[repr(align(128))]
struct Shard(RwLock<ShardTable>);

struct ShardTable {
    entries: HashTable<Entry>,
    sweep_at: usize,
}

struct Entry {
    key: OwnedKey,
    tat: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("keys", &self.len())
            .field("max_keys", &(self.max_keys_per_shard * self.shards.len()))
            .finish()
    }
}

impl MemoryStore {
    /// A store that keeps at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A store that keeps at most about `max_keys` keys (at least one per shard).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shard_count = (cores * 4).next_power_of_two().clamp(4, 256);
        let max_keys_per_shard = max_keys.div_ceil(shard_count).max(1);
        let shards = (0..shard_count)
            .map(|_| {
                Shard(RwLock::new(ShardTable {
                    entries: HashTable::new(),
                    sweep_at: MIN_SWEEP_LEN.min(max_keys_per_shard),
                }))
            })
            .collect();
        Self {
            shards,
            hasher: foldhash::fast::RandomState::default(),
            shard_mask: shard_count - 1,
            max_keys_per_shard,
        }
    }

    /// The number of keys currently kept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).entries.len()).sum()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Store::apply`], without the future.
    #[inline]
    pub fn apply_now(&self, key: &Key<'_>, step: &Step) -> Outcome {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        if let Some(entry) = read(shard).entries.find(hash, |e| key.matches(&e.key)) {
            return apply_to(&entry.tat, step);
        }
        let mut table = write(shard);
        if let Some(entry) = table.entries.find(hash, |e| key.matches(&e.key)) {
            return apply_to(&entry.tat, step);
        }
        let outcome = step.outcome(0);
        if let Outcome::Allowed { tat } = outcome {
            self.insert(&mut table, hash, key, tat, step.now());
        }
        outcome
    }

    fn insert(&self, table: &mut ShardTable, hash: u64, key: &Key<'_>, tat: Nanos, now: Nanos) {
        self.make_room(table, now);
        // Rehashing recomputes hashes from the keys: rare, and it keeps
        // entries at four words.
        table.entries.insert_unique(
            hash,
            Entry {
                key: key.to_owned_key(),
                tat: AtomicU64::new(tat),
            },
            |e| self.hasher.hash_one(e.key.as_key()),
        );
    }

    /// [`Store::load`], without the future.
    pub fn load_now(&self, key: &Key<'_>) -> Nanos {
        let hash = self.hasher.hash_one(key);
        read(self.shard(hash))
            .entries
            .find(hash, |e| key.matches(&e.key))
            .map_or(0, |e| e.tat.load(Ordering::Acquire))
    }

    /// The TAT of `key`, or `None` when this store does not know the key.
    pub fn get_now(&self, key: &Key<'_>) -> Option<Nanos> {
        let hash = self.hasher.hash_one(key);
        read(self.shard(hash))
            .entries
            .find(hash, |e| key.matches(&e.key))
            .map(|e| e.tat.load(Ordering::Acquire))
    }

    /// Remembers that `key`'s TAT is at least `tat`, as seen at `now`: for
    /// stores that cache what a shared store told them. A TAT only moves
    /// forward, so the larger of the known and the seen value is kept.
    pub fn record_now(&self, key: &Key<'_>, tat: Nanos, now: Nanos) {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        if let Some(entry) = read(shard).entries.find(hash, |e| key.matches(&e.key)) {
            entry.tat.fetch_max(tat, Ordering::AcqRel);
            return;
        }
        let mut table = write(shard);
        if let Some(entry) = table.entries.find(hash, |e| key.matches(&e.key)) {
            entry.tat.fetch_max(tat, Ordering::AcqRel);
            return;
        }
        self.insert(&mut table, hash, key, tat, now);
    }

    /// [`Store::remove`], without the future.
    pub fn remove_now(&self, key: &Key<'_>) {
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = write(self.shard(hash))
            .entries
            .find_entry(hash, |e| key.matches(&e.key))
        {
            entry.remove();
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        // The table itself uses the lowest and the highest bits of the hash.
        &self.shards[(hash >> 32) as usize & self.shard_mask]
    }

    /// Before an insert: sweep keys that are full again once the shard has
    /// grown enough, and evict the keys nearest to full if live keys alone
    /// exceed the bound.
    fn make_room(&self, table: &mut ShardTable, now: Nanos) {
        if table.entries.len() < table.sweep_at {
            return;
        }
        let cutoff = now.saturating_sub(SWEEP_GRACE);
        table
            .entries
            .retain(|e| e.tat.load(Ordering::Relaxed) > cutoff);
        if table.entries.len() >= self.max_keys_per_shard {
            let mut tats: Vec<Nanos> = table
                .entries
                .iter()
                .map(|e| e.tat.load(Ordering::Relaxed))
                .collect();
            let middle = tats.len() / 2;
            let median = *tats.select_nth_unstable(middle).1;
            let before = table.entries.len();
            table
                .entries
                .retain(|e| e.tat.load(Ordering::Relaxed) > median);
            tracing::warn!(
                evicted = before - table.entries.len(),
                kept = table.entries.len(),
                "in-memory rate-limit store is full of live keys; forgot the keys nearest to full"
            );
        }
        table.sweep_at = (table.entries.len() * 2)
            .max(MIN_SWEEP_LEN)
            .min(self.max_keys_per_shard);
    }
}

/// Applies `step` to one TAT with a compare-and-swap loop.
#[inline]
fn apply_to(tat: &AtomicU64, step: &Step) -> Outcome {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        match step.outcome(current) {
            Outcome::Allowed { tat: new } => {
                match tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Outcome::Allowed { tat: new },
                    Err(actual) => current = actual,
                }
            }
            denied => return denied,
        }
    }
}

// A panic while a shard lock is held cannot leave a table half-updated in a
// way that matters (entries are inserted or removed whole), so poisoning is
// ignored rather than turned into a panic in every later request.
#[inline]
fn read(shard: &Shard) -> RwLockReadGuard<'_, ShardTable> {
    shard.0.read().unwrap_or_else(|e| e.into_inner())
}

#[inline]
fn write(shard: &Shard) -> RwLockWriteGuard<'_, ShardTable> {
    shard.0.write().unwrap_or_else(|e| e.into_inner())
}

impl Store for MemoryStore {
    fn apply(
        &self,
        key: &Key<'_>,
        step: &Step,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send {
        std::future::ready(Ok(self.apply_now(key, step)))
    }

    fn load(&self, key: &Key<'_>) -> impl Future<Output = Result<Nanos, StoreError>> + Send {
        std::future::ready(Ok(self.load_now(key)))
    }

    fn remove(&self, key: &Key<'_>) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.remove_now(key);
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::gcra::Quota;
    use crate::key::{Identifier, Operation};

    const NOW: Nanos = 1_700_000_000_000_000_000;
    const SEC: Nanos = 1_000_000_000;

    fn quota(limit: u32) -> Quota {
        Quota::per_minute(NonZeroU32::new(limit).unwrap())
    }

    fn ip_key(ip: &str) -> Key<'_> {
        Key::new(Operation::ConnectionAttempt, Identifier::ip(ip))
    }

    #[test]
    fn many_threads_on_one_key_never_admit_more_than_the_limit() {
        for round in 0..20 {
            let store = Arc::new(MemoryStore::new());
            let allowed = Arc::new(AtomicU32::new(0));
            let quota = quota(100);
            let step = quota.step(NOW + round * SEC, 1).unwrap();
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (store, allowed) = (store.clone(), allowed.clone());
                    std::thread::spawn(move || {
                        for _ in 0..50 {
                            if let Outcome::Allowed { .. } =
                                store.apply_now(&ip_key("10.0.0.1"), &step)
                            {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            assert_eq!(allowed.load(Ordering::Relaxed), 100, "round {round}");
            assert_eq!(
                store.load_now(&ip_key("10.0.0.1")),
                NOW + round * SEC + 60 * SEC
            );
        }
    }

    #[test]
    fn keys_are_independent() {
        let store = MemoryStore::new();
        let step = quota(1).step(NOW, 1).unwrap();
        assert!(matches!(
            store.apply_now(&ip_key("a"), &step),
            Outcome::Allowed { .. }
        ));
        assert!(matches!(
            store.apply_now(&ip_key("a"), &step),
            Outcome::Denied { .. }
        ));
        assert!(matches!(
            store.apply_now(&ip_key("b"), &step),
            Outcome::Allowed { .. }
        ));
        let other_op = Key::new(Operation::ListenerJoin, Identifier::ip("a"));
        assert!(matches!(
            store.apply_now(&other_op, &step),
            Outcome::Allowed { .. }
        ));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn remove_makes_the_bucket_full_again() {
        let store = MemoryStore::new();
        let step = quota(1).step(NOW, 1).unwrap();
        store.apply_now(&ip_key("a"), &step);
        assert!(matches!(
            store.apply_now(&ip_key("a"), &step),
            Outcome::Denied { .. }
        ));
        store.remove_now(&ip_key("a"));
        assert_eq!(store.load_now(&ip_key("a")), 0);
        assert!(matches!(
            store.apply_now(&ip_key("a"), &step),
            Outcome::Allowed { .. }
        ));
        store.remove_now(&ip_key("never seen"));
    }

    #[test]
    fn recorded_tats_only_move_forward() {
        let store = MemoryStore::new();
        let key = ip_key("r");
        assert_eq!(store.get_now(&key), None);
        store.record_now(&key, NOW + 5, NOW);
        store.record_now(&key, NOW + 3, NOW);
        assert_eq!(store.get_now(&key), Some(NOW + 5));
        store.record_now(&key, NOW + 9, NOW);
        assert_eq!(store.load_now(&key), NOW + 9);
    }

    #[test]
    fn keys_that_are_full_again_are_forgotten() {
        let store = MemoryStore::with_max_keys(1_000_000);
        let quota = quota(10);
        let ids: Vec<String> = (0..50_000)
            .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        for id in &ids {
            store.apply_now(&ip_key(id), &quota.step(NOW, 1).unwrap());
        }
        assert_eq!(store.len(), ids.len());
        // Two minutes later every one of those buckets is full; new traffic
        // sweeps them away as shards grow.
        let later = quota.step(NOW + 120 * SEC, 1).unwrap();
        for id in &ids {
            store.apply_now(&ip_key(&format!("new-{id}")), &later);
        }
        assert!(
            store.len() < ids.len() + ids.len() / 2,
            "{} keys kept",
            store.len()
        );
    }

    #[test]
    fn live_keys_beyond_the_bound_evict_the_nearest_to_full() {
        let store = MemoryStore::with_max_keys(1_000);
        let quota = quota(10);
        for i in 0..20_000u64 {
            let id = i.to_string();
            // Later keys have later TATs: they are the ones worth keeping.
            store.apply_now(&ip_key(&id), &quota.step(NOW + i * 1000, 1).unwrap());
            assert!(
                store.len() <= 1_000 + store.shards.len(),
                "{} keys at {i}",
                store.len()
            );
        }
        // The most recent key is still counted.
        assert_eq!(
            store.load_now(&ip_key("19999")),
            NOW + 19_999 * 1000 + 6 * SEC
        );
    }
}
