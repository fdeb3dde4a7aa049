//! Approvals: requests to an anchor, decisions bound to a holder or deputy, single use,
//! expiry with deny by default, never self-approved; the store port and the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AnchorId, ApprovalId, ApprovalOutcome, AuditEvent, AuditLog, AuditRecord, Clock, HumanId,
    IdGen, PathwayId, Principal, RunId, StoreError, TaskId, Timestamp, Transience,
};
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::decide::{ActionRequest, Decision, OnTimeout, Verdict};
use crate::governor::Governor;
use crate::model::ResponseKind;

/// An anchor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalResponse {
    /// Approve the action as proposed.
    Approve,
    /// Approve this edited action instead.
    Edit(serde_json::Value),
    /// Reject.
    Reject {
        /// Why.
        reason: String,
    },
}

impl ApprovalResponse {
    /// The kind of answer.
    pub fn kind(&self) -> ResponseKind {
        match self {
            ApprovalResponse::Approve => ResponseKind::Approve,
            ApprovalResponse::Edit(_) => ResponseKind::Edit,
            ApprovalResponse::Reject { .. } => ResponseKind::Reject,
        }
    }

    fn outcome(&self) -> ApprovalOutcome {
        match self {
            ApprovalResponse::Approve => ApprovalOutcome::Approved,
            ApprovalResponse::Edit(_) => ApprovalOutcome::Edited,
            ApprovalResponse::Reject { .. } => ApprovalOutcome::Rejected,
        }
    }
}

/// A decision on a request, bound to the human who made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// Who answered (a holder or deputy of the anchor).
    pub by: HumanId,
    /// The answer.
    pub response: ApprovalResponse,
    /// When.
    pub at: Timestamp,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for an answer.
    Pending,
    /// Answered; an approval can be redeemed once.
    Decided {
        /// The answer.
        decision: ApprovalDecision,
    },
    /// Approved and used: it cannot be used again.
    Redeemed {
        /// The answer that was used.
        decision: ApprovalDecision,
        /// When it was used.
        at: Timestamp,
    },
    /// Nobody answered in time: treated as a rejection, unless the request said to escalate
    /// on timeout, in which case `escalated_to` is the new request to the next anchor.
    Expired {
        /// When the expiry was recorded.
        at: Timestamp,
        /// The request this one was escalated to on expiry, if its `on_timeout` said so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalated_to: Option<ApprovalId>,
    },
}

/// The kind of an [`ApprovalState`], for compare-and-set in stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// [`ApprovalState::Pending`].
    Pending,
    /// [`ApprovalState::Decided`].
    Decided,
    /// [`ApprovalState::Redeemed`].
    Redeemed,
    /// [`ApprovalState::Expired`].
    Expired,
}

impl ApprovalState {
    /// The state's kind.
    pub fn kind(&self) -> StateKind {
        match self {
            ApprovalState::Pending => StateKind::Pending,
            ApprovalState::Decided { .. } => StateKind::Decided,
            ApprovalState::Redeemed { .. } => StateKind::Redeemed,
            ApprovalState::Expired { .. } => StateKind::Expired,
        }
    }
}

/// A request for a human approval, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Its id.
    pub id: ApprovalId,
    /// The anchor asked.
    pub anchor: AnchorId,
    /// Who asked (never allowed to answer).
    pub requester: Principal,
    /// The run waiting, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// The task waiting, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// The pathway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<PathwayId>,
    /// The action's name.
    pub action: String,
    /// The action as proposed.
    pub proposed: serde_json::Value,
    /// Why it is asked: the rules that fired, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The answers allowed.
    pub allowed: Vec<ResponseKind>,
    /// What happens on expiry.
    pub on_timeout: OnTimeout,
    /// The governance model version that required the approval.
    pub model_version: u64,
    /// When it was asked.
    pub created_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Where it stands.
    pub state: ApprovalState,
}

