//! Every conformance suite the in-memory and SQLite implementations run, against
//! PostgreSQL (a fresh database for each store the suite asks for).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aios_core::ManualClock;
use common::fresh_blocking;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log() {
    aios_core::testing::audit_log_conformance(|| fresh_blocking().audit_log()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_audit_log() {
    let key = aios_core::AuditKey::from_bytes(&[5; 32]).unwrap();
    aios_core::testing::audit_log_conformance(|| fresh_blocking().audit_log_keyed(key.clone()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store() {
    aios_memory::testing::memory_store_conformance(|| fresh_blocking().memory_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_store() {
    aios_orchestrator::testing::checkpoint_store_conformance(|| {
        fresh_blocking().checkpoint_store()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_ledger() {
    aios_governance::testing::budget_ledger_conformance(|clock: ManualClock| {
        fresh_blocking().budget_ledger(Arc::new(clock))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_store() {
    aios_governance::testing::approval_store_conformance(|| fresh_blocking().approval_store())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_store() {
    aios_governance::testing::control_store_conformance(|| fresh_blocking().control_store()).await;
}
