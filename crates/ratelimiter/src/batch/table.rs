//! Batches in a service: what one process keeps per hot key (the
//! service's stage that uses them is in `hot`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Batch;
use crate::failure::HOT_KEY_MEMORY;
use crate::gcra::Nanos;
use crate::policy::{Batching, Limit, MAX_LIMITS};
use crate::store::Op;
use crate::verdict::Verdict;

/// The span over which a key's rate in this process is counted: a batch
/// holds what the last one asked for.
const WINDOW: Nanos = 100_000_000;

/// When `auto` batches a key the store does not throttle: 20 requests in
/// 100 ms, 200 writes a second from one process, a fifth of what a
/// DynamoDB item takes, so that a few processes warming up together stay
/// under its ceiling; and batches of at least 20 tokens, so a limit under
/// 40 is never batched for its rate. Below it a key is not hot, and stays
/// exact, one write each: a batch can only lose tokens. (Requests, not
/// tokens, make a key hot: one large message is one write.)
const MIN_AUTO_BATCH: u32 = 20;

/// How long a throttled key of a batching policy with no batch in hand is
/// refused: a tenth of the hot-key hold, since its next write is one take
/// of a batch ten times larger, not one per decision.
pub(crate) const BATCH_HOLD: Nanos = 100_000_000;

/// How much larger a key's batches are while the store throttled it lately.
const THROTTLED_SCALE: u32 = 10;

/// How long a request is refused while another task takes a batch: about
/// one store call.
const TAKING_WAIT: Nanos = 10_000_000;

/// The keys this process keeps batch state for, at most; past that, new
/// keys are decided one write each until old ones go quiet.
const MAX_KEYS: usize = 10_000;

/// This process's batches, per key and limits.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    keys: Mutex<HashMap<Box<str>, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    /// The current window's start, and the tokens asked in it.
    window: Nanos,
    asked: u32,
    /// The tokens asked in the window before it.
    last: u32,
    /// The requests in the current window, and in the one before it.
    requests: u32,
    last_requests: u32,
    /// The batches being spent, and taken ahead.
    spending: Option<Set>,
    next: Option<Set>,
    /// Whether a task of this process is taking a batch for the key.
    taking: bool,
    touched: Nanos,
}

/// One batch per limit, taken in one write.
#[derive(Clone, Debug)]
pub(crate) struct Set(Vec<Batch>);

impl Set {
    pub(crate) fn taken(limits: &[Limit], ops: &[Op<'_>], tats: &[Nanos]) -> Self {
        Self(
            limits
                .iter()
                .zip(ops.iter().zip(tats))
                .map(|(limit, (op, &tat))| Batch::taken(limit.quota(), &op.step, tat))
                .collect(),
        )
    }

    fn spend(&mut self, now: Nanos, cost: u32) -> bool {
        let fits = self.0.iter().all(|b| b.fits(now, cost));
        if fits {
            for batch in &mut self.0 {
                batch.spend(now, cost);
            }
        }
        fits
    }

    fn left(&self, now: Nanos) -> u32 {
        self.0.iter().map(|b| b.left(now)).min().unwrap_or(0)
    }

    /// The TATs a decision reports: the bucket's as this process knows
    /// it, with its own unspent tokens counted as there.
    fn tats(&self, now: Nanos) -> [Nanos; MAX_LIMITS] {
        let mut tats = [0; MAX_LIMITS];
        for (tat, batch) in tats.iter_mut().zip(&self.0) {
            *tat = batch.tat_with_unspent(now);
        }
        tats
    }
}

/// The decision on a request by the batches, before any wait.
pub(crate) enum Batched<'s> {
    /// Not served from batches: decided as any request is.
    Plain,
    /// Decided here: spent from a batch, or refused.
    Decided(Verdict),
    /// A batch to take first (boxed: the rare case, and the large one).
    Take(Box<Pending<'s>>),
}

/// A take the batches asked for, marked under way.
pub(crate) struct Pending<'s> {
    /// The request's own steps, and what this process saw of its buckets.
    pub(crate) ops: [Op<'s>; MAX_LIMITS],
    pub(crate) seen: [Option<Nanos>; MAX_LIMITS],
    pub(crate) taking: Taking<'s>,
    pub(crate) size: u32,
    /// The request's verdict, when it was spent from the batch in hand
    /// and the take is the next batch, ahead of need.
    pub(crate) spent: Option<Verdict>,
}

/// What to do with one request, by the key's batches.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Not served from batches: decided as any request is.
    Plain,
    /// Spent from the batch in hand, reported with these TATs; and, if
    /// `next`, this request takes the next batch, of that size.
    Spent {
        tats: [Nanos; MAX_LIMITS],
        next: Option<u32>,
    },
    /// Take a batch of this size for the request.
    Take(u32),
    /// Refused here until `until`; `held` while the store throttles the key.
    Wait { until: Nanos, held: bool },
}