/// What to ask.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApproval {
    /// The anchor to ask.
    pub anchor: AnchorId,
    /// Who asks.
    pub requester: Principal,
    /// The run waiting.
    pub run: Option<RunId>,
    /// The task waiting.
    pub task: Option<TaskId>,
    /// The pathway.
    pub pathway: Option<PathwayId>,
    /// The action's name.
    pub action: String,
    /// The action as proposed.
    pub proposed: serde_json::Value,
    /// How long the anchor has.
    pub deadline: Duration,
    /// The answers allowed (all when empty).
    pub allowed: Vec<ResponseKind>,
    /// What happens on expiry.
    pub on_timeout: OnTimeout,
    /// Why it is asked (the rules that fired, in words), shown to the human.
    pub reason: Option<String>,
    /// The request's id, for a request that may be asked again after an interruption (the
    /// orchestrator derives it from the call's key); a fresh id when `None`. Asking again
    /// with the id of a stored request returns that request if it is the same request (the
    /// same anchor, requester, run, task, action and proposal), and audits it if its
    /// `ApprovalRequested` entry is missing; otherwise the request is refused as existing.
    pub id: Option<ApprovalId>,
}

impl NewApproval {
    /// The approval a [`Verdict::RequireApproval`] decision asks for, for `req`, with the
    /// action described by `proposed`. `None` if the decision does not require approval.
    pub fn from_decision(
        decision: &Decision,
        req: &ActionRequest,
        proposed: serde_json::Value,
    ) -> Option<Self> {
        match &decision.verdict {
            Verdict::RequireApproval {
                anchor,
                deadline,
                allowed,
                on_timeout,
            } => Some(Self {
                anchor: *anchor,
                requester: req.principal,
                run: req.run,
                task: None,
                pathway: Some(req.pathway),
                action: req.action.clone(),
                proposed,
                deadline: *deadline,
                allowed: allowed.clone(),
                on_timeout: *on_timeout,
                reason: Some(decision.explain()),
                id: None,
            }),
            _ => None,
        }
    }
}

/// What a redeemed approval lets the requester do.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovedAction {
    /// The request.
    pub approval: ApprovalId,
    /// The action to run: as proposed, or as edited.
    pub action: serde_json::Value,
    /// Whether it was edited.
    pub edited: bool,
    /// Who approved.
    pub by: HumanId,
}

/// An approval operation was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No such request was ever issued (a forged or mistyped id).
    #[error("unknown approval request `{id}`")]
    UnknownRequest {
        /// The id presented.
        id: ApprovalId,
    },
    /// The request was already answered: a decision is single use.
    #[error("approval request `{id}` is already decided")]
    AlreadyDecided {
        /// The request.
        id: ApprovalId,
    },
    /// The approval was already used.
    #[error("approval `{id}` was already redeemed")]
    AlreadyRedeemed {
        /// The request.
        id: ApprovalId,
    },
    /// The request expired: treated as a rejection (or, with `escalated_to`, handed on).
    #[error("approval request `{id}` expired")]
    Expired {
        /// The request.
        id: ApprovalId,
        /// What the request said to do on expiry.
        on_timeout: OnTimeout,
        /// The request it was escalated to, when `on_timeout` escalates.
        escalated_to: Option<ApprovalId>,
    },
    /// The approval belongs to another run: an approval is redeemed once, by the run that
    /// asked for it (a fork of that run asks again).
    #[error("approval `{id}` was requested by run `{owner}`, not by run `{by}`")]
    WrongRun {
        /// The request.
        id: ApprovalId,
        /// The run that asked.
        owner: RunId,
        /// The run that tried to use it.
        by: RunId,
    },
    /// The requester tried to answer its own request.
    #[error("`{by}` requested approval `{id}` and cannot answer it")]
    SelfApproval {
        /// The request.
        id: ApprovalId,
        /// Who tried.
        by: HumanId,
    },
    /// The human is neither a holder nor the deputy of the anchor.
    #[error("`{by}` is not a holder or deputy of anchor `{anchor}`")]
    NotAuthorised {
        /// Who tried.
        by: HumanId,
        /// The anchor.
        anchor: AnchorId,
    },
    /// The anchor is not in the current governance model.
    #[error("anchor `{anchor}` is not in the governance model")]
    UnknownAnchor {
        /// The anchor.
        anchor: AnchorId,
    },
    /// The answer is not one the request allows.
    #[error("answer `{response}` is not allowed for approval request `{id}`")]
    ResponseNotAllowed {
        /// The request.
        id: ApprovalId,
        /// The answer given.
        response: ResponseKind,
    },
    /// The request has no answer yet.
    #[error("approval request `{id}` is not decided yet")]
    NotDecided {
        /// The request.
        id: ApprovalId,
    },
    /// The request was rejected.
    #[error("approval request `{id}` was rejected: {reason}")]
    Rejected {
        /// The request.
        id: ApprovalId,
        /// Why.
        reason: String,
    },
    /// Someone other than the requester tried to use the approval.
    #[error("approval `{id}` was not requested by `{by}`")]
    NotRequester {
        /// The request.
        id: ApprovalId,
        /// Who tried.
        by: Principal,
    },
    /// The storage or the audit log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Transience for ApprovalError {
    fn is_transient(&self) -> bool {
        matches!(self, ApprovalError::Store(e) if e.is_transient())
    }
}

