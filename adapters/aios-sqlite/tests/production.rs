//! `SqliteStore::orchestrator`: the production set-up on one file, used as an application
//! would: a real clock and timer (a transient failure is retried after a real sleep instead
//! of hanging), every port on the file (a parked run is approved by another process-like
//! handle on the same file), and a refusal when the set-up is incomplete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    Connector, ConnectorCall, ConnectorDescriptor, ConnectorError, ConnectorId, ConnectorOutput,
    EffectClass, HumanId, Money, RoleId,
};
use aios_governance::{ApprovalResponse, GovernanceModel, Governor};
use aios_orchestrator::{
    ConnectorRequest, FnAgent, Orchestrator, RetryPolicy, Role, RunStatus, TaskSpec, Workflow,
};
use aios_sqlite::SqliteStore;

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "book meetings", "final_authority": "founder" },
  "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "1h" }],
  "roles": [{ "key": "scheduler" }],
  "pathways": [{ "key": "calendar", "anchor": "founder", "delegate": "scheduler",
    "limits": { "actions": ["calendar.hold", "calendar.book"], "effects": ["reversible", "irreversible"] },
    "escalation": [{ "name": "bookings", "when": { "effect_at_least": "irreversible" }, "mode": "approve_before" }] }],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 10000 } }]
}"#;

fn governor() -> Governor {
    GovernanceModel::from_json(MODEL)
        .unwrap()
        .compile()
        .map_err(|r| r.to_string())
        .unwrap()
}

/// Fails the first call of each operation with a transient error, then succeeds.
#[derive(Debug)]
struct Flaky {
    descriptor: ConnectorDescriptor,
    calls: AtomicU32,
}

#[async_trait::async_trait]
impl Connector for Flaky {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(ConnectorError::Unavailable {
                connector: self.descriptor.id.clone(),
                detail: "try again".into(),
            });
        }
        Ok(ConnectorOutput {
            output: serde_json::json!({ "done": call.operation }),
            cost: Money::ZERO,
        })
    }
}

fn role() -> Role {
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            ctx.call(ConnectorRequest::new(
                "calendar",
                "hold",
                serde_json::json!({ "at": 9 }),
            ))
            .await?;
            let out = ctx
                .call(ConnectorRequest::new(
                    "calendar",
                    "book",
                    serde_json::json!({ "at": 9 }),
                ))
                .await?;
            Ok(out.output)
        })
    });
    Role::new("scheduler", "calendar", Arc::new(agent))
        .connector("calendar")
        .retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        })
}

fn flaky() -> Arc<Flaky> {
    Arc::new(Flaky {
        descriptor: ConnectorDescriptor {
            id: ConnectorId::new("calendar"),
            effect: EffectClass::Irreversible,
            scopes: vec![],
            idempotent: true,
            default_cost: Money::ZERO,
            operations: vec![],
        },
        calls: AtomicU32::new(0),
    })
}

#[tokio::test]
async fn the_production_set_up_retries_for_real_parks_and_resumes_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let run = {
        let store = SqliteStore::open(&path).unwrap();
        let orch: Orchestrator = store
            .orchestrator(governor())
            .await
            .unwrap()
            .role(role())
            .connector(flaky())
            .build()
            .unwrap();
        // the hold parks for approval
        let parked = tokio::time::timeout(
            Duration::from_secs(10),
            orch.start(Workflow::new("book").task(TaskSpec::new(
                "book",
                RoleId::from_name("scheduler"),
                serde_json::Value::Null,
            ))),
        )
        .await
        .expect("no hang on a transient failure")
        .unwrap();
        assert!(
            matches!(parked.status, RunStatus::Parked { .. }),
            "{:?}",
            parked.status
        );
        parked.run
    };
    // another handle on the file (as another process would) answers and finishes the run
    let store = SqliteStore::open(&path).unwrap();
    let orch = store
        .orchestrator(governor())
        .await
        .unwrap()
        .role(role())
        .connector(flaky())
        .build()
        .unwrap();
    // both calls are irreversible (the connector's effect class), so each is approved
    let mut done = None;
    for _ in 0..2 {
        let pending = orch.pending_approvals().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].run, Some(run));
        done = Some(
            orch.submit_approval(
                pending[0].id,
                HumanId::from_name("alice"),
                ApprovalResponse::Approve,
            )
            .await
            .unwrap(),
        );
    }
    let done = done.unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert!(aios_core::AuditLogExt::verify(&store.audit_log(), None)
        .await
        .unwrap()
        .is_intact());
    // the memory on the same file opens with the production clock
    assert!(store.memory().await.is_ok());
}

#[tokio::test]
async fn the_production_set_up_still_refuses_an_incomplete_one() {
    let store = SqliteStore::in_memory().unwrap();
    let err = store
        .orchestrator(governor())
        .await
        .unwrap()
        .role(role())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("connector `calendar`"), "{err}");
}
