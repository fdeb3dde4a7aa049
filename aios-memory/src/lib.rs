//! # aios-memory
//!
//! Layered memory for AIOS agents: records with lineage and versions, hierarchical scopes,
//! tiers (working, project, long-term), provenance, bi-temporal stamps, checksums, and hybrid
//! recall (exact vector search, BM25, reciprocal-rank fusion, recency and importance).
//!
//! Main types:
//!
//! - [`Memory`]: the service: [`Memory::remember`] (and [`Memory::remember_many`]),
//!   [`Memory::revise`], [`Memory::retract`],
//!   [`Memory::recall`], [`Memory::history`], [`Memory::replay`], [`Memory::prune`],
//!   [`Memory::verify`], [`Memory::export`] and [`Memory::import`], [`Memory::consolidate`];
//!   opened with [`Memory::builder`], which rebuilds the in-process indexes from the store;
//! - records: [`MemoryRecord`] (one version), [`NewMemory`], [`Revision`], [`Provenance`],
//!   [`Scope`], [`Tier`], [`MemoryKind`];
//! - recall: [`RecallQuery`] -> [`RecallHit`]s with a [`ScoreBreakdown`], ranked as the
//!   [`RecallMode`] says with the [`RecallWeights`]; keyword search tokenises and scores as
//!   the memory's [`KeywordOptions`] say (BM25 `k1`, `b`, optional English [`Stemming`]);
//! - the storage port [`MemoryStore`] with [`InMemoryMemoryStore`];
//! - access: [`Grant`]s bind scope prefixes and tiers to roles and agents; a [`MemoryView`]
//!   enforces them;
//! - context: [`assemble_context`] packs records into a prompt within a [`ContextBudget`],
//!   counting with a [`Tokenizer`] ([`CharTokenizer`] by default);
//! - maintenance: [`PrunePolicy`] -> [`PruneReport`], [`VerifyReport`], [`Migrator`];
//! - consolidation through a host [`Summariser`].
//!
//! The crate does no I/O, reads time only from the injected [`aios_core::Clock`] and draws
//! no randomness (ids come from a seeded [`aios_core::IdGen`]).
//!
//! Design, in short:
//!
//! - **Versions are immutable.** A lineage ([`aios_core::MemoryId`]) is a chain of versions;
//!   revise and retract append one (a retraction is a tombstone version). Each version links
//!   to the checksum of the one it supersedes, and the store stamps the superseded version's
//!   `retired_at`, so [`Memory::verify`] can check a lineage like a hash chain.
//! - **Two times.** System time (`recorded_at` .. `retired_at`) answers "what did we know
//!   then" ([`RecallQuery::as_of`], [`Memory::replay`]); world time (`valid_from` ..
//!   `valid_to`) answers "what was true then" ([`RecallQuery::valid_at`]). At one system time
//!   exactly one version of a lineage is current; a retracted lineage has none.
//! - **The store is dumb; the indexes are ours.** A [`MemoryStore`] only keeps versions in
//!   order under an expected-version precondition. Indexes live in process and are rebuilt
//!   on open, so every backend recalls identically.
//! - **Retrieval.** Exact cosine search over a contiguous matrix of unit vectors (the ground
//!   truth), BM25 over an inverted index, reciprocal-rank fusion of each signal's top
//!   candidates, plus small, bounded recency and importance boosts; every hit says why it
//!   ranked. A larger `k` never reorders the first hits.
//!
//! Features:
//!
//! - `testing`: [`testing::memory_store_conformance`] (the contract every store runs),
//!   [`testing::FaultyMemoryStore`], and [`testing::longmem`], a synthetic long-conversation
//!   data set shaped like LongMemEval.
//! - `ann`: [`AnnOptions`] and [`MemoryBuilder::ann`], an approximate vector index (an
//!   inverted file over k-means lists) for memories of hundreds of thousands of vectors and
//!   more; filters stay exact, small memories and narrow filters keep the exact scan. Off by
//!   default (it brings rayon).
//!
//! ```
//! use std::sync::Arc;
//! use aios_core::{HashEmbedder, ManualClock, Principal};
//! use aios_memory::{Memory, NewMemory, RecallQuery, Scope, Tier};
//! # futures::executor::block_on(async {
//! let memory = Memory::builder(Arc::new(ManualClock::default()))
//!     .embedder(Arc::new(HashEmbedder::new(64)))
//!     .open()
//!     .await?;
//! let scope = Scope::parse("org/acme/project-x")?;
//! memory.remember(NewMemory::new(scope.clone(), Tier::Project, "the client prefers email", Principal::System)).await?;
//! let hits = memory.recall(&RecallQuery::text("how does the client like to be contacted").in_scope(scope)).await?;
//! assert_eq!(hits.len(), 1);
//! # Ok::<(), aios_memory::MemoryError>(())
//! # }).unwrap();
//! ```

#[cfg(feature = "ann")]
mod ann;
mod consolidate;
mod context;
mod error;
mod grants;
mod index;
mod maintenance;
mod matrix;
mod memory;
mod query;
mod rank;
mod record;
mod scope;
mod store;
mod transfer;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "ann")]
pub use ann::AnnOptions;
pub use consolidate::{ConsolidationMode, ConsolidationReport, ConsolidationRequest, Summariser};
pub use context::{
    assemble_context, context_line, AssembledContext, CharTokenizer, ContextBudget, Tokenizer,
};
pub use error::MemoryError;
pub use grants::{Access, Grant, GrantSubject, MemoryView, ViewSubject};
pub use maintenance::{
    Finding, FindingKind, PrunePolicy, PruneReason, PruneReport, Pruned, VerifyReport,
};
pub use memory::{Memory, MemoryBuilder};
pub use query::{
    KeywordOptions, RecallHit, RecallMode, RecallQuery, RecallWeights, ScoreBreakdown, Stemming,
};
pub use record::{
    Embedding, MemoryRecord, Metadata, NewMemory, Provenance, Revision, Tombstone,
    MEMORY_SCHEMA_VERSION,
};
pub use scope::{MemoryKind, Scope, Tier};
pub use store::{GetOptions, InMemoryMemoryStore, MemoryStore};
pub use transfer::{ImportReport, MigrationStep, Migrator};