/// The approval store port.
///
/// Contract: `insert` refuses an existing id ([`StoreError::AlreadyExists`]); `transition`
/// is an atomic compare-and-set: it replaces the state only if the current state's kind is
/// `expected`, otherwise it fails with [`StoreError::Conflict`] and changes nothing
/// ([`StoreError::NotFound`] for an unknown id); `pending` lists requests in the
/// [`StateKind::Pending`] state, oldest first.
#[async_trait]
pub trait ApprovalStore: Send + Sync + std::fmt::Debug {
    /// Stores a new request.
    async fn insert(&self, request: ApprovalRequest) -> Result<(), StoreError>;

    /// One request.
    async fn get(&self, id: ApprovalId) -> Result<Option<ApprovalRequest>, StoreError>;

    /// Pending requests (for one anchor, or all), oldest first.
    async fn pending(&self, anchor: Option<AnchorId>) -> Result<Vec<ApprovalRequest>, StoreError>;

    /// Moves a request from a state of kind `expected` to `next`; returns the request as
    /// updated.
    async fn transition(
        &self,
        id: ApprovalId,
        expected: StateKind,
        next: ApprovalState,
    ) -> Result<ApprovalRequest, StoreError>;
}

/// An [`ApprovalStore`] in process memory. Clones share the store.
#[derive(Debug, Clone, Default)]
pub struct InMemoryApprovalStore {
    requests: Arc<Mutex<Requests>>,
}

/// The requests, and the pending ones in the order `pending` lists them, so listing them
/// costs what is pending, not the whole history.
#[derive(Debug, Default)]
struct Requests {
    all: BTreeMap<ApprovalId, ApprovalRequest>,
    pending: std::collections::BTreeSet<(Timestamp, ApprovalId)>,
}

impl InMemoryApprovalStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ApprovalStore for InMemoryApprovalStore {
    async fn insert(&self, request: ApprovalRequest) -> Result<(), StoreError> {
        let mut st = self.requests.lock();
        if st.all.contains_key(&request.id) {
            return Err(StoreError::AlreadyExists {
                what: format!("approval {}", request.id),
            });
        }
        if request.state == ApprovalState::Pending {
            st.pending.insert((request.created_at, request.id));
        }
        st.all.insert(request.id, request);
        Ok(())
    }

    async fn get(&self, id: ApprovalId) -> Result<Option<ApprovalRequest>, StoreError> {
        Ok(self.requests.lock().all.get(&id).cloned())
    }

