//! The operations report: one streaming pass over any audit log, for a time window, per
//! pathway, role, agent and workflow, each against the Operations targets.
//!
//! How each figure is counted (from the typed [`AuditEvent`]s):
//!
//! | figure | counted from |
//! |---|---|
//! | actions | `DecisionMade` (every governance decision) |
//! | allowed / sent for approval / escalated / denied | its `decision` (`allow`, `require_approval`, `escalate`, `deny`) |
//! | autonomy rate | allowed / (allowed + sent for approval + escalated): of the actions that went ahead or went to a human, the share no human was needed for; denials are left out |
//! | escalation rate | (sent for approval + escalated) / actions |
//! | denials by rule | each rule of a `deny` decision |
//! | approvals requested / approved / edited / rejected / expired | `ApprovalRequested`, `ApprovalDecided` (attributed to the pathway of the run's last `require_approval` decision of the same action) |
//! | approval latency p50 / p95 | `ApprovalDecided.at - ApprovalRequested.at` of answered requests (nearest rank) |
//! | rejection rate | (rejected + expired) / approvals decided |
//! | failures / retries | `ModelCalled` and `ConnectorInvoked` with outcome `failed` / with `attempt > 1` |
//! | breaker refusals | calls refused by an open circuit breaker, as the orchestrator records them (a `detail` mentioning `breaker open` or `circuit open`) |
//! | tokens / cost | `ModelCalled` usage and cost, plus `ConnectorInvoked` cost |
//! | runs completed / failed | `RunFinished` with outcome `succeeded` / `failed` |
//! | failure rate | failed / (completed + failed) runs |
//! | cost per completed run | cost / completed runs |
//! | budget burn | cost in the window / the organisation's spend limit (when given) |
//!
//! The report also holds the totals over time ([`OpsReport::series`]): one [`Bucket`] per day
//! (or week, [`ReportBuilder::interval`]) from the first to the last one with an entry in the
//! window, each counting what happened in it (by the entry's time): actions and their
//! autonomy rate, approvals answered and their latency, cost, runs completed and cost per
//! completed run (the bucket's cost over the runs completed in it).
//!
//! Events are attributed through what came before them, also before the window: a task's
//! role and agent from its `TaskStarted`, a run's workflow from its `RunStarted`, a decision's
//! agent from the entry's actor. Only entries inside the window are counted.

use std::collections::BTreeMap;

use aios_core::{
    AgentId, ApprovalId, ApprovalOutcome, AuditEntry, AuditEvent, AuditLog, DecisionKind, Money,
    Outcome, PathwayId, RoleId, RunId, StoreError, TaskId, Timestamp,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::manifest::Targets;

/// How many audit sequence numbers of each kind a group keeps as evidence.
pub const EVIDENCE_CAP: usize = 64;

/// The window of a report: entries at or after `from` and before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start, inclusive.
    pub from: Timestamp,
    /// End, exclusive.
    pub to: Timestamp,
}

impl Window {
    /// Everything.
    pub fn all() -> Self {
        Window {
            from: Timestamp::MIN_UTC,
            to: Timestamp::MAX_UTC,
        }
    }

    fn contains(&self, at: Timestamp) -> bool {
        at >= self.from && at < self.to
    }
}

/// Names to show instead of ids (from the bootstrap's [`crate::Ids`]).
#[derive(Debug, Clone, Default)]
pub struct Names {
    pathways: FxHashMap<PathwayId, String>,
    roles: FxHashMap<RoleId, String>,
    agents: FxHashMap<AgentId, String>,
}

impl Names {
    /// The names of a bootstrap's ids.
    pub fn from_ids(ids: &crate::Ids) -> Self {
        Names {
            pathways: ids.pathways.iter().map(|(k, v)| (*v, k.clone())).collect(),
            roles: ids.roles.iter().map(|(k, v)| (*v, k.clone())).collect(),
            agents: ids.agents.iter().map(|(k, v)| (*v, k.clone())).collect(),
        }
    }
}

