//! The file itself: what survives a reopen, and bad input (a corrupted file, a file from a
//! newer schema, a foreign database, a locked database) giving a clear error and losing
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AnchorId, ApprovalId, AuditEvent, AuditLog, AuditLogExt, AuditRecord, Clock, IdGen,
    ManualClock, Money, Principal, RunId, StoreError, Transience,
};
use aios_governance::{
    ApprovalRequest, ApprovalState, ApprovalStore, BudgetChain, BudgetKey, BudgetLedger,
    BudgetLimits, Limits, OnTimeout, ReserveOptions, ResponseKind, Usage,
};
use aios_memory::testing::sample_record;
use aios_memory::MemoryStore;
use aios_orchestrator::{
    Checkpoint, CheckpointStore, RunState, RunStatus, WorkerId, RUN_STATE_SCHEMA,
};
use aios_sqlite::{SqliteOptions, SqliteStore, SCHEMA_VERSION};
use futures::executor::block_on;

fn note(text: &str) -> AuditRecord {
    AuditRecord::new(Principal::System, AuditEvent::Note { text: text.into() })
}

fn approval(id: ApprovalId, at: aios_core::Timestamp) -> ApprovalRequest {
    ApprovalRequest {
        id,
        anchor: AnchorId::from_name("founder"),
        requester: Principal::System,
        run: None,
        task: None,
        pathway: None,
        action: "mail.send".into(),
        proposed: serde_json::json!({ "to": "list@example.com" }),
        reason: None,
        allowed: ResponseKind::ALL.to_vec(),
        on_timeout: OnTimeout::Deny,
        model_version: 1,
        created_at: at,
        expires_at: at + chrono::Duration::hours(1),
        state: ApprovalState::Pending,
    }
}

fn state(run: RunId, status: RunStatus, at: aios_core::Timestamp) -> RunState {
    RunState {
        schema: RUN_STATE_SCHEMA,
        run,
        workflow: "files".into(),
        governance_version: 1,
        started_at: at,
        status,
        tasks: vec![],
        forked_from: None,
    }
}

fn cap(minor: i64) -> BudgetLimits {
    BudgetLimits::total(Limits {
        cost: Some(Money::from_minor(minor)),
        ..Limits::default()
    })
}

/// What [`fill`] wrote, to compare after a reopen.
struct Written {
    head: aios_core::ChainHead,
    memory: aios_memory::MemoryRecord,
    run: RunId,
    checkpoint: Checkpoint,
    approval: ApprovalRequest,
}

