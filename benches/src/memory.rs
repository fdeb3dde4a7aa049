//! MEM-WRITE, MEM-RECALL-EXACT and MEM-RECALL-HYBRID, through the same `Memory` calls a user
//! makes.

use std::sync::Arc;
use std::time::Duration;

use aios::core::{ManualClock, SeededRng};
use aios::memory::{Memory, NewMemory, RecallMode, RecallQuery, Scope};

use crate::{percentile_us, sample, time, Config, Goal, Measurement};

// the data of every memory workload (also used by the other workload modules)
pub use aios::memory::testing::synthetic::{records, text, vector, vocabulary, DIMS};

/// Opens an empty in-memory `Memory` on a manual clock.
pub fn open() -> Memory {
    open_with_threads(1)
}

/// Opens an empty in-memory `Memory` on a manual clock with `threads` write threads
/// (`MemoryBuilder::write_threads`).
pub fn open_with_threads(threads: usize) -> Memory {
    let clock = Arc::new(ManualClock::default());
    futures::executor::block_on(Memory::builder(clock).write_threads(threads).open())
        .expect("an empty in-memory memory opens")
}

/// Remembers every record, one `remember` call each; returns how many succeeded.
pub fn write_all(memory: &Memory, records: Vec<NewMemory>) -> usize {
    futures::executor::block_on(async {
        let mut ok = 0;
        for r in records {
            if memory.remember(r).await.is_ok() {
                ok += 1;
            }
        }
        ok
    })
}

/// Remembers every record through `remember_many` in batches of `batch` (as an import or a
/// bulk ingest would); returns how many succeeded.
pub fn write_batched(memory: &Memory, records: Vec<NewMemory>, batch: usize) -> usize {
    futures::executor::block_on(async {
        let mut ok = 0;
        let mut rest = records.into_iter();
        loop {
            let chunk: Vec<NewMemory> = rest.by_ref().take(batch.max(1)).collect();
            if chunk.is_empty() {
                break;
            }
            ok += memory.remember_many(chunk).await.map_or(0, |w| w.len());
        }
        ok
    })
}

