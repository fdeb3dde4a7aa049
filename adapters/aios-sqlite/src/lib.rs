//! # aios-sqlite
//!
//! The embedded durable default of AIOS: every storage port on one SQLite file, through
//! `rusqlite` with SQLite bundled (nothing to install).
//!
//! Main types:
//!
//! - [`SqliteStore`]: a handle on one database, opened from a path ([`SqliteStore::open`],
//!   [`SqliteStore::open_with`]) or in memory for tests ([`SqliteStore::in_memory`]). It
//!   hands out the six port implementations, which share its connections:
//!   - [`SqliteAuditLog`] ([`aios_core::AuditLog`]): the hash-chained audit log;
//!   - [`SqliteMemoryStore`] ([`aios_memory::MemoryStore`]): versioned memory records;
//!   - [`SqliteCheckpointStore`] ([`aios_orchestrator::CheckpointStore`]): run checkpoints
//!     with leases and fencing tokens, history kept;
//!   - [`SqliteBudgetLedger`] ([`aios_governance::BudgetLedger`]): atomic reservations over
//!     the budget chain, periods and expiry from an injected clock, charge keys, alerts;
//!   - [`SqliteApprovalStore`] ([`aios_governance::ApprovalStore`]): approval requests with
//!     compare-and-set transitions;
//!   - [`SqliteControlStore`] ([`aios_governance::ControlStore`]): operator controls
//!     (pause, stop, overrides), so a kill switch survives a restart.
//! - [`SqliteOptions`] and [`Durability`]: how a file is opened.
//! - `SqliteStore::orchestrator` and `SqliteStore::memory` (feature `tokio`, which the
//!   `aios` facade's `sqlite` feature turns on): the production set-up on one file, with the
//!   system clock and a Tokio timer, every port of the orchestrator, and operator controls
//!   re-installed from the file.
//!
//! ## Durability and atomicity
//!
//! - The file is in WAL mode with `synchronous=FULL` by default: a call that returned `Ok`
//!   has been fsynced and survives the process being killed and a power loss.
//!   [`Durability::Normal`] (`synchronous=NORMAL`) still survives a killed process but may
//!   lose the last commits on power loss; it is faster where fsync is slow. The one exception
//!   to fsync-per-commit under `Full` is taking and giving up run leases (see
//!   [`SqliteCheckpointStore`]): losing one to a power failure is harmless, and the next
//!   fsynced commit makes it durable in order. A durable seq3 run therefore costs one fsync per
//!   checkpoint.
//! - Every operation that reads and writes, or writes more than one row, runs in one
//!   `BEGIN IMMEDIATE` transaction (the write lock is taken first, so the checks it makes
//!   still hold when it writes). An operation that fails, or is refused, changes nothing; a
//!   process killed mid-operation leaves the previous state, which SQLite recovers on the
//!   next open.
//! - Another connection or process holding the write lock longer than
//!   [`SqliteOptions::busy_timeout`] makes an operation fail with
//!   [`aios_core::StoreError::Unavailable`] (transient, retried by the orchestrator's
//!   reliability layer), naming the file.
//!
//! ## Schema and bad input
//!
//! The schema is versioned with `PRAGMA user_version` ([`SCHEMA_VERSION`]) and created or
//! upgraded by migrations in one transaction. Opening refuses, without writing anything:
//! a file written by a newer schema ([`aios_core::StoreError::UnsupportedVersion`]), a file
//! that is not an SQLite database, is truncated (even to zero bytes), is damaged ([`SqliteOptions::check_on_open`]) or belongs to
//! another application ([`aios_core::StoreError::Corrupt`]); every error names the path.
//! Values are stored as JSON (serde) in TEXT columns beside indexed key columns; a row that
//! does not decode is reported as `Corrupt`, naming the table and row. Checkpoints also carry
//! a SHA-256 checksum checked on every read, so a changed byte that still decodes is
//! `Corrupt` (naming run and seq) rather than a misread state; an unreadable audit row is
//! reported at its seq while the rest of the log reads (see [`SqliteAuditLog`]).
//!
//! ## Threads and async
//!
//! A store owns one writer thread with the only write connection and a few reader threads
//! ([`SqliteOptions::readers`], default 2), each with its own connection (WAL mode lets them
//! read while the writer writes). The ports' methods hand their SQL to those threads and await
//! the answer through a `futures` oneshot channel, so they never block the caller's executor
//! on SQLite or on an fsync, and need no particular runtime (`futures::executor::block_on`
//! drives them as well as Tokio). Many runs in flight on one executor are therefore not
//! serialised by the store:
//!
//! - **Group commit.** The writes queued while the writer is busy are committed together in
//!   one `BEGIN IMMEDIATE` transaction, one fsync for all of them (at most 256 at a time), in
//!   the order they were queued; each caller's future resolves only once its write is
//!   committed (and fsynced under [`Durability::Full`]). Each write runs in its own savepoint:
//!   one that fails or is refused is rolled back alone and the others commit. If the shared
//!   transaction fails as a whole (the commit fails, SQLite rolls it back after an I/O error,
//!   a write panics), every write of the group is run again on its own transaction, so each
//!   caller gets the answer of its own write. [`SqliteStore::commits`] counts the commits.
//! - **Reads** run in a read transaction on a reader connection and see every write whose
//!   future resolved before they were called. In memory there is one connection, and reads
//!   run on the writer thread between its commits.
//! - A write that was queued completes even if its caller stops waiting for it. Dropping the
//!   last handle on a store lets the threads finish what is queued, closes the connections
//!   (folding the write-ahead log into the file) and joins the threads.
//!
//! Writes from one process are serialised by the writer thread; writes from several processes
//! by SQLite's lock, with [`SqliteOptions::busy_timeout`].
//!
//! ```
//! use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, Principal};
//! use aios_sqlite::SqliteStore;
//! # futures::executor::block_on(async {
//! let path = std::env::temp_dir().join(format!("aios-sqlite-doc-{}.db", std::process::id()));
//! # let _ = std::fs::remove_file(&path);
//! let store = SqliteStore::open(&path)?;
//! let log = store.audit_log();
//! log.append(AuditRecord::new(Principal::System, AuditEvent::Note { text: "hello".into() }))
//!     .await?;
//! drop((log, store));
//!
//! // reopened, the entry is still there and the chain verifies
//! let store = SqliteStore::open(&path)?;
//! let report = store.audit_log().verify(None).await?;
//! assert_eq!(report.checked, 1);
//! assert!(report.is_intact());
//! # drop(store);
//! # for suffix in ["", "-wal", "-shm"] {
//! #     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
//! # }
//! # Ok::<(), aios_core::StoreError>(())
//! # }).unwrap();
//! ```

