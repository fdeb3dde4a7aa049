//! The process the crash test kills: it starts or resumes one multi-step workflow on an AIOS
//! SQLite store and exits.
//!
//! ```text
//! aios-sqlite-crash-worker STORE.db SERVICE.db
//! AIOS_CRASH_WORKER_MODE=fanout aios-sqlite-crash-worker STORE.db SERVICE.db
//! ```
//!
//! `STORE.db` holds the orchestrator's state (checkpoints, audit log, budgets, approvals);
//! `SERVICE.db` plays the outside world: a service that performs each side effect once per
//! idempotency key (a replay returns the stored response, as a real service would) and logs
//! every invocation it receives, so a test can tell whether anything happened twice.
//!
//! The workflow has six sequential steps, each one connector call; step 4 sends a mail, an
//! irreversible effect that the governance model makes wait for the founder's approval.
//!
//! With `AIOS_CRASH_WORKER_MODE=fanout` the workflow fans out instead: a planner spawns
//! [`CHILDREN`] child tasks (`TaskContext::spawn`), which run interleaved (concurrency above
//! one, and each child yields between its calls); each applies one ledger effect and writes
//! one memory record (`TaskContext::remember`). A final task waits for every child and sends
//! one mail, an irreversible effect the service does *not* deduplicate (every invocation
//! sends a mail), after the founder's approval. An interrupted mail therefore cannot be
//! retried: the run fails with an outcome-unknown escalation instead (the mail role's
//! fallback is `Escalate`).
//!
//! With `AIOS_CRASH_WORKER_MODE=drain` the process is one of several workers on the file:
//! with `AIOS_CRASH_WORKER_SUBMIT=N` it only submits N runs of the six-step workflow and
//! exits; otherwise it answers every pending approval as the founder and drains the runnable
//! runs with `Orchestrator::work` until every run on the file has ended (exit 0), waiting
//! while runs are leased by other workers.
//!
//! With `AIOS_CRASH_WORKER_HOLD_MS` set, the service waits that long after performing an
//! effect before returning it, so a kill timed by the `effect` line lands in the window
//! between the effect and the run's record of it. In fan-out mode the memory store does the
//! same after each record it writes (line `memory ID`): a kill then lands between the
//! memory write and the journal's record of it.
//!
//! Notifications for humans (approval needed, outcome unknown, escalations) are written to
//! the service file too (table `notifications`), so a test sees them from outside.
//!
//! Each invocation: if the store has no run, start one; if the run is parked and its approval
//! is still pending, approve it as the founder (the human's second invocation of a CLI) and
//! continue; otherwise resume the run from its latest checkpoint. It prints a line when it
//! starts, resumes or approves, when the service returned (before the run recorded the
//! result) and when a step completed, and exits with 0 when the run completed, 3 when it
//! parked, 4 when the run failed (its reason on stderr), 1 on an error.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorId, ConnectorOutput,
    EffectClass, HumanId, MemoryId, Money, Principal, RoleId, StoreError, SystemClock, SystemTimer,
};
use aios_governance::{
    ApprovalResponse, BudgetKey, BudgetLedger, BudgetLedgerExt, GovernanceModel, Governor,
};
use aios_memory::{Access, Grant, Memory, MemoryRecord, MemoryStore, NewMemory, Scope, Tier};
use aios_orchestrator::{
    AgentError, ConnectorRequest, Fallback, FnAgent, MemoryOptions, Notification, Notifier,
    Orchestrator, OrchestratorConfig, RetryPolicy, Role, RunOutcome, RunStatus, TaskContext,
    TaskInput, TaskSpec, WorkOptions, Workflow,
};
use aios_sqlite::{SqliteMemoryStore, SqliteStore};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The workflow's name.
const WORKFLOW: &str = "crash-test";
/// Its steps; the one at [`MAIL_STEP`] needs approval.
const STEPS: u64 = 6;
const MAIL_STEP: u64 = 4;

/// The fan-out workflow's name.
const FANOUT_WORKFLOW: &str = "crash-fanout";
/// How many children its planner spawns.
const CHILDREN: u64 = 5;
/// How many of them run at once.
const FANOUT_CONCURRENCY: usize = 3;
/// The memory scope the children write to.
const FANOUT_SCOPE: &str = "fanout";

