//! The deny cache and hints: what this process learnt from a shared store,
//! kept to save calls to it. A part of the service, beside the circuit
//! breaker: stores only persist.
//!
//! [`DenyCache`] remembers the last TAT it saw for each bucket (up to a
//! bound, in a [`MemoryStore`]). Since a TAT never moves backwards except
//! when a bucket is removed or a refused request's tokens are given back
//! (both of which the service tells the cache), a request that the last TAT
//! seen already denies is denied again without calling the store, with the
//! right `retry_after` for what is known; a flood from one client costs one
//! call per blocking period. For other requests the same memory gives the
//! store a hint about each bucket ([`Hint::Seen`]), and for buckets never
//! seen or last seen full, a guess from how lately such buckets of the same
//! slot turned out ([`Hint::Guess`]): that lets a store whose writes come in
//! two shapes pick the right one first.

use std::sync::atomic::{AtomicI8, Ordering};

use crate::gcra::{Nanos, Outcome};
use crate::key::{Key, Slot};
use crate::memory::MemoryStore;
use crate::store::{Hint, Op};

/// How many buckets the cache remembers by default.
pub const DEFAULT_CACHED_BUCKETS: usize = 10_000;

/// How far the guesses may lean either way, so that a change in traffic
/// turns them around after a few decisions.
const MAX_VOTE: i8 = 8;

/// A bucket seen full again less than this long ago keeps its seen TAT as
/// its hint (see `denies`).
const RECENT: Nanos = 1_000_000_000;

/// Slots share this many vote counters (by fingerprint); two slots that
/// share one only make each other's guesses a little worse.
const VOTES: usize = 64;

/// What this process saw of a shared store's buckets.
#[derive(Debug)]
pub(crate) struct DenyCache {
    seen: MemoryStore,
    /// Per slot (by fingerprint): positive when unseen buckets were mostly busy.
    votes: [AtomicI8; VOTES],
}

impl DenyCache {
    /// A cache of about `buckets` buckets.
    pub(crate) fn new(buckets: usize) -> Self {
        Self {
            seen: MemoryStore::with_max_keys(buckets),
            votes: std::array::from_fn(|_| AtomicI8::new(0)),
        }
    }

    fn votes(&self, slot: &Slot) -> &AtomicI8 {
        &self.votes[slot.fingerprint() as usize % VOTES]
    }

    /// The TAT this process last saw for `slot` of `key`, if it remembers one.
    #[inline]
    pub(crate) fn seen(&self, key: &Key<'_>, slot: &Slot) -> Option<Nanos> {
        self.seen.get(key, slot)
    }

