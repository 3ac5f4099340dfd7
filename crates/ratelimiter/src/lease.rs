//! Caps on open connections: a seat per connection, held as a lease.
//!
//! A cap policy (`concurrent = N`) admits at most N holders per key at a
//! time. Each admitted holder (a WebSocket connection) takes a [`Lease`]:
//! its id and the instant it connected, kept in the key's item beside the
//! GCRA buckets, so that a `$connect` that also counts a rate on the same
//! identifier takes both in one store call. Releasing gives the seat back.
//!
//! A release can be lost (API Gateway sends `$disconnect` on a best-effort
//! basis), so a lease also ends by itself [`LEASE_LIFETIME`] after its
//! connection started: API Gateway closes every connection after two hours,
//! and the margin covers clocks that disagree. A store counts only the
//! leases that have not ended ([`Lease::live_at`]); which ones a store
//! forgets, and when, changes no decision.
//!
//! Invariants, checked by the conformance tests on every store:
//! - a lease is taken only if fewer than N live leases other than its own
//!   are held, atomically with the request's other steps on the same item;
//! - taking a lease its holder already has takes no second seat;
//! - N + k holders racing for one key: exactly N are admitted.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::gcra::{Decision, Nanos};
use crate::key::Slot;

/// How long a lease lasts when nothing releases it: API Gateway's maximum
/// connection duration (2 hours) and five minutes for clocks that
/// disagree and a `$disconnect` that is late.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(2 * 3600 + 5 * 60);

/// How far in the future a lease's start may be: the clock of whoever
/// stamped the connection (API Gateway) may run ahead of this process's.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(60);

/// The `Retry-After` of a full cap, in seconds. A seat frees when a
/// connection closes, which nothing predicts; a client that comes back
/// after half a minute finds the seat of a tab closed meanwhile, and a
/// client that retries in a loop spends at most two connection attempts a
/// minute (each still counted by the rate checks) on a cap that stays full.
pub const CAP_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The most seats a cap may have. Its leases live in one item, and
/// DynamoDB bills a write by the item's size (1 KB per write unit): a full
/// cap of this many takes about 35 KB, so 35 units for every write to the
/// item. Larger groups are better capped per smaller key.
pub const MAX_CONCURRENT: u32 = 1000;

/// The longest holder id a lease takes, in bytes (API Gateway's connection
/// ids are 16).
pub const MAX_HOLDER_LEN: usize = 128;

/// A cap: at most `concurrent` live leases per key, kept under `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cap {
    concurrent: NonZeroU32,
    slot: Slot,
}

impl Cap {
    /// A cap of `concurrent` seats, its leases kept under `slot`.
    pub fn new(concurrent: NonZeroU32, slot: Slot) -> Self {
        Self { concurrent, slot }
    }

    /// How many holders the cap admits at a time.
    #[inline]
    pub fn concurrent(&self) -> u32 {
        self.concurrent.get()
    }

    /// Where the store keeps the cap's leases in the key's item.
    #[inline]
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// The decision on `seats`, the store's answer for a lease on this cap.
    pub(crate) fn decision(&self, seats: Seats, allowed: bool) -> Decision {
        Decision {
            allowed,
            limit: self.concurrent(),
            window: Duration::ZERO,
            remaining: self.concurrent().saturating_sub(seats.held),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                CAP_RETRY_AFTER
            },
            reset_after: Duration::ZERO,
        }
    }
}

/// Who holds a seat (a connection id) and since when (milliseconds since
/// the Unix epoch: API Gateway's `connectedAt`), as a request names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder<'a> {
    /// The holder's id: a connection id.
    pub id: &'a str,
    /// When the holder connected, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl<'a> Holder<'a> {
    /// The holder `id`, connected at `since_ms`.
    pub fn new(id: &'a str, since_ms: u64) -> Self {
        Self { id, since_ms }
    }
}

