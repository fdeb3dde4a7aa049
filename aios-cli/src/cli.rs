//! The command line's grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "Exit codes: 0 success; 1 a check found problems; 2 a wrong command \
line; 3 not found; 4 refused (credential, permission, governance); 5 the store or the workspace \
could not be used.";

/// Operate an AIOS workspace: runs, approvals, operator controls, the audit record, memory and
/// the operations report.
#[derive(Debug, Parser)]
#[command(name = "aios", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The store: a SQLite file (`sqlite:` prefix optional) or a PostgreSQL database,
    /// `postgres://user:password@host:port/db` (or `postgresql://`). Prefer `$AIOS_STORE`
    /// for a URL with a password: arguments are visible to other users of the machine.
    /// The password is never shown.
    #[arg(
        long,
        global = true,
        env = "AIOS_STORE",
        hide_env_values = true,
        default_value = "aios.sqlite"
    )]
    pub store: String,
    /// The workspace manifest.
    #[arg(
        long,
        global = true,
        env = "AIOS_WORKSPACE",
        default_value = "aios.toml"
    )]
    pub workspace: PathBuf,
    /// Print JSON (one value) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A file with your credential token, readable by you alone; otherwise `$AIOS_TOKEN`.
    #[arg(long, global = true, env = "AIOS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a workspace manifest from a template.
    Init {
        /// The template: `solo_consultancy` or `newsletter`.
        #[arg(long, default_value = "solo_consultancy")]
        template: String,
        /// Overwrite an existing manifest.
        #[arg(long)]
        force: bool,
    },
    /// Validate the workspace: every finding with its place.
    Check,
    /// Assess the five levels and name the bottleneck (the store's record as evidence, when
    /// there is one).
    Assess,
    /// The runs, newest first.
    Runs {
        /// Only runs with this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
    },
    /// One run.
    Run {
        /// What to show.
        #[command(subcommand)]
        what: RunCommand,
    },
    /// The approvals inbox: what waits for a human.
    Approvals,
    /// Approve a pending request as proposed.
    Approve {
        /// The request (its id or a unique prefix).
        id: String,
    },
    /// Approve a pending request with an edited input.
    Edit {
        /// The request (its id or a unique prefix).
        id: String,
        /// The edited input, a JSON file (`-` for standard input).
        #[arg(long)]
        input: PathBuf,
    },
    /// Reject a pending request.
    Reject {
        /// The request (its id or a unique prefix).
        id: String,
        /// Why (the agent sees it).
        #[arg(long)]
        reason: String,
    },
    /// Pause a target (lifted by `resume`).
    Pause(ControlArgs),
    /// Lift a pause or a stop.
    Resume(ControlArgs),
    /// Stop a target: the kill switch.
    Stop(ControlArgs),
    /// The operator controls: what is in force and the history.
    Controls,
    /// The audit record.
    Audit {
        /// What to do.
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// Memory.
    Memory {
        /// What to do.
        #[command(subcommand)]
        what: MemoryCommand,
    },
    /// The operations report over the audit record, against the workspace's targets (as
    /// Markdown, or `--json`).
    Report {
        /// Only the last period: `30d`, `12h`, `2w`, `90m`.
        #[arg(long)]
        since: Option<String>,
    },
    /// Governance versions.
    Governance {
        /// What to show.
        #[command(subcommand)]
        what: GovernanceCommand,
    },
    /// The humans who may act through this command line.
    Humans {
        /// What to do.
        #[command(subcommand)]
        what: HumansCommand,
    },
    /// Serve the web console (approvals, runs, controls, the audit chain, memory, the
    /// report). Decisions are recorded; the host's worker resumes the runs.
    Serve {
        /// The address to listen on: loopback unless you mean otherwise (put TLS in front of
        /// anything else).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

/// A run status to filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    /// Being executed (or its worker died).
    Running,
    /// Waiting for approvals.
    Parked,
    /// Paused by an operator.
    Paused,
    /// Every task done.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

/// `aios run ...`
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Its tasks, calls with cost, approvals and status.
    Show {
        /// The run (its id or a unique prefix).
        run: String,
    },
    /// Its transcript from the audit record (decisions with the rule, approvals with who,
    /// calls, memory used).
    Transcript {
        /// The run (its id or a unique prefix).
        run: String,
    },
}

/// What a control applies to: exactly one target.
#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
pub struct ControlTargetArgs {
    /// Everything.
    #[arg(long)]
    pub all: bool,
    /// An agent, by its role's name in the workspace.
    #[arg(long)]
    pub agent: Option<String>,
    /// Every agent of a role, by name.
    #[arg(long)]
    pub role: Option<String>,
    /// A pathway, by name.
    #[arg(long)]
    pub pathway: Option<String>,
    /// A run (its id or a unique prefix).
    #[arg(long)]
    pub run: Option<String>,
}

/// `aios pause|resume|stop ...`
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The target.
    #[command(flatten)]
    pub target: ControlTargetArgs,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: String,
}

/// `aios audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain, optionally against a head recorded elsewhere.
    Verify {
        /// A head from `aios audit head`: `LEN:HASH`.
        #[arg(long)]
        anchor: Option<String>,
    },
    /// The chain's head, to record elsewhere.
    Head,
    /// Every entry as JSON lines on standard output.
    Export,
}

/// `aios memory ...`
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Recall by text (keyword ranking).
    Search {
        /// What to look for.
        query: String,
        /// How many hits.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Every version of a record.
    History {
        /// The record's id.
        id: String,
    },
    /// Check every record's checksum and history.
    Verify,
    /// Remove what has expired (dry run unless `--apply`).
    Prune {
        /// Really remove.
        #[arg(long)]
        apply: bool,
    },
}

/// `aios governance ...`
#[derive(Debug, Subcommand)]
pub enum GovernanceCommand {
    /// The governance versions in force over time, from the audit record and the manifest.
    Versions,
    /// What changed between two manifests' governance models.
    Diff {
        /// The older manifest.
        old: PathBuf,
        /// The newer manifest.
        new: PathBuf,
    },
}

/// `aios humans ...`
#[derive(Debug, Subcommand)]
pub enum HumansCommand {
    /// Give a human a credential: prints the token once (only its hash is kept).
    Add {
        /// The human's key in the governance model (a holder or deputy of an anchor).
        name: String,
    },
    /// The humans with a credential.
    List,
    /// Take a human's credential away.
    Remove {
        /// The human.
        name: String,
    },
}
