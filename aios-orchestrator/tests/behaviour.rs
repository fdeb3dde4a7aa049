//! Budgets, breakers, routing, governance refusals, fan-out, memory, operator controls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::testing::{FaultPlan, Faults, FaultyConnector, FaultyModel};
use aios_core::{
    AuditEvent, AuditLogExt, InMemoryAuditLog, Message, ModelError, ModelId, ModelRequest,
    Principal, RoleId, ScriptedModel,
};
use aios_memory::{Access, Grant, Memory, NewMemory, Scope, Tier};
use aios_orchestrator::{
    BreakerPolicy, CollectingObserver, ConnectorRequest, Fallback, FnAgent, InMemoryNotifier,
    LlmAgent, MemoryOptions, ModelRouter, NotificationKind, Orchestrator, OrchestratorConfig,
    RetryPolicy, Role, RunControl, RunEvent, RunStatus, TaskSpec, Workflow,
};
use common::*;
use futures::executor::block_on;

fn ledger_writer(times: u32) -> Role {
    let agent = FnAgent::new(move |ctx, _input| {
        Box::pin(async move {
            for i in 0..times {
                ctx.call(ConnectorRequest::new(
                    "ledger",
                    "write",
                    serde_json::json!({ "i": i }),
                ))
                .await?;
            }
            Ok(serde_json::json!(times))
        })
    });
    Role::new("worker", "work", Arc::new(agent))
        .connector("ledger")
        .max_calls(100)
        .retry(RetryPolicy::none())
}

/// Polls `fut` to completion, moving the manual timer to each next deadline when it waits.
fn drive<T>(fut: impl std::future::Future<Output = T>, timer: &aios_core::ManualTimer) -> T {
    use futures::FutureExt;
    let mut fut = Box::pin(fut);
    loop {
        if let Some(v) = (&mut fut).now_or_never() {
            return v;
        }
        assert!(
            timer.advance_to_next(),
            "the run waits for nothing the timer can wake"
        );
    }
}

fn one(role: &str) -> Workflow {
    Workflow::new("one").task(TaskSpec::new(
        "only",
        RoleId::from_name(role),
        serde_json::Value::Null,
    ))
}

#[test]
fn a_run_that_would_exceed_its_budget_stops_and_escalates() {
    let world = World::new();
    let notifier = InMemoryNotifier::new();
    let audit = InMemoryAuditLog::new();
    let orch = builder(&world)
        .notifier(Arc::new(notifier.clone()))
        .audit(Arc::new(audit.clone()))
        .role(ledger_writer(25))
        .build()
        .unwrap();
    let out = block_on(orch.start(one("worker"))).unwrap();
    assert!(
        matches!(out.status, RunStatus::Failed { ref reason } if reason.contains("budget")),
        "{:?}",
        out.status
    );
    assert_eq!(
        world.ledger.effects().len(),
        20,
        "the per-run limit of 20 tool calls holds"
    );
    let sent = notifier.sent();
    assert!(
        sent.iter()
            .any(|n| n.kind == NotificationKind::Escalation && n.message.contains("budget")),
        "{sent:?}"
    );
    let entries = block_on(audit.entries()).unwrap();
    assert!(entries
        .iter()
        .any(|e| matches!(e.event, AuditEvent::Escalated { .. })));
    assert!(entries.iter().any(|e| matches!(
        &e.event,
        AuditEvent::BudgetAlert {
            threshold_percent: 100,
            ..
        }
    )));
}

