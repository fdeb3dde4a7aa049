#![cfg(feature = "ann")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The approximate vector index (feature `ann`): recall@10 against the exact scan, writes,
//! revisions, retractions, pruning and imports reflected, filters exact, deterministic.
//!
//! Sizes stay small (a few thousand vectors of 16 dimensions) so the debug build runs them
//! in seconds; `min_vectors(0)` makes even these use the graph.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{ManualClock, Principal, SeededRng};
use aios_memory::{
    AnnOptions, Memory, MemoryError, Migrator, NewMemory, PrunePolicy, RecallMode, RecallQuery,
    Revision, Scope, Tier, MEMORY_SCHEMA_VERSION,
};
use futures::executor::block_on;
use proptest::prelude::*;

const DIMS: usize = 16;
const SCOPES: [&str; 4] = ["org/a/x", "org/a/y", "org/b/x", "org/b/y"];

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// `n` vectors around 20 seeded centres (clustered, like embeddings of real text).
fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SeededRng::new(seed);
    let centres: Vec<Vec<f32>> = (0..20)
        .map(|_| unit((0..DIMS).map(|_| rng.next_f64() as f32 - 0.5).collect()))
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[(rng.next_u64() as usize + i) % centres.len()];
            unit(
                c.iter()
                    .map(|x| x + 0.25 * (rng.next_f64() as f32 - 0.5))
                    .collect(),
            )
        })
        .collect()
}

fn open(ann: Option<AnnOptions>, clock: Arc<ManualClock>) -> Memory {
    let mut b = Memory::builder(clock).seed(7);
    if let Some(o) = ann {
        b = b.ann(o);
    }
    block_on(b.open()).unwrap()
}

fn new_memory(i: usize, v: &[f32]) -> NewMemory {
    NewMemory::new(
        Scope::parse(SCOPES[i % SCOPES.len()]).unwrap(),
        Tier::ALL[i % 3],
        format!("record {i}"),
        Principal::System,
    )
    .importance(0.5)
    .embedding(v.to_vec())
}

/// An approximate memory and an exact one holding the same records.
fn pair(vectors: &[Vec<f32>], options: AnnOptions) -> (Memory, Memory) {
    let clock = Arc::new(ManualClock::default());
    let approx = open(Some(options), clock.clone());
    let exact = open(None, clock);
    block_on(async {
        for (i, v) in vectors.iter().enumerate() {
            approx.remember(new_memory(i, v)).await.unwrap();
            exact.remember(new_memory(i, v)).await.unwrap();
        }
    });
    (approx, exact)
}

fn contents(m: &Memory, q: &RecallQuery) -> Vec<String> {
    block_on(m.recall(q))
        .unwrap()
        .into_iter()
        .map(|h| h.record.content)
        .collect()
}

fn overlap(a: &[String], b: &[String]) -> usize {
    let a: BTreeSet<&String> = a.iter().collect();
    b.iter().filter(|x| a.contains(x)).count()
}

/// The index consulted at any size (these memories hold a few thousand vectors; the first
/// training is at 1,024).
fn options() -> AnnOptions {
    AnnOptions::default().min_vectors(0)
}

