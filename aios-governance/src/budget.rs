//! Budgets: hierarchical limits (organisation > role > agent > run) over cost, tokens, tool
//! calls and risk points, per run and per period, with alert thresholds; atomic reserve, then
//! commit or release.

// per-dimension loops index several parallel arrays at once
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AuditEvent, AuditLog, AuditRecord, Clock, Money, Principal, RoleId, RunId, StoreError,
    Timestamp, Transience,
};
use async_trait::async_trait;
use chrono::Datelike;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::model::{default_alerts, Limits, Period};
use rustc_hash::{FxHashMap, FxHashSet};

/// Which budget: a level of the hierarchy organisation > role > agent > run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum BudgetKey {
    /// The whole organisation.
    Organisation,
    /// Every agent of a role together.
    Role(RoleId),
    /// One agent.
    Agent(AgentId),
    /// One run.
    Run(RunId),
}

impl std::fmt::Display for BudgetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetKey::Organisation => f.write_str("organisation"),
            BudgetKey::Role(r) => write!(f, "role:{r}"),
            BudgetKey::Agent(a) => write!(f, "agent:{a}"),
            BudgetKey::Run(r) => write!(f, "run:{r}"),
        }
    }
}

/// How many dimensions a budget limits ([`Dimension::ALL`]).
pub const DIMENSIONS: usize = 5;

/// A dimension a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Money spent (model and tool costs), in minor units.
    Cost,
    /// Money moved by actions (payments, transfers), in minor units: not spend, limited
    /// separately.
    Payments,
    /// Model tokens.
    Tokens,
    /// Connector and tool calls.
    ToolCalls,
    /// Accumulated risk scores.
    RiskPoints,
}

impl Dimension {
    /// Every dimension, in index order.
    pub const ALL: [Dimension; DIMENSIONS] = [
        Dimension::Cost,
        Dimension::Payments,
        Dimension::Tokens,
        Dimension::ToolCalls,
        Dimension::RiskPoints,
    ];

    /// The dimension's name (`cost`, `payments`, `tokens`, `tool_calls`, `risk_points`).
    pub fn name(&self) -> &'static str {
        match self {
            Dimension::Cost => "cost",
            Dimension::Payments => "payments",
            Dimension::Tokens => "tokens",
            Dimension::ToolCalls => "tool_calls",
            Dimension::RiskPoints => "risk_points",
        }
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An amount in every dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Money spent.
    pub cost: Money,
    /// Money moved.
    #[serde(default)]
    pub payments: Money,
    /// Tokens.
    pub tokens: u64,
    /// Tool calls.
    pub tool_calls: u64,
    /// Risk points.
    pub risk_points: u64,
}

impl Usage {
    /// Nothing.
    pub const ZERO: Usage = Usage {
        cost: Money::ZERO,
        payments: Money::ZERO,
        tokens: 0,
        tool_calls: 0,
        risk_points: 0,
    };

    /// Only money spent.
    pub const fn cost(cost: Money) -> Self {
        Usage {
            cost,
            payments: Money::ZERO,
            tokens: 0,
            tool_calls: 0,
            risk_points: 0,
        }
    }

    /// Sets the money moved.
    pub const fn with_payments(mut self, payments: Money) -> Self {
        self.payments = payments;
        self
    }

    /// Sets the tokens.
    pub const fn with_tokens(mut self, tokens: u64) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets the tool calls.
    pub const fn with_tool_calls(mut self, calls: u64) -> Self {
        self.tool_calls = calls;
        self
    }

    /// Sets the risk points.
    pub const fn with_risk_points(mut self, points: u64) -> Self {
        self.risk_points = points;
        self
    }

    /// The amount in one dimension.
    pub fn get(&self, d: Dimension) -> i64 {
        self.to_array()[d as usize]
    }

    /// The amounts by [`Dimension`] order (cost, payments, tokens, tool calls, risk points),
    /// counts clamped to `i64`: the representation ledgers do their arithmetic in.
    pub fn to_array(self) -> [i64; DIMENSIONS] {
        [
            self.cost.minor(),
            self.payments.minor(),
            clamp_u64(self.tokens),
            clamp_u64(self.tool_calls),
            clamp_u64(self.risk_points),
        ]
    }

    /// The inverse of [`Usage::to_array`] (negative counts read as zero).
    pub fn from_array(a: [i64; DIMENSIONS]) -> Self {
        Usage {
            cost: Money::from_minor(a[0]),
            payments: Money::from_minor(a[1]),
            tokens: a[2].max(0) as u64,
            tool_calls: a[3].max(0) as u64,
            risk_points: a[4].max(0) as u64,
        }
    }
}

fn clamp_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The limits of one budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetLimits {
    /// Limits per dimension (`None`: unlimited).
    pub limits: Limits,
    /// When usage resets.
    pub period: Period,
    /// Alert thresholds in percent (default 50, 80, 100).
    pub alerts: Vec<u32>,
}

impl BudgetLimits {
    /// Limits that never reset, with the default alert thresholds.
    pub fn total(limits: Limits) -> Self {
        Self {
            limits,
            period: Period::Total,
            alerts: default_alerts(),
        }
    }