#[test]
fn a_breaker_opens_then_half_opens_then_closes() {
    let world = World::new();
    let faults = Faults::new(FaultPlan::fail_after(0));
    let orch = Orchestrator::builder(governor())
        .connector(Arc::new(FaultyConnector::new(
            world.ledger.clone(),
            faults.clone(),
        )))
        .clock(Arc::new(world.timer.clock().clone()))
        .timer(Arc::new(world.timer.clone()))
        .role(ledger_writer(1).fallback(Fallback::Skip {
            output: serde_json::json!("skipped"),
        }))
        .config(OrchestratorConfig {
            breakers: BreakerPolicy {
                failure_threshold: 2,
                open_for: Duration::from_secs(30),
            },
            ..OrchestratorConfig::default()
        })
        .build()
        .unwrap();
    for _ in 0..2 {
        let out = block_on(orch.start(one("worker"))).unwrap();
        assert_eq!(out.outputs["only"], "skipped", "the fallback applies");
    }
    assert_eq!(faults.calls(), 2);
    // open: the connector is not even called
    block_on(orch.start(one("worker"))).unwrap();
    assert_eq!(faults.calls(), 2, "an open breaker refuses without calling");
    // after the open period one trial goes through; it succeeds and closes the breaker
    world.timer.advance(Duration::from_secs(30));
    faults.set_plan(FaultPlan::none());
    let out = block_on(orch.start(one("worker"))).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    assert_eq!(out.outputs["only"], 1);
    assert_eq!(world.ledger.effects().len(), 1);
    block_on(orch.start(one("worker"))).unwrap();
    assert_eq!(world.ledger.effects().len(), 2, "closed again");
}

fn writer_with(router: ModelRouter, world: &World, audit: &InMemoryAuditLog) -> Orchestrator {
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let r = ctx
                .complete(ModelRequest::new(vec![Message::user("write")]))
                .await?;
            Ok(serde_json::json!({ "model": r.model.as_str(), "text": r.content }))
        })
    });
    builder(world)
        .models(router)
        .audit(Arc::new(audit.clone()))
        .role(
            Role::new("writer", "writing", Arc::new(agent)).retry(RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::ZERO,
                ..RetryPolicy::default()
            }),
        )
        .build()
        .unwrap()
}

fn model_details(audit: &InMemoryAuditLog) -> Vec<(String, Option<String>)> {
    block_on(audit.entries())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            AuditEvent::ModelCalled { model, detail, .. } => Some((model.to_string(), detail)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_router_falls_back_on_failure_and_records_why() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let local = FaultyModel::new(
        ScriptedModel::new("local"),
        Faults::new(FaultPlan::fail_after(0)),
    );
    let cloud = ScriptedModel::new("cloud").reply("from the cloud");
    let orch = writer_with(
        ModelRouter::new(vec![Arc::new(local), Arc::new(cloud)]),
        &world,
        &audit,
    );
    let out = block_on(orch.start(one("writer"))).unwrap();
    assert_eq!(out.outputs["only"]["model"], "cloud");
    let details = model_details(&audit);
    assert!(
        details[0].0 == "local" && details[0].1.as_deref().unwrap_or("").contains("failed"),
        "{details:?}"
    );
    assert!(
        details[1].0 == "cloud"
            && details[1]
                .1
                .as_deref()
                .unwrap_or("")
                .contains("after `local`"),
        "{details:?}"
    );
}

#[test]
fn the_router_falls_back_on_low_confidence_and_records_why() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let local = ScriptedModel::new("local").reply_with_confidence("maybe", 0.3);
    let cloud = ScriptedModel::new("cloud").reply_with_confidence("surely", 0.95);
    let router = ModelRouter::new(vec![Arc::new(local), Arc::new(cloud)]).with_min_confidence(0.7);
    let orch = writer_with(router, &world, &audit);
    let out = block_on(orch.start(one("writer"))).unwrap();
    assert_eq!(out.outputs["only"]["text"], "surely");
    let details = model_details(&audit);
    assert!(
        details[0]
            .1
            .as_deref()
            .unwrap_or("")
            .contains("confidence 0.30 below 0.70"),
        "{details:?}"
    );
}

#[test]
fn a_permanent_model_error_is_not_retried_and_fails_the_task() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let bad = ScriptedModel::new("local").fail(ModelError::InvalidRequest {
        model: ModelId::new("local"),
        detail: "bad".into(),
    });
    let orch = writer_with(ModelRouter::single(Arc::new(bad.clone())), &world, &audit);
    let out = block_on(orch.start(one("writer"))).unwrap();
    assert!(matches!(out.status, RunStatus::Failed { .. }));
    assert_eq!(bad.calls(), 1);
}

