//! The worker loop: submitted runs, runs whose approval was decided elsewhere and runs whose
//! worker died are drained by `Orchestrator::work`, each exactly once, several at a time,
//! inside one future; it returns when idle or when told to stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use aios_core::{AuditLogExt, InMemoryAuditLog};
use aios_governance::{ApprovalResponse, InMemoryApprovalStore, InMemoryBudgetLedger};
use aios_orchestrator::{
    CheckpointStore, ConnectorRequest, FnAgent, InMemoryCheckpointStore, Orchestrator,
    OrchestratorConfig, Role, RunStatus, TaskSpec, WorkOptions, WorkerId, Workflow,
};
use common::*;
use futures::executor::block_on;

/// Shared stores: what several workers on one database share.
#[derive(Clone)]
struct Shared {
    world: World,
    checkpoints: InMemoryCheckpointStore,
    audit: InMemoryAuditLog,
    approvals: InMemoryApprovalStore,
    ledger: InMemoryBudgetLedger,
}

impl Shared {
    fn new() -> Self {
        let world = World::new();
        let clock = Arc::new(world.timer.clock().clone());
        Self {
            checkpoints: InMemoryCheckpointStore::new(),
            audit: InMemoryAuditLog::new(),
            approvals: InMemoryApprovalStore::new(),
            ledger: InMemoryBudgetLedger::new(clock),
            world,
        }
    }

    /// A worker: writes to the ledger (reversible, alone) or sends mail (irreversible: needs
    /// the founder).
    fn worker(&self, name: &str) -> Orchestrator {
        let agent = FnAgent::new(|ctx, input| {
            Box::pin(async move {
                let connector = input.input["via"].as_str().unwrap_or("ledger").to_string();
                let op = if connector == "email" {
                    "send"
                } else {
                    "write"
                };
                let out = ctx
                    .call(ConnectorRequest::new(connector, op, input.input.clone()))
                    .await?;
                Ok(out.output)
            })
        });
        Orchestrator::builder(governor())
            .role(
                Role::new("worker", "work", Arc::new(agent))
                    .connector("ledger")
                    .connector("email"),
            )
            .connector(Arc::new(self.world.ledger.clone()))
            .connector(Arc::new(self.world.email.clone()))
            .checkpoints(Arc::new(self.checkpoints.clone()))
            .audit(Arc::new(self.audit.clone()))
            .approval_store(Arc::new(self.approvals.clone()))
            .budgets(Arc::new(self.ledger.clone()))
            .clock(Arc::new(self.world.timer.clock().clone()))
            .timer(Arc::new(self.world.timer.clone()))
            .config(OrchestratorConfig::deterministic(name, 7))
            .build()
            .unwrap()
    }
}

fn job(i: usize, via: &str) -> Workflow {
    Workflow::new(format!("job {i}")).task(TaskSpec::new(
        "do",
        "worker",
        serde_json::json!({ "i": i, "via": via }),
    ))
}

/// The work model knows `ledger.write` on the `work` pathway; `email.send` is added there
/// with an approval rule for irreversible effects.
fn governor() -> aios_governance::Governor {
    governor_from(
        &MODEL
            .replace(
                r#""limits": { "actions": ["ledger.write", "model.complete"]"#,
                r#""limits": { "actions": ["ledger.write", "email.send", "model.complete"]"#,
            )
            .replace(
                r#""escalation": [ { "name": "risky", "when": { "risk_at_least": 80 }, "mode": "halt" } ] }"#,
                r#""escalation": [ { "name": "risky", "when": { "risk_at_least": 80 }, "mode": "halt" },
                                  { "name": "mail-needs-approval", "when": { "effect_at_least": "irreversible" }, "mode": "approve_before" } ] }"#,
            ),
    )
}

#[test]
fn submitted_runs_are_drained_each_once_several_at_a_time() {
    let shared = Shared::new();
    let orch = shared.worker("w1");
    let runs: Vec<_> = (0..7)
        .map(|i| block_on(orch.submit(job(i, "ledger"))).unwrap())
        .collect();
    assert!(
        shared.world.ledger.effects().is_empty(),
        "submit drives nothing"
    );
    assert_eq!(block_on(orch.runnable()).unwrap().len(), 7);
    let report = block_on(orch.work(
        WorkOptions::until_idle().concurrency(3),
        futures::future::pending(),
    ))
    .unwrap();
    assert_eq!(report.driven.len(), 7, "{report:?}");
    assert!(report
        .driven
        .iter()
        .all(|o| o.status == RunStatus::Completed));
    let mut driven: Vec<_> = report.driven.iter().map(|o| o.run).collect();
    driven.sort();
    let mut expected = runs.clone();
    expected.sort();
    assert_eq!(driven, expected);
    assert_eq!(shared.world.ledger.effects().len(), 7);
    assert!(block_on(orch.runnable()).unwrap().is_empty());
    // nothing left: another call does nothing
    let again = block_on(orch.work(WorkOptions::until_idle(), futures::future::pending())).unwrap();
    assert!(again.driven.is_empty());
}

