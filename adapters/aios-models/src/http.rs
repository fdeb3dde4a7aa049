//! What every provider shares: the HTTP client, endpoints, headers, credentials from the
//! vault, error classification, rate-limit hints and redaction of the key.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Clock, CredentialHandle, CredentialVault, ModelError, ModelId, Secret, Timestamp, VaultError,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

/// Why an adapter could not be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The base URL does not parse or is not `http`/`https`.
    #[error("invalid base url `{0}`")]
    InvalidBaseUrl(String),
    /// A configured header name is not a valid HTTP header name.
    #[error("invalid header name `{0}`")]
    InvalidHeaderName(String),
    /// A configured header value is not a valid HTTP header value.
    #[error("invalid value for header `{0}`")]
    InvalidHeaderValue(String),
    /// The HTTP client could not be created.
    #[error("http client: {0}")]
    Client(String),
}

/// The default request timeout: one minute for the whole call, body included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| BuildError::Client(describe(&e)))
}

/// `{base}/{path}` with an optional `api-version` query.
pub(crate) fn endpoint(
    base: &str,
    path: &str,
    api_version: Option<&str>,
) -> Result<Url, BuildError> {
    let joined = format!("{}/{}", base.trim_end_matches('/'), path);
    let mut url = Url::parse(&joined).map_err(|_| BuildError::InvalidBaseUrl(base.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BuildError::InvalidBaseUrl(base.to_owned()));
    }
    if let Some(v) = api_version {
        url.query_pairs_mut().append_pair("api-version", v);
    }
    Ok(url)
}

pub(crate) fn header_map(pairs: &[(String, String)]) -> Result<HeaderMap, BuildError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| BuildError::InvalidHeaderName(name.clone()))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| BuildError::InvalidHeaderValue(name.clone()))?;
        map.append(n, v);
    }
    Ok(map)
}

