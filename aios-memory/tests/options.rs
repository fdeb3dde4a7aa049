#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Recall modes that say what they lack, keyword options, explicit recorded times for
//! backfills and imports, batch writes, and hits without embeddings.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditEvent, AuditLogExt, Clock, HashEmbedder, InMemoryAuditLog, ManualClock, MemoryId,
    Principal, StoreError, Timestamp,
};
use aios_memory::{
    InMemoryMemoryStore, KeywordOptions, Memory, MemoryError, Migrator, NewMemory, RecallMode,
    RecallQuery, Revision, Scope, Stemming, Tier,
};
use futures::executor::block_on;

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

fn new(text: &str) -> NewMemory {
    NewMemory::new(scope("org/a"), Tier::Project, text, Principal::System)
}

#[test]
fn hybrid_without_a_vector_says_so_and_auto_runs_what_it_can() {
    block_on(async {
        let clock = ManualClock::default();
        let plain = Memory::builder(Arc::new(clock.clone()))
            .open()
            .await
            .unwrap();
        plain.remember(new("the tax is due")).await.unwrap();
        let err = plain
            .recall(&RecallQuery::text("tax").mode(RecallMode::Hybrid))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MemoryError::InvalidInput { field, .. } if field == "vector"),
            "{err}"
        );
        // auto (the default) runs the keyword signal and the breakdown says so
        let hits = plain.recall(&RecallQuery::text("tax")).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert!(hits[0].score.vector.is_none() && hits[0].score.keyword.is_some());
        // hybrid with a vector but no text is refused too; a listing is not
        let err = plain
            .recall(&RecallQuery::vector(vec![1.0; 4]).mode(RecallMode::Hybrid))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MemoryError::InvalidInput { field, .. } if field == "text"),
            "{err}"
        );
        assert_eq!(
            plain
                .recall(&RecallQuery::all().mode(RecallMode::Hybrid))
                .await
                .unwrap()
                .len(),
            1
        );
        // with an embedder, hybrid runs both signals
        let m = Memory::builder(Arc::new(clock.clone()))
            .embedder(Arc::new(HashEmbedder::new(32)))
            .open()
            .await
            .unwrap();
        m.remember(new("the tax is due")).await.unwrap();
        let hits = m
            .recall(&RecallQuery::text("tax").mode(RecallMode::Hybrid))
            .await
            .unwrap();
        assert!(hits[0].score.vector.is_some() && hits[0].score.keyword.is_some());
        assert!(
            (hits[0].score.fused - 1.0).abs() < 1e-6,
            "first in both is 1"
        );
    });
}

#[test]
fn keyword_options_set_stemming_and_bm25_parameters() {
    block_on(async {
        let clock = Arc::new(ManualClock::default());
        let open = |o: KeywordOptions| {
            let clock = clock.clone();
            async move { Memory::builder(clock).keyword(o).open().await }
        };
        let exact = open(KeywordOptions::default()).await.unwrap();
        let stemmed = open(KeywordOptions::default().stemming(Stemming::English))
            .await
            .unwrap();
        for m in [&exact, &stemmed] {
            m.remember(new("the invoices were sent on friday"))
                .await
                .unwrap();
            m.remember(new("lunch with the team")).await.unwrap();
        }
        let q = RecallQuery::text("Invoicing").mode(RecallMode::Keyword);
        assert!(exact.recall(&q).await.unwrap().is_empty());
        let hits = stemmed.recall(&q).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].record.content, "the invoices were sent on friday");

        // k1 and b change BM25 scores
        let score = |o: KeywordOptions| async move {
            let m = open(o).await.unwrap();
            m.remember(new("tax tax tax and more words here"))
                .await
                .unwrap();
            m.remember(new("tax")).await.unwrap();
            m.remember(new("nothing relevant")).await.unwrap();
            let hits = m
                .recall(&RecallQuery::text("tax").mode(RecallMode::Keyword))
                .await
                .unwrap();
            hits.iter()
                .map(|h| h.score.keyword.unwrap())
                .collect::<Vec<_>>()
        };
        let default = score(KeywordOptions::default()).await;
        assert_ne!(default, score(KeywordOptions::default().k1(2.0)).await);
        assert_ne!(default, score(KeywordOptions::default().b(0.0)).await);
        for bad in [
            KeywordOptions::default().k1(-1.0),
            KeywordOptions::default().k1(f32::NAN),
            KeywordOptions::default().b(1.5),
        ] {
            assert!(matches!(
                open(bad).await,
                Err(MemoryError::InvalidInput { .. })
            ));
        }
    });
}

