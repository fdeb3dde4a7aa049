//! Approvals: the store conformance suite, and refusal of forged, replayed, expired,
//! self-issued and non-holder approvals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AnchorId, ApprovalId, ApprovalOutcome, AuditEvent, HumanId, IdGen, InMemoryAuditLog,
    ManualClock, Money, Principal,
};
use aios_governance::{
    testing, ApprovalError, ApprovalResponse, ApprovalState, Approvals, InMemoryApprovalStore,
    NewApproval, OnTimeout, ResponseKind, StateKind,
};
use serde_json::json;

struct Fixture {
    clock: ManualClock,
    log: InMemoryAuditLog,
    approvals: Approvals,
}

fn fixture() -> Fixture {
    let clock = ManualClock::default();
    let log = InMemoryAuditLog::new();
    let approvals = Approvals::new(
        Arc::new(InMemoryApprovalStore::new()),
        Arc::new(common::governor()),
        Arc::new(clock.clone()),
        Arc::new(log.clone()),
        IdGen::new(clock.clone(), 11),
    );
    Fixture {
        clock,
        log,
        approvals,
    }
}

fn human(name: &str) -> HumanId {
    HumanId::from_name(name)
}

fn ana() -> Principal {
    Principal::Agent(AgentId::from_name("ana"))
}

fn ask(requester: Principal) -> NewApproval {
    NewApproval {
        anchor: AnchorId::from_name("founder"),
        requester,
        run: None,
        task: None,
        pathway: None,
        action: "send".into(),
        proposed: json!({"to": "bob@example.com", "body": "hello"}),
        deadline: Duration::from_secs(1_800),
        allowed: vec![],
        on_timeout: OnTimeout::Deny,
        reason: None,
        id: None,
    }
}

fn events(log: &InMemoryAuditLog) -> Vec<AuditEvent> {
    log.tamper(|e| e.iter().map(|e| e.event.clone()).collect())
}

#[test]
fn in_memory_store_passes_the_conformance_suite() {
    futures::executor::block_on(testing::approval_store_conformance(
        InMemoryApprovalStore::new,
    ));
}

#[test]
fn an_approval_from_a_decision_is_answered_once_and_redeemed_once() {
    futures::executor::block_on(async {
        let f = fixture();
        let g = common::governor();
        let req = common::send().with_cost(Money::from_minor(300));
        let decision = g.decide(&req);
        let new = NewApproval::from_decision(&decision, &req, json!({"to": "x"})).unwrap();
        assert_eq!(
            new.allowed,
            vec![ResponseKind::Approve, ResponseKind::Reject]
        );
        let r = f.approvals.request(new).await.unwrap();
        assert_eq!(r.expires_at - r.created_at, chrono::Duration::minutes(30));
        assert_eq!(f.approvals.pending(None).await.unwrap().len(), 1);

        let decided = f
            .approvals
            .decide(r.id, human("alice"), ApprovalResponse::Approve)
            .await
            .unwrap();
        assert_eq!(decided.state.kind(), StateKind::Decided);
        assert!(f.approvals.pending(None).await.unwrap().is_empty());

        // replay: a second answer is refused, even a different one by another holder
        assert_eq!(
            f.approvals
                .decide(
                    r.id,
                    human("bob"),
                    ApprovalResponse::Reject {
                        reason: "no".into()
                    }
                )
                .await,
            Err(ApprovalError::AlreadyDecided { id: r.id })
        );
        // only the requester may use it
        assert_eq!(
            f.approvals
                .redeem(r.id, Principal::Agent(AgentId::from_name("eve")), None)
                .await,
            Err(ApprovalError::NotRequester {
                id: r.id,
                by: Principal::Agent(AgentId::from_name("eve"))
            })
        );
        let used = f
            .approvals
            .redeem(r.id, req.principal, req.run)
            .await
            .unwrap();
        assert_eq!(used.action, json!({"to": "x"}));
        assert_eq!(used.by, human("alice"));
        assert!(!used.edited);
        // replay: a second use is refused
        assert_eq!(
            f.approvals.redeem(r.id, req.principal, req.run).await,
            Err(ApprovalError::AlreadyRedeemed { id: r.id })
        );
        assert_eq!(
            f.approvals
                .decide(r.id, human("alice"), ApprovalResponse::Approve)
                .await,
            Err(ApprovalError::AlreadyRedeemed { id: r.id })
        );

        let ev = events(&f.log);
        assert_eq!(
            ev.len(),
            2,
            "one request and one answer are audited: {ev:?}"
        );
        assert!(
            matches!(ev[0], AuditEvent::ApprovalRequested { approval, .. } if approval == r.id)
        );
        assert!(matches!(
            ev[1],
            AuditEvent::ApprovalDecided { approval, by: Some(by), outcome: ApprovalOutcome::Approved, .. }
                if approval == r.id && by == human("alice")
        ));
    });
}

