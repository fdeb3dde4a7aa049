//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Clock, CredentialHandle, CredentialVault, FinishReason, Message, MessageRole, ModelBackend,
    ModelError, ModelId, ModelPrice, ModelRequest, ModelResponse, PriceTable, Secret, TokenUsage,
};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde_json::{json, Value};

use crate::assemble::{
    finish_calls, for_each_event, read_body, response, Answer, PartialCall, ToolNames,
};
use crate::http::{
    classify_status, client, endpoint, estimate_tokens, header_map, malformed, number_after,
    parse_api_error, redact_model_error, secret_header, system_clock, transport_error, BuildError,
    KeySource, DEFAULT_TIMEOUT,
};
use crate::observer::{emit, StreamDelta, StreamObserver};

/// How the API key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OpenAiAuth {
    /// `Authorization: Bearer <key>` (OpenAI, OpenRouter, vLLM, llama.cpp, LM Studio, Ollama).
    #[default]
    Bearer,
    /// `api-key: <key>` (Azure OpenAI).
    AzureApiKey,
}

/// Which request field carries [`ModelRequest::max_output_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MaxTokensField {
    /// `max_tokens`, which every compatible server understands.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`, which OpenAI's reasoning models require.
    MaxCompletionTokens,
}

/// The shape the answer must take (`response_format`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Free text (the provider's default).
    Text,
    /// Any valid JSON object (`{"type": "json_object"}`); the prompt must ask for JSON.
    JsonObject,
    /// JSON valid against a schema (`{"type": "json_schema", ...}`).
    JsonSchema {
        /// The schema's name (letters, digits, `_`, `-`).
        name: String,
        /// The JSON schema.
        schema: Value,
        /// Whether the provider must follow the schema exactly.
        strict: bool,
    },
}

impl ResponseFormat {
    fn to_json(&self) -> Value {
        match self {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": strict},
            }),
        }
    }
}

/// Configuration of an [`OpenAiCompatible`] backend.
///
/// `base_url` is the API root that `/chat/completions` is appended to, as the official
/// clients take it: `https://api.openai.com/v1`, `http://localhost:11434/v1` (Ollama),
/// `http://localhost:8000/v1` (vLLM), `http://localhost:8080/v1` (llama.cpp server),
/// `http://localhost:1234/v1` (LM Studio), `https://openrouter.ai/api/v1`, or for Azure
/// `https://<resource>.openai.azure.com/openai/deployments/<deployment>` (see
/// [`OpenAiConfig::azure`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenAiConfig {
    /// The API root.
    pub base_url: String,
    /// The model name sent in every request, and the id of the backend.
    pub model: ModelId,
    /// The vault handle of the API key; `None` sends no key (local servers).
    pub api_key: Option<CredentialHandle>,
    /// How the key is sent.
    pub auth: OpenAiAuth,
    /// `api-version` query parameter (Azure).
    pub api_version: Option<String>,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// More headers sent with every request (`HTTP-Referer` for OpenRouter, ...). Not for
    /// secrets: those belong in the vault.
    pub extra_headers: Vec<(String, String)>,
    /// The timeout of a whole call, streamed body included.
    pub timeout: Duration,
    /// Prices by model; the cost of a call is its usage priced for [`OpenAiConfig::model`],
    /// zero when the table has no price for it (a local model).
    pub prices: PriceTable,
    /// The answer's shape for calls through [`ModelBackend::complete`].
    pub response_format: Option<ResponseFormat>,
    /// Whether [`ModelBackend::complete`] streams (deltas go to the registered observer).
    pub stream: bool,
    /// Whether a streamed request asks for usage (`stream_options.include_usage`); without
    /// it a streamed answer reports no usage and costs nothing.
    pub stream_usage: bool,
    /// Which field carries the output token limit.
    pub max_tokens_field: MaxTokensField,
    /// Whether to ask for token log-probabilities (`logprobs`) and report their geometric
    /// mean probability as the answer's [`ModelResponse::confidence`] (what local-first
    /// routing compares with its floor). Non-streamed calls only; a server that returns no
    /// log-probabilities gives no confidence.
    pub logprob_confidence: bool,
}

