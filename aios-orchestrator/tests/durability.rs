//! Crash safety: a store or connector failing at every point of a run, then resume; racing
//! workers; fork; pinned governance versions; non-determinism.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog, FaultyConnector};
use aios_core::{
    AuditLog, AuditLogExt, Connector, ConnectorCall, ConnectorDescriptor, ConnectorError,
    ConnectorOutput, EffectClass, InMemoryAuditLog, Message, ModelRequest, RecordingConnector,
    RoleId, Timer,
};
use aios_governance::ApprovalResponse;
use aios_orchestrator::testing::FaultyCheckpointStore;
use aios_orchestrator::{
    CheckpointStore, ConnectorRequest, FnAgent, InMemoryCheckpointStore, ModelRouter, Orchestrator,
    OrchestratorConfig, OrchestratorError, RetryPolicy, Role, RunStatus, TaskSpec, WorkerId,
    Workflow,
};
use async_trait::async_trait;
use common::*;
use futures::executor::block_on;
use futures::FutureExt;

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::ZERO,
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

/// A worker role whose tasks write to the ledger and ask the model, deterministically.
fn worker_role() -> Role {
    let agent = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let step = input.input["step"].as_i64().unwrap_or(0);
            let from_deps: i64 = input
                .deps
                .values()
                .map(|v| v["n"].as_i64().unwrap_or(0))
                .sum();
            let r = ctx
                .complete(ModelRequest::new(vec![Message::user(format!(
                    "step {step}"
                ))]))
                .await?;
            let out = ctx
                .call(ConnectorRequest::new(
                    "ledger",
                    "write",
                    serde_json::json!({ "step": step, "note": r.content }),
                ))
                .await?;
            Ok(
                serde_json::json!({ "n": from_deps + step, "effect": out.output["effect"].is_number() }),
            )
        })
    });
    Role::new("worker", "work", Arc::new(agent))
        .connector("ledger")
        .retry(quick_retry())
}

fn diamond() -> Workflow {
    let w = RoleId::from_name("worker");
    Workflow::new("diamond")
        .task(TaskSpec::new("a", w, serde_json::json!({ "step": 1 })))
        .task(TaskSpec::new("b", w, serde_json::json!({ "step": 2 })).after(["a"]))
        .task(TaskSpec::new("c", w, serde_json::json!({ "step": 3 })).after(["a"]))
        .task(TaskSpec::new("d", w, serde_json::json!({ "step": 4 })).after(["b", "c"]))
}

struct Rig {
    world: World,
    checkpoints: InMemoryCheckpointStore,
    audit: InMemoryAuditLog,
    store_faults: Faults,
    audit_faults: Faults,
    connector_faults: Faults,
    ledger: aios_governance::InMemoryBudgetLedger,
}

impl Rig {
    fn new() -> Self {
        Self {
            world: World::new(),
            checkpoints: InMemoryCheckpointStore::new(),
            audit: InMemoryAuditLog::new(),
            store_faults: Faults::default(),
            audit_faults: Faults::default(),
            connector_faults: Faults::default(),
            ledger: aios_governance::InMemoryBudgetLedger::new(Arc::new(
                aios_core::ManualClock::default(),
            )),
        }
    }

    fn orchestrator(&self, worker: &str) -> Orchestrator {
        Orchestrator::builder(governor())
            .connector(Arc::new(FaultyConnector::new(
                self.world.ledger.clone(),
                self.connector_faults.clone(),
            )))
            .models(ModelRouter::single(Arc::new(model())))
            .clock(Arc::new(self.world.timer.clock().clone()))
            .timer(Arc::new(self.world.timer.clone()))
            .checkpoints(Arc::new(FaultyCheckpointStore::new(
                self.checkpoints.clone(),
                self.store_faults.clone(),
            )))
            .audit(Arc::new(FaultyAuditLog::new(
                self.audit.clone(),
                self.audit_faults.clone(),
            )))
            .budgets(Arc::new(self.ledger.clone()))
            .role(worker_role())
            .config(OrchestratorConfig {
                worker: WorkerId::new(worker),
                ..OrchestratorConfig::default()
            })
            .build()
            .unwrap()
    }

