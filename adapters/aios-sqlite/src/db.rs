//! The shared connection: opening, pragmas, schema migrations, transactions and the mapping
//! of SQLite errors into [`StoreError`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use aios_core::StoreError;
use crossbeam_channel::{Receiver, Sender};
use futures::channel::oneshot;
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
    // version 7: the credentials of the humans who act through the operator's surfaces
    // (only SHA-256 hashes of their tokens). `IF NOT EXISTS`: the command line made this
    // table itself before, with these columns
    "
    CREATE TABLE IF NOT EXISTS aios_humans (
        name TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        added_at TEXT NOT NULL,
        added_by TEXT
    );
    ",
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
    /// How many reader connections, each on its own thread, serve the reads (default 2; `0`
    /// sends reads to the writer thread, between its commits). WAL mode lets them read while
    /// the writer writes. A store in memory has none.
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            check_on_open: true,
            readers: 2,
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

    /// Sets how many reader connections serve the reads.
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// Sets whether opening checks the file's integrity.
    pub fn check_on_open(mut self, check: bool) -> Self {
        self.check_on_open = check;
        self
    }
}

/// The connections of one store: a writer thread that owns the one write connection and
/// group-commits the writes queued at the moment, and a pool of reader threads, each with its
/// own connection (WAL lets readers run beside the writer). Ports hand closures to
/// [`Db::write`], [`Db::write_unsynced`] and [`Db::read`] and await the answer, so no caller
/// blocks its executor on SQLite or on an fsync, on any executor (the answer comes through a
/// `futures` oneshot). Dropping the last handle closes the queues; the threads finish what
/// was queued, close their connections and are joined.
pub(crate) struct Db {
    path: Option<PathBuf>,
    location: String,
    /// To the writer thread (writes, and reads when there is no reader pool).
    writer: Option<Sender<Task>>,
    /// To the reader threads; `None` in memory, where every connection would see its own
    /// database.
    readers: Option<Sender<Box<dyn ReadJob>>>,
    threads: Vec<JoinHandle<()>>,
    /// Transactions the writer thread committed (group commits, and writes run one by one).
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // closing the queues stops the threads once they have done what was queued; a thread
        // that itself dropped the last handle (a queued closure held one) is not joined.
        // The readers go first and the writer last: SQLite checkpoints the WAL into the file
        // and removes it only when the connection closing sees no other one open, and two
        // connections closing at the same moment can each see the other and both leave it.
        // So the file is whole on its own once the last handle is gone.
        let me = std::thread::current().id();
        let join = |thread: JoinHandle<()>| {
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        };
        self.readers = None;
        // the writer thread is the first one started
        let mut threads = self.threads.drain(..);
        let writer = threads.next();
        threads.for_each(join);
        self.writer = None;
        writer.into_iter().for_each(join);
    }
}

