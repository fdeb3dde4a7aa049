//! The builder: assembles an orchestrator and refuses a set-up that could only fail later.

use std::collections::HashMap;
use std::sync::Arc;

use aios_core::{
    AuditLog, Clock, Connector, ConnectorId, CredentialHandle, CredentialVault, IdGen,
    InMemoryAuditLog, SystemClock, SystemTimer, Timer,
};
use parking_lot::Mutex;

use crate::checkpoint::{CheckpointStore, InMemoryCheckpointStore};
use crate::gate::Governance;
use crate::notify::{InMemoryNotifier, Notifier, Observer};
use crate::reliability::Breakers;
use crate::role::Role;
use crate::router::ModelRouter;
use crate::scheduler::{ModelScheduler, SchedulerConfig};

use crate::runtime::{Inner, Orchestrator, OrchestratorConfig};

/// Assembles an [`Orchestrator`].
pub struct OrchestratorBuilder {
    gov: Governance,
    roles: Vec<Role>,
    connectors: Vec<Arc<dyn Connector>>,
    credentials: HashMap<ConnectorId, CredentialHandle>,
    vault: Option<Arc<dyn CredentialVault>>,
    router: Option<ModelRouter>,
    scheduler: Option<SchedulerConfig>,
    telemetry: crate::telemetry::TelemetryConfig,
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
            scheduler: None,
            telemetry: crate::telemetry::TelemetryConfig::default(),
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

    /// Routes model calls local-first: the local tier, then the cloud tier on failure, an
    /// open breaker or low confidence, each hand-over audited with its reason (see
    /// [`LocalFirst`](crate::LocalFirst)). The same as `.models(routing.router())`.
    pub fn local_first(self, routing: crate::router::LocalFirst) -> Self {
        self.models(routing.router())
    }

    /// Shares every model backend among all agents of the orchestrator through one
    /// [`ModelScheduler`] on the orchestrator's clock and timer: each model attempt waits for
    /// a permit (concurrency, requests and tokens per minute, priorities from
    /// [`Role::model_priority`], fair shares per run and agent), and a rate-limit answer pauses the
    /// backend's queue. Without it (the default) calls go to the backends unqueued.
    ///
    /// ```
    /// use aios_orchestrator::{BackendLimits, Orchestrator, SchedulerConfig};
    /// # let governor = aios_governance::GovernanceModel::from_json(r#"{
    /// #   "version": 1,
    /// #   "charter": { "intent": "count", "final_authority": "owner" },
    /// #   "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }]
    /// # }"#).unwrap().compile().map_err(|r| r.to_string()).unwrap();
    /// let orchestrator = Orchestrator::builder(governor)
    ///     .model_scheduler(SchedulerConfig::new().backend(
    ///         "gpt-x",
    ///         BackendLimits::new().max_concurrent(8).requests_per_minute(600),
    ///     ))
    ///     .build()
    ///     .unwrap();
    /// # let _ = orchestrator;
    /// ```
    pub fn model_scheduler(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = Some(config);
        self
    }

    /// Sets what the `tracing` spans record beyond the defaults (see
    /// [`TelemetryConfig`](crate::TelemetryConfig); default: no prompt or completion
    /// content).
    pub fn telemetry(mut self, config: crate::telemetry::TelemetryConfig) -> Self {
        self.telemetry = config;
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
    /// Refused ([`BuildError`](crate::BuildError)), naming what is wrong: a role registered twice; a role or
    /// its pathway missing from the governance model, or a pathway delegating to another
    /// role; a connector a role may use that is not registered; a credential for an
    /// unregistered connector or without a vault; a clock without a timer or a timer without
    /// a clock (give both, or neither: then real time, [`SystemClock`] with [`SystemTimer`],
    /// so retries back off and approval deadlines pass; tests give a
    /// [`ManualTimer`](aios_core::ManualTimer) and its clock).
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
            // production-safe: real time, under any executor; tests pass a `ManualTimer`
            // and its clock
            (None, None) => (Arc::new(SystemClock), Arc::new(SystemTimer)),
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
                scheduler: self
                    .scheduler
                    .map(|c| ModelScheduler::new(c, clock.clone(), timer.clone())),
                telemetry: self.telemetry,
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
        let mut ids = std::collections::HashSet::new();
        for c in &self.connectors {
            if !ids.insert(c.descriptor().id.clone()) {
                return Err(BuildError::DuplicateConnector {
                    connector: c.descriptor().id.to_string(),
                });
            }
        }
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
