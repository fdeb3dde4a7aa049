//! The Anthropic Messages API (`POST {base_url}/messages`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Clock, CredentialHandle, CredentialVault, FinishReason, Message, MessageRole, ModelBackend,
    ModelError, ModelId, ModelPrice, ModelRequest, ModelResponse, PriceTable, Secret, TokenUsage,
};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use serde_json::{json, Value};

use crate::assemble::{
    finish_calls, for_each_event, parse_arguments, read_body, response, Answer, PartialCall,
    ToolNames,
};
use crate::http::{
    classify_status, client, endpoint, estimate_tokens, header_map, malformed, number_after,
    parse_api_error, redact_model_error, secret_header, system_clock, transport_error, BuildError,
    KeySource, DEFAULT_TIMEOUT,
};
use crate::observer::{emit, StreamDelta, StreamObserver};

/// The `anthropic-version` sent unless configured otherwise.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Configuration of an [`Anthropic`] backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AnthropicConfig {
    /// The API root that `/messages` is appended to (`https://api.anthropic.com/v1`).
    pub base_url: String,
    /// The model name sent in every request, and the id of the backend.
    pub model: ModelId,
    /// The vault handle of the API key, sent as `x-api-key`.
    pub api_key: Option<CredentialHandle>,
    /// The `anthropic-version` header.
    pub version: String,
    /// `max_tokens` for requests without [`ModelRequest::max_output_tokens`] (the API
    /// requires one).
    pub default_max_tokens: u32,
    /// More headers sent with every request (`anthropic-beta`, ...). Not for secrets.
    pub extra_headers: Vec<(String, String)>,
    /// The timeout of a whole call, streamed body included.
    pub timeout: Duration,
    /// Prices by model; a call is priced for [`AnthropicConfig::model`], zero without a price.
    /// Cache reads and writes are counted as input tokens.
    pub prices: PriceTable,
    /// Whether [`ModelBackend::complete`] streams (deltas go to the registered observer).
    pub stream: bool,
}

impl AnthropicConfig {
    /// `model` on the public API, key under `api_key`, [`ANTHROPIC_VERSION`], 4096 output
    /// tokens by default, the default timeout, no prices, not streaming.
    pub fn new(model: impl Into<ModelId>, api_key: CredentialHandle) -> Self {
        Self {
            base_url: "https://api.anthropic.com/v1".into(),
            model: model.into(),
            api_key: Some(api_key),
            version: ANTHROPIC_VERSION.into(),
            default_max_tokens: 4096,
            extra_headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            prices: PriceTable::default(),
            stream: false,
        }
    }

    /// Sends requests to `base_url` instead (a proxy, a gateway, a test server).
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
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

    /// Streams the answers of [`ModelBackend::complete`].
    pub fn streaming(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }
}