#[test]
fn a_run_whose_approval_was_decided_elsewhere_is_taken_up() {
    let shared = Shared::new();
    let worker = shared.worker("w1");
    let console = shared.worker("console");
    block_on(worker.submit(job(1, "email"))).unwrap();
    let first =
        block_on(worker.work(WorkOptions::until_idle(), futures::future::pending())).unwrap();
    let RunStatus::Parked { approvals } = &first.driven[0].status else {
        panic!("{first:?}")
    };
    assert!(shared.world.email.effects().is_empty());
    assert!(
        block_on(worker.runnable()).unwrap().is_empty(),
        "pending: not runnable"
    );
    // the operator answers through another orchestrator on the same stores, which does not
    // drive the run
    let run = block_on(console.answer_approval(approvals[0], alice(), ApprovalResponse::Approve))
        .unwrap();
    assert_eq!(run, first.driven[0].run);
    assert!(
        shared.world.email.effects().is_empty(),
        "answering drives nothing"
    );
    assert_eq!(block_on(worker.runnable()).unwrap(), vec![run]);
    // the decision woke the run in the store's queue: the next claim hands it out
    let probe = WorkerId::new("probe");
    let claimed = block_on(shared.checkpoints.claim(
        &probe,
        worker.clock().now(),
        Duration::from_secs(30),
        10,
    ))
    .unwrap();
    assert_eq!(claimed.iter().map(|l| l.run).collect::<Vec<_>>(), vec![run]);
    block_on(shared.checkpoints.release(&claimed[0])).unwrap();
    let second =
        block_on(worker.work(WorkOptions::until_idle(), futures::future::pending())).unwrap();
    assert_eq!(second.driven.len(), 1, "{second:?}");
    assert_eq!(second.driven[0].status, RunStatus::Completed);
    assert_eq!(shared.world.email.effects().len(), 1);
}

#[test]
fn a_run_left_by_a_dead_worker_is_taken_over_once_its_lease_lapses() {
    let shared = Shared::new();
    let orch = shared.worker("w1");
    let run = block_on(orch.submit(job(1, "ledger"))).unwrap();
    // a worker takes the run and dies without releasing it
    let now = orch.clock().now();
    let dead = block_on(shared.checkpoints.acquire(
        run,
        &WorkerId::new("dead"),
        now,
        Duration::from_secs(30),
    ))
    .unwrap();
    assert!(
        block_on(orch.runnable()).unwrap().is_empty(),
        "its lease is live"
    );
    let report =
        block_on(orch.work(WorkOptions::until_idle(), futures::future::pending())).unwrap();
    assert!(report.driven.is_empty());
    shared.world.timer.advance(Duration::from_secs(31));
    assert_eq!(block_on(orch.runnable()).unwrap(), vec![run]);
    let report =
        block_on(orch.work(WorkOptions::until_idle(), futures::future::pending())).unwrap();
    assert_eq!(report.driven.len(), 1);
    assert_eq!(report.driven[0].status, RunStatus::Completed);
    assert_eq!(shared.world.ledger.effects().len(), 1);
    // the dead worker's lease is fenced off
    assert!(block_on(
        shared
            .checkpoints
            .renew(&dead, orch.clock().now(), Duration::from_secs(30))
    )
    .is_err());
}

#[test]
fn two_workers_on_one_store_drive_every_run_exactly_once() {
    let shared = Shared::new();
    let a = shared.worker("a");
    let b = shared.worker("b");
    for i in 0..20 {
        block_on(a.submit(job(i, "ledger"))).unwrap();
    }
    let (ra, rb) = block_on(futures::future::join(
        a.work(
            WorkOptions::until_idle().concurrency(4),
            futures::future::pending(),
        ),
        b.work(
            WorkOptions::until_idle().concurrency(4),
            futures::future::pending(),
        ),
    ));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut driven: Vec<_> = ra.driven.iter().chain(&rb.driven).map(|o| o.run).collect();
    driven.sort();
    driven.dedup();
    assert_eq!(driven.len(), 20, "a: {ra:?}\nb: {rb:?}");
    assert_eq!(ra.driven.len() + rb.driven.len(), 20, "no run driven twice");
    let effects = shared.world.ledger.effects();
    assert_eq!(effects.len(), 20, "every effect exactly once");
    assert!(block_on(shared.audit.verify(None)).unwrap().is_intact());
}

#[test]
fn the_worker_waits_through_the_timer_when_idle_and_returns_when_stopped() {
    let shared = Shared::new();
    let orch = shared.worker("w1");
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let feeder = async {
        yield_once().await;
        // the worker is idle, asleep on the timer: a run arrives, and time passes
        let run = orch.submit(job(1, "ledger")).await.unwrap();
        shared.world.timer.advance(Duration::from_secs(1));
        loop {
            let done = orch.state(run).await.unwrap().unwrap().status == RunStatus::Completed;
            if done {
                break;
            }
            yield_once().await;
        }
        stop_tx.send(()).unwrap();
    };
    let (report, ()) = block_on(futures::future::join(
        orch.work(WorkOptions::default().poll(Duration::from_secs(1)), stop),
        feeder,
    ));
    let report = report.unwrap();
    assert_eq!(report.driven.len(), 1, "{report:?}");
    assert_eq!(shared.world.ledger.effects().len(), 1);
}

#[test]
fn max_runs_bounds_one_call() {
    let shared = Shared::new();
    let orch = shared.worker("w1");
    for i in 0..5 {
        block_on(orch.submit(job(i, "ledger"))).unwrap();
    }
    let report = block_on(orch.work(
        WorkOptions::until_idle().concurrency(2).max_runs(3),
        futures::future::pending(),
    ))
    .unwrap();
    assert_eq!(report.driven.len(), 3);
    assert_eq!(block_on(orch.runnable()).unwrap().len(), 2);
}

/// Returns `Pending` once (waking itself), so other futures of a `join` get to run.
async fn yield_once() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
