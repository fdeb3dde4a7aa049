//! The orchestrator: starts, drives, parks, resumes, forks and cancels runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AnchorId, ApprovalId, AuditEvent, AuditLog, AuditRecord, Clock, Connector,
    ConnectorId, CredentialHandle, CredentialVault, IdGen, Principal, RunId, Timer,
};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::builder::OrchestratorBuilder;
use crate::checkpoint::{Checkpoint, CheckpointStore, Lease, WorkerId};
use crate::driver::Driver;
use crate::error::OrchestratorError;
use crate::gate::Governance;
use crate::graph::Workflow;
use crate::notify::{Notifier, Observer};
use crate::reliability::{BreakerPolicy, Breakers};
use crate::role::Role;
use crate::router::ModelRouter;
use crate::state::{RunState, RunStatus, TaskState, TaskStatus, RUN_STATE_SCHEMA};

/// When checkpoints are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointMode {
    /// After every journaled call and every task (the safest; the default).
    EveryStep,
    /// After this many steps, and whenever a run parks, stops or is about to perform an
    /// irreversible call.
    Batched(u32),
    /// Only when the run parks or stops, and before irreversible calls. A crash loses the
    /// journal since the last save (and a run that never saved is lost: the host starts it
    /// again); replayed calls reach connectors again with the same idempotency keys.
    OnExit,
}

/// Settings of an orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// This worker's identity, for leases.
    pub worker: WorkerId,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Tasks run at once within one run.
    pub concurrency: usize,
    /// When to checkpoint.
    pub checkpoints: CheckpointMode,
    /// Seed for retry jitter.
    pub seed: u64,
    /// Circuit breakers for connectors and models.
    pub breakers: BreakerPolicy,
}

impl Default for OrchestratorConfig {
    /// The production-safe settings: a worker id no other process shares
    /// ([`WorkerId::unique`]) and a seed from the operating system ([`aios_core::os_seed`]),
    /// so two processes never drive one run nor draw the same ids. Tests that need
    /// reproducible ids use [`OrchestratorConfig::deterministic`].
    fn default() -> Self {
        Self {
            worker: WorkerId::unique(),
            lease_ttl: Duration::from_secs(60),
            concurrency: 8,
            checkpoints: CheckpointMode::EveryStep,
            seed: aios_core::os_seed(),
            breakers: BreakerPolicy::default(),
        }
    }
}

impl OrchestratorConfig {
    /// Settings for reproducible tests: worker `worker` and ids, task ids and jitter drawn
    /// from `seed`. Never use this in production: two processes with the same settings draw
    /// the same ids.
    pub fn deterministic(worker: &str, seed: u64) -> Self {
        Self {
            worker: WorkerId::new(worker),
            seed,
            ..Self::default()
        }
    }
}

/// Where a run stands after the orchestrator stopped driving it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The run.
    pub run: RunId,
    /// Its status.
    pub status: RunStatus,
    /// Outputs of completed tasks, by task name.
    pub outputs: std::collections::BTreeMap<String, serde_json::Value>,
}

impl RunOutcome {
    /// The approval requests the run waits for (empty unless parked).
    pub fn pending_approvals(&self) -> &[ApprovalId] {
        match &self.status {
            RunStatus::Parked { approvals } => approvals,
            _ => &[],
        }
    }
}

pub(crate) struct Inner {
    pub(crate) gov: Governance,
    pub(crate) roles: FxHashMap<aios_core::RoleId, Arc<Role>>,
    /// The agent identity of each role, derived once.
    pub(crate) agents: FxHashMap<aios_core::RoleId, AgentId>,
    pub(crate) connectors: HashMap<ConnectorId, Arc<dyn Connector>>,
    pub(crate) credentials: HashMap<ConnectorId, CredentialHandle>,
    pub(crate) vault: Option<Arc<dyn CredentialVault>>,
    pub(crate) router: ModelRouter,
    pub(crate) scheduler: Option<crate::scheduler::ModelScheduler>,
    pub(crate) telemetry: crate::telemetry::TelemetryConfig,
    pub(crate) memory: Option<crate::memory::MemoryAccess>,
    pub(crate) audit: Arc<dyn AuditLog>,
    pub(crate) checkpoints: Arc<dyn CheckpointStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) timer: Arc<dyn Timer>,
    pub(crate) ids: IdGen,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) breakers: Breakers,
    pub(crate) config: OrchestratorConfig,
    pub(crate) controls: Mutex<HashMap<RunId, RunStatus>>,
    /// Runs this orchestrator is driving right now.
    pub(crate) active: Mutex<std::collections::HashSet<RunId>>,
}