#[test]
fn backfills_and_imports_keep_recorded_and_valid_times_without_moving_the_clock() {
    block_on(async {
        let clock = ManualClock::default();
        let now = clock.now();
        let m = Memory::builder(Arc::new(clock.clone()))
            .open()
            .await
            .unwrap();
        let day = chrono::Duration::days(1);
        let r = m
            .remember(
                new("the office moved to leeds")
                    .recorded_at(now - day * 10)
                    .valid(Some(now - day * 20), None),
            )
            .await
            .unwrap();
        assert_eq!(r.recorded_at, now - day * 10);
        assert_eq!(clock.now(), now, "the clock did not move");
        let at = |t: Timestamp| RecallQuery::text("office").as_of(t);
        assert_eq!(m.recall(&at(now - day * 5)).await.unwrap().len(), 1);
        assert!(m.recall(&at(now - day * 11)).await.unwrap().is_empty());
        // a backfilled revision: between the latest version and now
        let v2 = m
            .revise(
                r.id,
                Revision::new(Principal::System)
                    .content("the office moved to york")
                    .recorded_at(now - day * 3),
            )
            .await
            .unwrap();
        assert_eq!(v2.recorded_at, now - day * 3);
        for (t, want) in [
            (now - day * 5, "the office moved to leeds"),
            (now - day, "the office moved to york"),
        ] {
            assert_eq!(m.recall(&at(t)).await.unwrap()[0].record.content, want);
        }
        for (bad, field) in [
            (
                m.revise(
                    r.id,
                    Revision::new(Principal::System)
                        .content("x")
                        .recorded_at(now - day * 4),
                )
                .await,
                "recorded_at",
            ),
            (
                m.remember(new("later").recorded_at(now + day)).await,
                "recorded_at",
            ),
        ] {
            assert!(
                matches!(&bad, Err(MemoryError::InvalidInput { field: f, .. }) if f == field),
                "{bad:?}"
            );
        }
        // an import keeps every time and leaves the importer's clock alone
        let other_clock = ManualClock::default();
        other_clock.advance(Duration::from_secs(3600));
        let before = other_clock.now();
        let other = Memory::builder(Arc::new(other_clock.clone()))
            .open()
            .await
            .unwrap();
        other
            .import(&m.export().await.unwrap(), &Migrator::new())
            .await
            .unwrap();
        assert_eq!(other_clock.now(), before);
        let history = other.history(r.id).await.unwrap();
        assert_eq!(history, m.history(r.id).await.unwrap());
        assert_eq!(history[0].recorded_at, now - day * 10);
        assert_eq!(history[0].valid_from, Some(now - day * 20));
        assert_eq!(history[0].retired_at, Some(now - day * 3));
    });
}

#[test]
fn recency_counts_from_when_the_statement_became_true() {
    block_on(async {
        let clock = ManualClock::default();
        let now = clock.now();
        let m = Memory::builder(Arc::new(clock.clone()))
            .open()
            .await
            .unwrap();
        let year = chrono::Duration::days(365);
        // recorded now, but true since a year ago
        m.remember(new("the server runs debian").valid(Some(now - year), None))
            .await
            .unwrap();
        // recorded (backfilled) a week ago, true since then
        m.remember(new("the server runs ubuntu").recorded_at(now - chrono::Duration::days(7)))
            .await
            .unwrap();
        let hits = m
            .recall(&RecallQuery::text("server runs").mode(RecallMode::Keyword))
            .await
            .unwrap();
        assert_eq!(hits[0].record.content, "the server runs ubuntu");
        assert!(hits[0].score.recency > hits[1].score.recency);
        assert!(hits[1].score.recency < 1e-4, "a year is twelve half-lives");
    });
}

#[test]
fn hits_carry_embeddings_only_when_asked() {
    block_on(async {
        let m = Memory::builder(Arc::new(ManualClock::default()))
            .embedder(Arc::new(HashEmbedder::new(16)))
            .open()
            .await
            .unwrap();
        m.remember(new("a note about budgets")).await.unwrap();
        let q = RecallQuery::text("budgets");
        let hits = m.recall(&q).await.unwrap();
        assert!(hits[0].record.embedding.is_none());
        let full = m.recall(&q.clone().with_embeddings()).await.unwrap();
        let stored = m.get(full[0].record.id).await.unwrap();
        assert_eq!(full[0].record, stored);
        assert_eq!(
            aios_memory::MemoryRecord {
                embedding: None,
                ..stored
            },
            hits[0].record
        );
    });
}

