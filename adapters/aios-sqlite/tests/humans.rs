//! Human credentials in the SQLite file: only hashes stored, removal revokes, the first
//! human bootstraps once however many race for it (other connections, as other processes),
//! a later one needs an adder who holds a credential, and a change and its audit record
//! are written together or not at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, Principal, StoreError};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

/// A stand-in for a token's SHA-256: 64 lowercase hex digits.
fn hash(n: u64) -> String {
    format!("{n:064x}")
}

fn now() -> aios_core::Timestamp {
    chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn record(text: &str) -> AuditRecord {
    AuditRecord::new(
        Principal::System,
        AuditEvent::Custom {
            kind: "human_credential".into(),
            data: serde_json::json!({ "what": text }),
        },
    )
    .at(now())
}

#[test]
fn a_hash_names_its_human_until_removed() {
    let store = SqliteStore::in_memory().unwrap();
    let humans = store.human_credentials();
    block_on(async {
        assert!(humans.is_empty().await.unwrap());
        humans.add("alice", &hash(1), None, now()).await.unwrap();
        humans
            .add("bob", &hash(2), Some("alice"), now())
            .await
            .unwrap();
        assert!(!humans.is_empty().await.unwrap());
        assert_eq!(
            humans.find(&hash(1)).await.unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(
            humans.find_blocking(&hash(2)).unwrap().as_deref(),
            Some("bob")
        );
        assert_eq!(humans.find(&hash(3)).await.unwrap(), None);

        // the rules of who may add, each refusal writing nothing
        match humans.add("carol", &hash(3), None, now()).await {
            Err(StoreError::Conflict { detail }) => {
                assert!(detail.contains("cannot be the first human"), "{detail}")
            }
            other => panic!("a second first human is refused, got {other:?}"),
        }
        match humans.add("carol", &hash(3), Some("mallory"), now()).await {
            Err(StoreError::Conflict { detail }) => {
                assert!(detail.contains("`mallory` has no credential"), "{detail}")
            }
            other => panic!("an adder without a credential is refused, got {other:?}"),
        }
        assert!(matches!(
            humans.add("alice", &hash(4), Some("bob"), now()).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        for bad in ["aios_0123", &hash(0xabc).to_uppercase(), ""] {
            assert!(
                matches!(
                    humans.add("dave", bad, Some("alice"), now()).await,
                    Err(StoreError::Backend { .. })
                ),
                "`{bad}` is not a hash and is never stored"
            );
        }
        assert!(matches!(
            humans.add(" ", &hash(6), Some("alice"), now()).await,
            Err(StoreError::Backend { .. })
        ));
        let listed = humans.list().await.unwrap();
        let names: Vec<_> = listed
            .iter()
            .map(|c| (c.name.as_str(), c.added_by.as_deref(), c.added_at))
            .collect();
        assert_eq!(
            names,
            [("alice", None, now()), ("bob", Some("alice"), now())]
        );

        assert!(humans.remove("alice").await.unwrap());
        assert_eq!(humans.find(&hash(1)).await.unwrap(), None, "revoked");
        assert!(!humans.remove("alice").await.unwrap());
        // alice is gone: she can no longer add anyone
        assert!(matches!(
            humans.add("erin", &hash(7), Some("alice"), now()).await,
            Err(StoreError::Conflict { .. })
        ));
    });
}

/// Eight threads on two stores opened on one file (separate connections, as separate
/// processes would be) each try to add the first human: exactly one is added.
#[test]
fn of_many_first_humans_racing_exactly_one_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("humans.db");
    let stores = [
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    ];
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let outcomes: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let humans = stores[(i % 2) as usize].human_credentials();
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    block_on(humans.add(&format!("human-{i}"), &hash(i + 1), None, now()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let added = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(added, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(()) | Err(StoreError::Conflict { .. }))));
    assert_eq!(
        block_on(stores[0].human_credentials().list())
            .unwrap()
            .len(),
        1
    );
}

/// With the audit log refusing appends (a trigger), neither an addition nor a removal
/// happens; when it accepts them, each change is in the chain, sealed with the log's key.
#[test]
fn a_change_and_its_audit_record_are_written_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("humans.db");
    let store = SqliteStore::open(&path).unwrap();
    let key = aios_core::AuditKey::from_bytes(&[7; 32]).unwrap();
    let log = store.audit_log_keyed(key.clone());
    let humans = store.human_credentials();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let refuse = |on: bool| {
        raw.execute_batch(if on {
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_entries
               BEGIN SELECT RAISE(ABORT, 'the audit log is read-only'); END;"
        } else {
            "DROP TRIGGER refuse;"
        })
        .unwrap()
    };
    block_on(async {
        refuse(true);
        let err = humans
            .add_audited("alice", &hash(1), None, now(), &log, record("add alice"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(
            humans.is_empty().await.unwrap(),
            "no credential without its record"
        );
        refuse(false);
        humans
            .add_audited("alice", &hash(1), None, now(), &log, record("add alice"))
            .await
            .unwrap();
        assert_eq!(log.head().await.unwrap().len, 1);

        refuse(true);
        assert!(humans
            .remove_audited("alice", &log, record("remove alice"))
            .await
            .is_err());
        assert_eq!(
            humans.find(&hash(1)).await.unwrap().as_deref(),
            Some("alice"),
            "no removal without its record"
        );
        refuse(false);
        assert!(humans
            .remove_audited("alice", &log, record("remove alice"))
            .await
            .unwrap());
        // nothing to remove: nothing recorded
        assert!(!humans
            .remove_audited("alice", &log, record("remove alice"))
            .await
            .unwrap());
        assert_eq!(log.head().await.unwrap().len, 2);
        let verified = log.verify_keyed(None, &key).await.unwrap();
        assert!(verified.is_intact(), "{verified:?}");
    });
}

/// A file whose credentials table the command line made itself (before the store's schema
/// had it) opens, keeps its rows and answers for them.
#[test]
fn a_table_made_by_an_older_command_line_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(
            "DROP TABLE aios_humans;
             CREATE TABLE aios_humans (
                 name TEXT PRIMARY KEY,
                 token_sha256 TEXT NOT NULL UNIQUE,
                 added_at TEXT NOT NULL,
                 added_by TEXT
             );",
        )
        .unwrap();
        raw.execute(
            "INSERT INTO aios_humans VALUES ('alice', ?1, '2026-11-30T09:00:00Z', NULL)",
            [hash(1)],
        )
        .unwrap();
        // the file as an older build left it: one schema version before
        raw.pragma_update(None, "user_version", aios_sqlite::SCHEMA_VERSION - 1)
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), aios_sqlite::SCHEMA_VERSION);
    let humans = store.human_credentials();
    assert_eq!(
        block_on(humans.find(&hash(1))).unwrap().as_deref(),
        Some("alice")
    );
    block_on(humans.add("bob", &hash(2), Some("alice"), now())).unwrap();
}