/// Runs governed agents over task graphs. Cheap to clone; clones share everything.
///
/// Built with [`Orchestrator::builder`]; every port defaults to its in-memory implementation,
/// so a test or an example needs only a governance model, roles and connectors.
///
/// ```
/// use std::sync::Arc;
/// use aios_core::RoleId;
/// use aios_governance::GovernanceModel;
/// use aios_orchestrator::{FnAgent, Orchestrator, Role, RunStatus, TaskSpec, Workflow};
///
/// let model = GovernanceModel::from_json(r#"{
///   "version": 1,
///   "charter": { "intent": "count", "final_authority": "owner" },
///   "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
///   "roles": [{ "key": "counter" }],
///   "pathways": [{ "key": "counting", "anchor": "owner", "delegate": "counter",
///                  "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
///                  "escalation": [{ "name": "big", "when": { "risk_at_least": 50 }, "mode": "halt" }] }]
/// }"#).unwrap();
/// let governor = model.compile().map_err(|r| r.to_string()).unwrap();
/// let add_one = FnAgent::new(|_ctx, input| Box::pin(async move {
///     let n = input.deps.values().next().and_then(|v| v.as_i64()).or(input.input.as_i64()).unwrap_or(0);
///     Ok(serde_json::json!(n + 1))
/// }));
/// let orchestrator = Orchestrator::builder(governor)
///     .role(Role::new("counter", "counting", Arc::new(add_one)))
///     .build()
///     .unwrap();
/// let counter = RoleId::from_name("counter");
/// let workflow = Workflow::new("count")
///     .task(TaskSpec::new("one", counter, serde_json::json!(0)))
///     .task(TaskSpec::new("two", counter, serde_json::Value::Null).after(["one"]));
/// let outcome = futures::executor::block_on(orchestrator.start(workflow)).unwrap();
/// assert_eq!(outcome.status, RunStatus::Completed);
/// assert_eq!(outcome.outputs["two"], 2);
/// ```
#[derive(Clone)]
pub struct Orchestrator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("worker", &self.inner.config.worker)
            .field("roles", &self.inner.roles.len())
            .field("connectors", &self.inner.connectors.len())
            .finish_non_exhaustive()
    }
}

impl Orchestrator {
    /// Starts building an orchestrator around a compiled governance model.
    pub fn builder(governor: aios_governance::Governor) -> OrchestratorBuilder {
        OrchestratorBuilder::new(Governance::new(governor))
    }

    /// The audit log.
    pub fn audit_log(&self) -> &Arc<dyn AuditLog> {
        &self.inner.audit
    }

