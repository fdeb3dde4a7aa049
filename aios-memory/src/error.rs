//! The error of the memory service.

use aios_core::{EmbedError, MemoryId, StoreError, Transience};

use crate::{Access, Scope, Tier};

/// Why a memory operation failed. Nothing was written when an operation returns an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The store failed (a [`StoreError::Conflict`] means another writer got there first:
    /// re-read and decide again).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedder failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// No such memory (or version).
    #[error("memory `{id}` not found{}", version.map(|v| format!(" at version {v}")).unwrap_or_default())]
    NotFound {
        /// The lineage looked up.
        id: MemoryId,
        /// The version looked up, if one was named.
        version: Option<u32>,
    },
    /// The memory was retracted; it can be read in its history but not revised.
    #[error("memory `{id}` is retracted")]
    Retracted {
        /// The lineage.
        id: MemoryId,
    },
    /// The view's grants do not allow this access.
    #[error("{access} access to scope `{scope}` tier `{tier}` refused for `{subject}`: no grant covers it")]
    GrantRefused {
        /// Who asked (`agent:...`, with roles).
        subject: String,
        /// The access asked for.
        access: Access,
        /// The scope asked for.
        scope: Scope,
        /// The tier asked for.
        tier: Tier,
    },
    /// An input field is invalid.
    #[error("invalid `{field}`: {detail}")]
    InvalidInput {
        /// The field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A record could not be migrated to this build's schema.
    #[error("cannot migrate from schema {from} to {to}: {detail}")]
    Migration {
        /// The version found.
        from: u32,
        /// The version wanted.
        to: u32,
        /// What went wrong.
        detail: String,
    },
    /// The write succeeded but its audit event could not be appended.
    #[error("memory `{id}` version {version} was written but not audited: {source}")]
    AuditFailed {
        /// The lineage written.
        id: MemoryId,
        /// The version written.
        version: u32,
        /// Why the audit log refused.
        source: StoreError,
    },
    /// A [`crate::Memory::remember_many`] stopped at one record: the records before it
    /// were written (and audited), the rest were not.
    #[error("batch record {index} failed ({written} written before it): {source}")]
    Batch {
        /// The position of the failing record in the batch.
        index: usize,
        /// How many records were written before it (0 when validation failed: nothing was
        /// written).
        written: usize,
        /// Why it failed.
        source: Box<MemoryError>,
    },
    /// The host's summariser failed.
    #[error("summariser failed: {0}")]
    Summariser(String),
}

impl Transience for MemoryError {
    fn is_transient(&self) -> bool {
        match self {
            MemoryError::Store(e) => e.is_transient(),
            MemoryError::Embed(e) => e.is_transient(),
            MemoryError::Batch { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

impl MemoryError {
    pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> Self {
        MemoryError::InvalidInput {
            field: field.into(),
            detail: detail.into(),
        }
    }
}
