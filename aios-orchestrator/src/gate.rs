//! The one module that speaks to `aios-governance`: decisions, budgets and approvals for the
//! calls agents make.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AgentId, AnchorId, ApprovalId, AuditEvent, AuditLog, Clock, HumanId, IdGen, PathwayId,
    Principal, RoleId, RunId, StoreError,
};
use aios_governance::{
    ActionRequest, ApprovalError, ApprovalResponse, ApprovalStore, Approvals, BudgetChain,
    BudgetError, BudgetKey, BudgetLedger, Controls, EscalationMode, Governor,
    InMemoryApprovalStore, InMemoryBudgetLedger, NewApproval, OnTimeout, ReservationId,
    ResponseKind, Verdict,
};
use parking_lot::{Mutex, RwLock};

use crate::builder::OrchestratorBuilder;
use crate::governed::GovernedCall;
use crate::role::Role;

pub(crate) use aios_governance::Usage;

/// What the runtime does with a call, after governance decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Gate {
    /// Go ahead (and tell the anchor afterwards when `notify` is set).
    Allow { notify: Option<(AnchorId, String)> },
    /// Refuse.
    Deny { reason: String },
    /// Refuse and escalate.
    Halt { anchor: AnchorId, reason: String },
    /// Park until the anchor decides, with the rule's deadline, answers and timeout.
    Approval(ApprovalAsk),
    /// An operator paused the agent, pathway or organisation: the run waits.
    Pause { reason: String },
    /// An operator pulled the kill switch: the run is cancelled.
    Stop { reason: String },
}

/// The approval a decision asks for: kept from the rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApprovalAsk {
    pub(crate) anchor: AnchorId,
    pub(crate) deadline: Duration,
    pub(crate) allowed: Vec<ResponseKind>,
    pub(crate) on_timeout: OnTimeout,
    /// Why: the rules that fired, in words.
    pub(crate) reason: String,
}

/// Where a parked call's approval stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApprovalState {
    /// Still waiting; the request waited on (another one when the first escalated on
    /// timeout).
    Pending(ApprovalId),
    /// Approved as proposed by `by`, answering for `anchor`; `proposed` is what the request
    /// proposed.
    Approved {
        by: HumanId,
        anchor: AnchorId,
        proposed: serde_json::Value,
    },
    /// Approved by `by`, answering for `anchor`, with this edit.
    Edited {
        by: HumanId,
        anchor: AnchorId,
        patch: serde_json::Value,
    },
    /// Rejected.
    Rejected(String),
    /// Nobody of this anchor answered in time, and the request was not escalated: denied.
    Expired(AnchorId),
}

/// A budget reservation held for one call; `None` when the call's key was already charged (a
/// call repeated after a crash between the budget commit and the journal), so it is neither
/// reserved nor charged again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation(Option<ReservationId>);

/// The governor a run is pinned to.
#[derive(Debug, Clone)]
pub(crate) struct PinnedGovernor(Arc<Governor>);

impl PinnedGovernor {
    pub(crate) fn version(&self) -> u64 {
        self.0.version()
    }

    pub(crate) fn model(&self) -> &aios_governance::GovernanceModel {
        self.0.model()
    }

    /// How long `anchor` is expected to take to answer.
    pub(crate) fn response_time(&self, anchor: AnchorId) -> Option<Duration> {
        self.0.anchor(anchor).map(|a| a.response_time)
    }

    pub(crate) fn accountable(&self, pathway: PathwayId) -> Option<AnchorId> {
        self.0.pathway(pathway).map(|p| p.anchor)
    }

    /// Whether `human` may answer for `anchor` under this version.
    pub(crate) fn can_answer(&self, anchor: AnchorId, human: HumanId) -> bool {
        self.0.anchor(anchor).is_some_and(|a| a.can_answer(human))
    }

    pub(crate) fn governor(&self) -> &Arc<Governor> {
        &self.0
    }

