#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Data-driven cases for prune, verify, migrate, grants and context assembly: each area has a
//! table of cases run through one `check` helper.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{AgentId, Clock, ManualClock, MemoryId, Principal, RoleId, StoreError};
use aios_memory::{
    assemble_context, Access, CharTokenizer, ContextBudget, FindingKind, Grant,
    InMemoryMemoryStore, Memory, MemoryError, MemoryRecord, Migrator, NewMemory, PrunePolicy,
    PruneReason, RecallQuery, Revision, Scope, Tier, Tokenizer, ViewSubject, MEMORY_SCHEMA_VERSION,
};
use futures::executor::block_on;

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

async fn memory(clock: &ManualClock, store: Arc<InMemoryMemoryStore>) -> Memory {
    Memory::builder(Arc::new(clock.clone()))
        .store(store)
        .open()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- prune

struct Rec {
    label: &'static str,
    scope: &'static str,
    tier: Tier,
    importance: f32,
    pinned: bool,
    /// Seconds after the start when it is written.
    at: u64,
    /// Seconds after the start when it expires.
    expires: Option<u64>,
}

const fn rec(label: &'static str, scope: &'static str, tier: Tier, at: u64) -> Rec {
    Rec {
        label,
        scope,
        tier,
        importance: 0.5,
        pinned: false,
        at,
        expires: None,
    }
}

struct PruneCase {
    name: &'static str,
    records: Vec<Rec>,
    retract: &'static [&'static str],
    now: u64,
    policy: PrunePolicy,
    pruned: &'static [(&'static str, PruneReason)],
    kept_pinned: usize,
}

