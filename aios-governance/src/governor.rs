//! The compiled decision engine.

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AnchorId, AuditEvent, AuditLog, AuditRecord, DecisionKind, EffectClass, HumanId, Money,
    PathwayId, RoleId, StoreError,
};

use crate::budget::{BudgetKey, BudgetLimits, BudgetPlan};
use crate::controls::{ControlSnapshot, Halt, Relaxation};
use crate::decide::{rules, ActionRequest, Condition, Decision, FiredRule, OnTimeout, Verdict};
use crate::model::{
    Anchor, BudgetScope, EscalationMode, GovernanceModel, OnTimeoutSpec, ResponseKind, Trigger,
};
use crate::validate::ValidationReport;
use rustc_hash::{FxHashMap, FxHashSet};

/// An accountability anchor as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorInfo {
    /// Its id (`AnchorId::from_name(key)`).
    pub id: AnchorId,
    /// Its key in the document.
    pub key: String,
    /// Its title.
    pub title: String,
    /// The humans holding it.
    pub holders: Vec<HumanId>,
    /// The deputy.
    pub deputy: Option<HumanId>,
    /// Expected response time: the default approval deadline.
    pub response_time: Duration,
    /// Where it escalates when it does not answer.
    pub escalates_to: Option<AnchorId>,
}

impl AnchorInfo {
    /// Whether `human` may answer for this anchor (a holder or the deputy).
    pub fn can_answer(&self, human: HumanId) -> bool {
        self.holders.contains(&human) || self.deputy == Some(human)
    }
}

/// A pathway as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathwayInfo {
    /// Its id (`PathwayId::from_name(key)`).
    pub id: PathwayId,
    /// Its key in the document.
    pub key: String,
    /// The accountable anchor.
    pub anchor: AnchorId,
    /// The delegate role.
    pub delegate: RoleId,
}

/// A rule of your own, evaluated beside the built-in ones. Combination is deny-overrides:
/// the most restrictive outcome wins, so a policy can only tighten a decision, never loosen
/// it. Policies must be pure (no I/O, no clock): they see the request and the model.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// The policy's name (`policy:<name>:<rule>` in fired rules).
    fn name(&self) -> &str;

    /// Evaluates one request on a known pathway.
    fn evaluate(&self, req: &ActionRequest, ctx: &PolicyContext<'_>) -> PolicyOutcome;
}

/// What a policy sees besides the request.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// The governor (model, anchors, pathways).
    pub governor: &'a Governor,
    /// The request's pathway.
    pub pathway: &'a PathwayInfo,
    /// The controls in force, when the decision is made against a snapshot.
    pub controls: Option<&'a ControlSnapshot>,
}

/// What a policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// Nothing to say.
    Abstain,
    /// Refuse.
    Deny {
        /// The rule's name within the policy.
        rule: String,
        /// Why.
        reason: String,
    },
    /// A human must approve.
    RequireApproval {
        /// The rule's name within the policy.
        rule: String,
        /// Why.
        reason: String,
        /// Who (the pathway's accountable anchor when `None`).
        anchor: Option<AnchorId>,
    },
    /// Bring a human in.
    Escalate {
        /// The rule's name within the policy.
        rule: String,
        /// Why.
        reason: String,
        /// Who (the pathway's accountable anchor when `None`).
        anchor: Option<AnchorId>,
        /// How.
        mode: EscalationMode,
    },
}

#[derive(Debug)]
struct CompiledTrigger {
    cost_above: Option<Money>,
    amount_above: Option<Money>,
    risk_at_least: Option<u32>,
    confidence_below: Option<f32>,
    effect_at_least: Option<EffectClass>,
    actions: Vec<String>,
    context_equals: Vec<(String, serde_json::Value)>,
}

