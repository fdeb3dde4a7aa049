//! The durable state of a run: what a checkpoint holds.

use aios_core::{ApprovalId, ConnectorOutput, MemoryId, ModelResponse, RunId, TaskId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::graph::TaskSpec;

/// The version of [`RunState`] this build writes.
pub const RUN_STATE_SCHEMA: u32 = 1;

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    /// Tasks are being executed (or the worker crashed while they were).
    Running,
    /// Waiting for human decisions on these approval requests.
    Parked {
        /// The requests it waits for.
        approvals: Vec<ApprovalId>,
    },
    /// Paused by an operator; resume continues it.
    Paused,
    /// Every task completed.
    Completed,
    /// A task failed for good.
    Failed {
        /// Why.
        reason: String,
    },
    /// Cancelled by an operator.
    Cancelled,
}

impl RunStatus {
    /// Whether the run can make no further progress.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed { .. } | RunStatus::Cancelled
        )
    }
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for its dependencies or a slot.
    Pending,
    /// Its agent is executing (or was, when the worker stopped).
    Running,
    /// Waiting for a human.
    Parked,
    /// Done; its output is recorded.
    Completed,
    /// Failed for good.
    Failed,
}

/// What kind of call a journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// A model completion.
    Model,
    /// A connector invocation (a side effect).
    Connector,
    /// A memory write.
    Memory,
    /// A task added to the graph (fan-out).
    Spawn,
    /// A question to a human.
    Human,
}

/// The result of one journaled call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallRecord {
    /// The call was about to reach a side-effecting backend whose outcome cannot be known after
    /// a crash (an irreversible, non-idempotent connector). Finding this without a result on
    /// resume means the outcome is unknown: the run escalates instead of repeating it.
    Started,
    /// A model answered.
    Model(ModelResponse),
    /// A connector answered.
    Connector(ConnectorOutput),
    /// A memory record was written.
    Memory {
        /// The record written.
        id: MemoryId,
        /// Its version.
        version: u32,
    },
    /// Memory was recalled: the record versions seen, in rank order.
    Recalled {
        /// The hits.
        hits: Vec<crate::memory::RecalledHit>,
    },
    /// A task was added.
    Spawned {
        /// The new task's index.
        index: usize,
    },
    /// A human answered a question.
    Answered {
        /// The answer.
        answer: serde_json::Value,
    },
    /// The call needs approval; the run parked on this request.
    AwaitingApproval {
        /// The request.
        approval: ApprovalId,
    },
    /// The call was approved (possibly with an edited input) and then performed; the inner
    /// record is its result. Kept so the transcript shows who approved.
    Approved {
        /// The request.
        approval: ApprovalId,
        /// The result of the approved call (absent while it is being performed).
        result: Option<Box<CallRecord>>,
    },
    /// The call was refused (by governance, a budget or a human); replay refuses it again,
    /// with the same kind of error.
    Refused {
        /// Why.
        reason: String,
        /// Who refused it.
        #[serde(default)]
        by: RefusedBy,
        /// The anchor it was escalated to, when `by` is [`RefusedBy::Escalation`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor: Option<aios_core::AnchorId>,
    },
    /// The call failed for good; replay fails it again, with the same typed error.
    Failed {
        /// Why.
        reason: String,
        /// The typed failure (absent in journals written before failures were typed; they
        /// replay as a failure with `reason` only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<crate::error::CallFailure>,
    },
}

/// Who refused a journaled call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedBy {
    /// Governance denied it (a rule, a limit, the charter, a malformed request).
    #[default]
    Governance,
    /// A human rejected it, or nobody answered in time.
    Human,
    /// A budget refused its reservation.
    Budget,
    /// A rule escalated it to an anchor and halted it.
    Escalation,
}

impl CallRecord {
    /// A refusal by `by`, for `reason`.
    pub(crate) fn refused(by: RefusedBy, reason: impl Into<String>) -> Self {
        CallRecord::Refused {
            reason: reason.into(),
            by,
            anchor: None,
        }
    }
}

