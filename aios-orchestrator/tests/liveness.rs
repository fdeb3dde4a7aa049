//! Liveness: a run whose tasks run side by side never waits on itself.
//!
//! The driver of a run polls its running tasks together. When one task finishes, the driver
//! records it (the audit log, a checkpoint) while the others are still in flight. If it then
//! awaited a checkpoint save without polling the others, and one of them held the run's save
//! lock while its own store call was answered, neither would ever go on: every thread idle,
//! the run hung (seen once in the SQLite fan-out crash test). These tests build that moment
//! on purpose and require that the run still finishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{ApprovalId, RoleId, RunId, StoreError, Timestamp};
use aios_orchestrator::{
    Checkpoint, CheckpointMode, CheckpointStore, ConnectorRequest, FnAgent,
    InMemoryCheckpointStore, Lease, OrchestratorConfig, Role, RunStatus, RunSummary, TaskSpec,
    WorkerId, Workflow,
};
use async_trait::async_trait;
use common::*;
use futures::channel::oneshot;
use parking_lot::Mutex;

/// One-shot signals between the test's agents and its store.
#[derive(Debug, Default)]
struct Signals {
    /// Set by task `a`: the next save is held.
    armed: AtomicBool,
    /// Told when the held save has started (and holds the run's save lock).
    held: Mutex<Option<oneshot::Sender<()>>>,
    /// Awaited by task `b` for `held`.
    held_rx: Mutex<Option<oneshot::Receiver<()>>>,
    /// Sent by task `b` to let the held save finish.
    release: Mutex<Option<oneshot::Sender<()>>>,
    /// Awaited by the held save.
    release_rx: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Signals {
    fn new() -> Arc<Self> {
        let (held, held_rx) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        Arc::new(Signals {
            armed: AtomicBool::new(false),
            held: Mutex::new(Some(held)),
            held_rx: Mutex::new(Some(held_rx)),
            release: Mutex::new(Some(release)),
            release_rx: Mutex::new(Some(release_rx)),
        })
    }
}

/// An in-memory checkpoint store whose save, once armed, waits to be released: a store call
/// in flight (an fsync, a network round trip) at the moment a sibling task finishes.
#[derive(Debug)]
struct HeldSaves {
    inner: InMemoryCheckpointStore,
    signals: Arc<Signals>,
}

#[async_trait]
impl CheckpointStore for HeldSaves {
    async fn acquire(
        &self,
        run: RunId,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner.acquire(run, owner, now, ttl).await
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner.renew(lease, now, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease).await
    }

    async fn save(&self, lease: &Lease, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        if self.signals.armed.swap(false, Ordering::SeqCst) {
            let held = self.signals.held.lock().take();
            let release = self.signals.release_rx.lock().take();
            if let (Some(held), Some(release)) = (held, release) {
                let _ = held.send(());
                let _ = release.await;
            }
        }
        self.inner.save(lease, checkpoint).await
    }

    async fn latest(&self, run: RunId) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.latest(run).await
    }

    async fn get(&self, run: RunId, seq: u64) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.get(run, seq).await
    }

    async fn list(&self, parked_only: bool) -> Result<Vec<RunSummary>, StoreError> {
        self.inner.list(parked_only).await
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        self.inner.claim(owner, now, ttl, limit).await
    }

    async fn wake(&self, run: RunId, approval: ApprovalId) -> Result<(), StoreError> {
        self.inner.wake(run, approval).await
    }
}

/// Runs `f` on a thread of its own and returns its result, or fails the test if it has not
/// returned after `limit` (a hang, not a slow machine: the run takes microseconds).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the run hung: no result after {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the run's thread panicked (above)")
        }
    }
}

/// Task `a` writes to the ledger, and the save that journals the write is held; task `b`
/// waits until it is, lets it go and finishes at once. The driver takes `b`'s result while
/// `a` still holds the save lock and has just been woken: the driver's own save must not
/// keep `a` from being polled.
#[test]
fn a_finished_task_is_recorded_while_a_sibling_holds_the_save() {
    let outcome = within(Duration::from_secs(30), || {
        let world = World::new();
        let signals = Signals::new();
        let a = {
            let signals = signals.clone();
            FnAgent::new(move |ctx, _input| {
                let signals = signals.clone();
                Box::pin(async move {
                    signals.armed.store(true, Ordering::SeqCst);
                    let out = ctx
                        .call(ConnectorRequest::new(
                            "ledger",
                            "write",
                            serde_json::json!({ "entry": "a" }),
                        ))
                        .await?;
                    Ok(out.output)
                })
            })
        };
        let b = {
            let signals = signals.clone();
            FnAgent::new(move |_ctx, _input| {
                let signals = signals.clone();
                Box::pin(async move {
                    let held = signals.held_rx.lock().take();
                    if let Some(held) = held {
                        let _ = held.await;
                    }
                    if let Some(release) = signals.release.lock().take() {
                        let _ = release.send(());
                    }
                    Ok(serde_json::json!({ "b": "done" }))
                })
            })
        };
        let orchestrator = builder(&world)
            .role(Role::new("worker", "work", Arc::new(a)).connector("ledger"))
            .role(Role::new("splitter", "splitting", Arc::new(b)))
            .checkpoints(Arc::new(HeldSaves {
                inner: InMemoryCheckpointStore::new(),
                signals,
            }))
            .config(OrchestratorConfig {
                concurrency: 2,
                checkpoints: CheckpointMode::EveryStep,
                ..OrchestratorConfig::default()
            })
            .build()
            .unwrap();
        let workflow = Workflow::new("side by side")
            .task(TaskSpec::new(
                "a",
                RoleId::from_name("worker"),
                serde_json::Value::Null,
            ))
            .task(TaskSpec::new(
                "b",
                RoleId::from_name("splitter"),
                serde_json::Value::Null,
            ));
        let outcome = futures::executor::block_on(orchestrator.start(workflow)).unwrap();
        (outcome, world.ledger.effects().len())
    });
    let (outcome, writes) = outcome;
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(writes, 1, "the ledger write happened once");
}
