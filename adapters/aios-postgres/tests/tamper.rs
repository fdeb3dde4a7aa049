//! Stored state is checked before it is trusted, and a failed migration leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aios_core::{
    AuditEvent, AuditLog, AuditLogExt, AuditRecord, Clock, ManualClock, Principal, RunId,
    StoreError,
};
use aios_orchestrator::{
    Checkpoint, CheckpointStore, RunState, RunStatus, WorkerId, RUN_STATE_SCHEMA,
};
use aios_postgres::testing::TestServer;
use aios_postgres::PgStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_checkpoint_is_corrupt_naming_run_and_seq() {
    let url = common::fresh_url().await;
    let store = PgStore::connect(&url).await.unwrap().checkpoint_store();
    let now = ManualClock::default().now();
    let run = RunId::from_name("tampered");
    let lease = store
        .acquire(run, &WorkerId::new("a"), now, Duration::from_secs(30))
        .await
        .unwrap();
    let checkpoint = Checkpoint {
        run,
        seq: 1,
        at: now,
        state: RunState {
            schema: RUN_STATE_SCHEMA,
            run,
            workflow: "honest".into(),
            governance_version: 1,
            started_at: now,
            status: RunStatus::Running,
            tasks: vec![],
            forked_from: None,
        },
    };
    store.save(&lease, &checkpoint).await.unwrap();
    assert_eq!(store.latest(run).await.unwrap(), Some(checkpoint));
    // a change that still decodes
    TestServer::execute_on(
        &url,
        "UPDATE aios_checkpoints SET checkpoint = replace(checkpoint, 'honest', 'forged')",
    )
    .await
    .unwrap();
    match store.latest(run).await {
        Err(StoreError::Corrupt { location, detail }) => {
            assert!(location.contains(&format!("{run} seq 1")), "{location}");
            assert!(detail.contains("checksum"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.get(run, 1).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_audit_entry_breaks_verification() {
    let url = common::fresh_url().await;
    let log = PgStore::connect(&url).await.unwrap().audit_log();
    for text in ["one", "two", "three"] {
        log.append(AuditRecord::new(
            Principal::System,
            AuditEvent::Note { text: text.into() },
        ))
        .await
        .unwrap();
    }
    assert!(log.verify(None).await.unwrap().is_intact());
    TestServer::execute_on(
        &url,
        "UPDATE aios_audit_entries SET entry = replace(entry, 'two', 'TWO') WHERE seq = 1",
    )
    .await
    .unwrap();
    let report = log.verify(None).await.unwrap();
    assert!(!report.is_intact(), "the change is found: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_half_way_leaves_nothing() {
    let url = common::fresh_url().await;
    // a table of the schema's second statement already exists: the migration fails there
    TestServer::execute_on(&url, "CREATE TABLE aios_memory_versions (x INTEGER)")
        .await
        .unwrap();
    let err = PgStore::connect(&url).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(
        err.to_string().contains("migrate to schema version 1"),
        "{err}"
    );
    // the first table and the version table were rolled back with it
    TestServer::execute_on(&url, "DROP TABLE aios_memory_versions")
        .await
        .unwrap();
    for table in ["aios_audit_entries", "aios_schema"] {
        let e = TestServer::execute_on(&url, &format!("SELECT 1 FROM {table}"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{table}: {e}");
    }
    // and once the obstacle is gone, the migration runs whole
    let store = PgStore::connect(&url).await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        aios_postgres::SCHEMA_VERSION
    );
}
