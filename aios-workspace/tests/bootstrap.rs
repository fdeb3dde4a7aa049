//! Bootstrap: deterministic ids and hash (across processes), the configured orchestrator,
//! idempotent seeding, the audit record, the phase gate and a new version from a changed
//! manifest.

use std::collections::BTreeMap;
use std::sync::Arc;

use aios_core::DecisionKind;
use aios_core::{
    AuditEvent, AuditLog, AuditLogExt, Connector, EffectClass, InMemoryAuditLog, ManualClock,
    ManualTimer, OperationSpec, PathwayId, Principal, RecordingConnector, RoleId, Timestamp,
};
use aios_governance::{ActionRequest, ChangeKind};
use aios_memory::Memory;
use aios_orchestrator::{Agent, FnAgent};
use aios_workspace::{parse, plan, update, BootstrapError, BootstrapRecord, Plan, ValidateOptions};

fn solo() -> Plan {
    let loaded = parse("workspace.toml", aios_workspace::SOLO_CONSULTANCY_TOML)
        .unwrap_or_else(|e| unreachable!("{e}"));
    plan(&loaded, &ValidateOptions::default()).unwrap_or_else(|e| unreachable!("{e}"))
}

fn agent() -> Arc<dyn Agent> {
    Arc::new(FnAgent::new(|_, _| {
        Box::pin(async { Ok(serde_json::Value::Null) })
    }))
}

fn connectors(plan: &Plan) -> BTreeMap<String, Arc<dyn Connector>> {
    plan.connectors
        .iter()
        .map(|c| {
            let mut k = RecordingConnector::new(c.key.clone(), EffectClass::Irreversible);
            for (op, effect) in &c.operations {
                k = k.with_operation(OperationSpec::new(op.clone(), *effect));
            }
            (c.key.clone(), Arc::new(k) as Arc<dyn Connector>)
        })
        .collect()
}

const CHILD: &str = "AIOS_WORKSPACE_DETERMINISM_CHILD";

/// Run as a child by `two_processes_give_the_same_hash_and_ids`: prints the plan's hash and
/// id digest.
#[test]
fn print_hash_and_ids_for_a_parent() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let p = solo();
    println!("HASH={} IDS={}", p.hash, p.ids.digest());
}

#[test]
fn two_processes_give_the_same_hash_and_ids() {
    let exe = std::env::current_exe().unwrap_or_else(|e| unreachable!("{e}"));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "print_hash_and_ids_for_a_parent",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap_or_else(|e| unreachable!("{e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find_map(|l| l.find("HASH=").map(|i| l[i..].to_string()))
            .unwrap_or_else(|| unreachable!("no output from the child: {text}"));
        seen.push(line);
    }
    let p = solo();
    let here = format!("HASH={} IDS={}", p.hash, p.ids.digest());
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], here);
    // and the ids are the names' ids, not random ones
    assert_eq!(p.ids.roles["bookkeeper"], RoleId::from_name("bookkeeper"));
    assert_eq!(
        p.ids.seeds["day-rate"],
        aios_workspace::seed_id("solo-consultancy", "day-rate")
    );
}

#[test]
fn any_change_of_content_changes_the_hash_and_reformatting_does_not() {
    let base = solo().hash;
    let reformatted = aios_workspace::SOLO_CONSULTANCY_TOML.replace("\n\n", "\n\n\n# a comment\n");
    let same = parse("w.toml", &reformatted).map(|l| l.hash);
    assert_eq!(same.as_ref(), Ok(&base));
    let changed = aios_workspace::SOLO_CONSULTANCY_TOML.replace("at_least = 8", "at_least = 9");
    let other = parse("w.toml", &changed).map(|l| l.hash);
    assert!(other.is_ok_and(|h| h != base));
}