#[test]
fn recall_at_10_against_the_exact_scan() {
    let vectors = clustered(2500, 1);
    let (approx, exact) = pair(&vectors, options());
    assert_eq!(approx.approximate_vectors(), Some(2500));
    let queries = clustered(60, 2);
    let (mut found, mut wanted) = (0, 0);
    for (i, q) in queries.iter().enumerate() {
        let mut query = RecallQuery::vector(q.clone())
            .mode(RecallMode::Vector)
            .k(10);
        if i % 2 == 1 {
            // half of the queries within one organisation: half of the rows pass
            query = query.in_scope(Scope::parse("org/a").unwrap());
        }
        let want = contents(&exact, &query);
        let got = contents(&approx, &query);
        assert_eq!(want.len(), 10);
        assert_eq!(got.len(), 10);
        found += overlap(&want, &got);
        wanted += want.len();
    }
    let recall = found as f64 / wanted as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

/// The scores of approximate hits are the exact cosine similarities, and hybrid recall uses
/// the graph too.
#[test]
fn hits_carry_exact_scores_and_hybrid_works() {
    let vectors = clustered(1500, 3);
    let (approx, exact) = pair(&vectors, options());
    let q = RecallQuery::vector(vectors[42].clone())
        .mode(RecallMode::Vector)
        .k(5);
    let a = block_on(approx.recall(&q)).unwrap();
    let e = block_on(exact.recall(&q)).unwrap();
    // the record itself is found first, with similarity 1
    assert_eq!(a[0].record.content, "record 42");
    for hit in &a {
        let v = hit_vector(&vectors, &hit.record.content);
        let sim: f32 = v.iter().zip(&vectors[42]).map(|(x, y)| x * y).sum();
        assert!((hit.score.vector.unwrap() - sim).abs() < 1e-4);
    }
    assert_eq!(e[0].record.content, "record 42");
    let h = RecallQuery::text("record 42")
        .with_vector(vectors[42].clone())
        .mode(RecallMode::Hybrid)
        .k(3);
    let hits = block_on(approx.recall(&h)).unwrap();
    assert_eq!(hits[0].record.content, "record 42");
    assert_eq!(hits[0].score.vector_rank, Some(1));
    assert_eq!(hits[0].score.keyword_rank, Some(1));
}

fn hit_vector<'a>(vectors: &'a [Vec<f32>], content: &str) -> &'a [f32] {
    let i: usize = content.trim_start_matches("record ").parse().unwrap();
    &vectors[i]
}

#[test]
fn a_revision_replaces_the_old_vector_and_history_keeps_it() {
    let vectors = clustered(1200, 4);
    let clock = Arc::new(ManualClock::default());
    let memory = open(Some(options()), clock.clone());
    let written: Vec<_> = block_on(async {
        let mut out = Vec::new();
        for (i, v) in vectors.iter().enumerate() {
            out.push(memory.remember(new_memory(i, v)).await.unwrap());
        }
        out
    });
    let before = aios_core::Clock::now(&*clock);
    clock.advance(Duration::from_secs(60));
    // record 7 moves to where record 500 is; its old place is empty now
    let target = &vectors[500];
    block_on(
        memory.revise(
            written[7].id,
            Revision::new(Principal::System)
                .content("record 7, moved")
                .embedding(target.clone()),
        ),
    )
    .unwrap();
    assert_eq!(memory.approximate_vectors(), Some(1201));
    let near_new = contents(
        &memory,
        &RecallQuery::vector(target.clone())
            .mode(RecallMode::Vector)
            .k(2),
    );
    assert!(
        near_new.contains(&"record 7, moved".to_string()),
        "{near_new:?}"
    );
    let near_old = contents(
        &memory,
        &RecallQuery::vector(vectors[7].clone())
            .mode(RecallMode::Vector)
            .k(10),
    );
    assert!(
        !near_old.iter().any(|c| c == "record 7"),
        "the superseded version is not current: {near_old:?}"
    );
    // as of before the revision, the old version is where it was
    let then = contents(
        &memory,
        &RecallQuery::vector(vectors[7].clone())
            .mode(RecallMode::Vector)
            .as_of(before)
            .k(1),
    );
    assert_eq!(then, ["record 7"]);
}

#[test]
fn retracted_and_pruned_records_never_come_back() {
    let vectors = clustered(1200, 5);
    let clock = Arc::new(ManualClock::default());
    let memory = open(Some(options()), clock.clone());
    let written: Vec<_> = block_on(async {
        let mut out = Vec::new();
        for (i, v) in vectors.iter().enumerate() {
            let n = new_memory(i, v).importance(if i % 2 == 0 { 0.9 } else { 0.1 });
            out.push(memory.remember(n).await.unwrap());
        }
        out
    });
    block_on(memory.retract(written[10].id, Principal::System, "wrong")).unwrap();
    let report = block_on(memory.prune(&PrunePolicy::default().min_importance(0.5))).unwrap();
    assert_eq!(report.pruned.len(), 600, "the odd ones");
    for (i, v) in vectors.iter().enumerate().take(100) {
        let got = contents(
            &memory,
            &RecallQuery::vector(v.clone())
                .mode(RecallMode::Vector)
                .k(10),
        );
        assert_eq!(got.len(), 10);
        for c in &got {
            let j: usize = c.trim_start_matches("record ").parse().unwrap();
            assert!(
                j % 2 == 0 && j != 10,
                "query {i}: {c} was pruned or retracted"
            );
        }
    }
}

