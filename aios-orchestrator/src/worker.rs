//! The worker loop: a host awaits [`Orchestrator::work`] and it drains the runnable runs of
//! the store, several at once, inside the one future (nothing is spawned).
//!
//! A run is runnable when nobody drives it and it can go on: it was submitted (or its worker
//! died) and its lease is free or lapsed, or it is parked and an approval it waits for is no
//! longer pending. Workers take runs from the store's queue
//! ([`CheckpointStore::claim`](crate::CheckpointStore::claim)), which hands each run to one
//! of them under a lease; deciding an approval wakes its run in the queue
//! ([`CheckpointStore::wake`](crate::CheckpointStore::wake)).

use std::time::Duration;

use aios_core::RunId;
use futures::future::{BoxFuture, Either, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::checkpoint::{lease_available, Lease};
use crate::error::OrchestratorError;
use crate::runtime::{Orchestrator, RunOutcome};
use crate::state::RunStatus;

/// How [`Orchestrator::work`] works.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkOptions {
    /// How many runs are driven at once (at least 1; default 4).
    pub concurrency: usize,
    /// Return as soon as nothing is runnable and nothing is in flight (tests, batch jobs),
    /// instead of waiting for more work. Default `false`.
    pub until_idle: bool,
    /// How long to wait, through the orchestrator's timer, before looking again when nothing
    /// is runnable (default 1 s).
    pub poll: Duration,
    /// Return once this many runs were driven (default: no limit).
    pub max_runs: Option<usize>,
    /// How often, by the orchestrator's clock, an idle worker also looks through the parked
    /// runs for approvals settled without the store's queue being told (default 30 s). Every
    /// decision through [`Orchestrator::answer_approval`] or
    /// [`Orchestrator::submit_approval`], and every expiry of the deadline sweep, wakes its
    /// run at once; this look is the fallback for decisions recorded some other way, or by a
    /// process that died between recording and waking. It costs one listing of the parked
    /// runs and one approval read per parked run.
    pub rescan: Duration,
}

impl Default for WorkOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            until_idle: false,
            poll: Duration::from_secs(1),
            max_runs: None,
            rescan: Duration::from_secs(30),
        }
    }
}

impl WorkOptions {
    /// The defaults, returning when idle.
    pub fn until_idle() -> Self {
        Self {
            until_idle: true,
            ..Self::default()
        }
    }

    /// Sets how many runs are driven at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets how long to wait between looks when idle.
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Sets how often an idle worker looks through the parked runs (see
    /// [`WorkOptions::rescan`]).
    pub fn rescan(mut self, every: Duration) -> Self {
        self.rescan = every;
        self
    }

    /// Sets how many runs to drive before returning.
    pub fn max_runs(mut self, n: usize) -> Self {
        self.max_runs = Some(n);
        self
    }
}

/// What one [`Orchestrator::work`] did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct WorkReport {
    /// The runs driven, each until it completed, failed, parked or paused, in the order
    /// they stopped.
    pub driven: Vec<RunOutcome>,
    /// Runs claimed but found taken over (their lease lost) or finished when driven.
    pub skipped: Vec<RunId>,
    /// Runs that could not be driven, and why (the others went on).
    pub failed: Vec<(RunId, String)>,
    /// Approval requests the deadline sweeps expired.
    pub expired: usize,
    /// Approval requests the deadline sweeps escalated.
    pub escalated: usize,
}

/// Why a run is runnable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runnable {
    /// Running, and nobody holds a live lease on it (new, or its worker died).
    Unleased,
    /// Parked, and an approval it waits for is settled.
    Settled,
}

