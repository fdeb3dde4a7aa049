//! Requests, decisions and verdicts: the values that go in and out of the decision function.

use std::collections::BTreeMap;
use std::time::Duration;

use aios_core::{
    AnchorId, AuditEvent, AuditRecord, DecisionKind, EffectClass, Money, PathwayId, Principal,
    RoleId, RunId, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::controls::{ControlTarget, Halt, Relaxation};
use crate::duration::serde_duration;
use crate::model::{EscalationMode, ResponseKind};

/// The ids of the built-in rules, as they appear in [`FiredRule::rule`]. Escalation rules
/// appear as `escalation:<name>`, custom policies as `policy:<policy>:<rule>`.
pub mod rules {
    /// The request is malformed (risk above 100, confidence outside 0..1, negative cost,
    /// empty action).
    pub const MALFORMED: &str = "request.malformed";
    /// An operator pause is in force.
    pub const PAUSED: &str = "control.paused";
    /// An operator stop (kill switch) is in force.
    pub const STOPPED: &str = "control.stopped";
    /// A time-limited override loosened the delegation.
    pub const OVERRIDE: &str = "control.override";
    /// The pathway is not in the model.
    pub const UNKNOWN_PATHWAY: &str = "pathway.unknown";
    /// The role is not in the model.
    pub const UNKNOWN_ROLE: &str = "role.unknown";
    /// The role is not the pathway's delegate.
    pub const NOT_DELEGATE: &str = "delegation.role";
    /// The charter forbids the action.
    pub const CHARTER_FORBIDDEN: &str = "charter.forbidden_action";
    /// The effect is wider than the charter allows.
    pub const CHARTER_EFFECT: &str = "charter.max_effect";
    /// The cost is above the charter's limit.
    pub const CHARTER_COST: &str = "charter.max_cost_per_action";
    /// The money the action moves is above the charter's limit.
    pub const CHARTER_AMOUNT: &str = "charter.max_amount_per_action";
    /// The risk is above the charter's limit.
    pub const CHARTER_RISK: &str = "charter.max_risk";
    /// The confidence is below the charter's minimum.
    pub const CHARTER_CONFIDENCE: &str = "charter.min_confidence";
    /// The action is not delegated on this pathway.
    pub const ACTION_NOT_DELEGATED: &str = "limits.actions";
    /// The effect class is not delegated on this pathway.
    pub const EFFECT_NOT_DELEGATED: &str = "limits.effects";
    /// The cost is above the delegation's autonomy limit.
    pub const LIMIT_COST: &str = "limits.max_cost_per_action";
    /// The money the action moves is above the delegation's autonomy limit.
    pub const LIMIT_AMOUNT: &str = "limits.max_amount_per_action";
    /// The risk is above the delegation's autonomy limit.
    pub const LIMIT_RISK: &str = "limits.max_risk";
    /// The confidence is below the delegation's minimum.
    pub const LIMIT_CONFIDENCE: &str = "limits.min_confidence";
    /// A custom policy named an anchor that cannot answer.
    pub const POLICY_BAD_ANCHOR: &str = "policy.unknown_anchor";
    /// Nothing fired: the request is within the delegation.
    pub const WITHIN_DELEGATION: &str = "delegation.within_limits";
}

/// What an agent (or anyone) asks to do: the input of the decision function.
///
/// ```
/// use aios_core::{AgentId, EffectClass, Money, PathwayId, Principal, RoleId};
/// use aios_governance::ActionRequest;
/// let req = ActionRequest::new(
///     Principal::Agent(AgentId::from_name("ana")),
///     RoleId::from_name("outreach"),
///     PathwayId::from_name("send-email"),
///     "send",
/// )
/// .with_effect(EffectClass::Irreversible)
/// .with_cost(Money::from_minor(5))
/// .with_risk(20)
/// .with_confidence(0.9);
/// assert_eq!(req.action, "send");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// Who asks.
    pub principal: Principal,
    /// The role the principal acts under.
    pub role: RoleId,
    /// The execution pathway.
    pub pathway: PathwayId,
    /// The action (`send`, `create_event`).
    pub action: String,
    /// How far it reaches.
    pub effect: EffectClass,
    /// What it is expected to cost (model and tool spend).
    pub estimated_cost: Money,
    /// The money the action moves (a payment, a transfer, a refund), which is not what it
    /// costs: limited by `max_amount_per_action`, `amount_above` triggers and the `payments`
    /// budget dimension. Zero for actions that move no money.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub amount: Money,
    /// A risk score from 0 to 100.
    pub risk: u32,
    /// How confident the agent is, from 0.0 to 1.0, if it knows.
    pub confidence: Option<f32>,
    /// Anything else rules may look at.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, serde_json::Value>,
    /// The run the action belongs to, if any (for audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
}

