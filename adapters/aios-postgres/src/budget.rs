//! The budget ledger in tables `aios_budget_accounts`, `aios_budget_reservations` and
//! `aios_budget_charges`.

// per-dimension loops index several parallel arrays at once
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{AuditLog, Clock, RunId, StoreError, Timestamp};
use aios_governance::{
    record_alerts, refuses, unreport_alerts, BudgetAlert, BudgetChain, BudgetError, BudgetKey,
    BudgetLedger, BudgetLimits, BudgetUsage, Dimension, Period, Reservation, ReservationId,
    ReserveOptions, Settlement, Usage, DEFAULT_RESERVATION_TTL, DIMENSIONS,
};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

use crate::db::{Cached, Db};

/// A [`BudgetLedger`] in PostgreSQL, with exactly the semantics of
/// [`aios_governance::InMemoryBudgetLedger`] (and `aios-sqlite`'s ledger): all-or-nothing
/// reservation over the chain, periods read from the injected [`Clock`], each alert
/// threshold reported once per budget, dimension and period, reservations that expire,
/// charge keys charged once. Clones share the pool.
///
/// One row per budget holds its limits, window, committed and reserved amounts and the
/// alerts already reported, as JSON; one row per unsettled reservation holds the budgets it
/// charged and the amount.
///
/// Concurrency: every operation is one transaction that first locks the reservation rows it
/// settles or expires (`FOR UPDATE`, in id order), then the account rows of every budget it
/// reads or changes (`SELECT ... FOR UPDATE`, in key order), and only then checks and writes.
/// The fixed order means two workers never deadlock, and the lock means a check still holds
/// when its write commits: reservations racing for the last of a limit, from any number of
/// workers and machines, never take the budget above it. A refused or failed operation
/// writes nothing but the expiry of due reservations.
///
/// A settled reservation's row is deleted; the id sequence tells an already settled id from
/// one never issued.
#[derive(Debug, Clone)]
pub struct PgBudgetLedger {
    db: Arc<Db>,
    clock: Arc<dyn Clock>,
    audit: Option<Arc<dyn AuditLog>>,
    /// The default time to live, in nanoseconds.
    ttl: i64,
}

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

/// One budget's stored state (the same JSON as `aios-sqlite`'s).
#[derive(Debug, Serialize, Deserialize)]
struct Account {
    key: BudgetKey,
    limits: BudgetLimits,
    window: i64,
    committed: [i64; DIMENSIONS],
    reserved: [i64; DIMENSIONS],
    alerted: [u32; DIMENSIONS],
}

/// One unsettled reservation's stored state.
#[derive(Debug, Serialize, Deserialize)]
struct Held {
    keys: Vec<BudgetKey>,
    amount: [i64; DIMENSIONS],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<RunId>,
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