    /// Limits that reset every `period`, with the default alert thresholds.
    pub fn per(period: Period, limits: Limits) -> Self {
        Self {
            limits,
            period,
            alerts: default_alerts(),
        }
    }

    /// The tighter of two limits per dimension (the shorter period, the union of alerts).
    pub fn tightest(&self, other: &BudgetLimits) -> BudgetLimits {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        let mut alerts: Vec<u32> = self.alerts.iter().chain(&other.alerts).copied().collect();
        alerts.sort_unstable();
        alerts.dedup();
        BudgetLimits {
            limits: Limits {
                cost: min(self.limits.cost, other.limits.cost),
                payments: min(self.limits.payments, other.limits.payments),
                tokens: min(self.limits.tokens, other.limits.tokens),
                tool_calls: min(self.limits.tool_calls, other.limits.tool_calls),
                risk_points: min(self.limits.risk_points, other.limits.risk_points),
            },
            period: if self.period == Period::Total {
                other.period
            } else {
                self.period
            },
            alerts,
        }
    }

    /// The limits by [`Dimension`] order, `i64::MAX` where a dimension is not limited.
    pub fn array(&self) -> [i64; DIMENSIONS] {
        let l = &self.limits;
        [
            l.cost.map_or(i64::MAX, |m| m.minor()),
            l.payments.map_or(i64::MAX, |m| m.minor()),
            l.tokens.map_or(i64::MAX, clamp_u64),
            l.tool_calls.map_or(i64::MAX, clamp_u64),
            l.risk_points.map_or(i64::MAX, clamp_u64),
        ]
    }
}

/// The budgets a governance model defines (see `Governor::budget_plan`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetPlan {
    /// Organisation, role and agent budgets.
    pub budgets: Vec<(BudgetKey, BudgetLimits)>,
    /// The limits each run gets when it starts (set them on `BudgetKey::Run(run)`).
    pub per_run: Option<BudgetLimits>,
}

/// The chain of budgets one piece of work draws on: the organisation, then optionally its
/// role, agent and run. Levels without a configured budget are not limited; the
/// organisation's budget must exist (nothing is allowed without a budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BudgetChain {
    /// The role.
    pub role: Option<RoleId>,
    /// The agent.
    pub agent: Option<AgentId>,
    /// The run.
    pub run: Option<RunId>,
}

impl BudgetChain {
    /// Only the organisation.
    pub fn organisation() -> Self {
        Self::default()
    }

    /// Adds the role.
    pub fn role(mut self, role: RoleId) -> Self {
        self.role = Some(role);
        self
    }

    /// Adds the agent.
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Adds the run.
    pub fn run(mut self, run: RunId) -> Self {
        self.run = Some(run);
        self
    }

    /// The keys from the organisation down.
    pub fn keys(&self) -> impl Iterator<Item = BudgetKey> {
        [
            Some(BudgetKey::Organisation),
            self.role.map(BudgetKey::Role),
            self.agent.map(BudgetKey::Agent),
            self.run.map(BudgetKey::Run),
        ]
        .into_iter()
        .flatten()
    }
}

/// A reservation's handle. Opaque; a ledger only honours ids it issued, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(u64);

impl ReservationId {
    /// Wraps a raw value (for backends that store reservations).
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn raw(&self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ReservationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A budget crossed an alert threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetAlert {
    /// Which budget.
    pub key: BudgetKey,
    /// Which dimension.
    pub dimension: Dimension,
    /// The threshold crossed, in percent.
    pub threshold_percent: u32,
    /// Used (committed plus reserved) after the operation.
    pub used: i64,
    /// The limit.
    pub limit: i64,
}

/// Marks `alerts` of budget `key` as not reported in `alerted` (per dimension, a bit per
/// threshold of `thresholds`, sorted and deduplicated, the first 32 only), so they are
/// reported again: what a ledger does for alerts whose audit entries could not be written.
pub fn unreport_alerts(
    key: BudgetKey,
    thresholds: &[u32],
    alerted: &mut [u32],
    alerts: &[BudgetAlert],
) {
    for alert in alerts.iter().filter(|a| a.key == key) {
        let bit = thresholds
            .iter()
            .position(|t| *t == alert.threshold_percent)
            .filter(|i| *i < 32);
        if let (Some(i), Some(bits)) = (bit, alerted.get_mut(alert.dimension as usize)) {
            *bits &= !(1u32 << i);
        }
    }
}

/// Appends each alert to `audit` as an [`AuditEvent::BudgetAlert`] by the system at `at`:
/// what every ledger does after an operation that crossed thresholds.
pub async fn record_alerts(
    audit: &dyn AuditLog,
    at: Timestamp,
    alerts: &[BudgetAlert],
) -> Result<(), BudgetError> {
    for a in alerts {
        audit
            .append(AuditRecord::new(Principal::System, a.audit_event()).at(at))
            .await?;
    }
    Ok(())
}

impl BudgetAlert {
    /// The [`AuditEvent::BudgetAlert`] recording this alert.
    pub fn audit_event(&self) -> AuditEvent {
        AuditEvent::BudgetAlert {
            budget: self.key.to_string(),
            dimension: self.dimension.name().to_string(),
            threshold_percent: self.threshold_percent,
            used: self.used,
            limit: self.limit,
        }
    }
}

/// How a reservation is made (see [`BudgetLedger::reserve`]).
///
/// ```
/// use std::time::Duration;
/// use aios_governance::ReserveOptions;
/// let options = ReserveOptions::keyed("run-7/task-2/3").ttl(Duration::from_secs(600));
/// assert_eq!(options.key.as_deref(), Some("run-7/task-2/3"));
/// assert_eq!(ReserveOptions::default().ttl, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ReserveOptions {
    /// The charge key: what the reservation pays for (for example the call key
    /// `run/task/seq`). Once a reservation with this key is committed, the key is charged
    /// and every later reservation with it is refused with [`BudgetError::AlreadyCharged`],
    /// so a call is charged at most once however often it is resumed. Keys are global to the
    /// ledger. `None`: no such check.
    pub key: Option<String>,
    /// How long the reservation holds budget before it expires (`None`: the ledger's
    /// default, one hour unless the ledger was built otherwise).
    pub ttl: Option<Duration>,
}

impl ReserveOptions {
    /// Options with a charge key and the ledger's default time to live.
    pub fn keyed(key: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            ttl: None,
        }
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// A successful reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The handle to commit or release with.
    pub id: ReservationId,
    /// Thresholds crossed by this reservation.
    pub alerts: Vec<BudgetAlert>,
}

/// The result of a commit or release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Thresholds crossed by this settlement.
    pub alerts: Vec<BudgetAlert>,
}