impl OpenAiConfig {
    /// A configuration for `model` at `base_url`, without a key, not streaming, with the
    /// default timeout ([`DEFAULT_TIMEOUT`]) and no prices.
    pub fn new(base_url: impl Into<String>, model: impl Into<ModelId>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            auth: OpenAiAuth::Bearer,
            api_version: None,
            organization: None,
            extra_headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            prices: PriceTable::default(),
            response_format: None,
            stream: false,
            stream_usage: true,
            max_tokens_field: MaxTokensField::MaxTokens,
            logprob_confidence: false,
        }
    }

    /// OpenAI itself (`https://api.openai.com/v1`, `max_completion_tokens`).
    pub fn openai(model: impl Into<ModelId>) -> Self {
        Self {
            max_tokens_field: MaxTokensField::MaxCompletionTokens,
            ..Self::new("https://api.openai.com/v1", model)
        }
    }

    /// Azure OpenAI: `endpoint` is the resource (`https://<resource>.openai.azure.com`),
    /// `deployment` the deployment name (also used as the model name), `api_version` the
    /// `api-version` query; the key goes in the `api-key` header.
    pub fn azure(
        endpoint: impl Into<String>,
        deployment: impl Into<String>,
        api_version: impl Into<String>,
    ) -> Self {
        let deployment = deployment.into();
        let base = format!(
            "{}/openai/deployments/{}",
            endpoint.into().trim_end_matches('/'),
            deployment
        );
        Self {
            auth: OpenAiAuth::AzureApiKey,
            api_version: Some(api_version.into()),
            ..Self::new(base, deployment.as_str())
        }
    }

    /// Reports a confidence computed from the answer's token log-probabilities (see
    /// [`OpenAiConfig::logprob_confidence`]).
    pub fn with_logprob_confidence(mut self) -> Self {
        self.logprob_confidence = true;
        self
    }

    /// Reads the key from the vault under `handle`.
    pub fn with_api_key(mut self, handle: CredentialHandle) -> Self {
        self.api_key = Some(handle);
        self
    }

    /// Sends `OpenAI-Organization: organization`.
    pub fn with_organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = Some(organization.into());
        self
    }

    /// Adds a header to every request.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }

    /// Sets the timeout of a whole call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `prices` for costs.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Prices the configured model at `price`.
    pub fn with_price(mut self, price: ModelPrice) -> Self {
        self.prices.set(self.model.clone(), price);
        self
    }

    /// Asks for answers of this shape.
    pub fn with_response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Streams the answers of [`ModelBackend::complete`].
    pub fn streaming(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }
}

/// Per-call options of [`OpenAiCompatible::complete_with`].
#[derive(Default, Clone, Copy)]
#[non_exhaustive]
pub struct CompletionOptions<'a> {
    /// The answer's shape; `None` leaves the provider's default.
    pub response_format: Option<&'a ResponseFormat>,
    /// Whether to stream.
    pub stream: bool,
    /// Where deltas go when streaming.
    pub observer: Option<&'a dyn StreamObserver>,
}

