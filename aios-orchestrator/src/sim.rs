//! A simulated rate-limited model backend and a virtual-time driver (feature `testing`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use aios_core::{
    Clock, FinishReason, ManualTimer, ModelBackend, ModelError, ModelId, ModelRequest,
    ModelResponse, ScriptedModel, Timer, TokenUsage,
};
use async_trait::async_trait;
use parking_lot::Mutex;

use crate::scheduler::{BackendLimits, Bucket};

/// What a [`SimulatedBackend`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// Calls answered.
    pub served: u64,
    /// Calls refused with [`ModelError::RateLimited`].
    pub rate_limited: u64,
    /// The most calls in flight at once.
    pub max_in_flight: u32,
    /// When each served call started (nanoseconds of the clock) and the tokens it used.
    pub starts: Vec<(i64, u64)>,
}

#[derive(Debug)]
struct SimState {
    in_flight: u32,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    stats: SimStats,
}

/// A model backend that behaves like a provider with rate limits: at most
/// `max_concurrent` calls in flight, requests and tokens per minute as token buckets with the
/// limits' burst window (providers enforce per-minute limits in short intervals), tokens
/// counted at arrival as the prompt (four bytes a token) plus the output it is going to
/// produce. A call over a limit is answered at once with [`ModelError::RateLimited`]
/// carrying the time until the bucket holds enough (none for the concurrency limit). A call
/// within the limits takes `latency + per_output_token * output` on the timer.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    id: ModelId,
    clock: Arc<dyn Clock>,
    timer: Arc<dyn Timer>,
    limits: BackendLimits,
    latency: Duration,
    per_output_token: Duration,
    output_tokens: u64,
    count_refused: bool,
    state: Arc<Mutex<SimState>>,
}

impl SimulatedBackend {
    /// A backend `id` limited by `limits` on `clock` and `timer`, answering 100 output
    /// tokens after 500 ms.
    pub fn new(
        id: impl Into<ModelId>,
        limits: BackendLimits,
        clock: Arc<dyn Clock>,
        timer: Arc<dyn Timer>,
    ) -> Self {
        let now = clock.now_nanos();
        Self {
            id: id.into(),
            limits,
            latency: Duration::from_millis(500),
            per_output_token: Duration::ZERO,
            output_tokens: 100,
            count_refused: false,
            state: Arc::new(Mutex::new(SimState {
                in_flight: 0,
                requests: limits
                    .requests_per_minute
                    .map(|n| Bucket::new(f64::from(n), limits.burst, now)),
                tokens: limits
                    .tokens_per_minute
                    .map(|n| Bucket::new(n as f64, limits.burst, now)),
                stats: SimStats::default(),
            })),
            clock,
            timer,
        }
    }

    /// Sets the latency: `base` plus `per_output_token` for each output token.
    pub fn with_latency(mut self, base: Duration, per_output_token: Duration) -> Self {
        self.latency = base;
        self.per_output_token = per_output_token;
        self
    }

    /// Sets the output tokens of every answer.
    pub fn with_output_tokens(mut self, tokens: u64) -> Self {
        self.output_tokens = tokens;
        self
    }

    /// Counts refused calls against the request limit too (the request bucket may go into
    /// debt), as some providers document: "unsuccessful requests contribute to your
    /// per-minute limit". Off by default.
    pub fn with_refused_counted(mut self, counted: bool) -> Self {
        self.count_refused = counted;
        self
    }

    /// What it saw so far.
    pub fn stats(&self) -> SimStats {
        self.state.lock().stats.clone()
    }

    fn admit(&self, tokens: u64) -> Result<(), ModelError> {
        let now = self.clock.now_nanos();
        let mut s = self.state.lock();
        let count_refused = self.count_refused;
        let limited = |s: &mut SimState, retry_after| {
            s.stats.rate_limited += 1;
            if count_refused {
                if let Some(b) = &mut s.requests {
                    b.refill(now);
                    b.adjust(-1.0);
                }
            }
            Err(ModelError::RateLimited {
                model: self.id.clone(),
                retry_after,
            })
        };
        if self
            .limits
            .max_concurrent
            .is_some_and(|max| s.in_flight >= max)
        {
            return limited(&mut s, None);
        }
        let mut wait = 0i64;
        let state = &mut *s;
        for (b, cost) in [
            (&mut state.requests, 1.0),
            (&mut state.tokens, tokens as f64),
        ] {
            if let Some(b) = b {
                b.refill(now);
                if !b.ready(cost) {
                    wait = wait.max(b.ready_at(cost) - now);
                }
            }
        }
        if wait > 0 {
            return limited(
                &mut s,
                Some(Duration::from_nanos(u64::try_from(wait).unwrap_or(0))),
            );
        }
        if let Some(b) = &mut s.requests {
            b.adjust(-1.0);
        }
        if let Some(b) = &mut s.tokens {
            b.adjust(-(tokens as f64));
        }
        s.in_flight += 1;
        s.stats.max_in_flight = s.stats.max_in_flight.max(s.in_flight);
        s.stats.starts.push((now, tokens));
        Ok(())
    }
}

#[async_trait]
impl ModelBackend for SimulatedBackend {
    fn id(&self) -> &ModelId {
        &self.id
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let prompt: u64 = request
            .messages
            .iter()
            .map(|m| ScriptedModel::count_tokens(&m.content))
            .sum();
        let output = self.output_tokens;
        self.admit(prompt + output)?;
        let took = self.latency + self.per_output_token * u32::try_from(output).unwrap_or(0);
        self.timer.sleep(took).await;
        {
            let mut s = self.state.lock();
            s.in_flight -= 1;
            s.stats.served += 1;
        }
        Ok(ModelResponse {
            model: self.id.clone(),
            content: "x".repeat(usize::try_from(output * 4).unwrap_or(0)),
            tool_calls: vec![],
            usage: TokenUsage::new(prompt, output),
            cost: aios_core::Money::ZERO,
            confidence: None,
            finish: FinishReason::Stop,
        })
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `fut` to completion in virtual time: polls it while anything woke it, and when
/// nothing did, moves `timer` to its next deadline. Returns `None` when the future is stuck
/// (pending, and no sleep pending on the timer). Deterministic; no thread, no wall clock.
pub fn drive<F: Future>(timer: &ManualTimer, fut: F) -> Option<F::Output> {
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = std::task::Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        flag.0.store(false, Ordering::Release);
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        if !flag.0.load(Ordering::Acquire) && !timer.advance_to_next() {
            return None;
        }
    }
}
