//! Reliability as composable pieces: retry with backoff and seeded jitter, per-attempt and
//! overall timeouts through the [`Timer`] port, circuit breakers, and step limits.
//!
//! Each piece has the same shape as a tower layer, without `poll_ready`: a policy value and a
//! function that wraps an operation (`retry`), or a state machine consulted around a call
//! (`CircuitBreaker`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{timeout, Clock, SeededRng, Timer, Timestamp, Transience};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How to retry a failing call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub base_delay: Duration,
    /// Upper bound on any delay.
    pub max_delay: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Fraction of each delay drawn at random (0 = none, 1 = full jitter), from the seed.
    pub jitter: f64,
    /// Limit on one attempt, if any.
    pub attempt_timeout: Option<Duration>,
    /// Limit on all attempts and delays together, if any.
    pub overall_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
            attempt_timeout: Some(Duration::from_secs(60)),
            overall_timeout: Some(Duration::from_secs(300)),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no timeouts.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            attempt_timeout: None,
            overall_timeout: None,
            ..Self::default()
        }
    }

    /// The delay before attempt `attempt + 1` (after `attempt` failures), jittered by `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut SeededRng) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1) as i32);
        let raw = self.base_delay.as_secs_f64() * exp;
        let capped = raw.min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter + jitter * rng.next_f64();
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

/// Why a retried operation gave up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryError<E> {
    /// The last attempt's error (permanent, or the attempts ran out).
    #[error("failed after {attempts} attempt(s): {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: E,
    },
    /// An attempt timed out and no attempts were left.
    #[error("attempt {attempt} timed out after {limit:?}")]
    AttemptTimedOut {
        /// Which attempt.
        attempt: u32,
        /// The per-attempt limit.
        limit: Duration,
    },
    /// The overall deadline passed.
    #[error("gave up after the overall limit of {0:?}")]
    OverallTimedOut(Duration),
}

impl<E> RetryError<E> {
    /// The last attempt's own error, when it returned one (not when it timed out).
    pub fn last(&self) -> Option<&E> {
        match self {
            RetryError::Exhausted { last, .. } => Some(last),
            _ => None,
        }
    }
}

/// Runs `op` (given the 1-based attempt number) under `policy`: retries only errors that are
/// transient, waits with exponential backoff and jitter on `timer`, bounds each attempt and
/// the whole by the policy's timeouts. `on_attempt` observes each failed attempt.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    timer: &dyn Timer,
    rng: &mut SeededRng,
    mut on_failure: impl FnMut(u32, &RetryError<E>),
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Transience + Clone,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempts = async {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last_attempt = attempt >= policy.max_attempts.max(1);
            let outcome = match policy.attempt_timeout {
                Some(limit) => match timeout(timer, limit, op(attempt)).await {
                    Ok(r) => r.map_err(|last| RetryError::Exhausted {
                        attempts: attempt,
                        last,
                    }),
                    Err(_) => Err(RetryError::AttemptTimedOut { attempt, limit }),
                },
                None => op(attempt).await.map_err(|last| RetryError::Exhausted {
                    attempts: attempt,
                    last,
                }),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(err) => {
                    on_failure(attempt, &err);
                    let transient = match &err {
                        RetryError::Exhausted { last, .. } => last.is_transient(),
                        _ => true,
                    };
                    if !transient || last_attempt {
                        return Err(err);
                    }
                    timer.sleep(policy.delay(attempt, rng)).await;
                }
            }
        }
    };
    match policy.overall_timeout {
        Some(limit) => timeout(timer, limit, attempts)
            .await
            .unwrap_or(Err(RetryError::OverallTimedOut(limit))),
        None => attempts.await,
    }
}

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting one trial call through (half-open).
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the time given.
    Open {
        /// When a trial call will be let through.
        until: Timestamp,
    },
    /// One trial call is in flight; its outcome closes or reopens the breaker.
    HalfOpen,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures: u32,
}

/// A circuit breaker, timed by a [`Clock`]. Clones share state.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    clock: Arc<dyn Clock>,
    inner: Arc<Mutex<BreakerInner>>,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open until {until}")]