mod approvals;
mod audit;
mod budget;
mod checkpoint;
mod controls;
mod db;
mod humans;
mod memory;

use std::path::Path;
use std::sync::Arc;

use aios_core::{AuditKey, Clock, StoreError};

pub use approvals::SqliteApprovalStore;
pub use audit::SqliteAuditLog;
pub use budget::SqliteBudgetLedger;
pub use checkpoint::SqliteCheckpointStore;
pub use controls::SqliteControlStore;
pub use db::{Durability, SqliteOptions, SCHEMA_VERSION};
pub use humans::{SqliteHumanCredentials, StoredCredential};
pub use memory::SqliteMemoryStore;

/// A handle on one AIOS database. Cheap to clone; clones and every port handed out share its
/// writer thread and reader connections (see the crate docs, "Threads and async"); the
/// threads stop when the last of them is dropped.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Arc<db::Db>,
}

impl SqliteStore {
    /// Opens the database file at `path` with the default [`SqliteOptions`], creating it (and
    /// its schema) only if nothing exists at `path`. A new file appears complete (it is built
    /// under a temporary name and linked into place), so an existing file that is empty,
    /// truncated or lacks the AIOS identity is never taken for a new store.
    ///
    /// Errors: [`StoreError::UnsupportedVersion`] for a file from a newer schema,
    /// [`StoreError::Corrupt`] for a file that is not an AIOS database, is truncated (even to
    /// zero bytes) or is damaged,
    /// [`StoreError::Unavailable`] if another process holds a lock longer than the busy
    /// timeout, [`StoreError::Backend`] if the file cannot be opened; each names the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the database file at `path` with `options` (see [`SqliteStore::open`]).
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(db::Db::open(path.as_ref(), &options)?),
        })
    }

    /// A private database in process memory, gone when the last handle is dropped: for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(db::Db::in_memory()?),
        })
    }

    /// The file's path (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.db.path()
    }

    /// The schema version stored in the file (equal to [`SCHEMA_VERSION`] once opened).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.db.schema_version()
    }

    /// Runs SQLite's full `PRAGMA integrity_check`; [`StoreError::Corrupt`] if it finds a
    /// problem.
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        self.db.integrity_check()
    }

    /// How many transactions this store's writer has committed since it was opened, a group
    /// commit counting once (so the writes made through the store divided by this is the
    /// average group size; each is one fsync under [`Durability::Full`]).
    pub fn commits(&self) -> u64 {
        self.db.commits()
    }

    /// The audit log. Its appends carry no MAC; see [`SqliteStore::audit_log_keyed`].
    pub fn audit_log(&self) -> SqliteAuditLog {
        SqliteAuditLog::new(self.db.clone(), None)
    }

    /// The audit log, sealing each entry it appends with `key`'s MAC (stored in column
    /// `mac`), so [`aios_core::AuditLogExt::verify_keyed`] with the same key detects rows
    /// appended by anyone who can write the file but does not hold the key. Entries appended
    /// before, or through [`SqliteStore::audit_log`], have no MAC and are reported by keyed
    /// verification.
    pub fn audit_log_keyed(&self, key: AuditKey) -> SqliteAuditLog {
        SqliteAuditLog::new(self.db.clone(), Some(key))
    }

    /// The memory store.
    pub fn memory_store(&self) -> SqliteMemoryStore {
        SqliteMemoryStore::new(self.db.clone())
    }

    /// The checkpoint store.
    pub fn checkpoint_store(&self) -> SqliteCheckpointStore {
        SqliteCheckpointStore::new(self.db.clone())
    }

    /// The budget ledger, reading periods from `clock`. Attach an audit log for alerts with
    /// [`SqliteBudgetLedger::with_audit`].
    pub fn budget_ledger(&self, clock: Arc<dyn Clock>) -> SqliteBudgetLedger {
        SqliteBudgetLedger::new(self.db.clone(), clock)
    }

    /// The approval store.
    pub fn approval_store(&self) -> SqliteApprovalStore {
        SqliteApprovalStore::new(self.db.clone())
    }

    /// The operator control store: build [`aios_governance::Controls`] over it with
    /// [`aios_governance::Controls::open`] so controls survive a restart.
    pub fn control_store(&self) -> SqliteControlStore {
        SqliteControlStore::new(self.db.clone())
    }

    /// The credentials of the humans who act through the operator's surfaces (table
    /// `aios_humans`: only SHA-256 hashes of their tokens).
    pub fn human_credentials(&self) -> SqliteHumanCredentials {
        SqliteHumanCredentials::new(self.db.clone())
    }
}

