//! `verify` catches every kind of tampering on a chain of thousands of events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aios_core::{
    AgentId, AuditEntry, AuditEvent, AuditRecord, ChainProblem, IdGen, InMemoryAuditLog,
    ManualClock, Outcome, Principal, RunId, TaskId,
};
use proptest::prelude::*;

const N: usize = 5_000;

fn chain() -> (InMemoryAuditLog, aios_core::ChainHead) {
    let ids = IdGen::new(ManualClock::default(), 1);
    let log = InMemoryAuditLog::new();
    let run: RunId = ids.next();
    let mut head = Default::default();
    for i in 0..N {
        let task: TaskId = ids.next();
        let event = if i % 2 == 0 {
            AuditEvent::TaskFinished {
                run,
                task,
                outcome: Outcome::Succeeded,
                detail: Some(format!("step {i}")),
            }
        } else {
            AuditEvent::Note {
                text: format!("note {i}"),
            }
        };
        let agent: AgentId = ids.next();
        head = log
            .append_sync(AuditRecord::new(Principal::Agent(agent), event))
            .unwrap();
    }
    (log, head)
}

fn reseal_from(entries: &mut [AuditEntry], from: usize) {
    for i in from..entries.len() {
        let prev = if i == 0 {
            aios_core::EntryHash::GENESIS
        } else {
            entries[i - 1].hash
        };
        let e = &entries[i];
        let rec = AuditRecord {
            at: e.at,
            actor: e.actor,
            event: e.event.clone(),
        };
        entries[i] = AuditEntry::seal(e.seq, prev, rec).unwrap();
    }
}

type Tamper = fn(&mut Vec<AuditEntry>);
type Check = fn(&[ChainProblem]) -> bool;

#[test]
fn each_kind_of_tampering_is_detected() {
    let cases: Vec<(&str, Tamper, Check, bool)> = vec![
        (
            "changed content",
            |e| {
                e[1234].event = AuditEvent::Note {
                    text: "forged".into(),
                }
            },
            |p| p.contains(&ChainProblem::ContentChanged { seq: 1234 }),
            false,
        ),
        (
            "changed actor",
            |e| e[10].actor = Principal::System,
            |p| p.contains(&ChainProblem::ContentChanged { seq: 10 }),
            false,
        ),
        (
            "changed content with its hash recomputed",
            |e| {
                e[2000].event = AuditEvent::Note {
                    text: "forged".into(),
                };
                let prev = e[1999].hash;
                let x = &e[2000];
                e[2000] = AuditEntry::seal(
                    x.seq,
                    prev,
                    AuditRecord {
                        at: x.at,
                        actor: x.actor,
                        event: x.event.clone(),
                    },
                )
                .unwrap();
            },
            |p| p.contains(&ChainProblem::BrokenLink { seq: 2001 }),
            false,
        ),
        (
            "removed entry",
            |e| {
                e.remove(500);
            },
            |p| {
                p.contains(&ChainProblem::BrokenLink { seq: 501 })
                    && p.iter()
                        .any(|x| matches!(x, ChainProblem::SequenceGap { .. }))
            },
            false,
        ),
        (
            "removed entry with sequence renumbered",
            |e| {
                e.remove(700);
                for (i, x) in e.iter_mut().enumerate().skip(700) {
                    x.seq = i as u64;
                }
            },
            |p| {
                p.iter()
                    .any(|x| matches!(x, ChainProblem::ContentChanged { seq: 700 }))
            },
            false,
        ),
        (
            "reordered entries",
            |e| e.swap(100, 101),
            |p| {
                p.iter()
                    .any(|x| matches!(x, ChainProblem::SequenceGap { .. }))
                    && p.iter()
                        .any(|x| matches!(x, ChainProblem::BrokenLink { .. }))
            },
            false,
        ),
        (
            "inserted entry",
            |e| {
                let prev = e[299].hash;
                let forged = AuditEntry::seal(
                    300,
                    prev,
                    AuditRecord::new(
                        Principal::System,
                        AuditEvent::Note {
                            text: "inserted".into(),
                        },
                    ),
                )
                .unwrap();
                e.insert(300, forged);
            },
            |p| {
                p.iter().any(|x| {
                    matches!(
                        x,
                        ChainProblem::BrokenLink { seq: 300 } | ChainProblem::SequenceGap { .. }
                    )
                })
            },
            false,
        ),
        (
            "truncated tail",
            |e| e.truncate(N - 10),
            |p| {
                p.contains(&ChainProblem::Truncated {
                    anchored: N as u64,
                    found: (N - 10) as u64,
                })
            },
            true,
        ),
        (
            "tail rewritten consistently",
            |e| {
                e[4000].event = AuditEvent::Note {
                    text: "rewritten".into(),
                };
                reseal_from(e, 4000);
            },
            |p| {
                p.contains(&ChainProblem::AnchorMismatch {
                    seq: (N - 1) as u64,
                })
            },
            true,
        ),
        (
            "unknown future version",
            |e| e[42].v = 99,
            |p| {
                p.contains(&ChainProblem::UnsupportedVersion {
                    seq: 42,
                    version: 99,
                })
            },
            false,
        ),
    ];
    let (pristine, _) = chain();
    let pristine = pristine.tamper(|e| e.clone());
    for (name, tamper, expected, needs_anchor) in cases {
        let log = InMemoryAuditLog::new();
        log.tamper(|e| *e = pristine.clone());
        let head = log.verify_sync(None).head;
        assert!(
            log.verify_sync(Some(head)).is_intact(),
            "{name}: pristine chain verifies"
        );
        log.tamper(tamper);
        let report = log.verify_sync(Some(head));
        assert!(!report.is_intact(), "{name}: not detected");
        assert!(
            expected(&report.problems),
            "{name}: unexpected findings {:?}",
            report.problems
        );
        if !needs_anchor {
            assert!(
                !log.verify_sync(None).is_intact(),
                "{name}: detected even without an anchor"
            );
        }
    }
}

