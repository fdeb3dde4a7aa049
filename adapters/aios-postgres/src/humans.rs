//! The credentials of the humans who act through the operator's surfaces (the `aios`
//! command line and the web console), in table `aios_humans`.

use std::sync::Arc;

use aios_core::{AuditRecord, StoreError, Timestamp};

use crate::audit::PgAuditLog;
use crate::db::{Cached, Db, HUMANS_LOCK};

/// A human's credential as stored: who, since when and given by whom. The token itself is
/// never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredCredential {
    /// The human's key in the governance model.
    pub name: String,
    /// When the credential was given.
    pub added_at: Timestamp,
    /// The human who gave it; `None` for the first human of the database.
    pub added_by: Option<String>,
}

/// Human credentials in PostgreSQL: one row per human, holding the SHA-256 of the human's
/// token (64 lowercase hex digits; the store refuses anything else, so a token cannot be
/// stored in clear by mistake). Hashing and making tokens is the caller's business; this
/// store keeps the hashes and answers whose hash one is. Clones share the pool.
///
/// Additions are serialised by an advisory lock, so the two rules of who may add hold
/// under concurrency: the first human is added only into an empty table (two first
/// additions racing: one wins, the other is [`StoreError::Conflict`]), and every later
/// one names an adder who has a credential when the addition commits.
///
/// [`PgHumanCredentials::add_audited`] and [`PgHumanCredentials::remove_audited`] write the
/// change and its audit record in one transaction: both are written or neither, also when
/// the process is killed half-way.
#[derive(Debug, Clone)]
pub struct PgHumanCredentials {
    db: Arc<Db>,
}

