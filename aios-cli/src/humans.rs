//! Credentials for the humans who act through the command line (and the console).
//!
//! A token is 32 random bytes from the operating system, written as `aios_` and 64 hex
//! digits. It is shown once; the store keeps only its SHA-256, in the table `aios_humans` of
//! the same SQLite file, or of the PostgreSQL database (there part of the versioned schema of
//! `aios-postgres`, which the SQLite file's table is not: `aios-sqlite` knows nothing of it).
//! Whoever holds the token acts as that human; removing the human revokes it.

use std::path::Path;

use aios_core::{AuditEvent, AuditRecord, Clock, HumanId, Principal, StoreError, SystemClock};

use sha2::{Digest, Sha256};

/// A credential could not be stored, read or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HumansError {
    /// The store failed, or refused the change's audit record: nothing was written (a
    /// change and its audit record are one transaction).
    #[error("human credentials: {0}")]
    Store(StoreError),
    /// The human has a credential already.
    #[error("`{0}` has a credential already: `aios humans remove {0}` first to give a new one")]
    Exists(String),
    /// Who adds is not allowed to: a first human into a store that has one, or an adder
    /// whose own credential is gone. Nothing was written.
    #[error("{0}")]
    NotAllowed(String),
    /// No randomness from the operating system.
    #[error("no randomness for a token: {0}")]
    Random(String),
    /// The token file could not be used.
    #[error("token file `{path}`: {reason}")]
    TokenFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A human with a credential, as listed (the token itself is never kept).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HumanCredential {
    /// The human's key in the governance model.
    pub name: String,
    /// When the credential was given (RFC 3339).
    pub added_at: String,
    /// Who gave it (none for the first human of a store).
    pub added_by: Option<String>,
}

impl HumanCredential {
    /// A stored credential as listed, whichever store holds it.
    fn listed(name: String, added_at: aios_core::Timestamp, added_by: Option<String>) -> Self {
        HumanCredential {
            name,
            added_at: added_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            added_by,
        }
    }
}

/// The credentials in one store: the table `aios_humans` of a SQLite file, or of a
/// PostgreSQL database (feature `postgres`; there the table belongs to the versioned schema
/// of `aios-postgres`). The contract is the same on both: only the SHA-256 of a token is
/// kept; the first human is added only to a store that has none, however many try at once;
/// a later one only by a human who holds a credential when the addition is written;
/// removing a human revokes the token at once.
#[derive(Debug)]
pub struct Humans {
    backend: Backend,
}

enum Backend {
    /// The file's credentials and audit log (written in one transaction).
    Sqlite(
        aios_sqlite::SqliteHumanCredentials,
        aios_sqlite::SqliteAuditLog,
    ),
    /// The database's credentials and audit log (written in one transaction).
    #[cfg(feature = "postgres")]
    Postgres(aios_postgres::PgHumanCredentials, aios_postgres::PgAuditLog),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite(c, _) => f.debug_tuple("Sqlite").field(c).finish(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(c, _) => f.debug_tuple("Postgres").field(c).finish(),
        }
    }
}

/// The audit event kind recorded when a human is given or loses a credential.
pub const HUMAN_EVENT: &str = "human_credential";

/// The audit record of `name`'s credential being `what` (`added`, `removed`) by `by` (the
/// system for the first human).
fn credential_record(name: &str, what: &str, by: Option<&str>) -> AuditRecord {
    let actor = match by {
        Some(b) => Principal::Human(HumanId::from_name(b)),
        None => Principal::System,
    };
    AuditRecord::new(
        actor,
        AuditEvent::Custom {
            kind: HUMAN_EVENT.into(),
            data: serde_json::json!({ "human": name, "credential": what }),
        },
    )
    .at(SystemClock.now())
}

/// The SHA-256 of a token, in hex: what the store keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// A new random token.
pub fn new_token() -> Result<String, HumansError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| HumansError::Random(e.to_string()))?;
    Ok(format!("aios_{}", hex::encode(bytes)))
}