    /// Before a call: whether what this process saw last already denies
    /// the request (then `tats` holds those TATs, as a store's denial
    /// would). Either way, marks each op with a hint, and fills `tats` with
    /// what is known (0 for unseen buckets).
    pub(crate) fn denies(&self, key: &Key<'_>, ops: &mut [Op<'_>], tats: &mut [Nanos]) -> bool {
        let mut denied = false;
        for (op, tat) in ops.iter_mut().zip(tats.iter_mut()) {
            let seen = self.seen.get(key, op.slot);
            *tat = seen.unwrap_or(0);
            op.hint = match seen {
                // Busy when seen, so busy now: a TAT only moves forward
                // (a refund or a reset, which move it back, are told here).
                Some(seen) if seen > op.step.busy_floor() => Hint::Seen(seen),
                // Full again less than a second ago: a key this process
                // decides many times a second, whose state it knows best
                // itself. (Guessing there made a key hammered by 16 tasks
                // of one process cost 2.3 calls a decision instead of 1.5:
                // a wrong busy guess is retried in the idle shape, which
                // concurrent writers keep failing.)
                Some(seen) if seen.saturating_add(RECENT) > op.step.now() => Hint::Seen(seen),
                // Unseen, or full for a while: what it is now depends on
                // the other processes since. For a key at its rate (a
                // heartbeat), "full when last seen here" is the usual
                // case, and most often wrong; how such buckets turned out
                // lately is the better guess.
                _ => Hint::Guess {
                    busy: self.votes(op.slot).load(Ordering::Relaxed) > 0,
                },
            };
            // Denied on what this process saw last; the real TAT is no smaller.
            denied |= seen.is_some_and(|seen| op.step.apply(seen).0 == Outcome::Denied);
        }
        denied
    }

    /// After a call: remembers the TATs the store reported, and for buckets
    /// that were guessed, whether the guess was right.
    pub(crate) fn learn(&self, key: &Key<'_>, ops: &[Op<'_>], outcome: Outcome, tats: &[Nanos]) {
        for (op, &tat) in ops.iter().zip(tats) {
            let now = op.step.now();
            self.seen.record(key, op.slot, tat, now);
            if !matches!(op.hint, Hint::Seen(_)) {
                // Whether the busy shape was the one: allowed, iff the step
                // did not start from now (the idle shape writes exactly
                // `idle_target`); denied, iff the TAT was past the floor.
                let busy = match outcome {
                    Outcome::Allowed => tat != op.step.idle_target(),
                    Outcome::Denied => tat > op.step.busy_floor(),
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

    /// `ops`' tokens were given back in the store: give them back here too,
    /// or the cache would deny what the store allows.
    pub(crate) fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) {
        self.seen.refund_sync(key, ops);
    }

    /// `slots` were removed from the store: forget them.
    pub(crate) fn forget(&self, key: &Key<'_>, slots: &[&Slot]) {
        self.seen.remove_sync(key, slots);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::gcra::Quota;
    use crate::key::Kind;

    const NOW: Nanos = 1_700_000_000_000_000_000;
    const SEC: Nanos = 1_000_000_000;

    /// A cache in front of a memory store, counting the calls that reach
    /// the store and the busy hints it got.
    struct Cached {
        cache: DenyCache,
        store: MemoryStore,
        calls: u32,
        busy_hints: u32,
    }

    impl Cached {
        fn new() -> Self {
            Self {
                cache: DenyCache::new(DEFAULT_CACHED_BUCKETS),
                store: MemoryStore::new(),
                calls: 0,
                busy_hints: 0,
            }
        }

        /// One decision through the cache, as the service makes it.
        fn decide(&mut self, key: &Key<'_>, slot: &Slot, quota: &Quota, now: Nanos) -> Outcome {
            let mut ops = [Op::new(slot, quota.step(now, 1).unwrap())];
            let mut tats = [0];
            if self.cache.denies(key, &mut ops, &mut tats) {
                return Outcome::Denied;
            }
            self.calls += 1;
            self.busy_hints += ops.iter().filter(|op| op.likely_busy()).count() as u32;
            let outcome = self.store.apply_sync(key, &ops, &mut tats);
            self.cache.learn(key, &ops, outcome, &tats);
            outcome
        }
    }

    #[test]
    fn known_denials_make_no_call_until_a_token_is_back() {
        let mut cached = Cached::new();
        let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
        let (key, slot) = (Key::new(&Kind::CONNECTION, "c"), Slot::new("heartbeat@60"));
        assert_eq!(cached.decide(&key, &slot, &quota, NOW), Outcome::Allowed);
        assert_eq!(cached.decide(&key, &slot, &quota, NOW), Outcome::Allowed);
        for _ in 0..100 {
            assert_eq!(
                cached.decide(&key, &slot, &quota, NOW + SEC),
                Outcome::Denied
            );
        }
        // Two calls allowed, and none for the denials: the second allowed
        // call already told the TAT.
        assert_eq!(cached.calls, 2);
        // 30 s on, a token is back: the store is asked again.
        assert_eq!(
            cached.decide(&key, &slot, &quota, NOW + 30 * SEC),
            Outcome::Allowed
        );
        assert_eq!(cached.calls, 3);
    }

    #[test]
    fn a_removed_bucket_is_forgotten_and_refunds_are_given_back() {
        let mut cached = Cached::new();
        let quota = Quota::per_minute(NonZeroU32::new(1).unwrap());
        let (key, slot) = (Key::new(&Kind::IP, "a"), Slot::new("listener_join@60"));
        cached.decide(&key, &slot, &quota, NOW);
        assert_eq!(cached.decide(&key, &slot, &quota, NOW), Outcome::Denied);
        cached.store.remove_sync(&key, &[&slot]);
        cached.cache.forget(&key, &[&slot]);
        assert_eq!(cached.decide(&key, &slot, &quota, NOW), Outcome::Allowed);
        let op = Op::new(&slot, quota.step(NOW, 1).unwrap());
        cached.store.refund_sync(&key, &[op]);
        cached.cache.refund(&key, &[op]);
        assert_eq!(cached.decide(&key, &slot, &quota, NOW), Outcome::Allowed);
    }

    #[test]
    fn unseen_buckets_are_guessed_from_how_others_turned_out() {
        let mut cached = Cached::new();
        let quota = Quota::per_minute(NonZeroU32::new(10).unwrap());
        let slot = Slot::new("listener_join@60");
        // Another process made every one of these keys busy.
        let ids: Vec<String> = (0..20).map(|i| format!("10.0.0.{i}")).collect();
        for id in &ids {
            let key = Key::new(&Kind::IP, id);
            let step = quota.step(NOW, 1).unwrap();
            cached.store.apply_step(&key, &slot, &step);
        }
        for id in &ids {
            cached.decide(&Key::new(&Kind::IP, id), &slot, &quota, NOW + SEC);
        }
        // The first guesses were idle; after a few, busy.
        assert!(
            (15..20).contains(&cached.busy_hints),
            "{} busy hints",
            cached.busy_hints
        );
    }

    /// A key at its rate, served by several processes: this one last saw
    /// its bucket full again by now, but another process has written it
    /// since. The seen TAT said "idle" every time; the guess learns "busy".
    #[test]
    fn buckets_last_seen_full_are_guessed_from_how_such_buckets_turned_out() {
        let mut cached = Cached::new();
        let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
        let slot = Slot::new("heartbeat@60");
        let ids: Vec<String> = (0..20).map(|i| format!("conn-{i}")).collect();
        // Seen here at NOW (new buckets, idle: the votes lean idle).
        for id in &ids {
            cached.decide(&Key::new(&Kind::CONNECTION, id), &slot, &quota, NOW);
        }
        // Two rounds, a minute apart: each time another process's
        // heartbeat, then this one's 20 s later (together, at the rate of
        // 2 a minute). This one last saw a TAT that is before now by then:
        // full, by what it saw; another process made it busy since.
        let mut busy = Vec::new();
        for round in 1..=2u64 {
            let (theirs, ours) = (NOW + (60 * round - 20) * SEC, NOW + 60 * round * SEC);
            for id in &ids {
                let step = quota.step(theirs, 1).unwrap();
                cached
                    .store
                    .apply_step(&Key::new(&Kind::CONNECTION, id), &slot, &step);
            }
            cached.busy_hints = 0;
            for id in &ids {
                let key = Key::new(&Kind::CONNECTION, id);
                assert_eq!(cached.decide(&key, &slot, &quota, ours), Outcome::Allowed);
            }
            busy.push(cached.busy_hints);
        }
        // The guesses turn busy once the votes have: then every one is.
        assert!(busy[0] >= 10, "busy hints per round: {busy:?}");
        assert_eq!(busy[1], 20, "busy hints per round: {busy:?}");
    }

    /// A bucket this process saw full again moments ago keeps its seen TAT
    /// as the hint, whatever the votes say: its own view is the freshest.
    #[test]
    fn a_bucket_seen_full_moments_ago_keeps_its_seen_hint() {
        let cached = Cached::new();
        let quota = Quota::per_second(NonZeroU32::new(1_000_000).unwrap());
        let (key, slot) = (Key::new(&Kind::IP, "hammered"), Slot::new("edge@1"));
        // The votes lean busy.
        for _ in 0..MAX_VOTE {
            cached.cache.votes(&slot).fetch_add(1, Ordering::Relaxed);
        }
        cached.cache.seen.record(&key, &slot, NOW, NOW);
        let hint = |now: Nanos| {
            let mut ops = [Op::new(&slot, quota.step(now, 1).unwrap())];
            cached.cache.denies(&key, &mut ops, &mut [0]);
            ops[0].hint
        };
        // Full again 2 ms ago: the seen TAT.
        assert_eq!(hint(NOW + 2_000_000), Hint::Seen(NOW));
        // Full again 2 s ago: the votes' guess.
        assert_eq!(hint(NOW + 2 * SEC), Hint::Guess { busy: true });
    }

    /// With a tolerance, a bucket last seen a little before now is busy
    /// for the step (its TAT is above the busy floor): the seen TAT is
    /// hint enough.
    #[test]
    fn with_a_tolerance_a_bucket_a_little_behind_now_is_busy() {
        let mut cached = Cached::new();
        let quota = Quota::per_minute(NonZeroU32::new(2).unwrap())
            .with_tolerance(std::time::Duration::from_secs(9))
            .unwrap();
        let (key, slot) = (Key::new(&Kind::CONNECTION, "c"), Slot::new("heartbeat@60"));
        cached.decide(&key, &slot, &quota, NOW);
        // TAT NOW + 30 s, asked at NOW + 35 s: 5 s behind, within 9 s.
        cached.busy_hints = 0;
        assert_eq!(
            cached.decide(&key, &slot, &quota, NOW + 35 * SEC),
            Outcome::Allowed
        );
        assert_eq!(cached.busy_hints, 1);
        let mut tats = [0];
        let mut ops = [Op::new(&slot, quota.step(NOW + 35 * SEC, 1).unwrap())];
        cached.cache.denies(&key, &mut ops, &mut tats);
        // Charged from the old TAT: NOW + 30 s + 30 s.
        assert_eq!(tats[0], NOW + 60 * SEC);
    }
}