/// Whether `text` is a SHA-256 in lowercase hex.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl PgHumanCredentials {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    fn check_hash(&self, token_sha256: &str) -> Result<(), StoreError> {
        if is_sha256_hex(token_sha256) {
            Ok(())
        } else {
            Err(StoreError::Backend {
                detail: format!(
                    "a credential for `{}` must be a SHA-256 in lowercase hex (64 digits), \
                     never a token",
                    self.db.location()
                ),
            })
        }
    }

    /// Gives `name` the credential whose token hashes to `token_sha256`, given by
    /// `added_by` at `at`.
    ///
    /// `added_by: None` adds the first human: only into an empty table. `Some(adder)`: the
    /// adder must have a credential. Both are checked under the additions' lock and the
    /// adder's row, in the transaction that inserts, so nothing is written unless they
    /// hold at the commit.
    ///
    /// Errors: [`StoreError::AlreadyExists`] if `name` has a credential (or, beyond
    /// chance, the hash is taken); [`StoreError::Conflict`] if the table is not empty for a
    /// first human, or the adder has no credential; [`StoreError::Backend`] for an empty
    /// name or a hash that is not 64 lowercase hex digits.
    pub async fn add(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.add_with(name, token_sha256, added_by, at, None).await
    }

    /// [`PgHumanCredentials::add`], appending `record` to `log` in the same transaction:
    /// the credential and its audit record are committed together or not at all.
    pub async fn add_audited(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
        log: &PgAuditLog,
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

    /// The addition on a task of its own: it holds advisory locks from its first statement
    /// to its commit, so it must run to its end even if its caller stops polling.
    async fn add_with(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
        audit: Option<(PgAuditLog, AuditRecord)>,
    ) -> Result<(), StoreError> {
        let (this, name, hash) = (self.clone(), name.to_string(), token_sha256.to_string());
        let by = added_by.map(str::to_string);
        tokio::spawn(async move { this.add_now(&name, &hash, by.as_deref(), at, audit).await })
            .await
            .map_err(|e| StoreError::Backend {
                detail: format!("adding a human credential ended abnormally: {e}"),
            })?
    }

    async fn add_now(
        &self,
        name: &str,
        token_sha256: &str,
        added_by: Option<&str>,
        at: Timestamp,
        audit: Option<(PgAuditLog, AuditRecord)>,
    ) -> Result<(), StoreError> {
        let db = &self.db;
        if name.trim().is_empty() {
            return Err(StoreError::Backend {
                detail: format!("a human credential needs a name (in `{}`)", db.location()),
            });
        }
        self.check_hash(token_sha256)?;
        let what = "add a human credential";
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        tx.c_execute("SELECT pg_advisory_xact_lock($1)", &[&HUMANS_LOCK])
            .await
            .map_err(|e| db.err(what, e))?;
        match added_by {
            None => {
                let any = tx
                    .c_query_opt("SELECT name FROM aios_humans LIMIT 1", &[])
                    .await
                    .map_err(|e| db.err(what, e))?;
                if let Some(row) = any {
                    let holder: String = row.get(0);
                    return Err(StoreError::Conflict {
                        detail: format!(
                            "`{name}` cannot be the first human of `{}`: `{holder}` has a \
                             credential already, so an existing human must add `{name}`",
                            db.location()
                        ),
                    });
                }
            }
            Some(adder) => {
                let found = tx
                    .c_query_opt(
                        "SELECT name FROM aios_humans WHERE name = $1 FOR SHARE",
                        &[&adder],
                    )
                    .await
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
        let added_at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let inserted = tx
            .c_execute(
                "INSERT INTO aios_humans (name, token_sha256, added_at, added_by)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&name, &token_sha256, &added_at, &added_by],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists {
                what: format!("a credential of `{name}` in `{}`", db.location()),
            });
        }
        if let Some((log, record)) = audit {
            log.append_in(&tx, record).await?;
        }
        tx.commit().await.map_err(|e| db.err(what, e))
    }

    /// Whether no human has a credential.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let db = &self.db;
        let what = "count human credentials";
        let client = db.client(what).await?;
        let row = client
            .c_query_opt("SELECT 1 FROM aios_humans LIMIT 1", &[])
            .await
            .map_err(|e| db.err(what, e))?;
        Ok(row.is_none())
    }

    /// The humans with a credential, by name. A row whose time does not parse is
    /// [`StoreError::Corrupt`], naming it.
    pub async fn list(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let db = &self.db;
        let what = "list human credentials";
        let client = db.client(what).await?;
        let rows = client
            .c_query(
                "SELECT name, added_at, added_by FROM aios_humans ORDER BY name",
                &[],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let at: &str = r.get(1);
                let added_at = chrono::DateTime::parse_from_rfc3339(at)
                    .map_err(|e| StoreError::Corrupt {
                        location: format!(
                            "table `aios_humans` row `{name}` in `{}`",
                            db.location()
                        ),
                        detail: format!("added_at `{at}`: {e}"),
                    })?
                    .with_timezone(&chrono::Utc);
                Ok(StoredCredential {
                    name,
                    added_at,
                    added_by: r.get(2),
                })
            })
            .collect()
    }

    /// Removes `name`'s credential, which revokes its token at once for every process on
    /// the database; `false` if `name` had none.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let db = &self.db;
        let what = "remove a human credential";
        let client = db.client(what).await?;
        let n = client
            .c_execute("DELETE FROM aios_humans WHERE name = $1", &[&name])
            .await
            .map_err(|e| db.err(what, e))?;
        Ok(n > 0)
    }

    /// [`PgHumanCredentials::remove`], appending `record` to `log` in the same transaction
    /// if there was a credential to remove (nothing is written otherwise).
    pub async fn remove_audited(
        &self,
        name: &str,
        log: &PgAuditLog,
        record: AuditRecord,
    ) -> Result<bool, StoreError> {
        let (this, name, log) = (self.clone(), name.to_string(), log.clone());
        tokio::spawn(async move {
            let db = &this.db;
            let what = "remove a human credential";
            let mut client = db.client(what).await?;
            let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
            let n = tx
                .c_execute("DELETE FROM aios_humans WHERE name = $1", &[&name])
                .await
                .map_err(|e| db.err(what, e))?;
            if n == 0 {
                return Ok(false);
            }
            log.append_in(&tx, record).await?;
            tx.commit().await.map_err(|e| db.err(what, e))?;
            Ok(true)
        })
        .await
        .map_err(|e| StoreError::Backend {
            detail: format!("removing a human credential ended abnormally: {e}"),
        })?
    }

    /// The human whose token hashes to `token_sha256`, if any (`None` also for a value that
    /// is not a SHA-256 in hex: no credential can match it).
    pub async fn find(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        if !is_sha256_hex(token_sha256) {
            return Ok(None);
        }
        let db = &self.db;
        let what = "check a human credential";
        let client = db.client(what).await?;
        let row = client
            .c_query_opt(
                "SELECT name FROM aios_humans WHERE token_sha256 = $1",
                &[&token_sha256],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        Ok(row.map(|r| r.get(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::is_sha256_hex;

    #[test]
    fn only_a_lowercase_hex_sha256_is_a_hash() {
        assert!(is_sha256_hex(&"ab".repeat(32)));
        assert!(!is_sha256_hex(&"AB".repeat(32)));
        assert!(!is_sha256_hex(&"ab".repeat(31)));
        assert!(!is_sha256_hex(&format!("aios_{}", "ab".repeat(32))));
    }
}
