//! Money moved is not money spent: the amount an action moves has its own charter ceiling,
//! autonomy limit, trigger and budget dimension, and manifests write it as `"200.00"`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aios_core::{AgentId, AnchorId, EffectClass, ManualClock, Money, PathwayId, Principal, RoleId};
use aios_governance::{
    diff, rules, ActionRequest, BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLedgerExt,
    ChangeKind, Dimension, FindingKind, GovernanceModel, Governor, InMemoryBudgetLedger,
    ReserveOptions, Usage, Verdict,
};
use std::sync::Arc;

const PAYING: &str = r#"
version = 1

[charter]
intent = "a consultancy that pays its suppliers"
final_authority = "founder"

[charter.boundaries]
max_cost_per_action = "5.00"
max_amount_per_action = "1000.00"

[[anchors]]
key = "founder"
title = "Founder"
holders = ["alice"]
deputy = "bob"
response_time = "24h"

[[roles]]
key = "assistant"

[[pathways]]
key = "paying"
anchor = "founder"
delegate = "assistant"
limits = { actions = ["bank.pay"], effects = ["irreversible"], max_cost_per_action = "1.00", max_amount_per_action = "500.00" }

[[pathways.escalation]]
name = "payments-above-200"
when = { amount_above = "200.00" }
mode = "approve_before"

[[budgets]]
key = "company"
scope = "organisation"
period = "month"
limits = { spend = "50.00", payments = "2000.00" }

[[budgets]]
key = "per-run"
scope = "run"
limits = { payments = "600.00" }
"#;

fn model() -> GovernanceModel {
    GovernanceModel::from_toml(PAYING).unwrap()
}

fn governor() -> Governor {
    model()
        .compile()
        .unwrap_or_else(|r| panic!("the paying model compiles:\n{r}"))
}

fn pay(amount: &str) -> ActionRequest {
    ActionRequest::new(
        Principal::Agent(AgentId::from_name("assistant-1")),
        RoleId::from_name("assistant"),
        PathwayId::from_name("paying"),
        "bank.pay",
    )
    .with_effect(EffectClass::Irreversible)
    .with_cost(Money::from_minor(10))
    .with_amount(amount.parse().unwrap())
}

#[test]
fn manifests_write_money_as_decimals() {
    let m = model();
    assert_eq!(
        m.charter.boundaries.max_amount_per_action,
        Some(Money::from_minor(100_000))
    );
    assert_eq!(
        m.pathways[0].escalation[0].when.amount_above,
        Some(Money::from_minor(20_000))
    );
    assert_eq!(
        m.budgets[0].limits.cost,
        Some(Money::from_minor(5_000)),
        "`spend` reads as the cost limit"
    );
    assert_eq!(
        m.budgets[0].limits.payments,
        Some(Money::from_minor(200_000))
    );
    let bad = PAYING.replace("amount_above = \"200.00\"", "amount_above = \"200.001\"");
    let err = GovernanceModel::from_toml(&bad).unwrap_err().to_string();
    assert!(
        err.contains("amount_above") && err.contains("more than two decimals"),
        "{err}"
    );
}