    /// After a crash: a new process (another worker) finds the run and finishes it.
    fn recover(&self) -> BTreeMap<String, serde_json::Value> {
        self.store_faults.set_plan(FaultPlan::none());
        self.audit_faults.set_plan(FaultPlan::none());
        self.connector_faults.set_plan(FaultPlan::none());
        // the crashed worker's lease must lapse first
        self.world.timer.advance(Duration::from_secs(120));
        let orch = self.orchestrator("worker-2");
        let runs = block_on(self.checkpoints.list(false)).unwrap();
        match runs.first() {
            None => {
                // crashed before the run was first saved: the host starts it again
                let out = block_on(orch.start(diamond())).unwrap();
                assert_eq!(out.status, RunStatus::Completed);
                out.outputs
            }
            Some(summary) if summary.status == RunStatus::Completed => {
                block_on(orch.state(summary.run))
                    .unwrap()
                    .unwrap()
                    .outputs()
            }
            Some(summary) => {
                let out = block_on(orch.resume(summary.run)).unwrap();
                assert_eq!(out.status, RunStatus::Completed, "resumed run completes");
                out.outputs
            }
        }
    }
}

fn reference() -> (BTreeMap<String, serde_json::Value>, u64, u64, u64, usize) {
    let rig = Rig::new();
    let out = block_on(rig.orchestrator("worker-1").start(diamond())).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    (
        out.outputs,
        rig.store_faults.calls(),
        rig.audit_faults.calls(),
        rig.connector_faults.calls(),
        rig.world.ledger.effects().len(),
    )
}

fn check_after_crash(
    rig: &Rig,
    expected: &BTreeMap<String, serde_json::Value>,
    effects: usize,
    what: &str,
) {
    let outputs = rig.recover();
    assert_eq!(
        &outputs, expected,
        "{what}: same result as an uninterrupted run"
    );
    let done = rig.world.ledger.effects();
    assert_eq!(
        done.len(),
        effects,
        "{what}: every side effect exactly once"
    );
    let mut keys: Vec<_> = done.iter().map(|e| e.idempotency_key.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), effects);
    // only the call in flight when the process died may reach the connector again, with the
    // same idempotency key (the connector deduplicates it); journaled calls never do
    let repeats = rig.world.ledger.invocations() - effects as u64;
    assert!(
        repeats <= 1,
        "{what}: {repeats} completed calls were repeated"
    );
    assert!(
        block_on(rig.audit.verify(None)).unwrap().is_intact(),
        "{what}: audit chain verifies"
    );
    assert_eq!(
        rig.ledger.outstanding(),
        0,
        "{what}: no reservation is left behind"
    );
    let spent = rig
        .ledger
        .usage_sync(aios_governance::BudgetKey::Organisation)
        .unwrap()
        .committed
        .tool_calls;
    // a crash between a commit and the next checkpoint can charge the replayed call again
    assert!(
        (effects as u64..=effects as u64 + 1).contains(&spent),
        "{what}: {spent} tool calls charged for {effects}"
    );
}

#[test]
fn a_store_failure_at_every_point_then_resume_never_repeats_a_side_effect() {
    let (expected, store_calls, _, _, effects) = reference();
    assert!(
        store_calls > 10,
        "the run touches the store at many points ({store_calls})"
    );
    for k in 1..=store_calls {
        let rig = Rig::new();
        rig.store_faults.set_plan(FaultPlan::fail_nth(k));
        let first = block_on(rig.orchestrator("worker-1").start(diamond()));
        if let Ok(out) = &first {
            assert_eq!(out.status, RunStatus::Completed);
        }
        check_after_crash(
            &rig,
            &expected,
            effects,
            &format!("store fault at call {k}"),
        );
    }
}

#[test]
fn an_audit_failure_at_every_point_then_resume_never_repeats_a_side_effect() {
    let (expected, _, audit_calls, _, effects) = reference();
    for k in 1..=audit_calls {
        let rig = Rig::new();
        rig.audit_faults.set_plan(FaultPlan::fail_nth(k));
        let first = block_on(rig.orchestrator("worker-1").start(diamond()));
        assert!(
            first.is_err(),
            "an audit failure stops the run (fault at append {k})"
        );
        check_after_crash(
            &rig,
            &expected,
            effects,
            &format!("audit fault at call {k}"),
        );
    }
}

