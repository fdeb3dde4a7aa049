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

#[path = "support/mod.rs"]
mod support;
use support::stub_server;

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
