//! Conformance suites: the documented contract of each port, as executable checks.
//!
//! Test-support code: a suite reports a violation by panicking, like `assert!`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::FutureExt;

use crate::{
    timeout, AuditEvent, AuditLog, AuditLogExt, AuditRecord, ChainHead, Clock, Connector,
    ConnectorCall, CredentialHandle, CredentialVault, Embedder, EntryHash, FinishReason,
    IdempotencyKey, ModelBackend, ModelRequest, Principal, Secret, StoredEntry, Timer, VaultError,
};

fn note(i: usize) -> AuditRecord {
    AuditRecord::new(
        Principal::System,
        AuditEvent::Note {
            text: format!("entry {i}"),
        },
    )
}

/// The [`AuditLog`] contract. `make` returns a fresh, empty log each time it is called.
pub async fn audit_log_conformance<L: AuditLog, F: Fn() -> L>(make: F) {
    // empty log
    let log = make();
    assert_eq!(
        log.head().await.ok(),
        Some(ChainHead::default()),
        "an empty log has the genesis head"
    );
    assert!(
        log.read(0, 10).await.map(|v| v.is_empty()).unwrap_or(false),
        "an empty log reads nothing"
    );

    // appends are numbered from 0 without gaps, and heads chain
    let mut prev = EntryHash::GENESIS;
    for i in 0..50 {
        let head = log.append(note(i)).await.unwrap_or_default();
        assert_eq!(head.len, i as u64 + 1, "append {i} returns the new length");
        assert_ne!(head.hash, prev, "each append changes the head hash");
        prev = head.hash;
    }
    assert_eq!(
        log.head().await.ok().map(|h| h.hash),
        Some(prev),
        "head is the last append"
    );

    // paging returns entries in order
    let page = log.read(10, 5).await.unwrap_or_default();
    assert_eq!(
        page.iter().map(StoredEntry::seq).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );
    assert_eq!(
        page[0].entry().map(|e| &e.event),
        Some(&AuditEvent::Note {
            text: "entry 10".into()
        }),
        "content round-trips"
    );
    assert!(
        page.iter().all(|e| e.entry().is_some()),
        "entries this build wrote are readable"
    );
    assert!(
        log.read(50, 10)
            .await
            .map(|v| v.is_empty())
            .unwrap_or(false),
        "reading past the end is empty"
    );
    assert_eq!(
        log.read(48, 10).await.map(|v| v.len()).ok(),
        Some(2),
        "a page stops at the end"
    );

    // the chain verifies and matches its own head as an anchor
    let head = log.head().await.unwrap_or_default();
    let report = log.verify(Some(head)).await.expect("verify reads the log");
    assert!(
        report.is_intact(),
        "a fresh chain verifies: {:?}",
        report.problems
    );
    assert_eq!(report.head, head);

    // a longer anchor than the chain is truncation
    let fake = ChainHead {
        len: head.len + 1,
        hash: head.hash,
    };
    let report = log.verify(Some(fake)).await.expect("verify reads the log");
    assert!(
        !report.is_intact(),
        "an anchor past the end reports truncation"
    );

    // concurrent appends never share or skip a sequence number
    let log = make();
    let appends = (0..64).map(|i| log.append(note(i)));
    let heads = futures::future::join_all(appends).await;
    assert!(
        heads.iter().all(|h| h.is_ok()),
        "concurrent appends succeed"
    );
    let entries = log.entries().await.unwrap_or_default();
    assert_eq!(entries.len(), 64);
    assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert!(log
        .verify(None)
        .await
        .map(|r| r.is_intact())
        .unwrap_or(false));
}

/// The [`CredentialVault`] contract on an empty vault.
pub async fn vault_conformance<V: CredentialVault>(vault: V) {
    let h = CredentialHandle::new("conformance/one");
    assert!(
        matches!(vault.get(&h).await, Err(VaultError::NotFound(_))),
        "missing handle is NotFound"
    );
    assert!(vault.put(h.clone(), Secret::new("s1")).await.is_ok());
    assert_eq!(
        vault.get(&h).await.ok().map(|s| s.expose().to_string()),
        Some("s1".into())
    );
    assert!(vault.put(h.clone(), Secret::new("s2")).await.is_ok());
    let got = vault.get(&h).await.ok();
    assert_eq!(got.as_ref().map(|s| s.expose()), Some("s2"), "put replaces");
    assert!(
        !format!("{got:?}").contains("s2"),
        "Debug never shows the secret"
    );
    assert!(vault.remove(&h).await.is_ok());
    assert!(
        matches!(vault.get(&h).await, Err(VaultError::NotFound(_))),
        "removed is gone"
    );
    assert!(
        matches!(vault.remove(&h).await, Err(VaultError::NotFound(_))),
        "removing twice is NotFound"
    );
}