    /// Decides `call` for `agent` in `role` during `run` (with the operator controls).
    pub(crate) fn decide(
        &self,
        gov: &Governance,
        run: RunId,
        role: &Role,
        agent: AgentId,
        call: &GovernedCall,
    ) -> (Gate, AuditEvent) {
        let mut req = ActionRequest::new(
            Principal::Agent(agent),
            role.id,
            role.pathway_of(&call.action).0,
            &call.action,
        )
        .with_effect(call.effect)
        .with_cost(call.cost)
        .with_amount(call.amount)
        .with_risk(call.risk)
        .with_run(run);
        req.confidence = call.confidence;
        req.context = call.context.clone();
        let decision = match &gov.controls {
            Some(controls) => self.0.decide_with(&req, &controls.snapshot()),
            None => self.0.decide(&req),
        };
        let event = decision.audit_event(&req);
        if decision.verdict != Verdict::Allow {
            // operator controls: a pause parks the run, the kill switch cancels it
            if decision.fired(aios_governance::rules::STOPPED) {
                return (
                    Gate::Stop {
                        reason: self.0.explain(&decision),
                    },
                    event,
                );
            }
            if decision.fired(aios_governance::rules::PAUSED) {
                return (
                    Gate::Pause {
                        reason: self.0.explain(&decision),
                    },
                    event,
                );
            }
        }
        let gate = match &decision.verdict {
            Verdict::Allow => Gate::Allow { notify: None },
            Verdict::Deny => Gate::Deny {
                reason: self.0.explain(&decision),
            },
            Verdict::RequireApproval {
                anchor,
                deadline,
                allowed,
                on_timeout,
            } => Gate::Approval(ApprovalAsk {
                anchor: *anchor,
                deadline: *deadline,
                allowed: allowed.clone(),
                on_timeout: *on_timeout,
                reason: self.0.explain(&decision),
            }),
            Verdict::Escalate { anchor, mode } => match mode {
                EscalationMode::NotifyAfter => Gate::Allow {
                    notify: Some((*anchor, self.0.explain(&decision))),
                },
                EscalationMode::ApproveBefore => {
                    let deadline = self
                        .0
                        .anchor(*anchor)
                        .map(|a| a.response_time)
                        .unwrap_or(Duration::from_secs(3600));
                    Gate::Approval(ApprovalAsk {
                        anchor: *anchor,
                        deadline,
                        allowed: ResponseKind::ALL.to_vec(),
                        on_timeout: OnTimeout::Deny,
                        reason: self.0.explain(&decision),
                    })
                }
                EscalationMode::Halt => Gate::Halt {
                    anchor: *anchor,
                    reason: self.0.explain(&decision),
                },
            },
        };
        (gate, event)
    }
}

/// Governance as the runtime uses it: the loaded model versions, the budget ledger, the
/// approval service and the operator controls.
pub(crate) struct Governance {
    versions: RwLock<BTreeMap<u64, Arc<Governor>>>,
    current: RwLock<Arc<Governor>>,
    ledger: Option<Arc<dyn BudgetLedger>>,
    approval_store: Option<Arc<dyn ApprovalStore>>,
    approvals: Option<Approvals>,
    pub(crate) controls: Option<Arc<Controls>>,
    budget_keys: HashSet<BudgetKey>,
    per_run: Option<aios_governance::BudgetLimits>,
    plan: aios_governance::BudgetPlan,
    plan_applied: std::sync::atomic::AtomicBool,
    opened_runs: Mutex<HashSet<RunId>>,
}

impl Governance {
    pub(crate) fn new(governor: Governor) -> Self {
        let version = governor.version();
        let plan = governor.budget_plan();
        let governor = Arc::new(governor);
        let mut versions = BTreeMap::new();
        versions.insert(version, governor.clone());
        Self {
            versions: RwLock::new(versions),
            current: RwLock::new(governor),
            ledger: None,
            approval_store: None,
            approvals: None,
            controls: None,
            budget_keys: plan.budgets.iter().map(|(k, _)| *k).collect(),
            per_run: plan.per_run.clone(),
            plan,
            plan_applied: std::sync::atomic::AtomicBool::new(false),
            opened_runs: Mutex::new(HashSet::new()),
        }
    }

    /// Completes the set-up once the clock, audit log and ids are known.
    pub(crate) fn finish(&mut self, clock: Arc<dyn Clock>, audit: Arc<dyn AuditLog>, ids: IdGen) {
        let current = self.current();
        if self.ledger.is_none() {
            let ledger = InMemoryBudgetLedger::new(clock.clone()).with_audit(audit.clone());
            ledger.apply_plan_sync(&self.plan);
            self.plan_applied
                .store(true, std::sync::atomic::Ordering::Release);
            self.ledger = Some(Arc::new(ledger));
        }
        let store = self
            .approval_store
            .clone()
            .unwrap_or_else(|| Arc::new(InMemoryApprovalStore::new()));
        self.approvals = Some(Approvals::new(store, current.0.clone(), clock, audit, ids));
    }