    /// The checkpoint store.
    pub fn checkpoint_store(&self) -> &Arc<dyn CheckpointStore> {
        &self.inner.checkpoints
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The current governance model version, the one new runs start under (runs already
    /// started stay pinned to theirs): for an operator's surface that shows the model's
    /// anchors, pathways and budgets.
    pub fn governor(&self) -> Arc<aios_governance::Governor> {
        self.inner.gov.current().governor().clone()
    }

    /// Starts `workflow` as a new run and drives it until it completes, fails or parks.
    pub async fn start(&self, workflow: Workflow) -> Result<RunOutcome, OrchestratorError> {
        let (governor, lease, state) = self.create(workflow).await?;
        let span = crate::telemetry::run_span(state.run, &state.workflow, false);
        let driver = self.driver(governor, lease, state, 0);
        if self.inner.config.checkpoints != CheckpointMode::OnExit {
            // the run exists durably before its first task, so a crash at any point can resume
            driver.save().await?;
        }
        driver.drive(false).instrument(span).await
    }

    /// Records `workflow` as a new run without driving it, for a worker
    /// ([`Orchestrator::work`], in this process or another on the same store) to take up.
    /// The run is durable (its first checkpoint saved) and unleased when this returns.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use aios_orchestrator::{FnAgent, Orchestrator, Role, RunStatus, TaskSpec, Workflow, WorkOptions};
    /// # let governor = aios_governance::GovernanceModel::from_toml(r#"
    /// # version = 1
    /// # [charter]
    /// # intent = "x"
    /// # final_authority = "founder"
    /// # [[anchors]]
    /// # key = "founder"
    /// # title = "Founder"
    /// # holders = ["alice"]
    /// # response_time = "1h"
    /// # [[roles]]
    /// # key = "writer"
    /// # [[pathways]]
    /// # key = "writing"
    /// # anchor = "founder"
    /// # delegate = "writer"
    /// # limits = { actions = ["*"], effects = ["read_only"] }
    /// # [[pathways.escalation]]
    /// # name = "never"
    /// # when = { risk_at_least = 100 }
    /// # mode = "halt"
    /// # [[budgets]]
    /// # key = "org"
    /// # scope = "organisation"
    /// # limits = { cost = 1000 }
    /// # "#).unwrap().compile().unwrap();
    /// let writer = FnAgent::new(|_, _| Box::pin(async { Ok(serde_json::json!("done")) }));
    /// let orch = Orchestrator::builder(governor)
    ///     .role(Role::new("writer", "writing", Arc::new(writer)))
    ///     .build()?;
    /// # futures::executor::block_on(async {
    /// let run = orch.submit(Workflow::new("w").task(TaskSpec::new("draft", "writer", serde_json::json!({})))).await?;
    /// let report = orch.work(WorkOptions::until_idle(), futures::future::pending()).await?;
    /// assert_eq!(report.driven[0].run, run);
    /// assert_eq!(report.driven[0].status, RunStatus::Completed);
    /// # Ok::<_, aios_orchestrator::OrchestratorError>(())
    /// # })?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub async fn submit(&self, workflow: Workflow) -> Result<RunId, OrchestratorError> {
        let (governor, lease, state) = self.create(workflow).await?;
        let run = state.run;
        let driver = self.driver(governor, lease.clone(), state, 0);
        driver.save().await?;
        drop(driver);
        self.inner.checkpoints.release(&lease).await?;
        Ok(run)
    }

    /// A new run of `workflow`, checked, leased to this worker and announced in the audit
    /// log, but neither saved nor driven.
    async fn create(
        &self,
        workflow: Workflow,
    ) -> Result<(crate::gate::PinnedGovernor, Lease, RunState), OrchestratorError> {
        let deps = workflow.validate()?;
        for t in &workflow.tasks {
            if !self.inner.roles.contains_key(&t.role) {
                let governor = self.inner.gov.current();
                let named = governor
                    .model()
                    .roles
                    .iter()
                    .find(|r| aios_core::RoleId::from_name(&r.key) == t.role)
                    .map(|r| format!("role `{}`", r.key))
                    .unwrap_or_else(|| {
                        format!("role {:?} (not in the governance model either)", t.role)
                    });
                let mut registered: Vec<String> = self
                    .inner
                    .roles
                    .values()
                    .map(|r| format!("`{}`", r.name))
                    .collect();
                registered.sort();
                return Err(OrchestratorError::UnknownRole {
                    task: t.name.to_string(),
                    role: t.role,
                    named,
                    registered: if registered.is_empty() {
                        "none".into()
                    } else {
                        registered.join(", ")
                    },
                });
            }
        }
        let run: RunId = self.inner.ids.next();
        let governor = self.inner.gov.current();
        let now = self.inner.clock.now();
        let state = RunState {
            schema: RUN_STATE_SCHEMA,
            run,
            workflow: workflow.name.clone(),
            governance_version: governor.version(),
            started_at: now,
            status: RunStatus::Running,
            tasks: workflow
                .tasks
                .into_iter()
                .zip(deps)
                .map(|(spec, deps)| TaskState {
                    id: self.inner.ids.next(),
                    spec,
                    deps,
                    status: TaskStatus::Pending,
                    output: None,
                    error: None,
                    journal: vec![],
                })
                .collect(),
            forked_from: None,
        };
        let lease = self
            .inner
            .checkpoints
            .acquire(
                run,
                &self.inner.config.worker,
                now,
                self.inner.config.lease_ttl,
            )
            .await?;
        let event = AuditEvent::RunStarted {
            run,
            workflow: state.workflow.clone(),
            governance_version: governor.version(),
        };
        self.inner
            .audit
            .append(AuditRecord {
                at: now,
                actor: Principal::System,
                event,
            })
            .await?;
        Ok((governor, lease, state))
    }

    fn driver(
        &self,
        governor: crate::gate::PinnedGovernor,
        lease: Lease,
        state: RunState,
        saved_seq: u64,
    ) -> Driver<'_> {
        Driver {
            o: &self.inner,
            run: state.run,
            governor,
            lease: Mutex::new(lease),
            state: Mutex::new(state),
            saved_seq: AtomicU64::new(saved_seq),
            unsaved: AtomicU32::new(0),
            save_lock: futures::lock::Mutex::new(()),
            fatal: Mutex::new(None),
        }
    }