    fn unreserve(&mut self, amount: &[i64; DIMENSIONS]) {
        for d in 0..DIMENSIONS {
            self.reserved[d] = self.reserved[d].saturating_sub(amount[d]);
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

/// Accounts locked by a transaction, by their key column.
type Locked = BTreeMap<String, Account>;

/// Reservation rows locked by a transaction: id, state, whether expired.
type HeldRows = Vec<(i64, Held, bool)>;

impl PgBudgetLedger {
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

    /// Appends the alerts of every operation to `audit` as
    /// [`aios_core::AuditEvent::BudgetAlert`]s (after the operation committed), like the
    /// in-memory ledger.
    pub fn with_audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The number of reservations not yet settled.
    pub async fn outstanding(&self) -> Result<usize, StoreError> {
        let what = "count budget reservations";
        let client = self.db.client(what).await?;
        let row = client
            .c_query_one("SELECT count(*) FROM aios_budget_reservations", &[])
            .await
            .map_err(|e| self.db.err(what, e))?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn rows(&self, rows: &[tokio_postgres::Row]) -> Result<HeldRows, StoreError> {
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let held: Held =
                    self.db
                        .decode("aios_budget_reservations", &id, r.get::<_, &str>(1))?;
                Ok((id, held, r.get::<_, bool>(2)))
            })
            .collect()
    }

    /// Locks the reservations due at `now` (in id order).
    async fn lock_due(
        &self,
        tx: &impl GenericClient,
        now: Timestamp,
    ) -> Result<HeldRows, StoreError> {
        let stmt = tx
            .prepare(
                "SELECT id, reservation, expired FROM aios_budget_reservations
                 WHERE NOT expired AND expires_at <= $1 ORDER BY id FOR UPDATE",
            )
            .await
            .map_err(|e| self.db.err("read due budget reservations", e))?;
        let rows = tx
            .query(&stmt, &[&nanos(now)])
            .await
            .map_err(|e| self.db.err("read due budget reservations", e))?;
        self.rows(&rows)
    }

    /// Locks the accounts of `keys` (in key order); missing ones are absent from the map.
    async fn lock_accounts(
        &self,
        tx: &impl GenericClient,
        keys: impl IntoIterator<Item = BudgetKey>,
    ) -> Result<Locked, StoreError> {
        let mut names: Vec<String> = keys.into_iter().map(|k| k.to_string()).collect();
        names.sort_unstable();
        names.dedup();
        let rows = tx
            .c_query(
                "SELECT key, account FROM aios_budget_accounts WHERE key = ANY($1)
                 ORDER BY key FOR UPDATE",
                &[&names],
            )
            .await
            .map_err(|e| self.db.err("lock budgets", e))?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let account: Account =
                    self.db
                        .decode("aios_budget_accounts", &name, r.get::<_, &str>(1))?;
                Ok((name, account))
            })
            .collect()
    }

    async fn store(&self, tx: &impl GenericClient, account: &Account) -> Result<(), StoreError> {
        let text = self.db.encode("a budget", account)?;
        tx.c_execute(
            "INSERT INTO aios_budget_accounts (key, account) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET account = excluded.account",
            &[&account.key.to_string(), &text],
        )
        .await
        .map_err(|e| self.db.err("write a budget", e))?;
        Ok(())
    }