#[test]
fn entries_round_trip_through_json_and_still_verify() {
    let (log, head) = chain();
    let entries = log.tamper(|e| e.clone());
    let json: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let back: Vec<AuditEntry> = json
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert!(aios_core::verify_chain(&back, Some(head)).is_intact());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_single_edit_is_detected(idx in 0usize..300, kind in 0u8..4, text in "[a-z]{1,8}") {
        let log = InMemoryAuditLog::new();
        for i in 0..300 {
            log.append_sync(AuditRecord::new(Principal::System, AuditEvent::Note { text: format!("n{i}") })).unwrap();
        }
        let head = log.verify_sync(None).head;
        log.tamper(|e| match kind {
            0 => e[idx].event = AuditEvent::Note { text: format!("{text}!") },
            1 => { e.remove(idx); }
            2 => { let j = (idx + 1) % e.len(); e.swap(idx, j); }
            _ => { let x = e[idx].clone(); e.insert(idx, x); }
        });
        prop_assert!(!log.verify_sync(Some(head)).is_intact());
    }
}

#[test]
fn reads_cross_chunk_boundaries_in_order() {
    use aios_core::AuditLog;
    let log = InMemoryAuditLog::new();
    for i in 0..10_000 {
        log.append_sync(AuditRecord::new(
            Principal::System,
            AuditEvent::Note {
                text: format!("n{i}"),
            },
        ))
        .unwrap();
    }
    for (from, limit) in [
        (0usize, 10_000usize),
        (4090, 20),
        (4096, 1),
        (8191, 3),
        (9_990, 50),
    ] {
        let page = futures::executor::block_on(log.read(from as u64, limit)).unwrap();
        let want: Vec<u64> = (from as u64..(from + limit).min(10_000) as u64).collect();
        assert!(page.iter().all(|e| e.entry().is_some()));
        assert_eq!(
            page.iter()
                .map(aios_core::StoredEntry::seq)
                .collect::<Vec<_>>(),
            want,
            "read({from}, {limit})"
        );
    }
    assert_eq!(log.len(), 10_000);
    assert!(log.verify_sync(None).is_intact());
}

#[test]
fn an_entry_of_a_newer_version_is_reported_by_position_and_the_rest_still_reads() {
    use aios_core::{AuditLog, AuditLogExt, StoreError, StoredEntry};
    use futures::executor::block_on;
    let log = InMemoryAuditLog::new();
    for i in 0..20 {
        log.append_sync(AuditRecord::new(
            Principal::System,
            AuditEvent::Note {
                text: format!("n{i}"),
            },
        ))
        .unwrap();
    }
    let head = log.verify_sync(None).head;
    log.tamper(|e| e[7].v = 99);

    // reading returns every position: the readable entries, and a finding for seq 7
    let page = block_on(log.read(0, 100)).unwrap();
    assert_eq!(page.len(), 20);
    assert_eq!(
        page.iter().map(StoredEntry::seq).collect::<Vec<_>>(),
        (0..20).collect::<Vec<u64>>()
    );
    for (i, slot) in page.iter().enumerate() {
        match slot {
            StoredEntry::Unreadable(u) => {
                assert_eq!(i, 7, "only seq 7 is unreadable");
                assert_eq!((u.seq, u.version), (7, 99));
            }
            StoredEntry::Entry(e) => assert_eq!(
                e.event,
                AuditEvent::Note {
                    text: format!("n{i}")
                }
            ),
        }
    }

    // verification names that entry and nothing else: the links before and after it hold
    let report = block_on(log.verify(Some(head))).unwrap();
    assert_eq!(
        report.problems,
        vec![ChainProblem::UnsupportedVersion {
            seq: 7,
            version: 99
        }]
    );
    assert_eq!(report.checked, 20);
    assert_eq!(log.verify_sync(Some(head)).problems, report.problems);

    // and a change after the unreadable entry is still caught
    log.tamper(|e| {
        e[12].event = AuditEvent::Note {
            text: "forged".into(),
        }
    });
    let report = block_on(log.verify(Some(head))).unwrap();
    assert_eq!(
        report.problems,
        vec![
            ChainProblem::UnsupportedVersion {
                seq: 7,
                version: 99
            },
            ChainProblem::ContentChanged { seq: 12 },
        ]
    );

    // a caller that needs every entry is told which one it cannot have
    let err = block_on(log.entries()).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::UnsupportedVersion {
                found: 99,
                supported: 1,
                location,
            } if location.contains("audit entry 7")
        ),
        "{err:?}"
    );
}

