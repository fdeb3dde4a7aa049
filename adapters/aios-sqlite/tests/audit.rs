//! The audit log on a real file, attacked or damaged underneath through a raw connection:
//! one unreadable row is reported as that row and the rest stays readable and verifiable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use aios_core::{
    AuditEvent, AuditLog, AuditLogExt, AuditRecord, ChainHead, ChainProblem, Principal, StoreError,
    StoredEntry,
};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

fn note(text: &str) -> AuditRecord {
    AuditRecord::new(Principal::System, AuditEvent::Note { text: text.into() })
}

/// A closed file with `n` notes `n0`, `n1`, ...; returns its path and head.
fn log_file(dir: &Path, n: usize) -> (PathBuf, ChainHead) {
    let path = dir.join("audit.db");
    let store = SqliteStore::open(&path).unwrap();
    let log = store.audit_log();
    let mut head = ChainHead::default();
    for i in 0..n {
        head = block_on(log.append(note(&format!("n{i}")))).unwrap();
    }
    (path, head)
}

fn raw(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    assert_eq!(conn.execute(sql, []).unwrap(), 1, "`{sql}` changed one row");
}

#[test]
fn a_row_of_a_newer_version_is_reported_as_that_row_and_the_rest_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = log_file(dir.path(), 12);
    raw(&path, "UPDATE audit_entries SET v = 99 WHERE seq = 4");
    let store = SqliteStore::open(&path).unwrap();
    let log = store.audit_log();

    let page = block_on(log.read(0, 100)).unwrap();
    assert_eq!(page.len(), 12, "every position is returned");
    for (i, slot) in page.iter().enumerate() {
        match slot {
            StoredEntry::Unreadable(u) => {
                assert_eq!((i, u.seq, u.version), (4, 4, 99), "{u:?}");
                assert!(u.hash.is_some(), "the stored hash is still known");
                assert!(
                    u.detail.contains("seq 4") && u.detail.contains(&path.display().to_string()),
                    "{}",
                    u.detail
                );
            }
            StoredEntry::Entry(e) => {
                assert_eq!(e.seq, i as u64);
                assert_eq!(
                    e.event,
                    AuditEvent::Note {
                        text: format!("n{i}")
                    }
                );
            }
        }
    }
    // the page after it reads normally
    let tail = block_on(log.read(5, 100)).unwrap();
    assert_eq!(tail.len(), 7);
    assert!(tail.iter().all(|e| e.entry().is_some()));

    // verification names seq 4 and checks the links on both sides of it
    let report = block_on(log.verify(Some(head))).unwrap();
    assert_eq!(
        report.problems,
        vec![ChainProblem::UnsupportedVersion {
            seq: 4,
            version: 99
        }]
    );
    assert_eq!(report.checked, 12);
    assert_eq!(report.head, head);

    // a caller that needs every entry is told which one
    let err = block_on(log.entries()).unwrap_err();
    assert!(
        matches!(&err, StoreError::UnsupportedVersion { found: 99, location, .. }
            if location.contains("audit entry 4")),
        "{err:?}"
    );
}

#[test]
fn a_row_that_does_not_decode_is_reported_and_changes_after_it_are_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let (path, head) = log_file(dir.path(), 12);
    raw(
        &path,
        "UPDATE audit_entries SET entry = substr(entry, 1, 20) WHERE seq = 6",
    );
    raw(
        &path,
        "UPDATE audit_entries SET entry = replace(entry, '\"n9\"', '\"forged\"') WHERE seq = 9",
    );
    let store = SqliteStore::open(&path).unwrap();
    let log = store.audit_log();
    let page = block_on(log.read(0, 100)).unwrap();
    assert_eq!(page.len(), 12);
    assert!(matches!(&page[6], StoredEntry::Unreadable(u) if u.seq == 6 && u.version == 1));
    assert_eq!(page.iter().filter(|e| e.entry().is_none()).count(), 1);

    let report = block_on(log.verify(Some(head))).unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(matches!(
        &report.problems[0],
        ChainProblem::Unreadable { seq: 6, detail } if detail.contains("seq 6")
    ));
    assert_eq!(report.problems[1], ChainProblem::ContentChanged { seq: 9 });
}

