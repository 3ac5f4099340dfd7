//! An in-memory [`Store`]: concurrent, sharded, bounded.
//!
//! Each bucket's TAT is an `AtomicU64`, so a request on one bucket of an
//! existing item takes a shard's read lock and one compare-and-swap: threads
//! never wait for each other unless one of them is inserting into the same
//! shard. A request on several buckets of one item (a policy with several
//! limits) takes the write locks of the shards those buckets live in, in
//! shard order, which makes it atomic against everything else on them.
//! Memory is bounded: buckets that have been full again for a while
//! are swept away when a shard grows (forgetting them changes no decision),
//! and a hard cap evicts the buckets nearest to full when live ones alone
//! exceed it.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use crate::gcra::{Nanos, Outcome, Step};
use crate::key::{Key, OwnedKey, Slot};
use crate::lease::{Lease, Seats};
use crate::store::{Applied, Capacity, Op, Store, StoreError};

mod leases;

use leases::LeaseSet;

/// How long a bucket must have been full before a sweep forgets it.
/// The margin covers clocks of different threads that disagree slightly.
const SWEEP_GRACE: Nanos = 1_000_000_000;

/// A shard is not swept before it holds this many buckets.
const MIN_SWEEP_LEN: usize = 64;

/// The default bound on the number of buckets kept.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// An in-memory store of TATs, shared by all threads of a process.
///
/// ```
/// use ratelimiter::gcra::{Outcome, Quota};
/// use ratelimiter::key::{Key, Kind, Slot};
/// use ratelimiter::memory::MemoryStore;
///
/// let store = MemoryStore::new();
/// let quota = Quota::per_minute(2.try_into().unwrap());
/// let key = Key::new(&Kind::CONNECTION, "abc");
/// let slot = Slot::new("heartbeat@60");
/// let now = 1_700_000_000_000_000_000;
/// let step = quota.step(now, 1).unwrap();
/// assert_eq!(store.apply_step(&key, &slot, &step).0, Outcome::Allowed);
/// assert_eq!(store.apply_step(&key, &slot, &step).0, Outcome::Allowed);
/// assert_eq!(store.apply_step(&key, &slot, &step).0, Outcome::Denied);
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
    /// The caps' leases, one set per key and cap: few, and only ever
    /// touched under the write lock.
    leases: HashTable<LeaseSet>,
    leases_sweep_at: usize,
}

/// One bucket: four words.
struct Entry {
    key: OwnedKey,
    /// The key's tag mixed with the slot's fingerprint: with the key's
    /// bytes, the bucket's identity.
    tag: u64,
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
            .field("buckets", &self.len())
            .field(
                "max_buckets",
                &(self.max_keys_per_shard * self.shards.len()),
            )
            .finish()
    }
}

/// Where one bucket lives: its shard, its hash and its tag.
#[derive(Clone, Copy)]
struct Place {
    shard: usize,
    hash: u64,
    tag: u64,
}

