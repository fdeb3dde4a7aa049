//! The model scheduler inside the orchestrator: every model attempt of every agent waits for
//! a permit; the wait is audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditEvent, AuditLogExt, InMemoryAuditLog, Message, ModelError, ModelId, ModelRequest, RoleId,
    ScriptedModel,
};
use aios_orchestrator::testing::{drive, SimulatedBackend};
use aios_orchestrator::{
    BackendLimits, FnAgent, ModelRouter, OrchestratorConfig, RetryPolicy, Role, RunStatus,
    SchedulerConfig, TaskSpec, Workflow,
};
use common::{builder, World};
use futures::executor::block_on;

fn writer() -> Role {
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let r = ctx
                .complete(ModelRequest::new(vec![Message::user("write")]))
                .await?;
            Ok(serde_json::json!(r.content.len()))
        })
    });
    Role::new("writer", "writing", Arc::new(agent)).retry(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::ZERO,
        jitter: 0.0,
        attempt_timeout: None,
        overall_timeout: None,
        ..RetryPolicy::default()
    })
}

fn parallel(n: usize) -> Workflow {
    (0..n).fold(Workflow::new("parallel"), |wf, i| {
        wf.task(TaskSpec::new(
            format!("w{i}"),
            RoleId::from_name("writer"),
            serde_json::Value::Null,
        ))
    })
}

fn queued(audit: &InMemoryAuditLog) -> Vec<Option<u64>> {
    block_on(audit.entries())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            AuditEvent::ModelCalled { queued_ms, .. } => Some(queued_ms),
            _ => None,
        })
        .collect()
}

#[test]
fn agents_share_a_backend_through_the_scheduler() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let limits = BackendLimits::new().max_concurrent(2);
    let backend = SimulatedBackend::new(
        "cloud",
        limits,
        Arc::new(world.timer.clock().clone()),
        Arc::new(world.timer.clone()),
    )
    .with_latency(Duration::from_secs(1), Duration::ZERO);
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(backend.clone())))
        .model_scheduler(SchedulerConfig::new().backend("cloud", limits))
        .audit(Arc::new(audit.clone()))
        .role(writer())
        .config(OrchestratorConfig {
            concurrency: 8,
            ..OrchestratorConfig::deterministic("w", 1)
        })
        .build()
        .unwrap();
    let outcome = drive(&world.timer, orch.start(parallel(6)))
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let stats = backend.stats();
    assert_eq!((stats.served, stats.rate_limited), (6, 0));
    assert_eq!(stats.max_in_flight, 2);
    let mut waits: Vec<u64> = queued(&audit).into_iter().map(Option::unwrap).collect();
    waits.sort();
    assert_eq!(waits, vec![0, 0, 1000, 1000, 2000, 2000]);
}

#[test]
fn without_the_scheduler_callers_hit_the_limit_and_nothing_is_queued() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let limits = BackendLimits::new().max_concurrent(2);
    let backend = SimulatedBackend::new(
        "cloud",
        limits,
        Arc::new(world.timer.clock().clone()),
        Arc::new(world.timer.clone()),
    );
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(backend.clone())))
        .audit(Arc::new(audit.clone()))
        .role(writer())
        .config(OrchestratorConfig::deterministic("w", 1))
        .build()
        .unwrap();
    let _ = drive(&world.timer, orch.start(parallel(6))).unwrap();
    assert!(backend.stats().rate_limited > 0);
    assert!(queued(&audit).iter().all(Option::is_none));
}

#[test]
fn a_rate_limit_answer_pauses_the_backend_for_the_next_attempt() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let model = ScriptedModel::new("cloud")
        .fail(ModelError::RateLimited {
            model: ModelId::new("cloud"),
            retry_after: Some(Duration::from_secs(3)),
        })
        .reply("done");
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(model.clone())))
        .model_scheduler(SchedulerConfig::new())
        .audit(Arc::new(audit.clone()))
        .role(writer())
        .config(OrchestratorConfig::deterministic("w", 1))
        .build()
        .unwrap();
    let start = world.timer.clock().clone();
    let before = aios_core::Clock::now(&start);
    let outcome = drive(&world.timer, orch.start(parallel(1)))
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(model.calls(), 2);
    // the retry (no backoff of its own) waited in the queue until the reset
    assert_eq!(queued(&audit), vec![Some(3000)]);
    assert_eq!((aios_core::Clock::now(&start) - before).num_seconds(), 3);
}

