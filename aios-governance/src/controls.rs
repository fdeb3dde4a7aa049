//! Operator controls: pause, resume, stop (kill switch), time-limited overrides and
//! annotations for an agent, a role, a pathway or the whole organisation, each recorded with
//! who and why, and kept in a [`ControlStore`] so they survive a restart.

use std::sync::Arc;

use aios_core::{
    AgentId, AuditEvent, AuditLog, AuditRecord, Clock, Money, PathwayId, Principal, RoleId, RunId,
    StoreError, Timestamp,
};
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use rustc_hash::FxHashMap;

/// What a control applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum ControlTarget {
    /// Everything.
    Organisation,
    /// Every agent of a role.
    Role(RoleId),
    /// One execution pathway.
    Pathway(PathwayId),
    /// One agent.
    Agent(AgentId),
    /// One run: every call of its agents (halts only; overrides are not per run).
    Run(RunId),
}

impl std::fmt::Display for ControlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlTarget::Organisation => f.write_str("organisation"),
            ControlTarget::Role(r) => write!(f, "role:{r}"),
            ControlTarget::Pathway(p) => write!(f, "pathway:{p}"),
            ControlTarget::Agent(a) => write!(f, "agent:{a}"),
            ControlTarget::Run(r) => write!(f, "run:{r}"),
        }
    }
}

/// A halt in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Halt {
    /// Work waits (runs park) until resumed.
    Paused,
    /// The kill switch: work is refused and running work should be cancelled.
    Stopped,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Halt::Paused => "paused",
            Halt::Stopped => "stopped",
        })
    }
}

/// A temporary loosening of a delegation, granted by a human until a given time. Overrides
/// never lift the charter's boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Relaxation {
    /// The escalation rule with this name does not fire.
    WaiveRule {
        /// The rule's name in its pathway.
        rule: String,
    },
    /// The delegation's cost limit per action is raised to this amount.
    RaiseCostLimit {
        /// The new limit.
        to: Money,
    },
    /// The delegation's risk limit is raised to this score.
    RaiseRiskLimit {
        /// The new limit.
        to: u32,
    },
}

impl std::fmt::Display for Relaxation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Relaxation::WaiveRule { rule } => write!(f, "waive rule `{rule}`"),
            Relaxation::RaiseCostLimit { to } => write!(f, "raise cost limit to {to}"),
            Relaxation::RaiseRiskLimit { to } => write!(f, "raise risk limit to {to}"),
        }
    }
}

/// What an operator does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlAction {
    /// Pause the target (until resumed or until `until`).
    Pause,
    /// Stop the target: the kill switch.
    Stop,
    /// Lift a pause or stop on the target. Only a human may.
    Resume,
    /// Grant a time-limited override. Only a human may, and only with an `until`.
    Override {
        /// What is loosened.
        relax: Relaxation,
    },
    /// Withdraw every override on the target.
    RevokeOverrides,
    /// Record a note about the target (the command's reason); changes nothing.
    Annotate,
}

impl ControlAction {
    /// The control's name in audit events (`pause`, `stop`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::Stop => "stop",
            ControlAction::Resume => "resume",
            ControlAction::Override { .. } => "override",
            ControlAction::RevokeOverrides => "revoke_overrides",
            ControlAction::Annotate => "annotate",
        }
    }

    /// Whether the action loosens control (and therefore must come from a human and be
    /// audited before it takes effect).
    pub fn loosens(&self) -> bool {
        matches!(self, ControlAction::Resume | ControlAction::Override { .. })
    }
}

/// A control to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlCommand {
    /// What it applies to.
    pub target: ControlTarget,
    /// What to do.
    pub action: ControlAction,
    /// Who does it.
    pub by: Principal,
    /// Why.
    pub reason: String,
    /// Until when (pauses and stops lapse then; overrides require it).
    pub until: Option<Timestamp>,
}

/// A control as applied and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRecord {
    /// The command.
    pub command: ControlCommand,
    /// When it was applied (from the clock).
    pub at: Timestamp,
}

