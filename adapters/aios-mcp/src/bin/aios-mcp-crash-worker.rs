//! The process `tests/crash.rs` starts, kills with SIGKILL and restarts: one governed run
//! that reads and writes files through a stdio MCP server, on an AIOS SQLite store. Only for
//! tests (feature `crash-worker`).
//!
//! ```text
//! aios-mcp-crash-worker start  STORE.db NOTICES.jsonl ROOT -- COMMAND [ARGS...]
//! aios-mcp-crash-worker decide STORE.db HUMAN [APPROVAL]
//! aios-mcp-crash-worker resume STORE.db NOTICES.jsonl -- COMMAND [ARGS...]
//! ```
//!
//! `COMMAND ARGS` starts the MCP server, a `@modelcontextprotocol/server-filesystem` (or a
//! proxy in front of one) allowed to work in `ROOT`. The connector is named `fs` and allows
//! two tools, each pinned: `read_text_file`, configured read-only and idempotent, and
//! `write_file`, pinned but left unclassified, so it is irreversible and not idempotent
//! (the fail-closed default for an untrusted server).
//!
//! - `start`: starts the run of workflow `file-notes`: task `summarise` (role `clerk`) reads
//!   `ROOT/notes.txt` (read-only: no approval) and writes `summary: <the notes>` to
//!   `ROOT/summary.txt` (irreversible: the governance model makes it wait for the founder,
//!   anchor `founder`, holder `alice`). The run parks; the worker exits with 3.
//! - `decide`: the operator's process. It opens the store with no connector and no role
//!   (no MCP server is started), prints each pending approval (`inbox {json}`) and approves
//!   as `HUMAN`, through `Orchestrator::answer_approval` and without resuming the run, the
//!   request `APPROVAL` or else every pending one. A refusal (not a holder, already decided
//!   or used) exits with 5 and says why on stderr.
//! - `resume`: resumes the run from its latest checkpoint (waiting while the lease of a
//!   killed incarnation is still live), and exits with 0 when it completed, 3 when it is
//!   still parked, 4 when it failed (the reason on stderr).
//!
//! Progress on stdout, one line each, so a test knows when to kill: `connected`, then per
//! allowed tool `op NAME EFFECT idempotent=BOOL` (what the connector declares) and
//! `hints NAME {json}` (what the server's annotations claim, untrusted), `start RUN`
//! or `resume RUN`, `call TOOL` before each call reaches the connector and `effect TOOL`
//! after the server answered it and before the run recorded the result (with
//! `AIOS_MCP_CRASH_HOLD_MS` the worker waits there that long, so a kill timed by that line
//! lands between the server's effect and the run's record of it), `notice KIND` after each
//! notification was written (and the same hold), and at the end `completed`,
//! `parked APPROVAL` or `failed`.
//!
//! Notifications for humans (approval needed, outcome unknown, ...) are appended to
//! `NOTICES.jsonl` as `{"kind", "task", "approval", "message"}`, so a test reads them after
//! the worker died.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    ApprovalId, Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorOutput,
    EffectClass, HumanId, RoleId,
};
use aios_governance::{
    ApprovalResponse, BudgetKey, BudgetLedger, BudgetLedgerExt, GovernanceModel, Governor,
};
use aios_mcp::{ConnectOptions, McpConnector, McpServerConfig, ToolConfig};
use aios_orchestrator::{
    ConnectorRequest, Fallback, FnAgent, Notification, Notifier, Orchestrator, OrchestratorConfig,
    RetryPolicy, Role, RunOutcome, RunStatus, TaskSpec, Workflow,
};
use aios_sqlite::SqliteStore;
use async_trait::async_trait;

/// The workflow's name.
const WORKFLOW: &str = "file-notes";