impl ActionRequest {
    /// A request with conservative defaults: effect [`EffectClass::Irreversible`], no cost,
    /// risk 0, no confidence, no context. Set the real values with the `with_*` methods.
    pub fn new(
        principal: Principal,
        role: RoleId,
        pathway: PathwayId,
        action: impl Into<String>,
    ) -> Self {
        Self {
            principal,
            role,
            pathway,
            action: action.into(),
            effect: EffectClass::Irreversible,
            estimated_cost: Money::ZERO,
            amount: Money::ZERO,
            risk: 0,
            confidence: None,
            context: BTreeMap::new(),
            run: None,
        }
    }

    /// Sets the effect class.
    pub fn with_effect(mut self, effect: EffectClass) -> Self {
        self.effect = effect;
        self
    }

    /// Sets the estimated cost.
    pub fn with_cost(mut self, cost: Money) -> Self {
        self.estimated_cost = cost;
        self
    }

    /// Sets the money the action moves.
    pub fn with_amount(mut self, amount: Money) -> Self {
        self.amount = amount;
        self
    }

    /// Sets the risk score (0-100).
    pub fn with_risk(mut self, risk: u32) -> Self {
        self.risk = risk;
        self
    }

    /// Sets the confidence (0.0-1.0).
    pub fn with_confidence(mut self, confidence: f32) -> Self {
        self.confidence = Some(confidence);
        self
    }

    /// Adds a context value.
    pub fn with_context(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.context.insert(key.into(), value);
        self
    }

    /// Sets the run.
    pub fn with_run(mut self, run: RunId) -> Self {
        self.run = Some(run);
        self
    }
}

/// What happens when an approval deadline passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "anchor", rename_all = "snake_case")]
pub enum OnTimeout {
    /// The action is denied (the default).
    #[default]
    Deny,
    /// The request goes to this anchor.
    Escalate(AnchorId),
}

/// The verdict of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Verdict {
    /// The agent may act alone.
    Allow,
    /// The action is refused.
    Deny,
    /// A holder or deputy of `anchor` must approve first.
    RequireApproval {
        /// Who must approve.
        anchor: AnchorId,
        /// How long they have, from now.
        #[serde(with = "serde_duration")]
        deadline: Duration,
        /// The answers they may give.
        allowed: Vec<ResponseKind>,
        /// What happens if they do not answer in time.
        on_timeout: OnTimeout,
    },
    /// The anchor is brought in: told after the fact ([`EscalationMode::NotifyAfter`], the
    /// action proceeds) or handed the work ([`EscalationMode::Halt`], the action stops).
    Escalate {
        /// Who is brought in.
        anchor: AnchorId,
        /// How.
        mode: EscalationMode,
    },
}

impl Verdict {
    /// The verdict as recorded in audit events.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Verdict::Allow => DecisionKind::Allow,
            Verdict::Deny => DecisionKind::Deny,
            Verdict::RequireApproval { .. } => DecisionKind::RequireApproval,
            Verdict::Escalate { .. } => DecisionKind::Escalate,
        }
    }

    /// How restrictive the verdict is: allow (0) < notify after (1) < require approval (2)
    /// < halt (3) < deny (4). Combination keeps the most restrictive (deny overrides).
    pub fn strictness(&self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Escalate {
                mode: EscalationMode::NotifyAfter,
                ..
            } => 1,
            Verdict::RequireApproval { .. }
            | Verdict::Escalate {
                mode: EscalationMode::ApproveBefore,
                ..
            } => 2,
            Verdict::Escalate {
                mode: EscalationMode::Halt,
                ..
            } => 3,
            Verdict::Deny => 4,
        }
    }
}

