//! Every port defined in aios-core runs its conformance suite against its in-memory
//! implementation, and against the fault-injecting wrapper with no faults planned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aios_core::testing::{
    self, FaultPlan, Faults, FaultyAuditLog, FaultyConnector, FaultyEmbedder, FaultyModel,
    FaultyVault,
};
use aios_core::{
    AuditLog, EffectClass, HashEmbedder, InMemoryAuditLog, InMemoryVault, ManualClock, ManualTimer,
    Message, ModelBackend, ModelError, ModelRequest, RecordingConnector, ScriptedModel,
    SystemClock, Timer, Transience,
};
use futures::executor::block_on;

#[test]
fn audit_log_in_memory() {
    block_on(testing::audit_log_conformance(InMemoryAuditLog::new));
    block_on(testing::audit_log_conformance(|| {
        InMemoryAuditLog::with_key(aios_core::AuditKey::from_bytes(&[5; 32]).unwrap())
    }));
    block_on(testing::audit_log_conformance(|| {
        FaultyAuditLog::new(InMemoryAuditLog::new(), Faults::default())
    }));
}

#[test]
fn vault_in_memory() {
    block_on(testing::vault_conformance(InMemoryVault::new()));
    block_on(testing::vault_conformance(FaultyVault::new(
        InMemoryVault::new(),
        Faults::default(),
    )));
}

#[test]
fn embedder_hash() {
    block_on(testing::embedder_conformance(HashEmbedder::new(384)));
    block_on(testing::embedder_conformance(FaultyEmbedder::new(
        HashEmbedder::new(8),
        Faults::default(),
    )));
}

#[test]
fn model_scripted() {
    let req = ModelRequest::new(vec![Message::user("hello")]);
    block_on(testing::model_conformance(
        ScriptedModel::new("m").reply("hi"),
        req.clone(),
    ));
    block_on(testing::model_conformance(
        ScriptedModel::new("m").call_tool("search", serde_json::json!({"q": "x"})),
        req.clone(),
    ));
    block_on(testing::model_conformance(
        ScriptedModel::new("m").reply_with_confidence("hi", 0.4),
        req.clone(),
    ));
    block_on(testing::model_conformance(
        FaultyModel::new(ScriptedModel::new("m").reply("hi"), Faults::default()),
        req,
    ));
}

#[test]
fn connector_recording() {
    for effect in [
        EffectClass::ReadOnly,
        EffectClass::Reversible,
        EffectClass::Irreversible,
    ] {
        block_on(testing::connector_conformance(
            RecordingConnector::new("email", effect),
            "send",
            serde_json::json!({"to": "x"}),
        ));
    }
    block_on(testing::connector_conformance(
        RecordingConnector::new("sms", EffectClass::Irreversible).not_idempotent(),
        "send",
        serde_json::json!({}),
    ));
    block_on(testing::connector_conformance(
        FaultyConnector::new(
            RecordingConnector::new("crm", EffectClass::Reversible),
            Faults::default(),
        ),
        "update",
        serde_json::json!({}),
    ));
}

#[test]
fn clocks() {
    block_on(testing::clock_conformance(SystemClock));
    block_on(testing::clock_conformance(ManualClock::default()));
}

#[test]
fn timer_manual() {
    let timer = ManualTimer::default();
    let driver = timer.clone();
    block_on(testing::timer_conformance(timer, move |d| {
        driver.advance(d)
    }));
}

#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn timer_tokio() {
    // a paused runtime auto-advances when idle, so `advance` needs to do nothing
    testing::timer_conformance(aios_core::TokioTimer, |_| {}).await;
}

#[test]
fn fault_plans_fail_the_planned_calls() {
    let faults = Faults::new(FaultPlan::fail_nth(2));
    let model = FaultyModel::new(
        ScriptedModel::new("m").reply("a").reply("b"),
        faults.clone(),
    );
    let req = ModelRequest::new(vec![Message::user("x")]);
    assert!(block_on(model.complete(&req)).is_ok());
    let err = block_on(model.complete(&req)).unwrap_err();
    assert!(matches!(err, ModelError::Unavailable { .. }) && err.is_transient());
    assert!(block_on(model.complete(&req)).is_ok());
    assert_eq!((faults.calls(), faults.injected()), (3, 1));

    let log = FaultyAuditLog::new(
        InMemoryAuditLog::new(),
        Faults::new(FaultPlan::fail_after(1)),
    );
    let rec = || {
        aios_core::AuditRecord::new(
            aios_core::Principal::System,
            aios_core::AuditEvent::Note { text: "x".into() },
        )
    };
    assert!(block_on(log.append(rec())).is_ok());
    assert!(block_on(log.append(rec())).is_err());
}

#[test]
fn fault_delay_goes_through_the_timer() {
    use futures::FutureExt;
    let timer = ManualTimer::default();
    let faults = Faults::new(FaultPlan::delay(
        Arc::new(timer.clone()) as Arc<dyn Timer>,
        Duration::from_secs(3),
    ));
    let model = FaultyModel::new(ScriptedModel::new("m").reply("late"), faults);
    let req = ModelRequest::new(vec![Message::user("x")]);
    let mut call = model.complete(&req);
    assert!((&mut call).now_or_never().is_none());
    timer.advance(Duration::from_secs(3));
    assert_eq!(call.now_or_never().unwrap().unwrap().content, "late");
}
