//! The production set-up on one database: an orchestrator whose every storage port is
//! PostgreSQL runs a workflow to completion, and a kill switch pulled through one worker's
//! store is re-installed by a worker set up afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aios_core::{AuditLog, AuditLogExt, Principal, RoleId};
use aios_governance::GovernanceModel;
use aios_orchestrator::{FnAgent, Role, RunStatus, TaskSpec, Workflow};
use aios_postgres::PgStore;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "count", "final_authority": "owner" },
  "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
  "roles": [{ "key": "counter" }],
  "pathways": [{ "key": "counting", "anchor": "owner", "delegate": "counter",
                 "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
                 "escalation": [{ "name": "big", "when": { "risk_at_least": 50 }, "mode": "halt" }] }],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 10000 } }]
}"#;

fn counter() -> Role {
    let agent = FnAgent::new(|_ctx, input| {
        Box::pin(async move {
            let deps: i64 = input.deps.values().filter_map(|v| v.as_i64()).sum();
            Ok(serde_json::json!(
                input.input.as_i64().unwrap_or(0) + deps + 1
            ))
        })
    });
    Role::new("counter", "counting", Arc::new(agent))
}

fn chain(n: usize) -> Workflow {
    let role = RoleId::from_name("counter");
    (0..n).fold(Workflow::new("chain"), |wf, i| {
        let t = TaskSpec::new(format!("t{i}"), role, serde_json::json!(0));
        wf.task(if i == 0 {
            t
        } else {
            t.after([format!("t{}", i - 1)])
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_on_postgres_and_the_audit_chain_verifies() {
    let store = common::fresh().await;
    let governor = GovernanceModel::from_json(MODEL)
        .unwrap()
        .compile()
        .unwrap();
    let orchestrator = store
        .orchestrator(governor)
        .await
        .unwrap()
        .role(counter())
        .build()
        .unwrap();
    let out = orchestrator.start(chain(3)).await.unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    // the checkpoints and the audit are in the database
    let other = PgStore::connect(&common_url(&store)).await.unwrap();
    let latest = aios_orchestrator::CheckpointStore::latest(&other.checkpoint_store(), out.run)
        .await
        .unwrap()
        .unwrap();
    assert!(latest.seq >= 1);
    let log = other.audit_log();
    assert!(log.head().await.unwrap().len > 0, "the run was audited");
    assert!(log.verify(None).await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_pulled_through_one_worker_is_in_force_for_the_next() {
    use aios_governance::{ControlTarget, Controls, Halt};
    let url = common::fresh_url().await;
    // an operator pulls the kill switch through one process's store
    let first = PgStore::connect(&url).await.unwrap();
    let controls = Controls::open(
        Arc::new(first.control_store()),
        Arc::new(aios_core::SystemClock),
        Arc::new(first.audit_log()),
    )
    .await
    .unwrap();
    controls
        .stop(ControlTarget::Organisation, Principal::System, "incident")
        .await
        .unwrap();
    // a worker set up afterwards, in another process, on the same database
    let second = PgStore::connect(&url).await.unwrap();
    let reopened = Controls::open(
        Arc::new(second.control_store()),
        Arc::new(aios_core::SystemClock),
        Arc::new(second.audit_log()),
    )
    .await
    .unwrap();
    assert_eq!(
        reopened.snapshot().halt(ControlTarget::Organisation),
        Some(Halt::Stopped)
    );
    assert_eq!(reopened.history().len(), 1);
    assert_eq!(reopened.history()[0].command.reason, "incident");
}

fn common_url(store: &PgStore) -> String {
    // the store's location has no password; rebuild a URL with the test credentials
    let db = store.location().rsplit('/').next().unwrap().to_string();
    common::server().url_of(&db)
}
