//! Sleeping and timeouts as a port, so tests drive time by hand.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use parking_lot::Mutex;

use crate::{Clock, ManualClock, Timestamp};

/// The future a [`Timer`] returns; it completes once the duration has passed.
pub type Sleep = BoxFuture<'static, ()>;

/// Sleeps for the runtime. Retry backoff, timeouts and delay injection all go through it.
///
/// Contract: the returned future completes no earlier than `duration` after the call (in the
/// timer's notion of time) and is cancel-safe (dropping it has no effect).
pub trait Timer: Send + Sync + std::fmt::Debug {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The error of [`timeout`]: the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// Runs `fut` but gives up after `limit` on `timer`; the inner future is dropped on timeout.
///
/// ```
/// use aios_core::{timeout, ManualTimer};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let timer = ManualTimer::default();
/// let quick = timeout(&timer, Duration::from_secs(1), async { 7 }).await;
/// assert_eq!(quick, Ok(7));
/// # });
/// ```
pub async fn timeout<T, F>(timer: &dyn Timer, limit: Duration, fut: F) -> Result<T, Elapsed>
where
    F: Future<Output = T>,
{
    let fut = std::pin::pin!(fut);
    match futures::future::select(fut, timer.sleep(limit)).await {
        Either::Left((value, _)) => Ok(value),
        Either::Right(((), _)) => Err(Elapsed(limit)),
    }
}

#[derive(Debug, Default)]
struct Waiters {
    next_key: u64,
    waiting: BTreeMap<u64, (Timestamp, Waker)>,
}

#[derive(Debug)]
struct ManualInner {
    clock: ManualClock,
    waiters: Mutex<Waiters>,
}

/// A timer driven by a [`ManualClock`]: sleeps complete when the test advances the clock.
///
/// ```
/// use aios_core::{ManualTimer, Timer};
/// use futures::FutureExt;
/// use std::time::Duration;
/// let timer = ManualTimer::default();
/// let mut sleep = timer.sleep(Duration::from_secs(2));
/// assert!((&mut sleep).now_or_never().is_none());
/// timer.advance(Duration::from_secs(2));
/// assert!(sleep.now_or_never().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct ManualTimer {
    inner: Arc<ManualInner>,
}

impl ManualTimer {
    /// A timer over `clock`; advancing the timer advances the clock (and the other way round:
    /// a sleep completes whenever its deadline is reached, however the clock got there).
    pub fn new(clock: ManualClock) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                clock,
                waiters: Mutex::new(Waiters::default()),
            }),
        }
    }

    /// The clock this timer reads.
    pub fn clock(&self) -> &ManualClock {
        &self.inner.clock
    }

    /// Moves time forward by `by` and wakes every sleep that is due.
    pub fn advance(&self, by: Duration) {
        self.inner.clock.advance(by);
        self.wake_due();
    }

    /// Moves time to the earliest pending deadline (if any) and wakes what is due. Returns
    /// whether anything was pending.
    pub fn advance_to_next(&self) -> bool {
        let next = self
            .inner
            .waiters
            .lock()
            .waiting
            .values()
            .map(|(d, _)| *d)
            .min();
        match next {
            Some(deadline) => {
                if deadline > self.inner.clock.now() {
                    self.inner.clock.set(deadline);
                }
                self.wake_due();
                true
            }
            None => false,
        }
    }

    /// How many sleeps are currently waiting.
    pub fn pending(&self) -> usize {
        self.inner.waiters.lock().waiting.len()
    }

    fn wake_due(&self) {
        let now = self.inner.clock.now();
        let due: Vec<Waker> = {
            let mut w = self.inner.waiters.lock();
            let keys: Vec<u64> = w
                .waiting
                .iter()
                .filter(|(_, (d, _))| *d <= now)
                .map(|(k, _)| *k)
                .collect();
            keys.iter()
                .filter_map(|k| w.waiting.remove(k))
                .map(|(_, waker)| waker)
                .collect()
        };
        for waker in due {
            waker.wake();
        }
    }
}

impl Default for ManualTimer {
    fn default() -> Self {
        Self::new(ManualClock::default())
    }
}

struct ManualSleep {
    inner: Arc<ManualInner>,
    deadline: Timestamp,
    key: Option<u64>,
}

impl Future for ManualSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.clock.now() >= self.deadline {
            if let Some(key) = self.key.take() {
                self.inner.waiters.lock().waiting.remove(&key);
            }
            return Poll::Ready(());
        }
        let mut w = self.inner.waiters.lock();
        let key = match self.key {
            Some(k) => k,
            None => {
                let k = w.next_key;
                w.next_key += 1;
                k
            }
        };
        w.waiting.insert(key, (self.deadline, cx.waker().clone()));
        drop(w);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.inner.waiters.lock().waiting.remove(&key);
        }
    }
}

impl Timer for ManualTimer {
    fn sleep(&self, duration: Duration) -> Sleep {
        let now = self.inner.clock.now();
        let delta = chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        let deadline = now.checked_add_signed(delta).unwrap_or(Timestamp::MAX_UTC);
        Box::pin(ManualSleep {
            inner: self.inner.clone(),
            deadline,
            key: None,
        })
    }
}

/// A timer on real time that works under any executor (Tokio, `futures::executor`,
/// async-std...): one background thread, started on first use, wakes the sleepers
/// (`futures-timer`). The orchestrator's default, paired with [`SystemClock`](crate::SystemClock).
///
/// ```
/// use std::time::Duration;
/// use aios_core::{SystemTimer, Timer};
/// futures::executor::block_on(SystemTimer.sleep(Duration::from_millis(1)));
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTimer;

impl Timer for SystemTimer {
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(futures_timer::Delay::new(duration))
    }
}

/// A timer backed by `tokio::time` (feature `tokio`). Requires a Tokio runtime with the time
/// driver enabled.
#[cfg(feature = "tokio")]
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioTimer;

#[cfg(feature = "tokio")]
impl Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn timeout_fires_only_when_time_passes() {
        let timer = ManualTimer::default();
        let never = futures::future::pending::<()>();
        let mut t = Box::pin(timeout(&timer, Duration::from_millis(100), never));
        assert!((&mut t).now_or_never().is_none());
        timer.advance(Duration::from_millis(99));
        assert!((&mut t).now_or_never().is_none());
        timer.advance(Duration::from_millis(1));
        assert_eq!(
            t.now_or_never(),
            Some(Err(Elapsed(Duration::from_millis(100))))
        );
        assert_eq!(timer.pending(), 0);
    }

    #[test]
    fn advance_to_next_reaches_the_earliest_deadline() {
        let timer = ManualTimer::default();
        let mut a = timer.sleep(Duration::from_secs(3));
        let mut b = timer.sleep(Duration::from_secs(1));
        assert!((&mut a).now_or_never().is_none());
        assert!((&mut b).now_or_never().is_none());
        assert!(timer.advance_to_next());
        assert!((&mut b).now_or_never().is_some());
        assert!((&mut a).now_or_never().is_none());
        drop(a);
        assert_eq!(timer.pending(), 0);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test(start_paused = true)]
    async fn tokio_timer_sleeps() {
        let t = TokioTimer;
        assert_eq!(
            timeout(&t, Duration::from_secs(1), async { 1 }).await,
            Ok(1)
        );
        assert!(timeout(
            &t,
            Duration::from_millis(1),
            futures::future::pending::<()>()
        )
        .await
        .is_err());
    }
}