    /// Continues a run from its latest checkpoint: after a crash, after its approvals were
    /// decided, or after a pause. Completed calls are replayed from the journal, never
    /// performed again.
    pub async fn resume(&self, run: RunId) -> Result<RunOutcome, OrchestratorError> {
        let now = self.inner.clock.now();
        let lease = self
            .inner
            .checkpoints
            .acquire(
                run,
                &self.inner.config.worker,
                now,
                self.inner.config.lease_ttl,
            )
            .await
            .map_err(|e| match e {
                aios_core::StoreError::Conflict { detail } => {
                    OrchestratorError::LeaseLost { run, detail }
                }
                other => OrchestratorError::Store(other),
            })?;
        let result = self.resume_leased(run, lease.clone()).await;
        if result.is_err() {
            // leave the lease to expire on store failures; release it on refusals
            if let Err(
                OrchestratorError::NotResumable { .. }
                | OrchestratorError::GovernanceVersionUnavailable { .. },
            ) = &result
            {
                let _ = self.inner.checkpoints.release(&lease).await;
            }
        }
        result
    }

    pub(crate) async fn resume_leased(
        &self,
        run: RunId,
        lease: Lease,
    ) -> Result<RunOutcome, OrchestratorError> {
        let Some(checkpoint) = self.inner.checkpoints.latest(run).await? else {
            return Err(OrchestratorError::UnknownRun(run));
        };
        checked(&checkpoint)?;
        let mut state = checkpoint.state;
        if state.status.is_terminal() {
            return Err(OrchestratorError::NotResumable {
                run,
                status: format!("{:?}", state.status),
            });
        }
        let governor = self.inner.gov.version(state.governance_version).ok_or(
            OrchestratorError::GovernanceVersionUnavailable {
                run,
                version: state.governance_version,
            },
        )?;
        for t in &mut state.tasks {
            if matches!(t.status, TaskStatus::Running | TaskStatus::Parked) {
                t.status = TaskStatus::Pending;
            }
        }
        state.status = RunStatus::Running;
        // this worker holds the lease: reservations still open for the run were left by a
        // worker that died (or lost its lease) between reserving and settling
        let abandoned = self.inner.gov.release_abandoned(run).await?;
        if abandoned > 0 {
            let event = AuditEvent::Note {
                text: format!(
                    "run {run}: released {abandoned} budget reservation(s) left open by an interrupted worker"
                ),
            };
            let now = self.inner.clock.now();
            let record = AuditRecord {
                at: now,
                actor: Principal::System,
                event,
            };
            self.inner.audit.append(record).await?;
        }
        let event = AuditEvent::Note {
            text: format!(
                "run {run} resumed by worker `{}` from checkpoint {}",
                self.inner.config.worker, checkpoint.seq
            ),
        };
        self.inner
            .audit
            .append(AuditRecord {
                at: self.inner.clock.now(),
                actor: Principal::System,
                event,
            })
            .await?;
        let span = crate::telemetry::run_span(run, &state.workflow, true);
        let driver = self.driver(governor, lease, state, checkpoint.seq);
        driver.drive(true).instrument(span).await
    }

    /// The latest saved state of a run.
    pub async fn state(&self, run: RunId) -> Result<Option<RunState>, OrchestratorError> {
        Ok(self.inner.checkpoints.latest(run).await?.map(|c| c.state))
    }

    /// Runs parked on approvals.
    pub async fn parked_runs(
        &self,
    ) -> Result<Vec<crate::checkpoint::RunSummary>, OrchestratorError> {
        Ok(self.inner.checkpoints.list(true).await?)
    }