    pub(crate) fn current(&self) -> PinnedGovernor {
        PinnedGovernor(self.current.read().clone())
    }

    pub(crate) fn version(&self, version: u64) -> Option<PinnedGovernor> {
        self.versions
            .read()
            .get(&version)
            .cloned()
            .map(PinnedGovernor)
    }

    fn approvals(&self) -> Result<&Approvals, ApprovalError> {
        self.approvals.as_ref().ok_or_else(|| {
            ApprovalError::Store(StoreError::Backend {
                detail: "the approval service is not set up".into(),
            })
        })
    }

    /// Reserves `amount` for the call `key` on the chain organisation > role > agent > run.
    ///
    /// A call whose key was already charged (performed and committed, then the worker died
    /// before the journal recorded it) is not charged again when performing it again costs
    /// nothing (`repeat_spends` false: a connector deduplicating by the key); when it does
    /// cost again (a model call is answered, and billed, anew), the repetition is reserved
    /// and charged like any call, under the budgets as they stand.
    pub(crate) async fn reserve(
        &self,
        run: RunId,
        role: RoleId,
        agent: AgentId,
        amount: Usage,
        key: &aios_core::IdempotencyKey,
        repeat_spends: bool,
    ) -> Result<Result<Reservation, String>, StoreError> {
        let Some(ledger) = &self.ledger else {
            return Ok(Err("no budget ledger".into()));
        };
        if !self.plan_applied.load(std::sync::atomic::Ordering::Acquire) {
            // a host-supplied (durable) ledger gets the model's limits once per process;
            // setting limits keeps recorded usage
            if let Err(e) =
                aios_governance::BudgetLedgerExt::apply_plan(ledger.as_ref(), &self.plan).await
            {
                return budget_failure(e);
            }
            self.plan_applied
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let mut chain = BudgetChain::organisation();
        if self.budget_keys.contains(&BudgetKey::Role(role)) {
            chain = chain.role(role);
        }
        if self.budget_keys.contains(&BudgetKey::Agent(agent)) {
            chain = chain.agent(agent);
        }
        if let Some(limits) = &self.per_run {
            let fresh = self.opened_runs.lock().insert(run);
            if fresh {
                if let Err(e) = ledger.set_limits(BudgetKey::Run(run), limits.clone()).await {
                    self.opened_runs.lock().remove(&run);
                    return budget_failure(e);
                }
            }
        }
        // the chain always names the run (a level without limits is not limited), so a dead
        // worker's reservations can be found and released by run
        chain = chain.run(run);
        match ledger
            .reserve(
                &chain,
                amount,
                &aios_governance::ReserveOptions::keyed(key.as_str()),
            )
            .await
        {
            Ok(r) => Ok(Ok(Reservation(Some(r.id)))),
            // this very call was charged before its worker died: it is not charged twice
            Err(BudgetError::AlreadyCharged { .. }) if !repeat_spends => Ok(Ok(Reservation(None))),
            Err(BudgetError::AlreadyCharged { .. }) => match ledger
                .reserve(&chain, amount, &aios_governance::ReserveOptions::default())
                .await
            {
                Ok(r) => Ok(Ok(Reservation(Some(r.id)))),
                Err(e) => budget_failure(e),
            },
            Err(e) => budget_failure(e),
        }
    }

    /// Releases reservations a dead worker left behind for `run`; returns how many.
    pub(crate) async fn release_abandoned(&self, run: RunId) -> Result<usize, StoreError> {
        let Some(ledger) = &self.ledger else {
            return Ok(0);
        };
        match ledger.release_run(run).await {
            Ok(n) => Ok(n),
            Err(BudgetError::Store(e)) => Err(e),
            Err(e) => Err(StoreError::Backend {
                detail: e.to_string(),
            }),
        }
    }

    pub(crate) async fn commit(
        &self,
        reservation: Reservation,
        actual: Usage,
    ) -> Result<(), StoreError> {
        let (Some(ledger), Reservation(Some(id))) = (&self.ledger, reservation) else {
            return Ok(());
        };
        match ledger.commit(id, actual).await {
            // alerts were appended to the audit log by the ledger
            Ok(_) => Ok(()),
            Err(BudgetError::Store(e)) => Err(e),
            Err(e) => Err(StoreError::Conflict {
                detail: e.to_string(),
            }),
        }
    }

    pub(crate) async fn release(&self, reservation: Reservation) {
        if let (Some(ledger), Reservation(Some(id))) = (&self.ledger, reservation) {
            // a failed release leaves the reservation to the ledger's own expiry; nothing to undo here
            let _ = ledger.release(id).await;
        }
    }

    /// Asks for the approval `ask` of `action` (described by `proposed`) under the run's
    /// pinned `governor`, whose version the request records. Returns the request and whether
    /// it is pending (a request asked again after a crash may have been answered or have
    /// expired meanwhile).
    pub(crate) async fn request_approval(
        &self,
        governor: &PinnedGovernor,
        at: CallSite,
        ask: &ApprovalAsk,
        action: &str,
        proposed: serde_json::Value,
    ) -> Result<(ApprovalId, bool), ApprovalError> {
        let approvals = self.approvals()?;
        // the id is derived from the call's key: a request this very call made before its
        // worker died (before the journal recorded it) is found again, not asked twice
        // (and from the proposal: a call decided again after its approval stopped covering
        // it asks under a new id)
        let key = aios_core::IdempotencyKey::for_call(at.run, at.task, at.seq);
        let digest = crate::context::hash_of(crate::state::CallKind::Human, &proposed);
        let id = ApprovalId::from_name(&format!("call:{key}:{}", &digest[..16]));
        let request = approvals
            .request_under(
                governor.governor(),
                NewApproval {
                    anchor: ask.anchor,
                    requester: Principal::Agent(at.agent),
                    run: Some(at.run),
                    task: Some(at.task),
                    pathway: Some(at.pathway),
                    action: action.to_string(),
                    proposed,
                    deadline: ask.deadline,
                    allowed: ask.allowed.clone(),
                    on_timeout: ask.on_timeout,
                    reason: Some(ask.reason.clone()),
                    id: Some(id),
                },
            )
            .await?;
        Ok((
            request.id,
            request.state == aios_governance::ApprovalState::Pending,
        ))
    }

    /// Where approval `approval`, asked by `requester` in `run`, stands: redeemed for that
    /// run on first use (and only for that run), followed to the next anchor when it
    /// escalated on timeout.
    pub(crate) async fn approval_state(
        &self,
        approval: ApprovalId,
        requester: AgentId,
        run: RunId,
    ) -> Result<ApprovalState, ApprovalError> {
        let approvals = self.approvals()?;
        let who = Principal::Agent(requester);
        let mut id = approval;
        // an escalation chain is short; the bound only guards against a damaged store
        for _ in 0..16 {
            let request = approvals.get(id).await?;
            if request.requester != who {
                return Err(ApprovalError::NotRequester { id, by: who });
            }
            if request.run != Some(run) {
                return Err(ApprovalError::WrongRun {
                    id,
                    owner: request.run.unwrap_or(run),
                    by: run,
                });
            }
            use aios_governance::ApprovalState as S;
            let decision = match request.state {
                S::Expired {
                    escalated_to: Some(next),
                    ..
                } => {
                    id = next;
                    continue;
                }
                S::Expired { .. } => return Ok(ApprovalState::Expired(request.anchor)),
                // an approval this run already used (the journal keeps it from being used
                // twice by the run itself)
                S::Redeemed { decision, .. } => decision,
                S::Pending | S::Decided { .. } => {
                    match approvals.redeem(id, who, Some(run)).await {
                        // the action redeemed: as proposed, or the edit
                        Ok(a) if a.edited => {
                            return Ok(ApprovalState::Edited {
                                by: a.by,
                                anchor: request.anchor,
                                patch: a.action,
                            })
                        }
                        Ok(a) => {
                            return Ok(ApprovalState::Approved {
                                by: a.by,
                                anchor: request.anchor,
                                proposed: a.action,
                            })
                        }
                        Err(ApprovalError::NotDecided { .. }) => {
                            return Ok(ApprovalState::Pending(id))
                        }
                        Err(ApprovalError::Expired {
                            escalated_to: Some(next),
                            ..
                        }) => {
                            id = next;
                            continue;
                        }
                        Err(ApprovalError::Expired { .. }) => {
                            return Ok(ApprovalState::Expired(request.anchor))
                        }
                        Err(ApprovalError::Rejected { reason, .. }) => {
                            return Ok(ApprovalState::Rejected(reason))
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            return Ok(match decision.response {
                ApprovalResponse::Approve => ApprovalState::Approved {
                    by: decision.by,
                    anchor: request.anchor,
                    proposed: request.proposed,
                },
                ApprovalResponse::Edit(patch) => ApprovalState::Edited {
                    by: decision.by,
                    anchor: request.anchor,
                    patch,
                },
                ApprovalResponse::Reject { reason } => ApprovalState::Rejected(reason),
            });
        }
        Err(ApprovalError::Store(StoreError::Corrupt {
            location: format!("approval {approval}"),
            detail: "it escalated more than 16 times".into(),
        }))
    }

    /// The deadline sweep of the approval service.
    pub(crate) async fn sweep(&self) -> Result<Vec<aios_governance::Expiry>, ApprovalError> {
        match &self.approvals {
            Some(a) => a.sweep().await,
            None => Ok(vec![]),
        }
    }

    /// One approval request.
    pub(crate) async fn approval(
        &self,
        id: ApprovalId,
    ) -> Result<aios_governance::ApprovalRequest, ApprovalError> {
        match &self.approvals {
            Some(a) => a.get(id).await,
            None => Err(ApprovalError::UnknownRequest { id }),
        }
    }

    /// Records a human decision; returns the run waiting for it.
    pub(crate) async fn submit(
        &self,
        approval: ApprovalId,
        by: aios_core::HumanId,
        response: ApprovalResponse,
    ) -> Result<Option<RunId>, ApprovalError> {
        let approvals = self
            .approvals
            .as_ref()
            .ok_or(ApprovalError::UnknownRequest { id: approval })?;
        let request = approvals.decide(approval, by, response).await?;
        Ok(request.run)
    }

    pub(crate) async fn pending(
        &self,
    ) -> Result<Vec<aios_governance::ApprovalRequest>, ApprovalError> {
        match &self.approvals {
            Some(a) => a.pending(None).await,
            None => Ok(vec![]),
        }
    }

    /// Loads another model version; `make_current` switches new runs to it (running and
    /// parked runs stay on the version they started under).
    pub(crate) fn load(&self, governor: Governor, make_current: bool) {
        let v = governor.version();
        let governor = Arc::new(governor);
        if make_current {
            if let Some(a) = &self.approvals {
                a.set_governor(governor.clone());
            }
            *self.current.write() = governor.clone();
        }
        self.versions.write().insert(v, governor);
    }
}

/// Where a call is made: the run, task, acting agent and its pathway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallSite {
    pub(crate) run: RunId,
    pub(crate) task: aios_core::TaskId,
    /// The call's number within its task.
    pub(crate) seq: u32,
    pub(crate) agent: AgentId,
    pub(crate) pathway: PathwayId,
}

/// What the run is told when nobody answered in time.
pub(crate) const EXPIRED: &str = "expired: nobody answered before the deadline";

fn budget_failure(e: BudgetError) -> Result<Result<Reservation, String>, StoreError> {
    match e {
        BudgetError::Store(e) => Err(e),
        other => Ok(Err(other.to_string())),
    }
}

impl OrchestratorBuilder {
    /// Uses `ledger` for budgets (default: an in-memory ledger loaded with the model's plan).
    pub fn budgets(mut self, ledger: Arc<dyn BudgetLedger>) -> Self {
        self.gov_mut().ledger = Some(ledger);
        self
    }

    /// Uses `store` for approval requests (default: in memory).
    pub fn approval_store(mut self, store: Arc<dyn ApprovalStore>) -> Self {
        self.gov_mut().approval_store = Some(store);
        self
    }

    /// Consults `controls` (pause, stop, overrides) in every decision.
    pub fn controls(mut self, controls: Arc<Controls>) -> Self {
        self.gov_mut().controls = Some(controls);
        self
    }

    /// Loads an older (or newer) governance model version so that runs pinned to it can be
    /// resumed; new runs use the builder's model.
    pub fn governance_version(mut self, governor: Governor) -> Self {
        self.gov_mut().load(governor, false);
        self
    }
}
