//! The driver: one run while a worker drives it (ready tasks with bounded concurrency inside
//! one future, checkpoints, leases, the governed calls' plumbing).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use aios_core::{
    AgentId, AnchorId, ApprovalId, AuditEvent, AuditRecord, Connector, ConnectorId, Outcome,
    Principal, RunId, Secret, SeededRng, TaskId, Timer,
};
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::checkpoint::{Checkpoint, Lease};
use crate::context::TaskContext;
use crate::error::{AgentError, OrchestratorError};
use crate::gate::{ApprovalState, Gate, Reservation, Usage};
use crate::graph::{TaskInput, TaskName, TaskSpec};
use crate::notify::{Notification, NotificationKind, RunEvent};
use crate::reliability::CircuitBreaker;
use crate::role::{Fallback, Role};
use crate::router::ModelRouter;
use crate::state::{JournalEntry, RunState, RunStatus, TaskState, TaskStatus};

use crate::runtime::{CheckpointMode, Inner, RunOutcome};

enum TaskResult {
    Completed(serde_json::Value),
    /// An operator control stopped the task before its call; the run stops in this status.
    Halted(RunStatus),
    Parked(ApprovalId),
    Failed(String),
    Fatal,
}

/// Marks a run as driven by this orchestrator while it lives.
struct Active<'a> {
    set: &'a Mutex<std::collections::HashSet<RunId>>,
    run: RunId,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.run);
    }
}

/// The state of one run while a worker drives it.
pub(crate) struct Driver<'o> {
    pub(crate) o: &'o Inner,
    pub(crate) run: RunId,
    pub(crate) governor: crate::gate::PinnedGovernor,
    pub(crate) lease: Mutex<Lease>,
    pub(crate) state: Mutex<RunState>,
    pub(crate) saved_seq: AtomicU64,
    pub(crate) unsaved: AtomicU32,
    pub(crate) save_lock: futures::lock::Mutex<()>,
    pub(crate) fatal: Mutex<Option<OrchestratorError>>,
}

impl<'o> Driver<'o> {
    pub(crate) fn journal_entry(&self, index: usize, seq: u32) -> Option<JournalEntry> {
        let st = self.state.lock();
        st.tasks
            .get(index)
            .and_then(|t| t.journal.get(seq as usize))
            .cloned()
    }

    pub(crate) fn fail(&self, err: OrchestratorError) -> AgentError {
        let shared = Box::new(err.clone());
        let mut f = self.fatal.lock();
        if f.is_none() {
            *f = Some(err);
        }
        AgentError::Fatal(shared)
    }

    pub(crate) fn non_determinism(&self, task: &TaskName, seq: u32, detail: String) -> AgentError {
        self.fail(OrchestratorError::NonDeterminism {
            run: self.run,
            task: task.to_string(),
            seq,
            detail,
        })
    }

    pub(crate) async fn record(
        &self,
        index: usize,
        entry: JournalEntry,
        force: bool,
    ) -> Result<(), AgentError> {
        {
            let mut st = self.state.lock();
            let Some(task) = st.tasks.get_mut(index) else {
                return Err(self.fail(OrchestratorError::InvalidWorkflow {
                    workflow: String::new(),
                    detail: format!("task index {index} out of range"),
                }));
            };
            let seq = entry.seq as usize;
            if seq < task.journal.len() {
                task.journal[seq] = entry;
            } else {
                task.journal.push(entry);
            }
        }
        self.step(force).await
    }

    pub(crate) fn add_task(&self, parent: usize, spec: TaskSpec) -> Result<usize, AgentError> {
        if !self.o.roles.contains_key(&spec.role) {
            return Err(AgentError::failed(format!(
                "spawned task `{}` names an unregistered role",
                spec.name
            )));
        }
        let mut st = self.state.lock();
        if st.tasks.iter().any(|t| t.spec.name == spec.name) {
            return Err(AgentError::failed(format!(
                "task `{}` already exists",
                spec.name
            )));
        }
        let mut deps = vec![parent];
        for d in &spec.after {
            match st.tasks.iter().position(|t| &t.spec.name == d) {
                Some(i) if !deps.contains(&i) => deps.push(i),
                Some(_) => {}
                None => {
                    return Err(AgentError::failed(format!(
                        "spawned task `{}` waits for unknown task `{d}`",
                        spec.name
                    )))
                }
            }
        }
        let index = st.tasks.len();
        st.tasks.push(TaskState {
            id: self.o.ids.next(),
            spec,
            deps,
            status: TaskStatus::Pending,
            output: None,
            error: None,
            journal: vec![],
        });
        Ok(index)
    }

