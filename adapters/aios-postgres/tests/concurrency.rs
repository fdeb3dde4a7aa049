//! Many workers on one database: each worker has its own store (its own pool), as separate
//! processes would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../aios-governance/tests/common/alert_undo.rs"]
mod alert_undo;
mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AuditEvent, AuditLog, AuditLogExt, AuditRecord, Clock, ManualClock, Money, Principal,
    RoleId, RunId, StoreError,
};
use aios_governance::{
    BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLimits, Limits, ReserveOptions, Usage,
};
use aios_orchestrator::{
    Checkpoint, CheckpointStore, RunState, RunStatus, WorkerId, RUN_STATE_SCHEMA,
};
use aios_postgres::PgStore;

async fn workers(url: &str, n: usize) -> Vec<PgStore> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(PgStore::connect(url).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_writers_append_one_linear_chain_of_800() {
    let url = common::fresh_url().await;
    let stores = workers(&url, 4).await;
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let log = store.audit_log();
            tokio::spawn(async move {
                for i in 0..200 {
                    log.append(AuditRecord::new(
                        Principal::System,
                        AuditEvent::Note {
                            text: format!("worker {w} entry {i}"),
                        },
                    ))
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = stores[0].audit_log();
    let head = log.head().await.unwrap();
    assert_eq!(head.len, 800, "every append is in the chain");
    let report = log.verify(None).await.unwrap();
    assert_eq!(report.checked, 800);
    assert!(
        report.is_intact(),
        "one linear, verifiable chain: {report:?}"
    );
    let entries = log.read(0, 1000).await.unwrap();
    let seqs: Vec<u64> = entries
        .iter()
        .filter_map(|e| e.entry().map(|e| e.seq))
        .collect();
    assert_eq!(seqs, (0..800).collect::<Vec<_>>(), "no gaps, no duplicates");
}

fn cost(minor: i64) -> Usage {
    Usage {
        cost: Money::from_minor(minor),
        ..Usage::default()
    }
}

fn cap(minor: i64) -> BudgetLimits {
    BudgetLimits::total(Limits {
        cost: Some(Money::from_minor(minor)),
        ..Limits::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_reservations_racing_a_limit_never_go_above_it() {
    let url = common::fresh_url().await;
    let clock = ManualClock::default();
    let stores = workers(&url, 8).await;
    let role = RoleId::from_name("outreach");
    let setup = stores[0].budget_ledger(Arc::new(clock.clone()));
    setup
        .set_limits(BudgetKey::Organisation, cap(1_000))
        .await
        .unwrap();
    setup
        .set_limits(BudgetKey::Role(role), cap(500))
        .await
        .unwrap();
    for round in 0..3 {
        // each worker its own agent and run, all under one role: the role's limit is raced
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let ledger = store.budget_ledger(Arc::new(clock.clone()));
                let chain = BudgetChain::organisation()
                    .role(role)
                    .agent(AgentId::from_name(&format!("agent-{i}")))
                    .run(RunId::from_name(&format!("run-{round}-{i}")));
                tokio::spawn(async move {
                    ledger
                        .reserve(&chain, cost(100), &ReserveOptions::default())
                        .await
                })
            })
            .collect();
        let mut won = Vec::new();
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => won.push(r.id),
                Err(BudgetError::Exceeded { key, .. }) => {
                    assert_eq!(key, BudgetKey::Role(role));
                    refused += 1;
                }
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!(won.len(), 5, "exactly the limit's worth is reserved");
        assert_eq!(refused, 3);
        let usage = setup.usage(BudgetKey::Role(role)).await.unwrap().unwrap();
        assert_eq!(
            usage.reserved.cost,
            Money::from_minor(500),
            "never above the limit"
        );
        let org = setup.usage(BudgetKey::Organisation).await.unwrap().unwrap();
        assert_eq!(org.reserved.cost, Money::from_minor(500));
        for id in won {
            setup.release(id).await.unwrap();
        }
    }
    assert_eq!(setup.outstanding().await.unwrap(), 0);
}

fn checkpoint(run: RunId, seq: u64, at: aios_core::Timestamp) -> Checkpoint {
    Checkpoint {
        run,
        seq,
        at,
        state: RunState {
            schema: RUN_STATE_SCHEMA,
            run,
            workflow: "race".into(),
            governance_version: 1,
            started_at: at,
            status: RunStatus::Running,
            tasks: vec![],
            forked_from: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_for_one_lease_exactly_one_wins_and_fencing_stops_the_stale_one() {
    let url = common::fresh_url().await;
    let clock = ManualClock::default();
    let ttl = Duration::from_secs(30);
    for round in 0..5 {
        let stores = workers(&url, 2).await;
        let run = RunId::from_name(&format!("run-{round}"));
        let now = clock.now();
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let store = s.checkpoint_store();
                let me = WorkerId::new(format!("worker-{i}"));
                tokio::spawn(async move { store.acquire(run, &me, now, ttl).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one worker holds the lease: {results:?}"
        );
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Conflict { .. }))));
        let stale = winners[0].clone();
        let a = stores[0].checkpoint_store();
        a.save(&stale, &checkpoint(run, 1, now)).await.unwrap();

        // the lease expires; the other worker takes the run over with a newer token
        let later = now + chrono::Duration::seconds(31);
        let b = stores[1].checkpoint_store();
        let fresh = b
            .acquire(run, &WorkerId::new("taker"), later, ttl)
            .await
            .unwrap();
        assert!(fresh.token > stale.token);
        match a.save(&stale, &checkpoint(run, 2, later)).await {
            Err(StoreError::Fenced {
                presented, current, ..
            }) => {
                assert_eq!((presented, current), (stale.token, fresh.token));
            }
            other => panic!("the stale worker must be fenced, got {other:?}"),
        }
        assert_eq!(
            b.latest(run).await.unwrap().unwrap().seq,
            1,
            "the fenced save wrote nothing"
        );
        b.save(&fresh, &checkpoint(run, 2, later)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_revisions_of_one_memory_version_exactly_one_wins() {
    use aios_memory::testing::sample_record;
    use aios_memory::MemoryStore;
    let url = common::fresh_url().await;
    let stores = workers(&url, 4).await;
    let clock = ManualClock::default();
    let id = aios_core::MemoryId::from_name("fact");
    let v1 = sample_record(id, 1, "v1", clock.now(), None);
    stores[0]
        .memory_store()
        .put(v1.clone(), None)
        .await
        .unwrap();
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let store = s.memory_store();
            let v2 = sample_record(id, 2, &format!("v2 by {i}"), clock.now(), Some(&v1));
            tokio::spawn(async move { store.put(v2, Some(1)).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(ok, 1, "one revision of version 1 wins");
    let versions = stores[0].memory_store().versions(id).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions[0].retired_at.is_some(), "version 1 is retired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_commits_and_expiry_sweeps_from_many_workers_never_deadlock() {
    let url = common::fresh_url().await;
    let clock = ManualClock::default();
    let stores = workers(&url, 4).await;
    let setup = stores[0].budget_ledger(Arc::new(clock.clone()));
    setup
        .set_limits(BudgetKey::Organisation, cap(1_000_000))
        .await
        .unwrap();
    let roles = [RoleId::from_name("a"), RoleId::from_name("b")];
    for r in roles {
        setup
            .set_limits(BudgetKey::Role(r), cap(1_000_000))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(w, s)| {
            let ledger = s.budget_ledger(Arc::new(clock.clone()));
            let clock = clock.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let chain = BudgetChain::organisation()
                        .role(roles[(w + i) % 2])
                        .agent(AgentId::from_name(&format!("agent-{}", i % 3)));
                    // every third reservation is left to expire; later ones sweep it
                    let options = ReserveOptions::default().ttl(Duration::from_secs(1));
                    let r = ledger.reserve(&chain, cost(10), &options).await?;
                    if i % 3 != 0 {
                        ledger.commit(r.id, cost(7)).await?;
                    }
                    if i % 10 == 9 {
                        clock.advance(Duration::from_secs(2));
                    }
                }
                Ok::<_, BudgetError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("no deadlock, no lost update");
    }
    clock.advance(Duration::from_secs(2));
    setup.expire_reservations().await.unwrap();
    let org = setup.usage(BudgetKey::Organisation).await.unwrap().unwrap();
    // per worker: 40 reservations, 26 committed at 7
    assert_eq!(org.committed.cost, Money::from_minor(4 * 26 * 7));
    assert_eq!(
        org.reserved.cost,
        Money::ZERO,
        "expired reservations hold nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_under_the_lock_leave_the_pooled_connection_clean() {
    let url = common::fresh_url().await;
    // one connection: whatever a refusal leaves on it, the next operation meets
    let one = PgStore::connect_with(&url, aios_postgres::PgOptions::default().max_connections(1))
        .await
        .unwrap();
    let other = PgStore::connect(&url).await.unwrap();
    let store = one.checkpoint_store();
    let clock = ManualClock::default();
    let now = clock.now();
    let ttl = Duration::from_secs(30);
    let run = RunId::from_name("held");
    let held = store
        .acquire(run, &WorkerId::new("a"), now, ttl)
        .await
        .unwrap();
    assert!(matches!(
        store.acquire(run, &WorkerId::new("b"), now, ttl).await,
        Err(StoreError::Conflict { .. })
    ));
    store.save(&held, &checkpoint(run, 1, now)).await.unwrap();
    assert!(matches!(
        store.save(&held, &checkpoint(run, 1, now)).await,
        Err(StoreError::Conflict { .. })
    ));
    let later = now + chrono::Duration::seconds(31);
    other
        .checkpoint_store()
        .acquire(run, &WorkerId::new("c"), later, ttl)
        .await
        .unwrap();
    assert!(matches!(
        store.save(&held, &checkpoint(run, 2, later)).await,
        Err(StoreError::Fenced { .. })
    ));
    // the next operation on the same connection commits on its own, seen elsewhere at once
    let next = RunId::from_name("next");
    let lease = store
        .acquire(next, &WorkerId::new("a"), later, ttl)
        .await
        .unwrap();
    store
        .save(&lease, &checkpoint(next, 1, later))
        .await
        .unwrap();
    assert_eq!(
        other
            .checkpoint_store()
            .latest(next)
            .await
            .unwrap()
            .map(|c| c.seq),
        Some(1)
    );
}

/// Two workers drove one call (the second took the run over after the first's lease lapsed,
/// while the first was still alive): both reserved under the call's charge key before either
/// committed. The key is charged once: the later commit only gives its reservation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commits_under_one_charge_key_charge_it_once() {
    let url = common::fresh_url().await;
    let clock = ManualClock::default();
    let stores = workers(&url, 2).await;
    let (a, b) = (
        stores[0].budget_ledger(Arc::new(clock.clone())),
        stores[1].budget_ledger(Arc::new(clock.clone())),
    );
    a.set_limits(BudgetKey::Organisation, cap(1_000))
        .await
        .unwrap();
    let run = aios_core::RunId::from_name("taken-over");
    let chain = BudgetChain::organisation().run(run);
    let key = ReserveOptions::keyed("taken-over/task/0");
    let first = a
        .reserve(&chain, Usage::cost(Money::from_minor(10)), &key)
        .await
        .unwrap();
    let second = b
        .reserve(&chain, Usage::cost(Money::from_minor(10)), &key)
        .await
        .unwrap();
    a.commit(first.id, Usage::cost(Money::from_minor(7)))
        .await
        .unwrap();
    b.commit(second.id, Usage::cost(Money::from_minor(7)))
        .await
        .unwrap();
    let org = a.usage(BudgetKey::Organisation).await.unwrap().unwrap();
    assert_eq!(org.committed.cost, Money::from_minor(7), "charged once");
    assert_eq!(org.reserved.cost, Money::ZERO, "nothing left reserved");
    assert_eq!(a.outstanding().await.unwrap(), 0);
}

/// A worker killed while its reservation waits for a lock (the organisation's account, which
/// every run shares) leaves nothing reserved: the reservation, made on a task of its own,
/// is rolled back once it finds nobody waiting for its id. Before, it committed after its
/// caller was gone and stayed open, holding budget, until it expired (and could appear after
/// the worker that took the run over had released the run's reservations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_caller_is_dropped_while_it_waits_for_a_lock_is_not_left_open() {
    let url = common::fresh_url().await;
    let store = PgStore::connect(&url).await.unwrap();
    let ledger = store.budget_ledger(Arc::new(ManualClock::default()));
    ledger
        .set_limits(BudgetKey::Organisation, cap(1_000))
        .await
        .unwrap();
    // another session holds the organisation's account
    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let holder = client.transaction().await.unwrap();
    let locked = holder
        .query(
            "SELECT key FROM aios_budget_accounts WHERE key = $1 FOR UPDATE",
            &[&BudgetKey::Organisation.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(locked.len(), 1, "the organisation's account row is held");
    let chain = BudgetChain::organisation().run(RunId::from_name("killed"));
    let options = ReserveOptions::default();
    let reserving = ledger.reserve(&chain, cost(100), &options);
    // the caller gives up (a killed worker's future is dropped) while the reservation waits
    let gave_up = tokio::time::timeout(Duration::from_millis(300), reserving).await;
    assert!(gave_up.is_err(), "the reservation waited for the lock");
    holder.commit().await.unwrap();
    // set_limits locks the same row, so it runs after the abandoned reservation let go of it
    ledger
        .set_limits(BudgetKey::Organisation, cap(1_000))
        .await
        .unwrap();
    assert_eq!(ledger.outstanding().await.unwrap(), 0, "nothing left open");
    let org = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO, "nothing reserved");
    // the ledger still serves its next caller
    let r = ledger
        .reserve(&chain, cost(100), &ReserveOptions::default())
        .await
        .unwrap();
    ledger.release(r.id).await.unwrap();
    assert_eq!(ledger.outstanding().await.unwrap(), 0);
}

/// The reservations `ledger` holds open once the tasks of abandoned reservations have had
/// up to five seconds to settle them.
async fn open_once_settled(ledger: &aios_postgres::PgBudgetLedger) -> usize {
    let mut open = usize::MAX;
    for _ in 0..100 {
        open = ledger.outstanding().await.unwrap();
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open
}

/// A reservation whose alert cannot be recorded is undone and its alert reported again once
/// the log is back (the promise the in-memory ledger keeps too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_alert_cannot_be_recorded_is_undone() {
    use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog};
    let store = common::fresh().await;
    let faults = Faults::new(FaultPlan::none());
    let ledger = store
        .budget_ledger(Arc::new(ManualClock::default()))
        .with_audit(Arc::new(FaultyAuditLog::new(
            aios_core::InMemoryAuditLog::new(),
            faults.clone(),
        )));
    alert_undo::a_reservation_whose_alert_cannot_be_recorded_is_undone(&ledger, &faults).await;
    assert_eq!(ledger.outstanding().await.unwrap(), 0);
}

/// A reservation whose caller is dropped after the reservation was made, while its alert is
/// being recorded, is released once the entry is written: nobody holds its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_dropped_while_its_alert_is_recorded_is_released() {
    use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog};
    use aios_core::ManualTimer;
    let store = common::fresh().await;
    let clock = ManualClock::default();
    // appends wait for the test to advance the timer
    let timer = ManualTimer::new(clock.clone());
    let faults = Faults::new(FaultPlan::delay(
        Arc::new(timer.clone()),
        Duration::from_secs(60),
    ));
    let ledger = store
        .budget_ledger(Arc::new(clock))
        .with_audit(Arc::new(FaultyAuditLog::new(
            aios_core::InMemoryAuditLog::new(),
            faults.clone(),
        )));
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let chain = BudgetChain::organisation();
    let options = ReserveOptions::default();
    // crossing 50 % raises an alert; the caller gives up while it is recorded
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        ledger.reserve(&chain, cost(60), &options),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the reservation waited for its alert's entry"
    );
    assert_eq!(faults.calls(), 1, "the alert's entry was being written");
    faults.set_plan(FaultPlan::none());
    timer.advance(Duration::from_secs(60));
    let open = open_once_settled(&ledger).await;
    assert_eq!(open, 0, "released once the entry was written");
    let org = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO);
}

/// Reservations whose callers give up at every point of the way (timeouts from nothing to
/// several round trips) leave nothing reserved once their tasks end: each is either handed
/// to its caller (who releases it here), rolled back, or released by its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_given_up_at_any_point_leave_nothing_reserved() {
    let store = common::fresh().await;
    let ledger = store.budget_ledger(Arc::new(ManualClock::default()));
    ledger
        .set_limits(BudgetKey::Organisation, cap(1_000_000))
        .await
        .unwrap();
    let chain = BudgetChain::organisation().run(RunId::from_name("impatient"));
    let options = ReserveOptions::default();
    let (mut handed, mut abandoned) = (0, 0);
    for i in 0..60u64 {
        let patience = Duration::from_micros(i * 150);
        match tokio::time::timeout(patience, ledger.reserve(&chain, cost(1), &options)).await {
            Ok(r) => {
                ledger.release(r.unwrap().id).await.unwrap();
                handed += 1;
            }
            Err(_) => abandoned += 1,
        }
    }
    assert!(
        abandoned > 0,
        "some callers gave up ({handed} were answered)"
    );
    let open = open_once_settled(&ledger).await;
    assert_eq!(
        open, 0,
        "nothing left open ({abandoned} given up, {handed} answered)"
    );
    let org = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(org.reserved.cost, Money::ZERO);
}
