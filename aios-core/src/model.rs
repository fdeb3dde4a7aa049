//! The model port: one completion call with usage and cost, typed errors, and a scripted
//! deterministic model for tests and examples.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{ModelPrice, Money, TokenUsage, Transience};

/// The name of a model as its backend knows it (`local-small`, `gpt-x`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(String);

impl ModelId {
    /// A model id.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ModelId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// Who speaks in a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// Instructions.
    System,
    /// The task or the human.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// One message of a conversation.
///
/// A tool loop round-trips through providers that tie results to calls by id: an assistant
/// message carries the [`ToolCall`]s it asked for ([`Message::assistant_calling`]), and each
/// result refers to its call ([`Message::tool_result`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: MessageRole,
    /// What is said.
    pub content: String,
    /// The tools an assistant message asks to call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn of(role: MessageRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::of(MessageRole::System, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::of(MessageRole::User, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::of(MessageRole::Assistant, content)
    }
    /// An assistant message that asks for `calls`.
    pub fn assistant_calling(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::of(MessageRole::Assistant, content)
        }
    }
    /// A tool result not tied to a call (for providers without call ids).
    pub fn tool(content: impl Into<String>) -> Self {
        Self::of(MessageRole::Tool, content)
    }
    /// The result of the tool call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::of(MessageRole::Tool, content)
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name, as the model will use it: a provider function name (letters, digits,
    /// `_` and `-`, at most 64), see [`ToolSpec::function_name`].
    pub name: String,
    /// What the tool does.
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: serde_json::Value,
}

impl ToolSpec {
    /// The provider function name of an action (`email.send` -> `email__send`): providers
    /// accept no dots. Callers map names back through the tools they offered, never by
    /// splitting, so a name is only ever read back as the action it was made from.
    pub fn function_name(action: &str) -> String {
        let name = action.replace('.', "__");
        name.chars().take(64).collect()
    }
}

/// A call of a tool requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of this call, which the result refers to.
    #[serde(default)]
    pub id: String,
    /// Which tool.
    pub name: String,
    /// The arguments.
    pub arguments: serde_json::Value,
}

/// One completion request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Upper bound on completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature, if the backend supports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

impl ModelRequest {
    /// A request with these messages and defaults for everything else.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It finished its answer.
    Stop,
    /// It wants tools called.
    ToolCalls,
    /// It hit the token limit.
    Length,
}

/// The answer of one completion call, with what it consumed and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// The model that answered.
    pub model: ModelId,
    /// The text.
    pub content: String,
    /// Tool calls requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Tokens consumed.
    pub usage: TokenUsage,
    /// What the call cost.
    pub cost: Money,
    /// The model's own confidence in `[0, 1]`, when it reports one; the router falls back to a
    /// stronger model when it is too low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// Why a model call failed, and whether a retry can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelError {
    /// Too many requests; retry after the hint if given.
    #[error("rate limited by `{model}`")]
    RateLimited {
        /// The model.
        model: ModelId,
        /// How long the backend asked to wait.
        retry_after: Option<Duration>,
    },
    /// The backend is down or overloaded; retrying may help.
    #[error("model `{model}` unavailable: {detail}")]
    Unavailable {
        /// The model.
        model: ModelId,
        /// What the backend said.
        detail: String,
    },
    /// The call took too long.
    #[error("model `{model}` timed out")]
    Timeout {
        /// The model.
        model: ModelId,
    },
    /// The request is wrong; retrying the same request will fail again.
    #[error("invalid request to `{model}`: {detail}")]
    InvalidRequest {
        /// The model.
        model: ModelId,
        /// What is wrong.
        detail: String,
    },
    /// The prompt does not fit the model's context window.
    #[error("prompt of {tokens} tokens exceeds the context of `{model}`")]
    ContextTooLong {
        /// The model.
        model: ModelId,
        /// The prompt size.
        tokens: u64,
    },
    /// The backend refused the credentials (missing, wrong, expired or without access to the
    /// model); retrying with the same credentials will fail again.
    #[error("model `{model}` rejected the credentials: {detail}")]
    Unauthorized {
        /// The model.
        model: ModelId,
        /// What the backend said (never the credential itself).
        detail: String,
    },
    /// The model refused (policy or safety).
    #[error("model `{model}` refused: {detail}")]
    Refused {
        /// The model.
        model: ModelId,
        /// Why.
        detail: String,
    },
}

impl Transience for ModelError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ModelError::RateLimited { .. }
                | ModelError::Unavailable { .. }
                | ModelError::Timeout { .. }
        )
    }
}

/// A language model. Hosts wrap their provider's client in this trait.
///
/// Contract: `complete` either returns a response whose `usage` and `cost` describe what the
/// call consumed, or an error whose [`Transience`] says whether retrying may help. It must not
/// retry internally (the reliability layer does) and must be safe to call concurrently.
#[async_trait]
pub trait ModelBackend: Send + Sync + std::fmt::Debug {
    /// The model this backend calls.
    fn id(&self) -> &ModelId;

