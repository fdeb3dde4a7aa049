//! Time as a port: library code never reads the wall clock itself.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A point in time, UTC.
pub type Timestamp = DateTime<Utc>;

/// The source of "now" for everything in AIOS.
///
/// Contract: `now` never fails and, for one clock, never goes backwards between two calls
/// that are ordered by a happens-before relation. Hosts supply [`SystemClock`] in production
/// and [`ManualClock`] in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// The current time as nanoseconds since the Unix epoch, saturating outside the years
    /// 1677 to 2262: the same instant as [`Clock::now`], for hot paths that only compare
    /// times (budget reservation expiry). The default converts `now`; clocks that hold the
    /// number already return it directly.
    fn now_nanos(&self) -> i64 {
        to_nanos(self.now())
    }
}

/// `t` as nanoseconds since the Unix epoch, saturating outside the representable range.
pub fn to_nanos(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// The host's wall clock. The only place in AIOS that reads it; the library only ever calls it
/// through the [`Clock`] trait when the host chose it.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }

    fn now_nanos(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_nanos())
                .map(|n| -n)
                .unwrap_or(i64::MIN),
        }
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use aios_core::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::at_unix_millis(1_700_000_000_000);
/// let before = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!((clock.now() - before).num_seconds(), 5);
/// ```
///
/// The time is kept as nanoseconds since the Unix epoch in one atomic, so reading it costs no
/// lock (ledgers read the clock on every reservation); it covers the years 1677 to 2262, and
/// a time outside is clamped to that range.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock starting at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(to_nanos(start))),
        }
    }

    /// A manual clock starting at the given milliseconds since the Unix epoch (clamped to the
    /// epoch if out of range).
    pub fn at_unix_millis(millis: i64) -> Self {
        Self::new(DateTime::from_timestamp_millis(millis).unwrap_or_default())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let delta = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(delta))
            });
    }

    /// Sets the clock to `to`. Setting it backwards is allowed (to test how callers cope).
    pub fn set(&self, to: Timestamp) {
        self.now.store(to_nanos(to), Ordering::Release);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::at_unix_millis(1_767_225_600_000) // 2026-01-01T00:00:00Z
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        DateTime::from_timestamp_nanos(self.now.load(Ordering::Acquire))
    }

    fn now_nanos(&self) -> i64 {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod now_nanos_tests {
    use super::*;

    #[test]
    fn now_nanos_is_now_in_nanoseconds() {
        let clock = ManualClock::default();
        clock.advance(std::time::Duration::from_nanos(1_234));
        assert_eq!(clock.now_nanos(), to_nanos(clock.now()));
        let system = SystemClock;
        let (a, b, c) = (
            to_nanos(system.now()),
            system.now_nanos(),
            to_nanos(system.now()),
        );
        assert!(a <= b && b <= c);
    }
}
