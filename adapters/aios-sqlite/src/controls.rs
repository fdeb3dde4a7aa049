//! Operator control records in table `control_records`.

use std::sync::Arc;

use aios_core::StoreError;
use aios_governance::{ControlRecord, ControlStore};
use async_trait::async_trait;

use crate::db::Db;

/// The version of the stored record format (column `v`); a newer one is refused with
/// [`StoreError::UnsupportedVersion`] rather than misread.
const RECORD_VERSION: u32 = 1;

/// A [`ControlStore`] in SQLite: one row per applied control, in append order (`seq`), the
/// record as JSON beside its format version. Every append is one fsynced commit under
/// [`crate::Durability::Full`], so a kill switch that returned `Ok` survives a crash or a
/// power loss; [`aios_governance::Controls::open`] over it re-installs the controls after a
/// restart. Clones share the store's connections.
#[derive(Debug, Clone)]
pub struct SqliteControlStore {
    db: Arc<Db>,
}

impl SqliteControlStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ControlStore for SqliteControlStore {
    async fn append(&self, record: &ControlRecord) -> Result<(), StoreError> {
        let db = self.db.clone();
        let text = db.encode("a control record", record)?;
        self.db
            .write("append a control record", move |tx| {
                tx.prepare_cached("INSERT INTO control_records (v, record) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(rusqlite::params![RECORD_VERSION, text]))
                    .map_err(|e| db.err("append a control record", e))?;
                Ok::<_, StoreError>(())
            })
            .await
    }

    async fn load(&self) -> Result<Vec<ControlRecord>, StoreError> {
        let db = &self.db;
        let d = db.clone();
        let rows: Vec<(i64, u32, String)> = db
            .read("read control records", move |tx| {
                tx.prepare_cached("SELECT seq, v, record FROM control_records ORDER BY seq")
                    .and_then(|mut s| {
                        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| d.err("read control records", e))
            })
            .await?;
        rows.into_iter()
            .map(|(seq, v, text)| {
                if v > RECORD_VERSION {
                    return Err(StoreError::UnsupportedVersion {
                        location: format!(
                            "table `control_records` row `{seq}` in `{}`",
                            db.location()
                        ),
                        found: v,
                        supported: RECORD_VERSION,
                    });
                }
                db.decode("control_records", &seq, &text)
            })
            .collect()
    }
}