/// Reads a token from `path`, refusing a file that others may read or write.
pub fn read_token_file(path: &Path) -> Result<String, HumansError> {
    let fail = |reason: String| HumansError::TokenFile {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "others may read or write it (mode {mode:o}): `chmod 600 {}`",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("it is empty".into()));
    }
    Ok(token.to_string())
}

impl Humans {
    /// The credentials of a SQLite store, whose changes are recorded in its audit log in
    /// the same transaction.
    pub fn sqlite(store: &aios_sqlite::SqliteStore) -> Self {
        Humans {
            backend: Backend::Sqlite(store.human_credentials(), store.audit_log()),
        }
    }

    /// The credentials of a PostgreSQL store, whose changes are recorded in its audit log
    /// in the same transaction.
    #[cfg(feature = "postgres")]
    pub fn postgres(store: &aios_postgres::PgStore) -> Self {
        Humans {
            backend: Backend::Postgres(store.human_credentials(), store.audit_log()),
        }
    }

    /// Whether no human has a credential yet.
    pub async fn is_empty(&self) -> Result<bool, HumansError> {
        match &self.backend {
            Backend::Sqlite(c, _) => c.is_empty().await.map_err(HumansError::Store),
            #[cfg(feature = "postgres")]
            Backend::Postgres(p, _) => p.is_empty().await.map_err(HumansError::Store),
        }
    }

    /// Gives `name` a credential and returns its token (the only time it is seen), and
    /// records who gave it in the store's audit log (event [`HUMAN_EVENT`]).
    ///
    /// `by: None` adds the first human, only to a store that has none; `Some(adder)` needs
    /// the adder to hold a credential. Both are checked in the write itself, so of two
    /// processes adding a first human at once one is refused with
    /// [`HumansError::NotAllowed`]. The credential and its record are one transaction:
    /// both are written or neither, also when the process is killed half-way.
    pub async fn add(&self, name: &str, by: Option<&str>) -> Result<String, HumansError> {
        let token = new_token()?;
        let hash = token_hash(&token);
        let record = credential_record(name, "added", by);
        match &self.backend {
            Backend::Sqlite(c, log) => c
                .add_audited(name, &hash, by, SystemClock.now(), log, record)
                .await
                .map_err(|e| Self::refused(name, e))?,
            #[cfg(feature = "postgres")]
            Backend::Postgres(p, log) => p
                .add_audited(name, &hash, by, SystemClock.now(), log, record)
                .await
                .map_err(|e| Self::refused(name, e))?,
        }
        Ok(token)
    }

    /// A store's refusal of an addition as the command line says it.
    fn refused(name: &str, e: StoreError) -> HumansError {
        match e {
            StoreError::AlreadyExists { .. } => HumansError::Exists(name.to_string()),
            StoreError::Conflict { detail } => HumansError::NotAllowed(detail),
            other => HumansError::Store(other),
        }
    }

