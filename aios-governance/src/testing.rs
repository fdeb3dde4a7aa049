//! Conformance suites (feature `testing`): the documented contract of this crate's ports as
//! executable checks. Every implementation, in-memory or durable, runs the same suite:
//!
//! ```
//! use std::sync::Arc;
//! use aios_core::ManualClock;
//! use aios_governance::{testing, InMemoryApprovalStore, InMemoryBudgetLedger, InMemoryControlStore};
//! futures::executor::block_on(async {
//!     testing::budget_ledger_conformance(|clock: ManualClock| {
//!         InMemoryBudgetLedger::new(Arc::new(clock))
//!     })
//!     .await;
//!     testing::approval_store_conformance(InMemoryApprovalStore::new).await;
//!     testing::control_store_conformance(InMemoryControlStore::new).await;
//! });
//! ```
//!
//! Test-support code: a suite reports a violation by panicking, like `assert!`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aios_core::{
    AgentId, AnchorId, ApprovalId, Clock, HumanId, ManualClock, Money, Principal, RoleId, RunId,
    StoreError,
};

use crate::{
    ApprovalDecision, ApprovalRequest, ApprovalResponse, ApprovalState, ApprovalStore, BudgetChain,
    BudgetError, BudgetKey, BudgetLedger, BudgetLimits, ControlAction, ControlCommand,
    ControlRecord, ControlStore, ControlTarget, Dimension, Limits, OnTimeout, Period, Relaxation,
    ReservationId, ReserveOptions, ResponseKind, StateKind, Usage,
};

fn cost(minor: i64) -> Usage {
    Usage::cost(Money::from_minor(minor))
}

fn cap(minor: i64) -> BudgetLimits {
    BudgetLimits::total(Limits {
        cost: Some(Money::from_minor(minor)),
        ..Limits::default()
    })
}

