//! The [`MemoryStore`] contract as executable checks.
//!
//! Test-support code: a violation panics, like `assert!`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aios_core::{Clock, IdGen, ManualClock, MemoryId, Principal, StoreError, Timestamp};

use crate::{
    MemoryKind, MemoryRecord, MemoryStore, Metadata, Provenance, Scope, Tier, MEMORY_SCHEMA_VERSION,
};

/// A sealed record version for tests: `content` in scope `org/test`, with a small embedding
/// and metadata, linked to `prev` when given.
pub fn sample_record(
    id: MemoryId,
    version: u32,
    content: &str,
    recorded_at: Timestamp,
    prev: Option<&MemoryRecord>,
) -> MemoryRecord {
    let mut r = MemoryRecord {
        schema: MEMORY_SCHEMA_VERSION,
        id,
        version,
        scope: Scope::parse("org/test").unwrap(),
        tier: Tier::Project,
        kind: MemoryKind::Fact,
        content: content.to_owned(),
        embedding: Some(vec![version as f32, 0.5, -1.25, 3.0e-7].into()),
        metadata: Metadata::from([("n".to_string(), serde_json::json!(version))]),
        provenance: Provenance::by(Principal::System),
        valid_from: None,
        valid_to: None,
        recorded_at,
        retired_at: None,
        importance: 0.5,
        pinned: false,
        expires_at: None,
        tombstone: None,
        prev_checksum: prev.map(|p| p.checksum.clone()),
        checksum: String::new(),
    };
    r.seal();
    r
}

fn is_not_found<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound { .. }))
}