/// How a take turned out, for the batches.
pub(crate) enum Took {
    /// Allowed: the batch, and the cost to spend from it at once (the
    /// request's own take).
    Batch(Set, Option<u32>),
    /// Refused, or failed.
    Lost,
}

impl Batches {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        // An entry is consistent at every point a panic could leave it.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plan for a request of `cost` at `now` on the key `name`, with
    /// what this process last saw of its buckets (`seen`, per limit), and
    /// when the store last throttled the key (if this process remembers):
    /// held for [`BATCH_HOLD`] after, and served in batches ten times
    /// larger for [`HOT_KEY_MEMORY`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan(
        &self,
        name: &str,
        batching: Batching,
        limits: &[Limit],
        cost: u32,
        now: Nanos,
        seen: &[Option<Nanos>],
        throttled_at: Option<Nanos>,
    ) -> Plan {
        let mut keys = self.lock();
        if !keys.contains_key(name) {
            if keys.len() >= MAX_KEYS {
                keys.retain(|_, e| e.taking || e.touched.saturating_add(2 * WINDOW) > now);
                if keys.len() >= MAX_KEYS {
                    return Plan::Plain;
                }
            }
            keys.insert(
                name.into(),
                Entry {
                    window: now,
                    ..Entry::default()
                },
            );
        }
        let Some(e) = keys.get_mut(name) else {
            return Plan::Plain;
        };
        e.touched = now;
        if now >= e.window.saturating_add(WINDOW) {
            let recent = now < e.window.saturating_add(2 * WINDOW);
            e.last = if recent { e.asked } else { 0 };
            e.last_requests = if recent { e.requests } else { 0 };
            e.asked = 0;
            e.requests = 0;
            e.window = now;
        }
        e.asked = e.asked.saturating_add(cost);
        e.requests = e.requests.saturating_add(1);
        let held = throttled_at
            .map(|at| at.saturating_add(BATCH_HOLD))
            .filter(|&until| until > now);
        let memory = HOT_KEY_MEMORY.as_nanos() as Nanos;
        let throttled = throttled_at.is_some_and(|at| now < at.saturating_add(memory));
        let most = limits.iter().map(|l| l.quota().limit()).min().unwrap_or(1);
        // What it asked in the last 100 ms: the window before, or this one
        // once it has asked more (a key warming up).
        let rate = e.last.max(e.asked);
        let half = (most / 2).max(1);
        let target = match batching {
            Batching::Off => return Plan::Plain,
            Batching::Fixed(n) => n.get().min(most),
            Batching::Auto if throttled => rate
                .saturating_mul(THROTTLED_SCALE)
                .clamp(2.min(most), half.max(2).min(most)),
            Batching::Auto
                if e.requests.max(e.last_requests) >= MIN_AUTO_BATCH
                    && rate.min(half) >= MIN_AUTO_BATCH =>
            {
                rate.min(half)
            }
            Batching::Auto => 0,
        };
        let available = available(limits, seen, now);
        // 1. The batch in hand, or the one taken ahead.
        if e.spend(now, cost) {
            let (tats, left) = match &e.spending {
                Some(set) => (set.tats(now), set.left(now)),
                None => ([0; MAX_LIMITS], 0),
            };
            let mut next = None;
            if !e.taking && held.is_none() && e.next.is_none() && target >= 2 && left < target / 2 {
                let size = target.min(available);
                if size >= need(limits, 1, target) {
                    e.taking = true;
                    next = Some(size);
                }
            }
            return Plan::Spent { tats, next };
        }
        // 2. A cold key.
        if target < 2 && held.is_none() {
            return Plan::Plain;
        }
        // 4. Refused here: throttled, or another task is taking.
        if let Some(until) = held {
            return Plan::Wait { until, held: true };
        }
        if e.taking {
            return Plan::Wait {
                until: now.saturating_add(TAKING_WAIT),
                held: false,
            };
        }
        // 3. A batch for this request, if the bucket holds half of one.
        let size = target.max(cost).min(most);
        let need = need(limits, cost, size);
        if available < need {
            return Plan::Wait {
                until: ready_at(limits, seen, need, now),
                held: false,
            };
        }
        e.taking = true;
        Plan::Take(size.min(available))
    }

    /// The name of `key`'s batches for limits whose first slot is `slot`.
    /// (A slot name holds no `\u{1f}`, so two pairs never share a name.)
    pub(crate) fn name(key: &crate::key::Key<'_>, slot: &crate::key::Slot) -> String {
        format!("{key}\u{1f}{}", slot.name())
    }

    /// Drops the batches of `key` for limits whose first slot is one of
    /// `slots`: the key was reset, and starts again from a full bucket.
    pub(crate) fn forget(&self, key: &crate::key::Key<'_>, slots: &[&crate::key::Slot]) {
        let mut keys = self.lock();
        for slot in slots {
            keys.remove(Self::name(key, slot).as_str());
        }
    }

    /// Marks a take under way on `name` again, for a second try after a
    /// lost race: whether no other task has started one meanwhile.
    pub(crate) fn retake(&self, name: &str) -> bool {
        let mut keys = self.lock();
        match keys.get_mut(name) {
            Some(e) if !e.taking => {
                e.taking = true;
                true
            }
            _ => false,
        }
    }
}

