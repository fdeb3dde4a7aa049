//! Every conformance suite the in-memory implementations run, against SQLite in memory and
//! in a file (with full durability, as in production).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aios_core::ManualClock;
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

/// Fresh, empty stores in files of one temporary directory.
struct Files {
    dir: tempfile::TempDir,
    n: AtomicUsize,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            n: AtomicUsize::new(0),
        }
    }

    fn fresh(&self) -> SqliteStore {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        SqliteStore::open(self.dir.path().join(format!("store-{n}.db"))).unwrap()
    }
}

fn memory() -> SqliteStore {
    SqliteStore::in_memory().unwrap()
}

#[test]
fn audit_log_in_memory() {
    block_on(aios_core::testing::audit_log_conformance(|| {
        memory().audit_log()
    }));
}

#[test]
fn audit_log_in_a_file() {
    let files = Files::new();
    block_on(aios_core::testing::audit_log_conformance(|| {
        files.fresh().audit_log()
    }));
}

#[test]
fn keyed_audit_log_in_a_file() {
    let files = Files::new();
    let key = aios_core::AuditKey::from_bytes(&[5; 32]).unwrap();
    block_on(aios_core::testing::audit_log_conformance(|| {
        files.fresh().audit_log_keyed(key.clone())
    }));
}

#[test]
fn memory_store_in_memory() {
    block_on(aios_memory::testing::memory_store_conformance(|| {
        memory().memory_store()
    }));
}

#[test]
fn memory_store_in_a_file() {
    let files = Files::new();
    block_on(aios_memory::testing::memory_store_conformance(|| {
        files.fresh().memory_store()
    }));
}

#[test]
fn checkpoint_store_in_memory() {
    block_on(aios_orchestrator::testing::checkpoint_store_conformance(
        || memory().checkpoint_store(),
    ));
}

#[test]
fn checkpoint_store_in_a_file() {
    let files = Files::new();
    block_on(aios_orchestrator::testing::checkpoint_store_conformance(
        || files.fresh().checkpoint_store(),
    ));
}

#[test]
fn budget_ledger_in_memory() {
    block_on(aios_governance::testing::budget_ledger_conformance(
        |clock: ManualClock| memory().budget_ledger(Arc::new(clock)),
    ));
}

#[test]
fn budget_ledger_in_a_file() {
    let files = Files::new();
    block_on(aios_governance::testing::budget_ledger_conformance(
        |clock: ManualClock| files.fresh().budget_ledger(Arc::new(clock)),
    ));
}

#[test]
fn approval_store_in_memory() {
    block_on(aios_governance::testing::approval_store_conformance(|| {
        memory().approval_store()
    }));
}

#[test]
fn approval_store_in_a_file() {
    let files = Files::new();
    block_on(aios_governance::testing::approval_store_conformance(|| {
        files.fresh().approval_store()
    }));
}

#[test]
fn control_store_in_memory() {
    block_on(aios_governance::testing::control_store_conformance(|| {
        memory().control_store()
    }));
}

#[test]
fn control_store_in_a_file() {
    let files = Files::new();
    block_on(aios_governance::testing::control_store_conformance(|| {
        files.fresh().control_store()
    }));
}
