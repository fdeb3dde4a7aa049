//! Spans follow the OpenTelemetry GenAI semantic conventions, checked with a capturing layer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aios_core::{Message, ModelRequest, RoleId};
use aios_orchestrator::{
    ConnectorRequest, FnAgent, ModelRouter, Role, RunStatus, TaskSpec, TelemetryConfig, Workflow,
};
use common::{builder, model, World};
use futures::executor::block_on;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the layer saw it: name, parent's name and every field recorded.
#[derive(Debug, Clone, Default)]
struct Captured {
    name: String,
    parent: Option<String>,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Captured>>>,
    index: Arc<Mutex<BTreeMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut c = Captured {
            name: attrs.metadata().name().to_string(),
            parent: ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.name().to_string()),
            ..Captured::default()
        };
        attrs.record(&mut Fields(&mut c.fields));
        let mut spans = self.spans.lock().unwrap();
        self.index
            .lock()
            .unwrap()
            .insert(id.into_u64(), spans.len());
        spans.push(c);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let Some(&i) = self.index.lock().unwrap().get(&id.into_u64()) else {
            return;
        };
        values.record(&mut Fields(&mut self.spans.lock().unwrap()[i].fields));
    }
}

fn worker() -> Role {
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let mut request = ModelRequest::new(vec![Message::user("summarise the ledger")]);
            request.max_output_tokens = Some(64);
            let r = ctx.complete(request).await?;
            ctx.call(ConnectorRequest::new(
                "ledger",
                "write",
                serde_json::json!({ "note": r.content }),
            ))
            .await?;
            Ok(serde_json::Value::Null)
        })
    });
    Role::new("worker", "work", Arc::new(agent)).connector("ledger")
}

fn traced_run(telemetry: TelemetryConfig) -> (Vec<Captured>, String) {
    let world = World::new();
    let orch = builder(&world)
        .models(ModelRouter::single(Arc::new(model())).with_provider("local-small", "ollama"))
        .telemetry(telemetry)
        .role(worker())
        .build()
        .unwrap();
    let wf = Workflow::new("bookkeeping").task(TaskSpec::new(
        "note",
        RoleId::from_name("worker"),
        serde_json::Value::Null,
    ));
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let outcome =
        tracing::subscriber::with_default(subscriber, || block_on(orch.start(wf))).unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let spans = capture.spans.lock().unwrap().clone();
    (spans, outcome.run.to_string())
}

fn one<'a>(spans: &'a [Captured], name: &str) -> &'a Captured {
    let found: Vec<&Captured> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span in {spans:#?}");
    found[0]
}

fn field<'a>(span: &'a Captured, name: &str) -> &'a str {
    span.fields
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("`{}` has no `{name}`: {:#?}", span.name, span.fields))
}

#[test]
fn runs_model_calls_and_connector_calls_carry_the_genai_attributes() {
    let (spans, run) = traced_run(TelemetryConfig::default());

    let agents: Vec<&Captured> = spans.iter().filter(|s| s.name == "invoke_agent").collect();
    assert_eq!(agents.len(), 2, "the run and its task: {spans:#?}");
    let (run_span, task_span) = (agents[0], agents[1]);
    assert_eq!(field(run_span, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(field(run_span, "gen_ai.agent.name"), "bookkeeping");
    assert_eq!(field(run_span, "gen_ai.conversation.id"), run);
    assert_eq!(task_span.parent.as_deref(), Some("invoke_agent"));
    assert_eq!(field(task_span, "gen_ai.agent.name"), "worker");
    assert_eq!(field(task_span, "gen_ai.conversation.id"), run);

    let chat = one(&spans, "chat");
    assert_eq!(chat.parent.as_deref(), Some("invoke_agent"));
    for (name, value) in [
        ("otel.name", "chat local-small"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "ollama"),
        ("gen_ai.request.model", "local-small"),
        ("gen_ai.request.max_tokens", "64"),
        ("gen_ai.response.model", "local-small"),
        ("gen_ai.usage.input_tokens", "5"),
        ("gen_ai.agent.name", "worker"),
        ("gen_ai.conversation.id", run.as_str()),
        ("aios.governance.decision", "allow"),
    ] {
        assert_eq!(field(chat, name), value, "{name}");
    }
    assert!(
        field(chat, "gen_ai.usage.output_tokens")
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(!field(chat, "aios.cost").is_empty());

    let tool = one(&spans, "execute_tool");
    assert_eq!(tool.parent.as_deref(), Some("invoke_agent"));
    for (name, value) in [
        ("otel.name", "execute_tool ledger.write"),
        ("gen_ai.operation.name", "execute_tool"),
        ("gen_ai.tool.name", "ledger.write"),
        ("gen_ai.agent.name", "worker"),
        ("gen_ai.conversation.id", run.as_str()),
        ("aios.governance.decision", "allow"),
    ] {
        assert_eq!(field(tool, name), value, "{name}");
    }
    assert!(!field(tool, "aios.cost").is_empty());

    // content only when the host opts in
    for s in &spans {
        for key in [
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.tool.call.arguments",
        ] {
            assert!(!s.fields.contains_key(key), "`{}` has `{key}`", s.name);
        }
    }
}

#[test]
fn content_is_recorded_when_the_host_opts_in() {
    let (spans, _) = traced_run(TelemetryConfig::new().with_content());
    let chat = one(&spans, "chat");
    assert!(field(chat, "gen_ai.input.messages").contains("summarise the ledger"));
    assert!(field(chat, "gen_ai.output.messages").contains("answer to: summarise the ledger"));
    let tool = one(&spans, "execute_tool");
    assert!(field(tool, "gen_ai.tool.call.arguments").contains("answer to"));
}