/// Sequence numbers of audit entries, the evidence of a figure (at most [`EVIDENCE_CAP`]
/// kept; `count` is all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// How many there were.
    pub count: u64,
    /// The first sequence numbers.
    pub seqs: Vec<u64>,
}

impl Evidence {
    fn add(&mut self, seq: u64) {
        self.count += 1;
        if self.seqs.len() < EVIDENCE_CAP {
            self.seqs.push(seq);
        }
    }
}

/// The figures of one group (a pathway, role, agent, workflow, or everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Governance decisions.
    pub actions: u64,
    /// Decided `allow`.
    pub allowed: u64,
    /// Decided `require_approval`.
    pub approval_required: u64,
    /// Decided `escalate`.
    pub escalated: u64,
    /// Decided `deny`.
    pub denied: u64,
    /// Denials by the rule that fired.
    pub denials_by_rule: BTreeMap<String, u64>,
    /// Approval requests.
    pub approvals_requested: u64,
    /// Approved as requested.
    pub approved: Evidence,
    /// Approved with an edit.
    pub edited: Evidence,
    /// Rejected.
    pub rejected: Evidence,
    /// Expired.
    pub expired: Evidence,
    /// Approval latency, median, in milliseconds.
    pub approval_latency_p50_ms: Option<u64>,
    /// Approval latency, 95th percentile, in milliseconds.
    pub approval_latency_p95_ms: Option<u64>,
    /// Failed model and connector calls.
    pub failures: Evidence,
    /// Retried calls (attempt above 1).
    pub retries: u64,
    /// Calls refused by an open breaker.
    pub breaker_refusals: u64,
    /// Model tokens.
    pub tokens: u64,
    /// Model and connector cost.
    pub cost: Money,
    /// Runs that completed.
    pub runs_completed: u64,
    /// Runs that failed.
    pub runs_failed: Evidence,
    /// Autonomy rate (see the table in the module docs).
    pub autonomy_rate: Option<f64>,
    /// Escalation rate.
    pub escalation_rate: Option<f64>,
    /// Rejection rate.
    pub rejection_rate: Option<f64>,
    /// Run failure rate.
    pub failure_rate: Option<f64>,
    /// Cost per completed run.
    pub cost_per_completed_run: Option<Money>,
    /// Budget burn (only on the total).
    pub budget_burn: Option<f64>,
    /// Each target against its figure.
    pub checks: Vec<Check>,
    #[serde(skip)]
    latencies: Vec<u64>,
}

/// One target against what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The target's name (`min_autonomy_rate`).
    pub target: String,
    /// The target value, as written.
    pub expected: String,
    /// The figure, as written (`none` without evidence).
    pub actual: String,
    /// Whether it is met (`None` without evidence).
    pub met: Option<bool>,
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    // nearest rank
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

impl Stats {
    fn finish(&mut self, targets: &Targets, budget: Option<Money>) {
        self.latencies.sort_unstable();
        self.approval_latency_p50_ms = percentile(&self.latencies, 0.50);
        self.approval_latency_p95_ms = percentile(&self.latencies, 0.95);
        self.latencies = Vec::new();
        let human = self.approval_required + self.escalated;
        self.autonomy_rate = ratio(self.allowed, self.allowed + human);
        self.escalation_rate = ratio(human, self.actions);
        let decided =
            self.approved.count + self.edited.count + self.rejected.count + self.expired.count;
        self.rejection_rate = ratio(self.rejected.count + self.expired.count, decided);
        self.failure_rate = ratio(
            self.runs_failed.count,
            self.runs_completed + self.runs_failed.count,
        );
        self.cost_per_completed_run = (self.runs_completed > 0)
            .then(|| Money::from_minor(self.cost.minor() / self.runs_completed as i64));
        if let Some(limit) = budget {
            self.budget_burn = ratio(self.cost.minor().max(0) as u64, limit.minor().max(0) as u64);
        }
        self.checks = checks(self, targets);
    }
}

