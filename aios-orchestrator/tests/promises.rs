//! The promises users trust the library for, each tried the way an attacker or a careless
//! user would: approvals used once for exactly what was approved, deadlines that act, budgets
//! that hold, one writer, never twice, damaged state refused, secrets kept out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditLogExt, CredentialHandle, EffectClass, HumanId, InMemoryVault, ManualTimer, Money,
    RecordingConnector, RoleId, RunId,
};
use aios_governance::{ApprovalResponse, OnTimeout, ResponseKind};
use aios_orchestrator::{
    CallRecord, Checkpoint, CheckpointStore, ConnectorRequest, FnAgent, InMemoryCheckpointStore,
    InMemoryNotifier, NotificationKind, Orchestrator, OrchestratorConfig, OrchestratorError, Role,
    RunStatus, TaskSpec, WorkerId, Workflow,
};
use common::*;
use futures::executor::block_on;

/// A founder with a deputy, a board above; payments need approval (approve or reject only,
/// escalating to the board after an hour); the charter caps one action at 1000.
const PAY_MODEL: &str = r#"{
  "version": 1,
  "charter": {
    "intent": "pay invoices",
    "final_authority": "founder",
    "boundaries": { "max_cost_per_action": 1000, "forbidden_actions": ["payments.transfer"] }
  },
  "anchors": [
    { "key": "founder", "title": "Founder", "holders": ["alice"], "deputy": "bob", "response_time": "4h" },
    { "key": "board", "title": "Board", "holders": ["carol"], "response_time": "8h" }
  ],
  "roles": [ { "key": "payer" } ],
  "pathways": [
    { "key": "paying", "anchor": "founder", "delegate": "payer",
      "limits": { "actions": ["*"], "effects": ["irreversible"], "max_cost_per_action": 1000 },
      "escalation": [ { "name": "payments-need-approval", "when": { "actions": ["bank.pay"] },
                        "mode": "approve_before", "deadline": "1h",
                        "on_timeout": { "escalate": "board" }, "allowed": ["approve", "reject"] },
                      { "name": "big", "when": { "cost_above": 100 }, "mode": "approve_before" } ] }
  ],
  "budgets": [ { "key": "org", "scope": "organisation", "limits": { "cost": 100000 } } ]
}"#;

struct Pay {
    bank: RecordingConnector,
    timer: ManualTimer,
    notifier: InMemoryNotifier,
    checkpoints: InMemoryCheckpointStore,
}

impl Pay {
    fn new() -> Self {
        Self {
            bank: RecordingConnector::new("bank", EffectClass::Irreversible),
            timer: ManualTimer::default(),
            notifier: InMemoryNotifier::new(),
            checkpoints: InMemoryCheckpointStore::new(),
        }
    }

    fn orchestrator_with(&self, model: &str, cost: i64) -> Orchestrator {
        let pay = FnAgent::new(move |ctx, input| {
            Box::pin(async move {
                let out = ctx
                    .call(
                        ConnectorRequest::new("bank", "pay", input.input.clone())
                            .estimated_cost(Money::from_minor(cost)),
                    )
                    .await?;
                Ok(out.output)
            })
        });
        Orchestrator::builder(governor_from(model))
            .role(Role::new("payer", "paying", Arc::new(pay)).connector("bank"))
            .connector(Arc::new(self.bank.clone()))
            .clock(Arc::new(self.timer.clock().clone()))
            .timer(Arc::new(self.timer.clone()))
            .notifier(Arc::new(self.notifier.clone()))
            .checkpoints(Arc::new(self.checkpoints.clone()))
            .build()
            .unwrap()
    }

    fn orchestrator(&self) -> Orchestrator {
        self.orchestrator_with(PAY_MODEL, 50)
    }
}

fn pay_invoice() -> Workflow {
    Workflow::new("pay").task(TaskSpec::new(
        "pay",
        RoleId::from_name("payer"),
        serde_json::json!({ "payee": "acme", "invoice": 17 }),
    ))
}

fn carol() -> HumanId {
    HumanId::from_name("carol")
}

#[test]
fn an_approval_request_keeps_the_rules_answers_deadline_and_timeout() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let id = outcome.pending_approvals()[0];
    let request = block_on(orch.pending_approvals()).unwrap().remove(0);
    assert_eq!(
        request.allowed,
        vec![ResponseKind::Approve, ResponseKind::Reject]
    );
    assert_eq!(
        request.on_timeout,
        OnTimeout::Escalate(aios_core::AnchorId::from_name("board"))
    );
    assert_eq!(
        request.expires_at - request.created_at,
        chrono::Duration::hours(1)
    );
    // the rule allows no edit: an edit is refused and nothing runs
    let edit = ApprovalResponse::Edit(serde_json::json!({ "input": { "payee": "mallory" } }));
    assert!(block_on(orch.submit_approval(id, bob(), edit)).is_err());
    assert!(w.bank.effects().is_empty());
}

#[test]
fn an_edit_above_the_charter_ceiling_is_refused_not_paid() {
    let w = Pay::new();
    // a rule that allows edits, on a payment of 500 (above 100: needs approval)
    let model = PAY_MODEL.replace(r#", "allowed": ["approve", "reject"]"#, "");
    let orch = w.orchestrator_with(&model, 500);
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let id = outcome.pending_approvals()[0];
    // the deputy edits the payment up to five times the per-action ceiling
    let edit = ApprovalResponse::Edit(serde_json::json!({ "cost": 5000 }));
    let done = block_on(orch.submit_approval(id, bob(), edit)).unwrap();
    assert!(
        matches!(&done.status, RunStatus::Failed { reason } if reason.contains("denied")),
        "{:?}",
        done.status
    );
    assert!(w.bank.effects().is_empty(), "nothing was paid");
    // the proposed and the edited call are both on the audit record
    let entries = block_on(orch.audit_log().entries()).unwrap();
    assert!(entries.iter().any(|e| matches!(&e.event,
        aios_core::AuditEvent::Note { text } if text.contains("edited `bank.pay`: proposed ") && text.contains(", edited "))));
}

#[test]
fn an_edit_within_the_limits_runs_as_edited_once() {
    let w = Pay::new();
    let model = PAY_MODEL.replace(r#", "allowed": ["approve", "reject"]"#, "");
    let orch = w.orchestrator_with(&model, 500);
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let id = outcome.pending_approvals()[0];
    let edit = ApprovalResponse::Edit(
        serde_json::json!({ "cost": 80, "input": { "payee": "acme", "invoice": 18 } }),
    );
    let done = block_on(orch.submit_approval(id, bob(), edit)).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(w.bank.effects().len(), 1);
    assert_eq!(w.bank.effects()[0].input["invoice"], 18);
}

#[test]
fn an_approval_is_redeemed_once_a_fork_at_the_approved_step_asks_again() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let id = outcome.pending_approvals()[0];
    let done = block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(w.bank.effects().len(), 1);
    // the checkpoint taken when the approved call was about to run (marker, no result)
    let run = outcome.run;
    let mut marker_seq = None;
    for seq in 1..50 {
        let Some(c) = block_on(w.checkpoints.get(run, seq)).unwrap() else {
            break;
        };
        if c.state.tasks[0]
            .journal
            .iter()
            .any(|e| matches!(e.record, CallRecord::Approved { result: None, .. }))
        {
            marker_seq = Some(seq);
        }
    }
    let fork = block_on(orch.fork(run, marker_seq.expect("a marker checkpoint"))).unwrap();
    let forked = block_on(orch.resume(fork)).unwrap();
    assert!(
        matches!(forked.status, RunStatus::Parked { ref approvals } if approvals[0] != id),
        "the fork asks again: {:?}",
        forked.status
    );
    assert_eq!(w.bank.effects().len(), 1, "the fork did not pay again");
}

#[test]
fn an_approval_cannot_be_used_by_another_run() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let first = block_on(orch.start(pay_invoice())).unwrap();
    let id = first.pending_approvals()[0];
    let state = block_on(orch.state(first.run)).unwrap().unwrap();
    // an attacker copies the parked state into a run of their own
    let stolen: RunId = RunId::from_name("stolen");
    let mut copy = state.clone();
    copy.run = stolen;
    let lease = block_on(w.checkpoints.acquire(
        stolen,
        &WorkerId::new("mallory"),
        orch.clock().now(),
        Duration::from_secs(1),
    ))
    .unwrap();
    block_on(w.checkpoints.save(
        &lease,
        &Checkpoint {
            run: stolen,
            seq: 1,
            at: orch.clock().now(),
            state: copy,
        },
    ))
    .unwrap();
    block_on(w.checkpoints.release(&lease)).unwrap();
    block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(w.bank.effects().len(), 1);
    let err = block_on(orch.resume(stolen)).unwrap_err();
    assert!(err.to_string().contains("not by run"), "{err}");
    assert_eq!(w.bank.effects().len(), 1, "the copy did not pay");
}

