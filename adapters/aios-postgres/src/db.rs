//! The connection pool: parsing the URL, connecting, schema migrations under an advisory
//! lock, and the mapping of PostgreSQL errors into [`StoreError`].

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aios_core::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The schema version this build writes and reads (table `aios_schema`). A database with a
/// newer version is refused with [`StoreError::UnsupportedVersion`].
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The advisory lock key (`AIOS` and 1) that serialises schema migrations: two workers
/// starting together on a fresh database migrate once, one after the other.
pub(crate) const MIGRATION_LOCK: i64 = 0x4149_4F53_0000_0001;

/// The advisory lock key that serialises audit appends: taken inside the append's
/// transaction, so the tail it reads is the tail it links to.
pub(crate) const AUDIT_LOCK: i64 = 0x4149_4F53_0000_0002;

/// The advisory lock key that orders operator control appends.
pub(crate) const CONTROL_LOCK: i64 = 0x4149_4F53_0000_0003;

/// The advisory lock key that serialises additions of human credentials: the check that
/// the table is empty (the first human) or that the adder has a credential holds until the
/// addition commits.
pub(crate) const HUMANS_LOCK: i64 = 0x4149_4F53_0000_0004;

/// The channel on which approval changes are notified (payload: the approval id).
pub(crate) const APPROVAL_CHANNEL: &str = "aios_approvals";

/// Schema migrations: entry `i` upgrades version `i` to `i + 1`. Append only; never edit a
/// released step. Every table is prefixed `aios_`, so the schema can share a database.
const MIGRATIONS: &[&str] = &[
    // version 1
    r#"
    CREATE TABLE aios_audit_entries (
        seq   BIGINT  PRIMARY KEY,
        v     INTEGER NOT NULL,
        hash  TEXT    NOT NULL,
        mac   TEXT,
        entry TEXT    NOT NULL
    );
    CREATE TABLE aios_memory_versions (
        id      TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        record  TEXT   NOT NULL,
        PRIMARY KEY (id, version)
    );
    CREATE TABLE aios_runs (
        run        TEXT COLLATE "C" PRIMARY KEY,
        last_token BIGINT  NOT NULL DEFAULT 0,
        lease      TEXT,
        latest_seq BIGINT  NOT NULL DEFAULT 0,
        workflow   TEXT,
        status     TEXT,
        parked     BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE aios_checkpoints (
        run        TEXT COLLATE "C" NOT NULL,
        seq        BIGINT NOT NULL,
        checkpoint TEXT   NOT NULL,
        checksum   TEXT   NOT NULL,
        PRIMARY KEY (run, seq)
    );
    CREATE TABLE aios_budget_accounts (
        key     TEXT COLLATE "C" PRIMARY KEY,
        account TEXT NOT NULL
    );
    CREATE TABLE aios_budget_reservations (
        id          BIGSERIAL PRIMARY KEY,
        run         TEXT,
        expires_at  BIGINT  NOT NULL,
        expired     BOOLEAN NOT NULL DEFAULT FALSE,
        reservation TEXT    NOT NULL
    );
    CREATE INDEX aios_budget_reservations_due ON aios_budget_reservations (expired, expires_at);
    CREATE INDEX aios_budget_reservations_run ON aios_budget_reservations (run);
    CREATE TABLE aios_budget_charges (
        key         TEXT   PRIMARY KEY,
        reservation BIGINT NOT NULL
    );
    CREATE TABLE aios_approvals (
        id           TEXT   PRIMARY KEY,
        anchor       TEXT   NOT NULL,
        state        TEXT   NOT NULL,
        created_secs BIGINT NOT NULL,
        created_nano BIGINT NOT NULL,
        request      TEXT   NOT NULL
    );
    CREATE INDEX aios_approvals_by_state ON aios_approvals (state, created_secs, created_nano, id);
    CREATE TABLE aios_control_records (
        seq    BIGSERIAL PRIMARY KEY,
        v      INTEGER NOT NULL,
        record TEXT    NOT NULL
    );
    "#,
    // version 2: the work queue. `ready`: the latest checkpoint can go on (running, or parked
    // on an approval reported settled); `lease_expires`: the current lease's expiry in
    // microseconds since the epoch (NULL without a lease); `settled`: the approvals reported
    // settled for the run, as a JSON list. Parked runs start not ready: a worker's look
    // through the parked runs wakes those whose approval was decided meanwhile.
    r#"
    ALTER TABLE aios_runs ADD COLUMN ready BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE aios_runs ADD COLUMN lease_expires BIGINT;
    ALTER TABLE aios_runs ADD COLUMN settled TEXT;
    UPDATE aios_runs SET ready = (status::jsonb ->> 'status' = 'running') WHERE status IS NOT NULL;
    UPDATE aios_runs
       SET lease_expires = (extract(epoch FROM (lease::jsonb ->> 'expires_at')::timestamptz)
                            * 1000000)::bigint
     WHERE lease IS NOT NULL;
    CREATE INDEX aios_runs_ready ON aios_runs (run) WHERE ready;
    "#,
    // version 3: the credentials of the humans who act through the operator's command line
    // and console: only the SHA-256 of each token, never the token; `added_by` is the human
    // who gave it (NULL for the first human of the database).
    r#"
    CREATE TABLE aios_humans (
        name         TEXT COLLATE "C" PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        added_at     TEXT NOT NULL,
        added_by     TEXT
    );
    "#,
];

/// Whether and how connections are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP or a Unix socket (the default; fine on loopback and private networks).
    #[default]
    Disabled,
    /// TLS through rustls, the server's certificate checked against the webpki roots
    /// (feature `tls`).
    #[cfg(feature = "tls")]
    Required,
}