/// Writes something through every port.
fn fill(store: &SqliteStore, clock: &ManualClock) -> Written {
    let ids = IdGen::new(clock.clone(), 7);
    block_on(async {
        let log = store.audit_log();
        for i in 0..5 {
            log.append(note(&format!("entry {i}"))).await.unwrap();
        }
        let head = log.head().await.unwrap();

        let memory = store.memory_store();
        let id = ids.next();
        let v1 = sample_record(id, 1, "first", clock.now(), None);
        memory.put(v1.clone(), None).await.unwrap();
        clock.advance(Duration::from_secs(1));
        let v2 = sample_record(id, 2, "second", clock.now(), Some(&v1));
        memory.put(v2.clone(), Some(1)).await.unwrap();

        let checkpoints = store.checkpoint_store();
        let run: RunId = ids.next();
        let lease = checkpoints
            .acquire(
                run,
                &WorkerId::new("a"),
                clock.now(),
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        let checkpoint = Checkpoint {
            run,
            seq: 1,
            at: clock.now(),
            state: state(
                run,
                RunStatus::Parked {
                    approvals: vec![ids.next()],
                },
                clock.now(),
            ),
        };
        checkpoints.save(&lease, &checkpoint).await.unwrap();

        let ledger = store.budget_ledger(Arc::new(clock.clone()));
        ledger
            .set_limits(BudgetKey::Organisation, cap(1_000))
            .await
            .unwrap();
        let r = ledger
            .reserve(
                &BudgetChain::organisation(),
                Usage::cost(Money::from_minor(300)),
                &ReserveOptions::default(),
            )
            .await
            .unwrap();
        ledger
            .commit(r.id, Usage::cost(Money::from_minor(250)))
            .await
            .unwrap();
        ledger
            .reserve(
                &BudgetChain::organisation(),
                Usage::cost(Money::from_minor(100)),
                &ReserveOptions::default(),
            )
            .await
            .unwrap();

        let approvals = store.approval_store();
        let approval = approval(ids.next(), clock.now());
        approvals.insert(approval.clone()).await.unwrap();

        Written {
            head,
            memory: memory.get(id, None).await.unwrap(),
            run,
            checkpoint,
            approval,
        }
    })
}

/// Checks (reading only) that everything [`fill`] wrote is there, unchanged.
fn check_filled(store: &SqliteStore, clock: &ManualClock, w: &Written) {
    check_filled_with(store, clock, w, 100);
}

/// `reserved`: the reservation in flight still held (an upgrade from schema 1 expires it: it
/// was left by a process of the old version).
fn check_filled_with(store: &SqliteStore, clock: &ManualClock, w: &Written, reserved: i64) {
    block_on(async {
        let log = store.audit_log();
        assert_eq!(log.head().await.unwrap(), w.head, "the audit head survives");
        let report = log.verify(Some(w.head)).await.unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);

        let memory = store.memory_store();
        assert_eq!(memory.get(w.memory.id, None).await.unwrap(), w.memory);
        let versions = memory.versions(w.memory.id).await.unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0].retired_at, Some(w.memory.recorded_at));

        let checkpoints = store.checkpoint_store();
        assert_eq!(
            checkpoints.latest(w.run).await.unwrap(),
            Some(w.checkpoint.clone())
        );
        assert_eq!(checkpoints.list(true).await.unwrap().len(), 1);

        let ledger = store.budget_ledger(Arc::new(clock.clone()));
        let u = ledger
            .usage(BudgetKey::Organisation)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.committed.cost, Money::from_minor(250));
        assert_eq!(u.reserved.cost, Money::from_minor(reserved));
        if reserved > 0 {
            assert_eq!(ledger.outstanding().unwrap(), 1);
        }

        let approvals = store.approval_store();
        assert_eq!(
            approvals.get(w.approval.id).await.unwrap(),
            Some(w.approval.clone())
        );
        assert_eq!(approvals.pending(None).await.unwrap().len(), 1);
    });
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// A closed store with data; returns the path and what was written.
fn filled_file(dir: &Path, clock: &ManualClock) -> (PathBuf, Written) {
    let path = dir.join("aios.db");
    let store = SqliteStore::open(&path).unwrap();
    let written = fill(&store, clock);
    drop(store);
    // once the last handle is gone the file holds everything on its own: the WAL was
    // checkpointed into it and removed (the tests that edit the file rely on that)
    assert!(
        !dir.join("aios.db-wal").exists(),
        "the WAL is gone once the store is dropped"
    );
    (path, written)
}

fn names_path(e: &StoreError, path: &Path) {
    eprintln!("{e}");
    let path = path.display().to_string();
    assert!(
        e.to_string().contains(&path),
        "the error names the file `{path}`: {e}"
    );
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, written) = filled_file(dir.path(), &clock);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.path(), Some(path.as_path()));
    check_filled(&store, &clock, &written);
    assert!(
        matches!(
            block_on(store.checkpoint_store().acquire(
                written.run,
                &WorkerId::new("b"),
                clock.now(),
                Duration::from_secs(5)
            )),
            Err(StoreError::Conflict { .. })
        ),
        "the lease survives"
    );
    // and the reopened store keeps working: the chain continues
    let head = block_on(store.audit_log().append(note("after reopen"))).unwrap();
    assert_eq!(head.len, written.head.len + 1);
    store.check_integrity().unwrap();
}

