//! The SQLite budget ledger's own promises, beyond the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../aios-governance/tests/common/alert_undo.rs"]
mod alert_undo;
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

/// The file, keys and round count a child of [`charged_once_per_key_across_processes`] uses.
const CHILD_STORE: &str = "AIOS_BUDGET_CHILD_STORE";
const CHARGE_KEYS: usize = 25;

/// The child's side: reserve 10 under every key, wait until every child has (marker files
/// beside the store), then commit them all: four commits race for each key. Does nothing
/// unless started by the parent test.
#[test]
fn budget_child_process() {
    let Ok(path) = std::env::var(CHILD_STORE) else {
        return;
    };
    let me: usize = std::env::var("AIOS_BUDGET_CHILD").unwrap().parse().unwrap();
    let dir = std::path::Path::new(&path).parent().unwrap().to_path_buf();
    let store = SqliteStore::open(&path).unwrap();
    let ledger = store.budget_ledger(Arc::new(aios_core::SystemClock));
    let run = aios_core::RunId::from_name("shared run");
    let chain = BudgetChain::organisation().run(run);
    block_on(async {
        let mut held = Vec::new();
        for i in 0..CHARGE_KEYS {
            let key = ReserveOptions::keyed(format!("shared run/task/{i}"));
            let r = ledger
                .reserve(&chain, Usage::cost(Money::from_minor(10)), &key)
                .await
                .unwrap_or_else(|e| panic!("key {i}: nothing is charged yet: {e}"));
            held.push(r.id);
        }
        std::fs::write(dir.join(format!("reserved-{me}")), b"").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while (0..CHILDREN).any(|c| !dir.join(format!("reserved-{c}")).exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the other children never reserved"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for id in held {
            ledger
                .commit(id, Usage::cost(Money::from_minor(10)))
                .await
                .unwrap();
        }
    });
}

/// How many processes race.
const CHILDREN: usize = 4;

/// Four processes on one file each hold a reservation under the same 25 charge keys and
/// then commit them all at once (as workers do when a run is taken over from a live one):
/// each key is charged exactly once, and no reservation is left open.
#[test]
fn charged_once_per_key_across_processes() {
    if std::env::var(CHILD_STORE).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let ledger = store.budget_ledger(Arc::new(aios_core::SystemClock));
        block_on(ledger.set_limits(BudgetKey::Organisation, cap(1_000_000))).unwrap();
    }
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|c| {
            std::process::Command::new(&me)
                .args(["--exact", "budget_child_process", "--nocapture"])
                .env(CHILD_STORE, &path)
                .env("AIOS_BUDGET_CHILD", c.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = SqliteStore::open(&path).unwrap();
    let ledger = store.budget_ledger(Arc::new(aios_core::SystemClock));
    let usage = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(
        usage.committed.cost.minor(),
        10 * CHARGE_KEYS as i64,
        "every key charged exactly once"
    );
    assert_eq!(usage.reserved.cost.minor(), 0, "no reservation left open");
}

/// A reservation whose caller stops waiting while the writer cannot start (another
/// connection holds the database's write lock) reserves nothing once the lock is released:
/// nobody would hold its id to settle it. Before, it was made anyway and stayed open, holding
/// budget, until it expired.
#[test]
fn a_reservation_whose_caller_is_gone_before_its_turn_reserves_nothing() {
    use std::future::Future;
    use std::task::{Context, Poll};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let store = SqliteStore::open(&path).unwrap();
    let ledger = store.budget_ledger(Arc::new(ManualClock::default()));
    block_on(ledger.set_limits(BudgetKey::Organisation, cap(1_000))).unwrap();
    // another process's connection holds the write lock
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let chain = BudgetChain::organisation();
    let options = ReserveOptions::default();
    let mut reserving =
        Box::pin(ledger.reserve(&chain, Usage::cost(Money::from_minor(100)), &options));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(
        matches!(reserving.as_mut().poll(&mut cx), Poll::Pending),
        "the reservation waits for the writer"
    );
    // the caller gives up (a worker's future dropped) while the write lock is held
    drop(reserving);
    other.execute_batch("COMMIT").unwrap();
    // a write queued after it runs after it
    block_on(ledger.set_limits(BudgetKey::Organisation, cap(1_000))).unwrap();
    assert_eq!(ledger.outstanding().unwrap(), 0, "nothing left open");
    let org = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO, "nothing reserved");
    // the next caller is served
    let r =
        block_on(ledger.reserve(&chain, Usage::cost(Money::from_minor(100)), &options)).unwrap();
    block_on(ledger.release(r.id)).unwrap();
    assert_eq!(ledger.outstanding().unwrap(), 0);
}

