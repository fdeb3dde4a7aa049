//! The work queue on PostgreSQL beyond the conformance suite: claimers on separate
//! connection pools (as separate worker processes have) racing for the same runs, and a
//! database written by schema version 1 (before the queue) upgraded in place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aios_core::{ApprovalId, Clock, IdGen, ManualClock, RunId};
use aios_orchestrator::{
    Checkpoint, CheckpointStore, RunState, RunStatus, WorkerId, RUN_STATE_SCHEMA,
};
use aios_postgres::testing::TestServer;
use aios_postgres::PgStore;

fn checkpoint(run: RunId, seq: u64, status: RunStatus, clock: &ManualClock) -> Checkpoint {
    let at = clock.now();
    Checkpoint {
        run,
        seq,
        at,
        state: RunState {
            schema: RUN_STATE_SCHEMA,
            run,
            workflow: "queue".into(),
            governance_version: 1,
            started_at: at,
            status,
            tasks: vec![],
            forked_from: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claimers_on_separate_pools_never_share_a_run() {
    let url = common::fresh_url().await;
    let clock = ManualClock::default();
    let ids = IdGen::new(clock.clone(), 7);
    let ttl = Duration::from_secs(60);
    let setup = PgStore::connect(&url).await.unwrap().checkpoint_store();
    let mut all = HashSet::new();
    for _ in 0..300 {
        let run: RunId = ids.next();
        let l = setup
            .acquire(run, &WorkerId::new("setup"), clock.now(), ttl)
            .await
            .unwrap();
        setup
            .save(&l, &checkpoint(run, 1, RunStatus::Running, &clock))
            .await
            .unwrap();
        setup.release(&l).await.unwrap();
        all.insert(run);
    }
    let now = clock.now();
    let mut tasks = vec![];
    for p in 0..4 {
        let store = PgStore::connect(&url).await.unwrap().checkpoint_store();
        for c in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let me = WorkerId::new(format!("pool{p}-claimer{c}"));
                let mut got = vec![];
                loop {
                    let batch = store.claim(&me, now, ttl, 2).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch);
                }
            }));
        }
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for lease in t.await.unwrap() {
            assert!(
                seen.insert(lease.run),
                "run {} was handed out twice",
                lease.run
            );
        }
    }
    assert_eq!(seen, all, "every run was handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_into_the_queue() {
    let url = common::fresh_url().await;
    let clock = ManualClock::default();
    let ids = IdGen::new(clock.clone(), 9);
    let ttl = Duration::from_secs(60);
    let (running, parked, held): (RunId, RunId, RunId) = (ids.next(), ids.next(), ids.next());
    let approval: ApprovalId = ids.next();
    {
        let store = PgStore::connect(&url).await.unwrap().checkpoint_store();
        let w = WorkerId::new("old");
        for (run, status, keep) in [
            (running, RunStatus::Running, false),
            (
                parked,
                RunStatus::Parked {
                    approvals: vec![approval],
                },
                false,
            ),
            (held, RunStatus::Running, true),
        ] {
            let l = store.acquire(run, &w, clock.now(), ttl).await.unwrap();
            store
                .save(&l, &checkpoint(run, 1, status, &clock))
                .await
                .unwrap();
            if !keep {
                store.release(&l).await.unwrap();
            }
        }
    }
    // back to what version 1 stored: no queue columns (and no credentials of version 3)
    TestServer::execute_on(
        &url,
        "DROP TABLE aios_humans;
         DROP INDEX aios_runs_ready;
         ALTER TABLE aios_runs DROP COLUMN ready, DROP COLUMN lease_expires, DROP COLUMN settled;
         UPDATE aios_schema SET version = 1",
    )
    .await
    .unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        aios_postgres::SCHEMA_VERSION
    );
    let store = store.checkpoint_store();
    let w = WorkerId::new("new");
    let now = clock.now();
    let got = store.claim(&w, now, ttl, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|l| l.run).collect::<Vec<_>>(),
        vec![running],
        "the running run is queued; the held one keeps its lease; the parked one waits"
    );
    let later = now + chrono::Duration::seconds(61);
    let got = store.claim(&w, later, ttl, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|l| l.run).collect::<HashSet<_>>(),
        HashSet::from([running, held]),
        "the lease expiry carried over from the stored lease"
    );
    store.wake(parked, approval).await.unwrap();
    let got = store.claim(&w, later, ttl, 10).await.unwrap();
    assert_eq!(got.iter().map(|l| l.run).collect::<Vec<_>>(), vec![parked]);
}
