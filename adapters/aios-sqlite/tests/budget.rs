//! The SQLite budget ledger's own promises, beyond the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../aios-governance/tests/common/budget_ops.rs"]
mod budget_ops;

use std::sync::Arc;

use aios_core::{ManualClock, Money};
use aios_governance::{
    BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLimits, Dimension, Limits,
    ReserveOptions, Usage,
};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;
use proptest::prelude::*;

fn cap(minor: i64) -> BudgetLimits {
    BudgetLimits::total(Limits {
        cost: Some(Money::from_minor(minor)),
        tool_calls: Some(10),
        ..Limits::default()
    })
}

#[test]
fn exhausted_budget_refuses_zero_reservation() {
    block_on(async {
        let store = SqliteStore::in_memory().unwrap();
        let ledger = store.budget_ledger(Arc::new(ManualClock::default()));
        ledger
            .set_limits(BudgetKey::Organisation, cap(100))
            .await
            .unwrap();
        let org = BudgetChain::organisation();
        let r = ledger
            .reserve(
                &org,
                Usage::cost(Money::from_minor(100)),
                &ReserveOptions::default(),
            )
            .await
            .unwrap();
        ledger
            .commit(r.id, Usage::cost(Money::from_minor(120)))
            .await
            .unwrap();
        for zero in [Usage::ZERO, Usage::ZERO.with_tool_calls(1)] {
            assert!(
                matches!(
                    ledger.reserve(&org, zero, &ReserveOptions::default()).await,
                    Err(BudgetError::Exceeded {
                        key: BudgetKey::Organisation,
                        dimension: Dimension::Cost,
                        limit: 100,
                        used: 120,
                        requested: 0,
                    })
                ),
                "nothing more passes an overspent budget, not even {zero:?}"
            );
        }
        assert_eq!(
            ledger.outstanding().unwrap(),
            0,
            "the refusals changed nothing"
        );
    });
}

fn ledger(clock: ManualClock) -> aios_sqlite::SqliteBudgetLedger {
    SqliteStore::in_memory()
        .unwrap()
        .budget_ledger(Arc::new(clock))
}

#[test]
fn charged_once_per_key() {
    block_on(aios_governance::testing::budget_charged_once_per_key(
        &ledger,
    ));
}

#[test]
fn expired_reservation_stops_counting() {
    block_on(aios_governance::testing::budget_expired_reservation_stops_counting(&ledger));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Reserve, commit, release, expiry and charge keys against the model of the contract.
    #[test]
    fn sqlite_ledger_keeps_every_promise_of_the_model(ops in budget_ops::budget_ops()) {
        let done = block_on(aios_governance::testing::budget_ledger_against_model(&ledger, &ops));
        prop_assert!(done >= 1);
    }
}
