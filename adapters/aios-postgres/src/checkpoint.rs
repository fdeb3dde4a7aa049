//! Run checkpoints and leases in tables `aios_runs` and `aios_checkpoints`.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{ApprovalId, RunId, StoreError, Timestamp};
use aios_orchestrator::{
    claimable, lease_available, lease_renewable, leased, renewal_refused, Checkpoint,
    CheckpointStore, Lease, RunStatus, RunSummary, WorkerId, RUN_STATE_SCHEMA,
};
use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::db::{to_sql_u64, Cached, Db, Tx};

/// A [`CheckpointStore`] in PostgreSQL. Clones share the pool.
///
/// Table `aios_runs` holds, per run, the newest fencing token issued, the current lease and
/// a summary of the latest checkpoint (for `list`); table `aios_checkpoints` keeps every
/// checkpoint (the history `fork` reads) as JSON.
///
/// Every lease operation and every save locks the run's row (`SELECT ... FOR UPDATE`, the row
/// created first if the run is new) and checks and writes under that lock in one
/// transaction: of two workers acquiring one run at once exactly one gets the lease (the
/// other sees it held and gets [`StoreError::Conflict`]), the fencing token only grows, and a
/// save with an older token than the newest issued is refused as [`StoreError::Fenced`] and
/// writes nothing, whichever machine it comes from.
///
/// The work queue ([`CheckpointStore::claim`]) is one statement: it picks the oldest rows
/// that are `ready` (their latest checkpoint can go on, see
/// [`aios_orchestrator::claimable`]) and whose lease is free or lapsed, locks them with
/// `FOR UPDATE SKIP LOCKED` (a row another worker is claiming or writing is passed over, not
/// waited for) and gives each a new lease with the next fencing token, in one round trip.
/// Because the lease check is re-evaluated on the locked row, two workers never get the same
/// run while its lease is live. `save` and [`CheckpointStore::wake`] keep `ready` in step
/// under the run's row lock; a partial index on the ready rows keeps the pick proportional
/// to the runs that can go on (plus those in flight), not to every run ever stored.
///
/// Every stored checkpoint carries a checksum (SHA-256, as hex, over `aios-checkpoint`, the
/// run id, a zero byte, the seq as i64 big-endian and the stored JSON, as in `aios-sqlite`),
/// checked before decoding: damage is [`StoreError::Corrupt`] naming run and seq. A checkpoint
/// whose run state was written by a newer build is [`StoreError::UnsupportedVersion`].
#[derive(Debug, Clone)]
pub struct PgCheckpointStore {
    db: Arc<Db>,
}

const TABLE: &str = "aios_checkpoints";

fn expires(now: Timestamp, ttl: Duration) -> Timestamp {
    now.checked_add_signed(chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(now)
}

fn checksum(run: &str, seq: i64, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"aios-checkpoint");
    h.update(run.as_bytes());
    h.update([0u8]);
    h.update(seq.to_be_bytes());
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

/// A run's row, locked.
struct RunRow {
    last_token: u64,
    lease: Option<Lease>,
    latest_seq: u64,
    /// The latest checkpoint's status (none before the first save).
    status: Option<RunStatus>,
    /// The approvals reported settled for the run.
    settled: Vec<ApprovalId>,
}

/// A lease's expiry as stored in `lease_expires`: microseconds since the epoch.
fn micros(at: Timestamp) -> i64 {
    at.timestamp_micros()
}

impl PgCheckpointStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Begins a transaction that locks the run's row, creating it if the run is new: one
    /// round trip (an upsert locks the row it finds and returns its newest committed values).
    async fn lock_run<'a>(
        &'a self,
        what: &'a str,
        run: &str,
    ) -> Result<(Tx<'a>, RunRow), StoreError> {
        let (tx, rows) = self
            .db
            .begin_with(
                what,
                "INSERT INTO aios_runs (run) VALUES ($1)
                 ON CONFLICT (run) DO UPDATE SET run = excluded.run
                 RETURNING last_token, lease, latest_seq, status, settled",
                &[&run],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(StoreError::Backend {
                detail: format!(
                    "locking run {run} in `{}` returned no row",
                    self.db.location()
                ),
            });
        };
        let lease: Option<String> = row.get(1);
        let status: Option<String> = row.get(3);
        let settled: Option<String> = row.get(4);
        let row = RunRow {
            last_token: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            lease: lease
                .map(|l| self.db.decode("aios_runs", &run, &l))
                .transpose()?,
            latest_seq: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            status: status
                .map(|s| self.db.decode("aios_runs", &run, &s))
                .transpose()?,
            settled: settled
                .map(|s| self.db.decode("aios_runs", &run, &s))
                .transpose()?
                .unwrap_or_default(),
        };
        Ok((tx, row))
    }

    fn read_row(
        &self,
        run: &str,
        seq: i64,
        text: &str,
        stored: &str,
    ) -> Result<Checkpoint, StoreError> {
        let location = || {
            format!(
                "table `{TABLE}` row `{run} seq {seq}` in `{}`",
                self.db.location()
            )
        };
        let computed = checksum(run, seq, text);
        if !stored.eq_ignore_ascii_case(&computed) {
            return Err(StoreError::Corrupt {
                location: location(),
                detail: format!(
                    "checksum mismatch: the stored checkpoint was changed or damaged (stored \
                     `{stored}`, computed `{computed}`)"
                ),
            });
        }
        let newer = |schema: u64| StoreError::UnsupportedVersion {
            location: location(),
            found: u32::try_from(schema).unwrap_or(u32::MAX),
            supported: RUN_STATE_SCHEMA,
        };
        match self
            .db
            .decode::<Checkpoint>(TABLE, &format!("{run} seq {seq}"), text)
        {
            Ok(c) if c.state.schema > RUN_STATE_SCHEMA => Err(newer(u64::from(c.state.schema))),
            Ok(c) => Ok(c),
            Err(e) => {
                let schema = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v["state"]["schema"].as_u64());
                match schema {
                    Some(s) if s > u64::from(RUN_STATE_SCHEMA) => Err(newer(s)),
                    _ => Err(e),
                }
            }
        }
    }
}

