//! Credentials by handle. Secrets are redacted in `Debug` and cannot be serialised.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// A secret value. It implements neither `Serialize` nor `Display`, and its `Debug` prints
/// `Secret(***)`, so it cannot leak into memory, checkpoints, transcripts or audit events by
/// accident.
///
/// ```
/// use aios_core::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s:?}"), "Secret(***)");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    /// The secret value; call this only where it is sent to the service that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The name under which a secret is stored (`email/smtp`). Handles may be persisted; secrets
/// may not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CredentialHandle(String);

impl CredentialHandle {
    /// A handle.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The handle's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CredentialHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a vault lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// No secret under that handle.
    #[error("no credential under handle `{0}`")]
    NotFound(CredentialHandle),
    /// The vault refused access.
    #[error("access to credential `{0}` denied")]
    Denied(CredentialHandle),
    /// The vault is unreachable.
    #[error("credential vault unavailable: {0}")]
    Unavailable(String),
}

/// Where the host keeps secrets.
///
/// Contract: `get` returns exactly what the last `put` under that handle stored; `put`
/// replaces; `remove` of a missing handle is `NotFound`.
#[async_trait]
pub trait CredentialVault: Send + Sync + std::fmt::Debug {
    /// The secret under `handle`.
    async fn get(&self, handle: &CredentialHandle) -> Result<Secret, VaultError>;
    /// Stores `secret` under `handle`, replacing what was there.
    async fn put(&self, handle: CredentialHandle, secret: Secret) -> Result<(), VaultError>;
    /// Removes the secret under `handle`.
    async fn remove(&self, handle: &CredentialHandle) -> Result<(), VaultError>;
}

/// A vault in process memory. Clones share the secrets.
#[derive(Debug, Clone, Default)]
pub struct InMemoryVault {
    secrets: Arc<RwLock<HashMap<CredentialHandle, Secret>>>,
}

impl InMemoryVault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CredentialVault for InMemoryVault {
    async fn get(&self, handle: &CredentialHandle) -> Result<Secret, VaultError> {
        self.secrets
            .read()
            .get(handle)
            .cloned()
            .ok_or_else(|| VaultError::NotFound(handle.clone()))
    }

    async fn put(&self, handle: CredentialHandle, secret: Secret) -> Result<(), VaultError> {
        self.secrets.write().insert(handle, secret);
        Ok(())
    }

    async fn remove(&self, handle: &CredentialHandle) -> Result<(), VaultError> {
        self.secrets
            .write()
            .remove(handle)
            .map(|_| ())
            .ok_or_else(|| VaultError::NotFound(handle.clone()))
    }
}