    /// Marks `due` expired and takes their amounts out of the locked accounts.
    async fn expire(
        &self,
        tx: &impl GenericClient,
        now: Timestamp,
        due: &HeldRows,
        accounts: &mut Locked,
    ) -> Result<(), StoreError> {
        if due.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = due.iter().map(|(id, _, _)| *id).collect();
        tx.c_execute(
            "UPDATE aios_budget_reservations SET expired = TRUE WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| self.db.err("expire budget reservations", e))?;
        for (_, held, _) in due {
            for key in &held.keys {
                if let Some(a) = accounts.get_mut(&key.to_string()) {
                    a.roll_to(now);
                    a.unreserve(&held.amount);
                }
            }
        }
        Ok(())
    }

    /// Expires what is due at `now` in its own transaction; returns how many.
    async fn sweep(&self, now: Timestamp) -> Result<usize, BudgetError> {
        let what = "expire budget reservations";
        let mut client = self.db.client(what).await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.db.err(what, e))?;
        let due = self.lock_due(&tx, now).await?;
        let keys: Vec<BudgetKey> = due.iter().flat_map(|(_, h, _)| h.keys.clone()).collect();
        let mut accounts = self.lock_accounts(&tx, keys).await?;
        self.expire(&tx, now, &due, &mut accounts).await?;
        for a in accounts.values() {
            self.store(&tx, a).await?;
        }
        tx.commit().await.map_err(|e| self.db.err(what, e))?;
        Ok(due.len())
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
        let now = self.clock.now();
        let db = &self.db;
        let what = "settle a budget reservation";
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        let rows = tx
            .c_query(
                "SELECT id, reservation, expired FROM aios_budget_reservations
                 WHERE id = $1 FOR UPDATE",
                &[&raw],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        let Some((_, held, expired)) = self.rows(&rows)?.pop() else {
            let row = tx
                .c_query_one(
                    "SELECT last_value, is_called FROM aios_budget_reservations_id_seq",
                    &[],
                )
                .await
                .map_err(|e| db.err("read the reservation counter", e))?;
            let issued = if row.get::<_, bool>(1) {
                row.get::<_, i64>(0)
            } else {
                0
            };
            return Err(if raw >= 1 && raw <= issued {
                BudgetError::AlreadySettled { id }
            } else {
                BudgetError::UnknownReservation { id }
            });
        };
        let mut accounts = self.lock_accounts(&tx, held.keys.iter().copied()).await?;
        tx.c_execute(
            "DELETE FROM aios_budget_reservations WHERE id = $1",
            &[&raw],
        )
        .await
        .map_err(|e| db.err(what, e))?;
        let mut act = act;
        if let (Some(key), Some(_)) = (&held.key, act) {
            let charged = tx
                .c_execute(
                    "INSERT INTO aios_budget_charges (key, reservation) VALUES ($1, $2)
                     ON CONFLICT (key) DO NOTHING",
                    &[key, &raw],
                )
                .await
                .map_err(|e| db.err("charge a key", e))?;
            if charged == 0 {
                // another reservation with this key was committed first (two workers drove
                // the call, one after its lease lapsed): the key is charged once, so this
                // commit only gives its reservation back
                act = None;
            }
        }
        let mut alerts = Vec::new();
        for key in &held.keys {
            let Some(a) = accounts.get_mut(&key.to_string()) else {
                return Err(BudgetError::Store(StoreError::Corrupt {
                    location: format!(
                        "table `aios_budget_reservations` row `{raw}` in `{}`",
                        db.location()
                    ),
                    detail: format!("the reservation charged budget `{key}`, which is missing"),
                }));
            };
            a.roll_to(now);
            if !expired {
                a.unreserve(&held.amount);
            }
            a.forget(forget);
            if let Some(act) = act {
                for d in 0..DIMENSIONS {
                    a.committed[d] = a.committed[d].saturating_add(act[d]);
                }
                a.check_alerts(&mut alerts);
            }
            self.store(&tx, a).await?;
        }
        tx.commit().await.map_err(|e| db.err(what, e))?;
        Ok(Settlement { alerts })
    }

    async fn emit(&self, alerts: &[BudgetAlert]) -> Result<(), BudgetError> {
        match &self.audit {
            Some(audit) => record_alerts(audit.as_ref(), self.clock.now(), alerts).await,
            None => Ok(()),
        }
    }
}

/// Checks every level of the chain; `Ok` when the amount fits all of them.
fn check(
    accounts: &mut Locked,
    chain: &BudgetChain,
    amt: &[i64; DIMENSIONS],
    now: Timestamp,
) -> Result<Vec<String>, BudgetError> {
    let mut present = Vec::with_capacity(4);
    for key in chain.keys() {
        let name = key.to_string();
        match accounts.get_mut(&name) {
            Some(a) => {
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
                present.push(name);
            }
            None if key == BudgetKey::Organisation => {
                return Err(BudgetError::NoBudget { key });
            }
            None => {}
        }
    }
    Ok(present)
}

/// The ledger's operations as they run: inside a task of their own (see [`PgBudgetLedger`]'s
/// `BudgetLedger` impl), so a transaction holding account row locks always finishes, whether
/// or not the caller's future is still being polled.
#[derive(Debug, Clone)]
struct Direct(PgBudgetLedger);

impl std::ops::Deref for Direct {
    type Target = PgBudgetLedger;
    fn deref(&self) -> &PgBudgetLedger {
        &self.0
    }
}

/// Runs `f` on a Tokio task of its own and waits for it.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, BudgetError>> + Send + 'static,
) -> Result<T, BudgetError> {
    tokio::spawn(f).await.map_err(|e| {
        BudgetError::Store(StoreError::Backend {
            detail: format!("a budget operation's task ended abnormally: {e}"),
        })
    })?
}

