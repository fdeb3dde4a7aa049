//! Criterion benches for MEM-WRITE, MEM-RECALL-EXACT and MEM-RECALL-HYBRID (smaller sizes than
//! the report binary, same code paths).

use aios::core::SeededRng;
use aios::memory::{RecallMode, RecallQuery, Scope};
use aios_benches::memory::{open, records, stream_sum, vector, write_all, write_batched, DIMS};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("MEM-WRITE x10k", |b| {
        b.iter_batched(
            || (open(), records(10_000, 1)),
            |(m, r)| write_all(&m, r),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("MEM-WRITE x10k, remember_many of 1,000", |b| {
        b.iter_batched(
            || (open(), records(10_000, 1)),
            |(m, r)| write_batched(&m, r, 1000),
            BatchSize::LargeInput,
        )
    });

    let n = 100_000;
    let memory = open();
    write_all(&memory, records(n, 2));
    let mut rng = SeededRng::new(3);
    let query = vector(&mut rng);
    let buf: Vec<f32> = (0..n * DIMS).map(|i| (i % 7) as f32).collect();
    g.throughput(Throughput::Bytes((n * DIMS * 4) as u64));
    g.bench_function("stream 100k x 384 f32", |b| {
        b.iter(|| stream_sum(std::hint::black_box(&buf)))
    });
    g.bench_function("MEM-RECALL-EXACT 100k x 384 top-10", |b| {
        let q = RecallQuery::vector(query.clone())
            .mode(RecallMode::Vector)
            .k(10);
        b.iter(|| futures::executor::block_on(memory.recall(&q)))
    });
    g.bench_function("MEM-RECALL-HYBRID 100k x 384 top-10, scope filter", |b| {
        let q = RecallQuery::text("what did the kalo say about mi and sa")
            .with_vector(query.clone())
            .in_scope(Scope::parse("bench/team-a").unwrap_or_default())
            .k(10);
        b.iter(|| futures::executor::block_on(memory.recall(&q)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