#[test]
fn a_resumed_call_with_other_governed_attributes_is_not_run_on_the_old_approval() {
    let w = Pay::new();
    let risk = Arc::new(std::sync::atomic::AtomicU32::new(10));
    let r2 = risk.clone();
    let pay = FnAgent::new(move |ctx, input| {
        let risk = r2.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let out = ctx
                .call(
                    ConnectorRequest::new("bank", "pay", input.input.clone())
                        .estimated_cost(Money::from_minor(50))
                        .risk(risk),
                )
                .await?;
            Ok(out.output)
        })
    });
    let orch = Orchestrator::builder(governor_from(PAY_MODEL))
        .role(Role::new("payer", "paying", Arc::new(pay)).connector("bank"))
        .connector(Arc::new(w.bank.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let id = outcome.pending_approvals()[0];
    // the agent now claims another risk for "the same" call
    risk.store(90, std::sync::atomic::Ordering::SeqCst);
    let err = block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).unwrap_err();
    assert!(
        matches!(err, OrchestratorError::NonDeterminism { .. }),
        "{err}"
    );
    assert!(w.bank.effects().is_empty());
}

#[test]
fn an_approval_request_records_the_pinned_governance_version() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let two = Workflow::new("pay twice")
        .task(TaskSpec::new(
            "one",
            RoleId::from_name("payer"),
            serde_json::json!({ "n": 1 }),
        ))
        .task(
            TaskSpec::new(
                "two",
                RoleId::from_name("payer"),
                serde_json::json!({ "n": 2 }),
            )
            .after(["one"]),
        );
    let outcome = block_on(orch.start(two)).unwrap();
    orch.load_governance(
        governor_from(&PAY_MODEL.replace(r#""version": 1"#, r#""version": 2"#)),
        true,
    );
    let next = block_on(orch.submit_approval(
        outcome.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    let second = block_on(orch.pending_approvals()).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, next.pending_approvals()[0]);
    assert_eq!(second[0].model_version, 1, "the run is pinned to version 1");
}

#[test]
fn deadlines_act_a_tick_escalates_to_the_timeout_anchor_and_notifies() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let first = outcome.pending_approvals()[0];
    // nothing is due yet
    let report = block_on(orch.tick()).unwrap();
    assert!(report.expired.is_empty() && report.escalated.is_empty());
    w.timer.clock().advance(Duration::from_secs(2 * 3600));
    let report = block_on(orch.tick()).unwrap();
    assert_eq!(report.escalated.len(), 1);
    let (old, new) = report.escalated[0];
    assert_eq!(old, first);
    assert_eq!(report.resumed.len(), 1);
    assert_eq!(
        report.resumed[0].pending_approvals(),
        &[new],
        "the run waits for the board"
    );
    let sent = w.notifier.sent();
    let founder = aios_core::AnchorId::from_name("founder");
    let board = aios_core::AnchorId::from_name("board");
    assert!(sent
        .iter()
        .any(|n| n.anchor == founder && n.kind == NotificationKind::ApprovalTimedOut));
    assert!(sent.iter().any(|n| n.anchor == board
        && n.kind == NotificationKind::ApprovalNeeded
        && n.approval == Some(new)));
    // the founder can no longer answer the expired request; the board can answer the new one
    assert!(block_on(orch.submit_approval(first, alice(), ApprovalResponse::Approve)).is_err());
    let done = block_on(orch.submit_approval(new, carol(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(w.bank.effects().len(), 1);
}

#[test]
fn deadlines_act_a_deny_on_timeout_rejects_the_parked_call() {
    let w = Pay::new();
    let model = PAY_MODEL.replace(r#""on_timeout": { "escalate": "board" }, "#, "");
    let orch = w.orchestrator_with(&model, 50);
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    w.timer.clock().advance(Duration::from_secs(2 * 3600));
    let report = block_on(orch.tick()).unwrap();
    assert_eq!(report.expired, outcome.pending_approvals().to_vec());
    assert!(
        matches!(&report.resumed[0].status, RunStatus::Failed { reason } if reason.contains("expired")),
        "{:?}",
        report.resumed[0].status
    );
    assert!(w.bank.effects().is_empty());
}

#[test]
fn action_names_cannot_dodge_the_charter() {
    for operation in [
        "transfer ",
        "Transfer",
        "trans\u{200b}fer",
        "transfer\n",
        "",
    ] {
        let w = Pay::new();
        let payments = RecordingConnector::new("payments", EffectClass::Irreversible);
        let op = operation.to_string();
        let agent = FnAgent::new(move |ctx, _| {
            let op = op.clone();
            Box::pin(async move {
                let out = ctx
                    .call(ConnectorRequest::new(
                        "payments",
                        op,
                        serde_json::json!({ "amount": 1 }),
                    ))
                    .await?;
                Ok(out.output)
            })
        });
        let orch = Orchestrator::builder(governor_from(PAY_MODEL))
            .role(Role::new("payer", "paying", Arc::new(agent)).connector("payments"))
            .connector(Arc::new(payments.clone()))
            .clock(Arc::new(w.timer.clock().clone()))
            .timer(Arc::new(w.timer.clone()))
            .build()
            .unwrap();
        let done = block_on(orch.start(pay_invoice())).unwrap();
        assert!(
            matches!(&done.status, RunStatus::Failed { reason } if reason.contains("denied")),
            "{operation:?}: {:?}",
            done.status
        );
        assert!(
            payments.effects().is_empty(),
            "{operation:?} reached the connector"
        );
    }
    // and governance itself denies such names
    let g = governor_from(PAY_MODEL);
    let req = aios_governance::ActionRequest::new(
        aios_core::Principal::Agent(aios_core::AgentId::from_name("a")),
        RoleId::from_name("payer"),
        aios_core::PathwayId::from_name("paying"),
        "Payments.Transfer",
    );
    assert_eq!(g.decide(&req).verdict, aios_governance::Verdict::Deny);
}

#[test]
fn a_damaged_checkpoint_is_a_clear_error_never_a_panic() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let mut state = block_on(orch.state(outcome.run)).unwrap().unwrap();
    state.tasks[0].deps = vec![99];
    let latest = block_on(w.checkpoints.latest(outcome.run))
        .unwrap()
        .unwrap();
    let lease = block_on(w.checkpoints.acquire(
        outcome.run,
        &WorkerId::new("disk"),
        orch.clock().now(),
        Duration::from_secs(1),
    ))
    .unwrap();
    block_on(w.checkpoints.save(
        &lease,
        &Checkpoint {
            run: outcome.run,
            seq: latest.seq + 1,
            at: orch.clock().now(),
            state,
        },
    ))
    .unwrap();
    block_on(w.checkpoints.release(&lease)).unwrap();
    let err = block_on(orch.resume(outcome.run)).unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::DamagedState { detail, .. } if detail.contains("index 99")),
        "{err}"
    );
    let fork = block_on(orch.fork(outcome.run, latest.seq + 1)).unwrap_err();
    assert!(matches!(fork, OrchestratorError::DamagedState { .. }));
}

#[test]
fn a_secret_echoed_by_a_connector_is_redacted_everywhere() {
    const SECRET: &str = "sk-live-0123456789abcdef";
    let w = World::new();
    let leaky = Leaky(aios_core::ConnectorDescriptor {
        id: aios_core::ConnectorId::new("leaky"),
        effect: EffectClass::ReadOnly,
        scopes: vec![],
        idempotent: true,
        default_cost: Money::ZERO,
        operations: vec![],
    });
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let out = ctx
                .call(ConnectorRequest::new(
                    "leaky",
                    "read",
                    serde_json::json!({}),
                ))
                .await?;
            Ok(out.output)
        })
    });
    let vault = InMemoryVault::new();
    block_on(aios_core::CredentialVault::put(
        &vault,
        CredentialHandle::new("leaky-key"),
        aios_core::Secret::new(SECRET),
    ))
    .unwrap();
    let notifier = InMemoryNotifier::new();
    let observer = aios_orchestrator::CollectingObserver::new();
    let model = MODEL.replace(r#""web.search""#, r#""web.search", "leaky.read""#);
    let orch = Orchestrator::builder(governor_from(&model))
        .role(Role::new("researcher", "research", Arc::new(agent)).connector("leaky"))
        .connector(Arc::new(leaky))
        .vault(Arc::new(vault))
        .credential("leaky", CredentialHandle::new("leaky-key"))
        .notifier(Arc::new(notifier.clone()))
        .observer(Arc::new(observer.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let done = block_on(orch.start(Workflow::new("leak").task(TaskSpec::new(
        "read",
        RoleId::from_name("researcher"),
        serde_json::Value::Null,
    ))))
    .unwrap();
    assert!(matches!(done.status, RunStatus::Failed { .. }));
    let mut everything = String::new();
    everything += &format!("{:?}", done.status);
    everything += &serde_json::to_string(&block_on(orch.audit_log().entries()).unwrap()).unwrap();
    everything += &serde_json::to_string(&block_on(orch.state(done.run)).unwrap()).unwrap();
    everything += &block_on(orch.transcript(done.run)).unwrap();
    everything += &serde_json::to_string(&notifier.sent()).unwrap();
    everything += &serde_json::to_string(&observer.events()).unwrap();
    assert!(
        everything.contains("[redacted]"),
        "the failure is still reported"
    );
    assert!(!everything.contains(SECRET), "the secret leaked");
}

#[test]
fn calls_reserve_a_real_estimate_so_a_budget_of_100_runs_only_what_fits() {
    let w = World::new();
    let model_doc = MODEL.replace(
        r#""limits": { "cost": 100000, "tool_calls": 10000 }"#,
        r#""limits": { "cost": 100, "tool_calls": 10000 }"#,
    );
    // connector calls at a declared default cost of 40, the agent claims nothing
    let ledger = RecordingConnector::new("ledger", EffectClass::Reversible)
        .with_default_cost(Money::from_minor(40));
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let mut done = 0;
            for i in 0..10 {
                match ctx
                    .call(ConnectorRequest::new(
                        "ledger",
                        "write",
                        serde_json::json!({ "i": i }),
                    ))
                    .await
                {
                    Ok(_) => done += 1,
                    Err(aios_orchestrator::AgentError::BudgetExceeded { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(serde_json::json!(done))
        })
    });
    let orch = Orchestrator::builder(governor_from(&model_doc))
        .role(Role::new("worker", "work", Arc::new(agent)).connector("ledger"))
        .connector(Arc::new(ledger.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let done = block_on(orch.start(Workflow::new("spend").task(TaskSpec::new(
        "spend",
        RoleId::from_name("worker"),
        serde_json::Value::Null,
    ))))
    .unwrap();
    assert_eq!(done.outputs["spend"], 2, "{:?}", done.status);
    assert_eq!(ledger.effects().len(), 2);

    // model calls priced 40 each by the router's price table
    let price = aios_core::ModelPrice {
        input_per_million: Money::ZERO,
        output_per_million: Money::ZERO,
        per_call: Money::from_minor(40),
    };
    let scripted = model().with_price(price);
    let calls = scripted.clone();
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let mut done = 0;
            for i in 0..10 {
                let request =
                    aios_core::ModelRequest::new(vec![aios_core::Message::user(format!("q{i}"))]);
                match ctx.complete(request).await {
                    Ok(_) => done += 1,
                    Err(aios_orchestrator::AgentError::BudgetExceeded { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(serde_json::json!(done))
        })
    });
    let orch = Orchestrator::builder(governor_from(&model_doc))
        .role(Role::new("worker", "work", Arc::new(agent)))
        .models(
            aios_orchestrator::ModelRouter::single(Arc::new(scripted))
                .with_price("local-small", price),
        )
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let done = block_on(orch.start(Workflow::new("think").task(TaskSpec::new(
        "think",
        RoleId::from_name("worker"),
        serde_json::Value::Null,
    ))))
    .unwrap();
    assert_eq!(done.outputs["think"], 2, "{:?}", done.status);
    assert_eq!(calls.requests().len(), 2);
}

#[test]
fn the_default_configuration_never_shares_a_worker_or_a_seed() {
    let (a, b) = (OrchestratorConfig::default(), OrchestratorConfig::default());
    assert_ne!(a.worker, b.worker);
    assert_ne!(a.seed, b.seed);
    // two orchestrators with default settings over one store: the second cannot drive a run
    // the first holds, even though neither chose a worker id
    let w = Pay::new();
    let first = w.orchestrator();
    let second = w.orchestrator();
    let run: RunId = RunId::from_name("held");
    let now = first.clock().now();
    let held = block_on(w.checkpoints.acquire(
        run,
        &OrchestratorConfig::default().worker,
        now,
        Duration::from_secs(60),
    ))
    .unwrap();
    assert!(block_on(
        w.checkpoints
            .acquire(run, &held.owner, now, Duration::from_secs(60))
    )
    .is_err());
    // same clock, same millisecond: still different run, task and approval ids
    let outcome = block_on(first.start(pay_invoice())).unwrap();
    let other = block_on(second.start(pay_invoice())).unwrap();
    assert_ne!(outcome.run, other.run);
    assert_ne!(outcome.pending_approvals(), other.pending_approvals());
    let tasks = |o: &Orchestrator, run| block_on(o.state(run)).unwrap().unwrap().tasks[0].id;
    assert_ne!(tasks(&first, outcome.run), tasks(&second, other.run));
    // memories opened with the default seed, on one clock, draw different ids
    let clock: Arc<dyn aios_core::Clock> = Arc::new(w.timer.clock().clone());
    let (m1, m2) = (
        block_on(aios_memory::Memory::builder(clock.clone()).open()).unwrap(),
        block_on(aios_memory::Memory::builder(clock).open()).unwrap(),
    );
    let note = || {
        aios_memory::NewMemory::new(
            aios_memory::Scope::parse("org").unwrap(),
            aios_memory::Tier::Working,
            "x",
            aios_core::Principal::System,
        )
    };
    assert_ne!(
        block_on(m1.remember(note())).unwrap().id,
        block_on(m2.remember(note())).unwrap().id
    );
}

/// A connector that echoes its credential in its error message.
#[derive(Debug)]
struct Leaky(aios_core::ConnectorDescriptor);

#[async_trait::async_trait]
impl aios_core::Connector for Leaky {
    fn descriptor(&self) -> &aios_core::ConnectorDescriptor {
        &self.0
    }

    async fn invoke(
        &self,
        call: aios_core::ConnectorCall,
    ) -> Result<aios_core::ConnectorOutput, aios_core::ConnectorError> {
        Err(aios_core::ConnectorError::InvalidInput {
            connector: self.0.id.clone(),
            operation: call.operation.clone(),
            detail: format!(
                "bad token {}",
                call.credential.as_ref().map(|s| s.expose()).unwrap_or("")
            ),
        })
    }
}

/// A worker that dies at any checkpoint write (after a budget commit and before its journal is
/// durable included) never gets a call charged twice, nor a memory-free effect repeated.
#[test]
fn a_call_is_charged_once_whatever_write_the_worker_dies_at() {
    use aios_core::testing::{FaultPlan, Faults};
    use aios_orchestrator::testing::FaultyCheckpointStore;
    for n in 1..40u64 {
        let w = World::new();
        let ledger_conn = RecordingConnector::new("ledger", EffectClass::Reversible)
            .with_default_cost(Money::from_minor(7));
        let agent = FnAgent::new(|ctx, _| {
            Box::pin(async move {
                for i in 0..3 {
                    ctx.call(ConnectorRequest::new(
                        "ledger",
                        "write",
                        serde_json::json!({ "i": i }),
                    ))
                    .await?;
                }
                Ok(serde_json::json!("done"))
            })
        });
        let faults = Faults::new(FaultPlan::fail_nth(n));
        let store = FaultyCheckpointStore::new(InMemoryCheckpointStore::new(), faults.clone());
        let budgets = Arc::new(aios_governance::InMemoryBudgetLedger::new(Arc::new(
            w.timer.clock().clone(),
        )));
        budgets.apply_plan_sync(&governor().budget_plan());
        let orch = Orchestrator::builder(governor())
            .role(Role::new("worker", "work", Arc::new(agent)).connector("ledger"))
            .connector(Arc::new(ledger_conn.clone()))
            .checkpoints(Arc::new(store))
            .budgets(budgets.clone())
            .clock(Arc::new(w.timer.clock().clone()))
            .timer(Arc::new(w.timer.clone()))
            .build()
            .unwrap();
        let workflow = Workflow::new("charge").task(TaskSpec::new(
            "charge",
            RoleId::from_name("worker"),
            serde_json::Value::Null,
        ));
        let first = block_on(orch.start(workflow));
        faults.set_plan(FaultPlan::none());
        let run = match &first {
            Ok(o) => o.run,
            Err(_) => match block_on(w_runs(&orch)).into_iter().next() {
                Some(run) => run,
                // the run never became durable: nothing may have been charged
                None => {
                    assert_eq!(ledger_conn.effects().len(), 0, "fault {n}");
                    continue;
                }
            },
        };
        let stored = block_on(orch.state(run)).unwrap().map(|s| s.status);
        if stored != Some(RunStatus::Completed) {
            // the dead worker's lease lapses, then another takes the run over
            w.timer.clock().advance(Duration::from_secs(120));
            let done = block_on(orch.resume(run)).unwrap();
            assert_eq!(done.status, RunStatus::Completed, "fault {n}");
        }
        assert_eq!(ledger_conn.effects().len(), 3, "fault {n}: each write once");
        let org = budgets
            .usage_sync(aios_governance::BudgetKey::Organisation)
            .unwrap();
        assert_eq!(
            org.committed.cost,
            Money::from_minor(21),
            "fault {n}: each call charged once"
        );
        assert_eq!(org.reserved.cost, Money::ZERO, "fault {n}: nothing held");
    }
}

async fn w_runs(orch: &Orchestrator) -> Vec<RunId> {
    orch.checkpoint_store()
        .list(false)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.run)
        .collect()
}

#[test]
fn an_approval_does_not_lift_a_kill_switch_pulled_after_it_was_asked() {
    let w = Pay::new();
    let audit: Arc<dyn aios_core::AuditLog> = Arc::new(aios_core::InMemoryAuditLog::new());
    let controls = Arc::new(aios_governance::Controls::new(
        Arc::new(w.timer.clock().clone()),
        audit.clone(),
    ));
    let pay = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let out = ctx
                .call(
                    ConnectorRequest::new("bank", "pay", input.input.clone())
                        .estimated_cost(Money::from_minor(50)),
                )
                .await?;
            Ok(out.output)
        })
    });
    let orch = Orchestrator::builder(governor_from(PAY_MODEL))
        .role(Role::new("payer", "paying", Arc::new(pay)).connector("bank"))
        .connector(Arc::new(w.bank.clone()))
        .audit(audit)
        .controls(controls.clone())
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    block_on(controls.stop(
        aios_governance::ControlTarget::Organisation,
        aios_core::Principal::Human(alice()),
        "fraud suspected",
    ))
    .unwrap();
    let done = block_on(orch.submit_approval(
        outcome.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    assert_eq!(done.status, RunStatus::Cancelled);
    assert!(w.bank.effects().is_empty(), "the kill switch held");
}

#[test]
fn a_cancelled_run_releases_the_reservations_left_for_it() {
    let w = Pay::new();
    let clock = Arc::new(w.timer.clock().clone());
    let budgets = Arc::new(aios_governance::InMemoryBudgetLedger::new(clock));
    let governor = governor_from(PAY_MODEL);
    budgets.apply_plan_sync(&governor.budget_plan());
    let orch = Orchestrator::builder(governor)
        .role(Role::new(
            "payer",
            "paying",
            Arc::new(FnAgent::new(|_, _| {
                Box::pin(async { Ok(serde_json::Value::Null) })
            })),
        ))
        .budgets(budgets.clone())
        .checkpoints(Arc::new(w.checkpoints.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    // a run, and a reservation a dead worker left open for it
    let run = RunId::from_name("cancel-me");
    let lease = block_on(w.checkpoints.acquire(
        run,
        &WorkerId::new("dead"),
        orch.clock().now(),
        Duration::from_secs(1),
    ))
    .unwrap();
    let template = aios_orchestrator::RunState {
        schema: aios_orchestrator::RUN_STATE_SCHEMA,
        run,
        workflow: "pay".into(),
        governance_version: 1,
        started_at: orch.clock().now(),
        status: RunStatus::Running,
        tasks: vec![],
        forked_from: None,
    };
    block_on(w.checkpoints.save(
        &lease,
        &Checkpoint {
            run,
            seq: 1,
            at: orch.clock().now(),
            state: template,
        },
    ))
    .unwrap();
    block_on(w.checkpoints.release(&lease)).unwrap();
    budgets
        .reserve_sync(
            &aios_governance::BudgetChain::organisation().run(run),
            aios_governance::Usage::cost(Money::from_minor(500)),
            &aios_governance::ReserveOptions::default(),
        )
        .unwrap();
    assert_eq!(budgets.outstanding(), 1);
    block_on(orch.control_run(
        run,
        aios_orchestrator::RunControl::Cancel,
        aios_core::Principal::Human(alice()),
        "not needed",
    ))
    .unwrap();
    assert_eq!(
        budgets.outstanding(),
        0,
        "the cancelled run holds no budget"
    );
    let org = budgets
        .usage_sync(aios_governance::BudgetKey::Organisation)
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO);
}

/// A worker that dies at any checkpoint write, a memory write made but not yet journaled
/// included, never has an agent's memory write made twice.
#[test]
fn a_memory_write_is_not_repeated_whatever_write_the_worker_dies_at() {
    use aios_core::testing::{FaultPlan, Faults};
    use aios_memory::{Access, Grant, Memory, NewMemory, RecallQuery, Scope, Tier};
    use aios_orchestrator::testing::FaultyCheckpointStore;
    for n in 1..30u64 {
        let w = World::new();
        let clock: Arc<dyn aios_core::Clock> = Arc::new(w.timer.clock().clone());
        let memory = block_on(Memory::builder(clock.clone()).open()).unwrap();
        let scope = Scope::parse("org/notes").unwrap();
        let agent = FnAgent::new(|ctx, _| {
            Box::pin(async move {
                let me = aios_core::Principal::Agent(ctx.agent_id());
                for i in 0..3 {
                    ctx.remember(NewMemory::new(
                        Scope::parse("org/notes").unwrap(),
                        Tier::Working,
                        format!("note {i}"),
                        me,
                    ))
                    .await?;
                }
                Ok(serde_json::json!("done"))
            })
        });
        let faults = Faults::new(FaultPlan::fail_nth(n));
        let store = FaultyCheckpointStore::new(InMemoryCheckpointStore::new(), faults.clone());
        let orch = Orchestrator::builder(governor())
            .role(Role::new("worker", "work", Arc::new(agent)))
            .memory(
                memory.clone(),
                aios_orchestrator::MemoryOptions::new(
                    vec![Grant::role(
                        RoleId::from_name("worker"),
                        scope.clone(),
                        Access::Write,
                    )],
                    scope.clone(),
                ),
            )
            .checkpoints(Arc::new(store))
            .clock(clock)
            .timer(Arc::new(w.timer.clone()))
            .build()
            .unwrap();
        let first = block_on(orch.start(Workflow::new("notes").task(TaskSpec::new(
            "notes",
            RoleId::from_name("worker"),
            serde_json::Value::Null,
        ))));
        faults.set_plan(FaultPlan::none());
        let run = match &first {
            Ok(o) => Some(o.run),
            Err(_) => block_on(w_runs(&orch)).into_iter().next(),
        };
        let written = || {
            block_on(memory.recall(&RecallQuery::text("note").in_scope(scope.clone()).k(50)))
                .unwrap()
                .len()
        };
        let Some(run) = run else {
            assert_eq!(written(), 0, "fault {n}: the run never became durable");
            continue;
        };
        let stored = block_on(orch.state(run)).unwrap().map(|s| s.status);
        if stored != Some(RunStatus::Completed) {
            w.timer.clock().advance(Duration::from_secs(120));
            let done = block_on(orch.resume(run)).unwrap();
            assert_eq!(done.status, RunStatus::Completed, "fault {n}");
        }
        assert_eq!(written(), 3, "fault {n}: each note written once");
    }
}

#[test]
fn an_edit_cannot_talk_a_call_under_its_rules() {
    let w = Pay::new();
    let model = PAY_MODEL.replace(r#", "allowed": ["approve", "reject"]"#, "");
    let risky = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let out = ctx
                .call(
                    ConnectorRequest::new("bank", "pay", input.input.clone())
                        .estimated_cost(Money::from_minor(500))
                        .risk(40)
                        .confidence(0.5),
                )
                .await?;
            Ok(out.output)
        })
    });
    let orch = Orchestrator::builder(governor_from(&model))
        .role(Role::new("payer", "paying", Arc::new(risky)).connector("bank"))
        .connector(Arc::new(w.bank.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    for edit in [
        serde_json::json!({ "risk": 0 }),
        serde_json::json!({ "confidence": 1.0 }),
        serde_json::json!({ "action": "bank.refund" }),
        serde_json::json!({ "amount": 1 }),
    ] {
        let outcome = block_on(orch.start(pay_invoice())).unwrap();
        let done = block_on(orch.submit_approval(
            outcome.pending_approvals()[0],
            bob(),
            ApprovalResponse::Edit(edit.clone()),
        ))
        .unwrap();
        assert!(
            matches!(&done.status, RunStatus::Failed { reason } if reason.contains("refused")),
            "{edit}: {:?}",
            done.status
        );
    }
    assert!(w.bank.effects().is_empty());
}

#[test]
fn an_edited_cost_never_goes_under_the_connectors_declared_cost() {
    let w = Pay::new();
    let model = PAY_MODEL.replace(r#", "allowed": ["approve", "reject"]"#, "");
    let bank = RecordingConnector::new("bank", EffectClass::Irreversible)
        .with_default_cost(Money::from_minor(60));
    let budgets = Arc::new(aios_governance::InMemoryBudgetLedger::new(Arc::new(
        w.timer.clock().clone(),
    )));
    let governor = governor_from(&model);
    budgets.apply_plan_sync(&governor.budget_plan());
    let pay = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let out = ctx
                .call(ConnectorRequest::new("bank", "pay", input.input.clone()))
                .await?;
            Ok(out.output)
        })
    });
    let orch = Orchestrator::builder(governor)
        .role(Role::new("payer", "paying", Arc::new(pay)).connector("bank"))
        .connector(Arc::new(bank.clone()))
        .budgets(budgets.clone())
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let done = block_on(orch.submit_approval(
        outcome.pending_approvals()[0],
        alice(),
        ApprovalResponse::Edit(serde_json::json!({ "cost": 0 })),
    ))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    let org = budgets
        .usage_sync(aios_governance::BudgetKey::Organisation)
        .unwrap();
    assert_eq!(
        org.committed.cost,
        Money::from_minor(60),
        "charged its declared cost"
    );
}