    /// The humans with a credential, by name.
    pub async fn list(&self) -> Result<Vec<HumanCredential>, HumansError> {
        match &self.backend {
            Backend::Sqlite(c, _) => Ok(c
                .list()
                .await
                .map_err(HumansError::Store)?
                .into_iter()
                .map(|c| HumanCredential::listed(c.name, c.added_at, c.added_by))
                .collect()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(p, _) => Ok(p
                .list()
                .await
                .map_err(HumansError::Store)?
                .into_iter()
                .map(|c| HumanCredential::listed(c.name, c.added_at, c.added_by))
                .collect()),
        }
    }

    /// Removes `name`'s credential, which revokes its token, and records that `by` did;
    /// `false` (and nothing recorded) if there was none. The removal and its record are one
    /// transaction.
    pub async fn remove(&self, name: &str, by: &str) -> Result<bool, HumansError> {
        let record = credential_record(name, "removed", Some(by));
        match &self.backend {
            Backend::Sqlite(c, log) => c
                .remove_audited(name, log, record)
                .await
                .map_err(HumansError::Store),
            #[cfg(feature = "postgres")]
            Backend::Postgres(p, log) => p
                .remove_audited(name, log, record)
                .await
                .map_err(HumansError::Store),
        }
    }

    /// The human whose token this is, if any.
    pub async fn authenticate(&self, token: &str) -> Result<Option<String>, HumansError> {
        let hash = token_hash(token);
        match &self.backend {
            Backend::Sqlite(c, _) => c.find(&hash).await.map_err(HumansError::Store),
            #[cfg(feature = "postgres")]
            Backend::Postgres(p, _) => p.find(&hash).await.map_err(HumansError::Store),
        }
    }

    /// [`Humans::authenticate`] for a synchronous caller on a Tokio runtime (the console's
    /// login). On PostgreSQL the runtime must be multi-threaded (the query runs with
    /// `block_in_place`); on a current-thread runtime this is an error, never a panic.
    pub fn authenticate_blocking(&self, token: &str) -> Result<Option<String>, HumansError> {
        let hash = token_hash(token);
        match &self.backend {
            Backend::Sqlite(c, _) => c.find_blocking(&hash).map_err(HumansError::Store),
            #[cfg(feature = "postgres")]
            Backend::Postgres(p, _) => {
                let handle = tokio::runtime::Handle::try_current().map_err(|e| {
                    HumansError::Store(StoreError::Backend {
                        detail: format!("checking a credential needs a Tokio runtime: {e}"),
                    })
                })?;
                if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                    return Err(HumansError::Store(StoreError::Backend {
                        detail: "checking a credential on PostgreSQL from synchronous code \
                                 needs a multi-threaded Tokio runtime"
                            .into(),
                    }));
                }
                tokio::task::block_in_place(|| handle.block_on(p.find(&hash)))
                    .map_err(HumansError::Store)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use aios_core::AuditLog;

    #[tokio::test]
    async fn a_token_authenticates_its_human_only_until_removed() {
        let dir = std::env::temp_dir().join(format!("aios-humans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.sqlite");
        let _ = std::fs::remove_file(&path);
        let store = aios_sqlite::SqliteStore::open(&path).unwrap();
        let audit = store.audit_log();
        let humans = Humans::sqlite(&store);
        assert!(humans.is_empty().await.unwrap());
        let alice = humans.add("alice", None).await.unwrap();
        // a second first human, and an adder without a credential: refused
        assert!(matches!(
            humans.add("bob", None).await,
            Err(HumansError::NotAllowed(_))
        ));
        assert!(matches!(
            humans.add("bob", Some("mallory")).await,
            Err(HumansError::NotAllowed(_))
        ));
        let bob = humans.add("bob", Some("alice")).await.unwrap();
        assert_ne!(alice, bob);
        assert!(alice.starts_with("aios_") && alice.len() == 5 + 64);
        assert_eq!(
            humans.authenticate(&alice).await.unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(
            humans.authenticate_blocking(&bob).unwrap().as_deref(),
            Some("bob")
        );
        assert_eq!(humans.authenticate("aios_guess").await.unwrap(), None);
        assert!(matches!(
            humans.add("alice", Some("bob")).await,
            Err(HumansError::Exists(_))
        ));
        // the token is not stored, only its hash
        let raw = rusqlite::Connection::open(&path).unwrap();
        let stored: Vec<String> = raw
            .prepare("SELECT token_sha256 FROM aios_humans")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(stored.iter().all(|h| *h != alice && *h != bob));
        assert!(humans.remove("alice", "bob").await.unwrap());
        assert_eq!(humans.authenticate(&alice).await.unwrap(), None);
        assert!(!humans.remove("alice", "bob").await.unwrap());
        // alice and bob added, alice removed: three records
        assert_eq!(audit.head().await.unwrap().len, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