    /// One completion.
    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError>;
}

/// One scripted step of a [`ScriptedModel`].
#[derive(Debug, Clone)]
enum Step {
    Reply {
        content: String,
        confidence: Option<f32>,
        tool_calls: Vec<ToolCall>,
    },
    Fail(ModelError),
}

type Responder = Arc<dyn Fn(&ModelRequest) -> Result<String, ModelError> + Send + Sync>;

/// A deterministic model for tests and examples: it plays a script of replies and failures in
/// order, then (if given) asks a responder function, else fails with `InvalidRequest`.
///
/// Usage is counted deterministically (one token per four bytes, rounded up) and priced by the
/// model's [`ModelPrice`]. Every request is recorded. Clones share the script.
///
/// ```
/// use aios_core::{Message, ModelBackend, ModelRequest, ScriptedModel};
/// # futures::executor::block_on(async {
/// let model = ScriptedModel::new("local-small").reply("hello").reply("again");
/// let r = model.complete(&ModelRequest::new(vec![Message::user("hi")])).await.unwrap();
/// assert_eq!(r.content, "hello");
/// assert_eq!(model.calls(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct ScriptedModel {
    id: ModelId,
    price: ModelPrice,
    script: Arc<Mutex<VecDeque<Step>>>,
    responder: Option<Responder>,
    requests: Arc<Mutex<Vec<ModelRequest>>>,
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("id", &self.id)
            .field("remaining", &self.script.lock().len())
            .finish_non_exhaustive()
    }
}

impl ScriptedModel {
    /// An empty script for the model `id`, free of charge.
    pub fn new(id: impl Into<ModelId>) -> Self {
        Self {
            id: id.into(),
            price: ModelPrice::default(),
            script: Arc::default(),
            responder: None,
            requests: Arc::default(),
        }
    }

    /// Charges `price` per call.
    pub fn with_price(mut self, price: ModelPrice) -> Self {
        self.price = price;
        self
    }

    /// Answers with `responder` once the script is exhausted.
    pub fn with_responder(
        mut self,
        responder: impl Fn(&ModelRequest) -> Result<String, ModelError> + Send + Sync + 'static,
    ) -> Self {
        self.responder = Some(Arc::new(responder));
        self
    }

    /// Appends a reply.
    pub fn reply(self, content: impl Into<String>) -> Self {
        self.push(Step::Reply {
            content: content.into(),
            confidence: None,
            tool_calls: vec![],
        });
        self
    }

    /// Appends a reply with a self-reported confidence.
    pub fn reply_with_confidence(self, content: impl Into<String>, confidence: f32) -> Self {
        self.push(Step::Reply {
            content: content.into(),
            confidence: Some(confidence),
            tool_calls: vec![],
        });
        self
    }

    /// Appends a reply that asks for a tool call.
    pub fn call_tool(self, name: impl Into<String>, arguments: serde_json::Value) -> Self {
        self.push(Step::Reply {
            content: String::new(),
            confidence: None,
            tool_calls: vec![ToolCall {
                id: format!(
                    "call_{}",
                    self.script.lock().len() + self.requests.lock().len()
                ),
                name: name.into(),
                arguments,
            }],
        });
        self
    }

    /// Appends a failure.
    pub fn fail(self, error: ModelError) -> Self {
        self.push(Step::Fail(error));
        self
    }

    fn push(&self, step: Step) {
        self.script.lock().push_back(step);
    }

    /// How many calls were made.
    pub fn calls(&self) -> usize {
        self.requests.lock().len()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<ModelRequest> {
        self.requests.lock().clone()
    }

    /// Tokens counted for a text: one per four bytes, rounded up.
    pub fn count_tokens(text: &str) -> u64 {
        (text.len() as u64).div_ceil(4)
    }
}

#[async_trait]
impl ModelBackend for ScriptedModel {
    fn id(&self) -> &ModelId {
        &self.id
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        self.requests.lock().push(request.clone());
        let step = self.script.lock().pop_front();
        let (content, confidence, tool_calls) = match step {
            Some(Step::Reply {
                content,
                confidence,
                tool_calls,
            }) => (content, confidence, tool_calls),
            Some(Step::Fail(e)) => return Err(e),
            None => match &self.responder {
                Some(r) => (r(request)?, None, vec![]),
                None => {
                    return Err(ModelError::InvalidRequest {
                        model: self.id.clone(),
                        detail: "the script is exhausted".into(),
                    })
                }
            },
        };
        let input: u64 = request
            .messages
            .iter()
            .map(|m| Self::count_tokens(&m.content))
            .sum();
        let output = Self::count_tokens(&content)
            + tool_calls
                .iter()
                .map(|t| Self::count_tokens(&t.arguments.to_string()))
                .sum::<u64>();
        let usage = TokenUsage::new(input, output);
        let finish = if tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        };
        Ok(ModelResponse {
            model: self.id.clone(),
            content,
            tool_calls,
            usage,
            cost: self.price.cost(usage),
            confidence,
            finish,
        })
    }
}