/// Which workflow the worker drives (`AIOS_CRASH_WORKER_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Six sequential steps (the default).
    Sequential,
    /// A planner, [`CHILDREN`] spawned children and a mail (`fanout`).
    FanOut,
    /// Many six-step runs, drained by [`Orchestrator::work`] (`drain`).
    Drain,
}

impl Mode {
    fn from_env() -> Result<Self, Error> {
        match std::env::var("AIOS_CRASH_WORKER_MODE").as_deref() {
            Err(_) | Ok("") | Ok("sequential") => Ok(Self::Sequential),
            Ok("fanout") => Ok(Self::FanOut),
            Ok("drain") => Ok(Self::Drain),
            Ok(other) => Err(format!("unknown AIOS_CRASH_WORKER_MODE `{other}`").into()),
        }
    }

    fn workflow_name(self) -> &'static str {
        match self {
            Self::Sequential | Self::Drain => WORKFLOW,
            Self::FanOut => FANOUT_WORKFLOW,
        }
    }

    fn workflow(self) -> Workflow {
        match self {
            Self::Sequential | Self::Drain => workflow(),
            Self::FanOut => fanout_workflow(),
        }
    }
}

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "apply ledger updates and send one mail", "final_authority": "founder" },
  "anchors": [
    { "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" }
  ],
  "roles": [ { "key": "worker" } ],
  "pathways": [
    { "key": "work", "anchor": "founder", "delegate": "worker",
      "limits": { "actions": ["ledger.apply", "mail.send"], "effects": ["read_only", "reversible", "irreversible"] },
      "escalation": [ { "name": "mail-needs-approval", "when": { "effect_at_least": "irreversible" },
                        "mode": "approve_before", "deadline": "24h" } ] }
  ],
  "budgets": [
    { "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 1000 } },
    { "key": "per-run", "scope": "run", "parent": "org", "limits": { "tool_calls": 50 } }
  ]
}"#;

type Error = Box<dyn std::error::Error>;

/// The outside world: a service in its own SQLite file. It performs an effect once per
/// idempotency key and logs every invocation, both in one transaction.
#[derive(Debug)]
struct Service {
    descriptor: ConnectorDescriptor,
    conn: Arc<Mutex<Connection>>,
    /// How long to wait after an effect before returning it (`AIOS_CRASH_WORKER_HOLD_MS`), so
    /// a test's kill lands between the effect and the run's record of it, however fast the
    /// disk.
    hold: Duration,
}

