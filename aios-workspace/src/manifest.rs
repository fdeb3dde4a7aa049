//! The workspace manifest: one TOML document (plus included files) over the five levels.

use std::collections::BTreeMap;
use std::time::Duration;

use aios_core::{EffectClass, Money};
use aios_governance::{
    Anchor, AutonomyLimits, Boundaries, Budget, ChangeLogEntry, EscalationRule, Pathway,
};
use aios_memory::{Access, MemoryKind, Tier};
use serde::{Deserialize, Serialize};

/// A whole workspace manifest, after includes are merged. Every level is optional so that a
/// manifest can describe one level only (the assessment then names the missing ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name, version and includes.
    pub workspace: WorkspaceMeta,
    /// Level 1: intent, outcomes, boundaries, authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundation: Option<Foundation>,
    /// Level 2: roles, connectors, memory, workflows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// Level 3: anchors, pathways, budgets (the governance model without its charter, which
    /// comes from the foundation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<GovernanceSection>,
    /// Level 4: roll-out phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<Implementation>,
    /// Level 5: targets, review cadence, recalibration policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Operations>,
}

/// The `[workspace]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceMeta {
    /// The workspace's name; ids of its seeds are derived from it.
    pub name: String,
    /// The manifest's version, written by its author (seed provenance names it).
    #[serde(default = "one")]
    pub version: u64,
    /// What the workspace is, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Further files in the same folder, merged into this one (`include = ["roles.toml"]`).
    /// Not part of the content hash: the same content split differently hashes the same.
    #[serde(default, skip_serializing)]
    pub include: Vec<String>,
}

fn one() -> u64 {
    1
}

/// Level 1, the foundation: it becomes the governance charter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Foundation {
    /// What AI is for here, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intent: String,
    /// The outcomes AI should improve, each measurable and with a target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<OutcomeDecl>,
    /// Principles in words that no delegation may compromise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_negotiables: Vec<String>,
    /// The machine-checked hard limits (the charter's boundaries).
    #[serde(default)]
    pub boundaries: Boundaries,
    /// The anchor with the final say (an anchor key of the governance level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_authority: Option<String>,
}

/// One outcome AI should improve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeDecl {
    /// Its key.
    pub key: String,
    /// In words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// How it is measured (`proposals_sent_per_week`, `autonomy_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The target; an outcome without one is a finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Bound>,
}

/// A target as a bound: at least, at most, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
}

impl Bound {
    /// Whether `value` is within the bound.
    pub fn holds(&self, value: f64) -> bool {
        self.at_least.map_or(true, |l| value >= l) && self.at_most.map_or(true, |u| value <= u)
    }
}

/// Level 2, the architecture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// The roles agents play, from templates or custom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleDecl>,
    /// The connectors to the outside world.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<ConnectorDecl>,
    /// Memory layout and seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryLayout>,
    /// Workflows as data, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflows: BTreeMap<String, WorkflowDecl>,
}

/// A role in the manifest: a template's fields, each overridable, or a custom role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDecl {
    /// The role's key (`RoleId::from_name(key)` at runtime).
    pub key: String,
    /// The template it starts from (`researcher`, `scheduler`, `editor`, `sales_outreach`,
    /// `bookkeeper`); a custom role when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// What the role does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Instructions for its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Its default pathway's key (the role's key when absent). When the governance level
    /// defines no pathway of that key, one is made from the role's limits and escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    /// The accountable anchor of a made pathway (the final authority when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// The connectors its agent may call (connector keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectors: Option<Vec<String>>,
    /// Its memory grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<GrantDecl>>,
    /// Retry and timeout, field by field over the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDecl>,
    /// What a failure does to the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackDecl>,
    /// Upper bound on calls per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
    /// The limits of a made pathway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AutonomyLimits>,
    /// The escalation rules of a made pathway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Vec<EscalationRule>>,
}

