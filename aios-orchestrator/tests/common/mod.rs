//! Shared fixtures: a one-person company's governance model, roles and connectors.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aios_core::{EffectClass, HumanId, ManualTimer, RecordingConnector, RoleId, ScriptedModel};
use aios_governance::{GovernanceModel, Governor};
use aios_orchestrator::{
    ConnectorRequest, FnAgent, ModelRouter, Orchestrator, OrchestratorBuilder, RetryPolicy, Role,
    TaskSpec, Workflow,
};
use std::time::Duration;

pub const MODEL: &str = r#"{
  "version": 1,
  "charter": {
    "intent": "a one-person consultancy that researches, writes and sends newsletters",
    "final_authority": "founder",
    "boundaries": { "forbidden_actions": ["payments.transfer"] }
  },
  "anchors": [
    { "key": "founder", "title": "Founder", "holders": ["alice"], "deputy": "bob", "response_time": "4h" }
  ],
  "roles": [ { "key": "researcher" }, { "key": "writer" }, { "key": "outreach" }, { "key": "worker" }, { "key": "splitter" } ],
  "pathways": [
    { "key": "research", "anchor": "founder", "delegate": "researcher",
      "limits": { "actions": ["model.complete", "web.search"], "effects": ["read_only"] },
      "escalation": [ { "name": "costly-research", "when": { "cost_above": 500 }, "mode": "approve_before" } ] },
    { "key": "writing", "anchor": "founder", "delegate": "writer",
      "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
      "escalation": [ { "name": "unsure-writer", "when": { "confidence_below": 0.2 }, "mode": "notify_after" } ] },
    { "key": "outreach", "anchor": "founder", "delegate": "outreach",
      "limits": { "actions": ["model.complete", "email.send"], "effects": ["read_only", "reversible", "irreversible"] },
      "escalation": [ { "name": "irreversible-needs-approval", "when": { "effect_at_least": "irreversible" },
                        "mode": "approve_before", "deadline": "24h" } ] },
    { "key": "splitting", "anchor": "founder", "delegate": "splitter",
      "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
      "escalation": [ { "name": "risky-split", "when": { "risk_at_least": 80 }, "mode": "halt" } ] },
    { "key": "work", "anchor": "founder", "delegate": "worker",
      "limits": { "actions": ["ledger.write", "model.complete"], "effects": ["read_only", "reversible", "irreversible"] },
      "escalation": [ { "name": "risky", "when": { "risk_at_least": 80 }, "mode": "halt" } ] }
  ],
  "budgets": [
    { "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 10000 } },
    { "key": "per-run", "scope": "run", "parent": "org", "limits": { "tool_calls": 20 } }
  ]
}"#;

pub fn governor() -> Governor {
    governor_from(MODEL)
}

pub fn governor_from(doc: &str) -> Governor {
    let model = GovernanceModel::from_json(doc).expect("model parses");
    model
        .compile()
        .unwrap_or_else(|r| panic!("model compiles: {r}"))
}

pub fn alice() -> HumanId {
    HumanId::from_name("alice")
}

pub fn bob() -> HumanId {
    HumanId::from_name("bob")
}

/// Connectors of the fixture.
#[derive(Clone)]
pub struct World {
    pub email: RecordingConnector,
    pub ledger: RecordingConnector,
    pub timer: ManualTimer,
}

impl World {
    pub fn new() -> Self {
        Self {
            email: RecordingConnector::new("email", EffectClass::Irreversible),
            ledger: RecordingConnector::new("ledger", EffectClass::Reversible),
            timer: ManualTimer::default(),
        }
    }
}

fn no_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::ZERO,
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

/// Research -> draft -> send: a model call each, the send needs approval.
pub fn newsletter_roles() -> Vec<Role> {
    let research = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let topic = input.input["topic"].as_str().unwrap_or("").to_string();
            let r = ctx
                .complete(aios_core::ModelRequest::new(vec![
                    aios_core::Message::user(format!("research {topic}")),
                ]))
                .await?;
            Ok(serde_json::json!({ "notes": r.content }))
        })
    });
    let draft = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let notes = input.deps.values().next().cloned().unwrap_or_default();
            let r = ctx
                .complete(aios_core::ModelRequest::new(vec![
                    aios_core::Message::user(format!("draft from {notes}")),
                ]))
                .await?;
            Ok(serde_json::json!({ "draft": r.content }))
        })
    });
    let send = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let draft = input.deps.values().next().cloned().unwrap_or_default();
            let out = ctx
                .call(
                    ConnectorRequest::new(
                        "email",
                        "send",
                        serde_json::json!({ "to": "list@example.com", "body": draft["draft"] }),
                    )
                    .risk(30),
                )
                .await?;
            Ok(out.output)
        })
    });
    vec![
        Role::new("researcher", "research", Arc::new(research)).retry(no_retry()),
        Role::new("writer", "writing", Arc::new(draft)).retry(no_retry()),
        Role::new("outreach", "outreach", Arc::new(send))
            .connector("email")
            .retry(no_retry()),
    ]
}

pub fn newsletter() -> Workflow {
    Workflow::new("newsletter")
        .task(TaskSpec::new(
            "research",
            RoleId::from_name("researcher"),
            serde_json::json!({ "topic": "rust" }),
        ))
        .task(
            TaskSpec::new(
                "draft",
                RoleId::from_name("writer"),
                serde_json::Value::Null,
            )
            .after(["research"]),
        )
        .task(
            TaskSpec::new(
                "send",
                RoleId::from_name("outreach"),
                serde_json::Value::Null,
            )
            .after(["draft"]),
        )
}

pub fn model() -> ScriptedModel {
    ScriptedModel::new("local-small").with_responder(|req| {
        Ok(format!(
            "answer to: {}",
            req.messages
                .last()
                .map(|m| m.content.as_str())
                .unwrap_or("")
        ))
    })
}

pub fn builder(world: &World) -> OrchestratorBuilder {
    Orchestrator::builder(governor())
        .connector(Arc::new(world.email.clone()))
        .connector(Arc::new(world.ledger.clone()))
        .models(ModelRouter::single(Arc::new(model())))
        .clock(Arc::new(world.timer.clock().clone()))
        .timer(Arc::new(world.timer.clone()))
}

pub fn newsletter_orchestrator(world: &World) -> Orchestrator {
    newsletter_roles()
        .into_iter()
        .fold(builder(world), |b, r| b.role(r))
        .build()
        .unwrap()
}