#[async_trait]
impl CheckpointStore for PgCheckpointStore {
    async fn acquire(
        &self,
        run: RunId,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let db = &self.db;
        let what = "acquire a lease";
        let key = run.to_string();
        let (tx, row) = self.lock_run(what, &key).await?;
        if !lease_available(row.lease.as_ref(), now) {
            tx.rollback().await?;
            return Err(leased(run, row.lease.as_ref()));
        }
        let token = row.last_token.saturating_add(1);
        let lease = Lease {
            run,
            owner: owner.clone(),
            token,
            expires_at: expires(now, ttl),
        };
        let text = db.encode("a lease", &lease)?;
        let token_sql = to_sql_u64(db.location(), "fencing token", token)?;
        tx.commit_with(
            "UPDATE aios_runs SET last_token = $2, lease = $3, lease_expires = $4 WHERE run = $1",
            &[&key, &token_sql, &text, &micros(lease.expires_at)],
        )
        .await?;
        Ok(lease)
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let db = &self.db;
        let what = "renew a lease";
        let key = lease.run.to_string();
        let (tx, row) = self.lock_run(what, &key).await?;
        if !lease_renewable(row.lease.as_ref(), row.last_token, lease) {
            tx.rollback().await?;
            return Err(renewal_refused(lease, row.last_token));
        }
        let renewed = Lease {
            expires_at: expires(now, ttl),
            ..lease.clone()
        };
        let text = db.encode("a lease", &renewed)?;
        tx.commit_with(
            "UPDATE aios_runs SET lease = $2, lease_expires = $3 WHERE run = $1",
            &[&key, &text, &micros(renewed.expires_at)],
        )
        .await?;
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let what = "release a lease";
        let key = lease.run.to_string();
        let (tx, row) = self.lock_run(what, &key).await?;
        if row.lease.is_some_and(|l| l.token == lease.token) {
            tx.commit_with(
                "UPDATE aios_runs SET lease = NULL, lease_expires = NULL WHERE run = $1",
                &[&key],
            )
            .await?;
            Ok(())
        } else {
            tx.rollback().await
        }
    }

