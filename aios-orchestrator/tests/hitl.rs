//! Human in the loop: park, list, decide, resume exactly the parked call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aios_core::AuditLogExt;
use aios_governance::ApprovalResponse;
use aios_orchestrator::RunStatus;
use common::*;
use futures::executor::block_on;

#[test]
fn an_irreversible_send_parks_then_runs_once_approved() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let outcome = block_on(orch.start(newsletter())).unwrap();
    let RunStatus::Parked { approvals } = &outcome.status else {
        panic!("expected parked, got {:?}", outcome.status)
    };
    assert_eq!(approvals.len(), 1);
    assert!(
        world.email.effects().is_empty(),
        "nothing sent before approval"
    );
    assert_eq!(outcome.outputs.len(), 2, "research and draft completed");

    let pending = block_on(orch.pending_approvals()).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].action, "email.send");
    assert_eq!(pending[0].run, Some(outcome.run));

    let done =
        block_on(orch.submit_approval(approvals[0], alice(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(world.email.effects().len(), 1);
    assert_eq!(done.outputs["send"]["ok"], true);
    assert!(block_on(orch.pending_approvals()).unwrap().is_empty());

    // the chain verifies and the transcript names the approver
    assert!(block_on(orch.audit_log().verify(None)).unwrap().is_intact());
    let transcript = block_on(orch.transcript(outcome.run)).unwrap();
    assert!(transcript.contains("Approved"), "{transcript}");
    assert!(transcript.contains("email.send"), "{transcript}");
}

#[test]
fn an_edited_action_runs_as_edited() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let outcome = block_on(orch.start(newsletter())).unwrap();
    let id = outcome.pending_approvals()[0];
    let edited = serde_json::json!({ "to": "friends@example.com", "body": "shorter" });
    let done = block_on(orch.submit_approval(
        id,
        bob(),
        ApprovalResponse::Edit(serde_json::json!({ "input": edited.clone() })),
    ))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(world.email.effects()[0].input, edited);
}

#[test]
fn a_rejection_follows_the_fallback_and_sends_nothing() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let outcome = block_on(orch.start(newsletter())).unwrap();
    let id = outcome.pending_approvals()[0];
    let done = block_on(orch.submit_approval(
        id,
        alice(),
        ApprovalResponse::Reject {
            reason: "not today".into(),
        },
    ))
    .unwrap();
    assert!(
        matches!(done.status, RunStatus::Failed { ref reason } if reason.contains("not today")),
        "{:?}",
        done.status
    );
    assert!(world.email.effects().is_empty());
}

#[test]
fn approvals_from_the_wrong_people_are_refused_and_change_nothing() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let outcome = block_on(orch.start(newsletter())).unwrap();
    let id = outcome.pending_approvals()[0];
    let mallory = aios_core::HumanId::from_name("mallory");
    assert!(block_on(orch.submit_approval(id, mallory, ApprovalResponse::Approve)).is_err());
    assert!(world.email.effects().is_empty());
    // the legitimate approval still works, once
    assert_eq!(
        block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve))
            .unwrap()
            .status,
        RunStatus::Completed
    );
    assert!(
        block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).is_err(),
        "replayed approval refused"
    );
    assert_eq!(world.email.effects().len(), 1);
}

#[test]
fn an_expired_approval_is_a_rejection() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    let outcome = block_on(orch.start(newsletter())).unwrap();
    let id = outcome.pending_approvals()[0];
    world
        .timer
        .advance(std::time::Duration::from_secs(25 * 3600));
    assert!(block_on(orch.submit_approval(id, alice(), ApprovalResponse::Approve)).is_err());
    let done = block_on(orch.resume(outcome.run)).unwrap();
    assert!(
        matches!(done.status, RunStatus::Failed { .. }),
        "{:?}",
        done.status
    );
    assert!(world.email.effects().is_empty());
}

