//! Assessment: per level a status with its findings, and the bottleneck.
//!
//! The rules, applied in this order per level (the first that holds decides; "errors" are
//! error findings of that level's validation):
//!
//! | level | missing | partial | defined | operating (needs an operations report) |
//! |---|---|---|---|---|
//! | Foundation | no `[foundation]` | errors, no outcome, or no final authority | intent, outcomes each with metric and target, final authority | at least one outcome's metric is a report figure with evidence (`autonomy_rate`, `escalation_rate`, `rejection_rate`, `failure_rate`, `cost_per_completed_run`, `budget_burn`), and every such outcome meets its target |
//! | Architecture | no role | errors, or no workflow | roles and workflows, no errors | a workflow completed a run |
//! | Governance | no anchor | errors, or no budget | anchors, pathways, budgets, no errors | actions were decided under it |
//! | Implementation | no phase | errors, or no phase entered, or a planned phase without entry criteria | phases with owners, one entered, the rest gated by criteria | every pathway of an entered phase decided actions, and every entered phase's criteria are met by the evidence |
//! | Operations | no `[operations]` or no target | errors, or no review cadence, or no recalibration policy | targets, cadence and policy | every target with evidence is met (at least one has evidence) |
//!
//! The **bottleneck** is the first level, from Foundation to Operations, below *defined*;
//! when all are defined and a report is given, the first below *operating*; otherwise none.
//! Levels build on each other, so the lowest unfinished one is the one that holds the rest
//! back. The reason is its first finding; the next step is given per level and status.
//!
//! The levels map onto recognised structures, for those who report against them: Foundation
//! to NIST AI RMF *Govern* (policies, accountability; ISO/IEC 42001 clauses 5 Leadership and
//! 6 Planning), Architecture to *Map* (context, systems; 42001 clause 8 Operation and
//! Annex A.4 resources), Governance to *Govern* and *Manage* (decision rights, controls;
//! 42001 Annex A.3 roles and responsibilities, A.9 use of AI systems), Implementation to
//! *Manage* (prioritised, staged deployment; 42001 clause 8.1 operational planning and
//! control), Operations to *Measure* (metrics, monitoring, improvement; 42001 clauses 9
//! Performance evaluation and 10 Improvement).

use serde::{Deserialize, Serialize};

use crate::load::Loaded;
use crate::manifest::EntryCriterion;
use crate::report::{OpsReport, Stats};
use crate::validate::{compose, validate, Finding, Level, ValidateOptions};
use aios_governance::Severity;

/// Where a level stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not described at all.
    Missing,
    /// Described in part, or with errors.
    Partial,
    /// Fully described.
    Defined,
    /// Described, and the evidence shows it working.
    Operating,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Missing => "missing",
            Status::Partial => "partial",
            Status::Defined => "defined",
            Status::Operating => "operating",
        })
    }
}

/// The assessment of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelAssessment {
    /// The level.
    pub level: Level,
    /// Its status.
    pub status: Status,
    /// Why, in words: the rule that decided.
    pub reasons: Vec<String>,
    /// Its validation findings.
    pub findings: Vec<Finding>,
}

/// The level that holds the rest back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bottleneck {
    /// The level.
    pub level: Level,
    /// Why.
    pub reason: String,
    /// What to do next.
    pub next_step: String,
}

/// The assessment of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// The five levels, in order.
    pub levels: Vec<LevelAssessment>,
    /// The bottleneck, if any.
    pub bottleneck: Option<Bottleneck>,
    /// Whether an operations report was used as evidence.
    pub with_evidence: bool,
}

impl Assessment {
    /// The status of one level.
    pub fn status(&self, level: Level) -> Status {
        self.levels
            .iter()
            .find(|l| l.level == level)
            .map_or(Status::Missing, |l| l.status)
    }