fn checks(s: &Stats, t: &Targets) -> Vec<Check> {
    let mut out = Vec::new();
    let mut rate = |name: &str, target: Option<f64>, actual: Option<f64>, at_least: bool| {
        if let Some(target) = target {
            out.push(Check {
                target: name.into(),
                expected: format!("{} {target:.3}", if at_least { ">=" } else { "<=" }),
                actual: actual.map_or("none".into(), |a| format!("{a:.3}")),
                met: actual.map(|a| if at_least { a >= target } else { a <= target }),
            });
        }
    };
    rate(
        "min_autonomy_rate",
        t.min_autonomy_rate,
        s.autonomy_rate,
        true,
    );
    rate(
        "max_escalation_rate",
        t.max_escalation_rate,
        s.escalation_rate,
        false,
    );
    rate(
        "max_rejection_rate",
        t.max_rejection_rate,
        s.rejection_rate,
        false,
    );
    rate(
        "max_failure_rate",
        t.max_failure_rate,
        s.failure_rate,
        false,
    );
    rate("max_budget_burn", t.max_budget_burn, s.budget_burn, false);
    if let Some(max) = t.max_approval_latency_p95 {
        let max_ms = max.0.as_millis() as u64;
        out.push(Check {
            target: "max_approval_latency_p95".into(),
            expected: format!("<= {max}"),
            actual: s
                .approval_latency_p95_ms
                .map_or("none".into(), |v| format!("{v}ms")),
            met: s.approval_latency_p95_ms.map(|v| v <= max_ms),
        });
    }
    if let Some(max) = t.max_cost_per_completed_run {
        out.push(Check {
            target: "max_cost_per_completed_run".into(),
            expected: format!("<= {max}"),
            actual: s
                .cost_per_completed_run
                .map_or("none".into(), |v| v.to_string()),
            met: s.cost_per_completed_run.map(|v| v <= max),
        });
    }
    out
}

/// The operations report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpsReport {
    /// The window.
    pub window: Option<Window>,
    /// Entries read (all of them, in and out of the window).
    pub entries_read: u64,
    /// Entries counted (in the window).
    pub entries_counted: u64,
    /// The first and last sequence number counted.
    pub seq_range: Option<(u64, u64)>,
    /// Everything together.
    pub total: Stats,
    /// Per pathway (key, or id when unnamed).
    pub pathways: BTreeMap<String, Stats>,
    /// Per role.
    pub roles: BTreeMap<String, Stats>,
    /// Per agent.
    pub agents: BTreeMap<String, Stats>,
    /// Per workflow.
    pub workflows: BTreeMap<String, Stats>,
    /// The totals over time, oldest first: one bucket per interval from the first to the
    /// last with an entry in the window (intervals in between with nothing are there, empty,
    /// unless there are more than [`MAX_GAP_FILLED`] of them).
    #[serde(default)]
    pub series: Vec<Bucket>,
}

/// The longest series whose empty intervals are filled in: past it (entries years apart
/// counted by day), only the intervals with entries are listed.
pub const MAX_GAP_FILLED: i64 = 10_000;

/// How long one [`Bucket`] of [`OpsReport::series`] is (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// A calendar day (the default).
    #[default]
    Day,
    /// A week from Monday.
    Week,
}

impl Interval {
    const WEEK_SHIFT: i64 = 3 * 86_400;

    fn len(self) -> i64 {
        match self {
            Interval::Day => 86_400,
            Interval::Week => 604_800,
        }
    }

    fn shift(self) -> i64 {
        match self {
            Interval::Day => 0,
            // 1970-01-01 was a Thursday; shift so weeks start on Monday
            Interval::Week => Self::WEEK_SHIFT,
        }
    }

    /// The number of the bucket `at` falls in.
    fn index(self, at: Timestamp) -> i64 {
        (at.timestamp() + self.shift()).div_euclid(self.len())
    }

