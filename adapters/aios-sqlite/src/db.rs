//! The shared connection: opening, pragmas, schema migrations, transactions and the mapping
//! of SQLite errors into [`StoreError`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use aios_core::StoreError;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The schema version this build writes and reads (`PRAGMA user_version`). A database with a
/// newer version is refused with [`StoreError::UnsupportedVersion`].
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// `PRAGMA application_id` of AIOS databases (`AIOS` in ASCII), so that a foreign SQLite
/// file is refused instead of being written into.
pub(crate) const APPLICATION_ID: i64 = 0x4149_4F53;

/// Schema migrations: entry `i` upgrades version `i` to `i + 1`. Append only; never edit a
/// released step.
const MIGRATIONS: &[&str] = &[
    // version 1
    "
    CREATE TABLE audit_entries (
        seq   INTEGER PRIMARY KEY,
        v     INTEGER NOT NULL,
        hash  TEXT    NOT NULL,
        entry TEXT    NOT NULL
    );
    CREATE TABLE memory_versions (
        id      TEXT    NOT NULL,
        version INTEGER NOT NULL,
        record  TEXT    NOT NULL,
        PRIMARY KEY (id, version)
    ) WITHOUT ROWID;
    CREATE TABLE budget_accounts (
        key     TEXT PRIMARY KEY,
        account TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE budget_reservations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        reservation TEXT NOT NULL
    );
    CREATE TABLE approvals (
        id           TEXT    PRIMARY KEY,
        anchor       TEXT    NOT NULL,
        state        TEXT    NOT NULL,
        created_secs INTEGER NOT NULL,
        created_nano INTEGER NOT NULL,
        request      TEXT    NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX approvals_by_state ON approvals (state, created_secs, created_nano, id);
    CREATE TABLE runs (
        run         TEXT    PRIMARY KEY,
        last_token  INTEGER NOT NULL,
        lease       TEXT,
        latest_seq  INTEGER NOT NULL DEFAULT 0,
        workflow    TEXT,
        status      TEXT,
        parked      INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE checkpoints (
        run        TEXT    NOT NULL,
        seq        INTEGER NOT NULL,
        checkpoint TEXT    NOT NULL,
        PRIMARY KEY (run, seq)
    ) WITHOUT ROWID;
    ",
    // version 2: the MAC of each audit entry appended under an `AuditKey` (NULL without)
    "ALTER TABLE audit_entries ADD COLUMN mac TEXT;",
    // version 3: the checksum of each stored checkpoint; rows already there get theirs in
    // the same transaction (see `CHECKPOINT_CHECKSUM_STEP`)
    CHECKPOINT_CHECKSUM_STEP,
    // version 4: budget reservations expire and charge keys are charged once; operator
    // controls are durable. Reservations in flight at the upgrade were left by a process of
    // the previous version and expire at the first sweep (a commit still records them).
    "
    ALTER TABLE budget_reservations ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE budget_reservations ADD COLUMN expired INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX budget_reservations_due ON budget_reservations (expired, expires_at);
    CREATE TABLE budget_charges (
        key         TEXT    PRIMARY KEY,
        reservation INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE control_records (
        seq    INTEGER PRIMARY KEY,
        v      INTEGER NOT NULL,
        record TEXT    NOT NULL
    );
    ",
    // version 5: budgets limit money moved (`payments`) apart from spend; the per-dimension
    // arrays of stored accounts and reservations gain it as their second element
    "
    UPDATE budget_accounts SET account = json_set(account,
        '$.committed', json_array(json_extract(account, '$.committed[0]'), 0,
            json_extract(account, '$.committed[1]'), json_extract(account, '$.committed[2]'),
            json_extract(account, '$.committed[3]')),
        '$.reserved', json_array(json_extract(account, '$.reserved[0]'), 0,
            json_extract(account, '$.reserved[1]'), json_extract(account, '$.reserved[2]'),
            json_extract(account, '$.reserved[3]')),
        '$.alerted', json_array(json_extract(account, '$.alerted[0]'), 0,
            json_extract(account, '$.alerted[1]'), json_extract(account, '$.alerted[2]'),
            json_extract(account, '$.alerted[3]')));
    UPDATE budget_reservations SET reservation = json_set(reservation,
        '$.amount', json_array(json_extract(reservation, '$.amount[0]'), 0,
            json_extract(reservation, '$.amount[1]'), json_extract(reservation, '$.amount[2]'),
            json_extract(reservation, '$.amount[3]')));
    ",
    // version 6: the work queue. `ready`: the run's latest checkpoint can go on (running, or
    // parked on an approval reported settled); `settled`: the approvals reported settled for
    // the run, as a JSON list. Parked runs start not ready: a worker's look through the
    // parked runs wakes those whose approval was decided meanwhile.
    r#"
    ALTER TABLE runs ADD COLUMN ready INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN settled TEXT;
    UPDATE runs SET ready = 1 WHERE json_extract(status, '$.status') = 'running';
    CREATE INDEX runs_ready ON runs (run) WHERE ready = 1;
    "#,
];

/// The migration step that adds checkpoint checksums. Found in [`MIGRATIONS`] by value, so
/// the backfill that must follow it runs exactly when the step does, wherever it sits.
const CHECKPOINT_CHECKSUM_STEP: &str = "ALTER TABLE checkpoints ADD COLUMN checksum TEXT;";

/// How hard each commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced to the write-ahead log before it returns,
    /// so a committed operation survives a power loss as well as a process crash. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode commits are fsynced only at WAL checkpoints. A commit
    /// survives the process being killed, but the last ones may be lost on a power failure.
    Normal,
}

/// How a database file is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How hard commits are pushed to disk (default [`Durability::Full`]).
    pub durability: Durability,
    /// How long an operation waits for another connection's lock before it fails with
    /// [`StoreError::Unavailable`] (default 5 s).
    pub busy_timeout: Duration,
    /// Whether opening runs `PRAGMA quick_check` so a damaged file is reported at once as
    /// [`StoreError::Corrupt`] (default `true`; its cost grows with the file's size).
    pub check_on_open: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            check_on_open: true,
        }
    }
}

