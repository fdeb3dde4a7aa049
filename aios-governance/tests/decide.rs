//! The decision function: one table of requests and expected verdicts with the rule that
//! fired, then controls, overrides, custom policies and audit helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AnchorId, AuditEvent, Clock, DecisionKind, EffectClass, HumanId, InMemoryAuditLog,
    ManualClock, Money, PathwayId, Principal, RoleId, RunId,
};
use aios_governance::{
    rules, ActionRequest, ControlTarget, Controls, Decision, EscalationMode, Governor, OnTimeout,
    Policy, PolicyContext, PolicyOutcome, Relaxation, ResponseKind, Verdict,
};
use common::{governor, hold, send};
use serde_json::json;

/// What a row expects.
#[derive(Debug)]
enum Expect {
    Allow,
    Deny,
    Approval {
        anchor: &'static str,
        deadline_secs: u64,
    },
    Escalate {
        anchor: &'static str,
        mode: EscalationMode,
    },
}

fn check(g: &Governor, name: &str, req: ActionRequest, expect: Expect, rule: &str) -> Decision {
    let d = g.decide(&req);
    let ok = match (&expect, &d.verdict) {
        (Expect::Allow, Verdict::Allow) | (Expect::Deny, Verdict::Deny) => true,
        (
            Expect::Approval {
                anchor,
                deadline_secs,
            },
            Verdict::RequireApproval {
                anchor: a,
                deadline,
                ..
            },
        ) => *a == AnchorId::from_name(anchor) && deadline.as_secs() == *deadline_secs,
        (Expect::Escalate { anchor, mode }, Verdict::Escalate { anchor: a, mode: m }) => {
            *a == AnchorId::from_name(anchor) && m == mode
        }
        _ => false,
    };
    assert!(ok, "{name}: expected {expect:?}, got:\n{}", d.explain());
    assert!(
        d.fired(rule),
        "{name}: expected rule `{rule}` to fire, got:\n{}",
        d.explain()
    );
    assert_eq!(d.model_version, 1, "{name}: the model version is reported");
    d
}