/// The reviewed pins of `@modelcontextprotocol/server-filesystem` 2026.8.31 (as in
/// `tests/filesystem.toml`).
const READ_PIN: &str = "sha256:1d8b2b6ca5e1073726f4f41ba61ac8c888d2867157d6cf12547c55051c7f482a";
const WRITE_PIN: &str = "sha256:7b912840bf28bc44ce107f55630d64b645ad78ed92be02185b7ca9143bb0b917";

/// How long a lease lasts without renewal: a killed incarnation's lease blocks the next one
/// that long.
const LEASE_TTL: Duration = Duration::from_millis(300);

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "a one-person consultancy keeping its files", "final_authority": "founder" },
  "anchors": [ { "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" } ],
  "roles": [ { "key": "clerk" } ],
  "pathways": [
    { "key": "files", "anchor": "founder", "delegate": "clerk",
      "limits": { "actions": ["fs.read_text_file", "fs.write_file"],
                  "effects": ["read_only", "reversible", "irreversible"] },
      "escalation": [ { "name": "writes-need-the-founder", "when": { "effect_at_least": "irreversible" },
                        "mode": "approve_before", "deadline": "24h" } ] }
  ],
  "budgets": [ { "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 100 } } ]
}"#;

type Error = Box<dyn std::error::Error>;

fn progress(line: &str) {
    let mut out = std::io::stdout().lock();
    // the test reads these lines to decide when to kill; a closed pipe only means nobody reads
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// How long to wait after each effect (`AIOS_MCP_CRASH_HOLD_MS`).
fn hold() -> Result<Duration, Error> {
    match std::env::var("AIOS_MCP_CRASH_HOLD_MS") {
        Err(_) => Ok(Duration::ZERO),
        Ok(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|e| format!("AIOS_MCP_CRASH_HOLD_MS `{v}`: {e}").into()),
    }
}

/// The MCP connector, announcing each call before it reaches the server (`call`) and after
/// the server answered (`effect`), then holding so a kill lands before the run records it.
#[derive(Debug)]
struct Announcing {
    inner: McpConnector,
    hold: Duration,
}

#[async_trait]
impl Connector for Announcing {
    fn descriptor(&self) -> &ConnectorDescriptor {
        self.inner.descriptor()
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let tool = call.operation.clone();
        progress(&format!("call {tool}"));
        let out = self.inner.invoke(call).await?;
        progress(&format!("effect {tool}"));
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        Ok(out)
    }
}

/// Appends every notification to a JSON-lines file, where a test reads it after the worker
/// died.
#[derive(Debug)]
struct FileNotifier {
    path: PathBuf,
    /// How long to wait after each notice (`AIOS_MCP_CRASH_HOLD_MS`), so a kill timed by
    /// its `notice` line lands before the run recorded what comes next.
    hold: Duration,
}

#[async_trait]
impl Notifier for FileNotifier {
    async fn notify(&self, n: Notification) {
        let line = serde_json::json!({
            "kind": n.kind,
            "task": n.task.map(|t| t.to_string()),
            "approval": n.approval.map(|a| a.to_string()),
            "message": n.message,
        });
        // a notifier must not fail the run; a lost notification shows in the test's counts
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                writeln!(f, "{line}")?;
                f.sync_all()
            });
        if let Err(e) = written {
            eprintln!("notification not written to {}: {e}", self.path.display());
        }
        progress(&format!(
            "notice {}",
            line["kind"].as_str().unwrap_or_default()
        ));
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
    }
}

fn governor() -> Result<Governor, Error> {
    let model = GovernanceModel::from_json(MODEL)?;
    model.compile().map_err(|r| r.to_string().into())
}

/// The clerk: reads the notes, then writes their summary (which parks for the founder).
fn clerk() -> FnAgent {
    FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let root = input.input["root"].as_str().unwrap_or_default().to_string();
            let notes = ctx
                .call(ConnectorRequest::new(
                    "fs",
                    "read_text_file",
                    serde_json::json!({ "path": format!("{root}/notes.txt") }),
                ))
                .await?;
            let text = notes.output["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let written = ctx
                .call(ConnectorRequest::new(
                    "fs",
                    "write_file",
                    serde_json::json!({
                        "path": format!("{root}/summary.txt"),
                        "content": format!("summary: {text}"),
                    }),
                ))
                .await?;
            Ok(serde_json::json!({ "read": text, "written": written.output["text"] }))
        })
    })
}

