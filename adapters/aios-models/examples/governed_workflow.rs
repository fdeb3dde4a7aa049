//! The quickstart's workflow (research -> draft -> send) on a real model: every model call
//! goes through the OpenAI-compatible adapter, governed, budgeted and audited; the send waits
//! for the founder's approval, which this example gives, and the run finishes.
//!
//! With `AIOS_MODEL_BASE_URL` (e.g. `http://localhost:11434/v1` for Ollama), `AIOS_MODEL_NAME`
//! and optionally `AIOS_MODEL_API_KEY`, it uses that endpoint; with none set, a stub server on
//! 127.0.0.1, so it always runs:
//!
//! ```text
//! cargo run -p aios-models --example governed_workflow
//! AIOS_MODEL_BASE_URL=http://localhost:11434/v1 AIOS_MODEL_NAME=llama3.2 \
//!     cargo run -p aios-models --example governed_workflow
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use aios_core::{
    AuditLogExt, CredentialHandle, CredentialVault, EffectClass, HumanId, InMemoryVault, Message,
    ModelRequest, RecordingConnector, Secret,
};
use aios_governance::{ApprovalResponse, GovernanceModel};
use aios_models::{OpenAiCompatible, OpenAiConfig};
use aios_orchestrator::{
    ConnectorRequest, FnAgent, ModelRouter, Orchestrator, Role, RunStatus, TaskSpec, Workflow,
};

#[path = "support/mod.rs"]
mod support;

const MANIFEST: &str = r#"
version = 1

[charter]
intent = "a newsletter written with a model and sent with the founder's approval"
final_authority = "founder"

[[anchors]]
key = "founder"
title = "Founder"
holders = ["alice"]
response_time = "24h"

[[roles]]
key = "researcher"

[[roles]]
key = "writer"

[[roles]]
key = "sender"

[[pathways]]
key = "research"
anchor = "founder"
delegate = "researcher"
limits = { actions = ["model.complete"], effects = ["read_only"] }
escalation = [{ name = "costly", when = { cost_above = "1.00" }, mode = "approve_before" }]

[[pathways]]
key = "writing"
anchor = "founder"
delegate = "writer"
limits = { actions = ["model.complete"], effects = ["read_only"] }
escalation = [{ name = "costly", when = { cost_above = "1.00" }, mode = "approve_before" }]

[[pathways]]
key = "sending"
anchor = "founder"
delegate = "sender"
limits = { actions = ["email.send"], effects = ["irreversible"] }
escalation = [{ name = "mail-leaves", when = { actions = ["email.send"] }, mode = "approve_before" }]

[[budgets]]
key = "org"
scope = "organisation"
period = "month"
limits = { spend = "20.00", tokens = 200000 }
"#;

/// An agent that asks the model once, with `prompt` and the output of its dependency.
fn asks(prompt: &'static str) -> FnAgent {
    FnAgent::new(move |ctx, input| {
        Box::pin(async move {
            let before = input.deps.values().next().cloned().unwrap_or_default();
            let r = ctx
                .complete(ModelRequest::new(vec![
                    Message::system("You answer in two short sentences."),
                    Message::user(format!(
                        "{prompt} {}",
                        before["text"].as_str().unwrap_or("")
                    )),
                ]))
                .await?;
            Ok(serde_json::json!({ "text": r.content }))
        })
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (base_url, model) = match env("AIOS_MODEL_BASE_URL") {
        Some(url) => (
            url,
            env("AIOS_MODEL_NAME").unwrap_or_else(|| "gpt-4o-mini".into()),
        ),
        None => {
            let url = support::stub_server().await?;
            println!("no AIOS_MODEL_BASE_URL given: a stub server at {url}");
            (url, "stub-model".into())
        }
    };
    let vault = Arc::new(InMemoryVault::new());
    let mut config = OpenAiConfig::new(base_url, model.as_str());
    if let Some(key) = env("AIOS_MODEL_API_KEY") {
        let handle = CredentialHandle::new("model/api-key");
        vault.put(handle.clone(), Secret::new(key)).await?;
        config = config.with_api_key(handle);
    }
    let backend = OpenAiCompatible::new(config, vault)?;

    let governor = GovernanceModel::from_toml(MANIFEST)?
        .compile()
        .map_err(|report| report.to_string())?;
    let email = RecordingConnector::new("email", EffectClass::Irreversible);
    let send = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let draft = input.deps.values().next().cloned().unwrap_or_default();
            let out = ctx
                .call(ConnectorRequest::new(
                    "email",
                    "send",
                    serde_json::json!({ "to": "list@example.com", "body": draft["text"] }),
                ))
                .await?;
            Ok(out.output)
        })
    });
    let orch = Orchestrator::builder(governor)
        .role(Role::new(
            "researcher",
            "research",
            Arc::new(asks("Research:")),
        ))
        .role(Role::new(
            "writer",
            "writing",
            Arc::new(asks("Draft a newsletter from:")),
        ))
        .role(Role::new("sender", "sending", Arc::new(send)).connector("email"))
        .connector(Arc::new(email.clone()))
        .models(ModelRouter::single(Arc::new(backend)))
        // no clock or timer given: real time (the system clock and a runtime-agnostic timer)
        .build()?;

    let workflow = Workflow::new("newsletter")
        .task(TaskSpec::new(
            "research",
            "researcher",
            serde_json::json!({ "topic": "accountability anchors" }),
        ))
        .task(TaskSpec::new("draft", "writer", serde_json::Value::Null).after(["research"]))
        .task(TaskSpec::new("send", "sender", serde_json::Value::Null).after(["draft"]));
    let parked = orch.start(workflow).await?;
    for p in orch.inbox().await? {
        println!(
            "waiting: `{}` asks `{}` of `{}`: {}",
            p.task.unwrap_or_default(),
            p.action,
            p.anchor,
            p.reason.unwrap_or_default().replace('\n', "; ")
        );
    }
    let id = parked.pending_approvals()[0];
    let done = orch
        .submit_approval(id, HumanId::from_name("alice"), ApprovalResponse::Approve)
        .await?;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    println!("sent: {}", email.effects()[0].input["body"]);
    println!("\n{}", orch.transcript(done.run).await?);
    println!(
        "Audit chain intact: {}",
        orch.audit_log().verify(None).await?.is_intact()
    );
    Ok(())
}
