//! Bootstrap: a validated manifest turned, deterministically, into the governance model, a
//! configured orchestrator builder, memory seeds and an audit record.

use std::collections::BTreeMap;
use std::sync::Arc;

use aios_core::{
    AgentId, AnchorId, AuditEvent, AuditRecord, Connector, CredentialHandle, MemoryId, PathwayId,
    Principal, RoleId, Timestamp,
};
use aios_governance::{
    diff, ActionRequest, ChangeLogEntry, GovernanceModel, Governor, ModelDiff, Policy,
    PolicyContext, PolicyOutcome, ValidationReport,
};
use aios_memory::{Grant, Memory, MemoryError, NewMemory, Provenance, Revision, Scope};
use aios_orchestrator::{
    Agent, Fallback, Orchestrator, OrchestratorBuilder, RetryPolicy, Role, TaskSpec, Workflow,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::load::{ContentHash, Loaded};
use crate::manifest::{ConnectorDecl, FallbackDecl, PhaseStatus, SeedDecl};
use crate::templates::RoleSpec;
use crate::validate::{compose, validate, Report, ValidateOptions};

/// The kind of the [`AuditEvent::Custom`] a bootstrap records.
pub const BOOTSTRAP_EVENT: &str = "workspace_bootstrapped";

/// What a bootstrap records in the audit log (the data of an [`AuditEvent::Custom`] of kind
/// [`BOOTSTRAP_EVENT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRecord {
    /// The workspace's name.
    pub workspace: String,
    /// The manifest's version.
    pub manifest_version: u64,
    /// The manifest's content hash.
    pub hash: ContentHash,
    /// The governance model version bootstrapped.
    pub governance_version: u64,
    /// The digest of every derived id ([`Ids::digest`]).
    pub ids: String,
}

/// Every id the bootstrap derives, by key: all from names and the manifest, none random.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// Role ids (`RoleId::from_name(key)`).
    pub roles: BTreeMap<String, RoleId>,
    /// The agent of each role (`AgentId::from_name(key)`).
    pub agents: BTreeMap<String, AgentId>,
    /// Pathway ids.
    pub pathways: BTreeMap<String, PathwayId>,
    /// Anchor ids.
    pub anchors: BTreeMap<String, AnchorId>,
    /// Memory seed ids (`MemoryId::from_name("<workspace>/seed/<key>")`).
    pub seeds: BTreeMap<String, MemoryId>,
}

impl Ids {
    /// SHA-256 (hex) over every id in key order: equal on every machine for the same
    /// manifest.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (kind, map) in [
            (
                "role",
                self.roles
                    .iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect::<Vec<_>>(),
            ),
            (
                "agent",
                self.agents
                    .iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect(),
            ),
            (
                "pathway",
                self.pathways
                    .iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect(),
            ),
            (
                "anchor",
                self.anchors
                    .iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect(),
            ),
            (
                "seed",
                self.seeds.iter().map(|(k, v)| (k, v.to_string())).collect(),
            ),
        ] {
            for (k, v) in map {
                h.update(format!("{kind}\0{k}\0{v}\n").as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// A memory seed with its derived id.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedPlan {
    /// The record's id.
    pub id: MemoryId,
    /// The seed as written.
    pub decl: SeedDecl,
}

/// The gate of the implementation level: a pathway enabled by a phase that is not entered is
/// denied, with the phase and its status as the reason. A [`Policy`]: pure, it sees only the
/// request's pathway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseGate {
    closed: BTreeMap<PathwayId, (String, String, PhaseStatus)>,
}

impl PhaseGate {
    /// The rule name in fired rules (`policy:implementation:phase-not-entered`).
    pub const RULE: &'static str = "phase-not-entered";

    /// The closed pathways: (pathway key, phase key, phase status).
    pub fn closed(&self) -> impl Iterator<Item = (&str, &str, PhaseStatus)> {
        self.closed
            .values()
            .map(|(p, ph, s)| (p.as_str(), ph.as_str(), *s))
    }

    /// Why `pathway` is closed, if it is.
    pub fn reason(&self, pathway: PathwayId) -> Option<String> {
        self.closed.get(&pathway).map(|(p, phase, status)| {
            format!("pathway `{p}` belongs to phase `{phase}`, which is {status}, not entered")
        })
    }
}

impl Policy for PhaseGate {
    fn name(&self) -> &str {
        "implementation"
    }

    fn evaluate(&self, _req: &ActionRequest, ctx: &PolicyContext<'_>) -> PolicyOutcome {
        match self.reason(ctx.pathway.id) {
            Some(reason) => PolicyOutcome::Deny {
                rule: Self::RULE.into(),
                reason,
            },
            None => PolicyOutcome::Abstain,
        }
    }
}

/// Everything a bootstrap yields, computed without I/O from a valid manifest.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workspace's name.
    pub workspace: String,
    /// The manifest's version.
    pub manifest_version: u64,
    /// The manifest's content hash.
    pub hash: ContentHash,
    /// The governance model.
    pub model: GovernanceModel,
    /// The resolved roles.
    pub roles: Vec<RoleSpec>,
    /// The connectors as declared.
    pub connectors: Vec<ConnectorDecl>,
    /// The workflows, by name.
    pub workflows: BTreeMap<String, Workflow>,
    /// The memory seeds.
    pub seeds: Vec<SeedPlan>,
    /// The memory grants of every role.
    pub grants: Vec<Grant>,
    /// The phase gate.
    pub gate: PhaseGate,
    /// Every derived id.
    pub ids: Ids,
    /// The validation's warnings (errors refuse the plan).
    pub warnings: Report,
}

