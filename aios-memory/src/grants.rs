//! Grants that bind memory slices to roles and agents, and the view that enforces them.

use std::fmt;

use aios_core::{AgentId, MemoryId, Principal, RoleId};
use serde::{Deserialize, Serialize};

use crate::{
    Memory, MemoryError, MemoryRecord, NewMemory, RecallHit, RecallQuery, Revision, Scope, Tier,
};

/// Read, write or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Recall, get and history.
    Read,
    /// Remember, revise and retract.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// Whether a grant of `self` allows `wanted`.
    pub fn allows(self, wanted: Access) -> bool {
        match (self, wanted) {
            (Access::ReadWrite, _) => true,
            (a, w) => a == w,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        })
    }
}

/// Whom a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum GrantSubject {
    /// Every agent playing this role.
    Role(RoleId),
    /// One agent.
    Agent(AgentId),
}

/// Access to a slice of memory: every scope within `scope_prefix`, in `tiers` (all tiers if
/// empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Whom it is for.
    pub subject: GrantSubject,
    /// The slice's scope prefix.
    pub scope_prefix: Scope,
    /// The slice's tiers (all if empty).
    pub tiers: Vec<Tier>,
    /// What it allows.
    pub access: Access,
}

impl Grant {
    /// A grant to a role.
    pub fn role(role: RoleId, scope_prefix: Scope, access: Access) -> Self {
        Self {
            subject: GrantSubject::Role(role),
            scope_prefix,
            tiers: Vec::new(),
            access,
        }
    }

    /// A grant to one agent.
    pub fn agent(agent: AgentId, scope_prefix: Scope, access: Access) -> Self {
        Self {
            subject: GrantSubject::Agent(agent),
            scope_prefix,
            tiers: Vec::new(),
            access,
        }
    }

    /// Restricts the grant to tiers.
    pub fn tiers(mut self, tiers: impl IntoIterator<Item = Tier>) -> Self {
        self.tiers = tiers.into_iter().collect();
        self
    }

    /// Whether this grant allows `access` to `scope` in `tier`.
    pub fn allows(&self, access: Access, scope: &Scope, tier: Tier) -> bool {
        self.access.allows(access)
            && scope.is_within(&self.scope_prefix)
            && Tier::mask_of(&self.tiers) & tier.bit() != 0
    }
}

/// The tiers `grants` allow reading in `scope`, as a bit mask.
pub(crate) fn read_mask(grants: &[Grant], scope: &Scope) -> u8 {
    grants
        .iter()
        .filter(|g| g.access.allows(Access::Read) && scope.is_within(&g.scope_prefix))
        .fold(0, |m, g| m | Tier::mask_of(&g.tiers))
}

/// Who looks through a [`MemoryView`]: a principal and the roles it plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSubject {
    /// The principal; it becomes the author of everything written through the view.
    pub principal: Principal,
    /// The roles it plays.
    pub roles: Vec<RoleId>,
}

impl ViewSubject {
    /// An agent playing no role yet.
    pub fn agent(agent: AgentId) -> Self {
        Self {
            principal: Principal::Agent(agent),
            roles: Vec::new(),
        }
    }

    /// Adds a role.
    pub fn with_role(mut self, role: RoleId) -> Self {
        self.roles.push(role);
        self
    }
}

impl fmt::Display for ViewSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.principal)?;
        for r in &self.roles {
            write!(f, " role:{r}")?;
        }
        Ok(())
    }
}

/// A slice of [`Memory`] as one principal may see it: every operation checks the grants and
/// refuses with [`MemoryError::GrantRefused`] outside them; recall only ever returns
/// readable records. Obtained from [`Memory::view`].
///
/// ```
/// use std::sync::Arc;
/// use aios_core::{AgentId, ManualClock, Principal, RoleId};
/// use aios_memory::{Access, Grant, Memory, MemoryError, NewMemory, RecallQuery, Scope, Tier, ViewSubject};
/// # futures::executor::block_on(async {
/// let memory = Memory::builder(Arc::new(ManualClock::default())).open().await?;
/// let agent = AgentId::from_name("scribe");
/// let role = RoleId::from_name("researcher");
/// let view = memory.view(
///     ViewSubject::agent(agent).with_role(role),
///     vec![Grant::role(role, Scope::parse("org/acme")?, Access::ReadWrite).tiers([Tier::Working])],
/// );
/// let ok = view.remember(NewMemory::new(Scope::parse("org/acme/x")?, Tier::Working, "draft ready", Principal::System)).await?;
/// assert_eq!(ok.provenance.author, Principal::Agent(agent));
/// let refused = view.remember(NewMemory::new(Scope::parse("org/other")?, Tier::Working, "nope", Principal::System)).await;
/// assert!(matches!(refused, Err(MemoryError::GrantRefused { .. })));
/// assert_eq!(view.recall(&RecallQuery::text("draft")).await?.len(), 1);
/// # Ok::<(), aios_memory::MemoryError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryView {
    memory: Memory,
    subject: ViewSubject,
    grants: Vec<Grant>,
}