/// One budget's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetUsage {
    /// Which budget.
    pub key: BudgetKey,
    /// Its limits.
    pub limits: BudgetLimits,
    /// Committed in the current period.
    pub committed: Usage,
    /// Reserved and not yet settled.
    pub reserved: Usage,
}

/// A budget operation failed. Refusals are typed so callers can report them precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The reservation would take a budget over its limit, or the budget is exhausted
    /// (used >= limit, which refuses even a zero amount); nothing was changed.
    #[error("budget `{key}` exceeded on {dimension}: {used} used + {requested} requested, limit {limit}")]
    Exceeded {
        /// Which budget.
        key: BudgetKey,
        /// Which dimension.
        dimension: Dimension,
        /// The limit.
        limit: i64,
        /// Used (committed plus reserved) before the request.
        used: i64,
        /// The amount requested.
        requested: i64,
    },
    /// A required budget is not configured (the organisation's budget must exist).
    #[error("no budget configured for `{key}`")]
    NoBudget {
        /// Which budget.
        key: BudgetKey,
    },
    /// The reservation id was never issued by this ledger.
    #[error("unknown reservation `{id}`")]
    UnknownReservation {
        /// The id presented.
        id: ReservationId,
    },
    /// The reservation was already committed or released.
    #[error("reservation `{id}` is already settled")]
    AlreadySettled {
        /// The id presented.
        id: ReservationId,
    },
    /// A reservation with this charge key was already committed: what it pays for was
    /// charged once and is not charged again; nothing was changed.
    #[error("charge key `{key}` was already committed")]
    AlreadyCharged {
        /// The key presented.
        key: String,
    },
    /// An amount is negative.
    #[error("invalid amount: {detail}")]
    InvalidAmount {
        /// What is wrong.
        detail: String,
    },
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Transience for BudgetError {
    fn is_transient(&self) -> bool {
        matches!(self, BudgetError::Store(e) if e.is_transient())
    }
}

/// Whether a budget with `used` of `limit` spent refuses `amount` more: when the amount
/// does not fit, and, for a zero amount, when the budget is exhausted (an exhausted budget
/// refuses every further reservation).
pub fn refuses(used: i64, amount: i64, limit: i64) -> bool {
    used.saturating_add(amount) > limit || (amount == 0 && used >= limit)
}

