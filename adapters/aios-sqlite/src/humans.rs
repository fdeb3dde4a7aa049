//! The credentials of the humans who act through the operator's surfaces (the `aios`
//! command line and the web console), in table `aios_humans`.

use std::sync::Arc;

use aios_core::{AuditRecord, StoreError, Timestamp};
use rusqlite::OptionalExtension;

use crate::audit::SqliteAuditLog;
use crate::db::Db;

/// A human's credential as stored: who, since when and given by whom. The token itself is
/// never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredCredential {
    /// The human's key in the governance model.
    pub name: String,
    /// When the credential was given.
    pub added_at: Timestamp,
    /// The human who gave it; `None` for the first human of the file.
    pub added_by: Option<String>,
}

/// Human credentials in the SQLite file: one row per human, holding the SHA-256 of the
/// human's token (64 lowercase hex digits; anything else is refused, so a token cannot be
/// stored in clear by mistake). Hashing and making tokens is the caller's business; this
/// store keeps the hashes and answers whose hash one is. Clones share the store's
/// connections.
///
/// Every change is one `BEGIN IMMEDIATE` transaction, so the two rules of who may add hold
/// also between processes on one file: the first human is added only into an empty table
/// (of two first additions racing, one wins and the other is [`StoreError::Conflict`]), and
/// every later one names an adder who has a credential when the addition commits.
///
/// [`SqliteHumanCredentials::add_audited`] and [`SqliteHumanCredentials::remove_audited`]
/// write the change and its audit record in that one transaction: both are written or
/// neither, also when the process is killed half-way.
#[derive(Debug, Clone)]
pub struct SqliteHumanCredentials {
    db: Arc<Db>,
}

