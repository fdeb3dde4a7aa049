//! Structural validation of a governance model: every finding, each with a path.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::{BudgetScope, GovernanceModel, Limits, OnTimeoutSpec};

/// How serious a finding is. A model with an error cannot be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Probably a mistake, but the model is still safe to run.
    Warning,
    /// The model is structurally unsafe; it is refused.
    Error,
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// Two entities of one kind share a key.
    DuplicateKey,
    /// A pathway names no accountable anchor.
    MissingAccountableAnchor,
    /// A reference to an anchor that does not exist.
    UnknownAnchor,
    /// An anchor that is relied on (accountable, routed to, final authority) has no holder.
    AnchorWithoutHolder,
    /// A pathway names no delegate role.
    MissingDelegate,
    /// A reference to a role that does not exist.
    UnknownRole,
    /// A delegation without any escalation rule.
    NoEscalationDesign,
    /// Following `escalates_to` from an anchor comes back to it.
    EscalationCycle,
    /// An escalation route never reaches an anchor with a human holder.
    RouteNeverReachesHuman,
    /// A delegation is wider than the charter's boundaries.
    ExceedsCharter,
    /// A budget's parent does not exist or is not above it in the hierarchy.
    InvalidBudgetParent,
    /// Budget parents form a cycle.
    BudgetCycle,
    /// A child budget's limit is larger than its parent's.
    ChildBudgetExceedsParent,
    /// A number is out of its range (risk above 100, confidence outside 0..1, negative cost,
    /// an alert threshold of 0).
    InvalidValue,
    /// An escalation rule without any condition: it fires on every request.
    EmptyTrigger,
    /// A delegation that allows no action or no effect class: every request is denied.
    NothingDelegated,
    /// An entity without a key, or a rule without a name.
    EmptyKey,
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            FindingKind::DuplicateKey => "duplicate key",
            FindingKind::MissingAccountableAnchor => "missing accountable anchor",
            FindingKind::UnknownAnchor => "unknown anchor",
            FindingKind::AnchorWithoutHolder => "anchor without holder",
            FindingKind::MissingDelegate => "missing delegate",
            FindingKind::UnknownRole => "unknown role",
            FindingKind::NoEscalationDesign => "no escalation design",
            FindingKind::EscalationCycle => "escalation cycle",
            FindingKind::RouteNeverReachesHuman => "route never reaches a human",
            FindingKind::ExceedsCharter => "exceeds charter",
            FindingKind::InvalidBudgetParent => "invalid budget parent",
            FindingKind::BudgetCycle => "budget cycle",
            FindingKind::ChildBudgetExceedsParent => "child budget exceeds parent",
            FindingKind::InvalidValue => "invalid value",
            FindingKind::EmptyTrigger => "empty trigger",
            FindingKind::NothingDelegated => "nothing delegated",
            FindingKind::EmptyKey => "empty key",
        };
        f.write_str(s)
    }
}

/// One thing wrong with a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Where in the document (`pathways[3].escalation[0].route`).
    pub path: String,
    /// What kind of problem.
    pub kind: FindingKind,
    /// How serious.
    pub severity: Severity,
    /// What is wrong, in words, with the offending values in backticks.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{sev} at `{}`: {} ({})",
            self.path, self.message, self.kind
        )
    }
}

/// Every finding of a validation, in document order. A value, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl ValidationReport {
    /// `true` when there is no error (warnings allowed).
    pub fn is_ok(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The error-level findings.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The warning-level findings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// The findings of one kind.
    pub fn of_kind(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind == kind)
    }

    /// Whether there is a finding of `kind` at `path`.
    pub fn has(&self, kind: FindingKind, path: &str) -> bool {
        self.findings
            .iter()
            .any(|f| f.kind == kind && f.path == path)
    }
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.findings.is_empty() {
            return f.write_str("no findings");
        }
        for (i, finding) in self.findings.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{finding}")?;
        }
        Ok(())
    }
}

struct Checker {
    findings: Vec<Finding>,
}

impl Checker {
    fn push(&mut self, severity: Severity, kind: FindingKind, path: String, message: String) {
        self.findings.push(Finding {
            path,
            kind,
            severity,
            message,
        });
    }