impl CompiledTrigger {
    fn new(t: &Trigger) -> Self {
        Self {
            cost_above: t.cost_above,
            amount_above: t.amount_above,
            risk_at_least: t.risk_at_least,
            confidence_below: t.confidence_below,
            effect_at_least: t.effect_at_least,
            actions: t.actions.clone(),
            context_equals: t
                .context_equals
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Whether every condition holds; cheap, allocation-free.
    fn matches(&self, req: &ActionRequest) -> bool {
        self.cost_above.is_none_or_gt(req.estimated_cost)
            && self.amount_above.is_none_or_gt(req.amount)
            && self.risk_at_least.map_or(true, |t| req.risk >= t)
            && self
                .confidence_below
                .map_or(true, |t| req.confidence.map_or(true, |c| c < t))
            && self.effect_at_least.map_or(true, |t| req.effect >= t)
            && (self.actions.is_empty() || self.actions.contains(&req.action))
            && self
                .context_equals
                .iter()
                .all(|(k, v)| req.context.get(k) == Some(v))
    }

    /// The conditions that held, for the explanation (only built when the rule fired).
    fn conditions(&self, req: &ActionRequest) -> Vec<Condition> {
        let mut out = Vec::new();
        if let Some(t) = self.cost_above {
            out.push(Condition::CostAbove {
                threshold: t,
                actual: req.estimated_cost,
            });
        }
        if let Some(t) = self.amount_above {
            out.push(Condition::AmountAbove {
                threshold: t,
                actual: req.amount,
            });
        }
        if let Some(t) = self.risk_at_least {
            out.push(Condition::RiskAtLeast {
                threshold: t,
                actual: req.risk,
            });
        }
        if let Some(t) = self.confidence_below {
            out.push(Condition::ConfidenceBelow {
                threshold: t,
                actual: req.confidence,
            });
        }
        if let Some(t) = self.effect_at_least {
            out.push(Condition::EffectAtLeast {
                threshold: t,
                actual: req.effect,
            });
        }
        if !self.actions.is_empty() {
            out.push(Condition::ActionListed {
                action: req.action.clone(),
            });
        }
        if !self.context_equals.is_empty() {
            out.push(Condition::ContextMatches {
                keys: self.context_equals.iter().map(|(k, _)| k.clone()).collect(),
            });
        }
        if out.is_empty() {
            out.push(Condition::Always);
        }
        out
    }
}

trait GtExt {
    fn is_none_or_gt(&self, v: Money) -> bool;
}

impl GtExt for Option<Money> {
    #[inline]
    fn is_none_or_gt(&self, v: Money) -> bool {
        match self {
            Some(t) => v > *t,
            None => true,
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    id: String,
    when: CompiledTrigger,
    verdict: Verdict,
}

#[derive(Debug)]
struct CompiledPathway {
    info: PathwayInfo,
    any_action: bool,
    actions: FxHashSet<String>,
    effects: u8,
    max_cost: Option<Money>,
    max_amount: Option<Money>,
    max_risk: Option<u32>,
    min_confidence: Option<f32>,
    limits_verdict: Verdict,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Default)]
struct CompiledCharter {
    forbidden: FxHashSet<String>,
    max_effect: Option<EffectClass>,
    max_cost: Option<Money>,
    max_amount: Option<Money>,
    max_risk: Option<u32>,
    min_confidence: Option<f32>,
}

fn effect_bit(e: EffectClass) -> u8 {
    match e {
        EffectClass::ReadOnly => 1,
        EffectClass::Reversible => 2,
        EffectClass::Irreversible => 4,
    }
}

/// The compiled, immutable decision engine of one governance model version.
///
/// Build it with [`GovernanceModel::compile`] or [`Governor::builder`]; share it in an
/// `Arc`. [`Governor::decide`] is pure, synchronous and fail-closed: anything unknown or
/// malformed is denied.
///
/// Evaluation order (rule ids in [`rules`](crate::rules)):
///
/// 1. a malformed request is denied (`request.malformed`);
/// 2. with [`Governor::decide_with`], a pause or stop on the organisation, the role, the
///    pathway or the agent denies (`control.paused`, `control.stopped`);
/// 3. an unknown pathway or role, or a role that is not the pathway's delegate, is denied;
/// 4. the charter's boundaries and the delegation's actions and effect classes deny, with
///    every violation reported;
/// 5. every escalation rule whose trigger holds fires (`escalation:<name>`), and numeric
///    autonomy limits (cost, risk, confidence) ask the accountable anchor for approval within
///    its response time, deny on timeout (`limits.*`); time-limited overrides may waive a
///    rule or raise a limit, never a charter boundary (`control.override`);
/// 6. custom [`Policy`]s.
///
/// The strictest outcome wins: allow < notify after < require approval < halt < deny; among
/// equals, the first to fire (escalation rules in document order, then limits, then
/// policies). With nothing fired the decision is allow, naming `delegation.within_limits`.
///
/// ```
/// use aios_core::{AgentId, EffectClass, Money, PathwayId, Principal, RoleId};
/// use aios_governance::{ActionRequest, GovernanceModel, Verdict};
/// let model = GovernanceModel::from_toml(r#"
/// version = 3
/// [charter]
/// intent = "a one-person consultancy"
/// final_authority = "founder"
/// boundaries = { forbidden_actions = ["wire_money"], max_cost_per_action = 100000 }
///
/// [[anchors]]
/// key = "founder"
/// title = "Founder"
/// holders = ["alice"]
/// response_time = "4h"
///
/// [[roles]]
/// key = "outreach"
///
/// [[pathways]]
/// key = "send-email"
/// anchor = "founder"
/// delegate = "outreach"
/// limits = { actions = ["send", "draft"], effects = ["reversible", "irreversible"], max_cost_per_action = 500 }
///
/// [[pathways.escalation]]
/// name = "risky"
/// when = { risk_at_least = 70 }
/// mode = "approve_before"
/// deadline = "1h"
/// "#)?;
/// let governor = model.compile().map_err(|r| r.to_string()).unwrap();
/// let req = ActionRequest::new(
///     Principal::Agent(AgentId::from_name("ana")),
///     RoleId::from_name("outreach"),
///     PathwayId::from_name("send-email"),
///     "send",
/// )
/// .with_effect(EffectClass::Irreversible)
/// .with_cost(Money::from_minor(20))
/// .with_confidence(0.9);
/// assert_eq!(governor.decide(&req).verdict, Verdict::Allow);
/// let risky = governor.decide(&req.clone().with_risk(80));
/// assert!(matches!(risky.verdict, Verdict::RequireApproval { .. }));
/// assert!(risky.fired("escalation:risky"));
/// assert_eq!(risky.model_version, 3);
/// let wire = governor.decide(&ActionRequest { action: "wire_money".into(), ..req });
/// assert_eq!(wire.verdict, Verdict::Deny);
/// # Ok::<(), aios_governance::ManifestError>(())
/// ```
#[derive(Debug)]
pub struct Governor {
    model: GovernanceModel,
    charter: CompiledCharter,
    anchors: FxHashMap<AnchorId, AnchorInfo>,
    pathways: FxHashMap<PathwayId, CompiledPathway>,
    roles: FxHashMap<RoleId, String>,
    final_authority: AnchorId,
    policies: Vec<Arc<dyn Policy>>,
}

/// Builds a [`Governor`] with custom policies.
#[derive(Debug)]
pub struct GovernorBuilder {
    model: GovernanceModel,
    policies: Vec<Arc<dyn Policy>>,
}

impl GovernorBuilder {
    /// Adds a custom policy, evaluated after the built-in rules (deny-overrides).
    pub fn policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.policies.push(policy);
        self
    }

    /// Validates and compiles; refuses a model with error-level findings.
    pub fn build(self) -> Result<Governor, ValidationReport> {
        let report = self.model.validate();
        if !report.is_ok() {
            return Err(report);
        }
        Ok(Governor::compile_valid(self.model, self.policies))
    }
}

impl GovernanceModel {
    /// Validates the model and compiles it into a [`Governor`]; refuses a model with
    /// error-level findings (warnings are allowed).
    pub fn compile(&self) -> Result<Governor, ValidationReport> {
        Governor::builder(self.clone()).build()
    }
}

/// The anchor a route actually reaches: the first anchor with a holder along the
/// `escalates_to` chain from `key` (validation guarantees there is one).
fn resolve_route<'a>(anchors: &FxHashMap<&'a str, &'a Anchor>, key: &'a str) -> &'a str {
    let mut current = key;
    for _ in 0..=anchors.len() {
        match anchors.get(current) {
            Some(a) if !a.holders.is_empty() => return current,
            Some(a) => match a.escalates_to.as_deref() {
                Some(next) => current = next,
                None => return current,
            },
            None => return current,
        }
    }
    current
}