#[test]
fn an_import_with_migration_fills_the_graph() {
    let vectors = clustered(1100, 6);
    let (_, exact) = pair(&vectors, options());
    let lines = block_on(exact.export()).unwrap();
    // written by the schema before this one, which called the vector `vector`
    let old = MEMORY_SCHEMA_VERSION - 1;
    let lines: String = lines
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            let e = o.remove("embedding").unwrap();
            o.insert("vector".into(), e);
            o.insert("schema".into(), old.into());
            format!("{v}\n")
        })
        .collect();
    let migrator = Migrator::new().step(old, |mut v| {
        let o = v.as_object_mut().ok_or("not an object")?;
        let e = o.remove("vector").ok_or("no `vector`")?;
        o.insert("embedding".into(), e);
        Ok(v)
    });
    let clock = Arc::new(ManualClock::default());
    let target = open(Some(options()), clock);
    let report = block_on(target.import(&lines, &migrator)).unwrap();
    assert_eq!((report.imported, report.migrated), (1100, 1100));
    assert_eq!(target.approximate_vectors(), Some(1100));
    for i in [0, 99, 599] {
        let q = RecallQuery::vector(vectors[i].clone())
            .mode(RecallMode::Vector)
            .k(1);
        assert_eq!(contents(&target, &q), [format!("record {i}")]);
    }
}

/// Batches linked by several threads at once (`AnnOptions::threads`): every vector is in the
/// graph, recall against the exact scan holds, and hits carry exact scores; reopening with
/// threads links the whole store again.
#[test]
fn batches_linked_in_parallel_recall_like_the_exact_scan() {
    let vectors = clustered(2500, 13);
    let clock = Arc::new(ManualClock::default());
    let approx = open(Some(options().threads(3)), clock.clone());
    let exact = open(None, clock);
    block_on(async {
        for (c, chunk) in vectors.chunks(700).enumerate() {
            let start = c * 700;
            let batch = || -> Vec<NewMemory> {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| new_memory(start + i, v))
                    .collect()
            };
            assert_eq!(
                approx.remember_many(batch()).await.unwrap().len(),
                chunk.len()
            );
            exact.remember_many(batch()).await.unwrap();
        }
    });
    assert_eq!(approx.approximate_vectors(), Some(2500));
    let reopened = block_on(
        Memory::builder(approx.clock().clone())
            .store(approx.store().clone())
            .ann(options().threads(2))
            .open(),
    )
    .unwrap();
    assert_eq!(reopened.approximate_vectors(), Some(2500));
    for m in [&approx, &reopened] {
        let (mut found, mut wanted) = (0, 0);
        for q in clustered(40, 14) {
            let query = RecallQuery::vector(q).mode(RecallMode::Vector).k(10);
            let want = block_on(exact.recall(&query)).unwrap();
            let got = block_on(m.recall(&query)).unwrap();
            assert_eq!(got.len(), 10);
            for h in &got {
                let v = hit_vector(&vectors, &h.record.content);
                let q = query.vector.as_deref().unwrap();
                let cos: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
                assert!((h.score.vector.unwrap() - cos).abs() < 1e-4);
            }
            let w: Vec<String> = want.iter().map(|h| h.record.content.clone()).collect();
            let g: Vec<String> = got.iter().map(|h| h.record.content.clone()).collect();
            found += overlap(&w, &g);
            wanted += w.len();
        }
        let recall = found as f64 / wanted as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }
}