/// The [`Embedder`] contract.
pub async fn embedder_conformance<E: Embedder>(embedder: E) {
    let dims = embedder.dimensions();
    assert!(dims > 0, "dimensions are positive");
    let texts: Vec<String> = ["alpha beta", "", "gamma delta epsilon", "alpha beta"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = embedder.embed(&texts).await.unwrap_or_default();
    assert_eq!(out.len(), texts.len(), "one vector per input");
    assert!(
        out.iter().all(|v| v.len() == dims),
        "every vector has `dimensions` entries"
    );
    assert_eq!(out[0], out[3], "the same text gives the same vector");
    let again = embedder.embed(&texts[..1]).await.unwrap_or_default();
    assert_eq!(
        again.first(),
        out.first(),
        "embedding is deterministic across calls"
    );
    assert!(
        embedder
            .embed(&[])
            .await
            .map(|v| v.is_empty())
            .unwrap_or(false),
        "no input, no output"
    );
}

/// The [`ModelBackend`] contract, for a backend that will answer `request` successfully.
pub async fn model_conformance<M: ModelBackend>(model: M, request: ModelRequest) {
    let response = model.complete(&request).await;
    assert!(
        response.is_ok(),
        "the backend answers: {:?}",
        response.err()
    );
    if let Ok(r) = response {
        assert_eq!(
            &r.model,
            model.id(),
            "the response names the backend's model"
        );
        assert!(!r.cost.is_negative(), "cost is never negative");
        assert_eq!(
            r.finish == FinishReason::ToolCalls,
            !r.tool_calls.is_empty(),
            "finish reason ToolCalls iff tool calls are present"
        );
        if let Some(c) = r.confidence {
            assert!((0.0..=1.0).contains(&c), "confidence is within [0, 1]");
        }
    }
}

/// The [`Connector`] contract: an idempotent connector performs a call once per key; any
/// connector answers a valid call (`operation`, `input`).
pub async fn connector_conformance<C: Connector>(
    connector: C,
    operation: &str,
    input: serde_json::Value,
) {
    let d = connector.descriptor().clone();
    assert!(!d.id.as_str().is_empty(), "a connector has a name");
    let call = |key: &str| ConnectorCall {
        operation: operation.to_string(),
        input: input.clone(),
        idempotency_key: IdempotencyKey::new(key),
        credential: None,
    };
    let first = connector.invoke(call("conformance-1")).await;
    assert!(first.is_ok(), "a valid call succeeds: {:?}", first.err());
    if d.idempotent {
        let again = connector.invoke(call("conformance-1")).await;
        assert_eq!(
            again.ok(),
            first.ok(),
            "an idempotent connector returns the first result for a repeated key"
        );
    }
    assert!(
        connector.invoke(call("conformance-2")).await.is_ok(),
        "a new key is a new call"
    );
}

/// The [`Clock`] contract: time never goes backwards between ordered reads.
pub async fn clock_conformance<C: Clock>(clock: C) {
    let mut prev = clock.now();
    for _ in 0..1000 {
        let now = clock.now();
        assert!(now >= prev, "the clock never goes backwards");
        prev = now;
    }
}

/// The [`Timer`] contract. `advance` moves the timer's time forward (for a manual timer, call
/// its `advance`; for a real timer, actually wait or use a paused runtime).
pub async fn timer_conformance<T: Timer>(timer: T, advance: impl Fn(Duration)) {
    let mut zero = timer.sleep(Duration::ZERO);
    advance(Duration::ZERO);
    let mut done = (&mut zero).now_or_never().is_some();
    if !done {
        zero.await;
        done = true;
    }
    assert!(done, "a zero sleep completes");

    let mut t = Box::pin(timeout(
        &timer,
        Duration::from_millis(50),
        futures::future::pending::<()>(),
    ));
    assert!(
        (&mut t).now_or_never().is_none(),
        "a timeout does not fire early"
    );
    advance(Duration::from_millis(50));
    assert!(t.await.is_err(), "a timeout fires once its time has passed");

    let fast = timeout(&timer, Duration::from_secs(60), async { 5 }).await;
    assert_eq!(fast, Ok(5), "a ready future beats its timeout");
}
