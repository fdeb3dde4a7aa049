#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Batch writes (`remember_many`) index their records together, with the keyword postings
//! grouped per term: the result must be exactly what one `remember` per record gives, and
//! a failure part-way must leave the index holding exactly what the store holds.

use std::sync::Arc;

use aios_core::testing::{FaultPlan, Faults, FaultyAuditLog};
use aios_core::{InMemoryAuditLog, ManualClock, MemoryId, Principal, SeededRng};
use aios_memory::testing::FaultyMemoryStore;
use aios_memory::{
    InMemoryMemoryStore, KeywordOptions, Memory, MemoryError, MemoryStore, NewMemory, RecallMode,
    RecallQuery, Scope, Stemming, Tier,
};
use futures::executor::block_on;

const WORDS: &[&str] = &[
    "invoice",
    "invoices",
    "friday",
    "paid",
    "paying",
    "the",
    "a",
    "Supplier",
    "budget",
    "q3",
    "overdue",
    "reminder",
    "supercalifragilisticexpialidocious",
    "naïve",
    "Straße",
    "café",
];

/// Texts with repeated words, mixed case, long words and non-ASCII words.
fn texts(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SeededRng::new(seed);
    (0..n)
        .map(|_| {
            let len = 1 + (rng.next_u64() % 12) as usize;
            (0..len)
                .map(|_| {
                    let r = rng.next_f64();
                    WORDS[((r * r) * WORDS.len() as f64) as usize]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn vector(rng: &mut SeededRng) -> Vec<f32> {
    (0..8).map(|_| rng.next_f64() as f32 - 0.5).collect()
}

fn records(texts: &[String], seed: u64) -> Vec<NewMemory> {
    let mut rng = SeededRng::new(seed);
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            NewMemory::new(
                Scope::parse(["org/a", "org/b"][i % 2]).unwrap(),
                Tier::ALL[i % 3],
                t.clone(),
                Principal::System,
            )
            .with_id(MemoryId::from_name(&format!("r{i}")))
            .embedding(vector(&mut rng))
        })
        .collect()
}

fn open(keyword: KeywordOptions, store: Arc<dyn MemoryStore>) -> Memory {
    open_with(keyword, store, 1)
}

fn open_with(keyword: KeywordOptions, store: Arc<dyn MemoryStore>, threads: usize) -> Memory {
    block_on(
        Memory::builder(Arc::new(ManualClock::default()))
            .keyword(keyword)
            .store(store)
            .write_threads(threads)
            .open(),
    )
    .unwrap()
}

/// `(id, total score, keyword score)` of every hit, bit for bit.
fn hits(m: &Memory, q: &RecallQuery) -> Vec<(MemoryId, u32, Option<u32>)> {
    block_on(m.recall(q))
        .unwrap()
        .into_iter()
        .map(|h| {
            (
                h.record.id,
                h.score.total.to_bits(),
                h.score.keyword.map(f32::to_bits),
            )
        })
        .collect()
}

fn queries() -> Vec<RecallQuery> {
    let mut rng = SeededRng::new(77);
    let mut out = Vec::new();
    for w in WORDS {
        out.push(RecallQuery::text(*w).mode(RecallMode::Keyword).k(25));
    }
    for _ in 0..10 {
        out.push(
            RecallQuery::text("paid invoice friday reminder")
                .with_vector(vector(&mut rng))
                .k(15),
        );
    }
    out.push(
        RecallQuery::text("budget the q3")
            .mode(RecallMode::Keyword)
            .in_scope(Scope::parse("org/b").unwrap())
            .k(40),
    );
    out
}

/// The same records written one `remember` each, in one batch, and in uneven batches after
/// some single writes, recall identically: the same hits in the same order with the same
/// scores, with and without stemming.
#[test]
fn batches_index_exactly_like_single_writes() {
    let texts = texts(600, 5);
    for keyword in [
        KeywordOptions::default(),
        KeywordOptions::default().stemming(Stemming::English),
    ] {
        let single = open(keyword, Arc::new(InMemoryMemoryStore::new()));
        let whole = open(keyword, Arc::new(InMemoryMemoryStore::new()));
        let mixed = open(keyword, Arc::new(InMemoryMemoryStore::new()));
        block_on(async {
            for r in records(&texts, 1) {
                single.remember(r).await.unwrap();
            }
            assert_eq!(
                whole.remember_many(records(&texts, 1)).await.unwrap().len(),
                600
            );
            let mut rest = records(&texts, 1).into_iter();
            for r in rest.by_ref().take(7) {
                mixed.remember(r).await.unwrap();
            }
            for size in [1, 2, 50, 333, 1000] {
                let batch: Vec<NewMemory> = rest.by_ref().take(size).collect();
                mixed.remember_many(batch).await.unwrap();
            }
        });
        for q in queries() {
            let want = hits(&single, &q);
            assert!(!want.is_empty(), "{q:?}");
            assert_eq!(hits(&whole, &q), want, "{q:?}");
            assert_eq!(hits(&mixed, &q), want, "{q:?}");
        }
        // a memory reopened over the batch's store (loaded in pages, in id order, so equal
        // scores tie in another order) finds the same records with the same scores
        let reopened = open(keyword, whole.store().clone());
        for w in WORDS {
            let q = RecallQuery::text(*w).mode(RecallMode::Keyword).k(1000);
            let (mut a, mut b) = (hits(&reopened, &q), hits(&single, &q));
            a.sort();
            b.sort();
            assert_eq!(a, b, "{q:?}");
        }
    }
}

/// With two write threads (a batch of 256 or more tokenised on a second thread while it is
/// written, and its vectors copied there while the rows are placed) a memory recalls exactly
/// as with one: the same hits, order and scores, after batches below and above that size,
/// one of them repeating records already written, with stemming, with retracted lineages,
/// and after a rebuild from the store on two threads (pages of 512 records).
#[test]
fn two_write_threads_index_exactly_like_one() {
    let texts = texts(2600, 15);
    for keyword in [
        KeywordOptions::default(),
        KeywordOptions::default().stemming(Stemming::English),
    ] {
        let one = open_with(keyword, Arc::new(InMemoryMemoryStore::new()), 1);
        let two = open_with(keyword, Arc::new(InMemoryMemoryStore::new()), 2);
        block_on(async {
            for m in [&one, &two] {
                let all = records(&texts, 4);
                let mut rest = all.iter().take(2000).cloned();
                for size in [300, 1, 255, 256, 1000, 17, 171] {
                    let batch: Vec<NewMemory> = rest.by_ref().take(size).collect();
                    m.remember_many(batch).await.unwrap();
                }
                // a batch whose first 300 are already written (returned, not written again)
                // among 600 new ones: only the new ones are indexed, each with its own text
                let overlapping: Vec<NewMemory> = all.get(1700..).unwrap().to_vec();
                let written = m.remember_many(overlapping).await.unwrap();
                assert_eq!(written.len(), 900);
                assert_eq!(m.len(), 2600);
                for i in (0..2600).step_by(97) {
                    m.retract(
                        MemoryId::from_name(&format!("r{i}")),
                        Principal::System,
                        "gone",
                    )
                    .await
                    .unwrap();
                }
            }
        });
        assert_eq!(one.len(), two.len());
        for q in queries() {
            let want = hits(&one, &q);
            assert!(!want.is_empty(), "{q:?}");
            assert_eq!(hits(&two, &q), want, "{q:?}");
        }
        // rebuilt from the store on one thread and on two: the same
        let a = open_with(keyword, one.store().clone(), 1);
        let b = open_with(keyword, one.store().clone(), 2);
        for q in queries() {
            assert_eq!(hits(&b, &q), hits(&a, &q), "{q:?}");
        }
    }
}

/// Only 1 and 2 write threads are accepted; anything else is refused by name.
#[test]
fn write_threads_other_than_one_or_two_are_refused() {
    for n in [0, 3, 64] {
        let err = block_on(
            Memory::builder(Arc::new(ManualClock::default()))
                .write_threads(n)
                .open(),
        )
        .unwrap_err();
        match err {
            MemoryError::InvalidInput { field, detail } => {
                assert_eq!(field, "write_threads");
                assert!(detail.contains(&n.to_string()), "{detail}");
            }
            other => panic!("{other}"),
        }
    }
}

/// A store failure part-way through a batch: the records before it are stored, indexed
/// (recall finds them, with the scores single writes give) and counted; the failing one and
/// those after it are nowhere. On one thread, and on two with enough stored before the
/// failure (300) for the keyword postings to go to the second thread.
#[test]
fn a_store_failure_mid_batch_leaves_the_index_matching_the_store() {
    for (n, fail_at, threads) in [(40, 17, 1), (500, 300, 2)] {
        let texts = texts(n, 9);
        let faults = Faults::new(FaultPlan::none());
        let store = Arc::new(FaultyMemoryStore::new(
            InMemoryMemoryStore::new(),
            faults.clone(),
        ));
        let m = open_with(KeywordOptions::default(), store.clone(), threads);
        // each record with an id is looked up (one call) and then put (one call): call
        // 2 * i + 2 is the put of record i
        faults.set_plan(FaultPlan::fail_nth(2 * fail_at as u64 + 2));
        let err = block_on(m.remember_many(records(&texts, 3))).unwrap_err();
        match &err {
            MemoryError::Batch { index, written, .. }
                if *index == fail_at && *written == fail_at => {}
            other => panic!("{other}"),
        }
        faults.set_plan(FaultPlan::none());
        assert_eq!(store.inner().len(), fail_at);
        assert_eq!(m.len(), fail_at);
        let reference = open(
            KeywordOptions::default(),
            Arc::new(InMemoryMemoryStore::new()),
        );
        block_on(async {
            for r in records(&texts, 3).into_iter().take(fail_at) {
                reference.remember(r).await.unwrap();
            }
        });
        for q in queries() {
            assert_eq!(hits(&m, &q), hits(&reference, &q), "{q:?}");
        }
        // repeating the batch finishes the work
        assert_eq!(
            block_on(m.remember_many(records(&texts, 3))).unwrap().len(),
            n
        );
        assert_eq!(m.len(), n);
        assert!(block_on(m.verify()).unwrap().is_intact());
    }
}

/// An audit failure part-way: the record whose entry failed is stored and indexed (as a
/// single write leaves it) but not counted as written; a repeat audits it and finishes.
#[test]
fn an_audit_failure_mid_batch_indexes_what_was_stored() {
    let texts = texts(30, 11);
    let faults = Faults::new(FaultPlan::none());
    let log = Arc::new(FaultyAuditLog::new(InMemoryAuditLog::new(), faults.clone()));
    let store = Arc::new(InMemoryMemoryStore::new());
    let m = block_on(
        Memory::builder(Arc::new(ManualClock::default()))
            .store(store.clone())
            .audit(log)
            .open(),
    )
    .unwrap();
    faults.set_plan(FaultPlan::fail_nth(6));
    let err = block_on(m.remember_many(records(&texts, 4))).unwrap_err();
    let index = match &err {
        MemoryError::Batch { index, written, .. } => {
            assert_eq!(index, written);
            *index
        }
        other => panic!("{other}"),
    };
    faults.set_plan(FaultPlan::none());
    // stored: the ones before and the one whose audit failed, and the index agrees
    assert_eq!(store.len(), index + 1);
    assert_eq!(m.len(), index + 1);
    let all = RecallQuery::text(WORDS.join(" "))
        .mode(RecallMode::Keyword)
        .k(100);
    // every text has a word of the query
    assert_eq!(hits(&m, &all).len(), index + 1);
    assert_eq!(
        block_on(m.remember_many(records(&texts, 4))).unwrap().len(),
        30
    );
    assert_eq!(m.len(), 30);
}

/// An invalid record at the end of a large batch, with two write threads (the batch's terms
/// already being found on the second thread when it is refused): the call fails naming the
/// record and field, and nothing is written, stored or indexed; the same batch without it
/// then writes in full, indexed as on one thread.
#[test]
fn an_invalid_record_in_a_two_thread_batch_writes_nothing() {
    let texts = texts(300, 21);
    let store = Arc::new(InMemoryMemoryStore::new());
    let two = open_with(KeywordOptions::default(), store.clone(), 2);
    let mut batch = records(&texts, 5);
    let last = batch.pop().unwrap();
    let mut bad = last.clone();
    bad.content = "   ".into();
    batch.push(bad);
    let err = block_on(two.remember_many(batch.clone())).unwrap_err();
    match &err {
        MemoryError::Batch {
            index,
            written,
            source,
        } => {
            assert_eq!((*index, *written), (299, 0), "{err}");
            assert!(
                matches!(&**source, MemoryError::InvalidInput { field, .. } if *field == "content"),
                "{source}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(two.len(), 0);
    assert_eq!(store.len(), 0);
    for q in queries() {
        assert!(hits(&two, &q).is_empty(), "{q:?}");
    }
    batch.pop();
    batch.push(last);
    block_on(two.remember_many(batch.clone())).unwrap();
    let one = open_with(
        KeywordOptions::default(),
        Arc::new(InMemoryMemoryStore::new()),
        1,
    );
    block_on(one.remember_many(batch)).unwrap();
    for q in queries() {
        assert_eq!(hits(&two, &q), hits(&one, &q), "{q:?}");
    }
}

// ---- batches that hold their vectors once ---------------------------------------------

/// The dimensions of the shared-vector tests: a block of 120 KiB holds 80 such rows, so a
/// batch of 1,000 spans 13 blocks.
const WIDE: usize = 384;

/// Records without ids (the batches whose vectors are gathered into shared blocks), each
/// text made unique by its number, with `WIDE`-dimension vectors.
fn fresh_records(texts: &[String], seed: u64) -> Vec<NewMemory> {
    let mut rng = SeededRng::new(seed);
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v: Vec<f32> = (0..WIDE).map(|_| rng.next_f64() as f32 - 0.5).collect();
            NewMemory::new(
                Scope::parse(["org/a", "org/b"][i % 2]).unwrap(),
                Tier::ALL[i % 3],
                format!("{t} n{i}"),
                Principal::System,
            )
            .embedding(v)
        })
        .collect()
}

fn wide_queries() -> Vec<RecallQuery> {
    let mut rng = SeededRng::new(78);
    let mut out = Vec::new();
    for _ in 0..8 {
        let v: Vec<f32> = (0..WIDE).map(|_| rng.next_f64() as f32 - 0.5).collect();
        out.push(
            RecallQuery::vector(v.clone())
                .mode(RecallMode::Vector)
                .k(20),
        );
        out.push(
            RecallQuery::text("paid invoice friday")
                .with_vector(v)
                .in_scope(Scope::parse("org/a").unwrap())
                .k(20),
        );
    }
    out
}

/// `(content, total score)` of every hit, bit for bit (the ids of records written without
/// one differ between memories).
fn content_hits(m: &Memory, q: &RecallQuery) -> Vec<(String, u32)> {
    block_on(m.recall(q))
        .unwrap()
        .into_iter()
        .map(|h| (h.record.content, h.score.total.to_bits()))
        .collect()
}

/// Batches of new records (no ids) hold each vector once: the records returned, the store's
/// records and the index view the same floats, in blocks, one row after another. They
/// recall exactly as one `remember` per record does (same hits, same order, same scores), on
/// one write thread and two, in batches below the sharing size (255) and above it, after
/// single writes, and after a rebuild from the store; every checksum still verifies and the
/// floats read back are the ones written.
#[test]
fn batches_of_new_records_hold_their_vectors_once_and_recall_like_single_writes() {
    let texts = texts(2000, 31);
    let single = open(
        KeywordOptions::default(),
        Arc::new(InMemoryMemoryStore::new()),
    );
    block_on(async {
        for r in fresh_records(&texts, 6) {
            single.remember(r).await.unwrap();
        }
    });
    for threads in [1, 2] {
        let store = Arc::new(InMemoryMemoryStore::new());
        let m = open_with(KeywordOptions::default(), store.clone(), threads);
        let all = fresh_records(&texts, 6);
        block_on(async {
            let mut rest = all.clone().into_iter();
            for r in rest.by_ref().take(5) {
                m.remember(r).await.unwrap();
            }
            for size in [1000, 255, 256, 484] {
                let batch: Vec<NewMemory> = rest.by_ref().take(size).collect();
                let written = m.remember_many(batch.clone()).await.unwrap();
                assert_eq!(written.len(), size);
                for (i, (w, (new, next))) in written
                    .iter()
                    .zip(batch.iter().zip(written.iter().skip(1)))
                    .enumerate()
                {
                    let e = w.embedding.as_ref().unwrap();
                    assert_eq!(
                        &e[..],
                        &new.embedding.as_ref().unwrap()[..],
                        "the floats written"
                    );
                    let stored = store.get(w.id, None).await.unwrap();
                    let s = stored.embedding.as_ref().unwrap();
                    if size >= 256 {
                        assert!(
                            std::ptr::eq(s.as_ptr(), e.as_ptr()),
                            "the store's record and the one returned share the vector"
                        );
                        // within a block of 80 rows, the next record's row follows this one's
                        let n = next.embedding.as_ref().unwrap();
                        if i % 80 != 79 {
                            assert_eq!(
                                n.as_ptr() as usize,
                                e.as_ptr() as usize + WIDE * 4,
                                "rows {i} and {} of a batch of {size} are adjacent",
                                i + 1
                            );
                        }
                    }
                }
            }
        });
        assert_eq!(m.len(), 2000);
        for q in wide_queries() {
            let want = content_hits(&single, &q);
            assert!(!want.is_empty(), "{q:?}");
            assert_eq!(content_hits(&m, &q), want, "{threads} threads: {q:?}");
        }
        assert!(block_on(m.verify()).unwrap().is_intact());
        let reopened = open(KeywordOptions::default(), store.clone());
        for q in wide_queries() {
            assert_eq!(
                content_hits(&reopened, &q),
                content_hits(&single, &q),
                "{q:?}"
            );
        }
    }
}

/// A store failure part-way through a batch of new records: the ones stored before it are
/// indexed from their shared blocks (recall equals single writes of just those), the rest
/// of their blocks is never read, and later writes, single and batched, land after them.
#[test]
fn a_store_failure_mid_batch_of_shared_vectors_indexes_what_was_stored() {
    let texts = texts(700, 41);
    let faults = Faults::new(FaultPlan::none());
    let store = Arc::new(FaultyMemoryStore::new(
        InMemoryMemoryStore::new(),
        faults.clone(),
    ));
    let m = open_with(KeywordOptions::default(), store.clone(), 1);
    let all = fresh_records(&texts, 8);
    // a record without an id is one put: call 301 is the put of record 300 (in the fifth
    // block of 80 rows, part-way)
    faults.set_plan(FaultPlan::fail_nth(301));
    let err = block_on(m.remember_many(all.get(..500).unwrap().to_vec())).unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::Batch {
                index: 300,
                written: 300,
                ..
            }
        ),
        "{err}"
    );
    faults.set_plan(FaultPlan::none());
    assert_eq!(m.len(), 300);
    block_on(async {
        m.remember(all.get(500).unwrap().clone()).await.unwrap();
        m.remember_many(all.get(501..).unwrap().to_vec())
            .await
            .unwrap();
    });
    let reference = open(
        KeywordOptions::default(),
        Arc::new(InMemoryMemoryStore::new()),
    );
    block_on(async {
        for r in all
            .get(..300)
            .unwrap()
            .iter()
            .chain(all.get(500..).unwrap())
        {
            reference.remember(r.clone()).await.unwrap();
        }
    });
    assert_eq!(m.len(), 500);
    for q in wide_queries() {
        assert_eq!(content_hits(&m, &q), content_hits(&reference, &q), "{q:?}");
    }
    assert!(block_on(m.verify()).unwrap().is_intact());
}