/// The [`BudgetLedger`] contract. `make` returns a fresh, empty ledger reading the given
/// manual clock each time it is called.
pub async fn budget_ledger_conformance<L: BudgetLedger, F: Fn(ManualClock) -> L>(make: F) {
    let role = RoleId::from_name("outreach");
    let agent = AgentId::from_name("ana");
    let run = RunId::from_name("run-1");
    let chain = BudgetChain::organisation().role(role).agent(agent).run(run);

    // the organisation's budget is required
    let ledger = make(ManualClock::default());
    assert!(
        matches!(
            ledger
                .reserve(&chain, cost(1), &ReserveOptions::default())
                .await,
            Err(BudgetError::NoBudget {
                key: BudgetKey::Organisation
            })
        ),
        "reserving without an organisation budget is refused"
    );
    assert!(ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .is_none());

    // limits per level; levels without a budget are not limited
    ledger
        .set_limits(BudgetKey::Organisation, cap(1_000))
        .await
        .unwrap();
    ledger
        .set_limits(BudgetKey::Role(role), cap(300))
        .await
        .unwrap();
    ledger
        .set_limits(BudgetKey::Run(run), cap(200))
        .await
        .unwrap();
    let r1 = ledger
        .reserve(&chain, cost(150), &ReserveOptions::default())
        .await
        .unwrap();
    let usage = ledger.usage(BudgetKey::Role(role)).await.unwrap().unwrap();
    assert_eq!(
        usage.reserved.cost,
        Money::from_minor(150),
        "reservation shows as reserved"
    );
    assert_eq!(usage.committed.cost, Money::ZERO);
    assert!(ledger
        .usage(BudgetKey::Agent(agent))
        .await
        .unwrap()
        .is_none());

    // all or nothing: the run level refuses, nothing changes anywhere
    match ledger
        .reserve(&chain, cost(60), &ReserveOptions::default())
        .await
    {
        Err(BudgetError::Exceeded {
            key,
            dimension,
            limit,
            used,
            requested,
        }) => {
            assert_eq!(key, BudgetKey::Run(run), "the overflowing level is named");
            assert_eq!(dimension, Dimension::Cost);
            assert_eq!((limit, used, requested), (200, 150, 60));
        }
        other => panic!("expected Exceeded, got {other:?}"),
    }
    for key in [
        BudgetKey::Organisation,
        BudgetKey::Role(role),
        BudgetKey::Run(run),
    ] {
        let u = ledger.usage(key).await.unwrap().unwrap();
        assert_eq!(
            u.reserved.cost,
            Money::from_minor(150),
            "a refusal changes nothing at {key}"
        );
    }

    // exactly up to the limit is allowed
    let r2 = ledger
        .reserve(&chain, cost(50), &ReserveOptions::default())
        .await
        .unwrap();

    // commit the actual amount; release returns everything
    ledger.commit(r1.id, cost(120)).await.unwrap();
    ledger.release(r2.id).await.unwrap();
    let u = ledger.usage(BudgetKey::Run(run)).await.unwrap().unwrap();
    assert_eq!(
        u.committed.cost,
        Money::from_minor(120),
        "commit records the actual amount"
    );
    assert_eq!(
        u.reserved.cost,
        Money::ZERO,
        "settled reservations are no longer reserved"
    );
    let u = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.cost, Money::from_minor(120));

    // settle once
    assert!(
        matches!(
            ledger.commit(r1.id, cost(1)).await,
            Err(BudgetError::AlreadySettled { .. })
        ),
        "a second commit is refused"
    );
    assert!(
        matches!(
            ledger.release(r2.id).await,
            Err(BudgetError::AlreadySettled { .. })
        ),
        "a second release is refused"
    );
    assert!(
        matches!(
            ledger.release(ReservationId::from_raw(u64::MAX)).await,
            Err(BudgetError::UnknownReservation { .. })
        ),
        "an id never issued is unknown"
    );
    let u = ledger.usage(BudgetKey::Run(run)).await.unwrap().unwrap();
    assert_eq!(
        u.committed.cost,
        Money::from_minor(120),
        "refused settlements change nothing"
    );

    // other dimensions
    let ledger = make(ManualClock::default());
    ledger
        .set_limits(
            BudgetKey::Organisation,
            BudgetLimits::total(Limits {
                tokens: Some(1_000),
                tool_calls: Some(3),
                risk_points: Some(100),
                cost: None,
                payments: Some(Money::from_minor(50_000)),
            }),
        )
        .await
        .unwrap();
    let org = BudgetChain::organisation();
    // money moved is limited apart from money spent (unlimited here)
    let paid = ledger
        .reserve(
            &org,
            Usage::cost(Money::from_minor(1_000_000)).with_payments(Money::from_minor(30_000)),
            &ReserveOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            ledger
                .reserve(
                    &org,
                    Usage::ZERO.with_payments(Money::from_minor(20_001)),
                    &ReserveOptions::default()
                )
                .await,
            Err(BudgetError::Exceeded {
                dimension: Dimension::Payments,
                limit: 50_000,
                used: 30_000,
                requested: 20_001,
                ..
            })
        ),
        "payments are limited, whatever is spent"
    );
    ledger
        .commit(
            paid.id,
            Usage::ZERO.with_payments(Money::from_minor(30_000)),
        )
        .await
        .unwrap();
    let u = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.payments, Money::from_minor(30_000));
    assert_eq!(u.committed.cost, Money::ZERO, "what was paid is not spend");
    assert!(
        matches!(
            ledger
                .reserve(
                    &org,
                    Usage::ZERO.with_risk_points(101),
                    &ReserveOptions::default()
                )
                .await,
            Err(BudgetError::Exceeded {
                dimension: Dimension::RiskPoints,
                ..
            })
        ),
        "risk points are limited"
    );
    for _ in 0..2 {
        let r = ledger
            .reserve(
                &org,
                Usage::ZERO.with_tool_calls(1).with_tokens(100),
                &ReserveOptions::default(),
            )
            .await
            .unwrap();
        ledger
            .commit(r.id, Usage::ZERO.with_tool_calls(1).with_tokens(90))
            .await
            .unwrap();
    }
    let all_tokens = ledger
        .reserve(
            &org,
            Usage::ZERO.with_tokens(820),
            &ReserveOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            ledger
                .reserve(&org, Usage::ZERO.with_tokens(1), &ReserveOptions::default())
                .await,
            Err(BudgetError::Exceeded {
                dimension: Dimension::Tokens,
                ..
            })
        ),
        "tokens are limited"
    );
    assert!(
        matches!(
            ledger
                .reserve(
                    &org,
                    Usage::ZERO.with_tool_calls(1),
                    &ReserveOptions::default()
                )
                .await,
            Err(BudgetError::Exceeded {
                dimension: Dimension::Tokens,
                requested: 0,
                ..
            })
        ),
        "exhausted tokens refuse a reservation of no tokens"
    );
    ledger.release(all_tokens.id).await.unwrap();
    let r = ledger
        .reserve(
            &org,
            Usage::ZERO.with_tool_calls(1),
            &ReserveOptions::default(),
        )
        .await
        .unwrap();
    ledger
        .commit(r.id, Usage::ZERO.with_tool_calls(1))
        .await
        .unwrap();
    assert!(
        matches!(
            ledger
                .reserve(
                    &org,
                    Usage::ZERO.with_tool_calls(1),
                    &ReserveOptions::default()
                )
                .await,
            Err(BudgetError::Exceeded {
                dimension: Dimension::ToolCalls,
                ..
            })
        ),
        "tool calls are limited"
    );
    assert!(
        matches!(
            ledger
                .reserve(&org, Usage::ZERO, &ReserveOptions::default())
                .await,
            Err(BudgetError::Exceeded {
                dimension: Dimension::ToolCalls,
                used: 3,
                limit: 3,
                requested: 0,
                ..
            })
        ),
        "an exhausted budget refuses even a zero reservation"
    );
    assert!(
        matches!(
            ledger
                .reserve(&org, cost(-1), &ReserveOptions::default())
                .await,
            Err(BudgetError::InvalidAmount { .. })
        ),
        "negative amounts are refused"
    );

    // alerts: each threshold once per period, in the result of the crossing operation
    let ledger = make(ManualClock::default());
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let r = ledger
        .reserve(&org, cost(49), &ReserveOptions::default())
        .await
        .unwrap();
    assert!(r.alerts.is_empty(), "below 50 % there is no alert");
    let r2 = ledger
        .reserve(&org, cost(2), &ReserveOptions::default())
        .await
        .unwrap();
    let t: Vec<u32> = r2.alerts.iter().map(|a| a.threshold_percent).collect();
    assert_eq!(t, vec![50], "crossing 50 % alerts once");
    let s = ledger.commit(r.id, cost(79)).await.unwrap();
    let t: Vec<u32> = s.alerts.iter().map(|a| a.threshold_percent).collect();
    assert_eq!(t, vec![80], "crossing 80 % on commit alerts");
    let s = ledger.commit(r2.id, cost(30)).await.unwrap();
    let t: Vec<u32> = s.alerts.iter().map(|a| a.threshold_percent).collect();
    assert_eq!(t, vec![100], "an overrun is recorded and alerts at 100 %");
    assert_eq!(s.alerts[0].used, 109);
    assert_eq!(s.alerts[0].limit, 100);

    // periods reset committed usage at the boundary
    let clock = ManualClock::default(); // midnight UTC
    let ledger = make(clock.clone());
    ledger
        .set_limits(
            BudgetKey::Organisation,
            BudgetLimits::per(
                Period::Day,
                Limits {
                    cost: Some(Money::from_minor(100)),
                    ..Limits::default()
                },
            ),
        )
        .await
        .unwrap();
    let r = ledger
        .reserve(&org, cost(100), &ReserveOptions::default())
        .await
        .unwrap();
    ledger.commit(r.id, cost(100)).await.unwrap();
    assert!(
        ledger
            .reserve(&org, cost(1), &ReserveOptions::default())
            .await
            .is_err(),
        "the day is spent"
    );
    clock.advance(Duration::from_secs(86_400));
    let r = ledger
        .reserve(&org, cost(100), &ReserveOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.alerts
            .iter()
            .map(|a| a.threshold_percent)
            .collect::<Vec<_>>(),
        vec![50, 80, 100],
        "alerts fire again in a new period"
    );
    ledger.release(r.id).await.unwrap();
    let u = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.cost, Money::ZERO, "a new day starts empty");

    // limits can change; usage is kept
    ledger
        .set_limits(BudgetKey::Organisation, cap(10))
        .await
        .unwrap();
    let r = ledger
        .reserve(&org, cost(10), &ReserveOptions::default())
        .await
        .unwrap();
    ledger.commit(r.id, cost(10)).await.unwrap();
    ledger
        .set_limits(BudgetKey::Organisation, cap(15))
        .await
        .unwrap();
    assert!(ledger
        .reserve(&org, cost(6), &ReserveOptions::default())
        .await
        .is_err());
    assert!(ledger
        .reserve(&org, cost(5), &ReserveOptions::default())
        .await
        .is_ok());

    // reservations abandoned by a dead worker are released by run, and only that run's
    let ledger = make(ManualClock::default());
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let other = RunId::from_name("run-2");
    let mine = BudgetChain::organisation().role(role).run(run);
    let theirs = BudgetChain::organisation().run(other);
    let a = ledger
        .reserve(&mine, cost(30), &ReserveOptions::default())
        .await
        .unwrap();
    ledger
        .reserve(&mine, cost(20), &ReserveOptions::default())
        .await
        .unwrap();
    let kept = ledger
        .reserve(&theirs, cost(10), &ReserveOptions::default())
        .await
        .unwrap();
    ledger.commit(a.id, cost(25)).await.unwrap();
    assert_eq!(
        ledger.release_run(run).await.unwrap(),
        1,
        "only the unsettled one"
    );
    assert_eq!(
        ledger.release_run(run).await.unwrap(),
        0,
        "releasing is idempotent"
    );
    let u = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.committed.cost, Money::from_minor(25), "commits stand");
    assert_eq!(
        u.reserved.cost,
        Money::from_minor(10),
        "the other run keeps its reservation"
    );
    ledger.commit(kept.id, cost(10)).await.unwrap();

    budget_charged_once_per_key(&make).await;
    budget_expired_reservation_stops_counting(&make).await;
}

