//! Asking a human: the question goes to the accountable anchor of the role's pathway, the run
//! parks, and the answer resumes exactly that call.

use crate::context::{hash_of, TaskContext};
use crate::error::AgentError;
use crate::gate::ApprovalState;
use crate::notify::NotificationKind;
use crate::state::{CallKind, CallRecord, JournalEntry};

const ACTION: &str = "human.ask";

impl TaskContext<'_> {
    /// Asks the accountable anchor of the role's pathway a question and returns the answer.
    ///
    /// The first time, the question becomes a request to the anchor (audited, with the
    /// anchor's response time as deadline), the anchor is notified and the call returns
    /// [`AgentError::Parked`]: propagate it and the run parks. A holder or deputy answers with
    /// [`aios_governance::ApprovalResponse::Edit`] carrying the answer (any JSON), or `Approve`
    /// (the answer is `true`); `Reject` (or no answer in time) makes the call fail with
    /// [`AgentError::Rejected`]. The answer is journaled: on replay it is returned at once.
    pub async fn ask_human(&mut self, question: &str) -> Result<serde_json::Value, AgentError> {
        let hash = hash_of(CallKind::Human, &("ask", question));
        let (seq, existing) = self.claim(CallKind::Human, &hash)?;
        let record = |record| JournalEntry {
            seq,
            kind: CallKind::Human,
            request_hash: hash.clone(),
            record,
        };
        match existing {
            Some(CallRecord::Answered { answer }) => Ok(answer),
            Some(CallRecord::Refused { reason, .. }) => Err(AgentError::Rejected {
                action: ACTION.to_string(),
                reason,
            }),
            Some(CallRecord::AwaitingApproval { approval }) => {
                let (answer, refused) =
                    match self.driver.approval_state(approval, self.agent).await? {
                        ApprovalState::Pending(current) => {
                            if current != approval {
                                self.driver
                                    .record(
                                        self.index,
                                        record(CallRecord::AwaitingApproval { approval: current }),
                                        true,
                                    )
                                    .await?;
                                self.driver
                                    .escalated_approval(&self.name, approval, current)
                                    .await?;
                            }
                            self.parked = Some(current);
                            return Err(AgentError::Parked { approval: current });
                        }
                        ApprovalState::Approved { .. } => (serde_json::Value::Bool(true), None),
                        ApprovalState::Edited { patch, .. } => (patch, None),
                        ApprovalState::Rejected(reason) => (serde_json::Value::Null, Some(reason)),
                        ApprovalState::Expired(anchor) => {
                            self.driver.timed_out(&self.name, anchor, approval).await;
                            (
                                serde_json::Value::Null,
                                Some(crate::gate::EXPIRED.to_string()),
                            )
                        }
                    };
                match refused {
                    Some(reason) => {
                        let reason = format!("rejected: {reason}");
                        let entry = record(CallRecord::refused(
                            crate::state::RefusedBy::Human,
                            reason.clone(),
                        ));
                        self.driver.record(self.index, entry, false).await?;
                        Err(AgentError::Rejected {
                            action: ACTION.to_string(),
                            reason,
                        })
                    }
                    None => {
                        let entry = record(CallRecord::Answered {
                            answer: answer.clone(),
                        });
                        self.driver.record(self.index, entry, false).await?;
                        Ok(answer)
                    }
                }
            }
            Some(other) => Err(self.driver.non_determinism(
                &self.name,
                seq,
                format!("expected a question to a human, the journal holds {other:?}"),
            )),
            None => {
                let Some(anchor) = self.driver.accountable(&self.role) else {
                    return Err(AgentError::failed(format!(
                        "role `{}` has no accountable anchor to ask",
                        self.role.name
                    )));
                };
                let deadline = self
                    .driver
                    .governor
                    .response_time(anchor)
                    .unwrap_or(std::time::Duration::from_secs(24 * 3600));
                let ask = crate::gate::ApprovalAsk {
                    anchor,
                    deadline,
                    allowed: aios_governance::ResponseKind::ALL.to_vec(),
                    on_timeout: aios_governance::OnTimeout::Deny,
                    reason: format!("agent `{}` asks a question", self.role.name),
                };
                // asked again after a crash and answered meanwhile: the run parks on it and
                // the next resume (or `Orchestrator::tick`) reads the answer
                let at = self
                    .driver
                    .call_site(&self.role, self.agent, self.task_id, seq, ACTION);
                let (approval, _pending) = self
                    .driver
                    .request_approval_of(
                        at,
                        &ask,
                        ACTION,
                        serde_json::json!({ "question": question }),
                    )
                    .await?;
                self.driver
                    .record(
                        self.index,
                        record(CallRecord::AwaitingApproval { approval }),
                        true,
                    )
                    .await?;
                self.driver
                    .notify(
                        anchor,
                        NotificationKind::ApprovalNeeded,
                        Some(&self.name),
                        Some(approval),
                        format!("a question from agent `{}`: {question}", self.role.name),
                    )
                    .await;
                self.parked = Some(approval);
                Err(AgentError::Parked { approval })
            }
        }
    }
}
