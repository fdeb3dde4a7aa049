//! # aios-orchestrator
//!
//! Governed agents over task graphs, crash-safe and human-in-the-loop.
//!
//! An [`Orchestrator`] runs a [`Workflow`] (a petgraph-validated graph of [`TaskSpec`]s) by
//! giving each task to the agent of its [`Role`]. Agents reach the world only through their
//! [`TaskContext`]: model calls ([`TaskContext::complete`], routed by a [`ModelRouter`]),
//! connector calls ([`TaskContext::call`]), memory ([`TaskContext::remember`],
//! [`TaskContext::recall`]), fan-out ([`TaskContext::spawn`]) and questions to the
//! accountable human ([`TaskContext::ask_human`]). Every call is decided by the
//! governance model, paid for from budgets, made reliable (breakers, retries with seeded
//! jitter, timeouts on the [`aios_core::Timer`]), journaled and audited.
//!
//! Durability: runs are checkpointed in a [`CheckpointStore`] ([`CheckpointMode`]); a resumed
//! run re-executes agent code but answers journaled calls from the journal, so no completed
//! side effect happens twice; connectors get stable idempotency keys; leases with fencing
//! tokens keep one writer per run; [`Orchestrator::fork`] copies a run from any checkpoint.
//!
//! Human in the loop: a call that needs approval parks the run and `start`/`resume` return;
//! [`Orchestrator::submit_approval`] records a human's decision and resumes exactly that call.
//!
//! Model backends are shared: a [`ModelScheduler`]
//! ([`OrchestratorBuilder::model_scheduler`]) queues every model attempt of every agent per
//! backend (concurrency, requests and tokens per minute, priorities, fair shares per run and
//! agent; a rate-limit answer pauses the backend's queue). Routing is local first
//! ([`LocalFirst`], [`ModelRouter`]).
//!
//! Observability: audit events, [`RunEvent`]s for [`Observer`]s, a markdown transcript
//! ([`Orchestrator::transcript`]) and `tracing` spans named by the OpenTelemetry GenAI
//! conventions (`invoke_agent`, `chat`, `execute_tool`; see [`TelemetryConfig`]).
//!
//! Features: `testing` adds the checkpoint store conformance suite, a fault-injecting store,
//! a simulated rate-limited model backend and a virtual-time driver.

mod agent;
mod builder;
mod checkpoint;
mod context;
mod driver;
mod error;
mod gate;
mod governed;
mod graph;
mod human;
mod memory;
mod notify;
pub mod reliability;
mod role;
mod router;
mod runtime;
pub mod scheduler;
#[cfg(feature = "testing")]
mod sim;
mod state;
mod telemetry;
mod transcript;
mod worker;

#[cfg(feature = "testing")]
pub mod testing;

pub use agent::{Agent, BoxFut, FnAgent, LlmAgent};
pub use builder::OrchestratorBuilder;
pub use checkpoint::{
    claimable, lease_available, lease_renewable, leased, renewal_refused, Checkpoint,
    CheckpointStore, InMemoryCheckpointStore, Lease, RunSummary, WorkerId,
};
pub use context::{ConnectorRequest, TaskContext};
pub use error::{
    AgentError, BuildError, CallFailure, ConnectorFailure, ErrorSource, ModelFailure,
    OrchestratorError,
};
pub use governed::GovernedCall;
pub use graph::{TaskInput, TaskName, TaskSpec, Workflow};
pub use memory::{MemoryOptions, RecalledHit};
pub use notify::{
    CollectingObserver, InMemoryNotifier, Notification, NotificationKind, Notifier, Observer,
    RunEvent,
};
pub use reliability::{BreakerPolicy, RetryPolicy};
pub use role::{Fallback, Role};
pub use router::{LocalFirst, ModelEstimate, ModelRouter, RouteStep};
pub use runtime::{
    CheckpointMode, InboxPage, Orchestrator, OrchestratorConfig, PendingApproval, RunControl,
    RunOutcome, TickReport,
};
pub use scheduler::{
    Acquire, BackendLimits, BackendStats, FlowId, ModelScheduler, Permit, PermitRequest, Priority,
    SchedulerConfig,
};
pub use state::{
    CallKind, CallRecord, JournalEntry, RefusedBy, RunState, RunStatus, TaskState, TaskStatus,
    RUN_STATE_SCHEMA,
};
pub use telemetry::TelemetryConfig;
pub use transcript::{render_transcript, TranscriptNames};
pub use worker::{WorkOptions, WorkReport};
