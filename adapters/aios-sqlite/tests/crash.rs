//! SQLITE-RECOVER: a real worker process runs a six-step workflow (one step parks for an
//! approval) on a SQLite store and is killed with SIGKILL at many points; restarted on the
//! same files until it completes. Every round checks: the run completed with the right
//! outputs, no side effect happened twice, no approval or budget entry was lost, and the
//! audit chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    ApprovalOutcome, AuditEvent, AuditLogExt, HumanId, IdempotencyKey, Money, Outcome, SystemClock,
};
use aios_governance::{ApprovalState, ApprovalStore, BudgetKey, BudgetLedger};
use aios_memory::MemoryStore;
use aios_orchestrator::{CallRecord, CheckpointStore, RunStatus, TaskStatus};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

const WORKER: &str = env!("CARGO_BIN_EXE_aios-sqlite-crash-worker");
const STEPS: i64 = 6;

/// How long a worker may print nothing before it counts as stalled.
const STALL: Duration = Duration::from_secs(20);

/// When to kill one incarnation of the worker.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// After it printed this many lines (its progress), at once.
    AfterLines(usize),
    /// After it printed this many `effect` lines: the service performed the effect and the
    /// run has not recorded it yet (the worker holds there).
    AfterEffects(usize),
    /// After this many `memory` lines: the memory store wrote a record and the run has not
    /// journaled (nor the memory audited) it yet (the worker holds there).
    AfterMemoryWrites(usize),
    /// After this long.
    After(Duration),
}

/// What happened to one incarnation.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Killed,
    Exited(i32),
}

/// Which workflow the worker drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Six sequential steps.
    Sequential,
    /// A planner, spawned children and an approved mail (`AIOS_CRASH_WORKER_MODE=fanout`).
    FanOut,
}

fn spawn(store: &Path, service: &Path, hold: bool) -> Child {
    spawn_in(Mode::Sequential, store, service, hold)
}

