//! The budget ledger in tables `budget_accounts`, `budget_reservations` and
//! `budget_charges`.

// per-dimension loops index several parallel arrays at once
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;
use std::time::Duration;

use aios_core::{AuditLog, Clock, RunId, StoreError, Timestamp};
use aios_governance::{
    record_alerts, refuses, unreport_alerts, BudgetAlert, BudgetChain, BudgetError, BudgetKey,
    BudgetLedger, BudgetLimits, BudgetUsage, Dimension, Period, Reservation, ReservationId,
    ReserveOptions, Settlement, Usage, DEFAULT_RESERVATION_TTL, DIMENSIONS,
};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use crate::db::Db;

/// A [`BudgetLedger`] in SQLite, with exactly the semantics of
/// [`aios_governance::InMemoryBudgetLedger`]: all-or-nothing reservation over the chain,
/// periods read from the injected [`Clock`], each alert threshold reported once per budget,
/// dimension and period. Clones share the store's connections.
///
/// One row per budget holds its limits, current window, committed and reserved amounts and
/// the alerts already reported, as JSON; one row per unsettled reservation holds the budgets
/// it charged and the amount. Every operation reads and writes the rows it touches in one
/// `BEGIN IMMEDIATE` transaction, so concurrent workers (threads or processes) can never
/// overspend and a refused or failed operation changes nothing. Settled reservations are
/// deleted; the `AUTOINCREMENT` counter tells an already settled id from one never issued.
/// A reservation row carries its expiry (nanoseconds since the epoch, indexed) and whether
/// it expired; the keys of committed keyed reservations are rows of `budget_charges`,
/// inserted in the commit's transaction.
#[derive(Debug, Clone)]
pub struct SqliteBudgetLedger {
    db: Arc<Db>,
    clock: Arc<dyn Clock>,
    audit: Option<Arc<dyn AuditLog>>,
    /// The default time to live, in nanoseconds.
    ttl: i64,
}