#[test]
fn governance_refusals_never_reach_the_connector() {
    let world = World::new();
    let notifier = InMemoryNotifier::new();
    let risky = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let out = ctx
                .call(ConnectorRequest::new("ledger", "write", serde_json::json!({})).risk(95))
                .await?;
            Ok(out.output)
        })
    });
    let wrong_action = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let out = ctx
                .call(ConnectorRequest::new(
                    "ledger",
                    "delete_everything",
                    serde_json::json!({}),
                ))
                .await?;
            Ok(out.output)
        })
    });
    for (agent, expect) in [(risky, "escalated"), (wrong_action, "denied")] {
        let orch = builder(&world)
            .notifier(Arc::new(notifier.clone()))
            .role(Role::new("worker", "work", Arc::new(agent)).connector("ledger"))
            .build()
            .unwrap();
        let out = block_on(orch.start(one("worker"))).unwrap();
        assert!(
            matches!(out.status, RunStatus::Failed { ref reason } if reason.contains(expect)),
            "{:?}",
            out.status
        );
    }
    assert_eq!(world.ledger.invocations(), 0);
    assert!(
        notifier
            .sent()
            .iter()
            .any(|n| n.kind == NotificationKind::Escalation),
        "the halt was escalated"
    );
}

#[test]
fn a_connector_outside_the_role_is_refused() {
    let world = World::new();
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            Ok(ctx
                .call(ConnectorRequest::new(
                    "email",
                    "send",
                    serde_json::json!({}),
                ))
                .await?
                .output)
        })
    });
    let orch = builder(&world)
        .role(Role::new("worker", "work", Arc::new(agent)).connector("ledger"))
        .build()
        .unwrap();
    let out = block_on(orch.start(one("worker"))).unwrap();
    assert!(
        matches!(out.status, RunStatus::Failed { ref reason } if reason.contains("may not use connector"))
    );
    assert_eq!(world.email.invocations(), 0);
}

#[test]
fn fan_out_adds_tasks_that_the_join_waits_for() {
    let world = World::new();
    let w = RoleId::from_name("worker");
    let agent = FnAgent::new(move |ctx, input| {
        Box::pin(async move {
            if input.input["split"].as_bool() == Some(true) {
                for i in 0..3 {
                    ctx.spawn(TaskSpec::new(
                        format!("part-{i}"),
                        RoleId::from_name("worker"),
                        serde_json::json!({ "n": i }),
                    ))
                    .await?;
                }
                return Ok(serde_json::json!(0));
            }
            if input.input["join"].as_bool() == Some(true) {
                let sum: i64 = input.deps.values().map(|v| v.as_i64().unwrap_or(0)).sum();
                return Ok(serde_json::json!({ "sum": sum, "inputs": input.deps.len() }));
            }
            Ok(serde_json::json!(
                input.input["n"].as_i64().unwrap_or(0) * 10
            ))
        })
    });
    let orch = builder(&world)
        .role(Role::new("worker", "work", Arc::new(agent)))
        .build()
        .unwrap();
    let wf = Workflow::new("fan")
        .task(TaskSpec::new(
            "split",
            w,
            serde_json::json!({ "split": true }),
        ))
        .task(TaskSpec::new("join", w, serde_json::json!({ "join": true })).after(["split"]));
    let out = block_on(orch.start(wf)).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    assert_eq!(
        out.outputs["join"],
        serde_json::json!({ "sum": 30, "inputs": 4 })
    );
}

#[test]
fn independent_tasks_run_concurrently_within_the_limit() {
    let world = World::new();
    let observer = CollectingObserver::new();
    let w = RoleId::from_name("worker");
    let slow = Faults::new(FaultPlan::delay(
        Arc::new(world.timer.clone()),
        Duration::from_secs(1),
    ));
    let orch = Orchestrator::builder(governor())
        .connector(Arc::new(FaultyConnector::new(world.ledger.clone(), slow)))
        .clock(Arc::new(world.timer.clock().clone()))
        .timer(Arc::new(world.timer.clone()))
        .observer(Arc::new(observer.clone()))
        .role(ledger_writer(1))
        .config(OrchestratorConfig {
            concurrency: 2,
            ..OrchestratorConfig::default()
        })
        .build()
        .unwrap();
    let wf = (0..5).fold(Workflow::new("par"), |wf, i| {
        wf.task(TaskSpec::new(format!("t{i}"), w, serde_json::Value::Null))
    });
    let out = drive(orch.start(wf), &world.timer).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    let mut running = 0i32;
    let mut peak = 0;
    for e in observer.events() {
        match e {
            RunEvent::TaskStarted { .. } => running += 1,
            RunEvent::TaskCompleted { .. } => running -= 1,
            _ => {}
        }
        peak = peak.max(running);
    }
    assert_eq!(peak, 2);
}