#[test]
fn decision_table() {
    let g = governor();
    let m = Money::from_minor;
    let approval = |anchor, deadline_secs| Expect::Approval {
        anchor,
        deadline_secs,
    };
    let escalate = |anchor, mode| Expect::Escalate { anchor, mode };
    #[rustfmt::skip]
    let table: Vec<(&str, ActionRequest, Expect, &str)> = vec![
        // within the delegation
        ("plain send", send(), Expect::Allow, rules::WITHIN_DELEGATION),
        ("draft is delegated too", ActionRequest { action: "draft".into(), ..send() }, Expect::Allow, rules::WITHIN_DELEGATION),
        ("wildcard actions", ActionRequest { action: "anything".into(), ..hold() }, Expect::Allow, rules::WITHIN_DELEGATION),
        ("risky but reversible", send().with_risk(55).with_effect(EffectClass::Reversible), Expect::Allow, rules::WITHIN_DELEGATION),
        ("cost exactly at the rule threshold", send().with_cost(m(200)), Expect::Allow, rules::WITHIN_DELEGATION),
        // malformed input is denied
        ("risk above 100", send().with_risk(101), Expect::Deny, rules::MALFORMED),
        ("confidence above 1", send().with_confidence(1.5), Expect::Deny, rules::MALFORMED),
        ("confidence NaN", send().with_confidence(f32::NAN), Expect::Deny, rules::MALFORMED),
        ("negative cost", send().with_cost(m(-1)), Expect::Deny, rules::MALFORMED),
        ("empty action", ActionRequest { action: " ".into(), ..send() }, Expect::Deny, rules::MALFORMED),
        // unknown things are denied
        ("unknown pathway", ActionRequest { pathway: PathwayId::from_name("payments"), ..send() }, Expect::Deny, rules::UNKNOWN_PATHWAY),
        ("unknown role", ActionRequest { role: RoleId::from_name("intruder"), ..send() }, Expect::Deny, rules::UNKNOWN_ROLE),
        ("role not the delegate", ActionRequest { role: RoleId::from_name("scheduler"), ..send() }, Expect::Deny, rules::NOT_DELEGATE),
        // the charter
        ("forbidden by the charter", ActionRequest { action: "wire_money".into(), ..send() }, Expect::Deny, rules::CHARTER_FORBIDDEN),
        ("above the charter's cost", send().with_cost(m(100_001)), Expect::Deny, rules::CHARTER_COST),
        ("above the charter's risk", send().with_risk(95), Expect::Deny, rules::CHARTER_RISK),
        ("below the charter's confidence", send().with_confidence(0.2), Expect::Deny, rules::CHARTER_CONFIDENCE),
        ("no confidence at all", ActionRequest { confidence: None, ..send() }, Expect::Deny, rules::CHARTER_CONFIDENCE),
        // the delegation's hard edges
        ("action not delegated", ActionRequest { action: "delete".into(), ..send() }, Expect::Deny, rules::ACTION_NOT_DELEGATED),
        ("effect not delegated", hold().with_effect(EffectClass::Irreversible), Expect::Deny, rules::EFFECT_NOT_DELEGATED),
        ("read only not delegated on email", send().with_effect(EffectClass::ReadOnly), Expect::Deny, rules::EFFECT_NOT_DELEGATED),
        // escalation rules
        ("large spend", send().with_cost(m(300)), approval("founder", 1_800), "escalation:large-spend"),
        ("risky and irreversible halts", send().with_risk(55), escalate("ops", EscalationMode::Halt), "escalation:risky-irreversible"),
        ("first contact notifies", send().with_context("first_contact", json!(true)), escalate("ops", EscalationMode::NotifyAfter), "escalation:first-contact"),
        ("context must match exactly", send().with_context("first_contact", json!("yes")), Expect::Allow, rules::WITHIN_DELEGATION),
        ("after hours on the calendar", hold().with_context("after_hours", json!(true)), approval("ops", 3_600), "escalation:after-hours"),
        // autonomy limits ask the accountable anchor
        ("above the cost limit", send().with_cost(m(600)), approval("founder", 1_800), rules::LIMIT_COST),
        ("above the risk limit", send().with_risk(70).with_effect(EffectClass::Reversible), approval("founder", 14_400), rules::LIMIT_RISK),
        ("below the minimum confidence", send().with_confidence(0.4), approval("founder", 14_400), rules::LIMIT_CONFIDENCE),
        // the strictest wins: halt beats approval beats notify
        ("halt beats approval", send().with_risk(55).with_cost(m(300)), escalate("ops", EscalationMode::Halt), "escalation:large-spend"),
        ("approval beats notify", send().with_cost(m(300)).with_context("first_contact", json!(true)), approval("founder", 1_800), "escalation:first-contact"),
        ("deny beats everything", ActionRequest { action: "wire_money".into(), ..send().with_cost(m(300)) }, Expect::Deny, rules::ACTION_NOT_DELEGATED),
    ];
    let rows = table.len();
    for (name, req, expect, rule) in table {
        check(&g, name, req, expect, rule);
    }
    assert_eq!(rows, 32);
}

#[test]
fn approval_verdicts_carry_allowed_answers_and_timeout() {
    let g = governor();
    let d = g.decide(&send().with_cost(Money::from_minor(300)));
    assert_eq!(
        d.verdict,
        Verdict::RequireApproval {
            anchor: AnchorId::from_name("founder"),
            deadline: Duration::from_secs(1_800),
            allowed: vec![ResponseKind::Approve, ResponseKind::Reject],
            on_timeout: OnTimeout::Deny,
        }
    );
    let d = g.decide(&hold().with_context("after_hours", json!(true)));
    match d.verdict {
        Verdict::RequireApproval {
            on_timeout,
            allowed,
            ..
        } => {
            assert_eq!(
                on_timeout,
                OnTimeout::Escalate(AnchorId::from_name("founder"))
            );
            assert_eq!(allowed, ResponseKind::ALL.to_vec());
        }
        other => panic!("expected an approval, got {other:?}"),
    }
}

