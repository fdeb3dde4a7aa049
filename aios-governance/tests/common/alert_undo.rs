//! A promise every budget ledger that records its alerts keeps (included with `#[path]` by
//! each ledger's tests): a reservation whose alert cannot be recorded is undone, so nothing
//! leaks, and its alert is reported once the log is back.

use aios_core::testing::{FaultPlan, Faults};
use aios_core::Money;
use aios_governance::{
    BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLimits, Limits, ReserveOptions, Usage,
};

/// The thresholds of `alerts`, in order.
pub fn thresholds(alerts: &[aios_governance::BudgetAlert]) -> Vec<u32> {
    alerts.iter().map(|a| a.threshold_percent).collect()
}

/// Runs the scenario on `ledger`, whose audit log fails while `faults` says so (it starts
/// failing every append).
pub async fn a_reservation_whose_alert_cannot_be_recorded_is_undone(
    ledger: &dyn BudgetLedger,
    faults: &Faults,
) {
    faults.set_plan(FaultPlan::fail_after(0));
    ledger
        .set_limits(
            BudgetKey::Organisation,
            BudgetLimits::total(Limits {
                cost: Some(Money::from_minor(100)),
                ..Limits::default()
            }),
        )
        .await
        .unwrap();
    let org = BudgetChain::organisation();
    let options = ReserveOptions::default();
    let reserve = |minor| ledger.reserve(&org, Usage::cost(Money::from_minor(minor)), &options);
    // below every threshold: no alert, no audit needed
    let quiet = reserve(10).await.unwrap();
    // crossing 50 % needs an alert the log refuses: undone
    let refused = reserve(60).await;
    assert!(
        matches!(refused, Err(BudgetError::Store(_))),
        "the reservation fails with the log: {refused:?}"
    );
    let reserved = || async {
        ledger
            .usage(BudgetKey::Organisation)
            .await
            .unwrap()
            .unwrap()
            .reserved
            .cost
    };
    assert_eq!(reserved().await, Money::from_minor(10), "nothing leaked");
    // once the log is back, the alert is reported (and recorded) after all
    faults.set_plan(FaultPlan::none());
    let r = reserve(60).await.unwrap();
    assert_eq!(
        thresholds(&r.alerts),
        vec![50],
        "the unrecorded alert is reported again"
    );
    ledger.release(quiet.id).await.unwrap();
    ledger.release(r.id).await.unwrap();
    assert_eq!(reserved().await, Money::ZERO);
}