/// A memory grant of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDecl {
    /// The scope prefix (`org/clients`).
    pub scope: String,
    /// The tiers (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// Read, write or both.
    pub access: Access,
}

/// Retry and timeout settings; absent fields keep the template's (or the default's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDecl {
    /// Attempts in all (1 = no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The first back-off delay (`"500ms"`, `"2s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_delay: Option<Dur>,
    /// The longest back-off delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Dur>,
    /// The time one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<Dur>,
    /// The time all attempts together may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall_timeout: Option<Dur>,
}

/// What a failure of the role does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackDecl {
    /// The run fails.
    FailRun,
    /// The task is skipped with a null output and the run goes on.
    Skip,
    /// The accountable anchor is notified and the run fails.
    Escalate,
}

/// A connector: what it is, its configuration, the names of its credentials and the effect
/// class of each operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDecl {
    /// Its key (the `ConnectorId` the host registers).
    pub key: String,
    /// Built in, MCP or registered by the host.
    #[serde(default)]
    pub kind: ConnectorKind,
    /// Configuration passed to the host (never secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Names of credentials in the vault, never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// The effect class of each operation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, EffectClass>,
}

/// Where a connector comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// Registered by the host under its key (the default).
    #[default]
    Host,
    /// Shipped with AIOS.
    Builtin,
    /// An MCP server.
    Mcp,
}

/// Memory layout: scopes, retention per tier, seeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLayout {
    /// The scopes in use (`org`, `org/clients`); seeds and grants must fall under one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// How long records of each tier are kept.
    #[serde(default)]
    pub retention: Retention,
    /// Facts the workspace starts with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SeedDecl>,
}

/// Retention per tier (absent: kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Working memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working: Option<Dur>,
    /// Project memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Dur>,
    /// Long-term memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_term: Option<Dur>,
}

/// A memory seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedDecl {
    /// Its key, unique in the workspace; the record's id is derived from it.
    pub key: String,
    /// Its scope.
    pub scope: String,
    /// Its tier (long-term by default).
    #[serde(default = "long_term")]
    pub tier: Tier,
    /// Its kind (a fact by default).
    #[serde(default)]
    pub kind: MemoryKind,
    /// The content.
    pub content: String,
    /// Never evicted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

fn long_term() -> Tier {
    Tier::LongTerm
}

/// A workflow as data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDecl {
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its tasks.
    #[serde(default)]
    pub tasks: Vec<TaskDecl>,
}

/// A task of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDecl {
    /// Its name, unique in the workflow.
    pub name: String,
    /// The role that does it (a role key).
    pub role: String,
    /// The tasks it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Its input.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub input: serde_json::Value,
}

/// Level 3: the governance model without its charter and roles (which come from the
/// foundation and the architecture).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSection {
    /// The governance model's version.
    #[serde(default = "one")]
    pub version: u64,
    /// Its change log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changelog: Vec<ChangeLogEntry>,
    /// The accountability anchors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<Anchor>,
    /// The pathways (more are made from roles that name a pathway not listed here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pathways: Vec<Pathway>,
    /// The budgets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
}

/// Level 4: the roll-out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Implementation {
    /// The phases, in no particular order (dependencies order them).
    #[serde(default)]
    pub phases: Vec<Phase>,
}

/// A roll-out phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Its key.
    pub key: String,
    /// In words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The anchor that owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Phases that must be entered first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// What entering it enables.
    #[serde(default)]
    pub enables: Enables,
    /// The evidence thresholds for entering it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<EntryCriterion>,
    /// Where it stands.
    #[serde(default)]
    pub status: PhaseStatus,
}

/// What a phase enables: until it is entered, its pathways are denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enables {
    /// Pathway keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pathways: Vec<String>,
    /// Workflow names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<String>,
}

