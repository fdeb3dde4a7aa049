//! # aios-postgres
//!
//! The shared store of AIOS for many workers: every storage port on one PostgreSQL database,
//! through `tokio-postgres` with a `deadpool-postgres` connection pool.
//!
//! Main types:
//!
//! - [`PgStore`]: a pool on one database, opened from a URL ([`PgStore::connect`],
//!   [`PgStore::connect_with`] and [`PgOptions`]). It hands out the six port
//!   implementations, which share its pool:
//!   - [`PgAuditLog`] ([`aios_core::AuditLog`]): the hash-chained audit log, one linear chain
//!     however many workers append;
//!   - [`PgMemoryStore`] ([`aios_memory::MemoryStore`]): versioned memory records;
//!   - [`PgCheckpointStore`] ([`aios_orchestrator::CheckpointStore`]): run checkpoints with
//!     leases and fencing tokens, history kept;
//!   - [`PgBudgetLedger`] ([`aios_governance::BudgetLedger`]): atomic reservations over the
//!     budget chain across workers;
//!   - [`PgApprovalStore`] ([`aios_governance::ApprovalStore`]): approval requests with
//!     compare-and-set transitions, and [`PgApprovalStore::wait_for_change`] to wait for a
//!     decision made elsewhere (`LISTEN`/`NOTIFY`, with polling as the fallback);
//!   - [`PgControlStore`] ([`aios_governance::ControlStore`]): durable operator controls.
//! - [`PgStore::human_credentials`]: [`PgHumanCredentials`], the SHA-256 of each token of
//!   the humans who act through the `aios` command line and the web console.
//! - [`PgStore::orchestrator`] and [`PgStore::memory`]: the production set-up of one worker
//!   on the database, with the system clock and a Tokio timer.
//! - [`SCHEMA_VERSION`]: the schema this build reads and writes.
//!
//! Features: `tls` (TLS through rustls, [`TlsMode::Required`]; off by default) and
//! `testing` (the `testing` module: a throwaway local server for tests and benchmarks).
//!
//! ## Why tokio-postgres and deadpool
//!
//! `tokio-postgres` is the maintained native async driver (no C library), with pipelining,
//! `LISTEN`/`NOTIFY` and precise SQLSTATE codes, which the error mapping needs; `deadpool`
//! adds a small, well-kept pool with timeouts. `sqlx` would bring compile-time query checking
//! that needs a database at build time (or checked-in metadata) and a larger dependency tree;
//! the queries here are few and covered by the conformance suites against a real server.
//!
//! ## Concurrency and atomicity
//!
//! Every operation that reads and writes runs in one transaction (`READ COMMITTED`) and takes,
//! before it reads what it checks, the lock that keeps the check true until it commits:
//! the audit log's advisory lock (appends), the run's row (leases and saves), the budget
//! rows in key order (reservations), the approval's row (transitions). An operation that
//! fails, or is refused, leaves nothing written: the server rolls an unfinished transaction
//! back, also when the connection is lost mid-operation (then the operation fails with
//! [`aios_core::StoreError::Unavailable`]; if it was lost during the commit itself, the
//! outcome is unknown to the caller, as with any networked database).
//!
//! Round trips are what a networked store spends its time on. Statements go through each
//! connection's statement cache, and the hot paths pipeline their transactions: `BEGIN`
//! travels with the locking statement and `COMMIT` with the write, so a checkpoint save or a
//! lease operation is 2 round trips and an audit append 3. A transaction abandoned half-way
//! (a refusal returns after rolling back; a cancelled future drops it) never goes back to
//! the pool open: its connection is closed and the server rolls it back. After a
//! connection-level failure the next checkouts verify their connection first, so a lost
//! connection fails one operation, not the next.
//!
//! ## Schema and errors
//!
//! The schema is versioned in table `aios_schema` ([`SCHEMA_VERSION`]) and created or
//! upgraded at connect, all steps in one transaction, under an advisory lock so workers
//! starting together migrate once. A database with a newer schema is refused with
//! [`aios_core::StoreError::UnsupportedVersion`], naming the database and the version, and
//! nothing is written. Errors name the database as `postgres://user@host:port/db`, never the
//! password: an unreachable server, a lost connection, a server shutting down, a deadlock
//! or too many connections are `Unavailable` (transient); a database that does not exist is
//! `NotFound`; bad credentials and other failures are `Backend`.
//!
//! Values are stored as JSON (serde) in TEXT columns beside key columns; a row that does not
//! decode is `Corrupt`, naming table and row; checkpoints carry a SHA-256 checksum checked on
//! every read.
//!
//! ```no_run
//! use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, Principal};
//! use aios_postgres::PgStore;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::connect("postgres://aios:secret@127.0.0.1:5432/aios").await?;
//! let log = store.audit_log();
//! log.append(AuditRecord::new(Principal::System, AuditEvent::Note { text: "hello".into() }))
//!     .await?;
//! assert!(log.verify(None).await?.is_intact());
//! # Ok(())
//! # }
//! ```