impl Entry {
    /// Spends `cost` from the batch in hand, or else from the next one
    /// (which is then in hand): whether either held it.
    fn spend(&mut self, now: Nanos, cost: u32) -> bool {
        if self.spending.as_mut().is_some_and(|s| s.spend(now, cost)) {
            return true;
        }
        if self.next.as_mut().is_some_and(|s| s.spend(now, cost)) {
            self.spending = self.next.take();
            return true;
        }
        false
    }
}

/// The tokens the buckets hold at `now`, as this process last saw them
/// (an unseen bucket may be full).
pub(crate) fn available(limits: &[Limit], seen: &[Option<Nanos>], now: Nanos) -> u32 {
    limits
        .iter()
        .zip(seen)
        .map(|(limit, seen)| {
            seen.map_or(limit.quota().limit(), |tat| {
                limit.quota().available(tat, now)
            })
        })
        .min()
        .unwrap_or(0)
}

/// Whether `auto` may batch a key of `limits` for its rate alone, before
/// any throttle: half the smallest limit holds the smallest batch. (Most
/// policies cannot: they pay nothing for batches.)
#[inline]
pub(crate) fn batched_for_rate(limits: &[Limit]) -> bool {
    let most = limits.iter().map(|l| l.quota().limit()).min().unwrap_or(0);
    most / 2 >= MIN_AUTO_BATCH
}

/// The fewest tokens a batch of `size` is taken with, for a request of
/// `cost`: half the batch, or what the buckets refill in 100 ms if that is
/// less, and at least the cost. Waiting for half a batch keeps a saturated
/// key's writes to a few per batch; never waiting longer than about 100 ms
/// of refill keeps a slow limit (100 an hour) from refusing for minutes
/// what it holds.
pub(crate) fn need(limits: &[Limit], cost: u32, size: u32) -> u32 {
    let refill = limits
        .iter()
        .map(|l| (WINDOW / l.quota().emission_interval().as_nanos().max(1) as u64) as u32)
        .min()
        .unwrap_or(0);
    cost.max(size.div_ceil(2).min(refill))
}

/// When the buckets, as this process last saw them, hold `need` tokens.
pub(crate) fn ready_at(limits: &[Limit], seen: &[Option<Nanos>], need: u32, now: Nanos) -> Nanos {
    limits
        .iter()
        .zip(seen)
        .filter_map(|(limit, seen)| seen.map(|tat| limit.quota().ready_at(tat, need)))
        .max()
        .unwrap_or(now)
        .max(now.saturating_add(1))
}

/// A take under way on one key: cleared when it ends, or when the task
/// taking is dropped midway.
pub(crate) struct Taking<'a> {
    batches: &'a Batches,
    name: String,
    done: bool,
}

impl<'a> Taking<'a> {
    pub(crate) fn new(batches: &'a Batches, name: String) -> Self {
        Self {
            batches,
            name,
            done: false,
        }
    }

