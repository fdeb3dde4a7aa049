//! A store that fails when its fault schedule says so.

use aios_core::testing::Faults;
use aios_core::{MemoryId, StoreError};
use async_trait::async_trait;

use crate::{MemoryRecord, MemoryStore};

/// A [`MemoryStore`] that consults a [`Faults`] schedule before every call and fails with
/// [`StoreError::Unavailable`] (a transient error) when told to; the inner store is not called
/// then, so a failed call changes nothing.
#[derive(Debug)]
pub struct FaultyMemoryStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: MemoryStore> FaultyMemoryStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: MemoryStore> MemoryStore for FaultyMemoryStore<S> {
    async fn put(
        &self,
        record: MemoryRecord,
        expected_previous: Option<u32>,
    ) -> Result<(), StoreError> {
        self.faults.check().await?;
        self.inner.put(record, expected_previous).await
    }

    async fn get(&self, id: MemoryId, version: Option<u32>) -> Result<MemoryRecord, StoreError> {
        self.faults.check().await?;
        self.inner.get(id, version).await
    }

    async fn get_with(
        &self,
        id: MemoryId,
        version: Option<u32>,
        options: crate::GetOptions,
    ) -> Result<MemoryRecord, StoreError> {
        self.faults.check().await?;
        self.inner.get_with(id, version, options).await
    }

    async fn versions(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, StoreError> {
        self.faults.check().await?;
        self.inner.versions(id).await
    }

    async fn scan(
        &self,
        after: Option<MemoryId>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        self.faults.check().await?;
        self.inner.scan(after, limit).await
    }

    async fn delete(&self, id: MemoryId) -> Result<(), StoreError> {
        self.faults.check().await?;
        self.inner.delete(id).await
    }
}
