#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The store conformance suite, and failure atomicity through a fault-injecting store.

use std::sync::Arc;
use std::time::Duration;

use aios_core::testing::{FaultPlan, Faults};
use aios_core::{HashEmbedder, ManualClock, Principal, StoreError};
use aios_memory::testing::{memory_store_conformance, FaultyMemoryStore};
use aios_memory::{
    InMemoryMemoryStore, Memory, MemoryError, MemoryStore, NewMemory, RecallQuery, Revision, Scope,
    Tier,
};
use futures::executor::block_on;

#[test]
fn in_memory_store_conforms() {
    block_on(memory_store_conformance(InMemoryMemoryStore::new));
}

#[test]
fn faulty_wrapper_without_faults_conforms() {
    block_on(memory_store_conformance(|| {
        FaultyMemoryStore::new(InMemoryMemoryStore::new(), Faults::new(FaultPlan::none()))
    }));
}

struct Fixture {
    clock: ManualClock,
    faults: Faults,
    store: Arc<FaultyMemoryStore<InMemoryMemoryStore>>,
    memory: Memory,
}

async fn fixture() -> Fixture {
    let clock = ManualClock::default();
    let faults = Faults::new(FaultPlan::none());
    let store = Arc::new(FaultyMemoryStore::new(
        InMemoryMemoryStore::new(),
        faults.clone(),
    ));
    let memory = Memory::builder(Arc::new(clock.clone()))
        .store(store.clone())
        .embedder(Arc::new(HashEmbedder::new(32)))
        .open()
        .await
        .unwrap();
    Fixture {
        clock,
        faults,
        store,
        memory,
    }
}

async fn snapshot(f: &Fixture) -> (String, Vec<String>) {
    let export = f.memory.export().await.unwrap();
    let hits = f
        .memory
        .recall(&RecallQuery::text("invoice friday monday").k(50))
        .await
        .unwrap()
        .into_iter()
        .map(|h| format!("{}@{}", h.record.id, h.record.version))
        .collect();
    (export, hits)
}

#[test]
fn a_failed_write_leaves_store_and_indexes_unchanged() {
    block_on(async {
        let f = fixture().await;
        let scope = Scope::parse("org/acme").unwrap();
        let a = f
            .memory
            .remember(NewMemory::new(
                scope.clone(),
                Tier::Project,
                "the invoice is due friday",
                Principal::System,
            ))
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(1));
        let before = snapshot(&f).await;

        // every store call fails from now on
        f.faults.set_plan(FaultPlan::fail_after(0));
        let err = f
            .memory
            .remember(NewMemory::new(
                scope.clone(),
                Tier::Project,
                "the invoice moved to monday",
                Principal::System,
            ))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            MemoryError::Store(StoreError::Unavailable { .. })
        ));
        assert!(aios_core::Transience::is_transient(&err));
        assert!(f
            .memory
            .revise(a.id, Revision::new(Principal::System).content("due monday"))
            .await
            .is_err());
        assert!(f
            .memory
            .retract(a.id, Principal::System, "wrong")
            .await
            .is_err());

        // only the write fails: reads succeed, so the revise reaches the failing put
        f.faults.set_plan(FaultPlan::fail_nth(2));
        let err = f
            .memory
            .revise(a.id, Revision::new(Principal::System).content("due monday"))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            MemoryError::Store(StoreError::Unavailable { .. })
        ));
        f.faults.set_plan(FaultPlan::fail_nth(2));
        assert!(f
            .memory
            .retract(a.id, Principal::System, "wrong")
            .await
            .is_err());

        f.faults.set_plan(FaultPlan::none());
        assert_eq!(snapshot(&f).await, before, "nothing changed");
        assert_eq!(f.store.inner().len(), 1);
        assert_eq!(f.memory.history(a.id).await.unwrap().len(), 1);
        assert!(f.memory.verify().await.unwrap().is_intact());

        // and the memory still works once the store recovers
        let revised = f
            .memory
            .revise(a.id, Revision::new(Principal::System).content("due monday"))
            .await
            .unwrap();
        assert_eq!(revised.version, 2);
    });
}

#[test]
fn a_failed_open_reports_the_store_error() {
    let store = Arc::new(FaultyMemoryStore::new(
        InMemoryMemoryStore::new(),
        Faults::new(FaultPlan::fail_after(0)),
    ));
    let err = block_on(
        Memory::builder(Arc::new(ManualClock::default()))
            .store(store as Arc<dyn MemoryStore>)
            .open(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        MemoryError::Store(StoreError::Unavailable { .. })
    ));
}

#[test]
fn a_failed_import_removes_what_it_wrote() {
    block_on(async {
        let source = fixture().await;
        for i in 0..3 {
            let r = source
                .memory
                .remember(NewMemory::new(
                    Scope::parse("org/x").unwrap(),
                    Tier::Project,
                    format!("fact {i}"),
                    Principal::System,
                ))
                .await
                .unwrap();
            source
                .memory
                .revise(
                    r.id,
                    Revision::new(Principal::System).content(format!("fact {i} revised")),
                )
                .await
                .unwrap();
        }
        let lines = source.memory.export().await.unwrap();

        let target = fixture().await;
        // the 4th store call (the second version of the second lineage) fails
        target.faults.set_plan(FaultPlan::fail_nth(4));
        let err = target
            .memory
            .import(&lines, &aios_memory::Migrator::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, MemoryError::Store(StoreError::Unavailable { .. })),
            "{err}"
        );
        target.faults.set_plan(FaultPlan::none());
        assert!(
            target.store.inner().is_empty(),
            "the first lineage was removed again"
        );
        assert!(target.memory.is_empty());
        assert!(target
            .memory
            .recall(&RecallQuery::text("fact").k(10))
            .await
            .unwrap()
            .is_empty());
        // and a retry succeeds
        let report = target
            .memory
            .import(&lines, &aios_memory::Migrator::new())
            .await
            .unwrap();
        assert_eq!((report.imported, report.records), (3, 6));
        assert_eq!(target.memory.export().await.unwrap(), lines);
    });
}
