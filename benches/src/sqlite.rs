//! SQLITE-CKPT: ORCH-SEQ3-CKPT (3 chained no-op tasks, a checkpoint after every step) with
//! the checkpoints in an SQLite file, durable per step.
//!
//! The headline figure uses the default durability (`synchronous=FULL`: every checkpoint is
//! fsynced before the run goes on), so it is bound by the disk's fsync latency. The same
//! workload with `synchronous=NORMAL` (each checkpoint survives the process being killed, not
//! a power loss) and the fsync latency of the same directory are reported beside it, so the
//! figure can be read on any machine. SQLITE-RECOVER is the crash test of `aios-sqlite`
//! (`cargo test -p aios-sqlite --test crash`), not a timing.
//!
//! SQLITE-WORKERS: runs per second through `Orchestrator::work` on one SQLite file (default
//! durability), with 1 and with 16 runs in flight: submitted ORCH-SEQ3 runs (checkpoint every
//! step) with their checkpoints and audit log in the file, drained by one worker loop awaited
//! on `futures::executor::block_on` (one thread). Afterwards every run must have completed and
//! the audit chain must verify.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use aios::core::AuditLogExt;
use aios::orchestrator::{
    CheckpointMode, Orchestrator, OrchestratorConfig, RunStatus, WorkOptions,
};
use aios_sqlite::{Durability, SqliteOptions, SqliteStore};
use futures::executor::block_on;

use crate::orchestrator::{chain, counter_role, governor};
use crate::{percentile_us, sample, Config, Goal, Measurement};

fn orchestrator(store: &SqliteStore) -> Orchestrator {
    Orchestrator::builder(governor())
        .role(counter_role())
        .checkpoints(Arc::new(store.checkpoint_store()))
        .config(OrchestratorConfig {
            checkpoints: CheckpointMode::EveryStep,
            ..OrchestratorConfig::default()
        })
        .build()
        .unwrap_or_else(|e| crate::orchestrator::panic_free_exit(&e.to_string()))
}

/// Median and p99 of seq3 runs on a store opened with `durability`, plus the checkpoints
/// each run wrote.
fn seq3(dir: &Path, durability: Durability, samples: usize) -> Option<(f64, f64, u64)> {
    let path = dir.join(format!("sqlite-ckpt-{durability:?}.db"));
    let store = SqliteStore::open_with(&path, SqliteOptions::default().durability(durability))
        .map_err(|e| eprintln!("SQLITE-CKPT: {e}"))
        .ok()?;
    let o = orchestrator(&store);
    let run = || match block_on(o.start(chain(3))) {
        Ok(out) if out.status == RunStatus::Completed => Some(out.run),
        _ => None,
    };
    for _ in 0..samples / 10 {
        run()?;
    }
    let mut ok = true;
    let mut last = None;
    let sorted = sample(samples, |_| {
        last = run();
        ok &= last.is_some();
    });
    if !ok {
        return None;
    }
    let per_run = last
        .and_then(|r| block_on(o.checkpoint_store().latest(r)).ok().flatten())
        .map_or(0, |c| c.seq);
    Some((
        percentile_us(&sorted, 50.0),
        percentile_us(&sorted, 99.0),
        per_run,
    ))
}

