//! The model-call scheduler, in virtual time (a manual timer; no sleeps).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Clock, ManualTimer, Message, ModelBackend, ModelError, ModelId, ModelRequest, ScriptedModel,
};
use aios_orchestrator::testing::{drive, SimulatedBackend};
use aios_orchestrator::{
    BackendLimits, FlowId, ModelScheduler, PermitRequest, Priority, SchedulerConfig,
};
use futures::FutureExt;
use proptest::prelude::*;

const SECOND: i64 = 1_000_000_000;

fn setup(limits: BackendLimits) -> (ManualTimer, ModelScheduler) {
    let timer = ManualTimer::default();
    let scheduler = ModelScheduler::new(
        SchedulerConfig::new().backend("m", limits),
        Arc::new(timer.clock().clone()),
        Arc::new(timer.clone()),
    );
    (timer, scheduler)
}

fn sim(timer: &ManualTimer, limits: BackendLimits) -> SimulatedBackend {
    SimulatedBackend::new(
        "m",
        limits,
        Arc::new(timer.clock().clone()),
        Arc::new(timer.clone()),
    )
}

fn ask(flow: u64) -> PermitRequest {
    PermitRequest::new(ModelId::new("m"), FlowId::new(flow))
}

fn request(prompt_bytes: usize) -> ModelRequest {
    ModelRequest::new(vec![Message::user("p".repeat(prompt_bytes))])
}

/// One scheduled call: permit, call, finish; returns when it was granted (ns since start).
async fn call(
    scheduler: &ModelScheduler,
    backend: &dyn ModelBackend,
    ask: PermitRequest,
    req: &ModelRequest,
    start: i64,
) -> (i64, Result<aios_core::ModelResponse, ModelError>) {
    let permit = scheduler.acquire(ask).await;
    let granted = start + i64::try_from(permit.waited().as_nanos()).unwrap();
    let result = backend.complete(req).await;
    permit.finish(&result);
    (granted, result)
}

#[test]
fn the_concurrency_limit_holds() {
    let limits = BackendLimits::new().max_concurrent(3);
    let (timer, scheduler) = setup(limits);
    let backend = sim(&timer, limits);
    let req = request(40);
    let start = timer.clock().now_nanos();
    let calls = (0..20).map(|i| call(&scheduler, &backend, ask(i), &req, start));
    let results = drive(&timer, futures::future::join_all(calls)).unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    let stats = backend.stats();
    assert_eq!(stats.max_in_flight, 3);
    assert_eq!(stats.rate_limited, 0);
    assert_eq!(stats.served, 20);
    // 20 calls of 500 ms, 3 at a time: 7 rounds
    assert_eq!(timer.clock().now_nanos() - start, 7 * SECOND / 2);
}

#[test]
fn the_request_bucket_holds() {
    // 60 a minute with a one-second burst: one a second
    let limits = BackendLimits::new().requests_per_minute(60);
    let (timer, scheduler) = setup(limits);
    let backend = sim(&timer, limits);
    let req = request(8);
    let start = timer.clock().now_nanos();
    let calls = (0..10).map(|i| call(&scheduler, &backend, ask(i), &req, start));
    let results = drive(&timer, futures::future::join_all(calls)).unwrap();
    let mut granted: Vec<i64> = results.iter().map(|(g, _)| (g - start) / SECOND).collect();
    granted.sort();
    assert_eq!(granted, (0..10).collect::<Vec<_>>());
    assert_eq!(backend.stats().rate_limited, 0);
}

#[test]
fn the_token_bucket_holds_and_is_corrected_by_usage() {
    // 6,000 tokens a minute, a one-second burst: 100 tokens a second, a bucket of 100
    let limits = BackendLimits::new().tokens_per_minute(6_000);
    let (timer, scheduler) = setup(limits);
    let backend = sim(&timer, limits)
        .with_output_tokens(10)
        .with_latency(Duration::ZERO, Duration::ZERO);
    let req = request(40); // 10 prompt tokens + 10 output = 20 used
    let start = timer.clock().now_nanos();
    // estimated at 100 tokens each: without the correction one a second; with it, each call
    // gives back 80 tokens, so the next waits for 20 more (0.2 s)
    let calls = (0..5).map(|i| call(&scheduler, &backend, ask(i).tokens(100), &req, start));
    let results = drive(&timer, futures::future::join_all(calls)).unwrap();
    let mut granted: Vec<i64> = results
        .iter()
        .map(|(g, _)| (g - start) / (SECOND / 10))
        .collect();
    granted.sort();
    assert_eq!(granted, vec![0, 2, 4, 6, 8]);
    assert_eq!(backend.stats().rate_limited, 0);
}

