//! The storage port for versioned memory records, and its in-memory implementation.

use std::collections::BTreeMap;
use std::fmt::Debug;

use aios_core::{MemoryId, StoreError};
use async_trait::async_trait;
use parking_lot::RwLock;

use crate::MemoryRecord;

/// Where memory records live: lineages of immutable versions.
///
/// The store is deliberately dumb: it keeps versions in order and enforces the
/// expected-previous-version precondition, nothing else. Checksums, indexes, grants and
/// retrieval live in [`crate::Memory`], so every backend recalls identically. Every method
/// is atomic: a call that returns an error changed nothing.
///
/// Run [`crate::testing::memory_store_conformance`] (feature `testing`) against every
/// implementation.
#[async_trait]
pub trait MemoryStore: Send + Sync + Debug {
    /// Appends `record` as the next version of its lineage.
    ///
    /// - `expected_previous == None`: the lineage must not exist and `record.version` must be
    ///   1; otherwise [`StoreError::AlreadyExists`] (lineage exists) or
    ///   [`StoreError::Conflict`] (wrong version).
    /// - `expected_previous == Some(v)`: the latest stored version must be `v` and
    ///   `record.version` must be `v + 1`; otherwise [`StoreError::Conflict`] (also when the
    ///   lineage does not exist).
    ///
    /// On success the previous version's `retired_at` is set to `record.recorded_at`; the
    /// record itself is stored as given (no field is checked or changed).
    async fn put(
        &self,
        record: MemoryRecord,
        expected_previous: Option<u32>,
    ) -> Result<(), StoreError>;

    /// One version of a lineage, or the latest if `version` is `None`.
    /// [`StoreError::NotFound`] if the lineage or version does not exist.
    async fn get(&self, id: MemoryId, version: Option<u32>) -> Result<MemoryRecord, StoreError>;

    /// Like [`MemoryStore::get`], but with `options.embedding == false` the record comes back
    /// with `embedding: None`, so the backend need not copy or decode the vector (recall
    /// asks this way unless the query wants embeddings). Every other field is as `get`
    /// returns it. The default calls `get` and drops the vector; a backend that can skip it
    /// overrides this, and a wrapper forwards it.
    async fn get_with(
        &self,
        id: MemoryId,
        version: Option<u32>,
        options: GetOptions,
    ) -> Result<MemoryRecord, StoreError> {
        let mut record = self.get(id, version).await?;
        if !options.embedding {
            record.embedding = None;
        }
        Ok(record)
    }

    /// Every version of a lineage, oldest first. [`StoreError::NotFound`] if it does not exist.
    async fn versions(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, StoreError>;

    /// A page of lineages in ascending id order: every version of up to `limit` lineages whose
    /// id is greater than `after` (all lineages when `after` is `None`), ordered by id then
    /// version. An empty page means the scan is done. Used to rebuild indexes and to export.
    async fn scan(
        &self,
        after: Option<MemoryId>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, StoreError>;

    /// Removes a lineage with all its versions (used by pruning). [`StoreError::NotFound`] if
    /// it does not exist.
    async fn delete(&self, id: MemoryId) -> Result<(), StoreError>;
}

/// What [`MemoryStore::get_with`] returns besides the record's plain fields.
///
/// ```
/// use aios_core::{ManualClock, MemoryId, Clock};
/// use aios_memory::{GetOptions, InMemoryMemoryStore, MemoryStore};
/// use aios_memory::testing::sample_record;
/// # futures::executor::block_on(async {
/// let store = InMemoryMemoryStore::new();
/// let id = MemoryId::from_name("m");
/// store.put(sample_record(id, 1, "hello", ManualClock::default().now(), None), None).await?;
/// let light = store.get_with(id, None, GetOptions::default()).await?;
/// assert!(light.embedding.is_none());
/// let full = store.get_with(id, None, GetOptions::with_embedding()).await?;
/// assert_eq!(full, store.get(id, None).await?);
/// # Ok::<(), aios_core::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GetOptions {
    /// Whether the embedding is wanted (default `false`).
    pub embedding: bool,
}

impl GetOptions {
    /// Options asking for the embedding too.
    pub fn with_embedding() -> Self {
        Self { embedding: true }
    }
}

/// A [`MemoryStore`] in process memory; always compiled, the reference implementation.
///
/// ```
/// use aios_memory::{InMemoryMemoryStore, MemoryStore};
/// # futures::executor::block_on(async {
/// let store = InMemoryMemoryStore::new();
/// assert!(store.scan(None, 10).await?.is_empty());
/// # Ok::<(), aios_core::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct InMemoryMemoryStore {
    /// Keyed by the id's 128 bits (big-endian, so ordered like the ids) for cheap comparisons.
    lineages: RwLock<BTreeMap<u128, Vec<MemoryRecord>>>,
}