/// The budget ledger port.
///
/// Contract:
/// - `reserve` is atomic over the whole chain (organisation > role > agent > run): either
///   every level with a budget can hold the amount (committed + reserved + amount <= limit,
///   per limited dimension) and all are charged, or nothing changes and the first level and
///   dimension that would overflow is reported as [`BudgetError::Exceeded`]. An exhausted
///   budget (committed + reserved >= limit in a dimension) refuses every further
///   reservation, a zero amount in that dimension included ([`refuses`]). The
///   organisation's budget must exist ([`BudgetError::NoBudget`]).
/// - `commit` settles a reservation with the actual amount (which may differ from the
///   reserved one; an overrun is recorded, not refused, because it already happened);
///   `release` settles it with nothing. Each reservation settles exactly once; settling it
///   again is [`BudgetError::AlreadySettled`]; an id never issued is
///   [`BudgetError::UnknownReservation`].
/// - Charged once: a reservation made with a charge key ([`ReserveOptions::key`]) charges
///   the key when it is committed, atomically with the commit. A later `reserve` with a
///   charged key is refused with [`BudgetError::AlreadyCharged`] (checked before the
///   budgets, so it is reported even when a budget is exhausted) and changes nothing. A
///   release, or [`BudgetLedger::release_run`], charges nothing. Several unsettled
///   reservations may carry one key (a retry after a crash before the commit, or a run
///   taken over from a worker whose lease lapsed while it was still working); the first of
///   them committed charges the key and records its amount, and committing another one
///   afterwards only gives that reservation back (`Ok`, nothing recorded): the call is
///   charged once, however many workers drove it. Keys are global to the ledger and are
///   kept for its lifetime.
/// - No reservation is held forever: each expires `ttl` after it was made
///   ([`ReserveOptions::ttl`], else the ledger's default, one hour unless set with the
///   implementation's `with_reservation_ttl`), by the ledger's clock: it is due when the
///   clock reaches `made + ttl`. A due reservation that is not settled stops counting
///   against the limits. Expiry is swept lazily by `reserve` (before it checks anything
///   else but the amount, even when it then refuses) and by `usage`, and explicitly by
///   [`BudgetLedger::expire_reservations`]. An expired reservation stays unsettled:
///   committing it records the actual amount on its chain (the spending happened; an
///   overrun is recorded, not refused) and charges its key; releasing it is `Ok` and
///   changes no usage; `release_run` releases it (and counts it).
/// - Periodic budgets reset their committed usage at each period boundary of the ledger's
///   clock; reservations in flight carry over.
/// - Alerts are reported once per budget, dimension, threshold and period, in the result of
///   the operation that crossed them.
#[async_trait]
pub trait BudgetLedger: Send + Sync + std::fmt::Debug {
    /// Sets (or replaces) the limits of one budget; usage so far is kept.
    async fn set_limits(&self, key: BudgetKey, limits: BudgetLimits) -> Result<(), BudgetError>;

    /// Reserves `amount` on every budget of `chain`, all or nothing, with a charge key and a
    /// time to live from `options`.
    ///
    /// A reservation exists for its caller only once the caller has its id. An
    /// implementation leaves nothing reserved when the call fails (its alerts could not be
    /// recorded, say) or when the caller's future is dropped before it took the answer (a
    /// worker killed, a call timed out): it does not make the reservation, rolls it back, or
    /// releases it. The ledgers of this crate and of the SQLite and PostgreSQL adapters are
    /// tested for it.
    async fn reserve(
        &self,
        chain: &BudgetChain,
        amount: Usage,
        options: &ReserveOptions,
    ) -> Result<Reservation, BudgetError>;

    /// Settles a reservation with the actual amount.
    async fn commit(&self, id: ReservationId, actual: Usage) -> Result<Settlement, BudgetError>;

    /// Settles a reservation with nothing spent.
    async fn release(&self, id: ReservationId) -> Result<Settlement, BudgetError>;

    /// Releases every unsettled reservation whose chain named `run`, as one atomic operation,
    /// and returns how many there were: reservations left behind by a worker that died
    /// between reserving and settling. The orchestrator calls it when it takes over a run.
    async fn release_run(&self, run: RunId) -> Result<usize, BudgetError>;

    /// Sweeps now: every unsettled reservation whose expiry has passed stops counting
    /// against the limits. Returns how many did by this call (a reservation expires once;
    /// `reserve` and `usage` sweep too, so this counts only what they did not).
    async fn expire_reservations(&self) -> Result<usize, BudgetError>;

    /// The state of one budget, if configured.
    async fn usage(&self, key: BudgetKey) -> Result<Option<BudgetUsage>, BudgetError>;
}

/// Conveniences over any [`BudgetLedger`].
#[async_trait]
pub trait BudgetLedgerExt: BudgetLedger {
    /// Sets every budget of a plan (the per-run limits are set per run by the caller).
    async fn apply_plan(&self, plan: &BudgetPlan) -> Result<(), BudgetError> {
        for (key, limits) in &plan.budgets {
            self.set_limits(*key, limits.clone()).await?;
        }
        Ok(())
    }
}

impl<T: BudgetLedger + ?Sized> BudgetLedgerExt for T {}

#[derive(Debug)]
struct Account {
    key: BudgetKey,
    limits: BudgetLimits,
    limit: [i64; DIMENSIONS],
    alerts: Vec<u32>,
    window: i64,
    committed: [i64; DIMENSIONS],
    reserved: [i64; DIMENSIONS],
    /// Per dimension, a bit per alert threshold already reported in this window.
    alerted: [u32; DIMENSIONS],
    /// Per dimension, the usage at which the next unreported threshold is crossed
    /// (`i64::MAX`: none), so the hot path compares once per dimension.
    next_alert: [i64; DIMENSIONS],
}

impl Account {
    fn roll(&mut self, window: i64) {
        if window != self.window {
            self.window = window;
            self.committed = [0; DIMENSIONS];
            self.alerted = [0; DIMENSIONS];
            self.refresh_next_alerts();
        }
    }

