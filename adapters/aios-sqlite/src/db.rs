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
    // version 2: budget reservations expire and charge keys are charged once; operator
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
];

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
    /// Opens (creating if needed) the database file at `path`.
    pub(crate) fn open(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| map_sqlite(&location, "open", e))?;
        let db = Self {
            conn: Mutex::new(conn),
            path: Some(path.to_path_buf()),
            location,
            fsync: options.durability == Durability::Full,
        };
        db.prepare(options, true)?;
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
        db.prepare(&SqliteOptions::default().check_on_open(false), false)?;
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
    fn prepare(&self, options: &SqliteOptions, file: bool) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| self.err("set busy_timeout", e))?;
        let (version, app_id) = identity(&conn).map_err(|e| self.err("read the header", e))?;
        self.check_identity(&conn, version, app_id)?;
        if options.check_on_open && version > 0 {
            self.quick_check(&conn)?;
        }
        if file {
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
