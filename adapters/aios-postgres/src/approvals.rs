//! Approval requests in table `aios_approvals`, with change notifications.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{AnchorId, ApprovalId, StoreError};
use aios_governance::{ApprovalRequest, ApprovalState, ApprovalStore, StateKind};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio_postgres::{AsyncMessage, GenericClient};

use crate::db::{describe, map_pg, Db, TlsMode, APPROVAL_CHANNEL};

/// An [`ApprovalStore`] in PostgreSQL: one row per request, the request as JSON beside
/// columns for its anchor, state kind and creation time. Clones share the pool.
///
/// `transition` locks the row (`FOR UPDATE`), checks the expected state and writes the new
/// one in one transaction: a true compare-and-set across workers. Every insert and transition
/// also sends a notification on channel `aios_approvals` (payload: the approval id),
/// delivered when it commits, so a worker waiting in [`PgApprovalStore::wait_for_change`]
/// on another machine wakes at once; the wait also re-reads every
/// [`crate::PgOptions::poll_interval`], so a notification lost with a connection delays it
/// by at most that.
#[derive(Debug, Clone)]
pub struct PgApprovalStore {
    db: Arc<Db>,
}

const TABLE: &str = "aios_approvals";

fn kind_name(kind: StateKind) -> &'static str {
    match kind {
        StateKind::Pending => "pending",
        StateKind::Decided => "decided",
        StateKind::Redeemed => "redeemed",
        StateKind::Expired => "expired",
    }
}

impl PgApprovalStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    async fn read(
        &self,
        client: &impl GenericClient,
        id: ApprovalId,
        lock: bool,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        let key = id.to_string();
        let sql = if lock {
            "SELECT request FROM aios_approvals WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT request FROM aios_approvals WHERE id = $1"
        };
        let row = client
            .query_opt(sql, &[&key])
            .await
            .map_err(|e| self.db.err("read an approval request", e))?;
        row.map(|r| self.db.decode(TABLE, &key, r.get::<_, &str>(0)))
            .transpose()
    }

    /// Waits until approval `id` is no longer in state `seen` (for example decided by an
    /// operator in another process) and returns it as it is then, or `None` if `timeout`
    /// passes first. [`StoreError::NotFound`] if there is no such request.
    ///
    /// It listens on the notification channel over a connection of its own (not taken from
    /// the pool) and re-reads the request on every notification, and at least every
    /// [`crate::PgOptions::poll_interval`] in case a notification was missed. Needs a Tokio
    /// runtime with its timer. A lost listening connection is
    /// [`StoreError::Unavailable`].
    pub async fn wait_for_change(
        &self,
        id: ApprovalId,
        seen: StateKind,
        timeout: Duration,
    ) -> Result<Option<ApprovalRequest>, StoreError> {
        match self.db.options().tls {
            TlsMode::Disabled => {
                let (client, connection) = self
                    .db
                    .config()
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| self.db.err("listen for approvals", e))?;
                self.listen(client, connection, id, seen, timeout).await
            }
            #[cfg(feature = "tls")]
            TlsMode::Required => {
                let (client, connection) = self
                    .db
                    .config()
                    .connect(crate::tls::connector()?)
                    .await
                    .map_err(|e| self.db.err("listen for approvals", e))?;
                self.listen(client, connection, id, seen, timeout).await
            }
        }
    }

    async fn listen<S, T>(
        &self,
        client: tokio_postgres::Client,
        mut connection: tokio_postgres::Connection<S, T>,
        id: ApprovalId,
        seen: StateKind,
        timeout: Duration,
    ) -> Result<Option<ApprovalRequest>, StoreError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let location = describe(self.db.config());
        let (wake, mut woken) = futures::channel::mpsc::unbounded::<()>();
        // the connection is driven here, in this future, not spawned: it does the client's
        // I/O and hands notifications over
        let drive =
            futures::stream::poll_fn(move |cx| connection.poll_message(cx)).for_each(move |m| {
                if let Ok(AsyncMessage::Notification(_)) = m {
                    let _ = wake.unbounded_send(());
                }
                futures::future::ready(())
            });
        let poll = self.db.options().poll_interval;
        let wait = async {
            client
                .batch_execute(&format!("LISTEN {APPROVAL_CHANNEL}"))
                .await
                .map_err(|e| map_pg(&location, "listen for approvals", &e))?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                // read after listening, so a change committed meanwhile is not missed
                let Some(request) = self.read(&client, id, false).await? else {
                    return Err(StoreError::NotFound {
                        what: format!("approval {id}"),
                    });
                };
                if request.state.kind() != seen {
                    return Ok(Some(request));
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                let nap = tokio::time::sleep_until(deadline.min(now + poll));
                futures::select! {
                    _ = woken.next() => {}
                    _ = nap.fuse() => {}
                }
            }
        };
        futures::pin_mut!(drive, wait);
        match futures::future::select(wait, drive).await {
            futures::future::Either::Left((out, _)) => out,
            futures::future::Either::Right(((), _)) => Err(StoreError::Unavailable {
                detail: format!("the connection to `{location}` was lost (listen for approvals)"),
            }),
        }
    }

    async fn notify(&self, client: &impl GenericClient, id: &str) -> Result<(), StoreError> {
        client
            .execute("SELECT pg_notify($1, $2)", &[&APPROVAL_CHANNEL, &id])
            .await
            .map_err(|e| self.db.err("notify an approval change", e))?;
        Ok(())
    }
}