fn spawn_in(mode: Mode, store: &Path, service: &Path, hold: bool) -> Child {
    let mut cmd = Command::new(WORKER);
    if mode == Mode::FanOut {
        cmd.env("AIOS_CRASH_WORKER_MODE", "fanout");
    }
    if hold {
        // the worker waits after each effect, so a kill after an `effect` line always lands
        // before the run recorded the effect
        cmd.env("AIOS_CRASH_WORKER_HOLD_MS", "50");
    }
    cmd.arg(store)
        .arg(service)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts")
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Runs one incarnation, killing it as `kill` says (unless it ends first).
fn incarnation(mode: Mode, store: &Path, service: &Path, kill: Option<Kill>) -> (Ended, String) {
    let mut child = spawn_in(
        mode,
        store,
        service,
        matches!(
            kill,
            Some(Kill::AfterLines(_) | Kill::AfterEffects(_) | Kill::AfterMemoryWrites(_))
        ),
    );
    let stdout = child.stdout.take().expect("piped stdout");
    let killed = match kill {
        Some(k @ (Kill::AfterLines(n) | Kill::AfterEffects(n) | Kill::AfterMemoryWrites(n))) => {
            // an effect: the service performed one (`effect`) or the memory store wrote a
            // record (`memory`), and the run has not journaled it yet
            let counts = |line: &str| match k {
                Kill::AfterEffects(_) => line.starts_with("effect ") || line.starts_with("memory "),
                Kill::AfterMemoryWrites(_) => line.starts_with("memory "),
                _ => true,
            };
            // lines are read on a thread so a worker that stops making progress is noticed
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut seen = 0;
            let mut stalled = false;
            while seen < n {
                match rx.recv_timeout(STALL) {
                    Ok(line) if counts(&line) => seen += 1,
                    Ok(_) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        stalled = true;
                        break;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            if stalled {
                // a worker that prints nothing for this long is stuck, not slow (a run
                // whose driver awaited its own save while a sibling task held the save lock
                // once hung here; `aios-orchestrator/tests/liveness.rs` reproduces that)
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "a worker made no progress for {STALL:?}: it hung\n{}",
                    stderr_of(&mut child)
                );
            }
            // SIGKILL on Unix; an error means it had exited already
            let killed = seen == n && child.kill().is_ok();
            let _ = child.wait();
            drop(rx);
            let _ = reader.join();
            killed
        }
        Some(Kill::After(d)) => {
            // keep the pipe drained so the worker never blocks on a full pipe
            let drain = std::thread::spawn(move || {
                let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
            });
            std::thread::sleep(d);
            let killed = child.try_wait().ok().flatten().is_none() && child.kill().is_ok();
            let _ = child.wait();
            let _ = drain.join();
            killed
        }
        None => {
            let _ = std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink());
            false
        }
    };
    let status = child.wait().expect("the worker is reaped");
    let err = stderr_of(&mut child);
    if killed && status.code().is_none() {
        (Ended::Killed, err)
    } else {
        (Ended::Exited(status.code().unwrap_or(-1)), err)
    }
}

/// Drives one run to completion, killing incarnations by `schedule` while `budget` kills
/// remain (then letting them finish). Returns how many incarnations were killed mid-run.
fn drive(
    store: &Path,
    service: &Path,
    schedule: &mut impl Iterator<Item = Kill>,
    budget: usize,
) -> usize {
    let (killed, ended) = drive_in(Mode::Sequential, store, service, schedule, budget);
    assert_eq!(ended, Finished::Completed);
    killed
}

/// How a driven run ended.
#[derive(Debug, PartialEq, Eq)]
enum Finished {
    /// The worker exited with 0.
    Completed,
    /// The worker exited with 4: the run failed, for the reason it printed.
    Failed(String),
}

/// [`drive`] in `mode`; a run that fails ends the drive too (the caller checks why), and every
/// kill that landed is logged with the incarnation it ended.
fn drive_in(
    mode: Mode,
    store: &Path,
    service: &Path,
    schedule: &mut impl Iterator<Item = Kill>,
    budget: usize,
) -> (usize, Finished) {
    let mut killed = 0;
    for _ in 0..(budget + 20) {
        let kill = if killed < budget {
            schedule.next()
        } else {
            None
        };
        let ended = incarnation(mode, store, service, kill);
        eprintln!("{kill:?}: {:?}", ended.0);
        match ended {
            (Ended::Killed, _) => killed += 1,
            // completed: the kills left are for the next run
            (Ended::Exited(0), _) => return (killed, Finished::Completed),
            // parked: the next incarnation approves
            (Ended::Exited(3), _) => {}
            (Ended::Exited(4), err) => return (killed, Finished::Failed(err)),
            (Ended::Exited(code), err) => panic!("the worker failed with {code}: {err}"),
        }
    }
    panic!(
        "the run did not complete within {} incarnations",
        budget + 20
    );
}

/// What the service (the outside world) saw.
struct ServiceLog {
    /// Effects performed: idempotency key -> (step, cost).
    effects: BTreeMap<String, (i64, i64)>,
    /// Every invocation: (key, step, deduplicated).
    invocations: Vec<(String, i64, bool)>,
}

fn service_log(path: &Path) -> ServiceLog {
    let conn = rusqlite::Connection::open(path).unwrap();
    let effects = conn
        .prepare("SELECT key, step, cost FROM effects")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let invocations = conn
        .prepare("SELECT key, step, deduplicated FROM invocations ORDER BY n")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    ServiceLog {
        effects,
        invocations,
    }
}

/// Every invariant, on the files a round left behind. Returns how many invocations the
/// service deduplicated (calls repeated after a crash).
fn check(store_path: &Path, service_path: &Path, round: &str) -> usize {
    let store = SqliteStore::open(store_path).unwrap();
    store.check_integrity().unwrap();
    let service = service_log(service_path);
    eprintln!(
        "{round}: {} effects, {} invocations ({} deduplicated)",
        service.effects.len(),
        service.invocations.len(),
        service.invocations.iter().filter(|i| i.2).count()
    );

    // the run completed, exactly one run has state, outputs chain 1..=6
    let runs = block_on(store.checkpoint_store().list(false)).unwrap();
    assert_eq!(runs.len(), 1, "{round}: one run: {runs:?}");
    assert_eq!(runs[0].status, RunStatus::Completed, "{round}");
    let state = block_on(store.checkpoint_store().latest(runs[0].run))
        .unwrap()
        .unwrap()
        .state;
    for (i, task) in state.tasks.iter().enumerate() {
        let out = task.output.as_ref().expect("every task has its output");
        assert_eq!(out["value"], i as i64 + 1, "{round}: step {} value", i + 1);
        assert_eq!(out["step"], i as i64 + 1);
    }

    // each side effect happened exactly once: one effect per step, no step under two keys
    let steps: Vec<i64> = service.effects.values().map(|(s, _)| *s).collect();
    assert_eq!(
        steps.iter().copied().collect::<BTreeSet<_>>(),
        (1..=STEPS).collect::<BTreeSet<_>>(),
        "{round}: every step's effect happened"
    );
    assert_eq!(
        steps.len(),
        STEPS as usize,
        "{round}: no effect happened twice: {:?}",
        service.effects
    );
    // every invocation carried the key of its step's one effect; only the first invocation
    // of a key performed it, every repeat (a retry after a crash) was deduplicated
    for (i, (key, step, dedup)) in service.invocations.iter().enumerate() {
        assert_eq!(
            service.effects.get(key).map(|e| e.0),
            Some(*step),
            "{round}"
        );
        let first = service
            .invocations
            .iter()
            .position(|(k, _, _)| k == key)
            .unwrap();
        assert_eq!(*dedup, i != first, "{round}: invocation {i} of {key}");
    }

    // the audit chain verifies and recorded every effect the run used
    let audit = store.audit_log();
    let report = block_on(audit.verify(None)).unwrap();
    assert!(report.is_intact(), "{round}: {:?}", report.problems);
    let entries = block_on(audit.entries()).unwrap();
    let succeeded: Vec<(String, Money)> = entries
        .iter()
        .filter_map(|e| match &e.event {
            AuditEvent::ConnectorInvoked {
                idempotency_key,
                outcome: Outcome::Succeeded,
                cost,
                ..
            } => Some((idempotency_key.to_string(), *cost)),
            _ => None,
        })
        .collect();
    for key in service.effects.keys() {
        assert!(
            succeeded.iter().any(|(k, _)| k == key),
            "{round}: effect {key} is in the audit log"
        );
    }

    // no budget entry lost: every effect the run used was committed (commit precedes the
    // journal), and nothing was committed that no invocation returned
    let ledger = store.budget_ledger(Arc::new(SystemClock));
    let usage = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .expect("the organisation budget exists");
    let effects_cost: i64 = service.effects.values().map(|(_, c)| c).sum();
    let audited_cost: i64 = succeeded.iter().map(|(_, c)| c.minor()).sum();
    let committed = usage.committed.cost.minor();
    assert_eq!(
        ledger.outstanding().unwrap(),
        0,
        "{round}: reservations left by killed workers were released when the run was taken over"
    );
    assert!(
        effects_cost <= committed && committed <= audited_cost,
        "{round}: committed {committed} is between the effects' {effects_cost} and the audited {audited_cost}"
    );
    assert!(
        usage.committed.tool_calls >= STEPS as u64
            && usage.committed.tool_calls as usize <= service.invocations.len(),
        "{round}: committed tool calls {} for {} invocations",
        usage.committed.tool_calls,
        service.invocations.len()
    );
    let run_usage = block_on(ledger.usage(BudgetKey::Run(runs[0].run)))
        .unwrap()
        .expect("the run's budget exists");
    assert_eq!(
        run_usage.committed.tool_calls, usage.committed.tool_calls,
        "{round}: the run's budget saw every commit the organisation saw"
    );

    // no approval lost: the one the run used is redeemed, decided by alice; every request
    // and decision in the audit log is in the store
    let approvals = store.approval_store();
    let mut used = Vec::new();
    for task in &state.tasks {
        for j in &task.journal {
            if let CallRecord::Approved {
                approval,
                result: Some(_),
            } = &j.record
            {
                used.push(*approval);
            }
        }
    }
    assert_eq!(used.len(), 1, "{round}: the mail step ran on one approval");
    let request = block_on(approvals.get(used[0])).unwrap().unwrap();
    match &request.state {
        ApprovalState::Redeemed { decision, .. } => {
            assert_eq!(decision.by, HumanId::from_name("alice"))
        }
        other => panic!("{round}: the used approval is {other:?}"),
    }
    for e in &entries {
        match &e.event {
            AuditEvent::ApprovalRequested { approval, .. } => {
                assert!(
                    block_on(approvals.get(*approval)).unwrap().is_some(),
                    "{round}: requested approval {approval} is stored"
                );
            }
            AuditEvent::ApprovalDecided {
                approval,
                outcome: ApprovalOutcome::Approved,
                ..
            } => {
                let r = block_on(approvals.get(*approval)).unwrap().unwrap();
                assert!(
                    matches!(
                        r.state,
                        ApprovalState::Decided { .. } | ApprovalState::Redeemed { .. }
                    ),
                    "{round}: decided approval {approval} is {:?}",
                    r.state
                );
            }
            _ => {}
        }
    }
    service.invocations.iter().filter(|i| i.2).count()
}

/// Runs rounds (a fresh run on fresh files each) until `want` incarnations were killed
/// mid-run by `schedule`, checking every invariant after each round. Returns the repeated
/// (deduplicated) calls seen.
fn rounds(name: &str, schedule: impl Iterator<Item = Kill> + Clone, want: usize) -> usize {
    let mut schedule = schedule.cycle();
    let (mut killed, mut repeated) = (0, 0);
    for r in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.db");
        let service = dir.path().join("service.db");
        killed += drive(&store, &service, &mut schedule, want - killed);
        repeated += check(&store, &service, &format!("{name}, round {r}"));
        if killed >= want {
            return repeated;
        }
    }
    panic!("{name}: only {killed} of {want} kills landed in 6 rounds");
}