fn on_timeout<'a>(anchors: &FxHashMap<&'a str, &'a Anchor>, spec: &'a OnTimeoutSpec) -> OnTimeout {
    match spec {
        OnTimeoutSpec::Deny => OnTimeout::Deny,
        OnTimeoutSpec::Escalate(k) => {
            OnTimeout::Escalate(AnchorId::from_name(resolve_route(anchors, k)))
        }
    }
}

impl Governor {
    /// A builder over `model`.
    pub fn builder(model: GovernanceModel) -> GovernorBuilder {
        GovernorBuilder {
            model,
            policies: Vec::new(),
        }
    }

    fn compile_valid(model: GovernanceModel, policies: Vec<Arc<dyn Policy>>) -> Governor {
        let b = &model.charter.boundaries;
        let charter = CompiledCharter {
            forbidden: b.forbidden_actions.iter().cloned().collect(),
            max_effect: b.max_effect,
            max_cost: b.max_cost_per_action,
            max_amount: b.max_amount_per_action,
            max_risk: b.max_risk,
            min_confidence: b.min_confidence,
        };
        let anchors: FxHashMap<AnchorId, AnchorInfo> = model
            .anchors
            .iter()
            .map(|a| {
                let id = AnchorId::from_name(&a.key);
                (
                    id,
                    AnchorInfo {
                        id,
                        key: a.key.clone(),
                        title: a.title.clone(),
                        holders: a.holders.iter().map(|h| HumanId::from_name(h)).collect(),
                        deputy: a.deputy.as_deref().map(HumanId::from_name),
                        response_time: a.response_time,
                        escalates_to: a.escalates_to.as_deref().map(AnchorId::from_name),
                    },
                )
            })
            .collect();
        let roles = model
            .roles
            .iter()
            .map(|r| (RoleId::from_name(&r.key), r.key.clone()))
            .collect();
        let by_key: FxHashMap<&str, &Anchor> =
            model.anchors.iter().map(|a| (a.key.as_str(), a)).collect();
        let response_time =
            |key: &str| by_key.get(key).map(|a| a.response_time).unwrap_or_default();
        let mut pathways = FxHashMap::default();
        for p in &model.pathways {
            // validation guarantees both are present
            let (Some(anchor_key), Some(delegate_key)) =
                (p.anchor.as_deref(), p.delegate.as_deref())
            else {
                continue;
            };
            let anchor = AnchorId::from_name(anchor_key);
            let l = &p.limits;
            let rules = p
                .escalation
                .iter()
                .map(|r| {
                    let route_key =
                        resolve_route(&by_key, r.route.as_deref().unwrap_or(anchor_key));
                    let route = AnchorId::from_name(route_key);
                    let verdict = match r.mode {
                        EscalationMode::ApproveBefore => Verdict::RequireApproval {
                            anchor: route,
                            deadline: r.deadline.unwrap_or_else(|| response_time(route_key)),
                            allowed: if r.allowed.is_empty() {
                                ResponseKind::ALL.to_vec()
                            } else {
                                r.allowed.clone()
                            },
                            on_timeout: on_timeout(&by_key, &r.on_timeout),
                        },
                        mode => Verdict::Escalate {
                            anchor: route,
                            mode,
                        },
                    };
                    CompiledRule {
                        name: r.name.clone(),
                        id: format!("escalation:{}", r.name),
                        when: CompiledTrigger::new(&r.when),
                        verdict,
                    }
                })
                .collect();
            let id = PathwayId::from_name(&p.key);
            pathways.insert(
                id,
                CompiledPathway {
                    info: PathwayInfo {
                        id,
                        key: p.key.clone(),
                        anchor,
                        delegate: RoleId::from_name(delegate_key),
                    },
                    any_action: l.actions.iter().any(|a| a == "*"),
                    actions: l.actions.iter().filter(|a| *a != "*").cloned().collect(),
                    effects: l.effects.iter().fold(0, |acc, e| acc | effect_bit(*e)),
                    max_cost: l.max_cost_per_action,
                    max_amount: l.max_amount_per_action,
                    max_risk: l.max_risk,
                    min_confidence: l.min_confidence,
                    limits_verdict: Verdict::RequireApproval {
                        anchor,
                        deadline: response_time(anchor_key),
                        allowed: ResponseKind::ALL.to_vec(),
                        on_timeout: OnTimeout::Deny,
                    },
                    rules,
                },
            );
        }
        let final_authority = model
            .charter
            .final_authority
            .as_deref()
            .map(AnchorId::from_name)
            .unwrap_or_else(|| AnchorId::from_name(""));
        Governor {
            model,
            charter,
            anchors,
            pathways,
            roles,
            final_authority,
            policies,
        }
    }

