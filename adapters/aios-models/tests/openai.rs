//! The OpenAI-compatible adapter against a loopback server that plays the documented
//! `/chat/completions` shapes.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_core::{
    testing, CredentialHandle, FinishReason, InMemoryVault, Message, ModelBackend, ModelError,
    ModelPrice, ModelRequest, Money, TokenUsage, ToolCall, ToolSpec, Transience,
};
use aios_models::{CompletionOptions, OpenAiCompatible, OpenAiConfig, ResponseFormat, StreamDelta};
use common::{handle, vault, Reply, TestServer, KEY};
use serde_json::{json, Value};

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "served-model-2025",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    })
}

fn price() -> ModelPrice {
    ModelPrice {
        input_per_million: Money::from_minor(1_000_000),
        output_per_million: Money::from_minor(2_000_000),
        per_call: Money::ZERO,
    }
}

fn config(server: &TestServer) -> OpenAiConfig {
    OpenAiConfig::new(server.base(), "test-model")
        .with_api_key(handle())
        .with_price(price())
}

async fn backend(server: &TestServer) -> OpenAiCompatible {
    OpenAiCompatible::new(config(server), vault().await).unwrap()
}

fn hello() -> ModelRequest {
    ModelRequest::new(vec![Message::system("be brief"), Message::user("hello")])
}