/// A control could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Only a human may loosen control (resume or override).
    #[error("only a human may `{action}`, not `{by}`")]
    NotHuman {
        /// The action refused.
        action: &'static str,
        /// Who tried.
        by: Principal,
    },
    /// An override needs an end time in the future.
    #[error("an override needs an `until` after now")]
    MissingOrPastUntil,
    /// Overrides relax a rule for an agent, role, pathway or everything, never for one run.
    #[error("an override cannot target run `{run}`; target its agent, role or pathway")]
    NoRunOverride {
        /// The run named.
        run: RunId,
    },
    /// The reason is empty; every control must say why.
    #[error("a control needs a reason")]
    MissingReason,
    /// The audit log refused the record. A tightening control (pause, stop, revoke) is in
    /// force anyway; a loosening one was not applied.
    #[error("audit failed: {0}")]
    Audit(#[from] StoreError),
    /// The [`ControlStore`] refused the record, or could not be read when opening. A
    /// tightening control is in force in this process anyway (but will not be after a
    /// restart unless applied again); a loosening one was not applied.
    #[error("control store failed: {0}")]
    Store(#[source] StoreError),
}

/// Where applied controls are kept, so a pause or a kill switch outlives the process.
///
/// Contract:
/// - `append` makes one record durable (as durable as the backend is) after every record
///   appended before it; when it returns `Ok`, a later `load`, from this handle or from one
///   opened on the same storage after a restart, returns the record. A failed append
///   stores nothing.
/// - `load` returns every record appended, oldest first, each exactly as appended
///   (identical records appended twice are returned twice).
/// - Records are never changed or removed: the history is the state.
#[async_trait]
pub trait ControlStore: Send + Sync + std::fmt::Debug {
    /// Appends one record after all others.
    async fn append(&self, record: &ControlRecord) -> Result<(), StoreError>;

    /// Every record, in the order appended.
    async fn load(&self) -> Result<Vec<ControlRecord>, StoreError>;
}

/// A [`ControlStore`] in process memory (what [`Controls::new`] uses). Clones share the
/// records.
///
/// ```
/// use aios_core::{Clock, ManualClock, Principal};
/// use aios_governance::{ControlAction, ControlCommand, ControlRecord, ControlStore, ControlTarget, InMemoryControlStore};
/// # futures::executor::block_on(async {
/// let store = InMemoryControlStore::new();
/// let record = ControlRecord {
///     command: ControlCommand {
///         target: ControlTarget::Organisation,
///         action: ControlAction::Stop,
///         by: Principal::System,
///         reason: "incident".into(),
///         until: None,
///     },
///     at: ManualClock::default().now(),
/// };
/// store.append(&record).await?;
/// assert_eq!(store.load().await?, vec![record]);
/// # Ok::<(), aios_core::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryControlStore {
    records: Arc<Mutex<Vec<ControlRecord>>>,
}

impl InMemoryControlStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ControlStore for InMemoryControlStore {
    async fn append(&self, record: &ControlRecord) -> Result<(), StoreError> {
        self.records.lock().push(record.clone());
        Ok(())
    }

    async fn load(&self) -> Result<Vec<ControlRecord>, StoreError> {
        Ok(self.records.lock().clone())
    }
}

/// `at` is before the optional end `until` (no end: always).
fn before(at: Timestamp, until: Option<Timestamp>) -> bool {
    match until {
        Some(u) => at < u,
        None => true,
    }
}

#[derive(Debug, Clone, Copy)]
struct HaltEntry {
    halt: Halt,
    until: Option<Timestamp>,
}

#[derive(Debug, Clone)]
struct OverrideEntry {
    target: ControlTarget,
    relax: Relaxation,
    until: Timestamp,
}

#[derive(Debug, Clone, Default)]
struct ControlState {
    halts: FxHashMap<ControlTarget, HaltEntry>,
    overrides: Vec<OverrideEntry>,
}

/// The controls in force at one instant: what [`crate::Governor::decide_with`] consults.
/// Cheap to clone; immutable.
#[derive(Debug, Clone)]
pub struct ControlSnapshot {
    at: Timestamp,
    state: Arc<ControlState>,
}