    /// The model version.
    pub fn version(&self) -> u64 {
        self.model.version
    }

    /// The model this governor was compiled from.
    pub fn model(&self) -> &GovernanceModel {
        &self.model
    }

    /// The anchor with this id.
    pub fn anchor(&self, id: AnchorId) -> Option<&AnchorInfo> {
        self.anchors.get(&id)
    }

    /// Every anchor.
    pub fn anchors(&self) -> impl Iterator<Item = &AnchorInfo> {
        self.anchors.values()
    }

    /// The final authority of the charter.
    pub fn final_authority(&self) -> AnchorId {
        self.final_authority
    }

    /// Whether `human` may answer for `anchor` (a holder or the deputy).
    pub fn can_answer(&self, anchor: AnchorId, human: HumanId) -> bool {
        self.anchors
            .get(&anchor)
            .is_some_and(|a| a.can_answer(human))
    }

    /// The pathway with this id.
    pub fn pathway(&self, id: PathwayId) -> Option<&PathwayInfo> {
        self.pathways.get(&id).map(|p| &p.info)
    }

    /// Every pathway.
    pub fn pathways(&self) -> impl Iterator<Item = &PathwayInfo> {
        self.pathways.values().map(|p| &p.info)
    }

    /// The key of the role with this id, if it is in the model.
    pub fn role(&self, id: RoleId) -> Option<&str> {
        self.roles.get(&id).map(String::as_str)
    }

