//! Many workers on one database: four `Orchestrator::work` loops, each with its own
//! connection pool, drain the submitted runs; two of them are killed mid-run (their futures
//! dropped, leases left behind) and replaced. Every run completes, every effect happens once
//! (counted by the connector, outside the orchestrator), no reservation stays open, the audit
//! chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
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
/// so runs interleave; a `doomed` worker stalls after a run's first entry, so when it is
/// killed it holds runs half done.
async fn worker(
    url: &str,
    ledger: &RecordingConnector,
    name: &str,
    doomed: Option<Arc<AtomicUsize>>,
) -> Orchestrator {
    let store = PgStore::connect(url).await.unwrap();
    let agent = FnAgent::new(move |ctx, input| {
        let doomed = doomed.clone();
        Box::pin(async move {
            for step in 0..3 {
                ctx.call(ConnectorRequest::new(
                    "ledger",
                    "write",
                    serde_json::json!({ "run": input.input, "step": step }),
                ))
                .await?;
                if let Some(stalled) = &doomed {
                    stalled.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
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
    let submitter = worker(&url, &ledger, "submitter", None).await;
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
        let stalled = Arc::new(AtomicUsize::new(0));
        let doomed = (w < 2).then(|| stalled.clone());
        workers.push((
            worker(&url, &ledger, &format!("worker-{w}"), doomed).await,
            stalled,
        ));
    }
    let mut handles = vec![];
    for (w, (orch, stalled)) in workers.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            if w < 2 {
                // killed: its future is dropped mid-run, its leases left behind
                // killed once it holds a run half done: its future is dropped, its leases
                // left behind
                let killer = async {
                    while stalled.load(Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                tokio::select! {
                    _ = orch.work(options(), futures::future::pending()) => {
                        panic!("worker {w} finished while its runs stalled")
                    }
                    () = killer => {}
                }
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
        let replacement = worker(&url, &ledger, &format!("replacement-{rounds}"), None).await;
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
    // the killed workers held runs half done: each was resumed again by another worker
    let mut resumers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in log.entries().await.unwrap() {
        if let aios_core::AuditEvent::Note { text } = &e.event {
            if let Some((run, rest)) = text
                .strip_prefix("run ")
                .and_then(|t| t.split_once(" resumed by worker `"))
            {
                let who = rest.split('`').next().unwrap_or("").to_string();
                resumers.entry(run.to_string()).or_default().push(who);
            }
        }
    }
    let taken_over = resumers
        .values()
        .filter(|w| w.iter().any(|n| n == "worker-0" || n == "worker-1") && w.len() > 1)
        .count();
    let by_doomed = resumers
        .values()
        .filter(|w| w.iter().any(|n| n == "worker-0" || n == "worker-1"))
        .count();
    let multi = resumers.values().filter(|w| w.len() > 1).count();
    eprintln!(
        "{taken_over} runs taken over from killed workers ({by_doomed} resumed by them, {multi} resumed twice, {} runs resumed)",
        resumers.len()
    );
    assert!(
        taken_over >= 2,
        "each killed worker held at least one run half done"
    );
}