impl SqliteOptions {
    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets how long to wait for a lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets whether opening checks the file's integrity.
    pub fn check_on_open(mut self, check: bool) -> Self {
        self.check_on_open = check;
        self
    }
}

/// One connection shared by every port of a store.
pub(crate) struct Db {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
    location: String,
    /// Whether commits are fsynced (`synchronous=FULL` on a file).
    fsync: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the database file at `path`, creating it only if nothing exists there.
    ///
    /// A new file is built complete (identity, WAL mode, schema) under a temporary name beside
    /// `path` and then linked into place, which fails if something appeared there meanwhile:
    /// so `path` never holds a half-made store, and a file that exists but is empty, truncated
    /// or has no AIOS identity is refused as [`StoreError::Corrupt`] instead of being taken
    /// for a new store.
    pub(crate) fn open(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        if !exists(path, &location)? {
            create_new(path, &location, options)?;
        }
        check_header(path, &location)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| map_sqlite(&location, "open", e))?;
        let db = Self {
            conn: Mutex::new(conn),
            path: Some(path.to_path_buf()),
            location,
            fsync: options.durability == Durability::Full,
        };
        db.prepare(options, Fresh::No)?;
        Ok(db)
    }

    /// A private database in process memory.
    pub(crate) fn in_memory() -> Result<Self, StoreError> {
        let location = ":memory:".to_string();
        let conn = Connection::open_in_memory().map_err(|e| map_sqlite(&location, "open", e))?;
        let db = Self {
            conn: Mutex::new(conn),
            path: None,
            location,
            fsync: false,
        };
        db.prepare(
            &SqliteOptions::default().check_on_open(false),
            Fresh::InMemory,
        )?;
        Ok(db)
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The path, or `:memory:`, for messages.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// Maps an SQLite error met while doing `what`.
    pub(crate) fn err(&self, what: &str, e: rusqlite::Error) -> StoreError {
        map_sqlite(&self.location, what, e)
    }

    /// Checks the version and identity, sets the pragmas and migrates, in that order, so a
    /// file that is refused is not written to.
    fn prepare(&self, options: &SqliteOptions, fresh: Fresh) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| self.err("set busy_timeout", e))?;
        let (version, app_id) = identity(&conn).map_err(|e| self.err("read the header", e))?;
        self.check_identity(&conn, version, app_id, fresh)?;
        if options.check_on_open && version > 0 {
            self.quick_check(&conn)?;
        }
        if fresh != Fresh::InMemory {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
                .map_err(|e| self.err("switch to WAL mode", e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Backend {
                    detail: format!(
                        "database `{}` refused WAL mode (journal_mode is `{mode}`)",
                        self.location
                    ),
                });
            }
        }
        let sync = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(|e| self.err("set synchronous", e))?;
        if version < SCHEMA_VERSION {
            self.migrate(&mut conn)?;
        }
        Ok(())
    }

    fn check_identity(
        &self,
        conn: &Connection,
        version: u32,
        app_id: i64,
        fresh: Fresh,
    ) -> Result<(), StoreError> {
        if app_id != 0 && app_id != APPLICATION_ID {
            return Err(StoreError::Corrupt {
                location: self.location.clone(),
                detail: format!("not an aios database (application_id {app_id:#x})"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedVersion {
                location: self.location.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if app_id == 0 && fresh == Fresh::No {
            // AIOS only creates files that did not exist (see `create_new`), complete with
            // their identity: an existing file without it was made by someone else
            return Err(StoreError::Corrupt {
                location: self.location.clone(),
                detail: "not an aios database (it has no aios application_id)".into(),
            });
        }
        if app_id == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| self.err("read the schema", e))?;
            if tables > 0 || version > 0 {
                return Err(StoreError::Corrupt {
                    location: self.location.clone(),
                    detail: "not an aios database (it has a schema but no aios application_id)"
                        .into(),
                });
            }
        }
        Ok(())
    }

    fn quick_check(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut stmt = conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(|e| self.err("check integrity", e))?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err("check integrity", e))?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                location: self.location.clone(),
                detail: format!("integrity check failed: {}", rows.join("; ")),
            })
        }
    }

    /// Applies every missing migration step and the new version in one transaction.
    fn migrate(&self, conn: &mut Connection) -> Result<(), StoreError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err("begin the migration", e))?;
        // another process may have migrated while we waited for the lock
        let (version, app_id) = identity(&tx).map_err(|e| self.err("read the header", e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedVersion {
                location: self.location.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if app_id == 0 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(|e| self.err("set application_id", e))?;
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(step)
                .map_err(|e| self.err(&format!("migrate to schema version {}", i + 1), e))?;
            if *step == CHECKPOINT_CHECKSUM_STEP {
                crate::checkpoint::backfill_checksums(self, &tx)?;
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| self.err("set user_version", e))?;
        tx.commit().map_err(|e| self.err("commit the migration", e))
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction: it holds the write lock from the start, so
    /// what `f` reads cannot change before it writes. Commits if `f` returns `Ok`; rolls back
    /// otherwise, so a failed operation leaves the database as it was.
    pub(crate) fn write<T, E: From<StoreError>>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn.lock();
        Self::transact(&mut conn, |e| self.err(what, e), f)
    }

    /// Like [`Db::write`], but the commit is not fsynced even under [`Durability::Full`]: it
    /// survives the process being killed, and on a power loss it is lost only together with
    /// everything committed after it (the WAL is synced in order, so the next fsynced commit
    /// makes it durable too). For writes whose loss on power failure is harmless because the
    /// processes that relied on them died with the machine: taking and giving up leases.
    pub(crate) fn write_unsynced<T, E: From<StoreError>>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn.lock();
        if !self.fsync {
            return Self::transact(&mut conn, |e| self.err(what, e), f);
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| E::from(self.err(what, e)))?;
        let out = Self::transact(&mut conn, |e| self.err(what, e), f);
        let restored = conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| E::from(self.err("restore synchronous=FULL", e)));
        let out = out?;
        restored?;
        Ok(out)
    }

    fn transact<T, E: From<StoreError>>(
        conn: &mut Connection,
        err: impl Fn(rusqlite::Error) -> StoreError,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| E::from(err(e)))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| E::from(err(e)))?;
        Ok(out)
    }

    /// Runs `f` in a read transaction: a consistent snapshot across its statements.
    pub(crate) fn read<T, E: From<StoreError>>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| E::from(self.err(what, e)))?;
        let out = f(&tx)?;
        // a read-only transaction: ending it cannot lose anything
        tx.commit().map_err(|e| E::from(self.err(what, e)))?;
        Ok(out)
    }

    /// The schema version stored in the file.
    pub(crate) fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.conn.lock();
        identity(&conn)
            .map(|(v, _)| v)
            .map_err(|e| self.err("read user_version", e))
    }

    /// Runs `PRAGMA integrity_check` (the full check).
    pub(crate) fn integrity_check(&self) -> Result<(), StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("PRAGMA integrity_check(5)")
            .map_err(|e| self.err("check integrity", e))?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err("check integrity", e))?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                location: self.location.clone(),
                detail: format!("integrity check failed: {}", rows.join("; ")),
            })
        }
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

