//! What changed between two versions of a governance model.

use std::collections::BTreeSet;

use aios_core::Money;
use serde::{Deserialize, Serialize};

use crate::model::{
    Anchor, AutonomyLimits, Boundaries, Budget, EscalationMode, EscalationRule, GovernanceModel,
    Limits, OnTimeoutSpec, Pathway, Trigger,
};

/// How an item changed, from the point of view of control over agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// It is new.
    Added,
    /// It is gone.
    Removed,
    /// Agents may now do more, or humans are brought in less.
    Loosened,
    /// Agents may now do less, or humans are brought in more.
    Tightened,
    /// It changed in a way that is neither (a title, a holder).
    Changed,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Where, by keys (`pathways.send-email.limits.max_cost_per_action`).
    pub path: String,
    /// How.
    pub kind: ChangeKind,
    /// What, in words, with old and new values.
    pub detail: String,
}

/// The differences between two model versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDiff {
    /// The old version.
    pub from_version: u64,
    /// The new version.
    pub to_version: u64,
    /// Every change, in document order.
    pub changes: Vec<Change>,
}

impl ModelDiff {
    /// Whether nothing changed (besides the version and change log).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes of one kind.
    pub fn of_kind(&self, kind: ChangeKind) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(move |c| c.kind == kind)
    }

    /// Whether there is a change of `kind` at `path`.
    pub fn has(&self, kind: ChangeKind, path: &str) -> bool {
        self.changes
            .iter()
            .any(|c| c.kind == kind && c.path == path)
    }
}

impl std::fmt::Display for ModelDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{} -> v{}", self.from_version, self.to_version)?;
        for c in &self.changes {
            write!(f, "\n{:?} {}: {}", c.kind, c.path, c.detail)?;
        }
        Ok(())
    }
}

/// More items let agents do more (allowed actions).
const MORE_LOOSENS: (ChangeKind, ChangeKind) = (ChangeKind::Loosened, ChangeKind::Tightened);
/// More items let agents do less (forbidden actions).
const FEWER_LOOSENS: (ChangeKind, ChangeKind) = (ChangeKind::Tightened, ChangeKind::Loosened);
/// Neither (people).
const CHANGED: (ChangeKind, ChangeKind) = (ChangeKind::Changed, ChangeKind::Changed);

struct Differ {
    changes: Vec<Change>,
}

/// Which way a number moving up goes.
#[derive(Clone, Copy)]
enum Up {
    /// A higher value lets agents do more (a limit).
    Loosens,
    /// A higher value asks more of agents (a minimum).
    Tightens,
}

impl Differ {
    fn push(&mut self, path: String, kind: ChangeKind, detail: String) {
        self.changes.push(Change { path, kind, detail });
    }

    /// Compares an optional limit where `None` is unlimited (for `Up::Loosens`) or no
    /// requirement (for `Up::Tightens`: a minimum).
    fn limit<T: PartialOrd + std::fmt::Debug>(
        &mut self,
        path: String,
        old: Option<T>,
        new: Option<T>,
        up: Up,
    ) {
        let kind = match (&old, &new, up) {
            (Some(a), Some(b), _) if a == b => return,
            (None, None, _) => return,
            (Some(a), Some(b), Up::Loosens) => {
                if b > a {
                    ChangeKind::Loosened
                } else {
                    ChangeKind::Tightened
                }
            }
            (Some(a), Some(b), Up::Tightens) => {
                if b > a {
                    ChangeKind::Tightened
                } else {
                    ChangeKind::Loosened
                }
            }
            // a limit appears
            (None, Some(_), Up::Loosens) => ChangeKind::Tightened,
            // a limit disappears
            (Some(_), None, Up::Loosens) => ChangeKind::Loosened,
            // a minimum appears
            (None, Some(_), Up::Tightens) => ChangeKind::Tightened,
            (Some(_), None, Up::Tightens) => ChangeKind::Loosened,
        };
        self.push(path, kind, format!("{old:?} -> {new:?}"));
    }

