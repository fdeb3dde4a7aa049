//! MEM-RECALL-ANN: the approximate vector index (aios-memory feature `ann`) against the exact
//! scan of the same memory, through the same `Memory` calls a user makes.
//!
//! The data: unit vectors of 384 dimensions around 2,000 seeded centres (each component of a
//! vector is its centre's plus uniform noise, so that neighbours within a cluster have cosine
//! similarities of about 0.5 to 0.8, as sentence embeddings of related text do), and queries
//! drawn the same way. A second, smaller set of uniformly random vectors, the hardest case
//! for any approximate index in 384 dimensions (every point is about equally far from every
//! other, so no list or neighbourhood holds a query's neighbours), is measured too and
//! reported as such.
//!
//! The workload runs in a fresh process (`report --subprocess ann`) so that its memory
//! figures are not distorted by earlier workloads. Full runs use 1,000,000 clustered vectors
//! (building the index takes a few minutes); `--quick` uses 50,000.

use std::sync::Arc;

use aios::core::{ManualClock, Principal};
use aios::memory::{
    AnnOptions, Memory, NewMemory, RecallMode, RecallQuery, RecallWeights, Scope, Tier,
};

use crate::orchestrator::memory_mb;
use crate::{percentile_us, time, Config, Goal, Measurement};
use aios::memory::testing::synthetic::Clustered;

const SCOPES: [&str; 4] = ["bench/a/0", "bench/a/1", "bench/b/0", "bench/b/1"];

fn open(ann: Option<AnnOptions>, store: Option<Arc<dyn aios::memory::MemoryStore>>) -> Memory {
    let clock = Arc::new(ManualClock::default());
    let mut b = Memory::builder(clock).seed(1);
    if let Some(o) = ann {
        b = b.ann(o);
    }
    if let Some(s) = store {
        b = b.store(s);
    }
    futures::executor::block_on(b.open()).expect("an in-memory memory opens")
}

/// Pure similarity: no recency or importance boost, so both indexes rank alike.
fn weights() -> RecallWeights {
    RecallWeights {
        recency: 0.0,
        importance: 0.0,
        ..RecallWeights::default()
    }
}

fn query(v: &[f32], scope: Option<&Scope>) -> RecallQuery {
    let q = RecallQuery::vector(v.to_vec())
        .mode(RecallMode::Vector)
        .weights(weights())
        .k(10);
    match scope {
        Some(s) => q.in_scope(s.clone()),
        None => q,
    }
}

fn ids(memory: &Memory, q: &RecallQuery) -> Vec<aios::core::MemoryId> {
    futures::executor::block_on(memory.recall(q))
        .map(|hits| hits.into_iter().map(|h| h.record.id).collect())
        .unwrap_or_default()
}

/// One data set: build, then recall@10 and latency against the exact scan.
fn measure(
    label: &str,
    n: usize,
    centres: usize,
    queries: usize,
    options: AnnOptions,
    out: &mut Vec<Measurement>,
) {
    let w = |m: &str| format!("{m} ({label})");
    let (rss0, _) = memory_mb();
    let approx = open(Some(options), None);
    let mut gen = Clustered::new(11, centres);
    // written in batches through remember_many, as an import would
    let (build, written) = time(|| {
        let mut written = 0usize;
        let mut i = 0usize;
        while i < n {
            let batch: Vec<NewMemory> = (i..(i + 1000).min(n))
                .map(|j| {
                    NewMemory::new(
                        Scope::parse(SCOPES[j % SCOPES.len()]).unwrap_or_default(),
                        Tier::Project,
                        format!("vector {j}"),
                        Principal::System,
                    )
                    .embedding(gen.draw())
                })
                .collect();
            i += batch.len();
            written +=
                futures::executor::block_on(approx.remember_many(batch)).map_or(0, |v| v.len());
        }
        written
    });
    let (rss1, _) = memory_mb();
    out.push(Measurement::new(
        "MEM-RECALL-ANN",
        &w(if written == n {
            "build"
        } else {
            "build FAILED"
        }),
        build.as_secs_f64(),
        "s",
        Goal::None,
    ));
    out.push(Measurement::new(
        "MEM-RECALL-ANN",
        &w("build rate"),
        n as f64 / build.as_secs_f64(),
        "records/s",
        Goal::None,
    ));
    out.push(Measurement::new(
        "MEM-RECALL-ANN",
        &w("RSS growth"),
        rss1 - rss0,
        "MB",
        Goal::None,
    ));
    // the exact scan of the same records: a second memory over the same store
    let exact = open(None, Some(approx.store().clone()));
    let (rss2, _) = memory_mb();
    out.push(Measurement::new(
        "MEM-RECALL-ANN",
        &w("exact index RSS"),
        rss2 - rss1,
        "MB",
        Goal::None,
    ));
    // the same centres, fresh draws from another stream
    let mut qgen = gen.fork(99);
    let qs: Vec<Vec<f32>> = (0..queries).map(|_| qgen.draw()).collect();
    let half = Scope::parse("bench/a").unwrap_or_default();
    for (name, scope) in [("", None), (", scope half", Some(&half))] {
        let (mut found, mut wanted) = (0usize, 0usize);
        let (mut ann_t, mut exact_t) = (Vec::new(), Vec::new());
        for v in &qs {
            let q = query(v, scope);
            let (d, got) = time(|| ids(&approx, &q));
            ann_t.push(d);
            let (d, want) = time(|| ids(&exact, &q));
            exact_t.push(d);
            wanted += want.len();
            found += want.iter().filter(|id| got.contains(id)).count();
        }
        ann_t.sort();
        exact_t.sort();
        let recall = found as f64 / wanted.max(1) as f64;
        out.push(Measurement::new(
            "MEM-RECALL-ANN",
            &w(&format!("recall@10{name}")),
            recall,
            "",
            Goal::AtLeast(0.95),
        ));
        out.push(Measurement::new(
            "MEM-RECALL-ANN",
            &w(&format!("p50{name}")),
            percentile_us(&ann_t, 50.0) / 1e3,
            "ms",
            Goal::AtMost(2.0),
        ));
        out.push(Measurement::new(
            "MEM-RECALL-ANN",
            &w(&format!("p99{name}")),
            percentile_us(&ann_t, 99.0) / 1e3,
            "ms",
            Goal::None,
        ));
        out.push(Measurement::new(
            "MEM-RECALL-ANN",
            &w(&format!("exact p50{name}")),
            percentile_us(&exact_t, 50.0) / 1e3,
            "ms",
            Goal::None,
        ));
    }
}

/// Runs MEM-RECALL-ANN in a fresh process.
pub fn run(config: &Config) -> Vec<Measurement> {
    crate::orchestrator::isolated("ann", config)
}

/// The body of the isolated workload.
pub fn subprocess(config: &Config) -> Vec<Measurement> {
    let mut out = Vec::new();
    // each batch's nearest centres are found by two threads (the machine has two cores)
    // (and the index used from 20,000 vectors, so that the smaller uniform set measures the
    // index, not the exact scan that the default answers with below 50,000)
    let options = AnnOptions::default().threads(2).min_vectors(20_000);
    let n = config.pick(50_000, 1_000_000);
    measure(
        &format!("{}k clustered", n / 1000),
        n,
        2000,
        config.pick(200, 300),
        options,
        &mut out,
    );
    let n = config.pick(25_000, 100_000);
    measure(
        &format!("{}k uniform", n / 1000),
        n,
        0,
        config.pick(100, 200),
        options,
        &mut out,
    );
    out
}
