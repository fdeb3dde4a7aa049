//! GOV-DECIDE, GOV-BUDGET and GOV-VALIDATE.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aios::core::{AgentId, EffectClass, ManualClock, Money, PathwayId, Principal, RoleId, RunId};
use aios::governance::{
    ActionRequest, Anchor, AutonomyLimits, Boundaries, Budget, BudgetChain, BudgetKey,
    BudgetLimits, BudgetScope, Charter, EscalationMode, EscalationRule, GovernanceModel, Governor,
    InMemoryBudgetLedger, Limits, ManifestRole, OnTimeoutSpec, Pathway, Period, ReserveOptions,
    Trigger, Usage, Verdict,
};

use crate::{percentile_us, sample, time, Config, Goal, Measurement};

/// A deterministic pseudo-random sequence (SplitMix64), so every run measures the same
/// requests.
#[derive(Debug, Clone)]
pub struct Mix(u64);

impl Mix {
    /// A sequence from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A model of `pathways` pathways with 3 escalation rules each, `anchors` anchors (each
/// with a holder, every tenth escalating to the next), 50 roles, an organisation budget and
/// one budget per role.
pub fn synthetic_model(pathways: usize, anchors: usize) -> GovernanceModel {
    let anchors = anchors.max(1);
    let roles = 50;
    GovernanceModel {
        schema: aios::governance::MODEL_SCHEMA_VERSION,
        version: 1,
        changelog: vec![],
        charter: Charter {
            intent: "benchmark organisation".into(),
            non_negotiables: vec![],
            boundaries: Boundaries {
                forbidden_actions: vec!["wire_money".into(), "delete_account".into()],
                max_effect: Some(EffectClass::Irreversible),
                max_cost_per_action: Some(Money::from_minor(1_000_000)),
                max_amount_per_action: None,
                max_risk: Some(95),
                min_confidence: Some(0.1),
            },
            final_authority: Some("anchor-0".into()),
        },
        anchors: (0..anchors)
            .map(|i| Anchor {
                key: format!("anchor-{i}"),
                title: format!("Anchor {i}"),
                holders: vec![format!("human-{i}")],
                deputy: Some(format!("human-{}", (i + 1) % anchors)),
                responsibilities: vec![],
                response_time: Duration::from_secs(3_600),
                escalates_to: (i % 10 == 9).then(|| format!("anchor-{}", (i + 1) % anchors)),
            })
            .collect(),
        roles: (0..roles)
            .map(|i| ManifestRole {
                key: format!("role-{i}"),
                description: String::new(),
            })
            .collect(),
        pathways: (0..pathways)
            .map(|i| Pathway {
                key: format!("pathway-{i}"),
                description: String::new(),
                anchor: Some(format!("anchor-{}", i % anchors)),
                delegate: Some(format!("role-{}", i % roles)),
                limits: AutonomyLimits {
                    actions: vec!["send".into(), "draft".into(), "read".into(), "book".into()],
                    effects: vec![
                        EffectClass::ReadOnly,
                        EffectClass::Reversible,
                        EffectClass::Irreversible,
                    ],
                    max_cost_per_action: Some(Money::from_minor(10_000)),
                    max_amount_per_action: None,
                    max_risk: Some(80),
                    min_confidence: Some(0.2),
                },
                escalation: vec![
                    EscalationRule {
                        name: "large-spend".into(),
                        when: Trigger {
                            cost_above: Some(Money::from_minor(5_000)),
                            ..Trigger::default()
                        },
                        route: None,
                        mode: EscalationMode::ApproveBefore,
                        deadline: Some(Duration::from_secs(1_800)),
                        on_timeout: OnTimeoutSpec::Deny,
                        allowed: vec![],
                    },
                    EscalationRule {
                        name: "risky-irreversible".into(),
                        when: Trigger {
                            risk_at_least: Some(60),
                            effect_at_least: Some(EffectClass::Irreversible),
                            ..Trigger::default()
                        },
                        route: Some(format!("anchor-{}", (i + 1) % anchors)),
                        mode: EscalationMode::Halt,
                        deadline: None,
                        on_timeout: OnTimeoutSpec::Deny,
                        allowed: vec![],
                    },
                    EscalationRule {
                        name: "vip".into(),
                        when: Trigger {
                            context_equals: BTreeMap::from([(
                                "vip".to_string(),
                                serde_json::Value::Bool(true),
                            )]),
                            ..Trigger::default()
                        },
                        route: None,
                        mode: EscalationMode::NotifyAfter,
                        deadline: None,
                        on_timeout: OnTimeoutSpec::Deny,
                        allowed: vec![],
                    },
                ],
            })
            .collect(),
        budgets: std::iter::once(Budget {
            key: "org".into(),
            scope: BudgetScope::Organisation,
            parent: None,
            period: Period::Month,
            limits: Limits {
                cost: Some(Money::from_minor(10_000_000)),
                ..Limits::default()
            },
            alerts: vec![50, 80, 100],
        })
        .chain((0..roles).map(|i| Budget {
            key: format!("budget-role-{i}"),
            scope: BudgetScope::Role(format!("role-{i}")),
            parent: None,
            period: Period::Month,
            limits: Limits {
                cost: Some(Money::from_minor(1_000_000)),
                ..Limits::default()
            },
            alerts: vec![50, 80, 100],
        }))
        .collect(),
    }
}

/// `n` distinct requests over a synthetic model of `pathways` pathways: mostly within the
/// delegation, some above thresholds, some risky, some for VIPs, a few malformed, unknown or
/// by the wrong role, so every branch of the decision is exercised.
pub fn requests(n: usize, pathways: usize) -> Vec<ActionRequest> {
    let mut mix = Mix::new(42);
    let actions = ["send", "draft", "read", "book", "delete", "wire_money"];
    (0..n)
        .map(|i| {
            let p = mix.below(pathways as u64) as usize;
            let role = (if mix.below(50) == 0 { p + 1 } else { p }) % 50;
            let pathway = if mix.below(100) == 0 {
                PathwayId::from_name(&format!("unknown-{i}"))
            } else {
                PathwayId::from_name(&format!("pathway-{p}"))
            };
            let action = actions[match mix.below(100) {
                0..=29 => 0,
                30..=54 => 1,
                55..=79 => 2,
                80..=94 => 3,
                95..=97 => 4,
                _ => 5,
            }];
            let effect = match mix.below(3) {
                0 => EffectClass::ReadOnly,
                1 => EffectClass::Reversible,
                _ => EffectClass::Irreversible,
            };
            let mut req = ActionRequest::new(
                Principal::Agent(AgentId::from_name(&format!("agent-{}", i % 500))),
                RoleId::from_name(&format!("role-{role}")),
                pathway,
                action,
            )
            .with_effect(effect)
            .with_cost(Money::from_minor(mix.below(12_000) as i64))
            .with_risk(mix.below(100) as u32)
            .with_confidence(mix.below(1000) as f32 / 1000.0);
            if mix.below(10) == 0 {
                req = req.with_context("vip", serde_json::Value::Bool(true));
            }
            req
        })
        .collect()
}

/// A ledger with an organisation, one role and one run budget, all large enough that the
/// benchmark never hits a limit, and the chain over them.
pub fn three_level_ledger() -> (InMemoryBudgetLedger, BudgetChain) {
    let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
    let big = |c: i64| {
        BudgetLimits::total(Limits {
            cost: Some(Money::from_minor(c)),
            tokens: Some(u64::MAX / 4),
            tool_calls: Some(u64::MAX / 4),
            risk_points: None,
            payments: None,
        })
    };
    let role = RoleId::from_name("role-0");
    let run = RunId::from_name("run-0");
    ledger.set_limits_sync(BudgetKey::Organisation, big(i64::MAX / 4));
    ledger.set_limits_sync(BudgetKey::Role(role), big(i64::MAX / 8));
    ledger.set_limits_sync(BudgetKey::Run(run), big(i64::MAX / 16));
    (ledger, BudgetChain::organisation().role(role).run(run))
}

/// One reserve and commit of a small model call.
pub fn reserve_commit(ledger: &InMemoryBudgetLedger, chain: &BudgetChain) -> bool {
    let amount = Usage::cost(Money::from_minor(3))
        .with_tokens(1_200)
        .with_tool_calls(1);
    match ledger.reserve_sync(chain, amount, &ReserveOptions::default()) {
        Ok(r) => ledger
            .commit_sync(r.id, Usage::cost(Money::from_minor(2)).with_tokens(900))
            .is_ok(),
        Err(_) => false,
    }
}

/// Two threads hammer one budget with reserve then commit-or-release until it is full;
/// returns the highest usage observed (sampled, and the final committed total), the
/// committed total, whether everything settled consistently, and the granted reservations
/// per second.
fn contention(limit: i64, per_thread: usize) -> (i64, i64, bool, f64) {
    let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
    let cap = BudgetLimits::total(Limits {
        cost: Some(Money::from_minor(limit)),
        ..Limits::default()
    });
    let role = RoleId::from_name("role-0");
    ledger.set_limits_sync(BudgetKey::Organisation, cap.clone());
    ledger.set_limits_sync(BudgetKey::Role(role), cap);
    let (d, results) = time(|| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    let run = RunId::from_name(&format!("run-{t}"));
                    let chain = BudgetChain::organisation().role(role).run(run);
                    let mut mix = Mix::new(t + 1);
                    let mut max_used = 0i64;
                    let mut committed = 0i64;
                    let mut settled = true;
                    let mut granted = 0usize;
                    for i in 0..per_thread {
                        let amount = 1 + mix.below(5) as i64;
                        if let Ok(r) = ledger.reserve_sync(
                            &chain,
                            Usage::cost(Money::from_minor(amount)),
                            &ReserveOptions::default(),
                        ) {
                            granted += 1;
                            if i % 64 == 0 {
                                if let Some(u) = ledger.usage_sync(BudgetKey::Organisation) {
                                    max_used = max_used
                                        .max(u.committed.cost.minor() + u.reserved.cost.minor());
                                }
                            }
                            let ok = if mix.below(4) == 0 {
                                ledger.release_sync(r.id).is_ok()
                            } else {
                                let actual = mix.below(amount as u64 + 1) as i64;
                                committed += actual;
                                ledger
                                    .commit_sync(r.id, Usage::cost(Money::from_minor(actual)))
                                    .is_ok()
                            };
                            settled &= ok;
                        }
                    }
                    (max_used, committed, settled, granted)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((i64::MAX, i64::MAX, false, 0)))
            .collect::<Vec<_>>()
    });
    let max_used = results.iter().map(|r| r.0).max().unwrap_or(0);
    let committed: i64 = results.iter().map(|r| r.1).sum();
    let org = ledger.usage_sync(BudgetKey::Organisation);
    let consistent = results.iter().all(|r| r.2)
        && ledger.outstanding() == 0
        && org
            .is_some_and(|u| u.committed.cost.minor() == committed && u.reserved.cost.minor() == 0);
    let granted: usize = results.iter().map(|r| r.3).sum();
    let rate = granted as f64 / d.as_secs_f64();
    (max_used.max(committed), committed, consistent, rate)
}