/// An evidence threshold: on one pathway or one workflow, the numbers that must be reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryCriterion {
    /// The pathway whose evidence counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    /// The workflow whose evidence counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// At least this many actions decided on the pathway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_actions: Option<u64>,
    /// At least this many completed runs of the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_completed_runs: Option<u64>,
    /// At most this many rejected (or expired) approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rejections: Option<u64>,
    /// At most this many failures (failed calls on a pathway, failed runs of a workflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u64>,
}

/// Where a phase stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    /// Not entered: what it enables is denied.
    #[default]
    Planned,
    /// Entered: what it enables runs.
    Entered,
    /// Finished.
    Done,
}

impl PhaseStatus {
    /// Whether what the phase enables may run.
    pub fn is_entered(self) -> bool {
        matches!(self, PhaseStatus::Entered | PhaseStatus::Done)
    }
}

impl std::fmt::Display for PhaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PhaseStatus::Planned => "planned",
            PhaseStatus::Entered => "entered",
            PhaseStatus::Done => "done",
        })
    }
}

/// Level 5: operations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    /// The targets the operations report is measured against.
    #[serde(default)]
    pub targets: Targets,
    /// How often the model is reviewed (`"1w"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_cadence: Option<Dur>,
    /// How evidence may change the governance model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalibration: Option<RecalibrationPolicy>,
}

/// The operations targets (absent: not measured against).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Share of decided actions that needed no human, at least (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_autonomy_rate: Option<f64>,
    /// Share of decided actions escalated or sent for approval, at most (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_escalation_rate: Option<f64>,
    /// Approval latency, 95th percentile, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_approval_latency_p95: Option<Dur>,
    /// Share of approval requests rejected or expired, at most (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rejection_rate: Option<f64>,
    /// Cost per completed run, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_completed_run: Option<Money>,
    /// Share of runs failed, at most (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_rate: Option<f64>,
    /// Share of the organisation's spend budget used in the window, at most (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_burn: Option<f64>,
}

impl Targets {
    /// Whether no target is set.
    pub fn is_empty(&self) -> bool {
        *self == Targets::default()
    }
}

/// How evidence may change the governance model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecalibrationPolicy {
    /// Decided actions a pathway needs in the window before a suggestion is made.
    pub min_evidence: u64,
    /// The window of evidence (`"30d"`).
    pub window: Dur,
    /// The largest change of a limit in one step, in percent.
    pub max_step_percent: u32,
}

/// A duration written as a number and a unit: `500ms`, `90s`, `15m`, `24h`, `30d`, `2w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `500ms`, `90s`, `15m`, `24h`, `30d` or `2w`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration `{text}` has no unit (ms, s, m, h, d or w)"))?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("duration `{text}` does not start with a whole number"))?;
        let secs = match unit {
            "ms" => return Ok(Dur(Duration::from_millis(n))),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            other => {
                return Err(format!(
                    "duration `{text}` has unknown unit `{other}` (ms, s, m, h, d or w)"
                ))
            }
        };
        n.checked_mul(secs)
            .map(|s| Dur(Duration::from_secs(s)))
            .ok_or_else(|| format!("duration `{text}` is too long"))
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
            if s != 0 && s % n == 0 {
                return write!(f, "{}{unit}", s / n);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("24h", 86_400),
            ("2w", 1_209_600),
        ] {
            let d = Dur::parse(text).unwrap_or_default();
            assert_eq!(d.0.as_secs(), secs, "{text}");
        }
        assert_eq!(Dur::parse("500ms").map(|d| d.0.as_millis()), Ok(500));
        assert_eq!(Dur(Duration::from_secs(86_400)).to_string(), "1d");
        assert_eq!(Dur(Duration::from_secs(90)).to_string(), "90s");
        for bad in ["", "10", "h", "10y", "-1h", "99999999999999999999w"] {
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_hold() {
        let b = Bound {
            at_least: Some(0.5),
            at_most: Some(0.9),
        };
        assert!(b.holds(0.5) && b.holds(0.9) && !b.holds(0.49) && !b.holds(0.91));
    }
}