    /// The assessment as Markdown.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut md = String::from("# Assessment\n\n| level | status | why |\n|---|---|---|\n");
        for l in &self.levels {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                l.level,
                l.status,
                l.reasons.join("; ")
            );
        }
        match &self.bottleneck {
            Some(b) => {
                let _ = writeln!(
                    md,
                    "\n**Bottleneck: {}.** {}\n\nNext step: {}",
                    b.level, b.reason, b.next_step
                );
            }
            None if self.levels.iter().all(|l| l.status == Status::Operating) => {
                md.push_str("\nNo bottleneck: every level is operating.\n")
            }
            None => md.push_str(
                "\nNo bottleneck in what is written: every level is defined. Whether it \
                 operates is judged from evidence: assess with an operations report (the \
                 command line uses the store's audit record when there is one).\n",
            ),
        }
        md
    }
}

/// Whether an entry criterion is met by the evidence (`None`: the report has no figures
/// for its pathway or workflow).
pub fn criterion_met(c: &EntryCriterion, report: &OpsReport) -> Option<bool> {
    let stats: &Stats = match (&c.pathway, &c.workflow) {
        (Some(p), _) => report.pathways.get(p)?,
        (None, Some(w)) => report.workflows.get(w)?,
        (None, None) => return None,
    };
    let failures = if c.workflow.is_some() && c.pathway.is_none() {
        stats.runs_failed.count
    } else {
        stats.failures.count
    };
    Some(
        c.min_actions.map_or(true, |n| stats.actions >= n)
            && c.min_completed_runs
                .map_or(true, |n| stats.runs_completed >= n)
            && c.max_rejections
                .map_or(true, |n| stats.rejected.count + stats.expired.count <= n)
            && c.max_failures.map_or(true, |n| failures <= n),
    )
}

fn figure(report: &OpsReport, metric: &str) -> Option<f64> {
    let t = &report.total;
    match metric {
        "autonomy_rate" => t.autonomy_rate,
        "escalation_rate" => t.escalation_rate,
        "rejection_rate" => t.rejection_rate,
        "failure_rate" => t.failure_rate,
        "budget_burn" => t.budget_burn,
        "cost_per_completed_run" => t.cost_per_completed_run.map(|m| m.minor() as f64 / 100.0),
        _ => None,
    }
}