#[test]
fn the_llm_agent_uses_memory_through_its_grants_and_cites_it() {
    let world = World::new();
    let clock: Arc<dyn aios_core::Clock> = Arc::new(world.timer.clock().clone());
    let memory = block_on(
        Memory::builder(clock.clone())
            .embedder(Arc::new(aios_core::HashEmbedder::new(64)))
            .open(),
    )
    .unwrap();
    let scope = Scope::parse("org/acme").unwrap();
    let fact = block_on(memory.remember(NewMemory::new(
        scope.clone(),
        Tier::Project,
        "the newsletter goes out on fridays",
        Principal::System,
    )))
    .unwrap();
    let model = ScriptedModel::new("local").reply("noted");
    let grants = vec![Grant::role(
        RoleId::from_name("writer"),
        scope.clone(),
        Access::Read,
    )];
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(model.clone())))
        .memory(memory.clone(), MemoryOptions::new(grants, scope))
        .role(
            Role::new("writer", "writing", Arc::new(LlmAgent::default()))
                .instructions("You write newsletters."),
        )
        .build()
        .unwrap();
    let wf = Workflow::new("w").task(TaskSpec::new(
        "draft",
        RoleId::from_name("writer"),
        serde_json::json!("when does the newsletter go out"),
    ));
    let out = block_on(orch.start(wf)).unwrap();
    assert_eq!(out.outputs["draft"]["text"], "noted");
    let prompt = &model.requests()[0].messages;
    assert!(
        prompt
            .iter()
            .any(|m| m.content.contains(&format!("[mem:{}]", fact.id))),
        "{prompt:?}"
    );
    assert!(prompt[0].content.contains("You write newsletters."));
}

#[test]
fn memory_writes_outside_the_grants_are_refused() {
    let world = World::new();
    let clock: Arc<dyn aios_core::Clock> = Arc::new(world.timer.clock().clone());
    let memory = block_on(Memory::builder(clock).open()).unwrap();
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let me = Principal::Agent(ctx.agent_id());
            ctx.remember(NewMemory::new(
                Scope::parse("org/acme/notes").unwrap(),
                Tier::Working,
                "ok",
                me,
            ))
            .await?;
            ctx.remember(NewMemory::new(
                Scope::parse("org/finance").unwrap(),
                Tier::Working,
                "no",
                me,
            ))
            .await?;
            Ok(serde_json::Value::Null)
        })
    });
    let grants = vec![Grant::role(
        RoleId::from_name("worker"),
        Scope::parse("org/acme").unwrap(),
        Access::ReadWrite,
    )];
    let orch = builder(&world)
        .memory(
            memory.clone(),
            MemoryOptions::new(grants, Scope::parse("org/acme").unwrap()),
        )
        .role(Role::new("worker", "work", Arc::new(agent)))
        .build()
        .unwrap();
    let out = block_on(orch.start(one("worker"))).unwrap();
    assert!(
        matches!(out.status, RunStatus::Failed { ref reason } if reason.contains("memory")),
        "{:?}",
        out.status
    );
    assert_eq!(memory.len(), 1, "only the granted write happened");
}