#[test]
fn every_violation_is_reported_and_explained() {
    let g = governor();
    let d = g.decide(&ActionRequest {
        action: "wire_money".into(),
        ..send().with_cost(Money::from_minor(200_000)).with_risk(99)
    });
    assert_eq!(d.kind(), DecisionKind::Deny);
    for rule in [
        rules::CHARTER_FORBIDDEN,
        rules::CHARTER_COST,
        rules::CHARTER_RISK,
        rules::ACTION_NOT_DELEGATED,
    ] {
        assert!(d.fired(rule), "{rule} fired:\n{}", d.explain());
    }
    let text = d.explain();
    assert!(text.starts_with("deny under governance model v1"), "{text}");
    assert!(text.contains("estimated cost 2000.00 > 1000.00"), "{text}");
    assert!(text.contains("risk 99 > 90"), "{text}");

    let d = g.decide(&send().with_cost(Money::from_minor(300)));
    let named = g.explain(&d);
    assert!(
        named.starts_with("require approval from anchor `founder` within 30m"),
        "{named}"
    );
    let wrong_role = g.decide(&ActionRequest {
        role: RoleId::from_name("scheduler"),
        ..send()
    });
    assert!(
        g.explain(&wrong_role).contains("role `outreach`"),
        "{}",
        g.explain(&wrong_role)
    );
    let text = d.explain();
    assert!(text.contains("escalation:large-spend"), "{text}");
    assert!(text.contains("estimated cost 3.00 > 2.00"), "{text}");
    assert!(text.contains("within 30m"), "{text}");
}

#[test]
fn decisions_are_pure_and_deterministic() {
    let g = governor();
    let reqs = [
        send(),
        send().with_cost(Money::from_minor(300)),
        send().with_risk(55),
        hold().with_context("after_hours", json!(true)),
    ];
    for r in &reqs {
        assert_eq!(g.decide(r), g.decide(r));
    }
}

#[test]
fn decisions_make_audit_events() {
    let g = governor();
    let run = RunId::from_name("r");
    let req = send().with_cost(Money::from_minor(300)).with_run(run);
    let d = g.decide(&req);
    match d.audit_event(&req) {
        AuditEvent::DecisionMade {
            run: r,
            pathway,
            action,
            decision,
            rules,
            model_version,
        } => {
            assert_eq!(r, Some(run));
            assert_eq!(pathway, Some(PathwayId::from_name("send-email")));
            assert_eq!(action, "send");
            assert_eq!(decision, DecisionKind::RequireApproval);
            assert_eq!(rules, vec!["escalation:large-spend".to_string()]);
            assert_eq!(model_version, 1);
        }
        other => panic!("unexpected event {other:?}"),
    }
    let json = serde_json::to_string(&d).unwrap();
    let back: Decision = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back, d,
        "decisions round-trip through serde (for checkpoints)"
    );
}

fn controls() -> (ManualClock, Controls) {
    let clock = ManualClock::default();
    let c = Controls::new(Arc::new(clock.clone()), Arc::new(InMemoryAuditLog::new()));
    (clock, c)
}

fn alice() -> Principal {
    Principal::Human(HumanId::from_name("alice"))
}

