//! Recalibration: suggestions from the operations report under the policy, each citing its
//! evidence, never beyond the charter; a human accepts (publishing the next version) or
//! declines each.
//!
//! The rules (per pathway, only with at least `min_evidence` decided approvals, or decided
//! actions for failures, in the report's window):
//!
//! | evidence | suggestion |
//! |---|---|
//! | every approval approved as asked (none edited, rejected or expired) | **loosen**: each `approve_before` rule with an `amount_above` or `cost_above` threshold rises by at most `max_step_percent`, capped by the pathway's own limit and the charter; a `notify_after` rule at the old threshold keeps the anchor told in the band that no longer asks first |
//! | rejected + expired approvals above the rejection target (25% without one) | **tighten**: each such threshold falls by `max_step_percent` |
//! | failed calls per action above the failure target (10% without one) | **tighten**: irreversible actions need approval (a new `approve_before` rule), unless a rule already asks for it |
//!
//! A suggestion is a value; nothing changes until [`accept`] is called with who accepts and
//! why. Accepting checks that the model still holds what the suggestion saw, applies it,
//! validates the result (an error refuses it), and publishes version N+1 with the diff and a
//! change-log entry naming who accepted. Runs already started keep the version they started
//! under (load the new governor with `Orchestrator::load_governance(.., true)`).

use aios_core::{AuditEvent, AuditRecord, EffectClass, HumanId, Money, Principal, Timestamp};
use aios_governance::{
    diff, ChangeLogEntry, EscalationMode, EscalationRule, GovernanceModel, OnTimeoutSpec, Trigger,
};
use serde::{Deserialize, Serialize};

use crate::bootstrap::Update;
use crate::manifest::{RecalibrationPolicy, Targets};
use crate::report::OpsReport;

/// The threshold a suggestion moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// `when.amount_above`.
    AmountAbove,
    /// `when.cost_above`.
    CostAbove,
}

/// What a suggestion changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ProposedChange {
    /// An approval threshold rises; a notify-after rule keeps the old threshold.
    Raise {
        /// The escalation rule.
        rule: String,
        /// Which threshold.
        threshold: Threshold,
        /// Its value now.
        from: Money,
        /// Its value after.
        to: Money,
    },
    /// An approval threshold falls.
    Lower {
        /// The escalation rule.
        rule: String,
        /// Which threshold.
        threshold: Threshold,
        /// Its value now.
        from: Money,
        /// Its value after.
        to: Money,
    },
    /// Irreversible actions need approval.
    ApproveIrreversible {
        /// The new rule's name.
        rule: String,
    },
}

/// Loosen or tighten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Agents may do more alone.
    Loosen,
    /// Humans are brought in more.
    Tighten,
}

/// One suggestion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    /// A stable id: `<pathway>/<rule>/<direction>`.
    pub id: String,
    /// The pathway (key).
    pub pathway: String,
    /// Loosen or tighten.
    pub direction: Direction,
    /// The change.
    pub change: ProposedChange,
    /// Why, in words, with the figures.
    pub rationale: String,
    /// The audit sequence numbers of the evidence (the first of them; see
    /// [`crate::EVIDENCE_CAP`]).
    pub evidence: Vec<u64>,
    /// How many entries of evidence there were in all.
    pub evidence_count: u64,
}

fn threshold_of(t: &Trigger, which: Threshold) -> Option<Money> {
    match which {
        Threshold::AmountAbove => t.amount_above,
        Threshold::CostAbove => t.cost_above,
    }
}

fn step(v: Money, percent: u32, up: bool) -> Money {
    let delta = (v.minor() as i128 * percent as i128 / 100) as i64;
    // at least one minor unit, so a step always moves
    let delta = delta.max(1);
    if up {
        Money::from_minor(v.minor().saturating_add(delta))
    } else {
        Money::from_minor(v.minor().saturating_sub(delta).max(0))
    }
}