impl MemoryStore {
    /// A store that keeps at most [`DEFAULT_MAX_KEYS`] buckets.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A store that keeps at most about `max_keys` buckets (at least one per shard).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shard_count = (cores * 4).next_power_of_two().clamp(4, 256);
        let max_keys_per_shard = max_keys.div_ceil(shard_count).max(1);
        let shards = (0..shard_count)
            .map(|_| {
                Shard(RwLock::new(ShardTable {
                    entries: HashTable::new(),
                    sweep_at: MIN_SWEEP_LEN.min(max_keys_per_shard),
                    leases: HashTable::new(),
                    leases_sweep_at: MIN_SWEEP_LEN,
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

    /// The number of buckets currently kept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).entries.len()).sum()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn bucket_hash(&self, tag: u64, id: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write_u64(tag);
        hasher.write(id);
        hasher.finish()
    }

    #[inline]
    fn place(&self, key: &Key<'_>, slot: &Slot) -> Place {
        let tag = key.tag() ^ slot.fingerprint().rotate_left(29);
        let hash = self.bucket_hash(tag, key.id_bytes());
        Place {
            // The table itself uses the lowest and the highest bits.
            shard: (hash >> 32) as usize & self.shard_mask,
            hash,
            tag,
        }
    }

    /// Applies one step to one bucket: what [`Store::apply`] does for a
    /// single op, synchronously. Returns the outcome and the bucket's TAT
    /// after it, as [`Step::apply`] does.
    #[inline]
    pub fn apply_step(&self, key: &Key<'_>, slot: &Slot, step: &Step) -> (Outcome, Nanos) {
        let place = self.place(key, slot);
        let shard = &self.shards[place.shard];
        let found = |e: &Entry| e.tag == place.tag && key.matches(&e.key);
        if let Some(entry) = read(shard).entries.find(place.hash, found) {
            return apply_to(&entry.tat, step);
        }
        let mut table = write(shard);
        if let Some(entry) = table.entries.find(place.hash, found) {
            return apply_to(&entry.tat, step);
        }
        let (outcome, tat) = step.apply(0);
        if outcome == Outcome::Allowed {
            self.insert(&mut table, place, key, tat, step.now());
        }
        (outcome, tat)
    }

    /// [`Store::apply`], synchronously.
    #[inline]
    pub fn apply_sync(&self, key: &Key<'_>, ops: &[Op<'_>], tats: &mut [Nanos]) -> Outcome {
        if let [op] = ops {
            let (outcome, tat) = self.apply_step(key, op.slot, &op.step);
            tats[0] = tat;
            return outcome;
        }
        let places: Vec<Place> = ops.iter().map(|op| self.place(key, op.slot)).collect();
        let mut locked = Locked::new(self, places.iter().map(|p| p.shard).collect());
        let mut allowed = true;
        for ((op, place), tat) in ops.iter().zip(&places).zip(tats.iter_mut()) {
            *tat = locked
                .table(place.shard)
                .entries
                .find(place.hash, |e| e.tag == place.tag && key.matches(&e.key))
                .map_or(0, |e| e.tat.load(Ordering::Acquire));
            allowed &= op.step.apply(*tat).0 == Outcome::Allowed;
        }
        if !allowed {
            return Outcome::Denied;
        }
        for ((op, place), tat) in ops.iter().zip(&places).zip(tats.iter_mut()) {
            // Every step was allowed above, on these very TATs.
            let (_, new) = op.step.apply(*tat);
            *tat = new;
            let table = locked.table(place.shard);
            match table
                .entries
                .find(place.hash, |e| e.tag == place.tag && key.matches(&e.key))
            {
                Some(entry) => entry.tat.store(new, Ordering::Release),
                None => self.insert(table, *place, key, new, op.step.now()),
            }
        }
        Outcome::Allowed
    }

    fn insert(&self, table: &mut ShardTable, place: Place, key: &Key<'_>, tat: Nanos, now: Nanos) {
        self.make_room(table, now);
        // Rehashing recomputes hashes from the entries: rare, and it keeps
        // entries at four words.
        table.entries.insert_unique(
            place.hash,
            Entry {
                key: key.to_owned_key(),
                tag: place.tag,
                tat: AtomicU64::new(tat),
            },
            |e| self.bucket_hash(e.tag, e.key.bytes()),
        );
    }

    /// The TAT of one bucket, or `None` when this store does not know it.
    #[inline]
    pub(crate) fn get(&self, key: &Key<'_>, slot: &Slot) -> Option<Nanos> {
        let place = self.place(key, slot);
        read(&self.shards[place.shard])
            .entries
            .find(place.hash, |e| e.tag == place.tag && key.matches(&e.key))
            .map(|e| e.tat.load(Ordering::Acquire))
    }

    /// [`Store::load`], synchronously.
    fn load_sync(&self, key: &Key<'_>, slots: &[&Slot], tats: &mut [Nanos]) {
        for (slot, tat) in slots.iter().zip(tats.iter_mut()) {
            *tat = self.get(key, slot).unwrap_or(0);
        }
    }

    /// Remembers that a bucket's TAT is at least `tat`, as seen at `now`:
    /// for caches of what a shared store said. A TAT only moves forward, so
    /// the larger of the known and the seen value is kept.
    pub(crate) fn record(&self, key: &Key<'_>, slot: &Slot, tat: Nanos, now: Nanos) {
        let place = self.place(key, slot);
        let shard = &self.shards[place.shard];
        let found = |e: &Entry| e.tag == place.tag && key.matches(&e.key);
        if let Some(entry) = read(shard).entries.find(place.hash, found) {
            entry.tat.fetch_max(tat, Ordering::AcqRel);
            return;
        }
        let mut table = write(shard);
        if let Some(entry) = table.entries.find(place.hash, found) {
            entry.tat.fetch_max(tat, Ordering::AcqRel);
            return;
        }
        self.insert(&mut table, place, key, tat, now);
    }

    /// [`Store::refund`], synchronously.
    pub(crate) fn refund_sync(&self, key: &Key<'_>, ops: &[Op<'_>]) {
        for op in ops {
            let place = self.place(key, op.slot);
            if let Some(entry) = read(&self.shards[place.shard])
                .entries
                .find(place.hash, |e| e.tag == place.tag && key.matches(&e.key))
            {
                let _ = entry
                    .tat
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                        op.step.refund(tat)
                    });
            }
        }
    }