/// Assesses a loaded manifest, with an operations report as evidence when given.
pub fn assess(
    loaded: &Loaded,
    options: &ValidateOptions,
    evidence: Option<&OpsReport>,
) -> Assessment {
    let m = &loaded.manifest;
    let report = validate(loaded, options);
    let composed = compose(m);
    let first_error = |level: Level| {
        report
            .of_level(level)
            .find(|f| f.severity == Severity::Error)
            .map(|f| format!("{}: {}", f.path, f.message))
    };
    let mut levels = Vec::new();

    // foundation
    let (status, reasons) = match &m.foundation {
        None => (
            Status::Missing,
            vec![
                "no `[foundation]`: intent, outcomes and final authority are not written down"
                    .to_string(),
            ],
        ),
        Some(f) => {
            let mut why = Vec::new();
            if let Some(e) = first_error(Level::Foundation) {
                why.push(e);
            }
            if f.outcomes.is_empty() {
                why.push("no outcome says what AI should improve".into());
            }
            if f.final_authority.is_none() {
                why.push("no final authority".into());
            }
            if !why.is_empty() {
                (Status::Partial, why)
            } else {
                match evidence {
                    None => (
                        Status::Defined,
                        vec!["intent, measurable outcomes with targets, final authority".into()],
                    ),
                    Some(r) => {
                        let mut missed = Vec::new();
                        let mut measured = 0;
                        for o in &f.outcomes {
                            let (Some(metric), Some(target)) = (&o.metric, o.target) else {
                                continue;
                            };
                            if let Some(v) = figure(r, metric) {
                                measured += 1;
                                if !target.holds(v) {
                                    missed.push(format!(
                                        "outcome `{}`: `{metric}` is {v:.3}, off its target",
                                        o.key
                                    ));
                                }
                            }
                        }
                        if measured == 0 {
                            (
                                Status::Defined,
                                vec!["no outcome can be measured from the log yet".into()],
                            )
                        } else if missed.is_empty() {
                            (
                                Status::Operating,
                                vec!["every outcome measured from the log meets its target".into()],
                            )
                        } else {
                            (Status::Defined, missed)
                        }
                    }
                }
            }
        }
    };
    levels.push((Level::Foundation, status, reasons));

    // architecture
    let arch = m.architecture.clone().unwrap_or_default();
    let (status, reasons) = if arch.roles.is_empty() {
        (
            Status::Missing,
            vec!["no role: nobody does the work".to_string()],
        )
    } else if let Some(e) = first_error(Level::Architecture) {
        (Status::Partial, vec![e])
    } else if arch.workflows.is_empty() {
        (
            Status::Partial,
            vec!["roles but no workflow: the work is not designed".into()],
        )
    } else {
        match evidence {
            None => (
                Status::Defined,
                vec![format!(
                    "{} roles, {} workflows",
                    arch.roles.len(),
                    arch.workflows.len()
                )],
            ),
            Some(r) if r.workflows.values().any(|s| s.runs_completed > 0) => {
                (Status::Operating, vec!["workflows complete runs".into()])
            }
            Some(_) => (
                Status::Defined,
                vec!["no workflow completed a run in the window".into()],
            ),
        }
    };
    levels.push((Level::Architecture, status, reasons));

    // governance
    let model = &composed.model;
    let (status, reasons) = if model.anchors.is_empty() {
        (
            Status::Missing,
            vec!["no accountability anchor: nobody is answerable".to_string()],
        )
    } else if let Some(e) = first_error(Level::Governance) {
        (Status::Partial, vec![e])
    } else if model.budgets.is_empty() {
        (
            Status::Partial,
            vec!["no budget: spending is not limited".into()],
        )
    } else {
        match evidence {
            None => (
                Status::Defined,
                vec![format!(
                    "{} anchors, {} pathways, {} budgets",
                    model.anchors.len(),
                    model.pathways.len(),
                    model.budgets.len()
                )],
            ),
            Some(r) if r.total.actions > 0 => (
                Status::Operating,
                vec![format!("{} actions decided", r.total.actions)],
            ),
            Some(_) => (
                Status::Defined,
                vec!["no action was decided in the window".into()],
            ),
        }
    };
    levels.push((Level::Governance, status, reasons));

    // implementation
    let phases = m
        .implementation
        .as_ref()
        .map(|i| i.phases.clone())
        .unwrap_or_default();
    let (status, reasons) = if phases.is_empty() {
        (
            Status::Missing,
            vec!["no roll-out phase: build order and ownership are not planned".to_string()],
        )
    } else if let Some(e) = first_error(Level::Implementation) {
        (Status::Partial, vec![e])
    } else if !phases.iter().any(|p| p.status.is_entered()) {
        (
            Status::Partial,
            vec!["no phase is entered: nothing is rolled out".into()],
        )
    } else if let Some(p) = phases
        .iter()
        .find(|p| !p.status.is_entered() && p.entry.is_empty())
    {
        (
            Status::Partial,
            vec![format!(
                "phase `{}` is planned without entry criteria: nothing says when it may start",
                p.key
            )],
        )
    } else {
        match evidence {
            None => (
                Status::Defined,
                vec![format!(
                    "{} phases, {} entered",
                    phases.len(),
                    phases.iter().filter(|p| p.status.is_entered()).count()
                )],
            ),
            Some(r) => {
                let mut why = Vec::new();
                for p in phases.iter().filter(|p| p.status.is_entered()) {
                    for pw in &p.enables.pathways {
                        if r.pathways.get(pw).map_or(0, |s| s.actions) == 0 {
                            why.push(format!(
                                "phase `{}` is entered but pathway `{pw}` decided no action",
                                p.key
                            ));
                        }
                    }
                    for (i, c) in p.entry.iter().enumerate() {
                        if criterion_met(c, r) != Some(true) {
                            why.push(format!("phase `{}` is entered but its entry criterion {i} is not met by the evidence", p.key));
                        }
                    }
                }
                if why.is_empty() {
                    (
                        Status::Operating,
                        vec!["entered phases are in use and their criteria are met".into()],
                    )
                } else {
                    (Status::Defined, why)
                }
            }
        }
    };
    levels.push((Level::Implementation, status, reasons));

    // operations
    let (status, reasons) = match &m.operations {
        None => (
            Status::Missing,
            vec!["no `[operations]`: nothing is measured".to_string()],
        ),
        Some(o) if o.targets.is_empty() => {
            (Status::Missing, vec!["no operations target".to_string()])
        }
        Some(o) => {
            if let Some(e) = first_error(Level::Operations) {
                (Status::Partial, vec![e])
            } else if o.review_cadence.is_none() {
                (
                    Status::Partial,
                    vec!["no review cadence: nobody looks at the figures".into()],
                )
            } else if o.recalibration.is_none() {
                (
                    Status::Partial,
                    vec!["no recalibration policy: evidence cannot change the model".into()],
                )
            } else {
                match evidence {
                    None => (
                        Status::Defined,
                        vec!["targets, review cadence and recalibration policy".into()],
                    ),
                    Some(r) => {
                        let judged: Vec<_> =
                            r.total.checks.iter().filter(|c| c.met.is_some()).collect();
                        let missed: Vec<String> = judged
                            .iter()
                            .filter(|c| c.met == Some(false))
                            .map(|c| {
                                format!(
                                    "`{}` missed: {} (target {})",
                                    c.target, c.actual, c.expected
                                )
                            })
                            .collect();
                        if judged.is_empty() {
                            (Status::Defined, vec!["no target has evidence yet".into()])
                        } else if missed.is_empty() {
                            (
                                Status::Operating,
                                vec![format!("{} targets met", judged.len())],
                            )
                        } else {
                            (Status::Defined, missed)
                        }
                    }
                }
            }
        }
    };
    levels.push((Level::Operations, status, reasons));

    let levels: Vec<LevelAssessment> = levels
        .into_iter()
        .map(|(level, status, reasons)| LevelAssessment {
            level,
            status,
            reasons,
            findings: report.of_level(level).cloned().collect(),
        })
        .collect();
    let below = |s: Status| levels.iter().find(|l| l.status < s);
    let pick = below(Status::Defined).or_else(|| evidence.and_then(|_| below(Status::Operating)));
    let bottleneck = pick.map(|l| Bottleneck {
        level: l.level,
        reason: format!(
            "{} is {}: {}",
            l.level,
            l.status,
            l.reasons.first().cloned().unwrap_or_default()
        ),
        next_step: next_step(l.level, l.status).to_string(),
    });
    Assessment {
        levels,
        bottleneck,
        with_evidence: evidence.is_some(),
    }
}