/// At most this many queued writes share one transaction (one fsync).
const MAX_GROUP: usize = 256;

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
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| map_sqlite(&location, "open", e))?;
        prepare(&mut conn, &location, options, Fresh::No)?;
        let mut readers = Vec::with_capacity(options.readers);
        for _ in 0..options.readers {
            let reader = Connection::open_with_flags(path, flags)
                .map_err(|e| map_sqlite(&location, "open a reader connection", e))?;
            reader
                .busy_timeout(options.busy_timeout)
                .map_err(|e| map_sqlite(&location, "set busy_timeout", e))?;
            // a reader never writes, whatever a closure asks
            reader
                .pragma_update(None, "query_only", true)
                .map_err(|e| map_sqlite(&location, "make a reader connection read-only", e))?;
            readers.push(reader);
        }
        let fsync = options.durability == Durability::Full;
        Self::start(Some(path.to_path_buf()), location, conn, readers, fsync)
    }

    /// A private database in process memory (one connection: reads go to the writer thread).
    pub(crate) fn in_memory() -> Result<Self, StoreError> {
        let location = ":memory:".to_string();
        let mut conn =
            Connection::open_in_memory().map_err(|e| map_sqlite(&location, "open", e))?;
        prepare(
            &mut conn,
            &location,
            &SqliteOptions::default().check_on_open(false),
            Fresh::InMemory,
        )?;
        Self::start(None, location, conn, Vec::new(), false)
    }

    /// Starts the writer thread on `conn` and a reader thread on each of `readers`.
    fn start(
        path: Option<PathBuf>,
        location: String,
        conn: Connection,
        readers: Vec<Connection>,
        fsync: bool,
    ) -> Result<Self, StoreError> {
        let commits = Arc::new(AtomicU64::new(0));
        let mut db = Self {
            path,
            location: location.clone(),
            writer: None,
            readers: None,
            threads: Vec::with_capacity(readers.len() + 1),
            commits: commits.clone(),
        };
        let spawn_failed = |e: std::io::Error| StoreError::Backend {
            detail: format!("cannot start a connection thread for `{location}`: {e}"),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = Writer {
            conn,
            location: location.clone(),
            fsync,
            synchronous_full: fsync,
            commits,
        };
        db.threads.push(
            std::thread::Builder::new()
                .name("aios-sqlite-writer".into())
                .spawn(move || writer.serve(rx))
                .map_err(spawn_failed)?,
        );
        db.writer = Some(tx);
        if !readers.is_empty() {
            let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn ReadJob>>();
            for mut conn in readers {
                let rx = rx.clone();
                let location = location.clone();
                // on failure, `db` is dropped: the threads started so far stop and are joined
                db.threads.push(
                    std::thread::Builder::new()
                        .name("aios-sqlite-reader".into())
                        .spawn(move || {
                            while let Ok(job) = rx.recv() {
                                job.run(&mut conn, &location);
                            }
                        })
                        .map_err(spawn_failed)?,
                );
            }
            db.readers = Some(tx);
        }
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

    /// The error of a store whose connection threads are gone.
    fn stopped(&self, what: &str) -> StoreError {
        StoreError::Backend {
            detail: format!(
                "{what} on `{}`: the store's connection thread has stopped",
                self.location
            ),
        }
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer thread and resolves once it
    /// committed (fsynced under [`Durability::Full`]): it holds the write lock from the start,
    /// so what `f` reads cannot change before it writes. If `f` returns `Err`, nothing it did
    /// is kept, so a failed operation leaves the database as it was.
    ///
    /// Writes queued at the same moment share one transaction and one fsync (group commit),
    /// each inside its own savepoint, in the order they were queued: one that fails is rolled
    /// back to its savepoint and does not touch the others. If the shared transaction itself
    /// fails (SQLite rolled it back after an I/O error, a closure panicked, the commit
    /// failed), every write of the group is run again on its own, so each caller gets the
    /// answer of its own write. `f` may therefore run more than once: it must do nothing
    /// outside the transaction (clone what it consumes). A write that was queued completes
    /// even if its caller stops waiting.
    pub(crate) async fn write<T, E, F>(&self, what: &'static str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit_write(what, true, None, f).await
    }

    /// Like [`Db::write`], for writes that leave something only their answer lets the caller
    /// settle, such as a budget reservation whose id nobody else would hold: `f` is not run if
    /// the caller stopped waiting before its turn came (its future dropped while the write was
    /// queued), and if the caller went away later (while it ran, or before it read the
    /// answer), `unclaimed` is given the answer nobody took. `unclaimed` runs on the writer
    /// thread or the caller's, inside a `Drop`, so it must not wait for a write
    /// ([`Db::write_detached`] queues one).
    pub(crate) async fn write_unless_abandoned<T, E, F>(
        &self,
        what: &'static str,
        f: F,
        unclaimed: impl FnOnce(T) + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit_write(what, true, Some(Box::new(unclaimed)), f)
            .await
    }

    /// Like [`Db::write`], but the commit is not fsynced even under [`Durability::Full`]
    /// (unless it shares its group commit with a write that is): it survives the process
    /// being killed, and on a power loss it is lost only together with everything committed
    /// after it (the WAL is synced in order, so the next fsynced commit makes it durable too).
    /// For writes whose loss on power failure is harmless because the processes that relied
    /// on them died with the machine: taking and giving up leases.
    pub(crate) async fn write_unsynced<T, E, F>(&self, what: &'static str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit_write(what, false, None, f).await
    }

    /// Queues `f` as a write and returns at once, without its answer: for undoing what a
    /// caller that has gone away left behind (run from a `Drop`, which cannot wait). Nothing
    /// is queued once the store is closing.
    pub(crate) fn write_detached<T, E, F>(&self, what: &'static str, f: F)
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let job = WriteOp {
            what,
            synced: true,
            unclaimed: None,
            f,
            out: None,
            reply: None::<oneshot::Sender<Handed<T, E>>>,
        };
        if let Some(w) = self.writer.as_ref() {
            let _ = w.send(Task::Write(Box::new(job)));
        }
    }

    async fn submit_write<T, E, F>(
        &self,
        what: &'static str,
        synced: bool,
        unclaimed: Option<Unclaimed<T>>,
        f: F,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = WriteOp {
            what,
            synced,
            unclaimed,
            f,
            out: None,
            reply: Some(reply),
        };
        let sent = self
            .writer
            .as_ref()
            .is_some_and(|w| w.send(Task::Write(Box::new(job))).is_ok());
        if !sent {
            return Err(E::from(self.stopped(what)));
        }
        match answer.await {
            Ok(handed) => handed
                .take()
                .unwrap_or_else(|| Err(E::from(self.stopped(what)))),
            Err(_) => Err(E::from(self.stopped(what))),
        }
    }

    /// Runs `f` in a read transaction (a consistent snapshot across its statements) on a
    /// reader connection, and resolves with its answer. It sees every write whose future
    /// resolved before it was called.
    pub(crate) async fn read<T, E, F>(&self, what: &'static str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = ReadOp {
            what,
            f,
            reply: move |out| {
                let _ = reply.send(out);
            },
        };
        if !self.send_read(Box::new(job)) {
            return Err(E::from(self.stopped(what)));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(self.stopped(what))))
    }

    /// [`Db::read`] for the synchronous methods of the store: blocks the calling thread until
    /// the answer is there (never call it from a closure given to the store).
    pub(crate) fn read_blocking<T, E, F>(&self, what: &'static str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let job = ReadOp {
            what,
            f,
            reply: move |out| {
                let _ = reply.send(out);
            },
        };
        if !self.send_read(Box::new(job)) {
            return Err(E::from(self.stopped(what)));
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err(E::from(self.stopped(what))))
    }

    fn send_read(&self, job: Box<dyn ReadJob>) -> bool {
        match (&self.readers, &self.writer) {
            (Some(readers), _) => readers.send(job).is_ok(),
            (None, Some(writer)) => writer.send(Task::Read(job)).is_ok(),
            (None, None) => false,
        }
    }

    /// How many transactions the writer thread has committed.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The schema version stored in the file.
    pub(crate) fn schema_version(&self) -> Result<u32, StoreError> {
        let location = self.location.clone();
        self.read_blocking("read user_version", move |tx| {
            identity(tx)
                .map(|(v, _)| v)
                .map_err(|e| map_sqlite(&location, "read user_version", e))
        })
    }

    /// Runs `PRAGMA integrity_check` (the full check).
    pub(crate) fn integrity_check(&self) -> Result<(), StoreError> {
        let location = self.location.clone();
        self.read_blocking("check integrity", move |tx| {
            integrity(tx, &location, "PRAGMA integrity_check(5)")
        })
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

/// What the writer thread is asked to do.
enum Task {
    Write(Box<dyn WriteJob>),
    /// A read, when the store has no reader threads (in memory); run between group commits.
    Read(Box<dyn ReadJob>),
}

/// How one attempt of a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Its closure returned `Ok`: keep what it wrote.
    Done,
    /// Its closure returned its own error: undo what it wrote.
    Failed,
    /// Its closure panicked: undo what it wrote; the transaction is not trusted further.
    Panicked,
}