fn key(byte: u8) -> aios_core::AuditKey {
    aios_core::AuditKey::from_bytes(&[byte; 32]).unwrap()
}

#[test]
fn an_entry_appended_without_the_key_passes_the_chain_but_not_the_keyed_check() {
    let log = InMemoryAuditLog::with_key(key(7));
    for i in 0..100 {
        log.append_sync(AuditRecord::new(
            Principal::System,
            AuditEvent::Note {
                text: format!("n{i}"),
            },
        ))
        .unwrap();
    }
    assert!(
        log.verify_sync_keyed(None, &key(7)).is_intact(),
        "honest entries verify"
    );
    assert!(log.tamper(|e| e.iter().all(|e| e.mac.is_some())));

    // an attacker with write access but no key appends a correctly chained entry
    log.tamper(|e| {
        let prev = e[99].hash;
        let forged = AuditEntry::seal(
            100,
            prev,
            AuditRecord::new(
                Principal::System,
                AuditEvent::Note {
                    text: "forged".into(),
                },
            ),
        )
        .unwrap();
        e.push(forged);
    });
    assert!(
        log.verify_sync(None).is_intact(),
        "the hash chain alone cannot tell"
    );
    assert_eq!(
        log.verify_sync_keyed(None, &key(7)).problems,
        vec![ChainProblem::MacMissing { seq: 100 }]
    );
    // one with a MAC made under another key is just as visible
    log.tamper(|e| {
        let prev = e[100].hash;
        let forged = AuditEntry::seal_keyed(
            101,
            prev,
            AuditRecord::new(
                Principal::System,
                AuditEvent::Note {
                    text: "forged too".into(),
                },
            ),
            &key(8),
        )
        .unwrap();
        e.push(forged);
    });
    assert!(log.verify_sync(None).is_intact());
    assert_eq!(
        log.verify_sync_keyed(None, &key(7)).problems,
        vec![
            ChainProblem::MacMissing { seq: 100 },
            ChainProblem::MacMismatch { seq: 101 }
        ]
    );
    // the wrong key fails from the first entry on
    let wrong = log.verify_sync_keyed(None, &key(9));
    assert_eq!(wrong.problems[0], ChainProblem::MacMismatch { seq: 0 });
    assert_eq!(wrong.problems.len(), 102);
    // the async form and the one-shot function agree
    let entries = log.tamper(|e| e.clone());
    let one_shot = aios_core::verify_chain_keyed(&entries, None, &key(7));
    let via_port =
        futures::executor::block_on(aios_core::AuditLogExt::verify_keyed(&log, None, &key(7)))
            .unwrap();
    assert_eq!(one_shot.problems, via_port.problems);
    assert_eq!(one_shot.problems.len(), 2);
}

#[test]
fn an_unkeyed_log_fails_keyed_verification_and_a_key_stays_secret() {
    let log = InMemoryAuditLog::new();
    log.append_sync(AuditRecord::new(
        Principal::System,
        AuditEvent::Note { text: "n".into() },
    ))
    .unwrap();
    assert_eq!(
        log.verify_sync_keyed(None, &key(1)).problems,
        vec![ChainProblem::MacMissing { seq: 0 }]
    );
    let debug = format!("{:?}", key(0xAB));
    assert!(!debug.contains("ab") && !debug.contains("171"), "{debug}");
    assert!(matches!(
        aios_core::AuditKey::from_bytes(b"short"),
        Err(aios_core::AuditKeyError::TooShort { len: 5, .. })
    ));
}
