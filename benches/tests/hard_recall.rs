#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! MEM-QUALITY-HARD as a test: the hand-written set of `benches/data/hard_recall.json`
//! recalled by keyword, by vector (all-MiniLM-L6-v2 through the local embedder) and hybrid.
//! Only robust properties are asserted; the figures are printed (and reported by
//! `report --only embed`).

use std::collections::BTreeSet;
use std::sync::Arc;

use aios::core::Embedder;
use aios::memory::{RecallMode, RecallQuery};
use aios_benches::quality::{evaluate, hard_set, load, minilm};
use aios_embed::LocalEmbedderOptions;
use futures::executor::block_on;

fn embedder() -> Arc<dyn Embedder> {
    Arc::new(minilm(LocalEmbedderOptions::default()).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn the_set_is_well_formed() {
    let set = hard_set().unwrap();
    assert!(
        (60..=100).contains(&set.questions.len()),
        "{}",
        set.questions.len()
    );
    let kinds: BTreeSet<_> = set.questions.iter().map(|q| q.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["identifier", "multi", "paraphrase", "temporal", "update"])
    );
    let ids: BTreeSet<_> = set.memories.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), set.memories.len(), "memory ids are unique");
    for q in &set.questions {
        assert!(!q.evidence.is_empty(), "{q:?}");
        assert!(q.evidence.iter().all(|e| ids.contains(e.as_str())), "{q:?}");
        assert_eq!(q.kind == "temporal", q.valid_at.is_some(), "{q:?}");
        assert_eq!(q.kind == "update", q.answer.is_some(), "{q:?}");
        if q.kind == "multi" {
            assert!(q.evidence.len() >= 2, "{q:?}");
        }
        if let Some(answer) = &q.answer {
            let latest = set
                .memories
                .iter()
                .rfind(|m| m.updates.as_deref() == Some(q.evidence[0].as_str()))
                .unwrap();
            assert!(latest.text.contains(answer.as_str()), "{q:?}");
        }
    }
}

#[test]
fn recall_at_10_per_signal_on_the_hard_set() {
    let (figures, missed) = block_on(evaluate(embedder())).unwrap();
    for (mode, kinds) in &figures {
        println!("{mode:>8}: {kinds:?}");
        for m in &missed[mode] {
            println!("          missed {m}");
        }
    }
    let (keyword, vector, hybrid) = (&figures["keyword"], &figures["vector"], &figures["hybrid"]);
    assert!(
        vector["paraphrase"] > keyword["paraphrase"] + 0.2,
        "paraphrases need meaning, not words: vector {vector:?} keyword {keyword:?}"
    );
    assert!(
        keyword["identifier"] > vector["identifier"],
        "a rare code among look-alikes needs the exact word: keyword {keyword:?} vector {vector:?}"
    );
    assert!(
        hybrid["all"] >= keyword["all"],
        "hybrid {hybrid:?} keyword {keyword:?}"
    );
    assert!(
        hybrid["all"] >= vector["all"],
        "hybrid {hybrid:?} vector {vector:?}"
    );
}

#[test]
fn a_revised_fact_comes_back_only_in_its_latest_version() {
    block_on(async {
        let set = hard_set().unwrap();
        let loaded = load(&set, embedder()).await.unwrap();
        for q in set.questions.iter().filter(|q| q.kind == "update") {
            let lineage = loaded.lineage[&q.evidence[0]];
            for mode in [RecallMode::Hybrid, RecallMode::Keyword, RecallMode::Vector] {
                let hits = loaded
                    .memory
                    .recall(
                        &RecallQuery::text(q.text.clone())
                            .in_scope(loaded.scope.clone())
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
        }
    });
}
