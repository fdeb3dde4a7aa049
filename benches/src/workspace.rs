//! OPS-REPORT and WORKSPACE-BOOTSTRAP: the operating model's report over a large audit log
//! and the bootstrap of a large workspace manifest.

use std::fmt::Write;
use std::sync::Arc;

use aios::core::{
    AgentId, AnchorId, ApprovalId, ApprovalOutcome, AuditEvent, AuditLog, AuditRecord,
    DecisionKind, InMemoryAuditLog, ManualClock, ModelId, Money, Outcome, PathwayId, Principal,
    RoleId, RunId, TaskId, Timestamp, TokenUsage,
};
use aios::memory::Memory;
use aios_workspace::{
    parse, plan, report_from_log, Names, ReportBuilder, Targets, ValidateOptions, Window,
};

use crate::{time, Config, Goal, Measurement};

/// An audit log shaped like a month of work: runs of 5 tasks; per task a model call, a
/// governance decision (one in five sent for approval, one in twenty denied), a connector
/// call or an approval; about 20 entries per run.
pub fn ops_log(n: usize) -> InMemoryAuditLog {
    let log = InMemoryAuditLog::new();
    let roles: Vec<RoleId> = (0..20)
        .map(|i| RoleId::from_name(&format!("role-{i}")))
        .collect();
    let agents: Vec<AgentId> = (0..20)
        .map(|i| AgentId::from_name(&format!("role-{i}")))
        .collect();
    let pathways: Vec<PathwayId> = (0..100)
        .map(|i| PathwayId::from_name(&format!("p{i}")))
        .collect();
    let mut written = 0usize;
    let mut t = 1_700_000_000i64;
    let mut run_i = 0u64;
    futures::executor::block_on(async {
        while written < n {
            let run = RunId::from_name(&format!("run-{run_i}"));
            let mut recs = Vec::with_capacity(24);
            let mut push = |actor: Principal, event: AuditEvent| {
                t += 1;
                recs.push(
                    AuditRecord::new(actor, event)
                        .at(Timestamp::from_timestamp(t, 0).unwrap_or_default()),
                );
            };
            push(
                Principal::System,
                AuditEvent::RunStarted {
                    run,
                    workflow: format!("wf-{}", run_i % 10),
                    governance_version: 1,
                },
            );
            for k in 0..5u64 {
                let r = ((run_i + k) % 20) as usize;
                let task = TaskId::from_name(&format!("t-{run_i}-{k}"));
                let me = Principal::Agent(agents[r]);
                push(
                    Principal::System,
                    AuditEvent::TaskStarted {
                        run,
                        task,
                        role: roles[r],
                        agent: agents[r],
                    },
                );
                push(
                    me,
                    AuditEvent::ModelCalled {
                        run,
                        task,
                        model: ModelId::new("m"),
                        attempt: 1 + (k % 2) as u32,
                        usage: TokenUsage::new(800, 200),
                        cost: Money::from_minor(3),
                        outcome: Outcome::Succeeded,
                        detail: None,
                        queued_ms: None,
                    },
                );
                let pathway = pathways[((run_i * 5 + k) % 100) as usize];
                let decision = match (run_i + k) % 20 {
                    0 => DecisionKind::Deny,
                    1..=4 => DecisionKind::RequireApproval,
                    _ => DecisionKind::Allow,
                };
                let action = format!("act.{k}");
                push(
                    me,
                    AuditEvent::DecisionMade {
                        run: Some(run),
                        pathway: Some(pathway),
                        action: action.clone(),
                        decision,
                        rules: if decision == DecisionKind::Deny {
                            vec!["limit".into()]
                        } else {
                            vec![]
                        },
                        model_version: 1,
                    },
                );
                if decision == DecisionKind::RequireApproval {
                    let approval = ApprovalId::from_name(&format!("a-{run_i}-{k}"));
                    push(
                        Principal::System,
                        AuditEvent::ApprovalRequested {
                            approval,
                            anchor: AnchorId::from_name("owner"),
                            run: Some(run),
                            action,
                            expires_at: Timestamp::from_timestamp(2_000_000_000, 0)
                                .unwrap_or_default(),
                        },
                    );
                    let outcome = if k == 3 {
                        ApprovalOutcome::Rejected
                    } else {
                        ApprovalOutcome::Approved
                    };
                    push(
                        Principal::System,
                        AuditEvent::ApprovalDecided {
                            approval,
                            by: None,
                            outcome,
                            reason: None,
                        },
                    );
                }
                push(
                    Principal::System,
                    AuditEvent::TaskFinished {
                        run,
                        task,
                        outcome: Outcome::Succeeded,
                        detail: None,
                    },
                );
            }
            let outcome = if run_i.is_multiple_of(25) {
                Outcome::Failed
            } else {
                Outcome::Succeeded
            };
            push(
                Principal::System,
                AuditEvent::RunFinished {
                    run,
                    outcome,
                    detail: None,
                },
            );
            for r in recs {
                if written >= n {
                    break;
                }
                let _ = log.append(r).await;
                written += 1;
            }
            run_i += 1;
        }
    });
    log
}

