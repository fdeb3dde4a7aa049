//! Governance sees what a connector call moves: the amount, read from the call's input where
//! the operation declares it, reaches the decision (`amount_above`, `max_amount_per_action`)
//! and the `payments` budget, apart from what the call costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aios_core::{EffectClass, ManualTimer, Money, OperationSpec, RecordingConnector, RoleId};
use aios_governance::{ApprovalResponse, BudgetKey, BudgetLedger, InMemoryBudgetLedger};
use aios_orchestrator::{
    AgentError, ConnectorRequest, FnAgent, Orchestrator, Role, RunStatus, TaskSpec, Workflow,
};
use common::*;
use futures::executor::block_on;

/// Payments above 200.00 need the founder; the charter caps one payment at 1,000.00; a run
/// may pay 600.00 in all, the company 2,000.00 a month, and spend 50.00 a month.
const MODEL: &str = r#"{
  "version": 1,
  "charter": {
    "intent": "pay suppliers",
    "final_authority": "founder",
    "boundaries": { "max_cost_per_action": "5.00", "max_amount_per_action": "1000.00" }
  },
  "anchors": [
    { "key": "founder", "title": "Founder", "holders": ["alice"], "deputy": "bob", "response_time": "24h" }
  ],
  "roles": [ { "key": "payer" } ],
  "pathways": [
    { "key": "paying", "anchor": "founder", "delegate": "payer",
      "limits": { "actions": ["bank.pay"], "effects": ["irreversible"], "max_cost_per_action": "1.00" },
      "escalation": [ { "name": "payments-above-200", "when": { "amount_above": "200.00" },
                        "mode": "approve_before" } ] }
  ],
  "budgets": [
    { "key": "company", "scope": "organisation", "period": "month",
      "limits": { "spend": "50.00", "payments": "2000.00" } },
    { "key": "per-run", "scope": "run", "limits": { "payments": "600.00" } }
  ]
}"#;

struct World {
    bank: RecordingConnector,
    ledger: InMemoryBudgetLedger,
    orch: Orchestrator,
}

/// A payer that makes every payment its input lists, in order.
fn world() -> World {
    let bank = RecordingConnector::new("bank", EffectClass::Irreversible).with_operation(
        OperationSpec::new("pay", EffectClass::Irreversible)
            .default_cost(Money::from_minor(10))
            .governs("payee", "/payee")
            .moves_money("/amount"),
    );
    let timer = ManualTimer::default();
    let ledger = InMemoryBudgetLedger::new(Arc::new(timer.clock().clone()));
    let payer = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let mut paid = vec![];
            for payment in input.input["payments"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let out = ctx
                    .call(ConnectorRequest::new("bank", "pay", payment))
                    .await?;
                paid.push(out.output);
            }
            Ok(serde_json::json!(paid))
        })
    });
    let orch = Orchestrator::builder(governor_from(MODEL))
        .role(Role::new("payer", "paying", Arc::new(payer)).connector("bank"))
        .connector(Arc::new(bank.clone()))
        .clock(Arc::new(timer.clock().clone()))
        .timer(Arc::new(timer.clone()))
        .budgets(Arc::new(ledger.clone()))
        .build()
        .unwrap();
    World { bank, ledger, orch }
}

fn payments(amounts: &[serde_json::Value]) -> Workflow {
    let list: Vec<_> = amounts
        .iter()
        .map(|a| serde_json::json!({ "payee": "printshop", "amount": a }))
        .collect();
    Workflow::new("invoices").task(TaskSpec::new(
        "pay-invoices",
        RoleId::from_name("payer"),
        serde_json::json!({ "payments": list }),
    ))
}

fn failed_with(status: &RunStatus, needle: &str) -> bool {
    matches!(status, RunStatus::Failed { reason } if reason.contains(needle))
}

#[test]
fn a_small_payment_runs_alone_and_counts_as_payments_not_spend() {
    let w = world();
    let done = block_on(w.orch.start(payments(&[serde_json::json!("150.00")]))).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(w.bank.effects().len(), 1);
    let u = block_on(w.ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.payments, Money::from_minor(15_000));
    assert_eq!(
        u.committed.cost,
        Money::from_minor(10),
        "only the connector's fee is spend"
    );
}