#[test]
fn the_amount_moved_is_decided_apart_from_the_cost() {
    let g = governor();
    #[rustfmt::skip]
    let table: Vec<(&str, ActionRequest, Option<&str>, &str)> = vec![
        ("a small payment runs alone", pay("150.00"), None, rules::WITHIN_DELEGATION),
        ("exactly at the threshold runs alone", pay("200.00"), None, rules::WITHIN_DELEGATION),
        ("above 200.00 needs the founder", pay("200.01"), Some("founder"), "escalation:payments-above-200"),
        ("above the autonomy limit needs the founder", pay("600.00"), Some("founder"), rules::LIMIT_AMOUNT),
        ("above the charter is denied, whoever approves", pay("1000.01"), None, rules::CHARTER_AMOUNT),
        ("a negative amount is malformed", pay("-1.00"), None, rules::MALFORMED),
    ];
    for (name, req, anchor, rule) in table {
        let d = g.decide(&req);
        assert!(d.fired(rule), "{name}: expected `{rule}`:\n{}", d.explain());
        match (anchor, &d.verdict) {
            (None, Verdict::Allow) if rule == rules::WITHIN_DELEGATION => {}
            (None, Verdict::Deny) if rule != rules::WITHIN_DELEGATION => {}
            (Some(a), Verdict::RequireApproval { anchor, .. }) => {
                assert_eq!(*anchor, AnchorId::from_name(a), "{name}")
            }
            (_, v) => panic!("{name}: unexpected {v:?}:\n{}", d.explain()),
        }
    }
    // a large amount is not a large cost and a large cost is not an amount
    let d = g.decide(&pay("150.00").with_cost(Money::from_minor(150)));
    assert!(d.fired(rules::LIMIT_COST), "{}", d.explain());
    assert!(!d.fired("escalation:payments-above-200"), "{}", d.explain());
    let explained = g.explain(&g.decide(&pay("250.00")));
    assert!(
        explained.contains("amount moved 250.00 > 200.00"),
        "{explained}"
    );
}

#[test]
fn validation_and_diff_know_the_amount_limits() {
    let mut wide = model();
    wide.pathways[0].limits.max_amount_per_action = Some(Money::from_minor(200_000));
    let report = wide.validate();
    assert!(
        report.has(
            FindingKind::ExceedsCharter,
            "pathways[0].limits.max_amount_per_action"
        ),
        "{report}"
    );
    let mut negative = model();
    negative.pathways[0].escalation[0].when.amount_above = Some(Money::from_minor(-1));
    assert!(negative.validate().has(
        FindingKind::InvalidValue,
        "pathways[0].escalation[0].when.amount_above"
    ));

    let mut looser = model();
    looser.version = 2;
    looser.pathways[0].escalation[0].when.amount_above = Some(Money::from_minor(50_000));
    looser.budgets[0].limits.payments = None;
    looser.charter.boundaries.max_amount_per_action = Some(Money::from_minor(500_000));
    let d = diff(&model(), &looser);
    for path in [
        "pathways.paying.escalation.payments-above-200.when.amount_above",
        "budgets.company.limits.payments",
        "charter.boundaries.max_amount_per_action",
    ] {
        assert!(d.has(ChangeKind::Loosened, path), "{path}:\n{d}");
    }
}

#[test]
fn payments_have_their_own_budget_per_period_and_per_run() {
    futures::executor::block_on(payments_budget());
}

async fn payments_budget() {
    let g = governor();
    let clock = ManualClock::default();
    let ledger = InMemoryBudgetLedger::new(Arc::new(clock));
    let plan = g.budget_plan();
    ledger.apply_plan(&plan).await.unwrap();
    let run = aios_core::RunId::from_name("run-1");
    ledger
        .set_limits(BudgetKey::Run(run), plan.per_run.clone().unwrap())
        .await
        .unwrap();
    let chain = BudgetChain::organisation().run(run);
    let paid = |minor| Usage::ZERO.with_payments(Money::from_minor(minor));
    let r = ledger
        .reserve(&chain, paid(50_000), &ReserveOptions::default())
        .await
        .unwrap();
    ledger.commit(r.id, paid(50_000)).await.unwrap();
    // the run's 600.00 is the tighter: 500.00 paid, 100.01 more is refused
    let err = ledger
        .reserve(&chain, paid(10_001), &ReserveOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BudgetError::Exceeded {
                key: BudgetKey::Run(_),
                dimension: Dimension::Payments,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("payments"), "{err}");
    // spending is limited on its own: 50.00 a month, unaffected by what was paid
    let spend = ledger
        .reserve(
            &chain,
            Usage::cost(Money::from_minor(5_000)),
            &ReserveOptions::default(),
        )
        .await
        .unwrap();
    ledger.release(spend.id).await.unwrap();
    let u = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.payments, Money::from_minor(50_000));
    assert_eq!(u.committed.cost, Money::ZERO);
}