/// Sums every f32 of `buf` with the same 16-lane accumulation the vector scan uses: the time
/// to stream the bytes once.
pub fn stream_sum(buf: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = buf.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        if let Ok(c) = <&[f32; 16]>::try_from(c) {
            // indexed on purpose: compiles to full-width vector loads and adds
            #[allow(clippy::needless_range_loop)]
            for i in 0..16 {
                acc[i] += c[i];
            }
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// The CPU time this thread has run for (Linux; zero elsewhere).
pub fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The CPU time of the whole process, every thread it has run included (Linux, in clock
/// ticks of 10 ms; zero elsewhere).
pub fn process_cpu() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or_default()
}

fn median_of(samples: usize, mut f: impl FnMut(usize)) -> Duration {
    let d = sample(samples, &mut f);
    Duration::from_secs_f64(percentile_us(&d, 50.0) / 1e6)
}

/// Runs the memory workloads.
pub fn run(config: &Config) -> Vec<Measurement> {
    let mut out = Vec::new();

    // MEM-WRITE: through `remember_many` in batches of 1,000 (the batch write API, which
    // indexes each batch together and holds each batch's vectors once), the same with two write threads, and one `remember`
    // per record
    let n_write = config.pick(200_000, 1_000_000);
    for (label, batch, threads) in [
        ("", Some(1000), 1),
        (", two write threads", Some(1000), 2),
        (", one remember each", None, 1),
    ] {
        let data = records(n_write, 1);
        let memory = open_with_threads(threads);
        // with two threads the second one's time counts too
        let cpu_now = if threads > 1 { process_cpu } else { thread_cpu };
        let cpu_before = cpu_now();
        let (d, ok) = time(|| match batch {
            Some(b) => write_batched(&memory, data, b),
            None => write_all(&memory, data),
        });
        let cpu = cpu_now().saturating_sub(cpu_before);
        out.push(Measurement::new(
            "MEM-WRITE",
            &if ok == n_write {
                format!("throughput{label}")
            } else {
                format!("FAILED writes{label}")
            },
            ok as f64 / d.as_secs_f64(),
            "records/s",
            if batch.is_some() && threads == 1 {
                Goal::AtLeast(200_000.0)
            } else {
                Goal::None
            },
        ));
        // on a shared machine the thread may get a fraction of a core: the rate per second
        // of the thread's own CPU time says what the code does with the core it gets
        if !cpu.is_zero() {
            out.push(Measurement::new(
                "MEM-WRITE",
                &format!("per CPU second{label}"),
                ok as f64 / cpu.as_secs_f64(),
                "records/s",
                Goal::None,
            ));
        }
        drop(memory);
    }

    // MEM-RECALL-EXACT over 100,000 x 384
    let n = 100_000;
    let memory = open();
    write_all(&memory, records(n, 2));
    let mut rng = SeededRng::new(3);
    let queries: Vec<Vec<f32>> = (0..64).map(|_| vector(&mut rng)).collect();
    let samples = config.pick(40, 200);

    // the physical limit: stream the same number of embedding bytes once. Streaming and
    // recall alternate, so both see the same load on a shared machine.
    let buf: Vec<f32> = (0..n * DIMS).map(|i| (i % 7) as f32 * 0.25).collect();
    let mut sink = 0f32;
    let mut found = 0usize;
    let (mut streams, mut exacts) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let (d, s) = time(|| stream_sum(std::hint::black_box(&buf)));
        sink += s;
        streams.push(d);
        let q = RecallQuery::vector(queries[i % queries.len()].clone())
            .mode(RecallMode::Vector)
            .k(10);
        let (d, hits) = time(|| futures::executor::block_on(memory.recall(&q)));
        found += hits.map_or(0, |h| h.len());
        exacts.push(d);
    }
    drop(buf);
    streams.sort();
    exacts.sort();
    let stream = Duration::from_secs_f64(percentile_us(&streams, 50.0) / 1e6);
    let exact = Duration::from_secs_f64(percentile_us(&exacts, 50.0) / 1e6);
    let exact_ok = found == samples * 10;
    out.push(Measurement::new(
        "MEM-RECALL-EXACT",
        "stream limit",
        stream.as_secs_f64() * 1e6,
        "us",
        Goal::None,
    ));
    out.push(Measurement::new(
        "MEM-RECALL-EXACT",
        if exact_ok { "p50" } else { "p50 FAILED" },
        exact.as_secs_f64() * 1e6,
        "us",
        Goal::None,
    ));
    out.push(Measurement::new(
        "MEM-RECALL-EXACT",
        "ratio to stream",
        exact.as_secs_f64() / stream.as_secs_f64(),
        "x",
        Goal::AtMost(1.3),
    ));

    // MEM-RECALL-HYBRID: text + vector, fused, within half of the scopes
    let vocab = vocabulary(5000);
    let mut trng = SeededRng::new(4);
    let texts: Vec<String> = (0..64)
        .map(|_| {
            format!(
                "what did the {} say about {} and {}",
                vocab[(trng.next_u64() % 5000) as usize],
                vocab[(trng.next_u64() % 5000) as usize],
                vocab[(trng.next_u64() % 5000) as usize]
            )
        })
        .collect();
    let scope = Scope::parse("bench/team-a").unwrap_or_default();
    let mut hybrid_found = 0usize;
    let hybrid = median_of(samples, |i| {
        let q = RecallQuery::text(texts[i % texts.len()].clone())
            .with_vector(queries[i % queries.len()].clone())
            .in_scope(scope.clone())
            .k(10);
        hybrid_found += futures::executor::block_on(memory.recall(&q)).map_or(0, |h| h.len());
    });
    let hybrid_ok = hybrid_found == samples * 10;
    out.push(Measurement::new(
        "MEM-RECALL-HYBRID",
        if hybrid_ok { "p50" } else { "p50 FAILED" },
        hybrid.as_secs_f64() * 1e6,
        "us",
        Goal::None,
    ));
    out.push(Measurement::new(
        "MEM-RECALL-HYBRID",
        "ratio to exact",
        hybrid.as_secs_f64() / exact.as_secs_f64(),
        "x",
        Goal::AtMost(2.0),
    ));
    drop(memory);

    // MEM-RECALL-SMALL: a 700-turn conversation (the size of one long chat), keyword and
    // hybrid top-10: a small memory must answer as fast as its size allows, not wait on
    // structures sized for large ones
    let small = open();
    write_all(&small, records(700, 5));
    let (mut kw_found, mut hy_found) = (0usize, 0usize);
    let kw = median_of(config.pick(400, 2000), |i| {
        let q = RecallQuery::text(texts[i % texts.len()].clone())
            .mode(RecallMode::Keyword)
            .k(10);
        kw_found += futures::executor::block_on(small.recall(&q)).map_or(0, |h| h.len());
    });
    let hy = median_of(config.pick(400, 2000), |i| {
        let q = RecallQuery::text(texts[i % texts.len()].clone())
            .with_vector(queries[i % queries.len()].clone())
            .k(10);
        hy_found += futures::executor::block_on(small.recall(&q)).map_or(0, |h| h.len());
    });
    out.push(Measurement::new(
        "MEM-RECALL-SMALL",
        if kw_found > 0 {
            "keyword p50 (700 records)"
        } else {
            "keyword p50 FAILED"
        },
        kw.as_secs_f64() * 1e6,
        "us",
        Goal::None,
    ));
    out.push(Measurement::new(
        "MEM-RECALL-SMALL",
        if hy_found > 0 {
            "hybrid p50 (700 records)"
        } else {
            "hybrid p50 FAILED"
        },
        hy.as_secs_f64() * 1e6,
        "us",
        Goal::None,
    ));
    std::hint::black_box(sink);
    out
}