/// A time as nanoseconds since the Unix epoch, saturating: how expiry is stored.
fn nanos(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One budget's stored state.
#[derive(Debug, Serialize, Deserialize)]
struct Account {
    key: BudgetKey,
    limits: BudgetLimits,
    window: i64,
    committed: [i64; DIMENSIONS],
    reserved: [i64; DIMENSIONS],
    /// Per dimension, a bit per (sorted, deduplicated) alert threshold already reported in
    /// this window.
    alerted: [u32; DIMENSIONS],
}

/// One unsettled reservation's stored state.
#[derive(Debug, Serialize, Deserialize)]
struct Held {
    keys: Vec<BudgetKey>,
    amount: [i64; DIMENSIONS],
    /// The run the chain named, so a dead worker's reservations can be released by run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<RunId>,
    /// The charge key, charged when committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl Account {
    fn roll(&mut self, window: i64) {
        if window != self.window {
            self.window = window;
            self.committed = [0; DIMENSIONS];
            self.alerted = [0; DIMENSIONS];
        }
    }

    fn roll_to(&mut self, now: Timestamp) {
        if self.limits.period != Period::Total {
            self.roll(self.limits.period.window(now));
        }
    }

    /// Marks `alerts` of this account as not reported, so they are reported again (their
    /// audit entries could not be written).
    fn forget(&mut self, alerts: &[BudgetAlert]) {
        let mut thresholds = self.limits.alerts.clone();
        thresholds.sort_unstable();
        thresholds.dedup();
        unreport_alerts(self.key, &thresholds, &mut self.alerted, alerts);
    }

    fn check_alerts(&mut self, out: &mut Vec<BudgetAlert>) {
        let mut alerts = self.limits.alerts.clone();
        alerts.sort_unstable();
        alerts.dedup();
        if alerts.is_empty() {
            return;
        }
        let limits = self.limits.array();
        for d in 0..DIMENSIONS {
            let limit = limits[d];
            if limit == i64::MAX {
                continue;
            }
            let used = self.committed[d].saturating_add(self.reserved[d]);
            for (i, t) in alerts.iter().enumerate().take(32) {
                let bit = 1u32 << i;
                if self.alerted[d] & bit != 0 {
                    continue;
                }
                if i128::from(used) * 100 >= i128::from(limit) * i128::from(*t) {
                    self.alerted[d] |= bit;
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
    }
}

impl SqliteBudgetLedger {
    pub(crate) fn new(db: Arc<Db>, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            clock,
            audit: None,
            ttl: duration_nanos(DEFAULT_RESERVATION_TTL),
        }
    }

    /// Sets how long a reservation holds budget when its options name no ttl (default
    /// [`DEFAULT_RESERVATION_TTL`], one hour).
    pub fn with_reservation_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = duration_nanos(ttl);
        self
    }

    /// Expires every counting reservation due at `now`: its amount leaves the budgets it
    /// charged and the row is marked expired. Returns how many.
    fn sweep(&self, tx: &Transaction<'_>, now: Timestamp) -> Result<usize, BudgetError> {
        let rows: Vec<(i64, String)> = tx
            .prepare_cached(
                "SELECT id, reservation FROM budget_reservations
                 WHERE expired = 0 AND expires_at <= ?1",
            )
            .and_then(|mut s| {
                s.query_map([nanos(now)], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| self.db.err("read due budget reservations", e))?;
        for (raw, text) in &rows {
            let held: Held = self.db.decode("budget_reservations", raw, text)?;
            tx.prepare_cached("UPDATE budget_reservations SET expired = 1 WHERE id = ?1")
                .and_then(|mut s| s.execute([raw]))
                .map_err(|e| self.db.err("expire a budget reservation", e))?;
            for key in held.keys {
                if let Some(mut a) = self.load(tx, key)? {
                    a.roll_to(now);
                    for d in 0..DIMENSIONS {
                        a.reserved[d] = a.reserved[d].saturating_sub(held.amount[d]);
                    }
                    self.store(tx, &a)?;
                }
            }
        }
        Ok(rows.len())
    }

    /// Whether a reservation is due to expire at `now`.
    fn due(&self, tx: &Transaction<'_>, now: Timestamp) -> Result<bool, StoreError> {
        tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM budget_reservations
                            WHERE expired = 0 AND expires_at <= ?1)",
        )
        .and_then(|mut s| s.query_row([nanos(now)], |r| r.get(0)))
        .map_err(|e| self.db.err("read due budget reservations", e))
    }

    /// Appends the alerts of every operation to `audit` as [`aios_core::AuditEvent::BudgetAlert`]s
    /// (after the operation committed), like the in-memory ledger.
    pub fn with_audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    fn load(&self, tx: &Transaction<'_>, key: BudgetKey) -> Result<Option<Account>, StoreError> {
        let name = key.to_string();
        let text: Option<String> = tx
            .prepare_cached("SELECT account FROM budget_accounts WHERE key = ?1")
            .and_then(|mut s| s.query_row([&name], |r| r.get(0)).optional())
            .map_err(|e| self.db.err("read a budget", e))?;
        text.map(|t| self.db.decode("budget_accounts", &name, &t))
            .transpose()
    }

    fn store(&self, tx: &Transaction<'_>, account: &Account) -> Result<(), StoreError> {
        let text = self.db.encode("a budget", account)?;
        tx.prepare_cached(
            "INSERT INTO budget_accounts (key, account) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET account = excluded.account",
        )
        .and_then(|mut s| s.execute(rusqlite::params![account.key.to_string(), text]))
        .map_err(|e| self.db.err("write a budget", e))?;
        Ok(())
    }

    /// Settles reservation `id`: commits `actual`, or releases it with `None`, marking
    /// `forget` (alerts of its reservation that could not be recorded) as not reported.
    async fn settle(
        &self,
        id: ReservationId,
        actual: Option<Usage>,
        forget: &[BudgetAlert],
    ) -> Result<Settlement, BudgetError> {
        let act = actual.map(Usage::to_array);
        if let Some(a) = act {
            if a[0] < 0 {
                return Err(BudgetError::InvalidAmount {
                    detail: "actual cost is negative".into(),
                });
            }
        }
        let Ok(raw) = i64::try_from(id.raw()) else {
            return Err(BudgetError::UnknownReservation { id });
        };
        let alerts = self
            .db
            .write(
                "settle a budget reservation",
                self.settling(id, raw, act, forget),
            )
            .await?;
        Ok(Settlement { alerts })
    }

    /// Releases reservation `id` without waiting, marking `forget` as not reported: what a
    /// reservation future dropped after its reservation was made undoes (see
    /// [`Unclaimed`]).
    fn release_detached(&self, id: ReservationId, forget: &[BudgetAlert]) {
        if let Ok(raw) = i64::try_from(id.raw()) {
            self.db.write_detached(
                "release an unclaimed budget reservation",
                self.settling(id, raw, None, forget),
            );
        }
    }

    /// The write of [`SqliteBudgetLedger::settle`].
    fn settling(
        &self,
        id: ReservationId,
        raw: i64,
        act: Option<[i64; DIMENSIONS]>,
        forget: &[BudgetAlert],
    ) -> impl FnMut(&Transaction<'_>) -> Result<Vec<BudgetAlert>, BudgetError> + Send + 'static
    {
        let now = self.clock.now();
        let this = self.clone();
        let forget = forget.to_vec();
        move |tx| {
            let row: Option<(String, bool)> = tx
                .prepare_cached(
                    "SELECT reservation, expired FROM budget_reservations WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([raw], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(|e| this.db.err("read a budget reservation", e))?;
            let Some((text, expired)) = row else {
                let issued: i64 = tx
                    .prepare_cached(
                        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'budget_reservations'",
                    )
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(|e| this.db.err("read the reservation counter", e))?;
                return Err(if raw >= 1 && raw <= issued {
                    BudgetError::AlreadySettled { id }
                } else {
                    BudgetError::UnknownReservation { id }
                });
            };
            let held: Held = this.db.decode("budget_reservations", &raw, &text)?;
            tx.prepare_cached("DELETE FROM budget_reservations WHERE id = ?1")
                .and_then(|mut s| s.execute([raw]))
                .map_err(|e| this.db.err("settle a budget reservation", e))?;
            let mut act = act;
            if let (Some(key), Some(_)) = (&held.key, act) {
                let charged = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO budget_charges (key, reservation) VALUES (?1, ?2)",
                    )
                    .and_then(|mut s| s.execute(rusqlite::params![key, raw]))
                    .map_err(|e| this.db.err("charge a key", e))?;
                if charged == 0 {
                    // another reservation under this key was committed first: the key is
                    // charged once, so this commit only gives its reservation back
                    act = None;
                }
            }
            let mut alerts = Vec::new();
            for key in held.keys {
                let Some(mut a) = this.load(tx, key)? else {
                    return Err(BudgetError::Store(StoreError::Corrupt {
                        location: format!(
                            "table `budget_reservations` row `{raw}` in `{}`",
                            this.db.location()
                        ),
                        detail: format!("the reservation charged budget `{key}`, which is missing"),
                    }));
                };
                a.roll_to(now);
                if !expired {
                    for d in 0..DIMENSIONS {
                        a.reserved[d] = a.reserved[d].saturating_sub(held.amount[d]);
                    }
                }
                a.forget(&forget);
                if let Some(act) = act {
                    for d in 0..DIMENSIONS {
                        a.committed[d] = a.committed[d].saturating_add(act[d]);
                    }
                    a.check_alerts(&mut alerts);
                }
                this.store(tx, &a)?;
            }
            Ok::<_, BudgetError>(alerts)
        }
    }

    /// The checks and writes of a reservation, after the sweep; a refusal writes nothing.
    fn reserve_in(
        &self,
        tx: &Transaction<'_>,
        now: Timestamp,
        chain: &BudgetChain,
        amt: [i64; DIMENSIONS],
        options: &ReserveOptions,
        expires: i64,
    ) -> Result<(ReservationId, Vec<BudgetAlert>), BudgetError> {
        if let Some(key) = &options.key {
            let charged: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM budget_charges WHERE key = ?1)")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)))
                .map_err(|e| self.db.err("read a charge key", e))?;
            if charged {
                return Err(BudgetError::AlreadyCharged { key: key.clone() });
            }
        }
        let mut accounts = Vec::with_capacity(4);
        for key in chain.keys() {
            match self.load(tx, key)? {
                Some(a) => accounts.push(a),
                None if key == BudgetKey::Organisation => {
                    return Err(BudgetError::NoBudget { key });
                }
                None => {}
            }
        }
        // check every level first: nothing is written on refusal
        for a in &mut accounts {
            a.roll_to(now);
            let limit = a.limits.array();
            for d in 0..DIMENSIONS {
                if limit[d] == i64::MAX {
                    continue;
                }
                let used = a.committed[d].saturating_add(a.reserved[d]);
                if refuses(used, amt[d], limit[d]) {
                    return Err(BudgetError::Exceeded {
                        key: a.key,
                        dimension: Dimension::ALL[d],
                        limit: limit[d],
                        used,
                        requested: amt[d],
                    });
                }
            }
        }
        let mut alerts = Vec::new();
        for a in &mut accounts {
            for d in 0..DIMENSIONS {
                a.reserved[d] = a.reserved[d].saturating_add(amt[d]);
            }
            a.check_alerts(&mut alerts);
            self.store(tx, a)?;
        }
        let held = Held {
            keys: accounts.iter().map(|a| a.key).collect(),
            amount: amt,
            run: chain.run,
            key: options.key.clone(),
        };
        let text = self.db.encode("a budget reservation", &held)?;
        tx.prepare_cached(
            "INSERT INTO budget_reservations (reservation, expires_at) VALUES (?1, ?2)",
        )
        .and_then(|mut s| s.execute(rusqlite::params![text, expires]))
        .map_err(|e| self.db.err("record a budget reservation", e))?;
        let id = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
        Ok((ReservationId::from_raw(id), alerts))
    }

    async fn emit(&self, alerts: &[BudgetAlert]) -> Result<(), BudgetError> {
        match &self.audit {
            Some(audit) => record_alerts(audit.as_ref(), self.clock.now(), alerts).await,
            None => Ok(()),
        }
    }
}

/// A reservation made whose id its caller has not received yet. If the caller's future is
/// dropped meanwhile (while the reservation's alerts are recorded), the reservation is
/// released without waiting, and its alerts are reported again next time (they may not
/// have been recorded): nobody would hold the id to settle it.
struct Unclaimed<'a> {
    ledger: &'a SqliteBudgetLedger,
    id: Option<ReservationId>,
    alerts: &'a [BudgetAlert],
}

impl Unclaimed<'_> {
    /// The caller has the id (or the reservation was undone already).
    fn claim(mut self) {
        self.id = None;
    }
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.ledger.release_detached(id, self.alerts);
        }
    }
}

