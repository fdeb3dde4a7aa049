//! The model-call scheduler: one queue per backend shared by every agent of an orchestrator.
//!
//! Each backend ([`ModelId`]) may be given [`BackendLimits`]: at most so many requests in
//! flight, so many requests and so many tokens per minute (token buckets refilled from the
//! injected [`Clock`]). A caller awaits a [`Permit`] before it calls the backend and drops it
//! after; nothing is spawned, and the only waiting on time goes through the [`Timer`] port.
//!
//! Order: strict [`Priority`] first (interactive before normal before batch), then fair
//! sharing between flows ([`FlowId`], one per run and agent) by start-time fair queuing: a
//! request's tag is the later of the queue's virtual time and the end of its flow's previous
//! request, plus its token cost divided by its weight; the smallest tag is served first. A
//! busy flow's backlog therefore never delays a quiet flow by more than one request per busy
//! flow. The head of a queue is never overtaken: a large request waits for its tokens rather
//! than being starved by small ones.
//!
//! Tokens are charged as estimated before the call ([`PermitRequest::estimated_tokens`],
//! from [`ModelRouter::estimate`](crate::ModelRouter::estimate)) and corrected by the actual
//! usage afterwards ([`Permit::finish`]). A rate-limit answer
//! ([`ModelError::RateLimited`]) pauses that backend's whole queue until its `retry_after`
//! (or [`SchedulerConfig::default_pause`]), instead of every caller retrying on its own.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use aios_core::{ManualTimer, ModelId};
//! use aios_orchestrator::{BackendLimits, FlowId, ModelScheduler, PermitRequest, SchedulerConfig};
//! use futures::FutureExt;
//!
//! let timer = ManualTimer::default();
//! let config = SchedulerConfig::new()
//!     .backend("gpt-x", BackendLimits::new().max_concurrent(1).requests_per_minute(60));
//! let scheduler = ModelScheduler::new(config, Arc::new(timer.clock().clone()), Arc::new(timer.clone()));
//! let ask = |flow| PermitRequest::new(ModelId::new("gpt-x"), FlowId::new(flow));
//!
//! let first = scheduler.acquire(ask(1)).now_or_never().unwrap();
//! let mut second = Box::pin(scheduler.acquire(ask(2)));
//! assert!((&mut second).now_or_never().is_none()); // one at a time
//! drop(first);
//! timer.advance(Duration::from_secs(1)); // and one a second
//! let second = second.now_or_never().unwrap();
//! assert_eq!(second.waited(), Duration::from_secs(1));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aios_core::{
    AgentId, Clock, ModelError, ModelId, ModelResponse, RunId, Sleep, Timer, Timestamp,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How urgent a model call is. Higher priorities are always served first on a backend.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A human is waiting (served first).
    Interactive,
    /// The default.
    #[default]
    Normal,
    /// Background work (served last).
    Batch,
}

/// The limits of one backend. `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackendLimits {
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Requests started per minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt and output) per minute.
    pub tokens_per_minute: Option<u64>,
    /// How much of the per-minute allowances may be spent at once: the buckets hold this
    /// much time's worth of refill (default one second, as providers enforce per-minute
    /// limits in short intervals). A request larger than a full bucket waits for a full
    /// bucket and leaves it in debt.
    pub burst: Duration,
}

impl Default for BackendLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendLimits {
    /// No limits, a burst of one second.
    pub fn new() -> Self {
        Self {
            max_concurrent: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            burst: Duration::from_secs(1),
        }
    }

    /// At most `n` requests in flight (at least one).
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = Some(n.max(1));
        self
    }

    /// At most `n` requests started per minute.
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.requests_per_minute = Some(n.max(1));
        self
    }

    /// At most `n` tokens per minute.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.tokens_per_minute = Some(n.max(1));
        self
    }

    /// Sets the burst window (at least one millisecond).
    pub fn burst(mut self, window: Duration) -> Self {
        self.burst = window.max(Duration::from_millis(1));
        self
    }
}