    /// Copies a run as it was at checkpoint `seq` into a new run, without changing the
    /// original's history. Calls waiting for approval at that point, or approved but not yet
    /// performed (and what came after them in their task), are dropped from the copy, so the
    /// fork asks again: an approval is redeemed once, by the run that asked for it. Resume the
    /// returned run to drive it.
    pub async fn fork(&self, run: RunId, seq: u64) -> Result<RunId, OrchestratorError> {
        let Some(checkpoint) = self.inner.checkpoints.get(run, seq).await? else {
            return Err(OrchestratorError::UnknownRun(run));
        };
        checked(&checkpoint)?;
        let new_run: RunId = self.inner.ids.next();
        let mut state = checkpoint.state;
        state.run = new_run;
        state.forked_from = Some((run, seq));
        state.status = RunStatus::Running;
        for t in &mut state.tasks {
            if let Some(cut) = t.journal.iter().position(|e| {
                matches!(
                    e.record,
                    crate::state::CallRecord::AwaitingApproval { .. }
                        | crate::state::CallRecord::Approved { result: None, .. }
                )
            }) {
                t.journal.truncate(cut);
            }
            if matches!(t.status, TaskStatus::Running | TaskStatus::Parked) {
                t.status = TaskStatus::Pending;
            }
        }
        let now = self.inner.clock.now();
        let lease = self
            .inner
            .checkpoints
            .acquire(
                new_run,
                &self.inner.config.worker,
                now,
                self.inner.config.lease_ttl,
            )
            .await?;
        self.inner
            .checkpoints
            .save(
                &lease,
                &Checkpoint {
                    run: new_run,
                    seq: 1,
                    at: now,
                    state,
                },
            )
            .await?;
        self.inner.checkpoints.release(&lease).await?;
        self.inner
            .audit
            .append(AuditRecord {
                at: now,
                actor: Principal::System,
                event: AuditEvent::Note {
                    text: format!("run {new_run} forked from run {run} at checkpoint {seq}"),
                },
            })
            .await?;
        Ok(new_run)
    }

    /// Stops a run for good (`Cancel`), pauses it (`Pause`; [`Orchestrator::resume`]
    /// continues it), or lifts a pause (`Resume`, a human only, when the orchestrator consults
    /// operator controls; then call `resume`). Recorded in the audit log with who and why. A
    /// run being driven by this orchestrator stops at its next task boundary; otherwise its
    /// checkpoint is updated under a lease.
    ///
    /// With operator [`controls`](OrchestratorBuilder::controls) the pause or stop is also
    /// applied there, on the run as its target, so it holds across a restart when the
    /// controls are kept in a durable [`ControlStore`](aios_governance::ControlStore) (and
    /// even if the process dies before the run reached its next task boundary): every later
    /// call of the run is paused or stopped until a human lifts it.
    pub async fn control_run(
        &self,
        run: RunId,
        control: RunControl,
        by: Principal,
        reason: &str,
    ) -> Result<(), OrchestratorError> {
        let status = match control {
            RunControl::Cancel => RunStatus::Cancelled,
            RunControl::Pause => RunStatus::Paused,
            RunControl::Resume => RunStatus::Running,
        };
        // the durable record, when operator controls are consulted (they audit it)
        let durable = match &self.inner.gov.controls {
            Some(controls) => {
                let action = match control {
                    RunControl::Cancel => aios_governance::ControlAction::Stop,
                    RunControl::Pause => aios_governance::ControlAction::Pause,
                    RunControl::Resume => aios_governance::ControlAction::Resume,
                };
                controls
                    .apply(aios_governance::ControlCommand {
                        target: aios_governance::ControlTarget::Run(run),
                        action,
                        by,
                        reason: reason.to_string(),
                        until: None,
                    })
                    .await
                    .map_err(OrchestratorError::Control)?;
                true
            }
            None => false,
        };
        let now = self.inner.clock.now();
        let event = AuditEvent::ControlApplied {
            target: format!("run:{run}"),
            control: format!("{control:?}").to_lowercase(),
            reason: reason.to_string(),
            until: None,
        };
        let record = AuditRecord {
            at: now,
            actor: by,
            event,
        };
        if control == RunControl::Resume {
            // nothing to lift without operator controls: the decision is put on record, and
            // `resume` continues the run
            if !durable {
                self.inner.audit.append(record).await?;
            }
            return Ok(());
        }
        if self.inner.active.lock().contains(&run) {
            // driven right now by this orchestrator: it stops at the next task boundary and
            // saves the new status itself
            if !durable {
                self.inner.audit.append(record).await?;
            }
            self.inner.controls.lock().insert(run, status);
            return Ok(());
        }
        let lease = self
            .inner
            .checkpoints
            .acquire(
                run,
                &self.inner.config.worker,
                now,
                self.inner.config.lease_ttl,
            )
            .await
            .map_err(|e| match e {
                aios_core::StoreError::Conflict { detail } => OrchestratorError::LeaseLost {
                    run,
                    detail: format!("another worker drives the run: {detail}"),
                },
                e => e.into(),
            })?;
        let result = async {
            let Some(latest) = self.inner.checkpoints.latest(run).await? else {
                return Err(OrchestratorError::UnknownRun(run));
            };
            let mut state = latest.state;
            if state.status.is_terminal() {
                return Err(OrchestratorError::NotResumable {
                    run,
                    status: format!("{:?}", state.status),
                });
            }
            state.status = status;
            let checkpoint = Checkpoint {
                run,
                seq: latest.seq + 1,
                at: now,
                state,
            };
            if !durable {
                self.inner.audit.append(record).await?;
            }
            let cancelled = checkpoint.state.status == RunStatus::Cancelled;
            self.inner.checkpoints.save(&lease, &checkpoint).await?;
            if cancelled {
                // a cancelled run holds no budget
                self.inner.gov.release_abandoned(run).await?;
            }
            Ok(())
        }
        .await;
        self.inner.checkpoints.release(&lease).await?;
        result
    }
}