    /// When bucket `index` starts.
    fn start(self, index: i64) -> Timestamp {
        let secs = index.saturating_mul(self.len()) - self.shift();
        Timestamp::from_timestamp(secs, 0).unwrap_or_default()
    }
}

/// What happened in one interval of the window ([`OpsReport::series`]), counted as in the
/// totals (see the module's table), by the time of each entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// When the interval starts (UTC midnight; a Monday for weeks).
    pub start: Timestamp,
    /// Governance decisions.
    pub actions: u64,
    /// Of them allowed.
    pub allowed: u64,
    /// Of them sent for approval or escalated.
    pub to_a_human: u64,
    /// allowed / (allowed + to a human), as in [`Stats::autonomy_rate`].
    pub autonomy_rate: Option<f64>,
    /// Approval requests answered in the interval (approved, edited or rejected).
    pub approvals_answered: u64,
    /// Median time from request to answer of those, in milliseconds.
    pub approval_latency_p50_ms: Option<u64>,
    /// 95th percentile of the same.
    pub approval_latency_p95_ms: Option<u64>,
    /// Cost of the calls made in the interval.
    pub cost: Money,
    /// Runs that completed in the interval.
    pub runs_completed: u64,
    /// cost / runs completed in the interval.
    pub cost_per_completed_run: Option<Money>,
    #[serde(skip)]
    latencies: Vec<u64>,
}

impl Bucket {
    fn finish(&mut self) {
        self.latencies.sort_unstable();
        self.approval_latency_p50_ms = percentile(&self.latencies, 0.50);
        self.approval_latency_p95_ms = percentile(&self.latencies, 0.95);
        self.latencies = Vec::new();
        self.autonomy_rate = ratio(self.allowed, self.allowed + self.to_a_human);
        self.cost_per_completed_run = (self.runs_completed > 0)
            .then(|| Money::from_minor(self.cost.minor() / self.runs_completed as i64));
    }
}

/// The pathway and agent of a decision that asked for approval, until its request comes.
type Pending = (Option<PathwayId>, Option<AgentId>);

#[derive(Debug, Clone, Copy)]
struct ApprovalInfo {
    at: Timestamp,
    pathway: Option<PathwayId>,
    agent: Option<AgentId>,
    run: Option<RunId>,
}

/// Builds an [`OpsReport`] in one pass: [`ReportBuilder::push`] every entry in order, then
/// [`ReportBuilder::finish`]. Memory grows with the runs, tasks and open approvals seen, not
/// with the entries.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    window: Window,
    targets: Targets,
    budget: Option<Money>,
    names: Names,
    runs: FxHashMap<RunId, u32>,
    workflow_names: Vec<String>,
    tasks: FxHashMap<TaskId, (RoleId, AgentId)>,
    agent_roles: FxHashMap<AgentId, RoleId>,
    approvals: FxHashMap<ApprovalId, ApprovalInfo>,
    pending_decisions: FxHashMap<(Option<RunId>, String), Pending>,
    total: Stats,
    pathways: FxHashMap<PathwayId, Stats>,
    roles: FxHashMap<RoleId, Stats>,
    agents: FxHashMap<AgentId, Stats>,
    workflows: FxHashMap<u32, Stats>,
    interval: Interval,
    series: FxHashMap<i64, Bucket>,
    read: u64,
    counted: u64,
    seq_range: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Who {
    pathway: Option<PathwayId>,
    role: Option<RoleId>,
    agent: Option<AgentId>,
    workflow: Option<u32>,
}

impl ReportBuilder {
    /// A builder for `window`, measuring against `targets`; `budget` is the organisation's
    /// spend limit for the window (for budget burn), `names` the names to show.
    pub fn new(window: Window, targets: Targets, budget: Option<Money>, names: Names) -> Self {
        ReportBuilder {
            window,
            targets,
            budget,
            names,
            runs: FxHashMap::default(),
            workflow_names: Vec::new(),
            tasks: FxHashMap::default(),
            agent_roles: FxHashMap::default(),
            approvals: FxHashMap::default(),
            pending_decisions: FxHashMap::default(),
            total: Stats::default(),
            pathways: FxHashMap::default(),
            roles: FxHashMap::default(),
            agents: FxHashMap::default(),
            workflows: FxHashMap::default(),
            interval: Interval::default(),
            series: FxHashMap::default(),
            read: 0,
            counted: 0,
            seq_range: None,
        }
    }