impl Service {
    fn open(path: &Path) -> Result<Arc<Mutex<Connection>>, Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS invocations (
                 n INTEGER PRIMARY KEY AUTOINCREMENT,
                 connector TEXT NOT NULL,
                 key TEXT NOT NULL,
                 step INTEGER NOT NULL,
                 deduplicated INTEGER NOT NULL,
                 pid INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS effects (
                 key TEXT PRIMARY KEY,
                 connector TEXT NOT NULL,
                 step INTEGER NOT NULL,
                 output TEXT NOT NULL,
                 cost INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS mails (
                 n INTEGER PRIMARY KEY AUTOINCREMENT,
                 key TEXT NOT NULL,
                 body TEXT NOT NULL,
                 pid INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS notifications (
                 n INTEGER PRIMARY KEY AUTOINCREMENT,
                 kind TEXT NOT NULL,
                 task TEXT,
                 approval TEXT,
                 message TEXT NOT NULL,
                 pid INTEGER NOT NULL
             );",
        )?;
        Ok(Arc::new(Mutex::new(conn)))
    }

    fn new(conn: Arc<Mutex<Connection>>, id: &str, effect: EffectClass) -> Self {
        Self {
            descriptor: ConnectorDescriptor {
                id: ConnectorId::new(id),
                effect,
                scopes: vec![],
                idempotent: true,
                default_cost: aios_core::Money::ZERO,
                operations: vec![],
            },
            conn,
            hold: hold(),
        }
    }

    /// A mail service that honours no idempotency key: every invocation sends a mail (row of
    /// `mails`), as a plain SMTP relay would.
    fn mailer(conn: Arc<Mutex<Connection>>) -> Self {
        let mut service = Self::new(conn, "mail", EffectClass::Irreversible);
        service.descriptor.idempotent = false;
        service
    }

    fn send(&self, call: &ConnectorCall) -> Result<ConnectorOutput, rusqlite::Error> {
        let key = call.idempotency_key.as_str();
        let body = call.input.to_string();
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO mails (key, body, pid) VALUES (?1, ?2, ?3)",
            rusqlite::params![key, body, std::process::id()],
        )?;
        let sent = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO invocations (connector, key, step, deduplicated, pid) VALUES ('mail', ?1, 0, 0, ?2)",
            rusqlite::params![key, std::process::id()],
        )?;
        tx.commit()?;
        Ok(ConnectorOutput {
            output: serde_json::json!({ "sent": sent }),
            cost: Money::ZERO,
        })
    }

    fn perform(&self, call: &ConnectorCall) -> Result<ConnectorOutput, rusqlite::Error> {
        if !self.descriptor.idempotent {
            return self.send(call);
        }
        let id = self.descriptor.id.as_str();
        let key = call.idempotency_key.as_str();
        let step = call.input["step"].as_i64().unwrap_or(-1);
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<(String, i64)> = tx
            .query_row(
                "SELECT output, cost FROM effects WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (output, cost, deduplicated) = match stored {
            Some((output, cost)) => (output, cost, true),
            None => {
                let output = serde_json::json!({
                    "step": step,
                    "value": call.input["value"],
                    "receipt": format!("{id}-{step}"),
                })
                .to_string();
                let cost = 10 * step;
                tx.execute(
                    "INSERT INTO effects (key, connector, step, output, cost) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![key, id, step, output, cost],
                )?;
                (output, cost, false)
            }
        };
        tx.execute(
            "INSERT INTO invocations (connector, key, step, deduplicated, pid) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![id, key, step, deduplicated, std::process::id()],
        )?;
        tx.commit()?;
        Ok(ConnectorOutput {
            output: serde_json::from_str(&output).unwrap_or(serde_json::Value::Null),
            cost: Money::from_minor(cost),
        })
    }
}

#[async_trait]
impl Connector for Service {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let out = self
            .perform(&call)
            .map_err(|e| ConnectorError::Unavailable {
                connector: self.descriptor.id.clone(),
                detail: e.to_string(),
            })?;
        // the effect is done (or was, and this is a replay); the run has not recorded it yet
        progress(&format!("effect {}", call.idempotency_key));
        if !self.hold.is_zero() {
            std::thread::sleep(self.hold);
        }
        Ok(out)
    }
}