#[test]
fn killed_at_many_points_the_run_completes_without_repeating_or_losing_anything() {
    // by progress: lines are `start`/`resume`/`approve`, then per step `effect` (the service
    // performed it, the run has not recorded it) and `step N done`; a kill after an `effect`
    // line makes the next incarnation call the service again with the same key
    let by_lines = [
        Kill::AfterEffects(1),
        Kill::AfterLines(3),
        Kill::AfterEffects(2),
        Kill::AfterLines(1),
        Kill::AfterEffects(1),
        Kill::AfterLines(5),
        Kill::AfterEffects(1),
        Kill::AfterLines(2),
        Kill::AfterEffects(1),
    ]
    .into_iter();
    let repeated = rounds("by progress", by_lines, 9);
    // by time, from early (opening the files) to late (a later step's commits), whatever
    // the speed of the disk
    let by_time = [2, 5, 9, 14, 20, 30, 45, 65]
        .into_iter()
        .map(|ms| Kill::After(Duration::from_millis(ms)));
    rounds("by time", by_time, 8);
    assert!(
        repeated >= 3,
        "a kill between the service's effect and the run's record made a call repeat, deduplicated"
    );
}

/// Two worker processes with the default configuration on one SQLite file, started together
/// again and again until the run completes: they never both drive the run (one of them is
/// refused the lease, or finds the approval already answered), and no effect happens twice.
#[test]
fn two_worker_processes_on_one_file_never_drive_one_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let service = dir.path().join("service.db");
    // the run exists and parks before the pairs race for it
    let first = spawn(&store, &service, false).wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(3), "the first worker parks");
    let mut completed = false;
    for _ in 0..20 {
        let (a, b) = (
            spawn(&store, &service, false),
            spawn(&store, &service, false),
        );
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        for out in &outs {
            let err = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => completed = true,
                Some(3) => {}
                // the loser of a race: refused the lease or the approval, or the winner
                // finished the run first; nothing done
                Some(1)
                    if err.contains("lease")
                        || err.contains("already")
                        || err.contains("cannot be resumed") => {}
                other => panic!("a worker failed with {other:?}: {err}"),
            }
        }
        if completed {
            break;
        }
    }
    assert!(completed, "the run completed");
    check(&store, &service, "two workers");
}