fn key(byte: u8) -> aios_core::AuditKey {
    aios_core::AuditKey::from_bytes(&[byte; 32]).unwrap()
}

#[test]
fn rows_appended_without_the_key_pass_the_chain_but_fail_keyed_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyed.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let log = store.audit_log_keyed(key(1));
        for i in 0..5 {
            block_on(log.append(note(&format!("n{i}")))).unwrap();
        }
    }
    // honest entries verify with the key, across a reopen
    let store = SqliteStore::open(&path).unwrap();
    let log = store.audit_log_keyed(key(1));
    assert!(block_on(log.verify_keyed(None, &key(1)))
        .unwrap()
        .is_intact());
    assert!(block_on(log.entries())
        .unwrap()
        .iter()
        .all(|e| e.mac.is_some()));

    // someone who can write the file but has no key appends through an unkeyed handle...
    block_on(
        SqliteStore::open(&path)
            .unwrap()
            .audit_log()
            .append(note("forged")),
    )
    .unwrap();
    // ...or by hand, with a correctly computed chain hash and a MAC under a key of their own
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let (seq, hash): (i64, String) = conn
            .query_row(
                "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let prev: aios_core::EntryHash = serde_json::from_value(hash.into()).unwrap();
        let forged =
            aios_core::AuditEntry::seal(seq as u64 + 1, prev, note("forged by hand")).unwrap();
        let mac = key(2).mac(&forged.hash).to_string();
        conn.execute(
            "INSERT INTO audit_entries (seq, v, hash, entry, mac) VALUES (?1, 1, ?2, ?3, ?4)",
            rusqlite::params![
                seq + 1,
                forged.hash.to_string(),
                serde_json::to_string(&forged).unwrap(),
                mac
            ],
        )
        .unwrap();
    }
    let report = block_on(log.verify(None)).unwrap();
    assert!(
        report.is_intact(),
        "the hash chain alone cannot tell: {report:?}"
    );
    assert_eq!(report.checked, 7);
    let report = block_on(log.verify_keyed(None, &key(1))).unwrap();
    assert_eq!(
        report.problems,
        vec![
            ChainProblem::MacMissing { seq: 5 },
            ChainProblem::MacMismatch { seq: 6 }
        ]
    );

    // the keyed log goes on sealing after them
    block_on(log.append(note("honest again"))).unwrap();
    let report = block_on(log.verify_keyed(None, &key(1))).unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert_eq!(report.checked, 8);

    // a wrong key fails from the first entry on
    let wrong = block_on(log.verify_keyed(None, &key(3))).unwrap();
    assert_eq!(wrong.problems[0], ChainProblem::MacMismatch { seq: 0 });
}

#[test]
fn the_mac_of_an_unreadable_row_is_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyed.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let log = store.audit_log_keyed(key(1));
        for i in 0..4 {
            block_on(log.append(note(&format!("n{i}")))).unwrap();
        }
    }
    raw(&path, "UPDATE audit_entries SET v = 99 WHERE seq = 1");
    raw(
        &path,
        "UPDATE audit_entries SET v = 99, mac = NULL WHERE seq = 2",
    );
    let store = SqliteStore::open(&path).unwrap();
    let report = block_on(store.audit_log().verify_keyed(None, &key(1))).unwrap();
    assert_eq!(
        report.problems,
        vec![
            ChainProblem::UnsupportedVersion {
                seq: 1,
                version: 99
            },
            ChainProblem::UnsupportedVersion {
                seq: 2,
                version: 99
            },
            ChainProblem::MacMissing { seq: 2 },
        ]
    );
}