/// How a store connects to its database.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgOptions {
    /// The most connections the pool opens (default 16).
    pub max_connections: usize,
    /// How long connecting, or waiting for a free pooled connection, may take before an
    /// operation fails with [`StoreError::Unavailable`] (default 5 s).
    pub connect_timeout: Duration,
    /// How often [`crate::PgApprovalStore::wait_for_change`] re-reads the request when no
    /// notification arrives (the fallback for a lost notification; default 1 s).
    pub poll_interval: Duration,
    /// Encryption of the connections (default [`TlsMode::Disabled`]).
    pub tls: TlsMode,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            tls: TlsMode::Disabled,
        }
    }
}

impl PgOptions {
    /// Sets the pool size (at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets the connect and pool wait timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the polling fallback of approval waits.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the encryption of the connections.
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }
}

/// The pool shared by every port of a store.
pub(crate) struct Db {
    pool: Pool,
    config: tokio_postgres::Config,
    location: String,
    options: PgOptions,
    /// How many checkouts still verify their connection before use: set after an error
    /// that may have left dead connections idle in the pool (see [`Db::client`]).
    suspect: AtomicUsize,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The pooled connection type.
pub(crate) type Client = deadpool_postgres::Object;

/// A URL's user, host, port and database, never its password: how a database is named in
/// errors and logs.
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    if user.is_empty() {
        format!("postgres://{host}:{port}/{db}")
    } else {
        format!("postgres://{user}@{host}:{port}/{db}")
    }
}

/// Parses a connection URL (or key-value string), never echoing its password.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Backend {
        detail: format!("invalid postgres url (not shown, it may hold a password): {e}"),
    })
}

impl Db {
    /// Connects (one connection, to fail early with a clear error), checks the schema
    /// version and migrates.
    pub(crate) async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let mut config = parse_url(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("aios");
        }
        let location = describe(&config);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match options.tls {
            TlsMode::Disabled => {
                Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config)
            }
            #[cfg(feature = "tls")]
            TlsMode::Required => {
                Manager::from_config(config.clone(), crate::tls::connector()?, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend {
                detail: format!("cannot build the connection pool for `{location}`: {e}"),
            })?;
        let db = Self {
            pool,
            config,
            location,
            options,
            suspect: AtomicUsize::new(0),
        };
        db.migrate().await?;
        Ok(db)
    }

    /// The database, for messages: `postgres://user@host:port/db`, no password.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    pub(crate) fn options(&self) -> &PgOptions {
        &self.options
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A pooled connection.
    ///
    /// After an operation failed for a reason that may have broken connections (a lost
    /// connection, a server restart), the next checkouts first run an empty query and drop
    /// a connection that fails it, instead of handing it out; otherwise a connection is
    /// checked only for being closed, which costs nothing.
    pub(crate) async fn client(&self, what: &str) -> Result<Client, StoreError> {
        loop {
            let client = self.checkout(what).await?;
            let due = self
                .suspect
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if !due || client.simple_query("").await.is_ok() {
                return Ok(client);
            }
            // detached from the pool: dropped, never handed out again
            drop(deadpool_postgres::Object::take(client));
        }
    }

