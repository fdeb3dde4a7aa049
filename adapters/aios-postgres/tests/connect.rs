//! Connecting: migrations (versioned, once under concurrency, a newer schema refused), and
//! clear errors for bad URLs, bad credentials, an unreachable server and a lost connection,
//! never showing the password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, Principal, StoreError};
use aios_postgres::testing::{ServerOptions, TestServer, TEST_PASSWORD};
use aios_postgres::{PgOptions, PgStore, SCHEMA_VERSION};

fn note(text: &str) -> AuditRecord {
    AuditRecord::new(
        Principal::System,
        AuditEvent::Note {
            text: text.to_string(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_together_migrate_once() {
    let url = common::fresh_url().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    for t in tasks {
        let store = t.await.unwrap().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
    // reconnecting to a migrated database changes nothing and keeps the data
    let store = PgStore::connect(&url).await.unwrap();
    store.audit_log().append(note("kept")).await.unwrap();
    let again = PgStore::connect(&url).await.unwrap();
    assert_eq!(again.audit_log().head().await.unwrap().len, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_naming_the_version() {
    let url = common::fresh_url().await;
    let store = PgStore::connect(&url).await.unwrap();
    store.audit_log().append(note("before")).await.unwrap();
    TestServer::execute_on(&url, "UPDATE aios_schema SET version = 999")
        .await
        .unwrap();
    match PgStore::connect(&url).await {
        Err(StoreError::UnsupportedVersion {
            location,
            found,
            supported,
        }) => {
            assert_eq!((found, supported), (999, SCHEMA_VERSION));
            assert!(location.contains("aios_schema"), "{location}");
            assert!(location.contains("127.0.0.1") || location.contains("postgres://"));
            assert!(!location.contains(TEST_PASSWORD), "{location}");
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    // nothing was written: the version and the data are as they were
    TestServer::execute_on(
        &url,
        &format!("UPDATE aios_schema SET version = {SCHEMA_VERSION}"),
    )
    .await
    .unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    assert_eq!(store.audit_log().head().await.unwrap().len, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_a_clear_error_without_the_password() {
    let url = common::fresh_url().await;
    let wrong = url.replace(TEST_PASSWORD, "not-the-password-42");
    let err = PgStore::connect(&wrong).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(text.contains("authentication"), "{text}");
    assert!(
        text.contains("aios@127.0.0.1"),
        "names user and host: {text}"
    );
    assert!(!text.contains("not-the-password-42"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_not_found() {
    let server = common::server();
    let err = PgStore::connect(&server.url_of("no_such_db_here"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_db_here"), "{err}");
    assert!(!err.to_string().contains(TEST_PASSWORD), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    // a loopback port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://ann:hunter2secret@127.0.0.1:{port}/aios");
    let options = PgOptions::default().connect_timeout(Duration::from_secs(2));
    let err = PgStore::connect_with(&url, options).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("ann@127.0.0.1:{port}/aios")),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_url_is_refused_without_echoing_it() {
    let err = PgStore::connect("postgres://ann:hunter2secret@127.0.0.1:notaport/x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
}

/// Ends the backends of database `db` that wait for a lock, once one does.
async fn terminate_waiter(db: &str) -> bool {
    for _ in 0..200 {
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{db}' AND wait_event_type = 'Lock'"
        );
        let url = common::server().admin_url().to_string();
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let rows = client.query(&sql, &[]).await.unwrap();
        drop(client);
        let _ = driver.await;
        if !rows.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_mid_append_is_unavailable_and_writes_nothing() {
    let url = common::fresh_url().await;
    let db = url.rsplit('/').next().unwrap().to_string();
    let store = PgStore::connect(&url).await.unwrap();
    let log = store.audit_log();
    log.append(note("first")).await.unwrap();

    // hold the audit lock from another session, so the next append stops inside its
    // transaction, then end that append's connection
    let (holder, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x4149_4F53_0000_0002_i64])
        .await
        .unwrap();
    let appending = {
        let log = log.clone();
        tokio::spawn(async move { log.append(note("interrupted")).await })
    };
    assert!(
        terminate_waiter(&db).await,
        "the append waited for the lock"
    );
    let err = appending.await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(text.contains(&db), "names the database: {text}");
    assert!(!text.contains(TEST_PASSWORD), "{text}");
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&0x4149_4F53_0000_0002_i64],
        )
        .await
        .unwrap();
    drop(holder);
    let _ = driver.await;

    // nothing half-written; the pool replaces the lost connection and goes on
    assert_eq!(log.head().await.unwrap().len, 1);
    log.append(note("after")).await.unwrap();
    let report = log.verify(None).await.unwrap();
    assert_eq!(report.checked, 2);
    assert!(report.is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_unavailable_then_recovers() {
    // durable: an immediate stop must not lose what was committed
    let server = TestServer::start(ServerOptions::default().durable(true)).unwrap();
    let url = server.fresh_database().await.unwrap();
    let options = PgOptions::default().connect_timeout(Duration::from_secs(2));
    let store = PgStore::connect_with(&url, options).await.unwrap();
    let log = store.audit_log();
    log.append(note("before")).await.unwrap();
    server.stop().unwrap();
    let err = log.append(note("while down")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(!err.to_string().contains(TEST_PASSWORD), "{err}");
    server.restart().unwrap();
    // the pool reconnects by itself
    log.append(note("after")).await.unwrap();
    let report = log.verify(None).await.unwrap();
    assert_eq!(report.checked, 2, "the append while down left nothing");
    assert!(report.is_intact());
}
