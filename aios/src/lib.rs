//! # AIOS
//!
//! Run AI agents as a governed operating system for a small organisation, down to a one-person
//! company. This facade re-exports the family; add it as your one dependency.
//!
//! - [`core`]: ids, principals, clocks, timers, money, and the ports (models, connectors,
//!   embedders, credentials, audit log) the host supplies.
//! - `memory` (feature `memory`): layered memory with provenance, versions and hybrid recall.
//! - `governance` (feature `governance`): accountability anchors, delegation, decisions,
//!   budgets, approvals.
//! - `orchestrator` (feature `orchestrator`): governed agents over task graphs.
//! - `sqlite` (feature `sqlite`): the embedded durable default, every storage port on one
//!   SQLite file.
//! - `postgres` (feature `postgres`): every storage port on PostgreSQL, for several workers
//!   on one database.
//! - `models` (feature `models`): OpenAI-compatible and Anthropic model backends, and an
//!   OpenAI-compatible embedder.
//! - `mcp` (feature `mcp`): an MCP server's tools as governed connector operations.
//!
//! ```
//! use aios::core::{Clock, ManualClock};
//! let clock = ManualClock::default();
//! let _now = clock.now();
//! ```

pub use aios_core as core;
#[cfg(feature = "governance")]
pub use aios_governance as governance;
#[cfg(feature = "mcp")]
pub use aios_mcp as mcp;
#[cfg(feature = "memory")]
pub use aios_memory as memory;
#[cfg(feature = "models")]
pub use aios_models as models;
#[cfg(feature = "orchestrator")]
pub use aios_orchestrator as orchestrator;
#[cfg(feature = "postgres")]
pub use aios_postgres as postgres;
#[cfg(feature = "sqlite")]
pub use aios_sqlite as sqlite;
#[cfg(feature = "workspace")]
pub use aios_workspace as workspace;

/// The derive-like attribute port implementations use (`#[async_trait]` on `impl Connector
/// for ..`), re-exported so an application needs no dependency of its own for it.
pub use async_trait::async_trait;

/// The types an application needs, in one import: `use aios::prelude::*;`.
///
/// A connector of one's own, with nothing but the prelude:
///
/// ```
/// use aios::prelude::*;
///
/// #[derive(Debug)]
/// struct Crm(ConnectorDescriptor);
///
/// #[async_trait]
/// impl Connector for Crm {
///     fn descriptor(&self) -> &ConnectorDescriptor {
///         &self.0
///     }
///     async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
///         Ok(ConnectorOutput { output: serde_json::json!({ "saved": call.input }), cost: Money::ZERO })
///     }
/// }
///
/// let crm = Crm(ConnectorDescriptor {
///     id: ConnectorId::new("crm"),
///     effect: EffectClass::Reversible,
///     scopes: vec![],
///     idempotent: true,
///     default_cost: Money::ZERO,
///     operations: vec![OperationSpec::new("save", EffectClass::Reversible).governs("customer", "/name")],
/// });
/// assert!(crm.descriptor().operation("save").is_some());
/// assert!(crm.descriptor().operation("delete").is_none());
/// ```
pub mod prelude {
    pub use crate::async_trait;
    #[cfg(feature = "tokio")]
    pub use aios_core::TokioTimer;
    pub use aios_core::{
        AgentId, AnchorId, ApprovalId, Clock, Connector, ConnectorCall, ConnectorDescriptor,
        ConnectorError, ConnectorId, ConnectorOutput, CredentialHandle, EffectClass, HumanId,
        IdempotencyKey, ManualClock, ManualTimer, Message, ModelBackend, ModelError, ModelId,
        ModelPrice, ModelRequest, ModelResponse, Money, OperationSpec, Principal, RoleId, RunId,
        SystemClock, TaskId, Timer,
    };
    #[cfg(feature = "governance")]
    pub use aios_governance::{
        ApprovalResponse, ControlTarget, Controls, GovernanceModel, Governor,
    };
    #[cfg(feature = "memory")]
    pub use aios_memory::{Access, Grant, Memory, NewMemory, RecallQuery, Scope, Tier};
    #[cfg(feature = "orchestrator")]
    pub use aios_orchestrator::{
        AgentError, BuildError, ConnectorRequest, FnAgent, LlmAgent, MemoryOptions, ModelRouter,
        Orchestrator, OrchestratorConfig, OrchestratorError, Role, RunControl, RunOutcome,
        RunStatus, TaskContext, TaskSpec, TickReport, Workflow,
    };
    #[cfg(feature = "sqlite")]
    pub use aios_sqlite::SqliteStore;
}

/// Guides: how to do the common things, with examples that are compiled and run.
pub mod guides {
    #[doc = include_str!("../guides/connector.md")]
    pub mod connector {}
    #[doc = include_str!("../guides/approvals.md")]
    pub mod operating_approvals {}
    #[doc = include_str!("../guides/model_backend.md")]
    pub mod model_backend {}
    #[doc = include_str!("../guides/manifest.md")]
    pub mod manifest {}
    #[cfg(all(feature = "testing", feature = "orchestrator"))]
    #[doc = include_str!("../guides/storage_backend.md")]
    pub mod storage_backend {}
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