    /// The budgets of the model as ledger limits: one entry per organisation, role and agent
    /// budget, and the limits every run gets.
    pub fn budget_plan(&self) -> BudgetPlan {
        let mut plan = BudgetPlan::default();
        for b in &self.model.budgets {
            let limits = BudgetLimits {
                limits: b.limits,
                period: b.period,
                alerts: b.alerts.clone(),
            };
            let key = match &b.scope {
                BudgetScope::Organisation => BudgetKey::Organisation,
                BudgetScope::Role(r) => BudgetKey::Role(RoleId::from_name(r)),
                BudgetScope::Agent(a) => BudgetKey::Agent(aios_core::AgentId::from_name(a)),
                BudgetScope::Run => {
                    plan.per_run = Some(match plan.per_run.take() {
                        Some(prev) => prev.tightest(&limits),
                        None => limits,
                    });
                    continue;
                }
            };
            plan.budgets.push((key, limits));
        }
        plan
    }

    /// Like [`Decision::explain`], with anchors, roles and pathways of this model named by
    /// their keys instead of their ids (for transcripts and notifications).
    pub fn explain(&self, decision: &Decision) -> String {
        let mut text = decision.explain();
        for a in self.anchors.values() {
            text = text.replace(&format!("{:?}", a.id), &format!("anchor `{}`", a.key));
        }
        for (id, key) in &self.roles {
            text = text.replace(&format!("{id:?}"), &format!("role `{key}`"));
        }
        text
    }

    /// `text` with the ids of this model's anchors, roles, pathways and humans (holders and
    /// deputies) replaced by their keys, for messages a human reads.
    ///
    /// ```
    /// use aios_core::{AnchorId, HumanId};
    /// # let g = aios_governance::GovernanceModel::from_toml(r#"
    /// # version = 1
    /// # [charter]
    /// # intent = "x"
    /// # final_authority = "founder"
    /// # [[anchors]]
    /// # key = "founder"
    /// # title = "Founder"
    /// # holders = ["alice"]
    /// # response_time = "1h"
    /// # "#).unwrap().compile().unwrap();
    /// let text = format!("`{}` is not a holder of anchor `{}`", HumanId::from_name("alice"), AnchorId::from_name("founder"));
    /// assert_eq!(g.name_ids(&text), "`alice` is not a holder of anchor `founder`");
    /// ```
    pub fn name_ids(&self, text: &str) -> String {
        let mut text = text.to_string();
        let mut swap = |id: String, key: &str| {
            if text.contains(&id) {
                text = text.replace(&id, key);
            }
        };
        for a in &self.model.anchors {
            swap(AnchorId::from_name(&a.key).to_string(), &a.key);
            for h in a.holders.iter().chain(a.deputy.iter()) {
                swap(HumanId::from_name(h).to_string(), h);
            }
        }
        for r in &self.model.roles {
            swap(RoleId::from_name(&r.key).to_string(), &r.key);
        }
        for p in &self.model.pathways {
            swap(PathwayId::from_name(&p.key).to_string(), &p.key);
        }
        text
    }

    /// Decides on `req` with no operator controls in force. Pure and fail-closed.
    pub fn decide(&self, req: &ActionRequest) -> Decision {
        self.decide_inner(req, None)
    }

    /// Decides on `req` against the operator controls of `controls` (evaluated at the
    /// snapshot's instant). Pure and fail-closed.
    pub fn decide_with(&self, req: &ActionRequest, controls: &ControlSnapshot) -> Decision {
        self.decide_inner(req, Some(controls))
    }

