//! AIOS quickstart: a one-person company whose agents research, draft and send a newsletter,
//! governed by its founder.
//!
//! ```text
//! cargo run --example quickstart                 # first run: remembers, decides, parks for approval
//! cargo run --example quickstart                 # second run: lists the approval, approves, finishes
//! cargo run --example quickstart -- --in-memory  # everything in one process, nothing on disk
//! cargo run --example quickstart -- --reset      # start over (deletes the database and outbox)
//! ```
//!
//! Everything durable (memory, checkpoints, approvals, budgets, the audit chain) lives in one
//! SQLite file, `target/aios-quickstart.sqlite`, so the run parked for approval survives the
//! process ending. The model is scripted (deterministic, no network); the email connector
//! writes to `target/aios-outbox.jsonl` and deduplicates by idempotency key, like a real
//! service would.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aios::core::{
    AuditLog, AuditLogExt, Clock, Connector, ConnectorCall, ConnectorDescriptor, ConnectorError,
    ConnectorId, ConnectorOutput, EffectClass, HashEmbedder, HumanId, Money, PathwayId, Principal,
    RoleId, ScriptedModel, SystemClock,
};
use aios::governance::{ActionRequest, ApprovalResponse, GovernanceModel};
use aios::memory::{
    Access, Grant, Memory, MemoryStore, NewMemory, RecallQuery, Revision, Scope, Tier,
};
use aios::orchestrator::{
    ConnectorRequest, FnAgent, LlmAgent, MemoryOptions, ModelRouter, Role, RunStatus, TaskSpec,
    Workflow,
};
use aios::sqlite::SqliteStore;
use async_trait::async_trait;

type Error = Box<dyn std::error::Error>;

