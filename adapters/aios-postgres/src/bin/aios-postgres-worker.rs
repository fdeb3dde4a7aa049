//! A test-only worker process for the multi-process test of `aios-postgres`
//! (`tests/processes.rs`): one of several processes on one PostgreSQL database, killed with
//! SIGKILL at random moments and started again. Built only with feature `testing`; not part
//! of the library.
//!
//! ```text
//! aios-postgres-worker submit STORE_URL SERVICE_URL N   # submit N runs, then exit
//! aios-postgres-worker work STORE_URL SERVICE_URL       # drive runs until every run ended
//! aios-postgres-worker approve STORE_URL SERVICE_URL    # approve as the founder until every run ended
//! ```
//!
//! `STORE_URL` is the AIOS database (checkpoints, audit log, budgets, approvals). `SERVICE_URL`
//! is another database playing the outside world: a service that performs each effect once
//! per idempotency key (table `effects`) and logs every invocation it receives (table
//! `invocations`, with the process id), so the test counts effects from outside.
//!
//! Each run fans out: a planner spawns [`CHILDREN`] child tasks, each applying one ledger
//! effect; then a publish task makes one irreversible (but key-deduplicated) publication,
//! which the governance model holds for the founder's approval. `work` drives runs with
//! `Orchestrator::work` (claiming from the queue) until every run on the database has ended;
//! `approve` answers every pending approval as the founder (through
//! `Orchestrator::answer_approval`, which wakes the run in the queue) until then. Exit 0 when
//! done, 1 on an error (on stderr).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorId, ConnectorOutput,
    EffectClass, HumanId, Money, RoleId,
};
use aios_governance::{ApprovalResponse, GovernanceModel, Governor};
use aios_orchestrator::{
    AgentError, ConnectorRequest, FnAgent, Orchestrator, OrchestratorConfig, RetryPolicy, Role,
    TaskContext, TaskSpec, WorkOptions, Workflow,
};
use aios_postgres::PgStore;
use async_trait::async_trait;
use futures::StreamExt;

/// How many children each run's planner spawns.
pub const CHILDREN: u64 = 2;
/// How long a lease lasts without renewal: a killed worker's runs wait this long.
const LEASE_TTL: Duration = Duration::from_millis(1500);
/// How many runs each worker drives at once.
const RUNS_IN_FLIGHT: usize = 3;
/// Cost of each effect, in minor units.
const EFFECT_COST: i64 = 10;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "apply ledger entries and publish a summary", "final_authority": "founder" },
  "anchors": [
    { "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" }
  ],
  "roles": [ { "key": "worker" } ],
  "pathways": [
    { "key": "work", "anchor": "founder", "delegate": "worker",
      "limits": { "actions": ["ledger.apply", "site.publish"], "effects": ["read_only", "reversible", "irreversible"] },
      "escalation": [ { "name": "publish-needs-approval", "when": { "effect_at_least": "irreversible" },
                        "mode": "approve_before", "deadline": "24h" } ] }
  ],
  "budgets": [
    { "key": "org", "scope": "organisation", "limits": { "cost": 100000000, "tool_calls": 100000 } },
    { "key": "per-run", "scope": "run", "parent": "org", "limits": { "tool_calls": 4, "cost": 1000 } }
  ]
}"#;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The outside world: performs an effect once per key, logs every invocation.
#[derive(Debug)]
struct Service {
    descriptor: ConnectorDescriptor,
    client: Arc<tokio_postgres::Client>,
}

