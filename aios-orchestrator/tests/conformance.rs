//! The checkpoint store conformance suite against the in-memory store, plain and wrapped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aios_core::testing::Faults;
use aios_orchestrator::testing::{checkpoint_store_conformance, FaultyCheckpointStore};
use aios_orchestrator::InMemoryCheckpointStore;
use futures::executor::block_on;

#[test]
fn in_memory_checkpoint_store() {
    block_on(checkpoint_store_conformance(InMemoryCheckpointStore::new));
}

#[test]
fn fault_wrapper_without_faults_is_transparent() {
    block_on(checkpoint_store_conformance(|| {
        FaultyCheckpointStore::new(InMemoryCheckpointStore::new(), Faults::default())
    }));
}