/// Where a connection's database came from, which decides what [`Db::prepare`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// An existing file: it must already carry the AIOS identity.
    No,
    /// A file this process just created under a temporary name.
    NewFile,
    /// A private in-memory database.
    InMemory,
}

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The size of the SQLite file header; a database file is never shorter.
const SQLITE_HEADER_LEN: u64 = 100;

fn exists(path: &Path, location: &str) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Backend {
            detail: format!("cannot inspect database `{location}`: {e}"),
        }),
    }
}

/// Refuses a file too short to be an SQLite database or without its magic bytes, before
/// SQLite sees it (SQLite would take an empty file for a new database and write into it).
fn check_header(path: &Path, location: &str) -> Result<(), StoreError> {
    use std::io::Read;
    let corrupt = |detail: String| StoreError::Corrupt {
        location: location.to_string(),
        detail,
    };
    let io = |e: std::io::Error| StoreError::Backend {
        detail: format!("cannot read database `{location}`: {e}"),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < SQLITE_HEADER_LEN {
        return Err(corrupt(format!(
            "the file is truncated: {len} bytes, shorter than the {SQLITE_HEADER_LEN}-byte \
             sqlite header"
        )));
    }
    let mut magic = [0u8; 16];
    file.read_exact(&mut magic).map_err(io)?;
    if &magic != SQLITE_MAGIC {
        return Err(corrupt(
            "not an sqlite database (the file does not start with the sqlite header)".into(),
        ));
    }
    Ok(())
}

/// Creates a complete store at `path` if nothing is there: built under a temporary name in
/// the same directory, closed (so its write-ahead log is folded in), then hard-linked to
/// `path`, which fails without touching anything if another process created `path` first.
fn create_new(path: &Path, location: &str, options: &SqliteOptions) -> Result<(), StoreError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let backend = |what: &str, e: std::io::Error| StoreError::Backend {
        detail: format!("cannot create database `{location}` ({what}): {e}"),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(
        ".{name}.creating-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let cleanup = |temp: &Path| {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = temp.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    };
    let built = (|| {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&temp, flags)
            .map_err(|e| map_sqlite(location, "create", e))?;
        let db = Db {
            conn: Mutex::new(conn),
            path: Some(temp.clone()),
            location: location.to_string(),
            fsync: options.durability == Durability::Full,
        };
        db.prepare(&options.clone().check_on_open(false), Fresh::NewFile)?;
        db.conn
            .into_inner()
            .close()
            .map_err(|(_, e)| map_sqlite(location, "close the new database", e))?;
        match std::fs::hard_link(&temp, path) {
            Ok(()) => sync_dir(path, location),
            // another process created it first: open theirs
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(backend("link it into place", e)),
        }
    })();
    cleanup(&temp);
    built
}

/// Makes a new directory entry durable (on Unix; elsewhere the file system does).
fn sync_dir(path: &Path, location: &str) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Backend {
                detail: format!("cannot sync the directory of new database `{location}`: {e}"),
            })?;
    }
    #[cfg(not(unix))]
    let _ = (path, location);
    Ok(())
}