    /// The batches the take is for.
    pub(crate) fn batches(&self) -> &'a Batches {
        self.batches
    }

    /// The key's name in them.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Ends the take with what it `took`; for the request's own take,
    /// the TATs its decision reports.
    pub(crate) fn finish(mut self, took: Took, now: Nanos) -> Option<[Nanos; MAX_LIMITS]> {
        self.done = true;
        let mut keys = self.batches.lock();
        let entry = keys.get_mut(self.name.as_str());
        let (mut set, own) = match took {
            Took::Batch(set, own) => (set, own),
            Took::Lost => {
                if let Some(e) = entry {
                    e.taking = false;
                }
                return None;
            }
        };
        let tats = match own {
            Some(cost) => set.spend(now, cost).then(|| set.tats(now)),
            None => None,
        };
        if let Some(e) = entry {
            e.taking = false;
            if e.spending.as_ref().is_some_and(|s| s.left(now) > 0) {
                e.next = Some(set);
            } else {
                e.spending = Some(set);
            }
        }
        tats
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Some(e) = self.batches.lock().get_mut(self.name.as_str())
        {
            e.taking = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::key::Kind;
    use crate::policy::Policy;

    const NOW: Nanos = 1_700_000_000_000_000_000;

    fn limits(spec: &str) -> Box<[Limit]> {
        Policy::new("hot", Kind::IP, &[spec.parse().unwrap()])
            .unwrap()
            .limits()
            .into()
    }

    /// The stages of a plan, one key: cold (decided as any request), hot
    /// (a batch taken, then spent with no call), another task taking
    /// (refused for about a call), throttled (refused for the hold).
    #[test]
    fn a_key_warms_into_batches() {
        let limits = limits("1000/s");
        let batches = Batches::default();
        let plan = |now, throttled_at: Option<Nanos>| {
            batches.plan(
                "ip#a",
                Batching::Auto,
                &limits,
                1,
                now,
                &[None],
                throttled_at,
            )
        };
        // Cold: the first 19 in 100 ms are decided one write each.
        for i in 0..19 {
            assert_eq!(plan(NOW + i * 100_000, None), Plan::Plain, "request {i}");
        }
        // The 20th in 100 ms: a batch of what was asked.
        assert_eq!(plan(NOW + 9_900_000, None), Plan::Take(20));
        // While it is taken, others wait for about a call.
        assert_eq!(
            plan(NOW + 9_950_000, None),
            Plan::Wait {
                until: NOW + 9_950_000 + TAKING_WAIT,
                held: false
            }
        );
        // Throttled: refused for the hold.
        assert_eq!(
            plan(NOW + 9_960_000, Some(NOW + 10_000_000 - BATCH_HOLD)),
            Plan::Wait {
                until: NOW + 10_000_000,
                held: true
            }
        );
    }

    /// Requests make a key hot, not tokens: ten large messages in 100 ms
    /// are ten writes, decided one by one.
    #[test]
    fn tokens_alone_do_not_make_a_key_hot() {
        let limits = limits("1000/s");
        let batches = Batches::default();
        for i in 0..10 {
            let plan = batches.plan("ip#a", Batching::Auto, &limits, 100, NOW + i, &[None], None);
            assert_eq!(plan, Plan::Plain, "request {i}");
        }
    }

    /// A fixed batch: every key, from its first request; a batch in hand
    /// is spent with no call, and the next is taken when half is gone.
    #[test]
    fn a_fixed_batch_is_spent_then_taken_ahead() {
        let limits = limits("100/s");
        let batches = Batches::default();
        let fixed = Batching::Fixed(NonZeroU32::new(10).unwrap());
        let plan = |now| batches.plan("ip#a", fixed, &limits, 1, now, &[None], None);
        assert_eq!(plan(NOW), Plan::Take(10));
        let quota = limits[0].quota();
        let ops = [Op::new(limits[0].slot(), quota.step(NOW, 10).unwrap())];
        let (_, after) = ops[0].step.apply(0);
        let taking = Taking::new(&batches, "ip#a".to_owned());
        let tats = taking.finish(
            Took::Batch(Set::taken(&limits, &ops, &[after]), Some(1)),
            NOW,
        );
        assert!(tats.is_some(), "the request is spent from its own batch");
        // Four more with no call, then the one that leaves four asks for
        // the next batch.
        for i in 1..=4 {
            assert!(
                matches!(plan(NOW + i), Plan::Spent { next: None, .. }),
                "{i}"
            );
        }
        assert!(matches!(plan(NOW + 5), Plan::Spent { next: Some(10), .. }));
    }
}