/// Where the key comes from: a handle in the host's vault, read on every call so a rotated
/// key is picked up without rebuilding the adapter.
#[derive(Clone)]
pub(crate) struct KeySource {
    pub(crate) handle: Option<CredentialHandle>,
    pub(crate) vault: Arc<dyn CredentialVault>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// Why the key could not be had, before any request was sent.
pub(crate) enum KeyError {
    /// Missing or denied: permanent.
    Rejected(String),
    /// The vault is down: transient.
    Unavailable(String),
}

impl KeySource {
    pub(crate) async fn get(&self) -> Result<Option<Secret>, KeyError> {
        let Some(handle) = &self.handle else {
            return Ok(None);
        };
        match self.vault.get(handle).await {
            Ok(s) => Ok(Some(s)),
            Err(VaultError::Unavailable(d)) => Err(KeyError::Unavailable(format!(
                "credential vault unavailable: {d}"
            ))),
            Err(e) => Err(KeyError::Rejected(e.to_string())),
        }
    }
}

impl KeyError {
    pub(crate) fn into_model_error(self, model: &ModelId) -> ModelError {
        match self {
            KeyError::Rejected(detail) => ModelError::Unauthorized {
                model: model.clone(),
                detail,
            },
            KeyError::Unavailable(detail) => ModelError::Unavailable {
                model: model.clone(),
                detail,
            },
        }
    }
}

/// A header value carrying the secret, marked sensitive so `Debug` of the request hides it.
pub(crate) fn secret_header(prefix: &str, secret: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("{prefix}{}", secret.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// `text` with every occurrence of the secret replaced by `***`.
pub(crate) fn redact(text: &str, secret: Option<&Secret>) -> String {
    match secret {
        Some(s) if !s.expose().is_empty() => text.replace(s.expose(), "***"),
        _ => text.to_owned(),
    }
}

/// `e` with the secret redacted from its details.
pub(crate) fn redact_model_error(e: ModelError, secret: Option<&Secret>) -> ModelError {
    match e {
        ModelError::Unavailable { model, detail } => ModelError::Unavailable {
            model,
            detail: redact(&detail, secret),
        },
        ModelError::InvalidRequest { model, detail } => ModelError::InvalidRequest {
            model,
            detail: redact(&detail, secret),
        },
        ModelError::Unauthorized { model, detail } => ModelError::Unauthorized {
            model,
            detail: redact(&detail, secret),
        },
        ModelError::Refused { model, detail } => ModelError::Refused {
            model,
            detail: redact(&detail, secret),
        },
        other => other,
    }
}

/// A one-line description of a transport error with its causes.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out.replace('\n', " ")
}

/// A transport failure (no HTTP status, or the body could not be read) as a model error.
pub(crate) fn transport_error(
    model: &ModelId,
    what: &str,
    e: &reqwest::Error,
    secret: Option<&Secret>,
) -> ModelError {
    if e.is_timeout() {
        ModelError::Timeout {
            model: model.clone(),
        }
    } else {
        ModelError::Unavailable {
            model: model.clone(),
            detail: redact(&format!("{what}: {}", describe(e)), secret),
        }
    }
}

/// A body that is not what the API documents: transient, the next answer may be whole.
pub(crate) fn malformed(model: &ModelId, detail: impl std::fmt::Display) -> ModelError {
    ModelError::Unavailable {
        model: model.clone(),
        detail: format!("malformed response: {detail}"),
    }
}

/// The error an API put in its body: `{"error": {"message", "type", "code"}}` (OpenAI and
/// Anthropic), `{"error": "text"}` (Ollama) or `{"message": ...}`/`{"detail": ...}` (other
/// compatible servers); anything else is kept as (shortened) text.
#[derive(Debug, Default)]
pub(crate) struct ApiError {
    pub(crate) kind: Option<String>,
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    pub(crate) code: Option<String>,
    pub(crate) message: String,
}

fn text_of(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub(crate) fn parse_api_error(body: &str) -> ApiError {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        let short: String = body.trim().chars().take(300).collect();
        return ApiError {
            message: if short.is_empty() {
                "empty body".into()
            } else {
                short.replace('\n', " ")
            },
            ..ApiError::default()
        };
    };
    let err = v.get("error").unwrap_or(&v);
    if let serde_json::Value::String(s) = err {
        return ApiError {
            message: s.clone(),
            ..ApiError::default()
        };
    }
    let message = text_of(err.get("message"))
        .or_else(|| text_of(v.get("message")))
        .or_else(|| text_of(v.get("detail")))
        .unwrap_or_else(|| v.to_string().chars().take(300).collect());
    ApiError {
        kind: text_of(err.get("type")),
        code: text_of(err.get("code")),
        message: message.replace('\n', " "),
    }
}

/// The first unsigned integer in `text` after `marker`.
pub(crate) fn number_after(text: &str, marker: &str) -> Option<u64> {
    let lower = text.to_lowercase();
    let at = lower.find(&marker.to_lowercase())? + marker.len();
    let digits: String = text
        .get(at..)?
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    digits.parse().ok()
}

/// Classification of an HTTP error status, shared by every provider. `context_tokens` is
/// `Some` when the provider's body says the prompt does not fit.
pub(crate) fn classify_status(
    model: &ModelId,
    status: u16,
    headers: &HeaderMap,
    api: &ApiError,
    context_tokens: Option<u64>,
    now: Timestamp,
) -> ModelError {
    let model = model.clone();
    let detail = format!("http {status}: {}", api.message);
    match status {
        401 | 403 => ModelError::Unauthorized { model, detail },
        408 => ModelError::Timeout { model },
        409 | 500..=599 => ModelError::Unavailable { model, detail },
        429 => ModelError::RateLimited {
            model,
            retry_after: retry_after(headers, now),
        },
        400..=499 => match context_tokens {
            Some(tokens) => ModelError::ContextTooLong { model, tokens },
            None => ModelError::InvalidRequest { model, detail },
        },
        _ => ModelError::Unavailable {
            model,
            detail: format!("unexpected http {status}: {}", api.message),
        },
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// How long the server asked to wait: `retry-after-ms`, `retry-after` (seconds or an HTTP
/// date), OpenAI's `x-ratelimit-reset-{requests,tokens}` (durations such as `6m0s`) and
/// Anthropic's `anthropic-ratelimit-*-reset` (RFC 3339 times). Of the reset headers, those of
/// an exhausted limit (`remaining` 0) win; without that information the longest is taken.
pub(crate) fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    if let Some(v) = header(headers, "retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::from_secs_f64(secs));
            }
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(v) {
            return Some(until(at.with_timezone(&chrono::Utc), now));
        }
    }
    let mut resets: Vec<(bool, Duration)> = Vec::new();
    for limit in ["requests", "tokens"] {
        if let Some(d) =
            header(headers, &format!("x-ratelimit-reset-{limit}")).and_then(parse_go_duration)
        {
            let exhausted = header(headers, &format!("x-ratelimit-remaining-{limit}")) == Some("0");
            resets.push((exhausted, d));
        }
    }
    for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
        if let Some(at) = header(headers, &format!("anthropic-ratelimit-{limit}-reset"))
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
        {
            let exhausted =
                header(headers, &format!("anthropic-ratelimit-{limit}-remaining")) == Some("0");
            resets.push((exhausted, until(at.with_timezone(&chrono::Utc), now)));
        }
    }
    let exhausted = resets.iter().filter(|(e, _)| *e).map(|(_, d)| *d).max();
    exhausted.or_else(|| resets.iter().map(|(_, d)| *d).max())
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

/// A Go-style duration as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total))
}

/// The clock used for HTTP-date and reset-time hints.
pub(crate) fn system_clock() -> Arc<dyn Clock> {
    Arc::new(aios_core::SystemClock)
}

/// Tokens estimated for text when the provider does not say: one per four bytes.
pub(crate) fn estimate_tokens(request: &aios_core::ModelRequest) -> u64 {
    request
        .messages
        .iter()
        .map(|m| aios_core::ScriptedModel::count_tokens(&m.content))
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn go_durations() {
        let cases = [
            ("1s", Some(1000)),
            ("6m0s", Some(360_000)),
            ("20ms", Some(20)),
            ("1h2m3.5s", Some(3_723_500)),
            ("0.5s", Some(500)),
            ("", None),
            ("abc", None),
            ("5x", None),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_go_duration(text).map(|d| d.as_millis() as u64),
                ms,
                "{text}"
            );
        }
    }

