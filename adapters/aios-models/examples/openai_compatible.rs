//! Completes one prompt against an OpenAI-compatible endpoint.
//!
//! With `AIOS_MODEL_BASE_URL` (e.g. `http://localhost:11434/v1` for Ollama), `AIOS_MODEL_NAME`
//! and optionally `AIOS_MODEL_API_KEY` set, it calls that endpoint (streaming, printing the
//! deltas as they arrive). With none of them set it starts a stub server on 127.0.0.1 that
//! answers in the documented shape, so the example always runs:
//!
//! ```text
//! cargo run -p aios-models --example openai_compatible
//! AIOS_MODEL_BASE_URL=http://localhost:11434/v1 AIOS_MODEL_NAME=llama3.2 \
//!     cargo run -p aios-models --example openai_compatible
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;

use aios_core::{CredentialHandle, CredentialVault, InMemoryVault, Message, ModelRequest, Secret};
use aios_models::{CompletionOptions, OpenAiCompatible, OpenAiConfig, StreamDelta};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (base_url, model, key) = match env("AIOS_MODEL_BASE_URL") {
        Some(url) => (
            url,
            env("AIOS_MODEL_NAME").unwrap_or_else(|| "gpt-4o-mini".into()),
            env("AIOS_MODEL_API_KEY"),
        ),
        None => {
            let url = stub_server().await?;
            println!("no AIOS_MODEL_BASE_URL given: using a stub server at {url}");
            (url, "stub-model".into(), None)
        }
    };

    // The key lives in the vault; the configuration names only its handle.
    let vault = Arc::new(InMemoryVault::new());
    let mut config = OpenAiConfig::new(base_url, model.as_str());
    if let Some(key) = key {
        let handle = CredentialHandle::new("model/api-key");
        vault.put(handle.clone(), Secret::new(key)).await?;
        config = config.with_api_key(handle);
    }
    let backend = OpenAiCompatible::new(config, vault)?;
    println!("{backend:?}");

    let request = ModelRequest::new(vec![
        Message::system("You answer in one short sentence."),
        Message::user("What is an accountability anchor?"),
    ]);
    let print = |d: &StreamDelta| {
        if let StreamDelta::Text(t) = d {
            print!("{t}");
            let _ = std::io::stdout().flush();
        }
    };
    let response = backend
        .complete_with(&request, CompletionOptions::new().streaming_to(&print))
        .await?;
    println!();
    println!(
        "model {} finished ({:?}) with {} input and {} output tokens, cost {}",
        response.model, response.finish, response.usage.input, response.usage.output, response.cost
    );
    Ok(())
}

/// A one-route HTTP server answering every request with a streamed chat completion.
async fn stub_server() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // read the head and the body announced by content-length
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let mut body = String::new();
                for piece in [
                    "An accountability anchor ",
                    "is the human role ",
                    "that answers for what agents do.",
                ] {
                    let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                    body.push_str(&format!("data: {chunk}\n\n"));
                }
                let last = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 21, "completion_tokens": 17}});
                body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(url)
}