#[test]
fn forged_ids_and_non_holders_are_refused() {
    futures::executor::block_on(async {
        let f = fixture();
        let r = f.approvals.request(ask(ana())).await.unwrap();
        // a forged id
        let forged = ApprovalId::from_name("forged");
        assert_eq!(
            f.approvals
                .decide(forged, human("alice"), ApprovalResponse::Approve)
                .await,
            Err(ApprovalError::UnknownRequest { id: forged })
        );
        assert_eq!(
            f.approvals.redeem(forged, ana(), None).await,
            Err(ApprovalError::UnknownRequest { id: forged })
        );
        // a stranger, and a holder of another anchor
        for who in ["mallory", "carol"] {
            assert_eq!(
                f.approvals
                    .decide(r.id, human(who), ApprovalResponse::Approve)
                    .await,
                Err(ApprovalError::NotAuthorised {
                    by: human(who),
                    anchor: AnchorId::from_name("founder")
                }),
                "{who}"
            );
        }
        // not decided yet: nothing to redeem
        assert_eq!(
            f.approvals.redeem(r.id, ana(), None).await,
            Err(ApprovalError::NotDecided { id: r.id })
        );
        // a request to an anchor that does not exist
        let mut bad = ask(ana());
        bad.anchor = AnchorId::from_name("ghost");
        assert!(matches!(
            f.approvals.request(bad).await,
            Err(ApprovalError::UnknownAnchor { .. })
        ));
        // the deputy may answer, with an edit
        let edited = json!({"to": "bob@example.com", "body": "hello, politely"});
        f.approvals
            .decide(r.id, human("bob"), ApprovalResponse::Edit(edited.clone()))
            .await
            .unwrap();
        let used = f.approvals.redeem(r.id, ana(), None).await.unwrap();
        assert!(used.edited);
        assert_eq!(used.action, edited);
        assert_eq!(used.by, human("bob"));
        // refusals leave no decision in the audit log
        let decided: Vec<_> = events(&f.log)
            .into_iter()
            .filter(|e| matches!(e, AuditEvent::ApprovalDecided { .. }))
            .collect();
        assert_eq!(decided.len(), 1);
    });
}

#[test]
fn a_requester_never_approves_its_own_request() {
    futures::executor::block_on(async {
        let f = fixture();
        // alice holds the founder anchor, but she asked
        let r = f
            .approvals
            .request(ask(Principal::Human(human("alice"))))
            .await
            .unwrap();
        assert_eq!(
            f.approvals
                .decide(r.id, human("alice"), ApprovalResponse::Approve)
                .await,
            Err(ApprovalError::SelfApproval {
                id: r.id,
                by: human("alice")
            })
        );
        assert_eq!(
            f.approvals.get(r.id).await.unwrap().state,
            ApprovalState::Pending
        );
        // her deputy may
        f.approvals
            .decide(r.id, human("bob"), ApprovalResponse::Approve)
            .await
            .unwrap();
    });
}

#[test]
fn expired_requests_resolve_to_deny() {
    futures::executor::block_on(async {
        let f = fixture();
        let r = f.approvals.request(ask(ana())).await.unwrap();
        let r2 = f.approvals.request(ask(ana())).await.unwrap();
        f.clock.advance(Duration::from_secs(1_800));
        assert!(
            f.approvals.pending(None).await.unwrap().is_empty(),
            "expired are not pending"
        );
        assert_eq!(
            f.approvals
                .decide(r.id, human("alice"), ApprovalResponse::Approve)
                .await,
            Err(ApprovalError::Expired {
                id: r.id,
                on_timeout: OnTimeout::Deny,
                escalated_to: None
            })
        );
        assert!(matches!(
            f.approvals.get(r.id).await.unwrap().state,
            ApprovalState::Expired { .. }
        ));
        assert!(matches!(
            f.approvals.redeem(r.id, ana(), None).await,
            Err(ApprovalError::Expired { .. })
        ));
        // the sweep resolves the other one
        let swept = f.approvals.expire_due().await.unwrap();
        assert_eq!(swept.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2.id]);
        assert!(f.approvals.expire_due().await.unwrap().is_empty());
        let expired = events(&f.log)
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    AuditEvent::ApprovalDecided {
                        outcome: ApprovalOutcome::Expired,
                        by: None,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(expired, 2, "each expiry is audited once");
    });
}

