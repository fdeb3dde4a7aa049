#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Ranking properties: a larger `k` never reorders the first hits, and each mode ranks by
//! its own signal (plus the documented boosts), checked against a brute-force reference.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{ManualClock, MemoryId, Principal};
use aios_memory::{
    Memory, MemoryRecord, NewMemory, RecallMode, RecallQuery, RecallWeights, Scope, Tier,
};
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
    records: Vec<MemoryRecord>,
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
    let mut records = Vec::new();
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
        records.push(m);
    }
    Loaded {
        memory,
        clock,
        ids,
        records,
    }
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

// ---- the brute-force reference -------------------------------------------------------

/// The inverse of the norm, computed as the index does (for fewer than 16 dimensions its
/// dot product is the plain left-to-right sum), so similarities agree to the bit.
fn inverse_norm(v: &[f32]) -> f32 {
    1.0 / v.iter().fold(0f32, |a, x| a + x * x).sqrt()
}

/// Unit length, computed as the index does for a query.
fn unit(v: &[f32]) -> Vec<f32> {
    let inv = inverse_norm(v);
    v.iter().map(|x| x * inv).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |s, (p, q)| s + p * q)
}

fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// What the reference says of one record.
#[derive(Debug, Clone, Copy)]
struct Ref {
    row: usize,
    sim: f32,
    bm25: f32,
    recency: f32,
    importance: f32,
}

fn reference(l: &Loaded, text: &str, vector: &[f32]) -> Vec<Ref> {
    let w = RecallWeights::default();
    let (k1, b) = (1.2f32, 0.75f32);
    let now = aios_core::Clock::now(&l.clock).timestamp_micros();
    let q = unit(vector);
    let docs: Vec<Vec<String>> = l.records.iter().map(|r| words_of(&r.content)).collect();
    let n = docs.len() as f32;
    let total_len: usize = docs.iter().map(Vec::len).sum();
    let avgdl = (total_len as f32 / n).max(1.0);
    let mut terms: Vec<String> = Vec::new();
    for t in words_of(text) {
        if !terms.contains(&t) && docs.iter().any(|d| d.contains(&t)) {
            terms.push(t);
        }
    }
    let idf: Vec<f32> = terms
        .iter()
        .map(|t| {
            let df = docs.iter().filter(|d| d.contains(t)).count() as f32;
            (1.0 + (n - df + 0.5).max(0.5) / (df + 0.5)).ln()
        })
        .collect();
    let half_life = w.recency_half_life.as_secs_f64();
    l.records
        .iter()
        .zip(&docs)
        .enumerate()
        .map(|(row, (r, d))| {
            let mut bm25 = 0f32;
            for (t, idf) in terms.iter().zip(&idf) {
                let tf = d.iter().filter(|x| *x == t).count();
                if tf > 0 {
                    let tf = tf as f32;
                    bm25 +=
                        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * d.len() as f32 / avgdl));
                }
            }
            let since = r.valid_from.unwrap_or(r.recorded_at).timestamp_micros();
            let age = (now - since).max(0) as f64 / 1e6;
            Ref {
                row,
                // the index keeps rows as written: the cosine is the dot product with the
                // unit query times the row's inverse norm
                sim: {
                    let v = r.embedding.as_deref().unwrap();
                    dot(v, &q) * inverse_norm(v)
                },
                bm25,
                recency: w.recency * 0.5f64.powf(age / half_life) as f32,
                importance: w.importance * r.importance,
            }
        })
        .collect()
}

/// Sorts best first by `key`, ties to the earlier row.
fn order(mut v: Vec<(f32, usize)>) -> Vec<usize> {
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    v.into_iter().map(|x| x.1).collect()
}