/// The founder's governance model: who is accountable, what each agent may do alone, when a
/// human must approve, and how much may be spent.
const GOVERNANCE: &str = r#"{
  "version": 1,
  "changelog": [{ "version": 1, "summary": "first delegation of the newsletter" }],
  "charter": {
    "intent": "a one-person consultancy that researches, writes and sends a weekly newsletter",
    "non_negotiables": ["no money moves without the founder"],
    "final_authority": "founder",
    "boundaries": { "forbidden_actions": ["payments.transfer"] }
  },
  "anchors": [
    { "key": "founder", "title": "Founder", "holders": ["alice"], "deputy": "bob", "response_time": "24h",
      "responsibilities": ["everything that leaves the company"] }
  ],
  "roles": [ { "key": "researcher" }, { "key": "writer" }, { "key": "outreach" } ],
  "pathways": [
    { "key": "research", "anchor": "founder", "delegate": "researcher",
      "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
      "escalation": [ { "name": "expensive-research", "when": { "cost_above": 500 }, "mode": "approve_before" } ] },
    { "key": "writing", "anchor": "founder", "delegate": "writer",
      "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
      "escalation": [ { "name": "long-draft", "when": { "cost_above": 300 }, "mode": "notify_after" } ] },
    { "key": "outreach", "anchor": "founder", "delegate": "outreach",
      "limits": { "actions": ["model.complete", "email.send"], "effects": ["read_only", "irreversible"] },
      "escalation": [ { "name": "irreversible-needs-approval", "when": { "effect_at_least": "irreversible" },
                        "mode": "approve_before", "deadline": "24h" } ] }
  ],
  "budgets": [
    { "key": "company", "scope": "organisation", "period": "month", "limits": { "cost": 5000, "tool_calls": 200 } },
    { "key": "per-run", "scope": "run", "parent": "company", "limits": { "tool_calls": 5 } }
  ]
}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let in_memory = args.iter().any(|a| a == "--in-memory");
    let dir = PathBuf::from("target");
    let db_path = dir.join("aios-quickstart.sqlite");
    let outbox_path = dir.join("aios-outbox.jsonl");
    if args.iter().any(|a| a == "--reset") {
        for p in [&db_path, &outbox_path] {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(dir.join("aios-quickstart.sqlite-wal"));
        let _ = std::fs::remove_file(dir.join("aios-quickstart.sqlite-shm"));
        println!(
            "Reset: removed {} and {}.",
            db_path.display(),
            outbox_path.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let alice = HumanId::from_name("alice");

    // ---- storage: one SQLite file, or everything in memory -------------------------------
    let db = if in_memory {
        SqliteStore::in_memory()?
    } else {
        SqliteStore::open(&db_path)?
    };
    let audit: Arc<dyn AuditLog> = Arc::new(db.audit_log());
    let memory_store: Arc<dyn MemoryStore> = Arc::new(db.memory_store());
    println!("# AIOS quickstart");
    match in_memory {
        true => println!("Storage: in memory (nothing is kept).\n"),
        false => println!(
            "Storage: {} (run again to continue where this run stops).\n",
            db_path.display()
        ),
    }

    // ---- governance: load, validate, decide ------------------------------------------------
    let model = GovernanceModel::from_json(GOVERNANCE)?;
    let governor = model
        .compile()
        .map_err(|report| format!("invalid governance model:\n{report}"))?;
    println!("## Governance (model version {})", governor.version());
    let outreach = (
        RoleId::from_name("outreach"),
        PathwayId::from_name("outreach"),
    );
    let agent = Principal::Agent(aios::core::AgentId::from_name("outreach"));
    let send = ActionRequest::new(agent, outreach.0, outreach.1, "email.send")
        .with_effect(EffectClass::Irreversible);
    let pay = ActionRequest::new(agent, outreach.0, outreach.1, "payments.transfer")
        .with_effect(EffectClass::Irreversible)
        .with_cost(Money::from_minor(25_000));
    for (what, req) in [("send the newsletter", &send), ("pay an invoice", &pay)] {
        let d = governor.decide(req);
        let why = governor.explain(&d).replace('\n', "\n    ");
        println!(
            "- outreach asks to {what} (`{}`): {:?}\n    {why}",
            req.action,
            d.kind()
        );
    }
    println!();

    // ---- memory: remember, revise, recall with provenance -----------------------------------
    let memory = Memory::builder(clock.clone())
        .store(memory_store)
        .embedder(Arc::new(HashEmbedder::new(128)))
        .audit(audit.clone())
        .open()
        .await?;
    let company = Scope::parse("acme")?;
    println!("## Memory");
    if memory.is_empty() {
        let fact = memory
            .remember(
                NewMemory::new(
                    company.clone(),
                    Tier::Project,
                    "the newsletter goes out on Thursdays",
                    Principal::Human(alice),
                )
                .source("kick-off call"),
            )
            .await?;
        memory
            .revise(
                fact.id,
                Revision::new(Principal::Human(alice))
                    .content("the newsletter goes out on Fridays at 9:00")
                    .source("founder, by email"),
            )
            .await?;
        memory
            .remember(
                NewMemory::new(
                    company.clone(),
                    Tier::LongTerm,
                    "readers are small-business owners who like Rust",
                    Principal::Human(alice),
                )
                .source("reader survey"),
            )
            .await?;
        println!("Remembered two facts and revised one (the old version stays in its history).");
    }
    let hits = memory
        .recall(
            &RecallQuery::text("when does the newsletter go out")
                .in_scope(company.clone())
                .k(1),
        )
        .await?;
    for hit in &hits {
        let r = &hit.record;
        println!(
            "- recall \"when does the newsletter go out\" -> \"{}\"\n  version {} of mem:{}, by {}, source {:?}, score {:.3}",
            r.content,
            r.version,
            r.id,
            if r.provenance.author == Principal::Human(alice) { "alice".to_string() } else { r.provenance.author.to_string() },
            r.provenance.source.as_deref().unwrap_or("-"),
            hit.score.total
        );
        println!(
            "  history: {} version(s)",
            memory.history(r.id).await?.len()
        );
    }
    println!();

    // ---- the orchestrator: research -> draft -> approval gate -> send ----------------------
    let model = ScriptedModel::new("local-small").with_responder(|req| {
        let prompt = req
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Ok(if prompt.contains("Research") {
            "Notes: three Rust crates small businesses use this month; cite mem: ids from memory."
                .to_string()
        } else {
            "Draft: Hello readers! Here are this week's three crates. See you Friday at 9:00."
                .to_string()
        })
    });
    let send_agent = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let draft = input
                .deps
                .values()
                .next()
                .and_then(|d| d["text"].as_str())
                .unwrap_or("")
                .to_string();
            let out = ctx
                .call(
                    ConnectorRequest::new(
                        "email",
                        "send",
                        serde_json::json!({ "to": "readers@acme.example", "body": draft }),
                    )
                    .risk(40),
                )
                .await?;
            Ok(out.output)
        })
    });
    let grants = vec![
        Grant::role(
            RoleId::from_name("researcher"),
            company.clone(),
            Access::Read,
        ),
        Grant::role(RoleId::from_name("writer"), company.clone(), Access::Read),
    ];
    // the production set-up on the file: system clock, Tokio timer, audit log, checkpoints,
    // budgets, approvals and operator controls, unique worker id, OS-seeded ids
    let orch = db
        .orchestrator(governor)
        .await?
        .memory(memory.clone(), MemoryOptions::new(grants, company.clone()))
        .models(ModelRouter::single(Arc::new(model)))
        .connector(Arc::new(Outbox::new(&outbox_path, in_memory)))
        .role(
            Role::new("researcher", "research", LlmAgent::shared())
                .instructions("Research this week's topic."),
        )
        .role(
            Role::new("writer", "writing", LlmAgent::shared())
                .instructions("Write the newsletter from the notes."),
        )
        .role(Role::new("outreach", "outreach", Arc::new(send_agent)).connector("email"))
        .build()?;

    println!("## Workflow");
    let pending = orch.pending_approvals().await?;
    let outcome = if let Some(request) = pending.first() {
        println!(
            "Found a run waiting since {}: `{}` needs the founder's approval (request {}).",
            request.created_at.format("%Y-%m-%d %H:%M:%S"),
            request.action,
            request.id
        );
        println!("Proposed: {}", request.proposed);
        println!("Approving as alice (a holder of the `founder` anchor)...");
        orch.submit_approval(request.id, alice, ApprovalResponse::Approve)
            .await?
    } else {
        let workflow = Workflow::new("weekly-newsletter")
            .task(TaskSpec::new(
                "research",
                RoleId::from_name("researcher"),
                serde_json::json!("Rust crates for small businesses"),
            ))
            .task(
                TaskSpec::new(
                    "draft",
                    RoleId::from_name("writer"),
                    serde_json::Value::Null,
                )
                .after(["research"]),
            )
            .task(
                TaskSpec::new(
                    "send",
                    RoleId::from_name("outreach"),
                    serde_json::Value::Null,
                )
                .after(["draft"]),
            );
        println!("Starting `weekly-newsletter`: research -> draft -> send.");
        let parked = orch.start(workflow).await?;
        report(&parked.status);
        if !matches!(parked.status, RunStatus::Parked { .. }) {
            return Err(format!(
                "expected the run to park for approval, it is {:?}",
                parked.status
            )
            .into());
        }
        if in_memory {
            let id = parked
                .pending_approvals()
                .first()
                .copied()
                .ok_or("the run did not park")?;
            println!("Approving as alice (a holder of the `founder` anchor)...");
            orch.submit_approval(id, alice, ApprovalResponse::Approve)
                .await?
        } else {
            println!(
                "\nThe run is parked in {}. Run the same command again to approve it and finish.",
                db_path.display()
            );
            return Ok(());
        }
    };
    report(&outcome.status);
    if let Some(sent) = outcome.outputs.get("send") {
        println!("Email connector answered: {sent}");
    }

    println!("\n## Transcript\n");
    println!("{}", orch.transcript(outcome.run).await?);
    let report = audit.verify(None).await?;
    println!(
        "Audit chain: {} entries, {}; head {} (anchor it elsewhere to detect truncation).",
        report.checked,
        if report.is_intact() {
            "verified intact"
        } else {
            "TAMPERED"
        },
        report.head.hash
    );
    if !in_memory {
        println!("\nRun again to start a new week's run, or `-- --reset` to start over.");
    }
    Ok(())
}

