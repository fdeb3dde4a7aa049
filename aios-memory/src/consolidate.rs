//! Consolidation: promoting or summarising working memory into longer-lived tiers.

use std::sync::Arc;

use aios_core::{MemoryId, Principal};
use async_trait::async_trait;

use crate::index::micros;
use crate::{Memory, MemoryError, MemoryKind, MemoryRecord, NewMemory, Provenance, Scope, Tier};

/// Condenses records into one text; supplied by the host (usually a model call).
#[async_trait]
pub trait Summariser: Send + Sync + std::fmt::Debug {
    /// A summary of `records` (given oldest first). An error is reported as
    /// [`MemoryError::Summariser`] and nothing is written.
    async fn summarise(&self, records: &[MemoryRecord]) -> Result<String, String>;
}

/// How to consolidate.
#[derive(Debug, Clone)]
pub enum ConsolidationMode {
    /// Copy each source into the target tier, one derived record per source.
    Promote,
    /// Write one summary of all sources, produced by the summariser.
    Summarise(Arc<dyn Summariser>),
}

/// What to consolidate: the current records of `from` tier within `scope`.
#[derive(Debug, Clone)]
pub struct ConsolidationRequest {
    /// The scope prefix whose records are consolidated.
    pub scope: Scope,
    /// The tier read (usually [`Tier::Working`]).
    pub from: Tier,
    /// The tier written.
    pub to: Tier,
    /// Promote or summarise.
    pub mode: ConsolidationMode,
    /// Who consolidates (the author of the derived records).
    pub author: Principal,
    /// Retract the sources afterwards (reason: `consolidated into <id>`).
    pub retract_sources: bool,
    /// Where the summary is written (default: `scope`).
    pub target_scope: Option<Scope>,
}

impl ConsolidationRequest {
    /// Summarises working memory in `scope` into one record of tier `to`.
    pub fn summarise(
        scope: Scope,
        to: Tier,
        summariser: Arc<dyn Summariser>,
        author: Principal,
    ) -> Self {
        Self {
            scope,
            from: Tier::Working,
            to,
            mode: ConsolidationMode::Summarise(summariser),
            author,
            retract_sources: false,
            target_scope: None,
        }
    }

    /// Promotes each working record in `scope` into tier `to`.
    pub fn promote(scope: Scope, to: Tier, author: Principal) -> Self {
        Self {
            scope,
            from: Tier::Working,
            to,
            mode: ConsolidationMode::Promote,
            author,
            retract_sources: false,
            target_scope: None,
        }
    }

    /// Retracts the sources once consolidated.
    pub fn retracting_sources(mut self) -> Self {
        self.retract_sources = true;
        self
    }
}

/// What a consolidation wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsolidationReport {
    /// The records consolidated, oldest first.
    pub sources: Vec<MemoryId>,
    /// The derived records written; each names its sources in `provenance.derived_from`.
    pub created: Vec<MemoryRecord>,
    /// The sources retracted.
    pub retracted: Vec<MemoryId>,
}

impl Memory {
    /// Promotes or summarises the current records of `request.from` within `request.scope`
    /// into `request.to`. Derived records keep provenance to their sources. With no sources,
    /// nothing is written.
    pub async fn consolidate(
        &self,
        request: &ConsolidationRequest,
    ) -> Result<ConsolidationReport, MemoryError> {
        let now = micros(self.now());
        let mut ids: Vec<MemoryId> = {
            let index = self.inner().index.read();
            index
                .lineage_ids()
                .filter(|id| {
                    index.visible_row(id, now).is_some_and(|row| {
                        !index.is_tombstone(row)
                            && index.tier_of(row) == request.from
                            && index
                                .scope_of(row)
                                .is_some_and(|s| s.is_within(&request.scope))
                    })
                })
                .copied()
                .collect()
        };
        ids.sort();
        let mut sources = Vec::with_capacity(ids.len());
        for id in &ids {
            sources.push(self.get(*id).await?);
        }
        let mut report = ConsolidationReport {
            sources: ids,
            ..ConsolidationReport::default()
        };
        if sources.is_empty() {
            return Ok(report);
        }
        let target_scope = request
            .target_scope
            .clone()
            .unwrap_or_else(|| request.scope.clone());
        match &request.mode {
            ConsolidationMode::Promote => {
                for s in &sources {
                    let scope = request
                        .target_scope
                        .clone()
                        .unwrap_or_else(|| s.scope.clone());
                    let mut new =
                        NewMemory::new(scope, request.to, s.content.clone(), request.author)
                            .kind(s.kind.clone())
                            .importance(s.importance)
                            .valid(s.valid_from, s.valid_to)
                            .provenance(Provenance {
                                author: request.author,
                                run: s.provenance.run,
                                task: s.provenance.task,
                                source: Some("consolidation:promote".into()),
                                derived_from: vec![s.id],
                            });
                    new.metadata = s.metadata.clone();
                    new.embedding = s.embedding.clone();
                    report.created.push(self.remember(new).await?);
                }
            }
            ConsolidationMode::Summarise(summariser) => {
                let text = summariser
                    .summarise(&sources)
                    .await
                    .map_err(MemoryError::Summariser)?;
                let importance = sources.iter().map(|s| s.importance).fold(0.0f32, f32::max);
                let new = NewMemory::new(target_scope, request.to, text, request.author)
                    .kind(MemoryKind::Summary)
                    .importance(importance)
                    .source("consolidation:summarise")
                    .derived_from(sources.iter().map(|s| s.id));
                report.created.push(self.remember(new).await?);
            }
        }
        if request.retract_sources {
            for (i, s) in sources.iter().enumerate() {
                let into = report
                    .created
                    .get(i.min(report.created.len().saturating_sub(1)))
                    .map(|r| r.id.to_string())
                    .unwrap_or_default();
                self.retract(s.id, request.author, &format!("consolidated into {into}"))
                    .await?;
                report.retracted.push(s.id);
            }
        }
        Ok(report)
    }
}