    pub(crate) fn connector(&self, id: &ConnectorId) -> Option<&Arc<dyn Connector>> {
        self.o.connectors.get(id)
    }

    pub(crate) fn breaker(&self, name: &str) -> CircuitBreaker {
        self.o.breakers.get(name)
    }

    pub(crate) fn router(&self) -> &ModelRouter {
        &self.o.router
    }

    pub(crate) fn telemetry(&self) -> crate::telemetry::TelemetryConfig {
        self.o.telemetry
    }

    pub(crate) fn scheduler(&self) -> Option<&crate::scheduler::ModelScheduler> {
        self.o.scheduler.as_ref()
    }

    pub(crate) fn timer(&self) -> &dyn Timer {
        self.o.timer.as_ref()
    }

    pub(crate) fn memory(&self) -> Option<&crate::memory::MemoryAccess> {
        self.o.memory.as_ref()
    }

    /// A jitter generator seeded by the orchestrator seed, the run and the call: the same on
    /// every replay.
    pub(crate) fn rng(&self, salt: u32) -> SeededRng {
        let run = self.run.as_uuid().as_u128();
        SeededRng::new(
            self.o.config.seed
                ^ (run as u64)
                ^ ((run >> 64) as u64)
                ^ u64::from(salt).rotate_left(32),
        )
    }

    pub(crate) async fn credential(
        &self,
        connector: &ConnectorId,
        operation: &str,
    ) -> Result<Option<Secret>, AgentError> {
        let (Some(vault), Some(handle)) = (&self.o.vault, self.o.credentials.get(connector)) else {
            return Ok(None);
        };
        vault.get(handle).await.map(Some).map_err(|e| {
            AgentError::Connector(Box::new(crate::error::ConnectorFailure {
                connector: connector.clone(),
                operation: operation.to_string(),
                detail: format!("has no usable credential: {e}"),
                error: None,
            }))
        })
    }

    pub(crate) fn emit(&self, event: RunEvent) {
        for o in &self.o.observers {
            o.on_event(&event);
        }
    }