    #[test]
    fn retry_after_hints() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u64>);
        let cases: &[Case] = &[
            (&[("retry-after", "7")], Some(7000)),
            (&[("retry-after-ms", "250")], Some(250)),
            (
                &[("retry-after", "Wed, 01 Jan 2025 00:00:30 GMT")],
                Some(30_000),
            ),
            (&[("retry-after", "Tue, 31 Dec 2024 00:00:30 GMT")], Some(0)),
            (
                &[
                    ("x-ratelimit-reset-requests", "2s"),
                    ("x-ratelimit-reset-tokens", "1m0s"),
                ],
                Some(60_000),
            ),
            (
                &[
                    ("x-ratelimit-reset-requests", "2s"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-tokens", "1m0s"),
                    ("x-ratelimit-remaining-tokens", "100"),
                ],
                Some(2000),
            ),
            (
                &[("anthropic-ratelimit-tokens-reset", "2025-01-01T00:00:12Z")],
                Some(12_000),
            ),
            (&[("retry-after", "soon")], None),
            (&[], None),
        ];
        for (pairs, ms) in cases {
            let owned: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            let map = header_map(&owned).unwrap();
            assert_eq!(
                retry_after(&map, now).map(|d| d.as_millis() as u64),
                *ms,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn api_error_shapes() {
        let cases = [
            (
                r#"{"error":{"message":"bad","type":"invalid_request_error","code":"x"}}"#,
                "bad",
                Some("invalid_request_error"),
                Some("x"),
            ),
            (
                r#"{"error":"model not found"}"#,
                "model not found",
                None,
                None,
            ),
            (
                r#"{"object":"error","message":"m","code":400}"#,
                "m",
                None,
                None,
            ),
            (r#"{"detail":"d"}"#, "d", None, None),
            ("<html>gateway</html>", "<html>gateway</html>", None, None),
            ("", "empty body", None, None),
        ];
        for (body, message, kind, code) in cases {
            let e = parse_api_error(body);
            assert_eq!(e.message, message, "{body}");
            assert_eq!(e.kind.as_deref(), kind, "{body}");
            if code.is_some() {
                assert_eq!(e.code.as_deref(), code, "{body}");
            }
        }
    }

    #[test]
    fn numbers_after_markers() {
        assert_eq!(
            number_after("prompt is too long: 208,310 tokens > 200000", "too long:"),
            Some(208_310)
        );
        assert_eq!(number_after("nothing here", "resulted in"), None);
    }
}
