//! # aios-core
//!
//! The shared vocabulary of the AIOS family and the *ports* (traits) through which a host
//! application supplies everything that touches the world: storage, models, embedders,
//! connectors, clocks and timers. Nothing here does I/O, reads the wall clock on its own,
//! or draws randomness from anywhere but an injected seed.
//!
//! Main types:
//!
//! - ids ([`RunId`], [`TaskId`], [`AgentId`], [`HumanId`], ...) are time-ordered UUIDs made by an
//!   [`IdGen`] that reads an injected [`Clock`] and a seed; [`Principal`] says who acted;
//! - time: [`Clock`] ([`SystemClock`], [`ManualClock`]) and [`Timer`] ([`ManualTimer`], and
//!   `TokioTimer` behind the `tokio` feature), with [`timeout`];
//! - money: [`Money`] in integer minor units, [`TokenUsage`], [`PriceTable`];
//! - ports: [`ModelBackend`] (with [`ScriptedModel`]), [`Connector`] (with
//!   [`RecordingConnector`]), [`CredentialVault`] (with [`InMemoryVault`]), [`Embedder`] (with
//!   [`HashEmbedder`]), [`AuditLog`] (with [`InMemoryAuditLog`]);
//! - the audit chain: typed [`AuditEvent`]s in [`AuditEntry`]s linked by SHA-256, checked by
//!   [`verify_chain`] against an optional anchored [`ChainHead`]; optionally sealed with an
//!   [`AuditKey`] (HMAC-SHA256) and checked by [`verify_chain_keyed`].
//!
//! Features:
//!
//! - `tokio`: a [`Timer`] backed by `tokio::time`;
//! - `testing`: [`testing`] conformance suites for every port and fault-injecting wrappers.
//!
//! ```
//! use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, InMemoryAuditLog, Principal};
//! # futures::executor::block_on(async {
//! let log = InMemoryAuditLog::new();
//! log.append(AuditRecord::new(Principal::System, AuditEvent::Note { text: "hello".into() }))
//!     .await?;
//! let report = log.verify(None).await?;
//! assert!(report.is_intact());
//! # Ok::<(), aios_core::AuditError>(())
//! # }).unwrap();
//! ```

mod audit;
mod canonical;
mod clock;
mod connector;
mod embed;
mod error;
mod id;
mod model;
mod money;
mod principal;
mod rng;
mod timer;
mod vault;

#[cfg(feature = "testing")]
pub mod testing;

pub use audit::{
    verify_chain, verify_chain_keyed, verify_with_progress, ApprovalOutcome, AuditEntry,
    AuditError, AuditEvent, AuditKey, AuditKeyError, AuditLog, AuditLogExt, AuditRecord, ChainHead,
    ChainProblem, ChainReport, DecisionKind, EntryHash, EntryMac, InMemoryAuditLog, Outcome,
    StoredEntry, UnreadableEntry, AUDIT_SCHEMA_VERSION,
};
pub use clock::{to_nanos, Clock, ManualClock, SystemClock, Timestamp};
pub use connector::{
    AmountField, AmountUnit, Connector, ConnectorCall, ConnectorDescriptor, ConnectorError,
    ConnectorId, ConnectorOutput, EffectClass, GovernedField, IdempotencyKey, OperationSpec,
    PermissionScope, RecordedEffect, RecordingConnector,
};
pub use embed::{cosine, EmbedError, Embedder, Embedding, HashEmbedder};
pub use error::{StoreError, Transience};
pub use id::{
    AgentId, AnchorId, ApprovalId, EventId, HumanId, IdGen, MemoryId, PathwayId, RoleId, RunId,
    TaskId,
};
pub use model::{
    FinishReason, Message, MessageRole, ModelBackend, ModelError, ModelId, ModelRequest,
    ModelResponse, ScriptedModel, ToolCall, ToolSpec,
};
pub use money::{ModelPrice, Money, MoneyParseError, PriceTable, TokenUsage};
pub use principal::Principal;
pub use rng::{os_seed, SeededRng};
#[cfg(feature = "tokio")]
pub use timer::TokioTimer;
pub use timer::{timeout, Elapsed, ManualTimer, Sleep, SystemTimer, Timer};
pub use vault::{CredentialHandle, CredentialVault, InMemoryVault, Secret, VaultError};