#[test]
fn an_answer_after_the_deadline_is_refused_and_the_next_tick_moves_the_run_on() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let first = outcome.pending_approvals()[0];
    w.timer.clock().advance(Duration::from_secs(2 * 3600));
    // the late answer expires the request (and escalates it), and is refused
    assert!(block_on(orch.submit_approval(first, alice(), ApprovalResponse::Approve)).is_err());
    // nothing is due any more, yet the run is picked up: it waits for the board now
    let report = block_on(orch.tick()).unwrap();
    assert!(
        report.escalated.is_empty(),
        "escalated by the late answer already"
    );
    assert_eq!(report.resumed.len(), 1);
    let waiting = report.resumed[0].pending_approvals().to_vec();
    assert_eq!(waiting.len(), 1);
    assert_ne!(waiting[0], first);
    let board = aios_core::AnchorId::from_name("board");
    assert!(w
        .notifier
        .sent()
        .iter()
        .any(|n| n.anchor == board && n.approval == Some(waiting[0])));
    assert!(w.bank.effects().is_empty());
}

#[test]
fn a_tick_leaves_a_paused_run_paused_and_goes_on_past_a_damaged_one() {
    let w = Pay::new();
    let model = PAY_MODEL.replace(r#""on_timeout": { "escalate": "board" }, "#, "");
    let orch = w.orchestrator_with(&model, 50);
    let paused = block_on(orch.start(pay_invoice())).unwrap();
    let damaged = block_on(orch.start(pay_invoice())).unwrap();
    let fine = block_on(orch.start(pay_invoice())).unwrap();
    block_on(orch.control_run(
        paused.run,
        aios_orchestrator::RunControl::Pause,
        aios_core::Principal::Human(alice()),
        "hold everything for this one",
    ))
    .unwrap();
    // damage the second run's latest state
    let latest = block_on(w.checkpoints.latest(damaged.run))
        .unwrap()
        .unwrap();
    let mut state = latest.state.clone();
    state.tasks[0].deps = vec![7];
    let lease = block_on(w.checkpoints.acquire(
        damaged.run,
        &WorkerId::new("disk"),
        orch.clock().now(),
        Duration::from_secs(1),
    ))
    .unwrap();
    block_on(w.checkpoints.save(
        &lease,
        &Checkpoint {
            run: damaged.run,
            seq: latest.seq + 1,
            at: orch.clock().now(),
            state,
        },
    ))
    .unwrap();
    block_on(w.checkpoints.release(&lease)).unwrap();
    w.timer.clock().advance(Duration::from_secs(2 * 3600));
    let report = block_on(orch.tick()).unwrap();
    assert_eq!(report.expired.len(), 3, "every request expired");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, damaged.run);
    assert_eq!(report.resumed.len(), 1, "{report:?}");
    assert_eq!(report.resumed[0].run, fine.run);
    assert_eq!(
        block_on(orch.state(paused.run)).unwrap().unwrap().status,
        RunStatus::Paused,
        "the pause holds"
    );
    // the anchor heard that nobody answered
    let founder = aios_core::AnchorId::from_name("founder");
    assert!(w
        .notifier
        .sent()
        .iter()
        .any(|n| n.anchor == founder && n.kind == NotificationKind::ApprovalTimedOut));
    assert!(w.bank.effects().is_empty());
}