impl std::fmt::Debug for CompletionOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionOptions")
            .field("response_format", &self.response_format)
            .field("stream", &self.stream)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl<'a> CompletionOptions<'a> {
    /// No format, not streaming.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for answers of this shape.
    pub fn with_response_format(mut self, format: &'a ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Streams, sending deltas to `observer`.
    pub fn streaming_to(mut self, observer: &'a dyn StreamObserver) -> Self {
        self.stream = true;
        self.observer = Some(observer);
        self
    }
}

/// A [`ModelBackend`] over an OpenAI-compatible chat completions API.
///
/// Each call reads the key from the vault, sends one request and maps the answer: text, tool
/// calls (ids kept, names mapped back to the offered [`aios_core::ToolSpec`]s), usage and the
/// cost from the configured prices. Errors are classified for the reliability layer (429, 5xx,
/// timeouts and cut-off bodies are transient; 400, 401, 403, 404 and context overflows are
/// not). It never retries on its own. The key never appears in errors or `Debug` output.
#[derive(Clone)]
pub struct OpenAiCompatible {
    config: OpenAiConfig,
    url: Url,
    headers: HeaderMap,
    key: KeySource,
    http: reqwest::Client,
    observer: Option<Arc<dyn StreamObserver>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("model", &self.config.model)
            .field("url", &self.url.as_str())
            .field("api_key", &self.config.api_key)
            .field("stream", &self.config.stream)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// A backend for `config`, reading its key from `vault`.
    pub fn new(config: OpenAiConfig, vault: Arc<dyn CredentialVault>) -> Result<Self, BuildError> {
        let url = endpoint(
            &config.base_url,
            "chat/completions",
            config.api_version.as_deref(),
        )?;
        let mut headers = header_map(&config.extra_headers)?;
        if let Some(org) = &config.organization {
            let v = HeaderValue::from_str(org)
                .map_err(|_| BuildError::InvalidHeaderValue("OpenAI-Organization".into()))?;
            headers.insert("openai-organization", v);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(Self {
            url,
            headers,
            key: KeySource {
                handle: config.api_key.clone(),
                vault,
            },
            http: client(config.timeout)?,
            observer: None,
            clock: system_clock(),
            config,
        })
    }

    /// Sends the deltas of streamed calls made through [`ModelBackend::complete`] to
    /// `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn StreamObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Reads "now" from `clock` when turning rate-limit reset times into waits.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// One completion with per-call options (format, streaming, observer).
    pub async fn complete_with(
        &self,
        request: &ModelRequest,
        options: CompletionOptions<'_>,
    ) -> Result<ModelResponse, ModelError> {
        let model = &self.config.model;
        let secret = self
            .key
            .get()
            .await
            .map_err(|e| e.into_model_error(model))?;
        let names = ToolNames::new(&request.tools);
        let body = self.body(request, &options);
        let mut headers = self.headers.clone();
        if let Some(s) = &secret {
            let (name, prefix) = match self.config.auth {
                OpenAiAuth::Bearer => (AUTHORIZATION, "Bearer "),
                OpenAiAuth::AzureApiKey => {
                    (reqwest::header::HeaderName::from_static("api-key"), "")
                }
            };
            let value = secret_header(prefix, s).ok_or_else(|| ModelError::Unauthorized {
                model: model.clone(),
                detail: "the api key is not a valid header value".into(),
            })?;
            headers.insert(name, value);
        }
        let sent = self
            .http
            .post(self.url.clone())
            .headers(headers)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport_error(model, "request failed", &e, secret.as_ref()))?;
        let status = sent.status().as_u16();
        if !sent.status().is_success() {
            let resp_headers = sent.headers().clone();
            let text = read_body(sent, model, secret.as_ref()).await?;
            return Err(redact_model_error(
                self.status_error(status, &resp_headers, &text, request),
                secret.as_ref(),
            ));
        }
        let answer = if options.stream {
            self.read_stream(sent, &names, options.observer, secret.as_ref())
                .await
        } else {
            let text = read_body(sent, model, secret.as_ref()).await?;
            parse_completion(model, &text, &names)
        };
        let asked = self.config.logprob_confidence;
        answer
            .map(|mut a| {
                // log-probabilities sent unasked are not a confidence the host chose
                a.confidence = a.confidence.filter(|_| asked);
                response(model, &self.config.prices, a)
            })
            .map_err(|e| redact_model_error(e, secret.as_ref()))
    }

    fn body(&self, request: &ModelRequest, options: &CompletionOptions<'_>) -> Value {
        let mut body = json!({
            "model": self.config.model.as_str(),
            "messages": request.messages.iter().map(message_json).collect::<Vec<_>>(),
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": ToolNames::outgoing(&t.name),
                            "description": t.description,
                            "parameters": t.parameters,
                        },
                    })
                })
                .collect();
        }
        if let Some(n) = request.max_output_tokens {
            let field = match self.config.max_tokens_field {
                MaxTokensField::MaxTokens => "max_tokens",
                MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
            };
            body[field] = json!(n);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(f) = options.response_format {
            body["response_format"] = f.to_json();
        }
        if self.config.logprob_confidence && !options.stream {
            body["logprobs"] = json!(true);
        }
        if options.stream {
            body["stream"] = json!(true);
            if self.config.stream_usage {
                body["stream_options"] = json!({"include_usage": true});
            }
        }
        body
    }

    fn status_error(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: &str,
        request: &ModelRequest,
    ) -> ModelError {
        let api = parse_api_error(body);
        let context = is_context_overflow(&api).then(|| {
            number_after(&api.message, "resulted in")
                .or_else(|| number_after(&api.message, "you requested"))
                .unwrap_or_else(|| estimate_tokens(request))
        });
        classify_status(
            &self.config.model,
            status,
            headers,
            &api,
            context,
            self.clock.now(),
        )
    }

    async fn read_stream(
        &self,
        sent: reqwest::Response,
        names: &ToolNames,
        observer: Option<&dyn StreamObserver>,
        secret: Option<&Secret>,
    ) -> Result<Answer, ModelError> {
        let model = &self.config.model;
        let mut content = String::new();
        let mut refusal = String::new();
        let mut calls: BTreeMap<usize, PartialCall> = BTreeMap::new();
        let mut finish: Option<String> = None;
        let mut usage = TokenUsage::default();
        let done = for_each_event(sent, model, secret, |event| {
            if event.data.trim() == "[DONE]" {
                return Ok(true);
            }
            let chunk: Value = serde_json::from_str(&event.data)
                .map_err(|e| malformed(model, format!("stream chunk: {e}")))?;
            if let Some(err) = chunk.get("error") {
                let api = parse_api_error(&json!({ "error": err }).to_string());
                return Err(ModelError::Unavailable {
                    model: model.clone(),
                    detail: format!("error in stream: {}", api.message),
                });
            }
            if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
                usage = usage_of(u);
            }
            let choices = chunk.get("choices").and_then(Value::as_array);
            for choice in choices.into_iter().flatten() {
                if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                    continue;
                }
                let delta = choice.get("delta").unwrap_or(&Value::Null);
                if let Some(t) = delta.get("content").and_then(Value::as_str) {
                    if !t.is_empty() {
                        content.push_str(t);
                        emit(observer, StreamDelta::Text(t.to_owned()));
                    }
                }
                if let Some(r) = delta.get("refusal").and_then(Value::as_str) {
                    refusal.push_str(r);
                }
                for (pos, tc) in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let index = tc
                        .get("index")
                        .and_then(Value::as_u64)
                        .map_or(pos, |i| i as usize);
                    let id = tc.get("id").and_then(Value::as_str);
                    let function = tc.get("function").unwrap_or(&Value::Null);
                    let name = function.get("name").and_then(Value::as_str);
                    let args = function
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    calls.entry(index).or_default().add(id, name, args);
                    emit(
                        observer,
                        StreamDelta::ToolCall {
                            index,
                            id: id.map(str::to_owned),
                            name: name.map(|n| names.incoming(n)),
                            arguments: args.to_owned(),
                        },
                    );
                }
                if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                    finish = Some(f.to_owned());
                }
            }
            Ok(false)
        })
        .await?;
        if !done {
            return Err(ModelError::Unavailable {
                model: model.clone(),
                detail: "stream cut off before `[DONE]`".into(),
            });
        }
        let finish = finish_reason(model, finish.as_deref(), &refusal, content.is_empty())?;
        Ok(Answer {
            content,
            tool_calls: finish_calls(calls, names),
            finish,
            usage,
            confidence: None,
        })
    }
}

