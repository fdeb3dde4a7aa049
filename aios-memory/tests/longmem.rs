#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! MEM-QUALITY: recall over a synthetic LongMemEval-shaped conversation.
//!
//! Each turn is remembered as an episode in the conversation's scope, at the turn's time.
//! A knowledge update revises the record of the fact it replaces. Then every question is
//! asked three ways (hybrid, keyword only, vector only) and recall@10 is the share of its
//! evidence turns found in the top 10.

use std::collections::HashMap;
use std::sync::Arc;

use aios_core::{HashEmbedder, ManualClock, MemoryId, Principal};
use aios_memory::testing::longmem::{generate, LongMemConfig, LongMemSet, QuestionKind};
use aios_memory::{Memory, MemoryKind, NewMemory, RecallMode, RecallQuery, Revision, Scope, Tier};
use futures::executor::block_on;

struct Loaded {
    memory: Memory,
    /// Turn index -> the lineage holding it.
    lineage: Vec<MemoryId>,
    scope: Scope,
}

async fn load(set: &LongMemSet) -> Loaded {
    let clock = ManualClock::default();
    let memory = Memory::builder(Arc::new(clock.clone()))
        .embedder(Arc::new(HashEmbedder::new(256)))
        .seed(3)
        .open()
        .await
        .unwrap();
    let scope = Scope::parse("chat/user-1").unwrap();
    let mut lineage = Vec::with_capacity(set.turns.len());
    for turn in &set.turns {
        clock.set(turn.at);
        let id = match turn.updates.and_then(|t| lineage.get(t).copied()) {
            Some(original) => {
                memory
                    .revise(
                        original,
                        Revision::new(Principal::System)
                            .content(turn.text.clone())
                            .valid_from(turn.at),
                    )
                    .await
                    .unwrap()
                    .id
            }
            None => {
                let s = scope
                    .child(&format!("session-{:03}", turn.session))
                    .unwrap();
                memory
                    .remember(
                        NewMemory::new(s, Tier::Project, turn.text.clone(), Principal::System)
                            .kind(MemoryKind::Episode)
                            .valid(Some(turn.at), None)
                            .meta("speaker", turn.speaker),
                    )
                    .await
                    .unwrap()
                    .id
            }
        };
        lineage.push(id);
    }
    Loaded {
        memory,
        lineage,
        scope,
    }
}