#[test]
fn a_manifest_with_errors_is_refused_with_every_finding() {
    let broken =
        aios_workspace::SOLO_CONSULTANCY_TOML.replace("role = \"editor\"", "role = \"nobody\"");
    let loaded = parse("workspace.toml", &broken).unwrap_or_else(|e| unreachable!("{e}"));
    match plan(&loaded, &ValidateOptions::default()) {
        Err(BootstrapError::Invalid(report)) => {
            let text = report.to_string();
            assert!(
                text.contains("architecture.workflows.proposal.tasks[1].role"),
                "{text}"
            );
        }
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn the_templates_bootstrap_into_an_orchestrator() {
    for text in [
        aios_workspace::SOLO_CONSULTANCY_TOML,
        aios_workspace::NEWSLETTER_TOML,
    ] {
        let loaded = parse("workspace.toml", text).unwrap_or_else(|e| unreachable!("{e}"));
        let p = plan(&loaded, &ValidateOptions::default()).unwrap_or_else(|e| unreachable!("{e}"));
        let clock = ManualClock::default();
        let timer = ManualTimer::new(clock.clone());
        let builder = p
            .builder(&mut |_| agent(), &connectors(&p))
            .unwrap_or_else(|e| unreachable!("{e}"))
            .vault(Arc::new(aios_core::InMemoryVault::default()))
            .clock(Arc::new(clock))
            .timer(Arc::new(timer));
        let built = builder.build();
        assert!(built.is_ok(), "{}: {:?}", p.workspace, built.err());
        assert!(!p.workflows.is_empty());
        for wf in p.workflows.values() {
            assert!(wf.validate().is_ok(), "{}", wf.name);
        }
    }
}

#[test]
fn the_host_must_register_exactly_the_declared_connectors_with_their_effects() {
    let p = solo();
    let mut missing = connectors(&p);
    missing.remove("bank");
    assert!(
        matches!(p.builder(&mut |_| agent(), &missing), Err(BootstrapError::MissingConnector(k)) if k == "bank")
    );
    let mut extra = connectors(&p);
    extra.insert(
        "fax".into(),
        Arc::new(RecordingConnector::new("fax", EffectClass::Irreversible)),
    );
    assert!(
        matches!(p.builder(&mut |_| agent(), &extra), Err(BootstrapError::UndeclaredConnector(k)) if k == "fax")
    );
    let mut wrong = connectors(&p);
    wrong.insert(
        "bank".into(),
        Arc::new(
            RecordingConnector::new("bank", EffectClass::Irreversible)
                .with_operation(OperationSpec::new("pay", EffectClass::ReadOnly)),
        ),
    );
    assert!(matches!(
        p.builder(&mut |_| agent(), &wrong),
        Err(BootstrapError::EffectMismatch { .. })
    ));
}

#[test]
fn seeding_twice_stores_each_seed_once_with_the_manifest_as_provenance() {
    futures::executor::block_on(async {
        let p = solo();
        let memory = Memory::builder(Arc::new(ManualClock::default()))
            .open()
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let first = p
            .seed(&memory)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(first.written.len(), 3);
        let second = p
            .seed(&memory)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(second.written.is_empty() && second.revised.is_empty());
        assert_eq!(second.unchanged.len(), 3);
        assert_eq!(memory.len(), 3);
        let rec = memory
            .get(p.ids.seeds["day-rate"])
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let source = rec.provenance.source.clone().unwrap_or_default();
        assert!(
            source.starts_with("workspace:solo-consultancy@v1#"),
            "{source}"
        );
        assert!(memory
            .get(p.ids.seeds["house-style"])
            .await
            .is_ok_and(|r| r.pinned));

        // a changed seed in a new manifest version: a new version of the same record
        let text = aios_workspace::SOLO_CONSULTANCY_TOML
            .replace("version = 1\ndescription", "version = 2\ndescription")
            .replace("1,200.00", "1,300.00");
        let loaded = parse("workspace.toml", &text).unwrap_or_else(|e| unreachable!("{e}"));
        let p2 = plan(&loaded, &ValidateOptions::default()).unwrap_or_else(|e| unreachable!("{e}"));
        let third = p2
            .seed(&memory)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(third.revised, ["day-rate"]);
        assert_eq!(memory.len(), 3);
        let history = memory
            .history(p.ids.seeds["day-rate"])
            .await
            .unwrap_or_default();
        assert_eq!(history.len(), 2);
        let latest = history.iter().map(|r| r.version).max();
        let newest = history
            .iter()
            .find(|r| Some(r.version) == latest)
            .map(|r| r.provenance.source.clone());
        assert!(newest
            .flatten()
            .is_some_and(|s| s.starts_with("workspace:solo-consultancy@v2#")));
    });
}

#[test]
fn the_bootstrap_is_recorded_with_its_hash() {
    futures::executor::block_on(async {
        let p = solo();
        let log = InMemoryAuditLog::new();
        log.append(p.audit_record(Timestamp::UNIX_EPOCH))
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let entries = log.entries().await.unwrap_or_default();
        let AuditEvent::Custom { kind, data } = &entries[0].event else {
            unreachable!("{:?}", entries[0].event)
        };
        assert_eq!(kind, aios_workspace::BOOTSTRAP_EVENT);
        let rec: BootstrapRecord =
            serde_json::from_value(data.clone()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(rec.hash, p.hash);
        assert_eq!(rec.ids, p.ids.digest());
        assert_eq!(rec.governance_version, 1);
    });
}

#[test]
fn a_pathway_of_a_phase_not_entered_is_denied_with_that_reason() {
    let p = solo();
    let governor = p.governor().unwrap_or_else(|e| unreachable!("{e}"));
    let pay = ActionRequest::new(
        Principal::Agent(aios_core::AgentId::from_name("bookkeeper")),
        RoleId::from_name("bookkeeper"),
        PathwayId::from_name("bookkeeper"),
        "ledger.read",
    )
    .with_effect(EffectClass::ReadOnly);
    let d = governor.decide(&pay);
    assert_eq!(d.kind(), DecisionKind::Deny);
    let why = governor.explain(&d);
    assert!(
        why.contains("phase `money`") && why.contains("planned"),
        "{why}"
    );
    // a pathway of an entered phase is decided on its own rules
    let research = ActionRequest::new(
        Principal::Agent(aios_core::AgentId::from_name("researcher")),
        RoleId::from_name("researcher"),
        PathwayId::from_name("researcher"),
        "web.search",
    )
    .with_effect(EffectClass::ReadOnly);
    assert_eq!(governor.decide(&research).kind(), DecisionKind::Allow);

    // entering the phase opens it
    let text = aios_workspace::SOLO_CONSULTANCY_TOML
        .replace("status = \"planned\"", "status = \"entered\"");
    let loaded = parse("workspace.toml", &text).unwrap_or_else(|e| unreachable!("{e}"));
    let open = plan(&loaded, &ValidateOptions::default()).unwrap_or_else(|e| unreachable!("{e}"));
    let g = open.governor().unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(g.decide(&pay).kind(), DecisionKind::Allow);
    // only the phase changed: still a new version, the opened pathway named
    let up = update(&p.model, &p.gate, &open, "alice", "money phase entered")
        .unwrap_or_else(|| unreachable!());
    assert!(up.diff.is_empty());
    assert_eq!(up.model.version, 2);
    assert_eq!(up.gate_changes.len(), 1);
    assert!(
        up.gate_changes[0].contains("`bookkeeper`: opened"),
        "{:?}",
        up.gate_changes
    );
}

#[test]
fn a_changed_manifest_publishes_the_next_version_with_its_diff() {
    let v1 = solo();
    assert!(update(&v1.model, &v1.gate, &v1, "alice", "nothing").is_none());
    let text = aios_workspace::SOLO_CONSULTANCY_TOML
        .replace("amount_above = \"200.00\"", "amount_above = \"300.00\"");
    let loaded = parse("workspace.toml", &text).unwrap_or_else(|e| unreachable!("{e}"));
    let v2 = plan(&loaded, &ValidateOptions::default()).unwrap_or_else(|e| unreachable!("{e}"));
    let up = update(&v1.model, &v1.gate, &v2, "alice", "larger payments alone")
        .unwrap_or_else(|| unreachable!());
    assert_eq!(up.model.version, 2);
    assert_eq!(up.diff.from_version, 1);
    assert_eq!(up.diff.to_version, 2);
    assert!(
        up.diff.of_kind(ChangeKind::Loosened).count() >= 1,
        "{}",
        up.diff
    );
    let last = up
        .model
        .changelog
        .last()
        .cloned()
        .unwrap_or_else(|| unreachable!());
    assert_eq!(last.version, 2);
    assert_eq!(last.author.as_deref(), Some("alice"));
    assert!(last.summary.contains("larger payments alone"));
    assert!(up.governor(&v2.gate).is_ok_and(|g| g.version() == 2));
}