impl Orchestrator {
    /// Approval requests waiting for a human, across all runs, oldest first.
    pub async fn pending_approvals(
        &self,
    ) -> Result<Vec<aios_governance::ApprovalRequest>, OrchestratorError> {
        self.inner
            .gov
            .pending()
            .await
            .map_err(|e| OrchestratorError::approval(self.inner.gov.current().governor(), e))
    }

    /// The approval requests waiting for a human, as a human reads them, oldest first: the
    /// run and task (by name), the action, why it is asked, what is proposed, which anchor
    /// is asked and who may answer for it (by their keys in the governance model), the
    /// answers allowed and the deadline.
    ///
    /// This reads the state of every run with a pending request; a page of a long inbox is
    /// cheaper through [`Orchestrator::inbox_page`].
    pub async fn inbox(&self) -> Result<Vec<PendingApproval>, OrchestratorError> {
        Ok(self.inbox_page(0, usize::MAX).await?.approvals)
    }

    /// One page of the [inbox](Orchestrator::inbox): how many requests wait in all, and the
    /// `limit` of them from position `offset` (oldest first, from 0), as the inbox shows
    /// them. Only the runs of the requests on the page have their state read (for the task's
    /// name), so a page costs the pending requests' listing plus `limit` run states, however
    /// many runs wait. An `offset` past the end gives an empty page with the total.
    pub async fn inbox_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<InboxPage, OrchestratorError> {
        let requests = self.pending_approvals().await?;
        let total = requests.len();
        let governor = self.inner.gov.current();
        let model = governor.model();
        let mut states: HashMap<RunId, Option<RunState>> = HashMap::new();
        let mut out = Vec::with_capacity(limit.min(total.saturating_sub(offset)));
        for r in requests.into_iter().skip(offset).take(limit) {
            let task = match (r.run, r.task) {
                (Some(run), Some(task)) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = states.entry(run) {
                        e.insert(self.state(run).await?);
                    }
                    states
                        .get(&run)
                        .and_then(|s| s.as_ref())
                        .and_then(|s| s.tasks.iter().find(|t| t.id == task))
                        .map(|t| t.spec.name.to_string())
                }
                _ => None,
            };
            let anchor = model
                .anchors
                .iter()
                .find(|a| AnchorId::from_name(&a.key) == r.anchor);
            out.push(PendingApproval {
                id: r.id,
                run: r.run,
                task,
                anchor: anchor
                    .map(|a| a.key.clone())
                    .unwrap_or_else(|| r.anchor.to_string()),
                may_answer: anchor
                    .map(|a| a.holders.iter().chain(a.deputy.iter()).cloned().collect())
                    .unwrap_or_default(),
                action: r.action,
                reason: r.reason,
                proposed: r.proposed,
                allowed: r.allowed,
                expires_at: r.expires_at,
            });
        }
        Ok(InboxPage {
            total,
            approvals: out,
        })
    }

    /// Records `by`'s decision on `approval` and resumes the run waiting for it, which
    /// continues exactly the parked call: approved, it runs as proposed; edited, it runs as
    /// edited; rejected, the agent gets [`AgentError::Rejected`](crate::AgentError::Rejected) and the role's fallback
    /// applies. The decision is refused (and nothing changes) if `by` is not a holder or
    /// deputy of the anchor, is the requester, or the request is unknown, already decided,
    /// used or expired.
    pub async fn submit_approval(
        &self,
        approval: ApprovalId,
        by: aios_core::HumanId,
        response: aios_governance::ApprovalResponse,
    ) -> Result<RunOutcome, OrchestratorError> {
        let run = self.answer_approval(approval, by, response).await?;
        self.resume(run).await
    }

    /// Records `by`'s decision on `approval`, refused as [`submit_approval`] refuses, without
    /// resuming the run: a worker ([`Orchestrator::work`], here or in another process on the
    /// same store) or the next [`Orchestrator::tick`] takes it up. For an operator's surface
    /// that is not itself the worker. Returns the run waiting for the decision.
    ///
    /// [`submit_approval`]: Orchestrator::submit_approval
    pub async fn answer_approval(
        &self,
        approval: ApprovalId,
        by: aios_core::HumanId,
        response: aios_governance::ApprovalResponse,
    ) -> Result<RunId, OrchestratorError> {
        let run = self
            .inner
            .gov
            .submit(approval, by, response)
            .await
            .map_err(|e| OrchestratorError::approval(self.inner.gov.current().governor(), e))?
            .ok_or(OrchestratorError::UnknownApproval(approval))?;
        // the decision is recorded; tell the queue. Should this fail (or this process die
        // first), a worker's periodic look through the parked runs finds the run anyway
        self.inner.checkpoints.wake(run, approval).await?;
        Ok(run)
    }

    /// Tells the queue about requests a deadline sweep expired, so their runs are claimable.
    async fn wake_expired(
        &self,
        expired: &[aios_governance::Expiry],
    ) -> Result<(), OrchestratorError> {
        for e in expired {
            if let Some(run) = e.request.run {
                self.inner.checkpoints.wake(run, e.request.id).await?;
            }
        }
        Ok(())
    }

    /// The deadline sweep, driven by the host (the library starts no thread): every pending
    /// approval request past its deadline by the orchestrator's clock is expired, and, when
    /// its rule says `on_timeout = escalate`, asked again of the named anchor. Then every
    /// parked run whose awaited request is no longer pending (expired by this sweep or on an
    /// earlier look, or answered while nobody resumed the run) is resumed: on a denial the
    /// parked call is rejected and the role's fallback applies; on an escalation the run parks
    /// again on the new request, and both anchors are notified (the one that did not answer,
    /// so its holders and deputy know, and the one now asked). A run driven elsewhere is left
    /// to its worker; a paused run stays paused; a run that cannot be resumed is reported and
    /// the others go on. Resumed runs are driven one after another until they stop again.
    pub async fn tick(&self) -> Result<TickReport, OrchestratorError> {
        let expired = self
            .inner
            .gov
            .sweep()
            .await
            .map_err(|e| OrchestratorError::approval(self.inner.gov.current().governor(), e))?;
        self.wake_expired(&expired).await?;
        let mut report = TickReport::default();
        for e in &expired {
            match e.escalated_to {
                Some(next) => report.escalated.push((e.request.id, next)),
                None => report.expired.push(e.request.id),
            }
        }
        for summary in self.inner.checkpoints.list(true).await? {
            let run = summary.run;
            let RunStatus::Parked { approvals } = &summary.status else {
                continue;
            };
            if self.inner.active.lock().contains(&run) {
                continue;
            }
            let mut settled = false;
            for &a in approvals {
                match self.inner.gov.approval(a).await {
                    Ok(r) if r.state == aios_governance::ApprovalState::Pending => {}
                    // answered, used, expired, or unknown to this store: the run learns which
                    _ => settled = true,
                }
            }
            if !settled {
                continue;
            }
            match self.resume(run).await {
                Ok(outcome) => report.resumed.push(outcome),
                Err(
                    OrchestratorError::LeaseLost { .. } | OrchestratorError::NotResumable { .. },
                ) => report.skipped.push(run),
                Err(e) => report.failed.push((run, e.to_string())),
            }
        }
        Ok(report)
    }

    /// This worker's id.
    pub(crate) fn worker(&self) -> &crate::checkpoint::WorkerId {
        &self.inner.config.worker
    }

    /// How long a lease this worker takes lasts unless renewed.
    pub(crate) fn lease_ttl(&self) -> std::time::Duration {
        self.inner.config.lease_ttl
    }

    /// Whether this orchestrator is driving `run` now.
    pub(crate) fn is_active(&self, run: RunId) -> bool {
        self.inner.active.lock().contains(&run)
    }

    /// Whether approval request `approval` is no longer pending (answered, used, expired,
    /// or unknown to the store: the run learns which when it resumes).
    pub(crate) async fn approval_settled(&self, approval: ApprovalId) -> bool {
        !matches!(self.inner.gov.approval(approval).await,
            Ok(r) if r.state == aios_governance::ApprovalState::Pending)
    }

    /// The approval deadline sweep: (expired, escalated).
    pub(crate) async fn sweep_deadlines(&self) -> Result<(usize, usize), OrchestratorError> {
        let swept = self
            .inner
            .gov
            .sweep()
            .await
            .map_err(|e| OrchestratorError::approval(self.inner.gov.current().governor(), e))?;
        self.wake_expired(&swept).await?;
        let escalated = swept.iter().filter(|e| e.escalated_to.is_some()).count();
        Ok((swept.len() - escalated, escalated))
    }

    /// The orchestrator's timer.
    pub(crate) fn timer(&self) -> &Arc<dyn aios_core::Timer> {
        &self.inner.timer
    }

    /// Loads another governance model version. With `make_current`, new runs start under it;
    /// runs already started stay pinned to theirs.
    pub fn load_governance(&self, governor: aios_governance::Governor, make_current: bool) {
        self.inner.gov.load(governor, make_current);
    }

    /// The markdown transcript of a run, from the audit log.
    pub async fn transcript(&self, run: RunId) -> Result<String, OrchestratorError> {
        let entries = aios_core::AuditLogExt::entries(self.inner.audit.as_ref()).await?;
        let mut names = crate::transcript::TranscriptNames::default();
        for role in self.inner.roles.values() {
            names.principals.insert(
                Principal::Agent(role.agent_id()),
                format!("agent `{}`", role.name),
            );
        }
        if let Some(state) = self.state(run).await? {
            for t in &state.tasks {
                names.tasks.insert(t.id, t.spec.name.to_string());
            }
        }
        let governor = self.inner.gov.current();
        for anchor in &governor.model().anchors {
            names.anchors.insert(
                aios_core::AnchorId::from_name(&anchor.key),
                anchor.key.clone(),
            );
            for human in anchor.holders.iter().chain(anchor.deputy.as_ref()) {
                names.principals.insert(
                    Principal::Human(aios_core::HumanId::from_name(human)),
                    human.clone(),
                );
            }
        }
        Ok(crate::transcript::render_transcript(run, &entries, &names))
    }
}