/// The [`MemoryStore`] contract. `make` returns a fresh, empty store each time it is called.
pub async fn memory_store_conformance<S: MemoryStore, F: Fn() -> S>(make: F) {
    let clock = ManualClock::default();
    let ids = IdGen::new(clock.clone(), 11);
    let tick = |c: &ManualClock| {
        c.advance(Duration::from_millis(5));
        c.now()
    };

    // an empty store
    let store = make();
    let nobody: MemoryId = ids.next();
    assert!(
        store.scan(None, 10).await.unwrap().is_empty(),
        "an empty store scans nothing"
    );
    assert!(
        is_not_found(&store.get(nobody, None).await),
        "get of a missing lineage"
    );
    assert!(
        is_not_found(&store.versions(nobody).await),
        "versions of a missing lineage"
    );
    assert!(
        is_not_found(&store.delete(nobody).await),
        "delete of a missing lineage"
    );

    // create
    let id: MemoryId = ids.next();
    let v1 = sample_record(id, 1, "first", tick(&clock), None);
    store.put(v1.clone(), None).await.unwrap();
    assert_eq!(
        store.get(id, None).await.unwrap(),
        v1,
        "latest round-trips exactly"
    );
    assert_eq!(
        store.get(id, Some(1)).await.unwrap(),
        v1,
        "a version round-trips"
    );
    assert!(
        is_not_found(&store.get(id, Some(2)).await),
        "a missing version"
    );

    // create again: refused, nothing changed
    let again = sample_record(id, 1, "again", tick(&clock), None);
    assert!(
        matches!(
            store.put(again, None).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "creating an existing lineage is AlreadyExists"
    );
    assert_eq!(
        store.versions(id).await.unwrap(),
        vec![v1.clone()],
        "unchanged after refusal"
    );

    // a new lineage must start at version 1
    let other: MemoryId = ids.next();
    let bad = sample_record(other, 2, "bad", tick(&clock), None);
    assert!(
        matches!(store.put(bad, None).await, Err(StoreError::Conflict { .. })),
        "a new lineage at version 2 is a conflict"
    );
    assert!(
        is_not_found(&store.get(other, None).await),
        "nothing written"
    );

    // a version of a missing lineage
    let bad = sample_record(other, 2, "bad", tick(&clock), None);
    assert!(
        matches!(
            store.put(bad, Some(1)).await,
            Err(StoreError::Conflict { .. })
        ),
        "appending to a missing lineage is a conflict"
    );

    // wrong expectations
    let v3 = sample_record(id, 3, "third", tick(&clock), Some(&v1));
    assert!(
        matches!(
            store.put(v3, Some(1)).await,
            Err(StoreError::Conflict { .. })
        ),
        "skipping a version is a conflict"
    );
    let v2 = sample_record(id, 2, "second", tick(&clock), Some(&v1));
    assert!(
        matches!(
            store.put(v2.clone(), Some(2)).await,
            Err(StoreError::Conflict { .. })
        ),
        "a stale expectation is a conflict"
    );
    assert_eq!(
        store.versions(id).await.unwrap(),
        vec![v1.clone()],
        "unchanged after conflicts"
    );

    // supersede
    store.put(v2.clone(), Some(1)).await.unwrap();
    let history = store.versions(id).await.unwrap();
    assert_eq!(history.len(), 2, "both versions kept");
    assert_eq!(history[0].version, 1);
    assert_eq!(
        history[0].retired_at,
        Some(v2.recorded_at),
        "the previous version is retired when the next is recorded"
    );
    assert_eq!(history[1], v2, "the new version is stored as given");
    assert_eq!(
        store.get(id, None).await.unwrap(),
        v2,
        "latest is the new version"
    );
    assert_eq!(store.get(id, Some(1)).await.unwrap().content, "first");
    // get_with: the same record, the embedding only when asked
    for version in [None, Some(1), Some(2)] {
        let full = store.get(id, version).await.unwrap();
        assert_eq!(
            store
                .get_with(id, version, crate::GetOptions::with_embedding())
                .await
                .unwrap(),
            full,
            "get_with an embedding is get"
        );
        let light = store
            .get_with(id, version, crate::GetOptions::default())
            .await
            .unwrap();
        assert_eq!(
            light,
            MemoryRecord {
                embedding: None,
                ..full
            },
            "get_with leaves out only the embedding"
        );
    }
    assert!(is_not_found(
        &store
            .get_with(id, Some(9), crate::GetOptions::default())
            .await
    ));
    let v2b = sample_record(id, 2, "racing", tick(&clock), Some(&v1));
    assert!(
        matches!(
            store.put(v2b, Some(1)).await,
            Err(StoreError::Conflict { .. })
        ),
        "a second writer with the same expectation loses"
    );
    assert_eq!(
        store.versions(id).await.unwrap(),
        history,
        "the loser changed nothing"
    );

    // scan pages: ascending ids, whole lineages, every version in order
    let store = make();
    let mut made: Vec<MemoryId> = (0..10).map(|_| ids.next()).collect();
    for (i, id) in made.iter().enumerate().rev() {
        let mut prev = sample_record(*id, 1, &format!("lineage {i}"), tick(&clock), None);
        store.put(prev.clone(), None).await.unwrap();
        for v in 2..=(i as u32 % 3 + 1) {
            let next = sample_record(
                *id,
                v,
                &format!("lineage {i} v{v}"),
                tick(&clock),
                Some(&prev),
            );
            store.put(next.clone(), Some(v - 1)).await.unwrap();
            prev = next;
        }
    }
    made.sort();
    let mut seen: Vec<(MemoryId, u32)> = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.scan(after, 3).await.unwrap();
        let Some(last) = page.last() else { break };
        pages += 1;
        let lineages: std::collections::BTreeSet<MemoryId> = page.iter().map(|r| r.id).collect();
        assert!(lineages.len() <= 3, "a page holds at most `limit` lineages");
        after = Some(last.id);
        seen.extend(page.iter().map(|r| (r.id, r.version)));
    }
    assert_eq!(pages, 4, "10 lineages in pages of 3");
    let mut want = Vec::new();
    for id in &made {
        for r in store.versions(*id).await.unwrap() {
            want.push((*id, r.version));
        }
    }
    assert_eq!(seen, want, "scan yields every version, by id then version");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "scan is ordered");

    // delete removes the lineage with every version
    let gone = made[4];
    store.delete(gone).await.unwrap();
    assert!(
        is_not_found(&store.versions(gone).await),
        "deleted lineage has no versions"
    );
    assert!(
        is_not_found(&store.get(gone, Some(1)).await),
        "deleted versions are gone"
    );
    assert!(
        is_not_found(&store.delete(gone).await),
        "deleting twice is NotFound"
    );
    let rest = store.scan(None, 100).await.unwrap();
    assert!(
        rest.iter().all(|r| r.id != gone),
        "scan skips the deleted lineage"
    );
    assert_eq!(
        rest.iter()
            .map(|r| r.id)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        9
    );
    // the id can be used again after a delete
    store
        .put(sample_record(gone, 1, "reborn", tick(&clock), None), None)
        .await
        .unwrap();
    assert_eq!(store.get(gone, None).await.unwrap().content, "reborn");
}
