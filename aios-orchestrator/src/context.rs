//! The task context: the only way an agent reaches the world. Every call is journaled,
//! governed, budgeted, made reliable and audited, in the order of the governed-action flow.

use std::sync::Arc;

use aios_core::{
    AgentId, ApprovalId, AuditEvent, ConnectorCall, ConnectorError, ConnectorId, ConnectorOutput,
    EffectClass, HumanId, IdempotencyKey, ModelRequest, ModelResponse, Money, Outcome, Principal,
    RunId, TaskId,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::error::{AgentError, ConnectorFailure};
use crate::gate::{ApprovalState, Gate, Usage};
use crate::governed::GovernedCall;
use crate::graph::{TaskName, TaskSpec};
use crate::notify::{NotificationKind, RunEvent};
use crate::reliability::retry;

/// What a connector declares for one operation, without copying the declaration.
#[derive(Debug, Clone, Copy)]
struct OpFacts {
    effect: EffectClass,
    idempotent: bool,
    default_cost: Money,
}

/// The journal slot of one call: its number in the task, its kind and its request hash.
#[derive(Debug, Clone)]
struct Slot {
    seq: u32,
    kind: CallKind,
    hash: String,
}

/// A human's approval of a parked call, as it is carried into the decision made again.
#[derive(Debug, Clone, Copy)]
struct Approved {
    approval: ApprovalId,
    by: HumanId,
    /// The anchor the human answered for.
    anchor: aios_core::AnchorId,
    /// Whether the call was edited.
    edited: bool,
}

/// The error a refusal by `by` is, whether just made or replayed from the journal.
fn refusal(
    by: RefusedBy,
    anchor: Option<aios_core::AnchorId>,
    action: &str,
    reason: String,
) -> AgentError {
    let action = action.to_string();
    match (by, anchor) {
        (RefusedBy::Human, _) => AgentError::Rejected { action, reason },
        (RefusedBy::Budget, _) => AgentError::BudgetExceeded {
            action,
            detail: reason,
        },
        (RefusedBy::Escalation, Some(anchor)) => AgentError::Escalated {
            action,
            anchor,
            reason,
        },
        _ => AgentError::Denied { action, reason },
    }
}

/// A connector's error, as text and as the typed error, with every occurrence of `secret`
/// removed from both (the typed error is dropped if it cannot be cleaned).
fn redacted(
    e: crate::reliability::RetryError<ConnectorError>,
    secret: &str,
) -> (String, Option<ConnectorError>) {
    let detail = redact(&e.to_string(), secret);
    let error = e
        .last()
        .and_then(|e| serde_json::to_value(e).ok())
        .and_then(|mut v| {
            redact_value(&mut v, secret);
            serde_json::from_value::<ConnectorError>(v).ok()
        });
    (detail, error)
}

/// Removes every occurrence of `secret` from `text` (secrets shorter than four bytes are
/// left alone: replacing them would mangle ordinary text and hide nothing).
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.len() < 4 || !text.contains(secret) {
        return text.to_string();
    }
    text.replace(secret, "[redacted]")
}

/// [`redact`] over every string (and key) of a JSON value.
fn redact_value(value: &mut serde_json::Value, secret: &str) {
    if secret.len() < 4 {
        return;
    }
    match value {
        serde_json::Value::String(s) if s.contains(secret) => *s = redact(s, secret),
        // a numeric credential (a PIN) echoed as a number
        serde_json::Value::Number(n) if n.to_string().contains(secret) => {
            *value = serde_json::Value::String("[redacted]".into())
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secret)),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains(secret)) {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    redact_value(&mut v, secret);
                    map.insert(redact(&k, secret), v);
                }
            } else {
                map.values_mut().for_each(|v| redact_value(v, secret));
            }
        }
        _ => {}
    }
}
use crate::driver::Driver;
use crate::role::Role;
use crate::router::RouteStep;
use crate::state::{CallKind, CallRecord, JournalEntry, RefusedBy};

/// A connector call an agent asks for, with what governance needs to judge it.
#[derive(Debug, Clone)]
pub struct ConnectorRequest {
    /// The connector.
    pub connector: ConnectorId,
    /// The operation.
    pub operation: String,
    /// Its input.
    pub input: serde_json::Value,
    /// The agent's estimate of the risk, 0 to 100.
    pub risk: u32,
    /// The agent's estimate of the cost.
    pub estimated_cost: Money,
    /// The agent's confidence in the action, 0 to 1, if it has one.
    pub confidence: Option<f32>,
}

impl ConnectorRequest {
    /// A call of `operation` on `connector` with `input`, risk 0, no cost, no confidence.
    pub fn new(
        connector: impl Into<String>,
        operation: impl Into<String>,
        input: serde_json::Value,
    ) -> Self {
        Self {
            connector: ConnectorId::new(connector),
            operation: operation.into(),
            input,
            risk: 0,
            estimated_cost: Money::ZERO,
            confidence: None,
        }
    }

    /// Sets the risk estimate.
    pub fn risk(mut self, risk: u32) -> Self {
        self.risk = risk;
        self
    }

    /// Sets the cost estimate.
    pub fn estimated_cost(mut self, cost: Money) -> Self {
        self.estimated_cost = cost;
        self
    }

    /// Sets the confidence.
    pub fn confidence(mut self, confidence: f32) -> Self {
        self.confidence = Some(confidence);
        self
    }
}

enum Op {
    Model(ModelRequest),
    Connector(ConnectorRequest),
}