    /// Buckets the series by `interval` (default [`Interval::Day`]).
    pub fn interval(mut self, interval: Interval) -> Self {
        self.interval = interval;
        self
    }

    /// The bucket of the series `at` falls in.
    fn bucket(&mut self, at: Timestamp) -> &mut Bucket {
        let i = self.interval.index(at);
        self.series.entry(i).or_default()
    }

    fn each(&mut self, who: Who, f: impl Fn(&mut Stats)) {
        f(&mut self.total);
        if let Some(p) = who.pathway {
            f(self.pathways.entry(p).or_default());
        }
        if let Some(r) = who.role {
            f(self.roles.entry(r).or_default());
        }
        if let Some(a) = who.agent {
            f(self.agents.entry(a).or_default());
        }
        if let Some(w) = who.workflow {
            f(self.workflows.entry(w).or_default());
        }
    }

    fn run_workflow(&self, run: Option<RunId>) -> Option<u32> {
        run.and_then(|r| self.runs.get(&r).copied())
    }

    fn task_who(&self, run: RunId, task: TaskId) -> Who {
        let (role, agent) = match self.tasks.get(&task) {
            Some((r, a)) => (Some(*r), Some(*a)),
            None => (None, None),
        };
        Who {
            pathway: None,
            role,
            agent,
            workflow: self.run_workflow(Some(run)),
        }
    }

