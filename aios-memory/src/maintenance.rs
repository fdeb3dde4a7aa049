//! Pruning by policy and verification of checksums, version chains and provenance.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aios_core::{MemoryId, Principal};
use serde::{Deserialize, Serialize};

use crate::index::micros;
use crate::{Memory, MemoryError, MemoryRecord, Scope, Tier, MEMORY_SCHEMA_VERSION};

/// When records may be pruned. Pinned records and retracted lineages (kept as history) are
/// never pruned.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PrunePolicy {
    /// Per tier: remove lineages whose latest version is older than this.
    pub ttl: BTreeMap<Tier, Duration>,
    /// Keep at most this many live lineages per exact scope; the least important (then the
    /// oldest) go first.
    pub capacity_per_scope: Option<usize>,
    /// Remove lineages whose importance is below this.
    pub min_importance: Option<f32>,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

impl PrunePolicy {
    /// A policy that only removes records past their own `expires_at`.
    pub fn expired_only() -> Self {
        Self::default()
    }

    /// Sets the time to live of a tier.
    pub fn ttl(mut self, tier: Tier, ttl: Duration) -> Self {
        self.ttl.insert(tier, ttl);
        self
    }

    /// Sets the capacity per scope.
    pub fn capacity_per_scope(mut self, capacity: usize) -> Self {
        self.capacity_per_scope = Some(capacity);
        self
    }

    /// Sets the importance floor.
    pub fn min_importance(mut self, floor: f32) -> Self {
        self.min_importance = Some(floor);
        self
    }

    /// Only reports.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }
}

/// Why a lineage was pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneReason {
    /// Past its own `expires_at`.
    Expired,
    /// Older than its tier's time to live.
    Ttl,
    /// Below the importance floor.
    LowImportance,
    /// Over its scope's capacity.
    Capacity,
}

/// One pruned lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// The lineage.
    pub id: MemoryId,
    /// Its latest version when pruned.
    pub version: u32,
    /// Its scope.
    pub scope: Scope,
    /// Its tier.
    pub tier: Tier,
    /// Why.
    pub reason: PruneReason,
}

/// What a prune did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PruneReport {
    /// Lineages looked at.
    pub examined: usize,
    /// Lineages removed, in id order.
    pub pruned: Vec<Pruned>,
    /// Pinned lineages a rule would otherwise have removed.
    pub kept_pinned: usize,
    /// Whether nothing was removed because the policy was a dry run.
    pub dry_run: bool,
}

/// What verification found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FindingKind {
    /// The stored checksum does not match the record's fields.
    ChecksumMismatch {
        /// The checksum stored.
        stored: String,
        /// The checksum the fields give.
        computed: String,
    },
    /// The version chain is broken: a missing or repeated version, a wrong link to the
    /// previous checksum, or inconsistent retirement stamps.
    BrokenChain {
        /// What is wrong.
        detail: String,
    },
    /// Provenance names a record that does not exist.
    DanglingReference {
        /// The missing lineage.
        missing: MemoryId,
    },
    /// The record's schema is newer than this build.
    UnsupportedSchema {
        /// The schema found.
        found: u32,
    },
}

/// One problem found by [`Memory::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The lineage.
    pub id: MemoryId,
    /// The version, when the problem is in one.
    pub version: Option<u32>,
    /// What is wrong.
    pub kind: FindingKind,
}

/// The result of [`Memory::verify`]: what was checked and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Lineages checked.
    pub lineages: usize,
    /// Record versions checked.
    pub records: usize,
    /// Problems, in id then version order.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks one lineage's versions (as stored, oldest first).
