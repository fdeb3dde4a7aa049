//! The host application both the console's and the command line's tests run: the
//! workspace's roles with fake agents, recording connectors, and an outreach agent whose
//! mail (with markup in it) needs approval. Included by `#[path]` from both crates' tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use aios_core::{
    Connector, CredentialHandle, CredentialVault, EffectClass, InMemoryVault, OperationSpec,
    RecordingConnector, Secret,
};
use aios_orchestrator::{Agent, ConnectorRequest, FnAgent, Orchestrator, OrchestratorBuilder};
use aios_workspace::Plan;

/// What the outreach agent proposes to send: a script that must never run.
pub const HOSTILE: &str =
    "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss=2\"> Dear client";

/// The agent of a role: outreach mails `HOSTILE` to the client, every other role answers
/// "done".
fn agent_for(role: &str) -> Arc<dyn Agent> {
    if role == "outreach" {
        Arc::new(FnAgent::new(|ctx, _input| {
            Box::pin(async move {
                let out = ctx
                    .call(ConnectorRequest::new(
                        "mail",
                        "send",
                        serde_json::json!({ "to": "client@example.com", "body": HOSTILE }),
                    ))
                    .await?;
                Ok(out.output)
            })
        }))
    } else {
        Arc::new(FnAgent::new(|_, _| {
            Box::pin(async { Ok(serde_json::json!({ "text": "done" })) })
        }))
    }
}

/// The mail connector as the plan declares it, recording what it sends.
pub fn mail_connector(plan: &Plan) -> RecordingConnector {
    let decl = plan.connectors.iter().find(|c| c.key == "mail").unwrap();
    let mut k = RecordingConnector::new("mail", EffectClass::Irreversible).not_idempotent();
    for (op, effect) in &decl.operations {
        k = k.with_operation(OperationSpec::new(op.clone(), *effect));
    }
    k
}

/// The host on a store's orchestrator builder `b`: the plan's connectors (`mail` for the
/// mail, recording ones for the rest, each credential in a vault) and roles.
pub async fn wire(
    mut b: OrchestratorBuilder,
    mail: &RecordingConnector,
    plan: &Plan,
) -> Orchestrator {
    let vault = InMemoryVault::new();
    for c in &plan.connectors {
        let connector: Arc<dyn Connector> = if c.key == "mail" {
            Arc::new(mail.clone())
        } else {
            let mut k = RecordingConnector::new(c.key.clone(), EffectClass::Irreversible);
            for (op, effect) in &c.operations {
                k = k.with_operation(OperationSpec::new(op.clone(), *effect));
            }
            Arc::new(k)
        };
        b = b.connector(connector);
        if let Some(name) = c.credentials.first() {
            vault
                .put(CredentialHandle::new(name.clone()), Secret::new("s3cret"))
                .await
                .unwrap();
            b = b.credential(&c.key, CredentialHandle::new(name.clone()));
        }
    }
    for role in plan.roles(&mut |r| agent_for(&r.key)) {
        b = b.role(role);
    }
    b.vault(Arc::new(vault)).build().unwrap()
}
