#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Behaviour of the memory service: versions, retraction, filters, bi-temporal recall,
//! replay, rebuild, audit, consolidation and export/import.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditEvent, AuditLogExt, Clock, HashEmbedder, InMemoryAuditLog, ManualClock, Principal,
};
use aios_memory::{
    ConsolidationRequest, InMemoryMemoryStore, Memory, MemoryError, MemoryKind, MemoryRecord,
    MemoryStore, Migrator, NewMemory, RecallMode, RecallQuery, Revision, Scope, Summariser, Tier,
};
use async_trait::async_trait;
use futures::executor::block_on;

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

fn new(scope_: &str, tier: Tier, text: &str) -> NewMemory {
    NewMemory::new(scope(scope_), tier, text, Principal::System)
}

async fn open(clock: &ManualClock, store: Arc<dyn MemoryStore>) -> Memory {
    Memory::builder(Arc::new(clock.clone()))
        .store(store)
        .embedder(Arc::new(HashEmbedder::new(64)))
        .open()
        .await
        .unwrap()
}

fn contents(hits: &[aios_memory::RecallHit]) -> Vec<&str> {
    hits.iter().map(|h| h.record.content.as_str()).collect()
}

#[test]
fn revise_supersedes_and_keeps_history() {
    block_on(async {
        let clock = ManualClock::default();
        let m = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let a = m
            .remember(new(
                "org/a",
                Tier::Project,
                "the office wifi password rotates monthly",
            ))
            .await
            .unwrap();
        let t1 = clock.now();
        clock.advance(Duration::from_secs(60));
        let b = m
            .revise(
                a.id,
                Revision::new(Principal::System).content("the office wifi password rotates weekly"),
            )
            .await
            .unwrap();
        assert_eq!((b.id, b.version), (a.id, 2));
        assert_eq!(b.prev_checksum.as_deref(), Some(a.checksum.as_str()));
        let hits = m
            .recall(&RecallQuery::text("wifi password").k(5))
            .await
            .unwrap();
        assert_eq!(contents(&hits), ["the office wifi password rotates weekly"]);
        // as of before the revision, the first version
        let hits = m
            .recall(&RecallQuery::text("wifi password").as_of(t1).k(5))
            .await
            .unwrap();
        assert_eq!(
            contents(&hits),
            ["the office wifi password rotates monthly"]
        );
        let history = m.history(a.id).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].retired_at, Some(b.recorded_at));
        // stale expectation
        let err = m
            .revise(
                a.id,
                Revision::new(Principal::System)
                    .content("x")
                    .expect_version(1),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                MemoryError::Store(aios_core::StoreError::Conflict { .. })
            ),
            "{err}"
        );
        // unchanged content keeps the embedding
        let c = m
            .revise(a.id, Revision::new(Principal::System).importance(0.9))
            .await
            .unwrap();
        assert_eq!(c.embedding, b.embedding);
        assert_eq!(c.importance, 0.9);
    });
}