#[test]
fn operator_controls_deny_and_lapse() {
    futures::executor::block_on(async {
        let g = governor();
        let (clock, c) = controls();
        let req = send();
        assert_eq!(g.decide_with(&req, &c.snapshot()).verdict, Verdict::Allow);

        // pause a pathway
        c.pause(
            ControlTarget::Pathway(PathwayId::from_name("send-email")),
            alice(),
            "reviewing copy",
        )
        .await
        .unwrap();
        let d = g.decide_with(&req, &c.snapshot());
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.fired(rules::PAUSED));
        // other pathways go on
        assert_eq!(
            g.decide_with(&hold(), &c.snapshot()).verdict,
            Verdict::Allow
        );
        // the decision without controls is unaffected (pure)
        assert_eq!(g.decide(&req).verdict, Verdict::Allow);

        // the kill switch on the whole organisation beats everything
        c.stop(ControlTarget::Organisation, Principal::System, "incident")
            .await
            .unwrap();
        let d = g.decide_with(&hold(), &c.snapshot());
        assert!(d.fired(rules::STOPPED), "{}", d.explain());

        // an agent cannot lift controls
        let agent = Principal::Agent(AgentId::from_name("ana"));
        assert!(c
            .resume(ControlTarget::Organisation, agent, "let me go")
            .await
            .is_err());
        c.resume(ControlTarget::Organisation, alice(), "incident closed")
            .await
            .unwrap();
        assert_eq!(
            g.decide_with(&hold(), &c.snapshot()).verdict,
            Verdict::Allow
        );

        // a time-limited pause of one agent lapses by the clock
        let until = clock.now() + chrono::Duration::minutes(10);
        c.pause_until(
            ControlTarget::Agent(AgentId::from_name("sam")),
            alice(),
            "cool down",
            until,
        )
        .await
        .unwrap();
        assert_eq!(g.decide_with(&hold(), &c.snapshot()).verdict, Verdict::Deny);
        clock.advance(Duration::from_secs(600));
        assert_eq!(
            g.decide_with(&hold(), &c.snapshot()).verdict,
            Verdict::Allow
        );

        // every control is recorded with who and why
        let history = c.history();
        assert_eq!(history.len(), 4);
        assert_eq!(history[1].command.by, Principal::System);
        assert_eq!(history[1].command.reason, "incident");
    });
}

#[test]
fn overrides_loosen_delegations_for_a_while_but_never_the_charter() {
    futures::executor::block_on(async {
        let g = governor();
        let (clock, c) = controls();
        let pathway = ControlTarget::Pathway(PathwayId::from_name("send-email"));
        let until = clock.now() + chrono::Duration::hours(1);
        c.grant_override(
            pathway,
            Relaxation::WaiveRule {
                rule: "large-spend".into(),
            },
            alice(),
            "campaign week",
            until,
        )
        .await
        .unwrap();
        c.grant_override(
            pathway,
            Relaxation::RaiseCostLimit {
                to: Money::from_minor(1_000),
            },
            alice(),
            "campaign week",
            until,
        )
        .await
        .unwrap();
        let req = send().with_cost(Money::from_minor(800));
        let d = g.decide_with(&req, &c.snapshot());
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.explain());
        assert!(d.fired(rules::OVERRIDE));
        // the charter still holds
        let d = g.decide_with(&send().with_cost(Money::from_minor(100_001)), &c.snapshot());
        assert_eq!(d.verdict, Verdict::Deny);
        // beyond the raised limit, approval again
        let d = g.decide_with(&send().with_cost(Money::from_minor(1_001)), &c.snapshot());
        assert!(d.fired(rules::LIMIT_COST));
        // overrides can be withdrawn early, and notes leave a record
        c.annotate(pathway, alice(), "checking the campaign numbers")
            .await
            .unwrap();
        c.revoke_overrides(pathway, Principal::System, "budget review")
            .await
            .unwrap();
        let d = g.decide_with(&req, &c.snapshot());
        assert!(matches!(d.verdict, Verdict::RequireApproval { .. }));
        c.grant_override(
            pathway,
            Relaxation::WaiveRule {
                rule: "large-spend".into(),
            },
            alice(),
            "campaign week",
            until,
        )
        .await
        .unwrap();
        c.grant_override(
            pathway,
            Relaxation::RaiseCostLimit {
                to: Money::from_minor(1_000),
            },
            alice(),
            "campaign week",
            until,
        )
        .await
        .unwrap();
        assert_eq!(g.decide_with(&req, &c.snapshot()).verdict, Verdict::Allow);
        assert_eq!(c.history().len(), 6);
        // overrides lapse
        clock.advance(Duration::from_secs(3_600));
        let d = g.decide_with(&req, &c.snapshot());
        assert!(matches!(d.verdict, Verdict::RequireApproval { .. }));
        // an override needs a future end and a human
        let agent = Principal::Agent(AgentId::from_name("ana"));
        assert!(c
            .grant_override(
                pathway,
                Relaxation::RaiseRiskLimit { to: 80 },
                agent,
                "please",
                clock.now() + chrono::Duration::hours(1)
            )
            .await
            .is_err());
        assert!(c
            .grant_override(
                pathway,
                Relaxation::RaiseRiskLimit { to: 80 },
                alice(),
                "late",
                clock.now()
            )
            .await
            .is_err());
    });
}

