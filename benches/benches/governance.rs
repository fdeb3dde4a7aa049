//! Criterion benches for GOV-DECIDE, GOV-BUDGET and GOV-VALIDATE.

use std::hint::black_box;

use aios_benches::governance::{requests, reserve_commit, synthetic_model, three_level_ledger};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let model = synthetic_model(1_000, 200);
    let Ok(governor) = model.compile() else {
        return;
    };
    let reqs = requests(10_000, 1_000);
    let mut g = c.benchmark_group("governance");
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function("GOV-DECIDE x10k", |b| {
        b.iter(|| {
            for r in &reqs {
                black_box(governor.decide(black_box(r)));
            }
        })
    });
    let (ledger, chain) = three_level_ledger();
    g.throughput(Throughput::Elements(1));
    g.bench_function("GOV-BUDGET reserve+commit", |b| {
        b.iter(|| reserve_commit(black_box(&ledger), &chain))
    });
    g.bench_function("GOV-VALIDATE 1000 pathways 200 anchors", |b| {
        b.iter(|| black_box(model.validate()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
