//! Criterion benches for AUD-APPEND and AUD-VERIFY.

use aios::core::InMemoryAuditLog;
use aios_benches::audit::{append_all, sample_records};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("AUD-APPEND x10k", |b| {
        b.iter_batched(
            || (InMemoryAuditLog::new(), sample_records(10_000)),
            |(log, r)| append_all(&log, r),
            BatchSize::LargeInput,
        )
    });
    let log = InMemoryAuditLog::new();
    append_all(&log, sample_records(100_000));
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("AUD-VERIFY x100k", |b| b.iter(|| log.verify_sync(None)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
