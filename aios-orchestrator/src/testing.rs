//! Test kit (feature `testing`): the [`CheckpointStore`] conformance suite, a
//! fault-injecting store wrapper, a simulated rate-limited model backend
//! ([`SimulatedBackend`]) and a virtual-time driver ([`drive`]).
//!
//! Test-support code: the suite reports a violation by panicking, like `assert!`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aios_core::testing::Faults;
use aios_core::{ApprovalId, Clock, IdGen, ManualClock, RunId, StoreError, Timestamp};
use async_trait::async_trait;

pub use crate::sim::{drive, SimStats, SimulatedBackend};

use crate::checkpoint::{Checkpoint, CheckpointStore, Lease, RunSummary, WorkerId};
use crate::state::{RunState, RunStatus, RUN_STATE_SCHEMA};

fn state(run: RunId, status: RunStatus, at: Timestamp) -> RunState {
    RunState {
        schema: RUN_STATE_SCHEMA,
        run,
        workflow: "conformance".into(),
        governance_version: 1,
        started_at: at,
        status,
        tasks: vec![],
        forked_from: None,
    }
}

/// The [`CheckpointStore`] contract. `make` returns a fresh, empty store each time.
pub async fn checkpoint_store_conformance<S: CheckpointStore, F: Fn() -> S>(make: F) {
    let clock = ManualClock::default();
    let ids = IdGen::new(clock.clone(), 11);
    let now = clock.now();
    let ttl = Duration::from_secs(30);
    let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));

    let store = make();
    let run: RunId = ids.next();
    assert_eq!(
        store.latest(run).await.unwrap(),
        None,
        "an unknown run has no checkpoint"
    );
    assert!(
        store.list(false).await.unwrap().is_empty(),
        "an empty store lists nothing"
    );

    // leases: exclusive while valid, renewable by the holder, taken over after expiry
    let la = store.acquire(run, &a, now, ttl).await.unwrap();
    assert!(la.token > 0, "tokens start above zero");
    assert!(
        matches!(
            store.acquire(run, &b, now, ttl).await,
            Err(StoreError::Conflict { .. })
        ),
        "a valid lease excludes other workers"
    );
    assert!(
        matches!(
            store.acquire(run, &a, now, ttl).await,
            Err(StoreError::Conflict { .. })
        ),
        "a lease belongs to one acquisition: the same worker id acquiring again (another \
         process with that id) does not inherit it"
    );
    let renewed = store
        .renew(&la, now + chrono::Duration::seconds(10), ttl)
        .await
        .unwrap();
    assert_eq!(renewed.token, la.token, "a renewal keeps the token");
    assert!(
        renewed.expires_at > la.expires_at,
        "a renewal extends the lease"
    );
    let forged = Lease {
        token: la.token + 1,
        ..la.clone()
    };
    assert!(
        matches!(
            store.renew(&forged, now, ttl).await,
            Err(StoreError::Fenced { .. })
        ),
        "only the lease issued can be renewed"
    );

    // saves: ordered, history kept, exact round trip
    let c1 = Checkpoint {
        run,
        seq: 1,
        at: now,
        state: state(run, RunStatus::Running, now),
    };
    store.save(&renewed, &c1).await.unwrap();
    let parked = RunStatus::Parked {
        approvals: vec![ids.next()],
    };
    let c2 = Checkpoint {
        run,
        seq: 2,
        at: now,
        state: state(run, parked.clone(), now),
    };
    store.save(&renewed, &c2).await.unwrap();
    assert_eq!(
        store.latest(run).await.unwrap(),
        Some(c2.clone()),
        "latest is the last save, unchanged"
    );
    assert_eq!(
        store.get(run, 1).await.unwrap(),
        Some(c1.clone()),
        "history is kept"
    );
    assert_eq!(store.get(run, 9).await.unwrap(), None);
    assert!(
        matches!(
            store.save(&renewed, &c2).await,
            Err(StoreError::Conflict { .. })
        ),
        "a checkpoint not after the latest is refused"
    );
    let listed: Vec<RunSummary> = store.list(true).await.unwrap();
    assert_eq!(listed.len(), 1, "parked runs are listed");
    assert_eq!(listed[0].status, parked);
    assert_eq!(
        listed[0].lease.as_ref().map(|l| (&l.owner, l.token)),
        Some((&a, renewed.token)),
        "a listing shows who holds the run"
    );
    match store.acquire(run, &b, now, ttl).await {
        Err(StoreError::Conflict { detail }) => assert!(
            detail.contains(a.as_str()) && detail.contains("until"),
            "a refused acquisition names the holder and when its lease lapses: {detail}"
        ),
        other => panic!("a held run is refused: {other:?}"),
    }

    // fencing: after expiry another worker takes over with a newer token; the old one is refused
    let later = now + chrono::Duration::seconds(120);
    let lb = store.acquire(run, &b, later, ttl).await.unwrap();
    assert!(lb.token > renewed.token, "a takeover issues a newer token");
    let c3 = Checkpoint {
        run,
        seq: 3,
        at: later,
        state: state(run, RunStatus::Running, later),
    };
    assert!(
        matches!(
            store.save(&renewed, &c3).await,
            Err(StoreError::Fenced { .. })
        ),
        "a stale worker's write is refused"
    );
    assert_eq!(
        store.latest(run).await.unwrap(),
        Some(c2),
        "a refused write changes nothing"
    );
    store.save(&lb, &c3).await.unwrap();
    assert!(
        matches!(
            store.renew(&renewed, later, ttl).await,
            Err(StoreError::Fenced { .. })
        ),
        "a lease taken over cannot be renewed by its old holder"
    );

    // release lets another worker in at once; releasing a stale lease is harmless
    store.release(&renewed).await.unwrap();
    assert!(
        store.acquire(run, &a, later, ttl).await.is_err(),
        "releasing a stale lease does not free the run"
    );
    store.release(&lb).await.unwrap();
    let la2 = store.acquire(run, &a, later, ttl).await.unwrap();
    assert!(la2.token > lb.token);

    // runs are independent
    let other: RunId = ids.next();
    let lo = store.acquire(other, &b, later, ttl).await.unwrap();
    store
        .save(
            &lo,
            &Checkpoint {
                run: other,
                seq: 1,
                at: later,
                state: state(other, RunStatus::Completed, later),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.list(false).await.unwrap().len(), 2);
    assert_eq!(
        store.list(true).await.unwrap().len(),
        0,
        "only parked runs when asked"
    );
    let wrong = Lease { run, ..lo.clone() };
    assert!(
        store
            .save(
                &wrong,
                &Checkpoint {
                    run: other,
                    seq: 2,
                    at: later,
                    state: state(other, RunStatus::Running, later)
                }
            )
            .await
            .is_err(),
        "a lease for another run is refused"
    );

    checkpoint_claim_conformance(&make).await;
}

