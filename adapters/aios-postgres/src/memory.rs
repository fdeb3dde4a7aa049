//! Memory record versions in table `aios_memory_versions`.

use std::sync::Arc;

use aios_core::{MemoryId, StoreError};
use aios_memory::{MemoryRecord, MemoryStore};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use crate::db::{is_unique_violation, Cached, Db};

/// A [`MemoryStore`] in PostgreSQL: one row per version, keyed by lineage id and version,
/// the record as JSON. Clones share the pool.
///
/// Lineage ids are stored as hyphenated lowercase UUIDs in a `COLLATE "C"` column, whose
/// order is the ids' order, so `scan` pages in ascending id order from the primary key. A
/// put that supersedes a version locks the latest row (`FOR UPDATE`), rewrites it (to set
/// `retired_at`) and inserts the new one in one transaction; a concurrent put of the same
/// version loses on the primary key and is reported as [`StoreError::Conflict`] (or
/// [`StoreError::AlreadyExists`] for a new lineage), writing nothing.
#[derive(Debug, Clone)]
pub struct PgMemoryStore {
    db: Arc<Db>,
}

const TABLE: &str = "aios_memory_versions";

fn not_found(id: MemoryId, version: Option<u32>) -> StoreError {
    StoreError::NotFound {
        what: match version {
            Some(v) => format!("memory {id} version {v}"),
            None => format!("memory {id}"),
        },
    }
}

fn row_key(id: &str, version: i64) -> String {
    format!("{id} v{version}")
}

impl PgMemoryStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    async fn insert(
        &self,
        client: &impl GenericClient,
        record: &MemoryRecord,
    ) -> Result<(), StoreError> {
        let text = self.db.encode("a memory record", record)?;
        let version = i64::from(record.version);
        client
            .c_execute(
                "INSERT INTO aios_memory_versions (id, version, record) VALUES ($1, $2, $3)",
                &[&record.id.to_string(), &version, &text],
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict {
                        detail: format!(
                            "memory {} version {} was written concurrently",
                            record.id, record.version
                        ),
                    }
                } else {
                    self.db.err("insert a memory record", e)
                }
            })?;
        Ok(())
    }
}

#[async_trait]
impl MemoryStore for PgMemoryStore {
    async fn put(
        &self,
        record: MemoryRecord,
        expected_previous: Option<u32>,
    ) -> Result<(), StoreError> {
        let db = &self.db;
        let what = "put a memory record";
        let id = record.id.to_string();
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        let latest = tx
            .c_query_opt(
                "SELECT version, record FROM aios_memory_versions WHERE id = $1
                 ORDER BY version DESC LIMIT 1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(|e| db.err(what, e))?
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
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
                match self.insert(&tx, &record).await {
                    Err(StoreError::Conflict { .. }) => {
                        return Err(StoreError::AlreadyExists {
                            what: format!("memory {}", record.id),
                        })
                    }
                    other => other?,
                }
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
                    db.decode(TABLE, &row_key(&id, latest_version), &latest_text)?;
                prev.retired_at = Some(record.recorded_at);
                let prev_text = db.encode("a memory record", &prev)?;
                tx.c_execute(
                    "UPDATE aios_memory_versions SET record = $3 WHERE id = $1 AND version = $2",
                    &[&id, &latest_version, &prev_text],
                )
                .await
                .map_err(|e| db.err("retire a memory version", e))?;
                self.insert(&tx, &record).await?;
            }
        }
        tx.commit().await.map_err(|e| db.err(what, e))
    }

    async fn get(&self, id: MemoryId, version: Option<u32>) -> Result<MemoryRecord, StoreError> {
        let what = "read a memory record";
        let key = id.to_string();
        let client = self.db.client(what).await?;
        let row = match version {
            None => {
                client
                    .c_query_opt(
                        "SELECT version, record FROM aios_memory_versions WHERE id = $1
                         ORDER BY version DESC LIMIT 1",
                        &[&key],
                    )
                    .await
            }
            Some(v) => {
                client
                    .c_query_opt(
                        "SELECT version, record FROM aios_memory_versions
                         WHERE id = $1 AND version = $2",
                        &[&key, &i64::from(v)],
                    )
                    .await
            }
        }
        .map_err(|e| self.db.err(what, e))?;
        let row = row.ok_or_else(|| not_found(id, version))?;
        self.db
            .decode(TABLE, &row_key(&key, row.get(0)), row.get::<_, &str>(1))
    }

    async fn versions(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, StoreError> {
        let what = "read memory versions";
        let key = id.to_string();
        let client = self.db.client(what).await?;
        let rows = client
            .c_query(
                "SELECT version, record FROM aios_memory_versions WHERE id = $1 ORDER BY version",
                &[&key],
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        if rows.is_empty() {
            return Err(not_found(id, None));
        }
        rows.iter()
            .map(|r| {
                self.db
                    .decode(TABLE, &row_key(&key, r.get(0)), r.get::<_, &str>(1))
            })
            .collect()
    }

    async fn scan(
        &self,
        after: Option<MemoryId>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        let what = "scan memory";
        // the empty string sorts before every id
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.db.client(what).await?;
        let rows = client
            .c_query(
                "SELECT id, version, record FROM aios_memory_versions
                 WHERE id IN (SELECT DISTINCT id FROM aios_memory_versions
                              WHERE id > $1 ORDER BY id LIMIT $2)
                 ORDER BY id, version",
                &[&after, &limit],
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        rows.iter()
            .map(|r| {
                self.db.decode(
                    TABLE,
                    &row_key(r.get::<_, &str>(0), r.get(1)),
                    r.get::<_, &str>(2),
                )
            })
            .collect()
    }

    async fn delete(&self, id: MemoryId) -> Result<(), StoreError> {
        let what = "delete a memory lineage";
        let key = id.to_string();
        let client = self.db.client(what).await?;
        let n = client
            .c_execute("DELETE FROM aios_memory_versions WHERE id = $1", &[&key])
            .await
            .map_err(|e| self.db.err(what, e))?;
        if n == 0 {
            return Err(not_found(id, None));
        }
        Ok(())
    }
}
