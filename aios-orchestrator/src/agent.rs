//! Agents: the behaviour of a role. They reach the world only through their [`TaskContext`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aios_core::{Message, ModelRequest, Money, ToolSpec};
use async_trait::async_trait;

use crate::context::{ConnectorRequest, TaskContext};
use crate::error::AgentError;
use crate::graph::TaskInput;

/// The behaviour of a role.
///
/// An agent acts only through `ctx`: every model call, connector call, memory write and
/// fan-out passes governance, budgets, the reliability layer, the journal and the audit log.
/// Agent code is re-executed on resume: calls already journaled return their recorded result,
/// so the code must make the same calls in the same order for the same input (it must not read
/// clocks or randomness of its own). Errors returned by `ctx` must be propagated (with `?`),
/// in particular [`AgentError::Parked`].
#[async_trait]
pub trait Agent: Send + Sync + std::fmt::Debug {
    /// Performs one task and returns its output.
    async fn run(
        &self,
        ctx: &mut TaskContext<'_>,
        input: TaskInput,
    ) -> Result<serde_json::Value, AgentError>;
}

/// The future an [`FnAgent`] closure returns.
pub type BoxFut<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, AgentError>> + Send + 'a>>;

type AgentFn = dyn for<'a, 'c> Fn(&'a mut TaskContext<'c>, TaskInput) -> BoxFut<'a> + Send + Sync;

/// An agent from a closure: the quickest way for a host to write its own behaviour.
///
/// ```
/// use aios_orchestrator::FnAgent;
/// let add_one = FnAgent::new(|_ctx, input| Box::pin(async move {
///     Ok(serde_json::json!(input.input.as_i64().unwrap_or(0) + 1))
/// }));
/// # let _ = add_one;
/// ```
pub struct FnAgent {
    f: Box<AgentFn>,
}

impl FnAgent {
    /// Wraps `f`.
    pub fn new(
        f: impl for<'a, 'c> Fn(&'a mut TaskContext<'c>, TaskInput) -> BoxFut<'a> + Send + Sync + 'static,
    ) -> Self {
        Self { f: Box::new(f) }
    }
}

impl std::fmt::Debug for FnAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnAgent")
    }
}

#[async_trait]
impl Agent for FnAgent {
    async fn run(
        &self,
        ctx: &mut TaskContext<'_>,
        input: TaskInput,
    ) -> Result<serde_json::Value, AgentError> {
        (self.f)(ctx, input).await
    }
}

/// The default LLM agent: the prompt is the role's instructions, the relevant memory and the
/// task input; the model may call the role's connectors as tools (`connector.operation`) in a
/// loop bounded by `max_steps`. The final answer is the task's output, `{"text": ...}`.
#[derive(Debug, Clone)]
pub struct LlmAgent {
    /// Upper bound on model turns.
    pub max_steps: u32,
    /// How many memory records to put in the prompt (0 = none).
    pub memory_k: usize,
    /// Token budget for the memory part of the prompt.
    pub memory_tokens: usize,
    /// Tools offered to the model, by provider function name (see [`LlmAgent::tool`]), with
    /// the connector and operation each stands for.
    pub tools: Vec<(ToolSpec, String, String)>,
    /// Risk (0-100) declared for tool calls.
    pub tool_risk: u32,
    /// Estimated cost declared for each tool call.
    pub tool_cost: Money,
    /// The user message, as a template over the task (see [`LlmAgent::prompt`]); the task
    /// input as JSON when `None`.
    pub prompt: Option<String>,
    /// The field whose text the memory is searched with (see [`LlmAgent::memory_query`]);
    /// the user message when `None`.
    pub memory_query: Option<String>,
    /// Whether every operation the role's connectors declare is offered as a tool too (see
    /// [`LlmAgent::offer_role_tools`]).
    pub role_tools: bool,
}

impl Default for LlmAgent {
    fn default() -> Self {
        Self {
            max_steps: 8,
            memory_k: 5,
            memory_tokens: 512,
            tools: vec![],
            tool_risk: 10,
            tool_cost: Money::ZERO,
            prompt: None,
            memory_query: None,
            role_tools: false,
        }
    }
}