async fn service_client(url: &str) -> Result<Arc<tokio_postgres::Client>, Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("service connection: {e}");
        }
    });
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS effects (
                 key TEXT PRIMARY KEY, connector TEXT NOT NULL, pid BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS invocations (
                 id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, connector TEXT NOT NULL,
                 deduplicated BOOLEAN NOT NULL, pid BIGINT NOT NULL);",
        )
        .await
        .or_else(|e| {
            // two processes creating the tables at once: one wins, the other sees them
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    Ok(Arc::new(client))
}

impl Service {
    fn new(client: Arc<tokio_postgres::Client>, id: &str, effect: EffectClass) -> Self {
        Self {
            descriptor: ConnectorDescriptor {
                id: ConnectorId::new(id),
                effect,
                scopes: vec![],
                idempotent: true,
                default_cost: Money::ZERO,
                operations: vec![],
            },
            client,
        }
    }

    async fn perform(&self, call: &ConnectorCall) -> Result<bool, tokio_postgres::Error> {
        let key = call.idempotency_key.as_str();
        let id = self.descriptor.id.as_str();
        let pid = i64::from(std::process::id());
        // one statement: the effect once per key, and the invocation logged either way
        let row = self
            .client
            .query_one(
                "WITH done AS (
                     INSERT INTO effects (key, connector, pid) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO NOTHING RETURNING key
                 ), logged AS (
                     INSERT INTO invocations (key, connector, deduplicated, pid)
                     SELECT $1, $2, NOT EXISTS (SELECT 1 FROM done), $3 RETURNING deduplicated
                 )
                 SELECT deduplicated FROM logged",
                &[&key, &id, &pid],
            )
            .await?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl Connector for Service {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let deduplicated = self
            .perform(&call)
            .await
            .map_err(|e| ConnectorError::Unavailable {
                connector: self.descriptor.id.clone(),
                detail: e.to_string(),
            })?;
        Ok(ConnectorOutput {
            output: serde_json::json!({ "key": call.idempotency_key.as_str(), "replayed": deduplicated }),
            cost: Money::from_minor(EFFECT_COST),
        })
    }
}

fn governor() -> Result<Governor, Error> {
    let model = GovernanceModel::from_json(MODEL)?;
    model.compile().map_err(|r| r.to_string().into())
}

/// One run: plan (spawns the children), then publish once they are done.
pub fn workflow(i: usize) -> Workflow {
    let role = RoleId::from_name("worker");
    Workflow::new("fan-out")
        .task(TaskSpec::new(
            "plan",
            role,
            serde_json::json!({ "kind": "plan", "n": i }),
        ))
        .task(
            TaskSpec::new("publish", role, serde_json::json!({ "kind": "publish" }))
                .after(["plan"]),
        )
}

async fn plan(ctx: &mut TaskContext<'_>) -> Result<serde_json::Value, AgentError> {
    let role = RoleId::from_name("worker");
    for c in 1..=CHILDREN {
        ctx.spawn(TaskSpec::new(
            format!("child{c}"),
            role,
            serde_json::json!({ "kind": "child", "child": c }),
        ))
        .await?;
    }
    Ok(serde_json::json!({ "children": CHILDREN }))
}

async fn child(ctx: &mut TaskContext<'_>, c: u64) -> Result<serde_json::Value, AgentError> {
    tokio::task::yield_now().await;
    let out = ctx
        .call(
            ConnectorRequest::new("ledger", "apply", serde_json::json!({ "child": c }))
                .estimated_cost(Money::from_minor(EFFECT_COST)),
        )
        .await?;
    Ok(out.output)
}

async fn publish(ctx: &mut TaskContext<'_>) -> Result<serde_json::Value, AgentError> {
    let out = ctx
        .call(
            ConnectorRequest::new(
                "site",
                "publish",
                serde_json::json!({ "summary": CHILDREN }),
            )
            .estimated_cost(Money::from_minor(EFFECT_COST)),
        )
        .await?;
    Ok(out.output)
}

fn agent() -> FnAgent {
    FnAgent::new(|ctx, input| {
        Box::pin(async move {
            match input.input["kind"].as_str() {
                Some("plan") => plan(ctx).await,
                Some("child") => child(ctx, input.input["child"].as_u64().unwrap_or(0)).await,
                Some("publish") => publish(ctx).await,
                other => Err(AgentError::failed(format!("unknown task kind {other:?}"))),
            }
        })
    })
}

async fn orchestrator(store: &PgStore, service_url: &str) -> Result<Orchestrator, Error> {
    let service = service_client(service_url).await?;
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        jitter: 0.0,
        attempt_timeout: None,
        overall_timeout: None,
        ..RetryPolicy::default()
    };
    let role = Role::new("worker", "work", Arc::new(agent()))
        .connector("ledger")
        .connector("site")
        .retry(retry);
    Ok(store
        .orchestrator(governor()?)
        .await?
        .role(role)
        .connector(Arc::new(Service::new(
            service.clone(),
            "ledger",
            EffectClass::Reversible,
        )))
        .connector(Arc::new(Service::new(
            service,
            "site",
            EffectClass::Irreversible,
        )))
        .config(OrchestratorConfig {
            // every incarnation is a new worker with a unique id (the default)
            lease_ttl: LEASE_TTL,
            ..OrchestratorConfig::default()
        })
        .build()?)
}

/// Resolves once every run on the database has ended (checked every half second).
async fn all_ended(orch: &Orchestrator) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match orch.checkpoint_store().list(false).await {
            Ok(runs) if !runs.is_empty() && runs.iter().all(|r| r.status.is_terminal()) => return,
            Ok(_) => {}
            Err(e) => eprintln!("listing runs: {e}"),
        }
    }
}

async fn submit(orch: &Orchestrator, n: usize) -> Result<(), Error> {
    let mut submitted = futures::stream::iter(0..n)
        .map(|i| orch.submit(workflow(i)))
        .buffer_unordered(8);
    while let Some(r) = submitted.next().await {
        r?;
    }
    println!("submitted {n}");
    Ok(())
}

async fn work(orch: &Orchestrator) -> Result<(), Error> {
    let options = WorkOptions::default()
        .concurrency(RUNS_IN_FLIGHT)
        .poll(Duration::from_millis(50))
        .rescan(Duration::from_secs(2));
    let report = orch.work(options, all_ended(orch)).await?;
    for (run, why) in &report.failed {
        eprintln!("not driven {run}: {why}");
    }
    println!("driven {}", report.driven.len());
    Ok(())
}

async fn approve(orch: &Orchestrator) -> Result<(), Error> {
    let alice = HumanId::from_name("alice");
    let mut done = std::pin::pin!(all_ended(orch));
    loop {
        let pending = orch.pending_approvals().await?;
        for p in &pending {
            // refused when already decided (by an earlier incarnation): nothing to do
            if let Err(e) = orch
                .answer_approval(p.id, alice, ApprovalResponse::Approve)
                .await
            {
                eprintln!("approval {}: {e}", p.id);
            }
        }
        if pending.is_empty() {
            let wait = tokio::time::sleep(Duration::from_millis(50));
            tokio::select! {
                () = &mut done => return Ok(()),
                () = wait => {}
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: aios-postgres-worker submit|work|approve STORE_URL SERVICE_URL [N]";
    let (mode, store_url, service_url) = match args.as_slice() {
        [m, s, v, ..] => (m.as_str(), s.clone(), v.clone()),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome: Result<(), Error> = runtime.block_on(async {
        let store = PgStore::connect(&store_url).await?;
        let orch = orchestrator(&store, &service_url).await?;
        match mode {
            "submit" => {
                let n: usize = args
                    .get(3)
                    .ok_or("submit needs N")?
                    .parse()
                    .map_err(|e| format!("N is not a number: {e}"))?;
                submit(&orch, n).await
            }
            "work" => work(&orch).await,
            "approve" => approve(&orch).await,
            other => Err(format!("unknown mode `{other}`; {usage}").into()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
