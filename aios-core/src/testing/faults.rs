//! Fault-injecting wrappers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    AuditError, AuditLog, AuditRecord, ChainHead, Connector, ConnectorCall, ConnectorDescriptor,
    ConnectorError, ConnectorOutput, CredentialHandle, CredentialVault, EmbedError, Embedder,
    Embedding, ModelBackend, ModelError, ModelId, ModelRequest, ModelResponse, Secret, StoreError,
    StoredEntry, Timer, VaultError,
};

/// Which calls fail and how long each waits. Call numbers start at 1.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// These call numbers fail.
    pub fail_calls: Vec<u64>,
    /// Every call after this many successful-or-not calls fails (`Some(0)`: all fail).
    pub fail_after: Option<u64>,
    /// Each call first sleeps this long on this timer.
    pub delay: Option<(Arc<dyn Timer>, Duration)>,
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// The `n`-th call fails (1-based).
    pub fn fail_nth(n: u64) -> Self {
        Self {
            fail_calls: vec![n],
            ..Self::default()
        }
    }

    /// Every call after the first `n` fails.
    pub fn fail_after(n: u64) -> Self {
        Self {
            fail_after: Some(n),
            ..Self::default()
        }
    }

    /// Each call is delayed by `by` on `timer`.
    pub fn delay(timer: Arc<dyn Timer>, by: Duration) -> Self {
        Self {
            delay: Some((timer, by)),
            ..Self::default()
        }
    }
}

/// The marker of a fault a [`Faults`] handle injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at call {call}")]
pub struct InjectedFault {
    /// The call number that failed.
    pub call: u64,
}

impl From<InjectedFault> for StoreError {
    fn from(f: InjectedFault) -> Self {
        StoreError::Unavailable {
            detail: f.to_string(),
        }
    }
}

/// A shared fault schedule: counts calls and says which fail. Clones share the count and the
/// plan, so a test can change the plan while the system runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    calls: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
    plan: Arc<Mutex<FaultPlan>>,
}

impl Faults {
    /// A schedule following `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        Self {
            plan: Arc::new(Mutex::new(plan)),
            ..Self::default()
        }
    }

    /// Replaces the plan and resets the call count.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock() = plan;
        self.calls.store(0, Ordering::SeqCst);
    }

    /// Calls seen so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Counts one call, sleeps if the plan delays, and fails if the plan says so. Call it at
    /// the start of every wrapped operation.
    pub async fn check(&self) -> Result<(), InjectedFault> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (fail, delay) = {
            let plan = self.plan.lock();
            let fail = plan.fail_calls.contains(&call) || plan.fail_after.is_some_and(|n| call > n);
            (fail, plan.delay.clone())
        };
        if let Some((timer, by)) = delay {
            timer.sleep(by).await;
        }
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            Err(InjectedFault { call })
        } else {
            Ok(())
        }
    }
}

/// A [`ModelBackend`] that fails (with `Unavailable`, a transient error) when its [`Faults`]
/// say so.
#[derive(Debug, Clone)]
pub struct FaultyModel<M> {
    inner: M,
    faults: Faults,
}

impl<M: ModelBackend> FaultyModel<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<M: ModelBackend> ModelBackend for FaultyModel<M> {
    fn id(&self) -> &ModelId {
        self.inner.id()
    }
    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        self.faults
            .check()
            .await
            .map_err(|f| ModelError::Unavailable {
                model: self.inner.id().clone(),
                detail: f.to_string(),
            })?;
        self.inner.complete(request).await
    }
}

/// A [`Connector`] that fails (with `Unavailable`) when its [`Faults`] say so; the inner
/// connector is not called then.
#[derive(Debug, Clone)]
pub struct FaultyConnector<C> {
    inner: C,
    faults: Faults,
}

impl<C: Connector> FaultyConnector<C> {
    /// Wraps `inner`.
    pub fn new(inner: C, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<C: Connector> Connector for FaultyConnector<C> {
    fn descriptor(&self) -> &ConnectorDescriptor {
        self.inner.descriptor()
    }
    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        self.faults
            .check()
            .await
            .map_err(|f| ConnectorError::Unavailable {
                connector: self.inner.descriptor().id.clone(),
                detail: f.to_string(),
            })?;
        self.inner.invoke(call).await
    }
}

/// An [`AuditLog`] whose appends and reads fail (with `Unavailable`) when its [`Faults`] say
/// so; a failed append appends nothing.
#[derive(Debug, Clone)]
pub struct FaultyAuditLog<L> {
    inner: L,
    faults: Faults,
}

impl<L: AuditLog> FaultyAuditLog<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<L: AuditLog> AuditLog for FaultyAuditLog<L> {
    async fn append(&self, record: AuditRecord) -> Result<ChainHead, AuditError> {
        self.faults.check().await?;
        self.inner.append(record).await
    }
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, AuditError> {
        self.faults.check().await?;
        self.inner.read(from, limit).await
    }
    async fn head(&self) -> Result<ChainHead, AuditError> {
        self.faults.check().await?;
        self.inner.head().await
    }
}

/// An [`Embedder`] that fails (with `Unavailable`) when its [`Faults`] say so.
#[derive(Debug, Clone)]
pub struct FaultyEmbedder<E> {
    inner: E,
    faults: Faults,
}

impl<E: Embedder> FaultyEmbedder<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<E: Embedder> Embedder for FaultyEmbedder<E> {
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        self.faults
            .check()
            .await
            .map_err(|f| EmbedError::Unavailable(f.to_string()))?;
        self.inner.embed(texts).await
    }
}

/// A [`CredentialVault`] that fails (with `Unavailable`) when its [`Faults`] say so.
#[derive(Debug, Clone)]
pub struct FaultyVault<V> {
    inner: V,
    faults: Faults,
}

impl<V: CredentialVault> FaultyVault<V> {
    /// Wraps `inner`.
    pub fn new(inner: V, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<V: CredentialVault> CredentialVault for FaultyVault<V> {
    async fn get(&self, handle: &CredentialHandle) -> Result<Secret, VaultError> {
        self.faults
            .check()
            .await
            .map_err(|f| VaultError::Unavailable(f.to_string()))?;
        self.inner.get(handle).await
    }
    async fn put(&self, handle: CredentialHandle, secret: Secret) -> Result<(), VaultError> {
        self.faults
            .check()
            .await
            .map_err(|f| VaultError::Unavailable(f.to_string()))?;
        self.inner.put(handle, secret).await
    }
    async fn remove(&self, handle: &CredentialHandle) -> Result<(), VaultError> {
        self.faults
            .check()
            .await
            .map_err(|f| VaultError::Unavailable(f.to_string()))?;
        self.inner.remove(handle).await
    }
}