/// The configuration of a [`ModelScheduler`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Limits per backend.
    pub backends: BTreeMap<ModelId, BackendLimits>,
    /// Limits of a backend not listed (default: none).
    pub default_limits: BackendLimits,
    /// How long a rate-limit answer without a `retry_after` pauses the backend (default one
    /// second).
    pub default_pause: Option<Duration>,
}

impl SchedulerConfig {
    /// No backend limited.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits `model`.
    pub fn backend(mut self, model: impl Into<ModelId>, limits: BackendLimits) -> Self {
        self.backends.insert(model.into(), limits);
        self
    }

    /// Limits every backend not listed.
    pub fn default_limits(mut self, limits: BackendLimits) -> Self {
        self.default_limits = limits;
        self
    }

    fn limits(&self, model: &ModelId) -> BackendLimits {
        self.backends
            .get(model)
            .copied()
            .unwrap_or(self.default_limits)
    }

    fn pause(&self) -> Duration {
        self.default_pause.unwrap_or(Duration::from_secs(1))
    }
}

/// The unit of fair sharing: requests of one flow queue behind each other, flows share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowId(u64);

impl FlowId {
    /// A flow with this number.
    pub fn new(id: u64) -> Self {
        Self(id)
    }

    /// The flow of `agent` in `run` (what the orchestrator uses).
    pub fn of(run: RunId, agent: AgentId) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        run.hash(&mut h);
        agent.hash(&mut h);
        Self(h.finish())
    }
}

/// What a caller asks the scheduler for.
#[derive(Debug, Clone, PartialEq)]
pub struct PermitRequest {
    /// The backend.
    pub model: ModelId,
    /// Whose request it is.
    pub flow: FlowId,
    /// How urgent it is.
    pub priority: Priority,
    /// The flow's share relative to others (default 1; 2 gets twice the tokens).
    pub weight: u32,
    /// Tokens the call is estimated to use (prompt plus output allowance).
    pub estimated_tokens: u64,
}

impl PermitRequest {
    /// A normal-priority request of weight 1 estimated at zero tokens.
    pub fn new(model: ModelId, flow: FlowId) -> Self {
        Self {
            model,
            flow,
            priority: Priority::Normal,
            weight: 1,
            estimated_tokens: 0,
        }
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the weight (at least 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// Sets the token estimate.
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.estimated_tokens = tokens;
        self
    }
}

/// What the scheduler knows of one backend right now.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStats {
    /// Requests holding a permit.
    pub in_flight: u32,
    /// Requests waiting.
    pub queued: usize,
    /// Rate-limit answers reported so far.
    pub rate_limited: u64,
    /// Until when the queue is paused by a rate-limit answer.
    pub paused_until: Option<Timestamp>,
    /// The fraction of the configured per-minute rates in force (1 until a rate-limit
    /// answer slows the backend down).
    pub rate_scale: f64,
}

const NANOS_PER_MINUTE: f64 = 60e9;
/// Fixed-point scale of virtual time (tags are cost * SCALE / weight).
const SCALE: u64 = 1 << 10;

/// A token bucket over nanoseconds.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    level: f64,
    capacity: f64,
    per_nano: f64,
    at: i64,
    /// The configured rate and capacity, before any slowing down.
    base_per_nano: f64,
    base_capacity: f64,
}

impl Bucket {
    pub(crate) fn new(per_minute: f64, burst: Duration, now: i64) -> Self {
        let per_nano = per_minute / NANOS_PER_MINUTE;
        let capacity = (per_nano * burst.as_nanos() as f64).max(1.0);
        Self {
            level: capacity,
            capacity,
            per_nano,
            at: now,
            base_per_nano: per_nano,
            base_capacity: capacity,
        }
    }

    /// Runs the bucket at `scale` times its configured rate and capacity.
    fn set_scale(&mut self, scale: f64) {
        self.per_nano = self.base_per_nano * scale;
        self.capacity = (self.base_capacity * scale).max(1.0);
        self.level = self.level.min(self.capacity);
    }

    pub(crate) fn refill(&mut self, now: i64) {
        if now > self.at {
            self.level = (self.level + (now - self.at) as f64 * self.per_nano).min(self.capacity);
            self.at = now;
        }
    }

