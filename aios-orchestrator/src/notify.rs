//! How the runtime tells accountable humans that something needs them: the notifier port and
//! the observer hooks.

use std::sync::Arc;

use aios_core::{AnchorId, ApprovalId, RunId};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::graph::TaskName;

/// Why a human is notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An approval is waiting for the anchor.
    ApprovalNeeded,
    /// A rule escalated the action to the anchor.
    Escalation,
    /// Retries, fallbacks or budgets ran out; a human must decide what next.
    Exhausted,
    /// A side effect may or may not have happened (a crash during an irreversible call).
    OutcomeUnknown,
    /// An approval request to this anchor was not answered before its deadline (its holders
    /// and deputy should know; the request was denied or went to the next anchor).
    ApprovalTimedOut,
}

/// A message for an accountable anchor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Who must act.
    pub anchor: AnchorId,
    /// Why.
    pub kind: NotificationKind,
    /// The run concerned.
    pub run: RunId,
    /// The task concerned.
    pub task: Option<TaskName>,
    /// The approval request, for `ApprovalNeeded`.
    pub approval: Option<ApprovalId>,
    /// What happened, in words.
    pub message: String,
}

/// Delivers notifications to humans (email, chat, pager). The host implements it.
///
/// Contract: `notify` must not fail the run; delivery failures are the notifier's to retry or
/// log. It must be safe to call concurrently.
///
/// Delivery is at least once: a process killed after a notification went out and before the
/// run recorded what followed sends it again when the run is resumed (an outcome-unknown
/// notice, an escalation). Side effects are never repeated; notices may be. A notifier that
/// must not repeat itself deduplicates on `(run, task, kind, approval)`.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Delivers one notification.
    async fn notify(&self, notification: Notification);
}

/// A notifier that keeps notifications in memory (for tests, examples and polling hosts).
#[derive(Debug, Clone, Default)]
pub struct InMemoryNotifier {
    sent: Arc<Mutex<Vec<Notification>>>,
}

impl InMemoryNotifier {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every notification so far.
    pub fn sent(&self) -> Vec<Notification> {
        self.sent.lock().clone()
    }
}

#[async_trait]
impl Notifier for InMemoryNotifier {
    async fn notify(&self, notification: Notification) {
        self.sent.lock().push(notification);
    }
}

/// A typed event of the runtime, streamed to [`Observer`]s as it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEvent {
    /// A run started or resumed.
    RunStarted {
        /// The run.
        run: RunId,
        /// Whether it resumed from a checkpoint.
        resumed: bool,
    },
    /// A task started.
    TaskStarted {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskName,
    },
    /// A call was answered from the journal without touching the backend.
    CallReplayed {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskName,
        /// The call's sequence number.
        seq: u32,
    },
    /// A task completed.
    TaskCompleted {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskName,
    },
    /// A task parked for a human.
    TaskParked {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskName,
        /// The request it waits for.
        approval: ApprovalId,
    },
    /// A task failed.
    TaskFailed {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskName,
        /// Why.
        reason: String,
    },
    /// A checkpoint was saved.
    CheckpointSaved {
        /// The run.
        run: RunId,
        /// Its position.
        seq: u64,
    },
    /// A run stopped driving (completed, failed, parked, paused or cancelled).
    RunStopped {
        /// The run.
        run: RunId,
        /// The status it stopped in.
        status: crate::state::RunStatus,
    },
}

/// Watches the runtime. Hooks default to doing nothing; observers must be cheap (they run
/// inline).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Called for every event.
    fn on_event(&self, _event: &RunEvent) {}
}

/// An observer that records every event.
#[derive(Debug, Clone, Default)]
pub struct CollectingObserver {
    events: Arc<Mutex<Vec<RunEvent>>>,
}

impl CollectingObserver {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<RunEvent> {
        self.events.lock().clone()
    }
}

impl Observer for CollectingObserver {
    fn on_event(&self, event: &RunEvent) {
        self.events.lock().push(event.clone());
    }
}
