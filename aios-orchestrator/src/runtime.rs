//! The orchestrator: starts, drives, parks, resumes, forks and cancels runs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AnchorId, ApprovalId, AuditEvent, AuditLog, AuditRecord, Clock, Connector,
    ConnectorId, CredentialHandle, CredentialVault, IdGen, InMemoryAuditLog, ManualTimer, Outcome,
    Principal, RunId, Secret, SeededRng, TaskId, Timer,
};
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::checkpoint::{Checkpoint, CheckpointStore, InMemoryCheckpointStore, Lease, WorkerId};
use crate::context::TaskContext;
use crate::error::{AgentError, OrchestratorError};
use crate::gate::{ApprovalState, Gate, Governance, Reservation, Usage};
use crate::graph::{TaskInput, TaskName, TaskSpec, Workflow};
use crate::notify::{
    InMemoryNotifier, Notification, NotificationKind, Notifier, Observer, RunEvent,
};
use crate::reliability::{BreakerPolicy, Breakers, CircuitBreaker};
use crate::role::{Fallback, Role};
use crate::router::ModelRouter;
use crate::state::{JournalEntry, RunState, RunStatus, TaskState, TaskStatus, RUN_STATE_SCHEMA};

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

/// Assembles an [`Orchestrator`].
pub struct OrchestratorBuilder {
    gov: Governance,
    roles: Vec<Role>,
    connectors: Vec<Arc<dyn Connector>>,
    credentials: HashMap<ConnectorId, CredentialHandle>,
    vault: Option<Arc<dyn CredentialVault>>,
    router: Option<ModelRouter>,
    memory: Option<crate::memory::MemoryAccess>,
    audit: Option<Arc<dyn AuditLog>>,
    checkpoints: Option<Arc<dyn CheckpointStore>>,
    clock: Option<Arc<dyn Clock>>,
    timer: Option<Arc<dyn Timer>>,
    notifier: Option<Arc<dyn Notifier>>,
    observers: Vec<Arc<dyn Observer>>,
    config: OrchestratorConfig,
}

impl std::fmt::Debug for OrchestratorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorBuilder")
            .finish_non_exhaustive()
    }
}

impl OrchestratorBuilder {
    pub(crate) fn new(gov: Governance) -> Self {
        Self {
            gov,
            roles: vec![],
            connectors: vec![],
            credentials: HashMap::new(),
            vault: None,
            router: None,
            memory: None,
            audit: None,
            checkpoints: None,
            clock: None,
            timer: None,
            notifier: None,
            observers: vec![],
            config: OrchestratorConfig::default(),
        }
    }

    pub(crate) fn gov_mut(&mut self) -> &mut Governance {
        &mut self.gov
    }

    /// Registers a role.
    pub fn role(mut self, role: Role) -> Self {
        self.roles.push(role);
        self
    }