#[test]
fn an_agent_asks_the_accountable_human_and_continues_with_the_answer() {
    use std::sync::Arc;
    let world = World::new();
    let notifier = aios_orchestrator::InMemoryNotifier::new();
    let agent = aios_orchestrator::FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let answer = ctx
                .ask_human("which list should get the newsletter?")
                .await?;
            let out = ctx
                .call(aios_orchestrator::ConnectorRequest::new(
                    "email",
                    "send",
                    serde_json::json!({ "to": answer }),
                ))
                .await;
            // the send itself needs approval too: the run parks again
            Ok(out?.output)
        })
    });
    let orch = builder(&world)
        .notifier(Arc::new(notifier.clone()))
        .role(
            aios_orchestrator::Role::new("outreach", "outreach", Arc::new(agent))
                .connector("email"),
        )
        .build()
        .unwrap();
    let wf = aios_orchestrator::Workflow::new("ask").task(aios_orchestrator::TaskSpec::new(
        "send",
        aios_core::RoleId::from_name("outreach"),
        serde_json::Value::Null,
    ));
    let asked = block_on(orch.start(wf)).unwrap();
    let question = asked.pending_approvals()[0];
    let pending = block_on(orch.pending_approvals()).unwrap();
    assert_eq!(pending[0].action, "human.ask");
    assert_eq!(
        pending[0].proposed["question"],
        "which list should get the newsletter?"
    );
    assert!(notifier.sent().iter().any(|n| n.approval == Some(question)));

    let answer = serde_json::json!("friends@example.com");
    let next =
        block_on(orch.submit_approval(question, bob(), ApprovalResponse::Edit(answer.clone())))
            .unwrap();
    let send = next.pending_approvals()[0];
    assert_ne!(
        send, question,
        "the answered question is not asked again; the send waits now"
    );
    let done = block_on(orch.submit_approval(send, alice(), ApprovalResponse::Approve)).unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(world.email.effects()[0].input["to"], answer);
}