/// Mean recall@10 over answerable questions, per kind and overall.
async fn recall_at_10(
    set: &LongMemSet,
    l: &Loaded,
    mode: RecallMode,
) -> HashMap<&'static str, f64> {
    let mut sums: HashMap<&'static str, (f64, usize)> = HashMap::new();
    for q in &set.questions {
        if q.kind == QuestionKind::Abstention {
            continue;
        }
        let hits = l
            .memory
            .recall(
                &RecallQuery::text(q.text.clone())
                    .in_scope(l.scope.clone())
                    .mode(mode)
                    .k(10),
            )
            .await
            .unwrap();
        let found = q
            .evidence
            .iter()
            .filter(|t| hits.iter().any(|h| h.record.id == l.lineage[**t]))
            .count();
        let r = found as f64 / q.evidence.len() as f64;
        let kind = match q.kind {
            QuestionKind::SingleFact => "single",
            QuestionKind::MultiSession => "multi",
            QuestionKind::Temporal => "temporal",
            QuestionKind::KnowledgeUpdate => "update",
            QuestionKind::Abstention => "abstention",
        };
        for k in [kind, "all"] {
            let e = sums.entry(k).or_default();
            e.0 += r;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

#[test]
fn the_generator_is_deterministic_and_well_formed() {
    let config = LongMemConfig::default();
    let a = generate(&config);
    assert_eq!(a, generate(&config));
    assert_ne!(
        a,
        generate(&LongMemConfig {
            seed: 8,
            ..config.clone()
        })
    );
    assert!(
        a.turns.windows(2).all(|w| w[0].at < w[1].at),
        "turns are in time order"
    );
    for kind in [
        QuestionKind::SingleFact,
        QuestionKind::MultiSession,
        QuestionKind::Temporal,
        QuestionKind::KnowledgeUpdate,
        QuestionKind::Abstention,
    ] {
        let qs: Vec<_> = a.questions.iter().filter(|q| q.kind == kind).collect();
        assert!(!qs.is_empty(), "{kind:?} questions exist");
        for q in qs {
            assert_eq!(
                q.evidence.is_empty(),
                kind == QuestionKind::Abstention,
                "{q:?}"
            );
            assert!(q.evidence.iter().all(|t| *t < a.turns.len()));
            if kind == QuestionKind::MultiSession {
                let sessions: std::collections::BTreeSet<_> =
                    q.evidence.iter().map(|t| a.turns[*t].session).collect();
                assert!(q.evidence.len() >= 2 && !sessions.is_empty(), "{q:?}");
            }
            if kind == QuestionKind::KnowledgeUpdate {
                let t = &a.turns[q.evidence[0]];
                let original = t.updates.expect("an update names what it replaces");
                assert!(a.turns[original].at < t.at);
                assert!(t.text.contains(q.answer.as_deref().unwrap()));
            }
        }
    }
}

#[test]
fn hybrid_recall_is_at_least_as_good_as_each_signal() {
    block_on(async {
        for seed in [7, 11, 23] {
            let set = generate(&LongMemConfig {
                seed,
                ..LongMemConfig::default()
            });
            let l = load(&set).await;
            let hybrid = recall_at_10(&set, &l, RecallMode::Hybrid).await;
            let keyword = recall_at_10(&set, &l, RecallMode::Keyword).await;
            let vector = recall_at_10(&set, &l, RecallMode::Vector).await;
            println!("seed {seed} recall@10\n hybrid {hybrid:?}\n keyword {keyword:?}\n vector {vector:?}");
            assert!(
                hybrid["all"] >= keyword["all"],
                "seed {seed}: hybrid {hybrid:?} vs keyword {keyword:?}"
            );
            assert!(
                hybrid["all"] >= vector["all"],
                "seed {seed}: hybrid {hybrid:?} vs vector {vector:?}"
            );
            assert!(
                hybrid["all"] >= 0.9,
                "seed {seed}: hybrid recall@10 is useful: {hybrid:?}"
            );
        }
    });
}

#[test]
fn a_revised_fact_always_returns_its_latest_version() {
    block_on(async {
        let set = generate(&LongMemConfig::default());
        let l = load(&set).await;
        let mut checked = 0;
        for q in set
            .questions
            .iter()
            .filter(|q| q.kind == QuestionKind::KnowledgeUpdate)
        {
            let lineage = l.lineage[q.evidence[0]];
            let latest = l.memory.get(lineage).await.unwrap();
            assert_eq!(latest.version, 2);
            for mode in [RecallMode::Hybrid, RecallMode::Keyword, RecallMode::Vector] {
                let hits = l
                    .memory
                    .recall(
                        &RecallQuery::text(q.text.clone())
                            .in_scope(l.scope.clone())
                            .mode(mode)
                            .k(10),
                    )
                    .await
                    .unwrap();
                for h in hits.iter().filter(|h| h.record.id == lineage) {
                    assert_eq!(h.record.version, 2, "{mode:?}: {}", q.text);
                    assert!(h.record.content.contains(q.answer.as_deref().unwrap()));
                }
            }
            // and as of before the update, the old version
            let old = l.memory.history(lineage).await.unwrap().remove(0);
            let hits = l
                .memory
                .recall(
                    &RecallQuery::text(q.text.clone())
                        .as_of(old.recorded_at)
                        .k(10),
                )
                .await
                .unwrap();
            assert!(hits
                .iter()
                .filter(|h| h.record.id == lineage)
                .all(|h| h.record.version == 1));
            checked += 1;
        }
        assert!(checked > 0);
    });
}

#[test]
fn an_empty_scope_returns_nothing() {
    block_on(async {
        let set = generate(&LongMemConfig::default());
        let l = load(&set).await;
        let empty = Scope::parse("chat/user-2").unwrap();
        for q in &set.questions {
            for mode in [RecallMode::Hybrid, RecallMode::Keyword, RecallMode::Vector] {
                let hits = l
                    .memory
                    .recall(
                        &RecallQuery::text(q.text.clone())
                            .in_scope(empty.clone())
                            .mode(mode),
                    )
                    .await
                    .unwrap();
                assert!(hits.is_empty(), "{mode:?}: {}", q.text);
            }
        }
        // and abstention questions find no evidence by keyword about the unknown person
        for q in set
            .questions
            .iter()
            .filter(|q| q.kind == QuestionKind::Abstention)
        {
            let who = q.text.rsplit(' ').nth(1).unwrap();
            let hits = l
                .memory
                .recall(&RecallQuery::text(who).mode(RecallMode::Keyword))
                .await
                .unwrap();
            assert!(hits.is_empty(), "nobody called `{who}` was mentioned");
        }
    });
}