fn check_prune(case: PruneCase) {
    block_on(async {
        let clock = ManualClock::default();
        let start = clock.now();
        let m = memory(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let mut by_label = BTreeMap::new();
        let mut records = case.records;
        records.sort_by_key(|r| r.at);
        for r in &records {
            clock.set(start + chrono::Duration::seconds(r.at as i64));
            let mut n = NewMemory::new(scope(r.scope), r.tier, r.label, Principal::System)
                .importance(r.importance);
            if r.pinned {
                n = n.pinned();
            }
            if let Some(e) = r.expires {
                n = n.expires_at(start + chrono::Duration::seconds(e as i64));
            }
            let rec = m.remember(n).await.unwrap();
            by_label.insert(rec.id, r.label);
        }
        for label in case.retract {
            let id = *by_label.iter().find(|(_, l)| *l == label).unwrap().0;
            m.retract(id, Principal::System, "test").await.unwrap();
        }
        clock.set(start + chrono::Duration::seconds(case.now as i64));
        let before = m.len();
        let report = m.prune(&case.policy).await.unwrap();
        let mut got: Vec<(&str, PruneReason)> = report
            .pruned
            .iter()
            .map(|p| (by_label[&p.id], p.reason))
            .collect();
        got.sort();
        let mut want = case.pruned.to_vec();
        want.sort();
        assert_eq!(got, want, "case `{}`: pruned", case.name);
        assert_eq!(
            report.kept_pinned, case.kept_pinned,
            "case `{}`: kept pinned",
            case.name
        );
        let removed = if case.policy.dry_run { 0 } else { want.len() };
        assert_eq!(
            m.len(),
            before - removed,
            "case `{}`: lineages left",
            case.name
        );
        for p in &report.pruned {
            assert_eq!(
                m.history(p.id).await.is_err(),
                !case.policy.dry_run,
                "case `{}`",
                case.name
            );
        }
        assert!(
            m.verify().await.unwrap().is_intact(),
            "case `{}`",
            case.name
        );
    });
}

#[test]
fn prune_cases() {
    let hour = 3600;
    let cases = vec![
        PruneCase {
            name: "nothing to prune",
            records: vec![
                rec("a", "s", Tier::Working, 0),
                rec("b", "s", Tier::Project, 0),
            ],
            retract: &[],
            now: 10,
            policy: PrunePolicy::default(),
            pruned: &[],
            kept_pinned: 0,
        },
        PruneCase {
            name: "expired records go, pinned stay",
            records: vec![
                Rec {
                    expires: Some(5),
                    ..rec("old", "s", Tier::Working, 0)
                },
                Rec {
                    expires: Some(50),
                    ..rec("later", "s", Tier::Working, 0)
                },
                Rec {
                    expires: Some(5),
                    pinned: true,
                    ..rec("pinned", "s", Tier::Working, 0)
                },
            ],
            retract: &[],
            now: 10,
            policy: PrunePolicy::expired_only(),
            pruned: &[("old", PruneReason::Expired)],
            kept_pinned: 1,
        },
        PruneCase {
            name: "ttl per tier",
            records: vec![
                rec("w-old", "s", Tier::Working, 0),
                rec("w-new", "s", Tier::Working, 2 * hour),
                rec("p-old", "s", Tier::Project, 0),
                rec("l-old", "s", Tier::LongTerm, 0),
            ],
            retract: &[],
            now: 3 * hour,
            policy: PrunePolicy::default()
                .ttl(Tier::Working, Duration::from_secs(2 * hour))
                .ttl(Tier::Project, Duration::from_secs(10 * hour)),
            pruned: &[("w-old", PruneReason::Ttl)],
            kept_pinned: 0,
        },
        PruneCase {
            name: "capacity per scope drops least important then oldest",
            records: vec![
                Rec {
                    importance: 0.9,
                    ..rec("a1", "s/a", Tier::Project, 0)
                },
                Rec {
                    importance: 0.1,
                    ..rec("a2", "s/a", Tier::Project, 1)
                },
                Rec {
                    importance: 0.5,
                    ..rec("a3", "s/a", Tier::Project, 2)
                },
                Rec {
                    importance: 0.5,
                    ..rec("a4", "s/a", Tier::Project, 3)
                },
                Rec {
                    importance: 0.0,
                    pinned: true,
                    ..rec("a5", "s/a", Tier::Project, 4)
                },
                rec("b1", "s/b", Tier::Project, 0),
            ],
            retract: &[],
            now: 10,
            policy: PrunePolicy::default().capacity_per_scope(3),
            pruned: &[("a2", PruneReason::Capacity), ("a3", PruneReason::Capacity)],
            kept_pinned: 1,
        },
        PruneCase {
            name: "importance floor; retracted lineages are kept as history",
            records: vec![
                Rec {
                    importance: 0.1,
                    ..rec("low", "s", Tier::Project, 0)
                },
                Rec {
                    importance: 0.1,
                    ..rec("low-retracted", "s", Tier::Project, 0)
                },
                Rec {
                    importance: 0.6,
                    ..rec("high", "s", Tier::Project, 0)
                },
            ],
            retract: &["low-retracted"],
            now: 10,
            policy: PrunePolicy::default().min_importance(0.3),
            pruned: &[("low", PruneReason::LowImportance)],
            kept_pinned: 0,
        },
        PruneCase {
            name: "dry run reports without removing",
            records: vec![Rec {
                expires: Some(1),
                ..rec("x", "s", Tier::Working, 0)
            }],
            retract: &[],
            now: 10,
            policy: PrunePolicy::expired_only().dry_run(),
            pruned: &[("x", PruneReason::Expired)],
            kept_pinned: 0,
        },
    ];
    for case in cases {
        check_prune(case);
    }
}

// ---------------------------------------------------------------- verify

enum Tamper {
    None,
    EditContent { lineage: usize, version: u32 },
    RemoveVersion { lineage: usize, version: u32 },
    Relink { lineage: usize, version: u32 },
    Unretire { lineage: usize, version: u32 },
    FutureSchema { lineage: usize },
    DanglingDerivation,
}

fn check_verify(name: &str, tamper: Tamper, want: &[(usize, Option<u32>, &str)]) {
    block_on(async {
        let clock = ManualClock::default();
        let store = Arc::new(InMemoryMemoryStore::new());
        let m = memory(&clock, store.clone()).await;
        // three lineages with 1, 2 and 3 versions
        let mut ids: Vec<MemoryId> = Vec::new();
        for i in 0..3u32 {
            let r = m
                .remember(NewMemory::new(
                    scope("org/v"),
                    Tier::Project,
                    format!("fact {i}"),
                    Principal::System,
                ))
                .await
                .unwrap();
            for v in 0..i {
                clock.advance(Duration::from_secs(1));
                m.revise(
                    r.id,
                    Revision::new(Principal::System).content(format!("fact {i} rev {v}")),
                )
                .await
                .unwrap();
            }
            ids.push(r.id);
        }
        let mut extra = None;
        match tamper {
            Tamper::None => {}
            Tamper::EditContent { lineage, version } => {
                assert!(store.tamper(ids[lineage], version, |r| r.content.push_str(" (edited)")));
            }
            Tamper::RemoveVersion { lineage, version } => {
                assert!(store.tamper_remove_version(ids[lineage], version));
            }
            Tamper::Relink { lineage, version } => {
                assert!(store.tamper(ids[lineage], version, |r| {
                    r.prev_checksum = Some("0".repeat(64));
                    r.seal();
                }));
            }
            Tamper::Unretire { lineage, version } => {
                assert!(store.tamper(ids[lineage], version, |r| r.retired_at = None));
            }
            Tamper::FutureSchema { lineage } => {
                assert!(store.tamper(ids[lineage], 1, |r| {
                    r.schema = MEMORY_SCHEMA_VERSION + 1;
                    r.seal();
                }));
            }
            Tamper::DanglingDerivation => {
                let ghost = MemoryId::from_name("ghost");
                let r = m
                    .remember(
                        NewMemory::new(
                            scope("org/v"),
                            Tier::LongTerm,
                            "a summary",
                            Principal::System,
                        )
                        .derived_from([ids[0], ghost]),
                    )
                    .await
                    .unwrap();
                ids.push(r.id);
                extra = Some(ghost);
            }
        }
        let report = m.verify().await.unwrap();
        let lineages = if extra.is_some() { 4 } else { 3 };
        assert_eq!(report.lineages, lineages, "case `{name}`");
        let got: Vec<(usize, Option<u32>, &str)> = report
            .findings
            .iter()
            .map(|f| {
                let lineage = ids.iter().position(|id| *id == f.id).unwrap();
                let kind = match &f.kind {
                    FindingKind::ChecksumMismatch { .. } => "checksum",
                    FindingKind::BrokenChain { .. } => "chain",
                    FindingKind::DanglingReference { missing } => {
                        assert_eq!(Some(*missing), extra);
                        "dangling"
                    }
                    FindingKind::UnsupportedSchema { .. } => "schema",
                };
                (lineage, f.version, kind)
            })
            .collect();
        assert_eq!(got, want, "case `{name}`: {:#?}", report.findings);
        assert_eq!(report.is_intact(), want.is_empty());
    });
}

#[test]
fn verify_cases() {
    check_verify("intact", Tamper::None, &[]);
    check_verify(
        "edited content breaks the checksum",
        Tamper::EditContent {
            lineage: 1,
            version: 1,
        },
        &[(1, Some(1), "checksum")],
    );
    check_verify(
        "a missing middle version breaks the chain",
        Tamper::RemoveVersion {
            lineage: 2,
            version: 2,
        },
        &[
            (2, Some(1), "chain"),
            (2, Some(3), "chain"),
            (2, Some(3), "chain"),
        ],
    );
    check_verify(
        "a resealed version with a wrong link",
        Tamper::Relink {
            lineage: 2,
            version: 3,
        },
        &[(2, Some(3), "chain")],
    );
    check_verify(
        "a superseded version not marked retired",
        Tamper::Unretire {
            lineage: 1,
            version: 1,
        },
        &[(1, Some(1), "chain")],
    );
    check_verify(
        "a record from a newer schema",
        Tamper::FutureSchema { lineage: 0 },
        &[(0, Some(1), "schema")],
    );
    check_verify(
        "provenance naming a missing record",
        Tamper::DanglingDerivation,
        &[(3, Some(1), "dangling")],
    );
}

// ---------------------------------------------------------------- migrate

/// Rewrites exported lines into the legacy schema 0 shape: no `schema`, `body` for `content`.
fn to_legacy(lines: &str) -> String {
    lines
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("schema");
            let c = o.remove("content").unwrap();
            o.insert("body".into(), c);
            o.insert("checksum".into(), "legacy".into());
            serde_json::to_string(&v).unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn legacy_step() -> Migrator {
    Migrator::new().step(0, |mut v| {
        let o = v.as_object_mut().ok_or("not an object")?;
        let body = o.remove("body").ok_or("no `body`")?;
        o.insert("content".into(), body);
        Ok(v)
    })
}

fn check_migrate(
    name: &str,
    edit: impl Fn(String) -> String,
    migrator: Migrator,
    want: Result<(usize, usize), &str>,
) {
    block_on(async {
        let clock = ManualClock::default();
        let source = memory(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let a = source
            .remember(NewMemory::new(
                scope("org/m"),
                Tier::Project,
                "first words",
                Principal::System,
            ))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(1));
        source
            .revise(
                a.id,
                Revision::new(Principal::System).content("second words"),
            )
            .await
            .unwrap();
        source
            .remember(NewMemory::new(
                scope("org/m"),
                Tier::Working,
                "other",
                Principal::System,
            ))
            .await
            .unwrap();
        let lines = edit(source.export().await.unwrap());
        let target = memory(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let got = target.import(&lines, &migrator).await;
        match (got, want) {
            (Ok(report), Ok((records, migrated))) => {
                assert_eq!(
                    (report.records, report.migrated),
                    (records, migrated),
                    "case `{name}`"
                );
                assert!(target.verify().await.unwrap().is_intact(), "case `{name}`");
                let history = target.history(a.id).await.unwrap();
                assert_eq!(history[1].content, "second words", "case `{name}`");
                assert_eq!(
                    history[1].prev_checksum.as_ref(),
                    Some(&history[0].checksum)
                );
                assert!(history.iter().all(|r| r.schema == MEMORY_SCHEMA_VERSION));
            }
            (Err(e), Err(kind)) => {
                let got_kind = match &e {
                    MemoryError::Migration { .. } => "migration",
                    MemoryError::Store(StoreError::UnsupportedVersion { .. }) => "unsupported",
                    MemoryError::Store(StoreError::Corrupt { .. }) => "corrupt",
                    MemoryError::InvalidInput { .. } => "invalid",
                    other => panic!("case `{name}`: unexpected {other}"),
                };
                assert_eq!(got_kind, kind, "case `{name}`: {e}");
                assert!(target.is_empty(), "case `{name}`: nothing imported");
                assert!(target.export().await.unwrap().is_empty(), "case `{name}`");
            }
            (got, want) => panic!("case `{name}`: got {got:?}, want {want:?}"),
        }
    });
}

#[test]
fn migrate_cases() {
    check_migrate("current schema", |l| l, Migrator::new(), Ok((3, 0)));
    check_migrate(
        "legacy schema through a step",
        |l| to_legacy(&l),
        legacy_step(),
        Ok((3, 3)),
    );
    check_migrate(
        "legacy schema without a step",
        |l| to_legacy(&l),
        Migrator::new(),
        Err("migration"),
    );
    check_migrate(
        "a failing step",
        |l| to_legacy(&l),
        Migrator::new().step(0, |_| Err("cannot".into())),
        Err("migration"),
    );
    check_migrate(
        "a newer schema",
        |l| l.replace("\"schema\":1", "\"schema\":99"),
        legacy_step(),
        Err("unsupported"),
    );
    check_migrate(
        "an edited record",
        |l| l.replacen("first words", "forged words", 1),
        Migrator::new(),
        Err("corrupt"),
    );
    check_migrate(
        "a missing first version",
        |l| l.lines().skip(1).collect::<Vec<_>>().join("\n"),
        Migrator::new(),
        Err("invalid"),
    );
    check_migrate(
        "not json",
        |l| format!("{l}\n{{oops"),
        Migrator::new(),
        Err("invalid"),
    );
}

// ---------------------------------------------------------------- grants

#[derive(Clone, Copy, Debug)]
enum Op {
    Remember(&'static str, Tier),
    Recall(Option<&'static str>),
}

fn check_grants(name: &str, grants: Vec<Grant>, op: Op, want: Result<usize, ()>) {
    block_on(async {
        let clock = ManualClock::default();
        let m = memory(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        for (s, t) in [
            ("org/acme/sales", Tier::Working),
            ("org/acme/sales", Tier::Project),
            ("org/acme/hr", Tier::Project),
            ("org/globex", Tier::LongTerm),
        ] {
            m.remember(NewMemory::new(
                scope(s),
                t,
                format!("memo in {s}"),
                Principal::System,
            ))
            .await
            .unwrap();
        }
        let view = m.view(
            ViewSubject::agent(AgentId::from_name("bot")).with_role(RoleId::from_name("sales")),
            grants,
        );
        let got = match op {
            Op::Remember(s, t) => view
                .remember(NewMemory::new(scope(s), t, "new memo", Principal::System))
                .await
                .map(|r| {
                    assert_eq!(
                        r.provenance.author,
                        Principal::Agent(AgentId::from_name("bot"))
                    );
                    1
                }),
            Op::Recall(s) => {
                let mut q = RecallQuery::text("memo").k(10);
                if let Some(s) = s {
                    q = q.in_scope(scope(s));
                }
                view.recall(&q).await.map(|hits| hits.len())
            }
        };
        match (got, want) {
            (Ok(n), Ok(w)) => assert_eq!(n, w, "case `{name}`"),
            (Err(MemoryError::GrantRefused { .. }), Err(())) => {}
            (got, want) => panic!("case `{name}`: got {got:?}, want {want:?}"),
        }
    });
}

#[test]
fn grant_cases() {
    let sales = RoleId::from_name("sales");
    let bot = AgentId::from_name("bot");
    let other = AgentId::from_name("other");
    let acme = scope("org/acme");
    let acme_sales = scope("org/acme/sales");
    let rw_sales = || Grant::role(sales, acme_sales.clone(), Access::ReadWrite);
    check_grants(
        "write inside a role grant",
        vec![rw_sales()],
        Op::Remember("org/acme/sales/q1", Tier::Working),
        Ok(1),
    );
    check_grants(
        "write outside the prefix",
        vec![rw_sales()],
        Op::Remember("org/acme/hr", Tier::Working),
        Err(()),
    );
    check_grants(
        "a sibling with a common prefix string",
        vec![rw_sales()],
        Op::Remember("org/acme/salesforce", Tier::Working),
        Err(()),
    );
    check_grants(
        "read-only grant refuses writes",
        vec![Grant::role(sales, acme.clone(), Access::Read)],
        Op::Remember("org/acme/sales", Tier::Working),
        Err(()),
    );
    check_grants(
        "write-only grant refuses reads",
        vec![Grant::role(sales, acme.clone(), Access::Write)],
        Op::Recall(Some("org/acme")),
        Err(()),
    );
    check_grants(
        "tier-restricted write",
        vec![rw_sales().tiers([Tier::Working])],
        Op::Remember("org/acme/sales", Tier::Project),
        Err(()),
    );
    check_grants(
        "agent grant",
        vec![Grant::agent(bot, scope("org/globex"), Access::Write)],
        Op::Remember("org/globex", Tier::LongTerm),
        Ok(1),
    );
    check_grants(
        "another agent's grant does not apply",
        vec![Grant::agent(other, Scope::root(), Access::ReadWrite)],
        Op::Remember("org/globex", Tier::LongTerm),
        Err(()),
    );
    check_grants("no grants at all", vec![], Op::Recall(None), Ok(0));
    check_grants(
        "recall sees only the granted slice",
        vec![rw_sales()],
        Op::Recall(None),
        Ok(2),
    );
    check_grants(
        "recall of a wider scope is narrowed",
        vec![rw_sales()],
        Op::Recall(Some("org")),
        Ok(2),
    );
    check_grants(
        "recall in a scope with no grant is refused",
        vec![rw_sales()],
        Op::Recall(Some("org/globex")),
        Err(()),
    );
    check_grants(
        "tiers narrow recall",
        vec![Grant::role(sales, acme.clone(), Access::Read).tiers([Tier::Project])],
        Op::Recall(Some("org/acme")),
        Ok(2),
    );
    check_grants(
        "grants add up",
        vec![
            rw_sales(),
            Grant::agent(bot, scope("org/globex"), Access::Read),
        ],
        Op::Recall(None),
        Ok(3),
    );
}

#[test]
fn views_check_revise_retract_and_history() {
    block_on(async {
        let clock = ManualClock::default();
        let m = memory(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let inside = m
            .remember(NewMemory::new(
                scope("team/a"),
                Tier::Working,
                "in",
                Principal::System,
            ))
            .await
            .unwrap();
        let outside = m
            .remember(NewMemory::new(
                scope("team/b"),
                Tier::Working,
                "out",
                Principal::System,
            ))
            .await
            .unwrap();
        let agent = AgentId::from_name("w");
        let view = m.view(
            ViewSubject::agent(agent),
            vec![Grant::agent(agent, scope("team/a"), Access::ReadWrite).tiers([Tier::Working])],
        );
        assert!(view
            .revise(inside.id, Revision::new(Principal::System).content("in 2"))
            .await
            .is_ok());
        assert!(matches!(
            view.revise(outside.id, Revision::new(Principal::System).content("x"))
                .await,
            Err(MemoryError::GrantRefused { .. })
        ));
        assert!(matches!(
            view.revise(
                inside.id,
                Revision::new(Principal::System).tier(Tier::LongTerm)
            )
            .await,
            Err(MemoryError::GrantRefused { .. })
        ));
        assert!(matches!(
            view.history(outside.id).await,
            Err(MemoryError::GrantRefused { .. })
        ));
        assert_eq!(view.history(inside.id).await.unwrap().len(), 2);
        assert_eq!(
            view.history(inside.id).await.unwrap()[1].provenance.author,
            Principal::Agent(agent)
        );
        assert!(matches!(
            view.retract(outside.id, "no").await,
            Err(MemoryError::GrantRefused { .. })
        ));
        assert_eq!(
            view.retract(inside.id, "done")
                .await
                .unwrap()
                .provenance
                .author,
            Principal::Agent(agent)
        );
        let err = view
            .remember(NewMemory::new(
                scope("team/b"),
                Tier::Working,
                "x",
                Principal::System,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), format!("write access to scope `team/b` tier `working` refused for `agent:{agent}`: no grant covers it"));
    });
}

// ---------------------------------------------------------------- context

struct Item {
    label: &'static str,
    tier: Tier,
    pinned: bool,
    /// Content length in characters (4 per token).
    chars: usize,
}

const fn item(label: &'static str, tier: Tier, chars: usize) -> Item {
    Item {
        label,
        tier,
        pinned: false,
        chars,
    }
}

fn check_context(
    name: &str,
    items: &[Item],
    budget: ContextBudget,
    cited: &[&str],
    dropped: &[&str],
    over: bool,
) {
    let clock = ManualClock::default();
    let ids = aios_core::IdGen::new(clock.clone(), 5);
    let records: Vec<MemoryRecord> = items
        .iter()
        .map(|i| {
            let mut r = aios_memory::testing::sample_record(ids.next(), 1, "", clock.now(), None);
            r.tier = i.tier;
            r.pinned = i.pinned;
            r.content = format!(
                "{}:{}",
                i.label,
                "x".repeat(i.chars.saturating_sub(i.label.len() + 1))
            );
            r.seal();
            r
        })
        .collect();
    let label_of = |id: &MemoryId| items[records.iter().position(|r| r.id == *id).unwrap()].label;
    let tok = CharTokenizer::default();
    let ctx = assemble_context(&records, &budget, &tok);
    let got: Vec<&str> = ctx.citations.iter().map(label_of).collect();
    assert_eq!(got, cited, "case `{name}`: cited");
    let got: Vec<&str> = ctx.dropped.iter().map(label_of).collect();
    assert_eq!(got, dropped, "case `{name}`: dropped");
    assert_eq!(ctx.over_budget, over, "case `{name}`: over budget");
    assert!(
        tok.count(&ctx.text) <= ctx.used_tokens,
        "case `{name}`: the count bounds the text's tokens"
    );
    assert!(
        over || ctx.used_tokens <= budget.max_tokens,
        "case `{name}`"
    );
    for id in &ctx.citations {
        assert!(
            ctx.text.contains(&format!("[mem:{id}]")),
            "case `{name}`: cited in text"
        );
    }
    assert_eq!(
        assemble_context(&records, &budget, &tok),
        ctx,
        "case `{name}`: deterministic"
    );
}

#[test]
fn context_cases() {
    // a line is `[mem:<36-char id>] ` (43 chars) + content; 4 chars per token
    let line = |chars: usize| (43 + chars).div_ceil(4);
    let w = |l, c| item(l, Tier::Working, c);
    let p = |l, c| item(l, Tier::Project, c);
    let lt = |l, c| item(l, Tier::LongTerm, c);
    check_context(
        "everything fits, working first",
        &[lt("l", 20), p("p", 20), w("w", 20)],
        ContextBudget::tokens(1000),
        &["w", "p", "l"],
        &[],
        false,
    );
    check_context(
        "the budget cuts long-term first",
        &[lt("l", 20), p("p", 20), w("w", 20)],
        ContextBudget::tokens(2 * line(20) + 1),
        &["w", "p"],
        &["l"],
        false,
    );
    check_context(
        "pinned comes first and is never dropped",
        &[
            w("w", 400),
            Item {
                pinned: true,
                ..lt("pin", 400)
            },
        ],
        ContextBudget::tokens(line(400)),
        &["pin"],
        &["w"],
        false,
    );
    check_context(
        "pinned alone over budget",
        &[
            Item {
                pinned: true,
                ..p("pin", 400)
            },
            w("w", 4),
        ],
        ContextBudget::tokens(10),
        &["pin"],
        &["w"],
        true,
    );
    check_context(
        "a big record is skipped and smaller ones still fit",
        &[w("big", 800), w("small", 8), p("small2", 8)],
        ContextBudget::tokens(2 * line(8) + 1),
        &["small", "small2"],
        &["big"],
        false,
    );
    check_context(
        "the header counts",
        &[w("w", 20)],
        ContextBudget::tokens(5).with_header("relevant memory:"),
        &[],
        &["w"],
        false,
    );
    check_context(
        "zero budget",
        &[w("w", 1)],
        ContextBudget::tokens(0),
        &[],
        &["w"],
        false,
    );
}

#[test]
fn context_skips_retracted_and_duplicates() {
    let clock = ManualClock::default();
    let ids = aios_core::IdGen::new(clock.clone(), 5);
    let a = aios_memory::testing::sample_record(ids.next(), 1, "a", clock.now(), None);
    let mut b = aios_memory::testing::sample_record(ids.next(), 1, "b", clock.now(), None);
    b.tombstone = Some(aios_memory::Tombstone { reason: "x".into() });
    let ctx = assemble_context(
        [&a, &a, &b],
        &ContextBudget::tokens(100),
        &CharTokenizer::default(),
    );
    assert_eq!(ctx.citations, vec![a.id]);
    assert_eq!(ctx.text, format!("[mem:{}] a", a.id));
}