#[test]
fn a_connector_failure_at_every_point_is_retried_to_the_same_result() {
    let (expected, _, _, connector_calls, effects) = reference();
    for k in 1..=connector_calls {
        let rig = Rig::new();
        rig.connector_faults.set_plan(FaultPlan::fail_nth(k));
        let out = block_on(rig.orchestrator("worker-1").start(diamond())).unwrap();
        assert_eq!(
            out.status,
            RunStatus::Completed,
            "transient fault {k} retried"
        );
        assert_eq!(out.outputs, expected);
        assert_eq!(rig.world.ledger.effects().len(), effects);
    }
}

#[test]
fn resume_replays_journaled_model_calls_instead_of_repeating_them() {
    let world = World::new();
    let counting = model();
    let orch = newsletter_roles()
        .into_iter()
        .fold(
            builder(&world).models(ModelRouter::single(Arc::new(counting.clone()))),
            |b, r| b.role(r),
        )
        .build()
        .unwrap();
    let parked = block_on(orch.start(newsletter())).unwrap();
    assert_eq!(counting.calls(), 2);
    let id = parked.pending_approvals()[0];
    block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(
        counting.calls(),
        2,
        "research and draft are not asked again on resume"
    );
}

/// A connector whose first call hangs on the timer for `hang`; later calls answer at once.
#[derive(Debug)]
struct HangsOnce {
    inner: RecordingConnector,
    timer: Arc<dyn Timer>,
    hang: Duration,
    first: parking_lot::Mutex<bool>,
}

#[async_trait]
impl Connector for HangsOnce {
    fn descriptor(&self) -> &ConnectorDescriptor {
        self.inner.descriptor()
    }
    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let hang = std::mem::replace(&mut *self.first.lock(), false);
        if hang {
            self.timer.sleep(self.hang).await;
        }
        self.inner.invoke(call).await
    }
}

#[test]
fn two_workers_racing_on_one_run_never_fork_its_history() {
    let world = World::new();
    let checkpoints = InMemoryCheckpointStore::new();
    let ledger = aios_governance::InMemoryBudgetLedger::new(Arc::new(world.timer.clock().clone()));
    let timer: Arc<dyn Timer> = Arc::new(world.timer.clone());
    let connector = Arc::new(HangsOnce {
        inner: world.ledger.clone(),
        timer: timer.clone(),
        hang: Duration::from_secs(1000),
        first: parking_lot::Mutex::new(true),
    });
    let orch = |worker: &str| {
        Orchestrator::builder(governor())
            .connector(connector.clone())
            .models(ModelRouter::single(Arc::new(model())))
            .clock(Arc::new(world.timer.clock().clone()))
            .timer(timer.clone())
            .checkpoints(Arc::new(checkpoints.clone()))
            .budgets(Arc::new(ledger.clone()))
            .role(worker_role().retry(RetryPolicy::none()))
            .config(OrchestratorConfig {
                worker: WorkerId::new(worker),
                ..OrchestratorConfig::default()
            })
            .build()
            .unwrap()
    };
    let a = orch("worker-a");
    let b = orch("worker-b");
    let mut first = Box::pin(a.start(diamond()));
    assert!(
        (&mut first).now_or_never().is_none(),
        "worker a hangs inside the first connector call"
    );
    let run = block_on(checkpoints.list(false)).unwrap()[0].run;
    assert!(
        matches!(
            block_on(b.resume(run)),
            Err(OrchestratorError::LeaseLost { .. })
        ),
        "b cannot take a live lease"
    );

    world.timer.advance(Duration::from_secs(120));
    let done = block_on(b.resume(run)).unwrap();
    assert_eq!(
        done.status,
        RunStatus::Completed,
        "b takes over the expired lease and finishes"
    );
    let history_len = block_on(checkpoints.latest(run)).unwrap().unwrap().seq;
    assert_eq!(
        ledger.outstanding(),
        0,
        "b released the reservation a left open"
    );

    world.timer.advance(Duration::from_secs(1000));
    let stale = block_on(first);
    assert!(
        matches!(stale, Err(OrchestratorError::LeaseLost { .. })),
        "a's next write is fenced: {stale:?}"
    );
    let latest = block_on(checkpoints.latest(run)).unwrap().unwrap();
    assert_eq!(
        latest.seq, history_len,
        "nothing written by the stale worker"
    );
    assert_eq!(latest.state.status, RunStatus::Completed);
    for seq in 1..=latest.seq {
        assert!(
            block_on(checkpoints.get(run, seq)).unwrap().is_some(),
            "one linear history"
        );
    }
    assert_eq!(
        world.ledger.effects().len(),
        4,
        "the hung call and b's retry share one idempotency key"
    );
    assert_eq!(ledger.outstanding(), 0);
    let spent = ledger
        .usage_sync(aios_governance::BudgetKey::Organisation)
        .unwrap()
        .committed
        .tool_calls;
    assert_eq!(
        spent, 4,
        "a's late commit is refused: every call is charged once"
    );
}