pub(crate) fn verify_lineage(id: MemoryId, versions: &[MemoryRecord], out: &mut Vec<Finding>) {
    let broken = |version: Option<u32>, detail: String| Finding {
        id,
        version,
        kind: FindingKind::BrokenChain { detail },
    };
    for (i, r) in versions.iter().enumerate() {
        let v = Some(r.version);
        if r.schema > MEMORY_SCHEMA_VERSION {
            out.push(Finding {
                id,
                version: v,
                kind: FindingKind::UnsupportedSchema { found: r.schema },
            });
        }
        let computed = r.compute_checksum();
        if computed != r.checksum {
            out.push(Finding {
                id,
                version: v,
                kind: FindingKind::ChecksumMismatch {
                    stored: r.checksum.clone(),
                    computed,
                },
            });
        }
        if r.id != id {
            out.push(broken(
                v,
                format!("version stored under lineage `{id}` names `{}`", r.id),
            ));
        }
        let expected = i as u32 + 1;
        if r.version != expected {
            out.push(broken(
                v,
                format!("expected version {expected}, found {}", r.version),
            ));
        }
        match i.checked_sub(1).and_then(|p| versions.get(p)) {
            None => {
                if r.prev_checksum.is_some() {
                    out.push(broken(
                        v,
                        "the first version links to a previous one".into(),
                    ));
                }
            }
            Some(prev) => {
                if r.prev_checksum.as_deref() != Some(prev.checksum.as_str()) {
                    out.push(broken(
                        v,
                        format!("does not link to the checksum of version {}", prev.version),
                    ));
                }
                if prev.retired_at != Some(r.recorded_at) {
                    out.push(broken(
                        Some(prev.version),
                        format!("not retired when version {} was recorded", r.version),
                    ));
                }
                if r.recorded_at < prev.recorded_at {
                    out.push(broken(
                        v,
                        "recorded before the version it supersedes".into(),
                    ));
                }
                if prev.is_retracted() {
                    out.push(broken(v, "a retracted lineage has a later version".into()));
                }
            }
        }
    }
    if let Some(last) = versions.last() {
        if last.retired_at.is_some() {
            out.push(broken(
                Some(last.version),
                "the latest version is marked retired".into(),
            ));
        }
    }
}

impl Memory {
    /// Removes lineages by policy and returns what was removed. Expired records always go;
    /// TTL per tier, capacity per scope and the importance floor apply when set. Pinned
    /// records and retracted lineages are never removed. Each removal is audited as `prune`.
    ///
    /// Lineages are removed one at a time: if the store fails midway, those removed before
    /// the failure stay removed and the error is returned (pruning again finishes the job).
    /// Index rows of removed lineages are skipped by every search; they are dropped when the
    /// memory is next opened.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use aios_core::{ManualClock, Principal};
    /// use aios_memory::{Memory, NewMemory, PruneReason, PrunePolicy, Scope, Tier};
    /// # futures::executor::block_on(async {
    /// let clock = ManualClock::default();
    /// let memory = Memory::builder(Arc::new(clock.clone())).open().await?;
    /// let scope = Scope::parse("run/42")?;
    /// memory.remember(NewMemory::new(scope.clone(), Tier::Working, "scratch", Principal::System)).await?;
    /// memory.remember(NewMemory::new(scope, Tier::Working, "keep me", Principal::System).pinned()).await?;
    /// clock.advance(Duration::from_secs(7200));
    /// let report = memory.prune(&PrunePolicy::default().ttl(Tier::Working, Duration::from_secs(3600))).await?;
    /// assert_eq!(report.pruned.len(), 1);
    /// assert_eq!(report.pruned[0].reason, PruneReason::Ttl);
    /// assert_eq!(report.kept_pinned, 1);
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    pub async fn prune(&self, policy: &PrunePolicy) -> Result<PruneReport, MemoryError> {
        let now = micros(self.now());
        let mut report = PruneReport {
            dry_run: policy.dry_run,
            ..PruneReport::default()
        };
        let mut chosen: BTreeMap<MemoryId, Pruned> = BTreeMap::new();
        {
            let index = self.inner().index.read();
            // (id, version, scope, tier, pinned, importance, recorded)
            let mut live = Vec::new();
            for id in index.lineage_ids() {
                let Some(row) = index.latest(id) else {
                    continue;
                };
                if index.is_tombstone(row) {
                    continue;
                }
                let (Some(hot), Some(cold), Some(scope)) = (
                    index.hot.get(row as usize),
                    index.cold.get(row as usize),
                    index.scope_of(row),
                ) else {
                    continue;
                };
                report.examined += 1;
                let tier = index.tier_of(row);
                let pinned = index.is_pinned(row);
                let ttl_over = policy.ttl.get(&tier).is_some_and(|ttl| {
                    let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
                    now.saturating_sub(hot.recorded) > ttl_us
                });
                let reason = if cold.expires <= now {
                    Some(PruneReason::Expired)
                } else if ttl_over {
                    Some(PruneReason::Ttl)
                } else if policy.min_importance.is_some_and(|f| cold.importance < f) {
                    Some(PruneReason::LowImportance)
                } else {
                    None
                };
                let entry = Pruned {
                    id: *id,
                    version: cold.version,
                    scope: scope.clone(),
                    tier,
                    reason: PruneReason::Capacity,
                };
                match (reason, pinned) {
                    (Some(_), true) => report.kept_pinned += 1,
                    (Some(reason), false) => {
                        chosen.insert(*id, Pruned { reason, ..entry });
                        continue;
                    }
                    (None, _) => {}
                }
                live.push((entry, pinned, cold.importance, hot.recorded));
            }
            if let Some(cap) = policy.capacity_per_scope {
                let mut by_scope: HashMap<Scope, Vec<(Pruned, bool, f32, i64)>> = HashMap::new();
                for item in live {
                    by_scope.entry(item.0.scope.clone()).or_default().push(item);
                }
                for (_, mut items) in by_scope {
                    if items.len() <= cap {
                        continue;
                    }
                    let mut excess = items.len() - cap;
                    // least important, then oldest, then lowest id go first
                    items.sort_by(|a, b| {
                        a.2.total_cmp(&b.2)
                            .then(a.3.cmp(&b.3))
                            .then(a.0.id.cmp(&b.0.id))
                    });
                    for (entry, pinned, _, _) in items {
                        if excess == 0 {
                            break;
                        }
                        if pinned {
                            report.kept_pinned += 1;
                            continue;
                        }
                        excess -= 1;
                        chosen.insert(entry.id, entry);
                    }
                }
            }
        }
        report.pruned = chosen.into_values().collect();
        if !policy.dry_run {
            for p in &report.pruned {
                self.delete(p.id).await?;
                self.audit_event(Principal::System, p.id, p.version, &p.scope, "prune")
                    .await?;
            }
        }
        Ok(report)
    }