#[test]
fn the_transcript_names_tasks_and_shows_the_resumption_and_budget_alerts() {
    let world = World::new();
    let doc = MODEL
        .replace(
            r#"{ "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 10000 } }"#,
            r#"{ "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 2 }, "alerts": [50] }"#,
        )
        .replace(r#""limits": { "tool_calls": 20 }"#, r#""limits": { "tool_calls": 2 }"#);
    let orch = newsletter_roles()
        .into_iter()
        .fold(
            aios_orchestrator::Orchestrator::builder(governor_from(&doc))
                .connector(std::sync::Arc::new(world.email.clone()))
                .models(aios_orchestrator::ModelRouter::single(std::sync::Arc::new(
                    model(),
                )))
                .clock(std::sync::Arc::new(world.timer.clock().clone()))
                .timer(std::sync::Arc::new(world.timer.clone())),
            |b, r| b.role(r),
        )
        .build()
        .unwrap();
    let outcome = block_on(orch.start(newsletter())).unwrap();
    block_on(orch.submit_approval(
        outcome.pending_approvals()[0],
        alice(),
        ApprovalResponse::Approve,
    ))
    .unwrap();
    let transcript = block_on(orch.transcript(outcome.run)).unwrap();
    assert!(
        transcript.contains("task `research` started"),
        "{transcript}"
    );
    assert!(transcript.contains("task `send` succeeded"), "{transcript}");
    assert!(transcript.contains("resumed by worker"), "{transcript}");
    assert!(
        transcript.contains("passed 50 % on tool_calls"),
        "{transcript}"
    );
}

/// What an agent wrote to and read from memory is on the run's record: the transcript shows
/// each write (with the run and task it belongs to) and each recall, named by task.
#[test]
fn the_transcript_shows_the_runs_memory_writes_and_reads() {
    use aios_core::{InMemoryAuditLog, Principal, RoleId};
    use aios_memory::{Access, Grant, Memory, NewMemory, RecallQuery, Scope, Tier};
    use aios_orchestrator::{FnAgent, MemoryOptions, Role, TaskSpec, Workflow};
    use std::sync::Arc;
    let world = World::new();
    let audit = InMemoryAuditLog::new();
    let clock: Arc<dyn aios_core::Clock> = Arc::new(world.timer.clock().clone());
    let memory = block_on(Memory::builder(clock).audit(Arc::new(audit.clone())).open()).unwrap();
    let scope = Scope::parse("org/acme").unwrap();
    let grants = vec![Grant::role(
        RoleId::from_name("worker"),
        scope.clone(),
        Access::ReadWrite,
    )];
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let scope = Scope::parse("org/acme").unwrap();
            let me = Principal::Agent(ctx.agent_id());
            let r = ctx
                .remember(NewMemory::new(
                    scope.clone(),
                    Tier::Project,
                    "acme pays invoices in 30 days",
                    me,
                ))
                .await?;
            let hits = ctx
                .recall(&RecallQuery::text("acme invoices").in_scope(scope))
                .await?;
            Ok(serde_json::json!({ "wrote": r.id, "found": hits.len() }))
        })
    });
    let orch = builder(&world)
        .audit(Arc::new(audit.clone()))
        .memory(memory, MemoryOptions::new(grants, scope))
        .role(Role::new("worker", "work", Arc::new(agent)))
        .build()
        .unwrap();
    let done = block_on(orch.start(Workflow::new("note").task(TaskSpec::new(
        "note the terms",
        RoleId::from_name("worker"),
        serde_json::Value::Null,
    ))))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    let written = done.outputs["note the terms"]["wrote"]
        .as_str()
        .unwrap()
        .to_string();
    let transcript = block_on(orch.transcript(done.run)).unwrap();
    assert!(
        transcript.contains(&format!(
            "memory remember by task `note the terms`: record {written} v1 in `org/acme`"
        )),
        "{transcript}"
    );
    assert!(
        transcript.contains(&format!(
            "task `note the terms` recalled 1 memory record(s): {written} v1"
        )),
        "{transcript}"
    );
    // the write's audit entry names its run
    let entries = block_on(audit.entries()).unwrap();
    assert!(entries.iter().any(|e| matches!(&e.event,
        aios_core::AuditEvent::MemoryWritten { run: Some(r), .. } if *r == done.run)));
}