pub struct BreakerOpen {
    /// When a trial call will be let through.
    pub until: Timestamp,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            policy,
            clock,
            inner: Arc::new(Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures: 0,
            })),
        }
    }

    /// The current state (an open breaker whose time has passed reports `HalfOpen` only once
    /// a call is admitted).
    pub fn state(&self) -> BreakerState {
        self.inner.lock().state
    }

    /// Asks to make a call: `Ok` admits it (the caller must then report its outcome), `Err`
    /// refuses it.
    pub fn admit(&self) -> Result<(), BreakerOpen> {
        let mut inner = self.inner.lock();
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { until } => {
                if self.clock.now() >= until {
                    inner.state = BreakerState::HalfOpen;
                    Ok(())
                } else {
                    Err(BreakerOpen { until })
                }
            }
            BreakerState::HalfOpen => Err(BreakerOpen {
                until: self.clock.now() + chrono::Duration::milliseconds(1),
            }),
        }
    }

    /// Reports a successful call: closes the breaker.
    pub fn on_success(&self) {
        let mut inner = self.inner.lock();
        inner.failures = 0;
        inner.state = BreakerState::Closed;
    }

    /// Reports a failed call: opens the breaker at the threshold, or re-opens it after a failed
    /// trial.
    pub fn on_failure(&self) {
        let mut inner = self.inner.lock();
        inner.failures += 1;
        let open = matches!(inner.state, BreakerState::HalfOpen)
            || inner.failures >= self.policy.failure_threshold;
        if open {
            let d =
                chrono::Duration::from_std(self.policy.open_for).unwrap_or(chrono::Duration::MAX);
            let now = self.clock.now();
            inner.state = BreakerState::Open {
                until: now.checked_add_signed(d).unwrap_or(now),
            };
        }
    }
}

/// Breakers per named dependency (a connector or a model), created on first use.
#[derive(Debug, Clone)]
pub struct Breakers {
    policy: BreakerPolicy,
    clock: Arc<dyn Clock>,
    map: Arc<Mutex<HashMap<String, CircuitBreaker>>>,
}

impl Breakers {
    /// A registry creating breakers with `policy`.
    pub fn new(policy: BreakerPolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            policy,
            clock,
            map: Arc::default(),
        }
    }

    /// The breaker for `name`.
    pub fn get(&self, name: &str) -> CircuitBreaker {
        self.map
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| CircuitBreaker::new(self.policy, self.clock.clone()))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aios_core::{ManualClock, ManualTimer, ModelError, ModelId};
    use futures::FutureExt;

    fn unavailable() -> ModelError {
        ModelError::Unavailable {
            model: ModelId::new("m"),
            detail: "down".into(),
        }
    }

    #[test]
    fn retries_transient_errors_with_backoff_then_succeeds() {
        let timer = ManualTimer::default();
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let mut rng = SeededRng::new(1);
        let mut failures = vec![];
        let fut = retry(
            &policy,
            &timer,
            &mut rng,
            |a, _| failures.push(a),
            |attempt| async move {
                if attempt < 3 {
                    Err(unavailable())
                } else {
                    Ok(attempt)
                }
            },
        );
        let mut fut = Box::pin(fut);
        assert!((&mut fut).now_or_never().is_none());
        timer.advance(Duration::from_millis(200));
        assert!((&mut fut).now_or_never().is_none());
        timer.advance(Duration::from_millis(400));
        assert_eq!(fut.now_or_never(), Some(Ok(3)));
        assert_eq!(failures, vec![1, 2]);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let timer = ManualTimer::default();
        let mut rng = SeededRng::new(1);
        let mut calls = 0;
        let r: Result<(), _> = retry(
            &RetryPolicy::default(),
            &timer,
            &mut rng,
            |_, _| {},
            |_| {
                calls += 1;
                async {
                    Err(ModelError::InvalidRequest {
                        model: ModelId::new("m"),
                        detail: "bad".into(),
                    })
                }
            },
        )
        .now_or_never()
        .unwrap();
        assert!(matches!(r, Err(RetryError::Exhausted { attempts: 1, .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn attempt_timeout_then_give_up() {
        let timer = ManualTimer::default();
        let policy = RetryPolicy {
            max_attempts: 2,
            attempt_timeout: Some(Duration::from_secs(1)),
            base_delay: Duration::from_secs(1),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let mut rng = SeededRng::new(1);
        let mut fut = Box::pin(retry(
            &policy,
            &timer,
            &mut rng,
            |_, _| {},
            |_| futures::future::pending::<Result<(), ModelError>>(),
        ));
        for _ in 0..3 {
            assert!((&mut fut).now_or_never().is_none());
            timer.advance(Duration::from_secs(1));
        }
        assert!(matches!(
            fut.now_or_never(),
            Some(Err(RetryError::AttemptTimedOut { attempt: 2, .. }))
        ));
    }

    #[test]
    fn jitter_is_seeded_and_bounded() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        let (mut a, mut b) = (SeededRng::new(5), SeededRng::new(5));
        for attempt in 1..10 {
            let d = p.delay(attempt, &mut a);
            assert_eq!(d, p.delay(attempt, &mut b));
            assert!(d <= p.max_delay);
        }
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let clock = ManualClock::default();
        let b = CircuitBreaker::new(
            BreakerPolicy {
                failure_threshold: 2,
                open_for: Duration::from_secs(10),
            },
            Arc::new(clock.clone()),
        );
        assert!(b.admit().is_ok());
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.admit().is_err());
        clock.advance(Duration::from_secs(10));
        assert!(b.admit().is_ok(), "one trial after the open period");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "only one trial at a time");
        b.on_failure();
        assert!(
            matches!(b.state(), BreakerState::Open { .. }),
            "a failed trial reopens"
        );
        clock.advance(Duration::from_secs(10));
        assert!(b.admit().is_ok());
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
