//! The operator's command line for AIOS, `aios`.
//!
//! One person runs the organisation's agents; this is how they see what the agents did,
//! answer approvals, pause and stop, and check the record, on the embedded SQLite store
//! (`--store FILE`, default `aios.sqlite`) or on PostgreSQL (`--store
//! postgres://user:password@host:port/db`, or `postgresql://`; feature `postgres`, on by
//! default), either also from `$AIOS_STORE`, and the workspace manifest (`--workspace FILE`,
//! default `aios.toml`, or `$AIOS_WORKSPACE`). Every command works on both stores; a
//! password in a URL is never printed (messages show `postgres://user:***@host:port/db`).
//!
//! ```text
//! aios init --template solo_consultancy     # writes aios.toml
//! aios check                                # every finding, with its place
//! aios assess                               # the level that holds you back now
//! aios humans add alice                     # prints alice's token once
//! export AIOS_TOKEN=...                     # or --token-file FILE (mode 0600)
//! aios approvals                            # the inbox
//! aios approve 3f2a --note "ok"             # by a unique prefix of the id
//! aios runs --status parked
//! aios run show 9c1e ; aios run transcript 9c1e
//! aios stop --all --reason "incident 42" ; aios resume --all --reason "closed"
//! aios audit verify ; aios audit head ; aios audit export > audit.jsonl
//! aios memory search "invoice" ; aios report --since 30d
//! aios serve --listen 127.0.0.1:8080         # the web console (aios-console)
//! ```
//!
//! Every listing takes `--json`. Exit codes: 0 success; 1 a check found problems
//! (findings with errors, a broken audit chain, damaged memory); 2 the command line is
//! wrong; 3 something named was not found; 4 refused (no or a wrong credential, not allowed,
//! the governance refused the decision); 5 the store or the workspace could not be used.
//!
//! Who is acting: a decision is made by an authenticated human, never by a name typed on the
//! command line. `aios humans add NAME` prints a token once and stores only its SHA-256 in the
//! store; the command line reads it from `$AIOS_TOKEN` or from `--token-file` (a file only its
//! owner may read). The first human of a store may be added by whoever can write the store
//! (the file, or the database: that is the root of trust); every later one needs an
//! existing human's token, both checked in the write itself. On PostgreSQL the credentials
//! are in the table `aios_humans` of the database's versioned schema
//! (`aios_postgres::PgHumanCredentials`).
//! The name must be a holder or deputy of an anchor in the workspace's governance model, and
//! the governance still decides whether that human may answer a given approval.

mod cli;
mod commands;
pub mod humans;
mod output;
mod store;

use std::process::ExitCode;

pub use cli::Cli;

/// Why a command failed, and the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A check found problems (exit 1); the report was printed.
    #[error("{0}")]
    Problems(String),
    /// Something named was not found (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// Refused: no or a wrong credential, not allowed, or the governance refused (exit 4).
    #[error("{0}")]
    Refused(String),
    /// The store, the workspace or a file could not be used (exit 5).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Problems(_) => 1,
            CliError::NotFound(_) => 3,
            CliError::Refused(_) => 4,
            CliError::Failed(_) => 5,
        }
    }

    pub(crate) fn failed(what: impl std::fmt::Display) -> Self {
        CliError::Failed(what.to_string())
    }
}

/// Parses the process's arguments, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aios: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// Runs one parsed command line (on a runtime of its own).
pub fn run(cli: Cli) -> Result<(), CliError> {
    // the console serves many requests, and its login checks credentials synchronously
    // (`block_in_place` on PostgreSQL): a multi-threaded runtime; every other command one
    // thread
    let mut builder = if matches!(cli.command, cli::Command::Serve { .. }) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(commands::run(cli))
}