#[test]
fn tokens_over_a_full_bucket_wait_for_a_full_bucket_and_leave_debt() {
    let limits = BackendLimits::new().tokens_per_minute(6_000);
    let (timer, scheduler) = setup(limits);
    let big = scheduler
        .acquire(ask(1).tokens(250))
        .now_or_never()
        .unwrap();
    drop(big); // no correction: the 250 stay charged, the bucket is at -150
    let mut next = Box::pin(scheduler.acquire(ask(2).tokens(100)));
    assert!((&mut next).now_or_never().is_none());
    timer.advance(Duration::from_millis(2_490));
    assert!((&mut next).now_or_never().is_none());
    timer.advance(Duration::from_millis(20));
    assert!(next.now_or_never().is_some());
}

#[test]
fn a_rate_limit_pauses_the_queue_until_its_reset() {
    let limits = BackendLimits::new();
    let (timer, scheduler) = setup(limits);
    let backend = ScriptedModel::new("m")
        .fail(ModelError::RateLimited {
            model: ModelId::new("m"),
            retry_after: Some(Duration::from_secs(5)),
        })
        .with_responder(|_| Ok("ok".into()));
    let req = request(4);
    let start = timer.clock().now_nanos();
    let first = drive(&timer, call(&scheduler, &backend, ask(1), &req, start)).unwrap();
    assert!(matches!(first.1, Err(ModelError::RateLimited { .. })));
    let stats = scheduler.stats(&ModelId::new("m")).unwrap();
    assert_eq!(stats.rate_limited, 1);
    assert!(stats.paused_until.is_some());
    // every caller waits for the reset, none calls the backend before it
    let calls = (2..6).map(|i| call(&scheduler, &backend, ask(i), &req, start));
    let results = drive(&timer, futures::future::join_all(calls)).unwrap();
    for (granted, result) in &results {
        assert_eq!(*granted - start, 5 * SECOND);
        assert!(result.is_ok());
    }
    assert_eq!(backend.calls(), 5);
}

#[test]
fn a_rate_limit_without_a_hint_pauses_for_the_default() {
    let (timer, scheduler) = setup(BackendLimits::new());
    scheduler.rate_limited(&ModelId::new("m"), None);
    let mut next = Box::pin(scheduler.acquire(ask(1)));
    assert!((&mut next).now_or_never().is_none());
    timer.advance(Duration::from_millis(999));
    assert!((&mut next).now_or_never().is_none());
    timer.advance(Duration::from_millis(1));
    assert_eq!(
        next.now_or_never().unwrap().waited(),
        Duration::from_secs(1)
    );
}

#[test]
fn higher_priorities_go_first() {
    let (_timer, scheduler) = setup(BackendLimits::new().max_concurrent(1));
    let held = scheduler.acquire(ask(0)).now_or_never().unwrap();
    let mut batch = Box::pin(scheduler.acquire(ask(1).priority(Priority::Batch)));
    let mut normal = Box::pin(scheduler.acquire(ask(2)));
    let mut interactive = Box::pin(scheduler.acquire(ask(3).priority(Priority::Interactive)));
    assert!((&mut batch).now_or_never().is_none());
    assert!((&mut normal).now_or_never().is_none());
    assert!((&mut interactive).now_or_never().is_none());
    drop(held);
    assert!((&mut batch).now_or_never().is_none());
    assert!((&mut normal).now_or_never().is_none());
    let permit = (&mut interactive).now_or_never().unwrap();
    drop(permit);
    assert!((&mut batch).now_or_never().is_none());
    let permit = (&mut normal).now_or_never().unwrap();
    drop(permit);
    assert!(batch.now_or_never().is_some());
}

