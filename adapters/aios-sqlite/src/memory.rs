//! Memory record versions in table `memory_versions`.

use std::sync::Arc;

use aios_core::{MemoryId, StoreError};
use aios_memory::{MemoryRecord, MemoryStore};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction};

use crate::db::Db;

/// A [`MemoryStore`] in SQLite: one row per version, keyed by lineage id and version, the
/// record as JSON. Clones share the store's connections.
///
/// Lineage ids are stored as hyphenated lowercase UUIDs, whose text order is the ids' order,
/// so `scan` pages in ascending id order straight from the primary key. A put that supersedes
/// a version rewrites the previous row (to set `retired_at`) and inserts the new one in one
/// transaction.
#[derive(Debug, Clone)]
pub struct SqliteMemoryStore {
    db: Arc<Db>,
}

const TABLE: &str = "memory_versions";

fn not_found(id: MemoryId, version: Option<u32>) -> StoreError {
    StoreError::NotFound {
        what: match version {
            Some(v) => format!("memory {id} version {v}"),
            None => format!("memory {id}"),
        },
    }
}

impl SqliteMemoryStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    fn row_key(id: &str, version: i64) -> String {
        format!("{id} v{version}")
    }

    fn latest(&self, tx: &Transaction<'_>, id: &str) -> Result<Option<(i64, String)>, StoreError> {
        tx.prepare_cached(
            "SELECT version, record FROM memory_versions WHERE id = ?1 ORDER BY version DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(|e| self.db.err("read a memory record", e))
    }

    fn insert(&self, tx: &Transaction<'_>, record: &MemoryRecord) -> Result<(), StoreError> {
        let text = self.db.encode("a memory record", record)?;
        tx.prepare_cached("INSERT INTO memory_versions (id, version, record) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    record.id.to_string(),
                    i64::from(record.version),
                    text
                ])
            })
            .map_err(|e| self.db.err("insert a memory record", e))?;
        Ok(())
    }
}

#[async_trait]
impl MemoryStore for SqliteMemoryStore {
    async fn put(
        &self,
        record: MemoryRecord,
        expected_previous: Option<u32>,
    ) -> Result<(), StoreError> {
        let this = self.clone();
        let id = record.id.to_string();
        self.db.write("put a memory record", move |tx| {
            let db = &this.db;
            let latest = this.latest(tx, &id)?;
            match expected_previous {
                None => {
                    if latest.is_some() {
                        return Err(StoreError::AlreadyExists {
                            what: format!("memory {}", record.id),
                        });
                    }
                    if record.version != 1 {
                        return Err(StoreError::Conflict {
                            detail: format!(
                                "memory {}: a new lineage starts at version 1, not {}",
                                record.id, record.version
                            ),
                        });
                    }
                    this.insert(tx, &record)
                }
                Some(expected) => {
                    let Some((latest_version, latest_text)) = latest else {
                        return Err(StoreError::Conflict {
                            detail: format!(
                                "memory {}: expected version {expected}, lineage does not exist",
                                record.id
                            ),
                        });
                    };
                    if latest_version != i64::from(expected)
                        || record.version != expected.saturating_add(1)
                    {
                        return Err(StoreError::Conflict {
                            detail: format!(
                                "memory {}: expected latest version {expected} and new version {}, found latest {latest_version} and new {}",
                                record.id,
                                expected.saturating_add(1),
                                record.version
                            ),
                        });
                    }
                    let mut prev: MemoryRecord =
                        db.decode(TABLE, &Self::row_key(&id, latest_version), &latest_text)?;
                    prev.retired_at = Some(record.recorded_at);
                    let prev_text = db.encode("a memory record", &prev)?;
                    tx.prepare_cached(
                        "UPDATE memory_versions SET record = ?3 WHERE id = ?1 AND version = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(rusqlite::params![id, latest_version, prev_text])
                    })
                    .map_err(|e| db.err("retire a memory version", e))?;
                    this.insert(tx, &record)
                }
            }
        })
        .await
    }

    async fn get(&self, id: MemoryId, version: Option<u32>) -> Result<MemoryRecord, StoreError> {
        let key = id.to_string();
        let (this, k) = (self.clone(), key.clone());
        let row: Option<(i64, String)> = self
            .db
            .read("read a memory record", move |tx| match version {
                None => this.latest(tx, &k),
                Some(v) => tx
                    .prepare_cached(
                        "SELECT version, record FROM memory_versions WHERE id = ?1 AND version = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(rusqlite::params![k, i64::from(v)], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()
                    })
                    .map_err(|e| this.db.err("read a memory record", e)),
            })
            .await?;
        let (v, text) = row.ok_or_else(|| not_found(id, version))?;
        self.db.decode(TABLE, &Self::row_key(&key, v), &text)
    }

    async fn versions(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, StoreError> {
        let key = id.to_string();
        let (db, k) = (self.db.clone(), key.clone());
        let rows: Vec<(i64, String)> = self
            .db
            .read("read memory versions", move |tx| {
                tx.prepare_cached(
                    "SELECT version, record FROM memory_versions WHERE id = ?1 ORDER BY version",
                )
                .and_then(|mut s| s.query_map([&k], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| db.err("read memory versions", e))
            })
            .await?;
        if rows.is_empty() {
            return Err(not_found(id, None));
        }
        rows.iter()
            .map(|(v, text)| self.db.decode(TABLE, &Self::row_key(&key, *v), text))
            .collect()
    }

    async fn scan(
        &self,
        after: Option<MemoryId>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        // the empty string sorts before every id
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let db = self.db.clone();
        let rows: Vec<(String, i64, String)> = self.db.read("scan memory", move |tx| {
            tx.prepare_cached(
                "SELECT id, version, record FROM memory_versions
                 WHERE id IN (SELECT DISTINCT id FROM memory_versions WHERE id > ?1 ORDER BY id LIMIT ?2)
                 ORDER BY id, version",
            )
            .and_then(|mut s| {
                s.query_map(rusqlite::params![after, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(|e| db.err("scan memory", e))
        })
        .await?;
        rows.iter()
            .map(|(id, v, text)| self.db.decode(TABLE, &Self::row_key(id, *v), text))
            .collect()
    }

    async fn delete(&self, id: MemoryId) -> Result<(), StoreError> {
        let key = id.to_string();
        let db = self.db.clone();
        let n = self
            .db
            .write("delete a memory lineage", move |tx| {
                tx.prepare_cached("DELETE FROM memory_versions WHERE id = ?1")
                    .and_then(|mut s| s.execute([&key]))
                    .map_err(|e| db.err("delete a memory lineage", e))
            })
            .await?;
        if n == 0 {
            return Err(not_found(id, None));
        }
        Ok(())
    }
}
