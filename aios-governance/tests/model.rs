//! Loading and saving the model (errors name the path), and version diffs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aios_core::Money;
use aios_governance::{
    diff, BudgetScope, ChangeKind, EscalationMode, EscalationRule, Format, GovernanceModel,
    ManifestError, OnTimeoutSpec, Pathway, Period, Trigger,
};
use common::{base, BASE};

#[test]
fn the_base_model_loads_with_every_field() {
    let m = base();
    assert_eq!(m.version, 1);
    assert_eq!(m.changelog[0].author.as_deref(), Some("alice"));
    assert_eq!(m.anchors[0].deputy.as_deref(), Some("bob"));
    assert_eq!(m.anchors[1].escalates_to.as_deref(), Some("founder"));
    assert_eq!(m.anchors[0].response_time.as_secs(), 4 * 3_600);
    let p = m.pathway("send-email").unwrap();
    assert_eq!(p.escalation.len(), 3);
    assert_eq!(p.escalation[1].deadline.map(|d| d.as_secs()), Some(1_800));
    assert_eq!(p.escalation[2].mode, EscalationMode::Halt);
    assert_eq!(
        m.pathway("calendar").unwrap().escalation[0].on_timeout,
        OnTimeoutSpec::Escalate("founder".into())
    );
    assert_eq!(
        m.budget("outreach").unwrap().scope,
        BudgetScope::Role("outreach".into())
    );
    assert_eq!(m.budget("org").unwrap().period, Period::Month);
    assert_eq!(
        m.budget("per-run").unwrap().alerts,
        vec![50, 80, 100],
        "default alerts"
    );
}

#[test]
fn json_and_toml_round_trip() {
    let m = base();
    let json = m.to_json().unwrap();
    assert_eq!(GovernanceModel::from_json(&json).unwrap(), m);
    let toml = m.to_toml().unwrap();
    assert_eq!(GovernanceModel::from_toml(&toml).unwrap(), m, "{toml}");
    assert!(
        json.contains("\"response_time\": \"4h\""),
        "durations are written as text"
    );
}

fn invalid(result: Result<GovernanceModel, ManifestError>) -> (Format, String, String) {
    match result {
        Err(ManifestError::Invalid {
            format,
            path,
            message,
        }) => (format, path, message),
        other => panic!("expected an invalid document, got {other:?}"),
    }
}

#[test]
fn load_errors_name_the_path_and_the_problem() {
    let swap = |from: &str, to: &str| {
        assert!(BASE.contains(from), "fixture contains {from}");
        BASE.replacen(from, to, 1)
    };
    #[rustfmt::skip]
    let toml_cases: Vec<(&str, String, &str, &str)> = vec![
        ("bad mode", swap("mode = \"halt\"", "mode = \"panic\""),
            "pathways[0].escalation[2].mode", "unknown variant `panic`"),
        ("bad duration", swap("deadline = \"30m\"", "deadline = \"30 minutes\""),
            "pathways[0].escalation[1].deadline", "unknown unit"),
        ("unknown field", swap("route = \"ops\"\nmode = \"notify_after\"", "rout = \"ops\"\nmode = \"notify_after\""),
            "pathways[0].escalation[0].rout", "unknown field `rout`"),
        ("wrong type", swap("max_risk = 60", "max_risk = \"sixty\""),
            "pathways[0].limits.max_risk", "invalid type"),
        ("bad effect", swap("effects = [\"reversible\", \"irreversible\"]", "effects = [\"reversible\", \"forever\"]"),
            "pathways[0].limits.effects[1]", "unknown variant `forever`"),
        ("missing field", swap("title = \"Operations\"\n", ""),
            "anchors[1]", "missing field `title`"),
        ("syntax error", swap("[[roles]]", "[[roles"),
            ".", "line 36, column 8: unclosed array table"),
    ];
    for (name, doc, path, needle) in toml_cases {
        let (format, p, message) = invalid(GovernanceModel::from_toml(&doc));
        assert_eq!(format, Format::Toml, "{name}");
        assert_eq!(p, path, "{name}: {message}");
        assert!(
            message.contains(needle),
            "{name}: `{message}` mentions `{needle}`"
        );
        assert!(!message.contains('\n'), "{name}: one line");
    }

    let json = base().to_json().unwrap();
    let (format, path, message) = invalid(GovernanceModel::from_json(&json.replacen(
        "\"approve_before\"",
        "\"later\"",
        1,
    )));
    assert_eq!(format, Format::Json);
    assert_eq!(path, "pathways[0].escalation[1].mode");
    assert!(message.contains("unknown variant `later`"), "{message}");
    let (_, path, _) = invalid(GovernanceModel::from_json("{\"version\": 1}"));
    assert_eq!(path, ".");
    let (_, path, _) = invalid(GovernanceModel::from_json(&format!("{json} trailing")));
    assert_eq!(path, ".");
    let (_, path, message) = invalid(GovernanceModel::from_json(&json.replacen(
        "\"schema\": 1",
        "\"schema\": 99",
        1,
    )));
    assert_eq!(path, "schema");
    assert!(
        message.contains("unsupported schema version `99`"),
        "{message}"
    );
    let err = GovernanceModel::from_json(&json.replacen("\"4h\"", "-5", 1)).unwrap_err();
    assert_eq!(err.path(), Some("anchors[0].response_time"));
    assert!(
        err.to_string()
            .starts_with("invalid json governance document at `anchors[0].response_time`"),
        "{err}"
    );
}

