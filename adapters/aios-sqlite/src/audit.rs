//! The hash-chained audit log in table `audit_entries`.

use std::sync::Arc;

use aios_core::{
    AuditEntry, AuditError, AuditKey, AuditLog, AuditRecord, ChainHead, EntryHash, EntryMac,
    StoreError, StoredEntry, UnreadableEntry, AUDIT_SCHEMA_VERSION,
};
use async_trait::async_trait;
use rusqlite::OptionalExtension;

use crate::db::{to_sql_u64, Db};

/// An [`AuditLog`] in SQLite: one row per entry, keyed by its sequence number, with its
/// format version and hash in columns beside the entry as JSON. Clones share the store's
/// connections.
///
/// A row of a newer format version (the `v` column or the entry's own) or whose JSON does not
/// decode is read as [`StoredEntry::Unreadable`], naming the table, seq and file; the other
/// rows read as usual, and verification links across it through its `hash` column.
///
/// `append` reads the head, seals the entry and inserts it in one `BEGIN IMMEDIATE`
/// transaction, so sequence numbers are assigned without gaps or duplicates even when several
/// processes append to the same file.
///
/// Opened with a key ([`crate::SqliteStore::audit_log_keyed`]), each appended entry also
/// carries the [`AuditKey`]'s MAC over its hash, in column `mac` (not in the JSON). Reading
/// returns it as [`AuditEntry::mac`], so [`aios_core::AuditLogExt::verify_keyed`] finds rows
/// written by anyone without the key; plain `verify` checks the hash chain only.
#[derive(Debug, Clone)]
pub struct SqliteAuditLog {
    db: Arc<Db>,
    key: Option<AuditKey>,
}

impl SqliteAuditLog {
    pub(crate) fn new(db: Arc<Db>, key: Option<AuditKey>) -> Self {
        Self { db, key }
    }

    /// Seals `record` onto the chain's head and inserts it, inside the caller's write
    /// transaction: for a change of another table that must be committed together with its
    /// audit record (the humans' credentials).
    pub(crate) fn append_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        record: AuditRecord,
    ) -> Result<ChainHead, AuditError> {
        let db = &self.db;
        let head = head_of(db, tx)?;
        // the JSON holds the sealed entry; its MAC goes in its own column
        let entry = AuditEntry::seal(head.len, head.hash, record)?;
        let text = db.encode("an audit entry", &entry)?;
        let mac = self.key.as_ref().map(|k| k.mac(&entry.hash).to_string());
        let seq = to_sql_u64(db.location(), "audit seq", entry.seq)?;
        tx.prepare_cached(
            "INSERT INTO audit_entries (seq, v, hash, entry, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                seq,
                entry.v,
                entry.hash.to_string(),
                text,
                mac
            ])
        })
        .map_err(|e| db.err("append an audit entry", e))?;
        Ok(entry.head())
    }

    /// One row as a stored position: an entry of a supported version that decodes, or the
    /// finding that this build cannot read it, naming the row and keeping the stored hashes
    /// that can still be told (the `hash` column, and `prev` if the JSON still parses), so
    /// verification links across it.
    fn decode(&self, seq: i64, v: i64, hash: &str, mac: Option<&str>, text: &str) -> StoredEntry {
        let where_ = format!(
            "table `audit_entries` seq {seq} in `{}`",
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
        if !(1..=i64::from(AUDIT_SCHEMA_VERSION)).contains(&v) {
            return unreadable(format!(
                "{where_}: format version {v}; this build reads 1 to {AUDIT_SCHEMA_VERSION}"
            ));
        }
        match serde_json::from_str::<AuditEntry>(text) {
            // the entry's own version decides too (`From` reports an unknown one)
            Ok(e) => StoredEntry::from(AuditEntry { mac: mac_ok, ..e }),
            Err(e) => unreadable(format!("{where_}: {e}")),
        }
    }
}

fn parse_hash(hex_text: &str) -> Option<EntryHash> {
    serde_json::from_value(serde_json::Value::String(hex_text.to_string())).ok()
}

fn head_of(db: &Db, tx: &rusqlite::Transaction<'_>) -> Result<ChainHead, StoreError> {
    let last: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(|e| db.err("read the audit head", e))?;
    match last {
        None => Ok(ChainHead::default()),
        Some((seq, hash)) => {
            let hash: EntryHash = db.decode("audit_entries", &seq, &format!("\"{hash}\""))?;
            Ok(ChainHead {
                len: u64::try_from(seq).unwrap_or(0) + 1,
                hash,
            })
        }
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<ChainHead, AuditError> {
        let this = self.clone();
        self.db
            .write("append an audit entry", move |tx| {
                // the record is cloned: a write may run again if its group commit fails
                this.append_in(tx, record.clone())
            })
            .await
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, AuditError> {
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        type Row = (i64, i64, String, Option<String>, String);
        let db = self.db.clone();
        let rows: Vec<Row> = self
            .db
            .read("read the audit log", move |tx| {
                tx.prepare_cached(
                    "SELECT seq, v, hash, mac, entry FROM audit_entries
                 WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map([from, limit], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect()
                })
                .map_err(|e| db.err("read the audit log", e))
            })
            .await?;
        Ok(rows
            .iter()
            .map(|(seq, v, hash, mac, text)| self.decode(*seq, *v, hash, mac.as_deref(), text))
            .collect())
    }

    async fn head(&self) -> Result<ChainHead, AuditError> {
        let db = self.db.clone();
        self.db
            .read("read the audit head", move |tx| head_of(&db, tx))
            .await
    }
}
