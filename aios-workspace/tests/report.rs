//! The operations report against generated audit logs whose counts are known by
//! construction (property test), plus the window and the Markdown and JSON forms.

use std::collections::BTreeMap;

use aios_core::{
    AgentId, AnchorId, ApprovalId, ApprovalOutcome, AuditEvent, AuditLog, AuditRecord, ConnectorId,
    DecisionKind, EffectClass, IdempotencyKey, InMemoryAuditLog, ModelId, Money, Outcome,
    PathwayId, Principal, RoleId, RunId, TaskId, Timestamp, TokenUsage,
};
use aios_workspace::{report_from_log, Names, OpsReport, ReportBuilder, Targets, Window};
use proptest::prelude::*;

const ROLES: [&str; 3] = ["researcher", "editor", "bookkeeper"];
const PATHWAYS: [&str; 3] = ["desk", "mail", "pay"];
const WORKFLOWS: [&str; 2] = ["weekly", "invoices"];

#[derive(Debug, Clone)]
struct Action {
    pathway: usize,
    kind: u8,   // 0 allow, 1 approval, 2 escalate, 3 deny
    answer: u8, // for approvals: 0 approved, 1 edited, 2 rejected, 3 expired
    latency_s: i64,
}

#[derive(Debug, Clone)]
struct Call {
    tokens: u64,
    cost: i64,
    attempt: u32,
    failed: bool,
}

#[derive(Debug, Clone)]
struct Run {
    workflow: usize,
    role: usize,
    actions: Vec<Action>,
    calls: Vec<Call>,
    outcome: u8, // 0 succeeded, 1 failed, 2 parked (not final)
    before_window: bool,
}

fn action() -> impl Strategy<Value = Action> {
    (0..PATHWAYS.len(), 0u8..4, 0u8..4, 1i64..20_000).prop_map(
        |(pathway, kind, answer, latency_s)| Action {
            pathway,
            kind,
            answer,
            latency_s,
        },
    )
}

fn call() -> impl Strategy<Value = Call> {
    (0u64..5000, 0i64..300, 1u32..4, any::<bool>()).prop_map(|(tokens, cost, attempt, failed)| {
        Call {
            tokens,
            cost,
            attempt,
            failed,
        }
    })
}

fn run() -> impl Strategy<Value = Run> {
    (
        0..WORKFLOWS.len(),
        0..ROLES.len(),
        prop::collection::vec(action(), 0..8),
        prop::collection::vec(call(), 0..5),
        0u8..3,
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(workflow, role, actions, calls, outcome, before_window)| Run {
                workflow,
                role,
                actions,
                calls,
                outcome,
                before_window,
            },
        )
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_timestamp(s, 0).unwrap_or_default()
}

const WINDOW_START: i64 = 1_000_000;

