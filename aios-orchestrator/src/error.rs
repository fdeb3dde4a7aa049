//! Errors: what stops a run (`OrchestratorError`) and what an agent's call returns
//! (`AgentError`).

use std::sync::Arc;

use aios_core::{AnchorId, ApprovalId, ConnectorError, ConnectorId, ModelError, RunId, StoreError};
use serde::{Deserialize, Serialize};

use crate::router::RouteStep;

/// What [`OrchestratorBuilder::build`](crate::OrchestratorBuilder::build) refused: a set-up
/// that could only fail later, at the first call, or hang.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two roles with one name: the second would silently replace the first.
    #[error("role `{role}` is registered twice")]
    DuplicateRole {
        /// The role's name.
        role: String,
    },
    /// A registered role is not in the governance model: every call of it would be denied.
    #[error("role `{role}` is not in the governance model (its `roles` are {known})")]
    UnknownRole {
        /// The role's name.
        role: String,
        /// The model's role keys.
        known: String,
    },
    /// A role's pathway is not in the governance model.
    #[error("role `{role}` acts on pathway `{pathway}`, which is not in the governance model (its `pathways` are {known})")]
    UnknownPathway {
        /// The role's name.
        role: String,
        /// The pathway's key.
        pathway: String,
        /// The model's pathway keys.
        known: String,
    },
    /// A role's pathway delegates to another role: every call of it would be denied.
    #[error("role `{role}` acts on pathway `{pathway}`, which delegates to role `{delegate}`")]
    NotDelegate {
        /// The role's name.
        role: String,
        /// The pathway's key.
        pathway: String,
        /// The role the pathway delegates to.
        delegate: String,
    },
    /// Two connectors with one id: the second would silently replace the first.
    #[error("connector `{connector}` is registered twice")]
    DuplicateConnector {
        /// The connector.
        connector: String,
    },
    /// A role may use a connector that is not registered.
    #[error("role `{role}` may use connector `{connector}`, which is not registered")]
    UnknownConnector {
        /// The role's name.
        role: String,
        /// The connector.
        connector: String,
    },
    /// A connector credential was given for a connector that is not registered, or without a
    /// vault to resolve it in.
    #[error("a credential is set for connector `{connector}`, {problem}")]
    Credential {
        /// The connector.
        connector: String,
        /// What is wrong.
        problem: String,
    },
    /// Only one of the clock and the timer was given: a manual timer never fires with a real
    /// clock (the first retry would hang), and a timer on another clock sleeps by the wrong
    /// time.
    #[error("{0}")]
    ClockWithoutTimer(String),
}