/// Every operation that locks rows runs on a Tokio task of its own (`tokio::spawn`): a
/// transaction holding the locks of accounts every run shares (the organisation's) then
/// always commits promptly, even when the future that asked for it is not polled meanwhile
/// (a run's driver awaiting one call while a sibling task's reservation holds the lock would
/// otherwise stall every worker on the database).
///
/// A caller dropped meanwhile (a worker killed, a call timed out) does not cancel a
/// settlement: a commit or release completes, as if the caller had gone away after it. A
/// reservation does not stand without its caller, since nobody would hold its id to settle
/// it (it would stay open, holding budget, until it expired, and could appear after the
/// worker that took the run over had released the run's reservations): one whose caller is
/// gone when it would commit is rolled back, and one whose caller went away later (while it
/// committed, while its alerts were recorded, or before it read the answer) is released
/// again (see `Handover`).
#[async_trait]
impl BudgetLedger for PgBudgetLedger {
    async fn set_limits(&self, key: BudgetKey, limits: BudgetLimits) -> Result<(), BudgetError> {
        let d = Direct(self.clone());
        detached(async move { d.set_limits(key, limits).await }).await
    }

    async fn reserve(
        &self,
        chain: &BudgetChain,
        amount: Usage,
        options: &ReserveOptions,
    ) -> Result<Reservation, BudgetError> {
        let d = Direct(self.clone());
        let (chain, options) = (*chain, options.clone());
        // the answer's channel closes with this future: the task then knows nobody waits for
        // the id, and a reservation it cannot hand over is released
        let (answer, answered) = futures::channel::oneshot::channel();
        tokio::spawn(async move {
            let reserved = d.reserve_for(&chain, amount, &options, Some(&answer)).await;
            // not taken (sent to nobody, or never read), it is released when dropped
            let _ = answer.send(Handover {
                reserved: Some(reserved),
                ledger: d,
            });
        });
        answered
            .await
            .ok()
            .and_then(Handover::take)
            .unwrap_or_else(|| {
                Err(BudgetError::Store(StoreError::Backend {
                    detail: "a budget reservation's task ended abnormally".to_string(),
                }))
            })
    }

    async fn commit(&self, id: ReservationId, actual: Usage) -> Result<Settlement, BudgetError> {
        let d = Direct(self.clone());
        detached(async move { d.commit(id, actual).await }).await
    }

    async fn release(&self, id: ReservationId) -> Result<Settlement, BudgetError> {
        let d = Direct(self.clone());
        detached(async move { d.release(id).await }).await
    }

    async fn release_run(&self, run: RunId) -> Result<usize, BudgetError> {
        let d = Direct(self.clone());
        detached(async move { d.release_run(run).await }).await
    }

    async fn expire_reservations(&self) -> Result<usize, BudgetError> {
        let d = Direct(self.clone());
        detached(async move { d.expire_reservations().await }).await
    }

    async fn usage(&self, key: BudgetKey) -> Result<Option<BudgetUsage>, BudgetError> {
        Direct(self.clone()).usage(key).await
    }
}

/// Where a reservation's task hands its answer to the caller.
type Answer = futures::channel::oneshot::Sender<Handover>;

/// A reservation's answer on its way to its caller. A reservation nobody takes (its caller's
/// future dropped before the answer came, or after it came but before it was read) is
/// released when this is dropped: nobody else would hold its id.
struct Handover {
    reserved: Option<Result<Reservation, BudgetError>>,
    ledger: Direct,
}

impl Handover {
    /// The answer, taken by its caller.
    fn take(mut self) -> Option<Result<Reservation, BudgetError>> {
        self.reserved.take()
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(Ok(r)) = self.reserved.take() {
            // outside a runtime (the caller's executor gone) it is left to expire
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let ledger = self.ledger.clone();
                runtime.spawn(async move {
                    let _ = ledger.settle(r.id, None, &[]).await;
                });
            }
        }
    }
}

