//! The Anthropic adapter against a loopback server that plays the documented `/v1/messages`
//! shapes.
#![cfg(feature = "anthropic")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_core::{
    testing, FinishReason, Message, ModelBackend, ModelError, ModelPrice, ModelRequest, Money,
    TokenUsage, ToolCall, ToolSpec, Transience,
};
use aios_models::{Anthropic, AnthropicConfig, StreamDelta, ANTHROPIC_VERSION};
use common::{handle, vault, Reply, TestServer, KEY};
use serde_json::{json, Value};

fn message(content: Value, stop: &str) -> Value {
    json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-20250101",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 4, "cache_read_input_tokens": 5},
    })
}

fn config(server: &TestServer) -> AnthropicConfig {
    AnthropicConfig::new("claude-test", handle())
        .with_base_url(server.base())
        .with_price(ModelPrice {
            input_per_million: Money::from_minor(1_000_000),
            output_per_million: Money::from_minor(3_000_000),
            per_call: Money::ZERO,
        })
}

async fn backend(server: &TestServer) -> Anthropic {
    Anthropic::new(config(server), vault().await).unwrap()
}

fn hello() -> ModelRequest {
    ModelRequest::new(vec![
        Message::system("be brief"),
        Message::system("be kind"),
        Message::user("hello"),
    ])
}

fn tool() -> ToolSpec {
    ToolSpec {
        name: "email.send".into(),
        description: "send an email".into(),
        parameters: json!({"type": "object", "properties": {"to": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn plain_message_with_separate_system_prompt() {
    let server = TestServer::always(Reply::json(
        200,
        message(json!([{"type": "text", "text": "Hi!"}]), "end_turn"),
    ))
    .await;
    let r = backend(&server).await.complete(&hello()).await.unwrap();
    assert_eq!(r.content, "Hi!");
    assert_eq!(r.model.as_str(), "claude-test");
    assert_eq!(r.usage, TokenUsage::new(25, 4));
    assert_eq!(r.cost, Money::from_minor(25 + 12));
    assert_eq!(r.finish, FinishReason::Stop);

    let sent = server.last();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some(ANTHROPIC_VERSION));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.body["system"], "be brief\n\nbe kind");
    assert_eq!(sent.body["max_tokens"], 4096);
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    );
}

#[tokio::test]
async fn tool_use_round_trips_through_content_blocks() {
    let server = TestServer::always(Reply::json(
        200,
        message(
            json!([
                {"type": "text", "text": "Sending."},
                {"type": "tool_use", "id": "toolu_9", "name": "email__send", "input": {"to": "bo"}},
            ]),
            "tool_use",
        ),
    ))
    .await;
    let request = ModelRequest {
        tools: vec![tool()],
        max_output_tokens: Some(100),
        ..ModelRequest::new(vec![
            Message::user("mail al and bo"),
            Message::assistant_calling(
                "First al.",
                vec![ToolCall {
                    id: "toolu_1".into(),
                    name: "email.send".into(),
                    arguments: json!({"to": "al"}),
                }],
            ),
            Message::tool_result("toolu_1", "sent"),
            Message::user("now bo"),
        ])
    };
    let r = backend(&server).await.complete(&request).await.unwrap();
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert_eq!(r.content, "Sending.");
    assert_eq!(
        r.tool_calls,
        vec![ToolCall {
            id: "toolu_9".into(),
            name: "email.send".into(),
            arguments: json!({"to": "bo"}),
        }]
    );
    let body = server.last().body;
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(
        body["tools"],
        json!([{
            "name": "email__send",
            "description": "send an email",
            "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}},
        }])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "mail al and bo"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "First al."},
                {"type": "tool_use", "id": "toolu_1", "name": "email__send", "input": {"to": "al"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sent"},
                {"type": "text", "text": "now bo"},
            ]},
        ])
    );
}