    async fn checkout(&self, what: &str) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => self.err(what, e),
            PoolError::Timeout(_) => StoreError::Unavailable {
                detail: format!(
                    "no connection to `{}` within {:?} ({what})",
                    self.location, self.options.connect_timeout
                ),
            },
            other => StoreError::Unavailable {
                detail: format!("no connection to `{}` ({what}): {other}", self.location),
            },
        })
    }

    /// Maps a PostgreSQL error met while doing `what`; after one that may have broken
    /// connections, the next checkouts verify theirs.
    pub(crate) fn err(&self, what: &str, e: tokio_postgres::Error) -> StoreError {
        let mapped = map_pg(&self.location, what, &e);
        if matches!(mapped, StoreError::Unavailable { .. }) {
            self.suspect
                .store(self.options.max_connections + 1, Ordering::Relaxed);
        }
        mapped
    }

    /// Applies every missing migration step and the new version in one transaction, under
    /// the migration advisory lock; a newer schema is refused and nothing is written.
    async fn migrate(&self) -> Result<(), StoreError> {
        let what = "migrate the schema";
        // the first connection of the pool: its failures are failures to connect
        let mut client = self.client("connect").await?;
        let tx = client.transaction().await.map_err(|e| self.err(what, e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.err(what, e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS aios_schema (
                 id      INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             )",
        )
        .await
        .map_err(|e| self.err(what, e))?;
        let row = tx
            .query_opt("SELECT version FROM aios_schema WHERE id = 1", &[])
            .await
            .map_err(|e| self.err(what, e))?;
        let version: i32 = row.map_or(0, |r| r.get(0));
        let version = u32::try_from(version).unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedVersion {
                location: format!("table `aios_schema` in `{}`", self.location),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            // nothing to do; ending the transaction releases the lock
            return tx.commit().await.map_err(|e| self.err(what, e));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(step)
                .await
                .map_err(|e| self.err(&format!("migrate to schema version {}", i + 1), e))?;
        }
        let v = i32::try_from(SCHEMA_VERSION).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO aios_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            &[&v],
        )
        .await
        .map_err(|e| self.err(what, e))?;
        tx.commit().await.map_err(|e| self.err(what, e))
    }

    /// The schema version stored in the database.
    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        let what = "read the schema version";
        let client = self.client(what).await?;
        let row = client
            .query_opt("SELECT version FROM aios_schema WHERE id = 1", &[])
            .await
            .map_err(|e| self.err(what, e))?;
        Ok(row.map_or(0, |r| u32::try_from(r.get::<_, i32>(0)).unwrap_or(0)))
    }

    /// Serialises `value` for a TEXT column.
    pub(crate) fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|e| StoreError::Backend {
            detail: format!("cannot encode {what} for `{}`: {e}", self.location),
        })
    }

    /// Decodes a TEXT column; a failure is [`StoreError::Corrupt`] naming where.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &dyn std::fmt::Display,
        text: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            location: format!("table `{table}` row `{key}` in `{}`", self.location),
            detail: e.to_string(),
        })
    }
}

/// Maps a PostgreSQL error met at `location` while doing `what` into the port's error:
/// what a retry may cure (unreachable, connection lost, server shutting down, too many
/// connections, serialization failure or deadlock) is [`StoreError::Unavailable`]; a missing
/// database is [`StoreError::NotFound`]; everything else, bad credentials included, is
/// [`StoreError::Backend`]. The message names the database, never the password.
pub(crate) fn map_pg(location: &str, what: &str, e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let msg = db.message();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return StoreError::Backend {
                detail: format!("authentication to `{location}` failed ({what}): {msg}"),
            };
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return StoreError::NotFound {
                what: format!("database of `{location}` ({what}): {msg}"),
            };
        }
        let transient = [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::QUERY_CANCELED,
        ];
        if transient.contains(code) || code.code().starts_with("08") {
            return StoreError::Unavailable {
                detail: format!("`{location}` ({what}): {msg}"),
            };
        }
        return StoreError::Backend {
            detail: format!("{what} on `{location}`: {msg} (sqlstate {})", code.code()),
        };
    }
    if e.is_closed() {
        return StoreError::Unavailable {
            detail: format!("the connection to `{location}` was lost ({what})"),
        };
    }
    // I/O and connect failures: unreachable host, refused connection, timeouts
    let cause = std::error::Error::source(e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    StoreError::Unavailable {
        detail: format!("cannot reach `{location}` ({what}): {e}{cause}"),
    }
}