/// How a group commit ended.
enum Group {
    /// Every write's answer stands.
    Committed,
    /// The transaction could not begin; no write ran.
    NotBegun(rusqlite::Error),
    /// The transaction failed as a whole and was rolled back: nothing of it is kept.
    Broken,
}

/// A queued write, its closure and the caller's answer behind one object.
trait WriteJob: Send {
    /// Whether its commit must be fsynced (under [`Durability::Full`]).
    fn synced(&self) -> bool;
    /// Runs the closure in `tx`, keeping its answer for [`WriteJob::finish`].
    fn attempt(&mut self, tx: &Transaction<'_>, location: &str) -> Attempt;
    /// Answers the caller: the kept answer if the transaction committed, else the commit's
    /// error (named by this write).
    fn finish(self: Box<Self>, committed: Result<(), &rusqlite::Error>, location: &str);
}

/// What is done with the answer of a write whose caller went away while it ran.
type Unclaimed<T> = Box<dyn FnOnce(T) + Send>;

struct WriteOp<T, E, F> {
    what: &'static str,
    synced: bool,
    /// For a write skipped if its caller has stopped waiting: what to do with an answer the
    /// caller went away from (see [`Db::write_unless_abandoned`]).
    unclaimed: Option<Unclaimed<T>>,
    f: F,
    out: Option<Result<T, E>>,
    reply: Option<oneshot::Sender<Handed<T, E>>>,
}

/// A write's answer on its way to its caller. One the caller never takes (its future dropped
/// before the answer came, or after it came but before it was read) goes to the write's
/// [`Unclaimed`] handler, if it has one, when it is dropped.
struct Handed<T, E> {
    out: Option<Result<T, E>>,
    unclaimed: Option<Unclaimed<T>>,
}

impl<T, E> Handed<T, E> {
    /// The answer, taken by its caller.
    fn take(mut self) -> Option<Result<T, E>> {
        self.unclaimed = None;
        self.out.take()
    }
}

impl<T, E> Drop for Handed<T, E> {
    fn drop(&mut self) {
        if let (Some(Ok(value)), Some(unclaimed)) = (self.out.take(), self.unclaimed.take()) {
            unclaimed(value);
        }
    }
}

impl<T, E, F> WriteJob for WriteOp<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&Transaction<'_>) -> Result<T, E> + Send + 'static,
{
    fn synced(&self) -> bool {
        self.synced
    }