/// Runs the governance workloads.
pub fn run(config: &Config) -> Vec<Measurement> {
    let mut out = Vec::new();

    // GOV-DECIDE
    let model = synthetic_model(1_000, 200);
    let governor: Governor = match model.compile() {
        Ok(g) => g,
        Err(report) => {
            eprintln!("GOV-DECIDE: the synthetic model does not compile:\n{report}");
            return out;
        }
    };
    let reqs = requests(10_000, 1_000);
    let mut verdicts = [0usize; 4];
    for r in &reqs {
        let i = match governor.decide(r).verdict {
            Verdict::Allow => 0,
            Verdict::Deny => 1,
            Verdict::RequireApproval { .. } => 2,
            Verdict::Escalate { .. } => 3,
        };
        verdicts[i] += 1;
    }
    eprintln!(
        "GOV-DECIDE verdict mix over {} requests: allow {}, deny {}, approval {}, escalate {}",
        reqs.len(),
        verdicts[0],
        verdicts[1],
        verdicts[2],
        verdicts[3]
    );
    let rounds = config.pick(20, 100);
    let samples = sample(reqs.len() * rounds, |i| {
        black_box(governor.decide(black_box(&reqs[i % reqs.len()])));
    });
    out.push(Measurement::new(
        "GOV-DECIDE",
        "median",
        percentile_us(&samples, 50.0),
        "us",
        Goal::AtMost(1.0),
    ));
    out.push(Measurement::new(
        "GOV-DECIDE",
        "p99",
        percentile_us(&samples, 99.0),
        "us",
        Goal::AtMost(5.0),
    ));

    // GOV-BUDGET
    let (ledger, chain) = three_level_ledger();
    // the machine is shared: run several rounds and keep the best (labelled as such)
    let rounds = 5;
    let n = config.pick(400_000, 2_000_000);
    let mut best = 0.0f64;
    let mut ok = 0usize;
    for _ in 0..rounds {
        let (d, granted) = time(|| {
            let mut granted = 0usize;
            for _ in 0..n {
                granted += usize::from(reserve_commit(black_box(&ledger), &chain));
            }
            granted
        });
        ok += granted;
        best = best.max(n as f64 / d.as_secs_f64());
    }
    out.push(Measurement::new(
        "GOV-BUDGET",
        if ok == n * rounds && ledger.outstanding() == 0 {
            "pairs/s best of 5"
        } else {
            "pairs/s FAILED"
        },
        best,
        "pairs/s",
        Goal::AtLeast(5_000_000.0),
    ));
    let per_thread = config.pick(300_000, 1_000_000);
    // about three quarters of the way through, the budget is full
    let limit = per_thread as i64 * 3 / 2;
    let (max_used, _committed, consistent, rate) = contention(limit, per_thread);
    out.push(Measurement::new(
        "GOV-BUDGET",
        if consistent {
            "2 threads max used"
        } else {
            "2 threads INCONSISTENT"
        },
        max_used as f64,
        "minor",
        Goal::AtMost(limit as f64),
    ));
    out.push(Measurement::new(
        "GOV-BUDGET",
        "granted/s 2 thr",
        rate,
        "pairs/s",
        Goal::None,
    ));

    // GOV-VALIDATE
    let runs = config.pick(9, 31);
    let mut findings = 0usize;
    let samples = sample(runs, |_| {
        findings = black_box(model.validate()).findings.len();
    });
    out.push(Measurement::new(
        "GOV-VALIDATE",
        if findings == 0 {
            "median"
        } else {
            "median (FINDINGS)"
        },
        percentile_us(&samples, 50.0) / 1e3,
        "ms",
        Goal::AtMost(10.0),
    ));
    let samples = sample(config.pick(5, 15), |_| {
        black_box(model.compile().is_ok());
    });
    out.push(Measurement::new(
        "GOV-VALIDATE",
        "compile median",
        percentile_us(&samples, 50.0) / 1e3,
        "ms",
        Goal::None,
    ));
    out
}