#[test]
fn controls_are_audited() {
    futures::executor::block_on(async {
        let clock = ManualClock::default();
        let log = InMemoryAuditLog::new();
        let c = Controls::new(Arc::new(clock), Arc::new(log.clone()));
        c.stop(ControlTarget::Organisation, alice(), "incident")
            .await
            .unwrap();
        c.resume(ControlTarget::Organisation, alice(), "over")
            .await
            .unwrap();
        let entries = log.verify_sync(None);
        assert!(entries.is_intact());
        let events: Vec<AuditEvent> = log.tamper(|e| e.iter().map(|e| e.event.clone()).collect());
        assert_eq!(events.len(), 2);
        assert!(matches!(
            &events[0],
            AuditEvent::ControlApplied { control, reason, target, .. }
                if control == "stop" && reason == "incident" && target == "organisation"
        ));
    });
}

#[derive(Debug)]
struct Weekend;

impl Policy for Weekend {
    fn name(&self) -> &str {
        "weekend"
    }

    fn evaluate(&self, req: &ActionRequest, ctx: &PolicyContext<'_>) -> PolicyOutcome {
        match req.context.get("weekday").and_then(|v| v.as_str()) {
            Some("sat") | Some("sun") if req.effect == EffectClass::Irreversible => {
                PolicyOutcome::Deny {
                    rule: "no-irreversible".into(),
                    reason: "no irreversible actions at the weekend".into(),
                }
            }
            Some("fri") => PolicyOutcome::RequireApproval {
                rule: "friday".into(),
                reason: format!("friday on `{}`", ctx.pathway.key),
                anchor: None,
            },
            Some("nobody") => PolicyOutcome::Escalate {
                rule: "nobody".into(),
                reason: "to an anchor that does not exist".into(),
                anchor: Some(AnchorId::from_name("ghost")),
                mode: EscalationMode::NotifyAfter,
            },
            _ => PolicyOutcome::Abstain,
        }
    }
}

#[test]
fn custom_policies_combine_deny_overrides() {
    let g = Governor::builder(common::base())
        .policy(Arc::new(Weekend))
        .build()
        .unwrap();
    let d = g.decide(&send().with_context("weekday", json!("sun")));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.fired("policy:weekend:no-irreversible"));

    let d = g.decide(&send().with_context("weekday", json!("fri")));
    assert!(matches!(
        d.verdict,
        Verdict::RequireApproval { anchor, .. } if anchor == AnchorId::from_name("founder")
    ));
    // a policy cannot loosen: the built-in halt stays
    let d = g.decide(&send().with_risk(55).with_context("weekday", json!("fri")));
    assert!(matches!(
        d.verdict,
        Verdict::Escalate {
            mode: EscalationMode::Halt,
            ..
        }
    ));
    assert!(d.fired("policy:weekend:friday"));
    // a policy routing to an unknown anchor fails closed
    let d = g.decide(&send().with_context("weekday", json!("nobody")));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.fired(rules::POLICY_BAD_ANCHOR));
    // abstaining changes nothing
    assert_eq!(g.decide(&send()).verdict, Verdict::Allow);
}

