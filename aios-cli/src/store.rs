//! The store a command works on, named by one `--store` value: a SQLite file, or a
//! PostgreSQL database (`postgres://` or `postgresql://`, feature `postgres`). Each command
//! is written once against [`Store`]; only opening differs.

use std::path::PathBuf;
use std::sync::Arc;

use aios_core::{AuditLog, StoreError};
use aios_governance::{ApprovalStore, BudgetLedger, ControlStore};
use aios_orchestrator::CheckpointStore;
use aios_sqlite::SqliteStore;

use crate::humans::Humans;
use crate::CliError;

/// What a `--store` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL (which may hold a password: never shown).
    Postgres(String),
}

/// How a store is written in messages: a PostgreSQL URL without its password (the password
/// in the user part and any `password=` parameter become `***`); a URL that does not parse
/// is shown as its scheme alone. Every message naming a store goes through this.
pub(crate) fn redact(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let Some((scheme, _)) = lower.split_once("://") else {
        // a path; or a key-value string: nothing from its `password=` on is shown (a quoted
        // password may hold spaces)
        return match lower.find("password=") {
            Some(at) => format!("{}password=***", &text[..at]),
            None => text.to_string(),
        };
    };
    match url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = k.eq_ignore_ascii_case("password");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                let query = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&");
                url.set_query(Some(&query));
            }
            url.to_string()
        }
        Err(_) => format!("{scheme}://*** (not shown: it does not parse as a URL)"),
    }
}

/// What a `--store` value should look like, for errors.
const STORE_FORMS: &str = "give a SQLite file (a path, or sqlite:PATH) or a PostgreSQL URL \
                           (postgres://user:password@host:port/db)";

impl Location {
    /// Reads a `--store` value: `postgres://` and `postgresql://` URLs are PostgreSQL;
    /// `sqlite:PATH` (or `sqlite://PATH`) and a plain path are SQLite; anything else that
    /// looks like a URL or a key-value connection string is refused, naming it (redacted).
    pub(crate) fn parse(text: &str) -> Result<Location, CliError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(CliError::Failed(format!("--store is empty: {STORE_FORMS}")));
        }
        let lower = trimmed.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Location::Postgres(trimmed.to_string()));
        }
        if let Some(path) = lower
            .starts_with("sqlite://")
            .then(|| &trimmed["sqlite://".len()..])
            .or_else(|| {
                lower
                    .starts_with("sqlite:")
                    .then(|| &trimmed["sqlite:".len()..])
            })
        {
            if path.is_empty() {
                return Err(CliError::Failed(format!(
                    "store `{trimmed}` names no file: {STORE_FORMS}"
                )));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(CliError::Failed(format!(
                "store `{}`: `{scheme}` is not a kind of store: {STORE_FORMS}",
                redact(trimmed)
            )));
        }
        let looks_like_pairs = trimmed.split_whitespace().any(|part| {
            part.split_once('=').is_some_and(|(k, _)| {
                ["host", "hostaddr", "dbname", "user", "password", "port"]
                    .contains(&k.to_ascii_lowercase().as_str())
            })
        });
        if looks_like_pairs {
            return Err(CliError::Failed(format!(
                "store `{}`: key-value connection strings are not taken: {STORE_FORMS}",
                redact(trimmed)
            )));
        }
        Ok(Location::Sqlite(PathBuf::from(trimmed)))
    }

    /// Opens the store. A SQLite file must exist unless `create`; a PostgreSQL database
    /// must exist, and its schema is created or upgraded when it is opened.
    pub(crate) async fn open(&self, create: bool) -> Result<Store, CliError> {
        match self {
            Location::Sqlite(path) => {
                if !create && !path.exists() {
                    return Err(CliError::Failed(format!(
                        "no store at `{}`: pass --store FILE or --store postgres://..., or set \
                         AIOS_STORE",
                        path.display()
                    )));
                }
                SqliteStore::open(path)
                    .map(Store::Sqlite)
                    .map_err(|e| CliError::failed(format!("store `{}`: {e}", path.display())))
            }
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => aios_postgres::PgStore::connect(url)
                .await
                .map(Store::Postgres)
                .map_err(|e| CliError::Failed(format!("store `{}`: {e}", redact(url)))),
            #[cfg(not(feature = "postgres"))]
            Location::Postgres(url) => Err(CliError::Failed(format!(
                "store `{}`: this `aios` was built without PostgreSQL: build aios-cli with its \
                 feature `postgres` (on by default), or pass a SQLite file with --store",
                redact(url)
            ))),
        }
    }

    /// Whether a store is there to read without creating one: a SQLite file that exists;
    /// a PostgreSQL database always counts (opening it says whether it can be used).
    pub(crate) fn exists(&self) -> bool {
        match self {
            Location::Sqlite(path) => path.exists(),
            Location::Postgres(_) => true,
        }
    }
}