/// A transaction on a pooled connection whose `BEGIN` travels with its first statement and
/// whose `COMMIT` with its last (pipelined: one round trip each), for the hot paths. If the
/// last statement fails, the server turns the `COMMIT` into a rollback, so nothing is
/// written. Dropped while open (an early return, a cancelled future), the connection is
/// detached from the pool and closed, which makes the server roll the transaction back;
/// it is never handed out inside a transaction.
pub(crate) struct Tx<'a> {
    db: &'a Db,
    what: &'a str,
    client: Option<Client>,
}

impl Db {
    /// Begins a transaction with `sql` as its first statement; returns its rows.
    pub(crate) async fn begin_with<'a>(
        &'a self,
        what: &'a str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Tx<'a>, Vec<Row>), StoreError> {
        let client = self.client(what).await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.err(what, e))?;
        let tx = Tx {
            db: self,
            what,
            client: Some(client),
        };
        let (begun, rows) = {
            let c = tx.client()?;
            futures::join!(c.batch_execute("BEGIN"), c.query(&stmt, params))
        };
        begun.map_err(|e| self.err(what, e))?;
        let rows = rows.map_err(|e| self.err(what, e))?;
        Ok((tx, rows))
    }
}

impl Tx<'_> {
    fn client(&self) -> Result<&Client, StoreError> {
        self.client.as_ref().ok_or_else(|| StoreError::Backend {
            detail: format!("the transaction on `{}` is over", self.db.location()),
        })
    }

    /// Runs a statement inside the transaction.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.client()?
            .c_query(sql, params)
            .await
            .map_err(|e| self.db.err(self.what, e))
    }

    /// Runs `sql` as the last statement and commits, in one round trip.
    pub(crate) async fn commit_with(
        mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let (db, what) = (self.db, self.what);
        let c = self.client()?;
        let stmt = c.prepare_cached(sql).await.map_err(|e| db.err(what, e))?;
        let (done, committed) = futures::join!(c.execute(&stmt, params), c.batch_execute("COMMIT"));
        let committed = committed.map_err(|e| db.err(what, e));
        let done = done.map_err(|e| db.err(what, e));
        if committed.is_ok() {
            // the transaction is over (committed, or rolled back by the failed statement):
            // the connection goes back to the pool
            drop(self.client.take());
        }
        committed?;
        done
    }

    /// Rolls back (a refusal found under the locks).
    pub(crate) async fn rollback(mut self) -> Result<(), StoreError> {
        let c = self.client()?;
        c.batch_execute("ROLLBACK")
            .await
            .map_err(|e| self.db.err(self.what, e))?;
        drop(self.client.take());
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Statements run through each connection's statement cache: prepared once per connection,
/// so every later run is one round trip instead of two (parse, then execute).
pub(crate) trait Cached: deadpool_postgres::GenericClient {
    /// Like `query`, with the statement cached.
    async fn c_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.query(&stmt, params).await
    }

    /// Like `query_opt`, with the statement cached.
    async fn c_query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.query_opt(&stmt, params).await
    }

    /// Like `query_one`, with the statement cached.
    async fn c_query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.query_one(&stmt, params).await
    }

    /// Like `execute`, with the statement cached.
    async fn c_execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let stmt = self.prepare_cached(sql).await?;
        self.execute(&stmt, params).await
    }
}

impl<C: deadpool_postgres::GenericClient> Cached for C {}

/// Whether `e` is a unique-constraint violation (a concurrent insert of the same key).
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A `u64` for a BIGINT column.
pub(crate) fn to_sql_u64(location: &str, what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend {
        detail: format!("{what} {v} does not fit a bigint in `{location}`"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_location_never_holds_the_password() {
        let c = parse_url("postgres://ann:s3cret@db.example:6543/aios").unwrap();
        assert_eq!(describe(&c), "postgres://ann@db.example:6543/aios");
        let c = parse_url("host=/run/pg user=bob password=s3cret dbname=x").unwrap();
        assert_eq!(describe(&c), "postgres://bob@/run/pg:5432/x");
    }

    #[test]
    fn a_bad_url_is_not_echoed() {
        let e = parse_url("postgres://ann:s3cret@db.example:notaport/aios").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("invalid postgres url"), "{e}");
    }
}