/// The value `{name}` stands for in a template: a field of the task's input (`{topic}`, or a
/// JSON pointer `{/customer/name}`), else a dependency's output by task name (`{research}`);
/// text as is, anything else as JSON.
fn lookup(input: &TaskInput, name: &str) -> Option<String> {
    let pointer = if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/{name}")
    };
    let value = input.input.pointer(&pointer).or_else(|| {
        input
            .deps
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    })?;
    Some(match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Fills `template`'s `{name}` placeholders from the task (`{{` and `}}` are braces); names
/// the first placeholder the task lacks.
fn fill(template: &str, input: &TaskInput) -> Result<String, AgentError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if let Some(body) = tail.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(AgentError::failed(format!(
                    "the prompt template has an unclosed `{{` at `{}`",
                    tail.chars().take(20).collect::<String>()
                )));
            };
            let name = &body[..end];
            let value = lookup(input, name).ok_or_else(|| {
                AgentError::failed(format!(
                    "the prompt template names `{{{name}}}`, which the task's input and dependencies lack"
                ))
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            return Err(AgentError::failed(
                "the prompt template has a lone `}` (write `}}` for a brace)",
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl LlmAgent {
    /// The default agent, shared.
    pub fn shared() -> Arc<dyn Agent> {
        Arc::new(Self::default())
    }

    /// Builds the user message from `template`: `{name}` is a field of the task's input
    /// (`{topic}`, or a JSON pointer `{/customer/name}`) or a dependency's output by task
    /// name; `{{` and `}}` are braces. A placeholder the task lacks fails the task, naming it.
    ///
    /// ```
    /// use aios_orchestrator::LlmAgent;
    /// let agent = LlmAgent::default()
    ///     .prompt("Write about {topic} for {/audience/name}.")
    ///     .memory_query("topic");
    /// assert!(agent.prompt.is_some());
    /// ```
    pub fn prompt(mut self, template: impl Into<String>) -> Self {
        self.prompt = Some(template.into());
        self
    }

    /// Searches memory with the text of one field (a placeholder name as in
    /// [`LlmAgent::prompt`]) instead of the whole user message.
    pub fn memory_query(mut self, field: impl Into<String>) -> Self {
        self.memory_query = Some(field.into());
        self
    }

    /// Offers, besides the tools named with [`LlmAgent::tool`], every operation declared by
    /// the connectors the role may use (an MCP server's allowed tools, say), with their
    /// descriptions and input schemas as the tools' parameters. Only the role's connectors
    /// are offered; a call is governed like any other.
    pub fn offer_role_tools(mut self) -> Self {
        self.role_tools = true;
        self
    }

    /// Offers the action `connector.operation` as a tool. The model sees it under a provider
    /// function name ([`ToolSpec::function_name`]: `email.send` becomes `email__send`), and
    /// a call is mapped back through the tools offered, so the model can only reach what was
    /// offered. A name without a dot is the `invoke` operation of that connector.
    pub fn tool(mut self, action: impl Into<String>, description: impl Into<String>) -> Self {
        let action = action.into();
        let (connector, operation) = match action.split_once('.') {
            Some((c, o)) => (c.to_string(), o.to_string()),
            None => (action.clone(), "invoke".to_string()),
        };
        self.tools.push((
            ToolSpec {
                name: ToolSpec::function_name(&format!("{connector}.{operation}")),
                description: description.into(),
                parameters: serde_json::json!({"type": "object"}),
            },
            connector,
            operation,
        ));
        self
    }
}

#[async_trait]
impl Agent for LlmAgent {
    async fn run(
        &self,
        ctx: &mut TaskContext<'_>,
        input: TaskInput,
    ) -> Result<serde_json::Value, AgentError> {
        let task_text = match &self.prompt {
            Some(template) => fill(template, &input)?,
            None => serde_json::to_string(&input).unwrap_or_default(),
        };
        let query = match &self.memory_query {
            Some(field) => lookup(&input, field).ok_or_else(|| {
                AgentError::failed(format!(
                    "the memory query names field `{field}`, which the task's input and dependencies lack"
                ))
            })?,
            None => task_text.clone(),
        };
        let mut messages = vec![Message::system(ctx.role().instructions.clone())];
        if self.memory_k > 0 {
            if let Some(context) = ctx
                .memory_context(&query, self.memory_k, self.memory_tokens)
                .await?
            {
                messages.push(Message::system(format!("Relevant memory:\n{context}")));
            }
        }
        messages.push(Message::user(task_text));
        let mut tools = self.tools.clone();
        if self.role_tools {
            for (connector, op) in ctx.declared_operations() {
                let name = ToolSpec::function_name(&format!("{connector}.{}", op.name));
                if tools.iter().any(|(t, _, _)| t.name == name) {
                    continue;
                }
                tools.push((
                    ToolSpec {
                        name,
                        description: op.description.clone(),
                        parameters: op
                            .input_schema
                            .clone()
                            .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                    },
                    connector.to_string(),
                    op.name.clone(),
                ));
            }
        }
        for _ in 0..self.max_steps {
            let request = ModelRequest {
                messages: messages.clone(),
                tools: tools.iter().map(|(t, _, _)| t.clone()).collect(),
                ..ModelRequest::default()
            };
            let response = ctx.complete(request).await?;
            if response.tool_calls.is_empty() {
                return Ok(serde_json::json!({ "text": response.content }));
            }
            messages.push(Message::assistant_calling(
                response.content.clone(),
                response.tool_calls.clone(),
            ));
            for call in response.tool_calls {
                let Some((_, connector, operation)) =
                    tools.iter().find(|(t, _, _)| t.name == call.name)
                else {
                    // not a tool on offer: the model is told, nothing is called
                    messages.push(Message::tool_result(
                        call.id.clone(),
                        format!("error: there is no tool `{}`", call.name),
                    ));
                    continue;
                };
                let out = ctx
                    .call(
                        ConnectorRequest::new(
                            connector.as_str(),
                            operation.as_str(),
                            call.arguments.clone(),
                        )
                        .risk(self.tool_risk)
                        .estimated_cost(self.tool_cost),
                    )
                    .await?;
                messages.push(Message::tool_result(
                    call.id.clone(),
                    out.output.to_string(),
                ));
            }
        }
        Err(AgentError::StepLimit {
            limit: self.max_steps,
        })
    }
}