/// Writes the runs as the orchestrator would, one after another in time.
async fn write(runs: &[Run]) -> InMemoryAuditLog {
    let log = InMemoryAuditLog::new();
    let mut t_before = 0i64;
    let mut t_in = WINDOW_START;
    for (ri, r) in runs.iter().enumerate() {
        let t = if r.before_window {
            &mut t_before
        } else {
            &mut t_in
        };
        let put = |t: &mut i64, actor: Principal, event: AuditEvent| {
            *t += 1;
            AuditRecord::new(actor, event).at(at(*t))
        };
        let run = RunId::from_name(&format!("run-{ri}"));
        let task = TaskId::from_name(&format!("task-{ri}"));
        let agent = AgentId::from_name(ROLES[r.role]);
        let me = Principal::Agent(agent);
        let mut recs = vec![
            put(
                t,
                Principal::System,
                AuditEvent::RunStarted {
                    run,
                    workflow: WORKFLOWS[r.workflow].into(),
                    governance_version: 1,
                },
            ),
            put(
                t,
                Principal::System,
                AuditEvent::TaskStarted {
                    run,
                    task,
                    role: RoleId::from_name(ROLES[r.role]),
                    agent,
                },
            ),
        ];
        for (ai, a) in r.actions.iter().enumerate() {
            let action = format!("act.{ai}");
            let decision = [
                DecisionKind::Allow,
                DecisionKind::RequireApproval,
                DecisionKind::Escalate,
                DecisionKind::Deny,
            ][a.kind as usize];
            let rules = if decision == DecisionKind::Deny {
                vec![format!("rule-{}", a.pathway)]
            } else {
                vec![]
            };
            recs.push(put(
                t,
                me,
                AuditEvent::DecisionMade {
                    run: Some(run),
                    pathway: Some(PathwayId::from_name(PATHWAYS[a.pathway])),
                    action: action.clone(),
                    decision,
                    rules,
                    model_version: 1,
                },
            ));
            if decision == DecisionKind::RequireApproval {
                let approval = ApprovalId::from_name(&format!("ap-{ri}-{ai}"));
                recs.push(put(
                    t,
                    Principal::System,
                    AuditEvent::ApprovalRequested {
                        approval,
                        anchor: AnchorId::from_name("founder"),
                        run: Some(run),
                        action,
                        expires_at: at(*t + 100_000),
                    },
                ));
                *t += a.latency_s - 1;
                let outcome = [
                    ApprovalOutcome::Approved,
                    ApprovalOutcome::Edited,
                    ApprovalOutcome::Rejected,
                    ApprovalOutcome::Expired,
                ][a.answer as usize];
                recs.push(put(
                    t,
                    Principal::System,
                    AuditEvent::ApprovalDecided {
                        approval,
                        by: None,
                        outcome,
                        reason: None,
                    },
                ));
            }
        }
        for (ci, c) in r.calls.iter().enumerate() {
            let outcome = if c.failed {
                Outcome::Failed
            } else {
                Outcome::Succeeded
            };
            if ci % 2 == 0 {
                recs.push(put(
                    t,
                    me,
                    AuditEvent::ModelCalled {
                        run,
                        task,
                        model: ModelId::new("m"),
                        attempt: c.attempt,
                        usage: TokenUsage::new(c.tokens, 0),
                        cost: Money::from_minor(c.cost),
                        outcome,
                        detail: None,
                        queued_ms: None,
                    },
                ));
            } else {
                recs.push(put(
                    t,
                    me,
                    AuditEvent::ConnectorInvoked {
                        run,
                        task,
                        connector: ConnectorId::new("c"),
                        operation: "op".into(),
                        effect: EffectClass::ReadOnly,
                        idempotency_key: IdempotencyKey::new(format!("k-{ri}-{ci}")),
                        attempt: c.attempt,
                        outcome,
                        cost: Money::from_minor(c.cost),
                    },
                ));
            }
        }
        if r.outcome < 2 {
            let outcome = if r.outcome == 0 {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            recs.push(put(
                t,
                Principal::System,
                AuditEvent::RunFinished {
                    run,
                    outcome,
                    detail: None,
                },
            ));
        }
        for rec in recs {
            let _ = log.append(rec).await;
        }
    }
    log
}

fn report(log: &InMemoryAuditLog, window: Window) -> OpsReport {
    let names = Names::from_ids(&aios_workspace::Ids {
        roles: ROLES
            .iter()
            .map(|r| (r.to_string(), RoleId::from_name(r)))
            .collect(),
        agents: ROLES
            .iter()
            .map(|r| (r.to_string(), AgentId::from_name(r)))
            .collect(),
        pathways: PATHWAYS
            .iter()
            .map(|p| (p.to_string(), PathwayId::from_name(p)))
            .collect(),
        ..Default::default()
    });
    let targets = Targets {
        min_autonomy_rate: Some(0.5),
        max_cost_per_completed_run: Some(Money::from_minor(500)),
        ..Targets::default()
    };
    futures::executor::block_on(report_from_log(
        log,
        ReportBuilder::new(window, targets, Some(Money::from_minor(10_000)), names),
    ))
    .unwrap_or_default()
}

fn nearest_rank(mut v: Vec<u64>, p: f64) -> Option<u64> {
    v.sort_unstable();
    if v.is_empty() {
        return None;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_report_counts_what_was_generated(runs in prop::collection::vec(run(), 0..25)) {
        let log = futures::executor::block_on(write(&runs));
        let window = Window { from: at(WINDOW_START), to: at(i64::from(i32::MAX)) };
        let rep = report(&log, window);
        let inside: Vec<&Run> = runs.iter().filter(|r| !r.before_window).collect();

        let actions: Vec<&Action> = inside.iter().flat_map(|r| &r.actions).collect();
        let count = |k: u8| actions.iter().filter(|a| a.kind == k).count() as u64;
        prop_assert_eq!(rep.total.actions, actions.len() as u64);
        prop_assert_eq!(rep.total.allowed, count(0));
        prop_assert_eq!(rep.total.approval_required, count(1));
        prop_assert_eq!(rep.total.escalated, count(2));
        prop_assert_eq!(rep.total.denied, count(3));
        prop_assert_eq!(rep.total.approvals_requested, count(1));
        let human = count(1) + count(2);
        prop_assert_eq!(rep.total.autonomy_rate, (count(0) + human > 0).then(|| count(0) as f64 / (count(0) + human) as f64));

        for (pi, p) in PATHWAYS.iter().enumerate() {
            let mine: Vec<&&Action> = actions.iter().filter(|a| a.pathway == pi).collect();
            let s = rep.pathways.get(*p).cloned().unwrap_or_default();
            prop_assert_eq!(s.actions, mine.len() as u64);
            let answers = |x: u8| mine.iter().filter(|a| a.kind == 1 && a.answer == x).count() as u64;
            prop_assert_eq!(s.approved.count, answers(0));
            prop_assert_eq!(s.edited.count, answers(1));
            prop_assert_eq!(s.rejected.count, answers(2));
            prop_assert_eq!(s.expired.count, answers(3));
            prop_assert_eq!(s.denials_by_rule.get(&format!("rule-{pi}")).copied().unwrap_or(0), mine.iter().filter(|a| a.kind == 3).count() as u64);
            let lat: Vec<u64> = mine.iter().filter(|a| a.kind == 1 && a.answer != 3).map(|a| a.latency_s as u64 * 1000).collect();
            prop_assert_eq!(s.approval_latency_p95_ms, nearest_rank(lat.clone(), 0.95));
            prop_assert_eq!(s.approval_latency_p50_ms, nearest_rank(lat, 0.50));
        }

        for (ri, r) in ROLES.iter().enumerate() {
            let calls: Vec<&Call> = inside.iter().filter(|x| x.role == ri).flat_map(|x| &x.calls).collect();
            let s = rep.roles.get(*r).cloned().unwrap_or_default();
            let tokens: u64 = inside.iter().filter(|x| x.role == ri).flat_map(|x| x.calls.iter().step_by(2)).map(|c| c.tokens).sum();
            prop_assert_eq!(s.tokens, tokens);
            prop_assert_eq!(s.cost.minor(), calls.iter().map(|c| c.cost).sum::<i64>());
            prop_assert_eq!(s.failures.count, calls.iter().filter(|c| c.failed).count() as u64);
            prop_assert_eq!(s.retries, calls.iter().filter(|c| c.attempt > 1).count() as u64);
            // agents are one per role here
            prop_assert_eq!(rep.agents.get(*r).map(|a| a.cost), rep.roles.get(*r).map(|a| a.cost));
        }

        for (wi, w) in WORKFLOWS.iter().enumerate() {
            let mine: Vec<&&Run> = inside.iter().filter(|r| r.workflow == wi).collect();
            let s = rep.workflows.get(*w).cloned().unwrap_or_default();
            let ok = mine.iter().filter(|r| r.outcome == 0).count() as u64;
            prop_assert_eq!(s.runs_completed, ok);
            prop_assert_eq!(s.runs_failed.count, mine.iter().filter(|r| r.outcome == 1).count() as u64);
            let cost: i64 = mine.iter().flat_map(|r| &r.calls).map(|c| c.cost).sum();
            prop_assert_eq!(s.cost_per_completed_run, (ok > 0).then(|| Money::from_minor(cost / ok as i64)));
        }
        let cost: i64 = inside.iter().flat_map(|r| &r.calls).map(|c| c.cost).sum();
        prop_assert_eq!(rep.total.budget_burn, Some(cost as f64 / 10_000.0));

        // the series adds up to the totals, one bucket per day, contiguous, in order
        let sum = |f: &dyn Fn(&aios_workspace::Bucket) -> u64| rep.series.iter().map(f).sum::<u64>();
        prop_assert_eq!(sum(&|b| b.actions), rep.total.actions);
        prop_assert_eq!(sum(&|b| b.allowed), rep.total.allowed);
        prop_assert_eq!(sum(&|b| b.to_a_human), rep.total.approval_required + rep.total.escalated);
        prop_assert_eq!(sum(&|b| b.approvals_answered), rep.total.approved.count + rep.total.edited.count + rep.total.rejected.count);
        prop_assert_eq!(sum(&|b| b.runs_completed), rep.total.runs_completed);
        prop_assert_eq!(rep.series.iter().map(|b| b.cost.minor()).sum::<i64>(), rep.total.cost.minor());
        for pair in rep.series.windows(2) {
            prop_assert_eq!((pair[1].start - pair[0].start).num_seconds(), 86_400);
        }
        for b in &rep.series {
            prop_assert_eq!(b.start.timestamp() % 86_400, 0);
            prop_assert_eq!(b.autonomy_rate, (b.allowed + b.to_a_human > 0).then(|| b.allowed as f64 / (b.allowed + b.to_a_human) as f64));
            prop_assert!(b.approval_latency_p50_ms <= b.approval_latency_p95_ms);
        }
        prop_assert_eq!(rep.series.is_empty(), rep.entries_counted == 0);

        // the typed value survives JSON, and the Markdown names every pathway seen
        let back: OpsReport = serde_json::from_str(&rep.to_json()).unwrap_or_default();
        prop_assert_eq!(&back.total.checks, &rep.total.checks);
        // (floats through JSON may lose their last bit, so the counts are compared)
        let counts = |r: &OpsReport| r.series.iter().map(|b| (b.start, b.actions, b.allowed, b.to_a_human, b.approvals_answered, b.approval_latency_p95_ms, b.cost, b.runs_completed)).collect::<Vec<_>>();
        prop_assert_eq!(counts(&back), counts(&rep));
        let md = rep.to_markdown();
        for p in rep.pathways.keys() {
            let row = format!("| {p} |");
            prop_assert!(md.contains(&row), "{} missing", row);
        }
    }
}

#[test]
fn evidence_cites_sequence_numbers_of_the_log() {
    let runs = vec![Run {
        workflow: 0,
        role: 0,
        actions: vec![
            Action {
                pathway: 1,
                kind: 1,
                answer: 0,
                latency_s: 60,
            },
            Action {
                pathway: 1,
                kind: 1,
                answer: 2,
                latency_s: 600,
            },
        ],
        calls: vec![],
        outcome: 0,
        before_window: false,
    }];
    let log = futures::executor::block_on(write(&runs));
    let rep = report(&log, Window::all());
    let mail = rep.pathways.get("mail").cloned().unwrap_or_default();
    let entries =
        futures::executor::block_on(aios_core::AuditLogExt::entries(&log)).unwrap_or_default();
    for seq in mail.approved.seqs.iter().chain(&mail.rejected.seqs) {
        assert!(matches!(
            entries[*seq as usize].event,
            AuditEvent::ApprovalDecided { .. }
        ));
    }
    assert_eq!(mail.approved.seqs.len() + mail.rejected.seqs.len(), 2);
    assert_eq!(mail.approval_latency_p95_ms, Some(600_000));
    assert_eq!(mail.rejection_rate, Some(0.5));
    let checks: BTreeMap<_, _> = rep
        .total
        .checks
        .iter()
        .map(|c| (c.target.as_str(), c.met))
        .collect();
    assert_eq!(checks.get("min_autonomy_rate"), Some(&Some(false)));
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_default()
}

/// A log over eight days with known figures per day: Monday 30 November 2026, nothing on
/// Tuesday, Wednesday 2 December, then Monday 7 December.
async fn days_log() -> InMemoryAuditLog {
    let log = InMemoryAuditLog::new();
    let run = RunId::from_name("r");
    let task = TaskId::from_name("t");
    let me = Principal::Agent(AgentId::from_name("researcher"));
    let decision = |kind: DecisionKind, action: &str| AuditEvent::DecisionMade {
        run: Some(run),
        pathway: Some(PathwayId::from_name("desk")),
        action: action.into(),
        decision: kind,
        rules: vec![],
        model_version: 1,
    };
    let done = || AuditEvent::RunFinished {
        run,
        outcome: Outcome::Succeeded,
        detail: None,
    };
    let approval = ApprovalId::from_name("a");
    let events = vec![
        (
            "2026-11-29T23:59:59Z",
            me,
            decision(DecisionKind::Allow, "before"),
        ),
        (
            "2026-11-30T10:00:00Z",
            me,
            decision(DecisionKind::Allow, "x"),
        ),
        (
            "2026-11-30T10:00:01Z",
            me,
            decision(DecisionKind::Allow, "x"),
        ),
        (
            "2026-11-30T10:00:02Z",
            me,
            decision(DecisionKind::Allow, "x"),
        ),
        (
            "2026-11-30T10:00:03Z",
            me,
            decision(DecisionKind::RequireApproval, "pay"),
        ),
        (
            "2026-11-30T10:00:03Z",
            Principal::System,
            AuditEvent::ApprovalRequested {
                approval,
                anchor: AnchorId::from_name("founder"),
                run: Some(run),
                action: "pay".into(),
                expires_at: ts("2026-12-10T00:00:00Z"),
            },
        ),
        (
            "2026-11-30T11:00:00Z",
            me,
            AuditEvent::ModelCalled {
                run,
                task,
                model: ModelId::new("m"),
                attempt: 1,
                usage: TokenUsage::new(10, 0),
                cost: Money::from_minor(100),
                outcome: Outcome::Succeeded,
                detail: None,
                queued_ms: None,
            },
        ),
        ("2026-11-30T23:59:59Z", Principal::System, done()),
        (
            "2026-12-02T09:00:03Z",
            Principal::System,
            AuditEvent::ApprovalDecided {
                approval,
                by: None,
                outcome: ApprovalOutcome::Approved,
                reason: None,
            },
        ),
        (
            "2026-12-02T09:10:00Z",
            me,
            decision(DecisionKind::Allow, "pay"),
        ),
        (
            "2026-12-02T09:20:00Z",
            me,
            AuditEvent::ConnectorInvoked {
                run,
                task,
                connector: ConnectorId::new("bank"),
                operation: "pay".into(),
                effect: EffectClass::Irreversible,
                idempotency_key: IdempotencyKey::new("k"),
                attempt: 1,
                outcome: Outcome::Succeeded,
                cost: Money::from_minor(51),
            },
        ),
        ("2026-12-02T10:00:00Z", Principal::System, done()),
        ("2026-12-02T11:00:00Z", Principal::System, done()),
        (
            "2026-12-07T00:00:00Z",
            me,
            decision(DecisionKind::Deny, "y"),
        ),
    ];
    for (t, actor, event) in events {
        let _ = log.append(AuditRecord::new(actor, event).at(ts(t))).await;
    }
    log
}

fn series_report(log: &InMemoryAuditLog, interval: aios_workspace::Interval) -> OpsReport {
    let window = Window {
        from: ts("2026-11-30T00:00:00Z"),
        to: ts("2026-12-31T00:00:00Z"),
    };
    let builder =
        ReportBuilder::new(window, Targets::default(), None, Names::default()).interval(interval);
    futures::executor::block_on(report_from_log(log, builder)).unwrap_or_default()
}

#[test]
fn the_series_counts_each_day_and_fills_the_quiet_ones() {
    let log = futures::executor::block_on(days_log());
    let rep = series_report(&log, aios_workspace::Interval::Day);
    let starts: Vec<String> = rep
        .series
        .iter()
        .map(|b| b.start.format("%m-%d").to_string())
        .collect();
    assert_eq!(
        starts,
        ["11-30", "12-01", "12-02", "12-03", "12-04", "12-05", "12-06", "12-07"],
        "from the first day with an entry in the window to the last, quiet days included"
    );
    let monday = &rep.series[0];
    assert_eq!(
        (monday.actions, monday.allowed, monday.to_a_human),
        (4, 3, 1)
    );
    assert_eq!(monday.autonomy_rate, Some(0.75));
    assert_eq!(monday.cost, Money::from_minor(100));
    assert_eq!(monday.runs_completed, 1, "23:59:59 is still Monday");
    assert_eq!(monday.cost_per_completed_run, Some(Money::from_minor(100)));
    assert_eq!(monday.approvals_answered, 0);
    assert_eq!(monday.approval_latency_p50_ms, None);
    let quiet = &rep.series[1];
    assert_eq!(
        (
            quiet.actions,
            quiet.autonomy_rate,
            quiet.cost_per_completed_run
        ),
        (0, None, None)
    );
    let wednesday = &rep.series[2];
    assert_eq!(
        wednesday.approvals_answered, 1,
        "the answer counts on the day it was given"
    );
    let latency = Some((47 * 3600) * 1000);
    assert_eq!(wednesday.approval_latency_p50_ms, latency);
    assert_eq!(wednesday.approval_latency_p95_ms, latency);
    assert_eq!(wednesday.autonomy_rate, Some(1.0));
    assert_eq!(wednesday.runs_completed, 2);
    assert_eq!(
        wednesday.cost_per_completed_run,
        Some(Money::from_minor(25)),
        "51 / 2, rounded down"
    );
    let last = &rep.series[7];
    assert_eq!(
        (last.actions, last.allowed, last.autonomy_rate),
        (1, 0, None),
        "a denial only"
    );
    let md = rep.to_markdown();
    assert!(md.contains("## Over time"), "{md}");
    assert!(
        md.contains("| 2026-12-02 | 1 | 100.0% | 1 | 169200.0s / 169200.0s | 0.51 | 2 | 0.25 |"),
        "{md}"
    );
    // the totals agree; the entry before the window is in neither
    assert_eq!(rep.total.actions, 6);
    assert_eq!(rep.series.iter().map(|b| b.actions).sum::<u64>(), 6);
}

#[test]
fn weekly_buckets_start_on_monday() {
    let log = futures::executor::block_on(days_log());
    let rep = series_report(&log, aios_workspace::Interval::Week);
    assert_eq!(rep.series.len(), 2);
    assert_eq!(rep.series[0].start, ts("2026-11-30T00:00:00Z"));
    assert_eq!(rep.series[1].start, ts("2026-12-07T00:00:00Z"));
    let w = &rep.series[0];
    assert_eq!(
        (w.actions, w.allowed, w.to_a_human, w.runs_completed),
        (5, 4, 1, 3)
    );
    assert_eq!(w.autonomy_rate, Some(0.8));
    assert_eq!(w.cost, Money::from_minor(151));
    assert_eq!(w.cost_per_completed_run, Some(Money::from_minor(50)));
    assert_eq!(rep.series[1].actions, 1);
}

#[test]
fn entries_years_apart_do_not_fill_a_day_each() {
    let log = InMemoryAuditLog::new();
    let me = Principal::Agent(AgentId::from_name("researcher"));
    for t in ["1990-01-01T00:00:00Z", "2026-01-01T00:00:00Z"] {
        let e = AuditEvent::DecisionMade {
            run: None,
            pathway: None,
            action: "x".into(),
            decision: DecisionKind::Allow,
            rules: vec![],
            model_version: 1,
        };
        let _ = futures::executor::block_on(log.append(AuditRecord::new(me, e).at(ts(t))));
    }
    let builder = ReportBuilder::new(Window::all(), Targets::default(), None, Names::default());
    let rep = futures::executor::block_on(report_from_log(&log, builder)).unwrap_or_default();
    assert_eq!(
        rep.series.len(),
        2,
        "only the days with entries, past MAX_GAP_FILLED days"
    );
    assert!(rep.series[0].start < rep.series[1].start);
}