/// The connector's declared cost changed between asking and resuming (a price change, a
/// restart with new configuration): the approval covers the call as proposed, so the call is
/// decided again (and asks again), while completed calls still replay.
#[test]
fn an_approval_does_not_cover_a_call_whose_derived_cost_changed() {
    let w = Pay::new();
    let approvals = Arc::new(aios_governance::InMemoryApprovalStore::new());
    let build = |cost: i64| {
        let bank = RecordingConnector::new("bank", EffectClass::Irreversible)
            .with_default_cost(Money::from_minor(cost));
        let pay = FnAgent::new(|ctx, input| {
            Box::pin(async move {
                let out = ctx
                    .call(ConnectorRequest::new("bank", "pay", input.input.clone()))
                    .await?;
                Ok(out.output)
            })
        });
        let orch = Orchestrator::builder(governor_from(PAY_MODEL))
            .role(Role::new("payer", "paying", Arc::new(pay)).connector("bank"))
            .connector(Arc::new(bank.clone()))
            .checkpoints(Arc::new(w.checkpoints.clone()))
            .approval_store(approvals.clone())
            .clock(Arc::new(w.timer.clock().clone()))
            .timer(Arc::new(w.timer.clone()))
            .build()
            .unwrap();
        (orch, bank)
    };
    let (before, _) = build(50);
    let outcome = block_on(before.start(pay_invoice())).unwrap();
    let first = outcome.pending_approvals()[0];
    let (after, bank) = build(400);
    block_on(aios_governance::ApprovalStore::get(
        approvals.as_ref(),
        first,
    ))
    .unwrap()
    .unwrap();
    let done = block_on(after.submit_approval(first, alice(), ApprovalResponse::Approve)).unwrap();
    assert!(
        matches!(&done.status, RunStatus::Parked { approvals } if approvals[0] != first),
        "asked again: {:?}",
        done.status
    );
    assert!(bank.effects().is_empty(), "not run on the old approval");
    let again = block_on(after.pending_approvals()).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].proposed["cost"], 400);
}

