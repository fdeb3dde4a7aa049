//! # aios-models
//!
//! Model provider adapters for AIOS: the [`aios_core::ModelBackend`] and
//! [`aios_core::Embedder`] ports over HTTP (reqwest with rustls).
//!
//! Main types:
//!
//! - [`OpenAiCompatible`] (feature `openai`): chat completions against OpenAI, Azure OpenAI,
//!   Ollama, vLLM, the llama.cpp server, LM Studio, OpenRouter and any other server that
//!   speaks `/chat/completions`, configured by [`OpenAiConfig`]; tool calling, structured
//!   output ([`ResponseFormat`]) and streaming;
//! - [`OpenAiEmbedder`] (feature `openai`): `/embeddings` as an [`aios_core::Embedder`], in
//!   batches, configured by [`EmbeddingsConfig`];
//! - [`Anthropic`] (feature `anthropic`): the Messages API, configured by
//!   [`AnthropicConfig`];
//! - [`StreamObserver`] receives the [`StreamDelta`]s of a streamed answer; the completion
//!   still returns the whole, assembled response.
//!
//! API keys are never configuration values: a configuration names a
//! [`aios_core::CredentialHandle`] and the adapter reads the [`aios_core::Secret`] from the
//! host's [`aios_core::CredentialVault`] on each call. The key never appears in an error, a
//! `Debug` output or a log line.
//!
//! Errors are classified for the reliability layer and the adapters never retry on their own:
//! 429 is [`aios_core::ModelError::RateLimited`] with the wait the server asked for
//! (`Retry-After`, `retry-after-ms`, OpenAI's `x-ratelimit-reset-*`, Anthropic's
//! `anthropic-ratelimit-*-reset`); 5xx, 529 and cut-off or malformed bodies are
//! `Unavailable`; timeouts are `Timeout`; 401 and 403 are `Unauthorized`; other 4xx are
//! `InvalidRequest` with the provider's own message, except a prompt too long for the model,
//! which is `ContextTooLong`.
//!
//! The adapters need a Tokio runtime (reqwest's).
//!
//! Features: `openai` (default), `anthropic`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use aios_core::{
//!     CredentialHandle, CredentialVault, InMemoryVault, ModelBackend, ModelPrice, Money, Secret,
//! };
//! use aios_models::{OpenAiCompatible, OpenAiConfig, ResponseFormat};
//! # futures::executor::block_on(async {
//! let vault = Arc::new(InMemoryVault::new());
//! vault.put(CredentialHandle::new("openai"), Secret::new("sk-example")).await?;
//!
//! let config = OpenAiConfig::openai("gpt-4o-mini")
//!     .with_api_key(CredentialHandle::new("openai"))
//!     .with_price(ModelPrice {
//!         input_per_million: Money::from_minor(15),
//!         output_per_million: Money::from_minor(60),
//!         per_call: Money::ZERO,
//!     })
//!     .with_timeout(Duration::from_secs(30))
//!     .with_response_format(ResponseFormat::JsonObject);
//! let model = OpenAiCompatible::new(config, vault)?;
//! assert_eq!(model.id().as_str(), "gpt-4o-mini");
//! assert!(!format!("{model:?}").contains("sk-example"));
//!
//! // A local server needs no key.
//! let local = OpenAiCompatible::new(
//!     OpenAiConfig::new("http://localhost:11434/v1", "llama3.2"),
//!     Arc::new(InMemoryVault::new()),
//! )?;
//! assert_eq!(local.id().as_str(), "llama3.2");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#[cfg(any(feature = "openai", feature = "anthropic"))]
mod assemble;
mod http;
mod observer;
mod sse;

#[cfg(feature = "anthropic")]
mod anthropic;
#[cfg(feature = "openai")]
mod embeddings;
#[cfg(feature = "openai")]
mod openai;

#[cfg(feature = "anthropic")]
pub use anthropic::{Anthropic, AnthropicConfig, ANTHROPIC_VERSION};
#[cfg(feature = "openai")]
pub use embeddings::{EmbeddingsConfig, OpenAiEmbedder};
pub use http::{BuildError, DEFAULT_TIMEOUT};
pub use observer::{StreamDelta, StreamObserver};
#[cfg(feature = "openai")]
pub use openai::{
    CompletionOptions, MaxTokensField, OpenAiAuth, OpenAiCompatible, OpenAiConfig, ResponseFormat,
};

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "openai"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
