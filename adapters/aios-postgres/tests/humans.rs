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