/// One call in a task's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The call's sequence number within its task (from 0).
    pub seq: u32,
    /// What kind of call.
    pub kind: CallKind,
    /// SHA-256 (hex) of the call's request; replay checks it.
    pub request_hash: String,
    /// What happened.
    pub record: CallRecord,
}

/// The durable state of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    /// The task's id (in audit events, approvals and idempotency keys), drawn once when the
    /// task is created and kept across resumes.
    pub id: TaskId,
    /// What the task is.
    pub spec: TaskSpec,
    /// Indexes of the tasks it waits for.
    pub deps: Vec<usize>,
    /// Where it is.
    pub status: TaskStatus,
    /// Its output, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every call its agent made, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<JournalEntry>,
}

/// Everything needed to continue a run in another process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Format version.
    pub schema: u32,
    /// The run.
    pub run: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// The governance model version the run is pinned to.
    pub governance_version: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// Where it is.
    pub status: RunStatus,
    /// Its tasks (fan-out appends).
    pub tasks: Vec<TaskState>,
    /// The run and checkpoint it was forked from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<(RunId, u64)>,
}

impl RunState {
    /// The outputs of completed tasks by name.
    pub fn outputs(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.tasks
            .iter()
            .filter_map(|t| t.output.clone().map(|o| (t.spec.name.to_string(), o)))
            .collect()
    }
}

impl RunState {
    /// Checks that a decoded state holds together before it is used: the schema is one this
    /// build reads, every dependency names another existing task, the dependencies have no
    /// cycle, task names are unique, journal entries are numbered in order, a completed task
    /// has an output, and a spawned task's index exists. Returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema == 0 || self.schema > RUN_STATE_SCHEMA {
            return Err(format!(
                "schema {} is not one this build reads (1..={RUN_STATE_SCHEMA})",
                self.schema
            ));
        }
        let n = self.tasks.len();
        let mut names = std::collections::HashSet::with_capacity(n);
        for (i, t) in self.tasks.iter().enumerate() {
            if !names.insert(t.spec.name.as_str()) {
                return Err(format!("task name `{}` appears twice", t.spec.name));
            }
            for &d in &t.deps {
                if d >= n {
                    return Err(format!(
                        "task `{}` waits for task index {d}, but the run has {n} tasks",
                        t.spec.name
                    ));
                }
                if d == i {
                    return Err(format!("task `{}` waits for itself", t.spec.name));
                }
            }
            if t.status == TaskStatus::Completed && t.output.is_none() {
                return Err(format!(
                    "task `{}` is completed without an output",
                    t.spec.name
                ));
            }
            for (pos, e) in t.journal.iter().enumerate() {
                if e.seq as usize != pos {
                    return Err(format!(
                        "journal of task `{}` holds call {} at position {pos}",
                        t.spec.name, e.seq
                    ));
                }
                if let CallRecord::Spawned { index } = e.record {
                    if index >= n {
                        return Err(format!(
                            "task `{}` spawned task index {index}, but the run has {n} tasks",
                            t.spec.name
                        ));
                    }
                }
            }
        }
        // a cycle would leave tasks waiting forever: Kahn's algorithm must reach every task
        let mut remaining: Vec<usize> = self.tasks.iter().map(|t| t.deps.len()).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, t) in self.tasks.iter().enumerate() {
            for &d in &t.deps {
                dependents[d].push(i);
            }
        }
        let mut ready: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
        let mut seen = 0;
        while let Some(i) = ready.pop() {
            seen += 1;
            for &k in &dependents[i] {
                remaining[k] -= 1;
                if remaining[k] == 0 {
                    ready.push(k);
                }
            }
        }
        if seen != n {
            return Err("the task dependencies form a cycle".into());
        }
        Ok(())
    }
}