#[async_trait]
impl BudgetLedger for SqliteBudgetLedger {
    async fn set_limits(&self, key: BudgetKey, limits: BudgetLimits) -> Result<(), BudgetError> {
        let now = self.clock.now();
        let this = self.clone();
        self.db
            .write("set budget limits", move |tx| {
                let w = limits.period.window(now);
                let account = match this.load(tx, key)? {
                    Some(mut a) => {
                        a.roll(w);
                        a.alerted = [0; DIMENSIONS];
                        a.limits = limits.clone();
                        a
                    }
                    None => Account {
                        key,
                        limits: limits.clone(),
                        window: w,
                        committed: [0; DIMENSIONS],
                        reserved: [0; DIMENSIONS],
                        alerted: [0; DIMENSIONS],
                    },
                };
                this.store(tx, &account)?;
                Ok::<_, BudgetError>(())
            })
            .await
    }

    async fn reserve(
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
        let now = self.clock.now();
        let expires = nanos(now).saturating_add(options.ttl.map_or(self.ttl, duration_nanos));
        // a refusal commits the transaction too: it wrote nothing but the sweep, which
        // stands (as in the in-memory ledger); store errors roll everything back. A caller
        // gone before its turn (a worker's future dropped while it waited for the writer)
        // reserves nothing: nobody would hold the reservation's id to settle it.
        // Gone while the write ran, it leaves a reservation nobody took: released again.
        let (this, chain, options) = (self.clone(), *chain, options.clone());
        let ledger = self.clone();
        let (id, alerts) = self
            .db
            .write_unless_abandoned(
                "reserve budget",
                move |tx| {
                    this.sweep(tx, now)?;
                    match this.reserve_in(tx, now, &chain, amt, &options, expires) {
                        Err(BudgetError::Store(e)) => Err(BudgetError::Store(e)),
                        refused_or_reserved => Ok(refused_or_reserved),
                    }
                },
                move |made| {
                    if let Ok((id, alerts)) = made {
                        ledger.release_detached(id, &alerts);
                    }
                },
            )
            .await??;
        // until the caller has the id, a dropped future releases the reservation
        let unclaimed = Unclaimed {
            ledger: self,
            id: Some(id),
            alerts: &alerts,
        };
        if let Err(e) = self.emit(&alerts).await {
            // the caller never sees the id: undo the reservation so nothing leaks, and report
            // its alerts again next time since they were never recorded (a failed undo leaves
            // the reservation to expire)
            let _ = self.settle(id, None, &alerts).await;
            unclaimed.claim();
            return Err(e);
        }
        unclaimed.claim();
        Ok(Reservation { id, alerts })
    }