/// The connector's configuration: `write_file` is pinned but its effect is left to the
/// fail-closed default.
fn mcp_config(server: &[String]) -> Result<McpServerConfig, Error> {
    let [command, args @ ..] = server else {
        return Err("no MCP server command after `--`".into());
    };
    let config = args
        .iter()
        .fold(McpServerConfig::stdio("fs", command.as_str()), |c, a| {
            c.arg(a.as_str())
        })
        .timeout(Duration::from_secs(10))
        .tool(
            "read_text_file",
            ToolConfig::pinned(READ_PIN)
                .effect(EffectClass::ReadOnly)
                .idempotent(true),
        )
        .tool("write_file", ToolConfig::pinned(WRITE_PIN));
    Ok(config)
}

/// The store's orchestrator builder, with the budget plan applied once.
async fn builder(
    store: &SqliteStore,
    governor: Governor,
) -> Result<aios_orchestrator::OrchestratorBuilder, Error> {
    let ledger = store.budget_ledger(Arc::new(aios_core::SystemClock));
    // the plan is applied once: re-applying limits would reset the alerts already sent
    if ledger.usage(BudgetKey::Organisation).await?.is_none() {
        ledger.apply_plan(&governor.budget_plan()).await?;
    }
    Ok(store
        .orchestrator(governor)
        .await?
        .config(OrchestratorConfig {
            lease_ttl: LEASE_TTL,
            ..OrchestratorConfig::default()
        }))
}