#[cfg(feature = "tokio")]
impl SqliteStore {
    /// The production set-up on this file, ready for roles and connectors: the system
    /// clock and a Tokio timer (so retries and timeouts sleep for real, and approvals and
    /// leases expire), and all five storage ports of the orchestrator on this file: the
    /// audit log, checkpoints with leases, the budget ledger (alerts audited), approvals and
    /// operator controls (re-installed from the file, so a kill switch pulled before a
    /// restart is still in force). Worker ids and id seeds are the unique, OS-seeded
    /// defaults of [`aios_orchestrator::OrchestratorConfig`]. Needs a Tokio runtime to run
    /// (feature `tokio`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use aios_governance::GovernanceModel;
    /// let governor = GovernanceModel::from_json(r#"{
    ///   "version": 1,
    ///   "charter": { "intent": "count", "final_authority": "owner" },
    ///   "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
    ///   "roles": [{ "key": "counter" }],
    ///   "pathways": [{ "key": "counting", "anchor": "owner", "delegate": "counter",
    ///                  "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
    ///                  "escalation": [{ "name": "big", "when": { "risk_at_least": 50 }, "mode": "halt" }] }],
    ///   "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 10000 } }]
    /// }"#)?.compile().map_err(|r| r.to_string())?;
    /// let store = aios_sqlite::SqliteStore::in_memory()?;
    /// let orchestrator = store.orchestrator(governor).await?.build()?;
    /// assert!(orchestrator.pending_approvals().await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn orchestrator(
        &self,
        governor: aios_governance::Governor,
    ) -> Result<aios_orchestrator::OrchestratorBuilder, StoreError> {
        let clock: Arc<dyn Clock> = Arc::new(aios_core::SystemClock);
        let audit: Arc<dyn aios_core::AuditLog> = Arc::new(self.audit_log());
        let controls = aios_governance::Controls::open(
            Arc::new(self.control_store()),
            clock.clone(),
            audit.clone(),
        )
        .await
        .map_err(|e| match e {
            aios_governance::ControlError::Store(e) => e,
            other => StoreError::Backend {
                detail: format!("operator controls in `{}`: {other}", self.db.location()),
            },
        })?;
        Ok(aios_orchestrator::Orchestrator::builder(governor)
            .clock(clock.clone())
            .timer(Arc::new(aios_core::TokioTimer))
            .audit(audit.clone())
            .checkpoints(Arc::new(self.checkpoint_store()))
            .budgets(Arc::new(self.budget_ledger(clock).with_audit(audit)))
            .approval_store(Arc::new(self.approval_store()))
            .controls(Arc::new(controls)))
    }

    /// The memory on this file, with the system clock and writes audited in this file's
    /// log (give it to [`SqliteStore::orchestrator`]'s builder with `.memory(..)`).
    pub async fn memory(&self) -> Result<aios_memory::Memory, aios_memory::MemoryError> {
        aios_memory::Memory::builder(Arc::new(aios_core::SystemClock))
            .store(Arc::new(self.memory_store()))
            .audit(Arc::new(self.audit_log()))
            .open()
            .await
    }
}
