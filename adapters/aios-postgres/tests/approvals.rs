//! An approval decided by one process is seen by a worker waiting in another: woken by
//! `NOTIFY`, or by polling when no notification comes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use aios_core::{
    AgentId, AnchorId, ApprovalId, Clock, HumanId, ManualClock, Principal, RunId, StoreError,
};
use aios_governance::{
    ApprovalDecision, ApprovalRequest, ApprovalResponse, ApprovalState, ApprovalStore, OnTimeout,
    ResponseKind, StateKind,
};
use aios_postgres::testing::TestServer;
use aios_postgres::{PgOptions, PgStore};

fn request(id: ApprovalId) -> ApprovalRequest {
    let t0 = ManualClock::default().now();
    ApprovalRequest {
        id,
        anchor: AnchorId::from_name("founder"),
        requester: Principal::Agent(AgentId::from_name("ana")),
        run: Some(RunId::from_name("run-1")),
        task: None,
        pathway: None,
        action: "send".into(),
        proposed: serde_json::json!({"to": "bob@example.com"}),
        reason: None,
        allowed: ResponseKind::ALL.to_vec(),
        on_timeout: OnTimeout::Deny,
        model_version: 1,
        created_at: t0,
        expires_at: t0 + chrono::Duration::minutes(60),
        state: ApprovalState::Pending,
    }
}

fn decided(at: aios_core::Timestamp) -> ApprovalState {
    ApprovalState::Decided {
        decision: ApprovalDecision {
            by: HumanId::from_name("alice"),
            response: ApprovalResponse::Approve,
            at,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_worker_is_woken_by_a_decision_in_another_process() {
    let url = common::fresh_url().await;
    // the waiter would only poll once a minute: waking in time proves the notification
    let waiter = PgStore::connect_with(
        &url,
        PgOptions::default().poll_interval(Duration::from_secs(60)),
    )
    .await
    .unwrap()
    .approval_store();
    let operator = PgStore::connect(&url).await.unwrap().approval_store();
    let id = ApprovalId::from_name("a");
    let r = request(id);
    operator.insert(r.clone()).await.unwrap();

    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        waiter
            .wait_for_change(id, StateKind::Pending, Duration::from_secs(30))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    operator
        .transition(id, StateKind::Pending, decided(r.created_at))
        .await
        .unwrap();
    let seen = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("woken before the timeout");
    assert_eq!(seen.state.kind(), StateKind::Decided);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the notification, not the 60 s poll: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_notification_polling_finds_the_change() {
    let url = common::fresh_url().await;
    let store = PgStore::connect_with(
        &url,
        PgOptions::default().poll_interval(Duration::from_millis(100)),
    )
    .await
    .unwrap()
    .approval_store();
    let id = ApprovalId::from_name("b");
    let r = request(id);
    store.insert(r.clone()).await.unwrap();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .wait_for_change(id, StateKind::Pending, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // a change behind the store's back: no NOTIFY is sent
    let mut changed = r.clone();
    changed.state = decided(r.created_at);
    let text = serde_json::to_string(&changed).unwrap().replace('\'', "''");
    TestServer::execute_on(
        &url,
        &format!(
            "UPDATE aios_approvals SET state = 'decided', request = '{text}' WHERE id = '{id}'"
        ),
    )
    .await
    .unwrap();
    let seen = waiting.await.unwrap().unwrap().expect("found by polling");
    assert_eq!(seen.state.kind(), StateKind::Decided);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_times_out_with_none_and_an_unknown_id_is_not_found() {
    let store = common::fresh().await.approval_store();
    let id = ApprovalId::from_name("c");
    store.insert(request(id)).await.unwrap();
    let out = store
        .wait_for_change(id, StateKind::Pending, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(out.is_none(), "nothing changed");
    // already changed: returns at once
    let out = store
        .wait_for_change(id, StateKind::Decided, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out.map(|r| r.state.kind()), Some(StateKind::Pending));
    assert!(matches!(
        store
            .wait_for_change(
                ApprovalId::from_name("nope"),
                StateKind::Pending,
                Duration::from_secs(1)
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));
}