    fn attempt(&mut self, tx: &Transaction<'_>, location: &str) -> Attempt {
        if self.unclaimed.is_some() && self.reply.as_ref().is_some_and(|r| r.is_canceled()) {
            self.out = Some(Err(E::from(StoreError::Backend {
                detail: format!(
                    "{} on `{location}`: the caller stopped waiting before its turn; nothing was written",
                    self.what
                ),
            })));
            return Attempt::Failed;
        }
        let f = &mut self.f;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx))) {
            Ok(Ok(v)) => {
                self.out = Some(Ok(v));
                Attempt::Done
            }
            Ok(Err(e)) => {
                self.out = Some(Err(e));
                Attempt::Failed
            }
            Err(_) => {
                self.out = Some(Err(E::from(StoreError::Backend {
                    detail: format!(
                        "{} on `{location}` panicked; nothing it wrote was kept",
                        self.what
                    ),
                })));
                Attempt::Panicked
            }
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), &rusqlite::Error>, location: &str) {
        let Self {
            what,
            f,
            out,
            reply,
            unclaimed,
            ..
        } = *self;
        // the closure may hold a handle on the store: it goes before the caller hears back,
        // so a caller that then drops its last handle is the one that joins the threads
        drop(f);
        let out = match (out, committed) {
            (Some(Ok(_)), Err(e)) => Err(E::from(map_sqlite_ref(location, what, e))),
            (Some(out), _) => out,
            (None, Err(e)) => Err(E::from(map_sqlite_ref(location, what, e))),
            (None, Ok(())) => Err(E::from(StoreError::Backend {
                detail: format!("{what} on `{location}` was never run"),
            })),
        };
        if let Some(reply) = reply {
            // the caller may have stopped waiting; the write stands either way, and an answer
            // nobody takes goes to `unclaimed` when it has one (dropped here, or unread with
            // the caller's future)
            let _ = reply.send(Handed {
                out: Some(out),
                unclaimed,
            });
        }
    }
}

/// A queued read.
trait ReadJob: Send {
    /// Runs the read in its own read transaction on `conn` and answers the caller.
    fn run(self: Box<Self>, conn: &mut Connection, location: &str);
}

struct ReadOp<F, R> {
    what: &'static str,
    f: F,
    reply: R,
}

impl<T, E, F, R> ReadJob for ReadOp<F, R>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    R: FnOnce(Result<T, E>) + Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut Connection, location: &str) {
        let Self { what, f, reply } = *self;
        let out = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|e| E::from(map_sqlite(location, what, e)))?;
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&tx)))
                .unwrap_or_else(|_| {
                    Err(E::from(StoreError::Backend {
                        detail: format!("{what} on `{location}` panicked"),
                    }))
                })?;
            // a read-only transaction: ending it cannot lose anything
            tx.commit()
                .map_err(|e| E::from(map_sqlite(location, what, e)))?;
            Ok(out)
        })();
        reply(out);
    }
}

/// The writer thread's state: the one write connection.
struct Writer {
    conn: Connection,
    location: String,
    /// Whether commits are fsynced by default (`synchronous=FULL` on a file).
    fsync: bool,
    /// Whether the connection is at `synchronous=FULL` now.
    synchronous_full: bool,
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Serves the queue until every handle on the store is gone, then closes the connection
    /// (which folds the write-ahead log into the file if no other connection is open).
    fn serve(mut self, queue: Receiver<Task>) {
        let mut group: Vec<Box<dyn WriteJob>> = Vec::new();
        let mut reads: Vec<Box<dyn ReadJob>> = Vec::new();
        while let Ok(first) = queue.recv() {
            let mut next = Some(first);
            while let Some(task) = next.take() {
                match task {
                    Task::Write(w) => group.push(w),
                    Task::Read(r) => reads.push(r),
                }
                if group.len() < MAX_GROUP {
                    next = queue.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(std::mem::take(&mut group));
            }
            for read in reads.drain(..) {
                read.run(&mut self.conn, &self.location);
            }
        }
        let _ = self.conn.close();
    }

    /// Sets `synchronous` for the next commit: FULL if any write of the group needs it.
    fn set_synchronous(&mut self, full: bool) -> Result<(), rusqlite::Error> {
        let full = self.fsync && full;
        if full != self.synchronous_full {
            self.conn
                .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.synchronous_full = full;
        }
        Ok(())
    }

    fn commit_group(&mut self, mut group: Vec<Box<dyn WriteJob>>) {
        let synced = group.iter().any(|w| w.synced());
        if let Err(e) = self.set_synchronous(synced) {
            if synced {
                // never commit a write that asked for an fsync without one
                for w in group {
                    w.finish(Err(&e), &self.location);
                }
                return;
            }
            // an unsynced write committed with an fsync loses nothing
        }
        if group.len() == 1 {
            if let Some(w) = group.pop() {
                self.alone(w);
            }
            return;
        }
        match self.together(&mut group) {
            Group::Committed => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                for w in group {
                    w.finish(Ok(()), &self.location);
                }
            }
            Group::NotBegun(e) => {
                // no write has run (another process holds the lock past the busy timeout,
                // say): each would meet the same error alone
                for w in group {
                    w.finish(Err(&e), &self.location);
                }
            }
            Group::Broken => {
                // the shared transaction failed as a whole: every write again on its own,
                // so each answer is that of its own write alone
                for w in group {
                    self.alone(w);
                }
            }
        }
    }