impl ControlSnapshot {
    /// No controls at all, evaluated at `at`.
    pub fn empty(at: Timestamp) -> Self {
        Self {
            at,
            state: Arc::new(ControlState::default()),
        }
    }

    /// The instant the snapshot is evaluated at.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The same controls evaluated at another instant (for example to see what lapses).
    pub fn at_time(&self, at: Timestamp) -> Self {
        Self {
            at,
            state: self.state.clone(),
        }
    }

    /// The halt on exactly this target, if one is in force.
    pub fn halt(&self, target: ControlTarget) -> Option<Halt> {
        self.state
            .halts
            .get(&target)
            .filter(|h| before(self.at, h.until))
            .map(|h| h.halt)
    }

    /// The strongest halt affecting work of `agent` (if any) in `role` on `pathway`: a stop
    /// beats a pause; between equals, the widest target wins.
    pub fn halt_for(
        &self,
        agent: Option<AgentId>,
        role: RoleId,
        pathway: PathwayId,
        run: Option<RunId>,
    ) -> Option<(ControlTarget, Halt)> {
        if self.state.halts.is_empty() {
            return None;
        }
        let mut targets = [
            Some(ControlTarget::Organisation),
            Some(ControlTarget::Role(role)),
            Some(ControlTarget::Pathway(pathway)),
            agent.map(ControlTarget::Agent),
            run.map(ControlTarget::Run),
        ]
        .into_iter()
        .flatten();
        let mut best: Option<(ControlTarget, Halt)> = None;
        for t in &mut targets {
            if let Some(h) = self.halt(t) {
                if best.map_or(true, |(_, b)| h > b) {
                    best = Some((t, h));
                }
            }
        }
        best
    }

    /// The overrides in force for work of `agent` in `role` on `pathway`, with their end.
    pub fn overrides_for(
        &self,
        agent: Option<AgentId>,
        role: RoleId,
        pathway: PathwayId,
    ) -> impl Iterator<Item = (&Relaxation, Timestamp)> + '_ {
        self.state
            .overrides
            .iter()
            .filter(move |o| {
                self.at < o.until
                    && match o.target {
                        ControlTarget::Organisation => true,
                        ControlTarget::Role(r) => r == role,
                        ControlTarget::Pathway(p) => p == pathway,
                        ControlTarget::Agent(a) => Some(a) == agent,
                        ControlTarget::Run(_) => false,
                    }
            })
            .map(|o| (&o.relax, o.until))
    }

    /// Whether any override exists (in force or not).
    pub(crate) fn has_overrides(&self) -> bool {
        !self.state.overrides.is_empty()
    }
}

/// The operator control panel: applies controls, records them with who and why (in its
/// history and as [`AuditEvent::ControlApplied`]), and hands out [`ControlSnapshot`]s.
///
/// Every control applied is appended to a [`ControlStore`]; [`Controls::open`] reads the
/// store back and re-installs what was in force, so a kill switch pulled before a restart
/// still holds after it. Failing closed:
///
/// - tightening controls (pause, stop, revoke, annotate) take effect in memory first, then
///   are stored, then audited, so a kill switch works even when the store or the audit log is
///   down (the error is returned all the same: the control is not durable, or not audited);
/// - loosening ones (resume, override) must come from a human, and are audited, then
///   stored, and only then take effect: nothing is loosened without a record, and nothing
///   is loosened now that would not still be loosened after a restart.
///
/// ```
/// use std::sync::Arc;
/// use aios_core::{HumanId, InMemoryAuditLog, ManualClock, Principal};
/// use aios_governance::{ControlTarget, Controls, Halt};
/// # futures::executor::block_on(async {
/// let controls = Controls::new(Arc::new(ManualClock::default()), Arc::new(InMemoryAuditLog::new()));
/// let alice = Principal::Human(HumanId::from_name("alice"));
/// controls.stop(ControlTarget::Organisation, alice, "incident 42").await?;
/// assert_eq!(controls.snapshot().halt(ControlTarget::Organisation), Some(Halt::Stopped));
/// controls.resume(ControlTarget::Organisation, alice, "incident closed").await?;
/// assert_eq!(controls.snapshot().halt(ControlTarget::Organisation), None);
/// assert_eq!(controls.history().len(), 2);
/// # Ok::<(), aios_governance::ControlError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Controls {
    clock: Arc<dyn Clock>,
    audit: Arc<dyn AuditLog>,
    store: Arc<dyn ControlStore>,
    state: RwLock<Arc<ControlState>>,
    history: Mutex<Vec<ControlRecord>>,
}