#[test]
fn the_governor_answers_lookups() {
    let g = governor();
    let founder = g.anchor(AnchorId::from_name("founder")).unwrap();
    assert_eq!(founder.title, "Founder");
    assert!(founder.can_answer(HumanId::from_name("alice")));
    assert!(
        founder.can_answer(HumanId::from_name("bob")),
        "the deputy answers"
    );
    assert!(!founder.can_answer(HumanId::from_name("carol")));
    assert_eq!(g.final_authority(), AnchorId::from_name("founder"));
    let p = g.pathway(PathwayId::from_name("calendar")).unwrap();
    assert_eq!(p.anchor, AnchorId::from_name("ops"));
    assert_eq!(p.delegate, RoleId::from_name("scheduler"));
    assert_eq!(g.role(RoleId::from_name("outreach")), Some("outreach"));
    assert_eq!(g.pathways().count(), 2);
    assert_eq!(g.version(), 1);
    let plan = g.budget_plan();
    assert_eq!(plan.budgets.len(), 2);
    assert_eq!(
        plan.per_run.unwrap().limits.cost,
        Some(Money::from_minor(1_000))
    );
    fn shareable<T: Send + Sync + 'static>(_: &T) {}
    shareable(&Arc::new(g));
}

#[test]
fn routes_resolve_to_the_first_anchor_with_a_holder() {
    let mut m = common::base();
    m.anchors.push(aios_governance::Anchor {
        key: "desk".into(),
        title: "Front desk, unstaffed".into(),
        holders: vec![],
        deputy: None,
        responsibilities: vec![],
        response_time: Duration::from_secs(60),
        escalates_to: Some("ops".into()),
    });
    m.pathways[0].escalation[1].route = Some("desk".into());
    m.pathways[1].escalation[0].on_timeout =
        aios_governance::OnTimeoutSpec::Escalate("desk".into());
    let report = m.validate();
    assert!(report.is_ok(), "{report}");
    let g = m.compile().unwrap();
    match g.decide(&send().with_cost(Money::from_minor(300))).verdict {
        Verdict::RequireApproval { anchor, .. } => assert_eq!(anchor, AnchorId::from_name("ops")),
        other => panic!("expected an approval, got {other:?}"),
    }
    match g
        .decide(&hold().with_context("after_hours", json!(true)))
        .verdict
    {
        Verdict::RequireApproval { on_timeout, .. } => {
            assert_eq!(on_timeout, OnTimeout::Escalate(AnchorId::from_name("ops")))
        }
        other => panic!("expected an approval, got {other:?}"),
    }
}

/// An independent reference for the verdict, read straight from the document: 0 allow,
/// 1 notify after, 2 approval, 3 halt, 4 deny.
fn reference(m: &aios_governance::GovernanceModel, r: &ActionRequest) -> u8 {
    let malformed = r.action.trim().is_empty()
        || r.risk > 100
        || r.confidence.is_some_and(|c| !(0.0..=1.0).contains(&c))
        || r.estimated_cost.is_negative();
    if malformed {
        return 4;
    }
    let Some(p) = m
        .pathways
        .iter()
        .find(|p| PathwayId::from_name(&p.key) == r.pathway)
    else {
        return 4;
    };
    if !m.roles.iter().any(|x| RoleId::from_name(&x.key) == r.role)
        || p.delegate.as_deref().map(RoleId::from_name) != Some(r.role)
    {
        return 4;
    }
    let b = &m.charter.boundaries;
    let below = |min: Option<f32>| min.is_some_and(|min| r.confidence.map_or(true, |c| c < min));
    if b.forbidden_actions.contains(&r.action)
        || b.max_effect.is_some_and(|e| r.effect > e)
        || b.max_cost_per_action.is_some_and(|c| r.estimated_cost > c)
        || b.max_risk.is_some_and(|x| r.risk > x)
        || below(b.min_confidence)
        || !(p.limits.actions.contains(&r.action) || p.limits.actions.iter().any(|a| a == "*"))
        || !p.limits.effects.contains(&r.effect)
    {
        return 4;
    }
    let mut level = 0;
    for rule in &p.escalation {
        let w = &rule.when;
        let fires = w.cost_above.map_or(true, |t| r.estimated_cost > t)
            && w.risk_at_least.map_or(true, |t| r.risk >= t)
            && (w.confidence_below.is_none() || below(w.confidence_below))
            && w.effect_at_least.map_or(true, |t| r.effect >= t)
            && (w.actions.is_empty() || w.actions.contains(&r.action))
            && w.context_equals
                .iter()
                .all(|(k, v)| r.context.get(k) == Some(v));
        if fires {
            level = level.max(match rule.mode {
                EscalationMode::NotifyAfter => 1,
                EscalationMode::ApproveBefore => 2,
                EscalationMode::Halt => 3,
            });
        }
    }
    let l = &p.limits;
    if l.max_cost_per_action.is_some_and(|c| r.estimated_cost > c)
        || l.max_risk.is_some_and(|x| r.risk > x)
        || below(l.min_confidence)
    {
        level = level.max(2);
    }
    level
}