/// A manifest of `roles` roles (from the five templates in turn), `pathways` pathways (each
/// with an escalation rule, delegated round-robin to the roles), `seeds` memory seeds and
/// one workflow per role.
pub fn big_manifest(roles: usize, pathways: usize, seeds: usize) -> String {
    let templates = [
        "researcher",
        "scheduler",
        "editor",
        "sales_outreach",
        "bookkeeper",
    ];
    let mut s = String::from(
        "[workspace]\nname = \"big\"\n\n[foundation]\nintent = \"a large workspace\"\nfinal_authority = \"owner\"\n\
         [[foundation.outcomes]]\nkey = \"autonomy\"\nmetric = \"autonomy_rate\"\ntarget = { at_least = 0.6 }\n\n\
         [architecture.memory]\nscopes = [\"org\"]\n\n",
    );
    for i in 0..roles {
        let _ = writeln!(
            s,
            "[[architecture.roles]]\nkey = \"r{i}\"\ntemplate = \"{}\"\npathway = \"p{i}\"\ngrants = [{{ scope = \"org/r{i}\", access = \"read_write\" }}]\n",
            templates[i % templates.len()]
        );
        let _ = writeln!(
            s,
            "[architecture.workflows.w{i}]\ntasks = [{{ name = \"a\", role = \"r{i}\" }}, {{ name = \"b\", role = \"r{i}\", after = [\"a\"] }}]\n"
        );
    }
    for i in 0..seeds {
        let _ = writeln!(
            s,
            "[[architecture.memory.seeds]]\nkey = \"s{i}\"\nscope = \"org/r{}\"\ncontent = \"fact number {i}: the client prefers mail before noon and invoices in euros\"\n",
            i % roles.max(1)
        );
    }
    s.push_str("[[governance.anchors]]\nkey = \"owner\"\ntitle = \"Owner\"\nholders = [\"ann\"]\nresponse_time = \"4h\"\n\n");
    s.push_str("[[governance.budgets]]\nkey = \"org\"\nscope = \"organisation\"\nperiod = \"month\"\nlimits = { spend = \"1000.00\" }\n\n");
    for i in 0..pathways {
        let _ = writeln!(
            s,
            "[[governance.pathways]]\nkey = \"p{i}\"\nanchor = \"owner\"\ndelegate = \"r{}\"\nlimits = {{ actions = [\"model.complete\", \"docs.read\"], effects = [\"read_only\"], max_cost_per_action = \"1.00\" }}\nescalation = [{{ name = \"pricey\", when = {{ cost_above = \"0.50\" }}, mode = \"approve_before\" }}]\n",
            i % roles.max(1)
        );
    }
    s
}

/// Runs the workspace workloads.
pub fn run(config: &Config) -> Vec<Measurement> {
    let mut out = Vec::new();

    // OPS-REPORT: one streaming pass over 1,000,000 entries of an in-memory log
    let n = config.pick(200_000, 1_000_000);
    let log = ops_log(n);
    let targets = Targets {
        min_autonomy_rate: Some(0.6),
        max_rejection_rate: Some(0.2),
        ..Targets::default()
    };
    let (d, report) = time(|| {
        let b = ReportBuilder::new(
            Window::all(),
            targets,
            Some(Money::from_minor(1_000_000)),
            Names::default(),
        );
        futures::executor::block_on(report_from_log(&log, b))
    });
    let counted = report.map(|r| r.entries_counted).unwrap_or(0);
    let ok = counted == n as u64;
    // scaled to 1,000,000 events when quick
    let ms = d.as_secs_f64() * 1e3 * 1_000_000.0 / n as f64;
    out.push(Measurement::new(
        "OPS-REPORT",
        if ok { "1M events" } else { "1M FAILED" },
        ms,
        "ms",
        Goal::AtMost(1000.0),
    ));

    // WORKSPACE-BOOTSTRAP: parse, validate, plan, compile the governor, seed memory
    let text = big_manifest(100, 1000, 10_000);
    let runs = config.pick(2, 5);
    let mut best = f64::MAX;
    let mut best_plan = f64::MAX;
    let mut ok = true;
    for _ in 0..runs {
        let (d, r) = time(|| {
            let loaded = parse("workspace.toml", &text).map_err(|e| e.to_string())?;
            let (dp, p) = time(|| plan(&loaded, &ValidateOptions::default()));
            let p = p.map_err(|e| e.to_string())?;
            let g = p.governor().map_err(|e| e.to_string())?;
            let memory = futures::executor::block_on(
                Memory::builder(Arc::new(ManualClock::default())).open(),
            )
            .map_err(|e| e.to_string())?;
            let seeded = futures::executor::block_on(p.seed(&memory)).map_err(|e| e.to_string())?;
            Ok::<_, String>((
                dp,
                g.pathways().count(),
                seeded.written.len(),
                p.roles.len(),
            ))
        });
        match r {
            Ok((dp, pathways, seeds, roles)) => {
                ok &= pathways == 1000 && seeds == 10_000 && roles == 100;
                best = best.min(d.as_secs_f64() * 1e3);
                best_plan = best_plan.min(dp.as_secs_f64() * 1e3);
            }
            Err(e) => {
                eprintln!("WORKSPACE-BOOTSTRAP failed: {e}");
                ok = false;
            }
        }
    }
    out.push(Measurement::new(
        "WORKSPACE-BOOTSTRAP",
        if ok {
            "100 roles, 1000 pathways, 10000 seeds"
        } else {
            "FAILED"
        },
        best,
        "ms",
        Goal::AtMost(200.0),
    ));
    out.push(Measurement::new(
        "WORKSPACE-BOOTSTRAP",
        "validate + plan only",
        best_plan,
        "ms",
        Goal::AtMost(200.0),
    ));
    out
}
