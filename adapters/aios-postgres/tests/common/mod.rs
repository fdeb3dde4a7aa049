//! Shared test support: a fresh database per call on the process's test server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use aios_postgres::testing::TestServer;
use aios_postgres::PgStore;

/// The server every test of this binary shares.
pub fn server() -> &'static TestServer {
    TestServer::shared().expect("a test postgres server")
}

/// The URL of a fresh, empty database.
pub async fn fresh_url() -> String {
    server().fresh_database().await.unwrap()
}

/// A store on a fresh, empty database.
pub async fn fresh() -> PgStore {
    PgStore::connect(&fresh_url().await).await.unwrap()
}

/// [`fresh`] from synchronous code running on a multi-threaded Tokio runtime (the
/// conformance suites' factories are synchronous).
pub fn fresh_blocking() -> PgStore {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fresh()))
}
