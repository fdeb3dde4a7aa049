//! Structural validation: one table row per finding, each a mutation of a valid model and
//! the finding (kind and path) it must produce.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aios_core::{EffectClass, Money};
use aios_governance::{
    Anchor, BudgetScope, FindingKind, GovernanceModel, ManifestRole, OnTimeoutSpec, Severity,
};
use common::base;

type Mutation = fn(&mut GovernanceModel);

fn anchor(key: &str, holders: &[&str], escalates_to: Option<&str>) -> Anchor {
    Anchor {
        key: key.into(),
        title: key.into(),
        holders: holders.iter().map(|h| h.to_string()).collect(),
        deputy: None,
        responsibilities: vec![],
        response_time: std::time::Duration::from_secs(60),
        escalates_to: escalates_to.map(Into::into),
    }
}

#[test]
fn the_base_model_is_clean() {
    let report = base().validate();
    assert!(report.findings.is_empty(), "{report}");
}

#[test]
fn validation_table() {
    #[rustfmt::skip]
    let table: Vec<(&str, Mutation, FindingKind, &str)> = vec![
        ("a forbidden action whose name no request can carry",
            |m| m.charter.boundaries.forbidden_actions.push("Payments.Transfer".into()),
            FindingKind::InvalidValue, "charter.boundaries.forbidden_actions[1]"),
        ("a delegated action with a trailing space",
            |m| m.pathways[0].limits.actions.push("email.send ".into()),
            FindingKind::InvalidValue, "pathways[0].limits.actions[2]"),
        ("a trigger action with an invisible character",
            |m| m.pathways[0].escalation[0].when.actions.push("email.\u{200b}send".into()),
            FindingKind::InvalidValue, "pathways[0].escalation[0].when.actions[0]"),
        ("budgets without an organisation budget",
            |m| { m.budgets.remove(0); m.budgets.iter_mut().for_each(|b| b.parent = None); },
            FindingKind::InvalidBudgetParent, "budgets"),
        ("pathway without accountable anchor",
            |m| m.pathways[0].anchor = None,
            FindingKind::MissingAccountableAnchor, "pathways[0].anchor"),
        ("pathway anchor without holder",
            |m| m.anchors[1].holders.clear(),
            FindingKind::AnchorWithoutHolder, "pathways[1].anchor"),
        ("final authority without holder",
            |m| m.anchors[0].holders.clear(),
            FindingKind::AnchorWithoutHolder, "charter.final_authority"),
        ("no final authority",
            |m| m.charter.final_authority = None,
            FindingKind::MissingAccountableAnchor, "charter.final_authority"),
        ("pathway anchor unknown",
            |m| m.pathways[0].anchor = Some("ghost".into()),
            FindingKind::UnknownAnchor, "pathways[0].anchor"),
        ("delegation without escalation design",
            |m| m.pathways[1].escalation.clear(),
            FindingKind::NoEscalationDesign, "pathways[1].escalation"),
        ("escalation route to an unknown anchor",
            |m| m.pathways[0].escalation[0].route = Some("ghost".into()),
            FindingKind::UnknownAnchor, "pathways[0].escalation[0].route"),
        ("escalation route that cycles",
            |m| {
                m.anchors.push(anchor("x", &[], Some("y")));
                m.anchors.push(anchor("y", &[], Some("x")));
                m.pathways[0].escalation[2].route = Some("x".into());
            },
            FindingKind::EscalationCycle, "pathways[0].escalation[2].route"),
        ("anchors that escalate in a circle",
            |m| {
                m.anchors[1].escalates_to = Some("x".into());
                m.anchors.push(anchor("x", &["dave"], Some("ops")));
            },
            FindingKind::EscalationCycle, "anchors[1].escalates_to"),
        ("escalation route that never reaches a human",
            |m| {
                m.anchors.push(anchor("empty", &[], None));
                m.pathways[0].escalation[1].route = Some("empty".into());
            },
            FindingKind::RouteNeverReachesHuman, "pathways[0].escalation[1].route"),
        ("route through an anchor chain ending without a holder",
            |m| {
                m.anchors.push(anchor("a", &[], Some("b")));
                m.anchors.push(anchor("b", &[], None));
                m.pathways[1].escalation[0].route = Some("a".into());
            },
            FindingKind::RouteNeverReachesHuman, "pathways[1].escalation[0].route"),
        ("timeout escalation to an unknown anchor",
            |m| m.pathways[1].escalation[0].on_timeout = OnTimeoutSpec::Escalate("ghost".into()),
            FindingKind::UnknownAnchor, "pathways[1].escalation[0].on_timeout"),
        ("anchor escalating to an unknown anchor",
            |m| m.anchors[1].escalates_to = Some("ghost".into()),
            FindingKind::UnknownAnchor, "anchors[1].escalates_to"),
        ("cost limit wider than the charter",
            |m| m.pathways[0].limits.max_cost_per_action = Some(Money::from_minor(200_000)),
            FindingKind::ExceedsCharter, "pathways[0].limits.max_cost_per_action"),
        ("no cost limit while the charter has one",
            |m| m.pathways[1].limits.max_cost_per_action = None,
            FindingKind::ExceedsCharter, "pathways[1].limits.max_cost_per_action"),
        ("risk limit wider than the charter",
            |m| m.pathways[0].limits.max_risk = Some(95),
            FindingKind::ExceedsCharter, "pathways[0].limits.max_risk"),
        ("confidence below the charter's minimum",
            |m| m.pathways[0].limits.min_confidence = Some(0.1),
            FindingKind::ExceedsCharter, "pathways[0].limits.min_confidence"),
        ("delegating a forbidden action",
            |m| m.pathways[0].limits.actions.push("wire_money".into()),
            FindingKind::ExceedsCharter, "pathways[0].limits.actions[2]"),
        ("effect wider than the charter",
            |m| m.charter.boundaries.max_effect = Some(EffectClass::Reversible),
            FindingKind::ExceedsCharter, "pathways[0].limits.effects[1]"),
        ("unknown delegate role",
            |m| m.pathways[1].delegate = Some("ghost".into()),
            FindingKind::UnknownRole, "pathways[1].delegate"),
        ("missing delegate",
            |m| m.pathways[1].delegate = None,
            FindingKind::MissingDelegate, "pathways[1].delegate"),
        ("budget for an unknown role",
            |m| m.budgets[1].scope = BudgetScope::Role("ghost".into()),
            FindingKind::UnknownRole, "budgets[1].scope"),
        ("child budget larger than its parent",
            |m| m.budgets[1].limits.cost = Some(Money::from_minor(200_000)),
            FindingKind::ChildBudgetExceedsParent, "budgets[1].limits.cost"),
        ("run budget larger than its explicit parent",
            |m| { m.budgets[2].parent = Some("outreach".into()); m.budgets[2].limits.cost = Some(Money::from_minor(30_000)); },
            FindingKind::ChildBudgetExceedsParent, "budgets[2].limits.cost"),
        ("budget parent unknown",
            |m| m.budgets[1].parent = Some("ghost".into()),
            FindingKind::InvalidBudgetParent, "budgets[1].parent"),
        ("budget parent below the child",
            |m| m.budgets[1].parent = Some("per-run".into()),
            FindingKind::InvalidBudgetParent, "budgets[1].parent"),
        ("budget parents in a cycle",
            |m| { m.budgets[1].parent = Some("per-run".into()); m.budgets[2].parent = Some("outreach".into()); },
            FindingKind::BudgetCycle, "budgets[1].parent"),
        ("duplicate role key",
            |m| m.roles.push(ManifestRole { key: "outreach".into(), description: String::new() }),
            FindingKind::DuplicateKey, "roles[3].key"),
        ("duplicate rule name",
            |m| m.pathways[0].escalation[1].name = "first-contact".into(),
            FindingKind::DuplicateKey, "pathways[0].escalation[1].name"),
        ("empty anchor key",
            |m| m.anchors.push(anchor("", &["x"], None)),
            FindingKind::EmptyKey, "anchors[2].key"),
        ("risk threshold above 100",
            |m| m.pathways[0].escalation[2].when.risk_at_least = Some(150),
            FindingKind::InvalidValue, "pathways[0].escalation[2].when.risk_at_least"),
        ("confidence outside 0..1",
            |m| m.charter.boundaries.min_confidence = Some(1.5),
            FindingKind::InvalidValue, "charter.boundaries.min_confidence"),
        ("negative threshold",
            |m| m.pathways[0].escalation[1].when.cost_above = Some(Money::from_minor(-5)),
            FindingKind::InvalidValue, "pathways[0].escalation[1].when.cost_above"),
        ("zero alert threshold",
            |m| m.budgets[0].alerts = vec![0, 50],
            FindingKind::InvalidValue, "budgets[0].alerts[0]"),
    ];
    for (name, mutate, kind, path) in table {
        let mut m = base();
        mutate(&mut m);
        let report = m.validate();
        assert!(
            report.has(kind, path),
            "{name}: expected {kind:?} at `{path}`, got:\n{report}"
        );
        assert!(!report.is_ok(), "{name}: an error-level finding");
        let refused = m.compile().expect_err("a model with errors is refused");
        assert!(refused.has(kind, path), "{name}: compile reports it too");
        for f in &report.findings {
            assert!(!f.message.is_empty() && !f.path.is_empty(), "{name}: {f}");
        }
    }
}