/// Why a rule fired: the condition and the numbers it compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Condition {
    /// A field of the request is out of range.
    Malformed {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// An operator control is in force.
    Control {
        /// Where.
        target: ControlTarget,
        /// Which.
        halt: Halt,
    },
    /// A time-limited override changed the outcome.
    Override {
        /// What it loosened.
        relax: Relaxation,
        /// Until when.
        until: Timestamp,
    },
    /// The pathway is not known.
    UnknownPathway,
    /// The role is not known.
    UnknownRole,
    /// The role is not the pathway's delegate.
    NotDelegate {
        /// The pathway's delegate.
        delegate: RoleId,
    },
    /// The action is forbidden by the charter.
    ForbiddenAction {
        /// The action.
        action: String,
    },
    /// The action is not delegated.
    ActionNotDelegated {
        /// The action.
        action: String,
    },
    /// The effect class is not delegated.
    EffectNotDelegated {
        /// The effect.
        effect: EffectClass,
    },
    /// The effect class is wider than the limit.
    EffectAbove {
        /// The limit.
        limit: EffectClass,
        /// The request's.
        actual: EffectClass,
    },
    /// The effect class is at least the threshold.
    EffectAtLeast {
        /// The threshold.
        threshold: EffectClass,
        /// The request's.
        actual: EffectClass,
    },
    /// The cost is above the threshold.
    CostAbove {
        /// The threshold.
        threshold: Money,
        /// The request's estimate.
        actual: Money,
    },
    /// The money moved is above the threshold.
    AmountAbove {
        /// The threshold.
        threshold: Money,
        /// The money the request moves.
        actual: Money,
    },
    /// The risk is above the limit.
    RiskAbove {
        /// The limit.
        threshold: u32,
        /// The request's.
        actual: u32,
    },
    /// The risk is at least the threshold.
    RiskAtLeast {
        /// The threshold.
        threshold: u32,
        /// The request's.
        actual: u32,
    },
    /// The confidence is below the threshold (or missing).
    ConfidenceBelow {
        /// The threshold.
        threshold: f32,
        /// The request's.
        actual: Option<f32>,
    },
    /// The action is one the rule lists.
    ActionListed {
        /// The action.
        action: String,
    },
    /// The context has the values the rule looks for.
    ContextMatches {
        /// The keys compared.
        keys: Vec<String>,
    },
    /// The rule has no condition and always fires.
    Always,
    /// A custom policy's reason.
    Policy {
        /// The reason it gave.
        reason: String,
    },
    /// Nothing fired.
    WithinLimits,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Malformed { field, problem } => write!(f, "`{field}` {problem}"),
            Condition::Control { target, halt } => write!(f, "{target} is {halt}"),
            Condition::Override { relax, until } => write!(f, "override: {relax} until {until}"),
            Condition::UnknownPathway => f.write_str("the pathway is not in the model"),
            Condition::UnknownRole => f.write_str("the role is not in the model"),
            Condition::NotDelegate { delegate } => {
                write!(f, "the pathway is delegated to {delegate:?}, not this role")
            }
            Condition::ForbiddenAction { action } => {
                write!(f, "action `{action}` is forbidden by the charter")
            }
            Condition::ActionNotDelegated { action } => {
                write!(f, "action `{action}` is not delegated")
            }
            Condition::EffectNotDelegated { effect } => {
                write!(f, "effect `{effect}` is not delegated")
            }
            Condition::EffectAbove { limit, actual } => {
                write!(f, "effect `{actual}` is wider than `{limit}`")
            }
            Condition::EffectAtLeast { threshold, actual } => {
                write!(f, "effect `{actual}` >= `{threshold}`")
            }
            Condition::CostAbove { threshold, actual } => {
                write!(f, "estimated cost {actual} > {threshold}")
            }
            Condition::AmountAbove { threshold, actual } => {
                write!(f, "amount moved {actual} > {threshold}")
            }
            Condition::RiskAbove { threshold, actual } => write!(f, "risk {actual} > {threshold}"),
            Condition::RiskAtLeast { threshold, actual } => {
                write!(f, "risk {actual} >= {threshold}")
            }
            Condition::ConfidenceBelow { threshold, actual } => match actual {
                Some(a) => write!(f, "confidence {a} < {threshold}"),
                None => write!(f, "no confidence given (minimum {threshold})"),
            },
            Condition::ActionListed { action } => write!(f, "action `{action}` is listed"),
            Condition::ContextMatches { keys } => write!(f, "context matches {keys:?}"),
            Condition::Always => f.write_str("always"),
            Condition::Policy { reason } => f.write_str(reason),
            Condition::WithinLimits => f.write_str("within the delegation's limits"),
        }
    }
}

/// A rule that fired, what it asked for, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiredRule {
    /// The rule's id (see [`rules`]).
    pub rule: String,
    /// What the rule asked for on its own.
    pub outcome: DecisionKind,
    /// The conditions that held, with their thresholds.
    pub conditions: Vec<Condition>,
}

impl FiredRule {
    pub(crate) fn new(rule: &str, outcome: DecisionKind, condition: Condition) -> Self {
        Self {
            rule: rule.to_string(),
            outcome,
            conditions: vec![condition],
        }
    }
}

/// The outcome of the decision function: a value, never an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// Every rule that fired, in evaluation order.
    pub fired: Vec<FiredRule>,
    /// The governance model version that decided.
    pub model_version: u64,
}