/// Two write threads (keyword postings on a second thread) hand the approximate index the
/// same vectors in the same batches, so it answers exactly as with one: the same hits with
/// the same scores, written in batches of 700 and rebuilt on opening.
#[test]
fn two_write_threads_leave_the_approximate_index_as_one() {
    let vectors = clustered(2500, 21);
    let memory = |threads: usize| {
        let m = block_on(
            Memory::builder(Arc::new(ManualClock::default()))
                .seed(7)
                .ann(options())
                .write_threads(threads)
                .open(),
        )
        .unwrap();
        block_on(async {
            for (c, chunk) in vectors.chunks(700).enumerate() {
                let batch = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| new_memory(c * 700 + i, v))
                    .collect();
                m.remember_many(batch).await.unwrap();
            }
        });
        m
    };
    let (one, two) = (memory(1), memory(2));
    let reopened = block_on(
        Memory::builder(two.clock().clone())
            .store(two.store().clone())
            .ann(options())
            .write_threads(2)
            .open(),
    )
    .unwrap();
    let reopened_once = memory_reopened_once(&one);
    assert_eq!(two.approximate_vectors(), Some(2500));
    let hits = |m: &Memory, q: &RecallQuery| -> Vec<(String, u32)> {
        block_on(m.recall(q))
            .unwrap()
            .into_iter()
            .map(|h| (h.record.content, h.score.total.to_bits()))
            .collect()
    };
    for q in clustered(30, 22) {
        let query = RecallQuery::vector(q).mode(RecallMode::Vector).k(10);
        let want = hits(&one, &query);
        assert_eq!(want.len(), 10);
        assert_eq!(hits(&two, &query), want);
        let mut a = hits(&reopened, &query);
        let mut b = hits(&reopened_once, &query);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}

/// `m` reopened over its store on one write thread.
fn memory_reopened_once(m: &Memory) -> Memory {
    block_on(
        Memory::builder(m.clock().clone())
            .store(m.store().clone())
            .ann(options())
            .open(),
    )
    .unwrap()
}

#[test]
fn reopening_rebuilds_the_same_graph() {
    let vectors = clustered(1300, 7);
    let (approx, _) = pair(&vectors, options());
    let reopened = block_on(
        Memory::builder(approx.clock().clone())
            .store(approx.store().clone())
            .ann(options())
            .open(),
    )
    .unwrap();
    assert_eq!(reopened.approximate_vectors(), Some(1300));
    let (again, _) = pair(&vectors, options());
    for q in clustered(20, 8) {
        let q = RecallQuery::vector(q).mode(RecallMode::Vector).k(10);
        let a = block_on(approx.recall(&q)).unwrap();
        let b = block_on(again.recall(&q)).unwrap();
        let r: Vec<_> = contents(&reopened, &q);
        assert_eq!(a, b, "the same writes build the same graph");
        assert_eq!(
            a.iter()
                .map(|h| h.record.content.clone())
                .collect::<Vec<_>>(),
            r
        );
    }
}

#[test]
fn a_small_memory_or_a_narrow_filter_scans_exactly() {
    let vectors = clustered(1200, 9);
    // below min_vectors: exact
    let (approx, exact) = pair(&vectors, AnnOptions::default());
    for q in clustered(10, 10) {
        let q = RecallQuery::vector(q).mode(RecallMode::Vector).k(10);
        assert_eq!(
            block_on(approx.recall(&q)).unwrap(),
            block_on(exact.recall(&q)).unwrap()
        );
    }
    // a filter that lets about 1 in 12 rows through (one scope, one tier) is under a
    // min_share of 0.1: exact too
    let (approx, exact) = pair(&vectors, options().min_share(0.1));
    for q in clustered(10, 11) {
        let q = RecallQuery::vector(q)
            .mode(RecallMode::Vector)
            .in_scope(Scope::parse("org/b/y").unwrap())
            .tiers([Tier::LongTerm])
            .k(10);
        assert_eq!(
            block_on(approx.recall(&q)).unwrap(),
            block_on(exact.recall(&q)).unwrap()
        );
    }
}

