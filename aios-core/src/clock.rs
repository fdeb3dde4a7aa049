//! Time as a port: library code never reads the wall clock itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

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
}

/// The host's wall clock. The only place in AIOS that reads it; the library only ever calls it
/// through the [`Clock`] trait when the host chose it.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
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
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A manual clock starting at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A manual clock starting at the given milliseconds since the Unix epoch (clamped to the
    /// epoch if out of range).
    pub fn at_unix_millis(millis: i64) -> Self {
        Self::new(DateTime::from_timestamp_millis(millis).unwrap_or_default())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let delta = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut now = self.now.lock();
        *now = now.checked_add_signed(delta).unwrap_or(*now);
    }

    /// Sets the clock to `to`. Setting it backwards is allowed (to test how callers cope).
    pub fn set(&self, to: Timestamp) {
        *self.now.lock() = to;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::at_unix_millis(1_767_225_600_000) // 2026-01-01T00:00:00Z
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock()
    }
}