#[test]
fn fork_copies_a_run_without_touching_its_history() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let parked = block_on(orch.start(newsletter())).unwrap();
    let original = block_on(orch.checkpoint_store().latest(parked.run))
        .unwrap()
        .unwrap();
    let fork = block_on(orch.fork(parked.run, original.seq)).unwrap();
    assert_ne!(fork, parked.run);
    let forked = block_on(orch.resume(fork)).unwrap();
    assert!(
        matches!(forked.status, RunStatus::Parked { .. }),
        "the fork asks for its own approval"
    );
    assert_ne!(forked.pending_approvals(), parked.pending_approvals());
    let state = block_on(orch.state(fork)).unwrap().unwrap();
    assert_eq!(state.forked_from, Some((parked.run, original.seq)));
    assert_eq!(
        block_on(orch.checkpoint_store().latest(parked.run))
            .unwrap()
            .unwrap(),
        original,
        "original unchanged"
    );
    // both can be approved independently; each sends once
    block_on(orch.submit_approval(
        forked.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    block_on(orch.submit_approval(
        parked.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    assert_eq!(world.email.effects().len(), 2);
}

#[test]
fn runs_stay_pinned_to_the_governance_version_they_started_under() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let parked = block_on(orch.start(newsletter())).unwrap();
    // version 2 lets outreach send without approval
    let v2 = MODEL.replace("\"version\": 1", "\"version\": 2").replace(
        "\"effect_at_least\": \"irreversible\"",
        "\"risk_at_least\": 90",
    );
    orch.load_governance(governor_from(&v2), true);
    let fresh = block_on(orch.start(newsletter())).unwrap();
    assert_eq!(fresh.status, RunStatus::Completed, "new runs use version 2");
    let state = block_on(orch.state(parked.run)).unwrap().unwrap();
    assert_eq!(state.governance_version, 1);
    // a worker that only has version 2 refuses to resume a version-1 run
    let other = newsletter_roles()
        .into_iter()
        .fold(
            Orchestrator::builder(governor_from(&v2))
                .connector(Arc::new(world.email.clone()))
                .checkpoints(orch.checkpoint_store().clone()),
            |b, r| b.role(r),
        )
        .build()
        .unwrap();
    assert!(matches!(
        block_on(other.resume(parked.run)),
        Err(OrchestratorError::GovernanceVersionUnavailable { version: 1, .. })
    ));
    let done = block_on(orch.submit_approval(
        parked.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
}

#[test]
fn replay_that_changes_its_calls_is_a_non_determinism_error() {
    let world = World::new();
    let flips = Arc::new(parking_lot::Mutex::new(0u32));
    let f = flips.clone();
    let agent = FnAgent::new(move |ctx, _input| {
        let n = {
            let mut g = f.lock();
            *g += 1;
            *g
        };
        Box::pin(async move {
            ctx.complete(ModelRequest::new(vec![Message::user(format!(
                "attempt {n}"
            ))]))
            .await?;
            let out = ctx
                .call(ConnectorRequest::new(
                    "email",
                    "send",
                    serde_json::json!({}),
                ))
                .await?;
            Ok(out.output)
        })
    });
    let orch = builder(&world)
        .role(Role::new("outreach", "outreach", Arc::new(agent)).connector("email"))
        .build()
        .unwrap();
    let wf = Workflow::new("flaky").task(TaskSpec::new(
        "send",
        RoleId::from_name("outreach"),
        serde_json::Value::Null,
    ));
    let parked = block_on(orch.start(wf)).unwrap();
    let err = block_on(orch.submit_approval(
        parked.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::NonDeterminism { seq: 0, .. }),
        "{err}"
    );
    assert!(world.email.effects().is_empty());
}

#[test]
fn an_interrupted_irreversible_call_without_idempotency_escalates_instead_of_repeating() {
    let world = World::new();
    let sms = RecordingConnector::new("email", EffectClass::Irreversible).not_idempotent();
    let checkpoints = InMemoryCheckpointStore::new();
    let faults = Faults::default();
    let notifier = aios_orchestrator::InMemoryNotifier::new();
    let orch = |f: Faults| {
        newsletter_roles()
            .into_iter()
            .fold(
                Orchestrator::builder(governor())
                    .connector(Arc::new(sms.clone()))
                    .models(ModelRouter::single(Arc::new(model())))
                    .clock(Arc::new(world.timer.clock().clone()))
                    .timer(Arc::new(world.timer.clone()))
                    .notifier(Arc::new(notifier.clone()))
                    .checkpoints(Arc::new(FaultyCheckpointStore::new(checkpoints.clone(), f))),
                |b, r| b.role(r),
            )
            .build()
            .unwrap()
    };
    let o = orch(faults.clone());
    let parked = block_on(o.start(newsletter())).unwrap();
    // the save after the send fails: the process "dies" with the send performed but not
    // journaled. Store calls after the approval: wake (the queue learns of the decision),
    // acquire, latest, save (approved marker), then the send, then save (its result).
    faults.set_plan(FaultPlan::fail_nth(5));
    let crashed = block_on(o.submit_approval(
        parked.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ));
    assert!(crashed.is_err(), "the save after the send failed");
    assert_eq!(sms.effects().len(), 1);
    world.timer.advance(Duration::from_secs(120));
    let o2 = orch(Faults::default());
    let out = block_on(o2.resume(parked.run)).unwrap();
    assert!(
        matches!(out.status, RunStatus::Failed { ref reason } if reason.contains("unknown")),
        "{:?}",
        out.status
    );
    assert_eq!(sms.effects().len(), 1, "never sent twice");
    assert!(notifier
        .sent()
        .iter()
        .any(|n| n.kind == aios_orchestrator::NotificationKind::OutcomeUnknown));
}

#[test]
fn audit_log_is_written_for_every_side_effect() {
    let rig = Rig::new();
    let out = block_on(rig.orchestrator("w").start(diamond())).unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    let entries = block_on(rig.audit.entries()).unwrap();
    let invoked = entries
        .iter()
        .filter(|e| matches!(e.event, aios_core::AuditEvent::ConnectorInvoked { .. }))
        .count();
    assert_eq!(invoked, rig.world.ledger.effects().len());
    let decisions = entries
        .iter()
        .filter(|e| matches!(e.event, aios_core::AuditEvent::DecisionMade { .. }))
        .count();
    assert_eq!(
        decisions, 8,
        "a decision per model call and per connector call"
    );
    let _: &dyn AuditLog = &rig.audit;
}

fn splitter() -> Role {
    let agent = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            if input.input["split"].as_bool() == Some(true) {
                for i in 1..=3 {
                    ctx.spawn(TaskSpec::new(
                        format!("part-{i}"),
                        RoleId::from_name("worker"),
                        serde_json::json!({ "step": i * 10 }),
                    ))
                    .await?;
                }
                return Ok(serde_json::json!({ "n": 0 }));
            }
            let sum: i64 = input
                .deps
                .values()
                .map(|v| v["n"].as_i64().unwrap_or(0))
                .sum();
            Ok(serde_json::json!({ "n": sum, "joined": input.deps.len() }))
        })
    });
    Role::new("splitter", "splitting", Arc::new(agent))
}