fn tool() -> ToolSpec {
    ToolSpec {
        name: "email.send".into(),
        description: "send an email".into(),
        parameters: json!({"type": "object", "properties": {"to": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn plain_completion_maps_text_usage_and_cost() {
    let server = TestServer::always(Reply::json(200, completion("hi there"))).await;
    let model = OpenAiCompatible::new(
        config(&server)
            .with_organization("org-42")
            .with_header("HTTP-Referer", "https://example.test"),
        vault().await,
    )
    .unwrap();
    let mut request = hello();
    request.max_output_tokens = Some(50);
    request.temperature = Some(0.5);
    let r = model.complete(&request).await.unwrap();
    assert_eq!(r.content, "hi there");
    assert_eq!(r.model.as_str(), "test-model");
    assert_eq!(r.usage, TokenUsage::new(12, 5));
    assert_eq!(r.cost, Money::from_minor(12 + 10));
    assert_eq!(r.finish, FinishReason::Stop);
    assert!(r.tool_calls.is_empty());

    let sent = server.last();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(sent.header("openai-organization"), Some("org-42"));
    assert_eq!(sent.header("http-referer"), Some("https://example.test"));
    assert_eq!(sent.body["model"], "test-model");
    assert_eq!(sent.body["max_tokens"], 50);
    assert_eq!(sent.body["temperature"], 0.5);
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
        ])
    );
    assert!(sent.body.get("stream").is_none());
    assert!(sent.body.get("tools").is_none());
}

#[tokio::test]
async fn openai_preset_uses_max_completion_tokens_and_no_key_sends_no_header() {
    let server = TestServer::always(Reply::json(200, completion("ok"))).await;
    let mut cfg = OpenAiConfig::openai("o-model");
    cfg.base_url = server.base();
    let model = OpenAiCompatible::new(cfg, Arc::new(InMemoryVault::new())).unwrap();
    let mut request = hello();
    request.max_output_tokens = Some(7);
    model.complete(&request).await.unwrap();
    let sent = server.last();
    assert_eq!(sent.body["max_completion_tokens"], 7);
    assert!(sent.body.get("max_tokens").is_none());
    assert_eq!(sent.header("authorization"), None);
}

#[tokio::test]
async fn azure_sends_api_key_header_and_api_version() {
    let server = TestServer::always(Reply::json(200, completion("ok"))).await;
    let cfg = OpenAiConfig::azure(&server.url, "my-deploy", "2024-10-21").with_api_key(handle());
    let model = OpenAiCompatible::new(cfg, vault().await).unwrap();
    assert_eq!(model.id().as_str(), "my-deploy");
    model.complete(&hello()).await.unwrap();
    let sent = server.last();
    assert_eq!(
        sent.path,
        "/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(sent.header("api-key"), Some(KEY));
    assert_eq!(sent.header("authorization"), None);
}

#[tokio::test]
async fn tool_calls_round_trip_with_ids_and_function_names() {
    let server = TestServer::always(Reply::json(
        200,
        json!({
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "email__send", "arguments": "{\"to\":\"bo@x.test\"}"},
                    }],
                },
                "finish_reason": "tool_calls",
            }],
            "usage": {"prompt_tokens": 30, "completion_tokens": 8},
        }),
    ))
    .await;
    let model = backend(&server).await;
    let request = ModelRequest {
        tools: vec![tool()],
        ..ModelRequest::new(vec![
            Message::user("mail bo"),
            Message::assistant_calling(
                "",
                vec![ToolCall {
                    id: "call_1".into(),
                    name: "email.send".into(),
                    arguments: json!({"to": "al@x.test"}),
                }],
            ),
            Message::tool_result("call_1", "sent"),
        ])
    };
    let r = model.complete(&request).await.unwrap();
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert_eq!(
        r.tool_calls,
        vec![ToolCall {
            id: "call_9".into(),
            name: "email.send".into(),
            arguments: json!({"to": "bo@x.test"}),
        }]
    );
    assert_eq!(r.content, "");

    let body = server.last().body;
    assert_eq!(
        body["tools"],
        json!([{
            "type": "function",
            "function": {
                "name": "email__send",
                "description": "send an email",
                "parameters": {"type": "object", "properties": {"to": {"type": "string"}}},
            },
        }])
    );
    let assistant = &body["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["content"], Value::Null);
    assert_eq!(assistant["tool_calls"][0]["id"], "call_1");
    assert_eq!(assistant["tool_calls"][0]["type"], "function");
    assert_eq!(
        assistant["tool_calls"][0]["function"]["name"],
        "email__send"
    );
    let args: Value = serde_json::from_str(
        assistant["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"to": "al@x.test"}));
    assert_eq!(
        body["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "sent"})
    );
}

#[tokio::test]
async fn structured_output_formats_are_sent() {
    let server = TestServer::always(Reply::json(200, completion("{\"a\":1}"))).await;
    let schema = ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
        strict: true,
    };
    let cases = [
        (ResponseFormat::JsonObject, json!({"type": "json_object"})),
        (
            schema.clone(),
            json!({
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                    "strict": true,
                },
            }),
        ),
        (ResponseFormat::Text, json!({"type": "text"})),
    ];
    for (format, expected) in cases {
        // per call
        let model = backend(&server).await;
        let r = model
            .complete_with(
                &hello(),
                CompletionOptions::new().with_response_format(&format),
            )
            .await
            .unwrap();
        assert_eq!(r.content, "{\"a\":1}");
        assert_eq!(server.last().body["response_format"], expected);
        // from the configuration
        let model = OpenAiCompatible::new(
            config(&server).with_response_format(format.clone()),
            vault().await,
        )
        .unwrap();
        model.complete(&hello()).await.unwrap();
        assert_eq!(server.last().body["response_format"], expected);
    }
}

#[tokio::test]
async fn refusals_are_refused_errors() {
    let cases = [
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": "I can't help"}, "finish_reason": "stop"}]}),
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}]}),
    ];
    for body in cases {
        let server = TestServer::always(Reply::json(200, body.clone())).await;
        let err = backend(&server).await.complete(&hello()).await.unwrap_err();
        assert!(matches!(err, ModelError::Refused { .. }), "{body}: {err:?}");
        assert!(!err.is_transient());
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

type Seen = Arc<Mutex<Vec<StreamDelta>>>;

fn recorder() -> (Seen, impl Fn(&StreamDelta) + Send + Sync + 'static) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    (seen, move |d: &StreamDelta| {
        sink.lock().unwrap().push(d.clone())
    })
}

