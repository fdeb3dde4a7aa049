//! Approval requests in table `approvals`.

use std::sync::Arc;

use aios_core::{AnchorId, ApprovalId, StoreError};
use aios_governance::{ApprovalRequest, ApprovalState, ApprovalStore, StateKind};
use async_trait::async_trait;
use rusqlite::OptionalExtension;

use crate::db::Db;

/// An [`ApprovalStore`] in SQLite: one row per request, the request as JSON beside indexed
/// columns for its anchor, state kind and creation time. Clones share the store's connections.
///
/// `transition` reads the state and writes the new one in one `BEGIN IMMEDIATE`
/// transaction: a true compare-and-set across processes.
#[derive(Debug, Clone)]
pub struct SqliteApprovalStore {
    db: Arc<Db>,
}

const TABLE: &str = "approvals";

fn kind_name(kind: StateKind) -> &'static str {
    match kind {
        StateKind::Pending => "pending",
        StateKind::Decided => "decided",
        StateKind::Redeemed => "redeemed",
        StateKind::Expired => "expired",
    }
}

impl SqliteApprovalStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ApprovalStore for SqliteApprovalStore {
    async fn insert(&self, request: ApprovalRequest) -> Result<(), StoreError> {
        let db = self.db.clone();
        let text = db.encode("an approval request", &request)?;
        let id = request.id.to_string();
        let anchor = request.anchor.to_string();
        let kind = kind_name(request.state.kind());
        let (secs, nanos) = (
            request.created_at.timestamp(),
            request.created_at.timestamp_subsec_nanos(),
        );
        let n = self
            .db
            .write("insert an approval request", move |tx| {
                tx.prepare_cached(
                    "INSERT INTO approvals (id, anchor, state, created_secs, created_nano, request)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut s| s.execute(rusqlite::params![id, anchor, kind, secs, nanos, text]))
                .map_err(|e| db.err("insert an approval request", e))
            })
            .await?;
        if n == 0 {
            return Err(StoreError::AlreadyExists {
                what: format!("approval {}", request.id),
            });
        }
        Ok(())
    }

    async fn get(&self, id: ApprovalId) -> Result<Option<ApprovalRequest>, StoreError> {
        let key = id.to_string();
        let db = self.db.clone();
        let k = key.clone();
        let text: Option<String> = self
            .db
            .read("read an approval request", move |tx| {
                tx.prepare_cached("SELECT request FROM approvals WHERE id = ?1")
                    .and_then(|mut s| s.query_row([&k], |r| r.get(0)).optional())
                    .map_err(|e| db.err("read an approval request", e))
            })
            .await?;
        text.map(|t| self.db.decode(TABLE, &key, &t)).transpose()
    }

    async fn pending(&self, anchor: Option<AnchorId>) -> Result<Vec<ApprovalRequest>, StoreError> {
        let anchor = anchor.map(|a| a.to_string());
        let db = self.db.clone();
        let rows: Vec<(String, String)> = self
            .db
            .read("list pending approvals", move |tx| {
                tx.prepare_cached(
                    "SELECT id, request FROM approvals
                 WHERE state = 'pending' AND (?1 IS NULL OR anchor = ?1)
                 ORDER BY created_secs, created_nano, id",
                )
                .and_then(|mut s| {
                    s.query_map([&anchor], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(|e| db.err("list pending approvals", e))
            })
            .await?;
        rows.iter()
            .map(|(id, text)| self.db.decode(TABLE, id, text))
            .collect()
    }

    async fn transition(
        &self,
        id: ApprovalId,
        expected: StateKind,
        next: ApprovalState,
    ) -> Result<ApprovalRequest, StoreError> {
        let db = self.db.clone();
        let key = id.to_string();
        self.db
            .write("transition an approval request", move |tx| {
                let text: Option<String> = tx
                    .prepare_cached("SELECT request FROM approvals WHERE id = ?1")
                    .and_then(|mut s| s.query_row([&key], |r| r.get(0)).optional())
                    .map_err(|e| db.err("read an approval request", e))?;
                let Some(text) = text else {
                    return Err(StoreError::NotFound {
                        what: format!("approval {id}"),
                    });
                };
                let mut request: ApprovalRequest = db.decode(TABLE, &key, &text)?;
                if request.state.kind() != expected {
                    return Err(StoreError::Conflict {
                        detail: format!(
                            "approval {id} is {:?}, expected {expected:?}",
                            request.state.kind()
                        ),
                    });
                }
                request.state = next.clone();
                let text = db.encode("an approval request", &request)?;
                tx.prepare_cached("UPDATE approvals SET state = ?2, request = ?3 WHERE id = ?1")
                    .and_then(|mut s| {
                        s.execute(rusqlite::params![
                            key,
                            kind_name(request.state.kind()),
                            text
                        ])
                    })
                    .map_err(|e| db.err("transition an approval request", e))?;
                Ok(request)
            })
            .await
    }
}
