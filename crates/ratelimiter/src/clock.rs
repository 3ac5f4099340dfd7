//! Where decisions get their time from.
//!
//! The limiter never reads a global clock: it asks a [`Clock`], so tests can
//! freeze and move time exactly with a [`FakeClock`].

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::gcra::Nanos;

/// A source of wall-clock time, in nanoseconds since the Unix epoch.
///
/// Wall-clock, because several processes share one key's state through a
/// store and must agree on what a TAT means.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Nanos;
}

/// The system's real-time clock, read cheaply.
///
/// Reading the real-time clock through the kernel costs tens of
/// nanoseconds, more than the rest of an in-memory decision. So each thread
/// anchors the wall time once a second and measures the time since with the
/// CPU's time-stamp counter (through `quanta`, which falls back to the
/// operating system's monotonic clock where the counter is not reliable).
/// Between anchors the reading can drift from the system clock by the
/// counter's rate error, a few microseconds at most.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// How long a thread trusts its anchor before reading the wall clock again.
const REANCHOR_AFTER: u64 = 1_000_000_000;

thread_local! {
    static ANCHOR: Cell<Option<(quanta::Instant, Nanos)>> = const { Cell::new(None) };
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Nanos {
        let now = quanta::Instant::now();
        ANCHOR.with(|anchor| {
            if let Some((at, wall)) = anchor.get() {
                let elapsed = now.saturating_duration_since(at).as_nanos() as u64;
                if elapsed < REANCHOR_AFTER {
                    return wall + elapsed;
                }
            }
            let wall = wall_clock();
            anchor.set(Some((now, wall)));
            wall
        })
    }
}

/// The system's real-time clock, read through the kernel.
pub fn wall_clock() -> Nanos {
    // A clock before 1970 is a broken host; treat it as the epoch rather
    // than panic in a request path.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
    })
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use ratelimiter::clock::{Clock, FakeClock};
///
/// let clock = FakeClock::at_secs(1_700_000_000);
/// let other = clock.clone();
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(other.now(), 1_700_000_030_000_000_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A clock frozen at `now`.
    pub fn new(now: Nanos) -> Self {
        Self(Arc::new(AtomicU64::new(now)))
    }

    /// A clock frozen at `secs` seconds after the epoch.
    pub fn at_secs(secs: u64) -> Self {
        Self::new(secs * 1_000_000_000)
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Sets the time to `now`.
    pub fn set(&self, now: Nanos) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_the_wall_clock() {
        let before = wall_clock();
        let ours = SystemClock.now();
        let after = wall_clock();
        // Within a millisecond of the kernel's reading, whatever the anchor.
        assert!(
            ours + 1_000_000 >= before && ours <= after + 1_000_000,
            "{before} {ours} {after}"
        );
        assert!(ours > 1_577_836_800 * 1_000_000_000);
        std::thread::sleep(Duration::from_millis(20));
        let later = SystemClock.now();
        let elapsed = later - ours;
        assert!((19_000_000..1_000_000_000).contains(&elapsed), "{elapsed}");
        assert!(later.abs_diff(wall_clock()) < 1_000_000);
    }

    #[test]
    fn fake_clock_moves_only_when_told() {
        let clock = FakeClock::at_secs(10);
        assert_eq!(clock.now(), 10_000_000_000);
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.now(), 10_001_000_000);
        clock.set(5);
        assert_eq!(clock.now(), 5);
    }
}
