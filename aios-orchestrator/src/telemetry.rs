//! Tracing with the OpenTelemetry GenAI semantic conventions.
//!
//! The orchestrator opens `tracing` spans named as the conventions name operations:
//!
//! | span | what | GenAI attributes |
//! |---|---|---|
//! | `invoke_agent` | a run (agent name: the workflow), and within it each task (agent name: the role) | `gen_ai.operation.name`, `gen_ai.agent.name`, `gen_ai.agent.id` (tasks), `gen_ai.conversation.id` (the run id) |
//! | `chat` | one model call through the router, all tiers and attempts | `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `gen_ai.request.max_tokens`, `gen_ai.agent.name`, `gen_ai.conversation.id`, `error.type` |
//! | `execute_tool` | one connector call | `gen_ai.operation.name`, `gen_ai.tool.name` (`connector.operation`), `gen_ai.tool.type`, `gen_ai.agent.name`, `gen_ai.conversation.id` |
//!
//! Each also carries `otel.name` (`chat local-small`, `execute_tool email.send`, as the
//! conventions name spans; `tracing-opentelemetry` uses it as the span name), and the
//! governance fields of AIOS: `aios.governance.decision` (allow, deny, require_approval,
//! escalate), `aios.governance.rules` (the rules that fired), `aios.cost` (what the call
//! cost) and, on `chat`, `aios.queue_wait_ms` (the model scheduler's queue). The provider
//! name of a model is set on the router ([`ModelRouter::with_provider`](crate::ModelRouter::with_provider));
//! without one it is `_OTHER`, the conventions' value for an unlisted provider.
//!
//! Prompt and completion content (`gen_ai.input.messages`, `gen_ai.output.messages`, and
//! `gen_ai.tool.call.arguments` on `execute_tool`) is recorded only when the host opts in
//! with [`TelemetryConfig::record_content`]; it is off by default, as the conventions advise,
//! since content may hold personal data.
//!
//! The library depends on `tracing` only; exporting to OpenTelemetry is the host's choice
//! (`tracing-opentelemetry` as a layer; the `otel_genai` example of the `aios-examples` crate
//! prints spans through the stdout exporter).

use aios_core::AuditEvent;
use serde::{Deserialize, Serialize};

/// What the orchestrator's spans record beyond the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TelemetryConfig {
    /// Records prompt and completion content and tool-call arguments on the spans (default
    /// off: content may hold personal data).
    pub record_content: bool,
}

impl TelemetryConfig {
    /// The defaults: no content.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records content too.
    pub fn with_content(mut self) -> Self {
        self.record_content = true;
        self
    }
}

/// The provider name of a model without one set: the conventions' value for "other".
pub(crate) const OTHER_PROVIDER: &str = "_OTHER";

/// The `invoke_agent` span of a run: the workflow as the agent, the run as the conversation.
pub(crate) fn run_span(run: aios_core::RunId, workflow: &str, resumed: bool) -> tracing::Span {
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {workflow}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %workflow,
        gen_ai.conversation.id = %run,
        run = %run,
        resumed = resumed,
    )
}

/// The `invoke_agent` span of a task: the role's agent.
pub(crate) fn task_span(
    run: aios_core::RunId,
    task: &crate::TaskName,
    role: &str,
    agent: aios_core::AgentId,
) -> tracing::Span {
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {role}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %role,
        gen_ai.agent.id = %agent,
        gen_ai.conversation.id = %run,
        run = %run,
        task = %task,
        role = %role,
    )
}

/// Mirrors what an audited event says about the call in progress onto the current span
/// (the `chat` or `execute_tool` span the event happens in; a field the span lacks is
/// ignored by `tracing`).
pub(crate) fn mirror(event: &AuditEvent) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    match event {
        AuditEvent::DecisionMade {
            decision, rules, ..
        } => {
            let kind = match decision {
                aios_core::DecisionKind::Allow => "allow",
                aios_core::DecisionKind::Deny => "deny",
                aios_core::DecisionKind::RequireApproval => "require_approval",
                aios_core::DecisionKind::Escalate => "escalate",
            };
            span.record("aios.governance.decision", kind);
            if !rules.is_empty() {
                span.record("aios.governance.rules", rules.join(",").as_str());
            }
        }
        AuditEvent::ConnectorInvoked {
            outcome: aios_core::Outcome::Succeeded,
            cost,
            ..
        } => {
            span.record("aios.cost", cost.to_string().as_str());
        }
        _ => {}
    }
}