impl InMemoryMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many lineages it holds.
    pub fn len(&self) -> usize {
        self.lineages.read().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.lineages.read().is_empty()
    }

    /// Changes a stored version in place, bypassing every check: for tests that simulate
    /// corruption (feature `testing`). Returns whether the version existed.
    #[cfg(feature = "testing")]
    pub fn tamper(&self, id: MemoryId, version: u32, f: impl FnOnce(&mut MemoryRecord)) -> bool {
        let mut map = self.lineages.write();
        match map
            .get_mut(&key(id))
            .and_then(|vs| vs.iter_mut().find(|r| r.version == version))
        {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }

    /// Removes one version in place, bypassing every check (feature `testing`), to simulate a
    /// broken version chain. Returns whether it existed.
    #[cfg(feature = "testing")]
    pub fn tamper_remove_version(&self, id: MemoryId, version: u32) -> bool {
        let mut map = self.lineages.write();
        match map.get_mut(&key(id)) {
            Some(vs) => {
                let before = vs.len();
                vs.retain(|r| r.version != version);
                before != vs.len()
            }
            None => false,
        }
    }
}

fn key(id: MemoryId) -> u128 {
    id.as_uuid().as_u128()
}

fn not_found(id: MemoryId, version: Option<u32>) -> StoreError {
    StoreError::NotFound {
        what: match version {
            Some(v) => format!("memory {id} version {v}"),
            None => format!("memory {id}"),
        },
    }
}

#[async_trait]
impl MemoryStore for InMemoryMemoryStore {
    async fn put(
        &self,
        record: MemoryRecord,
        expected_previous: Option<u32>,
    ) -> Result<(), StoreError> {
        let mut map = self.lineages.write();
        match expected_previous {
            None => match map.entry(key(record.id)) {
                std::collections::btree_map::Entry::Occupied(_) => Err(StoreError::AlreadyExists {
                    what: format!("memory {}", record.id),
                }),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    if record.version != 1 {
                        return Err(StoreError::Conflict {
                            detail: format!(
                                "memory {}: a new lineage starts at version 1, not {}",
                                record.id, record.version
                            ),
                        });
                    }
                    slot.insert(vec![record]);
                    Ok(())
                }
            },
            Some(expected) => {
                let Some(versions) = map.get_mut(&key(record.id)) else {
                    return Err(StoreError::Conflict {
                        detail: format!(
                            "memory {}: expected version {expected}, lineage does not exist",
                            record.id
                        ),
                    });
                };
                let latest = versions.last().map_or(0, |r| r.version);
                if latest != expected || record.version != expected.saturating_add(1) {
                    return Err(StoreError::Conflict {
                        detail: format!(
                            "memory {}: expected latest version {expected} and new version {}, found latest {latest} and new {}",
                            record.id,
                            expected.saturating_add(1),
                            record.version
                        ),
                    });
                }
                if let Some(prev) = versions.last_mut() {
                    prev.retired_at = Some(record.recorded_at);
                }
                versions.push(record);
                Ok(())
            }
        }
    }

    async fn get(&self, id: MemoryId, version: Option<u32>) -> Result<MemoryRecord, StoreError> {
        let map = self.lineages.read();
        let versions = map.get(&key(id)).ok_or_else(|| not_found(id, version))?;
        let found = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|r| r.version == v),
        };
        found.cloned().ok_or_else(|| not_found(id, version))
    }

    async fn get_with(
        &self,
        id: MemoryId,
        version: Option<u32>,
        options: GetOptions,
    ) -> Result<MemoryRecord, StoreError> {
        if options.embedding {
            return self.get(id, version).await;
        }
        let map = self.lineages.read();
        let versions = map.get(&key(id)).ok_or_else(|| not_found(id, version))?;
        let found = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|r| r.version == v),
        };
        found
            .map(MemoryRecord::clone_without_embedding)
            .ok_or_else(|| not_found(id, version))
    }

    async fn versions(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, StoreError> {
        self.lineages
            .read()
            .get(&key(id))
            .cloned()
            .ok_or_else(|| not_found(id, None))
    }

    async fn scan(
        &self,
        after: Option<MemoryId>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        use std::ops::Bound;
        let map = self.lineages.read();
        let lower = match after {
            Some(a) => Bound::Excluded(key(a)),
            None => Bound::Unbounded,
        };
        Ok(map
            .range((lower, Bound::Unbounded))
            .take(limit)
            .flat_map(|(_, vs)| vs.iter().cloned())
            .collect())
    }

    async fn delete(&self, id: MemoryId) -> Result<(), StoreError> {
        self.lineages
            .write()
            .remove(&key(id))
            .map(|_| ())
            .ok_or_else(|| not_found(id, None))
    }
}