    /// What must be in the bucket to take `cost`: the cost, or a full bucket for a cost
    /// larger than the bucket.
    fn need(&self, cost: f64) -> f64 {
        cost.min(self.capacity)
    }

    pub(crate) fn ready(&self, cost: f64) -> bool {
        self.level + 1e-9 >= self.need(cost)
    }

    /// When `cost` can be taken (after a refill at `self.at`).
    pub(crate) fn ready_at(&self, cost: f64) -> i64 {
        let missing = self.need(cost) - self.level;
        if missing <= 0.0 {
            self.at
        } else {
            self.at
                .saturating_add((missing / self.per_nano).ceil() as i64)
                .saturating_add(1)
        }
    }

    pub(crate) fn adjust(&mut self, delta: f64) {
        self.level = (self.level + delta).min(self.capacity);
    }
}

#[derive(Debug)]
struct Waiter {
    waker: Option<Waker>,
    /// The time the waiter's own sleep ends, when it is the one keeping time.
    sleeping_until: Option<i64>,
    tokens: u64,
    key: (Priority, u64, u64),
    /// Set when the waiter is granted: when.
    granted_at: Option<i64>,
}

#[derive(Debug)]
struct Backend {
    limits: BackendLimits,
    in_flight: u32,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: i64,
    vtime: u64,
    flows: HashMap<FlowId, u64>,
    queue: BTreeMap<(Priority, u64, u64), u64>,
    waiters: HashMap<u64, Waiter>,
    rate_limited: u64,
    /// The fraction of the configured per-minute rates in force (see [`SLOW_DOWN`]).
    scale: f64,
    /// Per granted call, the least room its token bucket has had below capacity since the
    /// grant: the most of its estimate's excess a refund may give back (see
    /// [`Backend::release`]).
    headroom: HashMap<u64, f64>,
}

/// What a rate-limit answer multiplies the per-minute rates by: limits configured too high
/// are learnt (down to [`MIN_SCALE`] of the configured rates).
const SLOW_DOWN: f64 = 0.9;
/// The lowest fraction of the configured rates a backend is slowed to.
const MIN_SCALE: f64 = 0.1;
/// What each successful call gives back, as a fraction of the configured rates (so about
/// 50 calls undo one slow-down: additive increase, multiplicative decrease).
const RECOVER: f64 = 0.002;

impl Backend {
    fn new(limits: BackendLimits, now: i64) -> Self {
        Self {
            limits,
            in_flight: 0,
            requests: limits
                .requests_per_minute
                .map(|n| Bucket::new(f64::from(n), limits.burst, now)),
            tokens: limits
                .tokens_per_minute
                .map(|n| Bucket::new(n as f64, limits.burst, now)),
            paused_until: i64::MIN,
            vtime: 0,
            flows: HashMap::new(),
            queue: BTreeMap::new(),
            waiters: HashMap::new(),
            rate_limited: 0,
            scale: 1.0,
            headroom: HashMap::new(),
        }
    }