impl Controls {
    /// A control panel with nothing in force, keeping its records in process memory only
    /// (an [`InMemoryControlStore`]): gone with the process. Use [`Controls::open`] for
    /// controls that survive a restart.
    pub fn new(clock: Arc<dyn Clock>, audit: Arc<dyn AuditLog>) -> Self {
        Self::empty(Arc::new(InMemoryControlStore::new()), clock, audit)
    }

    fn empty(
        store: Arc<dyn ControlStore>,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditLog>,
    ) -> Self {
        Self {
            clock,
            audit,
            store,
            state: RwLock::new(Arc::new(ControlState::default())),
            history: Mutex::new(Vec::new()),
        }
    }

    /// A control panel over `store`: every record in it is re-installed in order, as it was
    /// applied at its time (what has lapsed since has lapsed), without auditing it again;
    /// every control applied from now on is appended to it. [`ControlError::Store`] if the
    /// store cannot be read: better no panel than one that forgot a kill switch.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{HumanId, InMemoryAuditLog, ManualClock, Principal};
    /// use aios_governance::{ControlTarget, Controls, Halt, InMemoryControlStore};
    /// # futures::executor::block_on(async {
    /// let (clock, audit, store) = (Arc::new(ManualClock::default()), Arc::new(InMemoryAuditLog::new()), InMemoryControlStore::new());
    /// let controls = Controls::open(Arc::new(store.clone()), clock.clone(), audit.clone()).await?;
    /// controls.stop(ControlTarget::Organisation, Principal::System, "incident 42").await?;
    /// drop(controls);
    /// let reopened = Controls::open(Arc::new(store), clock, audit).await?;
    /// assert_eq!(reopened.snapshot().halt(ControlTarget::Organisation), Some(Halt::Stopped));
    /// # Ok::<(), aios_governance::ControlError>(())
    /// # }).unwrap();
    /// ```
    pub async fn open(
        store: Arc<dyn ControlStore>,
        clock: Arc<dyn Clock>,
        audit: Arc<dyn AuditLog>,
    ) -> Result<Self, ControlError> {
        let records = store.load().await.map_err(ControlError::Store)?;
        let controls = Self::empty(store, clock, audit);
        for record in &records {
            controls.install(record);
        }
        Ok(controls)
    }

    /// The controls in force now (by the clock).
    pub fn snapshot(&self) -> ControlSnapshot {
        ControlSnapshot {
            at: self.clock.now(),
            state: self.state.read().clone(),
        }
    }

    /// Every control applied, oldest first.
    pub fn history(&self) -> Vec<ControlRecord> {
        self.history.lock().clone()
    }

    /// Applies a control; see the type's docs for the order of effect, storage and audit.
    pub async fn apply(&self, command: ControlCommand) -> Result<ControlRecord, ControlError> {
        let now = self.clock.now();
        if command.reason.trim().is_empty() {
            return Err(ControlError::MissingReason);
        }
        if command.action.loosens() && command.by.human().is_none() {
            return Err(ControlError::NotHuman {
                action: command.action.name(),
                by: command.by,
            });
        }
        if matches!(command.action, ControlAction::Override { .. })
            && !command.until.is_some_and(|u| u > now)
        {
            return Err(ControlError::MissingOrPastUntil);
        }
        if let (ControlAction::Override { .. }, ControlTarget::Run(run)) =
            (&command.action, command.target)
        {
            return Err(ControlError::NoRunOverride { run });
        }
        let record = ControlRecord { command, at: now };
        let audit = AuditRecord::new(
            record.command.by,
            AuditEvent::ControlApplied {
                target: record.command.target.to_string(),
                control: record.command.action.name().to_string(),
                reason: record.command.reason.clone(),
                until: record.command.until,
            },
        )
        .at(now);
        if record.command.action.loosens() {
            self.audit.append(audit).await?;
            self.store
                .append(&record)
                .await
                .map_err(ControlError::Store)?;
            self.install(&record);
        } else {
            self.install(&record);
            let stored = self
                .store
                .append(&record)
                .await
                .map_err(ControlError::Store);
            let audited = self.audit.append(audit).await;
            stored?;
            audited?;
        }
        Ok(record)
    }