    /// Checks every record in the store: checksums, version chains (contiguous versions,
    /// links to the previous checksum, retirement stamps) and provenance references.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{ManualClock, Principal};
    /// use aios_memory::{Memory, NewMemory, Revision, Scope, Tier};
    /// # futures::executor::block_on(async {
    /// let memory = Memory::builder(Arc::new(ManualClock::default())).open().await?;
    /// let r = memory.remember(NewMemory::new(Scope::parse("a")?, Tier::Project, "v1", Principal::System)).await?;
    /// memory.revise(r.id, Revision::new(Principal::System).content("v2")).await?;
    /// let report = memory.verify().await?;
    /// assert!(report.is_intact());
    /// assert_eq!((report.lineages, report.records), (1, 2));
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    pub async fn verify(&self) -> Result<VerifyReport, MemoryError> {
        let mut report = VerifyReport::default();
        let mut ids = BTreeSet::new();
        let mut refs: Vec<(MemoryId, u32, MemoryId)> = Vec::new();
        let mut after = None;
        loop {
            let page = self.store().scan(after, 512).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let mut start = 0;
            while start < page.len() {
                let id = page[start].id;
                let end = page[start..]
                    .iter()
                    .position(|r| r.id != id)
                    .map_or(page.len(), |n| start + n);
                let versions = &page[start..end];
                report.lineages += 1;
                report.records += versions.len();
                ids.insert(id);
                for r in versions {
                    for d in &r.provenance.derived_from {
                        refs.push((id, r.version, *d));
                    }
                }
                verify_lineage(id, versions, &mut report.findings);
                start = end;
            }
        }
        for (id, version, missing) in refs {
            if !ids.contains(&missing) {
                report.findings.push(Finding {
                    id,
                    version: Some(version),
                    kind: FindingKind::DanglingReference { missing },
                });
            }
        }
        report
            .findings
            .sort_by(|a, b| a.id.cmp(&b.id).then(a.version.cmp(&b.version)));
        Ok(report)
    }
}
