//! # aios-governance
//!
//! Governance for AIOS: who is accountable (human *accountability anchors*), what an agent may
//! do alone (*delegation* with autonomy limits per execution pathway), when a human must be
//! brought in (*escalation* thresholds and *approvals*), how much may be spent (*budgets*),
//! and how an operator pauses or stops work (*controls*), all from one versioned model.
//!
//! Nothing here does I/O, reads the wall clock or draws randomness: time comes from an
//! injected [`aios_core::Clock`], storage through ports with in-memory implementations.
//!
//! Main types:
//!
//! - [`GovernanceModel`]: the serde document (JSON or TOML): [`Charter`] with its
//!   [`Boundaries`], [`Anchor`]s, [`Role`]s, [`Pathway`]s with [`AutonomyLimits`] and
//!   [`EscalationRule`]s, [`Budget`]s, a version and a change log. Errors name the path in the
//!   document ([`ManifestError`]).
//! - [`GovernanceModel::validate`] returns every structural finding ([`ValidationReport`]);
//!   [`GovernanceModel::compile`] turns a valid model into a [`Governor`].
//! - [`Governor::decide`] / [`Governor::decide_with`]: a pure, synchronous, fail-closed
//!   decision on an [`ActionRequest`]: a [`Decision`] with a [`Verdict`] (allow, deny, require
//!   approval, escalate), the [`FiredRule`]s and thresholds, and the model version. Custom
//!   [`Policy`]s combine deny-overrides.
//! - Budgets: the [`BudgetLedger`] port and [`InMemoryBudgetLedger`]: atomic reservation over
//!   organisation > role > agent > run, commit or release, periods and alert thresholds.
//! - Approvals: the [`ApprovalStore`] port, [`InMemoryApprovalStore`] and the [`Approvals`]
//!   service (answers bound to a holder or deputy, single use, expiry, no self-approval).
//! - [`Controls`]: pause, resume, stop and time-limited overrides, audited, kept in a
//!   [`ControlStore`] ([`InMemoryControlStore`]; reopened with [`Controls::open`]), read by
//!   decisions through a [`ControlSnapshot`].
//! - [`diff()`]: what was added, removed, loosened or tightened between two model versions.
//!
//! Audit: every approval request and answer ([`Approvals`]), budget alert
//! ([`InMemoryBudgetLedger::with_audit`]) and control ([`Controls`]) is appended to the core
//! [`aios_core::AuditLog`]; decisions stay pure and are recorded with
//! [`Decision::audit_event`] or [`Governor::decide_recorded`].
//!
//! Features:
//!
//! - `testing`: conformance suites for [`BudgetLedger`], [`ApprovalStore`] and
//!   [`ControlStore`] implementations (`testing::budget_ledger_conformance`,
//!   `testing::approval_store_conformance`, `testing::control_store_conformance`), and
//!   `testing::budget_ledger_against_model` for property tests.
//!
//! ```
//! use aios_core::{AgentId, EffectClass, Money, PathwayId, Principal, RoleId};
//! use aios_governance::{ActionRequest, GovernanceModel, Verdict};
//!
//! let model = GovernanceModel::from_json(r#"{
//!   "version": 7,
//!   "charter": { "intent": "consulting", "final_authority": "founder" },
//!   "anchors": [{ "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "2h" }],
//!   "roles": [{ "key": "scheduler" }],
//!   "pathways": [{
//!     "key": "calendar", "anchor": "founder", "delegate": "scheduler",
//!     "limits": { "actions": ["hold", "book"], "effects": ["reversible"] },
//!     "escalation": [{ "name": "big-meeting", "when": { "context_equals": { "external": true } },
//!                      "mode": "notify_after" }]
//!   }]
//! }"#)?;
//! let governor = model.compile().map_err(|report| report.to_string()).unwrap();
//! let req = ActionRequest::new(
//!     Principal::Agent(AgentId::from_name("sam")),
//!     RoleId::from_name("scheduler"),
//!     PathwayId::from_name("calendar"),
//!     "hold",
//! )
//! .with_effect(EffectClass::Reversible);
//! let decision = governor.decide(&req);
//! assert_eq!(decision.verdict, Verdict::Allow);
//! assert_eq!(decision.model_version, 7);
//! // anything unknown is denied
//! let unknown = governor.decide(&ActionRequest { pathway: PathwayId::from_name("payments"), ..req });
//! assert_eq!(unknown.verdict, Verdict::Deny);
//! println!("{}", unknown.explain());
//! # Ok::<(), aios_governance::ManifestError>(())
//! ```

mod approvals;
mod budget;
mod controls;
mod decide;
mod diff;
mod duration;
mod governor;
mod model;
mod validate;

#[cfg(feature = "testing")]
pub mod testing;

pub use approvals::{
    ApprovalDecision, ApprovalError, ApprovalRequest, ApprovalResponse, ApprovalState,
    ApprovalStore, Approvals, ApprovedAction, Expiry, InMemoryApprovalStore, NewApproval,
    StateKind,
};
pub use budget::{
    record_alerts, refuses, unreport_alerts, BudgetAlert, BudgetChain, BudgetError, BudgetKey,
    BudgetLedger, BudgetLedgerExt, BudgetLimits, BudgetPlan, BudgetUsage, Dimension,
    InMemoryBudgetLedger, Reservation, ReservationId, ReserveOptions, Settlement, Usage,
    DEFAULT_RESERVATION_TTL, DIMENSIONS,
};
pub use controls::{
    ControlAction, ControlCommand, ControlError, ControlRecord, ControlSnapshot, ControlStore,
    ControlTarget, Controls, Halt, InMemoryControlStore, Relaxation,
};
pub use decide::check_action_name;
pub use decide::{rules, ActionRequest, Condition, Decision, FiredRule, OnTimeout, Verdict};
pub use diff::{diff, Change, ChangeKind, ModelDiff};
pub use governor::{
    AnchorInfo, Governor, GovernorBuilder, PathwayInfo, Policy, PolicyContext, PolicyOutcome,
};
pub use model::{
    Anchor, AutonomyLimits, Boundaries, Budget, BudgetScope, ChangeLogEntry, Charter,
    EscalationMode, EscalationRule, Format, GovernanceModel, Limits, ManifestError, ManifestRole,
    OnTimeoutSpec, Pathway, Period, ResponseKind, Trigger, MODEL_SCHEMA_VERSION,
};
pub use validate::{Finding, FindingKind, Severity, ValidationReport};