    async fn commit(&self, id: ReservationId, actual: Usage) -> Result<Settlement, BudgetError> {
        let s = self.settle(id, Some(actual), &[]).await?;
        self.emit(&s.alerts).await?;
        Ok(s)
    }

    async fn release(&self, id: ReservationId) -> Result<Settlement, BudgetError> {
        let s = self.settle(id, None, &[]).await?;
        self.emit(&s.alerts).await?;
        Ok(s)
    }

    async fn release_run(&self, run: RunId) -> Result<usize, BudgetError> {
        let now = self.clock.now();
        let this = self.clone();
        self.db
            .write("release a run's budget reservations", move |tx| {
                let rows: Vec<(i64, String, bool)> = tx
                    .prepare_cached("SELECT id, reservation, expired FROM budget_reservations")
                    .and_then(|mut s| {
                        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| this.db.err("read budget reservations", e))?;
                let mut released = 0;
                for (raw, text, expired) in rows {
                    let held: Held = this.db.decode("budget_reservations", &raw, &text)?;
                    if held.run != Some(run) {
                        continue;
                    }
                    tx.prepare_cached("DELETE FROM budget_reservations WHERE id = ?1")
                        .and_then(|mut s| s.execute([raw]))
                        .map_err(|e| this.db.err("release a budget reservation", e))?;
                    released += 1;
                    if expired {
                        continue;
                    }
                    for key in held.keys {
                        if let Some(mut a) = this.load(tx, key)? {
                            a.roll_to(now);
                            for d in 0..DIMENSIONS {
                                a.reserved[d] = a.reserved[d].saturating_sub(held.amount[d]);
                            }
                            this.store(tx, &a)?;
                        }
                    }
                }
                Ok::<_, BudgetError>(released)
            })
            .await
    }

    async fn expire_reservations(&self) -> Result<usize, BudgetError> {
        let now = self.clock.now();
        let this = self.clone();
        self.db
            .write("expire budget reservations", move |tx| this.sweep(tx, now))
            .await
    }

    async fn usage(&self, key: BudgetKey) -> Result<Option<BudgetUsage>, BudgetError> {
        let now = self.clock.now();
        let this = self.clone();
        let (due, account) = self
            .db
            .read("read a budget", move |tx| {
                Ok::<_, StoreError>((this.due(tx, now)?, this.load(tx, key)?))
            })
            .await?;
        let account = if due {
            // expire what is due first, so usage never counts an expired reservation
            let this = self.clone();
            self.db
                .write("read a budget", move |tx| {
                    this.sweep(tx, now)?;
                    Ok::<_, BudgetError>(this.load(tx, key)?)
                })
                .await?
        } else {
            account
        };
        Ok(account.map(|mut a| {
            a.roll(a.limits.period.window(now));
            BudgetUsage {
                key,
                limits: a.limits,
                committed: Usage::from_array(a.committed),
                reserved: Usage::from_array(a.reserved),
            }
        }))
    }
}

impl SqliteBudgetLedger {
    /// The number of reservations not yet settled (for example left behind by a crash
    /// between a reservation and its settlement).
    pub fn outstanding(&self) -> Result<usize, StoreError> {
        let db = self.db.clone();
        self.db
            .read_blocking("count budget reservations", move |tx| {
                tx.query_row("SELECT count(*) FROM budget_reservations", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|e| db.err("count budget reservations", e))
            })
    }
}