#[async_trait]
impl ApprovalStore for PgApprovalStore {
    async fn insert(&self, request: ApprovalRequest) -> Result<(), StoreError> {
        let db = &self.db;
        let what = "insert an approval request";
        let text = db.encode("an approval request", &request)?;
        let id = request.id.to_string();
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        let n = tx
            .execute(
                "INSERT INTO aios_approvals (id, anchor, state, created_secs, created_nano, request)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                &[
                    &id,
                    &request.anchor.to_string(),
                    &kind_name(request.state.kind()),
                    &request.created_at.timestamp(),
                    &i64::from(request.created_at.timestamp_subsec_nanos()),
                    &text,
                ],
            )
            .await
            .map_err(|e| db.err(what, e))?;
        if n == 0 {
            return Err(StoreError::AlreadyExists {
                what: format!("approval {}", request.id),
            });
        }
        self.notify(&*tx, &id).await?;
        tx.commit().await.map_err(|e| db.err(what, e))
    }

    async fn get(&self, id: ApprovalId) -> Result<Option<ApprovalRequest>, StoreError> {
        let client = self.db.client("read an approval request").await?;
        self.read(&**client, id, false).await
    }

    async fn pending(&self, anchor: Option<AnchorId>) -> Result<Vec<ApprovalRequest>, StoreError> {
        let what = "list pending approvals";
        let anchor = anchor.map(|a| a.to_string());
        let client = self.db.client(what).await?;
        let rows = client
            .query(
                "SELECT id, request FROM aios_approvals
                 WHERE state = 'pending' AND ($1::TEXT IS NULL OR anchor = $1)
                 ORDER BY created_secs, created_nano, id",
                &[&anchor],
            )
            .await
            .map_err(|e| self.db.err(what, e))?;
        rows.iter()
            .map(|r| {
                self.db
                    .decode(TABLE, &r.get::<_, &str>(0), r.get::<_, &str>(1))
            })
            .collect()
    }

    async fn transition(
        &self,
        id: ApprovalId,
        expected: StateKind,
        next: ApprovalState,
    ) -> Result<ApprovalRequest, StoreError> {
        let db = &self.db;
        let what = "transition an approval request";
        let key = id.to_string();
        let mut client = db.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db.err(what, e))?;
        let Some(mut request) = self.read(&*tx, id, true).await? else {
            return Err(StoreError::NotFound {
                what: format!("approval {id}"),
            });
        };
        if request.state.kind() != expected {
            return Err(StoreError::Conflict {
                detail: format!(
                    "approval {id} is {:?}, expected {expected:?}",
                    request.state.kind()
                ),
            });
        }
        request.state = next;
        let text = db.encode("an approval request", &request)?;
        tx.execute(
            "UPDATE aios_approvals SET state = $2, request = $3 WHERE id = $1",
            &[&key, &kind_name(request.state.kind()), &text],
        )
        .await
        .map_err(|e| db.err(what, e))?;
        self.notify(&*tx, &key).await?;
        tx.commit().await.map_err(|e| db.err(what, e))?;
        Ok(request)
    }
}