#[test]
fn remember_many_is_idempotent_per_record_and_audits_each() {
    block_on(async {
        let clock = ManualClock::default();
        let log = Arc::new(InMemoryAuditLog::new());
        let store = Arc::new(InMemoryMemoryStore::new());
        let m = Memory::builder(Arc::new(clock.clone()))
            .store(store.clone())
            .embedder(Arc::new(HashEmbedder::new(16)))
            .audit(log.clone())
            .open()
            .await
            .unwrap();
        let with_id =
            |i: usize| new(&format!("note {i}")).with_id(MemoryId::from_name(&format!("n{i}")));
        let batch = vec![with_id(0), new("no id one"), with_id(1), new("no id two")];
        let written = m.remember_many(batch).await.unwrap();
        assert_eq!(written.len(), 4);
        assert_eq!(written[0].id, MemoryId::from_name("n0"));
        assert!(written
            .iter()
            .all(|r| r.embedding.is_some() && r.checksum_ok()));
        let audited = || async {
            log.entries()
                .await
                .unwrap()
                .into_iter()
                .filter(|e| matches!(e.event, AuditEvent::MemoryWritten { .. }))
                .count()
        };
        assert_eq!(audited().await, 4);
        // a repeat of the records with ids writes and audits nothing new
        let again = m.remember_many(vec![with_id(0), with_id(1)]).await.unwrap();
        assert_eq!(again, vec![written[0].clone(), written[2].clone()]);
        assert_eq!(audited().await, 4);
        assert_eq!(m.len(), 4);
        // an invalid record fails the batch before anything is written
        let err = m
            .remember_many(vec![new("fine"), new("   ")])
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                MemoryError::Batch {
                    index: 1,
                    written: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(m.len(), 4);
        // an id holding other content stops the batch there; what came before stays
        let clash = NewMemory::new(scope("org/a"), Tier::Project, "other", Principal::System)
            .with_id(MemoryId::from_name("n1"));
        let err = m
            .remember_many(vec![with_id(2), clash, with_id(3)])
            .await
            .unwrap_err();
        match &err {
            MemoryError::Batch {
                index: 1,
                written: 1,
                source,
            } => assert!(
                matches!(
                    **source,
                    MemoryError::Store(StoreError::AlreadyExists { .. })
                ),
                "{source}"
            ),
            other => panic!("{other}"),
        }
        assert_eq!(m.len(), 5);
        assert_eq!(audited().await, 5);
        assert!(log.verify(None).await.unwrap().is_intact());
        assert!(m.verify().await.unwrap().is_intact());
        // the batch recalls like single writes
        let hits = m.recall(&RecallQuery::text("note 2")).await.unwrap();
        assert_eq!(hits[0].record.id, MemoryId::from_name("n2"));
        let _ = store;
    });
}

#[test]
fn a_view_writes_a_batch_only_where_its_grants_allow() {
    use aios_core::{AgentId, RoleId};
    use aios_memory::{Access, Grant, ViewSubject};
    block_on(async {
        let m = Memory::builder(Arc::new(ManualClock::default()))
            .open()
            .await
            .unwrap();
        let agent = AgentId::from_name("scribe");
        let role = RoleId::from_name("writer");
        let view = m.view(
            ViewSubject::agent(agent).with_role(role),
            vec![Grant::role(role, scope("org/a"), Access::ReadWrite)],
        );
        let outside = NewMemory::new(scope("org/b"), Tier::Project, "no", Principal::System);
        let err = view
            .remember_many(vec![new("yes"), outside])
            .await
            .unwrap_err();
        match &err {
            MemoryError::Batch {
                index: 1,
                written: 0,
                source,
            } => assert!(matches!(**source, MemoryError::GrantRefused { .. })),
            other => panic!("{other}"),
        }
        assert!(m.is_empty(), "nothing written");
        let written = view
            .remember_many(vec![new("one"), new("two")])
            .await
            .unwrap();
        assert!(written
            .iter()
            .all(|r| r.provenance.author == Principal::Agent(agent)));
        assert_eq!(m.len(), 2);
    });
}
