//! Criterion benches for ORCH-SEQ3, ORCH-SEQ3-CKPT, ORCH-SEQ10, ORCH-PAR5 and ORCH-HITL (the
//! large workloads, ORCH-DAG100K and ORCH-PARKED10K, are in the report binary).

use aios::core::HumanId;
use aios::governance::ApprovalResponse;
use aios::orchestrator::CheckpointMode;
use aios_benches::orchestrator::{chain, fan_in, one_send, orchestrator};
use criterion::{criterion_group, criterion_main, Criterion};
use futures::executor::block_on;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("orchestrator");
    for (name, mode, wf) in [
        ("ORCH-SEQ3", CheckpointMode::OnExit, chain(3)),
        ("ORCH-SEQ3-CKPT", CheckpointMode::EveryStep, chain(3)),
        ("ORCH-SEQ10", CheckpointMode::OnExit, chain(10)),
        ("ORCH-PAR5", CheckpointMode::OnExit, fan_in(5)),
    ] {
        let o = orchestrator(mode, 8);
        g.bench_function(name, |b| b.iter(|| block_on(o.start(wf.clone()))));
    }
    let o = orchestrator(CheckpointMode::EveryStep, 8);
    let ann = HumanId::from_name("ann");
    let send = one_send();
    g.bench_function("ORCH-HITL", |b| {
        b.iter(|| {
            let parked = block_on(o.start(send.clone())).ok()?;
            let id = parked.pending_approvals().first().copied()?;
            block_on(o.submit_approval(id, ann, ApprovalResponse::Approve)).ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