    /// Runs every write of `group` in one transaction, each in a savepoint, and commits.
    fn together(&mut self, group: &mut [Box<dyn WriteJob>]) -> Group {
        let location = self.location.as_str();
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return Group::NotBegun(e),
        };
        for w in group.iter_mut() {
            if tx.execute_batch("SAVEPOINT aios_write").is_err() {
                return Group::Broken;
            }
            let kept = match w.attempt(&tx, location) {
                Attempt::Done => tx.execute_batch("RELEASE aios_write").is_ok(),
                // SQLite may have rolled the whole transaction back (an I/O error, disk full)
                Attempt::Failed if tx.is_autocommit() => false,
                Attempt::Failed => tx
                    .execute_batch("ROLLBACK TO aios_write; RELEASE aios_write")
                    .is_ok(),
                Attempt::Panicked => false,
            };
            if !kept {
                return Group::Broken;
            }
        }
        match tx.commit() {
            Ok(()) => Group::Committed,
            Err(_) => Group::Broken,
        }
    }

    /// Runs one write in its own transaction and answers it.
    fn alone(&mut self, mut w: Box<dyn WriteJob>) {
        if let Err(e) = self.set_synchronous(w.synced()) {
            if w.synced() {
                w.finish(Err(&e), &self.location);
                return;
            }
        }
        let location = self.location.as_str();
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                w.finish(Err(&e), location);
                return;
            }
        };
        match w.attempt(&tx, location) {
            Attempt::Done => {
                let committed = tx.commit();
                if committed.is_ok() {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                }
                let committed = match &committed {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e),
                };
                w.finish(committed, location);
            }
            Attempt::Failed | Attempt::Panicked => {
                // dropping the transaction rolls it back; the answer is the write's error
                drop(tx);
                w.finish(Ok(()), location);
            }
        }
    }
}

/// Checks the version and identity, sets the pragmas and migrates, in that order, so a
/// file that is refused is not written to.
fn prepare(
    conn: &mut Connection,
    location: &str,
    options: &SqliteOptions,
    fresh: Fresh,
) -> Result<(), StoreError> {
    let err = |what: &str, e| map_sqlite(location, what, e);
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| err("set busy_timeout", e))?;
    let (version, app_id) = identity(conn).map_err(|e| err("read the header", e))?;
    check_identity(conn, location, version, app_id, fresh)?;
    if options.check_on_open && version > 0 {
        integrity(conn, location, "PRAGMA quick_check(5)")?;
    }
    if fresh != Fresh::InMemory {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
            .map_err(|e| err("switch to WAL mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend {
                detail: format!(
                    "database `{location}` refused WAL mode (journal_mode is `{mode}`)"
                ),
            });
        }
    }
    let sync = match options.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| err("set synchronous", e))?;
    if version < SCHEMA_VERSION {
        migrate(conn, location)?;
    }
    Ok(())
}

fn check_identity(
    conn: &Connection,
    location: &str,
    version: u32,
    app_id: i64,
    fresh: Fresh,
) -> Result<(), StoreError> {
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Corrupt {
            location: location.to_string(),
            detail: format!("not an aios database (application_id {app_id:#x})"),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedVersion {
            location: location.to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if app_id == 0 && fresh == Fresh::No {
        // AIOS only creates files that did not exist (see `create_new`), complete with
        // their identity: an existing file without it was made by someone else
        return Err(StoreError::Corrupt {
            location: location.to_string(),
            detail: "not an aios database (it has no aios application_id)".into(),
        });
    }
    if app_id == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| map_sqlite(location, "read the schema", e))?;
        if tables > 0 || version > 0 {
            return Err(StoreError::Corrupt {
                location: location.to_string(),
                detail: "not an aios database (it has a schema but no aios application_id)".into(),
            });
        }
    }
    Ok(())
}