fn none() -> ReserveOptions {
    ReserveOptions::default()
}

async fn org_usage<L: BudgetLedger>(ledger: &L) -> (i64, i64) {
    let u = ledger
        .usage(BudgetKey::Organisation)
        .await
        .unwrap()
        .unwrap();
    (u.committed.cost.minor(), u.reserved.cost.minor())
}

/// Part of the [`BudgetLedger`] contract: a reservation with a charge key that was committed
/// charges the key; a later reservation with that key is refused with
/// [`BudgetError::AlreadyCharged`] and changes nothing; a release charges nothing; of two
/// reservations under one key, only the first committed is charged.
pub async fn budget_charged_once_per_key<L: BudgetLedger, F: Fn(ManualClock) -> L>(make: &F) {
    let run = RunId::from_name("run-1");
    let chain = BudgetChain::organisation().run(run);
    let ledger = make(ManualClock::default());
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let call = ReserveOptions::keyed("run-1/task-a/1");
    let r = ledger.reserve(&chain, cost(10), &call).await.unwrap();
    let retry = ledger.reserve(&chain, cost(10), &call).await.unwrap();
    ledger.release(retry.id).await.unwrap();
    ledger.commit(r.id, cost(8)).await.unwrap();
    match ledger.reserve(&chain, cost(10), &call).await {
        Err(BudgetError::AlreadyCharged { key }) => assert_eq!(key, "run-1/task-a/1"),
        other => panic!("a charged key is refused, got {other:?}"),
    }
    assert_eq!(
        ledger
            .reserve(&chain, cost(10), &call.clone().ttl(Duration::from_secs(5)))
            .await
            .err()
            .map(|e| e.to_string()),
        Some("charge key `run-1/task-a/1` was already committed".to_string()),
        "whatever the other options"
    );
    assert_eq!(
        org_usage(&ledger).await,
        (8, 0),
        "the refusals changed nothing"
    );
    assert_eq!(ledger.release_run(run).await.unwrap(), 0);

    // a release, and a release by run, charge nothing: the key can pay later
    let next = ReserveOptions::keyed("run-1/task-a/2");
    let r = ledger.reserve(&chain, cost(10), &next).await.unwrap();
    ledger.release(r.id).await.unwrap();
    ledger.reserve(&chain, cost(10), &next).await.unwrap();
    assert_eq!(ledger.release_run(run).await.unwrap(), 1);
    let r = ledger.reserve(&chain, cost(10), &next).await.unwrap();
    ledger.commit(r.id, cost(10)).await.unwrap();
    assert!(matches!(
        ledger.reserve(&chain, cost(1), &next).await,
        Err(BudgetError::AlreadyCharged { .. })
    ));

    // other keys and unkeyed reservations are not affected
    let other = ReserveOptions::keyed("run-1/task-b/1");
    let r = ledger.reserve(&chain, cost(1), &other).await.unwrap();
    ledger.commit(r.id, cost(1)).await.unwrap();
    for _ in 0..2 {
        let r = ledger.reserve(&chain, cost(1), &none()).await.unwrap();
        ledger.commit(r.id, cost(1)).await.unwrap();
    }
    assert_eq!(org_usage(&ledger).await, (21, 0));

    // a charged key is reported before any limit: the caller learns the call was paid for
    let r = ledger.reserve(&chain, cost(79), &none()).await.unwrap();
    ledger.commit(r.id, cost(79)).await.unwrap();
    assert!(matches!(
        ledger.reserve(&chain, cost(1), &call).await,
        Err(BudgetError::AlreadyCharged { .. })
    ));

    // two reservations under one key both committed (a run taken over from a worker whose
    // lease lapsed while it still worked): the first charges, the second only gives back
    let ledger = make(ManualClock::default());
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let taken = ReserveOptions::keyed("run-1/task-c/1");
    let first = ledger.reserve(&chain, cost(10), &taken).await.unwrap();
    let second = ledger.reserve(&chain, cost(10), &taken).await.unwrap();
    ledger.commit(first.id, cost(7)).await.unwrap();
    ledger.commit(second.id, cost(7)).await.unwrap();
    assert_eq!(
        org_usage(&ledger).await,
        (7, 0),
        "one key is charged once, and nothing stays reserved"
    );
    assert!(matches!(
        ledger.commit(second.id, cost(7)).await,
        Err(BudgetError::AlreadySettled { .. })
    ));
}

