//! How agents reach memory: through a view that enforces their role's grants, journaled so a
//! resumed task sees the same records and writes nothing twice.

use std::sync::Arc;

use aios_core::{AuditEvent, MemoryId, Principal};
use aios_memory::{
    assemble_context, CharTokenizer, ContextBudget, Grant, Memory, MemoryRecord, MemoryView,
    NewMemory, RecallHit, RecallQuery, Scope, ScoreBreakdown, Tokenizer, ViewSubject,
};
use serde::{Deserialize, Serialize};

use crate::builder::OrchestratorBuilder;
use crate::context::{hash_of, TaskContext};
use crate::error::AgentError;
use crate::state::{CallKind, CallRecord, JournalEntry};

/// How the orchestrator gives agents memory.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Grants binding memory slices to roles and agents; an agent sees memory only through
    /// them.
    pub grants: Vec<Grant>,
    /// The scope recalled for prompt context by the default LLM agent.
    pub context_scope: Scope,
    /// Counts tokens when packing context.
    pub tokenizer: Arc<dyn Tokenizer>,
}

impl MemoryOptions {
    /// Options with `grants`, recalling context from `context_scope`.
    pub fn new(grants: Vec<Grant>, context_scope: Scope) -> Self {
        Self {
            grants,
            context_scope,
            tokenizer: Arc::new(CharTokenizer::default()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MemoryAccess {
    pub(crate) memory: Memory,
    pub(crate) options: MemoryOptions,
}

/// One recalled hit as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecalledHit {
    /// The record.
    pub id: MemoryId,
    /// Its version.
    pub version: u32,
    /// Its score.
    pub score: ScoreBreakdown,
}

impl OrchestratorBuilder {
    /// Gives agents memory, through views that enforce `options.grants`.
    pub fn memory(mut self, memory: Memory, options: MemoryOptions) -> Self {
        self.set_memory(MemoryAccess { memory, options });
        self
    }
}

fn memory_error(e: aios_memory::MemoryError) -> AgentError {
    AgentError::Memory(Box::new(e))
}

impl TaskContext<'_> {
    fn memory_access(&self) -> Result<&MemoryAccess, AgentError> {
        self.driver.memory().ok_or(AgentError::NoMemory)
    }

    fn view(&self) -> Result<MemoryView, AgentError> {
        let access = self.memory_access()?;
        let subject = ViewSubject::agent(self.agent).with_role(self.role.id);
        Ok(access.memory.view(subject, access.options.grants.clone()))
    }

    /// Writes a memory record through the role's grants, with the run and task as provenance.
    /// Journaled: on replay the recorded version is returned and nothing is written again.
    pub async fn remember(&mut self, new: NewMemory) -> Result<MemoryRecord, AgentError> {
        let new = new.run(self.run_id()).task(self.task_id);
        let hash = hash_of(
            CallKind::Memory,
            &(
                "remember",
                &new.scope,
                &new.tier,
                &new.content,
                &new.metadata,
            ),
        );
        let (seq_claimed, existing) = self.claim(CallKind::Memory, &hash)?;
        let access = self.memory_access()?.clone();
        if let Some(record) = existing {
            return match record {
                CallRecord::Memory { id, version } => access
                    .memory
                    .get_version(id, version)
                    .await
                    .map_err(memory_error),
                other => Err(self.driver.non_determinism(
                    self.task(),
                    seq_claimed,
                    format!("the journal holds {other:?} for a memory write"),
                )),
            };
        }
        // the lineage id is derived from the call's key, so a write repeated after a crash
        // (written, but not yet journaled) finds the record instead of writing it twice
        let key = aios_core::IdempotencyKey::for_call(self.run_id(), self.task_id, seq_claimed);
        let new = new.with_id(aios_core::MemoryId::from_name(&format!("call:{key}")));
        let record = self.view()?.remember(new).await.map_err(memory_error)?;
        let entry = JournalEntry {
            seq: seq_claimed,
            kind: CallKind::Memory,
            request_hash: hash,
            record: CallRecord::Memory {
                id: record.id,
                version: record.version,
            },
        };
        self.driver.record(self.index, entry, false).await?;
        Ok(record)
    }

    /// Recalls memory through the role's grants. Journaled: on replay the same record
    /// versions are returned, so the agent sees what it saw the first time.
    pub async fn recall(&mut self, query: &RecallQuery) -> Result<Vec<RecallHit>, AgentError> {
        let hash = hash_of(CallKind::Memory, &("recall", format!("{query:?}")));
        let (seq, existing) = self.claim(CallKind::Memory, &hash)?;
        let access = self.memory_access()?.clone();
        if let Some(record) = existing {
            let CallRecord::Recalled { hits } = record else {
                return Err(self.driver.non_determinism(
                    self.task(),
                    seq,
                    format!("the journal holds {record:?} for a recall"),
                ));
            };
            let mut out = Vec::with_capacity(hits.len());
            for h in hits {
                let mut record = access
                    .memory
                    .get_version(h.id, h.version)
                    .await
                    .map_err(memory_error)?;
                // as the first run returned it: without the vector unless the query asked
                if !query.embeddings {
                    record.embedding = None;
                }
                out.push(RecallHit {
                    record,
                    score: h.score,
                });
            }
            return Ok(out);
        }
        let hits = self.view()?.recall(query).await.map_err(memory_error)?;
        let journaled = hits
            .iter()
            .map(|h| RecalledHit {
                id: h.record.id,
                version: h.record.version,
                score: h.score,
            })
            .collect();
        // what the agent read goes on the record (a replay reads the journal, not memory)
        self.driver
            .audit(
                Principal::Agent(self.agent_id()),
                AuditEvent::MemoryRecalled {
                    run: self.run_id(),
                    task: self.task_id,
                    hits: hits
                        .iter()
                        .map(|h| (h.record.id, h.record.version))
                        .collect(),
                },
            )
            .await?;
        let entry = JournalEntry {
            seq,
            kind: CallKind::Memory,
            request_hash: hash,
            record: CallRecord::Recalled { hits: journaled },
        };
        self.driver.record(self.index, entry, false).await?;
        Ok(hits)
    }

    /// Recalls up to `k` records relevant to `text` from the configured context scope and
    /// packs them within `max_tokens`, citing record ids. `None` without memory or hits.
    pub async fn memory_context(
        &mut self,
        text: &str,
        k: usize,
        max_tokens: usize,
    ) -> Result<Option<String>, AgentError> {
        let Some(access) = self.driver.memory().cloned() else {
            return Ok(None);
        };
        if !self.can_read(&access) {
            return Ok(None);
        }
        let query = RecallQuery::text(text)
            .in_scope(access.options.context_scope.clone())
            .k(k);
        let hits = self.recall(&query).await?;
        if hits.is_empty() {
            return Ok(None);
        }
        let records: Vec<MemoryRecord> = hits.into_iter().map(|h| h.record).collect();
        let packed = assemble_context(
            &records,
            &ContextBudget::tokens(max_tokens),
            access.options.tokenizer.as_ref(),
        );
        Ok((!packed.text.is_empty()).then_some(packed.text))
    }

    fn can_read(&self, access: &MemoryAccess) -> bool {
        let subject = ViewSubject::agent(self.agent).with_role(self.role.id);
        let view = access.memory.view(subject, access.options.grants.clone());
        aios_memory::Tier::ALL
            .iter()
            .any(|t| view.can(aios_memory::Access::Read, &access.options.context_scope, *t))
    }
}