impl Direct {
    /// [`BudgetLedger::reserve`] for the caller waiting on `waiting`, if given: rolled back
    /// instead of committed if that caller is gone by then, released again if it went away
    /// while the reservation committed or its alerts were recorded.
    async fn reserve_for(
        &self,
        chain: &BudgetChain,
        amount: Usage,
        options: &ReserveOptions,
        waiting: Option<&Answer>,
    ) -> Result<Reservation, BudgetError> {
        let amt = amount.to_array();
        if amt[0] < 0 {
            return Err(BudgetError::InvalidAmount {
                detail: format!("cost `{}` is negative", amount.cost),
            });
        }
        let now = self.clock.now();
        let expires = nanos(now).saturating_add(options.ttl.map_or(self.ttl, duration_nanos));
        let db = &self.db;
        let what = "reserve budget";
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        let due = self.lock_due(&tx, now).await?;
        let keys: Vec<BudgetKey> = due
            .iter()
            .flat_map(|(_, h, _)| h.keys.clone())
            .chain(chain.keys())
            .collect();
        let mut accounts = self.lock_accounts(&tx, keys).await?;
        self.expire(&tx, now, &due, &mut accounts).await?;
        let charged = match &options.key {
            Some(key) => {
                let row = tx
                    .c_query_one(
                        "SELECT EXISTS (SELECT 1 FROM aios_budget_charges WHERE key = $1)",
                        &[key],
                    )
                    .await
                    .map_err(|e| db.err("read a charge key", e))?;
                row.get::<_, bool>(0)
            }
            None => false,
        };
        let checked = match (&options.key, charged) {
            (Some(key), true) => Err(BudgetError::AlreadyCharged { key: key.clone() }),
            _ => check(&mut accounts, chain, &amt, now),
        };
        let present = match checked {
            Ok(present) => present,
            Err(refusal) => {
                // a refusal writes nothing but the expiry of due reservations, which stands
                if !due.is_empty() {
                    for a in accounts.values() {
                        self.store(&tx, a).await?;
                    }
                    tx.commit().await.map_err(|e| db.err(what, e))?;
                }
                return Err(refusal);
            }
        };
        let mut alerts = Vec::new();
        let mut held_keys = Vec::with_capacity(present.len());
        for name in &present {
            if let Some(a) = accounts.get_mut(name) {
                for d in 0..DIMENSIONS {
                    a.reserved[d] = a.reserved[d].saturating_add(amt[d]);
                }
                a.check_alerts(&mut alerts);
                held_keys.push(a.key);
            }
        }
        for a in accounts.values() {
            self.store(&tx, a).await?;
        }
        let held = Held {
            keys: held_keys,
            amount: amt,
            run: chain.run,
            key: options.key.clone(),
        };
        let text = db.encode("a budget reservation", &held)?;
        let run = chain.run.map(|r| r.to_string());
        let row = tx
            .c_query_one(
                "INSERT INTO aios_budget_reservations (run, expires_at, reservation)
                 VALUES ($1, $2, $3) RETURNING id",
                &[&run, &expires, &text],
            )
            .await
            .map_err(|e| db.err("record a budget reservation", e))?;
        let id = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let gone = || waiting.is_some_and(Answer::is_canceled);
        if gone() {
            // nobody would learn the id: dropping the transaction rolls the reservation back
            return Err(BudgetError::Store(StoreError::Backend {
                detail:
                    "the caller went away before the reservation was made; nothing was reserved"
                        .to_string(),
            }));
        }
        tx.commit().await.map_err(|e| db.err(what, e))?;
        let id = ReservationId::from_raw(id);
        let emitted = self.emit(&alerts).await;
        if emitted.is_err() || gone() {
            // the caller never sees the id (its alerts could not be recorded, or it went away
            // meanwhile): undo the reservation so nothing leaks, and report alerts that were
            // not recorded again next time. A failed undo leaves the reservation to expire.
            let unrecorded = if emitted.is_err() { &alerts[..] } else { &[] };
            let _ = self.settle(id, None, unrecorded).await;
            emitted?;
            return Err(BudgetError::Store(StoreError::Backend {
                detail:
                    "the caller went away before the reservation was made; nothing was reserved"
                        .to_string(),
            }));
        }
        Ok(Reservation { id, alerts })
    }
}

