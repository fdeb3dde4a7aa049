//! Failures of the audit log and the control store: nothing is loosened, approved or
//! reserved without a record, and the kill switch works even when the log or store is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/alert_undo.rs"]
mod alert_undo;
mod common;

use std::sync::Arc;

use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog};
use aios_core::{
    AnchorId, HumanId, IdGen, InMemoryAuditLog, ManualClock, PathwayId, Principal, StoreError,
};
use aios_governance::{
    ApprovalError, ApprovalResponse, ApprovalState, Approvals, ControlError, ControlTarget,
    Controls, Halt, InMemoryApprovalStore, InMemoryBudgetLedger, NewApproval, OnTimeout,
};

fn alice() -> Principal {
    Principal::Human(HumanId::from_name("alice"))
}

#[test]
fn the_kill_switch_works_without_the_audit_log_but_resuming_needs_it() {
    futures::executor::block_on(async {
        let faults = Faults::new(FaultPlan::fail_after(0));
        let log = FaultyAuditLog::new(InMemoryAuditLog::new(), faults.clone());
        let controls = Controls::new(Arc::new(ManualClock::default()), Arc::new(log));
        let err = controls
            .stop(ControlTarget::Organisation, alice(), "incident")
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Audit(_)));
        assert_eq!(
            controls.snapshot().halt(ControlTarget::Organisation),
            Some(Halt::Stopped),
            "the stop is in force anyway"
        );
        assert!(controls
            .resume(ControlTarget::Organisation, alice(), "over")
            .await
            .is_err());
        assert_eq!(
            controls.snapshot().halt(ControlTarget::Organisation),
            Some(Halt::Stopped),
            "an unrecorded resume is not applied"
        );
        faults.set_plan(FaultPlan::none());
        controls
            .resume(ControlTarget::Organisation, alice(), "over")
            .await
            .unwrap();
        assert_eq!(controls.snapshot().halt(ControlTarget::Organisation), None);
        // a control without a reason is refused
        assert_eq!(
            controls
                .pause(
                    ControlTarget::Pathway(PathwayId::from_name("send-email")),
                    alice(),
                    " "
                )
                .await,
            Err(ControlError::MissingReason)
        );
    });
}

#[test]
fn approvals_are_never_usable_without_their_record() {
    futures::executor::block_on(async {
        let clock = ManualClock::default();
        let faults = Faults::new(FaultPlan::none());
        let inner = InMemoryAuditLog::new();
        let approvals = Approvals::new(
            Arc::new(InMemoryApprovalStore::new()),
            Arc::new(common::governor()),
            Arc::new(clock.clone()),
            Arc::new(FaultyAuditLog::new(inner.clone(), faults.clone())),
            IdGen::new(clock.clone(), 5),
        );
        let ana = Principal::Agent(aios_core::AgentId::from_name("ana"));
        let ask = || NewApproval {
            anchor: AnchorId::from_name("founder"),
            requester: ana,
            run: None,
            task: None,
            pathway: None,
            action: "send".into(),
            proposed: serde_json::json!({}),
            deadline: std::time::Duration::from_secs(600),
            allowed: vec![],
            on_timeout: OnTimeout::Deny,
            reason: None,
            id: None,
        };
        // the request cannot be recorded: it is withdrawn
        faults.set_plan(FaultPlan::fail_after(0));
        assert!(matches!(
            approvals.request(ask()).await,
            Err(ApprovalError::Store(_))
        ));
        faults.set_plan(FaultPlan::none());
        assert!(approvals.pending(None).await.unwrap().is_empty());

        // the answer cannot be recorded: it is undone
        let r = approvals.request(ask()).await.unwrap();
        faults.set_plan(FaultPlan::fail_after(0));
        assert!(matches!(
            approvals
                .decide(r.id, HumanId::from_name("alice"), ApprovalResponse::Approve)
                .await,
            Err(ApprovalError::Store(_))
        ));
        faults.set_plan(FaultPlan::none());
        assert_eq!(
            approvals.get(r.id).await.unwrap().state,
            ApprovalState::Pending
        );
        assert!(matches!(
            approvals.redeem(r.id, ana, None).await,
            Err(ApprovalError::NotDecided { .. })
        ));
        // and can be given again once the log is back
        approvals
            .decide(r.id, HumanId::from_name("alice"), ApprovalResponse::Approve)
            .await
            .unwrap();
        assert!(approvals.redeem(r.id, ana, None).await.is_ok());
        assert!(inner.verify_sync(None).is_intact());
        assert_eq!(inner.len(), 2, "the successful request and answer");
    });
}