/// A checkpoint store that counts how many run states are read (`latest`).
#[derive(Debug, Default)]
struct CountingStore {
    inner: aios_orchestrator::InMemoryCheckpointStore,
    latest: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl aios_orchestrator::CheckpointStore for CountingStore {
    async fn acquire(
        &self,
        run: aios_core::RunId,
        owner: &aios_orchestrator::WorkerId,
        now: aios_core::Timestamp,
        ttl: std::time::Duration,
    ) -> Result<aios_orchestrator::Lease, aios_core::StoreError> {
        self.inner.acquire(run, owner, now, ttl).await
    }
    async fn renew(
        &self,
        lease: &aios_orchestrator::Lease,
        now: aios_core::Timestamp,
        ttl: std::time::Duration,
    ) -> Result<aios_orchestrator::Lease, aios_core::StoreError> {
        self.inner.renew(lease, now, ttl).await
    }
    async fn release(&self, lease: &aios_orchestrator::Lease) -> Result<(), aios_core::StoreError> {
        self.inner.release(lease).await
    }
    async fn save(
        &self,
        lease: &aios_orchestrator::Lease,
        checkpoint: &aios_orchestrator::Checkpoint,
    ) -> Result<(), aios_core::StoreError> {
        self.inner.save(lease, checkpoint).await
    }
    async fn latest(
        &self,
        run: aios_core::RunId,
    ) -> Result<Option<aios_orchestrator::Checkpoint>, aios_core::StoreError> {
        self.latest
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.latest(run).await
    }
    async fn get(
        &self,
        run: aios_core::RunId,
        seq: u64,
    ) -> Result<Option<aios_orchestrator::Checkpoint>, aios_core::StoreError> {
        self.inner.get(run, seq).await
    }
    async fn list(
        &self,
        parked_only: bool,
    ) -> Result<Vec<aios_orchestrator::RunSummary>, aios_core::StoreError> {
        self.inner.list(parked_only).await
    }
    async fn claim(
        &self,
        owner: &aios_orchestrator::WorkerId,
        now: aios_core::Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<aios_orchestrator::Lease>, aios_core::StoreError> {
        self.inner.claim(owner, now, ttl, limit).await
    }
    async fn wake(
        &self,
        run: aios_core::RunId,
        approval: aios_core::ApprovalId,
    ) -> Result<(), aios_core::StoreError> {
        self.inner.wake(run, approval).await
    }
}

#[test]
fn a_page_of_the_inbox_reads_only_the_runs_it_shows() {
    let world = World::new();
    let store = Arc::new(CountingStore::default());
    let orch = newsletter_roles()
        .into_iter()
        .fold(builder(&world).checkpoints(store.clone()), |b, r| b.role(r))
        .build()
        .unwrap();
    let mut runs = vec![];
    for _ in 0..30 {
        runs.push(block_on(orch.start(newsletter())).unwrap().run);
    }
    let whole = block_on(orch.inbox()).unwrap();
    assert_eq!(whole.len(), 30);
    let read = |s: &CountingStore| s.latest.swap(0, std::sync::atomic::Ordering::SeqCst);
    read(&store);

    let page = block_on(orch.inbox_page(10, 5)).unwrap();
    assert_eq!(page.total, 30, "the total counts every pending request");
    assert_eq!(
        page.approvals,
        whole[10..15].to_vec(),
        "the same rows, in order"
    );
    assert_eq!(page.approvals[0].task.as_deref(), Some("send"));
    assert_eq!(read(&store), 5, "one run state read per row shown");

    // the last, short page; past the end; an empty limit
    let last = block_on(orch.inbox_page(28, 5)).unwrap();
    assert_eq!((last.total, last.approvals.len()), (30, 2));
    assert_eq!(last.approvals, whole[28..].to_vec());
    let past = block_on(orch.inbox_page(usize::MAX, 5)).unwrap();
    assert_eq!((past.total, past.approvals.len()), (30, 0));
    let none = block_on(orch.inbox_page(0, 0)).unwrap();
    assert_eq!((none.total, none.approvals.len()), (30, 0));
    read(&store);

    // an answered request leaves the inbox and the total at once
    block_on(orch.answer_approval(whole[0].id, alice(), ApprovalResponse::Approve)).unwrap();
    let first = block_on(orch.inbox_page(0, 1)).unwrap();
    assert_eq!(first.total, 29);
    assert_eq!(first.approvals[0].id, whole[1].id);
    // expired requests are not counted (the deadline is 24 h)
    world
        .timer
        .advance(std::time::Duration::from_secs(25 * 3600));
    let later = block_on(orch.inbox_page(0, 50)).unwrap();
    assert_eq!((later.total, later.approvals.len()), (0, 0));
    assert_eq!(read(&store), 1, "no run state read for an empty page");
}

#[test]
fn the_current_governance_model_is_the_one_new_runs_start_under() {
    let world = World::new();
    let orch = newsletter_orchestrator(&world);
    assert_eq!(orch.governor().version(), 1);
    let next = || governor_from(&MODEL.replace(r#""version": 1"#, r#""version": 2"#));
    orch.load_governance(next(), false);
    assert_eq!(orch.governor().version(), 1, "loaded, not current");
    orch.load_governance(next(), true);
    assert_eq!(orch.governor().version(), 2);
    let run = block_on(orch.start(newsletter())).unwrap().run;
    let state = block_on(orch.state(run)).unwrap().unwrap();
    assert_eq!(state.governance_version, 2);
}
