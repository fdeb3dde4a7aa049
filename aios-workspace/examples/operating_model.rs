//! The operating model end to end: load the solo consultancy template, assess it, bootstrap
//! it, run a simulated month of work through the orchestrator with scripted models, print
//! the operations report, accept a recalibration suggestion and show the new version's diff.
//!
//! ```text
//! cargo run -p aios-workspace --example operating_model
//! ```
//!
//! Time is a manual clock: the month passes in milliseconds and the output is the same on
//! every run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditLog, Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorId,
    ConnectorOutput, EffectClass, HumanId, InMemoryAuditLog, ManualClock, ManualTimer, Message,
    ModelRequest, Money, OperationSpec, ScriptedModel, Timestamp,
};
use aios_governance::ApprovalResponse;
use aios_memory::{Memory, Scope};
use aios_orchestrator::{
    Agent, ConnectorRequest, FnAgent, ModelRouter, Orchestrator, TaskSpec, Workflow,
};
use aios_workspace::{
    accept, assess, parse, plan, report_from_log, suggest, update, Names, Plan, ReportBuilder,
    RoleSpec, ValidateOptions, Window,
};
use async_trait::async_trait;

type Error = Box<dyn std::error::Error>;

/// A connector that records what it was asked and succeeds.
#[derive(Debug)]
struct Service {
    descriptor: ConnectorDescriptor,
}

#[async_trait]
impl Connector for Service {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        Ok(ConnectorOutput {
            output: serde_json::json!({ "done": call.operation, "input": call.input }),
            cost: Money::from_minor(2),
        })
    }
}

/// The host's connectors, one per declared connector, with the manifest's effect classes;
/// the bank's `pay` moves the money in its `amount`.
fn connectors(plan: &Plan) -> BTreeMap<String, Arc<dyn Connector>> {
    plan.connectors
        .iter()
        .map(|c| {
            let operations = c
                .operations
                .iter()
                .map(|(op, effect)| {
                    let spec = OperationSpec::new(op.clone(), *effect);
                    if c.key == "bank" && op == "pay" {
                        spec.moves_money("/amount")
                    } else {
                        spec
                    }
                })
                .collect();
            let service = Service {
                descriptor: ConnectorDescriptor {
                    id: ConnectorId::new(c.key.clone()),
                    effect: EffectClass::Irreversible,
                    scopes: vec![],
                    idempotent: true,
                    default_cost: Money::ZERO,
                    operations,
                },
            };
            (c.key.clone(), Arc::new(service) as Arc<dyn Connector>)
        })
        .collect()
}

/// What each role's agent does: think with the model, or call its connector.
fn agent_for(role: &RoleSpec) -> Arc<dyn Agent> {
    let key = role.key.clone();
    Arc::new(FnAgent::new(move |ctx, input| {
        let key = key.clone();
        Box::pin(async move {
            match key.as_str() {
                "outreach" => {
                    let body = input.deps.values().next().cloned().unwrap_or_default();
                    let out = ctx
                        .call(ConnectorRequest::new(
                            "mail",
                            "send",
                            serde_json::json!({ "to": "client@example.com", "body": body }),
                        ))
                        .await?;
                    Ok(out.output)
                }
                "bookkeeper" => {
                    let amount = input.input["amount"].as_str().unwrap_or("0.00").to_string();
                    let out = ctx
                        .call(ConnectorRequest::new(
                            "bank",
                            "pay",
                            serde_json::json!({ "payee": "printshop", "amount": amount }),
                        ))
                        .await?;
                    Ok(out.output)
                }
                _ => {
                    let r = ctx
                        .complete(ModelRequest::new(vec![Message::user(format!(
                            "{key}: {}",
                            input.input
                        ))]))
                        .await?;
                    Ok(serde_json::json!({ "text": r.content }))
                }
            }
        })
    }))
}

fn proposal(plan: &Plan, day: u32) -> Workflow {
    let mut w = plan
        .workflows
        .get("proposal")
        .cloned()
        .unwrap_or_else(|| Workflow::new("proposal"));
    if let Some(t) = w.tasks.first_mut() {
        t.input = serde_json::json!({ "client": format!("client-{day}") });
    }
    w
}

fn invoice(day: u32) -> Workflow {
    // amounts from 150.00 to 299.00: the founder approves those above 200.00
    let amount = format!("{}.00", 150 + (day * 37) % 150);
    Workflow::new("invoices").task(TaskSpec::new(
        "pay",
        "bookkeeper",
        serde_json::json!({ "amount": amount }),
    ))
}