/// The suggestions the report supports under the policy, in pathway order.
pub fn suggest(
    model: &GovernanceModel,
    report: &OpsReport,
    policy: &RecalibrationPolicy,
    targets: &Targets,
) -> Vec<Suggestion> {
    let mut out = Vec::new();
    let charter = &model.charter.boundaries;
    let max_rejection = targets.max_rejection_rate.unwrap_or(0.25);
    let max_failure = targets.max_failure_rate.unwrap_or(0.10);
    for p in &model.pathways {
        let Some(s) = report.pathways.get(&p.key) else {
            continue;
        };
        let decided = s.approved.count + s.edited.count + s.rejected.count + s.expired.count;
        let thresholds: Vec<(&EscalationRule, Threshold, Money)> = p
            .escalation
            .iter()
            .filter(|r| r.mode == EscalationMode::ApproveBefore)
            .flat_map(|r| {
                [Threshold::AmountAbove, Threshold::CostAbove]
                    .into_iter()
                    .filter_map(move |t| threshold_of(&r.when, t).map(|v| (r, t, v)))
            })
            .collect();
        if decided >= policy.min_evidence && decided == s.approved.count {
            for (rule, which, from) in &thresholds {
                // the cap: the pathway's own limit and the charter's
                let caps = match which {
                    Threshold::AmountAbove => [
                        p.limits.max_amount_per_action,
                        charter.max_amount_per_action,
                    ],
                    Threshold::CostAbove => {
                        [p.limits.max_cost_per_action, charter.max_cost_per_action]
                    }
                };
                let mut to = step(*from, policy.max_step_percent, true);
                for cap in caps.into_iter().flatten() {
                    to = to.min(cap);
                }
                if to <= *from {
                    continue;
                }
                out.push(Suggestion {
                    id: format!("{}/{}/loosen", p.key, rule.name),
                    pathway: p.key.clone(),
                    direction: Direction::Loosen,
                    change: ProposedChange::Raise {
                        rule: rule.name.clone(),
                        threshold: *which,
                        from: *from,
                        to,
                    },
                    rationale: format!(
                        "all {decided} approvals on `{}` were approved as asked, none edited, rejected or expired: `{}` may ask first only above {to} instead of {from}, and notify after in between",
                        p.key, rule.name
                    ),
                    evidence: s.approved.seqs.clone(),
                    evidence_count: s.approved.count,
                });
            }
        }
        let refused = s.rejected.count + s.expired.count;
        if decided >= policy.min_evidence
            && decided > 0
            && refused as f64 / decided as f64 > max_rejection
        {
            let mut evidence: Vec<u64> = s
                .rejected
                .seqs
                .iter()
                .chain(&s.expired.seqs)
                .copied()
                .collect();
            evidence.sort_unstable();
            for (rule, which, from) in &thresholds {
                let to = step(*from, policy.max_step_percent, false);
                if to >= *from {
                    continue;
                }
                out.push(Suggestion {
                    id: format!("{}/{}/tighten", p.key, rule.name),
                    pathway: p.key.clone(),
                    direction: Direction::Tighten,
                    change: ProposedChange::Lower {
                        rule: rule.name.clone(),
                        threshold: *which,
                        from: *from,
                        to,
                    },
                    rationale: format!(
                        "{refused} of {decided} approvals on `{}` were rejected or expired ({:.0}%, above {:.0}%): `{}` should ask from {to} instead of {from}",
                        p.key,
                        100.0 * refused as f64 / decided as f64,
                        100.0 * max_rejection,
                        rule.name
                    ),
                    evidence: evidence.clone(),
                    evidence_count: refused,
                });
            }
        }
        if s.actions >= policy.min_evidence
            && s.actions > 0
            && s.failures.count as f64 / s.actions as f64 > max_failure
            && !p.escalation.iter().any(|r| {
                r.mode == EscalationMode::ApproveBefore
                    && r.when.is_empty_but_effect(EffectClass::Irreversible)
            })
        {
            let rule = "recalibration-irreversible".to_string();
            out.push(Suggestion {
                id: format!("{}/{rule}/tighten", p.key),
                pathway: p.key.clone(),
                direction: Direction::Tighten,
                change: ProposedChange::ApproveIrreversible { rule },
                rationale: format!(
                    "{} failed calls for {} actions on `{}` ({:.0}%, above {:.0}%): irreversible actions should be approved first",
                    s.failures.count,
                    s.actions,
                    p.key,
                    100.0 * s.failures.count as f64 / s.actions as f64,
                    100.0 * max_failure
                ),
                evidence: s.failures.seqs.clone(),
                evidence_count: s.failures.count,
            });
        }
    }
    out
}

trait TriggerExt {
    fn is_empty_but_effect(&self, effect: EffectClass) -> bool;
}

impl TriggerExt for Trigger {
    fn is_empty_but_effect(&self, effect: EffectClass) -> bool {
        let mut t = self.clone();
        let e = t.effect_at_least.take();
        t.is_empty() && e.is_some_and(|e| e <= effect)
    }
}

/// Why a suggestion could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The model no longer holds what the suggestion saw.
    #[error("suggestion `{id}` is stale: {why}")]
    Stale {
        /// The suggestion.
        id: String,
        /// What differs.
        why: String,
    },
    /// The changed model does not validate.
    #[error("suggestion `{id}` would make the model invalid:\n{report}")]
    Invalid {
        /// The suggestion.
        id: String,
        /// The findings.
        report: String,
    },
    /// Nobody accepted it.
    #[error("a suggestion must be accepted by someone (an empty `by`)")]
    NoOne,
}