#[async_trait]
impl BudgetLedger for Direct {
    async fn set_limits(&self, key: BudgetKey, limits: BudgetLimits) -> Result<(), BudgetError> {
        let now = self.clock.now();
        let what = "set budget limits";
        let mut client = self.db.client(what).await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.db.err(what, e))?;
        let w = limits.period.window(now);
        let account = match self.lock_accounts(&tx, [key]).await?.pop_first() {
            Some((_, mut a)) => {
                a.roll(w);
                a.alerted = [0; DIMENSIONS];
                a.limits = limits;
                a
            }
            None => Account {
                key,
                limits,
                window: w,
                committed: [0; DIMENSIONS],
                reserved: [0; DIMENSIONS],
                alerted: [0; DIMENSIONS],
            },
        };
        self.store(&tx, &account).await?;
        tx.commit().await.map_err(|e| self.db.err(what, e))?;
        Ok(())
    }

    async fn reserve(
        &self,
        chain: &BudgetChain,
        amount: Usage,
        options: &ReserveOptions,
    ) -> Result<Reservation, BudgetError> {
        self.reserve_for(chain, amount, options, None).await
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
        let db = &self.db;
        let what = "release a run's budget reservations";
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        let rows = tx
            .c_query(
                "SELECT id, reservation, expired FROM aios_budget_reservations
                 WHERE run = $1 ORDER BY id FOR UPDATE",
                &[&run.to_string()],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        let held = self.rows(&rows)?;
        let keys: Vec<BudgetKey> = held.iter().flat_map(|(_, h, _)| h.keys.clone()).collect();
        let mut accounts = self.lock_accounts(&tx, keys).await?;
        let ids: Vec<i64> = held.iter().map(|(id, _, _)| *id).collect();
        tx.c_execute(
            "DELETE FROM aios_budget_reservations WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| db.err(what, e))?;
        for (_, h, expired) in &held {
            if *expired {
                continue;
            }
            for key in &h.keys {
                if let Some(a) = accounts.get_mut(&key.to_string()) {
                    a.roll_to(now);
                    a.unreserve(&h.amount);
                }
            }
        }
        for a in accounts.values() {
            self.store(&tx, a).await?;
        }
        tx.commit().await.map_err(|e| db.err(what, e))?;
        Ok(held.len())
    }

    async fn expire_reservations(&self) -> Result<usize, BudgetError> {
        self.sweep(self.clock.now()).await
    }

    async fn usage(&self, key: BudgetKey) -> Result<Option<BudgetUsage>, BudgetError> {
        let now = self.clock.now();
        let what = "read a budget";
        let (due, account) = {
            let client = self.db.client(what).await?;
            let due = client
                .c_query_one(
                    "SELECT EXISTS (SELECT 1 FROM aios_budget_reservations
                                    WHERE NOT expired AND expires_at <= $1)",
                    &[&nanos(now)],
                )
                .await
                .map_err(|e| self.db.err(what, e))?
                .get::<_, bool>(0);
            let row = client
                .c_query_opt(
                    "SELECT account FROM aios_budget_accounts WHERE key = $1",
                    &[&key.to_string()],
                )
                .await
                .map_err(|e| self.db.err(what, e))?;
            let account: Option<Account> = row
                .map(|r| {
                    self.db.decode(
                        "aios_budget_accounts",
                        &key.to_string(),
                        r.get::<_, &str>(0),
                    )
                })
                .transpose()?;
            (due, account)
        };
        let account = if due {
            // expire what is due first, so usage never counts an expired reservation
            self.sweep(now).await?;
            let client = self.db.client(what).await?;
            let row = client
                .c_query_opt(
                    "SELECT account FROM aios_budget_accounts WHERE key = $1",
                    &[&key.to_string()],
                )
                .await
                .map_err(|e| self.db.err(what, e))?;
            row.map(|r| {
                self.db.decode(
                    "aios_budget_accounts",
                    &key.to_string(),
                    r.get::<_, &str>(0),
                )
            })
            .transpose()?
        } else {
            account
        };
        Ok(account.map(|mut a: Account| {
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