/// An open store: every port the commands use, on either backend.
pub(crate) enum Store {
    /// The embedded SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(aios_postgres::PgStore),
}

impl Store {
    /// The hash-chained audit log.
    pub(crate) fn audit_log(&self) -> Arc<dyn AuditLog> {
        match self {
            Store::Sqlite(s) => Arc::new(s.audit_log()),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.audit_log()),
        }
    }

    /// Run checkpoints.
    pub(crate) fn checkpoints(&self) -> Arc<dyn CheckpointStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.checkpoint_store()),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.checkpoint_store()),
        }
    }

    /// The budget ledger, its periods read from `clock` (the console's budgets page reads it).
    pub(crate) fn budget_ledger(&self, clock: Arc<dyn aios_core::Clock>) -> Arc<dyn BudgetLedger> {
        match self {
            Store::Sqlite(s) => Arc::new(s.budget_ledger(clock)),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.budget_ledger(clock)),
        }
    }

    /// Operator controls.
    pub(crate) fn control_store(&self) -> Arc<dyn ControlStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.control_store()),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.control_store()),
        }
    }

    /// Approval requests.
    pub(crate) fn approvals(&self) -> Arc<dyn ApprovalStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s.approval_store()),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.approval_store()),
        }
    }

    /// The production orchestrator set-up on this store.
    pub(crate) async fn orchestrator(
        &self,
        governor: aios_governance::Governor,
    ) -> Result<aios_orchestrator::OrchestratorBuilder, StoreError> {
        match self {
            Store::Sqlite(s) => s.orchestrator(governor).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.orchestrator(governor).await,
        }
    }

    /// The memory on this store.
    pub(crate) async fn memory(&self) -> Result<aios_memory::Memory, aios_memory::MemoryError> {
        match self {
            Store::Sqlite(s) => s.memory().await,
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.memory().await,
        }
    }

    /// The humans' credentials in this store.
    pub(crate) fn humans(&self) -> Result<Humans, CliError> {
        match self {
            Store::Sqlite(s) => Ok(Humans::sqlite(s)),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Ok(Humans::postgres(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        for (given, shown) in [
            (
                "postgres://ann:s3cret@db.example:6543/aios",
                "postgres://ann:***@db.example:6543/aios",
            ),
            (
                "postgresql://ann:s3cret@db/aios?sslmode=disable&password=s3cret",
                "postgresql://ann:***@db/aios?sslmode=disable&password=***",
            ),
            ("postgres://ann@db/aios", "postgres://ann@db/aios"),
            (
                "host=db user=ann password=s3cret dbname=x",
                "host=db user=ann password=***",
            ),
            (
                "host=db PASSWORD='s3c ret' dbname=x",
                "host=db password=***",
            ),
            ("aios.sqlite", "aios.sqlite"),
        ] {
            assert_eq!(redact(given), shown);
        }
        // unencoded `@` and `/` in a password, a port that is no number
        for given in [
            "postgres://ann:s3c@ret@db/aios",
            "postgres://ann:s3c/ret@db/aios",
            "postgres://ann:s3cret@db:port/aios",
        ] {
            let shown = redact(given);
            assert!(!shown.contains("s3c"), "{given} -> {shown}");
        }
    }

    #[test]
    fn a_store_value_is_a_file_or_a_postgres_url_or_refused() {
        let pg = "postgres://a:b@h/db";
        assert_eq!(Location::parse(pg).unwrap(), Location::Postgres(pg.into()));
        assert!(matches!(
            Location::parse("POSTGRESQL://h/db").unwrap(),
            Location::Postgres(_)
        ));
        assert_eq!(
            Location::parse("sqlite:x.db").unwrap(),
            Location::Sqlite("x.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:///tmp/x.db").unwrap(),
            Location::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            Location::parse("./aios.sqlite").unwrap(),
            Location::Sqlite("./aios.sqlite".into())
        );
        for bad in [
            "",
            "sqlite:",
            "mysql://ann:s3cret@h/db",
            "host=h password=s3cret",
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains("postgres://user:password@host"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