/// How long to hold after each effect or memory write (`AIOS_CRASH_WORKER_HOLD_MS`).
fn hold() -> Duration {
    std::env::var("AIOS_CRASH_WORKER_HOLD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// Delivers notifications into the service file (table `notifications`), where a test reads
/// them after the worker died.
#[derive(Debug)]
struct ServiceNotifier {
    conn: Arc<Mutex<Connection>>,
}

#[async_trait]
impl Notifier for ServiceNotifier {
    async fn notify(&self, n: Notification) {
        let kind = serde_json::to_value(n.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let conn = self.conn.lock();
        // a notifier must not fail the run; a lost notification shows in the test's counts
        let _ = conn.execute(
            "INSERT INTO notifications (kind, task, approval, message, pid) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                kind,
                n.task.map(|t| t.to_string()),
                n.approval.map(|a| a.to_string()),
                n.message,
                std::process::id()
            ],
        );
    }
}

/// A memory store that announces every record it wrote (`memory ID`) and then holds, like the
/// service after an effect, so a kill lands between the write and the journal's record of it.
#[derive(Debug)]
struct AnnouncingMemoryStore {
    inner: SqliteMemoryStore,
    hold: Duration,
}

#[async_trait]
impl MemoryStore for AnnouncingMemoryStore {
    async fn put(
        &self,
        record: MemoryRecord,
        expected_previous: Option<u32>,
    ) -> Result<(), StoreError> {
        let id = record.id;
        self.inner.put(record, expected_previous).await?;
        progress(&format!("memory {id}"));
        if !self.hold.is_zero() {
            std::thread::sleep(self.hold);
        }
        Ok(())
    }

    async fn get(&self, id: MemoryId, version: Option<u32>) -> Result<MemoryRecord, StoreError> {
        self.inner.get(id, version).await
    }

    async fn versions(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, StoreError> {
        self.inner.versions(id).await
    }

    async fn scan(
        &self,
        after: Option<MemoryId>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, StoreError> {
        self.inner.scan(after, limit).await
    }

    async fn delete(&self, id: MemoryId) -> Result<(), StoreError> {
        self.inner.delete(id).await
    }
}

/// Returns `Pending` once (waking itself), so the executor runs the other ready tasks: the
/// children of a fan-out interleave their calls.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

fn yield_now() -> YieldNow {
    YieldNow(false)
}

fn progress(line: &str) {
    let mut out = std::io::stdout().lock();
    // the test reads these lines to decide when to kill; a closed pipe only means nobody reads
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn governor() -> Result<Governor, Error> {
    let model = GovernanceModel::from_json(MODEL)?;
    model.compile().map_err(|r| r.to_string().into())
}

fn workflow() -> Workflow {
    let role = RoleId::from_name("worker");
    (1..=STEPS).fold(Workflow::new(WORKFLOW), |w, n| {
        let spec = TaskSpec::new(format!("step{n}"), role, serde_json::json!({ "step": n }));
        if n == 1 {
            w.task(spec)
        } else {
            w.task(spec.after([format!("step{}", n - 1)]))
        }
    })
}

fn step_agent() -> FnAgent {
    FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let step = input.input["step"].as_u64().unwrap_or(0);
            // each step adds one to the value the previous step's effect returned
            let previous = input
                .deps
                .values()
                .next()
                .and_then(|out| out["value"].as_i64())
                .unwrap_or(0);
            let (connector, operation) = if step == MAIL_STEP {
                ("mail", "send")
            } else {
                ("ledger", "apply")
            };
            let out = ctx
                .call(
                    ConnectorRequest::new(
                        connector,
                        operation,
                        serde_json::json!({ "step": step, "value": previous + 1 }),
                    )
                    .estimated_cost(Money::from_minor(100)),
                )
                .await?;
            progress(&format!("step {step} done"));
            Ok(out.output)
        })
    })
}

fn fanout_workflow() -> Workflow {
    let role = RoleId::from_name("worker");
    Workflow::new(FANOUT_WORKFLOW)
        .task(TaskSpec::new(
            "plan",
            role,
            serde_json::json!({ "kind": "plan", "children": CHILDREN }),
        ))
        // spawned children become dependencies of the planner's dependents: the mail waits
        // for all of them
        .task(TaskSpec::new("mail", role, serde_json::json!({ "kind": "mail" })).after(["plan"]))
}

fn memory_error(e: impl std::error::Error + Send + Sync + 'static) -> AgentError {
    AgentError::failed_because("the fan-out scope does not parse", e)
}

/// The planner: spawns the children.
async fn plan(ctx: &mut TaskContext<'_>) -> Result<serde_json::Value, AgentError> {
    let role = RoleId::from_name("worker");
    for i in 1..=CHILDREN {
        let spec = TaskSpec::new(
            format!("child{i}"),
            role,
            serde_json::json!({ "kind": "child", "child": i }),
        );
        ctx.spawn(spec).await?;
        progress(&format!("spawned child{i}"));
    }
    Ok(serde_json::json!({ "children": CHILDREN }))
}

/// A child: one ledger effect, then one memory record of it, yielding to the other children
/// between its calls.
async fn child(ctx: &mut TaskContext<'_>, i: u64) -> Result<serde_json::Value, AgentError> {
    yield_now().await;
    let out = ctx
        .call(
            ConnectorRequest::new(
                "ledger",
                "apply",
                serde_json::json!({ "step": i, "value": 100 * i }),
            )
            .estimated_cost(Money::from_minor(100)),
        )
        .await?;
    progress(&format!("child {i} applied"));
    yield_now().await;
    let receipt = out.output["receipt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let scope = Scope::parse(FANOUT_SCOPE).map_err(memory_error)?;
    let record = ctx
        .remember(
            NewMemory::new(
                scope,
                Tier::Project,
                format!("child {i} applied ledger receipt {receipt}"),
                Principal::System,
            )
            .meta("child", i),
        )
        .await?;
    progress(&format!("child {i} done"));
    Ok(serde_json::json!({
        "child": i,
        "value": out.output["value"],
        "memory": record.id.to_string(),
    }))
}

/// The final task: one mail summing what the children applied (needs approval).
async fn mail(
    ctx: &mut TaskContext<'_>,
    input: &TaskInput,
) -> Result<serde_json::Value, AgentError> {
    let children: Vec<&serde_json::Value> = input
        .deps
        .iter()
        .filter(|(name, _)| name.to_string().starts_with("child"))
        .map(|(_, out)| out)
        .collect();
    let total: i64 = children.iter().filter_map(|o| o["value"].as_i64()).sum();
    let out = ctx
        .call(ConnectorRequest::new(
            "mail",
            "send",
            serde_json::json!({ "to": "founder", "children": children.len(), "total": total }),
        ))
        .await?;
    progress("mail sent");
    Ok(
        serde_json::json!({ "sent": out.output["sent"], "children": children.len(), "total": total }),
    )
}

fn fanout_agent() -> FnAgent {
    FnAgent::new(|ctx, input| {
        Box::pin(async move {
            match input.input["kind"].as_str() {
                Some("plan") => plan(ctx).await,
                Some("child") => child(ctx, input.input["child"].as_u64().unwrap_or(0)).await,
                Some("mail") => mail(ctx, &input).await,
                other => Err(AgentError::failed(format!("unknown task kind {other:?}"))),
            }
        })
    })
}

fn orchestrator(
    mode: Mode,
    store: &SqliteStore,
    service: Arc<Mutex<Connection>>,
) -> Result<Orchestrator, Error> {
    let governor = governor()?;
    let plan = governor.budget_plan();
    let clock = Arc::new(SystemClock);
    let audit = Arc::new(store.audit_log());
    let ledger = store.budget_ledger(clock.clone()).with_audit(audit.clone());
    futures::executor::block_on(async {
        // the plan is applied once: re-applying limits would reset the alerts already sent
        if ledger.usage(BudgetKey::Organisation).await?.is_none() {
            ledger.apply_plan(&plan).await?;
        }
        Ok::<_, aios_governance::BudgetError>(())
    })?;
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::ZERO,
        jitter: 0.0,
        attempt_timeout: None,
        overall_timeout: None,
        ..RetryPolicy::default()
    };
    let (agent, mailer, concurrency) = match mode {
        Mode::Sequential | Mode::Drain => (
            step_agent(),
            Service::new(service.clone(), "mail", EffectClass::Irreversible),
            OrchestratorConfig::default().concurrency,
        ),
        Mode::FanOut => (
            fanout_agent(),
            Service::mailer(service.clone()),
            FANOUT_CONCURRENCY,
        ),
    };
    let mut role = Role::new("worker", "work", Arc::new(agent))
        .connector("ledger")
        .connector("mail")
        .retry(retry);
    if mode == Mode::FanOut {
        // an interrupted mail cannot be retried: the founder hears of it, the run fails
        role = role.fallback(Fallback::Escalate);
    }
    let mut builder = Orchestrator::builder(governor)
        .role(role)
        .connector(Arc::new(Service::new(
            service.clone(),
            "ledger",
            EffectClass::Reversible,
        )))
        .connector(Arc::new(mailer))
        .notifier(Arc::new(ServiceNotifier { conn: service }))
        .clock(clock.clone())
        .timer(Arc::new(SystemTimer))
        .audit(audit.clone())
        .checkpoints(Arc::new(store.checkpoint_store()))
        .budgets(Arc::new(ledger))
        .approval_store(Arc::new(store.approval_store()))
        .config(OrchestratorConfig {
            // every incarnation is a new worker (the default: a unique id). A killed
            // incarnation's lease is not inherited: the next one waits until it lapses, so
            // the lease is short here
            lease_ttl: LEASE_TTL,
            concurrency,
            ..OrchestratorConfig::default()
        });
    if mode == Mode::FanOut {
        let records = AnnouncingMemoryStore {
            inner: store.memory_store(),
            hold: hold(),
        };
        let memory = futures::executor::block_on(
            Memory::builder(clock)
                .store(Arc::new(records))
                .audit(audit)
                .open(),
        )?;
        let scope = Scope::parse(FANOUT_SCOPE)?;
        let grants = vec![Grant::role(
            RoleId::from_name("worker"),
            scope.clone(),
            Access::ReadWrite,
        )];
        builder = builder.memory(memory, MemoryOptions::new(grants, scope));
    }
    Ok(builder.build()?)
}

async fn advance(mode: Mode, orch: &Orchestrator) -> Result<RunOutcome, Error> {
    let runs = orch.checkpoint_store().list(false).await?;
    let Some(run) = runs
        .into_iter()
        .find(|r| r.workflow == mode.workflow_name())
    else {
        progress("start");
        return Ok(orch.start(mode.workflow()).await?);
    };
    match &run.status {
        RunStatus::Completed => {
            return Ok(RunOutcome {
                run: run.run,
                status: RunStatus::Completed,
                outputs: Default::default(),
            })
        }
        RunStatus::Parked { approvals } => {
            let pending = orch.pending_approvals().await?;
            if let Some(a) = approvals
                .iter()
                .find(|a| pending.iter().any(|p| p.id == **a))
            {
                progress(&format!("approve {a}"));
                return Ok(orch
                    .submit_approval(*a, HumanId::from_name("alice"), ApprovalResponse::Approve)
                    .await?);
            }
        }
        _ => {}
    }
    progress(&format!("resume {}", run.run));
    Ok(orch.resume(run.run).await?)
}

/// Drain mode: submit runs, or work until every run on the file has ended; returns how
/// many runs the file holds.
async fn drain(orch: &Orchestrator) -> Result<usize, Error> {
    if let Ok(n) = std::env::var("AIOS_CRASH_WORKER_SUBMIT") {
        let n: usize = n.parse()?;
        for _ in 0..n {
            orch.submit(workflow()).await?;
        }
        progress(&format!("submitted {n}"));
        return Ok(n);
    }
    let alice = HumanId::from_name("alice");
    loop {
        for p in orch.pending_approvals().await? {
            // another worker may answer first: then this one is refused, and goes on
            match orch
                .answer_approval(p.id, alice, ApprovalResponse::Approve)
                .await
            {
                Ok(run) => progress(&format!("approved {} of {run}", p.id)),
                Err(e) => progress(&format!("approval {} left: {e}", p.id)),
            }
        }
        let report = orch
            .work(
                WorkOptions::until_idle().concurrency(4),
                futures::future::pending(),
            )
            .await?;
        for o in &report.driven {
            progress(&format!("driven {} {:?}", o.run, o.status));
        }
        for (run, why) in &report.failed {
            progress(&format!("not driven {run}: {why}"));
        }
        let runs = orch.checkpoint_store().list(false).await?;
        if runs.iter().all(|r| r.status.is_terminal()) {
            return Ok(runs.len());
        }
        if report.driven.is_empty() {
            // the rest is leased by other workers (alive, or dead until their leases lapse)
            std::thread::sleep(LEASE_TTL / 4);
        }
    }
}

/// How long a lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, service] = args.as_slice() else {
        eprintln!("usage: aios-sqlite-crash-worker STORE.db SERVICE.db");
        return ExitCode::from(2);
    };
    let outcome = (|| {
        let mode = Mode::from_env()?;
        let store = SqliteStore::open(store)?;
        let service = Service::open(Path::new(service))?;
        let orch = orchestrator(mode, &store, service)?;
        if mode == Mode::Drain {
            let n = futures::executor::block_on(drain(&orch))?;
            progress(&format!("drained {n}"));
            return Ok(RunOutcome {
                run: aios_core::RunId::from_name("drain"),
                status: RunStatus::Completed,
                outputs: Default::default(),
            });
        }
        // the lease of a killed incarnation lapses after LEASE_TTL; until then, wait
        let mut waited = Duration::ZERO;
        loop {
            match futures::executor::block_on(advance(mode, &orch)) {
                Err(e) if waited < LEASE_TTL * 20 && e.to_string().contains("lease") => {
                    std::thread::sleep(LEASE_TTL / 4);
                    waited += LEASE_TTL / 4;
                }
                other => break other,
            }
        }
    })();
    match outcome {
        Ok(o) if o.status == RunStatus::Completed => {
            progress("completed");
            ExitCode::SUCCESS
        }
        Ok(o) if matches!(o.status, RunStatus::Parked { .. }) => {
            progress("parked");
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
