//! The governance model as a serde document: charter, anchors, roles, delegations per
//! pathway, budgets, version and change log.

use std::collections::BTreeMap;
use std::time::Duration;

use aios_core::{EffectClass, Money};
use serde::{Deserialize, Serialize};

use crate::duration::{serde_duration, serde_opt_duration};

/// The whole governance model of an organisation, as written in a JSON or TOML document.
///
/// Entities refer to each other by human-chosen keys (`founder`, `outreach`, `send-email`);
/// at runtime the ids are derived from the keys with `AnchorId::from_name`,
/// `RoleId::from_name` and `PathwayId::from_name` (and `HumanId::from_name` for holders).
///
/// Load with [`GovernanceModel::from_json`] or [`GovernanceModel::from_toml`], check with
/// [`GovernanceModel::validate`], turn into a decision engine with
/// [`GovernanceModel::compile`].
///
/// ```
/// use aios_governance::GovernanceModel;
/// let model = GovernanceModel::from_toml(r#"
/// version = 1
///
/// [charter]
/// intent = "a one-person company"
/// final_authority = "founder"
///
/// [[anchors]]
/// key = "founder"
/// title = "Founder"
/// holders = ["alice"]
/// response_time = "4h"
/// "#)?;
/// assert_eq!(model.version, 1);
/// assert_eq!(model.anchors[0].response_time.as_secs(), 4 * 3600);
/// # Ok::<(), aios_governance::ManifestError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceModel {
    /// The document format version ([`MODEL_SCHEMA_VERSION`] when absent). A document of a
    /// newer format than this build reads is refused, not misread.
    #[serde(default = "current_schema")]
    pub schema: u32,
    /// The model version; decisions and runs are pinned to it.
    pub version: u64,
    /// What changed in each version, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changelog: Vec<ChangeLogEntry>,
    /// Intent, hard boundaries and the final authority.
    pub charter: Charter,
    /// The human roles that are accountable.
    #[serde(default)]
    pub anchors: Vec<Anchor>,
    /// The roles agents run under.
    #[serde(default)]
    pub roles: Vec<ManifestRole>,
    /// One delegation per execution pathway.
    #[serde(default)]
    pub pathways: Vec<Pathway>,
    /// Spending limits.
    #[serde(default)]
    pub budgets: Vec<Budget>,
}

/// The governance document format this build writes and reads (and every older one).
pub const MODEL_SCHEMA_VERSION: u32 = 1;

fn current_schema() -> u32 {
    MODEL_SCHEMA_VERSION
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeLogEntry {
    /// The version this entry introduced.
    pub version: u64,
    /// What changed and why.
    pub summary: String,
    /// Who made the change (a human key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// When, as written by the author (`2026-01-15`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// The foundation: what the organisation is for, and what no delegation can ever lift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charter {
    /// The organisation's intent, in words.
    pub intent: String,
    /// Non-negotiable principles, in words (for humans and transcripts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_negotiables: Vec<String>,
    /// The machine-checked hard limits.
    #[serde(default)]
    pub boundaries: Boundaries,
    /// The anchor with the final say (the key of an anchor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_authority: Option<String>,
}

/// Hard limits of the charter: a request beyond them is denied, whatever any delegation,
/// override or approval says, and a delegation wider than them is a validation error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boundaries {
    /// Actions no agent may ever take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden_actions: Vec<String>,
    /// The widest effect class any agent may cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_effect: Option<EffectClass>,
    /// The most one action may cost, in minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_action: Option<Money>,
    /// The most money one action may move (a payment, a transfer), in minor units or as a
    /// decimal string (`"1000.00"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount_per_action: Option<Money>,
    /// The highest risk score (0-100) any action may carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_risk: Option<u32>,
    /// The lowest confidence (0.0-1.0) an agent may act on. When set, a request without a
    /// confidence is denied (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f32>,
}

/// An accountability anchor: a human role that is structurally defined, formally responsible
/// and escalation-ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The key other entities refer to (`founder`).
    pub key: String,
    /// The title (`Founder and CEO`).
    pub title: String,
    /// The humans who hold the role (human keys, `HumanId::from_name(key)` at runtime).
    #[serde(default)]
    pub holders: Vec<String>,
    /// Who stands in when the holders are away (a human key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deputy: Option<String>,
    /// What the anchor is responsible for, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub responsibilities: Vec<String>,
    /// How fast the anchor is expected to answer; the default approval deadline.
    #[serde(with = "serde_duration")]
    pub response_time: Duration,
    /// The anchor to go to when this one does not answer in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalates_to: Option<String>,
}

/// A role template agents run under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRole {
    /// The key (`outreach`), `RoleId::from_name(key)` at runtime.
    pub key: String,
    /// What the role does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The delegation of one execution pathway: who is accountable, which role may act, within