    pub(crate) async fn audit(
        &self,
        actor: Principal,
        event: AuditEvent,
    ) -> Result<(), AgentError> {
        crate::telemetry::mirror(&event);
        let record = AuditRecord {
            at: self.o.clock.now(),
            actor,
            event,
        };
        self.o
            .audit
            .append(record)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(OrchestratorError::Store(e)))
    }

    pub(crate) async fn notify(
        &self,
        anchor: AnchorId,
        kind: NotificationKind,
        task: Option<&TaskName>,
        approval: Option<ApprovalId>,
        message: String,
    ) {
        self.o
            .notifier
            .notify(Notification {
                anchor,
                kind,
                run: self.run,
                task: task.cloned(),
                approval,
                message,
            })
            .await;
    }

    pub(crate) async fn escalate(
        &self,
        anchor: AnchorId,
        task: &TaskName,
        reason: &str,
    ) -> Result<(), AgentError> {
        self.audit(
            Principal::System,
            AuditEvent::Escalated {
                run: Some(self.run),
                anchor,
                reason: reason.to_string(),
            },
        )
        .await?;
        self.notify(
            anchor,
            NotificationKind::Escalation,
            Some(task),
            None,
            reason.to_string(),
        )
        .await;
        Ok(())
    }

    pub(crate) fn accountable(&self, role: &Role) -> Option<AnchorId> {
        self.governor.accountable(role.pathway)
    }

    /// The anchor accountable for `action` of `role` (its pathway's).
    pub(crate) fn accountable_for(&self, role: &Role, action: &str) -> Option<AnchorId> {
        self.governor.accountable(role.pathway_of(action).0)
    }

    /// Decides `call` under the run's pinned governance version; the decision is audited.
    pub(crate) async fn decide(
        &self,
        role: &Role,
        agent: AgentId,
        call: &crate::governed::GovernedCall,
    ) -> Result<Gate, AgentError> {
        let (gate, event) = self
            .governor
            .decide(&self.o.gov, self.run, role, agent, call);
        self.audit(Principal::Agent(agent), event).await?;
        Ok(gate)
    }

    /// Whether operator controls are consulted.
    pub(crate) fn has_controls(&self) -> bool {
        self.o.gov.controls.is_some()
    }

    /// The name of `anchor` in the run's governance version (its id if unknown).
    pub(crate) fn anchor_name(&self, anchor: AnchorId) -> String {
        self.governor
            .model()
            .anchors
            .iter()
            .find(|a| AnchorId::from_name(&a.key) == anchor)
            .map(|a| a.key.clone())
            .unwrap_or_else(|| anchor.to_string())
    }

    /// Tells `anchor` (its holders and deputy) that approval `approval` timed out and the
    /// call was denied.
    pub(crate) async fn timed_out(&self, task: &TaskName, anchor: AnchorId, approval: ApprovalId) {
        self.notify(
            anchor,
            NotificationKind::ApprovalTimedOut,
            Some(task),
            Some(approval),
            "nobody answered before the deadline; the call was denied".to_string(),
        )
        .await;
    }

    /// Tells both anchors that approval `from` timed out and was escalated to `to`.
    pub(crate) async fn escalated_approval(
        &self,
        task: &TaskName,
        from: ApprovalId,
        to: ApprovalId,
    ) -> Result<(), AgentError> {
        let (old, new) = match (
            self.o.gov.approval(from).await,
            self.o.gov.approval(to).await,
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return Err(self.fail(OrchestratorError::approval(self.governor.governor(), e)))
            }
        };
        self.notify(
            old.anchor,
            NotificationKind::ApprovalTimedOut,
            Some(task),
            Some(from),
            format!(
                "`{}` was not answered before its deadline; it went to anchor `{}`",
                old.action,
                self.anchor_name(new.anchor)
            ),
        )
        .await;
        self.notify(
            new.anchor,
            NotificationKind::ApprovalNeeded,
            Some(task),
            Some(to),
            format!(
                "`{}` needs approval (escalated: anchor `{}` did not answer in time)",
                new.action,
                self.anchor_name(old.anchor)
            ),
        )
        .await;
        Ok(())
    }

    pub(crate) async fn reserve(
        &self,
        role: &Role,
        agent: AgentId,
        amount: Usage,
        key: &aios_core::IdempotencyKey,
        repeat_spends: bool,
    ) -> Result<Result<Reservation, String>, AgentError> {
        self.o
            .gov
            .reserve(self.run, role.id, agent, amount, key, repeat_spends)
            .await
            .map_err(|e| self.fail(OrchestratorError::Store(e)))
    }

    pub(crate) async fn commit(
        &self,
        reservation: Reservation,
        actual: Usage,
    ) -> Result<(), AgentError> {
        // budget alerts are appended to the audit log by the ledger itself
        self.o
            .gov
            .commit(reservation, actual)
            .await
            .map_err(|e| match e {
                // the reservation was released by a worker that took the run over
                aios_core::StoreError::Conflict { detail } => {
                    self.fail(OrchestratorError::LeaseLost {
                        run: self.run,
                        detail,
                    })
                }
                e => self.fail(OrchestratorError::Store(e)),
            })
    }

    pub(crate) async fn release(&self, reservation: Reservation) {
        self.o.gov.release(reservation).await;
    }

    /// Asks for approval of `call` and returns the request.
    pub(crate) async fn request_approval(
        &self,
        role: &Role,
        agent: AgentId,
        task: TaskId,
        seq: u32,
        ask: &crate::gate::ApprovalAsk,
        call: &crate::governed::GovernedCall,
    ) -> Result<(ApprovalId, bool), AgentError> {
        let proposed = serde_json::to_value(call).map_err(|e| {
            self.fail(OrchestratorError::InvalidWorkflow {
                workflow: String::new(),
                detail: format!("the call `{}` cannot be proposed: {e}", call.action),
            })
        })?;
        let at = self.call_site(role, agent, task, seq, &call.action);
        self.request_approval_of(at, ask, &call.action, proposed)
            .await
    }

    /// Where call `seq` of `task` is made, by `agent` in `role`, for `action`.
    pub(crate) fn call_site(
        &self,
        role: &Role,
        agent: AgentId,
        task: TaskId,
        seq: u32,
        action: &str,
    ) -> crate::gate::CallSite {
        crate::gate::CallSite {
            run: self.run,
            task,
            seq,
            agent,
            pathway: role.pathway_of(action).0,
        }
    }

    /// Asks for approval of `action` (made `at`), described to the human by `proposed`.
    pub(crate) async fn request_approval_of(
        &self,
        at: crate::gate::CallSite,
        ask: &crate::gate::ApprovalAsk,
        action: &str,
        proposed: serde_json::Value,
    ) -> Result<(ApprovalId, bool), AgentError> {
        self.o
            .gov
            .request_approval(&self.governor, at, ask, action, proposed)
            .await
            .map_err(|e| self.fail(OrchestratorError::approval(self.governor.governor(), e)))
    }

    pub(crate) async fn approval_state(
        &self,
        approval: ApprovalId,
        agent: AgentId,
    ) -> Result<ApprovalState, AgentError> {
        self.o
            .gov
            .approval_state(approval, agent, self.run)
            .await
            .map_err(|e| self.fail(OrchestratorError::approval(self.governor.governor(), e)))
    }

    async fn step(&self, force: bool) -> Result<(), AgentError> {
        let unsaved = self.unsaved.fetch_add(1, Ordering::Relaxed) + 1;
        let due = force
            || match self.o.config.checkpoints {
                CheckpointMode::EveryStep => true,
                CheckpointMode::Batched(n) => unsaved >= n.max(1),
                CheckpointMode::OnExit => false,
            };
        if due {
            self.save().await.map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    pub(crate) async fn save(&self) -> Result<(), OrchestratorError> {
        let _guard = self.save_lock.lock().await;
        let now = self.o.clock.now();
        let renew = {
            let lease = self.lease.lock();
            let half = chrono::Duration::from_std(self.o.config.lease_ttl / 2).unwrap_or_default();
            now + half >= lease.expires_at
        };
        if renew {
            let current = self.lease.lock().clone();
            let fresh = self
                .o
                .checkpoints
                .renew(&current, now, self.o.config.lease_ttl)
                .await
                .map_err(|e| OrchestratorError::LeaseLost {
                    run: self.run,
                    detail: e.to_string(),
                })?;
            *self.lease.lock() = fresh;
        }
        let seq = self.saved_seq.load(Ordering::Relaxed) + 1;
        let checkpoint = Checkpoint {
            run: self.run,
            seq,
            at: now,
            state: self.state.lock().clone(),
        };
        let lease = self.lease.lock().clone();
        match self.o.checkpoints.save(&lease, &checkpoint).await {
            Ok(()) => {}
            Err(
                e @ (aios_core::StoreError::Fenced { .. } | aios_core::StoreError::Conflict { .. }),
            ) => {
                return Err(OrchestratorError::LeaseLost {
                    run: self.run,
                    detail: e.to_string(),
                })
            }
            Err(e) => return Err(OrchestratorError::Store(e)),
        }
        self.saved_seq.store(seq, Ordering::Relaxed);
        self.unsaved.store(0, Ordering::Relaxed);
        self.emit(RunEvent::CheckpointSaved { run: self.run, seq });
        Ok(())
    }

    async fn run_task(&self, index: usize) -> (usize, TaskId, TaskResult) {
        let (task_id, name, role_id, input) = {
            let st = self.state.lock();
            let t = &st.tasks[index];
            let deps = t
                .deps
                .iter()
                .filter_map(|&d| {
                    st.tasks
                        .get(d)
                        .map(|x| (x.spec.name.clone(), x.output.clone().unwrap_or_default()))
                })
                .collect();
            (
                t.id,
                t.spec.name.clone(),
                t.spec.role,
                TaskInput {
                    input: t.spec.input.clone(),
                    deps,
                },
            )
        };
        let Some(role) = self.o.roles.get(&role_id).cloned() else {
            return (
                index,
                task_id,
                TaskResult::Failed(format!(
                    "task `{}` names a role that is not registered",
                    name
                )),
            );
        };
        let agent = self
            .o
            .agents
            .get(&role.id)
            .copied()
            .unwrap_or_else(|| role.agent_id());
        let started = AuditEvent::TaskStarted {
            run: self.run,
            task: task_id,
            role: role.id,
            agent,
        };
        if self.audit(Principal::Agent(agent), started).await.is_err() {
            return (index, task_id, TaskResult::Fatal);
        }
        self.emit(RunEvent::TaskStarted {
            run: self.run,
            task: name.clone(),
        });
        let mut ctx = TaskContext {
            driver: self,
            index,
            name: name.clone(),
            task_id,
            role: role.clone(),
            agent,
            seq: 0,
            parked: None,
        };
        let span = crate::telemetry::task_span(self.run, &name, &role.name, agent);
        let result = role.agent.run(&mut ctx, input).instrument(span).await;
        if self.fatal.lock().is_some() {
            return (index, task_id, TaskResult::Fatal);
        }
        let result = match (result, ctx.parked) {
            // parked is the task's state, whatever the agent made of the error
            (_, Some(approval)) => TaskResult::Parked(approval),
            (result, None) => match result {
                Ok(output) => TaskResult::Completed(output),
                Err(AgentError::Parked { approval }) => TaskResult::Parked(approval),
                Err(AgentError::Paused { .. }) => TaskResult::Halted(RunStatus::Paused),
                Err(AgentError::Stopped { .. }) => TaskResult::Halted(RunStatus::Cancelled),
                Err(AgentError::Fatal(_)) => TaskResult::Fatal,
                Err(e) => TaskResult::Failed(e.to_string()),
            },
        };
        (index, task_id, result)
    }

    /// Drives the run: its ready tasks, up to the configured concurrency, until it ends,
    /// parks or is stopped.
    ///
    /// The tasks in flight are polled whenever the driver awaits anything of its own (the
    /// audit record of a finished task, a checkpoint, an escalation; see [`alongside`]): a
    /// task may hold the run's save lock, or a store's pooled connection, that the driver's
    /// own call waits for.
    pub(crate) async fn drive(&self, resumed: bool) -> Result<RunOutcome, OrchestratorError> {
        self.o.active.lock().insert(self.run);
        let _active = Active {
            set: &self.o.active,
            run: self.run,
        };
        self.emit(RunEvent::RunStarted {
            run: self.run,
            resumed,
        });
        let (mut remaining, mut dependents, mut ready) = {
            let st = self.state.lock();
            let n = st.tasks.len();
            let mut remaining = vec![0usize; n];
            let mut dependents = vec![Vec::new(); n];
            for (i, t) in st.tasks.iter().enumerate() {
                for &d in &t.deps {
                    dependents[d].push(i);
                    if st.tasks[d].status != TaskStatus::Completed {
                        remaining[i] += 1;
                    }
                }
            }
            let ready: VecDeque<usize> = (0..n)
                .filter(|&i| remaining[i] == 0 && st.tasks[i].status == TaskStatus::Pending)
                .collect();
            (remaining, dependents, ready)
        };
        let concurrency = self.o.config.concurrency.max(1);
        let mut running = FuturesUnordered::new();
        // tasks that finished while the driver awaited something of its own
        let mut finished = VecDeque::new();
        let mut parked: Vec<ApprovalId> = vec![];
        let mut failure: Option<String> = None;
        let mut stopped: Option<RunStatus> = None;
        loop {
            let control = {
                let mut controls = self.o.controls.lock();
                if controls.is_empty() {
                    None
                } else {
                    controls.remove(&self.run)
                }
            };
            if let Some(control) = control {
                stopped = Some(control);
                break;
            }
            while failure.is_none() && running.len() < concurrency {
                let Some(i) = ready.pop_front() else { break };
                self.state.lock().tasks[i].status = TaskStatus::Running;
                running.push(self.run_task(i));
            }
            // what finished while the driver was busy with an earlier result comes first
            let next = match finished.pop_front() {
                Some(done) => Some(done),
                None => running.next().await,
            };
            let Some((i, task, result)) = next else {
                break;
            };
            let result = match result {
                TaskResult::Failed(reason) => {
                    let fallback = {
                        let st = self.state.lock();
                        self.o
                            .roles
                            .get(&st.tasks[i].spec.role)
                            .map(|r| r.fallback.clone())
                            .unwrap_or(Fallback::FailRun)
                    };
                    match fallback {
                        Fallback::Skip { output } => TaskResult::Completed(output),
                        Fallback::Escalate => {
                            let (name, anchor) = {
                                let st = self.state.lock();
                                let name = st.tasks[i].spec.name.clone();
                                let anchor = self
                                    .o
                                    .roles
                                    .get(&st.tasks[i].spec.role)
                                    .and_then(|r| self.accountable(r));
                                (name, anchor)
                            };
                            if let Some(anchor) = anchor {
                                let escalated = alongside(
                                    &mut running,
                                    &mut finished,
                                    self.escalate(anchor, &name, &reason),
                                )
                                .await;
                                if escalated.is_err() {
                                    return Err(self.take_fatal());
                                }
                            }
                            TaskResult::Failed(reason)
                        }
                        Fallback::FailRun => TaskResult::Failed(reason),
                    }
                }
                other => other,
            };
            let (name, outcome, detail) = {
                let mut st = self.state.lock();
                let name = st.tasks[i].spec.name.clone();
                match &result {
                    TaskResult::Completed(output) => {
                        st.tasks[i].status = TaskStatus::Completed;
                        st.tasks[i].output = Some(output.clone());
                        // tasks spawned by this one (journaled, so also after a resume): its
                        // dependents wait for them too
                        let children: Vec<usize> = st.tasks[i]
                            .journal
                            .iter()
                            .filter_map(|e| match e.record {
                                crate::state::CallRecord::Spawned { index } => Some(index),
                                _ => None,
                            })
                            .collect();
                        let waiting: Vec<usize> = dependents[i]
                            .iter()
                            .copied()
                            .filter(|k| !children.contains(k))
                            .collect();
                        while remaining.len() < st.tasks.len() {
                            let j = remaining.len();
                            remaining.push(0);
                            dependents.push(Vec::new());
                            for d in st.tasks[j].deps.clone() {
                                if d != i {
                                    dependents[d].push(j);
                                }
                                if d != i && st.tasks[d].status != TaskStatus::Completed {
                                    remaining[j] += 1;
                                }
                            }
                            if remaining[j] == 0 && st.tasks[j].status == TaskStatus::Pending {
                                ready.push_back(j);
                            }
                        }
                        for &j in &children {
                            for &k in &waiting {
                                if !st.tasks[k].deps.contains(&j) {
                                    st.tasks[k].deps.push(j);
                                    dependents[j].push(k);
                                    if st.tasks[j].status != TaskStatus::Completed {
                                        remaining[k] += 1;
                                    }
                                }
                            }
                        }
                        for k in dependents[i].clone() {
                            remaining[k] = remaining[k].saturating_sub(1);
                            if remaining[k] == 0 && st.tasks[k].status == TaskStatus::Pending {
                                ready.push_back(k);
                            }
                        }
                        (name, Outcome::Succeeded, None)
                    }
                    TaskResult::Parked(approval) => {
                        st.tasks[i].status = TaskStatus::Parked;
                        parked.push(*approval);
                        (
                            name,
                            Outcome::Parked,
                            Some(format!("waiting for approval {approval}")),
                        )
                    }
                    TaskResult::Failed(reason) => {
                        st.tasks[i].status = TaskStatus::Failed;
                        st.tasks[i].error = Some(reason.clone());
                        failure.get_or_insert_with(|| format!("task `{name}` failed: {reason}"));
                        (name, Outcome::Failed, Some(reason.clone()))
                    }
                    TaskResult::Halted(status) => {
                        st.tasks[i].status = TaskStatus::Pending;
                        stopped = Some(status.clone());
                        (
                            name,
                            Outcome::Cancelled,
                            Some(format!("halted by an operator control: {status:?}")),
                        )
                    }
                    TaskResult::Fatal => return Err(self.take_fatal()),
                }
            };
            let event = AuditEvent::TaskFinished {
                run: self.run,
                task,
                outcome,
                detail: detail.clone(),
            };
            let audited = alongside(
                &mut running,
                &mut finished,
                self.audit(Principal::System, event),
            )
            .await;
            if audited.is_err() {
                return Err(self.take_fatal());
            }
            self.emit(match (&result, detail) {
                (TaskResult::Parked(a), _) => RunEvent::TaskParked {
                    run: self.run,
                    task: name,
                    approval: *a,
                },
                (TaskResult::Failed(_) | TaskResult::Halted(_), Some(reason)) => {
                    RunEvent::TaskFailed {
                        run: self.run,
                        task: name,
                        reason,
                    }
                }
                _ => RunEvent::TaskCompleted {
                    run: self.run,
                    task: name,
                },
            });
            if stopped.is_some() {
                break;
            }
            // when nothing is left to run, the run's final checkpoint follows at once and
            // records this step too
            let last = running.is_empty()
                && finished.is_empty()
                && (ready.is_empty() || failure.is_some());
            if !last
                && alongside(&mut running, &mut finished, self.step(false))
                    .await
                    .is_err()
            {
                return Err(self.take_fatal());
            }
        }
        drop(running);
        let status = {
            let mut st = self.state.lock();
            let status = if let Some(control) = stopped {
                for t in st
                    .tasks
                    .iter_mut()
                    .filter(|t| t.status == TaskStatus::Running)
                {
                    t.status = TaskStatus::Pending;
                }
                control
            } else if let Some(reason) = failure {
                RunStatus::Failed { reason }
            } else if !parked.is_empty() {
                RunStatus::Parked { approvals: parked }
            } else if st.tasks.iter().all(|t| t.status == TaskStatus::Completed) {
                RunStatus::Completed
            } else {
                RunStatus::Failed {
                    reason: "tasks remain that can never run".to_string(),
                }
            };
            st.status = status.clone();
            status
        };
        let (outcome, detail) = match &status {
            RunStatus::Completed => (Outcome::Succeeded, None),
            RunStatus::Failed { reason } => (Outcome::Failed, Some(reason.clone())),
            RunStatus::Cancelled => (Outcome::Cancelled, None),
            RunStatus::Paused => (Outcome::Parked, Some("paused by an operator".to_string())),
            RunStatus::Parked { approvals } => (
                Outcome::Parked,
                Some(format!("waiting for {} approval(s)", approvals.len())),
            ),
            RunStatus::Running => (Outcome::Parked, None),
        };
        if self
            .audit(
                Principal::System,
                AuditEvent::RunFinished {
                    run: self.run,
                    outcome,
                    detail,
                },
            )
            .await
            .is_err()
        {
            return Err(self.take_fatal());
        }
        self.save().await?;
        if status == RunStatus::Cancelled {
            // a cancelled run holds no budget: release what its calls had reserved
            self.o.gov.release_abandoned(self.run).await?;
        }
        let lease = self.lease.lock().clone();
        self.o.checkpoints.release(&lease).await?;
        self.emit(RunEvent::RunStopped {
            run: self.run,
            status: status.clone(),
        });
        let outputs = self.state.lock().outputs();
        Ok(RunOutcome {
            run: self.run,
            status,
            outputs,
        })
    }

    fn take_fatal(&self) -> OrchestratorError {
        self.fatal
            .lock()
            .take()
            .unwrap_or_else(|| OrchestratorError::LeaseLost {
                run: self.run,
                detail: "the run stopped without a recorded cause".to_string(),
            })
    }
}

/// Awaits `work` while polling `running`, keeping the results of tasks that finish meanwhile
/// in `finished`, in the order they finished.
///
/// A task in flight can hold what `work` waits for: the run's save lock (its checkpoint
/// being written when another task finished), a pooled connection, a slot of the model
/// scheduler. A task that is never polled never lets go, however soon its own store call
/// is answered: awaiting `work` alone would wait forever with every thread idle.
async fn alongside<F, T>(
    running: &mut FuturesUnordered<F>,
    finished: &mut VecDeque<F::Output>,
    work: impl Future<Output = T>,
) -> T
where
    F: Future,
{
    let mut work = std::pin::pin!(work);
    futures::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // polling the tasks may release what `work` waits for; it is woken then
        while let Poll::Ready(Some(done)) = running.poll_next_unpin(cx) {
            finished.push_back(done);
        }
        Poll::Pending
    })
    .await
}