/// Runs an integrity pragma (`quick_check` or `integrity_check`); anything but `ok` is
/// [`StoreError::Corrupt`].
fn integrity(conn: &Connection, location: &str, pragma: &str) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare(pragma)
        .map_err(|e| map_sqlite(location, "check integrity", e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| map_sqlite(location, "check integrity", e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            location: location.to_string(),
            detail: format!("integrity check failed: {}", rows.join("; ")),
        })
    }
}

/// Applies every missing migration step and the new version in one transaction.
fn migrate(conn: &mut Connection, location: &str) -> Result<(), StoreError> {
    let err = |what: &str, e| map_sqlite(location, what, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| err("begin the migration", e))?;
    // another process may have migrated while we waited for the lock
    let (version, app_id) = identity(&tx).map_err(|e| err("read the header", e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedVersion {
            location: location.to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if app_id == 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| err("set application_id", e))?;
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step)
            .map_err(|e| err(&format!("migrate to schema version {}", i + 1), e))?;
        if *step == CHECKPOINT_CHECKSUM_STEP {
            crate::checkpoint::backfill_checksums(location, &tx)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| err("set user_version", e))?;
    tx.commit().map_err(|e| err("commit the migration", e))
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
        let mut conn = Connection::open_with_flags(&temp, flags)
            .map_err(|e| map_sqlite(location, "create", e))?;
        prepare(
            &mut conn,
            location,
            &options.clone().check_on_open(false),
            Fresh::NewFile,
        )?;
        conn.close()
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
    map_sqlite_ref(location, what, &e)
}

/// [`map_sqlite`] of a borrowed error (a group commit's error, reported to every write).
fn map_sqlite_ref(location: &str, what: &str, e: &rusqlite::Error) -> StoreError {
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::mpsc;
    use std::task::{Context, Poll};

    use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, Principal};
    use futures::executor::block_on;

    use super::*;

    type Fut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    fn file_db(dir: &tempfile::TempDir) -> Arc<Db> {
        Arc::new(Db::open(&dir.path().join("t.db"), &SqliteOptions::default()).unwrap())
    }

    /// Polls `f` once, so a write it makes is queued, and hands it back to be awaited.
    fn queued<T>(f: impl Future<Output = T> + Send + 'static) -> Fut<T> {
        let mut f: Fut<T> = Box::pin(f);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(f.as_mut().poll(&mut cx), Poll::Pending));
        f
    }

    /// A write that holds the writer thread until the returned sender is used (or dropped),
    /// so the writes queued meanwhile form one group.
    fn hold(db: &Arc<Db>) -> (Fut<Result<(), StoreError>>, mpsc::Sender<()>) {
        let (started, is_started) = mpsc::channel();
        let (go, wait) = mpsc::channel::<()>();
        let d = db.clone();
        let held = queued(async move {
            d.write("hold the writer", move |_| {
                let _ = started.send(());
                let _ = wait.recv();
                Ok(())
            })
            .await
        });
        is_started.recv().unwrap();
        (held, go)
    }

    /// A write queued with `write_unless_abandoned` whose caller stops waiting before its
    /// turn is not run (nobody would learn what it made); one whose caller waits runs, and a
    /// plain write whose caller went away still runs (its effect stands, as before).
    #[test]
    fn an_abandonable_write_whose_caller_is_gone_is_not_run() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        let flag = || Arc::new(AtomicBool::new(false));
        let (abandoned, waited, plain) = (flag(), flag(), flag());
        let (held, go) = hold(&db);
        let run = |db: &Arc<Db>, ran: &Arc<AtomicBool>, abandonable: bool| {
            let (d, ran) = (db.clone(), ran.clone());
            queued(async move {
                let f = move |_: &Transaction<'_>| {
                    ran.store(true, Ordering::SeqCst);
                    Ok::<(), StoreError>(())
                };
                if abandonable {
                    d.write_unless_abandoned("an abandonable write", f, |()| {})
                        .await
                } else {
                    d.write("a plain write", f).await
                }
            })
        };
        let gone = run(&db, &abandoned, true);
        let kept = run(&db, &waited, true);
        let plain_gone = run(&db, &plain, false);
        // their callers stop waiting while the writer is busy
        drop(gone);
        drop(plain_gone);
        go.send(()).unwrap();
        block_on(held).unwrap();
        block_on(kept).unwrap();
        // a write queued after them has run once they have
        block_on(db.write("a later write", |_| Ok::<(), StoreError>(()))).unwrap();
        assert!(
            !abandoned.load(Ordering::SeqCst),
            "the abandoned write did not run"
        );
        assert!(waited.load(Ordering::SeqCst), "the awaited one ran");
        assert!(
            plain.load(Ordering::SeqCst),
            "a plain write stands without its caller"
        );
    }

    fn note(text: &str) -> AuditRecord {
        AuditRecord::new(Principal::System, AuditEvent::Note { text: text.into() })
    }

    /// A raw write adding control record `text`, then failing with `fail` if given.
    fn insert(db: &Arc<Db>, text: &'static str, fail: bool) -> Fut<Result<(), StoreError>> {
        let d = db.clone();
        queued(async move {
            d.write("insert a test row", move |tx| {
                tx.execute(
                    "INSERT INTO control_records (v, record) VALUES (1, ?1)",
                    [text],
                )
                .map_err(|e| map_sqlite("test", "insert", e))?;
                if fail {
                    return Err(StoreError::Conflict {
                        detail: format!("`{text}` refused"),
                    });
                }
                Ok(())
            })
            .await
        })
    }

    fn records(db: &Arc<Db>) -> Vec<String> {
        block_on(db.read("read test rows", |tx| {
            tx.prepare("SELECT record FROM control_records ORDER BY seq")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(|e| map_sqlite("test", "read", e))
        }))
        .unwrap()
    }

    fn synchronous(db: &Arc<Db>, synced: bool) -> Fut<Result<i64, StoreError>> {
        let d = db.clone();
        queued(async move {
            let f = |tx: &Transaction<'_>| {
                tx.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))
                    .map_err(|e| map_sqlite("test", "pragma", e))
            };
            if synced {
                d.write("read synchronous", f).await
            } else {
                d.write_unsynced("read synchronous", f).await
            }
        })
    }

    #[test]
    fn unsynced_writes_restore_full_durability() {
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        assert_eq!(block_on(synchronous(&db, true)).unwrap(), 2, "FULL");
        assert_eq!(
            block_on(synchronous(&db, false)).unwrap(),
            1,
            "NORMAL inside"
        );
        assert_eq!(block_on(synchronous(&db, true)).unwrap(), 2, "FULL again");
        let refused = block_on(db.write_unsynced("test", |_| {
            Err::<(), _>(StoreError::Conflict {
                detail: "refused".into(),
            })
        }));
        assert!(refused.is_err());
        assert_eq!(
            block_on(synchronous(&db, true)).unwrap(),
            2,
            "FULL after refusal"
        );
        // an unsynced write that shares its group commit with a synced one is fsynced too
        let (held, go) = hold(&db);
        let unsynced = synchronous(&db, false);
        let synced = synchronous(&db, true);
        go.send(()).unwrap();
        block_on(held).unwrap();
        assert_eq!(block_on(unsynced).unwrap(), 2);
        assert_eq!(block_on(synced).unwrap(), 2);
    }

    #[test]
    fn writes_queued_together_share_one_commit_and_a_failing_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        let log = crate::SqliteAuditLog::new(db.clone(), None);
        let (held, go) = hold(&db);
        let before = db.commits();
        let mut appends = vec![];
        for i in 0..5 {
            let log = log.clone();
            appends.push(queued(
                async move { log.append(note(&format!("n{i}"))).await },
            ));
        }
        let first = insert(&db, "kept-1", false);
        let refused = insert(&db, "refused", true);
        let last = insert(&db, "kept-2", false);
        go.send(()).unwrap();
        block_on(held).unwrap();
        let heads: Vec<_> = appends.into_iter().map(|a| block_on(a).unwrap()).collect();
        block_on(first).unwrap();
        let err = block_on(refused).unwrap_err();
        assert!(err.to_string().contains("`refused` refused"), "{err}");
        block_on(last).unwrap();
        assert_eq!(
            db.commits() - before,
            2,
            "the held write, then one group commit"
        );
        // one linear chain, in queue order; the refused write's row is not there
        assert_eq!(
            heads.iter().map(|h| h.len).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(block_on(log.verify(None)).unwrap().is_intact());
        assert_eq!(records(&db), vec!["kept-1", "kept-2"]);
    }

    #[test]
    fn a_write_that_panics_in_a_group_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        let (held, go) = hold(&db);
        let first = insert(&db, "kept-1", false);
        let d = db.clone();
        let panics = queued(async move {
            d.write("a write that panics", |tx| {
                tx.execute(
                    "INSERT INTO control_records (v, record) VALUES (1, 'lost')",
                    [],
                )
                .map_err(|e| map_sqlite("test", "insert", e))?;
                panic!("a bug in a write");
                #[allow(unreachable_code)]
                Ok::<(), StoreError>(())
            })
            .await
        });
        let last = insert(&db, "kept-2", false);
        go.send(()).unwrap();
        block_on(held).unwrap();
        block_on(first).unwrap();
        let err = block_on(panics).unwrap_err();
        assert!(
            err.to_string().contains("a write that panics on `")
                && err.to_string().contains("panicked"),
            "{err}"
        );
        block_on(last).unwrap();
        assert_eq!(records(&db), vec!["kept-1", "kept-2"]);
        // the writer thread lives on
        block_on(insert(&db, "after", false)).unwrap();
        assert_eq!(records(&db), vec!["kept-1", "kept-2", "after"]);
    }

    #[test]
    fn a_write_whose_failure_ends_the_shared_transaction_does_not_take_the_others_along() {
        // SQLite rolls a whole transaction back after some errors (an I/O error, a full
        // disk); the write here does what such an error does, then fails
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        let (held, go) = hold(&db);
        let first = insert(&db, "kept-1", false);
        let d = db.clone();
        let breaks = queued(async move {
            d.write("a write that ends the transaction", |tx| {
                tx.execute_batch("ROLLBACK")
                    .map_err(|e| map_sqlite("test", "rollback", e))?;
                Err::<(), _>(StoreError::Unavailable {
                    detail: "disk i/o error (simulated)".into(),
                })
            })
            .await
        });
        let last = insert(&db, "kept-2", false);
        go.send(()).unwrap();
        block_on(held).unwrap();
        block_on(first).unwrap();
        let err = block_on(breaks).unwrap_err();
        assert!(err.to_string().contains("simulated"), "{err}");
        block_on(last).unwrap();
        assert_eq!(records(&db), vec!["kept-1", "kept-2"]);
    }

    #[test]
    fn a_queued_write_completes_when_its_caller_stops_waiting_and_dropping_closes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = file_db(&dir);
        let (held, go) = hold(&db);
        let abandoned = insert(&db, "abandoned", false);
        drop(abandoned);
        go.send(()).unwrap();
        block_on(held).unwrap();
        // the last handle: dropping it waits for the queue, closes every connection (which
        // folds the write-ahead log into the file and removes it) and joins the threads
        drop(db);
        let wal = dir.path().join("t.db-wal");
        assert!(!wal.exists(), "{} is still there", wal.display());
        let db = Arc::new(Db::open(&path, &SqliteOptions::default()).unwrap());
        assert_eq!(records(&db), vec!["abandoned"]);
    }

    #[test]
    fn reads_see_every_write_that_resolved_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        for i in 0..50 {
            let text: &'static str = Box::leak(format!("r{i}").into_boxed_str());
            block_on(insert(&db, text, false)).unwrap();
            assert_eq!(records(&db).len(), i + 1);
        }
    }

    #[test]
    fn writes_that_meet_another_process_lock_fail_as_unavailable_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let options = SqliteOptions::default().busy_timeout(Duration::from_millis(20));
        let db = Arc::new(Db::open(&path, &options).unwrap());
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let writes: Vec<_> = (0..4).map(|_| insert(&db, "blocked", false)).collect();
        for w in writes {
            let err = block_on(w).unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("insert a test row"), "{text}");
        }
        other.execute_batch("ROLLBACK").unwrap();
        block_on(insert(&db, "after", false)).unwrap();
        assert_eq!(records(&db), vec!["after"]);
    }

    #[test]
    fn a_store_in_memory_reads_on_its_writer() {
        let db = Arc::new(Db::in_memory().unwrap());
        block_on(insert(&db, "one", false)).unwrap();
        assert_eq!(records(&db), vec!["one"]);
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_group_commit_is_fsynced_once_for_many_appends() {
        let dir = tempfile::tempdir().unwrap();
        let db = file_db(&dir);
        let log = crate::SqliteAuditLog::new(db.clone(), None);
        let (held, go) = hold(&db);
        let before = db.commits();
        let appends: Vec<_> = (0..100)
            .map(|i| {
                let log = log.clone();
                queued(async move { log.append(note(&format!("n{i}"))).await })
            })
            .collect();
        go.send(()).unwrap();
        block_on(held).unwrap();
        block_on(futures::future::join_all(appends))
            .into_iter()
            .for_each(|r| assert!(r.is_ok(), "{r:?}"));
        assert_eq!(db.commits() - before, 2);
        let report = block_on(log.verify(None)).unwrap();
        assert_eq!(report.checked, 100);
        assert!(report.is_intact());
    }
}