#[test]
fn a_file_that_is_not_a_database_is_corrupt_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aios.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let before = files(dir.path());
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    names_path(&err, &path);
    assert!(!err.is_transient());
    assert_eq!(files(dir.path()), before, "nothing was written");
}

#[test]
fn a_damaged_database_is_corrupt_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, _) = filled_file(dir.path(), &clock);
    // damage the b-tree pages after the header page
    let mut bytes = std::fs::read(&path).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() >= 3 * page, "the file has several pages");
    for b in &mut bytes[page..page + 64] {
        *b = 0xA5;
    }
    for b in &mut bytes[2 * page..2 * page + 64] {
        *b = 0x5A;
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = files(dir.path());
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    names_path(&err, &path);
    assert_eq!(files(dir.path()), before, "nothing was written");
}

#[test]
fn a_database_from_a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, written) = filled_file(dir.path(), &clock);
    let newer = SCHEMA_VERSION + 1;
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", newer).unwrap();
    }
    let before = files(dir.path());
    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::UnsupportedVersion {
            found, supported, ..
        } => assert_eq!((*found, *supported), (newer, SCHEMA_VERSION)),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    names_path(&err, &path);
    assert_eq!(files(dir.path()), before, "nothing was written");
    // a build that knows the version (simulated by setting it back) finds everything
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", SCHEMA_VERSION)
            .unwrap();
    }
    check_filled(&SqliteStore::open(&path).unwrap(), &clock, &written);
}

#[test]
fn a_foreign_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = files(dir.path());
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { detail, .. } if detail.contains("not an aios database")),
        "{err:?}"
    );
    names_path(&err, &path);
    assert_eq!(files(dir.path()), before, "nothing was written");
}

#[test]
fn a_locked_database_is_unavailable_names_the_file_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, written) = filled_file(dir.path(), &clock);
    let options = SqliteOptions::default().busy_timeout(Duration::from_millis(50));
    let store = SqliteStore::open_with(&path, options.clone()).unwrap();

    // another process holds the write lock: writes wait, then fail cleanly
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = block_on(store.audit_log().append(note("blocked"))).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient(), "a locked database may be retried");
    names_path(&err, &path);
    let err = block_on(store.budget_ledger(Arc::new(clock.clone())).reserve(
        &BudgetChain::organisation(),
        Usage::cost(Money::from_minor(1)),
        &ReserveOptions::default(),
    ))
    .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // reads still work under WAL while the other writer holds its lock
    check_filled(&store, &clock, &written);
    other.execute_batch("ROLLBACK").unwrap();

    // the refused writes changed nothing; the next one works
    check_filled(&store, &clock, &written);
    let head = block_on(store.audit_log().append(note("unblocked"))).unwrap();
    assert_eq!(head.len, written.head.len + 1);

    // a process holding the file exclusively keeps us from even opening it
    drop(store);
    other
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
        .unwrap();
    let err = SqliteStore::open_with(&path, options).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    names_path(&err, &path);
    drop(other);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(block_on(store.audit_log().head()).unwrap(), head);
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("aios.db");
    let err = SqliteStore::open(&path).unwrap_err();
    names_path(&err, &path);
}

#[test]
fn durability_normal_also_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aios.db");
    let options = SqliteOptions::default().durability(aios_sqlite::Durability::Normal);
    let store = SqliteStore::open_with(&path, options).unwrap();
    let head = block_on(store.audit_log().append(note("normal"))).unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(block_on(store.audit_log().head()).unwrap(), head);
}