mod approvals;
mod audit;
mod budget;
mod checkpoint;
mod controls;
mod db;
mod humans;
mod memory;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

use std::sync::Arc;

use aios_core::{AuditKey, Clock, StoreError};

pub use approvals::PgApprovalStore;
pub use audit::PgAuditLog;
pub use budget::PgBudgetLedger;
pub use checkpoint::PgCheckpointStore;
pub use controls::PgControlStore;
pub use db::{PgOptions, TlsMode, SCHEMA_VERSION};
pub use humans::{PgHumanCredentials, StoredCredential};
pub use memory::PgMemoryStore;

/// A pool on one AIOS database. Cheap to clone; clones and every port handed out share the
/// pool. Needs a Tokio runtime (the pool's connections run on it).
#[derive(Debug, Clone)]
pub struct PgStore {
    db: Arc<db::Db>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or a
    /// key-value string) with the default [`PgOptions`], and creates or upgrades the schema.
    ///
    /// Errors: [`StoreError::UnsupportedVersion`] for a database with a newer schema;
    /// [`StoreError::Unavailable`] if the server cannot be reached in time;
    /// [`StoreError::NotFound`] if the database does not exist; [`StoreError::Backend`] for
    /// an invalid URL, bad credentials or another failure. Each names the database, never
    /// the password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects to the database at `url` with `options` (see [`PgStore::connect`]).
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(db::Db::connect(url, options).await?),
        })
    }

    /// The database, as `postgres://user@host:port/db` (no password).
    pub fn location(&self) -> &str {
        self.db.location()
    }

    /// The schema version stored in the database (equal to [`SCHEMA_VERSION`] once
    /// connected).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.db.schema_version().await
    }

    /// The audit log. Its appends carry no MAC; see [`PgStore::audit_log_keyed`].
    pub fn audit_log(&self) -> PgAuditLog {
        PgAuditLog::new(self.db.clone(), None)
    }

    /// The audit log, sealing each entry it appends with `key`'s MAC (column `mac`), so
    /// [`aios_core::AuditLogExt::verify_keyed`] detects rows appended without the key.
    pub fn audit_log_keyed(&self, key: AuditKey) -> PgAuditLog {
        PgAuditLog::new(self.db.clone(), Some(key))
    }

    /// The memory store.
    pub fn memory_store(&self) -> PgMemoryStore {
        PgMemoryStore::new(self.db.clone())
    }

    /// The checkpoint store.
    pub fn checkpoint_store(&self) -> PgCheckpointStore {
        PgCheckpointStore::new(self.db.clone())
    }

    /// The budget ledger, reading periods from `clock`. Attach an audit log for alerts with
    /// [`PgBudgetLedger::with_audit`].
    pub fn budget_ledger(&self, clock: Arc<dyn Clock>) -> PgBudgetLedger {
        PgBudgetLedger::new(self.db.clone(), clock)
    }

    /// The approval store.
    pub fn approval_store(&self) -> PgApprovalStore {
        PgApprovalStore::new(self.db.clone())
    }

    /// The operator control store: build [`aios_governance::Controls`] over it with
    /// [`aios_governance::Controls::open`] so controls hold for every worker and survive a
    /// restart.
    pub fn control_store(&self) -> PgControlStore {
        PgControlStore::new(self.db.clone())
    }

    /// The credentials of the humans who act through the operator's command line and
    /// console (table `aios_humans`: only the SHA-256 of each token).
    pub fn human_credentials(&self) -> PgHumanCredentials {
        PgHumanCredentials::new(self.db.clone())
    }

    /// The production set-up of one worker on this database, ready for roles and
    /// connectors: the system clock and a Tokio timer, and all five storage ports of the
    /// orchestrator here: the audit log, checkpoints with leases, the budget ledger (alerts
    /// audited), approvals and operator controls (re-installed from the database, so a kill
    /// switch pulled through any worker before this one started is in force). Worker ids and
    /// id seeds are the unique, OS-seeded defaults of
    /// [`aios_orchestrator::OrchestratorConfig`]. Controls applied later by another worker
    /// are seen by this one when it is set up again.
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

    /// The memory on this database, with the system clock and writes audited in this
    /// database's log (give it to [`PgStore::orchestrator`]'s builder with `.memory(..)`).
    pub async fn memory(&self) -> Result<aios_memory::Memory, aios_memory::MemoryError> {
        aios_memory::Memory::builder(Arc::new(aios_core::SystemClock))
            .store(Arc::new(self.memory_store()))
            .audit(Arc::new(self.audit_log()))
            .open()
            .await
    }
}