/// which limits, and when a human must be brought in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pathway {
    /// The key (`send-email`), `PathwayId::from_name(key)` at runtime.
    pub key: String,
    /// What the pathway is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The accountable anchor (an anchor key). Required; a missing one is a finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// The role the work is delegated to (a role key). Required; a missing one is a finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<String>,
    /// What the delegate may do alone.
    #[serde(default)]
    pub limits: AutonomyLimits,
    /// When to bring a human in. Required: a delegation without escalation design is a
    /// structural risk and a finding.
    #[serde(default)]
    pub escalation: Vec<EscalationRule>,
}

/// What a delegate may do on its own. Anything not listed is outside the delegation.
///
/// Limits that need counting over time (cost per period, calls per hour) are budgets: a
/// [`Budget`] for the role or agent with a [`Period`] and a `tool_calls` or `cost` limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutonomyLimits {
    /// The actions the delegate may take (`"*"` for any action the charter does not forbid).
    #[serde(default)]
    pub actions: Vec<String>,
    /// The effect classes the delegate may cause.
    #[serde(default)]
    pub effects: Vec<EffectClass>,
    /// Above this estimated cost per action, the accountable anchor must approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_action: Option<Money>,
    /// Above this much money moved by one action, the accountable anchor must approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount_per_action: Option<Money>,
    /// Above this risk score, the accountable anchor must approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_risk: Option<u32>,
    /// Below this confidence (or without one), the accountable anchor must approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f32>,
}

/// When a rule fires and who is brought in, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRule {
    /// The rule's name, unique within its pathway (`large-spend`).
    pub name: String,
    /// The thresholds; the rule fires when every condition given holds.
    #[serde(default)]
    pub when: Trigger,
    /// The anchor to go to (an anchor key); the pathway's accountable anchor when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Ask before, tell after, or stop.
    pub mode: EscalationMode,
    /// How long the anchor has to answer; its response time when absent.
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Duration>,
    /// What happens when nobody answers in time (deny by default).
    #[serde(default)]
    pub on_timeout: OnTimeoutSpec,
    /// The answers the anchor may give (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<ResponseKind>,
}

/// The thresholds of an escalation rule. Every condition given must hold for the rule to
/// fire; a trigger without any condition fires on every request (a warning).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// The estimated cost is above this amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_above: Option<Money>,
    /// The money the action moves is above this amount (`amount_above = "200.00"`: payments
    /// above 200.00). An action that moves no money never matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_above: Option<Money>,
    /// The risk score is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_at_least: Option<u32>,
    /// The confidence is below this (a missing confidence counts as below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_below: Option<f32>,
    /// The effect class is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_at_least: Option<EffectClass>,
    /// The action is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// The request context has these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context_equals: BTreeMap<String, serde_json::Value>,
}

impl Trigger {
    /// Whether no condition is given (the rule fires on every request).
    pub fn is_empty(&self) -> bool {
        self.cost_above.is_none()
            && self.amount_above.is_none()
            && self.risk_at_least.is_none()
            && self.confidence_below.is_none()
            && self.effect_at_least.is_none()
            && self.actions.is_empty()
            && self.context_equals.is_empty()
    }
}

/// How an escalation brings the anchor in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationMode {
    /// The anchor must approve before the action runs.
    ApproveBefore,
    /// The action runs; the anchor is told afterwards.
    NotifyAfter,
    /// The work stops and the anchor takes over.
    Halt,
}

impl std::fmt::Display for EscalationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EscalationMode::ApproveBefore => "approve_before",
            EscalationMode::NotifyAfter => "notify_after",
            EscalationMode::Halt => "halt",
        })
    }
}

/// What happens when an approval deadline passes, as written in a document: `"deny"` or
/// `{ escalate = "founder" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeoutSpec {
    /// The action is denied (the default).
    #[default]
    Deny,
    /// The request goes to this anchor (an anchor key).
    Escalate(String),
}

/// An answer an anchor may give to an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseKind {
    /// Approve as requested.
    Approve,
    /// Approve an edited action.
    Edit,
    /// Reject.
    Reject,
}

impl ResponseKind {
    /// All answers.
    pub const ALL: [ResponseKind; 3] = [
        ResponseKind::Approve,
        ResponseKind::Edit,
        ResponseKind::Reject,
    ];
}

impl std::fmt::Display for ResponseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseKind::Approve => "approve",
            ResponseKind::Edit => "edit",
            ResponseKind::Reject => "reject",
        })
    }
}

/// A budget in the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The budget's key (`org-monthly`).
    pub key: String,
    /// What it limits: `"organisation"`, `{ role = "outreach" }`, `{ agent = "ana" }`, or
    /// `"run"` (a limit every run gets).
    pub scope: BudgetScope,
    /// The budget this one is part of (a budget key); the organisation's budget by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// When usage resets.
    #[serde(default)]
    pub period: Period,
    /// The limits per dimension (absent: unlimited).
    #[serde(default)]
    pub limits: Limits,
    /// Alert thresholds in percent of each limit (default 50, 80, 100).
    #[serde(default = "default_alerts")]
    pub alerts: Vec<u32>,
}

