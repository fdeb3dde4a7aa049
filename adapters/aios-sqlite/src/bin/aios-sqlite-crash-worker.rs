//! The process the crash test kills: it starts or resumes one multi-step workflow on an AIOS
//! SQLite store and exits.
//!
//! ```text
//! aios-sqlite-crash-worker STORE.db SERVICE.db
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
//! With `AIOS_CRASH_WORKER_HOLD_MS` set, the service waits that long after performing an
//! effect before returning it, so a kill timed by the `effect` line lands in the window
//! between the effect and the run's record of it.
//!
//! Each invocation: if the store has no run, start one; if the run is parked and its approval
//! is still pending, approve it as the founder (the human's second invocation of a CLI) and
//! continue; otherwise resume the run from its latest checkpoint. It prints a line when it
//! starts, resumes or approves, when the service returned (before the run recorded the
//! result) and when a step completed, and exits with 0 when the run completed, 3 when it
//! parked, 1 on an error.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorId, ConnectorOutput,
    EffectClass, HumanId, ManualTimer, Money, RoleId, SystemClock,
};
use aios_governance::{
    ApprovalResponse, BudgetKey, BudgetLedger, BudgetLedgerExt, GovernanceModel, Governor,
};
use aios_orchestrator::{
    ConnectorRequest, FnAgent, Orchestrator, OrchestratorConfig, RetryPolicy, Role, RunOutcome,
    RunStatus, TaskSpec, Workflow,
};
use aios_sqlite::SqliteStore;
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The workflow's name.
const WORKFLOW: &str = "crash-test";
/// Its steps; the one at [`MAIL_STEP`] needs approval.
const STEPS: u64 = 6;
const MAIL_STEP: u64 = 4;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "apply six ledger updates and send one mail", "final_authority": "founder" },
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
            },
            conn,
            hold: std::env::var("AIOS_CRASH_WORKER_HOLD_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::ZERO, Duration::from_millis),
        }
    }

    fn perform(&self, call: &ConnectorCall) -> Result<ConnectorOutput, rusqlite::Error> {
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

fn orchestrator(
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
    let role = Role::new("worker", "work", Arc::new(step_agent()))
        .connector("ledger")
        .connector("mail")
        .retry(retry);
    Ok(Orchestrator::builder(governor)
        .role(role)
        .connector(Arc::new(Service::new(
            service.clone(),
            "ledger",
            EffectClass::Reversible,
        )))
        .connector(Arc::new(Service::new(
            service,
            "mail",
            EffectClass::Irreversible,
        )))
        .clock(clock)
        .timer(Arc::new(ManualTimer::default()))
        .audit(audit)
        .checkpoints(Arc::new(store.checkpoint_store()))
        .budgets(Arc::new(ledger))
        .approval_store(Arc::new(store.approval_store()))
        .config(OrchestratorConfig {
            // every incarnation is a new worker (the default: a unique id). A killed
            // incarnation's lease is not inherited: the next one waits until it lapses, so
            // the lease is short here
            lease_ttl: LEASE_TTL,
            ..OrchestratorConfig::default()
        })
        .build())
}

async fn advance(orch: &Orchestrator) -> Result<RunOutcome, Error> {
    let runs = orch.checkpoint_store().list(false).await?;
    let Some(run) = runs.into_iter().find(|r| r.workflow == WORKFLOW) else {
        progress("start");
        return Ok(orch.start(workflow()).await?);
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

/// How long a lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, service] = args.as_slice() else {
        eprintln!("usage: aios-sqlite-crash-worker STORE.db SERVICE.db");
        return ExitCode::from(2);
    };
    let outcome = (|| {
        let store = SqliteStore::open(store)?;
        let service = Service::open(Path::new(service))?;
        let orch = orchestrator(&store, service)?;
        // the lease of a killed incarnation lapses after LEASE_TTL; until then, wait
        let mut waited = Duration::ZERO;
        loop {
            match futures::executor::block_on(advance(&orch)) {
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
