//! Operator control records in table `aios_control_records`.

use std::sync::Arc;

use aios_core::StoreError;
use aios_governance::{ControlRecord, ControlStore};
use async_trait::async_trait;

use crate::db::{Cached, Db, CONTROL_LOCK};

/// The version of the stored record format (column `v`); a newer one is refused with
/// [`StoreError::UnsupportedVersion`] rather than misread.
const RECORD_VERSION: i32 = 1;

/// A [`ControlStore`] in PostgreSQL: one row per applied control, in append order (`seq`),
/// the record as JSON beside its format version. Appends take an advisory lock inside their
/// transaction, so the order of `seq` is the order in which appends committed, whichever
/// worker made them; a control that returned `Ok` is committed (durable as the server's
/// settings make commits), so a kill switch pulled on one worker holds for every worker that
/// opens [`aios_governance::Controls::open`] over the same database. Clones share the pool.
#[derive(Debug, Clone)]
pub struct PgControlStore {
    db: Arc<Db>,
}

impl PgControlStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ControlStore for PgControlStore {
    async fn append(&self, record: &ControlRecord) -> Result<(), StoreError> {
        let db = &self.db;
        let what = "append a control record";
        let text = db.encode("a control record", record)?;
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        tx.c_execute("SELECT pg_advisory_xact_lock($1)", &[&CONTROL_LOCK])
            .await
            .map_err(|e| db.err(what, e))?;
        tx.c_execute(
            "INSERT INTO aios_control_records (v, record) VALUES ($1, $2)",
            &[&RECORD_VERSION, &text],
        )
        .await
        .map_err(|e| db.err(what, e))?;
        tx.commit().await.map_err(|e| db.err(what, e))
    }

    async fn load(&self) -> Result<Vec<ControlRecord>, StoreError> {
        let db = &self.db;
        let what = "read control records";
        let client = db.client(what).await?;
        let rows = client
            .c_query(
                "SELECT seq, v, record FROM aios_control_records ORDER BY seq",
                &[],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let v: i32 = r.get(1);
                if v > RECORD_VERSION {
                    return Err(StoreError::UnsupportedVersion {
                        location: format!(
                            "table `aios_control_records` row `{seq}` in `{}`",
                            db.location()
                        ),
                        found: u32::try_from(v).unwrap_or(0),
                        supported: RECORD_VERSION as u32,
                    });
                }
                db.decode("aios_control_records", &seq, r.get::<_, &str>(2))
            })
            .collect()
    }
}