#[test]
fn rejections_and_disallowed_answers() {
    futures::executor::block_on(async {
        let f = fixture();
        let mut new = ask(ana());
        new.allowed = vec![ResponseKind::Approve, ResponseKind::Reject];
        let r = f.approvals.request(new).await.unwrap();
        assert_eq!(
            f.approvals
                .decide(r.id, human("alice"), ApprovalResponse::Edit(json!({})))
                .await,
            Err(ApprovalError::ResponseNotAllowed {
                id: r.id,
                response: ResponseKind::Edit
            })
        );
        f.approvals
            .decide(
                r.id,
                human("alice"),
                ApprovalResponse::Reject {
                    reason: "wrong tone".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            f.approvals.redeem(r.id, ana(), None).await,
            Err(ApprovalError::Rejected {
                id: r.id,
                reason: "wrong tone".into()
            })
        );
        assert!(events(&f.log).iter().any(|e| matches!(
            e,
            AuditEvent::ApprovalDecided { outcome: ApprovalOutcome::Rejected, reason: Some(r), .. }
                if r == "wrong tone"
        )));
    });
}

#[test]
fn an_expired_request_that_escalates_is_asked_again_of_the_timeout_anchor() {
    futures::executor::block_on(async {
        let f = fixture();
        let mut new = ask(ana());
        new.on_timeout = OnTimeout::Escalate(AnchorId::from_name("ops"));
        new.allowed = vec![ResponseKind::Approve, ResponseKind::Reject];
        let r = f.approvals.request(new).await.unwrap();
        assert!(f.approvals.sweep().await.unwrap().is_empty(), "not due yet");
        f.clock.advance(Duration::from_secs(3_600));
        let swept = f.approvals.sweep().await.unwrap();
        assert_eq!(swept.len(), 1);
        let next = swept[0].escalated_to.expect("escalated");
        let escalated = f.approvals.get(next).await.unwrap();
        assert_eq!(escalated.anchor, AnchorId::from_name("ops"));
        assert_eq!(
            escalated.allowed, r.allowed,
            "the answers allowed travel with it"
        );
        assert_eq!(escalated.proposed, r.proposed);
        assert_eq!(escalated.on_timeout, OnTimeout::Deny, "one hop only");
        assert!(matches!(
            f.approvals.get(r.id).await.unwrap().state,
            ApprovalState::Expired { escalated_to: Some(n), .. } if n == next
        ));
        // the original anchor can no longer answer; the timeout anchor can
        assert!(matches!(
            f.approvals
                .decide(r.id, human("alice"), ApprovalResponse::Approve)
                .await,
            Err(ApprovalError::Expired {
                escalated_to: Some(_),
                ..
            })
        ));
        f.approvals
            .decide(next, human("carol"), ApprovalResponse::Approve)
            .await
            .unwrap();
        // a second sweep does nothing more
        assert!(f.approvals.sweep().await.unwrap().is_empty());
        assert!(events(&f.log)
            .iter()
            .any(|e| matches!(e, AuditEvent::Escalated { anchor, .. } if *anchor == AnchorId::from_name("ops"))));
    })
}

#[test]
fn an_approval_asked_by_a_run_is_redeemed_by_that_run_only() {
    futures::executor::block_on(async {
        let f = fixture();
        let mut new = ask(ana());
        let run: aios_core::RunId = aios_core::RunId::from_name("mine");
        new.run = Some(run);
        let r = f.approvals.request(new).await.unwrap();
        f.approvals
            .decide(r.id, human("alice"), ApprovalResponse::Approve)
            .await
            .unwrap();
        let other = aios_core::RunId::from_name("fork");
        assert!(matches!(
            f.approvals.redeem(r.id, ana(), Some(other)).await,
            Err(ApprovalError::WrongRun { .. })
        ));
        assert!(f.approvals.redeem(r.id, ana(), None).await.is_err());
        f.approvals.redeem(r.id, ana(), Some(run)).await.unwrap();
        assert!(matches!(
            f.approvals.redeem(r.id, ana(), Some(run)).await,
            Err(ApprovalError::AlreadyRedeemed { .. })
        ));
    })
}

#[test]
fn a_request_asked_again_with_its_id_is_found_not_duplicated() {
    futures::executor::block_on(async {
        let f = fixture();
        let id = ApprovalId::from_name("call:run/task/0");
        let mut new = ask(ana());
        new.id = Some(id);
        let first = f.approvals.request(new.clone()).await.unwrap();
        let again = f.approvals.request(new.clone()).await.unwrap();
        assert_eq!(first, again);
        let requested = events(&f.log)
            .iter()
            .filter(|e| matches!(e, AuditEvent::ApprovalRequested { .. }))
            .count();
        assert_eq!(requested, 1, "asked once, audited once");
        // another request under the same id is refused
        new.proposed = json!({"to": "mallory@example.com"});
        assert!(f.approvals.request(new).await.is_err());
    })
}

#[test]
fn a_request_under_a_pinned_version_records_that_version() {
    futures::executor::block_on(async {
        let clock = ManualClock::default();
        let mut newer = common::base();
        newer.version = 2;
        let newer = newer.compile().map_err(|r| r.to_string()).unwrap();
        // the service knows version 2; the run asking is pinned to version 1
        let approvals = Approvals::new(
            Arc::new(InMemoryApprovalStore::new()),
            Arc::new(newer),
            Arc::new(clock.clone()),
            Arc::new(InMemoryAuditLog::new()),
            IdGen::new(clock, 5),
        );
        let pinned = common::governor();
        let r = approvals.request_under(&pinned, ask(ana())).await.unwrap();
        assert_eq!(r.model_version, 1);
        let current = approvals.request(ask(ana())).await.unwrap();
        assert_eq!(current.model_version, 2);
    })
}