    /// [`Store::remove`], synchronously: the buckets, or a cap's leases,
    /// named by `slots`.
    pub(crate) fn remove_sync(&self, key: &Key<'_>, slots: &[&Slot]) {
        for slot in slots {
            let place = self.place(key, slot);
            let mut table = write(&self.shards[place.shard]);
            let same = |tag: u64, owner: &OwnedKey| tag == place.tag && key.matches(owner);
            if let Ok(entry) = table
                .entries
                .find_entry(place.hash, |e| same(e.tag, &e.key))
            {
                entry.remove();
            }
            if let Ok(set) = table.leases.find_entry(place.hash, |s| same(s.tag, &s.key)) {
                set.remove();
            }
        }
    }

    /// Before an insert: sweep buckets that are full again once the shard
    /// has grown enough, and evict the buckets nearest to full if live ones
    /// alone exceed the bound.
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
                "in-memory rate-limit store is full of live buckets; forgot the ones nearest to full"
            );
        }
        table.sweep_at = (table.entries.len() * 2)
            .max(MIN_SWEEP_LEN)
            .min(self.max_keys_per_shard);
    }
}

/// The write locks of every shard a request touches, taken in shard order
/// (so that two such requests cannot deadlock): every other writer is
/// kept out of them until it is dropped.
struct Locked<'a> {
    shards: Vec<usize>,
    tables: Vec<RwLockWriteGuard<'a, ShardTable>>,
}

impl<'a> Locked<'a> {
    fn new(store: &'a MemoryStore, mut shards: Vec<usize>) -> Self {
        shards.sort_unstable();
        shards.dedup();
        let tables = shards.iter().map(|&i| write(&store.shards[i])).collect();
        Self { shards, tables }
    }

    /// The table of `shard`, which must be one of those locked.
    fn table(&mut self, shard: usize) -> &mut ShardTable {
        let at = self
            .shards
            .iter()
            .position(|&i| i == shard)
            .expect("every shard involved is locked");
        &mut self.tables[at]
    }
}