// ---------------------------------------------------------------------------------------
// The adversarial fan-out suite: seeded random kills of a fan-out run.

/// How many children the fan-out worker's planner spawns (its `CHILDREN`).
const CHILDREN: i64 = 5;

/// A small deterministic generator (SplitMix64), so a failing schedule can be replayed from
/// its seed.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// An endless schedule of kills drawn from `seed`: after a number of progress lines, after a
/// number of effect lines (a ledger effect, the mail or a memory write done and not yet
/// journaled), or after a number of milliseconds.
fn random_kills(seed: u64) -> impl Iterator<Item = Kill> {
    let mut rng = SplitMix(seed);
    std::iter::from_fn(move || {
        Some(match rng.between(0, 2) {
            0 => Kill::AfterLines(rng.between(1, 24) as usize),
            1 => Kill::AfterEffects(rng.between(1, 8) as usize),
            _ => Kill::After(Duration::from_millis(rng.between(2, 90))),
        })
    })
}

/// A row of the service's `notifications` table: (kind, task, approval, message).
type Notice = (String, Option<String>, Option<String>, String);

/// What the outside world saw of a fan-out run.
struct FanOutWorld {
    log: ServiceLog,
    /// Mails sent: (idempotency key the call carried, body).
    mails: Vec<(String, serde_json::Value)>,
    notifications: Vec<Notice>,
}

fn fanout_world(path: &Path) -> FanOutWorld {
    let log = service_log(path);
    let conn = rusqlite::Connection::open(path).unwrap();
    let mails = conn
        .prepare("SELECT key, body FROM mails ORDER BY n")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (key, body) = r.unwrap();
            (key, serde_json::from_str(&body).unwrap())
        })
        .collect();
    let notifications = conn
        .prepare("SELECT kind, task, approval, message FROM notifications ORDER BY n")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    FanOutWorld {
        log,
        mails,
        notifications,
    }
}