fn identity(conn: &Connection) -> rusqlite::Result<(u32, i64)> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let app_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    Ok((u32::try_from(version).unwrap_or(u32::MAX), app_id))
}

/// Maps an SQLite error met at `location` while doing `what` into the port's error.
pub(crate) fn map_sqlite(location: &str, what: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable {
            detail: format!("database `{location}` is locked by another connection ({what}): {e}"),
        },
        Some(ErrorCode::NotADatabase) => StoreError::Corrupt {
            location: location.to_string(),
            detail: format!("not an sqlite database ({what}): {e}"),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            location: location.to_string(),
            detail: format!("{what}: {e}"),
        },
        Some(ErrorCode::CannotOpen) => StoreError::Backend {
            detail: format!("cannot open database `{location}`: {e}"),
        },
        Some(ErrorCode::DiskFull) => StoreError::Unavailable {
            detail: format!("disk full writing `{location}` ({what}): {e}"),
        },
        _ => StoreError::Backend {
            detail: format!("{what} on `{location}`: {e}"),
        },
    }
}

/// A `u64` for an INTEGER column; SQLite integers are signed 64-bit.
pub(crate) fn to_sql_u64(location: &str, what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend {
        detail: format!("{what} {v} does not fit an sqlite integer in `{location}`"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn synchronous(db: &Db) -> i64 {
        db.conn
            .lock()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn unsynced_writes_restore_full_durability() {
        let dir = std::env::temp_dir().join(format!("aios-sqlite-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open(&dir.join("sync.db"), &SqliteOptions::default()).unwrap();
        assert_eq!(synchronous(&db), 2, "FULL after open");
        db.write_unsynced("test", |tx| {
            assert_eq!(
                tx.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))
                    .unwrap(),
                1,
                "NORMAL inside"
            );
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(synchronous(&db), 2, "FULL again after an unsynced write");
        let refused = db.write_unsynced("test", |_| {
            Err::<(), _>(StoreError::Conflict {
                detail: "refused".into(),
            })
        });
        assert!(refused.is_err());
        assert_eq!(synchronous(&db), 2, "FULL again after a refused write");
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
