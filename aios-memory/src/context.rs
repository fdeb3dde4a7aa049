//! Packing memory into a model prompt within a token budget.

use aios_core::MemoryId;
use serde::{Deserialize, Serialize};

use crate::{MemoryRecord, Tier};

/// Counts tokens the way the target model does (closely enough to budget a prompt).
pub trait Tokenizer: Send + Sync + std::fmt::Debug {
    /// The number of tokens `text` takes.
    fn count(&self, text: &str) -> usize;
}

/// A model-free estimate: one token per `chars_per_token` characters (rounded up), the common
/// rule of thumb for English with BPE tokenizers (default 4).
///
/// ```
/// use aios_memory::{CharTokenizer, Tokenizer};
/// assert_eq!(CharTokenizer::default().count("abcdefghi"), 3);
/// assert_eq!(CharTokenizer::default().count(""), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharTokenizer {
    /// Characters per token (at least 1).
    pub chars_per_token: usize,
}

impl Default for CharTokenizer {
    fn default() -> Self {
        Self { chars_per_token: 4 }
    }
}

impl Tokenizer for CharTokenizer {
    fn count(&self, text: &str) -> usize {
        text.chars().count().div_ceil(self.chars_per_token.max(1))
    }
}

/// How to pack a context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextBudget {
    /// The most tokens the packed text may take (pinned records may exceed it; see
    /// [`AssembledContext::over_budget`]).
    pub max_tokens: usize,
    /// A line written before the records (counted in the budget), if any.
    pub header: Option<String>,
}

impl ContextBudget {
    /// A budget of `max_tokens` with no header.
    pub fn tokens(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            header: None,
        }
    }

    /// Adds a header line.
    pub fn with_header(mut self, header: impl Into<String>) -> Self {
        self.header = Some(header.into());
        self
    }
}

/// A packed context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssembledContext {
    /// The prompt text: one line per record, `[mem:<id>] <content>`.
    pub text: String,
    /// The records included, in the order they appear.
    pub citations: Vec<MemoryId>,
    /// Tokens counted for the text: each line on its own plus one per line break, so never
    /// less than the tokenizer's count of the whole text.
    pub used_tokens: usize,
    /// Records left out because they did not fit, in the order they were considered.
    pub dropped: Vec<MemoryId>,
    /// Whether pinned records alone exceeded the budget (they are never dropped).
    pub over_budget: bool,
}

/// The line a record takes in a context.
pub fn context_line(record: &MemoryRecord) -> String {
    format!("[mem:{}] {}", record.id, record.content.replace('\n', " "))
}

/// Packs `records` (best first, as recall returns them) into a prompt within the budget.
///
/// Order of consideration: pinned records first (never dropped), then working memory, then
/// project, then long-term; within each group the input order. A record that does not fit is
/// dropped and packing continues with smaller ones. Retracted versions and repeated ids are
/// skipped. The same inputs always give the same output.
///
/// ```
/// use aios_memory::{assemble_context, CharTokenizer, ContextBudget, MemoryRecord};
/// let records: Vec<MemoryRecord> = Vec::new();
/// let ctx = assemble_context(&records, &ContextBudget::tokens(100), &CharTokenizer::default());
/// assert!(ctx.text.is_empty() && ctx.citations.is_empty());
/// ```
pub fn assemble_context<'a>(
    records: impl IntoIterator<Item = &'a MemoryRecord>,
    budget: &ContextBudget,
    tokenizer: &dyn Tokenizer,
) -> AssembledContext {
    let mut seen = std::collections::HashSet::new();
    let mut items: Vec<&MemoryRecord> = records
        .into_iter()
        .filter(|r| !r.is_retracted() && seen.insert(r.id))
        .collect();
    // stable: keeps the input order inside each group
    items.sort_by_key(|r| (!r.pinned, tier_rank(r.tier)));
    let mut used = 0usize;
    let mut lines: Vec<String> = Vec::new();
    if let Some(h) = &budget.header {
        used += tokenizer.count(h);
        lines.push(h.clone());
    }
    let mut citations = Vec::new();
    let mut dropped = Vec::new();
    let mut over_budget = false;
    for r in items {
        let line = context_line(r);
        // each line after the first costs its newline too
        let cost = tokenizer.count(&line) + usize::from(!lines.is_empty());
        if r.pinned || used + cost <= budget.max_tokens {
            used += cost;
            if used > budget.max_tokens {
                over_budget = true;
            }
            lines.push(line);
            citations.push(r.id);
        } else {
            dropped.push(r.id);
        }
    }
    let text = lines.join("\n");
    AssembledContext {
        used_tokens: used,
        text,
        citations,
        dropped,
        over_budget,
    }
}

fn tier_rank(t: Tier) -> u8 {
    t.index() as u8
}
