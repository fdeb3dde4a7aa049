//! Export the orchestrator's GenAI spans through OpenTelemetry, to stdout.
//!
//! ```text
//! cargo run -p aios-examples --example otel_genai
//! cargo run -p aios-examples --example otel_genai -- --content   # prompts and completions too
//! ```
//!
//! The library crates depend on `tracing` only. A host that wants OpenTelemetry adds a
//! `tracing-opentelemetry` layer over its own tracer provider (here the SDK with the stdout
//! exporter; in production an OTLP exporter): the spans `invoke_agent` (the run, then each
//! task's agent), `chat` (model calls) and `execute_tool` (connector calls) arrive with the
//! GenAI attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.usage.input_tokens`, `gen_ai.conversation.id`, ...), the
//! governance decision and the cost. `otel.name` renames each span as the conventions want
//! (`chat local-small`). The model is scripted: no network, no keys.

use std::sync::Arc;

use aios::core::{EffectClass, Message, ModelRequest, RecordingConnector, RoleId, ScriptedModel};
use aios::governance::GovernanceModel;
use aios::orchestrator::{
    ConnectorRequest, FnAgent, ModelRouter, Orchestrator, Role, RunStatus, TaskSpec,
    TelemetryConfig, Workflow,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

type Error = Box<dyn std::error::Error>;

const GOVERNANCE: &str = r#"{
  "version": 1,
  "charter": { "intent": "keep the books", "final_authority": "founder" },
  "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" }],
  "roles": [{ "key": "bookkeeper" }],
  "pathways": [
    { "key": "books", "anchor": "founder", "delegate": "bookkeeper",
      "limits": { "actions": ["model.complete", "ledger.write"], "effects": ["read_only", "reversible"] },
      "escalation": [{ "name": "risky", "when": { "risk_at_least": 80 }, "mode": "halt" }] }
  ],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 100000 } }]
}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let content = std::env::args().any(|a| a == "--content");

    // the host's OpenTelemetry set-up: a tracer provider with the stdout exporter
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let tracer = provider.tracer("aios-example");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));

    let governor = GovernanceModel::from_json(GOVERNANCE)?
        .compile()
        .map_err(|r| r.to_string())?;
    let bookkeeper = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let answer = ctx
                .complete(ModelRequest::new(vec![Message::user(
                    "summarise this week's receipts",
                )]))
                .await?;
            ctx.call(ConnectorRequest::new(
                "ledger",
                "write",
                serde_json::json!({ "note": answer.content }),
            ))
            .await?;
            Ok(serde_json::json!({ "noted": answer.content }))
        })
    });
    let model = ScriptedModel::new("local-small").reply("3 receipts, 120.00 in total");
    let orchestrator = Orchestrator::builder(governor)
        .role(Role::new("bookkeeper", "books", Arc::new(bookkeeper)).connector("ledger"))
        .connector(Arc::new(RecordingConnector::new(
            "ledger",
            EffectClass::Reversible,
        )))
        .models(ModelRouter::single(Arc::new(model)).with_provider("local-small", "ollama"))
        .telemetry(TelemetryConfig {
            record_content: content,
        })
        .build()?;
    let workflow = Workflow::new("weekly-books").task(TaskSpec::new(
        "note",
        RoleId::from_name("bookkeeper"),
        serde_json::Value::Null,
    ));

    // the simple span processor exports each span as it ends, blocking on the exporter: it
    // must not run inside another `futures` executor, hence Tokio here
    let outcome = orchestrator
        .start(workflow)
        .with_subscriber(subscriber)
        .await?;
    provider.shutdown()?;
    if outcome.status != RunStatus::Completed {
        return Err(format!("the run ended {:?}", outcome.status).into());
    }
    println!("run {} completed: {}", outcome.run, outcome.outputs["note"]);
    Ok(())
}
