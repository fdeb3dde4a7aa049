//! Many worker processes on one PostgreSQL database, killed with SIGKILL at seeded random
//! moments and started again: four `aios-postgres-worker work` processes drain
//! [`RUNS`] fan-out runs (a planner spawning two children with one ledger effect each, then
//! a publication held for approval) while an `approve` process decides the approvals, and
//! is killed too. The effects are counted outside the orchestrator, in a second database the
//! worker's connector writes to. At the end: every run completed, every effect performed
//! exactly once, no checkpoint history forked, no budget above its limit, no reservation
//! left open, every approval decided, the audit chain intact.
//!
//! This test found a stall: an audit append (or a budget reservation) holds a lock every
//! worker shares across several round trips, and a run's driver that awaited one call while
//! a sibling task held that lock left the lock holder unpolled, so every worker on the
//! database waited. The PostgreSQL audit log and budget ledger now run those transactions on
//! Tokio tasks of their own.
//!
//! The seed is printed; `AIOS_PG_KILL_SEED=<seed>` replays the same kill schedule (the
//! moments, the victims; the interleaving of the processes is up to the machine).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_core::{AuditLogExt, SystemClock};
use aios_governance::{BudgetKey, BudgetLedger};
use aios_orchestrator::{Checkpoint, CheckpointStore, RunStatus, TaskStatus};
use aios_postgres::PgStore;

const RUNS: usize = 1000;
const CHILDREN: usize = 2;
const WORKERS: usize = 4;
/// Kills over the run of the test (workers and the approver).
const KILLS: usize = 12;
/// How long the processes may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(900);
const BIN: &str = env!("CARGO_BIN_EXE_aios-postgres-worker");

/// A small deterministic generator (SplitMix64): the kill schedule from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Procs {
    dir: PathBuf,
    store: String,
    service: String,
    n: usize,
}

impl Procs {
    fn spawn(&mut self, args: &[&str]) -> Child {
        self.n += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("{}-{}.log", self.n, args[0]))).unwrap();
        Command::new(BIN)
            .arg(args[0])
            .arg(&self.store)
            .arg(&self.service)
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if !text.trim().is_empty() {
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                out.push_str(&format!("--- {} (last lines)\n{tail}\n", p.display()));
            }
        }
        out
    }
}