#[test]
fn an_operator_can_pause_and_cancel_a_parked_run() {
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let orch = newsletter_roles()
        .into_iter()
        .fold(builder(&world).audit(Arc::new(audit.clone())), |b, r| {
            b.role(r)
        })
        .build()
        .unwrap();
    let parked = block_on(orch.start(newsletter())).unwrap();
    block_on(orch.control_run(
        parked.run,
        RunControl::Pause,
        Principal::Human(alice()),
        "holiday",
    ))
    .unwrap();
    assert_eq!(
        block_on(orch.state(parked.run)).unwrap().unwrap().status,
        RunStatus::Paused
    );
    block_on(orch.control_run(
        parked.run,
        RunControl::Cancel,
        Principal::Human(alice()),
        "not needed",
    ))
    .unwrap();
    assert_eq!(
        block_on(orch.state(parked.run)).unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert!(
        block_on(orch.resume(parked.run)).is_err(),
        "a cancelled run does not resume"
    );
    let controls = block_on(audit.entries())
        .unwrap()
        .into_iter()
        .filter(|e| {
            matches!(e.event, AuditEvent::ControlApplied { .. })
                && e.actor == Principal::Human(alice())
        })
        .count();
    assert_eq!(controls, 2, "every control recorded with who");
    assert!(world.email.effects().is_empty());
}

#[test]
fn a_host_supplied_ledger_gets_the_models_budget_plan() {
    let world = World::new();
    let ledger = aios_governance::InMemoryBudgetLedger::new(Arc::new(world.timer.clock().clone()));
    let orch = builder(&world)
        .budgets(Arc::new(ledger.clone()))
        .role(ledger_writer(25))
        .build()
        .unwrap();
    let out = block_on(orch.start(one("worker"))).unwrap();
    assert!(
        matches!(out.status, RunStatus::Failed { ref reason } if reason.contains("budget")),
        "{:?}",
        out.status
    );
    assert_eq!(
        world.ledger.effects().len(),
        20,
        "the plan's per-run limit applies: {:?}",
        out.status
    );
    let org = ledger
        .usage_sync(aios_governance::BudgetKey::Organisation)
        .unwrap();
    assert_eq!(org.committed.tool_calls, 20);
}

#[test]
fn an_operator_pause_parks_the_run_and_the_kill_switch_cancels_it() {
    use aios_governance::{ControlAction, ControlCommand, ControlTarget, Controls};
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let clock: Arc<dyn aios_core::Clock> = Arc::new(world.timer.clock().clone());
    let controls = Arc::new(Controls::new(clock, Arc::new(audit.clone())));
    let orch = builder(&world)
        .audit(Arc::new(audit.clone()))
        .controls(controls.clone())
        .role(ledger_writer(2))
        .build()
        .unwrap();
    let worker = aios_core::AgentId::from_name("worker");
    let command = |action| ControlCommand {
        target: ControlTarget::Agent(worker),
        action,
        by: Principal::Human(alice()),
        reason: "checking the books".into(),
        until: None,
    };
    block_on(controls.apply(command(ControlAction::Pause))).unwrap();
    let paused = block_on(orch.start(one("worker"))).unwrap();
    assert_eq!(paused.status, RunStatus::Paused);
    assert_eq!(
        world.ledger.invocations(),
        0,
        "nothing happens while paused"
    );
    block_on(controls.apply(command(ControlAction::Resume))).unwrap();
    let done = block_on(orch.resume(paused.run)).unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(world.ledger.effects().len(), 2);

    block_on(controls.apply(ControlCommand {
        target: ControlTarget::Organisation,
        ..command(ControlAction::Stop)
    }))
    .unwrap();
    let stopped = block_on(orch.start(one("worker"))).unwrap();
    assert_eq!(stopped.status, RunStatus::Cancelled);
    assert!(
        block_on(orch.resume(stopped.run)).is_err(),
        "a cancelled run stays cancelled"
    );
    assert_eq!(world.ledger.effects().len(), 2);
}

#[test]
fn bad_workflows_are_refused_with_the_task_and_role_named() {
    let world = World::new();
    let orch = builder(&world).role(ledger_writer(1)).build().unwrap();
    let err = block_on(orch.start(one("nobody"))).unwrap_err().to_string();
    assert!(
        err.contains("task `only`") && err.contains("role:"),
        "{err}"
    );
    let cyclic = Workflow::new("loop")
        .task(TaskSpec::new("a", RoleId::from_name("worker"), serde_json::Value::Null).after(["b"]))
        .task(
            TaskSpec::new("b", RoleId::from_name("worker"), serde_json::Value::Null).after(["a"]),
        );
    let err = block_on(orch.start(cyclic)).unwrap_err().to_string();
    assert!(
        err.contains("workflow `loop`") && err.contains("cycle"),
        "{err}"
    );
    assert!(
        block_on(orch.checkpoint_store().list(false))
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );
}

#[test]
fn a_run_being_driven_is_cancelled_at_its_next_task_boundary() {
    use futures::FutureExt;
    let world = World::new();
    let slow = Faults::new(FaultPlan::delay(
        Arc::new(world.timer.clone()),
        Duration::from_secs(5),
    ));
    let audit = InMemoryAuditLog::new();
    let checkpoints = aios_orchestrator::InMemoryCheckpointStore::new();
    let build = |worker: &str| {
        Orchestrator::builder(governor())
            .connector(Arc::new(FaultyConnector::new(
                world.ledger.clone(),
                slow.clone(),
            )))
            .clock(Arc::new(world.timer.clock().clone()))
            .timer(Arc::new(world.timer.clone()))
            .audit(Arc::new(audit.clone()))
            .checkpoints(Arc::new(checkpoints.clone()))
            .role(ledger_writer(1))
            .config(OrchestratorConfig {
                worker: aios_orchestrator::WorkerId::new(worker),
                ..OrchestratorConfig::default()
            })
            .build()
            .unwrap()
    };
    let orch = build("here");
    let other = build("elsewhere");
    let w = RoleId::from_name("worker");
    let wf = Workflow::new("two")
        .task(TaskSpec::new("first", w, serde_json::Value::Null))
        .task(TaskSpec::new("second", w, serde_json::Value::Null).after(["first"]));
    let mut running = Box::pin(orch.start(wf));
    assert!(
        (&mut running).now_or_never().is_none(),
        "the first task waits in its connector"
    );
    let run = block_on(aios_orchestrator::CheckpointStore::list(
        &checkpoints,
        false,
    ))
    .unwrap()[0]
        .run;

    // another orchestrator cannot control a run it does not drive while the lease is live
    let refused =
        block_on(other.control_run(run, RunControl::Cancel, Principal::Human(alice()), "no"));
    assert!(
        matches!(
            refused,
            Err(aios_orchestrator::OrchestratorError::LeaseLost { .. })
        ),
        "{refused:?}"
    );

    block_on(orch.control_run(
        run,
        RunControl::Cancel,
        Principal::Human(alice()),
        "wrong week",
    ))
    .unwrap();
    world.timer.advance(Duration::from_secs(5));
    let out = block_on(running).unwrap();
    assert_eq!(out.status, RunStatus::Cancelled);
    assert_eq!(world.ledger.effects().len(), 1, "the second task never ran");
    let controls: Vec<_> = block_on(audit.entries())
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.event, AuditEvent::ControlApplied { .. }))
        .collect();
    assert_eq!(
        controls.len(),
        1,
        "only the control that took effect is recorded"
    );
}