#[tokio::test]
async fn streamed_text_reaches_the_observer_and_assembles() {
    let server = TestServer::always(Reply::sse_data(
        &[
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo, "}), None),
            chunk(json!({"content": "world"}), None),
            chunk(json!({}), Some("stop")),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}),
        ],
        ": keep-alive\n\ndata: [DONE]\n\n",
    ))
    .await;
    let (seen, observer) = recorder();
    let model = OpenAiCompatible::new(config(&server).streaming(true), vault().await)
        .unwrap()
        .with_observer(Arc::new(observer));
    let r = model.complete(&hello()).await.unwrap();
    assert_eq!(r.content, "Hello, world");
    assert_eq!(r.usage, TokenUsage::new(9, 3));
    assert_eq!(r.finish, FinishReason::Stop);
    let texts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|d| match d {
            StreamDelta::Text(t) => t.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(texts, ["Hel", "lo, ", "world"]);
    assert_eq!(texts.concat(), r.content);
    let body = server.last().body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn streamed_tool_calls_assemble_by_index() {
    let tc = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut function = json!({"arguments": args});
        if let Some(n) = name {
            function["name"] = json!(n);
        }
        let mut call = json!({"index": index, "function": function});
        if let Some(i) = id {
            call["id"] = json!(i);
            call["type"] = json!("function");
        }
        chunk(json!({"tool_calls": [call]}), None)
    };
    let server = TestServer::always(Reply::sse_data(
        &[
            tc(0, Some("call_a"), Some("email__send"), ""),
            tc(1, Some("call_b"), Some("calendar__add"), "{\"day\""),
            tc(0, None, None, "{\"to\":"),
            tc(1, None, None, ":\"mon\"}"),
            tc(0, None, None, "\"bo\"}"),
            chunk(json!({}), Some("tool_calls")),
        ],
        "data: [DONE]\n\n",
    ))
    .await;
    let (seen, observer) = recorder();
    let model = backend(&server).await;
    let request = ModelRequest {
        tools: vec![
            tool(),
            ToolSpec {
                name: "calendar.add".into(),
                description: "add".into(),
                parameters: json!({"type": "object"}),
            },
        ],
        ..hello()
    };
    let r = model
        .complete_with(&request, CompletionOptions::new().streaming_to(&observer))
        .await
        .unwrap();
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert_eq!(
        r.tool_calls,
        vec![
            ToolCall {
                id: "call_a".into(),
                name: "email.send".into(),
                arguments: json!({"to": "bo"}),
            },
            ToolCall {
                id: "call_b".into(),
                name: "calendar.add".into(),
                arguments: json!({"day": "mon"}),
            },
        ]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen[0],
        StreamDelta::ToolCall {
            index: 0,
            id: Some("call_a".into()),
            name: Some("email.send".into()),
            arguments: String::new(),
        }
    );
    let args_of = |i: usize| -> String {
        seen.iter()
            .filter_map(|d| match d {
                StreamDelta::ToolCall {
                    index, arguments, ..
                } if *index == i => Some(arguments.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(args_of(0), "{\"to\":\"bo\"}");
    assert_eq!(args_of(1), "{\"day\":\"mon\"}");
}

/// What an error case must come out as.
#[derive(Debug)]
enum Expect {
    RateLimited(Option<Duration>),
    Unavailable(&'static str),
    Timeout,
    Unauthorized(&'static str),
    Invalid(&'static str),
    Context(u64),
}

fn check(name: &str, err: &ModelError, expect: &Expect) {
    let ok = match (err, expect) {
        (ModelError::RateLimited { retry_after, .. }, Expect::RateLimited(d)) => retry_after == d,
        (ModelError::Unavailable { detail, .. }, Expect::Unavailable(s)) => detail.contains(s),
        (ModelError::Timeout { .. }, Expect::Timeout) => true,
        (ModelError::Unauthorized { detail, .. }, Expect::Unauthorized(s)) => detail.contains(s),
        (ModelError::InvalidRequest { detail, .. }, Expect::Invalid(s)) => detail.contains(s),
        (ModelError::ContextTooLong { tokens, .. }, Expect::Context(n)) => tokens == n,
        _ => false,
    };
    assert!(ok, "{name}: got {err:?}, expected {expect:?}");
    let transient = matches!(
        expect,
        Expect::RateLimited(_) | Expect::Unavailable(_) | Expect::Timeout
    );
    assert_eq!(err.is_transient(), transient, "{name}: transience");
}

fn api_error(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn error_cases() -> Vec<(&'static str, Reply, Expect)> {
    vec![
        (
            "429 with retry-after seconds",
            Reply::json(429, api_error("Rate limit reached", "requests", json!("rate_limit_exceeded")))
                .with_header("retry-after", "3"),
            Expect::RateLimited(Some(Duration::from_secs(3))),
        ),
        (
            "429 with reset headers",
            Reply::json(429, api_error("Rate limit reached", "tokens", Value::Null))
                .with_header("x-ratelimit-reset-tokens", "1m30s")
                .with_header("x-ratelimit-remaining-tokens", "0")
                .with_header("x-ratelimit-reset-requests", "120ms"),
            Expect::RateLimited(Some(Duration::from_secs(90))),
        ),
        (
            "429 without a hint",
            Reply::json(429, api_error("slow down", "requests", Value::Null)),
            Expect::RateLimited(None),
        ),
        (
            "500",
            Reply::json(500, api_error("The server had an error", "server_error", Value::Null)),
            Expect::Unavailable("The server had an error"),
        ),
        (
            "503 html",
            Reply::raw(503, "<html>Service Unavailable</html>"),
            Expect::Unavailable("Service Unavailable"),
        ),
        (
            "401",
            Reply::json(401, api_error("Incorrect API key provided: sk-te***", "invalid_request_error", json!("invalid_api_key"))),
            Expect::Unauthorized("Incorrect API key provided"),
        ),
        (
            "403",
            Reply::json(403, api_error("Country not supported", "request_forbidden", Value::Null)),
            Expect::Unauthorized("Country not supported"),
        ),
        (
            "404 unknown model (Ollama shape)",
            Reply::json(404, json!({"error": "model \"nope\" not found, try pulling it first"})),
            Expect::Invalid("not found, try pulling it first"),
        ),
        (
            "400 context length (OpenAI)",
            Reply::json(400, api_error(
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                json!("context_length_exceeded"),
            )),
            Expect::Context(9001),
        ),
        (
            "400 context length (vLLM)",
            Reply::json(400, json!({"object": "error", "message": "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens (2900 in the messages, 100 in the completion).", "type": "BadRequestError", "code": 400})),
            Expect::Context(3000),
        ),
        (
            "400 other",
            Reply::json(400, api_error("Invalid value for 'temperature'", "invalid_request_error", Value::Null)),
            Expect::Invalid("Invalid value for 'temperature'"),
        ),
        (
            "malformed json body",
            Reply::raw(200, "{\"choices\": [{\"message\": "),
            Expect::Unavailable("malformed response"),
        ),
        (
            "json without choices",
            Reply::json(200, json!({"object": "chat.completion"})),
            Expect::Unavailable("no `choices`"),
        ),
        (
            "body cut off",
            Reply::Cut { prefix: "{\"id\":\"chatcmpl-1\",\"choi".into() },
            Expect::Unavailable("cut off"),
        ),
        (
            "stream connection dropped",
            Reply::Sse {
                chunks: vec![format!("data: {}\n\n", chunk(json!({"content": "par"}), None))],
                cut: true,
            },
            Expect::Unavailable("stream interrupted"),
        ),
        (
            "stream ended without [DONE]",
            Reply::sse_data(&[chunk(json!({"content": "par"}), None)], ""),
            Expect::Unavailable("before `[DONE]`"),
        ),
        (
            "stream chunk is not json",
            Reply::Sse { chunks: vec!["data: {oops\n\n".into()], cut: false },
            Expect::Unavailable("malformed response"),
        ),
        (
            "error inside the stream",
            Reply::sse_data(&[json!({"error": {"message": "overloaded", "type": "server_error"}})], ""),
            Expect::Unavailable("overloaded"),
        ),
        (
            "slow answer",
            Reply::Slow { delay: Duration::from_secs(10), reply: Box::new(Reply::json(200, completion("late"))) },
            Expect::Timeout,
        ),
    ]
}

#[tokio::test]
async fn errors_are_classified_for_the_reliability_layer_and_never_retried() {
    for (name, reply, expect) in error_cases() {
        let streams = matches!(reply, Reply::Sse { .. });
        let server = TestServer::always(reply).await;
        let model = OpenAiCompatible::new(
            config(&server)
                .streaming(streams)
                .with_timeout(Duration::from_millis(300)),
            vault().await,
        )
        .unwrap();
        let err = model.complete(&hello()).await.unwrap_err();
        check(name, &err, &expect);
        assert_eq!(
            server.requests().len(),
            1,
            "{name}: the adapter does not retry"
        );
    }
}

#[tokio::test]
async fn the_key_never_appears_in_errors_or_debug_output() {
    let echo = |r: &common::Recorded| {
        let key = r.header("authorization").unwrap_or("").to_owned();
        format!("{{\"error\":{{\"message\":\"bad key {key}\",\"type\":\"x\"}}}}")
    };
    let mut texts = Vec::new();
    for status in [400u16, 401, 403, 404, 429, 500, 200] {
        let server = TestServer::start(move |r| Reply::raw(status, &echo(r))).await;
        let model = backend(&server).await;
        texts.push(format!("{model:?}"));
        texts.push(format!("{:?}", model.config()));
        let err = model.complete(&hello()).await.unwrap_err();
        texts.push(err.to_string());
        texts.push(format!("{err:?}"));
    }
    for (name, reply, _) in error_cases() {
        let server = TestServer::always(reply).await;
        let model = OpenAiCompatible::new(
            config(&server).with_timeout(Duration::from_millis(300)),
            vault().await,
        )
        .unwrap();
        let err = model.complete(&hello()).await.unwrap_err();
        texts.push(format!("{name}: {err} {err:?}"));
    }
    // unreachable server: the transport error text
    let model = OpenAiCompatible::new(
        OpenAiConfig::new("http://127.0.0.1:9/v1", "m").with_api_key(handle()),
        vault().await,
    )
    .unwrap();
    let err = model.complete(&hello()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    texts.push(format!("{err} {err:?}"));
    for t in &texts {
        assert!(!t.contains(KEY), "the key leaked: {t}");
        assert!(!t.contains("TOPSECRET"), "part of the key leaked: {t}");
    }
    assert!(
        texts.iter().any(|t| t.contains("bad key")),
        "the provider's message is kept"
    );
}

#[tokio::test]
async fn a_missing_credential_is_unauthorized_and_sends_nothing() {
    let server = TestServer::always(Reply::json(200, completion("no"))).await;
    let model = OpenAiCompatible::new(
        config(&server).with_api_key(CredentialHandle::new("absent")),
        vault().await,
    )
    .unwrap();
    let err = model.complete(&hello()).await.unwrap_err();
    assert!(matches!(err, ModelError::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn bad_configuration_is_a_build_error() {
    let v = Arc::new(InMemoryVault::new());
    assert!(OpenAiCompatible::new(OpenAiConfig::new("not a url", "m"), v.clone()).is_err());
    assert!(OpenAiCompatible::new(OpenAiConfig::new("ftp://x/v1", "m"), v.clone()).is_err());
    assert!(OpenAiCompatible::new(
        OpenAiConfig::new("http://x/v1", "m").with_header("bad header", "v"),
        v.clone()
    )
    .is_err());
    assert!(OpenAiCompatible::new(
        OpenAiConfig::new("http://x/v1", "m").with_header("x-ok", "line\nbreak"),
        v
    )
    .is_err());
}

#[tokio::test]
async fn passes_the_model_conformance_suite() {
    let tool_reply = json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "email__send", "arguments": "{}"}}
        ]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    });
    for reply in [completion("fine"), tool_reply] {
        let server = TestServer::always(Reply::json(200, reply)).await;
        testing::model_conformance(backend(&server).await, hello()).await;
    }
    let server = TestServer::always(Reply::sse_data(
        &[chunk(json!({"content": "streamed"}), Some("stop"))],
        "data: [DONE]\n\n",
    ))
    .await;
    let model = OpenAiCompatible::new(config(&server).streaming(true), vault().await).unwrap();
    testing::model_conformance(model, hello()).await;
}

fn with_logprobs(content: &str, logprobs: &[f64]) -> Value {
    let mut body = completion(content);
    body["choices"][0]["logprobs"] = json!({
        "content": logprobs.iter().map(|l| json!({"token": "t", "logprob": l, "top_logprobs": []})).collect::<Vec<_>>(),
        "refusal": null,
    });
    body
}

#[tokio::test]
async fn logprobs_become_the_confidence_when_asked() {
    let server = TestServer::always(Reply::json(200, with_logprobs("yes no", &[-0.1, -0.3]))).await;
    let model =
        OpenAiCompatible::new(config(&server).with_logprob_confidence(), vault().await).unwrap();
    let r = model.complete(&hello()).await.unwrap();
    // the geometric mean of the token probabilities
    let expected = (-0.2f32).exp();
    assert!(
        (r.confidence.unwrap() - expected).abs() < 1e-4,
        "{:?}",
        r.confidence
    );
    assert_eq!(server.last().body["logprobs"], true);
}

#[tokio::test]
async fn without_asking_there_is_no_confidence_and_no_logprobs_are_requested() {
    let server = TestServer::always(Reply::json(200, with_logprobs("yes", &[-2.0]))).await;
    let model = backend(&server).await;
    let r = model.complete(&hello()).await.unwrap();
    assert_eq!(r.confidence, None);
    assert!(server.last().body.get("logprobs").is_none());
}

#[tokio::test]
async fn a_server_that_returns_no_logprobs_gives_no_confidence() {
    let server = TestServer::always(Reply::json(200, completion("yes"))).await;
    let model =
        OpenAiCompatible::new(config(&server).with_logprob_confidence(), vault().await).unwrap();
    assert_eq!(model.complete(&hello()).await.unwrap().confidence, None);
}