#[test]
fn fan_out_survives_a_crash_at_every_point() {
    let s = RoleId::from_name("splitter");
    let wf = || {
        Workflow::new("fan")
            .task(TaskSpec::new(
                "split",
                s,
                serde_json::json!({ "split": true }),
            ))
            .task(TaskSpec::new("join", s, serde_json::json!({})).after(["split"]))
    };
    let run_with =
        |faults: &Faults, checkpoints: &InMemoryCheckpointStore, world: &World, worker: &str| {
            Orchestrator::builder(governor())
                .connector(Arc::new(world.ledger.clone()))
                .models(ModelRouter::single(Arc::new(model())))
                .clock(Arc::new(world.timer.clock().clone()))
                .timer(Arc::new(world.timer.clone()))
                .checkpoints(Arc::new(FaultyCheckpointStore::new(
                    checkpoints.clone(),
                    faults.clone(),
                )))
                .role(worker_role())
                .role(splitter())
                .config(OrchestratorConfig {
                    worker: WorkerId::new(worker),
                    ..OrchestratorConfig::default()
                })
                .build()
                .unwrap()
        };
    let world = World::new();
    let faults = Faults::default();
    let reference =
        block_on(run_with(&faults, &InMemoryCheckpointStore::new(), &world, "w").start(wf()))
            .unwrap();
    assert_eq!(
        reference.outputs["join"],
        serde_json::json!({ "n": 60, "joined": 4 })
    );
    let calls = faults.calls();
    for k in 1..=calls {
        let world = World::new();
        let checkpoints = InMemoryCheckpointStore::new();
        let faults = Faults::new(FaultPlan::fail_nth(k));
        let first = block_on(run_with(&faults, &checkpoints, &world, "w1").start(wf()));
        faults.set_plan(FaultPlan::none());
        world.timer.advance(Duration::from_secs(120));
        let outputs = match (first, block_on(checkpoints.list(false)).unwrap().first()) {
            (Ok(out), _) => out.outputs,
            (Err(_), None) => {
                block_on(run_with(&faults, &checkpoints, &world, "w2").start(wf()))
                    .unwrap()
                    .outputs
            }
            (Err(_), Some(s)) if s.status == RunStatus::Completed => {
                block_on(checkpoints.latest(s.run))
                    .unwrap()
                    .unwrap()
                    .state
                    .outputs()
            }
            (Err(_), Some(s)) => {
                block_on(run_with(&faults, &checkpoints, &world, "w2").resume(s.run))
                    .unwrap()
                    .outputs
            }
        };
        assert_eq!(outputs, reference.outputs, "fault at store call {k}");
        assert_eq!(world.ledger.effects().len(), 3, "fault at store call {k}");
    }
}