impl Orchestrator {
    /// The runs a worker could take up now: submitted or abandoned runs whose lease is free or
    /// lapsed, and parked runs an approval of which was decided or expired. Runs this
    /// orchestrator is driving are left out.
    pub async fn runnable(&self) -> Result<Vec<RunId>, OrchestratorError> {
        Ok(self
            .runnable_now()
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    async fn runnable_now(&self) -> Result<Vec<(RunId, Runnable)>, OrchestratorError> {
        let now = self.clock().now();
        let mut out = vec![];
        for summary in self.checkpoint_store().list(false).await? {
            if self.is_active(summary.run) {
                continue;
            }
            match &summary.status {
                RunStatus::Running if lease_available(summary.lease.as_ref(), now) => {
                    out.push((summary.run, Runnable::Unleased))
                }
                RunStatus::Parked { approvals } => {
                    for &a in approvals {
                        if self.approval_settled(a).await {
                            out.push((summary.run, Runnable::Settled));
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Drives a run claimed from the queue. A run found finished gives its lease back; on
    /// any other failure the lease is kept until it lapses, so the queue does not hand the
    /// run straight back to a worker that cannot drive it.
    async fn resume_claimed(&self, lease: Lease) -> Result<RunOutcome, OrchestratorError> {
        let result = self.resume_leased(lease.run, lease.clone()).await;
        if let Err(OrchestratorError::NotResumable { .. }) = &result {
            let _ = self.checkpoint_store().release(&lease).await;
        }
        result
    }

    /// Looks through the parked runs for approvals settled without the store being told
    /// (decided by a program that does not go through [`Orchestrator::answer_approval`], or by
    /// a process that died between deciding and telling), and wakes their runs. Returns how
    /// many runs it woke that `woken_before` (what earlier looks of the same call woke) did
    /// not hold, so a run woken but still not claimable (leased elsewhere, or given up on)
    /// does not keep an idle call looking.
    async fn rescan_parked(
        &self,
        woken_before: &mut std::collections::HashSet<(RunId, aios_core::ApprovalId)>,
    ) -> Result<usize, OrchestratorError> {
        let mut woken = 0;
        for summary in self.checkpoint_store().list(true).await? {
            if self.is_active(summary.run) {
                continue;
            }
            let RunStatus::Parked { approvals } = &summary.status else {
                continue;
            };
            for &a in approvals {
                if self.approval_settled(a).await {
                    self.checkpoint_store().wake(summary.run, a).await?;
                    if woken_before.insert((summary.run, a)) {
                        woken += 1;
                    }
                    break;
                }
            }
        }
        Ok(woken)
    }

    /// Drains the runnable runs: claims up to `options.concurrency` of them at a time from
    /// the store's queue ([`CheckpointStore::claim`](crate::CheckpointStore::claim): new
    /// runs, runs whose worker died and whose lease lapsed, parked runs an approval of which
    /// was decided or expired), drives each until it stops (completes, fails, parks, pauses),
    /// renewing its lease meanwhile, and claims the next one as each stops. Workers in other
    /// processes on the same store never get a run this one holds, and vice versa.
    ///
    /// Before claiming, and whenever it is idle, it runs the approval deadline sweep of
    /// [`Orchestrator::tick`]. When idle it also looks through the parked runs, at most every
    /// `options.rescan` by the orchestrator's clock (and always before returning idle), for
    /// approvals settled without the store being told (see [`WorkOptions::rescan`]).
    ///
    /// A run this call could not drive (a store failure, a governance version it lacks, or a
    /// run taken up too often without stopping for good) is reported in
    /// [`WorkReport::failed`] and keeps the lease this call took until it lapses, so this
    /// worker does not spin on it; another worker, or a later call, takes it up after that.
    ///
    /// Returns when `stop` resolves (runs in flight are driven to their next stop first; no
    /// new one is taken), when `options.until_idle` is set and nothing is left to do, or after
    /// `options.max_runs` runs. Nothing is spawned: the host awaits this future on whatever
    /// executor it uses, and idle waits go through the orchestrator's timer.
    pub async fn work(
        &self,
        options: WorkOptions,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<WorkReport, OrchestratorError> {
        let mut report = WorkReport::default();
        // how often each run was taken up by this call: a run that keeps coming back without
        // getting anywhere is given up on (reported once), so `until_idle` always returns
        let mut taken: std::collections::HashMap<RunId, u32> = Default::default();
        let mut stop = std::pin::pin!(stop.fuse());
        let mut stopping = false;
        // the runs being driven and the store calls of the loop itself, polled together: a
        // claim waiting for a pooled connection must not stop the runs holding the others
        let mut in_flight: FuturesUnordered<BoxFuture<'_, Step>> = FuturesUnordered::new();
        // the runs of `in_flight`, and whether a claim is among them
        let mut driving: std::collections::HashSet<RunId> = Default::default();
        let mut claiming = false;
        // the last claim found nothing: claim again when a run stops, after the `nap` (runs
        // in flight, not returning idle) or after the idle wait
        let mut idle = false;
        let mut nap: Option<aios_core::Sleep> = None;
        let concurrency = options.concurrency.max(1);
        let limit_reached =
            |r: &WorkReport, n: usize| options.max_runs.is_some_and(|m| r.driven.len() + n >= m);
        // the sweep runs before the first claim and then whenever the queue came up short
        let mut sweep_due = true;
        let mut last_rescan: Option<aios_core::Timestamp> = None;
        let mut rescanned = Default::default();
        loop {
            if !stopping
                && !claiming
                && !idle
                && driving.len() < concurrency
                && !limit_reached(&report, driving.len())
            {
                let mut want = concurrency - driving.len();
                if let Some(m) = options.max_runs {
                    want = want.min(m.saturating_sub(report.driven.len() + driving.len()));
                }
                let sweep = std::mem::take(&mut sweep_due);
                let busy = driving.clone();
                claiming = true;
                in_flight.push(Box::pin(async move {
                    let swept = if sweep {
                        match self.sweep_deadlines().await {
                            Ok(s) => Some(s),
                            Err(e) => return Step::Claimed(Err(e), None, want),
                        }
                    } else {
                        None
                    };
                    let claimed = self
                        .checkpoint_store()
                        .claim(self.worker(), self.clock().now(), self.lease_ttl(), want)
                        .await;
                    let claimed = match claimed {
                        Ok(c) => c,
                        Err(e) => return Step::Claimed(Err(e.into()), swept, want),
                    };
                    let mut leases = vec![];
                    for lease in claimed {
                        if busy.contains(&lease.run) || self.is_active(lease.run) {
                            // this process drives the run and its lease lapsed meanwhile (a
                            // slow step): never drive it twice here. The new token fences the
                            // drive in progress at its next write; giving the lease back lets
                            // the run be claimed again at once.
                            let _ = self.checkpoint_store().release(&lease).await;
                            continue;
                        }
                        leases.push(lease);
                    }
                    Step::Claimed(Ok(leases), swept, want)
                }));
            }
            if in_flight.is_empty() {
                if stopping || limit_reached(&report, 0) {
                    return Ok(report);
                }
                let now = self.clock().now();
                let rescan_due = options.until_idle
                    || last_rescan.map_or(true, |at| {
                        now.signed_duration_since(at)
                            >= chrono::Duration::from_std(options.rescan)
                                .unwrap_or(chrono::Duration::MAX)
                    });
                if rescan_due {
                    last_rescan = Some(now);
                    if self.rescan_parked(&mut rescanned).await? > 0 {
                        idle = false;
                        continue;
                    }
                }
                if options.until_idle {
                    return Ok(report);
                }
                // nothing to do: wait for the next look, or the stop
                let sleep = self.timer().sleep(options.poll);
                if let Either::Left(_) = futures::future::select(&mut stop, sleep).await {
                    return Ok(report);
                }
                sweep_due = true;
                idle = false;
                continue;
            }
            let mut napped = false;
            let next = if stopping {
                Either::Right(in_flight.next().await)
            } else if let Some(n) = nap.as_mut() {
                let either = futures::future::select(in_flight.next(), n);
                match futures::future::select(&mut stop, either).await {
                    Either::Left(((), _)) => Either::Left(()),
                    Either::Right((Either::Left((next, _)), _)) => Either::Right(next),
                    Either::Right((Either::Right(((), _)), _)) => {
                        napped = true;
                        Either::Right(None)
                    }
                }
            } else {
                match futures::future::select(&mut stop, in_flight.next()).await {
                    Either::Left(((), _)) => Either::Left(()),
                    Either::Right((next, _)) => Either::Right(next),
                }
            };
            if napped {
                nap = None;
                idle = false;
                continue;
            }
            match next {
                Either::Left(()) => stopping = true,
                Either::Right(None) => {}
                Either::Right(Some(Step::Claimed(claimed, swept, want))) => {
                    claiming = false;
                    if let Some((expired, escalated)) = swept {
                        report.expired += expired;
                        report.escalated += escalated;
                    }
                    let leases = claimed?;
                    if leases.len() < want {
                        sweep_due = true;
                    }
                    let found = !leases.is_empty();
                    for lease in leases {
                        let run = lease.run;
                        if stopping {
                            // told to stop while claiming: no new run is taken
                            in_flight.push(Box::pin(async move {
                                let _ = self.checkpoint_store().release(&lease).await;
                                Step::Released
                            }));
                            continue;
                        }
                        let n = taken.entry(run).or_insert(0);
                        *n += 1;
                        if *n == MAX_TAKES {
                            // the lease is kept until it lapses: the store would hand the run
                            // straight back
                            report.failed.push((
                                run,
                                format!("taken up {MAX_TAKES} times by one worker call without stopping for good; left for the next call"),
                            ));
                            continue;
                        }
                        if *n > MAX_TAKES {
                            // given up on earlier in this call and its lease lapsed since: try
                            // again, a lease's time later
                            *n = 1;
                        }
                        driving.insert(run);
                        in_flight.push(Box::pin(async move {
                            Step::Ran(run, self.resume_claimed(lease).await)
                        }));
                    }
                    if !found {
                        // nothing more to claim now: look again when a run stops (or, when
                        // not returning idle, after `poll`), not in a busy loop
                        idle = true;
                        if !options.until_idle && !driving.is_empty() {
                            nap = Some(self.timer().sleep(options.poll));
                        }
                    }
                }
                Either::Right(Some(Step::Released)) => {}
                Either::Right(Some(Step::Ran(run, result))) => {
                    driving.remove(&run);
                    idle = false;
                    nap = None;
                    match result {
                        Ok(outcome) => report.driven.push(outcome),
                        Err(
                            OrchestratorError::LeaseLost { .. }
                            | OrchestratorError::NotResumable { .. },
                        ) => report.skipped.push(run),
                        Err(e) => {
                            // not retried by this call
                            taken.insert(run, MAX_TAKES);
                            report.failed.push((run, e.to_string()))
                        }
                    }
                }
            }
            if limit_reached(&report, 0) {
                stopping = true;
            }
        }
    }
}

/// What finished among the futures [`Orchestrator::work`] polls.
enum Step {
    /// A claim (after the deadline sweep, if one was due): the leases, the sweep's counts,
    /// and how many runs were asked for.
    Claimed(
        Result<Vec<Lease>, OrchestratorError>,
        Option<(usize, usize)>,
        usize,
    ),
    /// A run driven to its next stop.
    Ran(RunId, Result<RunOutcome, OrchestratorError>),
    /// A lease claimed while stopping, given back.
    Released,
}

/// How often one [`Orchestrator::work`] call takes up the same run at most (a run parks and
/// is resumed once per decided approval, so a handful is the honest maximum).
const MAX_TAKES: u32 = 16;