    fn install(&self, record: &ControlRecord) {
        let c = &record.command;
        let mut guard = self.state.write();
        let mut next = ControlState::clone(&guard);
        // lapsed entries are dropped as we go
        next.halts.retain(|_, h| before(record.at, h.until));
        next.overrides.retain(|o| record.at < o.until);
        match &c.action {
            ControlAction::Pause | ControlAction::Stop => {
                let halt = if c.action == ControlAction::Stop {
                    Halt::Stopped
                } else {
                    Halt::Paused
                };
                // a pause never weakens a stop in force
                let keep_stop = next
                    .halts
                    .get(&c.target)
                    .is_some_and(|h| h.halt == Halt::Stopped && halt == Halt::Paused);
                if !keep_stop {
                    next.halts.insert(
                        c.target,
                        HaltEntry {
                            halt,
                            until: c.until,
                        },
                    );
                }
            }
            ControlAction::Resume => {
                next.halts.remove(&c.target);
            }
            ControlAction::Override { relax } => {
                if let Some(until) = c.until {
                    next.overrides.push(OverrideEntry {
                        target: c.target,
                        relax: relax.clone(),
                        until,
                    });
                }
            }
            ControlAction::RevokeOverrides => {
                next.overrides.retain(|o| o.target != c.target);
            }
            ControlAction::Annotate => {}
        }
        *guard = Arc::new(next);
        drop(guard);
        self.history.lock().push(record.clone());
    }

    /// Pauses `target` until resumed.
    pub async fn pause(
        &self,
        target: ControlTarget,
        by: Principal,
        reason: impl Into<String>,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::Pause,
            by,
            reason: reason.into(),
            until: None,
        })
        .await
    }

    /// Pauses `target` until `until` (or until resumed earlier).
    pub async fn pause_until(
        &self,
        target: ControlTarget,
        by: Principal,
        reason: impl Into<String>,
        until: Timestamp,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::Pause,
            by,
            reason: reason.into(),
            until: Some(until),
        })
        .await
    }

    /// Stops `target`: the kill switch.
    pub async fn stop(
        &self,
        target: ControlTarget,
        by: Principal,
        reason: impl Into<String>,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::Stop,
            by,
            reason: reason.into(),
            until: None,
        })
        .await
    }

    /// Lifts a pause or stop on `target` (a human only).
    pub async fn resume(
        &self,
        target: ControlTarget,
        by: Principal,
        reason: impl Into<String>,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::Resume,
            by,
            reason: reason.into(),
            until: None,
        })
        .await
    }

    /// Records a note about `target`, with who and when; changes nothing.
    pub async fn annotate(
        &self,
        target: ControlTarget,
        by: Principal,
        note: impl Into<String>,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::Annotate,
            by,
            reason: note.into(),
            until: None,
        })
        .await
    }

    /// Withdraws every override on `target`.
    pub async fn revoke_overrides(
        &self,
        target: ControlTarget,
        by: Principal,
        reason: impl Into<String>,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::RevokeOverrides,
            by,
            reason: reason.into(),
            until: None,
        })
        .await
    }

    /// Grants an override on `target` until `until` (a human only).
    pub async fn grant_override(
        &self,
        target: ControlTarget,
        relax: Relaxation,
        by: Principal,
        reason: impl Into<String>,
        until: Timestamp,
    ) -> Result<ControlRecord, ControlError> {
        self.apply(ControlCommand {
            target,
            action: ControlAction::Override { relax },
            by,
            reason: reason.into(),
            until: Some(until),
        })
        .await
    }
}
