//! The worker loop: a host awaits [`Orchestrator::work`] and it drains the runnable runs of
//! the store, several at once, inside the one future (nothing is spawned).
//!
//! A run is runnable when nobody drives it and it can go on: it was submitted (or its worker
//! died) and its lease is free or lapsed, or it is parked and an approval it waits for is no
//! longer pending. Workers in other processes on the same store compete through the store's
//! leases: a run is driven by whoever acquires it, the others skip it.

use std::time::Duration;

use aios_core::RunId;
use futures::future::{Either, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::checkpoint::lease_available;
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
}

impl Default for WorkOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            until_idle: false,
            poll: Duration::from_secs(1),
            max_runs: None,
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
    /// Runs found runnable but taken by another worker first.
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

    /// Drains the runnable runs (see [`Orchestrator::runnable`]): claims up to
    /// `options.concurrency` of them at a time through the store's leases, drives each until
    /// it stops (completes, fails, parks, pauses), renewing its lease meanwhile, and runs the
    /// approval deadline sweep of [`Orchestrator::tick`] before each look. Runs taken by
    /// another worker first are skipped.
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
        let mut in_flight = FuturesUnordered::new();
        let mut queue: Vec<RunId> = vec![];
        let concurrency = options.concurrency.max(1);
        let limit_reached =
            |r: &WorkReport, n: usize| options.max_runs.is_some_and(|m| r.driven.len() + n >= m);
        loop {
            if !stopping && queue.is_empty() && in_flight.len() < concurrency {
                let swept = self.sweep_deadlines().await?;
                report.expired += swept.0;
                report.escalated += swept.1;
                queue = self
                    .runnable_now()
                    .await?
                    .into_iter()
                    .map(|(r, _)| r)
                    .filter(|r| taken.get(r).map_or(true, |n| *n < MAX_TAKES))
                    .collect();
                // workers on one store see the same list: each starts at its own place in
                // it, so they rarely race for the same run
                if !queue.is_empty() {
                    let start = self.worker_offset() % queue.len();
                    queue.rotate_left(start);
                }
                queue.reverse();
            }
            while !stopping
                && in_flight.len() < concurrency
                && !limit_reached(&report, in_flight.len())
            {
                let Some(run) = queue.pop() else { break };
                let n = taken.entry(run).or_insert(0);
                *n += 1;
                if *n == MAX_TAKES {
                    report.failed.push((
                        run,
                        format!("taken up {MAX_TAKES} times by one worker call without stopping for good; left for the next call"),
                    ));
                    continue;
                }
                in_flight.push(async move { (run, self.resume(run).await) });
            }
            if in_flight.is_empty() {
                if stopping || options.until_idle || limit_reached(&report, 0) {
                    return Ok(report);
                }
                // nothing to do: wait for the next look, or the stop
                let sleep = self.timer().sleep(options.poll);
                if let Either::Left(_) = futures::future::select(&mut stop, sleep).await {
                    return Ok(report);
                }
                continue;
            }
            let next = if stopping {
                Either::Right(in_flight.next().await)
            } else {
                match futures::future::select(&mut stop, in_flight.next()).await {
                    Either::Left(((), _)) => Either::Left(()),
                    Either::Right((next, _)) => Either::Right(next),
                }
            };
            match next {
                Either::Left(()) => stopping = true,
                Either::Right(None) => {}
                Either::Right(Some((run, result))) => match result {
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
                },
            }
            if limit_reached(&report, 0) {
                stopping = true;
            }
        }
    }
}

/// How often one [`Orchestrator::work`] call takes up the same run at most (a run parks and
/// is resumed once per decided approval, so a handful is the honest maximum).
const MAX_TAKES: u32 = 16;
