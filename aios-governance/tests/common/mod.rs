//! Shared fixtures of the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aios_core::{AgentId, EffectClass, Money, PathwayId, Principal, RoleId};
use aios_governance::{ActionRequest, GovernanceModel, Governor};

/// A small but complete organisation: a founder, an operations anchor that escalates to
/// the founder, three roles, two pathways with escalation designs, and budgets.
pub const BASE: &str = r#"
version = 1

[[changelog]]
version = 1
summary = "first governance model"
author = "alice"

[charter]
intent = "a one-person consultancy run with agents"
final_authority = "founder"
non_negotiables = ["no money leaves the company without the founder"]

[charter.boundaries]
forbidden_actions = ["wire_money"]
max_effect = "irreversible"
max_cost_per_action = 100000
max_risk = 90
min_confidence = 0.3

[[anchors]]
key = "founder"
title = "Founder"
holders = ["alice"]
deputy = "bob"
responsibilities = ["strategy", "money"]
response_time = "4h"

[[anchors]]
key = "ops"
title = "Operations"
holders = ["carol"]
response_time = "1h"
escalates_to = "founder"

[[roles]]
key = "outreach"
description = "writes to prospects"

[[roles]]
key = "scheduler"

[[roles]]
key = "researcher"

[[pathways]]
key = "send-email"
anchor = "founder"
delegate = "outreach"

[pathways.limits]
actions = ["send", "draft"]
effects = ["reversible", "irreversible"]
max_cost_per_action = 500
max_risk = 60
min_confidence = 0.5

[[pathways.escalation]]
name = "first-contact"
when = { context_equals = { first_contact = true } }
route = "ops"
mode = "notify_after"

[[pathways.escalation]]
name = "large-spend"
when = { cost_above = 200 }
mode = "approve_before"
deadline = "30m"
allowed = ["approve", "reject"]

[[pathways.escalation]]
name = "risky-irreversible"
when = { risk_at_least = 50, effect_at_least = "irreversible" }
route = "ops"
mode = "halt"

[[pathways]]
key = "calendar"
anchor = "ops"
delegate = "scheduler"

[pathways.limits]
actions = ["*"]
effects = ["read_only", "reversible"]
max_cost_per_action = 1000
max_risk = 90
min_confidence = 0.3

[[pathways.escalation]]
name = "after-hours"
when = { context_equals = { after_hours = true } }
mode = "approve_before"
on_timeout = { escalate = "founder" }

[[budgets]]
key = "org"
scope = "organisation"
period = "month"
limits = { cost = 100000, tokens = 1000000 }

[[budgets]]
key = "outreach"
scope = { role = "outreach" }
period = "month"
limits = { cost = 20000 }
alerts = [50, 90]

[[budgets]]
key = "per-run"
scope = "run"
limits = { cost = 1000, tool_calls = 50 }
"#;

pub fn base() -> GovernanceModel {
    GovernanceModel::from_toml(BASE).expect("the base model loads")
}

pub fn governor() -> Governor {
    base()
        .compile()
        .unwrap_or_else(|r| panic!("the base model compiles:\n{r}"))
}

/// A request by agent `ana` as `outreach` to `send` on `send-email`: irreversible, cost 1.00,
/// risk 10, confidence 0.9 — allowed by the base model.
pub fn send() -> ActionRequest {
    ActionRequest::new(
        Principal::Agent(AgentId::from_name("ana")),
        RoleId::from_name("outreach"),
        PathwayId::from_name("send-email"),
        "send",
    )
    .with_effect(EffectClass::Irreversible)
    .with_cost(Money::from_minor(100))
    .with_risk(10)
    .with_confidence(0.9)
}

/// A request by agent `sam` as `scheduler` to `hold` on `calendar`, reversible.
pub fn hold() -> ActionRequest {
    ActionRequest::new(
        Principal::Agent(AgentId::from_name("sam")),
        RoleId::from_name("scheduler"),
        PathwayId::from_name("calendar"),
        "hold",
    )
    .with_effect(EffectClass::Reversible)
    .with_confidence(0.8)
}