fn next_step(level: Level, status: Status) -> &'static str {
    match (level, status) {
        (Level::Foundation, Status::Missing) => "write `[foundation]`: the intent, two or three outcomes with a metric and a target each, and the final authority",
        (Level::Foundation, Status::Partial) => "complete the foundation: give every outcome a metric and a target and name the final authority",
        (Level::Foundation, _) => "the outcomes measured from the log are off target: review the roles and pathways that serve them",
        (Level::Architecture, Status::Missing) => "add roles (start from a template: researcher, scheduler, editor, sales_outreach, bookkeeper)",
        (Level::Architecture, Status::Partial) => "fix the architecture findings and describe the work as workflows of tasks and roles",
        (Level::Architecture, _) => "run the workflows: none completed a run in the window",
        (Level::Governance, Status::Missing) => "name the accountability anchors: who answers for what the agents do",
        (Level::Governance, Status::Partial) => "fix the governance findings and set an organisation budget",
        (Level::Governance, _) => "route the agents' actions through the governed pathways",
        (Level::Implementation, Status::Missing) => "plan the roll-out: phases with an owner, what each enables and the evidence that opens the next",
        (Level::Implementation, Status::Partial) => "enter a first phase and give every later phase entry criteria",
        (Level::Implementation, _) => "use what the entered phases enable, or gather the evidence their criteria ask for",
        (Level::Operations, Status::Missing) => "set operations targets (autonomy rate, approval latency, cost per completed run)",
        (Level::Operations, Status::Partial) => "set a review cadence and a recalibration policy",
        (Level::Operations, _) => "review the missed targets and accept or decline the recalibration suggestions",
    }
}
