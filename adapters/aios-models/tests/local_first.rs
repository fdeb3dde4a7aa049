//! Local-first routing with the adapters: a local OpenAI-compatible server (an Ollama
//! stand-in) and the Anthropic API as the cloud tier, both loopback servers; the router
//! falls back on failure, on an open breaker and on low confidence, and audits why.
#![cfg(all(feature = "openai", feature = "anthropic"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aios_core::{
    AuditEvent, AuditLogExt, InMemoryAuditLog, InMemoryVault, Message, ModelRequest, RoleId,
};
use aios_governance::GovernanceModel;
use aios_models::{Anthropic, AnthropicConfig, OpenAiCompatible, OpenAiConfig};
use aios_orchestrator::{
    BreakerPolicy, FnAgent, LocalFirst, Orchestrator, OrchestratorConfig, RetryPolicy, Role,
    RunStatus, TaskSpec, Workflow,
};
use common::{handle, vault, Reply, TestServer};
use serde_json::{json, Value};

const GOVERNANCE: &str = r#"{
  "version": 1,
  "charter": { "intent": "write", "final_authority": "owner" },
  "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
  "roles": [{ "key": "writer" }],
  "pathways": [{ "key": "writing", "anchor": "owner", "delegate": "writer",
                 "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
                 "escalation": [{ "name": "risky", "when": { "risk_at_least": 90 }, "mode": "halt" }] }],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 100000 } }]
}"#;

/// A local answer whose tokens have these log-probabilities.
fn local_answer(content: &str, logprob: f64) -> Reply {
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama3.2",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": {"content": [{"token": content, "logprob": logprob, "top_logprobs": []}]},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }),
    )
}

fn cloud_answer(content: &str) -> Reply {
    Reply::json(
        200,
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }),
    )
}

struct Setup {
    orchestrator: Orchestrator,
    audit: InMemoryAuditLog,
    local: TestServer,
    cloud: TestServer,
}

async fn setup(local: Reply) -> Setup {
    let local = TestServer::always(local).await;
    let cloud = TestServer::always(cloud_answer("from the cloud")).await;
    let local_model = OpenAiCompatible::new(
        OpenAiConfig::new(local.base(), "llama3.2").with_logprob_confidence(),
        Arc::new(InMemoryVault::new()),
    )
    .unwrap();
    let cloud_model = Anthropic::new(
        AnthropicConfig::new("claude-test", handle()).with_base_url(cloud.base()),
        vault().await,
    )
    .unwrap();
    let writer = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let r = ctx
                .complete(ModelRequest::new(vec![Message::user("write a line")]))
                .await?;
            Ok(json!({ "model": r.model.as_str(), "text": r.content }))
        })
    });
    let audit = InMemoryAuditLog::new();
    let governor = GovernanceModel::from_json(GOVERNANCE)
        .unwrap()
        .compile()
        .unwrap();
    let orchestrator = Orchestrator::builder(governor)
        .role(Role::new("writer", "writing", Arc::new(writer)).retry(RetryPolicy::none()))
        .local_first(
            LocalFirst::new(Arc::new(local_model), Arc::new(cloud_model))
                .min_confidence(0.7)
                .providers("ollama", "anthropic"),
        )
        .audit(Arc::new(audit.clone()))
        .config(OrchestratorConfig {
            breakers: BreakerPolicy {
                failure_threshold: 1,
                ..BreakerPolicy::default()
            },
            ..OrchestratorConfig::deterministic("w", 3)
        })
        .build()
        .unwrap();
    Setup {
        orchestrator,
        audit,
        local,
        cloud,
    }
}

fn one() -> Workflow {
    Workflow::new("one").task(TaskSpec::new(
        "line",
        RoleId::from_name("writer"),
        Value::Null,
    ))
}

/// (model, detail) of every model call audited.
async fn calls(audit: &InMemoryAuditLog) -> Vec<(String, Option<String>)> {
    audit
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            AuditEvent::ModelCalled { model, detail, .. } => Some((model.to_string(), detail)),
            _ => None,
        })
        .collect()
}

async fn run(s: &Setup) -> Value {
    let out = s.orchestrator.start(one()).await.unwrap();
    assert_eq!(out.status, RunStatus::Completed);
    out.outputs["line"].clone()
}

#[tokio::test]
async fn a_confident_local_answer_stays_local() {
    let s = setup(local_answer("a fine line", -0.05)).await;
    assert_eq!(run(&s).await["model"], "llama3.2");
    assert!(s.cloud.requests().is_empty());
    assert_eq!(calls(&s.audit).await, vec![("llama3.2".into(), None)]);
}

#[tokio::test]
async fn a_low_confidence_local_answer_goes_to_the_cloud_and_says_why() {
    // exp(-1) = 0.37
    let s = setup(local_answer("a dubious line", -1.0)).await;
    let out = run(&s).await;
    assert_eq!(out["model"], "claude-test");
    assert_eq!(out["text"], "from the cloud");
    assert_eq!(
        calls(&s.audit).await,
        vec![
            ("llama3.2".into(), Some("confidence 0.37 below 0.70".into())),
            (
                "claude-test".into(),
                Some("after `llama3.2`: confidence 0.37 below 0.70".into())
            ),
        ]
    );
}

#[tokio::test]
async fn a_failing_local_server_falls_back_then_its_open_breaker_is_skipped() {
    let s = setup(Reply::json(
        503,
        json!({"error": {"message": "model loading", "type": "server_error"}}),
    ))
    .await;
    assert_eq!(run(&s).await["model"], "claude-test");
    let first = calls(&s.audit).await;
    assert_eq!(first.len(), 2);
    assert!(
        first[0].1.as_deref().unwrap().starts_with("failed: "),
        "{first:?}"
    );
    assert!(first[1]
        .1
        .as_deref()
        .unwrap()
        .starts_with("after `llama3.2`: failed: "));
    assert_eq!(s.local.requests().len(), 1);

    // the breaker opened on that failure: the next run does not even ask the local server
    assert_eq!(run(&s).await["model"], "claude-test");
    let second = calls(&s.audit).await;
    assert_eq!(second.len(), 3);
    assert!(
        second[2]
            .1
            .as_deref()
            .unwrap()
            .starts_with("after `llama3.2`: breaker open"),
        "{second:?}"
    );
    assert_eq!(s.local.requests().len(), 1);
    assert_eq!(s.cloud.requests().len(), 2);
}