/// Why a bootstrap could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The manifest has errors.
    #[error("the manifest has errors:\n{0}")]
    Invalid(Report),
    /// The governance model does not compile.
    #[error("the governance model does not compile: {0}")]
    Governance(String),
    /// The host did not register a connector the manifest declares.
    #[error(
        "connector `{0}` is declared in the manifest but the host registered none under that key"
    )]
    MissingConnector(String),
    /// The host registered a connector the manifest does not declare.
    #[error("connector `{0}` is registered by the host but not declared in the manifest")]
    UndeclaredConnector(String),
    /// A host connector declares an operation with another effect class than the manifest.
    #[error("connector `{connector}` operation `{operation}`: the manifest says `{manifest}`, the host's connector says `{host}`")]
    EffectMismatch {
        /// The connector.
        connector: String,
        /// The operation.
        operation: String,
        /// The manifest's effect class.
        manifest: aios_core::EffectClass,
        /// The host connector's.
        host: aios_core::EffectClass,
    },
    /// Memory refused a seed.
    #[error("seeding `{seed}`: {source}")]
    Seed {
        /// The seed's key.
        seed: String,
        /// Why.
        source: MemoryError,
    },
}

/// Validates the manifest and computes the plan; a manifest with an error is refused with
/// the whole report.
pub fn plan(loaded: &Loaded, options: &ValidateOptions) -> Result<Plan, BootstrapError> {
    let report = validate(loaded, options);
    if !report.is_ok() {
        return Err(BootstrapError::Invalid(report));
    }
    let m = &loaded.manifest;
    let composed = compose(m);
    let arch = m.architecture.clone().unwrap_or_default();
    let ws = m.workspace.name.clone();
    let mut ids = Ids::default();
    for r in &composed.roles {
        ids.roles.insert(r.key.clone(), RoleId::from_name(&r.key));
        ids.agents.insert(r.key.clone(), AgentId::from_name(&r.key));
    }
    for p in &composed.model.pathways {
        ids.pathways
            .insert(p.key.clone(), PathwayId::from_name(&p.key));
    }
    for a in &composed.model.anchors {
        ids.anchors
            .insert(a.key.clone(), AnchorId::from_name(&a.key));
    }
    let seeds: Vec<SeedPlan> = arch
        .memory
        .as_ref()
        .map(|l| l.seeds.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|decl| SeedPlan {
            id: seed_id(&ws, &decl.key),
            decl,
        })
        .collect();
    for s in &seeds {
        ids.seeds.insert(s.decl.key.clone(), s.id);
    }
    let mut grants = Vec::new();
    for r in &composed.roles {
        for g in &r.grants {
            // validated above: every scope parses
            if let Ok(scope) = Scope::parse(&g.scope) {
                let mut grant = Grant::role(RoleId::from_name(&r.key), scope, g.access);
                grant.tiers = g.tiers.clone();
                grants.push(grant);
            }
        }
    }
    let workflows = arch
        .workflows
        .iter()
        .map(|(name, wf)| {
            let mut w = Workflow::new(name.clone());
            for t in &wf.tasks {
                w = w.task(
                    TaskSpec::new(t.name.clone(), t.role.as_str(), t.input.clone())
                        .after(t.after.clone()),
                );
            }
            (name.clone(), w)
        })
        .collect();
    let mut gate = PhaseGate::default();
    for phase in m.implementation.iter().flat_map(|i| &i.phases) {
        if phase.status.is_entered() {
            continue;
        }
        for p in &phase.enables.pathways {
            gate.closed
                .entry(PathwayId::from_name(p))
                .or_insert_with(|| (p.clone(), phase.key.clone(), phase.status));
        }
    }
    Ok(Plan {
        workspace: ws,
        manifest_version: m.workspace.version,
        hash: loaded.hash.clone(),
        model: composed.model,
        roles: composed.roles,
        connectors: arch.connectors.clone(),
        workflows,
        seeds,
        grants,
        gate,
        ids,
        warnings: report,
    })
}

