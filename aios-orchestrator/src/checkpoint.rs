//! The checkpoint store port: durable run state, with leases and fencing tokens so only one
//! worker advances a run.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{ApprovalId, RunId, StoreError, Timestamp};
use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::state::{RunState, RunStatus};

/// The identity of a worker process (host name plus process id, for example).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    /// A worker id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// An id no other process shares: `worker-<process id>-<64 random bits>`, the random part
    /// from [`aios_core::os_seed`]. The default of
    /// [`OrchestratorConfig`](crate::OrchestratorConfig).
    ///
    /// ```
    /// use aios_orchestrator::WorkerId;
    /// assert_ne!(WorkerId::unique(), WorkerId::unique());
    /// ```
    pub fn unique() -> Self {
        Self(format!(
            "worker-{}-{:016x}",
            std::process::id(),
            aios_core::os_seed()
        ))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The right to advance one run, until it expires or someone takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The run.
    pub run: RunId,
    /// The holder.
    pub owner: WorkerId,
    /// The fencing token: strictly greater than every token issued for this run before.
    pub token: u64,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// One saved state of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run.
    pub run: RunId,
    /// Position in the run's checkpoint history, from 1, strictly increasing.
    pub seq: u64,
    /// When it was taken.
    pub at: Timestamp,
    /// The state.
    pub state: RunState,
}

/// A line of a run listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    pub run: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// Its status at the latest checkpoint.
    pub status: RunStatus,
    /// The latest checkpoint's position.
    pub seq: u64,
    /// The lease on the run, if one is recorded (it may have lapsed: compare `expires_at`
    /// with the clock; a run whose worker died is taken over by `resume` once it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// Durable run state.
///
/// Contract:
/// - `acquire` grants a new lease if the run has none or the current one expired at `now`;
///   otherwise `Conflict`, *even if `owner` holds it*: a lease belongs to one acquisition, so
///   a second process that happens to use the same worker id does not inherit it. Every grant
///   carries a token greater than any issued before for that run.
/// - `renew` extends the lease presented, keeping its token, only while it is still the
///   run's newest lease (nobody acquired the run since, even if it lapsed meanwhile);
///   otherwise `Fenced`, nothing changed.
/// - `save` stores a checkpoint atomically, only if `lease.token` is the newest token issued
///   for the run (else `Fenced`, nothing written) and `checkpoint.seq` is greater than the
///   latest saved (else `Conflict`). History is kept: earlier checkpoints stay readable.
/// - `latest` and `get` return what was saved, unchanged; `list` returns the latest state of
///   every run (optionally only parked ones).
/// - `claim` is the work queue: it hands out up to `limit` *claimable* runs, each under a new
///   lease for `owner`, granted exactly as `acquire` grants one (token greater than every
///   token issued before for that run). A run is claimable when its lease is free or lapsed
///   at `now` and its latest checkpoint says it can go on (see [`claimable`]): it is
///   running (new, forked, or its worker died), or it is parked and at least one approval it
///   waits for was reported settled through `wake`. Claiming is atomic per run across every
///   process on the store: while a lease is live, no other claim (or `acquire`) gets that run.
///   Runs are handed out oldest id first as far as the store can; a run whose row another
///   claimer is taking at that instant may be passed over rather than waited for.
/// - `wake` records that approval `approval`, awaited (or about to be awaited) by `run`, is no
///   longer pending: a parked run waiting for it becomes claimable. It is idempotent, kept
///   across later saves of the run (a decision may be reported before the checkpoint that
///   parks on it is saved), and forgotten once the run reaches a terminal status.
///
/// There is no default `claim` or `wake`: which parked runs may go on is state that only the
/// store can keep atomically with its leases, so every store implements both (the conformance
/// suite, `testing::checkpoint_store_conformance` behind feature `testing`, checks them).
#[async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Takes a new lease on `run` for `ttl` from `now`.
    async fn acquire(
        &self,
        run: RunId,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Extends `lease` to `ttl` from `now`, if it is still the run's newest lease.
    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Gives up a lease (a no-op if it is no longer the current one).
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Saves a checkpoint under a lease.
    async fn save(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// The latest checkpoint of `run`.
    async fn latest(&self, run: RunId) -> Result<Option<Checkpoint>, StoreError>;

    /// The checkpoint `seq` of `run`.
    async fn get(&self, run: RunId, seq: u64) -> Result<Option<Checkpoint>, StoreError>;

    /// Runs and their latest status; only parked ones if `parked_only`.
    async fn list(&self, parked_only: bool) -> Result<Vec<RunSummary>, StoreError>;

    /// Leases up to `limit` claimable runs to `owner` for `ttl` from `now` (see the trait's
    /// contract); an empty list when none is claimable.
    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Records that `approval`, awaited by `run`, was decided or expired, so that the run is
    /// claimable once parked on it.
    async fn wake(&self, run: RunId, approval: ApprovalId) -> Result<(), StoreError>;
}

/// The queue rule shared by every store: may a run whose latest checkpoint has `status` be
/// handed out by [`CheckpointStore::claim`] (its lease being free), when the approvals in
/// `settled` were reported settled for it through [`CheckpointStore::wake`]? A running run
/// may; a parked one once one of the approvals it waits for is settled; a paused, completed,
/// failed or cancelled one never.
pub fn claimable(status: &RunStatus, settled: &[ApprovalId]) -> bool {
    match status {
        RunStatus::Running => true,
        RunStatus::Parked { approvals } => approvals.iter().any(|a| settled.contains(a)),
        RunStatus::Paused
        | RunStatus::Completed
        | RunStatus::Failed { .. }
        | RunStatus::Cancelled => false,
    }
}

#[derive(Debug, Default)]
struct RunEntry {
    lease: Option<Lease>,
    last_token: u64,
    history: Vec<Arc<Checkpoint>>,
    settled: Vec<ApprovalId>,
}

impl RunEntry {
    fn claimable(&self) -> bool {
        self.history
            .last()
            .is_some_and(|c| claimable(&c.state.status, &self.settled))
    }
}

#[derive(Debug, Default)]
struct Runs {
    runs: HashMap<RunId, RunEntry>,
    /// The runs whose latest checkpoint is claimable (leases aside), in id order.
    ready: BTreeSet<RunId>,
}

impl Runs {
    fn index(&mut self, run: RunId) {
        let ready = self.runs.get(&run).is_some_and(RunEntry::claimable);
        if ready {
            self.ready.insert(run);
        } else {
            self.ready.remove(&run);
        }
    }
}

/// Checkpoints in process memory, history included. Clones share the store.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpointStore {
    runs: Arc<RwLock<Runs>>,
}