#[test]
fn a_payment_above_the_threshold_waits_for_the_founder_and_the_request_shows_it() {
    let w = world();
    let outcome = block_on(w.orch.start(payments(&[serde_json::json!(250)]))).unwrap();
    assert_eq!(outcome.pending_approvals().len(), 1, "{:?}", outcome.status);
    assert!(w.bank.effects().is_empty());
    let inbox = block_on(w.orch.inbox()).unwrap();
    let pending = &inbox[0];
    assert_eq!(pending.action, "bank.pay");
    assert_eq!(pending.task.as_deref(), Some("pay-invoices"));
    let reason = pending.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("payments-above-200") && reason.contains("amount moved 250.00 > 200.00"),
        "{reason}"
    );
    assert_eq!(pending.anchor, "founder");
    assert_eq!(pending.may_answer, vec!["alice", "bob"]);
    assert_eq!(pending.proposed["amount"], 25_000);
    assert_eq!(pending.proposed["context"]["payee"], "printshop");
    let done = block_on(w.orch.submit_approval(
        outcome.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(w.bank.effects().len(), 1);
}

#[test]
fn a_payment_above_the_charter_is_denied_without_asking() {
    let w = world();
    let done = block_on(w.orch.start(payments(&[serde_json::json!("1000.01")]))).unwrap();
    assert!(
        failed_with(&done.status, "charter.max_amount_per_action"),
        "{:?}",
        done.status
    );
    assert!(done.pending_approvals().is_empty());
    assert!(w.bank.effects().is_empty());
}

#[test]
fn the_run_payments_budget_stops_the_payment_that_would_exceed_it() {
    let w = world();
    let amounts = [190, 190, 190, 190].map(|a| serde_json::json!(a));
    let done = block_on(w.orch.start(payments(&amounts))).unwrap();
    assert!(failed_with(&done.status, "payments"), "{:?}", done.status);
    assert_eq!(
        w.bank.effects().len(),
        3,
        "570.00 paid; 760.00 would exceed 600.00"
    );
    let u = block_on(w.ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.payments, Money::from_minor(57_000));
    assert_eq!(u.reserved.payments, Money::ZERO, "nothing left reserved");
}

#[test]
fn a_payment_whose_amount_cannot_be_read_is_refused_naming_the_field() {
    for (input, problem) in [
        (serde_json::json!({ "payee": "printshop" }), "is missing"),
        (
            serde_json::json!({ "payee": "printshop", "amount": "lots" }),
            "not an amount",
        ),
        (
            serde_json::json!({ "payee": "printshop", "amount": "-5.00" }),
            "negative",
        ),
        (
            serde_json::json!({ "payee": "printshop", "amount": 12.345 }),
            "more than two decimals",
        ),
    ] {
        let w = world();
        let wf = Workflow::new("invoices").task(TaskSpec::new(
            "pay-invoices",
            RoleId::from_name("payer"),
            serde_json::json!({ "payments": [input] }),
        ));
        let done = block_on(w.orch.start(wf)).unwrap();
        match &done.status {
            RunStatus::Failed { reason } => {
                assert!(
                    reason.contains("`/amount`")
                        && reason.contains("`pay`")
                        && reason.contains(problem),
                    "{reason}"
                );
            }
            other => panic!("{input}: {other:?}"),
        }
        assert!(w.bank.effects().is_empty(), "{input}");
    }
}

#[test]
fn an_edit_that_raises_the_amount_beyond_the_charter_is_refused_and_nothing_is_paid() {
    let w = world();
    let outcome = block_on(w.orch.start(payments(&[serde_json::json!("300.00")]))).unwrap();
    let id = outcome.pending_approvals()[0];
    let edit = ApprovalResponse::Edit(serde_json::json!({
        "input": { "payee": "printshop", "amount": "5000.00" }
    }));
    let done = block_on(w.orch.submit_approval(id, alice(), edit)).unwrap();
    assert!(
        failed_with(&done.status, "charter.max_amount_per_action"),
        "{:?}",
        done.status
    );
    assert!(w.bank.effects().is_empty());
    // nor can an edit set the amount apart from the input
    let w = world();
    let outcome = block_on(w.orch.start(payments(&[serde_json::json!("300.00")]))).unwrap();
    let id = outcome.pending_approvals()[0];
    let edit = ApprovalResponse::Edit(serde_json::json!({ "amount": 100 }));
    let done = block_on(w.orch.submit_approval(id, alice(), edit)).unwrap();
    assert!(
        failed_with(&done.status, "edit `input` instead"),
        "{:?}",
        done.status
    );
    assert!(w.bank.effects().is_empty());
}

#[test]
fn an_edit_that_lowers_the_amount_pays_the_edited_amount_once() {
    let w = world();
    let outcome = block_on(w.orch.start(payments(&[serde_json::json!("300.00")]))).unwrap();
    let id = outcome.pending_approvals()[0];
    let edit = ApprovalResponse::Edit(serde_json::json!({
        "input": { "payee": "printshop", "amount": "120.00" }
    }));
    let done = block_on(w.orch.submit_approval(id, alice(), edit)).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(w.bank.effects().len(), 1);
    assert_eq!(w.bank.effects()[0].input["amount"], "120.00");
    let u = block_on(w.ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.payments, Money::from_minor(12_000));
}

#[test]
fn the_refusal_reaches_the_agent_as_a_typed_denial() {
    // an agent that looks at the error it got
    let bank = RecordingConnector::new("bank", EffectClass::Irreversible).with_operation(
        OperationSpec::new("pay", EffectClass::Irreversible).moves_money("/amount"),
    );
    let timer = ManualTimer::default();
    let payer = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let err = ctx
                .call(ConnectorRequest::new(
                    "bank",
                    "pay",
                    serde_json::json!({ "amount": "2000.00" }),
                ))
                .await
                .unwrap_err();
            Ok(serde_json::json!({
                "denied": matches!(err, AgentError::Denied { .. }),
                "says": err.to_string(),
            }))
        })
    });
    let orch = Orchestrator::builder(governor_from(MODEL))
        .role(Role::new("payer", "paying", Arc::new(payer)).connector("bank"))
        .connector(Arc::new(bank.clone()))
        .clock(Arc::new(timer.clock().clone()))
        .timer(Arc::new(timer.clone()))
        .build()
        .unwrap();
    let done = block_on(orch.start(payments(&[]))).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    let out = &done.outputs["pay-invoices"];
    assert_eq!(out["denied"], true, "{out}");
    assert!(
        out["says"]
            .as_str()
            .unwrap()
            .contains("amount moved 2000.00 > 1000.00"),
        "{out}"
    );
    assert!(bank.effects().is_empty());
}