/// A model call repeated after a crash between the budget commit and the journal is answered
/// and billed again: the ledger charges what was spent, each answer once, never less.
#[test]
fn a_repeated_model_call_is_charged_for_what_it_spent_whatever_write_the_worker_dies_at() {
    use aios_core::testing::{FaultPlan, Faults};
    use aios_orchestrator::testing::FaultyCheckpointStore;
    let price = aios_core::ModelPrice {
        input_per_million: Money::ZERO,
        output_per_million: Money::ZERO,
        per_call: Money::from_minor(5),
    };
    let mut repeated = false;
    for n in 1..30u64 {
        let w = World::new();
        let scripted = model().with_price(price);
        let agent = FnAgent::new(|ctx, _| {
            Box::pin(async move {
                for i in 0..3 {
                    ctx.complete(aios_core::ModelRequest::new(vec![
                        aios_core::Message::user(format!("q{i}")),
                    ]))
                    .await?;
                }
                Ok(serde_json::json!("done"))
            })
        });
        let faults = Faults::new(FaultPlan::fail_nth(n));
        let store = FaultyCheckpointStore::new(InMemoryCheckpointStore::new(), faults.clone());
        let budgets = Arc::new(aios_governance::InMemoryBudgetLedger::new(Arc::new(
            w.timer.clock().clone(),
        )));
        budgets.apply_plan_sync(&governor().budget_plan());
        let orch = Orchestrator::builder(governor())
            .role(Role::new("worker", "work", Arc::new(agent)))
            .models(
                aios_orchestrator::ModelRouter::single(Arc::new(scripted.clone()))
                    .with_price("local-small", price),
            )
            .checkpoints(Arc::new(store))
            .budgets(budgets.clone())
            .clock(Arc::new(w.timer.clock().clone()))
            .timer(Arc::new(w.timer.clone()))
            .build()
            .unwrap();
        let first = block_on(orch.start(Workflow::new("think").task(TaskSpec::new(
            "think",
            RoleId::from_name("worker"),
            serde_json::Value::Null,
        ))));
        faults.set_plan(FaultPlan::none());
        let run = match &first {
            Ok(o) => Some(o.run),
            Err(_) => block_on(w_runs(&orch)).into_iter().next(),
        };
        let Some(run) = run else { continue };
        if block_on(orch.state(run)).unwrap().map(|s| s.status) != Some(RunStatus::Completed) {
            w.timer.clock().advance(Duration::from_secs(120));
            let done = block_on(orch.resume(run)).unwrap();
            assert_eq!(done.status, RunStatus::Completed, "fault {n}");
        }
        let org = budgets
            .usage_sync(aios_governance::BudgetKey::Organisation)
            .unwrap();
        let answered = scripted.calls() as i64;
        assert!(answered >= 3, "fault {n}");
        repeated |= answered > 3;
        assert_eq!(
            org.committed.cost,
            Money::from_minor(5 * answered),
            "fault {n}: {answered} answers, each charged once"
        );
        assert_eq!(org.reserved.cost, Money::ZERO, "fault {n}");
    }
    assert!(
        repeated,
        "some fault landed between a commit and its journal"
    );
}