fn kill(child: &mut Child) -> bool {
    // Child::kill sends SIGKILL on Unix
    let alive = child.try_wait().unwrap().is_none();
    if alive {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    alive
}

async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.query(sql, &[]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_processes_killed_at_random_drain_a_thousand_runs() {
    let seed: u64 = match std::env::var("AIOS_PG_KILL_SEED") {
        Ok(s) => s.parse().expect("AIOS_PG_KILL_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("kill seed {seed} (AIOS_PG_KILL_SEED={seed} replays the schedule)");
    let mut rng = Rng(seed);
    let store_url = common::fresh_url().await;
    let service_url = common::fresh_url().await;
    // migrate once up front (workers starting together would serialise on the lock anyway)
    let store = PgStore::connect(&store_url).await.unwrap();
    let dir = std::env::temp_dir().join(format!("aios-pg-processes-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut procs = Procs {
        dir: dir.clone(),
        store: store_url.clone(),
        service: service_url.clone(),
        n: 0,
    };
    let started = Instant::now();
    let runs = RUNS.to_string();
    let submitter = procs.spawn(&["submit", &runs]);
    // slots 0..WORKERS are workers, the last one the approver
    let mut children: Vec<Child> = (0..WORKERS).map(|_| procs.spawn(&["work"])).collect();
    children.push(procs.spawn(&["approve"]));
    let submitted = tokio::task::spawn_blocking(move || submitter.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(submitted.status.success(), "{}", procs.logs());
    eprintln!("{RUNS} runs submitted in {:?}", started.elapsed());

    let mut kills = BTreeMap::<&str, usize>::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1800))).await;
        let slot = rng.below(WORKERS as u64 + 1) as usize;
        if kill(&mut children[slot]) {
            let what = if slot == WORKERS { "approve" } else { "work" };
            *kills.entry(what).or_default() += 1;
            children[slot] = procs.spawn(&[what]);
        }
    }
    eprintln!("kills: {kills:?} (by {:?})", started.elapsed());
    // the rest drains without interference; every process exits once every run ended
    loop {
        let mut running = 0;
        for c in children.iter_mut() {
            match c.try_wait().unwrap() {
                None => running += 1,
                Some(status) => assert!(
                    status.success(),
                    "a process failed (seed {seed}): {status}\n{}",
                    procs.logs()
                ),
            }
        }
        if running == 0 {
            break;
        }
        if started.elapsed() > DEADLINE {
            for c in children.iter_mut() {
                kill(c);
            }
            let left = store
                .checkpoint_store()
                .list(false)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| !r.status.is_terminal())
                .count();
            panic!(
                "not drained after {DEADLINE:?} (seed {seed}): {left} runs left\n{}",
                procs.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("drained in {:?}", started.elapsed());

    // every run completed
    let summaries = store.checkpoint_store().list(false).await.unwrap();
    assert_eq!(summaries.len(), RUNS, "seed {seed}");
    for s in &summaries {
        assert_eq!(
            s.status,
            RunStatus::Completed,
            "run {} (seed {seed})",
            s.run
        );
    }

    // every effect exactly once, counted by the service
    let effects = query(
        &service_url,
        "SELECT connector, count(*) FROM effects GROUP BY connector",
    )
    .await;
    let effects: HashMap<String, i64> = effects.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        effects.get("ledger"),
        Some(&((RUNS * CHILDREN) as i64)),
        "seed {seed}"
    );
    assert_eq!(effects.get("site"), Some(&(RUNS as i64)), "seed {seed}");
    let twice = query(
        &service_url,
        "SELECT key FROM invocations WHERE NOT deduplicated GROUP BY key HAVING count(*) > 1",
    )
    .await;
    assert!(
        twice.is_empty(),
        "effects performed twice (seed {seed}): {}",
        twice.len()
    );
    let retried = query(
        &service_url,
        "SELECT count(*) FROM invocations WHERE deduplicated",
    )
    .await;
    let retried: i64 = retried[0].get(0);
    eprintln!("{retried} invocations were replays the service deduplicated");

    // no forked history: in every run's checkpoint history, a task once completed stays
    // completed with the same output, tasks are never lost, and a journal only grows
    let rows = query(
        &store_url,
        "SELECT checkpoint FROM aios_checkpoints ORDER BY run, seq",
    )
    .await;
    let mut previous: Option<Checkpoint> = None;
    let mut checkpoints = 0;
    for row in rows {
        let text: &str = row.get(0);
        let c: Checkpoint = serde_json::from_str(text).unwrap();
        checkpoints += 1;
        if let Some(p) = previous.as_ref().filter(|p| p.run == c.run) {
            assert!(c.seq > p.seq);
            assert!(
                c.state.tasks.len() >= p.state.tasks.len(),
                "run {}: tasks lost",
                c.run
            );
            for (before, after) in p.state.tasks.iter().zip(&c.state.tasks) {
                assert_eq!(before.id, after.id, "run {}: tasks reordered", c.run);
                assert!(
                    after.journal.len() >= before.journal.len()
                        && after.journal[..before.journal.len()]
                            .iter()
                            .zip(&before.journal)
                            .all(|(a, b)| a.seq == b.seq && a.request_hash == b.request_hash),
                    "run {} task {}: the journal was rewritten between checkpoints {} and {} (seed {seed})",
                    c.run,
                    after.spec.name,
                    p.seq,
                    c.seq
                );
                if before.status == TaskStatus::Completed {
                    assert_eq!(after.status, TaskStatus::Completed, "run {}: forked", c.run);
                    assert_eq!(after.output, before.output, "run {}: forked", c.run);
                }
            }
        }
        previous = Some(c);
    }
    eprintln!("{checkpoints} checkpoints checked");

    // no budget above its limit, no reservation left open
    let ledger = store.budget_ledger(Arc::new(SystemClock));
    assert_eq!(
        ledger.outstanding().await.unwrap(),
        0,
        "reservations left open"
    );
    let calls = (RUNS * (CHILDREN + 1)) as u64;
    let org = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    if let Some(limit) = org.limits.limits.tool_calls {
        assert!(org.committed.tool_calls <= limit);
    }
    eprintln!(
        "organisation budget: {} tool calls charged for {calls} effects",
        org.committed.tool_calls
    );
    for s in &summaries {
        let u = ledger.usage(BudgetKey::Run(s.run)).await.unwrap().unwrap();
        if let Some(limit) = u.limits.limits.tool_calls {
            assert!(
                u.committed.tool_calls <= limit,
                "run {} over its limit",
                s.run
            );
        }
        if let Some(limit) = u.limits.limits.cost {
            assert!(u.committed.cost <= limit, "run {} over its limit", s.run);
        }
    }
    assert_eq!(
        org.committed.tool_calls, calls,
        "every call charged once (seed {seed})"
    );

    // every approval decided, by the founder, from the approver process
    let open = query(
        &store_url,
        "SELECT count(*) FROM aios_approvals WHERE state = 'pending'",
    )
    .await;
    let open: i64 = open[0].get(0);
    assert_eq!(open, 0, "approvals left pending");
    let asked = query(&store_url, "SELECT count(*) FROM aios_approvals").await;
    let asked: i64 = asked[0].get(0);
    assert_eq!(asked, RUNS as i64, "one approval per run");

    // the audit chain verifies
    let log = store.audit_log();
    assert!(log.verify(None).await.unwrap().is_intact(), "seed {seed}");
    let _ = std::fs::remove_dir_all(Path::new(&dir));
    eprintln!("done in {:?}", started.elapsed());
}