/// Puts `run` at checkpoint `seq` with `status` under a new lease at `now`; releases the
/// lease unless `keep`. Returns the lease.
async fn put<S: CheckpointStore>(
    store: &S,
    run: RunId,
    seq: u64,
    status: RunStatus,
    now: Timestamp,
    keep: bool,
) -> Lease {
    let lease = store
        .acquire(run, &WorkerId::new("setup"), now, Duration::from_secs(30))
        .await
        .unwrap();
    let checkpoint = Checkpoint {
        run,
        seq,
        at: now,
        state: state(run, status, now),
    };
    store.save(&lease, &checkpoint).await.unwrap();
    if !keep {
        store.release(&lease).await.unwrap();
    }
    lease
}

fn runs_of(leases: &[Lease]) -> Vec<RunId> {
    let mut out: Vec<RunId> = leases.iter().map(|l| l.run).collect();
    out.sort();
    out
}

/// The work queue part of the [`CheckpointStore`] contract: `claim` and `wake`. Part of
/// [`checkpoint_store_conformance`].
pub async fn checkpoint_claim_conformance<S: CheckpointStore, F: Fn() -> S>(make: F) {
    let clock = ManualClock::default();
    let ids = IdGen::new(clock.clone(), 12);
    let now = clock.now();
    let ttl = Duration::from_secs(30);
    let w = WorkerId::new("claimer");

    let store = make();
    assert!(
        store.claim(&w, now, ttl, 10).await.unwrap().is_empty(),
        "an empty store hands out nothing"
    );
    let mut made: Vec<RunId> = (0..6).map(|_| ids.next()).collect();
    made.sort();
    let [running, parked, done, paused, held, early] = made[..] else {
        unreachable!()
    };
    let (a1, a2, other): (ApprovalId, ApprovalId, ApprovalId) =
        (ids.next(), ids.next(), ids.next());
    put(&store, running, 1, RunStatus::Running, now, false).await;
    put(
        &store,
        parked,
        1,
        RunStatus::Parked {
            approvals: vec![a1],
        },
        now,
        false,
    )
    .await;
    put(&store, done, 1, RunStatus::Completed, now, false).await;
    put(&store, paused, 1, RunStatus::Paused, now, false).await;
    let held_lease = put(&store, held, 1, RunStatus::Running, now, true).await;
    // a run whose approval is reported settled before the checkpoint that parks on it
    let early_lease = put(&store, early, 1, RunStatus::Running, now, true).await;
    store.wake(early, a2).await.unwrap();

    assert!(
        store.claim(&w, now, ttl, 0).await.unwrap().is_empty(),
        "a limit of 0 hands out nothing"
    );
    let first = store.claim(&w, now, ttl, 10).await.unwrap();
    assert_eq!(
        runs_of(&first),
        vec![running],
        "only the free running run is handed out: not one parked on an undecided approval,          a completed or paused one, or one whose lease is live"
    );
    let l_running = first[0].clone();
    assert_eq!(l_running.owner, w, "the lease is the claimer's");
    assert!(l_running.token > 0);
    assert_eq!(l_running.expires_at, now + chrono::Duration::seconds(30));
    assert!(
        store.claim(&w, now, ttl, 10).await.unwrap().is_empty(),
        "a claimed run is not handed out again while its lease is live, not even to the          same worker id"
    );
    assert!(
        matches!(
            store.acquire(running, &WorkerId::new("x"), now, ttl).await,
            Err(StoreError::Conflict { .. })
        ),
        "a claimed lease excludes `acquire` too"
    );

    // approvals
    store.wake(parked, other).await.unwrap();
    assert!(
        store.claim(&w, now, ttl, 10).await.unwrap().is_empty(),
        "settling an approval the run does not wait for does not make it claimable"
    );
    store.wake(parked, a1).await.unwrap();
    store.wake(parked, a1).await.unwrap();
    let woken = store.claim(&w, now, ttl, 10).await.unwrap();
    assert_eq!(
        runs_of(&woken),
        vec![parked],
        "a parked run is claimable once an approval it waits for is settled (waking twice          is harmless)"
    );
    let l_parked = woken[0].clone();
    // the worker resumes it, and it parks again on a new request
    let a3: ApprovalId = ids.next();
    store
        .save(
            &l_parked,
            &Checkpoint {
                run: parked,
                seq: 2,
                at: now,
                state: state(
                    parked,
                    RunStatus::Parked {
                        approvals: vec![a3],
                    },
                    now,
                ),
            },
        )
        .await
        .unwrap();
    store.release(&l_parked).await.unwrap();
    assert!(
        store.claim(&w, now, ttl, 10).await.unwrap().is_empty(),
        "a run parked again on a new request is not claimable because an earlier one was          settled"
    );
    // the early wake holds once the run parks on that approval
    store
        .save(
            &early_lease,
            &Checkpoint {
                run: early,
                seq: 2,
                at: now,
                state: state(
                    early,
                    RunStatus::Parked {
                        approvals: vec![a2],
                    },
                    now,
                ),
            },
        )
        .await
        .unwrap();
    store.release(&early_lease).await.unwrap();
    let e = store.claim(&w, now, ttl, 10).await.unwrap();
    assert_eq!(
        runs_of(&e),
        vec![early],
        "a decision reported before the run parked on it is not lost"
    );
    let l_early = e[0].clone();

    // expired leases are reclaimable; the stale holder is fenced
    let later = now + chrono::Duration::seconds(31);
    let b = WorkerId::new("second");
    let mut taken = store.claim(&b, later, ttl, 1).await.unwrap();
    assert_eq!(taken.len(), 1, "the limit is respected");
    taken.extend(store.claim(&b, later, ttl, 10).await.unwrap());
    assert_eq!(
        runs_of(&taken),
        vec![running, held, early],
        "runs whose lease lapsed are handed out again (a parked run not woken is not)"
    );
    for (old, new) in [
        (&l_running, running),
        (&held_lease, held),
        (&l_early, early),
    ] {
        let new_lease = taken.iter().find(|l| l.run == new).unwrap();
        assert!(
            new_lease.token > old.token,
            "a reclaim issues a newer token"
        );
        assert!(
            matches!(
                store.renew(old, later, ttl).await,
                Err(StoreError::Fenced { .. })
            ),
            "the stale holder cannot renew"
        );
        let latest = store.latest(new).await.unwrap().unwrap();
        let stale = Checkpoint {
            seq: latest.seq + 1,
            ..latest.clone()
        };
        assert!(
            matches!(
                store.save(old, &stale).await,
                Err(StoreError::Fenced { .. })
            ),
            "the stale holder's save is refused"
        );
        assert_eq!(store.latest(new).await.unwrap(), Some(latest));
        store.save(new_lease, &stale).await.unwrap();
    }
    // a released run is claimable at once; a completed one never again
    let l = taken.iter().find(|l| l.run == running).unwrap();
    store
        .save(
            l,
            &Checkpoint {
                run: running,
                seq: 3,
                at: later,
                state: state(running, RunStatus::Completed, later),
            },
        )
        .await
        .unwrap();
    store.release(l).await.unwrap();
    let l = taken.iter().find(|l| l.run == held).unwrap();
    store.release(l).await.unwrap();
    assert_eq!(
        runs_of(&store.claim(&w, later, ttl, 10).await.unwrap()),
        vec![held],
        "a released running run is claimable at once, a completed one is not"
    );
    let far = later + chrono::Duration::seconds(3600);
    let rest = store.claim(&w, far, ttl, 10).await.unwrap();
    assert_eq!(
        runs_of(&rest),
        vec![held, early],
        "much later only the runs that can go on come back"
    );

    // concurrent claimers never receive the same run
    let store = make();
    let n = 48;
    let mut all: Vec<RunId> = vec![];
    for _ in 0..n {
        let run: RunId = ids.next();
        put(&store, run, 1, RunStatus::Running, now, false).await;
        all.push(run);
    }
    all.sort();
    let claimers = (0..8).map(|i| {
        let store = &store;
        async move {
            let me = WorkerId::new(format!("c{i}"));
            let mut got = vec![];
            loop {
                let batch = store.claim(&me, now, ttl, 3).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }
    });
    let got: Vec<Lease> = futures::future::join_all(claimers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        runs_of(&got),
        all,
        "concurrent claimers hand out every run exactly once"
    );
    for l in &got {
        assert!(
            store.renew(l, now, ttl).await.is_ok(),
            "every lease handed out is the run's current one"
        );
    }
}

/// A [`CheckpointStore`] whose operations fail (with `Unavailable`) when its [`Faults`] say
/// so; a failed save writes nothing.
#[derive(Debug, Clone)]
pub struct FaultyCheckpointStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: CheckpointStore> FaultyCheckpointStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<S: CheckpointStore> CheckpointStore for FaultyCheckpointStore<S> {
    async fn acquire(
        &self,
        run: RunId,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.faults.check().await?;
        self.inner.acquire(run, owner, now, ttl).await
    }
    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.faults.check().await?;
        self.inner.renew(lease, now, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.faults.check().await?;
        self.inner.release(lease).await
    }
    async fn save(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.faults.check().await?;
        self.inner.save(lease, checkpoint).await
    }
    async fn latest(&self, run: RunId) -> Result<Option<Checkpoint>, StoreError> {
        self.faults.check().await?;
        self.inner.latest(run).await
    }
    async fn get(&self, run: RunId, seq: u64) -> Result<Option<Checkpoint>, StoreError> {
        self.faults.check().await?;
        self.inner.get(run, seq).await
    }
    async fn list(&self, parked_only: bool) -> Result<Vec<RunSummary>, StoreError> {
        self.faults.check().await?;
        self.inner.list(parked_only).await
    }
    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        self.faults.check().await?;
        self.inner.claim(owner, now, ttl, limit).await
    }
    async fn wake(&self, run: RunId, approval: ApprovalId) -> Result<(), StoreError> {
        self.faults.check().await?;
        self.inner.wake(run, approval).await
    }
}
