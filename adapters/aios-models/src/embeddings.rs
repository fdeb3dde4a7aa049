//! OpenAI-compatible embeddings (`POST {base_url}/embeddings`) as an [`Embedder`].

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Clock, CredentialHandle, CredentialVault, EmbedError, Embedder, Embedding, ModelError, ModelId,
    Secret,
};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde_json::{json, Value};

use crate::assemble::read_body;
use crate::http::{
    classify_status, client, endpoint, header_map, parse_api_error, redact, secret_header,
    system_clock, transport_error, BuildError, KeyError, KeySource, DEFAULT_TIMEOUT,
};
use crate::openai::OpenAiAuth;

/// Configuration of an [`OpenAiEmbedder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddingsConfig {
    /// The API root that `/embeddings` is appended to (as in [`crate::OpenAiConfig`]).
    pub base_url: String,
    /// The embedding model.
    pub model: ModelId,
    /// The length of every vector the model returns; answers of another length are errors.
    pub dimensions: usize,
    /// Whether to send `dimensions` in the request (models that can shorten their vectors,
    /// such as OpenAI's `text-embedding-3-*`; other servers may reject the field).
    pub request_dimensions: bool,
    /// At most this many texts per request (at least 1).
    pub batch_size: usize,
    /// The vault handle of the API key; `None` sends no key.
    pub api_key: Option<CredentialHandle>,
    /// How the key is sent.
    pub auth: OpenAiAuth,
    /// `api-version` query parameter (Azure).
    pub api_version: Option<String>,
    /// More headers sent with every request (not for secrets).
    pub extra_headers: Vec<(String, String)>,
    /// The timeout of one request.
    pub timeout: Duration,
}

impl EmbeddingsConfig {
    /// `model` at `base_url`, returning vectors of `dimensions`, 64 texts per request.
    pub fn new(base_url: impl Into<String>, model: impl Into<ModelId>, dimensions: usize) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            dimensions,
            request_dimensions: false,
            batch_size: 64,
            api_key: None,
            auth: OpenAiAuth::Bearer,
            api_version: None,
            extra_headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Reads the key from the vault under `handle`.
    pub fn with_api_key(mut self, handle: CredentialHandle) -> Self {
        self.api_key = Some(handle);
        self
    }

    /// Sends at most `size` texts per request.
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Sets the timeout of one request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// An [`Embedder`] over an OpenAI-compatible `/embeddings` endpoint.
///
/// Texts are sent in batches of [`EmbeddingsConfig::batch_size`], one batch after the other;
/// each answer is put back in input order by its `index`, and checked to have one vector of
/// [`EmbeddingsConfig::dimensions`] per text. 429, 5xx, timeouts and malformed answers are
/// [`EmbedError::Unavailable`] (transient), 401 and 403 [`EmbedError::Unauthorized`], other
/// 4xx [`EmbedError::InvalidInput`]. It never retries on its own.
#[derive(Clone)]
pub struct OpenAiEmbedder {
    config: EmbeddingsConfig,
    url: Url,
    headers: HeaderMap,
    key: KeySource,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("model", &self.config.model)
            .field("url", &self.url.as_str())
            .field("dimensions", &self.config.dimensions)
            .field("batch_size", &self.config.batch_size)
            .field("api_key", &self.config.api_key)
            .finish_non_exhaustive()
    }
}

impl OpenAiEmbedder {
    /// An embedder for `config`, reading its key from `vault`.
    pub fn new(
        config: EmbeddingsConfig,
        vault: Arc<dyn CredentialVault>,
    ) -> Result<Self, BuildError> {
        let url = endpoint(
            &config.base_url,
            "embeddings",
            config.api_version.as_deref(),
        )?;
        let mut headers = header_map(&config.extra_headers)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(Self {
            url,
            headers,
            key: KeySource {
                handle: config.api_key.clone(),
                vault,
            },
            http: client(config.timeout)?,
            clock: system_clock(),
            config,
        })
    }

