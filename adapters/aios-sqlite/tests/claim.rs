//! The work queue on one SQLite file shared by several connections (each as a separate
//! process would open it; the file's write lock is what they share): claimers racing in
//! threads never receive the same run. Real processes draining one file through the queue
//! are in `crash.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use aios_core::{Clock, IdGen, ManualClock, RunId};
use aios_orchestrator::{
    Checkpoint, CheckpointStore, RunState, RunStatus, WorkerId, RUN_STATE_SCHEMA,
};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

#[test]
fn claimers_on_separate_connections_never_share_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let clock = ManualClock::default();
    let ids = IdGen::new(clock.clone(), 5);
    let ttl = Duration::from_secs(60);
    let setup = SqliteStore::open(&path).unwrap().checkpoint_store();
    let mut all = HashSet::new();
    for _ in 0..200 {
        let run: RunId = ids.next();
        let now = clock.now();
        let lease = block_on(setup.acquire(run, &WorkerId::new("setup"), now, ttl)).unwrap();
        let state = RunState {
            schema: RUN_STATE_SCHEMA,
            run,
            workflow: "queue".into(),
            governance_version: 1,
            started_at: now,
            status: RunStatus::Running,
            tasks: vec![],
            forked_from: None,
        };
        block_on(setup.save(
            &lease,
            &Checkpoint {
                run,
                seq: 1,
                at: now,
                state,
            },
        ))
        .unwrap();
        block_on(setup.release(&lease)).unwrap();
        all.insert(run);
    }
    let now = clock.now();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = SqliteStore::open(&path).unwrap().checkpoint_store();
                let me = WorkerId::new(format!("claimer-{i}"));
                let mut got = vec![];
                loop {
                    let batch = block_on(store.claim(&me, now, ttl, 3)).unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch);
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in threads {
        for lease in t.join().unwrap() {
            assert!(seen.insert(lease.run), "run {} handed out twice", lease.run);
        }
    }
    assert_eq!(seen, all, "every run handed out");
}