#[test]
fn audit_entries_without_the_queue_wait_still_decode() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let orch = builder(&world)
        .model_scheduler(SchedulerConfig::new())
        .audit(Arc::new(audit.clone()))
        .role(writer())
        .config(OrchestratorConfig::deterministic("w", 1))
        .build()
        .unwrap();
    drive(&world.timer, orch.start(parallel(1)))
        .unwrap()
        .unwrap();
    let entry = block_on(audit.entries())
        .unwrap()
        .into_iter()
        .find(|e| matches!(e.event, AuditEvent::ModelCalled { .. }))
        .unwrap();
    let mut json = serde_json::to_value(&entry.event).unwrap();
    assert_eq!(json["queued_ms"], 0);
    // an entry written before the field existed
    json.as_object_mut().unwrap().remove("queued_ms");
    let old: AuditEvent = serde_json::from_value(json).unwrap();
    assert!(matches!(
        old,
        AuditEvent::ModelCalled {
            queued_ms: None,
            ..
        }
    ));
    // and an event without a wait is written as before
    assert!(!serde_json::to_string(&old).unwrap().contains("queued_ms"));
}

#[test]
fn the_attempt_timeout_counts_the_call_not_the_queue() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let limits = BackendLimits::new().max_concurrent(1);
    let backend = SimulatedBackend::new(
        "cloud",
        limits,
        Arc::new(world.timer.clock().clone()),
        Arc::new(world.timer.clone()),
    )
    .with_latency(Duration::from_millis(1500), Duration::ZERO);
    let role = writer().retry(RetryPolicy {
        max_attempts: 1,
        attempt_timeout: Some(Duration::from_secs(2)),
        overall_timeout: None,
        ..RetryPolicy::default()
    });
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(backend.clone())))
        .model_scheduler(SchedulerConfig::new().backend("cloud", limits))
        .audit(Arc::new(audit.clone()))
        .role(role)
        .config(OrchestratorConfig::deterministic("w", 1))
        .build()
        .unwrap();
    // the fourth call waits 4.5 s in the queue, more than the 2 s an attempt may take
    let outcome = drive(&world.timer, orch.start(parallel(4)))
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(backend.stats().served, 4);
    let mut waits: Vec<u64> = queued(&audit).into_iter().map(Option::unwrap).collect();
    waits.sort();
    assert_eq!(waits, vec![0, 1500, 3000, 4500]);
}

#[test]
fn with_the_scheduler_a_slow_call_still_times_out() {
    let world = World::new();
    let limits = BackendLimits::new();
    let backend = SimulatedBackend::new(
        "cloud",
        limits,
        Arc::new(world.timer.clock().clone()),
        Arc::new(world.timer.clone()),
    )
    .with_latency(Duration::from_secs(5), Duration::ZERO);
    let role = writer().retry(RetryPolicy {
        max_attempts: 1,
        attempt_timeout: Some(Duration::from_secs(2)),
        overall_timeout: None,
        ..RetryPolicy::default()
    });
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(backend.clone())))
        .model_scheduler(SchedulerConfig::new())
        .role(role)
        .config(OrchestratorConfig::deterministic("w", 1))
        .build()
        .unwrap();
    let start = aios_core::Clock::now(world.timer.clock());
    let outcome = drive(&world.timer, orch.start(parallel(1)))
        .unwrap()
        .unwrap();
    assert!(matches!(outcome.status, RunStatus::Failed { .. }));
    assert_eq!(
        (aios_core::Clock::now(world.timer.clock()) - start).num_seconds(),
        2
    );
}