impl InMemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn expires(now: Timestamp, ttl: Duration) -> Timestamp {
    now.checked_add_signed(chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(now)
}

/// The lease rule shared by every store: may a new acquisition take the lease at `now`?
/// Only if there is none or it lapsed; who asks does not matter.
pub fn lease_available(current: Option<&Lease>, now: Timestamp) -> bool {
    match current {
        None => true,
        Some(l) => l.expires_at <= now,
    }
}

/// The error an acquisition refused because of a live lease reports: who holds it, until
/// when, and what to do.
pub fn leased(run: RunId, lease: Option<&Lease>) -> StoreError {
    let detail = match lease {
        Some(l) => format!(
            "run {run} is leased by worker `{}` until {}; if that worker is gone, its lease \
             lapses then and `resume` takes the run over",
            l.owner,
            l.expires_at.to_rfc3339()
        ),
        None => format!("run {run} is leased by another worker"),
    };
    StoreError::Conflict { detail }
}

/// The renewal rule shared by every store: `lease` may be extended if it is the run's newest
/// lease (`last_token`) and still recorded as the current one.
pub fn lease_renewable(current: Option<&Lease>, last_token: u64, lease: &Lease) -> bool {
    lease.token != 0
        && lease.token == last_token
        && current.is_some_and(|l| l.token == lease.token && l.owner == lease.owner)
}

/// The error a refused renewal reports.
pub fn renewal_refused(lease: &Lease, last_token: u64) -> StoreError {
    StoreError::Fenced {
        what: format!("lease on run {}", lease.run),
        presented: lease.token,
        current: last_token,
    }
}

#[async_trait]
impl CheckpointStore for InMemoryCheckpointStore {
    async fn acquire(
        &self,
        run: RunId,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut runs = self.runs.write();
        let entry = runs.runs.entry(run).or_default();
        if !lease_available(entry.lease.as_ref(), now) {
            return Err(leased(run, entry.lease.as_ref()));
        }
        let token = entry.last_token + 1;
        entry.last_token = token;
        let lease = Lease {
            run,
            owner: owner.clone(),
            token,
            expires_at: expires(now, ttl),
        };
        entry.lease = Some(lease.clone());
        Ok(lease)
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut runs = self.runs.write();
        let Some(entry) = runs.runs.get_mut(&lease.run) else {
            return Err(renewal_refused(lease, 0));
        };
        if !lease_renewable(entry.lease.as_ref(), entry.last_token, lease) {
            return Err(renewal_refused(lease, entry.last_token));
        }
        let renewed = Lease {
            expires_at: expires(now, ttl),
            ..lease.clone()
        };
        entry.lease = Some(renewed.clone());
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut runs = self.runs.write();
        if let Some(entry) = runs.runs.get_mut(&lease.run) {
            if entry.lease.as_ref().is_some_and(|l| l.token == lease.token) {
                entry.lease = None;
            }
        }
        Ok(())
    }