    /// A trigger threshold: for `cost_above` and `risk_at_least` a higher value fires less
    /// (loosens); for `confidence_below` a higher value fires more (tightens).
    fn threshold<T: PartialOrd + std::fmt::Debug>(
        &mut self,
        path: String,
        old: Option<T>,
        new: Option<T>,
        higher_fires_more: bool,
    ) {
        let kind = match (&old, &new) {
            (Some(a), Some(b)) if a == b => return,
            (None, None) => return,
            (Some(a), Some(b)) => {
                if (b > a) == higher_fires_more {
                    ChangeKind::Tightened
                } else {
                    ChangeKind::Loosened
                }
            }
            // a new condition makes the rule fire less often
            (None, Some(_)) => ChangeKind::Loosened,
            (Some(_), None) => ChangeKind::Tightened,
        };
        self.push(path, kind, format!("{old:?} -> {new:?}"));
    }

    /// Compares two sets; `kinds` says how an addition and a removal count.
    fn set(
        &mut self,
        path: String,
        old: &[String],
        new: &[String],
        kinds: (ChangeKind, ChangeKind),
    ) {
        let o: BTreeSet<&String> = old.iter().collect();
        let n: BTreeSet<&String> = new.iter().collect();
        for added in n.difference(&o) {
            self.push(path.clone(), kinds.0, format!("`{added}` added"));
        }
        for removed in o.difference(&n) {
            self.push(path.clone(), kinds.1, format!("`{removed}` removed"));
        }
    }

    fn boundaries(&mut self, old: &Boundaries, new: &Boundaries) {
        let at = "charter.boundaries";
        self.set(
            format!("{at}.forbidden_actions"),
            &old.forbidden_actions,
            &new.forbidden_actions,
            FEWER_LOOSENS,
        );
        self.limit(
            format!("{at}.max_effect"),
            old.max_effect,
            new.max_effect,
            Up::Loosens,
        );
        self.ceilings(
            at,
            (old.max_cost_per_action, old.max_risk, old.min_confidence),
            (new.max_cost_per_action, new.max_risk, new.min_confidence),
        );
        self.limit(
            format!("{at}.max_amount_per_action"),
            old.max_amount_per_action,
            new.max_amount_per_action,
            Up::Loosens,
        );
    }

    /// The per-action ceilings shared by the charter's boundaries and a pathway's limits:
    /// cost and risk loosen upwards, the confidence floor loosens downwards.
    fn ceilings(
        &mut self,
        at: &str,
        old: (Option<Money>, Option<u32>, Option<f32>),
        new: (Option<Money>, Option<u32>, Option<f32>),
    ) {
        self.limit(
            format!("{at}.max_cost_per_action"),
            old.0,
            new.0,
            Up::Loosens,
        );
        self.limit(format!("{at}.max_risk"), old.1, new.1, Up::Loosens);
        self.limit(format!("{at}.min_confidence"), old.2, new.2, Up::Tightens);
    }

    fn anchor(&mut self, old: &Anchor, new: &Anchor) {
        let at = format!("anchors.{}", new.key);
        if old.title != new.title {
            self.push(
                format!("{at}.title"),
                ChangeKind::Changed,
                format!("`{}` -> `{}`", old.title, new.title),
            );
        }
        // holders are people, not permissions
        self.set(format!("{at}.holders"), &old.holders, &new.holders, CHANGED);
        if old.deputy != new.deputy {
            self.push(
                format!("{at}.deputy"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.deputy, new.deputy),
            );
        }
        if old.response_time != new.response_time {
            self.push(
                format!("{at}.response_time"),
                ChangeKind::Changed,
                format!(
                    "{} -> {}",
                    crate::duration::format(old.response_time),
                    crate::duration::format(new.response_time)
                ),
            );
        }
        if old.escalates_to != new.escalates_to {
            self.push(
                format!("{at}.escalates_to"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.escalates_to, new.escalates_to),
            );
        }
    }

    fn limits(&mut self, at: &str, old: &AutonomyLimits, new: &AutonomyLimits) {
        self.set(
            format!("{at}.actions"),
            &old.actions,
            &new.actions,
            MORE_LOOSENS,
        );
        let fx = |v: &AutonomyLimits| v.effects.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        self.set(format!("{at}.effects"), &fx(old), &fx(new), MORE_LOOSENS);
        self.ceilings(
            at,
            (old.max_cost_per_action, old.max_risk, old.min_confidence),
            (new.max_cost_per_action, new.max_risk, new.min_confidence),
        );
        self.limit(
            format!("{at}.max_amount_per_action"),
            old.max_amount_per_action,
            new.max_amount_per_action,
            Up::Loosens,
        );
    }