/// The id of seed `key` of workspace `workspace`.
pub fn seed_id(workspace: &str, key: &str) -> MemoryId {
    MemoryId::from_name(&format!("{workspace}/seed/{key}"))
}

/// What seeding did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedReport {
    /// Seeds written for the first time.
    pub written: Vec<String>,
    /// Seeds already stored with the same content.
    pub unchanged: Vec<String>,
    /// Seeds whose content changed, stored as a new version.
    pub revised: Vec<String>,
}

fn retry_policy(r: &RoleSpec) -> RetryPolicy {
    let mut p = RetryPolicy::default();
    if let Some(v) = r.retry.max_attempts {
        p.max_attempts = v;
    }
    if let Some(v) = r.retry.base_delay {
        p.base_delay = v.0;
    }
    if let Some(v) = r.retry.max_delay {
        p.max_delay = v.0;
    }
    p.attempt_timeout = r.retry.attempt_timeout.map(|d| d.0);
    p.overall_timeout = r.retry.overall_timeout.map(|d| d.0);
    p
}

impl Plan {
    /// The provenance source of seeds: `workspace:<name>@v<version>#<hash prefix>` ("this
    /// manifest, this version").
    pub fn provenance_source(&self) -> String {
        format!(
            "workspace:{}@v{}#{}",
            self.workspace,
            self.manifest_version,
            self.hash.short()
        )
    }

    /// The decision engine: the model compiled with the [`PhaseGate`].
    pub fn governor(&self) -> Result<Governor, ValidationReport> {
        Governor::builder(self.model.clone())
            .policy(Arc::new(self.gate.clone()))
            .build()
    }

    /// The orchestrator roles, each played by the agent `agent_for` returns for it.
    pub fn roles(&self, agent_for: &mut dyn FnMut(&RoleSpec) -> Arc<dyn Agent>) -> Vec<Role> {
        self.roles
            .iter()
            .map(|r| {
                let mut role = Role::new(r.key.clone(), &r.pathway, agent_for(r))
                    .instructions(r.instructions.clone())
                    .retry(retry_policy(r))
                    .fallback(match r.fallback {
                        FallbackDecl::FailRun => Fallback::FailRun,
                        FallbackDecl::Skip => Fallback::Skip {
                            output: serde_json::Value::Null,
                        },
                        FallbackDecl::Escalate => Fallback::Escalate,
                    })
                    .max_calls(r.max_calls);
                for c in &r.connectors {
                    role = role.connector(c.clone());
                }
                role
            })
            .collect()
    }

    /// A configured orchestrator builder: the governor with the phase gate, every role with
    /// its agent, every declared connector from `connectors` (the host registers them by key;
    /// a declared one missing, or one not declared, is an error) with its first credential
    /// name as the handle the vault resolves. The host adds the vault, models, memory
    /// ([`Plan::memory_options`]), audit log, clock and timer, then builds.
    pub fn builder(
        &self,
        agent_for: &mut dyn FnMut(&RoleSpec) -> Arc<dyn Agent>,
        connectors: &BTreeMap<String, Arc<dyn Connector>>,
    ) -> Result<OrchestratorBuilder, BootstrapError> {
        let governor = self
            .governor()
            .map_err(|r| BootstrapError::Governance(r.to_string()))?;
        for key in connectors.keys() {
            if !self.connectors.iter().any(|c| &c.key == key) {
                return Err(BootstrapError::UndeclaredConnector(key.clone()));
            }
        }
        let mut b = Orchestrator::builder(governor);
        for c in &self.connectors {
            let connector = connectors
                .get(&c.key)
                .ok_or_else(|| BootstrapError::MissingConnector(c.key.clone()))?;
            for (op, effect) in &c.operations {
                if let Some(spec) = connector.descriptor().operation(op) {
                    if spec.effect != *effect {
                        return Err(BootstrapError::EffectMismatch {
                            connector: c.key.clone(),
                            operation: op.clone(),
                            manifest: *effect,
                            host: spec.effect,
                        });
                    }
                }
            }
            b = b.connector(connector.clone());
            if let Some(name) = c.credentials.first() {
                b = b.credential(&c.key, CredentialHandle::new(name.clone()));
            }
        }
        for role in self.roles(agent_for) {
            b = b.role(role);
        }
        Ok(b)
    }

    /// The memory options for the orchestrator: every role's grants, context from `org`
    /// (or the first declared scope).
    pub fn memory_options(&self, context_scope: Scope) -> aios_orchestrator::MemoryOptions {
        aios_orchestrator::MemoryOptions::new(self.grants.clone(), context_scope)
    }