/// Answers every approval waiting, as the founder, `after` later.
async fn founder_answers(
    orch: &Orchestrator,
    clock: &ManualClock,
    after: Duration,
) -> Result<u32, Error> {
    let mut n = 0;
    // an answered step may lead to the next approval: answer until nothing waits
    loop {
        let waiting = orch.inbox().await?;
        if waiting.is_empty() {
            return Ok(n);
        }
        for p in waiting {
            clock.advance(after);
            orch.submit_approval(p.id, HumanId::from_name("alice"), ApprovalResponse::Approve)
                .await?;
            n += 1;
        }
    }
}

fn main() -> Result<(), Error> {
    futures::executor::block_on(run())
}

async fn run() -> Result<(), Error> {
    let start = Timestamp::from_timestamp(1_767_225_600, 0).unwrap_or_default(); // 2026-01-01
    let clock = ManualClock::new(start);
    let timer = ManualTimer::new(clock.clone());
    let audit = Arc::new(InMemoryAuditLog::new());

    // 1. load and assess: on paper every level is defined; with an empty log as evidence
    //    nothing operates yet, and the bottleneck is named
    let loaded = parse(
        "solo_consultancy.toml",
        aios_workspace::SOLO_CONSULTANCY_TOML,
    )?;
    let empty = report_from_log(
        audit.as_ref(),
        ReportBuilder::new(Window::all(), Default::default(), None, Names::default()),
    )
    .await?;
    let before = assess(&loaded, &ValidateOptions::default(), Some(&empty));
    println!("{}", before.to_markdown());

    // 2. bootstrap: governance model, seeds, the audit record, the orchestrator
    let v1 = plan(&loaded, &ValidateOptions::default()).map_err(|e| e.to_string())?;
    println!(
        "Bootstrapped `{}` v{}: hash {}, ids {}",
        v1.workspace,
        v1.manifest_version,
        v1.hash.short(),
        &v1.ids.digest()[..12]
    );
    let memory = Memory::builder(Arc::new(clock.clone()))
        .audit(audit.clone())
        .open()
        .await?;
    let seeded = v1.seed(&memory).await?;
    let again = v1.seed(&memory).await?;
    println!(
        "Seeds: {} written, then {} unchanged on a second bootstrap",
        seeded.written.len(),
        again.unchanged.len()
    );
    audit.append(v1.audit_record(clock_now(&clock))).await?;
    let model = ScriptedModel::new("local").with_responder(|req| {
        Ok(format!(
            "notes ({} chars in)",
            req.messages.iter().map(|m| m.content.len()).sum::<usize>()
        ))
    });
    // the host's vault holds the credentials the manifest names (names only in the manifest)
    let vault = aios_core::InMemoryVault::default();
    for name in v1.connectors.iter().flat_map(|c| &c.credentials) {
        aios_core::CredentialVault::put(
            &vault,
            aios_core::CredentialHandle::new(name.clone()),
            aios_core::Secret::new(format!("secret-of-{name}")),
        )
        .await?;
    }
    let orch = v1
        .builder(&mut agent_for, &connectors(&v1))?
        .vault(Arc::new(vault))
        .models(ModelRouter::single(Arc::new(model)))
        .memory(memory.clone(), v1.memory_options(Scope::parse("org")?))
        .audit(audit.clone())
        .clock(Arc::new(clock.clone()))
        .timer(Arc::new(timer))
        // reproducible ids for the example; production leaves the default (ids from the OS)
        .config(aios_orchestrator::OrchestratorConfig::deterministic(
            "example", 7,
        ))
        .build()?;

    // 3. the first half of the month: a proposal a day; invoices are refused, their phase
    //    (`money`) is not entered
    let day = Duration::from_secs(86_400);
    for d in 1..=14 {
        orch.start(proposal(&v1, d)).await?;
        founder_answers(&orch, &clock, Duration::from_secs(2 * 3600)).await?;
        if d % 7 == 0 {
            let out = orch.start(invoice(d)).await?;
            println!(
                "day {d}: invoices run {:?} (phase `money` not entered)",
                out.status
            );
        }
        clock.advance(day);
    }

    // mid-month the founder enters the `money` phase: a changed manifest, a new version
    let text = aios_workspace::SOLO_CONSULTANCY_TOML
        .replace("version = 1\ndescription", "version = 2\ndescription")
        .replace("status = \"planned\"", "status = \"entered\"");
    let v2 = plan(
        &parse("solo_consultancy.toml", &text)?,
        &ValidateOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let up = update(
        &v1.model,
        &v1.gate,
        &v2,
        "alice",
        "the money phase is entered",
    )
    .ok_or("no change")?;
    println!(
        "\nManifest v2 publishes governance v{}: {}\n{}",
        up.model.version,
        up.gate_changes.join("; "),
        up.diff
    );
    orch.load_governance(up.governor(&v2.gate).map_err(|r| r.to_string())?, true);
    audit.append(v2.audit_record(clock_now(&clock))).await?;
    let mut current = up.model.clone();

    // the second half: proposals and daily invoices, every approval given
    for d in 15..=30 {
        orch.start(proposal(&v2, d)).await?;
        orch.start(invoice(d)).await?;
        orch.start(invoice(d + 100)).await?;
        founder_answers(&orch, &clock, Duration::from_secs(3 * 3600)).await?;
        clock.advance(day);
    }

    // 4. the operations report of the month
    let ops = loaded.manifest.operations.clone().unwrap_or_default();
    let month = Window {
        from: start,
        to: clock_now(&clock),
    };
    let budget = current.budget("company").and_then(|b| b.limits.cost);
    let report = report_from_log(
        audit.as_ref(),
        ReportBuilder::new(month, ops.targets, budget, Names::from_ids(&v2.ids)),
    )
    .await?;
    println!("\n{}", report.to_markdown());
    let after = assess(
        &parse("solo_consultancy.toml", &text)?,
        &ValidateOptions::default(),
        Some(&report),
    );
    println!("{}", after.to_markdown());

    // 5. recalibration: suggestions under the policy, one accepted
    let policy = ops.recalibration.ok_or("no recalibration policy")?;
    let suggestions = suggest(&current, &report, &policy, &ops.targets);
    println!("\n## Suggestions\n");
    for s in &suggestions {
        println!(
            "- `{}`: {} (evidence: {} entries, first #{:?})",
            s.id,
            s.rationale,
            s.evidence_count,
            s.evidence.first()
        );
    }
    // a payment of 240.00 started now parks for approval under the current version
    let parked = orch
        .start(Workflow::new("invoices").task(TaskSpec::new(
            "pay",
            "bookkeeper",
            serde_json::json!({ "amount": "240.00" }),
        )))
        .await?;
    if let Some(s) = suggestions.first() {
        let accepted = accept(
            &current,
            s,
            "alice",
            "every payment in the band was approved as asked",
        )?;
        println!(
            "\nAccepted `{}`: governance v{} -> v{}\n{}",
            s.id, current.version, accepted.model.version, accepted.diff
        );
        if let Some(entry) = accepted.model.changelog.last() {
            println!(
                "Change log v{} by {}: {}",
                entry.version,
                entry.author.clone().unwrap_or_default(),
                entry.summary
            );
        }
        audit
            .append(aios_workspace::answer_record(
                s,
                "alice",
                true,
                "accepted",
                Some(accepted.model.version),
                clock_now(&clock),
            ))
            .await?;
        orch.load_governance(
            accepted.governor(&v2.gate).map_err(|r| r.to_string())?,
            true,
        );
        current = accepted.model;
    }
    // the parked run stays on the version it started under; a new one runs under the new
    let answered = founder_answers(&orch, &clock, Duration::from_secs(3600)).await?;
    let fresh = orch
        .start(Workflow::new("invoices").task(TaskSpec::new(
            "pay",
            "bookkeeper",
            serde_json::json!({ "amount": "240.00" }),
        )))
        .await?;
    let entries = aios_core::AuditLogExt::entries(audit.as_ref()).await?;
    let version_of = |run| {
        entries.iter().rev().find_map(|e| match &e.event {
            aios_core::AuditEvent::DecisionMade {
                run: Some(r),
                model_version,
                ..
            } if *r == run => Some(*model_version),
            _ => None,
        })
    };
    println!(
        "\nA 240.00 payment started before the change was decided under v{:?} and needed the founder ({answered} approval); one started after under v{:?}: {:?}",
        version_of(parked.run).unwrap_or_default(),
        version_of(fresh.run).unwrap_or_default(),
        fresh.status
    );
    println!("Governance now at v{}.", current.version);
    Ok(())
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    aios_core::Clock::now(clock)
}
