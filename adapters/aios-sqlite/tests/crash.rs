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

use aios_core::{ApprovalOutcome, AuditEvent, AuditLogExt, HumanId, Money, Outcome, SystemClock};
use aios_governance::{ApprovalState, ApprovalStore, BudgetKey, BudgetLedger};
use aios_orchestrator::{CallRecord, CheckpointStore, RunStatus};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

const WORKER: &str = env!("CARGO_BIN_EXE_aios-sqlite-crash-worker");
const STEPS: i64 = 6;

/// When to kill one incarnation of the worker.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// After it printed this many lines (its progress), at once.
    AfterLines(usize),
    /// After it printed this many `effect` lines: the service performed the effect and the
    /// run has not recorded it yet (the worker holds there).
    AfterEffects(usize),
    /// After this long.
    After(Duration),
}

/// What happened to one incarnation.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Killed,
    Exited(i32),
}

fn spawn(store: &Path, service: &Path, hold: bool) -> Child {
    let mut cmd = Command::new(WORKER);
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
fn incarnation(store: &Path, service: &Path, kill: Option<Kill>) -> (Ended, String) {
    let mut child = spawn(
        store,
        service,
        matches!(kill, Some(Kill::AfterLines(_) | Kill::AfterEffects(_))),
    );
    let stdout = child.stdout.take().expect("piped stdout");
    let killed = match kill {
        Some(k @ (Kill::AfterLines(n) | Kill::AfterEffects(n))) => {
            let counts = |line: &str| match k {
                Kill::AfterEffects(_) => line.starts_with("effect "),
                _ => true,
            };
            let mut lines = BufReader::new(stdout).lines();
            let mut seen = 0;
            while seen < n {
                match lines.next() {
                    Some(Ok(line)) if counts(&line) => seen += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            // SIGKILL on Unix; an error means it had exited already
            let killed = seen == n && child.kill().is_ok();
            drop(lines);
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
    let mut killed = 0;
    for _ in 0..(budget + 20) {
        let kill = if killed < budget {
            schedule.next()
        } else {
            None
        };
        let ended = incarnation(store, service, kill);
        eprintln!("{kill:?}: {:?}", ended.0);
        match ended {
            (Ended::Killed, _) => killed += 1,
            // completed: the kills left are for the next run
            (Ended::Exited(0), _) => return killed,
            // parked: the next incarnation approves
            (Ended::Exited(3), _) => {}
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
                // the loser of a race: refused the lease or the approval, nothing done
                Some(1) if err.contains("lease") || err.contains("already") => {}
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
