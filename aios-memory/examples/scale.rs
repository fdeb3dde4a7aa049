//! A standalone harness for the memory's two scale workloads, MEM-WRITE and MEM-RECALL-ANN,
//! built against this crate alone so that a release build takes minutes, not the whole
//! benchmark crate's dependency tree. It runs the same calls as `benches/src/memory.rs` and
//! `benches/src/ann.rs` (the report binary's workloads), on the same data
//! ([`aios_memory::testing::synthetic`]).
//!
//! ```text
//! cargo run --release -p aios-memory --features ann,testing --example scale -- write 1000000 [batch]
//! cargo run --release -p aios-memory --features ann,testing --example scale -- ann 50000 [queries]
//! ```
//!
//! `ann N` builds the index through `remember_many` in batches of 1,000 and measures recall@10
//! and latency against the exact scan at 50k, 100k, 200k, 400k and 700k on the way and at N
//! (at N only with `SCALE_CHECKPOINTS=0`).
//!
//! `write N` remembers N records one `remember` call each; `write N B` through
//! `remember_many` in batches of B. Prints wall-clock and per-CPU-second rates (the thread's
//! own CPU time, from `/proc/thread-self/schedstat`, so a shared machine's load shows), and
//! the thread's minor page faults and user and system time. `SCALE_WITHOUT=embedding`,
//! `text` or `both` writes the same records without their vectors, with one word of text,
//! or both, to take the cost apart; `SCALE_WRITE_THREADS=2` opens the memory with two write
//! threads (`MemoryBuilder::write_threads`); `PERF_CTL` (below) starts a profiler at the
//! timed phase.
//!
//! `fresh MB [threads]` touches MB megabytes of memory no earlier write freed (an anonymous
//! mapping advised to use huge pages, as the vector matrix is) on each of `threads` threads,
//! and prints the rate: the price the machine sets on the memory a bulk write must take
//! (1,000,000 records of 384 dimensions need 1.5 GB for their vectors alone). Run it a few
//! seconds after anything that freed much memory, or the kernel hands back pages still warm.

#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_core::{ManualClock, Principal};
use aios_memory::{
    AnnOptions, Memory, NewMemory, RecallMode, RecallQuery, RecallWeights, Scope, Tier,
};

use aios_memory::testing::synthetic::{records, Clustered};

fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The numeric fields of a `/proc/.../stat` file after the command name (Linux; empty
/// elsewhere): 7 is the minor page faults, 11 and 12 the user and system time in clock
/// ticks of 10 ms.
fn stat_fields(path: &str) -> Vec<u64> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            Some(
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// A clock-tick field of [`stat_fields`] as a duration.
fn ticks(f: &[u64], i: usize) -> Duration {
    Duration::from_millis(f.get(i).copied().unwrap_or(0) * 10)
}

/// This thread's minor page faults and user and system CPU time.
fn thread_faults_user_sys() -> (u64, Duration, Duration) {
    let f = stat_fields("/proc/thread-self/stat");
    (f.get(7).copied().unwrap_or(0), ticks(&f, 11), ticks(&f, 12))
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn open(ann: Option<AnnOptions>, store: Option<Arc<dyn aios_memory::MemoryStore>>) -> Memory {
    let mut b = Memory::builder(Arc::new(ManualClock::default())).seed(1);
    if let Some(o) = ann {
        b = b.ann(o);
    }
    if let Some(s) = store {
        b = b.store(s);
    }
    // `SCALE_WRITE_THREADS=2`: a batch's keyword postings on a second thread
    if let Some(n) = std::env::var("SCALE_WRITE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        b = b.write_threads(n);
    }
    futures::executor::block_on(b.open()).expect("an in-memory memory opens")
}

fn write(n: usize, batch: Option<usize>) {
    let mut data = records(n, 1);
    // to take the cost apart: the same records without their vectors, or with one word
    let without = std::env::var("SCALE_WITHOUT").unwrap_or_default();
    for r in &mut data {
        if without == "embedding" || without == "both" {
            r.embedding = None;
        }
        if without == "text" || without == "both" {
            r.content = "x".into();
        }
    }
    let memory = open(None, None);
    let rss0 = rss_mb();
    let (faults0, user0, sys0) = thread_faults_user_sys();
    perf_enable();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let ok = futures::executor::block_on(async {
        let mut ok = 0usize;
        match batch {
            None => {
                for r in data {
                    if memory.remember(r).await.is_ok() {
                        ok += 1;
                    }
                }
            }
            Some(b) => {
                let mut it = data.into_iter();
                loop {
                    let chunk: Vec<NewMemory> = it.by_ref().take(b).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    ok += memory.remember_many(chunk).await.map_or(0, |v| v.len());
                }
            }
        }
        ok
    });
    let wall = t0.elapsed();
    let cpu = thread_cpu().saturating_sub(cpu0);
    let (faults1, user1, sys1) = thread_faults_user_sys();
    println!(
        "MEM-WRITE n={n} batch={batch:?} ok={ok} wall={:.2}s rate={:.0}/s cpu={:.2}s per-cpu={:.0}/s rss+={:.0}MB faults={} user={:.2}s sys={:.2}s",
        wall.as_secs_f64(),
        ok as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        ok as f64 / cpu.as_secs_f64(),
        rss_mb() - rss0,
        faults1.saturating_sub(faults0),
        user1.saturating_sub(user0).as_secs_f64(),
        sys1.saturating_sub(sys0).as_secs_f64(),
    );
}

const SCOPES: [&str; 4] = ["bench/a/0", "bench/a/1", "bench/b/0", "bench/b/1"];

/// The process's CPU time (all threads; Linux, from `/proc/self/stat`, in clock ticks of
/// 10 ms).
fn process_cpu() -> Duration {
    let f = stat_fields("/proc/self/stat");
    ticks(&f, 11) + ticks(&f, 12)
}

/// Tells a `perf record --control fifo:...` session to start sampling (for profiling the
/// queries alone), when `PERF_CTL` names its control fifo.
fn perf_enable() {
    if let Ok(path) = std::env::var("PERF_CTL") {
        let _ = std::fs::write(path, "enable\n");
    }
}

/// Builds a memory of `n` clustered vectors with the index, and at each checkpoint on the
/// way measures recall@10 and latency against an exact memory opened over the same store.
fn ann(n: usize, queries: usize, options: AnnOptions, checkpoints: &[usize]) {
    let rss0 = rss_mb();
    let approx = open(Some(options), None);
    let mut gen = Clustered::new(11, 2000);
    let mut qgen = gen.fork(99);
    let qs: Vec<Vec<f32>> = (0..queries).map(|_| qgen.draw()).collect();
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let mut i = 0usize;
    let mut written = 0usize;
    println!("ANN options {options:?}");
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
        written += futures::executor::block_on(approx.remember_many(batch)).map_or(0, |v| v.len());
        if i == n || checkpoints.contains(&i) {
            let build = t0.elapsed();
            let cpu = process_cpu().saturating_sub(cpu0);
            println!(
                "ANN n={i} written={written} build wall={:.1}s ({:.0}/s) cpu={:.1}s ({:.2} ms/vector) rss+={:.0}MB",
                build.as_secs_f64(),
                i as f64 / build.as_secs_f64(),
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e3 / i as f64,
                rss_mb() - rss0
            );
            measure(&approx, &qs);
        }
    }
}

fn measure(approx: &Memory, qs: &[Vec<f32>]) {
    let rss1 = rss_mb();
    let exact = open(None, Some(approx.store().clone()));
    println!("  exact index rss+={:.0}MB", rss_mb() - rss1);
    let half = Scope::parse("bench/a").unwrap_or_default();
    let weights = RecallWeights {
        recency: 0.0,
        importance: 0.0,
        ..RecallWeights::default()
    };
    perf_enable();
    for (name, scope) in [("all", None), ("scope half", Some(&half))] {
        let (mut found, mut wanted) = (0usize, 0usize);
        let (mut ann_t, mut exact_t) = (Vec::new(), Vec::new());
        let query = |v: &[f32]| {
            let q = RecallQuery::vector(v.to_vec())
                .mode(RecallMode::Vector)
                .weights(weights)
                .k(10);
            match scope {
                Some(s) => q.in_scope(s.clone()),
                None => q,
            }
        };
        let ids = |m: &Memory, q: &RecallQuery| -> Vec<aios_core::MemoryId> {
            futures::executor::block_on(m.recall(q))
                .map(|h| h.into_iter().map(|h| h.record.id).collect())
                .unwrap_or_default()
        };
        // the approximate queries in one pass and the exact ones in another, so that the
        // thread's CPU time over each pass gives a mean CPU time per query that the
        // machine's load does not inflate
        let cpu = thread_cpu();
        let mut gots = Vec::new();
        for v in qs {
            let q = query(v);
            let t = Instant::now();
            gots.push(ids(approx, &q));
            ann_t.push(t.elapsed());
        }
        let ann_cpu = thread_cpu().saturating_sub(cpu);
        let cpu = thread_cpu();
        for (v, got) in qs.iter().zip(&gots) {
            let q = query(v);
            let t = Instant::now();
            let want = ids(&exact, &q);
            exact_t.push(t.elapsed());
            wanted += want.len();
            found += want.iter().filter(|id| got.contains(id)).count();
        }
        let exact_cpu = thread_cpu().saturating_sub(cpu);
        println!(
            "  {name}: mean CPU per query: ann {:.3}ms, exact {:.3}ms",
            ann_cpu.as_secs_f64() * 1e3 / qs.len().max(1) as f64,
            exact_cpu.as_secs_f64() * 1e3 / qs.len().max(1) as f64
        );
        ann_t.sort();
        exact_t.sort();
        let p = |v: &[Duration], q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "  {name}: recall@10={:.3} ann p50={:.3}ms p99={:.3}ms exact p50={:.3}ms",
            found as f64 / wanted.max(1) as f64,
            p(&ann_t, 0.5),
            p(&ann_t, 0.99),
            p(&exact_t, 0.5)
        );
    }
}

/// Builds `n` vectors around `centres` centres and measures recall@10 of wider searches:
/// a query asking for `k = width` hits searches at least that wide, and its first ten hits
/// (re-scored exactly, best first) are the best ten of what that search found.
fn ann_width(n: usize, centres: usize, options: AnnOptions) {
    let approx = open(Some(options), None);
    let mut gen = Clustered::new(11, centres);
    let mut qgen = gen.fork(99);
    let qs: Vec<Vec<f32>> = (0..100).map(|_| qgen.draw()).collect();
    let t0 = Instant::now();
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
        let _ = futures::executor::block_on(approx.remember_many(batch));
    }
    println!(
        "ANN-WIDTH n={n} centres={centres} ({} per centre) built in {:.0}s, {options:?}",
        n / centres.max(1),
        t0.elapsed().as_secs_f64()
    );
    let exact = open(None, Some(approx.store().clone()));
    let weights = RecallWeights {
        recency: 0.0,
        importance: 0.0,
        ..RecallWeights::default()
    };
    let top = |m: &Memory, v: &[f32], k: usize| -> Vec<aios_core::MemoryId> {
        let q = RecallQuery::vector(v.to_vec())
            .mode(RecallMode::Vector)
            .weights(weights)
            .k(k);
        futures::executor::block_on(m.recall(&q))
            .map(|h| h.into_iter().take(10).map(|h| h.record.id).collect())
            .unwrap_or_default()
    };
    let wants: Vec<Vec<aios_core::MemoryId>> = qs.iter().map(|v| top(&exact, v, 10)).collect();
    for width in [10, 96, 192, 384, 768] {
        let (mut found, mut wanted) = (0usize, 0usize);
        let mut times = Vec::new();
        for (v, want) in qs.iter().zip(&wants) {
            let t = Instant::now();
            let got = top(&approx, v, width);
            times.push(t.elapsed());
            wanted += want.len();
            found += want.iter().filter(|id| got.contains(id)).count();
        }
        times.sort();
        println!(
            "  width {width}: recall@10={:.3} p50={:.3}ms (fetching {width} hits)",
            found as f64 / wanted.max(1) as f64,
            times
                .get(times.len() / 2)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
    }
}

/// Touches `mb` megabytes of fresh anonymous memory on each of `threads` threads, one write
/// per 4 KB page (a whole huge page at its first, where the kernel grants them), and prints
/// the rate over the slowest thread's time.
fn fresh(mb: usize, threads: usize) {
    let bytes = mb << 20;
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(move || {
                    let mut m = memmap2::MmapOptions::new()
                        .len(bytes)
                        .map_anon()
                        .expect("an anonymous mapping");
                    let _ = m.advise(memmap2::Advice::HugePage);
                    let t0 = Instant::now();
                    for b in m.iter_mut().step_by(4096) {
                        *b = 1;
                    }
                    t0.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a touching thread"))
            .collect()
    });
    let slowest = times.iter().max().copied().unwrap_or_default();
    println!(
        "FRESH-MEMORY mb={mb} threads={} slowest={:.2}s rate={:.2}GB/s",
        times.len(),
        slowest.as_secs_f64(),
        (bytes * times.len()) as f64 / 1e9 / slowest.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    match args.first().map(String::as_str) {
        Some("write") => write(num(1).unwrap_or(200_000), num(2)),
        Some("ann") => {
            // scale ann N [queries] [probes] [threads] [candidates] [lists]
            let mut o = AnnOptions::default();
            if let Some(p) = num(3) {
                o = o.probes(p);
            }
            if let Some(t) = num(4) {
                o = o.threads(t);
            }
            if let Some(c) = num(5) {
                o = o.candidates(c);
            }
            if let Some(l) = num(6) {
                o = o.lists(l);
            }
            let n = num(1).unwrap_or(50_000);
            // SCALE_CHECKPOINTS=0: measure at N only (to profile one size's queries)
            let on_the_way = std::env::var("SCALE_CHECKPOINTS").map_or(true, |v| v != "0");
            let checkpoints: Vec<usize> = [50_000, 100_000, 200_000, 400_000, 700_000]
                .into_iter()
                .filter(|c| *c < n && on_the_way)
                .collect();
            ann(n, num(2).unwrap_or(200), o, &checkpoints)
        }
        Some("fresh") => fresh(num(1).unwrap_or(1024), num(2).unwrap_or(1)),
        Some("ann-width") => {
            // scale ann-width N centres [threads]
            let o = AnnOptions::default().threads(num(3).unwrap_or(1));
            ann_width(num(1).unwrap_or(100_000), num(2).unwrap_or(200), o)
        }
        _ => eprintln!(
            "usage: scale write N [batch] | scale fresh MB [threads] | scale ann N [queries] [probes] [threads] [candidates] [lists] | scale ann-width N centres [threads]"
        ),
    }
}
