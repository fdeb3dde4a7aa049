//! Many workers on one database: four `Orchestrator::work` loops, each with its own
//! connection pool, drain the submitted runs; two of them are killed mid-run (their futures
//! dropped, leases left behind) and replaced. Every run completes, every effect happens once
//! (counted by the connector, outside the orchestrator), no reservation stays open, the audit
//! chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::{AuditLogExt, EffectClass, RecordingConnector, SystemClock};
use aios_governance::{BudgetKey, BudgetLedger, GovernanceModel, Governor};
use aios_orchestrator::{
    CheckpointStore, ConnectorRequest, FnAgent, Orchestrator, OrchestratorConfig, Role, RunStatus,
    TaskSpec, WorkOptions, Workflow,
};
use aios_postgres::PgStore;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "book entries", "final_authority": "owner" },
  "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
  "roles": [{ "key": "booker" }],
  "pathways": [{ "key": "booking", "anchor": "owner", "delegate": "booker",
                 "limits": { "actions": ["ledger.write"], "effects": ["reversible"] },
                 "escalation": [{ "name": "big", "when": { "risk_at_least": 50 }, "mode": "halt" }] }],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 100000 } }]
}"#;

fn governor() -> Governor {
    GovernanceModel::from_json(MODEL)
        .unwrap()
        .compile()
        .unwrap()
}

/// A worker on its own pool. Each run writes three ledger entries, yielding between them
/// so runs interleave and a kill lands between calls.
async fn worker(url: &str, ledger: &RecordingConnector, name: &str) -> Orchestrator {
    let store = PgStore::connect(url).await.unwrap();
    let agent = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            for step in 0..3 {
                ctx.call(ConnectorRequest::new(
                    "ledger",
                    "write",
                    serde_json::json!({ "run": input.input, "step": step }),
                ))
                .await?;
                tokio::task::yield_now().await;
            }
            Ok(serde_json::json!("booked"))
        })
    });
    store
        .orchestrator(governor())
        .await
        .unwrap()
        .role(Role::new("booker", "booking", Arc::new(agent)).connector("ledger"))
        .connector(Arc::new(ledger.clone()))
        .config(OrchestratorConfig {
            // a killed worker's runs are taken over once this lapses
            lease_ttl: Duration::from_millis(600),
            ..OrchestratorConfig::deterministic(name, name.len() as u64)
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_two_killed_drain_every_run_with_every_effect_once() {
    const RUNS: usize = 200;
    let url = common::fresh_url().await;
    let ledger = RecordingConnector::new("ledger", EffectClass::Reversible);
    let submitter = worker(&url, &ledger, "submitter").await;
    for i in 0..RUNS {
        submitter
            .submit(Workflow::new("book").task(TaskSpec::new(
                "book",
                "booker",
                serde_json::json!(i),
            )))
            .await
            .unwrap();
    }
    let options = || WorkOptions::until_idle().concurrency(4);
    // set up first, so the kills land while the workers work
    let mut workers = vec![];
    for w in 0..4 {
        workers.push(worker(&url, &ledger, &format!("worker-{w}")).await);
    }
    let mut handles = vec![];
    for (w, orch) in workers.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            if w < 2 {
                // killed: its future is dropped mid-run, its leases left behind
                let _ = tokio::time::timeout(
                    Duration::from_millis(300 + 200 * w as u64),
                    orch.work(options(), futures::future::pending()),
                )
                .await;
                None
            } else {
                Some(
                    orch.work(options(), futures::future::pending())
                        .await
                        .unwrap(),
                )
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    // replacements drain what is left, including runs whose leases the killed ones held
    let store = PgStore::connect(&url).await.unwrap();
    let checkpoints = store.checkpoint_store();
    let left = checkpoints
        .list(false)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.status != RunStatus::Completed)
        .count();
    eprintln!("after the four workers: {left} runs left to the replacements");
    let mut rounds = 0;
    loop {
        let runs = checkpoints.list(false).await.unwrap();
        if runs.iter().all(|r| r.status == RunStatus::Completed) {
            assert_eq!(runs.len(), RUNS);
            break;
        }
        rounds += 1;
        assert!(
            rounds < 50,
            "runs left: {:?}",
            runs.iter()
                .filter(|r| r.status != RunStatus::Completed)
                .count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let replacement = worker(&url, &ledger, &format!("replacement-{rounds}")).await;
        replacement
            .work(options(), futures::future::pending())
            .await
            .unwrap();
    }
    // every step of every run once: the connector performs a key once
    let effects = ledger.effects();
    assert_eq!(effects.len(), RUNS * 3, "every effect exactly once");
    let mut keys: Vec<_> = effects
        .iter()
        .map(|e| e.idempotency_key.to_string())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), RUNS * 3, "no key performed twice");
    let budgets = store.budget_ledger(Arc::new(SystemClock));
    assert_eq!(
        budgets.outstanding().await.unwrap(),
        0,
        "no reservation left open"
    );
    let org = budgets
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        org.committed.tool_calls,
        (RUNS * 3) as u64,
        "each call charged once"
    );
    let log = store.audit_log();
    assert!(log.verify(None).await.unwrap().is_intact());
    // every submitted run is resumed once by the worker that takes it; a run resumed again
    // was taken over from a killed worker
    let resumed = log
        .entries()
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(&e.event, aios_core::AuditEvent::Note { text } if text.contains("resumed by worker")))
        .count();
    eprintln!("{} runs taken over from killed workers", resumed - RUNS);
    assert!(
        resumed > RUNS,
        "no run was taken over: the kills landed between runs"
    );
}