/// Refuses a checkpoint whose state does not hold together (or belongs to another run).
fn checked(checkpoint: &Checkpoint) -> Result<(), OrchestratorError> {
    let damaged = |detail: String| OrchestratorError::DamagedState {
        run: checkpoint.run,
        seq: checkpoint.seq,
        detail,
    };
    if checkpoint.state.run != checkpoint.run {
        return Err(damaged(format!(
            "it holds the state of run {}",
            checkpoint.state.run
        )));
    }
    checkpoint.state.validate().map_err(damaged)
}

/// An approval request as the human asked reads it ([`Orchestrator::inbox`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PendingApproval {
    /// The request (what an answer names).
    pub id: ApprovalId,
    /// The run waiting.
    pub run: Option<RunId>,
    /// The task waiting, by name.
    pub task: Option<String>,
    /// The action (`bank.pay`).
    pub action: String,
    /// Why it is asked: the rules that fired, in words.
    pub reason: Option<String>,
    /// What is proposed (the governed call: action, effect, cost, risk, input, ...).
    pub proposed: serde_json::Value,
    /// The anchor asked, by key.
    pub anchor: String,
    /// Who may answer: the anchor's holders and deputy, by key.
    pub may_answer: Vec<String>,
    /// The answers allowed.
    pub allowed: Vec<aios_governance::ResponseKind>,
    /// Until when; then it is denied or escalated.
    pub expires_at: aios_core::Timestamp,
}

/// One page of the inbox ([`Orchestrator::inbox_page`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct InboxPage {
    /// How many requests wait in all (not only on this page).
    pub total: usize,
    /// The requests on this page, oldest first.
    pub approvals: Vec<PendingApproval>,
}

/// What one [`Orchestrator::tick`] did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TickReport {
    /// Requests that expired and were denied.
    pub expired: Vec<ApprovalId>,
    /// Requests that expired and were asked again of the next anchor: (old, new).
    pub escalated: Vec<(ApprovalId, ApprovalId)>,
    /// The runs resumed because a request they waited on is no longer pending, as they
    /// stand now.
    pub resumed: Vec<RunOutcome>,
    /// Runs that could go on but are driven (leased) elsewhere, or ended meanwhile.
    pub skipped: Vec<RunId>,
    /// Runs that could go on but failed to resume (a damaged state, a governance version not
    /// loaded, a store failure), with why; the sweep went on with the others.
    pub failed: Vec<(RunId, String)>,
}

/// An operator control on one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunControl {
    /// Stop for good.
    Cancel,
    /// Stop until resumed.
    Pause,
    /// Lift a pause applied through operator controls (a human only); then call
    /// [`Orchestrator::resume`].
    Resume,
}
