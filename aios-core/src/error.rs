//! Errors shared by every storage port.

/// Whether trying the same operation again can help. Every port error reports it, so the
/// reliability layer can decide to retry without knowing the backend.
pub trait Transience {
    /// `true` if the same call, repeated later, may succeed.
    fn is_transient(&self) -> bool;
}

/// The error every storage port (memory, checkpoints, budgets, approvals, audit) returns.
///
/// Variants say what the caller can do; backends map their own errors into them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named item does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked up, for example `run 0190...`.
        what: String,
    },
    /// An item with this key already exists.
    #[error("already exists: {what}")]
    AlreadyExists {
        /// What collided.
        what: String,
    },
    /// A precondition of the write did not hold (a version or sequence check); nothing was
    /// written. Re-read and decide again.
    #[error("conflict: {detail}")]
    Conflict {
        /// What did not match.
        detail: String,
    },
    /// A write carried a fencing token older than the newest the store has seen: another
    /// worker owns the item now. Stop working on it.
    #[error("fenced: token {presented} is older than {current} for {what}")]
    Fenced {
        /// What was written.
        what: String,
        /// The token the writer presented.
        presented: u64,
        /// The newest token the store has seen.
        current: u64,
    },
    /// Stored data failed a checksum or could not be decoded.
    #[error("corrupt data in {location}: {detail}")]
    Corrupt {
        /// Where (a table, key or path).
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// The data was written by a newer schema than this build understands.
    #[error(
        "unsupported schema version {found} in {location} (this build reads up to {supported})"
    )]
    UnsupportedVersion {
        /// Where.
        location: String,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The backend is busy or unreachable; retrying later may help.
    #[error("store unavailable: {detail}")]
    Unavailable {
        /// What the backend said.
        detail: String,
    },
    /// Any other backend failure.
    #[error("store failure: {detail}")]
    Backend {
        /// What the backend said.
        detail: String,
    },
}

impl Transience for StoreError {
    fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