    async fn pending(&self, anchor: Option<AnchorId>) -> Result<Vec<ApprovalRequest>, StoreError> {
        let st = self.requests.lock();
        Ok(st
            .pending
            .iter()
            .filter_map(|(_, id)| st.all.get(id))
            .filter(|r| anchor.is_none_or_eq(r.anchor))
            .cloned()
            .collect())
    }

    async fn transition(
        &self,
        id: ApprovalId,
        expected: StateKind,
        next: ApprovalState,
    ) -> Result<ApprovalRequest, StoreError> {
        let mut guard = self.requests.lock();
        let st = &mut *guard;
        let Some(r) = st.all.get_mut(&id) else {
            return Err(StoreError::NotFound {
                what: format!("approval {id}"),
            });
        };
        if r.state.kind() != expected {
            return Err(StoreError::Conflict {
                detail: format!(
                    "approval {id} is {:?}, expected {expected:?}",
                    r.state.kind()
                ),
            });
        }
        let key = (r.created_at, r.id);
        r.state = next;
        if r.state == ApprovalState::Pending {
            st.pending.insert(key);
        } else {
            st.pending.remove(&key);
        }
        Ok(r.clone())
    }
}

trait OptEq {
    fn is_none_or_eq(&self, v: AnchorId) -> bool;
}

impl OptEq for Option<AnchorId> {
    fn is_none_or_eq(&self, v: AnchorId) -> bool {
        match self {
            Some(a) => *a == v,
            None => true,
        }
    }
}

/// The approvals service: asks anchors, checks and records their answers, and lets the
/// requester use an approval once. Every request, answer and expiry is audited.
///
/// Audit: a request whose [`aios_core::AuditEvent::ApprovalRequested`] cannot be appended is
/// withdrawn (marked expired) and the error returned; an answer whose
/// [`aios_core::AuditEvent::ApprovalDecided`] cannot be appended is undone (the request is
/// pending again) and the error returned. So no approval is ever usable without its record.
///
/// Rules enforced: the answer must come from a holder or the deputy of the named anchor in
/// the current governance model; a requester never answers its own request; a request is
/// answered once (a second answer is refused as a replay) and an approval is redeemed once,
/// by the run that asked for it; past its deadline a request resolves to a rejection, or, when
/// its `on_timeout` escalates, is asked again of that anchor ([`Approvals::sweep`], also done
/// lazily when an expired request is looked at); unknown ids are refused. A request records
/// the governance version it was asked under ([`Approvals::request_under`] for a run's pinned
/// version).
#[derive(Debug)]
pub struct Approvals {
    store: Arc<dyn ApprovalStore>,
    governor: RwLock<Arc<Governor>>,
    clock: Arc<dyn Clock>,
    audit: Arc<dyn AuditLog>,
    ids: IdGen,
}

impl Approvals {
    /// A service over `store`, checking approvers against `governor`, with time from
    /// `clock`, audit to `audit` and request ids from `ids`.
    pub fn new(
        store: Arc<dyn ApprovalStore>,
        governor: Arc<Governor>,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditLog>,
        ids: IdGen,
    ) -> Self {
        Self {
            store,
            governor: RwLock::new(governor),
            clock,
            audit,
            ids,
        }
    }

