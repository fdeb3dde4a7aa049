//! Errors an agent gets are typed, carry their sources, and are the same on replay: a model
//! that refused the prompt as too long is `ModelError::ContextTooLong` the first time and
//! after the run resumed from its journal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::error::Error;
use std::sync::{Arc, Mutex};

use aios_core::{
    Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorId, ConnectorOutput,
    EffectClass, Message, ModelError, ModelId, ModelRequest, Money, ScriptedModel,
};
use aios_governance::ApprovalResponse;
use aios_orchestrator::{
    AgentError, ConnectorFailure, ConnectorRequest, FnAgent, ModelFailure, ModelRouter,
    Orchestrator, Role, RunStatus, TaskSpec, Workflow,
};
use common::*;
use futures::executor::block_on;

/// What the agent saw of each error, every time it ran.
type Seen = Arc<Mutex<Vec<String>>>;

fn describe(e: &AgentError) -> String {
    let mut chain = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let typed = match e {
        AgentError::Model(f) => match f.as_ref() {
            ModelFailure {
                error: Some(ModelError::ContextTooLong { tokens, .. }),
                tried,
            } => format!("context too long: {tokens} tokens, {} tried", tried.len()),
            other => format!("untyped: {other:?}"),
        },
        AgentError::Connector(f) => match f.as_ref() {
            ConnectorFailure {
                connector,
                operation,
                error: Some(ConnectorError::InvalidInput { detail, .. }),
                ..
            } => format!("invalid input to {connector}.{operation}: {detail}"),
            other => format!("untyped: {other:?}"),
        },
        other => format!("untyped: {other:?}"),
    };
    format!("{typed} | {}", chain.join(" <- "))
}

#[test]
fn a_model_failure_is_typed_and_the_same_when_replayed() {
    let w = World::new();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let agent = FnAgent::new(move |ctx, _| {
        let log = log.clone();
        Box::pin(async move {
            let err = ctx
                .complete(ModelRequest::new(vec![Message::user("a very long prompt")]))
                .await
                .unwrap_err();
            log.lock().unwrap().push(describe(&err));
            // then an irreversible send: parks, and the task runs again from its journal
            ctx.call(ConnectorRequest::new(
                "email",
                "send",
                serde_json::json!({ "to": "client" }),
            ))
            .await?;
            Ok(serde_json::Value::Null)
        })
    });
    let model = ScriptedModel::new("small").fail(ModelError::ContextTooLong {
        model: ModelId::new("small"),
        tokens: 9_000,
    });
    let orch = Orchestrator::builder(governor())
        .role(Role::new("outreach", "outreach", Arc::new(agent)).connector("email"))
        .connector(Arc::new(w.email.clone()))
        .models(ModelRouter::single(Arc::new(model)))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let wf = Workflow::new("mail").task(TaskSpec::new(
        "mail",
        aios_core::RoleId::from_name("outreach"),
        serde_json::Value::Null,
    ));
    let parked = block_on(orch.start(wf)).unwrap();
    let id = parked.pending_approvals()[0];
    let done = block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the task ran twice: {seen:?}");
    assert_eq!(
        seen[0], seen[1],
        "the replayed error is the error first seen"
    );
    assert!(
        seen[0].starts_with("context too long: 9000 tokens, 1 tried"),
        "{}",
        seen[0]
    );
    assert!(
        seen[0].ends_with("<- prompt of 9000 tokens exceeds the context of `small`"),
        "the model's own error is the source: {}",
        seen[0]
    );
}

#[derive(Debug)]
struct Refusing(ConnectorDescriptor);

#[async_trait::async_trait]
impl Connector for Refusing {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.0
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        Err(ConnectorError::InvalidInput {
            connector: self.0.id.clone(),
            operation: call.operation,
            detail: "the field `to` is not an address".into(),
        })
    }
}

#[test]
fn a_connector_failure_names_the_connector_and_keeps_its_error() {
    let w = World::new();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let agent = FnAgent::new(move |ctx, _| {
        let log = log.clone();
        Box::pin(async move {
            let err = ctx
                .call(ConnectorRequest::new(
                    "ledger",
                    "write",
                    serde_json::json!({ "to": "nowhere" }),
                ))
                .await
                .unwrap_err();
            log.lock().unwrap().push(describe(&err));
            Err(AgentError::failed_because("could not book the entry", err))
        })
    });
    let refusing = Refusing(ConnectorDescriptor {
        id: ConnectorId::new("ledger"),
        effect: EffectClass::Reversible,
        scopes: vec![],
        idempotent: true,
        default_cost: Money::ZERO,
        operations: vec![],
    });
    let orch = Orchestrator::builder(governor())
        .role(Role::new("worker", "work", Arc::new(agent)).connector("ledger"))
        .connector(Arc::new(refusing))
        .clock(Arc::new(w.timer.clock().clone()))
        .timer(Arc::new(w.timer.clone()))
        .build()
        .unwrap();
    let wf = Workflow::new("book").task(TaskSpec::new(
        "book",
        aios_core::RoleId::from_name("worker"),
        serde_json::Value::Null,
    ));
    let done = block_on(orch.start(wf)).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen[0].starts_with("invalid input to ledger.write: the field `to` is not an address"),
        "{}",
        seen[0]
    );
    match &done.status {
        RunStatus::Failed { reason } => assert!(
            reason.contains("could not book the entry"),
            "the agent's own failure is the task's: {reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_agents_own_failure_keeps_its_cause() {
    let parse = "12,5".parse::<f64>().unwrap_err();
    let e = AgentError::failed_because("the invoice total is not a number", parse.clone());
    assert_eq!(e.to_string(), "the invoice total is not a number");
    assert_eq!(e.source().unwrap().to_string(), parse.to_string());
    assert_eq!(e.clone(), e, "errors stay comparable");
    assert!(AgentError::failed("x").source().is_none());
    let no_memory = AgentError::NoMemory.to_string();
    assert!(
        no_memory.contains("OrchestratorBuilder::memory"),
        "{no_memory}"
    );
}

#[test]
fn an_approval_refusal_names_the_anchor_and_the_human_by_their_keys() {
    let w = World::new();
    let orch = newsletter_roles()
        .into_iter()
        .fold(builder(&w), |b, r| b.role(r))
        .build()
        .unwrap();
    let parked = block_on(orch.start(newsletter())).unwrap();
    let id = parked.pending_approvals()[0];
    let mallory = aios_core::HumanId::from_name("mallory");
    let err = block_on(orch.submit_approval(id, mallory, ApprovalResponse::Approve)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("anchor `founder`")
            && !text.contains(&aios_core::AnchorId::from_name("founder").to_string()),
        "{text}"
    );
    assert!(
        matches!(err, aios_orchestrator::OrchestratorError::Approval { .. }),
        "{err:?}"
    );
}