#[test]
fn two_connections_to_one_file_share_one_chain_and_one_lease() {
    // two handles on one file behave like two processes: separate connections, SQLite's lock
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let first = SqliteStore::open(&path).unwrap();
    let second = SqliteStore::open(&path).unwrap();
    let writers: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, store)| {
            std::thread::spawn(move || {
                let log = store.audit_log();
                for i in 0..40 {
                    block_on(log.append(note(&format!("writer {w} entry {i}")))).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let entries = block_on(first.audit_log().entries()).unwrap();
    assert_eq!(entries.len(), 80, "no append was lost");
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert!(block_on(second.audit_log().verify(None))
        .unwrap()
        .is_intact());

    // a lease taken through one connection excludes a worker on the other
    let clock = ManualClock::default();
    let run: RunId = IdGen::new(clock.clone(), 3).next();
    let ttl = Duration::from_secs(30);
    let lease = block_on(first.checkpoint_store().acquire(
        run,
        &WorkerId::new("a"),
        clock.now(),
        ttl,
    ))
    .unwrap();
    assert!(matches!(
        block_on(
            second
                .checkpoint_store()
                .acquire(run, &WorkerId::new("b"), clock.now(), ttl)
        ),
        Err(StoreError::Conflict { .. })
    ));
    // after expiry the other takes over with a newer token, and the first is fenced
    let later = clock.now() + chrono::Duration::seconds(60);
    let taken = block_on(
        second
            .checkpoint_store()
            .acquire(run, &WorkerId::new("b"), later, ttl),
    )
    .unwrap();
    assert!(taken.token > lease.token);
    let checkpoint = Checkpoint {
        run,
        seq: 1,
        at: later,
        state: state(run, RunStatus::Running, later),
    };
    assert!(matches!(
        block_on(first.checkpoint_store().save(&lease, &checkpoint)),
        Err(StoreError::Fenced { .. })
    ));
    block_on(second.checkpoint_store().save(&taken, &checkpoint)).unwrap();
    assert_eq!(
        block_on(first.checkpoint_store().latest(run)).unwrap(),
        Some(checkpoint)
    );
}

#[test]
fn a_truncated_file_is_corrupt_and_not_rewritten() {
    for len in [0u64, 1, 99] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::default();
        let (path, _) = filled_file(dir.path(), &clock);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let before = files(dir.path());
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { .. }),
            "{len} bytes: {err:?}"
        );
        names_path(&err, &path);
        assert!(!err.is_transient());
        assert_eq!(
            files(dir.path()),
            before,
            "{len} bytes: the file was not rewritten and nothing was added"
        );
    }
}

#[test]
fn an_empty_sqlite_file_without_the_aios_identity_is_refused() {
    // a valid SQLite file with no schema and no application id was not made by AIOS (AIOS
    // creates a file only where nothing exists, complete with its schema)
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blank.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "page_size", 4096).unwrap();
        raw.execute_batch("VACUUM").unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() >= 100);
    let before = files(dir.path());
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { detail, .. } if detail.contains("not an aios database")),
        "{err:?}"
    );
    names_path(&err, &path);
    assert_eq!(files(dir.path()), before, "nothing was written");
}

#[test]
fn a_new_file_appears_complete_and_concurrent_first_opens_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || SqliteStore::open(&path).map(|s| s.schema_version()))
        })
        .collect();
    for o in openers {
        assert_eq!(o.join().unwrap().unwrap().unwrap(), SCHEMA_VERSION);
    }
    // SQLite's own `-wal` and `-shm` may stay: stores closing at the same moment can each see
    // the other still open, and then none of them removes the WAL (the next open takes it up)
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "fresh.db-wal" && name != "fresh.db-shm")
        .collect();
    assert_eq!(
        names,
        vec!["fresh.db".to_string()],
        "no temporary file is left"
    );
    let store = SqliteStore::open(&path).unwrap();
    store.check_integrity().unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