    fn set_scale(&mut self, scale: f64) {
        self.scale = scale.clamp(MIN_SCALE, 1.0);
        let s = self.scale;
        for b in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            b.set_scale(s);
        }
    }

    fn enqueue(&mut self, id: u64, request: &PermitRequest) {
        let cost = request.estimated_tokens.saturating_add(1);
        let finish = self.flows.get(&request.flow).copied().unwrap_or(0);
        let start = finish.max(self.vtime);
        let end = start.saturating_add(cost.saturating_mul(SCALE) / u64::from(request.weight));
        self.flows.insert(request.flow, end);
        let key = (request.priority, start, id);
        self.queue.insert(key, id);
        self.waiters.insert(
            id,
            Waiter {
                waker: None,
                sleeping_until: None,
                tokens: request.estimated_tokens,
                key,
                granted_at: None,
            },
        );
        if self.flows.len() > 2 * self.waiters.len() + 64 {
            // a flow whose last request ends before the virtual time is as new
            let vtime = self.vtime;
            self.flows.retain(|_, end| *end > vtime);
        }
    }

    fn refill(&mut self, now: i64) {
        for b in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            b.refill(now);
        }
    }

    /// Grants the head of the queue while the limits allow; returns the wakers to wake.
    /// The head left waiting on time is woken too, unless it is `caller` or already
    /// sleeping until then, so that one waiter always keeps time.
    fn dispatch(&mut self, now: i64, caller: Option<u64>, wake: &mut Vec<Waker>) {
        self.refill(now);
        while let Some((&key, &id)) = self.queue.iter().next() {
            if self.paused_until > now {
                break;
            }
            if self
                .limits
                .max_concurrent
                .is_some_and(|max| self.in_flight >= max)
            {
                return; // a release wakes the next
            }
            let Some(waiter) = self.waiters.get(&id) else {
                self.queue.remove(&key);
                continue;
            };
            let tokens = waiter.tokens as f64;
            let ready = self.requests.as_ref().map_or(true, |b| b.ready(1.0))
                && self.tokens.as_ref().map_or(true, |b| b.ready(tokens));
            if !ready {
                break;
            }
            if let Some(b) = &mut self.requests {
                b.adjust(-1.0);
            }
            if let Some(b) = &mut self.tokens {
                // a peak of the level: the calls in flight have this little room at most
                let room = b.capacity - b.level;
                for h in self.headroom.values_mut() {
                    *h = h.min(room);
                }
                b.adjust(-tokens);
                self.headroom.insert(id, f64::INFINITY);
            }
            self.in_flight += 1;
            self.vtime = self.vtime.max(key.1);
            self.queue.remove(&key);
            if let Some(w) = self.waiters.get_mut(&id) {
                w.granted_at = Some(now);
                if Some(id) != caller {
                    wake.extend(w.waker.take());
                }
            }
        }
        // the head waits on time: make sure someone sleeps until then
        if let (Some(at), Some(&head)) = (self.next_ready(), self.queue.values().next()) {
            if Some(head) != caller {
                if let Some(w) = self.waiters.get_mut(&head) {
                    if w.sleeping_until != Some(at) {
                        wake.extend(w.waker.take());
                    }
                }
            }
        }
    }

    /// When the head of the queue can go, if it waits on time (not on a release).
    fn next_ready(&self) -> Option<i64> {
        let (_, id) = self.queue.iter().next()?;
        let waiter = self.waiters.get(id)?;
        if self
            .limits
            .max_concurrent
            .is_some_and(|max| self.in_flight >= max)
        {
            return None;
        }
        let mut at = self.paused_until;
        if let Some(b) = &self.requests {
            at = at.max(b.ready_at(1.0));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.ready_at(waiter.tokens as f64));
        }
        Some(at)
    }

    /// Gives back a permit's slot and corrects its tokens by `refund` (negative: charge).
    /// Frees call `id`'s slot and gives back `refund`, what its estimate took beyond its
    /// usage, but no more than the least room the bucket has had since the grant.
    ///
    /// The backend counted the usage, the scheduler the estimate: while the backend's bucket
    /// was full it lost refill the scheduler's, lower by the excess, still gained. A full
    /// refund would then put the scheduler above the backend, which refuses the next call.
    fn release(&mut self, id: u64, refund: f64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let headroom = self.headroom.remove(&id);
        if let Some(b) = &mut self.tokens {
            let room = b.capacity - b.level;
            for h in self.headroom.values_mut() {
                *h = h.min(room);
            }
            let kept = headroom.unwrap_or(0.0).min(room).max(0.0);
            b.adjust(refund.min(kept).max(0.0));
        }
    }
}

#[derive(Debug)]
struct State {
    /// Backends in the order first asked for, found through `index`.
    backends: Vec<Backend>,
    index: HashMap<ModelId, usize>,
    next_id: u64,
}

struct Shared {
    config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    timer: Arc<dyn Timer>,
    state: Mutex<State>,
}

impl Shared {
    fn backend<'s>(&self, state: &'s mut State, model: &ModelId, now: i64) -> &'s mut Backend {
        // the id is cloned once per backend, not once per call
        let index = match state.index.get(model) {
            Some(&i) => i,
            None => {
                let i = state.backends.len();
                state
                    .backends
                    .push(Backend::new(self.config.limits(model), now));
                state.index.insert(model.clone(), i);
                i
            }
        };
        &mut state.backends[index]
    }
}