fn report(status: &RunStatus) {
    match status {
        RunStatus::Parked { approvals } => println!(
            "Run parked: waiting for {} approval(s) from the founder.",
            approvals.len()
        ),
        RunStatus::Completed => println!("Run completed."),
        other => println!("Run stopped: {other:?}"),
    }
}

/// An email connector that "sends" by appending to a JSON-lines outbox, and, like a real
/// email API with idempotency keys, never sends the same key twice.
#[derive(Debug)]
struct Outbox {
    path: Option<PathBuf>,
    descriptor: ConnectorDescriptor,
    sent: parking::Mutex<HashSet<String>>,
}

mod parking {
    pub type Mutex<T> = std::sync::Mutex<T>;
}

impl Outbox {
    fn new(path: &Path, in_memory: bool) -> Self {
        let sent = match in_memory {
            true => HashSet::new(),
            false => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["key"].as_str().map(str::to_string))
                .collect(),
        };
        Self {
            path: (!in_memory).then(|| path.to_path_buf()),
            descriptor: ConnectorDescriptor {
                id: ConnectorId::new("email"),
                effect: EffectClass::Irreversible,
                scopes: vec![],
                idempotent: true,
                default_cost: aios::core::Money::ZERO,
                operations: vec![],
            },
            sent: parking::Mutex::new(sent),
        }
    }
}

#[async_trait]
impl Connector for Outbox {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let failed = |detail: String| ConnectorError::Failed {
            connector: self.descriptor.id.clone(),
            detail,
        };
        let key = call.idempotency_key.to_string();
        let mut sent = self.sent.lock().map_err(|e| failed(e.to_string()))?;
        let fresh = sent.insert(key.clone());
        if fresh {
            if let Some(path) = &self.path {
                let line = serde_json::json!({ "key": key, "operation": call.operation, "email": call.input });
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| failed(e.to_string()))?;
                writeln!(f, "{line}").map_err(|e| failed(e.to_string()))?;
                f.sync_all().map_err(|e| failed(e.to_string()))?;
            }
        }
        Ok(ConnectorOutput {
            output: serde_json::json!({ "sent": true, "duplicate": !fresh, "outbox": self.path.as_ref().map(|p| p.display().to_string()) }),
            cost: Money::ZERO,
        })
    }
}