fn level(v: &Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Escalate {
            mode: EscalationMode::NotifyAfter,
            ..
        } => 1,
        Verdict::RequireApproval { .. } => 2,
        Verdict::Escalate { .. } => 3,
        Verdict::Deny => 4,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    #[test]
    fn decide_agrees_with_a_reference_read_from_the_document(
        pathway in 0usize..3,
        role in 0usize..4,
        action in 0usize..6,
        effect in 0usize..3,
        cost in -10i64..150_000,
        risk in 0u32..110,
        confidence in proptest::option::of(-0.1f32..1.1),
        first_contact in proptest::bool::ANY,
        after_hours in proptest::bool::ANY,
    ) {
        let m = common::base();
        let g = m.compile().unwrap();
        let pathways = ["send-email", "calendar", "payments"];
        let roles = ["outreach", "scheduler", "researcher", "intruder"];
        let actions = ["send", "draft", "hold", "wire_money", "delete", ""];
        let effects = [EffectClass::ReadOnly, EffectClass::Reversible, EffectClass::Irreversible];
        let mut req = ActionRequest::new(
            Principal::Agent(AgentId::from_name("ana")),
            RoleId::from_name(roles[role]),
            PathwayId::from_name(pathways[pathway]),
            actions[action],
        )
        .with_effect(effects[effect])
        .with_cost(Money::from_minor(cost))
        .with_risk(risk);
        req.confidence = confidence;
        if first_contact {
            req = req.with_context("first_contact", json!(true));
        }
        if after_hours {
            req = req.with_context("after_hours", json!(true));
        }
        let d = g.decide(&req);
        proptest::prop_assert_eq!(level(&d.verdict), reference(&m, &req), "{}", d.explain());
        proptest::prop_assert!(!d.fired.is_empty(), "every decision names a rule");
        proptest::prop_assert_eq!(d, g.decide(&req), "pure");
    }
}

#[test]
fn recorded_decisions_are_audited() {
    futures::executor::block_on(async {
        let g = governor();
        let (clock, c) = controls();
        let log = InMemoryAuditLog::new();
        let d = g
            .decide_recorded(&send().with_risk(55), &c.snapshot(), &log)
            .await
            .unwrap();
        assert!(matches!(d.verdict, Verdict::Escalate { .. }));
        let d2 = g
            .decide_recorded(&send(), &c.snapshot(), &log)
            .await
            .unwrap();
        assert_eq!(d2.verdict, Verdict::Allow);
        let entries = log.tamper(|e| e.clone());
        assert_eq!(entries.len(), 3, "decision, escalation, decision");
        assert!(matches!(
            &entries[0].event,
            AuditEvent::DecisionMade {
                decision: DecisionKind::Escalate,
                ..
            }
        ));
        assert!(matches!(
            &entries[1].event,
            AuditEvent::Escalated { anchor, reason, .. }
                if *anchor == AnchorId::from_name("ops") && reason.contains("halt")
        ));
        assert_eq!(
            entries[0].at,
            clock.now(),
            "stamped with the snapshot's time"
        );
        assert!(log.verify_sync(None).is_intact());
    });
}