impl MemoryView {
    pub(crate) fn new(memory: Memory, subject: ViewSubject, grants: Vec<Grant>) -> Self {
        Self {
            memory,
            subject,
            grants,
        }
    }

    /// Who looks through this view.
    pub fn subject(&self) -> &ViewSubject {
        &self.subject
    }

    /// The grants in force (those naming the subject).
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Whether the grants allow `access` to `scope` in `tier`.
    pub fn can(&self, access: Access, scope: &Scope, tier: Tier) -> bool {
        self.grants.iter().any(|g| g.allows(access, scope, tier))
    }

    fn check(&self, access: Access, scope: &Scope, tier: Tier) -> Result<(), MemoryError> {
        if self.can(access, scope, tier) {
            Ok(())
        } else {
            Err(MemoryError::GrantRefused {
                subject: self.subject.to_string(),
                access,
                scope: scope.clone(),
                tier,
            })
        }
    }

    /// Remembers, if a grant allows writing the scope and tier; the author is the view's
    /// principal whatever `new` says.
    pub async fn remember(&self, mut new: NewMemory) -> Result<MemoryRecord, MemoryError> {
        self.check(Access::Write, &new.scope, new.tier)?;
        new.provenance.author = self.subject.principal;
        self.memory.remember(new).await
    }

    /// Remembers a batch (see [`Memory::remember_many`]) if a grant allows writing every
    /// record's scope and tier; otherwise nothing is written and the first refused record is
    /// named ([`MemoryError::Batch`] around [`MemoryError::GrantRefused`]). The author of
    /// each is the view's principal.
    pub async fn remember_many(
        &self,
        mut batch: Vec<NewMemory>,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        for (index, new) in batch.iter_mut().enumerate() {
            self.check(Access::Write, &new.scope, new.tier)
                .map_err(|e| MemoryError::Batch {
                    index,
                    written: 0,
                    source: Box::new(e),
                })?;
            new.provenance.author = self.subject.principal;
        }
        self.memory.remember_many(batch).await
    }

    /// Revises, if a grant allows writing the record's scope and both its old and new tier.
    pub async fn revise(
        &self,
        id: MemoryId,
        mut revision: Revision,
    ) -> Result<MemoryRecord, MemoryError> {
        let latest = self.memory.get(id).await?;
        self.check(Access::Write, &latest.scope, latest.tier)?;
        if let Some(t) = revision.tier {
            self.check(Access::Write, &latest.scope, t)?;
        }
        let mut provenance = revision
            .provenance
            .take()
            .unwrap_or_else(|| crate::Provenance::by(self.subject.principal));
        provenance.author = self.subject.principal;
        revision.provenance = Some(provenance);
        self.memory.revise(id, revision).await
    }

    /// Retracts, if a grant allows writing the record's scope and tier.
    pub async fn retract(&self, id: MemoryId, reason: &str) -> Result<MemoryRecord, MemoryError> {
        let latest = self.memory.get(id).await?;
        self.check(Access::Write, &latest.scope, latest.tier)?;
        self.memory
            .retract(id, self.subject.principal, reason)
            .await
    }

    /// Recalls among readable records only. A query whose scope no read grant overlaps is
    /// refused rather than answered with nothing.
    pub async fn recall(&self, query: &RecallQuery) -> Result<Vec<RecallHit>, MemoryError> {
        if let Some(scope) = &query.scope {
            let tiers = if query.tiers.is_empty() {
                Tier::ALL.to_vec()
            } else {
                query.tiers.clone()
            };
            let overlaps = self.grants.iter().any(|g| {
                g.access.allows(Access::Read)
                    && (scope.is_within(&g.scope_prefix) || g.scope_prefix.is_within(scope))
                    && tiers.iter().any(|t| Tier::mask_of(&g.tiers) & t.bit() != 0)
            });
            if !overlaps {
                return Err(MemoryError::GrantRefused {
                    subject: self.subject.to_string(),
                    access: Access::Read,
                    scope: scope.clone(),
                    tier: tiers.first().copied().unwrap_or_default(),
                });
            }
        }
        self.memory.recall_within(query, Some(&self.grants)).await
    }

    /// The latest version, if readable.
    pub async fn get(&self, id: MemoryId) -> Result<MemoryRecord, MemoryError> {
        let latest = self.memory.get(id).await?;
        self.check(Access::Read, &latest.scope, latest.tier)?;
        Ok(latest)
    }

    /// The history, if the latest version is readable.
    pub async fn history(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, MemoryError> {
        self.get(id).await?;
        self.memory.history(id).await
    }
}