    fn trigger(&mut self, at: &str, old: &Trigger, new: &Trigger) {
        self.threshold(
            format!("{at}.cost_above"),
            old.cost_above,
            new.cost_above,
            false,
        );
        self.threshold(
            format!("{at}.amount_above"),
            old.amount_above,
            new.amount_above,
            false,
        );
        self.threshold(
            format!("{at}.risk_at_least"),
            old.risk_at_least,
            new.risk_at_least,
            false,
        );
        self.threshold(
            format!("{at}.confidence_below"),
            old.confidence_below,
            new.confidence_below,
            true,
        );
        self.threshold(
            format!("{at}.effect_at_least"),
            old.effect_at_least,
            new.effect_at_least,
            false,
        );
        // listing actions narrows the rule; an empty list means every action
        if old.actions != new.actions {
            let kind = match (old.actions.is_empty(), new.actions.is_empty()) {
                (true, false) => ChangeKind::Loosened,
                (false, true) => ChangeKind::Tightened,
                _ => ChangeKind::Changed,
            };
            self.push(
                format!("{at}.actions"),
                kind,
                format!("{:?} -> {:?}", old.actions, new.actions),
            );
        }
        if old.context_equals != new.context_equals {
            self.push(
                format!("{at}.context_equals"),
                ChangeKind::Changed,
                "context conditions changed".into(),
            );
        }
    }

    fn rule(&mut self, at: &str, old: &EscalationRule, new: &EscalationRule) {
        self.trigger(&format!("{at}.when"), &old.when, &new.when);
        if old.mode != new.mode {
            let rank = |m: EscalationMode| match m {
                EscalationMode::NotifyAfter => 0,
                EscalationMode::ApproveBefore => 1,
                EscalationMode::Halt => 2,
            };
            let kind = if rank(new.mode) > rank(old.mode) {
                ChangeKind::Tightened
            } else {
                ChangeKind::Loosened
            };
            self.push(
                format!("{at}.mode"),
                kind,
                format!("{} -> {}", old.mode, new.mode),
            );
        }
        if old.route != new.route {
            self.push(
                format!("{at}.route"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.route, new.route),
            );
        }
        if old.deadline != new.deadline {
            self.push(
                format!("{at}.deadline"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.deadline, new.deadline),
            );
        }
        if old.on_timeout != new.on_timeout {
            let kind = match new.on_timeout {
                OnTimeoutSpec::Deny => ChangeKind::Tightened,
                OnTimeoutSpec::Escalate(_) => ChangeKind::Changed,
            };
            self.push(
                format!("{at}.on_timeout"),
                kind,
                format!("{:?} -> {:?}", old.on_timeout, new.on_timeout),
            );
        }
        if old.allowed != new.allowed {
            self.push(
                format!("{at}.allowed"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.allowed, new.allowed),
            );
        }
    }

    fn pathway(&mut self, old: &Pathway, new: &Pathway) {
        let at = format!("pathways.{}", new.key);
        if old.anchor != new.anchor {
            self.push(
                format!("{at}.anchor"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.anchor, new.anchor),
            );
        }
        if old.delegate != new.delegate {
            self.push(
                format!("{at}.delegate"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.delegate, new.delegate),
            );
        }
        self.limits(&format!("{at}.limits"), &old.limits, &new.limits);
        for r in &new.escalation {
            let rat = format!("{at}.escalation.{}", r.name);
            match old.escalation.iter().find(|o| o.name == r.name) {
                None => self.push(rat, ChangeKind::Tightened, "escalation rule added".into()),
                Some(o) => self.rule(&rat, o, r),
            }
        }
        for o in &old.escalation {
            if !new.escalation.iter().any(|r| r.name == o.name) {
                self.push(
                    format!("{at}.escalation.{}", o.name),
                    ChangeKind::Loosened,
                    "escalation rule removed".into(),
                );
            }
        }
    }

