//! The caps' leases in the memory store: one set per key and cap, in the
//! shard its (key, slot) hashes to, taken under the write locks of every
//! shard a request touches, so that the seat and the request's buckets
//! change together.

use std::sync::atomic::Ordering;

use super::{Entry, Locked, MIN_SWEEP_LEN, MemoryStore, Place, ShardTable, write};
use crate::gcra::{Nanos, Outcome};
use crate::key::{Key, OwnedKey};
use crate::lease::{Lease, Seats};
use crate::store::Op;

/// The live leases of one key under one cap.
pub(super) struct LeaseSet {
    pub(super) key: OwnedKey,
    pub(super) tag: u64,
    pub(super) members: Vec<Box<str>>,
}

impl MemoryStore {
    /// [`Store::apply`] with a lease, synchronously: the buckets and the
    /// lease's set under the write locks of every shard involved.
    pub fn apply_leased(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        lease: &Lease<'_>,
        tats: &mut [Nanos],
    ) -> (Outcome, Seats) {
        let places: Vec<Place> = ops.iter().map(|op| self.place(key, op.slot)).collect();
        let set_place = self.place(key, lease.slot);
        let mut shards: Vec<usize> = places.iter().map(|p| p.shard).collect();
        shards.push(set_place.shard);
        let mut locked = Locked::new(self, shards);
        let found = |e: &Entry, place: &Place| e.tag == place.tag && key.matches(&e.key);
        let mut allowed = true;
        for ((op, place), tat) in ops.iter().zip(&places).zip(tats.iter_mut()) {
            *tat = locked
                .table(place.shard)
                .entries
                .find(place.hash, |e| found(e, place))
                .map_or(0, |e| e.tat.load(Ordering::Acquire));
            allowed &= op.step.apply(*tat).0 == Outcome::Allowed;
        }
        let same_set = |s: &LeaseSet| s.tag == set_place.tag && key.matches(&s.key);
        let set_table = locked.table(set_place.shard);
        let seats = match set_table.leases.find_mut(set_place.hash, same_set) {
            Some(set) => {
                // Forgetting an ended lease changes no decision.
                set.members.retain(|m| Lease::live_at(m, lease.now));
                lease.seats(set.members.iter().map(|m| &**m))
            }
            None => Seats::default(),
        };
        if !allowed || !lease.fits(seats) {
            return (Outcome::Denied, seats);
        }
        if !seats.mine {
            match set_table.leases.find_mut(set_place.hash, same_set) {
                Some(set) => set.members.push(lease.member().into()),
                None => {
                    self.make_room_for_leases(set_table, lease.now);
                    set_table.leases.insert_unique(
                        set_place.hash,
                        LeaseSet {
                            key: key.to_owned_key(),
                            tag: set_place.tag,
                            members: vec![lease.member().into()],
                        },
                        |s| self.bucket_hash(s.tag, s.key.bytes()),
                    );
                }
            }
        }
        for ((op, place), tat) in ops.iter().zip(&places).zip(tats.iter_mut()) {
            let (_, new) = op.step.apply(*tat);
            *tat = new;
            let table = locked.table(place.shard);
            match table.entries.find(place.hash, |e| found(e, place)) {
                Some(entry) => entry.tat.store(new, Ordering::Release),
                None => self.insert(table, *place, key, new, op.step.now()),
            }
        }
        (Outcome::Allowed, seats.taking())
    }

    /// [`Store::leases`], synchronously.
    pub fn leases_sync(&self, key: &Key<'_>, slot: &crate::key::Slot) -> Vec<String> {
        let place = self.place(key, slot);
        let table = super::read(&self.shards[place.shard]);
        table
            .leases
            .find(place.hash, |s| s.tag == place.tag && key.matches(&s.key))
            .map_or_else(Vec::new, |set| {
                set.members.iter().map(|m| m.to_string()).collect()
            })
    }

    /// [`Store::release`], synchronously.
    pub fn release_sync(&self, key: &Key<'_>, lease: &Lease<'_>) {
        let place = self.place(key, lease.slot);
        let member = lease.member();
        let mut table = write(&self.shards[place.shard]);
        if let Ok(mut entry) = table
            .leases
            .find_entry(place.hash, |s| s.tag == place.tag && key.matches(&s.key))
        {
            entry.get_mut().members.retain(|m| **m != *member);
            if entry.get().members.is_empty() {
                entry.remove();
            }
        }
    }

    /// Before a new lease set: forget the sets whose leases have all ended,
    /// once the shard holds enough of them. Live sets are never forgotten:
    /// that would hand out their seats again.
    fn make_room_for_leases(&self, table: &mut ShardTable, now: Nanos) {
        if table.leases.len() < table.leases_sweep_at {
            return;
        }
        table.leases.retain(|s| {
            s.members.retain(|m| Lease::live_at(m, now));
            !s.members.is_empty()
        });
        table.leases_sweep_at = (table.leases.len() * 2).max(MIN_SWEEP_LEN);
    }
}