/// A failure the caller of the orchestrator must handle. Task failures are not errors: they
/// are in the run's status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// The workflow is malformed.
    #[error("invalid workflow `{workflow}`: {detail}")]
    InvalidWorkflow {
        /// The workflow.
        workflow: String,
        /// What is wrong.
        detail: String,
    },
    /// A task names a role that is not registered.
    #[error("task `{task}` names {named}, which is not registered with the orchestrator (registered: {registered}; a task names a role by `RoleId::from_name(key)`)")]
    UnknownRole {
        /// The task.
        task: String,
        /// The role it names.
        role: aios_core::RoleId,
        /// The role as the error names it: its key when the governance model knows it.
        named: String,
        /// The registered roles, by name.
        registered: String,
    },
    /// No such run.
    #[error("no run {0}")]
    UnknownRun(RunId),
    /// No such approval request, or it belongs to no run.
    #[error("no parked run waits for approval {0}")]
    UnknownApproval(ApprovalId),
    /// The run is pinned to a governance version this orchestrator does not have.
    #[error("run {run} is pinned to governance version {version}, which is not loaded")]
    GovernanceVersionUnavailable {
        /// The run.
        run: RunId,
        /// Its version.
        version: u64,
    },
    /// Another worker holds the run, or took it over: this worker must stop.
    #[error("lease on run {run} lost: {detail}")]
    LeaseLost {
        /// The run.
        run: RunId,
        /// What the store said.
        detail: String,
    },
    /// An operator control was refused (no reason, not a human for a resume) or could not
    /// be stored.
    #[error("operator control refused: {0}")]
    Control(#[source] aios_governance::ControlError),
    /// A stored run state is damaged: it decoded, but does not hold together (a dependency
    /// out of range, a cycle, a journal out of order, another run's id). Nothing was run.
    #[error("checkpoint {seq} of run {run} is damaged: {detail}")]
    DamagedState {
        /// The run.
        run: RunId,
        /// The checkpoint.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// Agent code made a different call on replay than the journal recorded.
    #[error("non-deterministic replay in run {run}, task `{task}`, call {seq}: {detail}")]
    NonDeterminism {
        /// The run.
        run: RunId,
        /// The task.
        task: String,
        /// The call's sequence number.
        seq: u32,
        /// What differed.
        detail: String,
    },
    /// The run cannot be resumed in its status.
    #[error("run {run} cannot be resumed: it is {status}")]
    NotResumable {
        /// The run.
        run: RunId,
        /// Its status.
        status: String,
    },
    /// An approval operation was refused (a forged or used id, an answer from someone who
    /// may not give it, a request of another run) or its store failed.
    #[error("approval refused: {message}")]
    Approval {
        /// What was refused, with anchors, roles and humans named by their keys.
        message: String,
        /// The refusal.
        #[source]
        error: aios_governance::ApprovalError,
    },
    /// A storage port failed; the run stopped and can be resumed.
    #[error("store failed: {0}")]
    Store(#[from] StoreError),
}

/// What an agent's call through its context returns when it cannot proceed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The call waits for a human; propagate it so the runtime can park the task.
    #[error("waiting for approval {approval}")]
    Parked {
        /// The request.
        approval: ApprovalId,
    },
    /// An operator paused the agent, its pathway or the organisation; propagate it: the run
    /// is paused and continues on resume.
    #[error("`{action}` waits: {reason}")]
    Paused {
        /// The action.
        action: String,
        /// The control in force.
        reason: String,
    },
    /// An operator pulled the kill switch; propagate it: the run is cancelled.
    #[error("`{action}` stopped: {reason}")]
    Stopped {
        /// The action.
        action: String,
        /// The control in force.
        reason: String,
    },
    /// Governance refused the action.
    #[error("`{action}` denied: {reason}")]
    Denied {
        /// The action.
        action: String,
        /// The rules that fired.
        reason: String,
    },
    /// A human rejected the action.
    #[error("`{action}` rejected by a human: {reason}")]
    Rejected {
        /// The action.
        action: String,
        /// Their reason.
        reason: String,
    },
    /// Governance escalated the action and halted it.
    #[error("`{action}` escalated: {reason}")]
    Escalated {
        /// The action.
        action: String,
        /// Who was told.
        anchor: AnchorId,
        /// Why, naming the anchor by its key.
        reason: String,
    },
    /// A budget refused the call (exceeded, or none configured).
    #[error("budget refused `{action}`: {detail}")]
    BudgetExceeded {
        /// The action.
        action: String,
        /// Which budget and dimension.
        detail: String,
    },
    /// A model call failed after the router's retries and fallbacks; the failure names every
    /// model tried and holds the last one's [`ModelError`] as its source.
    #[error("model call failed: {0}")]
    Model(#[source] Box<ModelFailure>),
    /// A connector call failed after its retries; the failure holds the connector's own
    /// [`ConnectorError`] as its source when it returned one.
    #[error("connector call failed: {0}")]
    Connector(#[source] Box<ConnectorFailure>),
    /// An irreversible, non-idempotent call was interrupted: whether it happened is unknown.
    #[error("outcome of `{action}` unknown after an interruption; escalated")]
    OutcomeUnknown {
        /// The action.
        action: String,
    },
    /// Memory refused or failed.
    #[error("memory: {0}")]
    Memory(#[source] Box<aios_memory::MemoryError>),
    /// The agent used memory, but the orchestrator has none.
    #[error(
        "no memory is configured (give the orchestrator one with `OrchestratorBuilder::memory`)"
    )]
    NoMemory,
    /// The role's call limit or the agent's step limit was reached.
    #[error("step limit of {limit} reached")]
    StepLimit {
        /// The limit.
        limit: u32,
    },
    /// The agent's own failure (see [`AgentError::failed`] and [`AgentError::failed_because`]).
    #[error("{message}")]
    Failed {
        /// What went wrong, in words.
        message: String,
        /// The error behind it, if any.
        #[source]
        source: Option<ErrorSource>,
    },
    /// The runtime must stop (store failure, lost lease, non-determinism); the run can be
    /// resumed. Propagate it.
    #[error("runtime stopped: {0}")]
    Fatal(#[source] Box<OrchestratorError>),
}

impl OrchestratorError {
    /// The approval refusal `error`, described with the names `governor` gives its ids.
    pub(crate) fn approval(
        governor: &aios_governance::Governor,
        error: aios_governance::ApprovalError,
    ) -> Self {
        OrchestratorError::Approval {
            message: governor.name_ids(&error.to_string()),
            error,
        }
    }
}

impl AgentError {
    /// The agent's own failure, in words.
    ///
    /// ```
    /// use aios_orchestrator::AgentError;
    /// let e = AgentError::failed("the invoice has no total");
    /// assert_eq!(e.to_string(), "the invoice has no total");
    /// ```
    pub fn failed(message: impl Into<String>) -> Self {
        AgentError::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// The agent's own failure, caused by `source` (kept as the error's
    /// [`source`](std::error::Error::source)).
    ///
    /// ```
    /// use std::error::Error;
    /// use aios_orchestrator::AgentError;
    /// let parse = "x".parse::<u32>().unwrap_err();
    /// let e = AgentError::failed_because("the invoice total is not a number", parse);
    /// assert_eq!(e.source().unwrap().to_string(), "invalid digit found in string");
    /// ```
    pub fn failed_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        AgentError::Failed {
            message: message.into(),
            source: Some(ErrorSource(Arc::new(source))),
        }
    }
}

/// An error behind an [`AgentError::Failed`], shared so the error stays `Clone`; two are equal
/// when they read the same.
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync>);

impl ErrorSource {
    /// The error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ErrorSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

/// Why a model call failed: every model the router tried, in order, and why it gave no
/// answer (a failure, an open breaker, too low a confidence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFailure {
    /// The models tried, in order.
    pub tried: Vec<RouteStep>,
    /// The error the last failing model returned, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ModelError>,
}

impl std::fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tried.is_empty() {
            return f.write_str("no model is configured");
        }
        for (i, s) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "`{}` {}", s.model, s.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ModelFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.as_ref().map(|e| e as _)
    }
}