#[test]
fn retract_hides_from_recall_but_not_from_history() {
    block_on(async {
        let clock = ManualClock::default();
        let m = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let a = m
            .remember(new(
                "org/a",
                Tier::Working,
                "the api key lives in the vault",
            ))
            .await
            .unwrap();
        let before = clock.now();
        clock.advance(Duration::from_secs(1));
        let t = m.retract(a.id, Principal::System, "wrong").await.unwrap();
        assert_eq!(t.tombstone.as_ref().unwrap().reason, "wrong");
        assert!(m
            .recall(&RecallQuery::text("api key vault"))
            .await
            .unwrap()
            .is_empty());
        assert!(m.recall(&RecallQuery::all()).await.unwrap().is_empty());
        assert_eq!(
            m.recall(&RecallQuery::text("api key vault").as_of(before))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(m.history(a.id).await.unwrap().len(), 2);
        assert!(matches!(
            m.revise(a.id, Revision::new(Principal::System).content("x"))
                .await,
            Err(MemoryError::Retracted { .. })
        ));
        assert!(matches!(
            m.retract(a.id, Principal::System, "again").await,
            Err(MemoryError::Retracted { .. })
        ));
        assert!(m
            .replay(&Scope::root(), clock.now())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(m.replay(&Scope::root(), before).await.unwrap().len(), 1);
    });
}

#[test]
fn filters_on_scope_tier_kind_metadata_and_world_time() {
    block_on(async {
        let clock = ManualClock::default();
        let m = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let jan = clock.now();
        let feb = jan + chrono::Duration::days(31);
        m.remember(
            new("org/acme/p1", Tier::Project, "renewal meeting with acme").meta("customer", "acme"),
        )
        .await
        .unwrap();
        m.remember(
            new("org/acme/p2", Tier::Working, "renewal notes draft").kind(MemoryKind::Episode),
        )
        .await
        .unwrap();
        m.remember(
            new(
                "org/globex",
                Tier::LongTerm,
                "renewal policy for all customers",
            )
            .kind(MemoryKind::Instruction),
        )
        .await
        .unwrap();
        m.remember(new(
            "org/acme-2",
            Tier::Project,
            "renewal of the acme-2 lease",
        ))
        .await
        .unwrap();
        m.remember(
            new(
                "org/acme/p1",
                Tier::Project,
                "renewal price valid in january",
            )
            .valid(Some(jan), Some(feb)),
        )
        .await
        .unwrap();

        let q = || RecallQuery::text("renewal").k(10);
        let count = |hits: Vec<aios_memory::RecallHit>| hits.len();
        assert_eq!(count(m.recall(&q()).await.unwrap()), 5);
        assert_eq!(
            count(m.recall(&q().in_scope(scope("org/acme"))).await.unwrap()),
            3,
            "acme-2 is not within acme"
        );
        assert_eq!(
            count(m.recall(&q().tiers([Tier::Working])).await.unwrap()),
            1
        );
        assert_eq!(
            count(
                m.recall(&q().kinds([MemoryKind::Instruction]))
                    .await
                    .unwrap()
            ),
            1
        );
        assert_eq!(
            count(m.recall(&q().meta("customer", "acme")).await.unwrap()),
            1
        );
        assert_eq!(
            count(
                m.recall(&q().valid_at(feb + chrono::Duration::days(1)))
                    .await
                    .unwrap()
            ),
            4
        );
        assert_eq!(count(m.recall(&q().valid_at(jan)).await.unwrap()), 5);
        assert!(m
            .recall(&q().in_scope(scope("org/nobody")))
            .await
            .unwrap()
            .is_empty());
        assert!(m.recall(&q().k(0)).await.unwrap().is_empty());
        // as of before anything was written
        assert!(m
            .recall(&q().as_of(jan - chrono::Duration::seconds(1)))
            .await
            .unwrap()
            .is_empty());
    });
}

#[test]
fn hits_carry_score_breakdown_and_provenance() {
    block_on(async {
        let clock = ManualClock::default();
        let m = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let run = aios_core::RunId::from_name("r1");
        m.remember(
            new("org/a", Tier::Project, "quarterly tax filing due in april")
                .run(run)
                .source("email"),
        )
        .await
        .unwrap();
        m.remember(new("org/a", Tier::Project, "lunch order for the team"))
            .await
            .unwrap();
        let hits = m
            .recall(&RecallQuery::text("tax filing").k(2))
            .await
            .unwrap();
        let top = &hits[0];
        assert_eq!(top.record.content, "quarterly tax filing due in april");
        assert_eq!(top.record.provenance.run, Some(run));
        assert_eq!(top.record.provenance.source.as_deref(), Some("email"));
        let s = top.score;
        assert_eq!(s.vector_rank, Some(1));
        assert_eq!(s.keyword_rank, Some(1));
        assert!(s.vector.unwrap() > 0.0 && s.keyword.unwrap() > 0.0);
        assert!((s.total - (s.fused + s.recency + s.importance)).abs() < 1e-6);
        assert!(hits
            .windows(2)
            .all(|w| w[0].score.total >= w[1].score.total));
        // the other one matches no keyword
        assert_eq!(hits[1].score.keyword, None);
        // single-signal modes
        let kw = m
            .recall(&RecallQuery::text("tax filing").mode(RecallMode::Keyword))
            .await
            .unwrap();
        assert_eq!(kw.len(), 1);
        assert!(kw[0].score.vector.is_none());
        let vec = m
            .recall(&RecallQuery::text("tax filing").mode(RecallMode::Vector))
            .await
            .unwrap();
        assert_eq!(vec.len(), 2);
        assert!(vec.iter().all(|h| h.score.keyword.is_none()));
        // a mode without its signal is refused, not answered with a listing
        let plain = Memory::builder(Arc::new(clock.clone()))
            .open()
            .await
            .unwrap();
        plain
            .remember(new("org/a", Tier::Project, "tax"))
            .await
            .unwrap();
        assert!(matches!(
            plain
                .recall(&RecallQuery::text("tax").mode(RecallMode::Vector))
                .await,
            Err(MemoryError::InvalidInput { .. })
        ));
        assert!(matches!(
            m.recall(&RecallQuery::vector(vec![0.1; 64]).mode(RecallMode::Keyword))
                .await,
            Err(MemoryError::InvalidInput { .. })
        ));
        // hybrid without an embedder falls back to keywords
        assert_eq!(
            plain.recall(&RecallQuery::text("tax")).await.unwrap().len(),
            1
        );
        // a wrong-sized query vector is refused
        assert!(matches!(
            m.recall(&RecallQuery::vector(vec![1.0; 3])).await,
            Err(MemoryError::InvalidInput { .. })
        ));
    });
}

#[test]
fn reopening_rebuilds_identical_indexes() {
    block_on(async {
        let clock = ManualClock::default();
        let store: Arc<dyn MemoryStore> = Arc::new(InMemoryMemoryStore::new());
        let m = open(&clock, store.clone()).await;
        let mut ids = Vec::new();
        for i in 0..40 {
            clock.advance(Duration::from_secs(10));
            let r = m
                .remember(new(
                    &format!("org/s{}", i % 4),
                    Tier::ALL[i % 3],
                    &format!("note {i} about topic {}", i % 7),
                ))
                .await
                .unwrap();
            ids.push(r.id);
        }
        for (i, id) in ids.iter().enumerate().step_by(3) {
            clock.advance(Duration::from_secs(10));
            m.revise(
                *id,
                Revision::new(Principal::System)
                    .content(format!("revised note {i} about topic {}", i % 5)),
            )
            .await
            .unwrap();
        }
        for id in ids.iter().step_by(5) {
            m.retract(*id, Principal::System, "cleanup").await.unwrap();
        }
        let reopened = open(&clock, store).await;
        let past = clock.now() - chrono::Duration::seconds(200);
        for q in [
            RecallQuery::text("note about topic 3").k(20),
            RecallQuery::text("revised topic")
                .in_scope(scope("org/s1"))
                .k(20),
            RecallQuery::text("note").as_of(past).k(50),
            RecallQuery::all().tiers([Tier::Working]).k(50),
        ] {
            assert_eq!(
                m.recall(&q).await.unwrap(),
                reopened.recall(&q).await.unwrap(),
                "{q:?}"
            );
        }
        assert_eq!(
            m.replay(&Scope::root(), past).await.unwrap(),
            reopened.replay(&Scope::root(), past).await.unwrap()
        );
    });
}

#[test]
fn writes_are_audited() {
    block_on(async {
        let clock = ManualClock::default();
        let log = Arc::new(InMemoryAuditLog::new());
        let m = Memory::builder(Arc::new(clock.clone()))
            .audit(log.clone())
            .open()
            .await
            .unwrap();
        let agent = Principal::Agent(aios_core::AgentId::from_name("a"));
        let r = m
            .remember(NewMemory::new(
                scope("org/x"),
                Tier::Working,
                "hello",
                agent,
            ))
            .await
            .unwrap();
        m.revise(r.id, Revision::new(agent).content("hello again"))
            .await
            .unwrap();
        m.retract(r.id, agent, "done").await.unwrap();
        let ops: Vec<(String, u32)> = log
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                assert_eq!(e.actor, agent);
                match e.event {
                    AuditEvent::MemoryWritten {
                        operation,
                        version,
                        memory,
                        scope,
                        ..
                    } => {
                        assert_eq!(memory, r.id);
                        assert_eq!(scope, "org/x");
                        (operation, version)
                    }
                    other => panic!("unexpected {other:?}"),
                }
            })
            .collect();
        assert_eq!(
            ops,
            [
                ("remember".into(), 1),
                ("revise".into(), 2),
                ("retract".into(), 3)
            ]
        );
        assert!(log.verify(None).await.unwrap().is_intact());
    });
}