    fn refresh_next_alerts(&mut self) {
        for d in 0..DIMENSIONS {
            let limit = self.limit[d];
            self.next_alert[d] = if limit == i64::MAX {
                i64::MAX
            } else {
                self.alerts
                    .iter()
                    .enumerate()
                    .take(32)
                    .filter(|(i, _)| self.alerted[d] & (1u32 << i) == 0)
                    .map(|(_, t)| {
                        // the smallest usage with used * 100 >= limit * t
                        let need = (i128::from(limit) * i128::from(*t) + 99).div_euclid(100);
                        i64::try_from(need).unwrap_or(i64::MAX)
                    })
                    .min()
                    .unwrap_or(i64::MAX)
            };
        }
    }

    fn check_alerts(&mut self, out: &mut Vec<BudgetAlert>) {
        let mut changed = false;
        for d in 0..DIMENSIONS {
            let limit = self.limit[d];
            if limit == i64::MAX {
                continue;
            }
            let used = self.committed[d].saturating_add(self.reserved[d]);
            if used < self.next_alert[d] {
                continue;
            }
            for (i, t) in self.alerts.iter().enumerate().take(32) {
                let bit = 1u32 << i;
                if self.alerted[d] & bit != 0 {
                    continue;
                }
                if i128::from(used) * 100 >= i128::from(limit) * i128::from(*t) {
                    self.alerted[d] |= bit;
                    changed = true;
                    out.push(BudgetAlert {
                        key: self.key,
                        dimension: Dimension::ALL[d],
                        threshold_percent: *t,
                        used,
                        limit,
                    });
                }
            }
        }
        if changed {
            self.refresh_next_alerts();
        }
    }
}

#[derive(Debug, Clone)]
struct Live {
    accounts: [u32; 4],
    n: u8,
    /// Whether it expired: it no longer counts in its accounts' `reserved`.
    expired: bool,
    amount: [i64; DIMENSIONS],
    run: Option<RunId>,
    /// When it expires, in nanoseconds since the epoch ([`nanos`]).
    expires: i64,
    /// The charge key, charged when committed.
    key: Option<Box<str>>,
}

#[derive(Debug, Clone)]
struct Slot {
    gen: u32,
    live: Option<Live>,
}

#[derive(Debug, Default)]
struct LedgerState {
    index: FxHashMap<BudgetKey, u32>,
    accounts: Vec<Account>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The last chain resolved to accounts: consecutive calls of one run reuse it. Cleared
    /// whenever a budget is added (a level that was skipped may now exist).
    last_chain: Option<(BudgetChain, [u32; 4], usize)>,
    /// The keys of committed keyed reservations.
    charged: FxHashSet<Box<str>>,
    /// At most the earliest expiry of a reservation that still counts (nanoseconds): until
    /// the clock reaches it, nothing is due and no sweep is needed.
    next_expiry: i64,
}

impl LedgerState {
    /// Expires every counting reservation due at `now` (nanoseconds); returns how many.
    fn sweep(&mut self, now: i64) -> usize {
        let mut next = i64::MAX;
        let mut expired = 0;
        for slot in &mut self.slots {
            let Some(live) = &mut slot.live else {
                continue;
            };
            if live.expired {
                continue;
            }
            if now < live.expires {
                next = next.min(live.expires);
                continue;
            }
            live.expired = true;
            expired += 1;
            for &i in &live.accounts[..live.n as usize] {
                let a = &mut self.accounts[i as usize];
                for d in 0..DIMENSIONS {
                    a.reserved[d] = a.reserved[d].saturating_sub(live.amount[d]);
                }
            }
        }
        self.next_expiry = next;
        expired
    }

    /// Sweeps if anything may be due at `now`.
    #[inline]
    fn sweep_due(&mut self, now: i64) {
        if now >= self.next_expiry {
            self.sweep(now);
        }
    }
}