    /// Reads "now" from `clock` when turning rate-limit reset times into waits.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &EmbeddingsConfig {
        &self.config
    }

    async fn batch(
        &self,
        texts: &[String],
        secret: Option<&Secret>,
    ) -> Result<Vec<Embedding>, EmbedError> {
        let model = &self.config.model;
        let mut body = json!({
            "model": model.as_str(),
            "input": texts,
            "encoding_format": "float",
        });
        if self.config.request_dimensions {
            body["dimensions"] = json!(self.config.dimensions);
        }
        let mut headers = self.headers.clone();
        if let Some(s) = secret {
            let (name, prefix) = match self.config.auth {
                OpenAiAuth::Bearer => (AUTHORIZATION, "Bearer "),
                OpenAiAuth::AzureApiKey => {
                    (reqwest::header::HeaderName::from_static("api-key"), "")
                }
            };
            let value = secret_header(prefix, s).ok_or_else(|| {
                EmbedError::Unauthorized("the api key is not a valid header value".into())
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
            .map_err(|e| from_model(transport_error(model, "request failed", &e, secret)))?;
        let status = sent.status().as_u16();
        let resp_headers = sent.headers().clone();
        let text = read_body(sent, model, secret).await.map_err(from_model)?;
        if !(200..300).contains(&status) {
            let api = parse_api_error(&text);
            let e = classify_status(model, status, &resp_headers, &api, None, self.clock.now());
            return Err(match from_model(e) {
                EmbedError::Unavailable(d) => EmbedError::Unavailable(redact(&d, secret)),
                EmbedError::InvalidInput(d) => EmbedError::InvalidInput(redact(&d, secret)),
                EmbedError::Unauthorized(d) => EmbedError::Unauthorized(redact(&d, secret)),
                other => other,
            });
        }
        self.parse(&text, texts.len())
    }

    fn parse(&self, text: &str, expected: usize) -> Result<Vec<Embedding>, EmbedError> {
        let bad = |d: String| EmbedError::Unavailable(format!("malformed response: {d}"));
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("body: {e}")))?;
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `data` in the body".into()))?;
        let mut slots: Vec<Option<Embedding>> = vec![None; expected];
        for (pos, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(pos, |i| i as usize);
            let vector: Embedding = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("item {index} has no `embedding` array")))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("item {index} has a non-number")))?;
            if vector.len() != self.config.dimensions {
                return Err(bad(format!(
                    "vector {index} has {} dimensions, {} configured",
                    vector.len(),
                    self.config.dimensions
                )));
            }
            match slots.get_mut(index) {
                Some(slot @ None) => *slot = Some(vector),
                Some(Some(_)) => return Err(bad(format!("index {index} twice"))),
                None => return Err(bad(format!("index {index} out of range"))),
            }
        }
        slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.ok_or_else(|| bad(format!("no vector for input {i}"))))
            .collect()
    }
}

/// The embedder's view of a classified failure.
fn from_model(e: ModelError) -> EmbedError {
    match e {
        ModelError::RateLimited { retry_after, .. } => EmbedError::Unavailable(match retry_after {
            Some(d) => format!("rate limited; retry after {} ms", d.as_millis()),
            None => "rate limited".into(),
        }),
        ModelError::Timeout { .. } => EmbedError::Unavailable("timed out".into()),
        ModelError::Unavailable { detail, .. } => EmbedError::Unavailable(detail),
        ModelError::Unauthorized { detail, .. } => EmbedError::Unauthorized(detail),
        ModelError::InvalidRequest { detail, .. } | ModelError::Refused { detail, .. } => {
            EmbedError::InvalidInput(detail)
        }
        other => EmbedError::InvalidInput(other.to_string()),
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let secret = self.key.get().await.map_err(|e| match e {
            KeyError::Rejected(d) => EmbedError::Unauthorized(d),
            KeyError::Unavailable(d) => EmbedError::Unavailable(d),
        })?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.config.batch_size.max(1)) {
            out.extend(self.batch(chunk, secret.as_ref()).await?);
        }
        Ok(out)
    }
}
