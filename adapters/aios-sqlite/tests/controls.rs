//! Operator controls over an SQLite file outlive the process that applied them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aios_core::{
    AgentId, AuditLogExt, EffectClass, HumanId, ManualClock, PathwayId, Principal, RoleId,
};
use aios_governance::{
    rules, ActionRequest, ControlTarget, Controls, GovernanceModel, Halt, Verdict,
};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "consulting", "final_authority": "founder" },
  "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "2h" }],
  "roles": [{ "key": "scheduler" }],
  "pathways": [{
    "key": "calendar", "anchor": "founder", "delegate": "scheduler",
    "limits": { "actions": ["hold"], "effects": ["reversible"] },
    "escalation": [{ "name": "external", "when": { "context_equals": { "external": true } },
                     "mode": "notify_after" }]
  }]
}"#;

fn hold() -> ActionRequest {
    ActionRequest::new(
        Principal::Agent(AgentId::from_name("sam")),
        RoleId::from_name("scheduler"),
        PathwayId::from_name("calendar"),
        "hold",
    )
    .with_effect(EffectClass::Reversible)
}

#[test]
fn a_stop_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controls.db");
    let governor = GovernanceModel::from_json(MODEL)
        .unwrap()
        .compile()
        .map_err(|r| r.to_string())
        .unwrap();
    let clock = ManualClock::default();
    block_on(async {
        {
            let store = SqliteStore::open(&path).unwrap();
            let controls = Controls::open(
                Arc::new(store.control_store()),
                Arc::new(clock.clone()),
                Arc::new(store.audit_log()),
            )
            .await
            .unwrap();
            assert_eq!(
                governor.decide_with(&hold(), &controls.snapshot()).verdict,
                Verdict::Allow
            );
            controls
                .stop(
                    ControlTarget::Organisation,
                    Principal::Human(HumanId::from_name("alice")),
                    "incident 42",
                )
                .await
                .unwrap();
            // everything is dropped here: the process "restarts"
        }
        clock.advance(std::time::Duration::from_secs(3_600));
        let store = SqliteStore::open(&path).unwrap();
        let controls = Controls::open(
            Arc::new(store.control_store()),
            Arc::new(clock.clone()),
            Arc::new(store.audit_log()),
        )
        .await
        .unwrap();
        assert_eq!(
            controls.snapshot().halt(ControlTarget::Organisation),
            Some(Halt::Stopped),
            "the kill switch is still pulled"
        );
        let decision = governor.decide_with(&hold(), &controls.snapshot());
        assert_ne!(decision.verdict, Verdict::Allow);
        assert!(decision.fired(rules::STOPPED), "{}", decision.explain());
        assert_eq!(controls.history().len(), 1);
        assert_eq!(controls.history()[0].command.reason, "incident 42");
        assert_eq!(
            store.audit_log().verify(None).await.unwrap().checked,
            1,
            "the stop was audited once, not again on reopening"
        );
    });
}

/// A run paused by an operator, with the orchestrator's controls kept in the SQLite file:
/// after a restart the run is still paused (its calls are not made) until a human lifts it.
#[test]
fn a_paused_run_stays_paused_after_a_restart() {
    use aios_core::{Money, RecordingConnector};
    use aios_orchestrator::{
        ConnectorRequest, FnAgent, Orchestrator, RunControl, RunStatus, TaskSpec, Workflow,
    };
    const RUN_MODEL: &str = r#"{
      "version": 1,
      "charter": { "intent": "consulting", "final_authority": "founder" },
      "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "2h" }],
      "roles": [{ "key": "scheduler" }],
      "pathways": [{
        "key": "calendar", "anchor": "founder", "delegate": "scheduler",
        "limits": { "actions": ["calendar.hold", "calendar.ask"], "effects": ["reversible"] },
        "escalation": [{ "name": "asks", "when": { "actions": ["calendar.ask"] }, "mode": "approve_before" }]
      }],
      "budgets": [ { "key": "org", "scope": "organisation", "limits": { "cost": 1000 } } ]
    }"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run-controls.db");
    let clock = ManualClock::default();
    let calendar = RecordingConnector::new("calendar", EffectClass::Reversible);
    let build = |store: &SqliteStore, controls: Arc<Controls>| {
        let agent = FnAgent::new(|ctx, _| {
            Box::pin(async move {
                // the first call parks the run for an approval; the hold comes after it
                ctx.call(ConnectorRequest::new(
                    "calendar",
                    "ask",
                    serde_json::json!({}),
                ))
                .await?;
                let out = ctx
                    .call(
                        ConnectorRequest::new("calendar", "hold", serde_json::json!({ "at": 9 }))
                            .estimated_cost(Money::from_minor(1)),
                    )
                    .await?;
                Ok(out.output)
            })
        });
        let governor = GovernanceModel::from_json(RUN_MODEL)
            .unwrap()
            .compile()
            .map_err(|r| r.to_string())
            .unwrap();
        Orchestrator::builder(governor)
            .role(
                aios_orchestrator::Role::new("scheduler", "calendar", Arc::new(agent))
                    .connector("calendar"),
            )
            .connector(Arc::new(calendar.clone()))
            .clock(Arc::new(clock.clone()))
            .timer(Arc::new(aios_core::ManualTimer::new(clock.clone())))
            .audit(Arc::new(store.audit_log()))
            .checkpoints(Arc::new(store.checkpoint_store()))
            .approval_store(Arc::new(store.approval_store()))
            .budgets(Arc::new(store.budget_ledger(Arc::new(clock.clone()))))
            .controls(controls)
            .build()
            .unwrap()
    };
    let open_controls = |store: &SqliteStore| {
        Arc::new(
            block_on(Controls::open(
                Arc::new(store.control_store()),
                Arc::new(clock.clone()),
                Arc::new(store.audit_log()),
            ))
            .unwrap(),
        )
    };
    let alice = HumanId::from_name("alice");
    let (run, approval) = {
        let store = SqliteStore::open(&path).unwrap();
        let orch = build(&store, open_controls(&store));
        let parked = block_on(orch.start(Workflow::new("hold").task(TaskSpec::new(
            "hold",
            RoleId::from_name("scheduler"),
            serde_json::Value::Null,
        ))))
        .unwrap();
        let approval = parked.pending_approvals()[0];
        block_on(orch.control_run(
            parked.run,
            RunControl::Pause,
            Principal::Human(alice),
            "customer asked to wait",
        ))
        .unwrap();
        (parked.run, approval)
        // the process "restarts"
    };
    let store = SqliteStore::open(&path).unwrap();
    let orch = build(&store, open_controls(&store));
    let outcome =
        block_on(orch.submit_approval(approval, alice, aios_governance::ApprovalResponse::Approve))
            .unwrap();
    assert_eq!(outcome.status, RunStatus::Paused, "the pause held");
    assert!(
        calendar.effects().is_empty(),
        "no call was made while paused"
    );
    // only a human lifts it
    assert!(
        block_on(orch.control_run(run, RunControl::Resume, Principal::System, "auto")).is_err()
    );
    block_on(orch.control_run(
        run,
        RunControl::Resume,
        Principal::Human(alice),
        "customer is ready",
    ))
    .unwrap();
    let done = block_on(orch.resume(run)).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(calendar.effects().len(), 2);
    assert!(block_on(store.audit_log().verify(None))
        .unwrap()
        .is_intact());
}