/// What is wrong with a [`Holder`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HolderError {
    /// The id is empty or longer than [`MAX_HOLDER_LEN`] bytes.
    #[error("a holder id must be 1 to {MAX_HOLDER_LEN} bytes, got {0}")]
    Id(usize),
    /// The start is too far from now to be a live connection's.
    #[error("the holder connected at {since_ms} ms since the epoch, {what}: not a live connection")]
    Since {
        /// The start given.
        since_ms: u64,
        /// How it is off.
        what: &'static str,
    },
}

/// One holder's seat under one cap, as a store takes or releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease<'a> {
    /// Where the cap's leases live in the item.
    pub slot: &'a Slot,
    /// The holder.
    pub holder: Holder<'a>,
    /// The cap's seats.
    pub concurrent: u32,
    /// The time of the request.
    pub now: Nanos,
}

impl<'a> Lease<'a> {
    /// `holder`'s lease under `cap` at `now`, if `holder` can be a live
    /// connection then.
    pub fn new(cap: &'a Cap, holder: Holder<'a>, now: Nanos) -> Result<Self, HolderError> {
        if holder.id.is_empty() || holder.id.len() > MAX_HOLDER_LEN {
            return Err(HolderError::Id(holder.id.len()));
        }
        let since = u128::from(holder.since_ms) * 1_000_000;
        let now_wide = u128::from(now);
        if since > now_wide + MAX_CLOCK_AHEAD.as_nanos() {
            return Err(HolderError::Since {
                since_ms: holder.since_ms,
                what: "more than a minute from now",
            });
        }
        if since + LEASE_LIFETIME.as_nanos() <= now_wide {
            return Err(HolderError::Since {
                since_ms: holder.since_ms,
                what: "longer ago than a lease lasts",
            });
        }
        Ok(Self {
            slot: cap.slot(),
            holder,
            concurrent: cap.concurrent(),
            now,
        })
    }

    /// A lease to release: no cap or time needed.
    pub fn to_release(slot: &'a Slot, holder: Holder<'a>) -> Self {
        Self {
            slot,
            holder,
            concurrent: 0,
            now: 0,
        }
    }

    /// How the store names the lease: `<since ms>|<id>`, the same string
    /// for taking and releasing it.
    pub fn member(&self) -> String {
        format!("{}|{}", self.holder.since_ms, self.holder.id)
    }

    /// When the lease ends by itself, in nanoseconds since the epoch.
    pub fn expires(&self) -> Nanos {
        expiry(self.holder.since_ms)
    }

    /// Whether a stored lease named `member` is still live at `now`; a
    /// member that is not a lease's name counts as live (stricter, never
    /// looser).
    pub fn live_at(member: &str, now: Nanos) -> bool {
        match member.split_once('|').map(|(ms, _)| ms.parse::<u64>()) {
            Some(Ok(since_ms)) => expiry(since_ms) > now,
            _ => true,
        }
    }

    /// The seats of a store whose live members are `members` (expired ones
    /// are skipped), and whether this lease is among them.
    pub fn seats<'m>(&self, members: impl IntoIterator<Item = &'m str>) -> Seats {
        let mine = self.member();
        let mut seats = Seats::default();
        for member in members {
            if member == mine {
                seats.mine = true;
                seats.held += 1;
            } else if Self::live_at(member, self.now) {
                seats.held += 1;
            }
        }
        seats
    }

    /// Whether a store holding `seats` (before this request) may give this
    /// lease its seat.
    #[inline]
    pub fn fits(&self, seats: Seats) -> bool {
        seats.mine || seats.held < self.concurrent
    }
}

fn expiry(since_ms: u64) -> Nanos {
    since_ms
        .saturating_mul(1_000_000)
        .saturating_add(LEASE_LIFETIME.as_nanos() as Nanos)
}