#[test]
fn a_dropped_waiter_leaves_the_queue() {
    let (_timer, scheduler) = setup(BackendLimits::new().max_concurrent(1));
    let held = scheduler.acquire(ask(0)).now_or_never().unwrap();
    let mut gone = Box::pin(scheduler.acquire(ask(1)));
    let mut next = Box::pin(scheduler.acquire(ask(2)));
    assert!((&mut gone).now_or_never().is_none());
    assert!((&mut next).now_or_never().is_none());
    drop(gone);
    drop(held);
    let permit = next.now_or_never().unwrap();
    // a granted permit never collected is given back
    drop(permit);
    let granted_uncollected = scheduler.acquire(ask(3));
    drop(granted_uncollected);
    let stats = scheduler.stats(&ModelId::new("m")).unwrap();
    assert_eq!((stats.in_flight, stats.queued), (0, 0));
    assert!(scheduler.acquire(ask(4)).now_or_never().is_some());
}

/// The time the quiet flow's request waits, in units of one call, when a busy flow queued
/// `busy` requests before it (one call at a time, each `service` long).
fn quiet_wait(busy: usize, busy_tokens: u64, quiet_tokens: u64, arrive_after: u64) -> f64 {
    let limits = BackendLimits::new().max_concurrent(1);
    let (timer, scheduler) = setup(limits);
    let service = Duration::from_secs(1);
    let clock = timer.clock().clone();
    let start = clock.now_nanos();
    let busy_calls = (0..busy).map(|_| {
        let scheduler = scheduler.clone();
        let timer = timer.clone();
        async move {
            let permit = scheduler.acquire(ask(1).tokens(busy_tokens)).await;
            aios_core::Timer::sleep(&timer, service).await;
            drop(permit);
        }
    });
    let quiet = {
        let scheduler = scheduler.clone();
        let timer = timer.clone();
        async move {
            aios_core::Timer::sleep(&timer, Duration::from_millis(arrive_after * 1000 + 500)).await;
            let permit = scheduler.acquire(ask(2).tokens(quiet_tokens)).await;
            let waited = permit.waited();
            aios_core::Timer::sleep(&timer, service).await;
            drop(permit);
            waited
        }
    };
    let (waited, _) = drive(
        &timer,
        futures::future::join(quiet, futures::future::join_all(busy_calls)),
    )
    .unwrap();
    assert!(clock.now_nanos() - start >= i64::try_from(busy).unwrap() * SECOND);
    waited.as_secs_f64() / service.as_secs_f64()
}

#[test]
fn a_busy_run_does_not_starve_a_quiet_one() {
    // FIFO would make the quiet request wait for the whole backlog (about 99 calls)
    let wait = quiet_wait(100, 500, 500, 0);
    assert!(wait <= 1.0, "the quiet flow waited {wait} calls");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Start-time fair queuing: a flow with one request waits for at most the call in flight
    /// and one call of each other flow, whatever the backlog and the sizes.
    #[test]
    fn a_quiet_flow_waits_for_at_most_one_call_per_busy_flow(
        busy in 1usize..60,
        busy_tokens in 0u64..2_000,
        quiet_tokens in 0u64..2_000,
        arrive_after in 0u64..30,
    ) {
        let wait = quiet_wait(busy, busy_tokens, quiet_tokens, arrive_after);
        prop_assert!(wait <= 1.5, "waited {} calls", wait);
    }
}

#[test]
fn weights_share_in_proportion() {
    // two backlogged flows, weight 3 and 1, one call at a time: in the first 40 calls the
    // heavier flow gets 30
    let limits = BackendLimits::new().max_concurrent(1);
    let (timer, scheduler) = setup(limits);
    let order = Arc::new(parking_lot::Mutex::new(vec![]));
    let calls = (0..80).map(|i| {
        let (scheduler, timer, order) = (scheduler.clone(), timer.clone(), order.clone());
        let (flow, weight) = if i % 2 == 0 { (1, 3) } else { (2, 1) };
        async move {
            let permit = scheduler
                .acquire(ask(flow).weight(weight).tokens(100))
                .await;
            order.lock().push(flow);
            aios_core::Timer::sleep(&timer, Duration::from_secs(1)).await;
            drop(permit);
        }
    });
    drive(&timer, futures::future::join_all(calls)).unwrap();
    let order = order.lock();
    let heavy = order[..40].iter().filter(|f| **f == 1).count();
    assert!((29..=31).contains(&heavy), "heavy flow got {heavy} of 40");
}