/// A time as nanoseconds since the Unix epoch (saturating outside about 1677 to 2262): the
/// representation reservation expiry is computed and compared in.
fn nanos(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// A duration in nanoseconds, saturating.
fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// How long a reservation holds budget unless its options say otherwise: one hour.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(3_600);

fn window(period: Period, now: Timestamp) -> i64 {
    period.window(now)
}

impl Period {
    /// The number of the calendar window (UTC) that `now` falls in: usage resets when it
    /// changes. Weeks start on Monday; `Total` never resets (always 0).
    pub fn window(self, now: Timestamp) -> i64 {
        let secs = now.timestamp();
        match self {
            Period::Total => 0,
            Period::Hour => secs.div_euclid(3_600),
            Period::Day => secs.div_euclid(86_400),
            // 1970-01-01 was a Thursday; shift so weeks start on Monday
            Period::Week => (secs + 3 * 86_400).div_euclid(604_800),
            Period::Month => i64::from(now.year()) * 12 + i64::from(now.month0()),
        }
    }
}

/// A [`BudgetLedger`] in process memory: one lock over compact arrays, so a reserve plus
/// commit costs a few hundred nanoseconds. The synchronous methods are the hot path; the
/// async trait methods call them and append [`AuditEvent::BudgetAlert`]s to the audit log
/// when one is attached. If that append fails, an async reserve is undone and the error
/// returned; an async commit or release stands (the money was spent) and the error is
/// returned, so a retry reports [`BudgetError::AlreadySettled`].
///
/// ```
/// use std::sync::Arc;
/// use aios_core::{ManualClock, Money, RoleId};
/// use aios_governance::{BudgetChain, BudgetError, BudgetKey, BudgetLimits, InMemoryBudgetLedger, Limits, ReserveOptions, Usage};
/// let ledger = InMemoryBudgetLedger::new(Arc::new(ManualClock::default()));
/// let cap = |c| BudgetLimits::total(Limits { cost: Some(Money::from_minor(c)), ..Limits::default() });
/// ledger.set_limits_sync(BudgetKey::Organisation, cap(1_000));
/// ledger.set_limits_sync(BudgetKey::Role(RoleId::from_name("outreach")), cap(100));
/// let chain = BudgetChain::organisation().role(RoleId::from_name("outreach"));
/// let none = ReserveOptions::default();
/// let r = ledger.reserve_sync(&chain, Usage::cost(Money::from_minor(80)), &none)?;
/// assert_eq!(r.alerts.len(), 2); // 50 % and 80 % of the role budget
/// assert!(matches!(
///     ledger.reserve_sync(&chain, Usage::cost(Money::from_minor(30)), &none),
///     Err(BudgetError::Exceeded { .. })
/// ));
/// ledger.commit_sync(r.id, Usage::cost(Money::from_minor(60)))?;
/// assert!(ledger.reserve_sync(&chain, Usage::cost(Money::from_minor(30)), &none).is_ok());
/// # Ok::<(), BudgetError>(())
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryBudgetLedger {
    clock: Arc<dyn Clock>,
    audit: Option<Arc<dyn AuditLog>>,
    /// The default time to live, in nanoseconds.
    ttl: i64,
    state: Arc<Mutex<LedgerState>>,
}

impl InMemoryBudgetLedger {
    /// An empty ledger reading periods from `clock`. Clones share the ledger.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            audit: None,
            ttl: duration_nanos(DEFAULT_RESERVATION_TTL),
            state: Arc::new(Mutex::new(LedgerState::default())),
        }
    }

    /// Sets how long a reservation holds budget when its options name no ttl (default
    /// [`DEFAULT_RESERVATION_TTL`], one hour).
    pub fn with_reservation_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = duration_nanos(ttl);
        self
    }

    /// Appends alerts of the async operations to `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Sets (or replaces) one budget's limits; usage is kept.
    pub fn set_limits_sync(&self, key: BudgetKey, limits: BudgetLimits) {
        let now = self.clock.now();
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut alerts = limits.alerts.clone();
        alerts.sort_unstable();
        alerts.dedup();
        let limit = limits.array();
        let w = window(limits.period, now);
        match st.index.get(&key) {
            Some(&i) => {
                let a = &mut st.accounts[i as usize];
                a.roll(w);
                a.limit = limit;
                a.alerts = alerts;
                a.alerted = [0; DIMENSIONS];
                a.limits = limits;
                a.refresh_next_alerts();
            }
            None => {
                let i = st.accounts.len() as u32;
                let mut account = Account {
                    key,
                    limits,
                    limit,
                    alerts,
                    window: w,
                    committed: [0; DIMENSIONS],
                    reserved: [0; DIMENSIONS],
                    alerted: [0; DIMENSIONS],
                    next_alert: [i64::MAX; DIMENSIONS],
                };
                account.refresh_next_alerts();
                st.accounts.push(account);
                st.index.insert(key, i);
                st.last_chain = None;
            }
        }
    }

    /// Applies every budget of a plan.
    pub fn apply_plan_sync(&self, plan: &BudgetPlan) {
        for (key, limits) in &plan.budgets {
            self.set_limits_sync(*key, limits.clone());
        }
    }

    /// Reserves `amount` on every budget of `chain`, all or nothing, with a charge key and a
    /// time to live from `options` (see [`BudgetLedger`]). Without a key the only cost over
    /// a bare reservation is one clock read (the expiry).
    pub fn reserve_sync(
        &self,
        chain: &BudgetChain,
        amount: Usage,
        options: &ReserveOptions,
    ) -> Result<Reservation, BudgetError> {
        let amt = amount.to_array();
        if amt[0] < 0 {
            return Err(BudgetError::InvalidAmount {
                detail: format!("cost `{}` is negative", amount.cost),
            });
        }
        let now_ns = self.clock.now_nanos();
        let expires = now_ns.saturating_add(options.ttl.map_or(self.ttl, duration_nanos));
        let mut st = self.state.lock();
        let st = &mut *st;
        st.sweep_due(now_ns);
        if let Some(key) = &options.key {
            if st.charged.contains(key.as_str()) {
                return Err(BudgetError::AlreadyCharged { key: key.clone() });
            }
        }
        let (accounts, n) = match &st.last_chain {
            Some((c, accounts, n)) if c == chain => (*accounts, *n),
            _ => {
                let mut accounts = [0u32; 4];
                let mut n = 0usize;
                for key in chain.keys() {
                    match st.index.get(&key) {
                        Some(&i) => {
                            accounts[n] = i;
                            n += 1;
                        }
                        None if key == BudgetKey::Organisation => {
                            return Err(BudgetError::NoBudget { key });
                        }
                        None => {}
                    }
                }
                st.last_chain = Some((*chain, accounts, n));
                (accounts, n)
            }
        };
        // check every level first: nothing changes on refusal
        for &i in &accounts[..n] {
            let a = &mut st.accounts[i as usize];
            if a.limits.period != Period::Total {
                a.roll(window(
                    a.limits.period,
                    chrono::DateTime::from_timestamp_nanos(now_ns),
                ));
            }
            for d in 0..DIMENSIONS {
                if a.limit[d] == i64::MAX {
                    continue;
                }
                let used = a.committed[d].saturating_add(a.reserved[d]);
                if refuses(used, amt[d], a.limit[d]) {
                    return Err(BudgetError::Exceeded {
                        key: a.key,
                        dimension: Dimension::ALL[d],
                        limit: a.limit[d],
                        used,
                        requested: amt[d],
                    });
                }
            }
        }
        let mut alerts = Vec::new();
        for &i in &accounts[..n] {
            let a = &mut st.accounts[i as usize];
            for d in 0..DIMENSIONS {
                a.reserved[d] = a.reserved[d].saturating_add(amt[d]);
            }
            a.check_alerts(&mut alerts);
        }
        let live = Live {
            accounts,
            n: n as u8,
            expired: false,
            amount: amt,
            run: chain.run,
            expires,
            key: options.key.as_deref().map(Box::from),
        };
        st.next_expiry = st.next_expiry.min(expires);
        let slot = match st.free.pop() {
            Some(s) => {
                let slot = &mut st.slots[s as usize];
                slot.gen = slot.gen.wrapping_add(1).max(1);
                slot.live = Some(live);
                s
            }
            None => {
                st.slots.push(Slot {
                    gen: 1,
                    live: Some(live),
                });
                (st.slots.len() - 1) as u32
            }
        };
        let gen = st.slots[slot as usize].gen;
        Ok(Reservation {
            id: ReservationId((u64::from(gen) << 32) | u64::from(slot)),
            alerts,
        })
    }

    fn settle(&self, id: ReservationId, actual: Option<Usage>) -> Result<Settlement, BudgetError> {
        let act = actual.map(Usage::to_array);
        if let Some(a) = act {
            if a[0] < 0 {
                return Err(BudgetError::InvalidAmount {
                    detail: "actual cost is negative".into(),
                });
            }
        }
        let index = (id.0 & 0xFFFF_FFFF) as usize;
        let gen = (id.0 >> 32) as u32;
        let mut st = self.state.lock();
        let st = &mut *st;
        let live = match st.slots.get_mut(index) {
            Some(slot) if slot.gen == gen => match slot.live.take() {
                Some(live) => live,
                None => return Err(BudgetError::AlreadySettled { id }),
            },
            Some(slot) if gen != 0 && gen < slot.gen => {
                return Err(BudgetError::AlreadySettled { id })
            }
            _ => return Err(BudgetError::UnknownReservation { id }),
        };
        st.free.push(index as u32);
        let mut act = act;
        if act.is_some() {
            if let Some(key) = live.key {
                if !st.charged.insert(key) {
                    // another reservation under this key was committed first: the key is
                    // charged once, so this commit only gives its reservation back
                    act = None;
                }
            }
        }
        let mut alerts = Vec::new();
        let mut now = None;
        for &i in &live.accounts[..live.n as usize] {
            let a = &mut st.accounts[i as usize];
            if a.limits.period != Period::Total {
                let t = *now.get_or_insert_with(|| self.clock.now());
                a.roll(window(a.limits.period, t));
            }
            if !live.expired {
                for d in 0..DIMENSIONS {
                    a.reserved[d] = a.reserved[d].saturating_sub(live.amount[d]);
                }
            }
            if let Some(act) = act {
                for d in 0..DIMENSIONS {
                    a.committed[d] = a.committed[d].saturating_add(act[d]);
                }
                a.check_alerts(&mut alerts);
            }
        }
        Ok(Settlement { alerts })
    }

    /// Settles a reservation with the actual amount (see [`BudgetLedger`]).
    pub fn commit_sync(&self, id: ReservationId, actual: Usage) -> Result<Settlement, BudgetError> {
        self.settle(id, Some(actual))
    }

    /// Settles a reservation with nothing spent.
    pub fn release_sync(&self, id: ReservationId) -> Result<Settlement, BudgetError> {
        self.settle(id, None)
    }

    /// Releases every unsettled reservation made for `run` (see [`BudgetLedger::release_run`]).
    pub fn release_run_sync(&self, run: RunId) -> usize {
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut released = 0;
        for index in 0..st.slots.len() {
            let theirs = matches!(&st.slots[index].live, Some(l) if l.run == Some(run));
            if !theirs {
                continue;
            }
            let Some(live) = st.slots[index].live.take() else {
                continue;
            };
            st.free.push(index as u32);
            if live.expired {
                released += 1;
                continue;
            }
            for &i in &live.accounts[..live.n as usize] {
                let a = &mut st.accounts[i as usize];
                for d in 0..DIMENSIONS {
                    a.reserved[d] = a.reserved[d].saturating_sub(live.amount[d]);
                }
            }
            released += 1;
        }
        released
    }

    /// Expires every reservation that is due (see [`BudgetLedger::expire_reservations`]).
    pub fn expire_reservations_sync(&self) -> usize {
        let now = self.clock.now_nanos();
        self.state.lock().sweep(now)
    }

    /// One budget's state, if configured (periods rolled to the clock's now, reservations
    /// that are due expired).
    pub fn usage_sync(&self, key: BudgetKey) -> Option<BudgetUsage> {
        let now = self.clock.now();
        let mut st = self.state.lock();
        st.sweep_due(nanos(now));
        let i = *st.index.get(&key)?;
        let a = &mut st.accounts[i as usize];
        a.roll(window(a.limits.period, now));
        Some(BudgetUsage {
            key,
            limits: a.limits.clone(),
            committed: Usage::from_array(a.committed),
            reserved: Usage::from_array(a.reserved),
        })
    }

    /// Marks alerts as not reported (their audit failed), so they are reported again.
    fn forget_alerts(&self, alerts: &[BudgetAlert]) {
        let mut st = self.state.lock();
        let st = &mut *st;
        for alert in alerts {
            let Some(&i) = st.index.get(&alert.key) else {
                continue;
            };
            let a = &mut st.accounts[i as usize];
            unreport_alerts(
                alert.key,
                &a.alerts,
                &mut a.alerted,
                std::slice::from_ref(alert),
            );
            a.refresh_next_alerts();
        }
    }

    /// The number of reservations not yet settled (expired ones included: they still wait
    /// for their commit or release).
    pub fn outstanding(&self) -> usize {
        let st = self.state.lock();
        st.slots.iter().filter(|s| s.live.is_some()).count()
    }

    async fn emit(&self, alerts: &[BudgetAlert]) -> Result<(), BudgetError> {
        match &self.audit {
            Some(audit) => record_alerts(audit.as_ref(), self.clock.now(), alerts).await,
            None => Ok(()),
        }
    }
}