/// OpenAI's `context_length_exceeded`, vLLM's "maximum context length", llama.cpp's
/// `exceed_context_size_error`.
fn is_context_overflow(api: &crate::http::ApiError) -> bool {
    let msg = api.message.to_lowercase();
    api.code.as_deref() == Some("context_length_exceeded")
        || [api.kind.as_deref(), api.code.as_deref()]
            .into_iter()
            .flatten()
            .any(|k| k.contains("exceed_context_size"))
        || msg.contains("maximum context length")
        || msg.contains("context length exceeded")
}

fn message_json(m: &Message) -> Value {
    match m.role {
        MessageRole::System => json!({"role": "system", "content": m.content}),
        MessageRole::User => json!({"role": "user", "content": m.content}),
        MessageRole::Assistant if m.tool_calls.is_empty() => {
            json!({"role": "assistant", "content": m.content})
        }
        MessageRole::Assistant => json!({
            "role": "assistant",
            "content": if m.content.is_empty() { Value::Null } else { json!(m.content) },
            "tool_calls": m.tool_calls.iter().map(|c| json!({
                "id": c.id,
                "type": "function",
                "function": {
                    "name": ToolNames::outgoing(&c.name),
                    "arguments": c.arguments.to_string(),
                },
            })).collect::<Vec<_>>(),
        }),
        MessageRole::Tool => match &m.tool_call_id {
            Some(id) => json!({"role": "tool", "tool_call_id": id, "content": m.content}),
            None => json!({"role": "tool", "content": m.content}),
        },
    }
}

