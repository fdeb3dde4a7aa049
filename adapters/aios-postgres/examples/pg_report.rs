//! PG-CKPT and PG-AUDIT (see `BENCHMARKS.md`): prints one JSON object per line, then a
//! table.
//!
//! ```text
//! cargo run --release -p aios-postgres --example pg_report [-- --quick]
//! ```
//!
//! Against `AIOS_PG_URL` if set (a URL allowed to create databases), otherwise a local
//! throwaway server started with durable commits (`fsync=on`, `synchronous_commit=on`),
//! as in production.
//!
//! - PG-CKPT: ORCH-SEQ3 (3 chained no-op tasks) with a durable PostgreSQL checkpoint after
//!   every step; median and p99 per run. Beside it, the latency of one durable single-row
//!   commit on the same server (the floor: a run saves 4 checkpoints, each one commit).
//! - PG-WORKERS: runs per second drained by 1, 2 and 4 `Orchestrator::work` loops (each its
//!   own pool, 4 runs in flight each) from one database holding submitted ORCH-SEQ3 runs.
//! - PG-AUDIT: audit appends per second, 4 writers (each its own pool, as separate
//!   processes) appending to one chain; the chain is verified afterwards. Also 1 writer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_core::{AuditEvent, AuditLog, AuditLogExt, AuditRecord, Principal, RoleId};
use aios_governance::GovernanceModel;
use aios_orchestrator::{
    CheckpointMode, CheckpointStore, FnAgent, Orchestrator, OrchestratorConfig, Role, RunStatus,
    TaskSpec, Workflow,
};
use aios_postgres::testing::{ServerOptions, TestServer};
use aios_postgres::PgStore;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "benchmarks", "final_authority": "owner" },
  "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
  "roles": [{ "key": "counter" }],
  "pathways": [
    { "key": "noop", "anchor": "owner", "delegate": "counter",
      "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
      "escalation": [{ "name": "risky", "when": { "risk_at_least": 90 }, "mode": "halt" }] }
  ],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 1000000000 } }]
}"#;

fn counter_role() -> Role {
    let agent = FnAgent::new(|_ctx, input| {
        Box::pin(async move {
            let deps: i64 = input.deps.values().filter_map(|v| v.as_i64()).sum();
            Ok(serde_json::json!(
                input.input.as_i64().unwrap_or(0) + deps + 1
            ))
        })
    });
    Role::new("counter", "noop", Arc::new(agent))
}

fn chain(n: usize) -> Workflow {
    let role = RoleId::from_name("counter");
    (0..n).fold(Workflow::new("chain"), |wf, i| {
        let t = TaskSpec::new(format!("t{i}"), role, serde_json::json!(0));
        wf.task(if i == 0 {
            t
        } else {
            t.after([format!("t{}", i - 1)])
        })
    })
}

