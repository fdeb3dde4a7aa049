//! A one-person consultancy on AIOS: an assistant researches a proposal, drafts it, mails it
//! to the client and pays a supplier's invoice, governed by the manifest next to this file
//! (`solo_consultancy.toml`), on one SQLite file.
//!
//! ```text
//! cargo run --example solo_consultancy             # first process: works, parks on two approvals
//! cargo run --example solo_consultancy             # second process: the founder approves the
//!                                                  # mail, the deputy edits the payment beyond
//!                                                  # the charter (refused), the run finishes
//! cargo run --example solo_consultancy -- --reset  # start over
//! ```

use std::sync::Arc;

use aios::core::{AuditLogExt, ScriptedModel};
use aios::prelude::*;
use aios::sqlite::SqliteStore;

type Error = Box<dyn std::error::Error>;

/// Mail and bank, one connector each, declared per operation: reading mail is read-only,
/// sending is irreversible with the recipient governed, paying is irreversible with the payee
/// governed and the amount it moves read from the input.
#[derive(Debug)]
struct Office {
    descriptor: ConnectorDescriptor,
    done: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl Office {
    fn mail() -> Self {
        Self::new(
            "mail",
            vec![
                OperationSpec::new("read", EffectClass::ReadOnly),
                OperationSpec::new("send", EffectClass::Irreversible).governs("recipient", "/to"),
            ],
        )
    }

    fn bank() -> Self {
        Self::new(
            "bank",
            vec![OperationSpec::new("pay", EffectClass::Irreversible)
                .governs("payee", "/payee")
                .moves_money("/amount")],
        )
    }

    fn new(id: &str, operations: Vec<OperationSpec>) -> Self {
        Self {
            descriptor: ConnectorDescriptor {
                id: ConnectorId::new(id),
                effect: EffectClass::Irreversible,
                scopes: vec![],
                idempotent: true,
                default_cost: Money::ZERO,
                operations,
            },
            done: std::sync::Mutex::new(vec![]),
        }
    }
}

#[async_trait]
impl Connector for Office {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        // a real service deduplicates by `call.idempotency_key`; this one just records
        let record = serde_json::json!({ "op": call.operation, "input": call.input });
        if let Ok(mut done) = self.done.lock() {
            done.push(record.clone());
        }
        Ok(ConnectorOutput {
            output: record,
            cost: Money::ZERO,
        })
    }
}

/// The assistant's work, one task per step.
fn workflow() -> Workflow {
    let assistant = "assistant";
    Workflow::new("proposal for acme")
        .task(TaskSpec::new(
            "research",
            assistant,
            serde_json::json!({ "do": "research", "client": "acme" }),
        ))
        .task(
            TaskSpec::new("draft", assistant, serde_json::json!({ "do": "draft" }))
                .after(["research"]),
        )
        .task(
            TaskSpec::new("mail", assistant, serde_json::json!({ "do": "mail" })).after(["draft"]),
        )
        .task(TaskSpec::new(
            "pay supplier",
            assistant,
            serde_json::json!({ "do": "pay", "payee": "printshop", "amount": "250.00" }),
        ))
}

/// One agent for all four kinds of task: it asks the model, mails, or pays.
fn assistant() -> Role {
    let agent = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let notes = input.deps.values().next().cloned().unwrap_or_default();
            match input.input["do"].as_str().unwrap_or("") {
                "research" | "draft" => {
                    let asked = format!("{}: {}", input.input["do"], notes);
                    let r = ctx
                        .complete(ModelRequest::new(vec![Message::user(asked)]))
                        .await?;
                    Ok(serde_json::json!({ "text": r.content }))
                }
                "mail" => {
                    let out = ctx
                        .call(ConnectorRequest::new(
                            "mail",
                            "send",
                            serde_json::json!({ "to": "ceo@acme.example", "body": notes["text"] }),
                        ))
                        .await?;
                    Ok(out.output)
                }
                _ => {
                    let invoice = serde_json::json!({
                        "payee": input.input["payee"],
                        "amount": input.input["amount"],
                    });
                    let out = ctx
                        .call(ConnectorRequest::new("bank", "pay", invoice))
                        .await?;
                    Ok(out.output)
                }
            }
        })
    });
    Role::new("assistant", "desk", Arc::new(agent))
        .pathway_for("mail.send", "client-mail")
        .pathway_for("bank.", "paying")
        .connector("mail")
        .connector("bank")
        // a refused payment does not stop the proposal going out
        .fallback(aios::orchestrator::Fallback::Skip {
            output: serde_json::json!({ "paid": false }),
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/aios-solo-consultancy.sqlite");
    if std::env::args().any(|a| a == "--reset") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        println!("Reset: {} removed.", path.display());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }

    // the manifest, validated: every finding names its place in the document
    let manifest = include_str!("solo_consultancy.toml");
    let governor = GovernanceModel::from_toml(manifest)?
        .compile()
        .map_err(|report| format!("solo_consultancy.toml:\n{report}"))?;

    // the production set-up on one file, the roles and connectors, checked by build()
    let store = SqliteStore::open(&path)?;
    let model = ScriptedModel::new("local").with_responder(|req| {
        Ok(format!(
            "notes on {}",
            req.messages
                .last()
                .map(|m| m.content.as_str())
                .unwrap_or("")
        ))
    });
    let orch = store
        .orchestrator(governor)
        .await?
        .role(assistant())
        .connector(Arc::new(Office::mail()))
        .connector(Arc::new(Office::bank()))
        .models(ModelRouter::single(Arc::new(model)))
        .build()?;

    let inbox = orch.inbox().await?;
    if inbox.is_empty() {
        // first process: do the work until a human is needed
        let outcome = orch.start(workflow()).await?;
        println!("Run {}: {:?}", outcome.run, outcome.status);
        for p in orch.inbox().await? {
            println!(
                "- waiting: task `{}` asks `{}` ({}) of `{}`; {} may answer until {}",
                p.task.unwrap_or_default(),
                p.action,
                p.reason.unwrap_or_default().replace('\n', "; "),
                p.anchor,
                p.may_answer.join(" or "),
                p.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
        }
        println!("Run the same command again to answer as the founder and her deputy.");
        return Ok(());
    }

    // second process: the founder approves the mail, the deputy edits the payment
    let mut run = None;
    for p in inbox {
        run = p.run;
        let (who, answer) = if p.action == "mail.send" {
            ("alice", ApprovalResponse::Approve)
        } else {
            // five times what the charter lets one action move: governed again, and refused
            let edited = serde_json::json!({ "payee": "printshop", "amount": "5000.00" });
            (
                "bob",
                ApprovalResponse::Edit(serde_json::json!({ "input": edited })),
            )
        };
        let outcome = orch
            .submit_approval(p.id, HumanId::from_name(who), answer)
            .await?;
        println!(
            "{who} answered `{}`: the run is {:?}",
            p.action, outcome.status
        );
    }
    if let Some(run) = run {
        let state = orch.state(run).await?.ok_or("the run is gone")?;
        println!("Outputs: {}", serde_json::to_string(&state.outputs())?);
        println!("\n{}", orch.transcript(run).await?);
    }
    let report = store.audit_log().verify(None).await?;
    println!("Audit chain intact: {}", report.is_intact());
    Ok(())
}