/// A seat held under a cap, as read back from a store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seat {
    /// The holder's id: a connection id.
    pub id: String,
    /// When the holder connected, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl Seat {
    /// The seat a stored member names (`<since ms>|<id>`), if it names one.
    pub fn from_member(member: &str) -> Option<Self> {
        let (since_ms, id) = member.split_once('|')?;
        Some(Self {
            id: id.to_owned(),
            since_ms: since_ms.parse().ok()?,
        })
    }

    /// The holder of this seat, to release it.
    pub fn holder(&self) -> Holder<'_> {
        Holder::new(&self.id, self.since_ms)
    }
}

/// A cap's seats as a store found them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seats {
    /// Live leases held: after the request when its lease was taken,
    /// before it otherwise.
    pub held: u32,
    /// Whether the request's own lease is among them.
    pub mine: bool,
    /// Whether this request took the seat, which its holder did not hold
    /// before: only such a seat is given back when the request is refused
    /// as a whole (a holder asking again keeps the seat it had).
    pub fresh: bool,
}

impl Seats {
    /// The seats after `lease` took its seat in these (found before it).
    #[must_use]
    pub fn taking(self) -> Self {
        if self.mine {
            Self {
                fresh: false,
                ..self
            }
        } else {
            Self {
                held: self.held + 1,
                mine: true,
                fresh: true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn cap(n: u32) -> Cap {
        Cap::new(NonZeroU32::new(n).unwrap(), Slot::new("open"))
    }

    #[test]
    fn a_lease_lives_past_api_gateways_longest_connection() {
        let now = 1_700_000_000_000 * MS;
        let cap = cap(2);
        let lease = Lease::new(&cap, Holder::new("abc", 1_700_000_000_000), now).unwrap();
        assert_eq!(lease.member(), "1700000000000|abc");
        let two_hours = 2 * 3600 * 1000 * MS;
        assert!(Lease::live_at(&lease.member(), now + two_hours));
        assert!(!Lease::live_at(
            &lease.member(),
            now + LEASE_LIFETIME.as_nanos() as Nanos
        ));
        // Not a lease's name: counted, never ignored.
        assert!(Lease::live_at("junk", u64::MAX));
    }

    #[test]
    fn seats_skip_expired_leases_and_find_their_own() {
        let now = 1_700_000_000_000 * MS;
        let cap = cap(2);
        let lease = Lease::new(&cap, Holder::new("me", 1_700_000_000_000), now).unwrap();
        let old = format!("{}|gone", 1_700_000_000_000_u64 - 3 * 3600 * 1000);
        let seats = lease.seats(["1699999999000|other", old.as_str()]);
        let found = Seats {
            held: 1,
            mine: false,
            fresh: false,
        };
        assert_eq!(seats, found);
        assert!(lease.fits(seats));
        let full = lease.seats(["1699999999000|a", "1699999999001|b"]);
        assert!(!lease.fits(full));
        let again = lease.seats(["1699999999000|a", "1700000000000|me"]);
        assert!(lease.fits(again), "a holder keeps its own seat");
        assert_eq!(again.taking(), again, "asked again: not fresh");
        let taken = Seats {
            held: 2,
            mine: true,
            fresh: true,
        };
        assert_eq!(seats.taking(), taken);
    }

    #[test]
    fn holders_that_cannot_be_live_connections_are_refused() {
        let now = 1_700_000_000_000 * MS;
        let cap = cap(1);
        assert_eq!(
            Lease::new(&cap, Holder::new("", 1_700_000_000_000), now),
            Err(HolderError::Id(0))
        );
        let long = "x".repeat(MAX_HOLDER_LEN + 1);
        assert!(Lease::new(&cap, Holder::new(&long, 1_700_000_000_000), now).is_err());
        assert!(Lease::new(&cap, Holder::new("a", 1_700_000_120_000), now).is_err());
        assert!(Lease::new(&cap, Holder::new("a", 1_699_990_000_000), now).is_err());
        assert!(Lease::new(&cap, Holder::new("a", 1_700_000_030_000), now).is_ok());
    }
}