fn usage_of(u: &Value) -> TokenUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    TokenUsage::new(n("prompt_tokens"), n("completion_tokens"))
}

fn finish_reason(
    model: &ModelId,
    finish: Option<&str>,
    refusal: &str,
    no_content: bool,
) -> Result<FinishReason, ModelError> {
    if !refusal.is_empty() && no_content {
        return Err(ModelError::Refused {
            model: model.clone(),
            detail: refusal.to_owned(),
        });
    }
    match finish {
        Some("content_filter") => Err(ModelError::Refused {
            model: model.clone(),
            detail: "the answer was withheld by the content filter".into(),
        }),
        Some("length") => Ok(FinishReason::Length),
        Some("tool_calls") | Some("function_call") => Ok(FinishReason::ToolCalls),
        _ => Ok(FinishReason::Stop),
    }
}

fn parse_completion(model: &ModelId, text: &str, names: &ToolNames) -> Result<Answer, ModelError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| malformed(model, format!("body: {e}")))?;
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| malformed(model, "no `choices` in the body"))?;
    let message = choice
        .get("message")
        .ok_or_else(|| malformed(model, "no `message` in the choice"))?;
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut calls = Vec::new();
    for c in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = c
            .get("function")
            .ok_or_else(|| malformed(model, "a tool call without `function`"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(model, "a tool call without a name"))?;
        let arguments = match function.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let mut call = PartialCall::default();
        call.add(c.get("id").and_then(Value::as_str), Some(name), &arguments);
        calls.push(call.finish(names));
    }
    let finish = finish_reason(
        model,
        choice.get("finish_reason").and_then(Value::as_str),
        refusal,
        content.is_empty(),
    )?;
    Ok(Answer {
        content,
        tool_calls: calls,
        finish,
        usage: v.get("usage").map(usage_of).unwrap_or_default(),
        confidence: logprob_confidence(choice),
    })
}

/// The geometric mean probability of the answer's tokens, from `choice.logprobs.content`
/// (none without log-probabilities).
fn logprob_confidence(choice: &Value) -> Option<f32> {
    let tokens = choice
        .get("logprobs")?
        .get("content")?
        .as_array()?
        .iter()
        .filter_map(|t| t.get("logprob").and_then(Value::as_f64))
        .collect::<Vec<_>>();
    if tokens.is_empty() {
        return None;
    }
    let mean = tokens.iter().sum::<f64>() / tokens.len() as f64;
    Some(mean.exp().clamp(0.0, 1.0) as f32)
}

#[async_trait]
impl ModelBackend for OpenAiCompatible {
    fn id(&self) -> &ModelId {
        &self.config.model
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let options = CompletionOptions {
            response_format: self.config.response_format.as_ref(),
            stream: self.config.stream,
            observer: self.observer.as_deref(),
        };
        self.complete_with(request, options).await
    }
}
