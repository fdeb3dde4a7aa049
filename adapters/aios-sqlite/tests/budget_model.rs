//! The SQLite budget ledger against the in-memory one as the model: seeded random sequences
//! of limits, reservations over random chains, commits, releases (of live, settled and
//! unknown ids) and clock jumps across period boundaries must give the same results, alerts
//! and usage; exhausted budgets refusing zero amounts included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aios_core::{AgentId, ManualClock, Money, RoleId, RunId, SeededRng};
use aios_governance::{
    BudgetChain, BudgetError, BudgetKey, BudgetLedger, BudgetLimits, InMemoryBudgetLedger, Limits,
    Period, ReservationId, ReserveOptions, Usage,
};
use aios_sqlite::SqliteStore;
use futures::executor::block_on;

/// An error with the reservation id left out (the two ledgers number reservations
/// differently).
fn shape(e: &BudgetError) -> String {
    match e {
        BudgetError::UnknownReservation { .. } => "unknown".into(),
        BudgetError::AlreadySettled { .. } => "settled".into(),
        other => format!("{other:?}"),
    }
}

struct World {
    rng: SeededRng,
    roles: [RoleId; 2],
    agents: [AgentId; 2],
    runs: [RunId; 2],
}

impl World {
    fn pick(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn key(&mut self) -> BudgetKey {
        match self.pick(7) {
            0 | 1 => BudgetKey::Organisation,
            2 => BudgetKey::Role(self.roles[self.pick(2) as usize]),
            3 => BudgetKey::Agent(self.agents[self.pick(2) as usize]),
            4 => BudgetKey::Role(self.roles[0]),
            _ => BudgetKey::Run(self.runs[self.pick(2) as usize]),
        }
    }

    fn chain(&mut self) -> BudgetChain {
        let mut c = BudgetChain::organisation();
        if self.pick(2) == 0 {
            c = c.role(self.roles[self.pick(2) as usize]);
        }
        if self.pick(2) == 0 {
            c = c.agent(self.agents[self.pick(2) as usize]);
        }
        if self.pick(3) != 0 {
            c = c.run(self.runs[self.pick(2) as usize]);
        }
        c
    }

    fn limit(&mut self, scale: u64) -> Option<u64> {
        (self.pick(4) != 0).then(|| self.pick(scale) + 1)
    }

    fn limits(&mut self) -> BudgetLimits {
        let period = [
            Period::Total,
            Period::Hour,
            Period::Day,
            Period::Week,
            Period::Month,
        ][self.pick(5) as usize];
        let mut alerts: Vec<u32> = (0..self.pick(4)).map(|_| self.pick(120) as u32).collect();
        if self.pick(3) == 0 {
            alerts = vec![50, 80, 100];
        }
        BudgetLimits {
            limits: Limits {
                cost: self.limit(1_000).map(|c| Money::from_minor(c as i64)),
                payments: self.limit(2_000).map(|c| Money::from_minor(c as i64)),
                tokens: self.limit(5_000),
                tool_calls: self.limit(20),
                risk_points: self.limit(300),
            },
            period,
            alerts,
        }
    }

    fn usage(&mut self) -> Usage {
        Usage {
            cost: Money::from_minor(if self.pick(25) == 0 {
                -1 - self.pick(10) as i64
            } else {
                self.pick(200) as i64
            }),
            payments: Money::from_minor(self.pick(400) as i64),
            tokens: self.pick(800),
            tool_calls: self.pick(3),
            risk_points: self.pick(50),
        }
    }
}

fn all_keys(w: &World) -> Vec<BudgetKey> {
    let mut keys = vec![BudgetKey::Organisation];
    keys.extend(w.roles.iter().map(|r| BudgetKey::Role(*r)));
    keys.extend(w.agents.iter().map(|a| BudgetKey::Agent(*a)));
    keys.extend(w.runs.iter().map(|r| BudgetKey::Run(*r)));
    keys
}

/// What a sequence exercised, so the test can show it was not vacuous.
#[derive(Debug, Default)]
struct Seen {
    reserved: usize,
    refused: std::collections::BTreeMap<String, usize>,
    alerts: usize,
    settled: usize,
    /// Refusals of a zero amount by an exhausted budget.
    exhausted_zero: usize,
}

fn kind(e: &BudgetError) -> String {
    shape(e).split([' ', '{']).next().unwrap_or("").to_string()
}

fn differential(seed: u64, steps: usize, seen: &mut Seen) {
    let clock = ManualClock::default();
    let model = InMemoryBudgetLedger::new(Arc::new(clock.clone()));
    let store = SqliteStore::in_memory().unwrap();
    let real = store.budget_ledger(Arc::new(clock.clone()));
    let mut w = World {
        rng: SeededRng::new(seed),
        roles: [RoleId::from_name("a"), RoleId::from_name("b")],
        agents: [AgentId::from_name("x"), AgentId::from_name("y")],
        runs: [RunId::from_name("r1"), RunId::from_name("r2")],
    };
    // reservations issued by both: (model's id, real id)
    let mut issued: Vec<(ReservationId, ReservationId)> = Vec::new();
    let never = ReservationId::from_raw(987_654_321);
    block_on(async {
        for step in 0..steps {
            let at = format!("seed {seed} step {step}");
            match w.pick(12) {
                0 | 1 => {
                    let (key, limits) = (w.key(), w.limits());
                    model.set_limits(key, limits.clone()).await.unwrap();
                    real.set_limits(key, limits).await.unwrap();
                }
                2..=5 => {
                    let (chain, amount) = (w.chain(), w.usage());
                    match (
                        model
                            .reserve(&chain, amount, &ReserveOptions::default())
                            .await,
                        real.reserve(&chain, amount, &ReserveOptions::default())
                            .await,
                    ) {
                        (Ok(m), Ok(r)) => {
                            assert_eq!(m.alerts, r.alerts, "{at}: reserve alerts");
                            issued.push((m.id, r.id));
                            seen.reserved += 1;
                            seen.alerts += m.alerts.len();
                        }
                        (Err(m), Err(r)) => {
                            assert_eq!(shape(&m), shape(&r), "{at}: reserve");
                            *seen.refused.entry(kind(&m)).or_default() += 1;
                            if matches!(m, BudgetError::Exceeded { requested: 0, .. }) {
                                seen.exhausted_zero += 1;
                            }
                        }
                        (m, r) => panic!("{at}: reserve differs: {m:?} vs {r:?}"),
                    }
                }
                6..=8 => {
                    let commit = w.pick(3) != 0;
                    let actual = w.usage();
                    let (m_id, r_id) = if issued.is_empty() || w.pick(10) == 0 {
                        (never, never)
                    } else {
                        issued[w.pick(issued.len() as u64) as usize]
                    };
                    let (m, r) = if commit {
                        (
                            model.commit(m_id, actual).await,
                            real.commit(r_id, actual).await,
                        )
                    } else {
                        (model.release(m_id).await, real.release(r_id).await)
                    };
                    match (m, r) {
                        (Ok(m), Ok(r)) => {
                            assert_eq!(m.alerts, r.alerts, "{at}: settle alerts");
                            seen.settled += 1;
                            seen.alerts += m.alerts.len();
                        }
                        (Err(m), Err(r)) => {
                            assert_eq!(shape(&m), shape(&r), "{at}: settle");
                            *seen.refused.entry(kind(&m)).or_default() += 1;
                        }
                        (m, r) => panic!("{at}: settle differs: {m:?} vs {r:?}"),
                    }
                }
                9 => {
                    let secs = [600, 3_600, 86_400, 7 * 86_400, 31 * 86_400][w.pick(5) as usize];
                    clock.advance(Duration::from_secs(w.pick(secs) + 1));
                }
                _ => {
                    for key in all_keys(&w) {
                        assert_eq!(
                            model.usage(key).await.unwrap(),
                            real.usage(key).await.unwrap(),
                            "{at}: usage of {key}"
                        );
                    }
                }
            }
        }
        for key in all_keys(&w) {
            assert_eq!(
                model.usage(key).await.unwrap(),
                real.usage(key).await.unwrap(),
                "seed {seed} end: usage of {key}"
            );
        }
        assert_eq!(model.outstanding(), real.outstanding().unwrap());
    });
}

#[test]
fn the_sqlite_ledger_behaves_exactly_like_the_in_memory_one() {
    let mut seen = Seen::default();
    for seed in 0..30 {
        differential(seed, 300, &mut seen);
    }
    eprintln!("{seen:?}");
    assert!(
        seen.reserved > 100 && seen.settled > 100 && seen.alerts > 50 && seen.exhausted_zero > 5,
        "{seen:?}"
    );
    for refusal in [
        "Exceeded",
        "NoBudget",
        "InvalidAmount",
        "unknown",
        "settled",
    ] {
        assert!(
            seen.refused.get(refusal).copied().unwrap_or(0) > 5,
            "the sequences exercised {refusal}: {seen:?}"
        );
    }
}