#[derive(Debug)]
struct JoinSummariser;

#[async_trait]
impl Summariser for JoinSummariser {
    async fn summarise(&self, records: &[MemoryRecord]) -> Result<String, String> {
        if records.is_empty() {
            return Err("nothing to summarise".into());
        }
        Ok(format!(
            "summary: {}",
            records
                .iter()
                .map(|r| r.content.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

#[test]
fn consolidation_summarises_and_promotes_with_provenance() {
    block_on(async {
        let clock = ManualClock::default();
        let m = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let a = m
            .remember(
                new("org/p/run-1", Tier::Working, "client asked for a blue logo").importance(0.4),
            )
            .await
            .unwrap();
        let b = m
            .remember(
                new(
                    "org/p/run-1",
                    Tier::Working,
                    "client rejected the serif font",
                )
                .importance(0.7),
            )
            .await
            .unwrap();
        m.remember(new(
            "org/p/run-1",
            Tier::Project,
            "already project knowledge",
        ))
        .await
        .unwrap();
        m.remember(new("org/q", Tier::Working, "other scope"))
            .await
            .unwrap();

        let report = m
            .consolidate(
                &ConsolidationRequest::summarise(
                    scope("org/p"),
                    Tier::LongTerm,
                    Arc::new(JoinSummariser),
                    Principal::System,
                )
                .retracting_sources(),
            )
            .await
            .unwrap();
        assert_eq!(report.sources, vec![a.id, b.id]);
        assert_eq!(report.created.len(), 1);
        let s = &report.created[0];
        assert_eq!(s.tier, Tier::LongTerm);
        assert_eq!(s.kind, MemoryKind::Summary);
        assert_eq!(s.provenance.derived_from, vec![a.id, b.id]);
        assert_eq!(s.importance, 0.7);
        assert_eq!(
            s.content,
            "summary: client asked for a blue logo; client rejected the serif font"
        );
        assert_eq!(report.retracted, vec![a.id, b.id]);
        assert!(m
            .recall(
                &RecallQuery::all()
                    .tiers([Tier::Working])
                    .in_scope(scope("org/p"))
            )
            .await
            .unwrap()
            .is_empty());
        assert!(
            m.verify().await.unwrap().is_intact(),
            "derived_from references resolve"
        );

        let report = m
            .consolidate(&ConsolidationRequest::promote(
                scope("org/q"),
                Tier::Project,
                Principal::System,
            ))
            .await
            .unwrap();
        assert_eq!(report.created.len(), 1);
        assert_eq!(report.created[0].tier, Tier::Project);
        assert_eq!(report.created[0].content, "other scope");
        assert_eq!(report.created[0].provenance.derived_from, report.sources);
        assert!(report.retracted.is_empty());

        // nothing to do
        let empty = m
            .consolidate(&ConsolidationRequest::summarise(
                scope("org/none"),
                Tier::LongTerm,
                Arc::new(JoinSummariser),
                Principal::System,
            ))
            .await
            .unwrap();
        assert!(empty.created.is_empty() && empty.sources.is_empty());
    });
}

#[test]
fn export_import_round_trips_every_version() {
    block_on(async {
        let clock = ManualClock::default();
        let m = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let a = m
            .remember(new("org/a", Tier::Project, "alpha").meta("k", 1))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(5));
        m.revise(a.id, Revision::new(Principal::System).content("alpha two"))
            .await
            .unwrap();
        m.remember(new("org/b", Tier::LongTerm, "beta").pinned())
            .await
            .unwrap();
        let dump = m.export().await.unwrap();
        assert_eq!(dump.lines().count(), 3);

        let other = open(&clock, Arc::new(InMemoryMemoryStore::new())).await;
        let report = other.import(&dump, &Migrator::new()).await.unwrap();
        assert_eq!(
            (report.imported, report.records, report.migrated),
            (2, 3, 0)
        );
        assert_eq!(
            other.export().await.unwrap(),
            dump,
            "byte-identical after a round trip"
        );
        assert!(other.verify().await.unwrap().is_intact());
        let q = RecallQuery::text("alpha");
        assert_eq!(m.recall(&q).await.unwrap(), other.recall(&q).await.unwrap());
        // importing again skips existing lineages
        let again = other.import(&dump, &Migrator::new()).await.unwrap();
        assert_eq!(again.imported, 0);
        assert_eq!(again.skipped.len(), 2);
    });
}