#[test]
fn control_targets_table() {
    futures::executor::block_on(async {
        let g = governor();
        // (target, halt, does `send` by ana stop?, does `hold` by sam stop?)
        let table = [
            (ControlTarget::Organisation, false, true, true),
            (ControlTarget::Organisation, true, true, true),
            (
                ControlTarget::Role(RoleId::from_name("outreach")),
                false,
                true,
                false,
            ),
            (
                ControlTarget::Role(RoleId::from_name("scheduler")),
                true,
                false,
                true,
            ),
            (
                ControlTarget::Pathway(PathwayId::from_name("calendar")),
                false,
                false,
                true,
            ),
            (
                ControlTarget::Agent(AgentId::from_name("ana")),
                true,
                true,
                false,
            ),
            (
                ControlTarget::Agent(AgentId::from_name("zed")),
                true,
                false,
                false,
            ),
        ];
        for (target, stop, send_halted, hold_halted) in table {
            let (_, c) = controls();
            if stop {
                c.stop(target, alice(), "test").await.unwrap();
            } else {
                c.pause(target, alice(), "test").await.unwrap();
            }
            let rule = if stop { rules::STOPPED } else { rules::PAUSED };
            for (req, halted) in [(send(), send_halted), (hold(), hold_halted)] {
                let d = g.decide_with(&req, &c.snapshot());
                assert_eq!(d.fired(rule), halted, "{target}: {}", d.explain());
                assert_eq!(d.verdict == Verdict::Deny, halted, "{target}");
            }
        }
        // a pause does not weaken a stop in force
        let (_, c) = controls();
        c.stop(ControlTarget::Organisation, alice(), "incident")
            .await
            .unwrap();
        c.pause(ControlTarget::Organisation, alice(), "calmer")
            .await
            .unwrap();
        assert!(g.decide_with(&send(), &c.snapshot()).fired(rules::STOPPED));
    });
}

#[test]
fn in_memory_control_store_passes_the_conformance_suite() {
    futures::executor::block_on(aios_governance::testing::control_store_conformance(
        aios_governance::InMemoryControlStore::new,
    ));
}

#[test]
fn a_stop_survives_reopening_the_control_store() {
    futures::executor::block_on(async {
        let g = governor();
        let clock = Arc::new(ManualClock::default());
        let audit = Arc::new(InMemoryAuditLog::new());
        let store = aios_governance::InMemoryControlStore::new();
        let c = Controls::open(Arc::new(store.clone()), clock.clone(), audit.clone())
            .await
            .unwrap();
        c.stop(ControlTarget::Organisation, alice(), "incident")
            .await
            .unwrap();
        c.pause_until(
            ControlTarget::Pathway(PathwayId::from_name("calendar")),
            alice(),
            "a short pause",
            clock.now() + chrono::Duration::minutes(5),
        )
        .await
        .unwrap();
        drop(c);
        clock.advance(std::time::Duration::from_secs(600));
        let c = Controls::open(Arc::new(store.clone()), clock.clone(), audit.clone())
            .await
            .unwrap();
        let d = g.decide_with(&hold(), &c.snapshot());
        assert!(d.fired(rules::STOPPED), "{}", d.explain());
        assert_eq!(c.history().len(), 2, "the history is reloaded");
        assert_eq!(
            c.snapshot()
                .halt(ControlTarget::Pathway(PathwayId::from_name("calendar"))),
            None,
            "what lapsed while closed has lapsed"
        );
        c.resume(ControlTarget::Organisation, alice(), "incident closed")
            .await
            .unwrap();
        let c = Controls::open(Arc::new(store), clock, audit).await.unwrap();
        assert_eq!(
            g.decide_with(&hold(), &c.snapshot()).verdict,
            Verdict::Allow,
            "the resume is durable too"
        );
    });
}