impl Decision {
    /// The verdict as recorded in audit events.
    pub fn kind(&self) -> DecisionKind {
        self.verdict.kind()
    }

    /// Whether the action may go ahead now (allowed, or allowed with a notification after).
    pub fn may_proceed(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Allow
                | Verdict::Escalate {
                    mode: EscalationMode::NotifyAfter,
                    ..
                }
        )
    }

    /// The ids of the rules that fired.
    pub fn rule_ids(&self) -> Vec<String> {
        self.fired.iter().map(|r| r.rule.clone()).collect()
    }

    /// Whether the rule with this id fired.
    pub fn fired(&self, rule: &str) -> bool {
        self.fired.iter().any(|r| r.rule == rule)
    }

    /// A human-readable account: the verdict, the model version, and each rule that fired
    /// with its thresholds.
    pub fn explain(&self) -> String {
        let mut out = match &self.verdict {
            Verdict::Allow => "allow".to_string(),
            Verdict::Deny => "deny".to_string(),
            Verdict::RequireApproval {
                anchor,
                deadline,
                allowed,
                on_timeout,
            } => format!(
                "require approval from {anchor:?} within {} (answers: {}; on timeout: {})",
                crate::duration::format(*deadline),
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                match on_timeout {
                    OnTimeout::Deny => "deny".to_string(),
                    OnTimeout::Escalate(a) => format!("escalate to {a:?}"),
                }
            ),
            Verdict::Escalate { anchor, mode } => format!("escalate to {anchor:?} ({mode})"),
        };
        out.push_str(&format!(" under governance model v{}", self.model_version));
        for r in &self.fired {
            let kind = match r.outcome {
                DecisionKind::Allow => "allow",
                DecisionKind::Deny => "deny",
                DecisionKind::RequireApproval => "require approval",
                DecisionKind::Escalate => "escalate",
            };
            let conds = r
                .conditions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ");
            out.push_str(&format!("\n- {} ({kind}): {conds}", r.rule));
        }
        out
    }

    /// The [`AuditEvent::DecisionMade`] recording this decision on `req`.
    pub fn audit_event(&self, req: &ActionRequest) -> AuditEvent {
        AuditEvent::DecisionMade {
            run: req.run,
            pathway: Some(req.pathway),
            action: req.action.clone(),
            decision: self.kind(),
            rules: self.rule_ids(),
            model_version: self.model_version,
        }
    }

    /// The audit record of this decision on `req`, made by the requester at `at`.
    pub fn audit_record(&self, req: &ActionRequest, at: Timestamp) -> AuditRecord {
        AuditRecord::new(req.principal, self.audit_event(req)).at(at)
    }
}

/// Checks that `name` is a valid action name: dot-separated segments of lowercase ASCII
/// letters, digits, `_` and `-` (`email.send`, `payments.transfer`, `model.complete`), at most
/// 200 bytes. Names are not canonicalised but refused, so `payments.transfer ` (a trailing
/// space), `Payments.Transfer` or a name with an invisible character can never slip past a
/// rule written for `payments.transfer`: [`Governor::decide`](crate::Governor::decide)
/// denies them as malformed, and the orchestrator refuses them before anything else.
///
/// ```
/// use aios_governance::check_action_name;
/// assert!(check_action_name("payments.transfer").is_ok());
/// assert!(check_action_name("payments.transfer ").is_err());
/// assert!(check_action_name("Payments.Transfer").is_err());
/// assert!(check_action_name("payments.\u{200b}transfer").is_err());
/// ```
pub fn check_action_name(name: &str) -> Result<(), String> {
    // the common case in one pass over the bytes; the message is built only on refusal
    let bytes = name.as_bytes();
    if !bytes.is_empty() && bytes.len() <= 200 {
        let mut prev_dot = true;
        let mut ok = true;
        for &b in bytes {
            let dot = b == b'.';
            if (dot && prev_dot)
                || !(dot || b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                ok = false;
                break;
            }
            prev_dot = dot;
        }
        if ok && !prev_dot {
            return Ok(());
        }
    }
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 200 {
        return Err(format!("is {} bytes long, more than 200", name.len()));
    }
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err(format!("`{}` has an empty segment", name.escape_debug()));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            let shown = if c.is_ascii_graphic() {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            };
            return Err(format!(
                "`{}` contains `{shown}`; names use lowercase ASCII letters, digits, `_`, `-` and `.`",
                name.escape_debug()
            ));
        }
    }
    Ok(())
}

fn is_zero(m: &Money) -> bool {
    *m == Money::ZERO
}
