//! Budgets: the conformance suite on the in-memory ledger, audit of alerts, and a property
//! test of concurrent reservations from several threads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/budget_ops.rs"]
mod budget_ops;
mod common;

use std::sync::Arc;

use aios_core::{AgentId, AuditEvent, InMemoryAuditLog, ManualClock, Money, RoleId, RunId};
use aios_governance::{
    testing, BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLedgerExt, BudgetLimits,
    InMemoryBudgetLedger, Limits, ReserveOptions, Usage,
};
use proptest::prelude::*;

#[test]
fn in_memory_ledger_passes_the_conformance_suite() {
    futures::executor::block_on(testing::budget_ledger_conformance(|clock: ManualClock| {
        InMemoryBudgetLedger::new(Arc::new(clock))
    }));
}

#[test]
fn alerts_are_audited_and_the_plan_comes_from_the_model() {
    futures::executor::block_on(async {
        let g = common::governor();
        let log = InMemoryAuditLog::new();
        let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()))
            .with_audit(Arc::new(log.clone()));
        let plan = g.budget_plan();
        ledger.apply_plan(&plan).await.unwrap();
        let run = RunId::from_name("run-7");
        ledger
            .set_limits(BudgetKey::Run(run), plan.per_run.clone().unwrap())
            .await
            .unwrap();
        let chain = BudgetChain::organisation()
            .role(RoleId::from_name("outreach"))
            .run(run);
        // the run allows 10.00; the outreach role 200.00 with alerts at 50 and 90 %
        let r = ledger
            .reserve(
                &chain,
                Usage::cost(Money::from_minor(600)),
                &ReserveOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.alerts.len(), 1, "{:?}", r.alerts);
        assert_eq!(r.alerts[0].key, BudgetKey::Run(run));
        assert!(matches!(
            ledger.reserve(&chain, Usage::cost(Money::from_minor(401)), &ReserveOptions::default()).await,
            Err(BudgetError::Exceeded { key: BudgetKey::Run(k), .. }) if k == run
        ));
        ledger
            .commit(r.id, Usage::cost(Money::from_minor(950)).with_tool_calls(2))
            .await
            .unwrap();
        let events: Vec<AuditEvent> = log.tamper(|e| e.iter().map(|e| e.event.clone()).collect());
        let alerts: Vec<(String, u32)> = events
            .iter()
            .map(|e| match e {
                AuditEvent::BudgetAlert {
                    budget,
                    threshold_percent,
                    ..
                } => (budget.clone(), *threshold_percent),
                other => panic!("only alerts: {other:?}"),
            })
            .collect();
        let run_key = BudgetKey::Run(run).to_string();
        assert_eq!(
            alerts,
            vec![(run_key.clone(), 50), (run_key, 80)],
            "each crossing is audited once"
        );
        assert!(log.verify_sync(None).is_intact());
    });
}

#[test]
fn a_three_level_hierarchy_is_all_or_nothing() {
    let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
    let cap = |c| {
        BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(c)),
            ..Limits::default()
        })
    };
    let role = RoleId::from_name("r");
    let agent = AgentId::from_name("a");
    ledger.set_limits_sync(BudgetKey::Organisation, cap(100));
    ledger.set_limits_sync(BudgetKey::Role(role), cap(1_000));
    ledger.set_limits_sync(BudgetKey::Agent(agent), cap(1_000));
    let chain = BudgetChain::organisation().role(role).agent(agent);
    let r = ledger
        .reserve_sync(
            &chain,
            Usage::cost(Money::from_minor(90)),
            &ReserveOptions::default(),
        )
        .unwrap();
    let err = ledger
        .reserve_sync(
            &chain,
            Usage::cost(Money::from_minor(20)),
            &ReserveOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        BudgetError::Exceeded {
            key: BudgetKey::Organisation,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "budget `organisation` exceeded on cost: 90 used + 20 requested, limit 100"
    );
    for key in [BudgetKey::Role(role), BudgetKey::Agent(agent)] {
        assert_eq!(
            ledger.usage_sync(key).unwrap().reserved.cost,
            Money::from_minor(90),
            "lower levels were not charged by the refused reservation"
        );
    }
    ledger.release_sync(r.id).unwrap();
    assert_eq!(ledger.outstanding(), 0);
}