fn rule(name: &str, when: Trigger, mode: EscalationMode) -> EscalationRule {
    EscalationRule {
        name: name.into(),
        when,
        route: None,
        mode,
        deadline: None,
        on_timeout: OnTimeoutSpec::Deny,
        allowed: vec![],
    }
}

#[test]
fn diff_reports_added_removed_loosened_tightened() {
    let old = base();
    let mut new = old.clone();
    new.version = 2;
    // loosened: a higher cost limit, a removed rule, a higher threshold, a new action
    new.pathways[0].limits.max_cost_per_action = Some(Money::from_minor(900));
    new.pathways[0]
        .escalation
        .retain(|r| r.name != "first-contact");
    new.pathways[0].escalation[0].when.cost_above = Some(Money::from_minor(400));
    new.pathways[0].limits.actions.push("follow_up".into());
    // tightened: a lower risk limit, a new rule, notify -> halt, a new forbidden action
    new.pathways[1].limits.max_risk = Some(50);
    new.pathways[1].escalation.push(rule(
        "big-booking",
        Trigger {
            cost_above: Some(Money::from_minor(500)),
            ..Trigger::default()
        },
        EscalationMode::ApproveBefore,
    ));
    new.pathways[1].escalation[0].mode = EscalationMode::Halt;
    new.charter
        .boundaries
        .forbidden_actions
        .push("sign_contract".into());
    new.budgets[1].limits.cost = Some(Money::from_minor(10_000));
    // added and removed
    new.roles.retain(|r| r.key != "researcher");
    new.pathways.push(Pathway {
        key: "research".into(),
        description: String::new(),
        anchor: Some("ops".into()),
        delegate: Some("scheduler".into()),
        limits: Default::default(),
        escalation: vec![rule("all", Trigger::default(), EscalationMode::NotifyAfter)],
    });
    new.anchors[1].holders.push("dave".into());

    let d = diff(&old, &new);
    assert_eq!((d.from_version, d.to_version), (1, 2));
    #[rustfmt::skip]
    let expected = [
        (ChangeKind::Loosened, "pathways.send-email.limits.max_cost_per_action"),
        (ChangeKind::Loosened, "pathways.send-email.escalation.first-contact"),
        (ChangeKind::Loosened, "pathways.send-email.escalation.large-spend.when.cost_above"),
        (ChangeKind::Loosened, "pathways.send-email.limits.actions"),
        (ChangeKind::Tightened, "pathways.calendar.limits.max_risk"),
        (ChangeKind::Tightened, "pathways.calendar.escalation.big-booking"),
        (ChangeKind::Tightened, "pathways.calendar.escalation.after-hours.mode"),
        (ChangeKind::Tightened, "charter.boundaries.forbidden_actions"),
        (ChangeKind::Tightened, "budgets.outreach.limits.cost"),
        (ChangeKind::Removed, "roles.researcher"),
        (ChangeKind::Added, "pathways.research"),
        (ChangeKind::Changed, "anchors.ops.holders"),
    ];
    for (kind, path) in expected {
        assert!(d.has(kind, path), "{kind:?} {path} in\n{d}");
    }
    assert_eq!(d.changes.len(), expected.len(), "nothing else:\n{d}");
    assert!(diff(&old, &old).is_empty());
    // the other way round, loosened and tightened swap
    let back = diff(&new, &old);
    assert!(back.has(
        ChangeKind::Tightened,
        "pathways.send-email.limits.max_cost_per_action"
    ));
    assert!(back.has(ChangeKind::Removed, "pathways.research"));
}
