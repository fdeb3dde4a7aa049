//! The hash-chained audit log in table `aios_audit_entries`.

use std::sync::Arc;

use aios_core::{
    AuditEntry, AuditError, AuditKey, AuditLog, AuditRecord, ChainHead, EntryHash, EntryMac,
    StoreError, StoredEntry, UnreadableEntry, AUDIT_SCHEMA_VERSION,
};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use crate::db::{to_sql_u64, Cached, Db, AUDIT_LOCK};

/// An [`AuditLog`] in PostgreSQL: one row per entry, keyed by its sequence number, with its
/// format version, hash and MAC in columns beside the entry as JSON. Clones share the pool.
///
/// `append` takes the log's advisory lock inside its transaction, reads the tail under it,
/// seals the entry against that tail and inserts it, then commits (which releases the lock):
/// however many workers, on however many machines, append at once, the log stays one
/// linear chain without gaps or duplicate sequence numbers. An append that fails (the
/// connection lost, the server gone) is rolled back by the server and leaves no entry.
///
/// A row of a newer format version or whose JSON does not decode is read as
/// [`StoredEntry::Unreadable`], naming the table, seq and database; verification links across
/// it through its `hash` column.
///
/// Opened with a key ([`crate::PgStore::audit_log_keyed`]), each appended entry also carries
/// the [`AuditKey`]'s MAC over its hash, in column `mac`.
#[derive(Debug, Clone)]
pub struct PgAuditLog {
    db: Arc<Db>,
    key: Option<AuditKey>,
}

fn parse_hash(hex_text: &str) -> Option<EntryHash> {
    serde_json::from_value(serde_json::Value::String(hex_text.to_string())).ok()
}

impl PgAuditLog {
    pub(crate) fn new(db: Arc<Db>, key: Option<AuditKey>) -> Self {
        Self { db, key }
    }

    fn decode(&self, seq: i64, v: i32, hash: &str, mac: Option<&str>, text: &str) -> StoredEntry {
        let where_ = format!(
            "table `aios_audit_entries` seq {seq} in `{}`",
            self.db.location()
        );
        let version = u16::try_from(v.max(0)).unwrap_or(u16::MAX);
        let parsed_mac = mac.map(str::parse::<EntryMac>).transpose();
        let mac_ok = parsed_mac.ok().flatten();
        let unreadable = |detail: String| {
            let prev = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|j| serde_json::from_value::<EntryHash>(j["prev"].clone()).ok());
            StoredEntry::Unreadable(UnreadableEntry {
                seq: u64::try_from(seq).unwrap_or(0),
                version,
                hash: parse_hash(hash),
                prev,
                mac: mac_ok,
                detail,
            })
        };
        if let Err(e) = parsed_mac {
            return unreadable(format!("{where_}: the mac column is not a mac: {e}"));
        }
        if !(1..=i32::from(AUDIT_SCHEMA_VERSION)).contains(&v) {
            return unreadable(format!(
                "{where_}: format version {v}; this build reads 1 to {AUDIT_SCHEMA_VERSION}"
            ));
        }
        match serde_json::from_str::<AuditEntry>(text) {
            Ok(e) => StoredEntry::from(AuditEntry { mac: mac_ok, ..e }),
            Err(e) => unreadable(format!("{where_}: {e}")),
        }
    }

    async fn head_of(&self, client: &impl GenericClient) -> Result<ChainHead, StoreError> {
        let rows = client
            .c_query(TAIL, &[])
            .await
            .map_err(|e| self.db.err("read the audit head", e))?;
        self.head_from(rows.first())
    }

    fn head_from(&self, row: Option<&tokio_postgres::Row>) -> Result<ChainHead, StoreError> {
        match row {
            None => Ok(ChainHead::default()),
            Some(r) => {
                let seq: i64 = r.get(0);
                let hash: &str = r.get(1);
                let hash: EntryHash =
                    self.db
                        .decode("aios_audit_entries", &seq, &format!("\"{hash}\""))?;
                Ok(ChainHead {
                    len: u64::try_from(seq).unwrap_or(0) + 1,
                    hash,
                })
            }
        }
    }
}

/// The newest entry.
const TAIL: &str = "SELECT seq, hash FROM aios_audit_entries ORDER BY seq DESC LIMIT 1";