/// SQLITE-WORKERS: `runs` submitted seq3 runs drained by one `Orchestrator::work` loop with
/// `in_flight` runs at once, checkpoints and audit log in one file; runs per second of the
/// drain, or `None` (with the reason on stderr) if a run did not complete or the chain does not
/// verify.
fn workers(dir: &Path, in_flight: usize, runs: usize) -> Option<f64> {
    let path = dir.join(format!("sqlite-workers-{in_flight}.db"));
    let fail = |e: &dyn std::fmt::Display| eprintln!("SQLITE-WORKERS: {e}");
    let store = SqliteStore::open(&path).map_err(|e| fail(&e)).ok()?;
    let o = Orchestrator::builder(governor())
        .role(counter_role())
        .checkpoints(Arc::new(store.checkpoint_store()))
        .audit(Arc::new(store.audit_log()))
        .config(OrchestratorConfig {
            checkpoints: CheckpointMode::EveryStep,
            ..OrchestratorConfig::default()
        })
        .build()
        .map_err(|e| fail(&e))
        .ok()?;
    for _ in 0..runs {
        block_on(o.submit(chain(3))).map_err(|e| fail(&e)).ok()?;
    }
    let started = Instant::now();
    let report = block_on(o.work(
        WorkOptions::until_idle().concurrency(in_flight),
        futures::future::pending(),
    ))
    .map_err(|e| fail(&e))
    .ok()?;
    let elapsed = started.elapsed();
    let completed = report
        .driven
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .count();
    if completed != runs {
        fail(&format!(
            "{completed} of {runs} runs completed ({} failed: {:?})",
            report.failed.len(),
            report.failed.first()
        ));
        return None;
    }
    match block_on(o.audit_log().verify(None)) {
        Ok(v) if v.is_intact() => {}
        Ok(v) => {
            fail(&format!("the audit chain does not verify: {v:?}"));
            return None;
        }
        Err(e) => {
            fail(&e);
            return None;
        }
    }
    Some(runs as f64 / elapsed.as_secs_f64())
}

/// Median latency of `write` + `fsync` of 4 KiB in `dir`, in microseconds.
fn fsync_us(dir: &Path, samples: usize) -> Option<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).ok()?;
    let page = [0u8; 4096];
    let mut failed = false;
    let sorted = sample(samples, |_| {
        failed |= f.write_all(&page).is_err() || f.sync_data().is_err();
    });
    let _ = std::fs::remove_file(&path);
    (!failed).then(|| percentile_us(&sorted, 50.0))
}

/// Runs the SQLite workloads in a fresh directory under the system's temp dir.
pub fn run(config: &Config) -> Vec<Measurement> {
    let samples = config.pick(100, 1_000);
    let dir = std::env::temp_dir().join(format!("aios-bench-sqlite-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("SQLITE-CKPT: cannot create {}: {e}", dir.display());
        return vec![];
    }
    let mut out = Vec::new();
    let failed = |workload: &str| Measurement::new(workload, "FAILED", 0.0, "us", Goal::None);
    match seq3(&dir, Durability::Full, samples) {
        Some((median, p99, per_run)) => {
            out.push(Measurement::new(
                "SQLITE-CKPT",
                "median",
                median,
                "us",
                Goal::AtMost(300.0),
            ));
            out.push(Measurement::new(
                "SQLITE-CKPT",
                "p99",
                p99,
                "us",
                Goal::None,
            ));
            out.push(Measurement::new(
                "SQLITE-CKPT",
                "checkpoints/run",
                per_run as f64,
                "count",
                Goal::None,
            ));
        }
        None => out.push(failed("SQLITE-CKPT")),
    }
    match seq3(&dir, Durability::Normal, samples) {
        Some((median, p99, _)) => {
            out.push(Measurement::new(
                "SQLITE-CKPT-NORMAL",
                "median",
                median,
                "us",
                Goal::AtMost(300.0),
            ));
            out.push(Measurement::new(
                "SQLITE-CKPT-NORMAL",
                "p99",
                p99,
                "us",
                Goal::None,
            ));
        }
        None => out.push(failed("SQLITE-CKPT-NORMAL")),
    }
    let runs = config.pick(200, 1_000);
    for in_flight in [1, 16] {
        match workers(&dir, in_flight, runs) {
            Some(rate) => out.push(Measurement::new(
                "SQLITE-WORKERS",
                &format!("runs/s, {in_flight} in flight"),
                rate,
                "1/s",
                Goal::None,
            )),
            None => out.push(failed("SQLITE-WORKERS")),
        }
    }
    if let Some(us) = fsync_us(&dir, samples) {
        out.push(Measurement::new(
            "SQLITE-FSYNC",
            "median",
            us,
            "us",
            Goal::None,
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}