/// What an agent sees of its task and the world.
pub struct TaskContext<'r> {
    pub(crate) driver: &'r Driver<'r>,
    pub(crate) index: usize,
    pub(crate) name: TaskName,
    pub(crate) task_id: TaskId,
    pub(crate) role: Arc<Role>,
    pub(crate) agent: AgentId,
    pub(crate) seq: u32,
    /// The approval this task parked on, if it did: parking is the task's state, so an agent
    /// that swallows [`AgentError::Parked`] neither goes on acting nor leaves the approval
    /// dangling (the task parks all the same).
    pub(crate) parked: Option<ApprovalId>,
}

impl std::fmt::Debug for TaskContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("run", &self.driver.run)
            .field("task", &self.name)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The request hash journaled for a call: SHA-256 (hex) of the call's kind and request.
pub(crate) fn hash_of(kind: CallKind, value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(&(kind, value)).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

impl<'r> TaskContext<'r> {
    /// The run.
    pub fn run_id(&self) -> RunId {
        self.driver.run
    }

    /// The task's name.
    pub fn task(&self) -> &TaskName {
        &self.name
    }

    /// The task's id in audit events, approvals and idempotency keys (kept across resumes).
    pub fn task_id(&self) -> TaskId {
        self.task_id
    }

    /// The operations declared by the connectors this task's role may use, by connector
    /// (a connector that declares none is left out): what [`LlmAgent::offer_role_tools`]
    /// offers a model.
    ///
    /// [`LlmAgent::offer_role_tools`]: crate::LlmAgent::offer_role_tools
    pub fn declared_operations(&self) -> Vec<(ConnectorId, aios_core::OperationSpec)> {
        let mut out = vec![];
        for id in &self.role.connectors {
            if let Some(c) = self.driver.connector(id) {
                for op in &c.descriptor().operations {
                    out.push((id.clone(), op.clone()));
                }
            }
        }
        out
    }

    /// The role played.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The acting agent.
    pub fn agent_id(&self) -> AgentId {
        self.agent
    }

    fn principal(&self) -> Principal {
        Principal::Agent(self.agent)
    }

    /// Claims the next call number and returns what the journal holds for it, checking that
    /// the request is the one recorded.
    pub(crate) fn claim(
        &mut self,
        kind: CallKind,
        hash: &str,
    ) -> Result<(u32, Option<CallRecord>), AgentError> {
        if let Some(approval) = self.parked {
            // the task is parked: nothing more happens until the approval is decided
            return Err(AgentError::Parked { approval });
        }
        let seq = self.seq;
        self.seq += 1;
        if self.seq > self.role.max_calls {
            return Err(AgentError::StepLimit {
                limit: self.role.max_calls,
            });
        }
        match self.driver.journal_entry(self.index, seq) {
            Some(entry) if entry.kind != kind || entry.request_hash != hash => {
                Err(self.driver.non_determinism(
                    &self.name,
                    seq,
                    format!(
                        "the journal holds a {:?} call with another request",
                        entry.kind
                    ),
                ))
            }
            Some(entry) => Ok((seq, Some(entry.record))),
            None => Ok((seq, None)),
        }
    }

    async fn record(&self, slot: &Slot, record: CallRecord, force: bool) -> Result<(), AgentError> {
        let entry = JournalEntry {
            seq: slot.seq,
            kind: slot.kind,
            request_hash: slot.hash.clone(),
            record,
        };
        self.driver.record(self.index, entry, force).await
    }

    /// Calls a model through the router, under governance and budgets.
    pub async fn complete(&mut self, request: ModelRequest) -> Result<ModelResponse, AgentError> {
        let router = self.driver.router();
        let first = router.tiers().first().map(|m| m.id().clone());
        let requested = first.as_ref().map(|m| m.as_str()).unwrap_or("");
        let empty = tracing::field::Empty;
        let span = tracing::debug_span!(
            "chat",
            otel.name = %format_args!("chat {requested}"),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = first.as_ref().map(|m| router.provider(m)).unwrap_or(""),
            gen_ai.request.model = requested,
            gen_ai.request.max_tokens = request.max_output_tokens.map(i64::from),
            gen_ai.response.model = empty,
            gen_ai.usage.input_tokens = empty,
            gen_ai.usage.output_tokens = empty,
            gen_ai.agent.name = %self.role.name,
            gen_ai.conversation.id = %self.driver.run,
            gen_ai.input.messages = empty,
            gen_ai.output.messages = empty,
            error.type = empty,
            aios.governance.decision = empty,
            aios.governance.rules = empty,
            aios.cost = empty,
            aios.queue_wait_ms = empty,
            run = %self.driver.run,
            task = %self.name,
            seq = self.seq,
        );
        if self.driver.telemetry().record_content {
            let messages = serde_json::to_string(&request.messages).unwrap_or_default();
            span.record("gen_ai.input.messages", messages.as_str());
        }
        match self.governed(Op::Model(request)).instrument(span).await? {
            CallRecord::Model(r) => Ok(r),
            other => Err(self.driver.non_determinism(
                &self.name,
                self.seq - 1,
                format!("expected a model result, found {other:?}"),
            )),
        }
    }

    /// Calls a connector (a side effect), under governance, budgets, breakers and retries.
    ///
    /// Refused before anything else when the connector or operation is not a valid name
    /// (see [`aios_governance::check_action_name`]) or the role may not use the connector.
    pub async fn call(&mut self, request: ConnectorRequest) -> Result<ConnectorOutput, AgentError> {
        let action = format!("{}.{}", request.connector, request.operation);
        if let Err(problem) = aios_governance::check_action_name(&action) {
            return Err(AgentError::Denied {
                action: action.escape_debug().to_string(),
                reason: format!("the action name {problem}"),
            });
        }
        if !self.role.connectors.contains(&request.connector) {
            return Err(AgentError::Denied {
                action,
                reason: format!(
                    "role `{}` may not use connector `{}`",
                    self.role.name, request.connector
                ),
            });
        }
        if let Some(k) = self.driver.connector(&request.connector) {
            let d = k.descriptor();
            if d.operation(&request.operation).is_none() {
                let declared: Vec<String> = d
                    .operations
                    .iter()
                    .map(|o| format!("`{}`", o.name))
                    .collect();
                return Err(AgentError::Denied {
                    action,
                    reason: format!(
                        "connector `{}` declares no operation `{}` (it declares {})",
                        request.connector,
                        request.operation,
                        declared.join(", ")
                    ),
                });
            }
        }
        if let Err(problem) = self.moved(&request) {
            return Err(AgentError::Denied {
                action,
                reason: problem,
            });
        }
        let empty = tracing::field::Empty;
        let span = tracing::debug_span!(
            "execute_tool",
            otel.name = %format_args!("execute_tool {action}"),
            otel.kind = "internal",
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %action,
            gen_ai.tool.type = "function",
            gen_ai.tool.call.arguments = empty,
            gen_ai.agent.name = %self.role.name,
            gen_ai.conversation.id = %self.driver.run,
            error.type = empty,
            aios.governance.decision = empty,
            aios.governance.rules = empty,
            aios.cost = empty,
            run = %self.driver.run,
            task = %self.name,
            seq = self.seq,
            connector = %request.connector,
            operation = %request.operation
        );
        if self.driver.telemetry().record_content {
            span.record(
                "gen_ai.tool.call.arguments",
                request.input.to_string().as_str(),
            );
        }
        match self
            .governed(Op::Connector(request))
            .instrument(span)
            .await?
        {
            CallRecord::Connector(out) => Ok(out),
            other => Err(self.driver.non_determinism(
                &self.name,
                self.seq - 1,
                format!("expected a connector result, found {other:?}"),
            )),
        }
    }

    /// Adds a task to the run (fan-out). It runs after this task, and this task's dependents
    /// also wait for it. Journaled: on replay the task is not added twice.
    pub async fn spawn(&mut self, spec: TaskSpec) -> Result<(), AgentError> {
        let hash = hash_of(CallKind::Spawn, &spec);
        let (seq, existing) = self.claim(CallKind::Spawn, &hash)?;
        if existing.is_some() {
            return Ok(());
        }
        let index = self.driver.add_task(self.index, spec)?;
        let slot = Slot {
            seq,
            kind: CallKind::Spawn,
            hash,
        };
        self.record(&slot, CallRecord::Spawned { index }, false)
            .await
    }

    /// What governance decides on for `op`: the action, its effect and the estimated cost
    /// (a model call priced by the router; a connector call at the larger of the agent's
    /// estimate and the connector's declared default cost).
    fn describe(&self, op: &Op) -> (CallKind, GovernedCall) {
        match op {
            Op::Model(r) => (
                CallKind::Model,
                GovernedCall {
                    action: "model.complete".to_string(),
                    effect: EffectClass::ReadOnly,
                    cost: self.priced(op, Money::ZERO),
                    amount: Money::ZERO,
                    risk: 0,
                    confidence: None,
                    context: Default::default(),
                    input: serde_json::to_value(r).unwrap_or_default(),
                },
            ),
            Op::Connector(c) => (
                CallKind::Connector,
                GovernedCall {
                    action: format!("{}.{}", c.connector, c.operation),
                    effect: self
                        .spec(c)
                        .map(|s| s.effect)
                        .unwrap_or(EffectClass::Irreversible),
                    cost: self.priced(op, c.estimated_cost),
                    // checked by `call` before the call is described
                    amount: self.moved(c).unwrap_or(Money::ZERO),
                    risk: c.risk,
                    confidence: c.confidence,
                    context: self.governed_fields(c, &c.input),
                    input: c.input.clone(),
                },
            ),
        }
    }

    /// The cost governance and the budgets see for `op` when `declared` is claimed for it:
    /// a model call's price from the router (whatever is claimed), a connector call's the
    /// larger of the claim and the connector's declared default cost.
    fn priced(&self, op: &Op, declared: Money) -> Money {
        match op {
            Op::Model(r) => self.driver.router().estimate(r).cost,
            Op::Connector(c) => self
                .spec(c)
                .map(|s| s.default_cost)
                .unwrap_or(Money::ZERO)
                .max(declared),
        }
    }

    /// The input fields the operation declares governed, by their context key (`null` for a
    /// field the input lacks).
    fn governed_fields(
        &self,
        c: &ConnectorRequest,
        input: &serde_json::Value,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        let Some(d) = self.driver.connector(&c.connector).map(|k| k.descriptor()) else {
            return Default::default();
        };
        d.operations
            .iter()
            .find(|o| o.name == c.operation)
            .map(|s| {
                s.governed
                    .iter()
                    .map(|f| {
                        let v = input.pointer(&f.pointer).cloned().unwrap_or_default();
                        (f.key.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The money the call of `c` moves, read from its input where the operation declares it
    /// (zero when it declares none), or why it cannot be read.
    fn moved(&self, c: &ConnectorRequest) -> Result<Money, String> {
        match self
            .driver
            .connector(&c.connector)
            .and_then(|k| k.descriptor().operation(&c.operation))
        {
            Some(spec) => spec.amount_in(&c.input),
            None => Ok(Money::ZERO),
        }
    }

    /// The journaled request hash: what the agent asked for (the model request; or the
    /// connector, operation, input and the agent's own cost, risk and confidence). Derived
    /// attributes (prices, effect classes, default costs) are configuration and may change
    /// between a crash and a resume without making completed calls non-deterministic; an
    /// approval is checked against them separately.
    fn request_hash(&self, kind: CallKind, op: &Op) -> String {
        match op {
            Op::Model(r) => hash_of(kind, r),
            Op::Connector(c) => hash_of(
                kind,
                &(
                    &c.connector,
                    &c.operation,
                    &c.input,
                    c.estimated_cost,
                    c.risk,
                    c.confidence,
                ),
            ),
        }
    }

    async fn governed(&mut self, op: Op) -> Result<CallRecord, AgentError> {
        let (kind, call) = self.describe(&op);
        let hash = self.request_hash(kind, &op);
        let (seq, existing) = self.claim(kind, &hash)?;
        let slot = Slot { seq, kind, hash };
        if let Some(record) = existing {
            return self.replay(&slot, op, call, record).await;
        }
        let gate = self.driver.decide(&self.role, self.agent, &call).await?;
        self.gated(&slot, op, call, gate, None).await
    }

    /// Acts on a decision about `call`. `approved` is set when a human approved the call
    /// (as proposed, or as edited): a decision that needs an approval is then satisfied by it
    /// (an edit only if it asks the anchor the human answered for, or one the human may
    /// answer for), while a denial, a halt or an operator's pause or stop still wins.
    async fn gated(
        &mut self,
        slot: &Slot,
        op: Op,
        call: GovernedCall,
        gate: Gate,
        approved: Option<Approved>,
    ) -> Result<CallRecord, AgentError> {
        let action = call.action.clone();
        match gate {
            Gate::Allow { notify } => {
                let approval = approved.map(|a| a.approval);
                let result = self.execute(slot, op, &call, approval).await;
                // a notify-after escalation: the anchor hears about the action once it ran
                if let (Some((anchor, reason)), Ok(_)) = (notify, &result) {
                    self.driver
                        .notify(
                            anchor,
                            NotificationKind::Escalation,
                            Some(&self.name),
                            None,
                            reason,
                        )
                        .await;
                }
                result
            }
            Gate::Approval(ask) => match approved {
                Some(a)
                    if !a.edited
                        || a.anchor == ask.anchor
                        || self.driver.governor.can_answer(ask.anchor, a.by) =>
                {
                    self.execute(slot, op, &call, Some(a.approval)).await
                }
                Some(a) => {
                    let reason = format!(
                        "the edited call needs the approval of anchor `{}`, which `{}` cannot give",
                        self.driver.anchor_name(ask.anchor),
                        a.by
                    );
                    self.refuse(slot, &action, RefusedBy::Governance, reason)
                        .await
                }
                None => self.park(slot, op, call, &ask).await,
            },
            Gate::Pause { reason } => Err(AgentError::Paused { action, reason }),
            Gate::Stop { reason } => Err(AgentError::Stopped { action, reason }),
            Gate::Deny { reason } => {
                self.refuse(slot, &action, RefusedBy::Governance, reason)
                    .await
            }
            Gate::Halt { anchor, reason } => {
                self.driver.escalate(anchor, &self.name, &reason).await?;
                self.record(
                    slot,
                    CallRecord::Refused {
                        reason: format!("escalated: {reason}"),
                        by: RefusedBy::Escalation,
                        anchor: Some(anchor),
                    },
                    false,
                )
                .await?;
                Err(AgentError::Escalated {
                    action,
                    anchor,
                    reason,
                })
            }
        }
    }

    /// Journals a refusal of call `seq` by `by` and returns it as the error it is (the same
    /// error a replay returns).
    async fn refuse(
        &self,
        slot: &Slot,
        action: &str,
        by: RefusedBy,
        reason: String,
    ) -> Result<CallRecord, AgentError> {
        self.record(slot, CallRecord::refused(by, reason.clone()), false)
            .await?;
        Err(refusal(by, None, action, reason))
    }

    /// Asks for the approval and parks the run on it.
    async fn park(
        &mut self,
        slot: &Slot,
        op: Op,
        call: GovernedCall,
        ask: &crate::gate::ApprovalAsk,
    ) -> Result<CallRecord, AgentError> {
        let seq = slot.seq;
        let (approval, pending) = self
            .driver
            .request_approval(&self.role, self.agent, self.task_id, seq, ask, &call)
            .await?;
        self.record(slot, CallRecord::AwaitingApproval { approval }, true)
            .await?;
        if !pending {
            // asked before a crash, and answered or expired since: go on with that
            return Box::pin(self.decided(slot, op, call, approval)).await;
        }
        self.driver
            .notify(
                ask.anchor,
                NotificationKind::ApprovalNeeded,
                Some(&self.name),
                Some(approval),
                format!("`{}` needs approval", call.action),
            )
            .await;
        self.parked = Some(approval);
        Err(AgentError::Parked { approval })
    }

    async fn replay(
        &mut self,
        slot: &Slot,
        op: Op,
        call: GovernedCall,
        record: CallRecord,
    ) -> Result<CallRecord, AgentError> {
        let seq = slot.seq;
        let action = call.action.as_str();
        match record {
            CallRecord::Model(_)
            | CallRecord::Connector(_)
            | CallRecord::Memory { .. }
            | CallRecord::Answered { .. }
            | CallRecord::Recalled { .. }
            | CallRecord::Spawned { .. } => {
                self.driver.emit(RunEvent::CallReplayed {
                    run: self.driver.run,
                    task: self.name.clone(),
                    seq,
                });
                Ok(record)
            }
            CallRecord::Approved {
                result: Some(r), ..
            } => {
                self.driver.emit(RunEvent::CallReplayed {
                    run: self.driver.run,
                    task: self.name.clone(),
                    seq,
                });
                Ok(*r)
            }
            CallRecord::Refused { reason, by, anchor } => {
                // journals written before refusals were typed said "rejected: ..."
                let by = match by {
                    RefusedBy::Governance if reason.starts_with("rejected") => RefusedBy::Human,
                    by => by,
                };
                Err(refusal(by, anchor, action, reason))
            }
            CallRecord::Failed { reason, failure } => Err(match (failure, op) {
                (Some(f), _) => f.into_error(),
                // journals written before failures were typed keep the message only
                (None, Op::Model(_)) => AgentError::Model(Box::new(crate::error::ModelFailure {
                    tried: vec![crate::router::RouteStep {
                        model: aios_core::ModelId::new("unknown"),
                        reason,
                    }],
                    error: None,
                })),
                (None, Op::Connector(c)) => AgentError::Connector(Box::new(ConnectorFailure {
                    connector: c.connector,
                    operation: c.operation,
                    detail: reason,
                    error: None,
                })),
            }),
            CallRecord::AwaitingApproval { approval } => {
                self.decided(slot, op, call, approval).await
            }
            CallRecord::Approved {
                approval,
                result: None,
            } => {
                if self.uncertain(&op) {
                    return self.outcome_unknown(slot, action).await;
                }
                self.decided(slot, op, call, approval).await
            }
            CallRecord::Started => {
                if self.uncertain(&op) {
                    return self.outcome_unknown(slot, action).await;
                }
                self.execute(slot, op, &call, None).await
            }
        }
    }

    /// Continues a call parked on `approval`: still waiting, approved (runs as proposed),
    /// edited (governed again, then runs as edited), rejected or expired.
    async fn decided(
        &mut self,
        slot: &Slot,
        op: Op,
        call: GovernedCall,
        approval: ApprovalId,
    ) -> Result<CallRecord, AgentError> {
        let kind = slot.kind;
        let action = call.action.clone();
        match self.driver.approval_state(approval, self.agent).await? {
            ApprovalState::Pending(current) => {
                if current != approval {
                    // the request timed out and was escalated: wait for the new one
                    self.record(
                        slot,
                        CallRecord::AwaitingApproval { approval: current },
                        true,
                    )
                    .await?;
                    self.driver
                        .escalated_approval(&self.name, approval, current)
                        .await?;
                }
                self.parked = Some(current);
                Err(AgentError::Parked { approval: current })
            }
            ApprovalState::Approved {
                by,
                anchor,
                proposed,
            } => {
                if !call.is(&proposed) {
                    // the call as now made is not the one approved (a price or an effect
                    // class changed since): the approval does not cover it, decide it again
                    self.driver
                        .audit(
                            Principal::System,
                            AuditEvent::Note {
                                text: format!(
                                    "run {}: approval {approval} covers `{action}` as proposed, not as now made: decided again",
                                    self.driver.run
                                ),
                            },
                        )
                        .await?;
                    let gate = self.driver.decide(&self.role, self.agent, &call).await?;
                    return Box::pin(self.gated(slot, op, call, gate, None)).await;
                }
                // an approval satisfies the approval rule, never a denial, a halt or an
                // operator's pause or stop in force now. `decide` is pure and the run pinned
                // to its version, so only operator controls can have changed the verdict
                // since it asked: without them the decision that asked stands
                if !self.driver.has_controls() {
                    return self.execute(slot, op, &call, Some(approval)).await;
                }
                let gate = self.driver.decide(&self.role, self.agent, &call).await?;
                let approved = Approved {
                    approval,
                    by,
                    anchor,
                    edited: false,
                };
                Box::pin(self.gated(slot, op, call, gate, Some(approved))).await
            }
            ApprovalState::Edited { by, anchor, patch } => {
                let edited = match call.edited(&patch) {
                    Ok(edited) => edited,
                    Err(problem) => {
                        let reason = format!("the edit by `{by}` is refused: {problem}");
                        return self
                            .refuse(slot, &action, RefusedBy::Governance, reason)
                            .await;
                    }
                };
                let op = match op {
                    Op::Connector(mut c) => {
                        c.input = edited.input.clone();
                        Op::Connector(c)
                    }
                    Op::Model(r) => match serde_json::from_value(edited.input.clone()) {
                        Ok(r) => Op::Model(r),
                        Err(e) => {
                            drop(r);
                            let reason = format!(
                                "the edit by `{by}` is refused: the edited input is not a model request: {e}"
                            );
                            return self
                                .refuse(slot, &action, RefusedBy::Governance, reason)
                                .await;
                        }
                    },
                };
                if kind == CallKind::Model
                    && patch.as_object().is_some_and(|p| p.contains_key("cost"))
                {
                    let reason = format!(
                        "the edit by `{by}` is refused: a model call costs its price; edit its request instead"
                    );
                    return self
                        .refuse(slot, &action, RefusedBy::Governance, reason)
                        .await;
                }
                // the cost is worked out again as for the first call: never below the price
                // of the edited request or the connector's declared default
                let mut edited = edited;
                edited.cost = self.priced(&op, edited.cost);
                if let Op::Connector(c) = &op {
                    edited.context = self.governed_fields(c, &edited.input);
                    // the money moved is read from the edited input, as the first time
                    match self.moved(c) {
                        Ok(amount) => edited.amount = amount,
                        Err(problem) => {
                            let reason = format!("the edit by `{by}` is refused: {problem}");
                            return self
                                .refuse(slot, &action, RefusedBy::Governance, reason)
                                .await;
                        }
                    }
                }
                self.driver
                    .audit(
                        Principal::Human(by),
                        AuditEvent::Note {
                            text: format!(
                                "run {}: approval {approval} edited `{action}`: proposed {}, edited {}",
                                self.driver.run,
                                call.hash(kind),
                                edited.hash(kind)
                            ),
                        },
                    )
                    .await?;
                // an edit is governed again, under the run's pinned model and the controls
                let gate = self.driver.decide(&self.role, self.agent, &edited).await?;
                let approved = Approved {
                    approval,
                    by,
                    anchor,
                    edited: true,
                };
                Box::pin(self.gated(slot, op, edited, gate, Some(approved))).await
            }
            ApprovalState::Expired(anchor) => {
                self.driver.timed_out(&self.name, anchor, approval).await;
                let reason = format!("rejected: {}", crate::gate::EXPIRED);
                self.refuse(slot, &action, RefusedBy::Human, reason).await
            }
            ApprovalState::Rejected(reason) => {
                let reason = format!("rejected: {reason}");
                self.refuse(slot, &action, RefusedBy::Human, reason).await
            }
        }
    }

    /// What the connector declares for the operation of `c`: `None` if the connector is
    /// unknown or does not declare that operation (then the call is treated as irreversible,
    /// not idempotent and free, and refused before it reaches anything).
    fn spec(&self, c: &ConnectorRequest) -> Option<OpFacts> {
        let d = self.driver.connector(&c.connector)?.descriptor();
        if d.operations.is_empty() {
            return Some(OpFacts {
                effect: d.effect,
                idempotent: d.idempotent,
                default_cost: d.default_cost,
            });
        }
        d.operations
            .iter()
            .find(|o| o.name == c.operation)
            .map(|o| OpFacts {
                effect: o.effect,
                idempotent: o.idempotent,
                default_cost: o.default_cost,
            })
    }

    /// Whether an interrupted call of `op` may have taken effect without a way to deduplicate.
    fn uncertain(&self, op: &Op) -> bool {
        match op {
            Op::Model(_) => false,
            Op::Connector(c) => self
                .spec(c)
                .map(|s| s.effect == EffectClass::Irreversible && !s.idempotent)
                .unwrap_or(true),
        }
    }

    async fn outcome_unknown(
        &mut self,
        slot: &Slot,
        action: &str,
    ) -> Result<CallRecord, AgentError> {
        let reason =
            format!("`{action}` was interrupted after it started; it may or may not have happened");
        let anchor = self.driver.accountable_for(&self.role, action);
        if let Some(anchor) = anchor {
            self.driver
                .notify(
                    anchor,
                    NotificationKind::OutcomeUnknown,
                    Some(&self.name),
                    None,
                    reason.clone(),
                )
                .await;
        }
        let error = AgentError::OutcomeUnknown {
            action: action.to_string(),
        };
        let failure = crate::error::CallFailure::of(&error);
        self.record(slot, CallRecord::Failed { reason, failure }, false)
            .await?;
        Err(error)
    }

    /// Reserves the call's estimate, performs it (with a durable marker first when it is
    /// approved or irreversible), commits what it actually used and journals the result.
    async fn execute(
        &mut self,
        slot: &Slot,
        op: Op,
        call: &GovernedCall,
        approval: Option<ApprovalId>,
    ) -> Result<CallRecord, AgentError> {
        let seq = slot.seq;
        let action = call.action.as_str();
        let estimate = match &op {
            Op::Model(r) => {
                let e = self.driver.router().estimate(r);
                Usage {
                    cost: call.cost,
                    payments: Money::ZERO,
                    tokens: e.prompt_tokens + e.output_tokens,
                    tool_calls: 0,
                    risk_points: 0,
                }
            }
            Op::Connector(_) => Usage {
                cost: call.cost,
                payments: call.amount,
                tokens: 0,
                tool_calls: 1,
                risk_points: u64::from(call.risk),
            },
        };
        let key = IdempotencyKey::for_call(self.driver.run, self.task_id, seq);
        let reservation = match self
            .driver
            .reserve(
                &self.role,
                self.agent,
                estimate,
                &key,
                // a model answers (and bills) a repeated call anew; a connector that
                // deduplicates by the key does not perform it twice
                matches!(op, Op::Model(_)) || self.uncertain(&op),
            )
            .await?
        {
            Ok(r) => r,
            Err(detail) => {
                if let Some(anchor) = self.driver.accountable_for(&self.role, action) {
                    self.driver
                        .escalate(
                            anchor,
                            &self.name,
                            &format!("budget refused `{action}`: {detail}"),
                        )
                        .await?;
                }
                return self.refuse(slot, action, RefusedBy::Budget, detail).await;
            }
        };
        let marker = match approval {
            Some(approval) => Some(CallRecord::Approved {
                approval,
                result: None,
            }),
            None if self.uncertain(&op) => Some(CallRecord::Started),
            None => None,
        };
        if let Some(marker) = marker {
            if let Err(e) = self.record(slot, marker, true).await {
                self.driver.release(reservation).await;
                return Err(e);
            }
        }
        let result = match &op {
            Op::Model(request) => self.route(request).await.map(|(r, _)| r),
            Op::Connector(c) => self.invoke(seq, c).await,
        };
        match result {
            Ok((record, actual)) => {
                self.driver.commit(reservation, actual).await?;
                let record = match approval {
                    Some(approval) => CallRecord::Approved {
                        approval,
                        result: Some(Box::new(record)),
                    },
                    None => record,
                };
                self.record(slot, record.clone(), false).await?;
                Ok(match record {
                    CallRecord::Approved {
                        result: Some(r), ..
                    } => *r,
                    r => r,
                })
            }
            Err(AgentError::Fatal(e)) => {
                self.driver.release(reservation).await;
                Err(AgentError::Fatal(e))
            }
            Err(e) => {
                self.driver.release(reservation).await;
                if let Some(anchor) = self.driver.accountable_for(&self.role, action) {
                    self.driver
                        .notify(
                            anchor,
                            NotificationKind::Exhausted,
                            Some(&self.name),
                            None,
                            e.to_string(),
                        )
                        .await;
                }
                self.record(
                    slot,
                    CallRecord::Failed {
                        reason: e.to_string(),
                        failure: crate::error::CallFailure::of(&e),
                    },
                    false,
                )
                .await?;
                Err(e)
            }
        }
    }

    async fn invoke(
        &mut self,
        seq: u32,
        c: &ConnectorRequest,
    ) -> Result<(CallRecord, Usage), AgentError> {
        let failure = |detail: String, error: Option<ConnectorError>| {
            AgentError::Connector(Box::new(ConnectorFailure {
                connector: c.connector.clone(),
                operation: c.operation.clone(),
                detail,
                error,
            }))
        };
        let Some(connector) = self.driver.connector(&c.connector) else {
            return Err(failure("is not registered".into(), None));
        };
        let breaker = self.driver.breaker(&format!("connector:{}", c.connector));
        if let Err(open) = breaker.admit() {
            return Err(failure(open.to_string(), None));
        }
        let key = IdempotencyKey::for_call(self.driver.run, self.task_id, seq);
        let credential = self.driver.credential(&c.connector, &c.operation).await?;
        let descriptor = connector.descriptor().clone();
        let policy = self.role.retry;
        let mut rng = self.driver.rng(seq);
        let mut attempts_log: Vec<(u32, Outcome)> = vec![];
        let outcome = retry(
            &policy,
            self.driver.timer(),
            &mut rng,
            |a, _| attempts_log.push((a, Outcome::Failed)),
            |_| {
                connector.invoke(ConnectorCall {
                    operation: c.operation.clone(),
                    input: c.input.clone(),
                    idempotency_key: key.clone(),
                    credential: credential.clone(),
                })
            },
        )
        .await;
        let attempts = attempts_log.len() as u32 + u32::from(outcome.is_ok());
        for (attempt, o) in attempts_log {
            self.audit_connector(&descriptor, c, &key, attempt, o, Money::ZERO)
                .await?;
        }
        // a connector that echoes its credential (in an error message or in its output) must
        // not carry it into the journal, audit log, transcripts, notifications or events
        let outcome = match &credential {
            Some(secret) => outcome
                .map(|mut out| {
                    redact_value(&mut out.output, secret.expose());
                    out
                })
                .map_err(|e| redacted(e, secret.expose())),
            None => outcome.map_err(|e| (e.to_string(), e.last().cloned())),
        };
        match outcome {
            Ok(out) => {
                breaker.on_success();
                self.audit_connector(&descriptor, c, &key, attempts, Outcome::Succeeded, out.cost)
                    .await?;
                let usage = Usage {
                    // a call costs at least what its connector declares
                    cost: out
                        .cost
                        .max(self.spec(c).map(|s| s.default_cost).unwrap_or(Money::ZERO)),
                    // the money the call moved, as its input said (checked before it ran)
                    payments: self.moved(c).unwrap_or(Money::ZERO),
                    tokens: 0,
                    tool_calls: 1,
                    risk_points: u64::from(c.risk),
                };
                Ok((CallRecord::Connector(out), usage))
            }
            Err((detail, error)) => {
                breaker.on_failure();
                Err(failure(detail, error))
            }
        }
    }

    async fn audit_connector(
        &self,
        d: &aios_core::ConnectorDescriptor,
        c: &ConnectorRequest,
        key: &IdempotencyKey,
        attempt: u32,
        outcome: Outcome,
        cost: Money,
    ) -> Result<(), AgentError> {
        self.driver
            .audit(
                self.principal(),
                AuditEvent::ConnectorInvoked {
                    run: self.driver.run,
                    task: self.task_id,
                    connector: d.id.clone(),
                    operation: c.operation.clone(),
                    effect: self.spec(c).map(|s| s.effect).unwrap_or(d.effect),
                    idempotency_key: key.clone(),
                    attempt,
                    outcome,
                    cost,
                },
            )
            .await
    }

    /// Tries the router's tiers in order; returns the record and the usage of every call made.
    async fn route(
        &mut self,
        request: &ModelRequest,
    ) -> Result<((CallRecord, Usage), Vec<RouteStep>), AgentError> {
        let tiers = self.driver.router().tiers().to_vec();
        let min_confidence = self.driver.router().min_confidence();
        let mut steps: Vec<RouteStep> = vec![];
        let mut last_error: Option<aios_core::ModelError> = None;
        let mut usage = Usage::default();
        let seq = self.seq;
        let estimated_tokens = {
            let e = self.driver.router().estimate(request);
            e.prompt_tokens + e.output_tokens
        };
        for (i, model) in tiers.iter().enumerate() {
            let last = i + 1 == tiers.len();
            let breaker = self.driver.breaker(&format!("model:{}", model.id()));
            if let Err(open) = breaker.admit() {
                steps.push(RouteStep {
                    model: model.id().clone(),
                    reason: format!("breaker open ({open})"),
                });
                continue;
            }
            let mut policy = self.role.retry;
            let mut rng = self.driver.rng(seq.wrapping_add(i as u32 * 7919));
            let mut failures = 0u32;
            // each attempt waits for its permit from the scheduler (when there is one); the
            // nanoseconds waited are summed over the attempts
            let queued = std::sync::atomic::AtomicU64::new(0);
            let scheduler = self.driver.scheduler();
            // with a scheduler, an attempt's time limit starts when its permit is granted:
            // the queue is not the call
            let attempt_limit = match scheduler {
                Some(_) => policy.attempt_timeout.take(),
                None => None,
            };
            let timer = self.driver.timer();
            let ask = crate::scheduler::PermitRequest::new(
                model.id().clone(),
                crate::scheduler::FlowId::of(self.driver.run, self.agent),
            )
            .priority(self.role.priority)
            .tokens(estimated_tokens);
            let result = retry(
                &policy,
                self.driver.timer(),
                &mut rng,
                |_, _| failures += 1,
                |_| {
                    let (ask, queued) = (ask.clone(), &queued);
                    async move {
                        let Some(scheduler) = scheduler else {
                            return model.complete(request).await;
                        };
                        let permit = scheduler.acquire(ask).await;
                        let waited = u64::try_from(permit.waited().as_nanos()).unwrap_or(u64::MAX);
                        queued.fetch_add(waited, std::sync::atomic::Ordering::Relaxed);
                        let result = match attempt_limit {
                            Some(limit) => {
                                aios_core::timeout(timer, limit, model.complete(request))
                                    .await
                                    .unwrap_or_else(|_| {
                                        Err(aios_core::ModelError::Timeout {
                                            model: model.id().clone(),
                                        })
                                    })
                            }
                            None => model.complete(request).await,
                        };
                        permit.finish(&result);
                        result
                    }
                },
            )
            .await;
            let queued = scheduler.map(|_| {
                std::time::Duration::from_nanos(queued.load(std::sync::atomic::Ordering::Relaxed))
            });
            if let Some(q) = queued {
                let ms = i64::try_from(q.as_millis()).unwrap_or(i64::MAX);
                tracing::Span::current().record("aios.queue_wait_ms", ms);
            }
            let why = steps
                .last()
                .map(|s| format!("after `{}`: {}", s.model, s.reason));
            let span = tracing::Span::current();
            match result {
                Ok(response) => {
                    breaker.on_success();
                    usage.cost += response.cost;
                    usage.tokens += response.usage.total();
                    if i > 0 {
                        // a fallback tier answers: its provider, not the first tier's
                        let provider = self.driver.router().provider(model.id());
                        span.record("gen_ai.provider.name", provider);
                    }
                    // signed, as OpenTelemetry has no unsigned integers
                    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                    span.record("gen_ai.response.model", response.model.as_str());
                    span.record("gen_ai.usage.input_tokens", signed(response.usage.input));
                    span.record("gen_ai.usage.output_tokens", signed(response.usage.output));
                    span.record("aios.cost", usage.cost.to_string().as_str());
                    if self.driver.telemetry().record_content {
                        let out = serde_json::json!([{
                            "role": "assistant",
                            "content": response.content,
                            "tool_calls": response.tool_calls,
                        }]);
                        span.record("gen_ai.output.messages", out.to_string().as_str());
                    }
                    let low = match (min_confidence, response.confidence) {
                        (Some(min), Some(c)) if c < min && !last => {
                            Some(format!("confidence {c:.2} below {min:.2}"))
                        }
                        _ => None,
                    };
                    self.audit_model(ModelAttempt {
                        model: model.id(),
                        attempt: failures + 1,
                        usage: response.usage,
                        cost: response.cost,
                        outcome: Outcome::Succeeded,
                        detail: low.clone().or(why),
                        queued,
                    })
                    .await?;
                    match low {
                        Some(reason) => steps.push(RouteStep {
                            model: model.id().clone(),
                            reason,
                        }),
                        None => return Ok(((CallRecord::Model(response), usage), steps)),
                    }
                }
                Err(e) => {
                    breaker.on_failure();
                    let reason = format!("failed: {e}");
                    last_error = e.last().cloned();
                    self.audit_model(ModelAttempt {
                        model: model.id(),
                        attempt: failures.max(1),
                        usage: Default::default(),
                        cost: Money::ZERO,
                        outcome: Outcome::Failed,
                        detail: Some(reason.clone()),
                        queued,
                    })
                    .await?;
                    steps.push(RouteStep {
                        model: model.id().clone(),
                        reason,
                    });
                }
            }
        }
        let kind = match &last_error {
            Some(e) => serde_json::to_value(e)
                .ok()
                .and_then(|v| v["kind"].as_str().map(String::from))
                .unwrap_or_else(|| "model_error".into()),
            None => "model_unavailable".into(),
        };
        tracing::Span::current().record("error.type", kind.as_str());
        Err(AgentError::Model(Box::new(crate::error::ModelFailure {
            tried: steps,
            error: last_error,
        })))
    }

    async fn audit_model(&self, a: ModelAttempt<'_>) -> Result<(), AgentError> {
        self.driver
            .audit(
                self.principal(),
                AuditEvent::ModelCalled {
                    run: self.driver.run,
                    task: self.task_id,
                    model: a.model.clone(),
                    attempt: a.attempt,
                    usage: a.usage,
                    cost: a.cost,
                    outcome: a.outcome,
                    detail: a.detail,
                    queued_ms: a
                        .queued
                        .map(|q| u64::try_from(q.as_millis()).unwrap_or(u64::MAX)),
                },
            )
            .await
    }
}

/// One model attempt as [`TaskContext::audit_model`] records it.
struct ModelAttempt<'a> {
    model: &'a aios_core::ModelId,
    attempt: u32,
    usage: aios_core::TokenUsage,
    cost: Money,
    outcome: Outcome,
    detail: Option<String>,
    /// The scheduler's queue wait over the attempts, when there is a scheduler.
    queued: Option<std::time::Duration>,
}