    fn error(&mut self, kind: FindingKind, path: String, message: String) {
        self.push(Severity::Error, kind, path, message);
    }

    /// An action name a rule is written for: it must be one a request can carry (see
    /// [`check_action_name`](crate::check_action_name)), or the rule would never match;
    /// `*` where `wildcard` allows it.
    fn action(&mut self, path: String, name: &str, wildcard: bool) {
        if wildcard && name == "*" {
            return;
        }
        if let Err(problem) = crate::decide::check_action_name(name) {
            self.error(
                FindingKind::InvalidValue,
                path,
                format!("the action name {problem}"),
            );
        }
    }

    fn warn(&mut self, kind: FindingKind, path: String, message: String) {
        self.push(Severity::Warning, kind, path, message);
    }

    fn keys<'a>(&mut self, what: &str, keys: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        for (i, k) in keys.enumerate() {
            if k.trim().is_empty() {
                self.error(
                    FindingKind::EmptyKey,
                    format!("{what}[{i}].key"),
                    "the key is empty".into(),
                );
            } else if !seen.insert(k) {
                self.error(
                    FindingKind::DuplicateKey,
                    format!("{what}[{i}].key"),
                    format!("key `{k}` is used twice"),
                );
            }
        }
    }

    fn risk(&mut self, path: String, v: Option<u32>) {
        if let Some(v) = v.filter(|v| *v > 100) {
            self.error(
                FindingKind::InvalidValue,
                path,
                format!("risk `{v}` is above 100"),
            );
        }
    }

    fn confidence(&mut self, path: String, v: Option<f32>) {
        if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
            self.error(
                FindingKind::InvalidValue,
                path,
                format!("confidence `{v}` is outside 0.0..=1.0"),
            );
        }
    }

    fn money(&mut self, path: String, v: Option<aios_core::Money>) {
        if let Some(v) = v.filter(|v| v.is_negative()) {
            self.error(
                FindingKind::InvalidValue,
                path,
                format!("amount `{v}` is negative"),
            );
        }
    }
}

/// What following an anchor's `escalates_to` chain finds.
enum Route {
    /// An anchor with a holder was reached.
    Human,
    /// The chain cycles (through the named anchor).
    Cycle(String),
    /// The chain ends without a holder.
    NoHuman,
    /// The chain names an anchor that does not exist.
    Unknown(String),
}

fn follow_route(model: &GovernanceModel, index: &HashMap<&str, usize>, start: &str) -> Route {
    let mut seen = HashSet::new();
    let mut key = start;
    loop {
        let Some(&i) = index.get(key) else {
            return Route::Unknown(key.to_string());
        };
        let anchor = &model.anchors[i];
        if !anchor.holders.is_empty() {
            return Route::Human;
        }
        if !seen.insert(key) {
            return Route::Cycle(key.to_string());
        }
        match anchor.escalates_to.as_deref() {
            Some(next) => key = next,
            None => return Route::NoHuman,
        }
    }
}

fn anchor_cycles(model: &GovernanceModel, index: &HashMap<&str, usize>, start: &str) -> bool {
    let mut seen = HashSet::new();
    let mut key = start;
    loop {
        if !seen.insert(key) {
            return key == start;
        }
        match index
            .get(key)
            .and_then(|&i| model.anchors[i].escalates_to.as_deref())
        {
            Some(next) => key = next,
            None => return false,
        }
    }
}