#[test]
fn an_approval_requested_just_before_a_crash_is_not_asked_twice() {
    struct Rig {
        world: World,
        checkpoints: InMemoryCheckpointStore,
        approvals: aios_governance::InMemoryApprovalStore,
        faults: Faults,
    }
    impl Rig {
        fn new(plan: FaultPlan) -> Self {
            Self {
                world: World::new(),
                checkpoints: InMemoryCheckpointStore::new(),
                approvals: aios_governance::InMemoryApprovalStore::new(),
                faults: Faults::new(plan),
            }
        }
        fn orchestrator(&self, worker: &str) -> Orchestrator {
            let store = FaultyCheckpointStore::new(self.checkpoints.clone(), self.faults.clone());
            newsletter_roles()
                .into_iter()
                .fold(
                    builder(&self.world)
                        .checkpoints(Arc::new(store))
                        .approval_store(Arc::new(self.approvals.clone()))
                        .config(OrchestratorConfig {
                            worker: WorkerId::new(worker),
                            ..OrchestratorConfig::default()
                        }),
                    |b, r| b.role(r),
                )
                .build()
                .unwrap()
        }
    }
    // every store call of a run up to its parking, failed in turn
    let reference = Rig::new(FaultPlan::none());
    block_on(reference.orchestrator("w0").start(newsletter())).unwrap();
    for k in 1..=reference.faults.calls() {
        let rig = Rig::new(FaultPlan::fail_nth(k));
        let first = block_on(rig.orchestrator("w1").start(newsletter()));
        rig.faults.set_plan(FaultPlan::none());
        rig.world.timer.advance(Duration::from_secs(120));
        let second = rig.orchestrator("w2");
        let parked = match (
            first,
            block_on(rig.checkpoints.list(false)).unwrap().first(),
        ) {
            (Ok(out), _) => out,
            (Err(_), None) => block_on(second.start(newsletter())).unwrap(),
            (Err(_), Some(s)) => block_on(second.resume(s.run)).unwrap(),
        };
        assert!(
            matches!(parked.status, RunStatus::Parked { .. }),
            "fault {k}: {:?}",
            parked.status
        );
        let pending = block_on(second.pending_approvals()).unwrap();
        assert_eq!(
            pending.len(),
            1,
            "fault {k}: one question for the founder, not two"
        );
        let done =
            block_on(second.submit_approval(pending[0].id, alice(), ApprovalResponse::Approve))
                .unwrap();
        assert_eq!(done.status, RunStatus::Completed, "fault {k}");
        assert_eq!(rig.world.email.effects().len(), 1, "fault {k}");
    }
}