/// How a checked fan-out run ended.
#[derive(Debug, PartialEq, Eq)]
enum FanOutEnd {
    /// Completed; the mail was sent exactly once.
    Completed,
    /// A kill interrupted the approved mail: the run failed with an outcome-unknown
    /// escalation, and the mail was sent at most once (`mails`).
    OutcomeUnknown { mails: usize },
}

/// Every invariant of a fan-out run, counted from outside the worker: the service file (the
/// effects, the mails and the notifications) and the store opened afresh.
fn check_fanout(
    store_path: &Path,
    service_path: &Path,
    finished: &Finished,
    round: &str,
) -> FanOutEnd {
    let store = SqliteStore::open(store_path).unwrap();
    store.check_integrity().unwrap();
    let world = fanout_world(service_path);
    let runs = block_on(store.checkpoint_store().list(false)).unwrap();
    assert_eq!(runs.len(), 1, "{round}: one run: {runs:?}");
    let run = runs[0].run;
    let state = block_on(store.checkpoint_store().latest(run))
        .unwrap()
        .unwrap()
        .state;
    let task = |name: &str| {
        state
            .tasks
            .iter()
            .find(|t| t.spec.name.to_string() == name)
            .unwrap_or_else(|| panic!("{round}: task {name} exists: {:?}", state.tasks))
    };
    assert_eq!(
        state.tasks.len(),
        2 + CHILDREN as usize,
        "{round}: the planner spawned each child once: {:?}",
        state
            .tasks
            .iter()
            .map(|t| t.spec.name.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(task("plan").status, TaskStatus::Completed, "{round}");

    // every child completed, with exactly one ledger effect under its own call key: the
    // service performed each key once and deduplicated every repeat
    let ledger: BTreeMap<&String, i64> = world
        .log
        .effects
        .iter()
        .map(|(key, (step, _))| (key, *step))
        .collect();
    assert_eq!(
        ledger.len(),
        CHILDREN as usize,
        "{round}: one ledger effect per child: {ledger:?}"
    );
    for i in 1..=CHILDREN {
        let child = task(&format!("child{i}"));
        assert_eq!(child.status, TaskStatus::Completed, "{round}: child{i}");
        let key = IdempotencyKey::for_call(run, child.id, 0).to_string();
        assert_eq!(
            ledger.get(&key),
            Some(&i),
            "{round}: child{i}'s effect happened under its key {key}: {ledger:?}"
        );
        let out = child.output.as_ref().unwrap();
        assert_eq!(out["value"], 100 * i, "{round}: child{i}'s output");
    }
    for (n, (key, step, dedup)) in world.log.invocations.iter().enumerate() {
        if *step == 0 {
            continue; // a mail (checked below)
        }
        assert_eq!(ledger.get(key), Some(step), "{round}: invocation {n}");
        let first = world
            .log
            .invocations
            .iter()
            .position(|(k, _, _)| k == key)
            .unwrap();
        assert_eq!(*dedup, n != first, "{round}: invocation {n} of {key}");
    }

    // the memory store holds exactly one record per child, written in its task, one version
    // each; the child's output names it
    let records = block_on(store.memory_store().scan(None, 1000)).unwrap();
    assert_eq!(
        records.len(),
        CHILDREN as usize,
        "{round}: one memory record per child, no duplicate: {:?}",
        records
            .iter()
            .map(|r| (&r.content, r.version))
            .collect::<Vec<_>>()
    );
    let lineages: BTreeSet<_> = records.iter().map(|r| r.id).collect();
    assert_eq!(lineages.len(), records.len(), "{round}: one version each");
    for i in 1..=CHILDREN {
        let child = task(&format!("child{i}"));
        let content = format!("child {i} applied ledger receipt ledger-{i}");
        let mine: Vec<_> = records.iter().filter(|r| r.content == content).collect();
        assert_eq!(
            mine.len(),
            1,
            "{round}: child{i}'s record, once: {records:?}"
        );
        let r = mine[0];
        assert_eq!(r.scope.as_str(), "fanout", "{round}");
        assert_eq!(
            r.metadata.get("child"),
            Some(&serde_json::json!(i)),
            "{round}"
        );
        assert_eq!(r.provenance.run, Some(run), "{round}");
        assert_eq!(
            r.provenance.task,
            Some(child.id),
            "{round}: written by child{i}"
        );
        assert_eq!(
            child.output.as_ref().unwrap()["memory"],
            r.id.to_string(),
            "{round}: child{i}'s output names its record"
        );
    }

    // the audit chain verifies; no memory write is audited twice or for a record that does
    // not exist
    let audit = store.audit_log();
    let report = block_on(audit.verify(None)).unwrap();
    assert!(report.is_intact(), "{round}: {:?}", report.problems);
    let entries = block_on(audit.entries()).unwrap();
    let audited_writes = audited_memory_writes(store_path);
    for (memory, n) in &audited_writes {
        assert!(
            lineages.contains(memory),
            "{round}: audited write of {memory} exists"
        );
        assert_eq!(*n, 1, "{round}: the write of {memory} is audited once");
    }

    // one approval was asked (a request repeated after a crash reuses it), decided by alice,
    // and redeemed by this run; every approval-needed notice names it
    let requested: BTreeSet<_> = entries
        .iter()
        .filter_map(|e| match &e.event {
            AuditEvent::ApprovalRequested { approval, .. } => Some(*approval),
            _ => None,
        })
        .collect();
    assert_eq!(
        requested.len(),
        1,
        "{round}: one approval asked: {requested:?}"
    );
    let approval = *requested.iter().next().unwrap();
    let request = block_on(store.approval_store().get(approval))
        .unwrap()
        .unwrap();
    match &request.state {
        ApprovalState::Redeemed { decision, .. } => {
            assert_eq!(decision.by, HumanId::from_name("alice"), "{round}")
        }
        other => panic!("{round}: the approval is {other:?}"),
    }
    let mail_task = task("mail");
    let mail_key = IdempotencyKey::for_call(run, mail_task.id, 0).to_string();
    let approved_calls: Vec<_> = mail_task
        .journal
        .iter()
        .filter(|j| matches!(&j.record, CallRecord::Approved { approval: a, .. } if *a == approval))
        .collect();
    for (kind, task, about, _) in &world.notifications {
        if kind == "approval_needed" {
            assert_eq!(task.as_deref(), Some("mail"), "{round}");
            assert_eq!(
                about.as_deref(),
                Some(approval.to_string().as_str()),
                "{round}"
            );
        }
    }
    let unknown: Vec<&Notice> = world
        .notifications
        .iter()
        .filter(|n| n.0 == "outcome_unknown")
        .collect();
    let escalations: Vec<&String> = entries
        .iter()
        .filter_map(|e| match &e.event {
            AuditEvent::Escalated {
                run: Some(r),
                reason,
                ..
            } if *r == run => Some(reason),
            _ => None,
        })
        .collect();
    // every mail carried the mail call's key and the children's total
    for (key, body) in &world.mails {
        assert_eq!(key, &mail_key, "{round}: the mail came from the mail call");
        assert_eq!(body["children"], CHILDREN, "{round}");
        assert_eq!(
            body["total"],
            100 * CHILDREN * (CHILDREN + 1) / 2,
            "{round}"
        );
    }

    let end = match (&runs[0].status, finished) {
        (RunStatus::Completed, Finished::Completed) => {
            // the mail was sent exactly once, on the approval, and the run recorded it
            assert_eq!(world.mails.len(), 1, "{round}: one mail: {:?}", world.mails);
            assert_eq!(approved_calls.len(), 1, "{round}: {:?}", mail_task.journal);
            assert!(
                matches!(
                    &approved_calls[0].record,
                    CallRecord::Approved {
                        result: Some(_),
                        ..
                    }
                ),
                "{round}: the mail call ran on the approval"
            );
            assert_eq!(mail_task.status, TaskStatus::Completed, "{round}");
            assert!(
                unknown.is_empty(),
                "{round}: nothing is unknown: {unknown:?}"
            );
            assert!(
                escalations.is_empty(),
                "{round}: no escalation: {escalations:?}"
            );
            FanOutEnd::Completed
        }
        (RunStatus::Failed { reason }, Finished::Failed(stderr)) => {
            // the only failure a kill may cause: the approved, non-idempotent mail was
            // interrupted after the run marked it started, so it is not retried; the founder
            // is told, once, and the run fails with the escalation
            assert!(
                reason.contains("task `mail` failed")
                    && reason.contains("outcome of `mail.send` unknown"),
                "{round}: the run failed for an unknown mail outcome: {reason} ({stderr})"
            );
            assert!(
                world.mails.len() <= 1,
                "{round}: at most one mail: {:?}",
                world.mails
            );
            assert_eq!(mail_task.status, TaskStatus::Failed, "{round}");
            assert!(
                matches!(
                    mail_task.journal.first().map(|j| &j.record),
                    Some(CallRecord::Failed { .. })
                ),
                "{round}: the interrupted mail is journaled as failed: {:?}",
                mail_task.journal
            );
            assert!(
                approved_calls.is_empty(),
                "{round}: {:?}",
                mail_task.journal
            );
            assert_eq!(
                unknown.len(),
                1,
                "{round}: the founder hears of it once: {:?}",
                world.notifications
            );
            assert_eq!(unknown[0].1.as_deref(), Some("mail"), "{round}");
            assert!(
                escalations.len() == 1 && escalations[0].contains("outcome of `mail.send` unknown"),
                "{round}: the failure is escalated in the audit log: {escalations:?}"
            );
            FanOutEnd::OutcomeUnknown {
                mails: world.mails.len(),
            }
        }
        (status, finished) => panic!("{round}: the run ended {status:?}, the worker {finished:?}"),
    };

    // no reservation left open, every effect committed once: the cost committed is the
    // ledger effects' cost (each child's once), the tool calls between the effects and the
    // invocations
    let ledger_budget = store.budget_ledger(Arc::new(SystemClock));
    assert_eq!(
        ledger_budget.outstanding().unwrap(),
        0,
        "{round}: no reservation open"
    );
    let usage = block_on(ledger_budget.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    let effects_cost: i64 = world.log.effects.values().map(|(_, c)| c).sum();
    assert_eq!(
        usage.committed.cost.minor(),
        effects_cost,
        "{round}: each effect's cost committed once"
    );
    let sent = usize::from(end == FanOutEnd::Completed);
    assert!(
        usage.committed.tool_calls as usize >= CHILDREN as usize + sent
            && usage.committed.tool_calls as usize <= world.log.invocations.len(),
        "{round}: committed tool calls {} for {} invocations",
        usage.committed.tool_calls,
        world.log.invocations.len()
    );
    // every write is audited (a write repeated after a kill between the store and the audit
    // log is audited by the repeat)
    for r in &records {
        assert!(
            audited_writes.contains_key(&r.id),
            "{round}: the write of {} is audited",
            r.id
        );
    }
    eprintln!(
        "{round}: {end:?}; {} invocations ({} deduplicated), {} of {} memory writes audited",
        world.log.invocations.len(),
        world.log.invocations.iter().filter(|i| i.2).count(),
        audited_writes.len(),
        records.len()
    );
    end
}

/// What the audit log says was written to memory: record -> how many `MemoryWritten`.
fn audited_memory_writes(store_path: &Path) -> BTreeMap<aios_core::MemoryId, usize> {
    let store = SqliteStore::open(store_path).unwrap();
    let mut writes = BTreeMap::new();
    for e in block_on(store.audit_log().entries()).unwrap() {
        if let AuditEvent::MemoryWritten { memory, .. } = e.event {
            *writes.entry(memory).or_insert(0) += 1;
        }
    }
    writes
}

/// Every memory record a fan-out run wrote is audited once, even when the worker was killed
/// after the store wrote the record and before its `MemoryWritten` entry was appended.
///
/// The kill lands after child 1's record is in the store (`memory` line, the worker holds
/// there), before `Memory::commit` appends the audit entry and before the journal records the
/// write. The next incarnation repeats the `remember` under the same derived id;
/// `Memory::remember` finds the identical record, sees that its write is not in the audit
/// log, and audits it then (it was found by this test: four `MemoryWritten` entries for five
/// records before the fix).
#[test]
fn a_memory_write_interrupted_before_its_audit_entry_is_still_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let service = dir.path().join("service.db");
    let mut schedule = std::iter::once(Kill::AfterMemoryWrites(1));
    let (killed, finished) = drive_in(Mode::FanOut, &store, &service, &mut schedule, 1);
    assert_eq!(killed, 1, "the kill landed after the first memory write");
    let round = "killed after the first memory write";
    assert_eq!(
        check_fanout(&store, &service, &finished, round),
        FanOutEnd::Completed
    );
    let records = block_on(
        SqliteStore::open(&store)
            .unwrap()
            .memory_store()
            .scan(None, 100),
    )
    .unwrap();
    let writes = audited_memory_writes(&store);
    for r in &records {
        assert_eq!(
            writes.get(&r.id),
            Some(&1),
            "the write of `{}` ({}) is audited once: {writes:?}",
            r.content,
            r.id
        );
    }
}

/// SQLITE-RECOVER, adversarial: a fan-out run (a planner spawning five children that each
/// apply a ledger effect and write a memory record, interleaved; then one approved,
/// non-idempotent mail) is killed at seeded random points, at least thirty times over several
/// runs. After every run, counted from outside the worker: each child's effect happened
/// once, each child's memory record exists once, the approval was used once, the mail went
/// out once (or, when a kill interrupted it, at most once with an outcome-unknown escalation
/// and the run failed), no reservation is open and the audit chain verifies.
#[test]
fn killed_thirty_times_a_fan_out_run_never_repeats_an_effect_or_a_memory_write() {
    const SEED: u64 = 0x00A1_05C2_A5E5;
    const KILLS: usize = 30;
    const PER_RUN: usize = 6;
    let mut schedule = random_kills(SEED);
    let (mut killed, mut ends) = (0, vec![]);
    for r in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.db");
        let service = dir.path().join("service.db");
        let round = format!("seed {SEED:#x}, run {r}");
        let (k, finished) = drive_in(Mode::FanOut, &store, &service, &mut schedule, PER_RUN);
        killed += k;
        ends.push(check_fanout(&store, &service, &finished, &round));
        if killed >= KILLS {
            break;
        }
    }
    eprintln!("{killed} kills: {ends:?}");
    assert!(killed >= KILLS, "only {killed} of {KILLS} kills landed");
    assert!(
        ends.contains(&FanOutEnd::Completed),
        "some run completed despite its kills: {ends:?}"
    );
}

/// The mail is irreversible and its service honours no idempotency key, so a kill after the
/// approved mail went out (the `effect` line; the run had not recorded it) must not send it
/// again: the next incarnation finds the call marked started on its approval, tells the
/// founder the outcome is unknown and fails the run with an escalation. One mail went out.
#[test]
fn an_approved_mail_interrupted_after_it_went_out_is_escalated_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let service = dir.path().join("service.db");
    // the first incarnation runs until it parks (it prints fewer lines than this); the
    // second approves and is killed once the service sent the mail
    let mut schedule = [Kill::AfterLines(1000), Kill::AfterEffects(1)].into_iter();
    let (killed, finished) = drive_in(Mode::FanOut, &store, &service, &mut schedule, 1);
    assert_eq!(killed, 1, "the kill landed after the mail");
    assert!(matches!(finished, Finished::Failed(_)), "{finished:?}");
    assert_eq!(
        check_fanout(&store, &service, &finished, "killed after the mail"),
        FanOutEnd::OutcomeUnknown { mails: 1 }
    );
}

