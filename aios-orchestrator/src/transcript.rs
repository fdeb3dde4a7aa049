//! A readable markdown transcript of a run, rebuilt from the audit log: who did what, under
//! which rule, approved by whom, at what cost.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use aios_core::{
    AnchorId, ApprovalId, AuditEntry, AuditEvent, Money, Outcome, Principal, RunId, TaskId,
    TokenUsage,
};

/// Display names for a transcript; anything not named prints as its id.
#[derive(Debug, Clone, Default)]
pub struct TranscriptNames {
    /// Names of humans and agents.
    pub principals: HashMap<Principal, String>,
    /// Names of accountability anchors.
    pub anchors: HashMap<AnchorId, String>,
    /// Names of tasks.
    pub tasks: HashMap<TaskId, String>,
}

/// Renders the transcript of `run` from audit `entries` (the whole log, or any superset of
/// the run's entries), naming principals and anchors from `names`.
pub fn render_transcript(run: RunId, entries: &[AuditEntry], names: &TranscriptNames) -> String {
    let mut approvals: HashSet<ApprovalId> = HashSet::new();
    let mut tasks: HashMap<TaskId, usize> = HashMap::new();
    let mut out = String::new();
    let mut cost = Money::ZERO;
    let mut tokens = TokenUsage::default();
    let who = |p: &Principal| {
        names
            .principals
            .get(p)
            .cloned()
            .unwrap_or_else(|| p.to_string())
    };
    let anchor_name = |a: &AnchorId| {
        names
            .anchors
            .get(a)
            .map(|n| format!("`{n}`"))
            .unwrap_or_else(|| a.to_string())
    };
    let task_name = |t: &TaskId, k: usize| {
        names
            .tasks
            .get(t)
            .map(|n| format!("task `{n}`"))
            .unwrap_or_else(|| format!("task {k}"))
    };
    // whether the previous entry belonged to this run: a budget alert right after one was
    // raised by its call
    let mut last_was_ours = false;
    let _ = writeln!(out, "# Run {run}\n");
    let _ = writeln!(out, "| # | time | who | what |");
    let _ = writeln!(out, "|---|---|---|---|");
    let mut n = 0usize;
    for e in entries {
        let line = match &e.event {
            AuditEvent::RunStarted {
                run: r,
                workflow,
                governance_version,
            } if *r == run => Some(format!(
                "started workflow `{workflow}` under governance v{governance_version}"
            )),
            AuditEvent::RunFinished {
                run: r,
                outcome,
                detail,
            } if *r == run => Some(format!(
                "run {}{}",
                outcome_word(*outcome),
                detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )),
            AuditEvent::TaskStarted { run: r, task, .. } if *r == run => {
                let k = tasks.len() + 1;
                let k = *tasks.entry(*task).or_insert(k);
                Some(format!("{} started", task_name(task, k)))
            }
            AuditEvent::TaskFinished {
                run: r,
                task,
                outcome,
                detail,
            } if *r == run => {
                let k = tasks.get(task).copied().unwrap_or(0);
                Some(format!(
                    "{} {}{}",
                    task_name(task, k),
                    outcome_word(*outcome),
                    detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ))
            }
            AuditEvent::DecisionMade {
                run: Some(r),
                action,
                decision,
                rules,
                model_version,
                ..
            } if *r == run => {
                let rules = if rules.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", rules.join(", "))
                };
                Some(format!(
                    "governance v{model_version}: `{action}` -> {decision:?}{rules}"
                ))
            }
            AuditEvent::ModelCalled {
                run: r,
                model,
                attempt,
                usage,
                cost: c,
                outcome,
                detail,
                ..
            } if *r == run => {
                cost += *c;
                tokens += *usage;
                Some(format!(
                    "model `{model}` attempt {attempt} {}: {} tokens, cost {c}{}",
                    outcome_word(*outcome),
                    usage.total(),
                    detail
                        .as_ref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ))
            }
            AuditEvent::ConnectorInvoked {
                run: r,
                connector,
                operation,
                effect,
                attempt,
                outcome,
                cost: c,
                idempotency_key,
                ..
            } if *r == run => {
                cost += *c;
                Some(format!(
                    "`{connector}.{operation}` ({effect}) attempt {attempt} {}, cost {c}, key `{idempotency_key}`",
                    outcome_word(*outcome)
                ))
            }
            AuditEvent::ApprovalRequested {
                approval,
                anchor,
                run: Some(r),
                action,
                expires_at,
            } if *r == run => {
                approvals.insert(*approval);
                Some(format!(
                    "approval {approval} of `{action}` requested from anchor {}, expires {}",
                    anchor_name(anchor),
                    expires_at.format("%Y-%m-%d %H:%M UTC")
                ))
            }
            AuditEvent::ApprovalDecided {
                approval,
                by,
                outcome,
                reason,
            } if approvals.contains(approval) => Some(format!(
                "approval {approval}: {outcome:?}{}{}",
                by.map(|h| format!(" by {}", who(&Principal::Human(h))))
                    .unwrap_or_default(),
                reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            AuditEvent::Escalated {
                run: Some(r),
                anchor,
                reason,
            } if *r == run => Some(format!(
                "escalated to anchor {}: {reason}",
                anchor_name(anchor)
            )),
            AuditEvent::ControlApplied {
                target,
                control,
                reason,
                ..
            } if target == &format!("run:{run}") => {
                Some(format!("operator control `{control}`: {reason}"))
            }
            AuditEvent::BudgetAlert {
                budget,
                dimension,
                threshold_percent,
                used,
                limit,
            } if last_was_ours || budget.contains(&run.to_string()) => Some(format!(
                "budget `{budget}` passed {threshold_percent} % on {dimension} ({used} of {limit})"
            )),
            AuditEvent::MemoryWritten {
                memory,
                version,
                scope,
                operation,
                run: Some(r),
                task,
            } if *r == run => {
                let by = match task {
                    Some(t) => {
                        let k = tasks.len() + 1;
                        let k = *tasks.entry(*t).or_insert(k);
                        format!(" by {}", task_name(t, k))
                    }
                    None => String::new(),
                };
                Some(format!(
                    "memory {operation}{by}: record {memory} v{version} in `{scope}`"
                ))
            }
            AuditEvent::MemoryRecalled { run: r, task, hits } if *r == run => {
                let k = tasks.len() + 1;
                let k = *tasks.entry(*task).or_insert(k);
                let records: Vec<String> =
                    hits.iter().map(|(id, v)| format!("{id} v{v}")).collect();
                Some(format!(
                    "{} recalled {} memory record(s){}",
                    task_name(task, k),
                    hits.len(),
                    if records.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", records.join(", "))
                    }
                ))
            }
            AuditEvent::Note { text } if text.contains(&run.to_string()) => Some(text.clone()),
            _ => None,
        };
        last_was_ours = line.is_some();
        if let Some(line) = line {
            n += 1;
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} |",
                e.at.format("%H:%M:%S%.3f"),
                who(&e.actor),
                line.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(
        out,
        "\nTotal model tokens: {}; total cost: {cost}.",
        tokens.total()
    );
    out
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Parked => "parked",
        Outcome::Replayed => "replayed",
    }
}
