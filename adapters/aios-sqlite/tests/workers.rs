//! Many runs in flight on one SQLite file: `Orchestrator::work` drives them in one future
//! while the store's writer thread group-commits their writes. Every run completes, the audit
//! chain stays one linear chain, budget reservations made at once never exceed their limit,
//! and writes made together share commits (fewer commits than writes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aios_core::RoleId;
use aios_core::{AuditLogExt, ManualClock, Money};
use aios_governance::{
    BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLimits, GovernanceModel, Limits,
    ReserveOptions, Usage,
};
use aios_orchestrator::{
    CheckpointMode, CheckpointStore, FnAgent, Orchestrator, OrchestratorConfig, Role, RunStatus,
    TaskSpec, WorkOptions, Workflow,
};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "count", "final_authority": "owner" },
  "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
  "roles": [{ "key": "counter" }],
  "pathways": [{ "key": "noop", "anchor": "owner", "delegate": "counter",
    "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
    "escalation": [{ "name": "risky", "when": { "risk_at_least": 90 }, "mode": "halt" }] }],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 1000000 } }]
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
    Role::new("counter", "noop", Arc::new(agent))
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

fn orchestrator(store: &SqliteStore, worker: &str) -> Orchestrator {
    Orchestrator::builder(
        GovernanceModel::from_json(MODEL)
            .unwrap()
            .compile()
            .unwrap(),
    )
    .role(counter())
    .checkpoints(Arc::new(store.checkpoint_store()))
    .audit(Arc::new(store.audit_log()))
    .config(OrchestratorConfig {
        checkpoints: CheckpointMode::EveryStep,
        ..OrchestratorConfig::deterministic(worker, 7)
    })
    .build()
    .unwrap()
}

/// Drains `runs` submitted seq3 runs with `in_flight` at once on a fresh file; returns the
/// commits the drain took.
fn drain(in_flight: usize, runs: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
    let o = orchestrator(&store, "w");
    let submitted: Vec<_> = (0..runs)
        .map(|_| block_on(o.submit(chain(3))).unwrap())
        .collect();
    let before = store.commits();
    let report = block_on(o.work(
        WorkOptions::until_idle().concurrency(in_flight),
        futures::future::pending(),
    ))
    .unwrap();
    let commits = store.commits() - before;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.driven.len(), runs);
    for run in submitted {
        let latest = block_on(store.checkpoint_store().latest(run))
            .unwrap()
            .unwrap();
        assert_eq!(latest.state.status, RunStatus::Completed, "run {run}");
        assert_eq!(latest.state.tasks[2].output, Some(serde_json::json!(3)));
    }
    // reopened, the chain is one linear chain that verifies
    drop(o);
    drop(store);
    let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
    let report = block_on(store.audit_log().verify(None)).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(
        report.checked,
        block_on(aios_core::AuditLog::head(&store.audit_log()))
            .unwrap()
            .len
    );
    store.check_integrity().unwrap();
    commits
}

#[test]
fn runs_in_flight_together_complete_and_share_commits() {
    let alone = drain(1, 24);
    let together = drain(16, 24);
    assert!(
        together < alone,
        "16 runs in flight took {together} commits, one at a time {alone}"
    );
}

#[test]
fn reservations_made_at_once_never_exceed_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("b.db")).unwrap();
    let ledger = store.budget_ledger(Arc::new(ManualClock::default()));
    block_on(ledger.set_limits(
        BudgetKey::Organisation,
        BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(100)),
            ..Limits::default()
        }),
    ))
    .unwrap();
    let org = BudgetChain::organisation();
    let options = ReserveOptions::default();
    let before = store.commits();
    let results =
        block_on(futures::future::join_all((0..40).map(|_| {
            ledger.reserve(&org, Usage::cost(Money::from_minor(10)), &options)
        })));
    let granted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(granted, 10);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, BudgetError::Exceeded { .. }), "{r}");
    }
    assert!(
        store.commits() - before < 40,
        "the reservations shared commits"
    );
    let usage = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(usage.reserved.cost, Money::from_minor(100));
    assert_eq!(ledger.outstanding().unwrap(), 10);
}

#[test]
fn group_commits_of_two_handles_on_one_file_keep_one_linear_chain() {
    // two handles are two writer threads contending through SQLite's lock, like processes
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.db");
    let stores = [
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    ];
    let writers: Vec<_> = stores
        .iter()
        .cloned()
        .enumerate()
        .map(|(w, store)| {
            std::thread::spawn(move || {
                let log = store.audit_log();
                for round in 0..5 {
                    let appends = (0..16).map(|i| {
                        aios_core::AuditLog::append(
                            &log,
                            aios_core::AuditRecord::new(
                                aios_core::Principal::System,
                                aios_core::AuditEvent::Note {
                                    text: format!("writer {w} round {round} entry {i}"),
                                },
                            ),
                        )
                    });
                    for head in block_on(futures::future::join_all(appends)) {
                        head.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let entries = block_on(stores[0].audit_log().entries()).unwrap();
    assert_eq!(entries.len(), 160, "no append was lost");
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert!(block_on(stores[1].audit_log().verify(None))
        .unwrap()
        .is_intact());
    let commits: u64 = stores.iter().map(SqliteStore::commits).sum();
    assert!(commits < 160, "{commits} commits for 160 appends");
}

#[test]
fn dropping_the_last_handle_after_a_write_closes_the_file_at_once() {
    // the write closures of the ports hold handles on the store; the caller's drop must
    // still be the last, so the connections are closed (and the write-ahead log folded into
    // the file) when it returns
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.db");
    let wal = dir.path().join("closed.db-wal");
    for i in 0..30 {
        let store = SqliteStore::open(&path).unwrap();
        let log = store.audit_log();
        block_on(aios_core::AuditLog::append(
            &log,
            aios_core::AuditRecord::new(
                aios_core::Principal::System,
                aios_core::AuditEvent::Note {
                    text: format!("entry {i}"),
                },
            ),
        ))
        .unwrap();
        drop(log);
        drop(store);
        assert!(!wal.exists(), "round {i}: the file is still open");
    }
}
