//! The builder refuses a set-up that could only fail later (at the first call) or hang,
//! naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use aios_core::{CredentialHandle, InMemoryVault, ManualClock, ManualTimer, SystemClock};
use aios_orchestrator::{BuildError, FnAgent, Orchestrator, OrchestratorBuilder, Role};
use common::*;

fn noop(name: &str, pathway: &str) -> Role {
    Role::new(
        name,
        pathway,
        Arc::new(FnAgent::new(|_, _| {
            Box::pin(async { Ok(serde_json::Value::Null) })
        })),
    )
}

type Case = (
    &'static str,
    fn(OrchestratorBuilder) -> OrchestratorBuilder,
    &'static str,
);

#[test]
fn a_misconfigured_set_up_is_refused_naming_what_is_wrong() {
    #[rustfmt::skip]
    let table: Vec<Case> = vec![
        ("the same role twice",
            |b| b.role(noop("writer", "writing")).role(noop("writer", "writing")),
            "role `writer` is registered twice"),
        ("the same connector twice",
            |b| b.connector(Arc::new(aios_core::RecordingConnector::new("email", aios_core::EffectClass::Irreversible)))
                 .connector(Arc::new(aios_core::RecordingConnector::new("email", aios_core::EffectClass::ReadOnly))),
            "connector `email` is registered twice"),
        ("a role the model does not know",
            |b| b.role(noop("ghost", "writing")),
            "role `ghost` is not in the governance model"),
        ("a pathway the model does not know",
            |b| b.role(noop("writer", "nowhere")),
            "pathway `nowhere`, which is not in the governance model"),
        ("a pathway of another role",
            |b| b.role(noop("writer", "research")),
            "pathway `research`, which delegates to role `researcher`"),
        ("a connector that is not registered",
            |b| b.role(noop("outreach", "outreach").connector("email")),
            "connector `email`, which is not registered"),
        ("a credential for an unknown connector",
            |b| b.vault(Arc::new(InMemoryVault::new()))
                 .credential("sms", CredentialHandle::new("sms-key")),
            "connector `sms`, which is not registered"),
        ("a credential without a vault",
            |b| b.connector(Arc::new(aios_core::RecordingConnector::new("email", aios_core::EffectClass::Irreversible)))
                 .credential("email", CredentialHandle::new("email-key")),
            "no vault is set"),
        ("a real clock with the default (manual) timer",
            |b| b.clock(Arc::new(SystemClock)),
            "a clock is set without a timer"),
        ("a timer without its clock",
            |b| b.timer(Arc::new(ManualTimer::new(ManualClock::default()))),
            "a timer is set without its clock"),
    ];
    for (name, mutate, expected) in table {
        let err = mutate(Orchestrator::builder(governor()))
            .build()
            .expect_err(name);
        assert!(
            err.to_string().contains(expected),
            "{name}: `{err}` should say `{expected}`"
        );
    }
    // the error is typed
    let err = Orchestrator::builder(governor())
        .role(noop("writer", "writing"))
        .role(noop("writer", "writing"))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::DuplicateRole {
            role: "writer".into()
        }
    );
}

#[test]
fn a_complete_set_up_builds() {
    let world = World::new();
    assert!(newsletter_roles()
        .into_iter()
        .fold(builder(&world), |b, r| b.role(r))
        .build()
        .is_ok());
}

#[test]
fn a_task_for_an_unregistered_role_is_refused_naming_the_role_and_the_registered_ones() {
    let world = World::new();
    let orch = newsletter_roles()
        .into_iter()
        .filter(|r| r.name != "writer")
        .fold(builder(&world), |b, r| b.role(r))
        .build()
        .unwrap();
    let err = futures::executor::block_on(orch.start(newsletter())).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("task `draft` names role `writer`")
            && text.contains("registered: `outreach`, `researcher`"),
        "{text}"
    );
}

/// The default set-up runs on real time: a transient model failure is retried after a real
/// backoff under any executor (it used to wait forever on a manual timer), and the clock
/// moves, so approval deadlines can pass.
#[test]
fn the_default_set_up_runs_on_real_time_and_retries_a_transient_failure() {
    use aios_core::{Clock, Message, ModelError, ModelId, ModelRequest, ScriptedModel};
    use aios_orchestrator::{ModelRouter, RetryPolicy, RunStatus, TaskSpec, Workflow};
    let model = ScriptedModel::new("small")
        .fail(ModelError::Unavailable {
            model: ModelId::new("small"),
            detail: "overloaded".into(),
        })
        .reply("notes");
    let agent = FnAgent::new(|ctx, _| {
        Box::pin(async move {
            let r = ctx
                .complete(ModelRequest::new(vec![Message::user("research")]))
                .await?;
            Ok(serde_json::json!(r.content))
        })
    });
    let orch = Orchestrator::builder(governor())
        .role(
            Role::new("researcher", "research", Arc::new(agent)).retry(RetryPolicy {
                base_delay: std::time::Duration::from_millis(5),
                ..RetryPolicy::default()
            }),
        )
        .models(ModelRouter::single(Arc::new(model.clone())))
        .build()
        .unwrap();
    let before = SystemClock.now();
    assert!(
        (orch.clock().now() - before).num_seconds().abs() < 5,
        "the default clock is the system's"
    );
    let done = futures::executor::block_on(orch.start(Workflow::new("w").task(TaskSpec::new(
        "research",
        aios_core::RoleId::from_name("researcher"),
        serde_json::Value::Null,
    ))))
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(model.calls(), 2, "failed once, retried once");
    assert!(orch.clock().now() > before, "the clock moves");
}