    /// Registers a connector.
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connectors.push(connector);
        self
    }

    /// Resolves `handle` in the vault for every call of `connector`.
    pub fn credential(mut self, connector: &str, handle: CredentialHandle) -> Self {
        self.credentials.insert(ConnectorId::new(connector), handle);
        self
    }

    /// Sets the credential vault.
    pub fn vault(mut self, vault: Arc<dyn CredentialVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Sets the model router.
    pub fn models(mut self, router: ModelRouter) -> Self {
        self.router = Some(router);
        self
    }

    /// Sets the audit log (default: in memory).
    pub fn audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Sets the checkpoint store (default: in memory).
    pub fn checkpoints(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// Sets the clock (default: a manual clock; hosts pass `SystemClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Sets the timer (default: a manual timer on the default manual clock).
    pub fn timer(mut self, timer: Arc<dyn Timer>) -> Self {
        self.timer = Some(timer);
        self
    }

    /// Sets the notifier (default: in memory).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Adds an observer of run events.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: OrchestratorConfig) -> Self {
        self.config = config;
        self
    }

    pub(crate) fn set_memory(&mut self, memory: crate::memory::MemoryAccess) {
        self.memory = Some(memory);
    }

    /// Checks the set-up and builds the orchestrator.
    ///
    /// Refused ([`BuildError`]), naming what is wrong: a role registered twice; a role or
    /// its pathway missing from the governance model, or a pathway delegating to another
    /// role; a connector a role may use that is not registered; a credential for an
    /// unregistered connector or without a vault; a clock without a timer or a timer without
    /// a clock (give both, or neither for the manual pair tests use).
    pub fn build(self) -> Result<Orchestrator, crate::error::BuildError> {
        use crate::error::BuildError;
        self.check()?;
        let (clock, timer): (Arc<dyn Clock>, Arc<dyn Timer>) = match (self.clock, self.timer) {
            (Some(c), Some(t)) => (c, t),
            (Some(_), None) => {
                return Err(BuildError::ClockWithoutTimer(
                    "a clock is set without a timer: set `.timer(..)` too (`TokioTimer` with \
                     a system clock; the `ManualTimer` sharing a `ManualClock` in tests)"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(BuildError::ClockWithoutTimer(
                    "a timer is set without its clock: set `.clock(..)` too (the clock the \
                     timer sleeps by)"
                        .into(),
                ))
            }
            (None, None) => {
                let timer = ManualTimer::default();
                (Arc::new(timer.clock().clone()), Arc::new(timer))
            }
        };
        let ids = IdGen::with_clock(clock.clone(), self.config.seed);
        let breakers = Breakers::new(self.config.breakers, clock.clone());
        let audit: Arc<dyn AuditLog> = self
            .audit
            .unwrap_or_else(|| Arc::new(InMemoryAuditLog::new()));
        let mut gov = self.gov;
        gov.finish(
            clock.clone(),
            audit.clone(),
            IdGen::with_clock(clock.clone(), self.config.seed ^ 0xA11C_E5ED),
        );
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                gov,
                agents: self.roles.iter().map(|r| (r.id, r.agent_id())).collect(),
                roles: self
                    .roles
                    .into_iter()
                    .map(|r| (r.id, Arc::new(r)))
                    .collect(),
                connectors: self
                    .connectors
                    .into_iter()
                    .map(|c| (c.descriptor().id.clone(), c))
                    .collect(),
                credentials: self.credentials,
                vault: self.vault,
                router: self.router.unwrap_or_else(|| ModelRouter::new(vec![])),
                memory: self.memory,
                audit,
                checkpoints: self
                    .checkpoints
                    .unwrap_or_else(|| Arc::new(InMemoryCheckpointStore::new())),
                clock,
                timer,
                ids,
                notifier: self
                    .notifier
                    .unwrap_or_else(|| Arc::new(InMemoryNotifier::new())),
                observers: self.observers,
                breakers,
                config: self.config,
                controls: Mutex::new(HashMap::new()),
                active: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    /// The set-up checks of [`OrchestratorBuilder::build`] that need no clock.
    fn check(&self) -> Result<(), crate::error::BuildError> {
        use crate::error::BuildError;
        let governor = self.gov.current();
        let model = governor.model();
        let keys = |it: &mut dyn Iterator<Item = &str>| {
            let v: Vec<String> = it.map(|k| format!("`{k}`")).collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut seen = std::collections::HashSet::new();
        for role in &self.roles {
            if !seen.insert(role.name.as_str()) {
                return Err(BuildError::DuplicateRole {
                    role: role.name.clone(),
                });
            }
            if !model.roles.iter().any(|r| r.key == role.name) {
                return Err(BuildError::UnknownRole {
                    role: role.name.clone(),
                    known: keys(&mut model.roles.iter().map(|r| r.key.as_str())),
                });
            }
            let keys_of_role =
                std::iter::once(&role.pathway_key).chain(role.pathways.iter().map(|(_, k)| k));
            for key in keys_of_role {
                let Some(pathway) = model.pathways.iter().find(|p| &p.key == key) else {
                    return Err(BuildError::UnknownPathway {
                        role: role.name.clone(),
                        pathway: key.clone(),
                        known: keys(&mut model.pathways.iter().map(|p| p.key.as_str())),
                    });
                };
                if pathway.delegate.as_deref() != Some(role.name.as_str()) {
                    return Err(BuildError::NotDelegate {
                        role: role.name.clone(),
                        pathway: pathway.key.clone(),
                        delegate: pathway.delegate.clone().unwrap_or_default(),
                    });
                }
            }
            for c in &role.connectors {
                if !self.connectors.iter().any(|k| &k.descriptor().id == c) {
                    return Err(BuildError::UnknownConnector {
                        role: role.name.clone(),
                        connector: c.to_string(),
                    });
                }
            }
        }
        for connector in self.credentials.keys() {
            if !self
                .connectors
                .iter()
                .any(|k| &k.descriptor().id == connector)
            {
                return Err(BuildError::Credential {
                    connector: connector.to_string(),
                    problem: "which is not registered".into(),
                });
            }
            if self.vault.is_none() {
                return Err(BuildError::Credential {
                    connector: connector.to_string(),
                    problem: "but no vault is set to resolve it (`.vault(..)`)".into(),
                });
            }
        }
        Ok(())
    }
}

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
    lease: Mutex<Lease>,
    state: Mutex<RunState>,
    saved_seq: AtomicU64,
    unsaved: AtomicU32,
    save_lock: futures::lock::Mutex<()>,
    fatal: Mutex<Option<OrchestratorError>>,
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
        let msg = err.to_string();
        let mut f = self.fatal.lock();
        if f.is_none() {
            *f = Some(err);
        }
        AgentError::Fatal(msg)
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
            return Err(AgentError::Failed(format!(
                "spawned task `{}` names an unregistered role",
                spec.name
            )));
        }
        let mut st = self.state.lock();
        if st.tasks.iter().any(|t| t.spec.name == spec.name) {
            return Err(AgentError::Failed(format!(
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
                    return Err(AgentError::Failed(format!(
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
    ) -> Result<Option<Secret>, AgentError> {
        let (Some(vault), Some(handle)) = (&self.o.vault, self.o.credentials.get(connector)) else {
            return Ok(None);
        };
        vault
            .get(handle)
            .await
            .map(Some)
            .map_err(|e| AgentError::Connector(format!("credential for `{connector}`: {e}")))
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
            (Err(e), _) | (_, Err(e)) => return Err(self.fail(OrchestratorError::Approval(e))),
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
        self.request_approval_of(role, agent, task, seq, ask, &call.action, proposed)
            .await
    }

    /// Asks for approval of `action` (call `seq` of `task`), described to the human by
    /// `proposed`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request_approval_of(
        &self,
        role: &Role,
        agent: AgentId,
        task: TaskId,
        seq: u32,
        ask: &crate::gate::ApprovalAsk,
        action: &str,
        proposed: serde_json::Value,
    ) -> Result<(ApprovalId, bool), AgentError> {
        let at = crate::gate::CallSite {
            run: self.run,
            task,
            seq,
            agent,
            pathway: role.pathway_of(action).0,
        };
        self.o
            .gov
            .request_approval(&self.governor, at, ask, action, proposed)
            .await
            .map_err(|e| self.fail(OrchestratorError::Approval(e)))
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
            .map_err(|e| self.fail(OrchestratorError::Approval(e)))
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

    async fn save(&self) -> Result<(), OrchestratorError> {
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
        let span =
            tracing::info_span!("aios.task", run = %self.run, task = %name, role = %role.name);
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

    async fn drive(&self, resumed: bool) -> Result<RunOutcome, OrchestratorError> {
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
            let Some((i, task, result)) = running.next().await else {
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
                                if self.escalate(anchor, &name, &reason).await.is_err() {
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
            if self.audit(Principal::System, event).await.is_err() {
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
            let last = running.is_empty() && (ready.is_empty() || failure.is_some());
            if !last && self.step(false).await.is_err() {
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

    /// Starts `workflow` as a new run and drives it until it completes, fails or parks.
    pub async fn start(&self, workflow: Workflow) -> Result<RunOutcome, OrchestratorError> {
        let deps = workflow.validate()?;
        for t in &workflow.tasks {
            if !self.inner.roles.contains_key(&t.role) {
                return Err(OrchestratorError::UnknownRole {
                    task: t.name.to_string(),
                    role: t.role,
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
        let driver = self.driver(governor, lease, state, 0);
        if self.inner.config.checkpoints != CheckpointMode::OnExit {
            // the run exists durably before its first task, so a crash at any point can resume
            driver.save().await?;
        }
        driver
            .drive(false)
            .instrument(tracing::info_span!("aios.run", run = %run))
            .await
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

    async fn resume_leased(
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
        let driver = self.driver(governor, lease, state, checkpoint.seq);
        driver
            .drive(true)
            .instrument(tracing::info_span!("aios.run", run = %run, resumed = true))
            .await
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
            .map_err(OrchestratorError::Approval)
    }

    /// The approval requests waiting for a human, as a human reads them, oldest first: the
    /// run and task (by name), the action, why it is asked, what is proposed, which anchor
    /// is asked and who may answer for it (by their keys in the governance model), the
    /// answers allowed and the deadline.
    pub async fn inbox(&self) -> Result<Vec<PendingApproval>, OrchestratorError> {
        let requests = self.pending_approvals().await?;
        let governor = self.inner.gov.current();
        let model = governor.model();
        let mut states: HashMap<RunId, Option<RunState>> = HashMap::new();
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
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
                action: r.action.clone(),
                reason: r.reason.clone(),
                proposed: r.proposed.clone(),
                anchor: anchor
                    .map(|a| a.key.clone())
                    .unwrap_or_else(|| r.anchor.to_string()),
                may_answer: anchor
                    .map(|a| a.holders.iter().chain(a.deputy.iter()).cloned().collect())
                    .unwrap_or_default(),
                allowed: r.allowed.clone(),
                expires_at: r.expires_at,
            });
        }
        Ok(out)
    }

    /// Records `by`'s decision on `approval` and resumes the run waiting for it, which
    /// continues exactly the parked call: approved, it runs as proposed; edited, it runs as
    /// edited; rejected, the agent gets [`AgentError::Rejected`] and the role's fallback
    /// applies. The decision is refused (and nothing changes) if `by` is not a holder or
    /// deputy of the anchor, is the requester, or the request is unknown, already decided,
    /// used or expired.
    pub async fn submit_approval(
        &self,
        approval: ApprovalId,
        by: aios_core::HumanId,
        response: aios_governance::ApprovalResponse,
    ) -> Result<RunOutcome, OrchestratorError> {
        let run = self
            .inner
            .gov
            .submit(approval, by, response)
            .await
            .map_err(OrchestratorError::Approval)?
            .ok_or(OrchestratorError::UnknownApproval(approval))?;
        self.resume(run).await
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
            .map_err(OrchestratorError::Approval)?;
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