/// The reference ranking of a mode: the rows, best first, with their relevance.
fn reference_ranking(refs: &[Ref], mode: RecallMode) -> Vec<(usize, f32)> {
    match mode {
        RecallMode::Vector => {
            let rows = order(
                refs.iter()
                    .map(|r| (r.sim + r.recency + r.importance, r.row))
                    .collect(),
            );
            rows.into_iter().map(|i| (i, refs[i].sim)).collect()
        }
        RecallMode::Keyword => {
            let best = refs.iter().map(|r| r.bm25).fold(0f32, f32::max);
            let rows = order(
                refs.iter()
                    .filter(|r| r.bm25 > 0.0)
                    .map(|r| (r.bm25 / best + r.recency + r.importance, r.row))
                    .collect(),
            );
            rows.into_iter().map(|i| (i, refs[i].bm25 / best)).collect()
        }
        _ => {
            let w = RecallWeights::default();
            let by_sim = order(refs.iter().map(|r| (r.sim, r.row)).collect());
            let by_bm25 = order(
                refs.iter()
                    .filter(|r| r.bm25 > 0.0)
                    .map(|r| (r.bm25, r.row))
                    .collect(),
            );
            let rank =
                |list: &[usize], row: usize| list.iter().position(|x| *x == row).map(|p| p + 1);
            let max = (w.vector + w.keyword) / (w.rrf_k + 1.0);
            // band b: best rank within candidates * 2^b, fused over ranks within that depth
            let mut out = Vec::new();
            let mut placed = vec![false; refs.len()];
            let mut depth = w.candidates;
            loop {
                let mut band = Vec::new();
                for r in refs {
                    let vr = rank(&by_sim, r.row).filter(|x| *x <= depth);
                    let kr = rank(&by_bm25, r.row).filter(|x| *x <= depth);
                    if placed[r.row] || (vr.is_none() && kr.is_none()) {
                        continue;
                    }
                    let mut fused = 0f32;
                    if let Some(x) = vr {
                        fused += w.vector / (w.rrf_k + x as f32);
                    }
                    if let Some(x) = kr {
                        fused += w.keyword / (w.rrf_k + x as f32);
                    }
                    let fused = fused / max;
                    band.push((fused + r.recency + r.importance, r.row, fused));
                }
                let fused_of: Vec<(usize, f32)> = band.iter().map(|b| (b.1, b.2)).collect();
                for row in order(band.iter().map(|b| (b.0, b.1)).collect()) {
                    placed[row] = true;
                    let f = fused_of.iter().find(|x| x.0 == row).unwrap().1;
                    out.push((row, f));
                }
                if depth >= refs.len() {
                    return out;
                }
                depth *= 2;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Vector mode ranks by similarity, keyword mode by BM25, hybrid by the banded fusion,
    /// each plus the recency (from `valid_from` when set) and importance boosts: the hits and
    /// their order equal a brute-force computation, and no hit ranks above one whose
    /// relevance is higher by more than the boosts can add.
    #[test]
    fn each_mode_ranks_like_the_brute_force_reference(
        recs in prop::collection::vec(rec(), 1..50),
        mode in mode(),
        words in prop::collection::vec(0u8..WORDS.len() as u8, 1..4),
        mut vector in prop::collection::vec(-1.0f32..1.0, DIMS),
        k in 1usize..60,
    ) {
        vector[1] += 1.5;
        block_on(async {
            let l = load(&recs).await;
            let text = content(&words);
            let refs = reference(&l, &text, &vector);
            let want: Vec<(usize, f32)> = reference_ranking(&refs, mode).into_iter().take(k).collect();
            let hits = l.memory.recall(&query(mode, &words, &vector).k(k)).await.unwrap();
            let got: Vec<MemoryId> = hits.iter().map(|h| h.record.id).collect();
            let want_ids: Vec<MemoryId> = want.iter().map(|(row, _)| l.ids[*row]).collect();
            assert_eq!(got, want_ids, "{mode:?} k = {k}");
            let w = RecallWeights::default();
            for (h, (row, relevance)) in hits.iter().zip(&want) {
                assert_eq!(h.score.fused, *relevance, "{mode:?}: relevance of row {row}");
                assert_eq!(h.score.recency, refs[*row].recency);
                assert_eq!(h.score.importance, refs[*row].importance);
                assert!(h.score.recency <= w.recency && h.score.importance <= w.importance);
                assert!(h.record.embedding.is_none(), "hits carry no embedding unless asked");
            }
            // a clear relevance gap is never overturned by the boosts (in hybrid mode:
            // within a band, and bands keep their order)
            if mode != RecallMode::Hybrid {
                let gap = w.recency + w.importance;
                for (i, a) in hits.iter().enumerate() {
                    for b in &hits[i + 1..] {
                        assert!(b.score.fused <= a.score.fused + gap, "{mode:?}: {a:?} above {b:?}");
                    }
                }
            }
        });
    }
}