    async fn save(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let db = &self.db;
        let what = "save a checkpoint";
        let run = checkpoint.run;
        let key = run.to_string();
        let text = db.encode("a checkpoint", checkpoint)?;
        let status = db.encode("a run status", &checkpoint.state.status)?;
        let parked = matches!(checkpoint.state.status, RunStatus::Parked { .. });
        let (tx, row) = self.lock_run(what, &key).await?;
        if lease.run != run || lease.token < row.last_token || lease.token == 0 {
            tx.rollback().await?;
            return Err(StoreError::Fenced {
                what: format!("run {run}"),
                presented: lease.token,
                current: row.last_token,
            });
        }
        if checkpoint.seq <= row.latest_seq {
            tx.rollback().await?;
            return Err(StoreError::Conflict {
                detail: format!(
                    "checkpoint {} of run {run} is not after {}",
                    checkpoint.seq, row.latest_seq
                ),
            });
        }
        let seq = to_sql_u64(db.location(), "checkpoint seq", checkpoint.seq)?;
        let sum = checksum(&key, seq, &text);
        let terminal = checkpoint.state.status.is_terminal();
        let ready = claimable(&checkpoint.state.status, &row.settled);
        let settled = if terminal || row.settled.is_empty() {
            None
        } else {
            Some(db.encode("settled approvals", &row.settled)?)
        };
        // the checkpoint and the run's summary in one statement, with the commit
        tx.commit_with(
            "WITH saved AS (
                 INSERT INTO aios_checkpoints (run, seq, checkpoint, checksum)
                 VALUES ($1, $2, $3, $4)
             )
             UPDATE aios_runs SET latest_seq = $2, workflow = $5, status = $6, parked = $7,
                                  ready = $8, settled = $9
             WHERE run = $1",
            &[
                &key,
                &seq,
                &text,
                &sum,
                &checkpoint.state.workflow,
                &status,
                &parked,
                &ready,
                &settled,
            ],
        )
        .await?;
        Ok(())
    }

    async fn latest(&self, run: RunId) -> Result<Option<Checkpoint>, StoreError> {
        let what = "read the latest checkpoint";
        let key = run.to_string();
        let client = self.db.client(what).await?;
        let row = client
            .c_query_opt(
                "SELECT seq, checkpoint, checksum FROM aios_checkpoints
                 WHERE run = $1 ORDER BY seq DESC LIMIT 1",
                &[&key],
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        row.map(|r| self.read_row(&key, r.get(0), r.get(1), r.get(2)))
            .transpose()
    }

    async fn get(&self, run: RunId, seq: u64) -> Result<Option<Checkpoint>, StoreError> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let what = "read a checkpoint";
        let key = run.to_string();
        let client = self.db.client(what).await?;
        let row = client
            .c_query_opt(
                "SELECT checkpoint, checksum FROM aios_checkpoints WHERE run = $1 AND seq = $2",
                &[&key, &seq],
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        row.map(|r| self.read_row(&key, seq, r.get(0), r.get(1)))
            .transpose()
    }

    async fn list(&self, parked_only: bool) -> Result<Vec<RunSummary>, StoreError> {
        let what = "list runs";
        let client = self.db.client(what).await?;
        let rows = client
            .c_query(
                "SELECT run, workflow, status, latest_seq, lease FROM aios_runs
                 WHERE latest_seq > 0 AND (NOT $1 OR parked) ORDER BY run",
                &[&parked_only],
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        rows.iter()
            .map(|r| {
                let run: &str = r.get(0);
                let lease: Option<&str> = r.get(4);
                let lease = lease
                    .map(|text| self.db.decode("aios_runs", &run, text))
                    .transpose()?;
                let status: &str = r.get(2);
                Ok(RunSummary {
                    run: run.parse().map_err(|e| StoreError::Corrupt {
                        location: format!(
                            "table `aios_runs` row `{run}` in `{}`",
                            self.db.location()
                        ),
                        detail: format!("not a run id: {e}"),
                    })?,
                    workflow: r.get::<_, Option<String>>(1).unwrap_or_default(),
                    status: self.db.decode("aios_runs", &run, status)?,
                    seq: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                    lease,
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let what = "claim runs";
        let db = &self.db;
        let expires_at = expires(now, ttl);
        // the lease as its JSON would be written by `encode`, token and run filled in by the
        // statement
        let at_text = match serde_json::to_value(expires_at) {
            Ok(serde_json::Value::String(s)) => s,
            _ => {
                return Err(StoreError::Backend {
                    detail: format!("a lease expiry `{expires_at}` did not encode as text"),
                })
            }
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = db.client(what).await?;
        let rows = client
            .c_query(
                "WITH picked AS (
                     SELECT run FROM aios_runs
                     WHERE ready AND (lease_expires IS NULL OR lease_expires <= $1)
                     ORDER BY run
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE aios_runs r
                    SET last_token = r.last_token + 1,
                        lease = json_build_object('run', r.run, 'owner', $3::text,
                                                  'token', r.last_token + 1,
                                                  'expires_at', $4::text)::text,
                        lease_expires = $5
                   FROM picked
                  WHERE r.run = picked.run
              RETURNING r.run, r.last_token",
                &[
                    &micros(now),
                    &limit,
                    &owner.as_str(),
                    &at_text,
                    &micros(expires_at),
                ],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        let mut out: Vec<Lease> = rows
            .iter()
            .map(|r| {
                let run: &str = r.get(0);
                Ok(Lease {
                    run: run.parse().map_err(|e| StoreError::Corrupt {
                        location: format!("table `aios_runs` row `{run}` in `{}`", db.location()),
                        detail: format!("not a run id: {e}"),
                    })?,
                    owner: owner.clone(),
                    token: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    expires_at,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        out.sort_by_key(|l| l.run);
        Ok(out)
    }

    async fn wake(&self, run: RunId, approval: ApprovalId) -> Result<(), StoreError> {
        let db = &self.db;
        let what = "wake a run";
        let key = run.to_string();
        let (tx, mut row) = self.lock_run(what, &key).await?;
        let terminal = row.status.as_ref().is_some_and(RunStatus::is_terminal);
        if terminal || row.settled.contains(&approval) {
            return tx.rollback().await;
        }
        row.settled.push(approval);
        let ready = row
            .status
            .as_ref()
            .is_some_and(|s| claimable(s, &row.settled));
        let settled = db.encode("settled approvals", &row.settled)?;
        tx.commit_with(
            "UPDATE aios_runs SET settled = $2, ready = $3 WHERE run = $1",
            &[&key, &settled, &ready],
        )
        .await?;
        Ok(())
    }
}