#[test]
fn a_reservation_whose_alert_cannot_be_recorded_is_undone() {
    futures::executor::block_on(async {
        let faults = Faults::new(FaultPlan::none());
        let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default())).with_audit(
            Arc::new(FaultyAuditLog::new(InMemoryAuditLog::new(), faults.clone())),
        );
        alert_undo::a_reservation_whose_alert_cannot_be_recorded_is_undone(&ledger, &faults).await;
        assert_eq!(ledger.outstanding(), 0);
    });
}

/// A control store that refuses appends while `down` is set.
#[derive(Debug, Default)]
struct FlakyControlStore {
    inner: aios_governance::InMemoryControlStore,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl aios_governance::ControlStore for FlakyControlStore {
    async fn append(&self, record: &aios_governance::ControlRecord) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                detail: "the control store is down".into(),
            });
        }
        self.inner.append(record).await
    }

    async fn load(&self) -> Result<Vec<aios_governance::ControlRecord>, StoreError> {
        self.inner.load().await
    }
}

#[test]
fn a_control_store_failure_still_stops_but_never_resumes() {
    futures::executor::block_on(async {
        let clock = Arc::new(ManualClock::default());
        let audit = Arc::new(InMemoryAuditLog::new());
        let store = Arc::new(FlakyControlStore::default());
        let c = Controls::open(store.clone(), clock.clone(), audit.clone())
            .await
            .unwrap();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let stopped = c
            .stop(ControlTarget::Organisation, Principal::System, "incident")
            .await;
        assert!(
            matches!(stopped, Err(ControlError::Store(_))),
            "{stopped:?}"
        );
        assert_eq!(
            c.snapshot().halt(ControlTarget::Organisation),
            Some(Halt::Stopped),
            "the kill switch holds in this process although it could not be stored"
        );
        assert_eq!(audit.len(), 1, "and it was audited");
        let resumed = c
            .resume(ControlTarget::Organisation, alice(), "all clear")
            .await;
        assert!(
            matches!(resumed, Err(ControlError::Store(_))),
            "{resumed:?}"
        );
        assert_eq!(
            c.snapshot().halt(ControlTarget::Organisation),
            Some(Halt::Stopped),
            "nothing is loosened that was not stored"
        );
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        c.stop(
            ControlTarget::Organisation,
            Principal::System,
            "incident, again",
        )
        .await
        .unwrap();
        let reopened = Controls::open(store.clone(), clock.clone(), audit.clone())
            .await
            .unwrap();
        assert_eq!(
            reopened.snapshot().halt(ControlTarget::Organisation),
            Some(Halt::Stopped)
        );
        c.resume(ControlTarget::Organisation, alice(), "all clear")
            .await
            .unwrap();
        assert_eq!(c.snapshot().halt(ControlTarget::Organisation), None);
    });
}

/// A reservation whose caller is dropped while its alert is being recorded (the audit log
/// does not answer) is undone, and its alert reported again once the log answers.
#[test]
fn a_reservation_dropped_while_its_alert_is_recorded_is_undone() {
    use aios_core::ManualTimer;
    use std::future::Future;
    use std::task::{Context, Poll};
    use std::time::Duration;
    let clock = ManualClock::default();
    let faults = Faults::new(FaultPlan::delay(
        Arc::new(ManualTimer::new(clock.clone())),
        Duration::from_secs(3600),
    ));
    let ledger = InMemoryBudgetLedger::new(Arc::new(clock)).with_audit(Arc::new(
        FaultyAuditLog::new(InMemoryAuditLog::new(), faults.clone()),
    ));
    let limits = aios_governance::BudgetLimits::total(aios_governance::Limits {
        cost: Some(aios_core::Money::from_minor(100)),
        ..aios_governance::Limits::default()
    });
    ledger.set_limits_sync(aios_governance::BudgetKey::Organisation, limits);
    let chain = aios_governance::BudgetChain::organisation();
    let options = aios_governance::ReserveOptions::default();
    let sixty = aios_governance::Usage::cost(aios_core::Money::from_minor(60));
    let mut reserving = Box::pin(aios_governance::BudgetLedger::reserve(
        &ledger, &chain, sixty, &options,
    ));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(matches!(reserving.as_mut().poll(&mut cx), Poll::Pending));
    assert_eq!(faults.calls(), 1, "its alert's entry is being written");
    assert_eq!(ledger.outstanding(), 1);
    drop(reserving);
    assert_eq!(ledger.outstanding(), 0, "undone with the dropped future");
    faults.set_plan(FaultPlan::none());
    let r = ledger.reserve_sync(&chain, sixty, &options).unwrap();
    assert_eq!(
        alert_undo::thresholds(&r.alerts),
        vec![50],
        "the alert is reported again"
    );
}