#[test]
fn warnings_do_not_block_compilation() {
    #[rustfmt::skip]
    let table: Vec<(&str, Mutation, FindingKind, &str)> = vec![
        ("rule without condition",
            |m| m.pathways[1].escalation[0].when = Default::default(),
            FindingKind::EmptyTrigger, "pathways[1].escalation[0].when"),
        ("nothing delegated",
            |m| m.pathways[1].limits.actions.clear(),
            FindingKind::NothingDelegated, "pathways[1].limits"),
        ("version without a change log entry",
            |m| m.version = 2,
            FindingKind::InvalidValue, "changelog"),
        ("a zero limit closes the budget",
            |m| m.budgets[2].limits.tool_calls = Some(0),
            FindingKind::InvalidValue, "budgets[2].limits.tool_calls"),
        ("deputy is also a holder",
            |m| m.anchors[0].deputy = Some("alice".into()),
            FindingKind::InvalidValue, "anchors[0].deputy"),
    ];
    for (name, mutate, kind, path) in table {
        let mut m = base();
        mutate(&mut m);
        let report = m.validate();
        assert!(report.has(kind, path), "{name}: got\n{report}");
        assert!(report.is_ok(), "{name}: only warnings");
        assert!(report.warnings().all(|f| f.severity == Severity::Warning));
        assert!(m.compile().is_ok(), "{name}: warnings compile");
    }
}

#[test]
fn all_findings_are_returned_not_just_the_first() {
    let mut m = base();
    m.pathways[0].anchor = None;
    m.pathways[1].escalation.clear();
    m.pathways[1].delegate = Some("ghost".into());
    m.budgets[1].limits.cost = Some(Money::from_minor(500_000));
    m.roles.push(ManifestRole {
        key: "scheduler".into(),
        description: String::new(),
    });
    let report = m.validate();
    for (kind, path) in [
        (FindingKind::MissingAccountableAnchor, "pathways[0].anchor"),
        (FindingKind::NoEscalationDesign, "pathways[1].escalation"),
        (FindingKind::UnknownRole, "pathways[1].delegate"),
        (
            FindingKind::ChildBudgetExceedsParent,
            "budgets[1].limits.cost",
        ),
        (FindingKind::DuplicateKey, "roles[3].key"),
    ] {
        assert!(report.has(kind, path), "{kind:?} at {path}:\n{report}");
    }
    assert_eq!(report.errors().count(), 5, "{report}");
    let text = report.to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.contains("error at `pathways[1].delegate`: role `ghost` is not defined"));
}