/// Whether `text` is a SHA-256 in lowercase hex.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl SqliteHumanCredentials {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    fn check(&self, name: &str, token_sha256: &str) -> Result<(), StoreError> {
        if name.trim().is_empty() {
            return Err(StoreError::Backend {
                detail: format!(
                    "a human credential needs a name (in `{}`)",
                    self.db.location()
                ),
            });
        }
        if !is_sha256_hex(token_sha256) {
            return Err(StoreError::Backend {
                detail: format!(
                    "a credential for `{}` must be a SHA-256 in lowercase hex (64 digits), \
                     never a token",
                    self.db.location()
                ),
            });
        }
        Ok(())
    }

    /// Gives `name` the credential whose token hashes to `token_sha256`, given by
    /// `added_by` at `at`.
    ///
    /// `added_by: None` adds the first human: only into an empty table. `Some(adder)`: the
    /// adder must have a credential. Both are checked in the transaction that inserts.
    ///
    /// Errors: [`StoreError::AlreadyExists`] if `name` has a credential (or, beyond chance,
    /// the hash is taken); [`StoreError::Conflict`] if the table is not empty for a first
    /// human, or the adder has no credential; [`StoreError::Backend`] for an empty name or a
    /// hash that is not 64 lowercase hex digits.
    pub async fn add(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.add_with(name, token_sha256, added_by, at, None).await
    }

    /// [`SqliteHumanCredentials::add`], appending `record` to `log` in the same
    /// transaction: the credential and its audit record are committed together or not at
    /// all. `log` must be a log of the same store (its key, if any, seals the entry).
    pub async fn add_audited(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
        log: &SqliteAuditLog,
        record: AuditRecord,
    ) -> Result<(), StoreError> {
        self.add_with(
            name,
            token_sha256,
            added_by,
            at,
            Some((log.clone(), record)),
        )
        .await
    }

    async fn add_with(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
        audit: Option<(SqliteAuditLog, AuditRecord)>,
    ) -> Result<(), StoreError> {
        self.check(name, token_sha256)?;
        let db = self.db.clone();
        let (name, hash) = (name.to_string(), token_sha256.to_string());
        let by = added_by.map(str::to_string);
        let added_at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let what = "add a human credential";
        self.db
            .write(what, move |tx| {
                match &by {
                    None => {
                        let holder: Option<String> = tx
                            .prepare_cached("SELECT name FROM aios_humans LIMIT 1")
                            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                            .map_err(|e| db.err(what, e))?;
                        if let Some(holder) = holder {
                            return Err(StoreError::Conflict {
                                detail: format!(
                                    "`{name}` cannot be the first human of `{}`: `{holder}` \
                                     has a credential already, so an existing human must add \
                                     `{name}`",
                                    db.location()
                                ),
                            });
                        }
                    }
                    Some(adder) => {
                        let found: Option<String> = tx
                            .prepare_cached("SELECT name FROM aios_humans WHERE name = ?1")
                            .and_then(|mut s| s.query_row([adder], |r| r.get(0)).optional())
                            .map_err(|e| db.err(what, e))?;
                        if found.is_none() {
                            return Err(StoreError::Conflict {
                                detail: format!(
                                    "`{adder}` has no credential in `{}` and cannot add `{name}`",
                                    db.location()
                                ),
                            });
                        }
                    }
                }
                let inserted = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO aios_humans (name, token_sha256, added_at, added_by)
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(rusqlite::params![name, hash, added_at, by]))
                    .map_err(|e| db.err(what, e))?;
                if inserted == 0 {
                    return Err(StoreError::AlreadyExists {
                        what: format!("a credential of `{name}` in `{}`", db.location()),
                    });
                }
                if let Some((log, record)) = &audit {
                    // cloned: the write may run again if its group commit fails
                    log.append_in(tx, record.clone())?;
                }
                Ok(())
            })
            .await
    }

    /// Whether no human has a credential.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let db = self.db.clone();
        self.db
            .read("read the human credentials", move |tx| {
                tx.prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM aios_humans)")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(|e| db.err("read the human credentials", e))
            })
            .await
    }

    /// The humans with a credential, by name.
    pub async fn list(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let db = self.db.clone();
        let what = "list the human credentials";
        let rows: Vec<(String, String, Option<String>)> = self
            .db
            .read(what, move |tx| {
                tx.prepare_cached("SELECT name, added_at, added_by FROM aios_humans ORDER BY name")
                    .and_then(|mut s| {
                        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect()
                    })
                    .map_err(|e| db.err(what, e))
            })
            .await?;
        rows.into_iter()
            .map(|(name, added_at, added_by)| {
                let added_at = chrono::DateTime::parse_from_rfc3339(&added_at)
                    .map_err(|e| StoreError::Corrupt {
                        location: format!(
                            "table `aios_humans` row `{name}` in `{}`",
                            self.db.location()
                        ),
                        detail: format!("added_at `{added_at}` is not a time: {e}"),
                    })?
                    .with_timezone(&chrono::Utc);
                Ok(StoredCredential {
                    name,
                    added_at,
                    added_by,
                })
            })
            .collect()
    }

    /// Removes `name`'s credential, which revokes its token; `false` if there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        self.remove_with(name, None).await
    }

    /// [`SqliteHumanCredentials::remove`], appending `record` to `log` in the same
    /// transaction if a credential was removed (nothing is recorded otherwise).
    pub async fn remove_audited(
        &self,
        name: &str,
        log: &SqliteAuditLog,
        record: AuditRecord,
    ) -> Result<bool, StoreError> {
        self.remove_with(name, Some((log.clone(), record))).await
    }

    async fn remove_with(
        &self,
        name: &str,
        audit: Option<(SqliteAuditLog, AuditRecord)>,
    ) -> Result<bool, StoreError> {
        let db = self.db.clone();
        let name = name.to_string();
        let what = "remove a human credential";
        self.db
            .write(what, move |tx| {
                let removed = tx
                    .prepare_cached("DELETE FROM aios_humans WHERE name = ?1")
                    .and_then(|mut s| s.execute([&name]))
                    .map_err(|e| db.err(what, e))?
                    > 0;
                if removed {
                    if let Some((log, record)) = &audit {
                        log.append_in(tx, record.clone())?;
                    }
                }
                Ok(removed)
            })
            .await
    }

    /// The human whose token hashes to `token_sha256`, if any.
    pub async fn find(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        let db = self.db.clone();
        let hash = token_sha256.to_string();
        self.db
            .read("check a human credential", move |tx| {
                find_in(&db, tx, &hash)
            })
            .await
    }

    /// [`SqliteHumanCredentials::find`] for synchronous code (a login handler): blocks the
    /// calling thread until a reader connection answers.
    pub fn find_blocking(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        let db = self.db.clone();
        let hash = token_sha256.to_string();
        self.db
            .read_blocking("check a human credential", move |tx| {
                find_in(&db, tx, &hash)
            })
    }
}

fn find_in(
    db: &Db,
    tx: &rusqlite::Transaction<'_>,
    hash: &str,
) -> Result<Option<String>, StoreError> {
    tx.prepare_cached("SELECT name FROM aios_humans WHERE token_sha256 = ?1")
        .and_then(|mut s| s.query_row([hash], |r| r.get(0)).optional())
        .map_err(|e| db.err("check a human credential", e))
}