/// One thread's plan: for each step, an amount to reserve and, if it succeeds, either the
/// actual amount to commit (at most the reservation) or a release.
#[derive(Debug, Clone)]
struct Step {
    amount: i64,
    actual: Option<i64>,
}

fn step() -> impl Strategy<Value = Step> {
    (1i64..40, prop::option::of(0i64..40)).prop_map(|(amount, actual)| Step {
        amount,
        actual: actual.map(|a| a.min(amount)),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn concurrent_reservations_never_exceed_the_limit(
        org_limit in 50i64..400,
        role_limit in 50i64..400,
        run_limit in 20i64..200,
        plans in prop::collection::vec(prop::collection::vec(step(), 1..60), 2..5),
    ) {
        let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
        let cap = |c| BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(c)),
            tool_calls: Some(10_000),
            ..Limits::default()
        });
        let role = RoleId::from_name("outreach");
        ledger.set_limits_sync(BudgetKey::Organisation, cap(org_limit));
        ledger.set_limits_sync(BudgetKey::Role(role), cap(role_limit));
        let threads: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(t, plan)| {
                let ledger = ledger.clone();
                let run = RunId::from_name(&format!("run-{t}"));
                ledger.set_limits_sync(BudgetKey::Run(run), cap(run_limit));
                std::thread::spawn(move || {
                    let chain = BudgetChain::organisation().role(role).run(run);
                    let mut committed = 0i64;
                    let mut settled = 0usize;
                    let mut granted = 0usize;
                    for s in plan {
                        let amount = Usage::cost(Money::from_minor(s.amount)).with_tool_calls(1);
                        match ledger.reserve_sync(&chain, amount, &ReserveOptions::default()) {
                            Ok(r) => {
                                granted += 1;
                                // every level stays within its limit at all times
                                for (key, limit) in [
                                    (BudgetKey::Organisation, org_limit),
                                    (BudgetKey::Role(role), role_limit),
                                    (BudgetKey::Run(run), run_limit),
                                ] {
                                    let u = ledger.usage_sync(key).unwrap();
                                    let used = u.committed.cost.minor() + u.reserved.cost.minor();
                                    assert!(used <= limit, "{key} used {used} > {limit}");
                                }
                                match s.actual {
                                    Some(a) => {
                                        ledger.commit_sync(r.id, Usage::cost(Money::from_minor(a))).unwrap();
                                        committed += a;
                                    }
                                    None => {
                                        ledger.release_sync(r.id).unwrap();
                                    }
                                }
                                settled += 1;
                                // a settled reservation cannot be settled again
                                assert!(matches!(
                                    ledger.release_sync(r.id),
                                    Err(BudgetError::AlreadySettled { .. })
                                ));
                            }
                            Err(BudgetError::Exceeded { .. }) => {}
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                    (run, committed, granted, settled)
                })
            })
            .collect();
        let mut total = 0i64;
        for t in threads {
            let (run, committed, granted, settled) = t.join().unwrap();
            prop_assert_eq!(granted, settled, "every reservation was committed or released");
            let u = ledger.usage_sync(BudgetKey::Run(run)).unwrap();
            prop_assert_eq!(u.committed.cost.minor(), committed);
            prop_assert_eq!(u.reserved, Usage::ZERO);
            prop_assert!(committed <= run_limit);
            total += committed;
        }
        prop_assert_eq!(ledger.outstanding(), 0);
        let org = ledger.usage_sync(BudgetKey::Organisation).unwrap();
        prop_assert_eq!(org.committed.cost.minor(), total, "the organisation saw every commit");
        prop_assert_eq!(org.reserved, Usage::ZERO);
        prop_assert!(total <= org_limit.min(role_limit));
    }
}