#[test]
fn invalid_options_are_refused_by_name() {
    let clock = Arc::new(ManualClock::default());
    for (options, field) in [
        (AnnOptions::default().lists(65_537), "ann.lists"),
        (AnnOptions::default().probes(0), "ann.probes"),
        (AnnOptions::default().candidates(0), "ann.candidates"),
        (AnnOptions::default().min_share(1.5), "ann.min_share"),
        (AnnOptions::default().min_share(f32::NAN), "ann.min_share"),
        (AnnOptions::default().threads(0), "ann.threads"),
        (AnnOptions::default().threads(257), "ann.threads"),
    ] {
        let err = block_on(Memory::builder(clock.clone()).ann(options).open()).unwrap_err();
        match &err {
            MemoryError::InvalidInput { field: f, .. } => assert_eq!(f, field, "{err}"),
            other => panic!("{other:?}"),
        }
    }
}

/// The approximate memory built once for the property test below.
fn shared() -> &'static (Memory, Memory, Vec<Vec<f32>>) {
    static PAIR: std::sync::OnceLock<(Memory, Memory, Vec<Vec<f32>>)> = std::sync::OnceLock::new();
    PAIR.get_or_init(|| {
        let vectors = clustered(1500, 12);
        let (a, e) = pair(&vectors, options());
        (a, e, vectors)
    })
}

/// Queries unlike the data (random directions leaning on one axis, as the property test
/// below draws them) still find most of the exact top 10, over many queries; a single query
/// may miss its nearest row (approximate recall promises no more than that).
#[test]
fn queries_far_from_the_data_still_recall_most() {
    let (approx, exact, _) = shared();
    let mut rng = SeededRng::new(77);
    let (mut found, mut wanted) = (0, 0);
    for _ in 0..200 {
        let mut q: Vec<f32> = (0..DIMS)
            .map(|_| 2.0 * rng.next_f64() as f32 - 1.0)
            .collect();
        q[0] += 1.5;
        let query = RecallQuery::vector(unit(q)).mode(RecallMode::Vector).k(10);
        let want = contents(exact, &query);
        let got = contents(approx, &query);
        found += overlap(&want, &got);
        wanted += want.len();
    }
    let recall = found as f64 / wanted as f64;
    eprintln!("recall@10 far from the data: {recall}");
    assert!(recall >= 0.9, "recall@10 {recall}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the scope and tier filters, every approximate hit passes them, the hits come
    /// in order of their scores, as many as the exact scan returns, and a hit both return
    /// carries the same score.
    #[test]
    fn filters_are_exact(
        q in prop::collection::vec(-1.0f32..1.0, DIMS),
        scope in prop::sample::select(vec!["org", "org/a", "org/b", "org/a/x", "org/b/y"]),
        tiers in prop::sample::subsequence(Tier::ALL.to_vec(), 1..=3),
        k in 1usize..20,
    ) {
        let (approx, exact, _) = shared();
        let mut q = q;
        q[0] += 1.5;
        let scope = Scope::parse(scope).unwrap();
        let query = RecallQuery::vector(unit(q))
            .mode(RecallMode::Vector)
            .in_scope(scope.clone())
            .tiers(tiers.clone())
            .k(k);
        let got = block_on(approx.recall(&query)).unwrap();
        let want = block_on(exact.recall(&query)).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for h in &got {
            prop_assert!(h.record.scope.is_within(&scope), "{} outside {}", h.record.scope, scope);
            prop_assert!(tiers.contains(&h.record.tier));
        }
        for w in got.windows(2) {
            prop_assert!(w[0].score.total >= w[1].score.total);
        }
        // every hit is a row the exact scan ranks with the same score (how many of the exact
        // top k are found is an aggregate figure, checked over many queries above)
        for h in &got {
            let same = want.iter().find(|w| w.record.id == h.record.id);
            if let Some(w) = same {
                prop_assert_eq!(w.score.total, h.score.total);
            }
        }
    }
}