#[test]
fn an_agent_that_swallows_parked_cannot_act_on_or_leave_the_approval_dangling() {
    let w = Pay::new();
    let ledger = RecordingConnector::new("ledger", EffectClass::Reversible);
    let careless = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            // ignores that the payment needs approval and goes on
            let _ = ctx
                .call(
                    ConnectorRequest::new("bank", "pay", input.input.clone())
                        .estimated_cost(Money::from_minor(50)),
                )
                .await;
            let _ = ctx
                .call(ConnectorRequest::new(
                    "ledger",
                    "write",
                    serde_json::json!({ "paid": true }),
                ))
                .await;
            Ok(serde_json::json!("done, supposedly"))
        })
    });
    let model = PAY_MODEL.replace(
        r#""effects": ["irreversible"]"#,
        r#""effects": ["reversible", "irreversible"]"#,
    );
    let orch = Orchestrator::builder(governor_from(&model))
        .role(
            Role::new("payer", "paying", Arc::new(careless))
                .connector("bank")
                .connector("ledger"),
        )
        .connector(Arc::new(w.bank.clone()))
        .connector(Arc::new(ledger.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    assert!(
        matches!(outcome.status, RunStatus::Parked { .. }),
        "the task parks all the same: {:?}",
        outcome.status
    );
    assert!(
        ledger.effects().is_empty(),
        "nothing after the parked call ran"
    );
    let done = block_on(orch.submit_approval(
        outcome.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(w.bank.effects().len(), 1);
    assert_eq!(ledger.effects().len(), 1);
}

#[test]
fn a_run_held_by_a_dead_worker_is_listed_and_taken_over_once_its_lease_lapses() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let parked = block_on(orch.start(pay_invoice())).unwrap();
    // a worker took the run and died holding it
    let dead = block_on(w.checkpoints.acquire(
        parked.run,
        &WorkerId::new("worker-dead"),
        orch.clock().now(),
        Duration::from_secs(60),
    ))
    .unwrap();
    let listed = block_on(orch.parked_runs()).unwrap();
    assert_eq!(
        listed[0].lease.as_ref().map(|l| &l.owner),
        Some(&dead.owner)
    );
    let err = block_on(orch.resume(parked.run)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("worker-dead")
            && text.contains("until")
            && text.contains("takes the run over"),
        "{text}"
    );
    w.timer.clock().advance(Duration::from_secs(61));
    let resumed = block_on(orch.resume(parked.run)).unwrap();
    assert!(matches!(resumed.status, RunStatus::Parked { .. }));
}

/// One connector, two operations: reading the mailbox is read-only and runs alone; sending is
/// irreversible, and a rule on the recipient (an input field the operation declares governed)
/// sends mail to the bank to the founder; an operation the connector does not declare is
/// refused before anything.
#[test]
fn effects_costs_and_governed_fields_are_declared_per_operation() {
    use aios_core::OperationSpec;
    const MAIL_MODEL: &str = r#"{
      "version": 1,
      "charter": { "intent": "mail", "final_authority": "founder" },
      "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" }],
      "roles": [{ "key": "assistant" }],
      "pathways": [{ "key": "mail", "anchor": "founder", "delegate": "assistant",
        "limits": { "actions": ["mail.read", "mail.send", "mail.purge"], "effects": ["read_only", "irreversible"] },
        "escalation": [{ "name": "mail-to-the-bank", "when": { "context_equals": { "recipient": "bank@example.com" } },
                         "mode": "approve_before" }] }],
      "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 1000 } }]
    }"#;
    let w = Pay::new();
    let mail = RecordingConnector::new("mail", EffectClass::Irreversible)
        .with_operation(OperationSpec::new("read", EffectClass::ReadOnly))
        .with_operation(
            OperationSpec::new("send", EffectClass::Irreversible)
                .default_cost(Money::from_minor(2))
                .governs("recipient", "/to"),
        );
    let assistant = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let op = input.input["op"].as_str().unwrap_or("").to_string();
            let out = ctx
                .call(ConnectorRequest::new(
                    "mail",
                    op,
                    input.input["args"].clone(),
                ))
                .await?;
            Ok(out.output)
        })
    });
    let orch = Orchestrator::builder(governor_from(MAIL_MODEL))
        .role(Role::new("assistant", "mail", Arc::new(assistant)).connector("mail"))
        .connector(Arc::new(mail.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let task = |op: &str, args: serde_json::Value| {
        Workflow::new(op).task(TaskSpec::new(
            "mail",
            RoleId::from_name("assistant"),
            serde_json::json!({ "op": op, "args": args }),
        ))
    };
    // reading is read-only: it runs
    let read = block_on(orch.start(task("read", serde_json::json!({})))).unwrap();
    assert_eq!(read.status, RunStatus::Completed, "{:?}", read.status);
    // sending to a customer runs; to the bank, the rule on the recipient asks the founder
    let ok = block_on(orch.start(task(
        "send",
        serde_json::json!({ "to": "client@example.com" }),
    )))
    .unwrap();
    assert_eq!(ok.status, RunStatus::Completed, "{:?}", ok.status);
    let bank = block_on(orch.start(task(
        "send",
        serde_json::json!({ "to": "bank@example.com" }),
    )))
    .unwrap();
    assert!(
        matches!(bank.status, RunStatus::Parked { .. }),
        "{:?}",
        bank.status
    );
    let pending = block_on(orch.pending_approvals()).unwrap();
    assert_eq!(
        pending[0].proposed["context"]["recipient"],
        "bank@example.com"
    );
    assert_eq!(pending[0].proposed["effect"], "irreversible");
    assert_eq!(
        pending[0].proposed["cost"], 2,
        "the operation's declared cost"
    );
    // an operation the connector does not declare is refused before anything
    let purge = block_on(orch.start(task("purge", serde_json::json!({})))).unwrap();
    assert!(
        matches!(&purge.status, RunStatus::Failed { reason } if reason.contains("declares no operation `purge`")),
        "{:?}",
        purge.status
    );
    assert_eq!(mail.effects().len(), 2, "read and the customer's mail");
}

/// One role on two pathways, chosen per action: mail goes through the assistant's own
/// pathway (alone), payments through the paying pathway and its rules (the founder approves).
#[test]
fn one_role_acts_on_several_pathways_chosen_per_action() {
    const TWO: &str = r#"{
      "version": 1,
      "charter": { "intent": "run the office", "final_authority": "founder" },
      "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" }],
      "roles": [{ "key": "assistant" }],
      "pathways": [
        { "key": "admin", "anchor": "founder", "delegate": "assistant",
          "limits": { "actions": ["mail.send"], "effects": ["irreversible"] },
          "escalation": [{ "name": "risky", "when": { "risk_at_least": 90 }, "mode": "halt" }] },
        { "key": "paying", "anchor": "founder", "delegate": "assistant",
          "limits": { "actions": ["bank.pay"], "effects": ["irreversible"] },
          "escalation": [{ "name": "every-payment", "when": { "actions": ["bank.pay"] }, "mode": "approve_before" }] }
      ],
      "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 1000 } }]
    }"#;
    let w = Pay::new();
    let mail = RecordingConnector::new("mail", EffectClass::Irreversible);
    let agent: Arc<FnAgent> = Arc::new(FnAgent::new(|ctx, _| {
        Box::pin(async move {
            ctx.call(ConnectorRequest::new(
                "mail",
                "send",
                serde_json::json!({ "to": "x" }),
            ))
            .await?;
            let out = ctx
                .call(ConnectorRequest::new(
                    "bank",
                    "pay",
                    serde_json::json!({ "to": "acme" }),
                ))
                .await?;
            Ok(out.output)
        })
    }));
    let role = || {
        Role::new("assistant", "admin", agent.clone())
            .pathway_for("bank.", "paying")
            .connector("mail")
            .connector("bank")
    };
    let orch = Orchestrator::builder(governor_from(TWO))
        .role(role())
        .connector(Arc::new(mail.clone()))
        .connector(Arc::new(w.bank.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let run = block_on(orch.start(Workflow::new("office").task(TaskSpec::new(
        "office",
        RoleId::from_name("assistant"),
        serde_json::Value::Null,
    ))))
    .unwrap();
    assert_eq!(
        mail.effects().len(),
        1,
        "mail went on the admin pathway, alone"
    );
    let pending = block_on(orch.pending_approvals()).unwrap();
    assert_eq!(pending.len(), 1, "{:?}", run.status);
    assert_eq!(
        pending[0].pathway,
        Some(aios_core::PathwayId::from_name("paying"))
    );
    // a pathway the model does not have is refused at build time
    let err = Orchestrator::builder(governor_from(TWO))
        .role(role().pathway_for("crm.", "sales"))
        .connector(Arc::new(mail.clone()))
        .connector(Arc::new(w.bank.clone()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("pathway `sales`"), "{err}");
}

#[test]
fn the_inbox_shows_a_pending_approval_in_the_users_language() {
    let w = Pay::new();
    let orch = w.orchestrator();
    let outcome = block_on(orch.start(pay_invoice())).unwrap();
    let inbox = block_on(orch.inbox()).unwrap();
    assert_eq!(inbox.len(), 1);
    let p = &inbox[0];
    assert_eq!(p.id, outcome.pending_approvals()[0]);
    assert_eq!(p.task.as_deref(), Some("pay"), "the task by name");
    assert_eq!(p.action, "bank.pay");
    assert_eq!(p.anchor, "founder", "the anchor by key");
    assert_eq!(p.may_answer, vec!["alice".to_string(), "bob".to_string()]);
    assert!(
        p.reason
            .as_deref()
            .is_some_and(|r| r.contains("payments-need-approval")),
        "the rule that fired: {:?}",
        p.reason
    );
    assert_eq!(p.proposed["input"]["payee"], "acme");
    assert_eq!(
        p.expires_at - orch.clock().now(),
        chrono::Duration::hours(1)
    );
}

/// A refusal replays as the same kind of error it was, so an agent that handles a budget
/// refusal takes the same branch after a resume (it used to come back as a denial).
#[test]
fn a_refusal_replays_as_the_error_it_was() {
    let w = Pay::new();
    let agent = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let big = ctx
                .call(
                    ConnectorRequest::new("bank", "pay", serde_json::json!({ "big": true }))
                        .estimated_cost(Money::from_minor(200_000)),
                )
                .await;
            let note = match big {
                Err(aios_orchestrator::AgentError::BudgetExceeded { .. }) => "over budget",
                Err(e) => return Err(e),
                Ok(_) => "paid big",
            };
            // a smaller payment, which needs approval: the run parks and resumes here
            ctx.call(
                ConnectorRequest::new("bank", "pay", input.input.clone())
                    .estimated_cost(Money::from_minor(50)),
            )
            .await?;
            Ok(serde_json::json!(note))
        })
    });
    let model = PAY_MODEL.replace(r#""max_cost_per_action": 1000, "#, "");
    let orch = Orchestrator::builder(governor_from(&model))
        .role(Role::new("payer", "paying", Arc::new(agent)).connector("bank"))
        .connector(Arc::new(w.bank.clone()))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    // the big payment is approved, then refused by the budget; the small one parks, is
    // approved, and the run replays the big one's refusal as a budget refusal again
    let mut outcome = block_on(orch.start(pay_invoice())).unwrap();
    for _ in 0..2 {
        let id = outcome.pending_approvals()[0];
        outcome = block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).unwrap();
    }
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.status);
    assert_eq!(outcome.outputs["pay"], "over budget");
    assert_eq!(w.bank.effects().len(), 1, "only the small payment");
}
