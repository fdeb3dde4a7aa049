//! Sessions, CSRF tokens, cookies and the headers every response carries.

use std::collections::HashMap;
use std::time::Duration;

use aios_core::Timestamp;
use axum::http::{header, HeaderMap, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "aios_session";
/// The cookie that binds the login form's CSRF token (before there is a session).
pub(crate) const LOGIN_COOKIE: &str = "aios_login";

/// The `Content-Security-Policy` of every response: nothing may run a script; styles and
/// images only from the console itself; forms only post back to it; no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'none'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// A logged-in human.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The human's key in the governance model.
    pub human: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When the session ends.
    pub expires_at: Timestamp,
}

/// The server-side sessions, by id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `human`; returns its id.
    pub fn create(&self, human: String, now: Timestamp, ttl: Duration) -> Result<String, String> {
        let id = random_token()?;
        let csrf = random_token()?;
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(8));
        let mut map = self.map.lock();
        // drop the expired ones so the map does not grow without end
        map.retain(|_, s| s.expires_at > now);
        map.insert(
            id.clone(),
            Session {
                human,
                csrf,
                expires_at: now + ttl,
            },
        );
        Ok(id)
    }

    /// The live session named by `id`.
    pub fn get(&self, id: &str, now: Timestamp) -> Option<Session> {
        let mut map = self.map.lock();
        match map.get(id) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

/// 32 random bytes from the operating system, in hex.
pub(crate) fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The value of the cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, on the console's path; `max_age`
/// zero removes it.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<u64>,
    secure: bool,
) -> String {
    let mut out = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Strict",
        if path.is_empty() { "/" } else { path }
    );
    if let Some(age) = max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        out.push_str("; Secure");
    }
    out
}

/// Compares two secrets in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Adds the security headers to every response.
pub(crate) async fn headers(request: Request<axum::body::Body>, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_secrets_compare_whole() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; aios_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "aios"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn sessions_expire_by_the_clock_and_end_on_logout() {
        let sessions = Sessions::default();
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let id = sessions
            .create("alice".into(), t0, Duration::from_secs(60))
            .unwrap();
        assert_eq!(id.len(), 64);
        let s = sessions.get(&id, t0).unwrap();
        assert_eq!(s.human, "alice");
        assert_ne!(s.csrf, id);
        assert!(sessions
            .get(&id, t0 + chrono::Duration::seconds(61))
            .is_none());
        let id = sessions
            .create("alice".into(), t0, Duration::from_secs(60))
            .unwrap();
        sessions.remove(&id);
        assert!(sessions.get(&id, t0).is_none());
        assert!(sessions.get("guess", t0).is_none());
    }
}
