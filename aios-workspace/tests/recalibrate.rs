//! Recalibration: suggestions cite their evidence, never go beyond the charter (property
//! test), and accepting one publishes version N+1 with its diff and who accepted it.

use aios_core::Money;
use aios_governance::{ChangeKind, FindingKind, GovernanceModel};
use aios_workspace::{
    accept, suggest, Direction, Dur, Evidence, OpsReport, ProposedChange, RecalibrationPolicy,
    Stats, Targets,
};
use proptest::prelude::*;

fn model(
    charter_amount: Option<i64>,
    charter_cost: Option<i64>,
    limit_amount: Option<i64>,
    threshold: i64,
    cost_threshold: i64,
) -> GovernanceModel {
    let mut b = String::new();
    if let Some(a) = charter_amount {
        b.push_str(&format!("max_amount_per_action = {a}\n"));
    }
    if let Some(c) = charter_cost {
        b.push_str(&format!("max_cost_per_action = {c}\n"));
    }
    let limit = limit_amount.map_or(String::new(), |l| format!(", max_amount_per_action = {l}"));
    let text = format!(
        r#"
version = 3
[charter]
intent = "pay suppliers"
final_authority = "owner"
[charter.boundaries]
{b}
[[anchors]]
key = "owner"
title = "Owner"
holders = ["ann"]
response_time = "4h"
[[roles]]
key = "books"
[[pathways]]
key = "pay"
anchor = "owner"
delegate = "books"
limits = {{ actions = ["bank.pay"], effects = ["irreversible"]{limit} }}
escalation = [
  {{ name = "big", when = {{ amount_above = {threshold} }}, mode = "approve_before" }},
  {{ name = "pricey", when = {{ cost_above = {cost_threshold} }}, mode = "approve_before" }},
]
"#
    );
    GovernanceModel::from_toml(&text).unwrap_or_else(|e| unreachable!("{e}\n{text}"))
}

fn evidence(count: u64, first: u64) -> Evidence {
    Evidence {
        count,
        seqs: (first..first + count.min(64)).collect(),
    }
}

fn report(
    approved: u64,
    edited: u64,
    rejected: u64,
    expired: u64,
    actions: u64,
    failures: u64,
) -> OpsReport {
    let mut s = Stats::default();
    s.actions = actions;
    s.approved = evidence(approved, 1000);
    s.edited = evidence(edited, 2000);
    s.rejected = evidence(rejected, 3000);
    s.expired = evidence(expired, 4000);
    s.failures = evidence(failures, 5000);
    let mut r = OpsReport::default();
    r.pathways.insert("pay".into(), s);
    r
}

fn policy(min_evidence: u64, step: u32) -> RecalibrationPolicy {
    RecalibrationPolicy {
        min_evidence,
        window: Dur::parse("30d").unwrap_or_default(),
        max_step_percent: step,
    }
}

#[test]
fn always_approved_loosens_by_one_step_with_a_notify_band_and_cites_its_evidence() {
    let m = model(Some(100_000), None, Some(100_000), 20_000, 100);
    let r = report(30, 0, 0, 0, 40, 0);
    let s = suggest(&m, &r, &policy(20, 25), &Targets::default());
    let loosen: Vec<_> = s
        .iter()
        .filter(|s| s.direction == Direction::Loosen)
        .collect();
    assert_eq!(loosen.len(), 2, "{s:#?}");
    let big = loosen
        .iter()
        .find(|s| s.id == "pay/big/loosen")
        .unwrap_or_else(|| unreachable!());
    assert_eq!(
        big.change,
        ProposedChange::Raise {
            rule: "big".into(),
            threshold: aios_workspace::Threshold::AmountAbove,
            from: Money::from_minor(20_000),
            to: Money::from_minor(25_000)
        }
    );
    assert_eq!(big.evidence.first(), Some(&1000));
    assert_eq!(big.evidence_count, 30);

    let up = accept(&m, big, "ann", "she approved every payment")
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(up.model.version, 4);
    assert_eq!(up.diff.from_version, 3);
    assert_eq!(up.diff.to_version, 4);
    assert!(
        up.diff.of_kind(ChangeKind::Loosened).count() >= 1,
        "{}",
        up.diff
    );
    let entry = up
        .model
        .changelog
        .last()
        .cloned()
        .unwrap_or_else(|| unreachable!());
    assert_eq!(entry.author.as_deref(), Some("ann"));
    assert!(
        entry.summary.contains("pay/big/loosen") && entry.summary.contains("#1000"),
        "{}",
        entry.summary
    );
    let p = up
        .model
        .pathway("pay")
        .cloned()
        .unwrap_or_else(|| unreachable!());
    let notify = p
        .escalation
        .iter()
        .find(|r| r.name == "big-notify")
        .unwrap_or_else(|| unreachable!());
    assert_eq!(notify.mode, aios_governance::EscalationMode::NotifyAfter);
    assert_eq!(notify.when.amount_above, Some(Money::from_minor(20_000)));
    // accepting the same suggestion again is stale: the model moved on
    assert!(matches!(
        accept(&up.model, big, "ann", "again"),
        Err(aios_workspace::AcceptError::Stale { .. })
    ));
    assert!(matches!(
        accept(&m, big, " ", "nobody"),
        Err(aios_workspace::AcceptError::NoOne)
    ));
}