#[test]
fn a_level_configured_later_limits_the_next_reservation() {
    let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
    let cap = |c| {
        BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(c)),
            ..Limits::default()
        })
    };
    let role = RoleId::from_name("r");
    let chain = BudgetChain::organisation().role(role);
    ledger.set_limits_sync(BudgetKey::Organisation, cap(1_000));
    let r = ledger
        .reserve_sync(
            &chain,
            Usage::cost(Money::from_minor(50)),
            &ReserveOptions::default(),
        )
        .unwrap();
    ledger.set_limits_sync(BudgetKey::Role(role), cap(40));
    assert!(matches!(
        ledger.reserve_sync(
            &chain,
            Usage::cost(Money::from_minor(50)),
            &ReserveOptions::default()
        ),
        Err(BudgetError::Exceeded {
            key: BudgetKey::Role(_),
            ..
        })
    ));
    ledger.release_sync(r.id).unwrap();
    assert_eq!(
        ledger.usage_sync(BudgetKey::Role(role)).unwrap().reserved,
        Usage::ZERO,
        "the role was not charged for the reservation made before it had a budget"
    );
}

#[test]
fn exhausted_budget_refuses_zero_reservation() {
    let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
    ledger.set_limits_sync(
        BudgetKey::Organisation,
        BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(100)),
            tool_calls: Some(10),
            ..Limits::default()
        }),
    );
    let org = BudgetChain::organisation();
    // an overrun is recorded: 120 of 100 spent
    let r = ledger
        .reserve_sync(
            &org,
            Usage::cost(Money::from_minor(100)),
            &ReserveOptions::default(),
        )
        .unwrap();
    ledger
        .commit_sync(r.id, Usage::cost(Money::from_minor(120)))
        .unwrap();
    for zero in [Usage::ZERO, Usage::ZERO.with_tool_calls(1)] {
        assert!(
            matches!(
                ledger.reserve_sync(&org, zero, &ReserveOptions::default()),
                Err(BudgetError::Exceeded {
                    key: BudgetKey::Organisation,
                    dimension: aios_governance::Dimension::Cost,
                    limit: 100,
                    used: 120,
                    requested: 0,
                })
            ),
            "nothing more passes an overspent budget, not even {zero:?}"
        );
    }
    // exactly at the limit is exhausted too
    let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
    ledger.set_limits_sync(
        BudgetKey::Organisation,
        BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(100)),
            ..Limits::default()
        }),
    );
    let r = ledger
        .reserve_sync(
            &org,
            Usage::cost(Money::from_minor(100)),
            &ReserveOptions::default(),
        )
        .unwrap();
    assert!(matches!(
        ledger.reserve_sync(&org, Usage::ZERO, &ReserveOptions::default()),
        Err(BudgetError::Exceeded { used: 100, .. })
    ));
    assert_eq!(ledger.outstanding(), 1, "the refusal changed nothing");
    ledger.release_sync(r.id).unwrap();
    assert!(
        ledger
            .reserve_sync(&org, Usage::ZERO, &ReserveOptions::default())
            .is_ok(),
        "below the limit a zero reservation passes"
    );
}

fn in_memory(clock: ManualClock) -> InMemoryBudgetLedger {
    InMemoryBudgetLedger::new(Arc::new(clock))
}

#[test]
fn charged_once_per_key() {
    futures::executor::block_on(testing::budget_charged_once_per_key(&in_memory));
}

#[test]
fn expired_reservation_stops_counting() {
    futures::executor::block_on(testing::budget_expired_reservation_stops_counting(
        &in_memory,
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Reserve, commit, release, expiry and charge keys against the model of the contract.
    #[test]
    fn in_memory_ledger_keeps_every_promise_of_the_model(ops in budget_ops::budget_ops()) {
        let done = futures::executor::block_on(testing::budget_ledger_against_model(&in_memory, &ops));
        prop_assert!(done >= 1);
    }
}