/// Part of the [`BudgetLedger`] contract: every reservation expires `ttl` after it was made
/// (the options' ttl, else the ledger's default of one hour), by the ledger's clock; an
/// expired reservation stops counting against the limits; committing it still records the
/// actual amount, releasing it is fine; [`BudgetLedger::expire_reservations`] reports how
/// many expired since the last sweep.
pub async fn budget_expired_reservation_stops_counting<L: BudgetLedger, F: Fn(ManualClock) -> L>(
    make: &F,
) {
    let clock = ManualClock::default();
    let ledger = make(clock.clone());
    let org = BudgetChain::organisation();
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let short = ReserveOptions::default().ttl(Duration::from_secs(10));
    let a = ledger.reserve(&org, cost(60), &short).await.unwrap();
    clock.advance(Duration::from_millis(9_999));
    assert!(
        matches!(
            ledger.reserve(&org, cost(50), &none()).await,
            Err(BudgetError::Exceeded { used: 60, .. })
        ),
        "a reservation counts until it expires"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        org_usage(&ledger).await,
        (0, 0),
        "an expired reservation stops counting"
    );
    let b = ledger.reserve(&org, cost(50), &none()).await.unwrap();
    assert_eq!(
        ledger.expire_reservations().await.unwrap(),
        0,
        "usage already swept it"
    );
    ledger.commit(a.id, cost(70)).await.unwrap();
    assert_eq!(
        org_usage(&ledger).await,
        (70, 50),
        "committing an expired reservation records what was spent, even over the limit"
    );
    assert!(matches!(
        ledger.commit(a.id, cost(1)).await,
        Err(BudgetError::AlreadySettled { .. })
    ));

    // releasing an expired reservation is fine, once
    let c = ledger
        .reserve(
            &org,
            cost(0),
            &ReserveOptions::default().ttl(Duration::ZERO),
        )
        .await;
    assert!(
        matches!(c, Err(BudgetError::Exceeded { .. })),
        "the budget is exhausted: {c:?}"
    );
    ledger.release(b.id).await.unwrap();
    let c = ledger
        .reserve(
            &org,
            cost(20),
            &ReserveOptions::default().ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let d = ledger
        .reserve(
            &org,
            cost(5),
            &ReserveOptions::default().ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(ledger.expire_reservations().await.unwrap(), 1);
    assert_eq!(ledger.expire_reservations().await.unwrap(), 0, "once");
    assert_eq!(org_usage(&ledger).await, (70, 5));
    ledger.release(c.id).await.unwrap();
    assert!(matches!(
        ledger.release(c.id).await,
        Err(BudgetError::AlreadySettled { .. })
    ));
    clock.advance(Duration::from_secs(1));
    ledger.release(d.id).await.unwrap();
    assert_eq!(
        ledger.expire_reservations().await.unwrap(),
        0,
        "a settled reservation does not expire"
    );

    // the default lasts one hour
    let e = ledger.reserve(&org, cost(30), &none()).await.unwrap();
    clock.advance(Duration::from_secs(3_599));
    assert_eq!(org_usage(&ledger).await, (70, 30));
    clock.advance(Duration::from_secs(1));
    assert_eq!(org_usage(&ledger).await, (70, 0));
    ledger.commit(e.id, cost(0)).await.unwrap();

    // an expired keyed reservation charges its key when committed
    let ledger = make(clock.clone());
    ledger
        .set_limits(BudgetKey::Organisation, cap(100))
        .await
        .unwrap();
    let call = ReserveOptions::keyed("k").ttl(Duration::from_secs(1));
    let old = ledger.reserve(&org, cost(10), &call).await.unwrap();
    clock.advance(Duration::from_secs(2));
    let new = ledger.reserve(&org, cost(10), &call).await.unwrap();
    ledger.commit(old.id, cost(10)).await.unwrap();
    assert!(matches!(
        ledger.reserve(&org, cost(10), &call).await,
        Err(BudgetError::AlreadyCharged { .. })
    ));
    ledger.release(new.id).await.unwrap();
    assert_eq!(org_usage(&ledger).await, (10, 0));
}

fn sample_request(id: ApprovalId, anchor: AnchorId, minute: i64) -> ApprovalRequest {
    let t0 = ManualClock::default().now();
    ApprovalRequest {
        id,
        anchor,
        requester: Principal::Agent(AgentId::from_name("ana")),
        run: Some(RunId::from_name("run-1")),
        task: None,
        pathway: None,
        action: "send".into(),
        proposed: serde_json::json!({"to": "bob@example.com"}),
        reason: Some("every send needs approval".into()),
        allowed: ResponseKind::ALL.to_vec(),
        on_timeout: OnTimeout::Deny,
        model_version: 1,
        created_at: t0 + chrono::Duration::minutes(minute),
        expires_at: t0 + chrono::Duration::minutes(minute + 60),
        state: ApprovalState::Pending,
    }
}

/// The [`ApprovalStore`] contract. `make` returns a fresh, empty store each time.
pub async fn approval_store_conformance<S: ApprovalStore, F: Fn() -> S>(make: F) {
    let store = make();
    let founder = AnchorId::from_name("founder");
    let ops = AnchorId::from_name("ops");
    let a = ApprovalId::from_name("a");
    let b = ApprovalId::from_name("b");
    let c = ApprovalId::from_name("c");
    assert!(
        store.get(a).await.unwrap().is_none(),
        "an empty store has nothing"
    );
    assert!(store.pending(None).await.unwrap().is_empty());

    // insert, get, round trip
    let ra = sample_request(a, founder, 2);
    store.insert(ra.clone()).await.unwrap();
    assert_eq!(
        store.get(a).await.unwrap(),
        Some(ra.clone()),
        "content round-trips"
    );
    assert!(
        matches!(
            store.insert(ra.clone()).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "an id is inserted once"
    );
    store.insert(sample_request(b, ops, 1)).await.unwrap();
    store.insert(sample_request(c, founder, 0)).await.unwrap();

    // pending: oldest first, filtered by anchor
    let all: Vec<ApprovalId> = store
        .pending(None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, vec![c, b, a], "pending is oldest first");
    let f: Vec<ApprovalId> = store
        .pending(Some(founder))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(f, vec![c, a], "pending filters by anchor");

    // compare-and-set
    let decision = ApprovalDecision {
        by: HumanId::from_name("alice"),
        response: ApprovalResponse::Approve,
        at: ra.created_at,
    };
    let updated = store
        .transition(
            a,
            StateKind::Pending,
            ApprovalState::Decided {
                decision: decision.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        updated.state.kind(),
        StateKind::Decided,
        "transition returns the update"
    );
    assert!(
        matches!(
            store
                .transition(
                    a,
                    StateKind::Pending,
                    ApprovalState::Decided {
                        decision: decision.clone()
                    }
                )
                .await,
            Err(StoreError::Conflict { .. })
        ),
        "a transition from a stale state is a conflict"
    );
    assert_eq!(
        store.get(a).await.unwrap().map(|r| r.state),
        Some(ApprovalState::Decided { decision }),
        "a conflict changes nothing"
    );
    assert!(
        matches!(
            store
                .transition(
                    ApprovalId::from_name("missing"),
                    StateKind::Pending,
                    ApprovalState::Expired {
                        at: ra.created_at,
                        escalated_to: None
                    }
                )
                .await,
            Err(StoreError::NotFound { .. })
        ),
        "an unknown id is not found"
    );
    let left: Vec<ApprovalId> = store
        .pending(None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![c, b], "decided requests are no longer pending");
}

/// One step of a sequence run by [`budget_ledger_against_model`]: the organisation's
/// budget, a run's budget below it, and reservations on one or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetOp {
    /// Sets the cost limit of the organisation, or of the run (`run`); usage is kept.
    Limit {
        /// The run's budget rather than the organisation's.
        run: bool,
        /// The cost limit, in minor units.
        limit: i64,
    },
    /// Reserves `cost` on the organisation, and on the run's chain if `run`, with charge key
    /// number `key` (of a few) and a time to live in seconds (`None`: the default).
    Reserve {
        /// Whether the chain names the run.
        run: bool,
        /// The cost, in minor units.
        cost: i64,
        /// Which charge key, if any.
        key: Option<u8>,
        /// The time to live in seconds, if not the default.
        ttl_secs: Option<u16>,
    },
    /// Commits the reservation issued `nth` (modulo how many were issued; none issued: an
    /// id never issued) with `actual`.
    Commit {
        /// Which reservation.
        nth: usize,
        /// The actual cost.
        actual: i64,
    },
    /// Releases the reservation issued `nth` (as for `Commit`).
    Release {
        /// Which reservation.
        nth: usize,
    },
    /// Moves the clock forward.
    Advance {
        /// By how many seconds.
        secs: u32,
    },
    /// [`BudgetLedger::expire_reservations`].
    Expire,
    /// [`BudgetLedger::release_run`] for the run.
    ReleaseRun,
    /// Compares the usage of both budgets.
    Usage,
}

#[derive(Debug, Clone)]
struct ModelReservation {
    on_run: bool,
    cost: i64,
    key: Option<String>,
    expires: i64,
    swept: bool,
    settled: bool,
    names_run: bool,
}

/// The budget ledger contract for reserve, commit, release, expiry and charge keys, as
/// plainly as it can be said: the reference [`budget_ledger_against_model`] compares with.
#[derive(Debug, Default)]
struct BudgetModel {
    now: i64,
    org_limit: Option<i64>,
    run_limit: Option<i64>,
    org_committed: i64,
    run_committed: i64,
    reservations: Vec<ModelReservation>,
    charged: std::collections::BTreeSet<String>,
}

impl BudgetModel {
    fn counts(&self, r: &ModelReservation) -> bool {
        !r.settled && self.now < r.expires
    }

    fn reserved(&self, run: bool) -> i64 {
        self.reservations
            .iter()
            .filter(|r| self.counts(r) && (!run || r.on_run))
            .map(|r| r.cost)
            .sum()
    }

    fn sweep(&mut self) -> usize {
        let now = self.now;
        let mut n = 0;
        for r in &mut self.reservations {
            if !r.settled && !r.swept && now >= r.expires {
                r.swept = true;
                n += 1;
            }
        }
        n
    }

    fn reserve(&mut self, run: bool, cost: i64, key: Option<String>, ttl: i64) -> String {
        self.sweep();
        if let Some(k) = &key {
            if self.charged.contains(k) {
                return "charged".into();
            }
        }
        let Some(org_limit) = self.org_limit else {
            return "no budget".into();
        };
        // an exhausted budget refuses everything; otherwise what does not fit
        let refuses = |used: i64, limit: i64| used + cost > limit || (cost == 0 && used >= limit);
        if refuses(self.org_committed + self.reserved(false), org_limit) {
            return "exceeded organisation".into();
        }
        let on_run = run && self.run_limit.is_some();
        if let (true, Some(limit)) = (on_run, self.run_limit) {
            if refuses(self.run_committed + self.reserved(true), limit) {
                return "exceeded run".into();
            }
        }
        self.reservations.push(ModelReservation {
            on_run,
            cost,
            key,
            expires: self.now.saturating_add(ttl),
            swept: false,
            settled: false,
            names_run: run,
        });
        "ok".into()
    }

    fn settle(&mut self, nth: Option<usize>, actual: Option<i64>) -> String {
        let Some(r) = nth.and_then(|i| self.reservations.get_mut(i)) else {
            return "unknown".into();
        };
        if r.settled {
            return "settled".into();
        }
        r.settled = true;
        if let Some(actual) = actual {
            if let Some(k) = &r.key {
                if !self.charged.insert(k.clone()) {
                    // the key was charged by an earlier commit: this one only gives back
                    return "ok".into();
                }
            }
            self.org_committed += actual;
            if r.on_run {
                self.run_committed += actual;
            }
        }
        "ok".into()
    }
}

fn outcome<T>(r: &Result<T, BudgetError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(BudgetError::Exceeded { key, .. }) => match key {
            BudgetKey::Organisation => "exceeded organisation".into(),
            _ => "exceeded run".into(),
        },
        Err(BudgetError::AlreadyCharged { .. }) => "charged".into(),
        Err(BudgetError::NoBudget { .. }) => "no budget".into(),
        Err(BudgetError::AlreadySettled { .. }) => "settled".into(),
        Err(BudgetError::UnknownReservation { .. }) => "unknown".into(),
        Err(e) => format!("unexpected error: {e}"),
    }
}

/// Runs `ops` on a fresh ledger from `make` and on a plain model of the contract (see
/// [`BudgetOp`]), and panics at the first step whose outcome, usage, expiry count or
/// release count differs. Returns how many steps succeeded on the ledger, so a caller can
/// tell a sequence that did something from one refused throughout.
pub async fn budget_ledger_against_model<L: BudgetLedger, F: Fn(ManualClock) -> L>(
    make: &F,
    ops: &[BudgetOp],
) -> usize {
    const SEC: i64 = 1_000_000_000;
    let clock = ManualClock::default();
    let ledger = make(clock.clone());
    let run = RunId::from_name("run-1");
    let default_ttl = i64::try_from(crate::DEFAULT_RESERVATION_TTL.as_nanos()).unwrap();
    let mut model = BudgetModel::default();
    let mut ids: Vec<ReservationId> = Vec::new();
    let never = ReservationId::from_raw(u64::MAX / 3);
    let mut succeeded = 0;
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step}: {op:?}");
        let (real, expected) = match op {
            BudgetOp::Limit { run: on_run, limit } => {
                let key = if *on_run {
                    model.run_limit = Some(*limit);
                    BudgetKey::Run(run)
                } else {
                    model.org_limit = Some(*limit);
                    BudgetKey::Organisation
                };
                let mut limits = cap(*limit);
                limits.alerts.clear();
                ledger.set_limits(key, limits).await.unwrap();
                ("ok".to_string(), "ok".to_string())
            }
            BudgetOp::Reserve {
                run: on_run,
                cost: c,
                key,
                ttl_secs,
            } => {
                let mut chain = BudgetChain::organisation();
                if *on_run {
                    chain = chain.run(run);
                }
                let key = key.map(|k| format!("call-{k}"));
                let mut options = key.clone().map_or_else(none, ReserveOptions::keyed);
                if let Some(s) = ttl_secs {
                    options = options.ttl(Duration::from_secs(u64::from(*s)));
                }
                let ttl = ttl_secs.map_or(default_ttl, |s| i64::from(s) * SEC);
                let result = ledger.reserve(&chain, cost(*c), &options).await;
                if let Ok(r) = &result {
                    ids.push(r.id);
                }
                (outcome(&result), model.reserve(*on_run, *c, key, ttl))
            }
            BudgetOp::Commit { nth, actual } => {
                let index = (!ids.is_empty()).then(|| nth % ids.len());
                let id = index.map_or(never, |i| ids[i]);
                let result = ledger.commit(id, cost(*actual)).await;
                (outcome(&result), model.settle(index, Some(*actual)))
            }
            BudgetOp::Release { nth } => {
                let index = (!ids.is_empty()).then(|| nth % ids.len());
                let id = index.map_or(never, |i| ids[i]);
                let result = ledger.release(id).await;
                (outcome(&result), model.settle(index, None))
            }
            BudgetOp::Advance { secs } => {
                clock.advance(Duration::from_secs(u64::from(*secs)));
                model.now += i64::from(*secs) * SEC;
                ("ok".to_string(), "ok".to_string())
            }
            BudgetOp::Expire => {
                let n = ledger.expire_reservations().await.unwrap();
                (format!("expired {n}"), format!("expired {}", model.sweep()))
            }
            BudgetOp::ReleaseRun => {
                let n = ledger.release_run(run).await.unwrap();
                let mut expected = 0;
                for r in &mut model.reservations {
                    if r.names_run && !r.settled {
                        r.settled = true;
                        expected += 1;
                    }
                }
                (format!("released {n}"), format!("released {expected}"))
            }
            BudgetOp::Usage => {
                model.sweep();
                let mut real = Vec::new();
                let mut expected = Vec::new();
                for (key, limit, committed, on_run) in [
                    (
                        BudgetKey::Organisation,
                        model.org_limit,
                        model.org_committed,
                        false,
                    ),
                    (
                        BudgetKey::Run(run),
                        model.run_limit,
                        model.run_committed,
                        true,
                    ),
                ] {
                    let u = ledger.usage(key).await.unwrap();
                    real.push(u.map(|u| (u.committed.cost.minor(), u.reserved.cost.minor())));
                    expected.push(limit.map(|_| (committed, model.reserved(on_run))));
                }
                (format!("{real:?}"), format!("{expected:?}"))
            }
        };
        assert_eq!(real, expected, "{at}");
        if real == "ok" {
            succeeded += 1;
        }
    }
    succeeded
}

