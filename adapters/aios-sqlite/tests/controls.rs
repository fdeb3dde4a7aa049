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