/// The worker's orchestrator: the clerk and the announcing MCP connector.
async fn worker(
    store: &SqliteStore,
    notices: &Path,
    server: &[String],
) -> Result<(Orchestrator, McpConnector), Error> {
    let (fs, report) = McpConnector::connect(mcp_config(server)?, ConnectOptions::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if report.allowed() != ["read_text_file", "write_file"] {
        return Err(format!("unexpected pin check: {:?}", report.refusals()).into());
    }
    progress("connected");
    let offered = fs.offered();
    for op in &fs.descriptor().operations {
        let effect = serde_json::to_value(op.effect)?;
        progress(&format!(
            "op {} {} idempotent={}",
            op.name,
            effect.as_str().unwrap_or("?"),
            op.idempotent
        ));
        if let Some(t) = offered.iter().find(|t| t.name == op.name) {
            progress(&format!(
                "hints {} {}",
                op.name,
                serde_json::to_string(&t.annotations)?
            ));
        }
    }
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    let role = Role::new("clerk", "files", Arc::new(clerk()))
        .connector("fs")
        .retry(retry)
        // an interrupted write cannot be retried blindly: the founder hears of it
        .fallback(Fallback::Escalate);
    let orch = builder(store, governor()?)
        .await?
        .role(role)
        .connector(Arc::new(Announcing {
            inner: fs.clone(),
            hold: hold()?,
        }))
        .notifier(Arc::new(FileNotifier {
            path: notices.to_path_buf(),
            hold: hold()?,
        }))
        .build()?;
    Ok((orch, fs))
}

async fn start(orch: &Orchestrator, root: &str) -> Result<RunOutcome, Error> {
    if !orch.checkpoint_store().list(false).await?.is_empty() {
        return Err("the store already holds a run; `resume` it".into());
    }
    let workflow = Workflow::new(WORKFLOW).task(TaskSpec::new(
        "summarise",
        RoleId::from_name("clerk"),
        serde_json::json!({ "root": root }),
    ));
    let outcome = orch.start(workflow).await?;
    progress(&format!("start {}", outcome.run));
    Ok(outcome)
}

async fn resume(orch: &Orchestrator) -> Result<RunOutcome, Error> {
    let runs = orch.checkpoint_store().list(false).await?;
    let Some(run) = runs.into_iter().find(|r| r.workflow == WORKFLOW) else {
        return Err("the store holds no run to resume; `start` one".into());
    };
    if run.status.is_terminal() {
        return Ok(RunOutcome {
            run: run.run,
            status: run.status,
            outputs: Default::default(),
        });
    }
    progress(&format!("resume {}", run.run));
    // the lease of a killed incarnation lapses after LEASE_TTL; until then, wait
    let mut waited = Duration::ZERO;
    loop {
        match orch.resume(run.run).await {
            Err(e) if waited < LEASE_TTL * 20 && e.to_string().contains("lease") => {
                tokio::time::sleep(LEASE_TTL / 4).await;
                waited += LEASE_TTL / 4;
            }
            other => return Ok(other?),
        }
    }
}

/// The operator: approves as `human` the request `approval`, or every pending one. Returns
/// how many it approved.
async fn decide(
    store: &SqliteStore,
    human: &str,
    approval: Option<&String>,
) -> Result<usize, Error> {
    let orch = builder(store, governor()?).await?.build()?;
    let inbox = orch.inbox().await?;
    for p in &inbox {
        progress(&format!("inbox {}", serde_json::to_string(p)?));
    }
    let ids: Vec<ApprovalId> = match approval {
        Some(a) => vec![a
            .parse()
            .map_err(|e| format!("approval `{a}` is not an approval id: {e}"))?],
        None => inbox.iter().map(|p| p.id).collect(),
    };
    for id in &ids {
        let run = orch
            .answer_approval(*id, HumanId::from_name(human), ApprovalResponse::Approve)
            .await?;
        progress(&format!("decided {id} {run}"));
    }
    Ok(ids.len())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: aios-mcp-crash-worker start STORE.db NOTICES.jsonl ROOT -- COMMAND [ARGS...]\n       aios-mcp-crash-worker decide STORE.db HUMAN [APPROVAL]\n       aios-mcp-crash-worker resume STORE.db NOTICES.jsonl -- COMMAND [ARGS...]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (own, server) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&args[..], &args[..0]),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome: Result<RunOutcome, Error> = match own {
        [cmd, store, human, approval @ ..] if cmd == "decide" && approval.len() <= 1 => {
            return match SqliteStore::open(store)
                .map_err(Error::from)
                .and_then(|s| runtime.block_on(decide(&s, human, approval.first())))
            {
                Ok(n) => {
                    progress(&format!("decided {n}"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("refused: {e}");
                    ExitCode::from(5)
                }
            };
        }
        [cmd, store, notices, root] if cmd == "start" => runtime.block_on(async {
            let store = SqliteStore::open(store)?;
            let (orch, fs) = worker(&store, Path::new(notices), server).await?;
            let outcome = start(&orch, root).await;
            fs.close().await;
            outcome
        }),
        [cmd, store, notices] if cmd == "resume" => runtime.block_on(async {
            let store = SqliteStore::open(store)?;
            let (orch, fs) = worker(&store, Path::new(notices), server).await?;
            let outcome = resume(&orch).await;
            fs.close().await;
            outcome
        }),
        _ => return usage(),
    };
    match outcome {
        Ok(o) if o.status == RunStatus::Completed => {
            progress("completed");
            ExitCode::SUCCESS
        }
        Ok(RunOutcome {
            status: RunStatus::Parked { approvals },
            ..
        }) => {
            let ids: Vec<String> = approvals.iter().map(|a| a.to_string()).collect();
            progress(&format!("parked {}", ids.join(" ")));
            ExitCode::from(3)
        }
        Ok(RunOutcome {
            run,
            status: RunStatus::Failed { reason },
            ..
        }) => {
            progress("failed");
            eprintln!("run {run} failed: {reason}");
            ExitCode::from(4)
        }
        Ok(o) => {
            eprintln!("run {} ended as {:?}", o.run, o.status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
