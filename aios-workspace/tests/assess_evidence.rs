//! Assessment with an operations report as evidence: Implementation and Operations are
//! judged on what happened.

use aios_core::{
    AgentId, AnchorId, ApprovalId, ApprovalOutcome, AuditEvent, AuditLog, AuditRecord,
    DecisionKind, InMemoryAuditLog, ModelId, Money, Outcome, PathwayId, Principal, RoleId, RunId,
    TaskId, Timestamp, TokenUsage,
};
use aios_workspace::{
    assess, parse, plan, report_from_log, Level, Names, OpsReport, Plan, ReportBuilder, Status,
    ValidateOptions, Window,
};

fn at(s: i64) -> Timestamp {
    Timestamp::from_timestamp(s, 0).unwrap_or_default()
}

struct Month {
    research: u32,
    edits: u32,
    mails_approved: u32,
    mails_rejected: u32,
    runs_ok: u32,
    runs_failed: u32,
    approval_secs: i64,
}

fn log_of(m: &Month) -> InMemoryAuditLog {
    let log = InMemoryAuditLog::new();
    let mut recs = Vec::new();
    let mut t = 0i64;
    let mut rec = |actor: Principal, event: AuditEvent, dt: i64| {
        t += dt;
        recs.push(AuditRecord::new(actor, event).at(at(t)));
    };
    let decide = |role: &str, pathway: &str, decision: DecisionKind, run: RunId, action: &str| {
        (
            Principal::Agent(AgentId::from_name(role)),
            AuditEvent::DecisionMade {
                run: Some(run),
                pathway: Some(PathwayId::from_name(pathway)),
                action: action.into(),
                decision,
                rules: vec![],
                model_version: 1,
            },
        )
    };
    let runs = m.runs_ok + m.runs_failed;
    for i in 0..runs.max(1) {
        let run = RunId::from_name(&format!("run-{i}"));
        rec(
            Principal::System,
            AuditEvent::RunStarted {
                run,
                workflow: "proposal".into(),
                governance_version: 1,
            },
            1,
        );
        for role in ["researcher", "editor", "outreach"] {
            rec(
                Principal::System,
                AuditEvent::TaskStarted {
                    run,
                    task: TaskId::from_name(&format!("{role}-{i}")),
                    role: RoleId::from_name(role),
                    agent: AgentId::from_name(role),
                },
                1,
            );
        }
        if i == 0 {
            for _ in 0..m.research {
                let (a, e) = decide(
                    "researcher",
                    "researcher",
                    DecisionKind::Allow,
                    run,
                    "web.search",
                );
                rec(a, e, 1);
            }
            for _ in 0..m.edits {
                let (a, e) = decide("editor", "editor", DecisionKind::Allow, run, "docs.write");
                rec(a, e, 1);
            }
            for j in 0..(m.mails_approved + m.mails_rejected) {
                let action = format!("mail.send#{j}");
                let (a, e) = decide(
                    "outreach",
                    "outreach",
                    DecisionKind::RequireApproval,
                    run,
                    &action,
                );
                rec(a, e, 1);
                let approval = ApprovalId::from_name(&format!("ap-{j}"));
                rec(
                    Principal::System,
                    AuditEvent::ApprovalRequested {
                        approval,
                        anchor: AnchorId::from_name("founder"),
                        run: Some(run),
                        action,
                        expires_at: at(1 << 30),
                    },
                    1,
                );
                let outcome = if j < m.mails_approved {
                    ApprovalOutcome::Approved
                } else {
                    ApprovalOutcome::Rejected
                };
                rec(
                    Principal::System,
                    AuditEvent::ApprovalDecided {
                        approval,
                        by: None,
                        outcome,
                        reason: None,
                    },
                    m.approval_secs,
                );
            }
        }
        if i < runs {
            rec(
                Principal::Agent(AgentId::from_name("editor")),
                AuditEvent::ModelCalled {
                    run,
                    task: TaskId::from_name(&format!("editor-{i}")),
                    model: ModelId::new("m"),
                    attempt: 1,
                    usage: TokenUsage::new(1000, 200),
                    cost: Money::from_minor(50),
                    outcome: Outcome::Succeeded,
                    detail: None,
                    queued_ms: None,
                },
                1,
            );
            let outcome = if i < m.runs_ok {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            rec(
                Principal::System,
                AuditEvent::RunFinished {
                    run,
                    outcome,
                    detail: None,
                },
                1,
            );
        }
    }
    futures::executor::block_on(async {
        for r in recs {
            let _ = log.append(r).await;
        }
    });
    log
}

fn solo() -> (aios_workspace::Loaded, Plan) {
    let loaded = parse("workspace.toml", aios_workspace::SOLO_CONSULTANCY_TOML)
        .unwrap_or_else(|e| unreachable!("{e}"));
    let p = plan(&loaded, &ValidateOptions::default()).unwrap_or_else(|e| unreachable!("{e}"));
    (loaded, p)
}

fn report(p: &Plan, loaded: &aios_workspace::Loaded, log: &InMemoryAuditLog) -> OpsReport {
    let targets = loaded
        .manifest
        .operations
        .clone()
        .unwrap_or_default()
        .targets;
    let b = ReportBuilder::new(
        Window::all(),
        targets,
        Some(Money::from_minor(5000)),
        Names::from_ids(&p.ids),
    );
    futures::executor::block_on(report_from_log(log, b)).unwrap_or_default()
}

#[test]
fn a_month_that_went_well_is_operating_on_every_level() {
    let (loaded, p) = solo();
    let log = log_of(&Month {
        research: 40,
        edits: 25,
        mails_approved: 10,
        mails_rejected: 0,
        runs_ok: 10,
        runs_failed: 0,
        approval_secs: 3600,
    });
    let r = report(&p, &loaded, &log);
    let a = assess(&loaded, &ValidateOptions::default(), Some(&r));
    for level in Level::ALL {
        assert_eq!(
            a.status(level),
            Status::Operating,
            "{level}\n{}",
            a.to_markdown()
        );
    }
    assert!(a.bottleneck.is_none(), "{}", a.to_markdown());
}

#[test]
fn an_entered_phase_without_use_and_missed_targets_are_judged_on_what_happened() {
    let (loaded, p) = solo();
    // no mail at all: the `clients` phase is entered, but `outreach` decided nothing
    let log = log_of(&Month {
        research: 40,
        edits: 25,
        mails_approved: 0,
        mails_rejected: 0,
        runs_ok: 10,
        runs_failed: 0,
        approval_secs: 60,
    });
    let r = report(&p, &loaded, &log);
    let a = assess(&loaded, &ValidateOptions::default(), Some(&r));
    assert_eq!(
        a.status(Level::Implementation),
        Status::Defined,
        "{}",
        a.to_markdown()
    );
    let b = a
        .bottleneck
        .clone()
        .unwrap_or_else(|| unreachable!("{}", a.to_markdown()));
    assert_eq!(b.level, Level::Implementation);
    assert!(
        b.reason.contains("`outreach` decided no action"),
        "{}",
        b.reason
    );

    // slow approvals and rejections: operations miss their targets, the rest operates
    let log = log_of(&Month {
        research: 40,
        edits: 25,
        mails_approved: 8,
        mails_rejected: 4,
        runs_ok: 10,
        runs_failed: 0,
        approval_secs: 3 * 86_400,
    });
    let r = report(&p, &loaded, &log);
    let a = assess(&loaded, &ValidateOptions::default(), Some(&r));
    assert_eq!(
        a.status(Level::Operations),
        Status::Defined,
        "{}",
        a.to_markdown()
    );
    let b = a
        .bottleneck
        .clone()
        .unwrap_or_else(|| unreachable!("{}", a.to_markdown()));
    assert_eq!(b.level, Level::Operations, "{}", a.to_markdown());
    assert!(
        b.reason.contains("max_approval_latency_p95") || b.reason.contains("max_rejection_rate"),
        "{}",
        b.reason
    );
}