    /// Stores the seeds, idempotently: a seed already stored with the same content is left
    /// alone, one whose content changed gets a new version, provenance naming this manifest
    /// and version.
    pub async fn seed(&self, memory: &Memory) -> Result<SeedReport, BootstrapError> {
        let mut report = SeedReport::default();
        let source = self.provenance_source();
        let provenance = || {
            let mut p = Provenance::by(Principal::System);
            p.source = Some(source.clone());
            p
        };
        for s in &self.seeds {
            let err = |source| BootstrapError::Seed {
                seed: s.decl.key.clone(),
                source,
            };
            match memory.get(s.id).await {
                Ok(latest) if latest.content == s.decl.content => {
                    report.unchanged.push(s.decl.key.clone())
                }
                Ok(_) => {
                    let mut rev = Revision::new(Principal::System).content(s.decl.content.clone());
                    rev.provenance = Some(provenance());
                    memory.revise(s.id, rev).await.map_err(err)?;
                    report.revised.push(s.decl.key.clone());
                }
                Err(MemoryError::NotFound { .. }) => {
                    let scope = Scope::parse(&s.decl.scope).map_err(err)?;
                    let mut new = NewMemory::new(
                        scope,
                        s.decl.tier,
                        s.decl.content.clone(),
                        Principal::System,
                    )
                    .with_id(s.id)
                    .kind(s.decl.kind.clone())
                    .provenance(provenance());
                    if s.decl.pinned {
                        new = new.pinned();
                    }
                    memory.remember(new).await.map_err(err)?;
                    report.written.push(s.decl.key.clone());
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(report)
    }

    /// What the bootstrap records.
    pub fn record(&self) -> BootstrapRecord {
        BootstrapRecord {
            workspace: self.workspace.clone(),
            manifest_version: self.manifest_version,
            hash: self.hash.clone(),
            governance_version: self.model.version,
            ids: self.ids.digest(),
        }
    }

    /// The audit record of the bootstrap, at `at`, by the system.
    pub fn audit_record(&self, at: Timestamp) -> AuditRecord {
        AuditRecord::new(
            Principal::System,
            AuditEvent::Custom {
                kind: BOOTSTRAP_EVENT.into(),
                data: serde_json::to_value(self.record()).unwrap_or(serde_json::Value::Null),
            },
        )
        .at(at)
    }
}

/// A new governance version from a changed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// What changed in the governance model.
    pub diff: ModelDiff,
    /// Pathways the implementation level opened or closed (`pathway `x`: opened (phase `y`
    /// entered)`): the phase gate is a policy beside the model, so its changes are listed here.
    pub gate_changes: Vec<String>,
    /// The new model: the manifest's, at the previous version plus one, with the previous
    /// change log and an entry for this version.
    pub model: GovernanceModel,
}

impl Update {
    /// The new version's decision engine with `gate` (the new plan's [`PhaseGate`]); load it
    /// with [`Orchestrator::load_governance`] (`make_current = true`): new runs start under
    /// it, runs already started stay on their version.
    pub fn governor(&self, gate: &PhaseGate) -> Result<Governor, ValidationReport> {
        Governor::builder(self.model.clone())
            .policy(Arc::new(gate.clone()))
            .build()
    }
}

/// Compares the model and phase gate of a changed manifest (`next`) with those running
/// (`previous`, `previous_gate`). `None` when neither changed (besides version and change
/// log); otherwise version `previous.version + 1` with a change-log entry by `by` saying
/// `summary`.
pub fn update(
    previous: &GovernanceModel,
    previous_gate: &PhaseGate,
    next: &Plan,
    by: &str,
    summary: &str,
) -> Option<Update> {
    let mut model = next.model.clone();
    model.version = previous.version + 1;
    model.changelog = previous.changelog.clone();
    let d = diff(previous, &model);
    let mut gate_changes = Vec::new();
    for (id, (p, phase, status)) in &previous_gate.closed {
        if !next.gate.closed.contains_key(id) {
            gate_changes.push(format!(
                "pathway `{p}`: opened (phase `{phase}` no longer {status})"
            ));
        }
    }
    for (id, (p, phase, status)) in &next.gate.closed {
        if !previous_gate.closed.contains_key(id) {
            gate_changes.push(format!(
                "pathway `{p}`: closed (phase `{phase}` is {status})"
            ));
        }
    }
    if d.is_empty() && gate_changes.is_empty() {
        return None;
    }
    let mut text = format!(
        "{summary} (workspace `{}` v{}, {})",
        next.workspace,
        next.manifest_version,
        next.hash.short()
    );
    if !gate_changes.is_empty() {
        text.push_str(&format!("; {}", gate_changes.join("; ")));
    }
    model.changelog.push(ChangeLogEntry {
        version: model.version,
        summary: text,
        author: Some(by.to_string()),
        date: None,
    });
    let d = diff(previous, &model);
    Some(Update {
        diff: d,
        gate_changes,
        model,
    })
}