#[test]
fn a_rate_limit_slows_the_buckets_and_successes_recover_them() {
    // 60 a minute: one a second, until the backend says otherwise
    let (timer, scheduler) = setup(BackendLimits::new().requests_per_minute(60));
    let clock = timer.clock().clone();
    let model = ModelId::new("m");
    scheduler.rate_limited(&model, Some(Duration::ZERO));
    // the rates are now 90 % of the configured ones: the bucket refills in 1.11 s
    let mut next = Box::pin(scheduler.acquire(ask(1)));
    let start = clock.now_nanos();
    let permit = drive(&timer, &mut next).unwrap();
    assert_eq!((clock.now_nanos() - start) / (SECOND / 100), 111);
    assert!((scheduler.stats(&model).unwrap().rate_scale - 0.9).abs() < 1e-9);
    // each successful call wins back a little
    permit.finish(&Ok(aios_core::ModelResponse {
        model: model.clone(),
        content: String::new(),
        tool_calls: vec![],
        usage: aios_core::TokenUsage::new(1, 1),
        cost: aios_core::Money::ZERO,
        confidence: None,
        finish: aios_core::FinishReason::Stop,
    }));
    let scale = scheduler.stats(&model).unwrap().rate_scale;
    assert!(scale > 0.9 && scale < 0.91, "{scale}");
}

#[test]
fn limits_set_too_high_are_learnt_from_rate_limit_answers() {
    // the scheduler believes 120 a minute, the backend allows 60 (and counts refusals)
    let (timer, scheduler) = setup(BackendLimits::new().requests_per_minute(120));
    let backend = sim(&timer, BackendLimits::new().requests_per_minute(60))
        .with_refused_counted(true)
        .with_latency(Duration::ZERO, Duration::ZERO);
    let req = request(8);
    let start = timer.clock().now_nanos();
    let calls = (0..200).map(|i| {
        let (scheduler, backend, req) = (&scheduler, &backend, &req);
        async move {
            for _ in 0..20 {
                let (_, r) = call(scheduler, backend, ask(i % 10), req, start).await;
                if r.is_ok() {
                    return true;
                }
            }
            false
        }
    });
    let done = drive(&timer, futures::future::join_all(calls)).unwrap();
    assert!(done.iter().all(|d| *d));
    let stats = backend.stats();
    assert_eq!(stats.served, 200);
    // without learning, every other request would be refused (about 200 refusals)
    assert!(stats.rate_limited < 40, "{} refusals", stats.rate_limited);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Whatever the load, a scheduler configured with a backend's limits never makes it
    /// refuse: concurrency, requests and tokens per minute hold, estimates at or above the
    /// usage, every call answered.
    #[test]
    fn the_limits_hold_under_any_load(
        calls in proptest::collection::vec((0usize..400, 0u64..200, 0u64..3_000, 0u64..10), 1..60),
        max_concurrent in 1u32..6,
        rpm in 30u32..600,
        tpm in 2_000u64..60_000,
    ) {
        let limits = BackendLimits::new()
            .max_concurrent(max_concurrent)
            .requests_per_minute(rpm)
            .tokens_per_minute(tpm);
        let (timer, scheduler) = setup(limits);
        let backend = sim(&timer, limits)
            .with_output_tokens(20)
            .with_latency(Duration::from_millis(100), Duration::from_millis(10));
        let start = timer.clock().now_nanos();
        let n = calls.len();
        let futures = calls.into_iter().map(|(bytes, extra, delay_ms, flow)| {
            let (scheduler, backend, timer) = (&scheduler, &backend, timer.clone());
            async move {
                aios_core::Timer::sleep(&timer, Duration::from_millis(delay_ms)).await;
                let req = request(bytes);
                let used = ScriptedModel::count_tokens(&req.messages[0].content) + 20;
                let ask = ask(flow).tokens(used + extra);
                call(scheduler, backend, ask, &req, start).await.1.is_ok()
            }
        });
        let done = drive(&timer, futures::future::join_all(futures)).unwrap();
        prop_assert!(done.iter().all(|ok| *ok));
        let stats = backend.stats();
        prop_assert_eq!(stats.rate_limited, 0);
        prop_assert_eq!(stats.served, n as u64);
        prop_assert!(stats.max_in_flight <= max_concurrent);
    }
}