    /// Decides like [`Governor::decide_with`] and appends the decision to `audit`
    /// ([`AuditEvent::DecisionMade`], and [`AuditEvent::Escalated`] when the verdict brings
    /// an anchor in), stamped with the snapshot's time. For hosts that call governance
    /// directly; the decision itself stays pure.
    ///
    /// An audit failure is returned as an error: an unrecorded decision must not be acted on.
    pub async fn decide_recorded(
        &self,
        req: &ActionRequest,
        controls: &ControlSnapshot,
        audit: &dyn AuditLog,
    ) -> Result<Decision, StoreError> {
        let decision = self.decide_with(req, controls);
        let at = controls.at();
        audit.append(decision.audit_record(req, at)).await?;
        if let Verdict::Escalate { anchor, mode } = &decision.verdict {
            let event = AuditEvent::Escalated {
                run: req.run,
                anchor: *anchor,
                reason: format!("{mode}: {}", self.explain(&decision)),
            };
            audit
                .append(AuditRecord::new(req.principal, event).at(at))
                .await?;
        }
        Ok(decision)
    }

    fn deny(&self, fired: Vec<FiredRule>) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            fired,
            model_version: self.model.version,
        }
    }

    fn deny_one(&self, rule: &str, condition: Condition) -> Decision {
        self.deny(vec![FiredRule::new(rule, DecisionKind::Deny, condition)])
    }

    fn decide_inner(&self, req: &ActionRequest, controls: Option<&ControlSnapshot>) -> Decision {
        // 1. malformed input
        if let Some(c) = malformed(req) {
            return self.deny_one(rules::MALFORMED, c);
        }
        // 2. operator controls
        if let Some(ctl) = controls {
            if let Some((target, halt)) =
                ctl.halt_for(req.principal.agent(), req.role, req.pathway, req.run)
            {
                let rule = match halt {
                    Halt::Paused => rules::PAUSED,
                    Halt::Stopped => rules::STOPPED,
                };
                return self.deny_one(rule, Condition::Control { target, halt });
            }
        }
        // 3. what the request refers to must exist
        let Some(p) = self.pathways.get(&req.pathway) else {
            return self.deny_one(rules::UNKNOWN_PATHWAY, Condition::UnknownPathway);
        };
        if !self.roles.contains_key(&req.role) {
            return self.deny_one(rules::UNKNOWN_ROLE, Condition::UnknownRole);
        }
        if req.role != p.info.delegate {
            return self.deny_one(
                rules::NOT_DELEGATE,
                Condition::NotDelegate {
                    delegate: p.info.delegate,
                },
            );
        }
        // 4. the charter and the delegation's hard edges: every violation is reported
        let mut denials = Vec::new();
        let ch = &self.charter;
        if !ch.forbidden.is_empty() && ch.forbidden.contains(req.action.as_str()) {
            denials.push(FiredRule::new(
                rules::CHARTER_FORBIDDEN,
                DecisionKind::Deny,
                Condition::ForbiddenAction {
                    action: req.action.clone(),
                },
            ));
        }
        if let Some(max) = ch.max_effect.filter(|m| req.effect > *m) {
            denials.push(FiredRule::new(
                rules::CHARTER_EFFECT,
                DecisionKind::Deny,
                Condition::EffectAbove {
                    limit: max,
                    actual: req.effect,
                },
            ));
        }
        if let Some(max) = ch.max_cost.filter(|m| req.estimated_cost > *m) {
            denials.push(FiredRule::new(
                rules::CHARTER_COST,
                DecisionKind::Deny,
                Condition::CostAbove {
                    threshold: max,
                    actual: req.estimated_cost,
                },
            ));
        }
        if let Some(max) = ch.max_amount.filter(|m| req.amount > *m) {
            denials.push(FiredRule::new(
                rules::CHARTER_AMOUNT,
                DecisionKind::Deny,
                Condition::AmountAbove {
                    threshold: max,
                    actual: req.amount,
                },
            ));
        }
        if let Some(max) = ch.max_risk.filter(|m| req.risk > *m) {
            denials.push(FiredRule::new(
                rules::CHARTER_RISK,
                DecisionKind::Deny,
                Condition::RiskAbove {
                    threshold: max,
                    actual: req.risk,
                },
            ));
        }
        if let Some(min) = ch.min_confidence {
            if req.confidence.map_or(true, |c| c < min) {
                denials.push(FiredRule::new(
                    rules::CHARTER_CONFIDENCE,
                    DecisionKind::Deny,
                    Condition::ConfidenceBelow {
                        threshold: min,
                        actual: req.confidence,
                    },
                ));
            }
        }
        if !p.any_action && !p.actions.contains(req.action.as_str()) {
            denials.push(FiredRule::new(
                rules::ACTION_NOT_DELEGATED,
                DecisionKind::Deny,
                Condition::ActionNotDelegated {
                    action: req.action.clone(),
                },
            ));
        }
        if p.effects & effect_bit(req.effect) == 0 {
            denials.push(FiredRule::new(
                rules::EFFECT_NOT_DELEGATED,
                DecisionKind::Deny,
                Condition::EffectNotDelegated { effect: req.effect },
            ));
        }
        if !denials.is_empty() {
            return self.deny(denials);
        }

        // 5. escalation rules and numeric autonomy limits
        let mut acc = Acc {
            verdict: Verdict::Allow,
            fired: Vec::new(),
        };
        let overrides = controls.filter(|c| c.has_overrides());
        let agent = req.principal.agent();
        for r in &p.rules {
            if !r.when.matches(req) {
                continue;
            }
            if let Some((relax, until)) = overrides.and_then(|c| {
                c.overrides_for(agent, req.role, req.pathway)
                    .find(|(o, _)| matches!(o, Relaxation::WaiveRule { rule } if *rule == r.name))
            }) {
                acc.fired.push(FiredRule::new(
                    rules::OVERRIDE,
                    DecisionKind::Allow,
                    Condition::Override {
                        relax: relax.clone(),
                        until,
                    },
                ));
                continue;
            }
            acc.add(
                FiredRule {
                    rule: r.id.clone(),
                    outcome: r.verdict.kind(),
                    conditions: r.when.conditions(req),
                },
                &r.verdict,
            );
        }
        let limit = |rule: &str, cond: Condition, acc: &mut Acc| {
            acc.add(
                FiredRule::new(rule, DecisionKind::RequireApproval, cond),
                &p.limits_verdict,
            );
        };
        if let Some(max) = p.max_cost.filter(|m| req.estimated_cost > *m) {
            let raised = overrides.and_then(|c| {
                c.overrides_for(agent, req.role, req.pathway)
                    .find(|(o, _)| matches!(o, Relaxation::RaiseCostLimit { to } if req.estimated_cost <= *to))
            });
            match raised {
                Some((relax, until)) => acc.fired.push(FiredRule::new(
                    rules::OVERRIDE,
                    DecisionKind::Allow,
                    Condition::Override {
                        relax: relax.clone(),
                        until,
                    },
                )),
                None => limit(
                    rules::LIMIT_COST,
                    Condition::CostAbove {
                        threshold: max,
                        actual: req.estimated_cost,
                    },
                    &mut acc,
                ),
            }
        }
        if let Some(max) = p.max_amount.filter(|m| req.amount > *m) {
            limit(
                rules::LIMIT_AMOUNT,
                Condition::AmountAbove {
                    threshold: max,
                    actual: req.amount,
                },
                &mut acc,
            );
        }
        if let Some(max) = p.max_risk.filter(|m| req.risk > *m) {
            let raised = overrides.and_then(|c| {
                c.overrides_for(agent, req.role, req.pathway).find(
                    |(o, _)| matches!(o, Relaxation::RaiseRiskLimit { to } if req.risk <= *to),
                )
            });
            match raised {
                Some((relax, until)) => acc.fired.push(FiredRule::new(
                    rules::OVERRIDE,
                    DecisionKind::Allow,
                    Condition::Override {
                        relax: relax.clone(),
                        until,
                    },
                )),
                None => limit(
                    rules::LIMIT_RISK,
                    Condition::RiskAbove {
                        threshold: max,
                        actual: req.risk,
                    },
                    &mut acc,
                ),
            }
        }
        if let Some(min) = p.min_confidence {
            if req.confidence.map_or(true, |c| c < min) {
                limit(
                    rules::LIMIT_CONFIDENCE,
                    Condition::ConfidenceBelow {
                        threshold: min,
                        actual: req.confidence,
                    },
                    &mut acc,
                );
            }
        }

        // 6. custom policies (deny-overrides)
        if !self.policies.is_empty() {
            let ctx = PolicyContext {
                governor: self,
                pathway: &p.info,
                controls,
            };
            for policy in &self.policies {
                if acc.verdict == Verdict::Deny {
                    break;
                }
                self.apply_policy(policy.as_ref(), req, &ctx, &mut acc);
            }
        }

        if acc.fired.is_empty() {
            acc.fired.push(FiredRule::new(
                rules::WITHIN_DELEGATION,
                DecisionKind::Allow,
                Condition::WithinLimits,
            ));
        }
        Decision {
            verdict: acc.verdict,
            fired: acc.fired,
            model_version: self.model.version,
        }
    }

    fn apply_policy(
        &self,
        policy: &dyn Policy,
        req: &ActionRequest,
        ctx: &PolicyContext<'_>,
        acc: &mut Acc,
    ) {
        let name = policy.name();
        // an approval or escalation to an anchor nobody holds cannot be honoured: deny
        let route = |anchor: Option<AnchorId>| {
            let anchor = anchor.unwrap_or(ctx.pathway.anchor);
            self.anchors
                .get(&anchor)
                .filter(|a| !a.holders.is_empty())
                .map(|a| (anchor, a.response_time))
        };
        let approval = |anchor: AnchorId, deadline: Duration| Verdict::RequireApproval {
            anchor,
            deadline,
            allowed: ResponseKind::ALL.to_vec(),
            on_timeout: OnTimeout::Deny,
        };
        let (rule, reason, verdict) = match policy.evaluate(req, ctx) {
            PolicyOutcome::Abstain => return,
            PolicyOutcome::Deny { rule, reason } => (rule, reason, Some(Verdict::Deny)),
            PolicyOutcome::RequireApproval {
                rule,
                reason,
                anchor,
            } => (rule, reason, route(anchor).map(|(a, d)| approval(a, d))),
            PolicyOutcome::Escalate {
                rule,
                reason,
                anchor,
                mode,
            } => (
                rule,
                reason,
                route(anchor).map(|(anchor, d)| {
                    if mode == EscalationMode::ApproveBefore {
                        approval(anchor, d)
                    } else {
                        Verdict::Escalate { anchor, mode }
                    }
                }),
            ),
        };
        let (id, verdict) = match verdict {
            Some(v) => (format!("policy:{name}:{rule}"), v),
            None => (rules::POLICY_BAD_ANCHOR.to_string(), Verdict::Deny),
        };
        acc.add(
            FiredRule {
                rule: id,
                outcome: verdict.kind(),
                conditions: vec![Condition::Policy { reason }],
            },
            &verdict,
        );
    }
}

