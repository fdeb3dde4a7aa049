//! Credentials for the humans who act through the command line (and the console).
//!
//! A token is 32 random bytes from the operating system, written as `aios_` and 64 hex
//! digits. It is shown once; the store keeps only its SHA-256, in the table `aios_humans` of
//! the same SQLite file. Whoever holds the token acts as that human; removing the human
//! revokes it.

use std::path::Path;

use sha2::{Digest, Sha256};

/// A credential could not be stored, read or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HumansError {
    /// The database failed.
    #[error("human credentials: {0}")]
    Db(#[from] rusqlite::Error),
    /// The human has a credential already.
    #[error("`{0}` has a credential already: `aios humans remove {0}` first to give a new one")]
    Exists(String),
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

/// The credentials in one store file.
#[derive(Debug)]
pub struct Humans {
    conn: rusqlite::Connection,
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
    /// The credentials of the store at `path` (the table is made if missing).
    pub fn open(path: &Path) -> Result<Self, HumansError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS aios_humans (
                 name TEXT PRIMARY KEY,
                 token_sha256 TEXT NOT NULL UNIQUE,
                 added_at TEXT NOT NULL,
                 added_by TEXT
             );",
        )?;
        Ok(Humans { conn })
    }

    /// Whether no human has a credential yet.
    pub fn is_empty(&self) -> Result<bool, HumansError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM aios_humans", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    /// Gives `name` a credential and returns its token (the only time it is seen).
    pub fn add(&self, name: &str, by: Option<&str>) -> Result<String, HumansError> {
        let token = new_token()?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self.conn.execute(
            "INSERT INTO aios_humans (name, token_sha256, added_at, added_by) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![name, token_hash(&token), now, by],
        ) {
            Ok(_) => Ok(token),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(HumansError::Exists(name.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The humans with a credential, by name.
    pub fn list(&self) -> Result<Vec<HumanCredential>, HumansError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, added_at, added_by FROM aios_humans ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(HumanCredential {
                name: r.get(0)?,
                added_at: r.get(1)?,
                added_by: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes `name`'s credential; `false` if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, HumansError> {
        Ok(self
            .conn
            .execute("DELETE FROM aios_humans WHERE name = ?1", [name])?
            > 0)
    }

    /// The human whose token this is, if any.
    pub fn authenticate(&self, token: &str) -> Result<Option<String>, HumansError> {
        let hash = token_hash(token);
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM aios_humans WHERE token_sha256 = ?1")?;
        let mut rows = stmt.query([hash])?;
        match rows.next()? {
            Some(row) => Ok(Some(row.get(0)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_authenticates_its_human_only_until_removed() {
        let dir = std::env::temp_dir().join(format!("aios-humans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.sqlite");
        let _ = std::fs::remove_file(&path);
        let humans = Humans::open(&path).unwrap();
        assert!(humans.is_empty().unwrap());
        let alice = humans.add("alice", None).unwrap();
        let bob = humans.add("bob", Some("alice")).unwrap();
        assert_ne!(alice, bob);
        assert!(alice.starts_with("aios_") && alice.len() == 5 + 64);
        assert_eq!(
            humans.authenticate(&alice).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(humans.authenticate(&bob).unwrap().as_deref(), Some("bob"));
        assert_eq!(humans.authenticate("aios_guess").unwrap(), None);
        assert!(matches!(
            humans.add("alice", None),
            Err(HumansError::Exists(_))
        ));
        // the token is not stored, only its hash
        let stored: Vec<String> = humans
            .conn
            .prepare("SELECT token_sha256 FROM aios_humans")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(stored.iter().all(|h| *h != alice && *h != bob));
        assert!(humans.remove("alice").unwrap());
        assert_eq!(humans.authenticate(&alice).unwrap(), None);
        assert!(!humans.remove("alice").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