    /// Switches to a new governance model version (for holders of anchors).
    pub fn set_governor(&self, governor: Arc<Governor>) {
        *self.governor.write() = governor;
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ApprovalStore> {
        &self.store
    }

    /// Asks the anchor; the request expires after `deadline` by the clock. The request
    /// records the current governance model version.
    pub async fn request(&self, new: NewApproval) -> Result<ApprovalRequest, ApprovalError> {
        let governor = self.governor.read().clone();
        self.request_under(&governor, new).await
    }

    /// Like [`Approvals::request`], under `governor`: the version a run is pinned to, which
    /// the request records (not the newest one), and whose anchors it is checked against.
    pub async fn request_under(
        &self,
        governor: &Governor,
        new: NewApproval,
    ) -> Result<ApprovalRequest, ApprovalError> {
        self.ask(governor, governor.version(), new).await
    }

    /// Asks, checking the anchor against `governor` and recording `version`.
    async fn ask(
        &self,
        governor: &Governor,
        version: u64,
        new: NewApproval,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let Some(anchor) = governor.anchor(new.anchor) else {
            return Err(ApprovalError::UnknownAnchor { anchor: new.anchor });
        };
        let anchor_id = anchor.id;
        let now = self.clock.now();
        let expires_at = chrono::Duration::from_std(new.deadline)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let request = ApprovalRequest {
            id: new.id.unwrap_or_else(|| self.ids.next()),
            anchor: anchor_id,
            requester: new.requester,
            run: new.run,
            task: new.task,
            pathway: new.pathway,
            action: new.action,
            proposed: new.proposed,
            reason: new.reason,
            allowed: if new.allowed.is_empty() {
                ResponseKind::ALL.to_vec()
            } else {
                new.allowed
            },
            on_timeout: new.on_timeout,
            model_version: version,
            created_at: now,
            expires_at,
            state: ApprovalState::Pending,
        };
        match self.store.insert(request.clone()).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { what }) if new.id.is_some() => {
                return self.asked_again(request, what).await;
            }
            Err(e) => return Err(e.into()),
        }
        let audited = self
            .audit
            .append(
                AuditRecord::new(
                    request.requester,
                    AuditEvent::ApprovalRequested {
                        approval: request.id,
                        anchor: request.anchor,
                        run: request.run,
                        action: request.action.clone(),
                        expires_at,
                    },
                )
                .at(now),
            )
            .await;
        if let Err(e) = audited {
            // an unaudited request must never be answered: withdraw it
            let _ = self
                .store
                .transition(
                    request.id,
                    StateKind::Pending,
                    ApprovalState::Expired {
                        at: now,
                        escalated_to: None,
                    },
                )
                .await;
            return Err(e.into());
        }
        Ok(request)
    }

    /// The stored request with `asked.id`, if it is the request asked again; audited now if
    /// the first asking stopped before its `ApprovalRequested` entry.
    async fn asked_again(
        &self,
        asked: ApprovalRequest,
        what: String,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let stored = self.get(asked.id).await?;
        let same = stored.anchor == asked.anchor
            && stored.requester == asked.requester
            && stored.run == asked.run
            && stored.task == asked.task
            && stored.action == asked.action
            && stored.proposed == asked.proposed;
        if !same {
            return Err(StoreError::AlreadyExists { what }.into());
        }
        let id = stored.id;
        let audited = aios_core::AuditLogExt::any_event(
            self.audit.as_ref(),
            |e| matches!(e, AuditEvent::ApprovalRequested { approval, .. } if *approval == id),
        )
        .await?;
        let mut stored = stored;
        if !audited {
            // never on record, so never answerable: a request withdrawn because its audit
            // entry failed is asked again (an audited one that expired stays expired)
            if let ApprovalState::Expired { .. } = stored.state {
                stored = self
                    .store
                    .transition(id, StateKind::Expired, ApprovalState::Pending)
                    .await?;
            }
            self.audit
                .append(
                    AuditRecord::new(
                        stored.requester,
                        AuditEvent::ApprovalRequested {
                            approval: stored.id,
                            anchor: stored.anchor,
                            run: stored.run,
                            action: stored.action.clone(),
                            expires_at: stored.expires_at,
                        },
                    )
                    .at(self.clock.now()),
                )
                .await?;
        }
        Ok(stored)
    }

    /// One request.
    pub async fn get(&self, id: ApprovalId) -> Result<ApprovalRequest, ApprovalError> {
        self.store
            .get(id)
            .await?
            .ok_or(ApprovalError::UnknownRequest { id })
    }

    /// Requests still waiting and not past their deadline (for one anchor, or all).
    pub async fn pending(
        &self,
        anchor: Option<AnchorId>,
    ) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        let now = self.clock.now();
        let mut out = self.store.pending(anchor).await?;
        out.retain(|r| now < r.expires_at);
        Ok(out)
    }

    /// Records `request` as expired and, if its `on_timeout` escalates, asks the next anchor.
    ///
    /// Crash-safe and idempotent: the escalated request is asked first, under an id derived
    /// from the expired one (so asking again finds it), recording the version the first was
    /// asked under; then one compare-and-set expires the first with the link to it. Stopped in
    /// between, the first is still pending and the next look finishes the job. If the
    /// timeout anchor is no longer in the model, the request is denied instead (audited with
    /// why). A request some other caller moved first is reported as it stands (and an
    /// escalation asked for nothing is withdrawn).
    async fn expire(&self, request: &ApprovalRequest) -> Result<ApprovalError, ApprovalError> {
        let now = self.clock.now();
        let mut why = "no answer before the deadline".to_string();
        let escalated = match request.on_timeout {
            OnTimeout::Escalate(next) => match self.escalation(request, next).await {
                Ok(r) => Some(r),
                Err(ApprovalError::UnknownAnchor { anchor }) => {
                    why = format!(
                        "no answer before the deadline; the timeout anchor {anchor:?} is not in the model, so it is denied"
                    );
                    None
                }
                Err(e) => return Err(e),
            },
            OnTimeout::Deny => None,
        };
        let escalated_to = escalated.as_ref().map(|r| r.id);
        match self
            .store
            .transition(
                request.id,
                StateKind::Pending,
                ApprovalState::Expired {
                    at: now,
                    escalated_to,
                },
            )
            .await
        {
            Ok(_) => {
                self.audit
                    .append(
                        AuditRecord::new(
                            Principal::System,
                            AuditEvent::ApprovalDecided {
                                approval: request.id,
                                by: None,
                                outcome: ApprovalOutcome::Expired,
                                reason: Some(why),
                            },
                        )
                        .at(now),
                    )
                    .await?;
                if let Some(next) = &escalated {
                    self.audit
                        .append(
                            AuditRecord::new(
                                Principal::System,
                                AuditEvent::Escalated {
                                    run: request.run,
                                    anchor: next.anchor,
                                    reason: format!(
                                        "approval {} was not answered before its deadline; asked again as {}",
                                        request.id, next.id
                                    ),
                                },
                            )
                            .at(now),
                        )
                        .await?;
                }
                Ok(ApprovalError::Expired {
                    id: request.id,
                    on_timeout: request.on_timeout,
                    escalated_to,
                })
            }
            // someone else moved it first; report the expiry as it stands
            Err(StoreError::Conflict { .. }) => {
                let current = self.get(request.id).await?;
                let linked = expired_link(&current.state);
                if let Some(orphan) = escalated.filter(|e| Some(e.id) != linked) {
                    // answered just in time: the escalation is not needed
                    if let Ok(withdrawn) = self
                        .store
                        .transition(
                            orphan.id,
                            StateKind::Pending,
                            ApprovalState::Expired {
                                at: now,
                                escalated_to: None,
                            },
                        )
                        .await
                    {
                        self.audit
                            .append(
                                AuditRecord::new(
                                    Principal::System,
                                    AuditEvent::ApprovalDecided {
                                        approval: withdrawn.id,
                                        by: None,
                                        outcome: ApprovalOutcome::Expired,
                                        reason: Some(format!(
                                            "withdrawn: approval {} was answered in time",
                                            request.id
                                        )),
                                    },
                                )
                                .at(now),
                            )
                            .await?;
                    }
                }
                Ok(ApprovalError::Expired {
                    id: request.id,
                    on_timeout: request.on_timeout,
                    escalated_to: linked,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The request that takes over `request` at the `next` anchor (asked, or found again).
    async fn escalation(
        &self,
        request: &ApprovalRequest,
        next: AnchorId,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let governor = self.governor.read().clone();
        let deadline = governor
            .anchor(next)
            .map(|a| a.response_time)
            .unwrap_or(Duration::from_secs(3600));
        self.ask(
            &governor,
            request.model_version,
            NewApproval {
                anchor: next,
                requester: request.requester,
                run: request.run,
                task: request.task,
                pathway: request.pathway,
                action: request.action.clone(),
                proposed: request.proposed.clone(),
                deadline,
                allowed: request.allowed.clone(),
                on_timeout: OnTimeout::Deny,
                reason: Some(match &request.reason {
                    Some(r) => format!("{r} (escalated: not answered before the deadline)"),
                    None => "escalated: not answered before the deadline".to_string(),
                }),
                id: Some(ApprovalId::from_name(&format!("escalated:{}", request.id))),
            },
        )
        .await
    }

    /// Records `by`'s answer to request `id`.
    ///
    /// Refused: an unknown id ([`ApprovalError::UnknownRequest`]), a request already
    /// answered or used ([`ApprovalError::AlreadyDecided`], [`ApprovalError::AlreadyRedeemed`]),
    /// one past its deadline ([`ApprovalError::Expired`], recorded as expired), an answer
    /// from the requester ([`ApprovalError::SelfApproval`]) or from anyone who is not a
    /// holder or deputy of the anchor ([`ApprovalError::NotAuthorised`]), an answer the
    /// request does not allow ([`ApprovalError::ResponseNotAllowed`]).
    pub async fn decide(
        &self,
        id: ApprovalId,
        by: HumanId,
        response: ApprovalResponse,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let request = self.get(id).await?;
        match request.state.kind() {
            StateKind::Pending => {}
            StateKind::Decided => return Err(ApprovalError::AlreadyDecided { id }),
            StateKind::Redeemed => return Err(ApprovalError::AlreadyRedeemed { id }),
            StateKind::Expired => {
                return Err(ApprovalError::Expired {
                    id,
                    on_timeout: request.on_timeout,
                    escalated_to: expired_link(&request.state),
                })
            }
        }
        let now = self.clock.now();
        if now >= request.expires_at {
            return Err(self.expire(&request).await?);
        }
        if request.requester == Principal::Human(by) {
            return Err(ApprovalError::SelfApproval { id, by });
        }
        let governor = self.governor.read().clone();
        let Some(anchor) = governor.anchor(request.anchor) else {
            return Err(ApprovalError::UnknownAnchor {
                anchor: request.anchor,
            });
        };
        if !anchor.can_answer(by) {
            return Err(ApprovalError::NotAuthorised {
                by,
                anchor: request.anchor,
            });
        }
        let kind = response.kind();
        if !request.allowed.contains(&kind) {
            return Err(ApprovalError::ResponseNotAllowed { id, response: kind });
        }
        let outcome = response.outcome();
        let reason = match &response {
            ApprovalResponse::Reject { reason } => Some(reason.clone()),
            _ => None,
        };
        let decision = ApprovalDecision {
            by,
            response,
            at: now,
        };
        let updated = match self
            .store
            .transition(id, StateKind::Pending, ApprovalState::Decided { decision })
            .await
        {
            Ok(r) => r,
            Err(StoreError::Conflict { .. }) => return Err(ApprovalError::AlreadyDecided { id }),
            Err(e) => return Err(e.into()),
        };
        let audited = self
            .audit
            .append(
                AuditRecord::new(
                    Principal::Human(by),
                    AuditEvent::ApprovalDecided {
                        approval: id,
                        by: Some(by),
                        outcome,
                        reason,
                    },
                )
                .at(now),
            )
            .await;
        if let Err(e) = audited {
            // a decision stands only if it is on record: put the request back to pending
            let _ = self
                .store
                .transition(id, StateKind::Decided, ApprovalState::Pending)
                .await;
            return Err(e.into());
        }
        Ok(updated)
    }

    /// Uses an approved request, once, on behalf of its requester: returns the action to run
    /// (as proposed or as edited). Refused if unknown, not the requester's, not decided,
    /// rejected, expired or already used.
    ///
    /// `run` is the run using it: an approval asked for by a run can be redeemed by that run
    /// only ([`ApprovalError::WrongRun`]), so a fork of the run cannot use it a second time.
    pub async fn redeem(
        &self,
        id: ApprovalId,
        requester: Principal,
        run: Option<RunId>,
    ) -> Result<ApprovedAction, ApprovalError> {
        let request = self.get(id).await?;
        if request.requester != requester {
            return Err(ApprovalError::NotRequester { id, by: requester });
        }
        if let (Some(owner), Some(by)) = (request.run, run) {
            if owner != by {
                return Err(ApprovalError::WrongRun { id, owner, by });
            }
        }
        if let (Some(_), None) = (request.run, run) {
            return Err(ApprovalError::NotRequester { id, by: requester });
        }
        let decision = match &request.state {
            ApprovalState::Pending => {
                if self.clock.now() >= request.expires_at {
                    return Err(self.expire(&request).await?);
                }
                return Err(ApprovalError::NotDecided { id });
            }
            ApprovalState::Expired { escalated_to, .. } => {
                return Err(ApprovalError::Expired {
                    id,
                    on_timeout: request.on_timeout,
                    escalated_to: *escalated_to,
                })
            }
            ApprovalState::Redeemed { .. } => return Err(ApprovalError::AlreadyRedeemed { id }),
            ApprovalState::Decided { decision } => decision.clone(),
        };
        let (action, edited) = match &decision.response {
            ApprovalResponse::Reject { reason } => {
                return Err(ApprovalError::Rejected {
                    id,
                    reason: reason.clone(),
                })
            }
            ApprovalResponse::Approve => (request.proposed.clone(), false),
            ApprovalResponse::Edit(v) => (v.clone(), true),
        };
        let now = self.clock.now();
        match self
            .store
            .transition(
                id,
                StateKind::Decided,
                ApprovalState::Redeemed {
                    decision: decision.clone(),
                    at: now,
                },
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Err(ApprovalError::AlreadyRedeemed { id }),
            Err(e) => return Err(e.into()),
        }
        Ok(ApprovedAction {
            approval: id,
            action,
            edited,
            by: decision.by,
        })
    }

    /// Resolves every pending request past its deadline as expired (a rejection) and
    /// returns them; each expiry is audited. Call it periodically.
    pub async fn expire_due(&self) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        Ok(self.sweep().await?.into_iter().map(|e| e.request).collect())
    }

    /// The deadline sweep: resolves every pending request past its deadline. A request whose
    /// `on_timeout` denies is expired (a rejection); one whose `on_timeout` escalates is
    /// expired and asked again of the named anchor. Every step is audited. The host calls it
    /// periodically (the library starts no thread of its own).
    pub async fn sweep(&self) -> Result<Vec<Expiry>, ApprovalError> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for r in self.store.pending(None).await? {
            if now >= r.expires_at {
                if let ApprovalError::Expired { escalated_to, .. } = self.expire(&r).await? {
                    out.push(Expiry {
                        request: r,
                        escalated_to,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// One request resolved by [`Approvals::sweep`].
#[derive(Debug, Clone, PartialEq)]
pub struct Expiry {
    /// The request as it was before it expired.
    pub request: ApprovalRequest,
    /// The new request to the `on_timeout` anchor, if it escalated.
    pub escalated_to: Option<ApprovalId>,
}

fn expired_link(state: &ApprovalState) -> Option<ApprovalId> {
    match state {
        ApprovalState::Expired { escalated_to, .. } => *escalated_to,
        _ => None,
    }
}