/// A [`ModelBackend`] over the Anthropic Messages API.
///
/// System messages become the separate `system` prompt; assistant tool calls become
/// `tool_use` blocks and tool results `tool_result` blocks of a user turn, so call ids
/// round-trip. Stop reasons map to [`FinishReason`] (`end_turn`/`stop_sequence` to `Stop`,
/// `tool_use` to `ToolCalls`, `max_tokens` to `Length`; `refusal` is
/// [`ModelError::Refused`]). Errors are classified as for [`crate::OpenAiCompatible`], with
/// 529 (overloaded) transient and "prompt is too long" as `ContextTooLong`.
#[derive(Clone)]
pub struct Anthropic {
    config: AnthropicConfig,
    url: Url,
    headers: HeaderMap,
    key: KeySource,
    http: reqwest::Client,
    observer: Option<Arc<dyn StreamObserver>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic")
            .field("model", &self.config.model)
            .field("url", &self.url.as_str())
            .field("api_key", &self.config.api_key)
            .field("stream", &self.config.stream)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Anthropic {
    /// A backend for `config`, reading its key from `vault`.
    pub fn new(
        config: AnthropicConfig,
        vault: Arc<dyn CredentialVault>,
    ) -> Result<Self, BuildError> {
        let url = endpoint(&config.base_url, "messages", None)?;
        let mut headers = header_map(&config.extra_headers)?;
        let version = HeaderValue::from_str(&config.version)
            .map_err(|_| BuildError::InvalidHeaderValue("anthropic-version".into()))?;
        headers.insert("anthropic-version", version);
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
    pub fn config(&self) -> &AnthropicConfig {
        &self.config
    }

    /// One streamed completion whose deltas go to `observer` (whatever the configuration
    /// says about streaming).
    pub async fn complete_streaming(
        &self,
        request: &ModelRequest,
        observer: &dyn StreamObserver,
    ) -> Result<ModelResponse, ModelError> {
        self.call(request, true, Some(observer)).await
    }

    async fn call(
        &self,
        request: &ModelRequest,
        stream: bool,
        observer: Option<&dyn StreamObserver>,
    ) -> Result<ModelResponse, ModelError> {
        let model = &self.config.model;
        let body = self.body(request, stream)?;
        let secret = self
            .key
            .get()
            .await
            .map_err(|e| e.into_model_error(model))?;
        let names = ToolNames::new(&request.tools);
        let mut headers = self.headers.clone();
        if let Some(s) = &secret {
            let value = secret_header("", s).ok_or_else(|| ModelError::Unauthorized {
                model: model.clone(),
                detail: "the api key is not a valid header value".into(),
            })?;
            headers.insert(HeaderName::from_static("x-api-key"), value);
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
            let api = parse_api_error(&text);
            let context = api
                .message
                .to_lowercase()
                .contains("prompt is too long")
                .then(|| {
                    number_after(&api.message, "too long")
                        .unwrap_or_else(|| estimate_tokens(request))
                });
            let e = classify_status(
                model,
                status,
                &resp_headers,
                &api,
                context,
                self.clock.now(),
            );
            return Err(redact_model_error(e, secret.as_ref()));
        }
        let answer = if stream {
            self.read_stream(sent, &names, observer, secret.as_ref())
                .await
        } else {
            let text = read_body(sent, model, secret.as_ref()).await?;
            parse_message(model, &text, &names)
        };
        answer
            .map(|a| response(model, &self.config.prices, a))
            .map_err(|e| redact_model_error(e, secret.as_ref()))
    }

    fn body(&self, request: &ModelRequest, stream: bool) -> Result<Value, ModelError> {
        let model = &self.config.model;
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == MessageRole::System)
            .map(|m| m.content.as_str())
            .collect();
        let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
        for m in request
            .messages
            .iter()
            .filter(|m| m.role != MessageRole::System)
        {
            let (role, blocks) = blocks_of(model, m)?;
            match turns.last_mut() {
                Some((last, existing)) if *last == role => existing.extend(blocks),
                _ => turns.push((role, blocks)),
            }
        }
        let mut body = json!({
            "model": model.as_str(),
            "max_tokens": request.max_output_tokens.unwrap_or(self.config.default_max_tokens),
            "messages": turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect::<Vec<_>>(),
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "name": ToolNames::outgoing(&t.name),
                        "description": t.description,
                        "input_schema": t.parameters,
                    })
                })
                .collect();
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if stream {
            body["stream"] = json!(true);
        }
        Ok(body)
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
        let mut calls: BTreeMap<usize, PartialCall> = BTreeMap::new();
        let mut stop: Option<String> = None;
        let mut usage = TokenUsage::default();
        let now = self.clock.now();
        let done = for_each_event(sent, model, secret, |event| {
            let data: Value = serde_json::from_str(&event.data)
                .map_err(|e| malformed(model, format!("stream event: {e}")))?;
            let kind = data
                .get("type")
                .and_then(Value::as_str)
                .or(event.event.as_deref())
                .unwrap_or_default();
            match kind {
                "message_start" => {
                    if let Some(u) = data.pointer("/message/usage") {
                        usage = usage_of(u);
                    }
                }
                "content_block_start" => {
                    let index = index_of(&data);
                    let block = data.get("content_block").unwrap_or(&Value::Null);
                    match block.get("type").and_then(Value::as_str) {
                        Some("tool_use") => {
                            let id = block.get("id").and_then(Value::as_str);
                            let name = block.get("name").and_then(Value::as_str);
                            calls.entry(index).or_default().add(id, name, "");
                            emit(
                                observer,
                                StreamDelta::ToolCall {
                                    index,
                                    id: id.map(str::to_owned),
                                    name: name.map(|n| names.incoming(n)),
                                    arguments: String::new(),
                                },
                            );
                        }
                        Some("text") => {
                            if let Some(t) = block.get("text").and_then(Value::as_str) {
                                if !t.is_empty() {
                                    content.push_str(t);
                                    emit(observer, StreamDelta::Text(t.to_owned()));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                "content_block_delta" => {
                    let index = index_of(&data);
                    let delta = data.get("delta").unwrap_or(&Value::Null);
                    match delta.get("type").and_then(Value::as_str) {
                        Some("text_delta") => {
                            let t = delta.get("text").and_then(Value::as_str).unwrap_or("");
                            content.push_str(t);
                            emit(observer, StreamDelta::Text(t.to_owned()));
                        }
                        Some("input_json_delta") => {
                            let part = delta
                                .get("partial_json")
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            calls.entry(index).or_default().add(None, None, part);
                            emit(
                                observer,
                                StreamDelta::ToolCall {
                                    index,
                                    id: None,
                                    name: None,
                                    arguments: part.to_owned(),
                                },
                            );
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(s) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                        stop = Some(s.to_owned());
                    }
                    if let Some(u) = data.get("usage") {
                        let later = usage_of(u);
                        usage.output = later.output;
                        if later.input > 0 {
                            usage.input = later.input;
                        }
                    }
                }
                "message_stop" => return Ok(true),
                "error" => {
                    let api = parse_api_error(&event.data);
                    return Err(stream_error(model, &api, now));
                }
                _ => {}
            }
            Ok(false)
        })
        .await?;
        if !done {
            return Err(ModelError::Unavailable {
                model: model.clone(),
                detail: "stream cut off before `message_stop`".into(),
            });
        }
        Ok(Answer {
            content,
            tool_calls: finish_calls(calls, names),
            finish: stop_reason(model, stop.as_deref())?,
            usage,
            confidence: None,
        })
    }
}

fn index_of(data: &Value) -> usize {
    data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize
}

/// An `error` event inside a stream, by its error type.
fn stream_error(
    model: &ModelId,
    api: &crate::http::ApiError,
    now: aios_core::Timestamp,
) -> ModelError {
    let status = match api.kind.as_deref() {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("invalid_request_error") => 400,
        Some("request_too_large") => 413,
        _ => 500,
    };
    classify_status(model, status, &HeaderMap::new(), api, None, now)
}

fn blocks_of(model: &ModelId, m: &Message) -> Result<(&'static str, Vec<Value>), ModelError> {
    let text = |t: &str| json!({"type": "text", "text": t});
    Ok(match m.role {
        MessageRole::User | MessageRole::System => ("user", vec![text(&m.content)]),
        MessageRole::Assistant => {
            let mut blocks = Vec::new();
            if !m.content.is_empty() || m.tool_calls.is_empty() {
                blocks.push(text(&m.content));
            }
            for c in &m.tool_calls {
                blocks.push(json!({
                    "type": "tool_use",
                    "id": c.id,
                    "name": ToolNames::outgoing(&c.name),
                    "input": c.arguments,
                }));
            }
            ("assistant", blocks)
        }
        MessageRole::Tool => {
            let id = m
                .tool_call_id
                .as_deref()
                .ok_or_else(|| ModelError::InvalidRequest {
                    model: model.clone(),
                    detail:
                        "a tool result without a call id (the Messages API ties results to calls)"
                            .into(),
                })?;
            (
                "user",
                vec![json!({"type": "tool_result", "tool_use_id": id, "content": m.content})],
            )
        }
    })
}

fn usage_of(u: &Value) -> TokenUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    TokenUsage::new(
        n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens"),
        n("output_tokens"),
    )
}

fn stop_reason(model: &ModelId, stop: Option<&str>) -> Result<FinishReason, ModelError> {
    match stop {
        Some("max_tokens") | Some("model_context_window_exceeded") => Ok(FinishReason::Length),
        Some("tool_use") => Ok(FinishReason::ToolCalls),
        Some("refusal") => Err(ModelError::Refused {
            model: model.clone(),
            detail: "the model declined to answer (stop reason `refusal`)".into(),
        }),
        _ => Ok(FinishReason::Stop),
    }
}

fn parse_message(model: &ModelId, text: &str, names: &ToolNames) -> Result<Answer, ModelError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| malformed(model, format!("body: {e}")))?;
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(model, "no `content` in the body"))?;
    let mut content = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed(model, "a `tool_use` block without a name"))?;
                let arguments = match b.get("input") {
                    Some(Value::String(s)) => parse_arguments(s),
                    Some(other) => other.clone(),
                    None => json!({}),
                };
                calls.push(aios_core::ToolCall {
                    id: b.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                    name: names.incoming(name),
                    arguments,
                });
            }
            _ => {}
        }
    }
    Ok(Answer {
        content,
        tool_calls: calls,
        finish: stop_reason(model, v.get("stop_reason").and_then(Value::as_str))?,
        usage: v.get("usage").map(usage_of).unwrap_or_default(),
        confidence: None,
    })
}

#[async_trait]
impl ModelBackend for Anthropic {
    fn id(&self) -> &ModelId {
        &self.config.model
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        self.call(request, self.config.stream, self.observer.as_deref())
            .await
    }
}