/// Why a connector call failed: which connector and operation, what happened (in words,
/// with any credential removed), and the connector's own error when it returned one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("`{connector}` {detail}")]
pub struct ConnectorFailure {
    /// The connector.
    pub connector: ConnectorId,
    /// The operation.
    pub operation: String,
    /// What happened (`is not registered`, `breaker open ...`, the connector's message).
    pub detail: String,
    /// The connector's own error, if it returned one.
    #[source]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectorError>,
}

/// A journaled call failure, replayed as the same typed [`AgentError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallFailure {
    /// A model call failed.
    Model(ModelFailure),
    /// A connector call failed.
    Connector(ConnectorFailure),
    /// An interrupted call's outcome is unknown.
    OutcomeUnknown {
        /// The action.
        action: String,
    },
}

impl CallFailure {
    /// The journaled failure of `error`, if it is one a call journals.
    pub(crate) fn of(error: &AgentError) -> Option<CallFailure> {
        match error {
            AgentError::Model(f) => Some(CallFailure::Model(f.as_ref().clone())),
            AgentError::Connector(f) => Some(CallFailure::Connector(f.as_ref().clone())),
            AgentError::OutcomeUnknown { action } => Some(CallFailure::OutcomeUnknown {
                action: action.clone(),
            }),
            _ => None,
        }
    }

    /// The error a replay returns.
    pub(crate) fn into_error(self) -> AgentError {
        match self {
            CallFailure::Model(f) => AgentError::Model(Box::new(f)),
            CallFailure::Connector(f) => AgentError::Connector(Box::new(f)),
            CallFailure::OutcomeUnknown { action } => AgentError::OutcomeUnknown { action },
        }
    }
}