    async fn save(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let mut runs = self.runs.write();
        let entry = runs.runs.entry(checkpoint.run).or_default();
        if lease.run != checkpoint.run || lease.token < entry.last_token || lease.token == 0 {
            return Err(StoreError::Fenced {
                what: format!("run {}", checkpoint.run),
                presented: lease.token,
                current: entry.last_token,
            });
        }
        let last = entry.history.last().map(|c| c.seq).unwrap_or(0);
        if checkpoint.seq <= last {
            return Err(StoreError::Conflict {
                detail: format!(
                    "checkpoint {} of run {} is not after {last}",
                    checkpoint.seq, checkpoint.run
                ),
            });
        }
        if checkpoint.state.status.is_terminal() {
            entry.settled.clear();
        }
        entry.history.push(Arc::new(checkpoint.clone()));
        runs.index(checkpoint.run);
        Ok(())
    }

    async fn latest(&self, run: RunId) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .runs
            .read()
            .runs
            .get(&run)
            .and_then(|e| e.history.last())
            .map(|c| (**c).clone()))
    }

    async fn get(&self, run: RunId, seq: u64) -> Result<Option<Checkpoint>, StoreError> {
        let runs = self.runs.read();
        Ok(runs.runs.get(&run).and_then(|e| {
            e.history
                .binary_search_by_key(&seq, |c| c.seq)
                .ok()
                .map(|i| (*e.history[i]).clone())
        }))
    }

    async fn list(&self, parked_only: bool) -> Result<Vec<RunSummary>, StoreError> {
        let runs = self.runs.read();
        let mut out: Vec<RunSummary> = runs
            .runs
            .values()
            .filter_map(|e| e.history.last().map(|c| (c, e.lease.clone())))
            .filter(|(c, _)| !parked_only || matches!(c.state.status, RunStatus::Parked { .. }))
            .map(|(c, lease)| RunSummary {
                run: c.run,
                workflow: c.state.workflow.clone(),
                status: c.state.status.clone(),
                seq: c.seq,
                lease,
            })
            .collect();
        out.sort_by_key(|s| s.run);
        Ok(out)
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut guard = self.runs.write();
        let Runs { runs, ready } = &mut *guard;
        let mut out = vec![];
        for run in ready.iter() {
            if out.len() >= limit {
                break;
            }
            let Some(entry) = runs.get_mut(run) else {
                continue;
            };
            if !lease_available(entry.lease.as_ref(), now) {
                continue;
            }
            entry.last_token += 1;
            let lease = Lease {
                run: *run,
                owner: owner.clone(),
                token: entry.last_token,
                expires_at: expires(now, ttl),
            };
            entry.lease = Some(lease.clone());
            out.push(lease);
        }
        Ok(out)
    }

    async fn wake(&self, run: RunId, approval: ApprovalId) -> Result<(), StoreError> {
        let mut runs = self.runs.write();
        let entry = runs.runs.entry(run).or_default();
        let terminal = entry
            .history
            .last()
            .is_some_and(|c| c.state.status.is_terminal());
        if !terminal && !entry.settled.contains(&approval) {
            entry.settled.push(approval);
        }
        runs.index(run);
        Ok(())
    }
}
