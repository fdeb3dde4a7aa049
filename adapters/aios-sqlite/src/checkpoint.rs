//! Run checkpoints and leases in tables `runs` and `checkpoints`.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{ApprovalId, RunId, StoreError, Timestamp};
use aios_orchestrator::{
    claimable, lease_available, lease_renewable, leased, renewal_refused, Checkpoint,
    CheckpointStore, Lease, RunStatus, RunSummary, WorkerId, RUN_STATE_SCHEMA,
};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

use crate::db::{map_sqlite, to_sql_u64, Db};

/// A [`CheckpointStore`] in SQLite. Clones share the store's connections.
///
/// Table `runs` holds, per run, the newest fencing token issued, the current lease and a
/// summary of the latest checkpoint (for `list`); table `checkpoints` keeps every checkpoint
/// (the history `fork` reads) as JSON. `acquire` and `save` check the lease and write in one
/// `BEGIN IMMEDIATE` transaction, so two processes can never both hold a valid lease or
/// interleave writes: a save with an older token is refused as
/// [`StoreError::Fenced`] and writes nothing. A checkpoint whose run state was written by a
/// newer build is reported as [`StoreError::UnsupportedVersion`], not misread.
///
/// Every stored checkpoint carries a checksum in column `checksum`: SHA-256, as hex, over
/// the bytes `aios-checkpoint`, the run id as text, a zero byte, the seq (i64 big-endian) and
/// the stored JSON. `latest`, `get` and `list` (for each run's latest checkpoint) check it
/// before decoding: a changed byte, a row moved to another run or seq, or a missing checksum
/// is [`StoreError::Corrupt`] naming the run and seq, never a misread state.
///
/// The work queue ([`CheckpointStore::claim`]) is one `BEGIN IMMEDIATE` transaction too:
/// it takes the database's write lock, reads the runs marked `ready` (their latest
/// checkpoint can go on, see [`aios_orchestrator::claimable`]) oldest id first through a
/// partial index, skips those whose lease is live, and leases the rest (up to the limit)
/// with the next fencing token before it commits. Every process on the file claims under
/// the same lock, so two of them never get the same run while its lease is live. `save` and
/// [`CheckpointStore::wake`] keep `ready` in step in their transactions.
///
/// Under [`crate::Durability::Full`], `save` is fsynced before it returns; `acquire` and
/// `release` are not (they survive a killed process, and the next fsynced save makes them
/// durable in order). A lease change lost to a power failure is harmless: the workers that
/// relied on it stopped with the machine, and no checkpoint written under a lost token can
/// have survived it.
#[derive(Debug, Clone)]
pub struct SqliteCheckpointStore {
    db: Arc<Db>,
}

const TABLE: &str = "checkpoints";