impl PgAuditLog {
    /// The append itself, on the caller's task.
    async fn append_now(&self, record: AuditRecord) -> Result<ChainHead, AuditError> {
        let db = &self.db;
        let what = "append an audit entry";
        // the lock travels with BEGIN; the tail is read under it (a statement of its own,
        // so its snapshot is taken after the lock is held); the insert travels with COMMIT
        let (tx, _) = db
            .begin_with(what, "SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
            .await?;
        let tail = tx.query(TAIL, &[]).await?;
        let head = self.head_from(tail.first())?;
        let entry = AuditEntry::seal(head.len, head.hash, record)?;
        let text = db.encode("an audit entry", &entry)?;
        let mac = self.key.as_ref().map(|k| k.mac(&entry.hash).to_string());
        let seq = to_sql_u64(db.location(), "audit seq", entry.seq)?;
        let v = i32::from(entry.v);
        tx.commit_with(
            "INSERT INTO aios_audit_entries (seq, v, hash, entry, mac) VALUES ($1, $2, $3, $4, $5)",
            &[&seq, &v, &entry.hash.to_string(), &text, &mac],
        )
        .await?;
        Ok(entry.head())
    }
}

impl PgAuditLog {
    /// Appends `record` inside the caller's open transaction `tx`: the chain's advisory lock
    /// is taken there and held until that transaction ends, and the entry commits or rolls
    /// back with the caller's other writes (for a change and its audit record that must be
    /// written together). Callers take any lock of their own before this one, never after,
    /// and see the transaction through on a task of its own (see [`AuditLog::append`]).
    pub(crate) async fn append_in(
        &self,
        tx: &impl GenericClient,
        record: AuditRecord,
    ) -> Result<ChainHead, AuditError> {
        let db = &self.db;
        let what = "append an audit entry";
        tx.c_execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
            .await
            .map_err(|e| db.err(what, e))?;
        let tail = tx.c_query(TAIL, &[]).await.map_err(|e| db.err(what, e))?;
        let head = self.head_from(tail.first())?;
        let entry = AuditEntry::seal(head.len, head.hash, record)?;
        let text = db.encode("an audit entry", &entry)?;
        let mac = self.key.as_ref().map(|k| k.mac(&entry.hash).to_string());
        let seq = to_sql_u64(db.location(), "audit seq", entry.seq)?;
        let v = i32::from(entry.v);
        tx.c_execute(
            "INSERT INTO aios_audit_entries (seq, v, hash, entry, mac) VALUES ($1, $2, $3, $4, $5)",
            &[&seq, &v, &entry.hash.to_string(), &text, &mac],
        )
        .await
        .map_err(|e| db.err(what, e))?;
        Ok(entry.head())
    }
}

#[async_trait]
impl AuditLog for PgAuditLog {
    /// Runs on a Tokio task of its own (`tokio::spawn`): the append holds the chain's
    /// advisory lock from its first statement to its commit, and every writer on the
    /// database waits for it, so it must finish even when the future that asked is not
    /// polled meanwhile (a run's driver awaiting one call while a sibling task's append holds
    /// the lock would otherwise stall every worker). A caller dropped meanwhile does not
    /// cancel it: the entry is appended.
    async fn append(&self, record: AuditRecord) -> Result<ChainHead, AuditError> {
        let this = self.clone();
        tokio::spawn(async move { this.append_now(record).await })
            .await
            .map_err(|e| {
                AuditError::from(StoreError::Backend {
                    detail: format!("an audit append's task ended abnormally: {e}"),
                })
            })?
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, AuditError> {
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let what = "read the audit log";
        let client = self.db.client(what).await?;
        let stmt = client
            .prepare_cached(
                "SELECT seq, v, hash, mac, entry FROM aios_audit_entries
                 WHERE seq >= $1 ORDER BY seq LIMIT $2",
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        let rows = client
            .query(&stmt, &[&from, &limit])
            .await
            .map_err(|e| self.db.err(what, e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let mac: Option<String> = r.get(3);
                self.decode(r.get(0), r.get(1), r.get(2), mac.as_deref(), r.get(4))
            })
            .collect())
    }

    async fn head(&self) -> Result<ChainHead, AuditError> {
        let client = self.db.client("read the audit head").await?;
        Ok(self.head_of(&client).await?)
    }
}