/// Forwards to the PostgreSQL store, counting the calls that write (each one transaction,
/// so one durable commit) and timing them.
#[derive(Debug)]
struct Counting {
    inner: aios_postgres::PgCheckpointStore,
    writes: std::sync::Mutex<Vec<(&'static str, Duration)>>,
}

impl Counting {
    fn note(&self, op: &'static str, t: Instant) {
        self.writes.lock().unwrap().push((op, t.elapsed()));
    }
}

#[async_trait::async_trait]
impl CheckpointStore for Counting {
    async fn acquire(
        &self,
        run: aios_core::RunId,
        owner: &aios_orchestrator::WorkerId,
        now: aios_core::Timestamp,
        ttl: Duration,
    ) -> Result<aios_orchestrator::Lease, aios_core::StoreError> {
        let t = Instant::now();
        let out = self.inner.acquire(run, owner, now, ttl).await;
        self.note("acquire", t);
        out
    }
    async fn renew(
        &self,
        lease: &aios_orchestrator::Lease,
        now: aios_core::Timestamp,
        ttl: Duration,
    ) -> Result<aios_orchestrator::Lease, aios_core::StoreError> {
        let t = Instant::now();
        let out = self.inner.renew(lease, now, ttl).await;
        self.note("renew", t);
        out
    }
    async fn release(&self, lease: &aios_orchestrator::Lease) -> Result<(), aios_core::StoreError> {
        let t = Instant::now();
        let out = self.inner.release(lease).await;
        self.note("release", t);
        out
    }
    async fn save(
        &self,
        lease: &aios_orchestrator::Lease,
        checkpoint: &aios_orchestrator::Checkpoint,
    ) -> Result<(), aios_core::StoreError> {
        let t = Instant::now();
        let out = self.inner.save(lease, checkpoint).await;
        self.note("save", t);
        out
    }
    async fn latest(
        &self,
        run: aios_core::RunId,
    ) -> Result<Option<aios_orchestrator::Checkpoint>, aios_core::StoreError> {
        self.inner.latest(run).await
    }
    async fn get(
        &self,
        run: aios_core::RunId,
        seq: u64,
    ) -> Result<Option<aios_orchestrator::Checkpoint>, aios_core::StoreError> {
        self.inner.get(run, seq).await
    }
    async fn list(
        &self,
        parked_only: bool,
    ) -> Result<Vec<aios_orchestrator::RunSummary>, aios_core::StoreError> {
        self.inner.list(parked_only).await
    }
    async fn claim(
        &self,
        owner: &aios_orchestrator::WorkerId,
        now: aios_core::Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<aios_orchestrator::Lease>, aios_core::StoreError> {
        let t = Instant::now();
        let out = self.inner.claim(owner, now, ttl, limit).await;
        self.note("claim", t);
        out
    }
    async fn wake(
        &self,
        run: aios_core::RunId,
        approval: aios_core::ApprovalId,
    ) -> Result<(), aios_core::StoreError> {
        let t = Instant::now();
        let out = self.inner.wake(run, approval).await;
        self.note("wake", t);
        out
    }
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn line(workload: &str, metric: &str, value: f64, unit: &str, target: &str) {
    println!(
        "{}",
        serde_json::json!({"workload": workload, "metric": metric, "value": value,
                           "unit": unit, "target": target})
    );
}

struct Ckpt {
    p50: f64,
    p99: f64,
    per_run: u64,
    commits_per_run: f64,
    commit_p50: f64,
    save_p50: f64,
    lease_p50: f64,
}

/// `url_suffix` adds connection options (for the variant without waiting for fsync).
async fn pg_ckpt(server: &TestServer, samples: usize, url_suffix: &str) -> Ckpt {
    let url = format!("{}{url_suffix}", server.fresh_database().await.unwrap());
    let store = PgStore::connect(&url).await.unwrap();
    let counting = Arc::new(Counting {
        inner: store.checkpoint_store(),
        writes: std::sync::Mutex::new(Vec::new()),
    });
    let governor = GovernanceModel::from_json(MODEL)
        .unwrap()
        .compile()
        .unwrap();
    let o = Orchestrator::builder(governor)
        .role(counter_role())
        .checkpoints(counting.clone())
        .config(OrchestratorConfig {
            checkpoints: CheckpointMode::EveryStep,
            ..OrchestratorConfig::default()
        })
        .build()
        .unwrap();
    // the floor: one durable single-row commit on the same server, sampled alternately
    // with the runs so both see the same load of the shared machine
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE probe (id BIGSERIAL PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    let probe = client
        .prepare("INSERT INTO probe (v) VALUES ('x')")
        .await
        .unwrap();
    for _ in 0..samples / 10 {
        o.start(chain(3)).await.unwrap();
    }
    counting.writes.lock().unwrap().clear();
    let mut times = Vec::with_capacity(samples);
    let mut commits = Vec::with_capacity(samples);
    let mut last = None;
    for _ in 0..samples {
        let t = Instant::now();
        let out = o.start(chain(3)).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(out.status, RunStatus::Completed);
        last = Some(out.run);
        let t = Instant::now();
        client.execute(&probe, &[]).await.unwrap();
        commits.push(t.elapsed());
    }
    times.sort();
    commits.sort();
    let per_run = store
        .checkpoint_store()
        .latest(last.unwrap())
        .await
        .unwrap()
        .map_or(0, |c| c.seq);
    let writes = counting.writes.lock().unwrap().clone();
    let pick = |ops: &[&str]| {
        let mut d: Vec<Duration> = writes
            .iter()
            .filter(|(op, _)| ops.contains(op))
            .map(|(_, d)| *d)
            .collect();
        d.sort();
        if d.is_empty() {
            0.0
        } else {
            percentile_us(&d, 50.0)
        }
    };
    Ckpt {
        p50: percentile_us(&times, 50.0),
        p99: percentile_us(&times, 99.0),
        per_run,
        commits_per_run: writes.len() as f64 / samples as f64,
        commit_p50: percentile_us(&commits, 50.0),
        save_p50: pick(&["save"]),
        lease_p50: pick(&["acquire", "renew", "release"]),
    }
}

async fn pg_audit(server: &TestServer, writers: usize, per_writer: usize) -> f64 {
    let url = server.fresh_database().await.unwrap();
    let mut stores = Vec::new();
    for _ in 0..writers {
        stores.push(PgStore::connect(&url).await.unwrap());
    }
    let t = Instant::now();
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let log = s.audit_log();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    log.append(AuditRecord::new(
                        Principal::System,
                        AuditEvent::Note {
                            text: format!("entry {i}"),
                        },
                    ))
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = t.elapsed();
    let report = stores[0].audit_log().verify(None).await.unwrap();
    assert!(report.is_intact());
    assert_eq!(report.checked as usize, writers * per_writer);
    (writers * per_writer) as f64 / elapsed.as_secs_f64()
}

/// PG-WORKERS: `runs` submitted ORCH-SEQ3 runs drained by `workers` work loops; runs/s.
async fn pg_workers(server: &TestServer, workers: usize, runs: usize) -> f64 {
    let url = server.fresh_database().await.unwrap();
    let governor = || {
        GovernanceModel::from_json(MODEL)
            .unwrap()
            .compile()
            .unwrap()
    };
    let mut orchs = vec![];
    for w in 0..workers {
        let store = PgStore::connect(&url).await.unwrap();
        orchs.push(
            store
                .orchestrator(governor())
                .await
                .unwrap()
                .role(counter_role())
                .config(OrchestratorConfig::deterministic(
                    &format!("w{w}"),
                    w as u64,
                ))
                .build()
                .unwrap(),
        );
    }
    for _ in 0..runs {
        orchs[0].submit(chain(3)).await.unwrap();
    }
    let started = Instant::now();
    let drained = futures::future::join_all(orchs.iter().map(|o| {
        o.work(
            aios_orchestrator::WorkOptions::until_idle().concurrency(4),
            futures::future::pending(),
        )
    }))
    .await;
    let elapsed = started.elapsed();
    let done: usize = drained
        .iter()
        .map(|r| r.as_ref().unwrap().driven.len())
        .sum();
    assert_eq!(done, runs, "every run driven once");
    runs as f64 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let owned;
    let server: &TestServer = match std::env::var("AIOS_PG_URL") {
        Ok(u) if !u.is_empty() => TestServer::shared().unwrap(),
        _ => {
            owned = TestServer::start(ServerOptions::default().durable(true)).unwrap();
            &owned
        }
    };
    let samples = if quick { 200 } else { 1000 };
    // the same without waiting for the WAL flush at commit (`synchronous_commit=off`: a
    // commit survives a crash of the client, not of the server): round trips and CPU only
    let a = pg_ckpt(server, samples, "?options=-c%20synchronous_commit%3Doff").await;
    line("PG-CKPT-ASYNC", "median", a.p50, "us", "report");
    line("PG-CKPT-ASYNC", "p99", a.p99, "us", "report");
    line("PG-CKPT-ASYNC", "save median", a.save_p50, "us", "");
    let c = pg_ckpt(server, samples, "").await;
    let floor = c.commit_p50 * c.commits_per_run;
    line(
        "PG-CKPT",
        "median",
        c.p50,
        "us",
        "report; compare with SQLITE-CKPT",
    );
    line("PG-CKPT", "p99", c.p99, "us", "report");
    line(
        "PG-CKPT",
        "checkpoints per run",
        c.per_run as f64,
        "count",
        "",
    );
    line(
        "PG-CKPT",
        "durable commits per run",
        c.commits_per_run,
        "count",
        "",
    );
    line("PG-CKPT", "save median", c.save_p50, "us", "");
    line("PG-CKPT", "lease op median", c.lease_p50, "us", "");
    line(
        "PG-CKPT",
        "durable single-row commit median",
        c.commit_p50,
        "us",
        "",
    );
    line(
        "PG-CKPT",
        "ratio to floor (commits x single commit)",
        c.p50 / floor,
        "x",
        "",
    );
    let runs = if quick { 100 } else { 400 };
    let mut workers = vec![];
    for n in [1, 2, 4] {
        let rate = pg_workers(server, n, runs).await;
        line(
            "PG-WORKERS",
            &format!("runs/s, {n} worker(s)"),
            rate,
            "1/s",
            "report",
        );
        workers.push((n, rate));
    }
    let per_writer = if quick { 250 } else { 1000 };
    let four = pg_audit(server, 4, per_writer).await;
    let one = pg_audit(server, 1, per_writer).await;
    line(
        "PG-AUDIT",
        "appends/s, 4 writers, one chain",
        four,
        "1/s",
        "report",
    );
    line("PG-AUDIT", "appends/s, 1 writer", one, "1/s", "");
    println!();
    println!("| workload | figure |");
    println!("|---|---|");
    println!(
        "| PG-CKPT median / p99 | {:.0} us / {:.0} us ({} checkpoints, {:.1} commits per run) |",
        c.p50, c.p99, c.per_run, c.commits_per_run
    );
    println!(
        "| save / lease op median | {:.0} us / {:.0} us |",
        c.save_p50, c.lease_p50
    );
    println!(
        "| PG-CKPT-ASYNC median / p99 | {:.0} us / {:.0} us (save {:.0} us) |",
        a.p50, a.p99, a.save_p50
    );
    println!(
        "| durable single-row commit | {:.0} us (floor {floor:.0} us) |",
        c.commit_p50
    );
    for (n, rate) in &workers {
        println!("| PG-WORKERS, {n} worker(s) | {rate:.0} runs/s |");
    }
    println!("| PG-AUDIT 4 writers | {four:.0} appends/s |");
    println!("| PG-AUDIT 1 writer | {one:.0} appends/s |");
}
