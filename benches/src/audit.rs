//! AUD-APPEND and AUD-VERIFY.

use aios::core::{
    AuditEvent, AuditLog, AuditRecord, IdGen, InMemoryAuditLog, ManualClock, Outcome, Principal,
    RunId, TaskId,
};

use crate::{time, Config, Goal, Measurement};

/// A realistic event mix: task completions, model calls and notes.
pub fn sample_records(n: usize) -> Vec<AuditRecord> {
    let ids = IdGen::new(ManualClock::default(), 7);
    let run: RunId = ids.next();
    (0..n)
        .map(|i| {
            let task: TaskId = ids.next();
            let event = match i % 3 {
                0 => AuditEvent::TaskFinished {
                    run,
                    task,
                    outcome: Outcome::Succeeded,
                    detail: None,
                },
                1 => AuditEvent::Note {
                    text: format!("step {i} done"),
                },
                _ => AuditEvent::TaskStarted {
                    run,
                    task,
                    role: ids.next(),
                    agent: ids.next(),
                },
            };
            AuditRecord::new(Principal::System, event)
        })
        .collect()
}

/// Appends `records` through the async port, one call per event.
pub fn append_all(log: &InMemoryAuditLog, records: Vec<AuditRecord>) {
    futures::executor::block_on(async {
        for r in records {
            let _ = log.append(r).await;
        }
    });
}

/// Runs the audit workloads.
pub fn run(config: &Config) -> Vec<Measurement> {
    let n = config.pick(200_000, 1_000_000);
    let records = sample_records(n);
    let log = InMemoryAuditLog::new();
    let (d, ()) = time(|| append_all(&log, records));
    let append_rate = n as f64 / d.as_secs_f64();

    let verify_n = 1_000_000;
    let records = sample_records(verify_n - n);
    append_all(&log, records);
    let head = log.verify_sync(None).head;
    let (d, report) = time(|| log.verify_sync(Some(head)));
    let verify_s = d.as_secs_f64();
    let ok = report.is_intact() && report.checked == verify_n as u64;
    vec![
        Measurement::new(
            "AUD-APPEND",
            "throughput",
            append_rate,
            "events/s",
            Goal::AtLeast(1_000_000.0),
        ),
        Measurement::new(
            "AUD-VERIFY",
            if ok { "1M events" } else { "1M FAILED" },
            verify_s * 1e3,
            "ms",
            Goal::AtMost(1000.0),
        ),
    ]
}