#[test]
fn the_llm_agent_round_trips_tool_calls_by_id_under_provider_safe_names() {
    let world = World::new();
    let model = ScriptedModel::new("local")
        .call_tool("ledger__write", serde_json::json!({ "entry": 1 }))
        .call_tool("payments__transfer", serde_json::json!({ "amount": 1000 }))
        .reply("all booked");
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(model.clone())))
        .role(
            Role::new(
                "worker",
                "work",
                Arc::new(LlmAgent::default().tool("ledger.write", "write a ledger entry")),
            )
            .connector("ledger"),
        )
        .build()
        .unwrap();
    let out = block_on(orch.start(Workflow::new("w").task(TaskSpec::new(
        "book",
        RoleId::from_name("worker"),
        serde_json::json!("book the entry"),
    ))))
    .unwrap();
    assert_eq!(
        out.outputs["book"]["text"], "all booked",
        "{:?}",
        out.status
    );
    // the offered tool ran with the model's arguments; the one not offered did not
    assert_eq!(world.ledger.effects().len(), 1);
    assert_eq!(world.ledger.effects()[0].input["entry"], 1);
    let requests = model.requests();
    assert_eq!(
        requests[0].tools[0].name, "ledger__write",
        "no dots in tool names"
    );
    // the second request carries the call and its result, tied by id
    let second = &requests[1].messages;
    let asked = second
        .iter()
        .find(|m| !m.tool_calls.is_empty())
        .expect("the assistant's call is in the conversation");
    let answered = second
        .iter()
        .find(|m| m.tool_call_id.is_some())
        .expect("the result is in the conversation");
    assert_eq!(
        answered.tool_call_id.as_deref(),
        Some(asked.tool_calls[0].id.as_str())
    );
    assert!(!asked.tool_calls[0].id.is_empty());
    // the unknown tool is answered with an error, not called
    let third = &requests[2].messages;
    assert!(third
        .iter()
        .any(|m| m.tool_call_id.is_some() && m.content.contains("no tool `payments__transfer`")));
}