fn limits_pairs(l: &Limits) -> [(&'static str, Option<i64>); 5] {
    [
        ("cost", l.cost.map(|m| m.minor())),
        ("payments", l.payments.map(|m| m.minor())),
        ("tokens", l.tokens.map(|v| v as i64)),
        ("tool_calls", l.tool_calls.map(|v| v as i64)),
        ("risk_points", l.risk_points.map(|v| v as i64)),
    ]
}

impl GovernanceModel {
    /// Checks the model's structure and returns every finding (not just the first), each with
    /// its path in the document and a [`FindingKind`].
    ///
    /// ```
    /// use aios_governance::{FindingKind, GovernanceModel};
    /// let model = GovernanceModel::from_json(r#"{
    ///   "version": 1,
    ///   "charter": { "intent": "test", "final_authority": "founder" },
    ///   "anchors": [{ "key": "founder", "title": "Founder", "response_time": "1h" }],
    ///   "roles": [],
    ///   "pathways": [{ "key": "send-email", "anchor": "founder", "delegate": "outreach" }]
    /// }"#)?;
    /// let report = model.validate();
    /// assert!(!report.is_ok());
    /// assert!(report.has(FindingKind::AnchorWithoutHolder, "pathways[0].anchor"));
    /// assert!(report.has(FindingKind::UnknownRole, "pathways[0].delegate"));
    /// assert!(report.has(FindingKind::NoEscalationDesign, "pathways[0].escalation"));
    /// # Ok::<(), aios_governance::ManifestError>(())
    /// ```
    pub fn validate(&self) -> ValidationReport {
        let mut c = Checker {
            findings: Vec::new(),
        };
        c.keys("anchors", self.anchors.iter().map(|a| a.key.as_str()));
        c.keys("roles", self.roles.iter().map(|r| r.key.as_str()));
        c.keys("pathways", self.pathways.iter().map(|p| p.key.as_str()));
        c.keys("budgets", self.budgets.iter().map(|b| b.key.as_str()));

        let anchors: HashMap<&str, usize> = self
            .anchors
            .iter()
            .enumerate()
            .map(|(i, a)| (a.key.as_str(), i))
            .collect();
        let roles: HashSet<&str> = self.roles.iter().map(|r| r.key.as_str()).collect();

        // an anchor reference that must resolve to a human
        let check_anchor_ref = |c: &mut Checker, path: String, key: &str| match anchors.get(key) {
            None => c.error(
                FindingKind::UnknownAnchor,
                path,
                format!("anchor `{key}` is not defined"),
            ),
            Some(&i) if self.anchors[i].holders.is_empty() => c.error(
                FindingKind::AnchorWithoutHolder,
                path,
                format!("anchor `{key}` has no holder"),
            ),
            Some(_) => {}
        };

        // charter
        let b = &self.charter.boundaries;
        for (i, action) in b.forbidden_actions.iter().enumerate() {
            c.action(
                format!("charter.boundaries.forbidden_actions[{i}]"),
                action,
                false,
            );
        }
        match self.charter.final_authority.as_deref() {
            Some(key) => check_anchor_ref(&mut c, "charter.final_authority".into(), key),
            None => c.error(
                FindingKind::MissingAccountableAnchor,
                "charter.final_authority".into(),
                "the charter names no final authority".into(),
            ),
        }
        c.risk("charter.boundaries.max_risk".into(), b.max_risk);
        c.confidence("charter.boundaries.min_confidence".into(), b.min_confidence);
        c.money(
            "charter.boundaries.max_cost_per_action".into(),
            b.max_cost_per_action,
        );
        c.money(
            "charter.boundaries.max_amount_per_action".into(),
            b.max_amount_per_action,
        );

        // the change log says what this version changed
        if !self.changelog.is_empty() && !self.changelog.iter().any(|e| e.version == self.version) {
            c.warn(
                FindingKind::InvalidValue,
                "changelog".into(),
                format!("no change log entry for version `{}`", self.version),
            );
        }

        // anchors
        for (i, a) in self.anchors.iter().enumerate() {
            if let Some(next) = a.escalates_to.as_deref() {
                if !anchors.contains_key(next) {
                    c.error(
                        FindingKind::UnknownAnchor,
                        format!("anchors[{i}].escalates_to"),
                        format!("anchor `{next}` is not defined"),
                    );
                } else if anchor_cycles(self, &anchors, &a.key) {
                    c.error(
                        FindingKind::EscalationCycle,
                        format!("anchors[{i}].escalates_to"),
                        format!("escalation from anchor `{}` comes back to it", a.key),
                    );
                }
            }
            if let Some(d) = a.deputy.as_deref() {
                if a.holders.iter().any(|h| h == d) {
                    c.warn(
                        FindingKind::InvalidValue,
                        format!("anchors[{i}].deputy"),
                        format!("deputy `{d}` is also a holder"),
                    );
                }
            }
        }

        // pathways
        for (pi, p) in self.pathways.iter().enumerate() {
            let at = format!("pathways[{pi}]");
            match p.anchor.as_deref() {
                None => c.error(
                    FindingKind::MissingAccountableAnchor,
                    format!("{at}.anchor"),
                    format!("pathway `{}` has no accountable anchor", p.key),
                ),
                Some(key) => check_anchor_ref(&mut c, format!("{at}.anchor"), key),
            }
            match p.delegate.as_deref() {
                None => c.error(
                    FindingKind::MissingDelegate,
                    format!("{at}.delegate"),
                    format!("pathway `{}` delegates to no role", p.key),
                ),
                Some(r) if !roles.contains(r) => c.error(
                    FindingKind::UnknownRole,
                    format!("{at}.delegate"),
                    format!("role `{r}` is not defined"),
                ),
                Some(_) => {}
            }

            // limits against the charter
            let l = &p.limits;
            c.risk(format!("{at}.limits.max_risk"), l.max_risk);
            c.confidence(format!("{at}.limits.min_confidence"), l.min_confidence);
            c.money(
                format!("{at}.limits.max_cost_per_action"),
                l.max_cost_per_action,
            );
            c.money(
                format!("{at}.limits.max_amount_per_action"),
                l.max_amount_per_action,
            );
            // an amount limit above the charter's can never be reached (the charter denies
            // first): a delegation wider than the charter is a mistake worth naming
            if let (Some(max), Some(v)) = (b.max_amount_per_action, l.max_amount_per_action) {
                if v > max {
                    c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.max_amount_per_action"),
                        format!("`{v}` is above the charter's `{max}`"),
                    );
                }
            }
            if l.actions.is_empty() || l.effects.is_empty() {
                c.warn(
                    FindingKind::NothingDelegated,
                    format!("{at}.limits"),
                    format!(
                        "pathway `{}` delegates no {}: every request is denied",
                        p.key,
                        if l.actions.is_empty() {
                            "action"
                        } else {
                            "effect class"
                        }
                    ),
                );
            }
            for (ai, action) in l.actions.iter().enumerate() {
                c.action(format!("{at}.limits.actions[{ai}]"), action, true);
                if b.forbidden_actions.iter().any(|f| f == action) {
                    c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.actions[{ai}]"),
                        format!("action `{action}` is forbidden by the charter"),
                    );
                }
            }
            if let Some(max) = b.max_effect {
                for (ei, e) in l.effects.iter().enumerate() {
                    if *e > max {
                        c.error(
                            FindingKind::ExceedsCharter,
                            format!("{at}.limits.effects[{ei}]"),
                            format!("effect `{e}` is wider than the charter's `{max}`"),
                        );
                    }
                }
            }
            if let Some(max) = b.max_cost_per_action {
                match l.max_cost_per_action {
                    Some(v) if v > max => c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.max_cost_per_action"),
                        format!("`{v}` is above the charter's `{max}`"),
                    ),
                    None => c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.max_cost_per_action"),
                        format!("unlimited, but the charter allows at most `{max}`"),
                    ),
                    Some(_) => {}
                }
            }
            if let Some(max) = b.max_risk {
                match l.max_risk {
                    Some(v) if v > max => c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.max_risk"),
                        format!("`{v}` is above the charter's `{max}`"),
                    ),
                    None => c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.max_risk"),
                        format!("unlimited, but the charter allows at most `{max}`"),
                    ),
                    Some(_) => {}
                }
            }
            if let Some(min) = b.min_confidence {
                match l.min_confidence {
                    Some(v) if v < min => c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.min_confidence"),
                        format!("`{v}` is below the charter's `{min}`"),
                    ),
                    None => c.error(
                        FindingKind::ExceedsCharter,
                        format!("{at}.limits.min_confidence"),
                        format!("no minimum, but the charter requires at least `{min}`"),
                    ),
                    Some(_) => {}
                }
            }

            // escalation design
            if p.escalation.is_empty() {
                c.error(
                    FindingKind::NoEscalationDesign,
                    format!("{at}.escalation"),
                    format!(
                        "pathway `{}` has no escalation rule: delegation without escalation design is a structural risk",
                        p.key
                    ),
                );
            }
            let mut names = HashSet::new();
            for (ri, r) in p.escalation.iter().enumerate() {
                let rat = format!("{at}.escalation[{ri}]");
                if r.name.trim().is_empty() {
                    c.error(
                        FindingKind::EmptyKey,
                        format!("{rat}.name"),
                        "the rule has no name".into(),
                    );
                } else if !names.insert(r.name.as_str()) {
                    c.error(
                        FindingKind::DuplicateKey,
                        format!("{rat}.name"),
                        format!("rule name `{}` is used twice in this pathway", r.name),
                    );
                }
                if r.when.is_empty() {
                    c.warn(
                        FindingKind::EmptyTrigger,
                        format!("{rat}.when"),
                        format!(
                            "rule `{}` has no condition and fires on every request",
                            r.name
                        ),
                    );
                }
                for (ai, action) in r.when.actions.iter().enumerate() {
                    c.action(format!("{rat}.when.actions[{ai}]"), action, false);
                }
                c.risk(format!("{rat}.when.risk_at_least"), r.when.risk_at_least);
                c.confidence(
                    format!("{rat}.when.confidence_below"),
                    r.when.confidence_below,
                );
                c.money(format!("{rat}.when.cost_above"), r.when.cost_above);
                c.money(format!("{rat}.when.amount_above"), r.when.amount_above);
                if r.deadline.is_some_and(|d| d.is_zero()) {
                    c.warn(
                        FindingKind::InvalidValue,
                        format!("{rat}.deadline"),
                        "a zero deadline expires at once".into(),
                    );
                }
                let (route_path, route) = match r.route.as_deref() {
                    Some(k) => (format!("{rat}.route"), Some(k)),
                    None => (format!("{at}.anchor"), p.anchor.as_deref()),
                };
                if let Some(route) = route {
                    // an unknown pathway anchor is already reported above
                    if r.route.is_some() || anchors.contains_key(route) {
                        match follow_route(self, &anchors, route) {
                            Route::Human => {}
                            Route::Unknown(k) => c.error(
                                if k == route {
                                    FindingKind::UnknownAnchor
                                } else {
                                    FindingKind::RouteNeverReachesHuman
                                },
                                if r.route.is_some() {
                                    route_path
                                } else {
                                    format!("{rat}.route")
                                },
                                format!("route to anchor `{k}` which is not defined"),
                            ),
                            Route::Cycle(k) => c.error(
                                FindingKind::EscalationCycle,
                                format!("{rat}.route"),
                                format!(
                                    "route from anchor `{route}` cycles through `{k}` without reaching a holder"
                                ),
                            ),
                            Route::NoHuman => c.error(
                                FindingKind::RouteNeverReachesHuman,
                                format!("{rat}.route"),
                                format!("route from anchor `{route}` never reaches an anchor with a holder"),
                            ),
                        }
                    }
                }
                if let OnTimeoutSpec::Escalate(k) = &r.on_timeout {
                    match follow_route(self, &anchors, k) {
                        Route::Human => {}
                        Route::Unknown(_) => c.error(
                            FindingKind::UnknownAnchor,
                            format!("{rat}.on_timeout"),
                            format!("anchor `{k}` is not defined"),
                        ),
                        Route::Cycle(_) => c.error(
                            FindingKind::EscalationCycle,
                            format!("{rat}.on_timeout"),
                            format!("route from anchor `{k}` cycles"),
                        ),
                        Route::NoHuman => c.error(
                            FindingKind::RouteNeverReachesHuman,
                            format!("{rat}.on_timeout"),
                            format!("route from anchor `{k}` never reaches a holder"),
                        ),
                    }
                }
            }
        }

        // budgets
        let budgets: HashMap<&str, usize> = self
            .budgets
            .iter()
            .enumerate()
            .map(|(i, b)| (b.key.as_str(), i))
            .collect();
        let org_budget = self
            .budgets
            .iter()
            .position(|b| b.scope == BudgetScope::Organisation);
        if org_budget.is_none() && !self.budgets.is_empty() {
            c.error(
                FindingKind::InvalidBudgetParent,
                "budgets".into(),
                "budgets are declared but none has `scope = \"organisation\"`: every call that \
                 reserves would be refused with `no budget configured`; add an organisation budget"
                    .into(),
            );
        }
        for (bi, b) in self.budgets.iter().enumerate() {
            let at = format!("budgets[{bi}]");
            match &b.scope {
                BudgetScope::Role(r) if !roles.contains(r.as_str()) => c.error(
                    FindingKind::UnknownRole,
                    format!("{at}.scope"),
                    format!("role `{r}` is not defined"),
                ),
                _ => {}
            }
            c.money(format!("{at}.limits.cost"), b.limits.cost);
            c.money(format!("{at}.limits.payments"), b.limits.payments);
            let zero = [
                ("cost", b.limits.cost.map(|m| m.minor() as u64)),
                ("payments", b.limits.payments.map(|m| m.minor() as u64)),
                ("tokens", b.limits.tokens),
                ("tool_calls", b.limits.tool_calls),
                ("risk_points", b.limits.risk_points),
            ];
            for (dimension, _) in zero.iter().filter(|(_, v)| *v == Some(0)) {
                c.warn(
                    FindingKind::InvalidValue,
                    format!("{at}.limits.{dimension}"),
                    format!(
                        "a limit of 0 on `{dimension}` exhausts budget `{}` from the start: it \
                         refuses every reservation, of any dimension; leave the dimension out \
                         to leave it unlimited",
                        b.key
                    ),
                );
            }
            for (ti, t) in b.alerts.iter().enumerate() {
                if *t == 0 || *t > 1000 {
                    c.error(
                        FindingKind::InvalidValue,
                        format!("{at}.alerts[{ti}]"),
                        format!("alert threshold `{t}` must be within 1..=1000 percent"),
                    );
                }
            }
            let parent = match b.parent.as_deref() {
                Some(k) => match budgets.get(k) {
                    Some(&pi) => Some(pi),
                    None => {
                        c.error(
                            FindingKind::InvalidBudgetParent,
                            format!("{at}.parent"),
                            format!("budget `{k}` is not defined"),
                        );
                        None
                    }
                },
                None if b.scope != BudgetScope::Organisation => org_budget,
                None => None,
            };
            let Some(pi) = parent else { continue };
            let p = &self.budgets[pi];
            if pi == bi || cycles_budget(self, &budgets, bi) {
                c.error(
                    FindingKind::BudgetCycle,
                    format!("{at}.parent"),
                    format!("budget `{}` is its own ancestor", b.key),
                );
                continue;
            }
            if p.scope.level() >= b.scope.level() {
                c.error(
                    FindingKind::InvalidBudgetParent,
                    format!("{at}.parent"),
                    format!(
                        "budget `{}` is not above `{}` in the hierarchy organisation > role > agent > run",
                        p.key, b.key
                    ),
                );
            }
            for ((dim, child), (_, parent)) in limits_pairs(&b.limits)
                .into_iter()
                .zip(limits_pairs(&p.limits))
            {
                if let (Some(cv), Some(pv)) = (child, parent) {
                    if cv > pv {
                        c.error(
                            FindingKind::ChildBudgetExceedsParent,
                            format!("{at}.limits.{dim}"),
                            format!(
                                "`{cv}` is larger than the `{pv}` of parent budget `{}`",
                                p.key
                            ),
                        );
                    }
                }
            }
        }

        ValidationReport {
            findings: c.findings,
        }
    }
}

fn cycles_budget(model: &GovernanceModel, index: &HashMap<&str, usize>, start: usize) -> bool {
    let mut seen = HashSet::new();
    let mut i = start;
    loop {
        if !seen.insert(i) {
            return i == start;
        }
        match model.budgets[i]
            .parent
            .as_deref()
            .and_then(|k| index.get(k))
        {
            Some(&next) => i = next,
            None => return false,
        }
    }
}