/// A reservation whose caller stops waiting after the reservation was made, while its alert
/// is being recorded (the audit log does not answer), is released: nobody would hold its id.
/// Its alert is reported again next time, since it may never have been recorded.
#[test]
fn a_reservation_dropped_while_its_alert_is_recorded_is_released() {
    use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog};
    use aios_core::{InMemoryAuditLog, ManualTimer};
    use std::future::Future;
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("ledger.db")).unwrap();
    let clock = ManualClock::default();
    // every append waits for a timer nobody advances
    let timer = ManualTimer::new(clock.clone());
    let faults = Faults::new(FaultPlan::delay(Arc::new(timer), Duration::from_secs(3600)));
    let ledger = store
        .budget_ledger(Arc::new(clock))
        .with_audit(Arc::new(FaultyAuditLog::new(
            InMemoryAuditLog::new(),
            faults.clone(),
        )));
    block_on(ledger.set_limits(BudgetKey::Organisation, cap(100))).unwrap();
    let chain = BudgetChain::organisation();
    let options = ReserveOptions::default();
    // crossing 50 % raises an alert, whose audit entry never comes
    let mut reserving =
        Box::pin(ledger.reserve(&chain, Usage::cost(Money::from_minor(60)), &options));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let started = Instant::now();
    while faults.calls() == 0 {
        assert!(
            matches!(reserving.as_mut().poll(&mut cx), Poll::Pending),
            "the reservation waits for its alert's audit entry"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the alert is recorded"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(reserving);
    // a write queued after the release runs after it
    block_on(ledger.expire_reservations()).unwrap();
    assert_eq!(ledger.outstanding().unwrap(), 0, "released");
    let org = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO, "nothing reserved");
    // with the log answering again, the alert is reported after all
    faults.set_plan(FaultPlan::none());
    let r = block_on(ledger.reserve(&chain, Usage::cost(Money::from_minor(60)), &options)).unwrap();
    assert_eq!(alert_undo::thresholds(&r.alerts), vec![50]);
}

/// A reservation whose alert cannot be recorded is undone and its alert reported again once
/// the log is back (the promise the in-memory ledger keeps too).
#[test]
fn a_reservation_whose_alert_cannot_be_recorded_is_undone() {
    use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog};
    use aios_core::InMemoryAuditLog;
    let store = SqliteStore::in_memory().unwrap();
    let faults = Faults::new(FaultPlan::none());
    let ledger = store
        .budget_ledger(Arc::new(ManualClock::default()))
        .with_audit(Arc::new(FaultyAuditLog::new(
            InMemoryAuditLog::new(),
            faults.clone(),
        )));
    block_on(alert_undo::a_reservation_whose_alert_cannot_be_recorded_is_undone(&ledger, &faults));
    assert_eq!(ledger.outstanding().unwrap(), 0);
}

/// Reservations whose callers give up at every point of the way (after 0 to 59 polls a few
/// microseconds apart) leave nothing reserved: each is handed to its caller (who releases
/// it here), skipped, or released by the writer once it finds nobody to hand it to.
#[test]
fn reservations_given_up_at_any_point_leave_nothing_reserved() {
    use std::future::Future;
    use std::task::{Context, Poll};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("ledger.db")).unwrap();
    let ledger = store.budget_ledger(Arc::new(ManualClock::default()));
    block_on(ledger.set_limits(BudgetKey::Organisation, cap(1_000_000))).unwrap();
    let chain = BudgetChain::organisation();
    let options = ReserveOptions::default();
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let (mut handed, mut abandoned) = (0, 0);
    for polls in 0..60 {
        let mut reserving =
            Box::pin(ledger.reserve(&chain, Usage::cost(Money::from_minor(1)), &options));
        let mut answer = None;
        for _ in 0..polls {
            if let Poll::Ready(r) = reserving.as_mut().poll(&mut cx) {
                answer = Some(r);
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        match answer {
            Some(r) => {
                block_on(ledger.release(r.unwrap().id)).unwrap();
                handed += 1;
            }
            None => abandoned += 1,
        }
    }
    assert!(
        abandoned > 0,
        "some callers gave up ({handed} were answered)"
    );
    let mut open = usize::MAX;
    for _ in 0..200 {
        block_on(ledger.expire_reservations()).unwrap();
        open = ledger.outstanding().unwrap();
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        open, 0,
        "nothing left open ({abandoned} given up, {handed} answered)"
    );
    let org = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO);
}