    /// Reads one entry (entries must come in sequence order).
    pub fn push(&mut self, e: &AuditEntry) {
        self.read += 1;
        let inside = self.window.contains(e.at);
        // context, in and out of the window
        match &e.event {
            AuditEvent::RunStarted { run, workflow, .. } => {
                let idx = match self.workflow_names.iter().position(|w| w == workflow) {
                    Some(i) => i as u32,
                    None => {
                        self.workflow_names.push(workflow.clone());
                        (self.workflow_names.len() - 1) as u32
                    }
                };
                self.runs.insert(*run, idx);
            }
            AuditEvent::TaskStarted {
                task, role, agent, ..
            } => {
                self.tasks.insert(*task, (*role, *agent));
                self.agent_roles.insert(*agent, *role);
            }
            _ => {}
        }
        if !inside {
            // still remember what an approval in the window needs
            match &e.event {
                AuditEvent::DecisionMade {
                    run,
                    pathway,
                    action,
                    decision: DecisionKind::RequireApproval,
                    ..
                } => {
                    self.pending_decisions
                        .insert((*run, action.clone()), (*pathway, e.actor.agent()));
                }
                AuditEvent::ApprovalRequested {
                    approval,
                    run,
                    action,
                    ..
                } => {
                    let (pathway, agent) = self
                        .pending_decisions
                        .remove(&(*run, action.clone()))
                        .unwrap_or_default();
                    self.approvals.insert(
                        *approval,
                        ApprovalInfo {
                            at: e.at,
                            pathway,
                            agent,
                            run: *run,
                        },
                    );
                }
                _ => {}
            }
            return;
        }
        self.counted += 1;
        // every counted entry's interval is in the series, even one that adds to none of a
        // bucket's figures (a failed run, say): the series runs from the first to the last
        self.bucket(e.at);
        self.seq_range = Some(match self.seq_range {
            None => (e.seq, e.seq),
            Some((a, _)) => (a, e.seq),
        });
        let seq = e.seq;
        match &e.event {
            AuditEvent::DecisionMade {
                run,
                pathway,
                action,
                decision,
                rules,
                ..
            } => {
                let agent = e.actor.agent();
                let who = Who {
                    pathway: *pathway,
                    role: agent.and_then(|a| self.agent_roles.get(&a).copied()),
                    agent,
                    workflow: self.run_workflow(*run),
                };
                let d = *decision;
                let b = self.bucket(e.at);
                b.actions += 1;
                match d {
                    DecisionKind::Allow => b.allowed += 1,
                    DecisionKind::RequireApproval | DecisionKind::Escalate => b.to_a_human += 1,
                    DecisionKind::Deny => {}
                }
                self.each(who, |s| {
                    s.actions += 1;
                    match d {
                        DecisionKind::Allow => s.allowed += 1,
                        DecisionKind::RequireApproval => s.approval_required += 1,
                        DecisionKind::Escalate => s.escalated += 1,
                        DecisionKind::Deny => s.denied += 1,
                    }
                });
                if d == DecisionKind::Deny {
                    for rule in rules {
                        self.each(who, |s| {
                            *s.denials_by_rule.entry(rule.clone()).or_default() += 1
                        });
                    }
                }
                if d == DecisionKind::RequireApproval {
                    self.pending_decisions
                        .insert((*run, action.clone()), (*pathway, agent));
                }
            }
            AuditEvent::ApprovalRequested {
                approval,
                run,
                action,
                ..
            } => {
                let (pathway, agent) = self
                    .pending_decisions
                    .remove(&(*run, action.clone()))
                    .unwrap_or_default();
                self.approvals.insert(
                    *approval,
                    ApprovalInfo {
                        at: e.at,
                        pathway,
                        agent,
                        run: *run,
                    },
                );
                let who = Who {
                    pathway,
                    role: agent.and_then(|a| self.agent_roles.get(&a).copied()),
                    agent,
                    workflow: self.run_workflow(*run),
                };
                self.each(who, |s| s.approvals_requested += 1);
            }
            AuditEvent::ApprovalDecided {
                approval, outcome, ..
            } => {
                let info = self.approvals.remove(approval);
                let who = match info {
                    Some(i) => Who {
                        pathway: i.pathway,
                        role: i.agent.and_then(|a| self.agent_roles.get(&a).copied()),
                        agent: i.agent,
                        workflow: self.run_workflow(i.run),
                    },
                    None => Who::default(),
                };
                let latency = info
                    .filter(|_| *outcome != ApprovalOutcome::Expired)
                    .map(|i| (e.at - i.at).num_milliseconds().max(0) as u64);
                let o = *outcome;
                if let Some(l) = latency {
                    let b = self.bucket(e.at);
                    b.approvals_answered += 1;
                    b.latencies.push(l);
                }
                self.each(who, |s| {
                    match o {
                        ApprovalOutcome::Approved => s.approved.add(seq),
                        ApprovalOutcome::Edited => s.edited.add(seq),
                        ApprovalOutcome::Rejected => s.rejected.add(seq),
                        ApprovalOutcome::Expired => s.expired.add(seq),
                    }
                    if let Some(l) = latency {
                        s.latencies.push(l);
                    }
                });
            }
            AuditEvent::ModelCalled {
                run,
                task,
                attempt,
                usage,
                cost,
                outcome,
                detail,
                ..
            } => {
                let who = self.task_who(*run, *task);
                let (tokens, cost, failed, retry) = (
                    usage.total(),
                    *cost,
                    *outcome == Outcome::Failed,
                    *attempt > 1,
                );
                let refused = detail.as_deref().is_some_and(mentions_breaker);
                let b = self.bucket(e.at);
                b.cost = b.cost.checked_add(cost).unwrap_or(b.cost);
                self.each(who, |s| {
                    s.tokens += tokens;
                    s.cost = s.cost.checked_add(cost).unwrap_or(s.cost);
                    if failed {
                        s.failures.add(seq);
                    }
                    if retry {
                        s.retries += 1;
                    }
                    if refused {
                        s.breaker_refusals += 1;
                    }
                });
            }
            AuditEvent::ConnectorInvoked {
                run,
                task,
                attempt,
                outcome,
                cost,
                ..
            } => {
                let who = self.task_who(*run, *task);
                let (cost, failed, retry) = (*cost, *outcome == Outcome::Failed, *attempt > 1);
                let b = self.bucket(e.at);
                b.cost = b.cost.checked_add(cost).unwrap_or(b.cost);
                self.each(who, |s| {
                    s.cost = s.cost.checked_add(cost).unwrap_or(s.cost);
                    if failed {
                        s.failures.add(seq);
                    }
                    if retry {
                        s.retries += 1;
                    }
                });
            }
            AuditEvent::TaskFinished {
                run, task, detail, ..
            } if detail.as_deref().is_some_and(mentions_breaker) => {
                let who = self.task_who(*run, *task);
                self.each(who, |s| s.breaker_refusals += 1);
            }
            AuditEvent::RunFinished { run, outcome, .. } => {
                let who = Who {
                    workflow: self.run_workflow(Some(*run)),
                    ..Who::default()
                };
                match outcome {
                    Outcome::Succeeded => {
                        self.bucket(e.at).runs_completed += 1;
                        self.each(who, |s| s.runs_completed += 1)
                    }
                    Outcome::Failed => self.each(who, |s| s.runs_failed.add(seq)),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The report.
    pub fn finish(self) -> OpsReport {
        let ReportBuilder {
            window,
            targets,
            budget,
            names,
            workflow_names,
            mut total,
            pathways,
            roles,
            agents,
            workflows,
            interval,
            mut series,
            read,
            counted,
            seq_range,
            ..
        } = self;
        let mut indices: Vec<i64> = series.keys().copied().collect();
        indices.sort_unstable();
        if let (Some(&first), Some(&last)) = (indices.first(), indices.last()) {
            if last.saturating_sub(first) < MAX_GAP_FILLED {
                indices = (first..=last).collect();
            }
        }
        let series = indices
            .into_iter()
            .map(|i| {
                let mut b = series.remove(&i).unwrap_or_default();
                b.start = interval.start(i);
                b.finish();
                b
            })
            .collect();
        total.finish(&targets, budget);
        let done = |mut s: Stats| {
            s.finish(&targets, None);
            s
        };
        OpsReport {
            window: Some(window),
            entries_read: read,
            entries_counted: counted,
            seq_range,
            total,
            pathways: pathways
                .into_iter()
                .map(|(k, v)| {
                    (
                        names
                            .pathways
                            .get(&k)
                            .cloned()
                            .unwrap_or_else(|| k.to_string()),
                        done(v),
                    )
                })
                .collect(),
            roles: roles
                .into_iter()
                .map(|(k, v)| {
                    (
                        names
                            .roles
                            .get(&k)
                            .cloned()
                            .unwrap_or_else(|| k.to_string()),
                        done(v),
                    )
                })
                .collect(),
            agents: agents
                .into_iter()
                .map(|(k, v)| {
                    (
                        names
                            .agents
                            .get(&k)
                            .cloned()
                            .unwrap_or_else(|| k.to_string()),
                        done(v),
                    )
                })
                .collect(),
            workflows: workflows
                .into_iter()
                .map(|(k, v)| {
                    (
                        workflow_names.get(k as usize).cloned().unwrap_or_default(),
                        done(v),
                    )
                })
                .collect(),
            series,
        }
    }
}

fn mentions_breaker(detail: &str) -> bool {
    detail.contains("breaker open") || detail.contains("circuit open")
}

/// Reads the whole log a page at a time (unreadable entries are skipped and counted as
/// read) and builds the report.
pub async fn report_from_log(
    log: &dyn AuditLog,
    builder: ReportBuilder,
) -> Result<OpsReport, StoreError> {
    report_with_progress(log, builder, |_| {}).await
}

/// [`report_from_log`], calling `progress` with the number of entries read so far after each
/// page: for an operator's progress bar over a long log.
pub async fn report_with_progress(
    log: &dyn AuditLog,
    mut builder: ReportBuilder,
    mut progress: impl FnMut(u64),
) -> Result<OpsReport, StoreError> {
    let mut from = 0u64;
    loop {
        let page = log.read(from, 4096).await?;
        if page.is_empty() {
            return Ok(builder.finish());
        }
        from += page.len() as u64;
        for stored in &page {
            match stored.entry() {
                Some(e) => builder.push(e),
                None => builder.read += 1,
            }
        }
        progress(from);
    }
}

impl OpsReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report as Markdown: the total with its checks, then one table per grouping.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut md = String::new();
        let _ = writeln!(md, "# Operations report\n");
        if let Some((a, b)) = self.seq_range {
            let _ = writeln!(
                md,
                "{} entries counted (audit #{a} to #{b}) of {} read.\n",
                self.entries_counted, self.entries_read
            );
        } else {
            let _ = writeln!(md, "No entry in the window ({} read).\n", self.entries_read);
        }
        let _ = writeln!(
            md,
            "## Targets\n\n| target | expected | actual | met |\n|---|---|---|---|"
        );
        for c in &self.total.checks {
            let met = match c.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "no evidence",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {met} |",
                c.target, c.expected, c.actual
            );
        }
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        let ms =
            |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1}s", v as f64 / 1000.0));
        let row = |md: &mut String, name: &str, s: &Stats| {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {}/{}/{}/{}/{} | {} / {} | {} | {} / {} | {} | {} | {} | {}/{} | {} |",
                s.actions,
                rate(s.autonomy_rate),
                s.approval_required + s.escalated,
                s.denied,
                s.approvals_requested,
                s.approved.count,
                s.edited.count,
                s.rejected.count,
                s.expired.count,
                ms(s.approval_latency_p50_ms),
                ms(s.approval_latency_p95_ms),
                s.denials_by_rule.iter().map(|(r, n)| format!("{r}: {n}")).collect::<Vec<_>>().join(", "),
                s.failures.count,
                s.retries,
                s.breaker_refusals,
                s.tokens,
                s.cost,
                s.runs_completed,
                s.runs_failed.count,
                s.cost_per_completed_run.map_or("-".to_string(), |c| c.to_string()),
            );
        };
        let header = "| | actions | autonomy | to a human | denied | approvals req/ok/edit/rej/exp | latency p50 / p95 | denials by rule | failures / retries | breaker | tokens | cost | runs ok/failed | cost per run |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
        let _ = writeln!(md, "\n## Total\n\n{header}");
        row(&mut md, "all", &self.total);
        if let Some(b) = self.total.budget_burn {
            let _ = writeln!(
                md,
                "\nBudget burn: {:.1}% of the organisation's spend limit.",
                b * 100.0
            );
        }
        if !self.series.is_empty() {
            let _ = writeln!(
                md,
                "\n## Over time\n\n| from | actions | autonomy | approvals answered | latency p50 / p95 | cost | runs ok | cost per run |\n|---|---|---|---|---|---|---|---|"
            );
            for b in &self.series {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                    b.start.format("%Y-%m-%d"),
                    b.actions,
                    rate(b.autonomy_rate),
                    b.approvals_answered,
                    ms(b.approval_latency_p50_ms),
                    ms(b.approval_latency_p95_ms),
                    b.cost,
                    b.runs_completed,
                    b.cost_per_completed_run
                        .map_or("-".to_string(), |c| c.to_string()),
                );
            }
        }
        for (title, groups) in [
            ("Pathways", &self.pathways),
            ("Roles", &self.roles),
            ("Agents", &self.agents),
            ("Workflows", &self.workflows),
        ] {
            if groups.is_empty() {
                continue;
            }
            let _ = writeln!(md, "\n## {title}\n\n{header}");
            for (name, s) in groups {
                row(&mut md, name, s);
            }
        }
        md
    }
}