fn assert_corrupt_names_run_and_seq<T: std::fmt::Debug>(
    what: &str,
    got: Result<T, StoreError>,
    run: RunId,
    seq: u64,
) {
    let err = got.expect_err(what);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{what}: {err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&run.to_string()) && text.contains(&format!("seq {seq}")),
        "{what}: the error names run {run} and seq {seq}: {text}"
    );
}

#[test]
fn a_flipped_byte_in_a_stored_checkpoint_is_corrupt_naming_run_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, written) = filled_file(dir.path(), &clock);
    {
        // still valid JSON that decodes: only the checksum can tell
        let raw = rusqlite::Connection::open(&path).unwrap();
        let changed = raw
            .execute(
                "UPDATE checkpoints SET checkpoint =
                     replace(checkpoint, '\"governance_version\":1', '\"governance_version\":7')",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
        let text: String = raw
            .query_row("SELECT checkpoint FROM checkpoints", [], |r| r.get(0))
            .unwrap();
        let decoded: Checkpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(decoded.state.governance_version, 7, "the change decodes");
    }
    let store = SqliteStore::open(&path).unwrap();
    let checkpoints = store.checkpoint_store();
    let run = written.run;
    assert_corrupt_names_run_and_seq("latest", block_on(checkpoints.latest(run)), run, 1);
    assert_corrupt_names_run_and_seq("get", block_on(checkpoints.get(run, 1)), run, 1);
    // a listing reads the summaries, not every checkpoint: one damaged run does not hide
    // the others, and it is reported when read
    let listed = block_on(checkpoints.list(false)).unwrap();
    assert!(listed.iter().any(|s| s.run == run));
}

#[test]
fn a_checkpoint_without_its_checksum_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, written) = filled_file(dir.path(), &clock);
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute("UPDATE checkpoints SET checksum = NULL", [])
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let got = block_on(store.checkpoint_store().latest(written.run));
    assert_corrupt_names_run_and_seq("latest", got, written.run, 1);
}

#[test]
fn a_file_of_schema_version_1_is_upgraded_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let (path, written) = filled_file(dir.path(), &clock);
    {
        // what a build of schema version 1 left: no mac or checksum columns, no reservation
        // expiry, charge keys or control records, budgets of four dimensions (no payments)
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(
            "ALTER TABLE audit_entries DROP COLUMN mac;
             ALTER TABLE checkpoints DROP COLUMN checksum;
             DROP INDEX budget_reservations_due;
             ALTER TABLE budget_reservations DROP COLUMN expires_at;
             ALTER TABLE budget_reservations DROP COLUMN expired;
             DROP TABLE budget_charges;
             DROP TABLE control_records;
             UPDATE budget_accounts SET account = json_set(account,
               '$.committed', json_remove(json_extract(account, '$.committed'), '$[1]'),
               '$.reserved', json_remove(json_extract(account, '$.reserved'), '$[1]'),
               '$.alerted', json_remove(json_extract(account, '$.alerted'), '$[1]'));
             UPDATE budget_reservations SET reservation = json_set(reservation,
               '$.amount', json_remove(json_extract(reservation, '$.amount'), '$[1]'));
             DROP INDEX runs_ready;
             ALTER TABLE runs DROP COLUMN ready;
             ALTER TABLE runs DROP COLUMN settled;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    // existing checkpoints were given their checksums on the way
    check_filled_with(&store, &clock, &written, 0);
    // and the runs entered the work queue: a running run is claimable once its lease lapses
    let checkpoints = store.checkpoint_store();
    let latest = block_on(checkpoints.latest(written.run)).unwrap().unwrap();
    let far = clock.now() + chrono::Duration::days(1);
    let claimed =
        block_on(checkpoints.claim(&WorkerId::new("q"), far, Duration::from_secs(5), 9)).unwrap();
    let expected = if latest.state.status == aios_orchestrator::RunStatus::Running {
        vec![written.run]
    } else {
        vec![]
    };
    assert_eq!(claimed.iter().map(|l| l.run).collect::<Vec<_>>(), expected);
}