/// The [`ControlStore`] contract. `make` returns a fresh, empty store each time.
pub async fn control_store_conformance<S: ControlStore, F: Fn() -> S>(make: F) {
    let store = make();
    assert!(
        store.load().await.unwrap().is_empty(),
        "an empty store has nothing"
    );
    let t0 = ManualClock::default().now();
    let alice = Principal::Human(HumanId::from_name("alice"));
    let record = |target, action, by, minute: i64, until: Option<i64>| ControlRecord {
        command: ControlCommand {
            target,
            action,
            by,
            reason: format!("reason at minute {minute}"),
            until: until.map(|m| t0 + chrono::Duration::minutes(m)),
        },
        at: t0 + chrono::Duration::minutes(minute),
    };
    let records = vec![
        record(
            ControlTarget::Organisation,
            ControlAction::Stop,
            Principal::System,
            0,
            None,
        ),
        record(
            ControlTarget::Role(RoleId::from_name("outreach")),
            ControlAction::Override {
                relax: Relaxation::RaiseCostLimit {
                    to: Money::from_minor(5_000),
                },
            },
            alice,
            1,
            Some(90),
        ),
        record(
            ControlTarget::Agent(AgentId::from_name("ana")),
            ControlAction::Pause,
            Principal::Agent(AgentId::from_name("sam")),
            2,
            Some(30),
        ),
        record(
            ControlTarget::Organisation,
            ControlAction::Resume,
            alice,
            3,
            None,
        ),
    ];
    for r in &records {
        store.append(r).await.unwrap();
    }
    assert_eq!(
        store.load().await.unwrap(),
        records,
        "records come back in order, exactly as appended"
    );
    // the same record twice is two records; earlier ones are untouched
    store.append(&records[0]).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.len(), 5);
    assert_eq!(&loaded[..4], &records[..]);
    assert_eq!(loaded[4], records[0]);
    assert!(
        make().load().await.unwrap().is_empty(),
        "stores are independent"
    );
}