/// With `offer_role_tools` the model is offered every operation the role's connectors
/// declare, with their descriptions and input schemas, and nothing of a connector the role
/// may not use (an MCP server's allowed tools become the model's tools this way).
#[test]
fn the_llm_agent_offers_the_operations_its_roles_connectors_declare_with_their_schemas() {
    let world = World::new();
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "entry": { "type": "integer" } },
        "required": ["entry"]
    });
    let ledger = aios_core::RecordingConnector::new("ledger", aios_core::EffectClass::Reversible)
        .with_operation(
            aios_core::OperationSpec::new("write", aios_core::EffectClass::Reversible)
                .described("write one ledger entry")
                .input_schema(schema.clone()),
        );
    let model = ScriptedModel::new("local")
        .call_tool("ledger__write", serde_json::json!({ "entry": 7 }))
        .reply("booked");
    let orch = Orchestrator::builder(governor())
        .connector(Arc::new(world.email.clone()))
        .connector(Arc::new(ledger.clone()))
        .clock(Arc::new(world.timer.clock().clone()))
        .timer(Arc::new(world.timer.clone()))
        .models(ModelRouter::single(Arc::new(model.clone())))
        .role(
            Role::new(
                "worker",
                "work",
                Arc::new(LlmAgent::default().offer_role_tools()),
            )
            .connector("ledger"),
        )
        .build()
        .unwrap();
    let out = block_on(orch.start(Workflow::new("w").task(TaskSpec::new(
        "book",
        "worker",
        serde_json::json!("book entry 7"),
    ))))
    .unwrap();
    assert_eq!(out.outputs["book"]["text"], "booked", "{:?}", out.status);
    let offered = &model.requests()[0].tools;
    assert_eq!(offered.len(), 1, "only the role's connector: {offered:?}");
    assert_eq!(offered[0].name, "ledger__write");
    assert_eq!(offered[0].description, "write one ledger entry");
    assert_eq!(offered[0].parameters, schema);
    assert_eq!(ledger.effects().len(), 1);
    assert_eq!(ledger.effects()[0].input["entry"], 7);
}

#[test]
fn the_llm_agent_builds_its_prompt_from_a_template_over_the_task() {
    let world = World::new();
    let model = ScriptedModel::new("local").reply("ok").reply("ok");
    let agent = LlmAgent::default()
        .prompt("Write about {topic} for {/audience/name}, from {{notes}}: {research}.")
        .memory_query("topic");
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(model.clone())))
        .role(Role::new("writer", "writing", Arc::new(agent)))
        .build()
        .unwrap();
    let wf = Workflow::new("w")
        .task(TaskSpec::new(
            "research",
            RoleId::from_name("writer"),
            serde_json::json!({ "topic": "x", "audience": { "name": "y" } }),
        ))
        .task(
            TaskSpec::new(
                "draft",
                RoleId::from_name("writer"),
                serde_json::json!({ "topic": "rust", "audience": { "name": "founders" } }),
            )
            .after(["research"]),
        );
    let out = block_on(orch.start(wf)).unwrap();
    // research's prompt names `{research}`, which it lacks: it fails, naming the placeholder
    assert!(
        matches!(&out.status, RunStatus::Failed { reason } if reason.contains("`{research}`")),
        "{:?}",
        out.status
    );
    let wf = Workflow::new("w2").task(TaskSpec::new(
        "draft",
        RoleId::from_name("writer"),
        serde_json::json!({ "topic": "rust", "audience": { "name": "founders" }, "research": "notes" }),
    ));
    let out = block_on(orch.start(wf)).unwrap();
    assert_eq!(out.status, RunStatus::Completed, "{:?}", out.status);
    let user = model.requests()[0]
        .messages
        .iter()
        .find(|m| m.role == aios_core::MessageRole::User)
        .unwrap()
        .content
        .clone();
    assert_eq!(user, "Write about rust for founders, from {notes}: notes.");
}