/// Applies `step` to one TAT with a compare-and-swap loop.
#[inline]
fn apply_to(tat: &AtomicU64, step: &Step) -> (Outcome, Nanos) {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        match step.apply(current) {
            (Outcome::Allowed, new) => {
                match tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return (Outcome::Allowed, new),
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
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        _retention: Nanos,
        tats: &mut [Nanos],
    ) -> impl Future<Output = Applied> + Send {
        let (outcome, seats) = match lease {
            Some(lease) => self.apply_leased(key, ops, lease, tats),
            None => (self.apply_sync(key, ops, tats), Seats::default()),
        };
        std::future::ready(Applied {
            outcome: Ok(outcome),
            calls: 1,
            capacity: Capacity::default(),
            seats,
        })
    }

    fn leases(
        &self,
        key: &Key<'_>,
        slot: &Slot,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        std::future::ready(Ok(self.leases_sync(key, slot)))
    }

    fn release(
        &self,
        key: &Key<'_>,
        lease: &Lease<'_>,
    ) -> impl Future<Output = Result<Capacity, StoreError>> + Send {
        self.release_sync(key, lease);
        std::future::ready(Ok(Capacity::default()))
    }

    fn refund(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
    ) -> impl Future<Output = Result<Capacity, StoreError>> + Send {
        self.refund_sync(key, ops);
        std::future::ready(Ok(Capacity::default()))
    }

    fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.load_sync(key, slots, tats);
        std::future::ready(Ok(()))
    }

    fn remove(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.remove_sync(key, slots);
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
    use crate::key::Kind;

    const NOW: Nanos = 1_700_000_000_000_000_000;
    const SEC: Nanos = 1_000_000_000;

    fn quota(limit: u32) -> Quota {
        Quota::per_minute(NonZeroU32::new(limit).unwrap())
    }

    fn ip_key(ip: &str) -> Key<'_> {
        Key::new(&Kind::IP, ip)
    }

    fn slot() -> Slot {
        Slot::new("connection_attempt@60")
    }

    fn allowed((outcome, _): (Outcome, Nanos)) -> bool {
        outcome == Outcome::Allowed
    }

    #[test]
    fn many_threads_on_one_key_never_admit_more_than_the_limit() {
        for round in 0..20 {
            let store = Arc::new(MemoryStore::new());
            let admitted = Arc::new(AtomicU32::new(0));
            let quota = quota(100);
            let step = quota.step(NOW + round * SEC, 1).unwrap();
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (store, admitted) = (store.clone(), admitted.clone());
                    std::thread::spawn(move || {
                        for _ in 0..50 {
                            if allowed(store.apply_step(&ip_key("10.0.0.1"), &slot(), &step)) {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            assert_eq!(admitted.load(Ordering::Relaxed), 100, "round {round}");
            assert_eq!(
                store.get(&ip_key("10.0.0.1"), &slot()),
                Some(NOW + round * SEC + 60 * SEC)
            );
        }
    }

    #[test]
    fn many_threads_on_two_buckets_of_one_item_never_over_admit_either() {
        let store = Arc::new(MemoryStore::new());
        let short = Slot::new("p@10");
        let long = Slot::new("p@60");
        let (q_short, q_long) = (
            Quota::new(
                NonZeroU32::new(30).unwrap(),
                std::time::Duration::from_secs(10),
            )
            .unwrap(),
            quota(100),
        );
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (store, admitted, short, long) =
                    (store.clone(), admitted.clone(), short.clone(), long.clone());
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let now = NOW + (t * 100 + i) * 1000;
                        let ops = [
                            Op {
                                slot: &short,
                                step: q_short.step(now, 1).unwrap(),
                                hint: crate::store::Hint::None,
                            },
                            Op {
                                slot: &long,
                                step: q_long.step(now, 1).unwrap(),
                                hint: crate::store::Hint::None,
                            },
                        ];
                        let mut tats = [0; 2];
                        if store.apply_sync(&ip_key("x"), &ops, &mut tats) == Outcome::Allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // Within a millisecond of fake time the short limit decides.
        assert_eq!(admitted.load(Ordering::Relaxed), 30);
        // And both buckets moved together: 30 tokens each.
        let tat_long = store.get(&ip_key("x"), &long).unwrap();
        assert!(tat_long >= NOW + 30 * q_long.emission_interval().as_nanos() as u64);
    }

    #[test]
    fn a_denial_on_one_bucket_writes_none() {
        let store = MemoryStore::new();
        let (a, b) = (Slot::new("p@1"), Slot::new("p@60"));
        let (qa, qb) = (Quota::per_second(NonZeroU32::new(5).unwrap()), quota(1));
        let ops = |now| {
            [
                Op {
                    slot: &a,
                    step: qa.step(now, 1).unwrap(),
                    hint: crate::store::Hint::None,
                },
                Op {
                    slot: &b,
                    step: qb.step(now, 1).unwrap(),
                    hint: crate::store::Hint::None,
                },
            ]
        };
        let mut tats = [0; 2];
        assert_eq!(
            store.apply_sync(&ip_key("k"), &ops(NOW), &mut tats),
            Outcome::Allowed
        );
        let after_first = tats;
        assert_eq!(
            store.apply_sync(&ip_key("k"), &ops(NOW), &mut tats),
            Outcome::Denied
        );
        // The per-second bucket, which would have allowed, is unchanged.
        assert_eq!(tats, after_first);
        assert_eq!(store.get(&ip_key("k"), &a), Some(after_first[0]));
    }

    #[test]
    fn keys_and_slots_are_independent() {
        let store = MemoryStore::new();
        let step = quota(1).step(NOW, 1).unwrap();
        assert!(allowed(store.apply_step(&ip_key("a"), &slot(), &step)));
        assert!(!allowed(store.apply_step(&ip_key("a"), &slot(), &step)));
        assert!(allowed(store.apply_step(&ip_key("b"), &slot(), &step)));
        assert!(allowed(store.apply_step(
            &ip_key("a"),
            &Slot::new("listener_join@60"),
            &step
        )));
        assert!(allowed(store.apply_step(
            &Key::new(&Kind::USER, "a"),
            &slot(),
            &step
        )));
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn remove_makes_the_bucket_full_again_and_refunds_give_back() {
        let store = MemoryStore::new();
        let step = quota(1).step(NOW, 1).unwrap();
        store.apply_step(&ip_key("a"), &slot(), &step);
        assert!(!allowed(store.apply_step(&ip_key("a"), &slot(), &step)));
        store.remove_sync(&ip_key("a"), &[&slot()]);
        assert_eq!(store.get(&ip_key("a"), &slot()), None);
        assert!(allowed(store.apply_step(&ip_key("a"), &slot(), &step)));
        let op = Op {
            slot: &slot(),
            step,
            hint: crate::store::Hint::None,
        };
        store.refund_sync(&ip_key("a"), &[op]);
        assert!(allowed(store.apply_step(&ip_key("a"), &slot(), &step)));
        store.remove_sync(&ip_key("never seen"), &[&slot()]);
    }

    #[test]
    fn recorded_tats_only_move_forward() {
        let store = MemoryStore::new();
        let key = ip_key("r");
        assert_eq!(store.get(&key, &slot()), None);
        store.record(&key, &slot(), NOW + 5, NOW);
        store.record(&key, &slot(), NOW + 3, NOW);
        assert_eq!(store.get(&key, &slot()), Some(NOW + 5));
        store.record(&key, &slot(), NOW + 9, NOW);
        let mut tats = [0];
        store.load_sync(&key, &[&slot()], &mut tats);
        assert_eq!(tats, [NOW + 9]);
    }

    #[test]
    fn keys_that_are_full_again_are_forgotten() {
        let store = MemoryStore::with_max_keys(1_000_000);
        let quota = quota(10);
        let ids: Vec<String> = (0..50_000)
            .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        for id in &ids {
            store.apply_step(&ip_key(id), &slot(), &quota.step(NOW, 1).unwrap());
        }
        assert_eq!(store.len(), ids.len());
        // Two minutes later every one of those buckets is full; new traffic
        // sweeps them away as shards grow.
        let later = quota.step(NOW + 120 * SEC, 1).unwrap();
        for id in &ids {
            store.apply_step(&ip_key(&format!("new-{id}")), &slot(), &later);
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
            store.apply_step(
                &ip_key(&id),
                &slot(),
                &quota.step(NOW + i * 1000, 1).unwrap(),
            );
            assert!(
                store.len() <= 1_000 + store.shards.len(),
                "{} keys at {i}",
                store.len()
            );
        }
        // The most recent key is still counted.
        assert_eq!(
            store.get(&ip_key("19999"), &slot()),
            Some(NOW + 19_999 * 1000 + 6 * SEC)
        );
    }
}