#[tokio::test]
async fn a_tool_result_without_a_call_id_is_refused_before_sending() {
    let server = TestServer::always(Reply::json(200, message(json!([]), "end_turn"))).await;
    let request = ModelRequest::new(vec![Message::user("x"), Message::tool("orphan")]);
    let err = backend(&server).await.complete(&request).await.unwrap_err();
    assert!(matches!(err, ModelError::InvalidRequest { .. }), "{err:?}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn stop_reasons_map() {
    let cases = [
        ("end_turn", Ok(FinishReason::Stop)),
        ("stop_sequence", Ok(FinishReason::Stop)),
        ("max_tokens", Ok(FinishReason::Length)),
        ("refusal", Err("refused")),
    ];
    for (stop, expected) in cases {
        let server = TestServer::always(Reply::json(
            200,
            message(json!([{"type": "text", "text": "x"}]), stop),
        ))
        .await;
        let got = backend(&server).await.complete(&hello()).await;
        match (got, expected) {
            (Ok(r), Ok(f)) => assert_eq!(r.finish, f, "{stop}"),
            (Err(ModelError::Refused { .. }), Err(_)) => {}
            (got, expected) => panic!("{stop}: got {got:?}, expected {expected:?}"),
        }
    }
}

fn stream_events(blocks: Vec<Value>, stop: &str) -> Vec<Value> {
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-test", "stop_reason": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        json!({"type": "ping"}),
    ];
    events.extend(blocks);
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 15}}));
    events.push(json!({"type": "message_stop"}));
    events
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
async fn streamed_text_and_tool_use_assemble_and_reach_the_observer() {
    let events = stream_events(
        vec![
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_5", "name": "email__send", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"to\": \"b"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "o\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
        ],
        "tool_use",
    );
    let server = TestServer::always(Reply::sse_events(&events)).await;
    let (seen, observer) = recorder();
    let model = Anthropic::new(config(&server).streaming(true), vault().await)
        .unwrap()
        .with_observer(Arc::new(observer));
    let request = ModelRequest {
        tools: vec![tool()],
        ..hello()
    };
    let r = model.complete(&request).await.unwrap();
    assert_eq!(r.content, "Let me check.");
    assert_eq!(r.finish, FinishReason::ToolCalls);
    assert_eq!(r.usage, TokenUsage::new(25, 15));
    assert_eq!(
        r.tool_calls,
        vec![ToolCall {
            id: "toolu_5".into(),
            name: "email.send".into(),
            arguments: json!({"to": "bo"}),
        }]
    );
    let seen = seen.lock().unwrap();
    let text: String = seen
        .iter()
        .filter_map(|d| match d {
            StreamDelta::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, r.content);
    let args: String = seen
        .iter()
        .filter_map(|d| match d {
            StreamDelta::ToolCall { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"to\": \"bo\"}");
    assert!(seen.contains(&StreamDelta::ToolCall {
        index: 1,
        id: Some("toolu_5".into()),
        name: Some("email.send".into()),
        arguments: String::new(),
    }));
    assert_eq!(server.last().body["stream"], true);
}

#[tokio::test]
async fn complete_streaming_streams_whatever_the_configuration() {
    let events = stream_events(
        vec![
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
        ],
        "end_turn",
    );
    let server = TestServer::always(Reply::sse_events(&events)).await;
    let (seen, observer) = recorder();
    let r = backend(&server)
        .await
        .complete_streaming(&hello(), &observer)
        .await
        .unwrap();
    assert_eq!(r.content, "ok");
    assert_eq!(*seen.lock().unwrap(), vec![StreamDelta::Text("ok".into())]);
}

fn api_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[derive(Debug)]
enum Expect {
    RateLimited(Option<Duration>),
    Unavailable(&'static str),
    Timeout,
    Unauthorized(&'static str),
    Invalid(&'static str),
    Context(u64),
}

fn error_cases() -> Vec<(&'static str, Reply, Expect)> {
    let partial = stream_events(
        vec![
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}}),
        ],
        "end_turn",
    );
    let truncated = partial[..partial.len() - 1].to_vec();
    vec![
        (
            "429 retry-after",
            Reply::json(429, api_error("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"))
                .with_header("retry-after", "12"),
            Expect::RateLimited(Some(Duration::from_secs(12))),
        ),
        (
            "429 reset header",
            Reply::json(429, api_error("rate_limit_error", "slow down"))
                .with_header("anthropic-ratelimit-requests-reset", "2999-01-01T00:00:00Z")
                .with_header("anthropic-ratelimit-requests-remaining", "0"),
            Expect::RateLimited(None), // checked below: far in the future
        ),
        (
            "529 overloaded",
            Reply::json(529, api_error("overloaded_error", "Overloaded")),
            Expect::Unavailable("Overloaded"),
        ),
        (
            "500",
            Reply::json(500, api_error("api_error", "Internal server error")),
            Expect::Unavailable("Internal server error"),
        ),
        (
            "401",
            Reply::json(401, api_error("authentication_error", "invalid x-api-key")),
            Expect::Unauthorized("invalid x-api-key"),
        ),
        (
            "404",
            Reply::json(404, api_error("not_found_error", "model: claude-nope")),
            Expect::Invalid("model: claude-nope"),
        ),
        (
            "prompt too long",
            Reply::json(400, api_error("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum")),
            Expect::Context(208_310),
        ),
        (
            "400 other",
            Reply::json(400, api_error("invalid_request_error", "max_tokens: must be greater than 0")),
            Expect::Invalid("max_tokens: must be greater than 0"),
        ),
        (
            "malformed body",
            Reply::raw(200, "{\"content\": [{\"type\": \"te"),
            Expect::Unavailable("malformed response"),
        ),
        (
            "body cut off",
            Reply::Cut { prefix: "{\"id\":\"msg_1\",\"cont".into() },
            Expect::Unavailable("cut off"),
        ),
        (
            "stream without message_stop",
            Reply::sse_events(&truncated),
            Expect::Unavailable("before `message_stop`"),
        ),
        (
            "stream connection dropped",
            Reply::Sse {
                chunks: vec!["event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n".into()],
                cut: true,
            },
            Expect::Unavailable("stream interrupted"),
        ),
        (
            "overloaded error event in the stream",
            Reply::sse_events(&[api_error("overloaded_error", "Overloaded")]),
            Expect::Unavailable("Overloaded"),
        ),
        (
            "slow answer",
            Reply::Slow { delay: Duration::from_secs(10), reply: Box::new(Reply::json(200, message(json!([]), "end_turn"))) },
            Expect::Timeout,
        ),
    ]
}

#[tokio::test]
async fn errors_are_classified_and_never_retried() {
    for (name, reply, expect) in error_cases() {
        let streams = matches!(reply, Reply::Sse { .. });
        let server = TestServer::always(reply).await;
        let model = Anthropic::new(
            config(&server)
                .streaming(streams)
                .with_timeout(Duration::from_millis(300)),
            vault().await,
        )
        .unwrap();
        let err = model.complete(&hello()).await.unwrap_err();
        let ok = match (&err, &expect) {
            (ModelError::RateLimited { retry_after, .. }, Expect::RateLimited(d)) => {
                if name == "429 reset header" {
                    retry_after.is_some_and(|w| w > Duration::from_secs(3600 * 24 * 365))
                } else {
                    retry_after == d
                }
            }
            (ModelError::Unavailable { detail, .. }, Expect::Unavailable(s)) => detail.contains(s),
            (ModelError::Timeout { .. }, Expect::Timeout) => true,
            (ModelError::Unauthorized { detail, .. }, Expect::Unauthorized(s)) => {
                detail.contains(s)
            }
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
        assert_eq!(server.requests().len(), 1, "{name}: no retry");
    }
}

#[tokio::test]
async fn the_key_never_appears_in_errors_or_debug_output() {
    let mut texts = Vec::new();
    for status in [400u16, 401, 403, 404, 429, 500, 529, 200] {
        let server = TestServer::start(move |r| {
            let key = r.header("x-api-key").unwrap_or("").to_owned();
            Reply::raw(
                status,
                &format!("{{\"type\":\"error\",\"error\":{{\"type\":\"x\",\"message\":\"bad key {key}\"}}}}"),
            )
        })
        .await;
        let model = backend(&server).await;
        texts.push(format!("{model:?} {:?}", model.config()));
        let err = model.complete(&hello()).await.unwrap_err();
        texts.push(format!("{err} {err:?}"));
    }
    for (name, reply, _) in error_cases() {
        let server = TestServer::always(reply).await;
        let model = Anthropic::new(
            config(&server).with_timeout(Duration::from_millis(300)),
            vault().await,
        )
        .unwrap();
        let err = model.complete(&hello()).await.unwrap_err();
        texts.push(format!("{name}: {err} {err:?}"));
    }
    for t in &texts {
        assert!(
            !t.contains(KEY) && !t.contains("TOPSECRET"),
            "the key leaked: {t}"
        );
    }
    assert!(texts.iter().any(|t| t.contains("bad key")));
}

#[tokio::test]
async fn passes_the_model_conformance_suite() {
    let replies = [
        Reply::json(
            200,
            message(json!([{"type": "text", "text": "fine"}]), "end_turn"),
        ),
        Reply::json(
            200,
            message(
                json!([{"type": "tool_use", "id": "t1", "name": "email__send", "input": {}}]),
                "tool_use",
            ),
        ),
    ];
    for reply in replies {
        let server = TestServer::always(reply).await;
        testing::model_conformance(backend(&server).await, hello()).await;
    }
    let server = TestServer::always(Reply::sse_events(&stream_events(
        vec![json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "streamed"}})],
        "end_turn",
    )))
    .await;
    let model = Anthropic::new(config(&server).streaming(true), vault().await).unwrap();
    testing::model_conformance(model, hello()).await;
}