/// Shares model backends among every caller: see the [module](self) documentation.
///
/// Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct ModelScheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ModelScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelScheduler")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl ModelScheduler {
    /// A scheduler reading time from `clock` and waiting on `timer` (the orchestrator's own
    /// pair, when it is built by [`OrchestratorBuilder::model_scheduler`](crate::OrchestratorBuilder::model_scheduler)).
    pub fn new(config: SchedulerConfig, clock: Arc<dyn Clock>, timer: Arc<dyn Timer>) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                clock,
                timer,
                state: Mutex::new(State {
                    backends: Vec::new(),
                    index: HashMap::new(),
                    next_id: 0,
                }),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.config
    }

    /// Waits until `request` may call its backend. The permit holds a concurrency slot until
    /// it is dropped. Cancel-safe: dropping the future leaves the queue as if it had never
    /// been asked (a permit granted but not yet collected is given back).
    pub fn acquire(&self, request: PermitRequest) -> Acquire {
        let now = self.shared.clock.now_nanos();
        let mut wake = vec![];
        let id = {
            let mut state = self.shared.state.lock();
            let id = state.next_id;
            state.next_id += 1;
            let b = self.shared.backend(&mut state, &request.model, now);
            b.enqueue(id, &request);
            b.dispatch(now, Some(id), &mut wake);
            id
        };
        wake_all(wake);
        Acquire {
            shared: self.shared.clone(),
            model: request.model,
            id,
            enqueued_at: now,
            sleep: None,
            done: false,
        }
    }

    /// Pauses `model`'s queue: nothing is granted before `retry_after` from now (or the
    /// configured default pause), the request bucket is emptied, and the per-minute rates
    /// are slowed to 90 % of what they were (at least 10 % of the configured ones; each
    /// successful call wins back 0.2 %), so limits configured too high are learnt. What a
    /// [`ModelError::RateLimited`] answer does through [`Permit::finish`].
    pub fn rate_limited(&self, model: &ModelId, retry_after: Option<Duration>) {
        let now = self.shared.clock.now_nanos();
        let pause = retry_after.unwrap_or_else(|| self.shared.config.pause());
        let until = now.saturating_add(i64::try_from(pause.as_nanos()).unwrap_or(i64::MAX));
        let mut wake = vec![];
        {
            let mut state = self.shared.state.lock();
            let b = self.shared.backend(&mut state, model, now);
            b.rate_limited += 1;
            b.paused_until = b.paused_until.max(until);
            b.refill(now);
            let slower = b.scale * SLOW_DOWN;
            b.set_scale(slower);
            if let Some(r) = &mut b.requests {
                r.level = r.level.min(0.0);
            }
            b.dispatch(now, None, &mut wake);
        }
        wake_all(wake);
    }

    /// What the scheduler knows of `model`, if it was ever asked for it.
    pub fn stats(&self, model: &ModelId) -> Option<BackendStats> {
        let now = self.shared.clock.now_nanos();
        let state = self.shared.state.lock();
        let b = state.index.get(model).and_then(|&i| state.backends.get(i));
        b.map(|b| BackendStats {
            in_flight: b.in_flight,
            queued: b.queue.len(),
            rate_limited: b.rate_limited,
            paused_until: (b.paused_until > now)
                .then(|| chrono::DateTime::from_timestamp_nanos(b.paused_until)),
            rate_scale: b.scale,
        })
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// The future of [`ModelScheduler::acquire`].
pub struct Acquire {
    shared: Arc<Shared>,
    model: ModelId,
    id: u64,
    enqueued_at: i64,
    sleep: Option<(i64, Sleep)>,
    done: bool,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("model", &self.model)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        loop {
            let now = self.shared.clock.now_nanos();
            let mut wake = vec![];
            let outcome = {
                let mut state = self.shared.state.lock();
                let id = self.id;
                let b = self.shared.backend(&mut state, &self.model, now);
                b.dispatch(now, Some(id), &mut wake);
                let head = b.queue.values().next() == Some(&id);
                let next = if head { b.next_ready() } else { None };
                match b.waiters.get_mut(&id) {
                    Some(w) => match w.granted_at {
                        Some(at) => {
                            let tokens = w.tokens;
                            b.waiters.remove(&id);
                            Ok((at, tokens))
                        }
                        None => {
                            w.waker = Some(cx.waker().clone());
                            w.sleeping_until = next;
                            Err(next)
                        }
                    },
                    // only a bug could lose the entry; treat it as granted rather than hang
                    None => Ok((now, 0)),
                }
            };
            wake_all(wake);
            match outcome {
                Ok((at, tokens)) => {
                    self.done = true;
                    self.sleep = None;
                    return Poll::Ready(Permit {
                        shared: self.shared.clone(),
                        model: self.model.clone(),
                        id: self.id,
                        tokens,
                        waited: Duration::from_nanos(
                            u64::try_from(at.saturating_sub(self.enqueued_at)).unwrap_or(0),
                        ),
                        refund: None,
                    });
                }
                Err(None) => {
                    self.sleep = None;
                    return Poll::Pending;
                }
                Err(Some(at)) => {
                    if self.sleep.as_ref().map(|(t, _)| *t) != Some(at) {
                        let wait = Duration::from_nanos(
                            u64::try_from(at.saturating_sub(now)).unwrap_or(0),
                        );
                        self.sleep = Some((at, self.shared.timer.sleep(wait)));
                    }
                    let ready = match &mut self.sleep {
                        Some((_, sleep)) => sleep.as_mut().poll(cx).is_ready(),
                        None => false,
                    };
                    if !ready {
                        return Poll::Pending;
                    }
                    self.sleep = None;
                }
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = self.shared.clock.now_nanos();
        let mut wake = vec![];
        {
            let mut state = self.shared.state.lock();
            let b = self.shared.backend(&mut state, &self.model, now);
            if let Some(w) = b.waiters.remove(&self.id) {
                if w.granted_at.is_some() {
                    // granted but never collected: give everything back
                    b.release(self.id, w.tokens as f64);
                    if let Some(r) = &mut b.requests {
                        r.adjust(1.0);
                    }
                } else {
                    b.queue.remove(&w.key);
                }
            }
            b.dispatch(now, None, &mut wake);
        }
        wake_all(wake);
    }
}

/// The right to make one call to a backend; dropping it frees the slot for the next.
pub struct Permit {
    shared: Arc<Shared>,
    model: ModelId,
    /// The request's number within its backend.
    id: u64,
    tokens: u64,
    waited: Duration,
    refund: Option<f64>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("model", &self.model)
            .field("tokens", &self.tokens)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// How long the request waited in the queue.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The backend.
    pub fn model(&self) -> &ModelId {
        &self.model
    }

    /// Corrects the charge to the `actual` tokens the call used (the estimate was charged
    /// when the permit was granted), and counts the call as answered; applied when the
    /// permit is dropped.
    pub fn used(&mut self, actual: u64) {
        self.refund = Some(self.tokens as f64 - actual as f64);
    }

    /// Ends the call with its result: a response corrects the token charge to its usage, a
    /// rate-limit answer pauses the backend's queue ([`ModelScheduler::rate_limited`]); any
    /// other failure keeps the estimate charged. Frees the slot.
    pub fn finish(mut self, result: &Result<ModelResponse, ModelError>) {
        match result {
            Ok(response) => self.used(response.usage.total()),
            Err(ModelError::RateLimited { retry_after, .. }) => {
                ModelScheduler {
                    shared: self.shared.clone(),
                }
                .rate_limited(&self.model, *retry_after);
            }
            Err(_) => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = self.shared.clock.now_nanos();
        let mut wake = vec![];
        {
            let mut state = self.shared.state.lock();
            let b = self.shared.backend(&mut state, &self.model, now);
            b.refill(now);
            b.release(self.id, self.refund.unwrap_or(0.0));
            if self.refund.is_some() && b.scale < 1.0 {
                // a call that answered: win back a little of the rate
                let faster = b.scale + RECOVER;
                b.set_scale(faster);
            }
            b.dispatch(now, None, &mut wake);
        }
        wake_all(wake);
    }
}