// ---------------------------------------------------------------------------------------
// Many workers on one file: `Orchestrator::work` in several processes, killed and restarted.

fn drain_worker(store: &Path, service: &Path, submit: Option<usize>) -> Child {
    let mut cmd = Command::new(WORKER);
    cmd.arg(store)
        .arg(service)
        .env("AIOS_CRASH_WORKER_MODE", "drain")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(n) = submit {
        cmd.env("AIOS_CRASH_WORKER_SUBMIT", n.to_string());
    }
    cmd.spawn().unwrap()
}

#[test]
fn three_worker_processes_killed_at_random_drain_every_run_with_every_effect_once() {
    const RUNS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let service = dir.path().join("service.db");
    let submitted = drain_worker(&store, &service, Some(RUNS))
        .wait_with_output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    // seeded kills: a worker is killed every 40..240 ms and replaced, six times
    let mut seed: u64 = 0x5eed_0fd7_a1a1;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    let mut workers: Vec<Child> = (0..3)
        .map(|_| drain_worker(&store, &service, None))
        .collect();
    let mut kills = 0;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(40 + next(200)));
        let i = next(3) as usize;
        if workers[i].try_wait().unwrap().is_none() {
            workers[i].kill().unwrap();
            kills += 1;
        }
        workers[i].wait().unwrap();
        workers[i] = drain_worker(&store, &service, None);
    }
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("{kills} workers killed");

    let s = SqliteStore::open(&store).unwrap();
    s.check_integrity().unwrap();
    let runs = block_on(s.checkpoint_store().list(false)).unwrap();
    assert_eq!(runs.len(), RUNS);
    for r in &runs {
        assert_eq!(r.status, RunStatus::Completed, "run {}", r.run);
    }
    // every step of every run happened, each exactly once
    let log = service_log(&service);
    assert_eq!(log.effects.len(), RUNS * STEPS as usize);
    let mut performed: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, _, deduplicated) in &log.invocations {
        if !deduplicated {
            *performed.entry(key.as_str()).or_default() += 1;
        }
    }
    assert!(
        performed.values().all(|n| *n == 1),
        "an effect was performed twice: {:?}",
        performed
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    // no reservation left open, the budget within its limit, the chain intact
    let ledger = s.budget_ledger(Arc::new(SystemClock));
    assert_eq!(ledger.outstanding().unwrap(), 0, "reservations left open");
    let org = block_on(ledger.usage(BudgetKey::Organisation))
        .unwrap()
        .unwrap();
    if let Some(limit) = org.limits.limits.cost {
        assert!(org.committed.cost <= limit);
    }
    assert!(block_on(s.audit_log().verify(None)).unwrap().is_intact());
}
