//! Test kit (feature `testing`): the [`CheckpointStore`] conformance suite, a
//! fault-injecting store wrapper, a simulated rate-limited model backend
//! ([`SimulatedBackend`]) and a virtual-time driver ([`drive`]).
//!
//! Test-support code: the suite reports a violation by panicking, like `assert!`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aios_core::testing::Faults;
use aios_core::{Clock, IdGen, ManualClock, RunId, StoreError, Timestamp};
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
}