#[test]
fn an_edit_or_too_little_evidence_gives_no_loosening() {
    let m = model(None, None, None, 20_000, 100);
    assert!(suggest(
        &m,
        &report(30, 1, 0, 0, 40, 0),
        &policy(20, 25),
        &Targets::default()
    )
    .iter()
    .all(|s| s.direction != Direction::Loosen));
    assert!(suggest(
        &m,
        &report(19, 0, 0, 0, 40, 0),
        &policy(20, 25),
        &Targets::default()
    )
    .is_empty());
}

#[test]
fn rejections_and_failures_tighten() {
    let m = model(None, None, None, 20_000, 100);
    let s = suggest(
        &m,
        &report(10, 0, 8, 2, 40, 10),
        &policy(20, 50),
        &Targets::default(),
    );
    let lower = s
        .iter()
        .find(|s| s.id == "pay/big/tighten")
        .unwrap_or_else(|| unreachable!("{s:#?}"));
    assert_eq!(lower.direction, Direction::Tighten);
    assert!(
        matches!(lower.change, ProposedChange::Lower { to, .. } if to == Money::from_minor(10_000))
    );
    assert!(lower.evidence.contains(&3000) && lower.evidence.contains(&4000));
    let irr = s
        .iter()
        .find(|s| matches!(s.change, ProposedChange::ApproveIrreversible { .. }))
        .unwrap_or_else(|| unreachable!("{s:#?}"));
    let up = accept(&m, irr, "ann", "too many failures").unwrap_or_else(|e| unreachable!("{e}"));
    assert!(
        up.diff.of_kind(ChangeKind::Tightened).count() + up.diff.of_kind(ChangeKind::Added).count()
            >= 1,
        "{}",
        up.diff
    );
    // once the rule is there, it is not suggested again
    let again = suggest(
        &up.model,
        &report(10, 0, 0, 0, 40, 10),
        &policy(20, 50),
        &Targets::default(),
    );
    assert!(!again
        .iter()
        .any(|s| matches!(s.change, ProposedChange::ApproveIrreversible { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn accepted_suggestions_never_go_beyond_the_charter(
        charter_amount in prop::option::of(1i64..1_000_000),
        charter_cost in prop::option::of(1i64..10_000),
        limit_amount in prop::option::of(1i64..1_000_000),
        threshold in 0i64..1_000_000,
        cost_threshold in 0i64..10_000,
        approved in 0u64..100, edited in 0u64..3, rejected in 0u64..50, expired in 0u64..5,
        actions in 0u64..200, failures in 0u64..100,
        min_evidence in 1u64..50, step in 1u32..=100,
        rounds in 1usize..5,
    ) {
        let mut m = model(charter_amount, charter_cost, limit_amount, threshold, cost_threshold);
        let start = m.version;
        // keep accepting whatever is suggested, round after round
        for _ in 0..rounds {
            let r = report(approved, edited, rejected, expired, actions, failures);
            for s in suggest(&m, &r, &policy(min_evidence, step), &Targets::default()) {
                match &s.change {
                    ProposedChange::Raise { from, to, .. } => {
                        prop_assert!(to > from);
                        let most = (from.minor() as i128 * (100 + step as i128) / 100).max(from.minor() as i128 + 1);
                        prop_assert!(to.minor() as i128 <= most, "step too large: {from} -> {to}");
                        if let Some(c) = m.charter.boundaries.max_amount_per_action.filter(|_| matches!(s.change, ProposedChange::Raise { threshold: aios_workspace::Threshold::AmountAbove, .. })) {
                            prop_assert!(*to <= c);
                        }
                        if let Some(c) = m.charter.boundaries.max_cost_per_action.filter(|_| matches!(s.change, ProposedChange::Raise { threshold: aios_workspace::Threshold::CostAbove, .. })) {
                            prop_assert!(*to <= c);
                        }
                        prop_assert!(!s.evidence.is_empty());
                    }
                    ProposedChange::Lower { from, to, .. } => prop_assert!(to < from),
                    ProposedChange::ApproveIrreversible { .. } => {}
                }
                if let Ok(up) = accept(&m, &s, "ann", "accepted by the test") {
                    prop_assert_eq!(up.model.version, m.version + 1);
                    let report = up.model.validate();
                    prop_assert!(report.of_kind(FindingKind::ExceedsCharter).count() == 0, "{}", report);
                    m = up.model;
                }
            }
        }
        // every threshold of every rule is within the charter (for the thresholds that
        // started within it)
        let p = m.pathway("pay").cloned().unwrap_or_else(|| unreachable!());
        for r in &p.escalation {
            if let (Some(v), Some(c)) = (r.when.amount_above, m.charter.boundaries.max_amount_per_action) {
                prop_assert!(v <= c.max(Money::from_minor(threshold)), "{} at {v} above the charter's {c}", r.name);
            }
            if let (Some(v), Some(c)) = (r.when.cost_above, m.charter.boundaries.max_cost_per_action) {
                prop_assert!(v <= c.max(Money::from_minor(cost_threshold)), "{} at {v} above the charter's {c}", r.name);
            }
        }
        prop_assert_eq!(m.changelog.len() as u64, m.version - start);
    }
}
