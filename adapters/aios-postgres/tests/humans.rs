//! Human credentials: only hashes stored, removal revokes, the first human bootstraps once
//! however many race for it, and a later one needs an adder who holds a credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aios_core::StoreError;
use sha2::{Digest, Sha256};

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now() -> aios_core::Timestamp {
    chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_names_its_human_until_removed() {
    let url = common::fresh_url().await;
    let store = aios_postgres::PgStore::connect(&url).await.unwrap();
    let humans = store.human_credentials();
    assert!(humans.is_empty().await.unwrap());
    humans
        .add("alice", &hash("t-alice"), None, now())
        .await
        .unwrap();
    humans
        .add("bob", &hash("t-bob"), Some("alice"), now())
        .await
        .unwrap();
    assert_eq!(
        humans.find(&hash("t-alice")).await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(humans.find(&hash("t-guess")).await.unwrap(), None);
    // a value that is no hash matches nothing and is never stored
    assert_eq!(humans.find("t-alice").await.unwrap(), None);
    let e = humans
        .add("carol", "aios_plain_token", Some("alice"), now())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Backend { .. }), "{e}");
    assert!(e.to_string().contains("SHA-256"), "{e}");
    // a second credential for a name
    let e = humans
        .add("bob", &hash("t-bob2"), Some("alice"), now())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    // a first human into a table that has one; an adder without a credential
    let e = humans
        .add("carol", &hash("t-carol"), None, now())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = humans
        .add("carol", &hash("t-carol"), Some("mallory"), now())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("mallory"), "{e}");

    let list = humans.list().await.unwrap();
    let names: Vec<_> = list.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(list[0].added_by, None);
    assert_eq!(list[1].added_by.as_deref(), Some("alice"));
    assert_eq!(list[1].added_at, now());

    // removal revokes, also for another pool on the same database
    let other = aios_postgres::PgStore::connect(&url)
        .await
        .unwrap()
        .human_credentials();
    assert!(humans.remove("alice").await.unwrap());
    assert_eq!(other.find(&hash("t-alice")).await.unwrap(), None);
    assert!(!other.remove("alice").await.unwrap());
    // the removed adder can add nobody
    let e = other
        .add("carol", &hash("t-carol"), Some("alice"), now())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_first_humans_racing_exactly_one_is_added() {
    let store = common::fresh().await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let humans = store.human_credentials();
            tokio::spawn(async move {
                humans
                    .add(&format!("h{i}"), &hash(&format!("t{i}")), None, now())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.human_credentials().list().await.unwrap().len(), 1);
}

fn record(text: &str) -> aios_core::AuditRecord {
    aios_core::AuditRecord::new(
        aios_core::Principal::System,
        aios_core::AuditEvent::Note {
            text: text.to_string(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_and_its_audit_record_are_written_together_or_not_at_all() {
    use aios_core::{AuditLog, AuditLogExt};
    let url = common::fresh_url().await;
    let store = aios_postgres::PgStore::connect(&url).await.unwrap();
    let (humans, log) = (store.human_credentials(), store.audit_log());
    humans
        .add_audited(
            "alice",
            &hash("t-alice"),
            None,
            now(),
            &log,
            record("alice added"),
        )
        .await
        .unwrap();
    assert_eq!(log.head().await.unwrap().len, 1);

    // the audit log refuses every append: neither the credential nor the removal is written
    aios_postgres::testing::TestServer::execute_on(
        &url,
        "CREATE FUNCTION aios_t_refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the audit log is read-only'; END $$;
         CREATE TRIGGER aios_t_refuse BEFORE INSERT ON aios_audit_entries
           FOR EACH ROW EXECUTE FUNCTION aios_t_refuse();",
    )
    .await
    .unwrap();
    let e = humans
        .add_audited(
            "bob",
            &hash("t-bob"),
            Some("alice"),
            now(),
            &log,
            record("bob"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    assert_eq!(humans.find(&hash("t-bob")).await.unwrap(), None);
    let e = humans
        .remove_audited("alice", &log, record("alice removed"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    assert_eq!(
        humans.find(&hash("t-alice")).await.unwrap().as_deref(),
        Some("alice")
    );

    aios_postgres::testing::TestServer::execute_on(
        &url,
        "DROP TRIGGER aios_t_refuse ON aios_audit_entries",
    )
    .await
    .unwrap();
    // removing nobody writes nothing; removing alice writes her removal once
    assert!(!humans
        .remove_audited("nobody", &log, record("nobody"))
        .await
        .unwrap());
    assert!(humans
        .remove_audited("alice", &log, record("alice removed"))
        .await
        .unwrap());
    assert_eq!(humans.find(&hash("t-alice")).await.unwrap(), None);
    assert_eq!(log.head().await.unwrap().len, 2);
    assert!(log.verify(None).await.unwrap().is_intact());
}
