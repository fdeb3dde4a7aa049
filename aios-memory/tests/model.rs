#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property test: version and as-of semantics against a simple model.
//!
//! The model keeps, per lineage, the list of versions with the system time each was recorded
//! and whether it is a tombstone. Whatever the sequence of remember, revise (with or without
//! a stale expectation), retract and clock moves, the memory's history, replay, as-of recall
//! and rebuilt indexes must agree with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{Clock, ManualClock, MemoryId, Principal, StoreError, Timestamp};
use aios_memory::{
    InMemoryMemoryStore, Memory, MemoryError, MemoryStore, NewMemory, RecallQuery, Revision, Scope,
    Tier,
};
use futures::executor::block_on;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Remember { scope: u8, word: u8 },
    Revise { slot: u8, word: u8, stale: bool },
    Retract { slot: u8 },
    Advance { millis: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 0u8..20).prop_map(|(scope, word)| Op::Remember { scope, word }),
        4 => (any::<u8>(), 0u8..20, prop::bool::weighted(0.2))
            .prop_map(|(slot, word, stale)| Op::Revise { slot, word, stale }),
        1 => any::<u8>().prop_map(|slot| Op::Retract { slot }),
        3 => (0u16..2000).prop_map(|millis| Op::Advance { millis }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelVersion {
    at: Timestamp,
    content: String,
    tombstone: bool,
}

#[derive(Debug, Default)]
struct Model {
    lineages: BTreeMap<MemoryId, (Scope, Vec<ModelVersion>)>,
    order: Vec<MemoryId>,
}

impl Model {
    /// The content visible at `t` per lineage within `prefix`.
    fn visible(&self, prefix: &Scope, t: Timestamp) -> BTreeMap<MemoryId, (u32, String)> {
        let mut out = BTreeMap::new();
        for (id, (scope, versions)) in &self.lineages {
            if !scope.is_within(prefix) {
                continue;
            }
            let current = versions.iter().enumerate().rev().find(|(_, v)| v.at <= t);
            if let Some((i, v)) = current {
                if !v.tombstone {
                    out.insert(*id, (i as u32 + 1, v.content.clone()));
                }
            }
        }
        out
    }
}

const SCOPES: [&str; 3] = ["org/a", "org/a/x", "org/b"];

fn text(word: u8, n: usize) -> String {
    format!("word{word} entry{n}")
}

async fn run(ops: Vec<Op>) {
    let clock = ManualClock::default();
    let store: Arc<dyn MemoryStore> = Arc::new(InMemoryMemoryStore::new());
    let m = Memory::builder(Arc::new(clock.clone()))
        .store(store.clone())
        .open()
        .await
        .unwrap();
    let mut model = Model::default();
    let mut times = vec![clock.now() - chrono::Duration::milliseconds(1)];
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Advance { millis } => clock.advance(Duration::from_millis(u64::from(millis))),
            Op::Remember { scope, word } => {
                let s = Scope::parse(SCOPES[scope as usize]).unwrap();
                let r = m
                    .remember(NewMemory::new(
                        s.clone(),
                        Tier::Project,
                        text(word, n),
                        Principal::System,
                    ))
                    .await
                    .unwrap();
                assert_eq!(r.version, 1);
                model.order.push(r.id);
                model.lineages.insert(
                    r.id,
                    (
                        s,
                        vec![ModelVersion {
                            at: r.recorded_at,
                            content: r.content,
                            tombstone: false,
                        }],
                    ),
                );
            }
            Op::Revise { slot, word, stale } => {
                if model.order.is_empty() {
                    continue;
                }
                let id = model.order[slot as usize % model.order.len()];
                let (_, versions) = model.lineages.get_mut(&id).unwrap();
                let latest = versions.len() as u32;
                let retracted = versions.last().unwrap().tombstone;
                let mut rev = Revision::new(Principal::System).content(text(word, n));
                if stale {
                    rev = rev.expect_version(latest.saturating_sub(1));
                }
                let got = m.revise(id, rev).await;
                if retracted {
                    assert!(matches!(got, Err(MemoryError::Retracted { .. })), "{got:?}");
                } else if stale {
                    assert!(
                        matches!(got, Err(MemoryError::Store(StoreError::Conflict { .. }))),
                        "{got:?}"
                    );
                } else {
                    let r = got.unwrap();
                    assert_eq!(r.version, latest + 1);
                    versions.push(ModelVersion {
                        at: r.recorded_at,
                        content: r.content,
                        tombstone: false,
                    });
                }
            }
            Op::Retract { slot } => {
                if model.order.is_empty() {
                    continue;
                }
                let id = model.order[slot as usize % model.order.len()];
                let (_, versions) = model.lineages.get_mut(&id).unwrap();
                let got = m.retract(id, Principal::System, "model").await;
                if versions.last().unwrap().tombstone {
                    assert!(matches!(got, Err(MemoryError::Retracted { .. })));
                } else {
                    let r = got.unwrap();
                    versions.push(ModelVersion {
                        at: r.recorded_at,
                        content: r.content,
                        tombstone: true,
                    });
                }
            }
        }
        times.push(clock.now());
    }

    // history matches the model
    for (id, (_, versions)) in &model.lineages {
        let history = m.history(*id).await.unwrap();
        let got: Vec<ModelVersion> = history
            .iter()
            .map(|r| ModelVersion {
                at: r.recorded_at,
                content: r.content.clone(),
                tombstone: r.is_retracted(),
            })
            .collect();
        assert_eq!(&got, versions);
        assert!(history
            .iter()
            .enumerate()
            .all(|(i, r)| r.version == i as u32 + 1));
    }
    assert!(m.verify().await.unwrap().is_intact());

    // as-of semantics through replay and recall, before and after rebuilding the indexes
    let reopened = Memory::open(store, Arc::new(clock.clone())).await.unwrap();
    times.sort();
    times.dedup();
    for memory in [&m, &reopened] {
        for t in &times {
            for prefix in ["", "org/a", "org/b"] {
                let prefix = Scope::parse(prefix).unwrap();
                let want = model.visible(&prefix, *t);
                let replay: BTreeMap<MemoryId, (u32, String)> = memory
                    .replay(&prefix, *t)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.id, (r.version, r.content)))
                    .collect();
                assert_eq!(replay, want, "replay at {t} in {prefix}");
                let recall: BTreeMap<MemoryId, (u32, String)> = memory
                    .recall(
                        &RecallQuery::all()
                            .in_scope(prefix.clone())
                            .as_of(*t)
                            .k(10_000),
                    )
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.record.id, (h.record.version, h.record.content)))
                    .collect();
                assert_eq!(recall, want, "recall as of {t} in {prefix}");
            }
        }
        // a text query recalls only current versions containing the word
        let now = clock.now();
        let want: Vec<MemoryId> = model
            .visible(&Scope::root(), now)
            .into_iter()
            .filter(|(_, (_, c))| c.starts_with("word3 "))
            .map(|(id, _)| id)
            .collect();
        let mut got: Vec<MemoryId> = memory
            .recall(&RecallQuery::text("word3").k(10_000))
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.record.id)
            .collect();
        got.sort();
        assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn versions_and_as_of_agree_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        block_on(run(ops));
    }
}