pub(crate) fn default_alerts() -> Vec<u32> {
    vec![50, 80, 100]
}

/// What a budget limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// The whole organisation.
    Organisation,
    /// Every agent of a role together (a role key).
    Role(String),
    /// One agent (an agent key, `AgentId::from_name(key)` at runtime).
    Agent(String),
    /// Each run, separately.
    Run,
}

impl BudgetScope {
    /// Depth in the hierarchy organisation (0) > role (1) > agent (2) > run (3).
    pub fn level(&self) -> u8 {
        match self {
            BudgetScope::Organisation => 0,
            BudgetScope::Role(_) => 1,
            BudgetScope::Agent(_) => 2,
            BudgetScope::Run => 3,
        }
    }
}

/// When a budget's usage resets. Windows are calendar-aligned in UTC and evaluated with the
/// injected clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Never: the limit holds for the budget's whole life (per run for run budgets).
    #[default]
    Total,
    /// Each clock hour.
    Hour,
    /// Each UTC day.
    Day,
    /// Each ISO week (from Monday).
    Week,
    /// Each calendar month.
    Month,
}

/// Limits per dimension; `None` is unlimited. A budget exhausted in any limited dimension
/// refuses every further reservation, whatever it asks for (a zero-amount one included), so a
/// limit of `0` closes the budget entirely (validation warns); leave a dimension unlimited
/// rather than at zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Money spent: model and tool costs (`spend` is read as an alias).
    #[serde(default, alias = "spend", skip_serializing_if = "Option::is_none")]
    pub cost: Option<Money>,
    /// Money moved by actions (payments, transfers), which is not spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payments: Option<Money>,
    /// Model tokens, input plus output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Connector and tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
    /// Accumulated risk scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_points: Option<u64>,
}

/// The document formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Toml => "toml",
        })
    }
}

/// A governance document could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The document is not valid: the path says where (`pathways[3].escalation[0].route`),
    /// the message what is wrong.
    #[error("invalid {format} governance document at `{path}`: {message}")]
    Invalid {
        /// The format read.
        format: Format,
        /// Where in the document (`.` for the whole document).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The model could not be written.
    #[error("cannot write governance model as {format}: {message}")]
    Write {
        /// The format written.
        format: Format,
        /// Why.
        message: String,
    },
}

impl ManifestError {
    /// The path in the document, for [`ManifestError::Invalid`].
    pub fn path(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { path, .. } => Some(path),
            ManifestError::Write { .. } => None,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl GovernanceModel {
    /// Reads a model from JSON. Errors name the path in the document and what is wrong.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let model: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ManifestError::Invalid {
                format: Format::Json,
                path,
                message: first_line(&inner.to_string()),
            }
        })?;
        de.end().map_err(|e| ManifestError::Invalid {
            format: Format::Json,
            path: ".".into(),
            message: first_line(&e.to_string()),
        })?;
        model.check_schema(Format::Json)
    }

    /// Reads a model from TOML. Errors name the path in the document and what is wrong.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let message = first_line(e.message());
            let message = match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message,
            };
            ManifestError::Invalid {
                format: Format::Toml,
                path: ".".into(),
                message,
            }
        })?;
        let model: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ManifestError::Invalid {
                format: Format::Toml,
                path,
                message: first_line(inner.message()),
            }
        })?;
        model.check_schema(Format::Toml)
    }

    fn check_schema(self, format: Format) -> Result<Self, ManifestError> {
        if self.schema == 0 || self.schema > MODEL_SCHEMA_VERSION {
            return Err(ManifestError::Invalid {
                format,
                path: "schema".into(),
                message: format!(
                    "unsupported schema version `{}` (this build reads 1 to {MODEL_SCHEMA_VERSION})",
                    self.schema
                ),
            });
        }
        Ok(self)
    }

    /// Writes the model as pretty JSON.
    pub fn to_json(&self) -> Result<String, ManifestError> {
        serde_json::to_string_pretty(self).map_err(|e| ManifestError::Write {
            format: Format::Json,
            message: e.to_string(),
        })
    }

    /// Writes the model as TOML.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        toml::to_string(self).map_err(|e| ManifestError::Write {
            format: Format::Toml,
            message: e.to_string(),
        })
    }

    /// The anchor with this key.
    pub fn anchor(&self, key: &str) -> Option<&Anchor> {
        self.anchors.iter().find(|a| a.key == key)
    }

    /// The pathway with this key.
    pub fn pathway(&self, key: &str) -> Option<&Pathway> {
        self.pathways.iter().find(|p| p.key == key)
    }

    /// The role with this key.
    pub fn role(&self, key: &str) -> Option<&ManifestRole> {
        self.roles.iter().find(|r| r.key == key)
    }

    /// The budget with this key.
    pub fn budget(&self, key: &str) -> Option<&Budget> {
        self.budgets.iter().find(|b| b.key == key)
    }
}