    fn budget(&mut self, old: &Budget, new: &Budget) {
        let at = format!("budgets.{}", new.key);
        if old.scope != new.scope {
            self.push(
                format!("{at}.scope"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.scope, new.scope),
            );
        }
        if old.period != new.period {
            self.push(
                format!("{at}.period"),
                ChangeKind::Changed,
                format!("{:?} -> {:?}", old.period, new.period),
            );
        }
        let (o, n): (&Limits, &Limits) = (&old.limits, &new.limits);
        self.limit(format!("{at}.limits.cost"), o.cost, n.cost, Up::Loosens);
        self.limit(
            format!("{at}.limits.payments"),
            o.payments,
            n.payments,
            Up::Loosens,
        );
        self.limit(
            format!("{at}.limits.tokens"),
            o.tokens,
            n.tokens,
            Up::Loosens,
        );
        self.limit(
            format!("{at}.limits.tool_calls"),
            o.tool_calls,
            n.tool_calls,
            Up::Loosens,
        );
        self.limit(
            format!("{at}.limits.risk_points"),
            o.risk_points,
            n.risk_points,
            Up::Loosens,
        );
    }
}

fn keyed<'a, T>(
    d: &mut Differ,
    what: &str,
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&T) -> &str,
    mut both: impl FnMut(&mut Differ, &'a T, &'a T),
) {
    for n in new {
        match old.iter().find(|o| key(o) == key(n)) {
            Some(o) => both(d, o, n),
            None => d.push(
                format!("{what}.{}", key(n)),
                ChangeKind::Added,
                format!("{what} `{}` added", key(n)),
            ),
        }
    }
    for o in old {
        if !new.iter().any(|n| key(n) == key(o)) {
            d.push(
                format!("{what}.{}", key(o)),
                ChangeKind::Removed,
                format!("{what} `{}` removed", key(o)),
            );
        }
    }
}

/// Lists what was added, removed, loosened or tightened from `old` to `new`.
///
/// ```
/// use aios_core::Money;
/// use aios_governance::{diff, ChangeKind, GovernanceModel};
/// let old = GovernanceModel::from_json(r#"{"version": 1,
///   "charter": {"intent": "x", "boundaries": {"max_cost_per_action": 100}}}"#)?;
/// let mut new = old.clone();
/// new.version = 2;
/// new.charter.boundaries.max_cost_per_action = Some(Money::from_minor(500));
/// let d = diff(&old, &new);
/// assert!(d.has(ChangeKind::Loosened, "charter.boundaries.max_cost_per_action"));
/// # Ok::<(), aios_governance::ManifestError>(())
/// ```
pub fn diff(old: &GovernanceModel, new: &GovernanceModel) -> ModelDiff {
    let mut d = Differ {
        changes: Vec::new(),
    };
    if old.charter.intent != new.charter.intent {
        d.push(
            "charter.intent".into(),
            ChangeKind::Changed,
            "intent reworded".into(),
        );
    }
    d.set(
        "charter.non_negotiables".into(),
        &old.charter.non_negotiables,
        &new.charter.non_negotiables,
        FEWER_LOOSENS,
    );
    if old.charter.final_authority != new.charter.final_authority {
        d.push(
            "charter.final_authority".into(),
            ChangeKind::Changed,
            format!(
                "{:?} -> {:?}",
                old.charter.final_authority, new.charter.final_authority
            ),
        );
    }
    d.boundaries(&old.charter.boundaries, &new.charter.boundaries);
    keyed(
        &mut d,
        "anchors",
        &old.anchors,
        &new.anchors,
        |a| a.key.as_str(),
        |d, o, n| d.anchor(o, n),
    );
    keyed(
        &mut d,
        "roles",
        &old.roles,
        &new.roles,
        |r| r.key.as_str(),
        |d, o, n| {
            if o.description != n.description {
                d.push(
                    format!("roles.{}.description", n.key),
                    ChangeKind::Changed,
                    "description reworded".into(),
                );
            }
        },
    );
    keyed(
        &mut d,
        "pathways",
        &old.pathways,
        &new.pathways,
        |p| p.key.as_str(),
        |d, o, n| d.pathway(o, n),
    );
    keyed(
        &mut d,
        "budgets",
        &old.budgets,
        &new.budgets,
        |b| b.key.as_str(),
        |d, o, n| d.budget(o, n),
    );
    ModelDiff {
        from_version: old.version,
        to_version: new.version,
        changes: d.changes,
    }
}