struct Acc {
    verdict: Verdict,
    fired: Vec<FiredRule>,
}

impl Acc {
    /// Records a fired rule and keeps the most restrictive verdict (the first among equals).
    fn add(&mut self, fired: FiredRule, verdict: &Verdict) {
        self.fired.push(fired);
        if verdict.strictness() > self.verdict.strictness() {
            self.verdict = verdict.clone();
        }
    }
}

fn malformed(req: &ActionRequest) -> Option<Condition> {
    let bad = |field: &str, problem: String| {
        Some(Condition::Malformed {
            field: field.to_string(),
            problem,
        })
    };
    if let Err(problem) = crate::decide::check_action_name(&req.action) {
        return bad("action", problem);
    }
    if req.risk > 100 {
        return bad("risk", format!("`{}` is above 100", req.risk));
    }
    if let Some(c) = req.confidence {
        if !(0.0..=1.0).contains(&c) {
            return bad("confidence", format!("`{c}` is outside 0.0..=1.0"));
        }
    }
    if req.estimated_cost.is_negative() {
        return bad(
            "estimated_cost",
            format!("`{}` is negative", req.estimated_cost),
        );
    }
    if req.amount.is_negative() {
        return bad("amount", format!("`{}` is negative", req.amount));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stricter_verdicts_win() {
        let a = AnchorId::from_name("a");
        let order = [
            Verdict::Allow,
            Verdict::Escalate {
                anchor: a,
                mode: EscalationMode::NotifyAfter,
            },
            Verdict::RequireApproval {
                anchor: a,
                deadline: Duration::from_secs(1),
                allowed: vec![],
                on_timeout: OnTimeout::Deny,
            },
            Verdict::Escalate {
                anchor: a,
                mode: EscalationMode::Halt,
            },
            Verdict::Deny,
        ];
        for w in order.windows(2) {
            assert!(w[0].strictness() < w[1].strictness());
        }
    }
}