/// Applies a suggestion accepted by `by` (a human key) with `note`: version N+1 with the
/// diff and a change-log entry naming who accepted.
pub fn accept(
    model: &GovernanceModel,
    suggestion: &Suggestion,
    by: &str,
    note: &str,
) -> Result<Update, AcceptError> {
    if by.trim().is_empty() {
        return Err(AcceptError::NoOne);
    }
    let stale = |why: String| AcceptError::Stale {
        id: suggestion.id.clone(),
        why,
    };
    let mut next = model.clone();
    let pathway = next
        .pathways
        .iter_mut()
        .find(|p| p.key == suggestion.pathway)
        .ok_or_else(|| stale(format!("pathway `{}` is gone", suggestion.pathway)))?;
    match &suggestion.change {
        ProposedChange::Raise {
            rule,
            threshold,
            from,
            to,
        }
        | ProposedChange::Lower {
            rule,
            threshold,
            from,
            to,
        } => {
            let r = pathway
                .escalation
                .iter_mut()
                .find(|r| &r.name == rule)
                .ok_or_else(|| stale(format!("rule `{rule}` is gone")))?;
            let slot = match threshold {
                Threshold::AmountAbove => &mut r.when.amount_above,
                Threshold::CostAbove => &mut r.when.cost_above,
            };
            if *slot != Some(*from) {
                return Err(stale(format!(
                    "rule `{rule}` is now at {slot:?}, not {from}"
                )));
            }
            *slot = Some(*to);
            if matches!(suggestion.change, ProposedChange::Raise { .. }) {
                let mut told = r.clone();
                told.name = format!("{rule}-notify");
                told.mode = EscalationMode::NotifyAfter;
                told.on_timeout = OnTimeoutSpec::Deny;
                told.allowed = vec![];
                told.deadline = None;
                match threshold {
                    Threshold::AmountAbove => told.when.amount_above = Some(*from),
                    Threshold::CostAbove => told.when.cost_above = Some(*from),
                }
                if let Some(existing) = pathway.escalation.iter_mut().find(|e| e.name == told.name)
                {
                    *existing = told;
                } else {
                    pathway.escalation.push(told);
                }
            }
        }
        ProposedChange::ApproveIrreversible { rule } => {
            if pathway.escalation.iter().any(|r| &r.name == rule) {
                return Err(stale(format!("rule `{rule}` exists already")));
            }
            pathway.escalation.push(EscalationRule {
                name: rule.clone(),
                when: Trigger {
                    effect_at_least: Some(EffectClass::Irreversible),
                    ..Trigger::default()
                },
                route: None,
                mode: EscalationMode::ApproveBefore,
                deadline: None,
                on_timeout: OnTimeoutSpec::Deny,
                allowed: vec![],
            });
        }
    }
    next.version = model.version + 1;
    let evidence: Vec<String> = suggestion
        .evidence
        .iter()
        .take(8)
        .map(|s| format!("#{s}"))
        .collect();
    next.changelog.push(ChangeLogEntry {
        version: next.version,
        summary: format!(
            "recalibration `{}` accepted: {} (evidence: {} entries, {}{})",
            suggestion.id,
            note,
            suggestion.evidence_count,
            evidence.join(", "),
            if suggestion.evidence.len() > 8 {
                ", ..."
            } else {
                ""
            }
        ),
        author: Some(by.to_string()),
        date: None,
    });
    let report = next.validate();
    if !report.is_ok() {
        return Err(AcceptError::Invalid {
            id: suggestion.id.clone(),
            report: report.to_string(),
        });
    }
    let d = diff(model, &next);
    Ok(Update {
        diff: d,
        gate_changes: vec![],
        model: next,
    })
}

/// The audit record of a human's answer to a suggestion (an [`AuditEvent::Custom`] of kind
/// `recalibration_accepted` or `recalibration_declined`, naming the evidence).
pub fn answer_record(
    suggestion: &Suggestion,
    by: &str,
    accepted: bool,
    note: &str,
    version: Option<u64>,
    at: Timestamp,
) -> AuditRecord {
    AuditRecord::new(
        Principal::Human(HumanId::from_name(by)),
        AuditEvent::Custom {
            kind: if accepted {
                "recalibration_accepted"
            } else {
                "recalibration_declined"
            }
            .into(),
            data: serde_json::json!({
                "suggestion": suggestion.id,
                "by": by,
                "note": note,
                "evidence": suggestion.evidence,
                "governance_version": version,
            }),
        },
    )
    .at(at)
}