impl InMemoryBudgetLedger {
    /// Undoes a reservation its caller never got: releases it and marks its alerts as not
    /// reported (they may not have been recorded).
    fn undo(&self, r: &Reservation) {
        let _ = self.release_sync(r.id);
        self.forget_alerts(&r.alerts);
    }
}

/// A reservation made whose id its caller has not received yet: undone if the caller's
/// future is dropped meanwhile (while its alerts are recorded).
struct Unclaimed<'a> {
    ledger: &'a InMemoryBudgetLedger,
    reservation: Option<&'a Reservation>,
}

impl Unclaimed<'_> {
    /// The reservation's fate is the caller's now.
    fn claim(mut self) {
        self.reservation = None;
    }
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.ledger.undo(r);
        }
    }
}

#[async_trait]
impl BudgetLedger for InMemoryBudgetLedger {
    async fn set_limits(&self, key: BudgetKey, limits: BudgetLimits) -> Result<(), BudgetError> {
        self.set_limits_sync(key, limits);
        Ok(())
    }

    async fn reserve(
        &self,
        chain: &BudgetChain,
        amount: Usage,
        options: &ReserveOptions,
    ) -> Result<Reservation, BudgetError> {
        let r = self.reserve_sync(chain, amount, options)?;
        // until the caller has the id, a dropped future undoes the reservation
        let unclaimed = Unclaimed {
            ledger: self,
            reservation: Some(&r),
        };
        let emitted = self.emit(&r.alerts).await;
        unclaimed.claim();
        if let Err(e) = emitted {
            // the caller never sees the id: undo the reservation so nothing leaks, and
            // report its alerts again next time since they were never recorded
            self.undo(&r);
            return Err(e);
        }
        Ok(r)
    }

    async fn commit(&self, id: ReservationId, actual: Usage) -> Result<Settlement, BudgetError> {
        let s = self.commit_sync(id, actual)?;
        self.emit(&s.alerts).await?;
        Ok(s)
    }

    async fn release(&self, id: ReservationId) -> Result<Settlement, BudgetError> {
        let s = self.release_sync(id)?;
        self.emit(&s.alerts).await?;
        Ok(s)
    }

    async fn release_run(&self, run: RunId) -> Result<usize, BudgetError> {
        Ok(self.release_run_sync(run))
    }

    async fn expire_reservations(&self) -> Result<usize, BudgetError> {
        Ok(self.expire_reservations_sync())
    }

    async fn usage(&self, key: BudgetKey) -> Result<Option<BudgetUsage>, BudgetError> {
        Ok(self.usage_sync(key))
    }
}