fn expires(now: Timestamp, ttl: Duration) -> Timestamp {
    now.checked_add_signed(chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(now)
}

/// A run's row in `runs`.
struct RunRow {
    last_token: u64,
    lease: Option<Lease>,
    latest_seq: u64,
}

/// The checksum of checkpoint `seq` of `run` stored as `text` (see [`SqliteCheckpointStore`]).
fn checksum(run: &str, seq: i64, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"aios-checkpoint");
    h.update(run.as_bytes());
    h.update([0u8]);
    h.update(seq.to_be_bytes());
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

/// Gives every checkpoint row without a checksum its checksum: part of the migration that
/// adds the column, in its transaction, so no stored checkpoint is left without one.
pub(crate) fn backfill_checksums(location: &str, tx: &Transaction<'_>) -> Result<(), StoreError> {
    let what = "add checksums to the stored checkpoints";
    let err = |e| map_sqlite(location, what, e);
    let rows: Vec<(String, i64, String)> = tx
        .prepare("SELECT run, seq, checkpoint FROM checkpoints WHERE checksum IS NULL")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(err)?;
    let mut update = tx
        .prepare("UPDATE checkpoints SET checksum = ?3 WHERE run = ?1 AND seq = ?2")
        .map_err(err)?;
    for (run, seq, text) in rows {
        let sum = checksum(&run, seq, &text);
        update
            .execute(rusqlite::params![run, seq, sum])
            .map_err(err)?;
    }
    Ok(())
}

impl SqliteCheckpointStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Checks the stored checksum of checkpoint `seq` of `run` against its stored bytes.
    fn verify(
        &self,
        run: &str,
        seq: i64,
        text: &str,
        stored: Option<&str>,
    ) -> Result<(), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            location: format!(
                "table `{TABLE}` row `{run} seq {seq}` in `{}`",
                self.db.location()
            ),
            detail,
        };
        let Some(stored) = stored else {
            return Err(corrupt("the checkpoint has no checksum".into()));
        };
        let computed = checksum(run, seq, text);
        if stored.eq_ignore_ascii_case(&computed) {
            Ok(())
        } else {
            Err(corrupt(format!(
                "checksum mismatch: the stored checkpoint was changed or damaged (stored \
                 `{stored}`, computed `{computed}`)"
            )))
        }
    }

    /// Verifies and decodes one stored checkpoint.
    fn read_row(
        &self,
        run: &str,
        seq: i64,
        text: &str,
        stored: Option<&str>,
    ) -> Result<Checkpoint, StoreError> {
        self.verify(run, seq, text, stored)?;
        self.decode(run, seq, text)
    }

    fn run_row(&self, tx: &Transaction<'_>, run: &str) -> Result<Option<RunRow>, StoreError> {
        let row: Option<(i64, Option<String>, i64)> = tx
            .prepare_cached("SELECT last_token, lease, latest_seq FROM runs WHERE run = ?1")
            .and_then(|mut s| {
                s.query_row([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.db.err("read a run's lease", e))?;
        row.map(|(token, lease, seq)| {
            Ok(RunRow {
                last_token: u64::try_from(token).unwrap_or(0),
                lease: lease
                    .map(|l| self.db.decode("runs", &run, &l))
                    .transpose()?,
                latest_seq: u64::try_from(seq).unwrap_or(0),
            })
        })
        .transpose()
    }

    /// The queue fields of a run's row: its latest status (none before the first save) and
    /// the approvals reported settled for it.
    fn queue_row(
        &self,
        tx: &Transaction<'_>,
        run: &str,
    ) -> Result<(Option<RunStatus>, Vec<ApprovalId>), StoreError> {
        let what = "read a run's queue state";
        let row: Option<(Option<String>, Option<String>)> = tx
            .prepare_cached("SELECT status, settled FROM runs WHERE run = ?1")
            .and_then(|mut s| {
                s.query_row([run], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.db.err(what, e))?;
        let Some((status, settled)) = row else {
            return Ok((None, vec![]));
        };
        Ok((
            status
                .map(|s| self.db.decode("runs", &run, &s))
                .transpose()?,
            settled
                .map(|s| self.db.decode("runs", &run, &s))
                .transpose()?
                .unwrap_or_default(),
        ))
    }

    fn decode(&self, run: &str, seq: i64, text: &str) -> Result<Checkpoint, StoreError> {
        let key = format!("{run} seq {seq}");
        let newer = |schema: u64| StoreError::UnsupportedVersion {
            location: format!("table `{TABLE}` row `{key}` in `{}`", self.db.location()),
            found: u32::try_from(schema).unwrap_or(u32::MAX),
            supported: RUN_STATE_SCHEMA,
        };
        match self.db.decode::<Checkpoint>(TABLE, &key, text) {
            Ok(c) if c.state.schema > RUN_STATE_SCHEMA => Err(newer(u64::from(c.state.schema))),
            Ok(c) => Ok(c),
            Err(e) => {
                // a newer build may have written fields this one cannot read
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
impl CheckpointStore for SqliteCheckpointStore {
    async fn acquire(
        &self,
        run: RunId,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let this = self.clone();
        let key = run.to_string();
        let owner = owner.clone();
        self.db.write_unsynced("acquire a lease", move |tx| {
            let db = &this.db;
            let row = this.run_row(tx, &key)?;
            let (last_token, current) = match row {
                Some(r) => (r.last_token, r.lease),
                None => (0, None),
            };
            if !lease_available(current.as_ref(), now) {
                return Err(leased(run, current.as_ref()));
            }
            let token = last_token.saturating_add(1);
            let lease = Lease {
                run,
                owner: owner.clone(),
                token,
                expires_at: expires(now, ttl),
            };
            let text = db.encode("a lease", &lease)?;
            let token_sql = to_sql_u64(db.location(), "fencing token", token)?;
            tx.prepare_cached(
                "INSERT INTO runs (run, last_token, lease) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run) DO UPDATE SET last_token = excluded.last_token, lease = excluded.lease",
            )
            .and_then(|mut s| s.execute(rusqlite::params![key, token_sql, text]))
            .map_err(|e| db.err("acquire a lease", e))?;
            Ok(lease)
        })
        .await
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let this = self.clone();
        let key = lease.run.to_string();
        let lease = lease.clone();
        self.db
            .write_unsynced("renew a lease", move |tx| {
                let db = &this.db;
                let Some(row) = this.run_row(tx, &key)? else {
                    return Err(renewal_refused(&lease, 0));
                };
                if !lease_renewable(row.lease.as_ref(), row.last_token, &lease) {
                    return Err(renewal_refused(&lease, row.last_token));
                }
                let renewed = Lease {
                    expires_at: expires(now, ttl),
                    ..lease.clone()
                };
                let text = db.encode("a lease", &renewed)?;
                tx.prepare_cached("UPDATE runs SET lease = ?2 WHERE run = ?1")
                    .and_then(|mut s| s.execute(rusqlite::params![key, text]))
                    .map_err(|e| db.err("renew a lease", e))?;
                Ok(renewed)
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let this = self.clone();
        let key = lease.run.to_string();
        let token = lease.token;
        self.db
            .write_unsynced("release a lease", move |tx| {
                let db = &this.db;
                let current = this.run_row(tx, &key)?.and_then(|r| r.lease);
                if current.is_some_and(|l| l.token == token) {
                    tx.prepare_cached("UPDATE runs SET lease = NULL WHERE run = ?1")
                        .and_then(|mut s| s.execute([&key]))
                        .map_err(|e| db.err("release a lease", e))?;
                }
                Ok(())
            })
            .await
    }

    async fn save(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let this = self.clone();
        let run = checkpoint.run;
        let key = run.to_string();
        let text = self.db.encode("a checkpoint", checkpoint)?;
        let status = self.db.encode("a run status", &checkpoint.state.status)?;
        let parked = matches!(checkpoint.state.status, RunStatus::Parked { .. });
        let (lease_run, token) = (lease.run, lease.token);
        let (seq, workflow) = (checkpoint.seq, checkpoint.state.workflow.clone());
        let new_status = checkpoint.state.status.clone();
        self.db.write("save a checkpoint", move |tx| {
            let db = &this.db;
            let (last_token, latest_seq, exists) = match this.run_row(tx, &key)? {
                Some(r) => (r.last_token, r.latest_seq, true),
                None => (0, 0, false),
            };
            if lease_run != run || token < last_token || token == 0 {
                return Err(StoreError::Fenced {
                    what: format!("run {run}"),
                    presented: token,
                    current: last_token,
                });
            }
            if seq <= latest_seq {
                return Err(StoreError::Conflict {
                    detail: format!("checkpoint {seq} of run {run} is not after {latest_seq}"),
                });
            }
            let seq = to_sql_u64(db.location(), "checkpoint seq", seq)?;
            let sum = checksum(&key, seq, &text);
            let (_, settled) = this.queue_row(tx, &key)?;
            let ready = claimable(&new_status, &settled);
            let settled = if new_status.is_terminal() || settled.is_empty() {
                None
            } else {
                Some(db.encode("settled approvals", &settled)?)
            };
            tx.prepare_cached(
                "INSERT INTO checkpoints (run, seq, checkpoint, checksum) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![key, seq, text, sum]))
            .map_err(|e| db.err("save a checkpoint", e))?;
            let sql = if exists {
                "UPDATE runs SET latest_seq = ?2, workflow = ?3, status = ?4, parked = ?5,
                                 ready = ?6, settled = ?7
                 WHERE run = ?1"
            } else {
                "INSERT INTO runs (run, last_token, latest_seq, workflow, status, parked, ready, settled)
                 VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7)"
            };
            tx.prepare_cached(sql)
                .and_then(|mut s| {
                    s.execute(rusqlite::params![
                        key,
                        seq,
                        workflow,
                        status,
                        parked,
                        ready,
                        settled
                    ])
                })
                .map_err(|e| db.err("save a checkpoint", e))?;
            Ok(())
        })
        .await
    }

    async fn latest(&self, run: RunId) -> Result<Option<Checkpoint>, StoreError> {
        let key = run.to_string();
        let (db, k) = (self.db.clone(), key.clone());
        let row: Option<(i64, String, Option<String>)> = self
            .db
            .read("read the latest checkpoint", move |tx| {
                tx.prepare_cached(
                    "SELECT seq, checkpoint, checksum FROM checkpoints
                     WHERE run = ?1 ORDER BY seq DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([&k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(|e| db.err("read the latest checkpoint", e))
            })
            .await?;
        row.map(|(seq, text, sum)| self.read_row(&key, seq, &text, sum.as_deref()))
            .transpose()
    }

    async fn get(&self, run: RunId, seq: u64) -> Result<Option<Checkpoint>, StoreError> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let key = run.to_string();
        let (db, k) = (self.db.clone(), key.clone());
        let row: Option<(String, Option<String>)> = self
            .db
            .read("read a checkpoint", move |tx| {
                tx.prepare_cached(
                    "SELECT checkpoint, checksum FROM checkpoints WHERE run = ?1 AND seq = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(rusqlite::params![k, seq], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(|e| db.err("read a checkpoint", e))
            })
            .await?;
        row.map(|(text, sum)| self.read_row(&key, seq, &text, sum.as_deref()))
            .transpose()
    }

    async fn list(&self, parked_only: bool) -> Result<Vec<RunSummary>, StoreError> {
        // the summaries live in `runs`; a listing does not read every checkpoint, so one
        // damaged checkpoint does not hide the other runs: it is reported (as `Corrupt`,
        // naming run and seq) when that run's checkpoint is read
        type Row = (String, String, String, i64, Option<String>);
        let db = self.db.clone();
        let rows: Vec<Row> = self
            .db
            .read("list runs", move |tx| {
                tx.prepare_cached(
                    "SELECT run, workflow, status, latest_seq, lease FROM runs
                 WHERE latest_seq > 0 AND (?1 = 0 OR parked = 1) ORDER BY run",
                )
                .and_then(|mut s| {
                    s.query_map([parked_only], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect()
                })
                .map_err(|e| db.err("list runs", e))
            })
            .await?;
        rows.into_iter()
            .map(|(run, workflow, status, seq, lease)| {
                let lease = match lease {
                    Some(text) => Some(self.db.decode("runs", &run, &text)?),
                    None => None,
                };
                Ok(RunSummary {
                    run: run.parse().map_err(|e| StoreError::Corrupt {
                        location: format!("table `runs` row `{run}` in `{}`", self.db.location()),
                        detail: format!("not a run id: {e}"),
                    })?,
                    workflow,
                    status: self.db.decode("runs", &run, &status)?,
                    seq: u64::try_from(seq).unwrap_or(0),
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
        let this = self.clone();
        let owner = owner.clone();
        let what = "claim runs";
        self.db
            .write_unsynced(what, move |tx| {
                let db = &this.db;
                let owner = &owner;
                // the ready runs, oldest first; those with a live lease (in flight) are passed
                // over, so this reads what is in flight plus what is handed out
                let mut out = vec![];
                let mut pick = tx
                    .prepare_cached(
                        "SELECT run, last_token, lease FROM runs WHERE ready = 1 ORDER BY run",
                    )
                    .map_err(|e| db.err(what, e))?;
                let mut rows = pick.query([]).map_err(|e| db.err(what, e))?;
                let mut chosen: Vec<(String, u64)> = vec![];
                while chosen.len() < limit {
                    let Some(row) = rows.next().map_err(|e| db.err(what, e))? else {
                        break;
                    };
                    let run: String = row.get(0).map_err(|e| db.err(what, e))?;
                    let token: i64 = row.get(1).map_err(|e| db.err(what, e))?;
                    let lease: Option<String> = row.get(2).map_err(|e| db.err(what, e))?;
                    let lease: Option<Lease> =
                        lease.map(|l| db.decode("runs", &run, &l)).transpose()?;
                    if lease_available(lease.as_ref(), now) {
                        chosen.push((run, u64::try_from(token).unwrap_or(0)));
                    }
                }
                drop(rows);
                let mut update = tx
                    .prepare_cached("UPDATE runs SET last_token = ?2, lease = ?3 WHERE run = ?1")
                    .map_err(|e| db.err(what, e))?;
                for (key, last_token) in chosen {
                    let lease = Lease {
                        run: key.parse().map_err(|e| StoreError::Corrupt {
                            location: format!("table `runs` row `{key}` in `{}`", db.location()),
                            detail: format!("not a run id: {e}"),
                        })?,
                        owner: owner.clone(),
                        token: last_token.saturating_add(1),
                        expires_at: expires(now, ttl),
                    };
                    let text = db.encode("a lease", &lease)?;
                    let token_sql = to_sql_u64(db.location(), "fencing token", lease.token)?;
                    update
                        .execute(rusqlite::params![key, token_sql, text])
                        .map_err(|e| db.err(what, e))?;
                    out.push(lease);
                }
                Ok(out)
            })
            .await
    }

    async fn wake(&self, run: RunId, approval: ApprovalId) -> Result<(), StoreError> {
        let this = self.clone();
        let what = "wake a run";
        let key = run.to_string();
        self.db.write_unsynced(what, move |tx| {
            let db = &this.db;
            let (status, mut settled) = this.queue_row(tx, &key)?;
            if status.as_ref().is_some_and(RunStatus::is_terminal) || settled.contains(&approval)
            {
                return Ok(());
            }
            settled.push(approval);
            let ready = status.as_ref().is_some_and(|s| claimable(s, &settled));
            let text = db.encode("settled approvals", &settled)?;
            tx.prepare_cached(
                "INSERT INTO runs (run, last_token, settled, ready) VALUES (?1, 0, ?2, ?3)
                 ON CONFLICT (run) DO UPDATE SET settled = excluded.settled, ready = excluded.ready",
            )
            .and_then(|mut s| s.execute(rusqlite::params![key, text, ready]))
            .map_err(|e| db.err(what, e))?;
            Ok(())
        })
        .await
    }
}
