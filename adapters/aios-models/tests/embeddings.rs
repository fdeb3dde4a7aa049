//! The embeddings adapter against a loopback server that plays the documented `/embeddings`
//! shapes.
#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use aios_core::{testing, EmbedError, Embedder, Transience};
use aios_models::{EmbeddingsConfig, OpenAiEmbedder};
use common::{handle, vault, Recorded, Reply, TestServer, KEY};
use serde_json::{json, Value};

const DIMS: usize = 3;

/// A deterministic vector for a text.
fn vector(text: &str) -> Vec<f32> {
    let sum: u32 = text.bytes().map(u32::from).sum();
    vec![text.len() as f32, (sum % 97) as f32, 1.0]
}

/// Answers with one vector per input, in reverse order (the adapter must sort by `index`).
fn embeddings(r: &Recorded) -> Reply {
    let inputs: Vec<String> = r.body["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": vector(t)}))
        .collect();
    data.reverse();
    Reply::json(
        200,
        json!({"object": "list", "data": data, "model": "emb", "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
    )
}

fn config(server: &TestServer) -> EmbeddingsConfig {
    EmbeddingsConfig::new(server.base(), "emb-model", DIMS).with_api_key(handle())
}

#[tokio::test]
async fn batches_preserve_order_by_index() {
    let server = TestServer::start(embeddings).await;
    let embedder = OpenAiEmbedder::new(config(&server).with_batch_size(2), vault().await).unwrap();
    let texts: Vec<String> = ["a", "bb", "ccc", "dddd", "eeeee"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = embedder.embed(&texts).await.unwrap();
    assert_eq!(out, texts.iter().map(|t| vector(t)).collect::<Vec<_>>());
    let sent = server.requests();
    let batches: Vec<Value> = sent.iter().map(|r| r.body["input"].clone()).collect();
    assert_eq!(
        batches,
        [json!(["a", "bb"]), json!(["ccc", "dddd"]), json!(["eeeee"])]
    );
    let first = &sent[0];
    assert_eq!(first.path, "/v1/embeddings");
    assert_eq!(
        first.header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(first.body["model"], "emb-model");
    assert_eq!(first.body["encoding_format"], "float");
    assert!(first.body.get("dimensions").is_none());
}

#[tokio::test]
async fn dimensions_are_sent_when_asked() {
    let server = TestServer::start(embeddings).await;
    let mut cfg = config(&server);
    cfg.request_dimensions = true;
    OpenAiEmbedder::new(cfg, vault().await)
        .unwrap()
        .embed(&["x".to_string()])
        .await
        .unwrap();
    assert_eq!(server.last().body["dimensions"], DIMS);
}

#[tokio::test]
async fn passes_the_embedder_conformance_suite() {
    let server = TestServer::start(embeddings).await;
    let embedder = OpenAiEmbedder::new(config(&server).with_batch_size(3), vault().await).unwrap();
    testing::embedder_conformance(embedder).await;
}

#[derive(Debug)]
enum Expect {
    Unavailable(&'static str),
    Unauthorized(&'static str),
    Invalid(&'static str),
}

#[tokio::test]
async fn errors_are_classified_and_never_retried() {
    let item = |i: u64, v: Value| json!({"index": i, "embedding": v});
    let cases: Vec<(&str, Reply, Expect)> = vec![
        (
            "429",
            Reply::json(
                429,
                json!({"error": {"message": "rate limited", "type": "requests"}}),
            )
            .with_header("retry-after", "2"),
            Expect::Unavailable("retry after 2000 ms"),
        ),
        (
            "500",
            Reply::json(500, json!({"error": {"message": "boom"}})),
            Expect::Unavailable("boom"),
        ),
        (
            "401",
            Reply::json(
                401,
                json!({"error": {"message": "Incorrect API key provided"}}),
            ),
            Expect::Unauthorized("Incorrect API key provided"),
        ),
        (
            "400",
            Reply::json(400, json!({"error": {"message": "'$.input' is invalid"}})),
            Expect::Invalid("'$.input' is invalid"),
        ),
        (
            "malformed",
            Reply::raw(200, "{\"data\": [{\"embedding\": [0.1,"),
            Expect::Unavailable("malformed response"),
        ),
        (
            "cut off",
            Reply::Cut {
                prefix: "{\"data\": [{\"emb".into(),
            },
            Expect::Unavailable("cut off"),
        ),
        (
            "wrong dimensions",
            Reply::json(200, json!({"data": [item(0, json!([1.0, 2.0]))]})),
            Expect::Unavailable("2 dimensions, 3 configured"),
        ),
        (
            "missing vector",
            Reply::json(200, json!({"data": []})),
            Expect::Unavailable("no vector for input 0"),
        ),
        (
            "index out of range",
            Reply::json(200, json!({"data": [item(5, json!([1.0, 2.0, 3.0]))]})),
            Expect::Unavailable("out of range"),
        ),
        (
            "slow",
            Reply::Slow {
                delay: Duration::from_secs(10),
                reply: Box::new(Reply::json(200, json!({"data": []}))),
            },
            Expect::Unavailable("timed out"),
        ),
    ];
    for (name, reply, expect) in cases {
        let server = TestServer::always(reply).await;
        let embedder = OpenAiEmbedder::new(
            config(&server).with_timeout(Duration::from_millis(300)),
            vault().await,
        )
        .unwrap();
        let err = embedder.embed(&["x".to_string()]).await.unwrap_err();
        let ok = match (&err, &expect) {
            (EmbedError::Unavailable(d), Expect::Unavailable(s)) => d.contains(s),
            (EmbedError::Unauthorized(d), Expect::Unauthorized(s)) => d.contains(s),
            (EmbedError::InvalidInput(d), Expect::Invalid(s)) => d.contains(s),
            _ => false,
        };
        assert!(ok, "{name}: got {err:?}, expected {expect:?}");
        assert_eq!(
            err.is_transient(),
            matches!(expect, Expect::Unavailable(_)),
            "{name}"
        );
        assert_eq!(server.requests().len(), 1, "{name}: no retry");
        let text = format!("{err} {err:?} {embedder:?}");
        assert!(!text.contains(KEY), "{name}: the key leaked: {text}");
    }
}

#[tokio::test]
async fn an_echoed_key_is_redacted() {
    let server = TestServer::start(|r| {
        let key = r.header("authorization").unwrap_or("").to_owned();
        Reply::raw(401, &format!("{{\"error\":{{\"message\":\"bad {key}\"}}}}"))
    })
    .await;
    let embedder = OpenAiEmbedder::new(config(&server), vault().await).unwrap();
    let err = embedder.embed(&["x".to_string()]).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("bad Bearer ***"), "{text}");
    assert!(!text.contains(KEY), "{text}");
}
