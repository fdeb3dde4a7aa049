//! In-process retrieval indexes, rebuilt from the store: a contiguous f32 matrix for exact
//! vector search, an inverted index for BM25, and compact per-row metadata for filtering.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aios_core::{MemoryId, Timestamp};

use crate::{MemoryKind, MemoryRecord, Metadata, Scope, Tier};

pub(crate) const NONE: u32 = u32::MAX;
const FLAG_TOMBSTONE: u8 = 1;
const FLAG_DELETED: u8 = 2;
const FLAG_PINNED: u8 = 4;

pub(crate) fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// The hot, per-row data every scan touches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hot {
    pub recorded: i64,
    pub retired: i64,
    pub scope: u32,
    pub tier: u8,
    pub flags: u8,
}

/// The rest of a row, touched only by detailed filters and by ranking.
#[derive(Debug, Clone)]
pub(crate) struct Cold {
    pub id: MemoryId,
    pub version: u32,
    pub kind: u32,
    pub valid_from: i64,
    pub valid_to: i64,
    pub importance: f32,
    pub expires: i64,
    pub metadata: Metadata,
}

/// What a query may see, compiled against the index's interned scopes and kinds.
#[derive(Debug)]
pub(crate) struct Filter {
    pub as_of: i64,
    /// Per interned scope: the bit mask of tiers allowed.
    pub scope_tiers: Vec<u8>,
    /// Per interned kind: allowed (empty: all).
    pub kinds: Vec<bool>,
    pub valid_at: Option<i64>,
    pub metadata: Vec<(String, serde_json::Value)>,
}

impl Filter {
    #[inline]
    fn hot_ok(&self, h: &Hot) -> bool {
        h.flags & (FLAG_TOMBSTONE | FLAG_DELETED) == 0
            && h.recorded <= self.as_of
            && self.as_of < h.retired
            && self
                .scope_tiers
                .get(h.scope as usize)
                .is_some_and(|m| m & (1 << h.tier) != 0)
    }

    fn needs_cold(&self) -> bool {
        !self.kinds.is_empty() || self.valid_at.is_some() || !self.metadata.is_empty()
    }

    fn cold_ok(&self, c: &Cold) -> bool {
        if !self.kinds.is_empty() && !self.kinds.get(c.kind as usize).copied().unwrap_or(false) {
            return false;
        }
        if let Some(at) = self.valid_at {
            if !(c.valid_from <= at && at < c.valid_to) {
                return false;
            }
        }
        self.metadata
            .iter()
            .all(|(k, v)| c.metadata.get(k).is_some_and(|x| x == v))
    }

    /// Whether no row can pass (every scope masked out).
    pub fn is_empty(&self) -> bool {
        self.scope_tiers.iter().all(|m| *m == 0)
    }
}

/// A candidate in a top-k selection: higher score first, then lower row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub score: f32,
    pub row: u32,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    /// `Greater` means better.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.row.cmp(&self.row))
    }
}

/// A bounded selection of the best `k` candidates.
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<Cand>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    pub fn push(&mut self, c: Cand) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(c));
        } else if let Some(mut min) = self.heap.peek_mut() {
            if c > min.0 {
                *min = std::cmp::Reverse(c);
            }
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Cand> {
        let mut v: Vec<Cand> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

/// The dot product, written as 16 independent lanes so the compiler vectorises it.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, p), q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    let mut sum = 0f32;
    for (p, q) in ra.iter().zip(rb) {
        sum += p * q;
    }
    let mut half = [0f32; 8];
    for (i, h) in half.iter_mut().enumerate() {
        *h = acc[i] + acc[i + 8];
    }
    sum + half.iter().sum::<f32>()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub(crate) fn normalise(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Lowercase alphanumeric word tokens, shared by indexing and querying.
pub(crate) fn tokenize(text: &str, mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if word
            .bytes()
            .all(|b| !b.is_ascii_uppercase() && b.is_ascii())
        {
            f(word);
        } else {
            buf.clear();
            buf.extend(word.chars().flat_map(char::to_lowercase));
            f(&buf);
        }
    }
}

/// Term frequencies of one document, computed outside the index lock.
pub(crate) fn term_counts(text: &str) -> (Vec<(String, u32)>, u32) {
    let mut counts: Vec<(String, u32)> = Vec::new();
    let mut len = 0u32;
    tokenize(text, |t| {
        len += 1;
        match counts.iter_mut().find(|(w, _)| w == t) {
            Some((_, c)) => *c += 1,
            None => counts.push((t.to_owned(), 1)),
        }
    });
    (counts, len)
}

#[derive(Debug, Default)]
struct Interner<T> {
    values: Vec<T>,
    ids: HashMap<T, u32>,
}

impl<T: Clone + Eq + std::hash::Hash> Interner<T> {
    fn intern(&mut self, v: &T) -> u32 {
        if let Some(id) = self.ids.get(v) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.ids.insert(v.clone(), id);
        id
    }
}

#[derive(Debug, Default)]
struct Bm25 {
    terms: HashMap<Box<str>, u32>,
    postings: Vec<Vec<(u32, u32)>>,
    doc_len: Vec<u32>,
    docs: u64,
    total_len: u64,
}

const BM25_K1: f32 = 1.2;
const BM25_B: f32 = 0.75;

/// The indexes of one [`crate::Memory`].
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub dims: Option<usize>,
    matrix: Vec<f32>,
    slot_row: Vec<u32>,
    pub hot: Vec<Hot>,
    pub cold: Vec<Cold>,
    vec_slot: Vec<u32>,
    lineages: HashMap<MemoryId, Vec<u32>>,
    scopes: Interner<Scope>,
    kinds: Interner<MemoryKind>,
    bm25: Bm25,
}

/// A record prepared for insertion (tokenised and normalised outside the lock).
pub(crate) struct Prepared {
    pub terms: Vec<(String, u32)>,
    pub len: u32,
    pub vector: Option<Vec<f32>>,
}

impl Prepared {
    pub fn of(record: &MemoryRecord) -> Self {
        if record.tombstone.is_some() {
            return Self {
                terms: Vec::new(),
                len: 0,
                vector: None,
            };
        }
        let (terms, len) = term_counts(&record.content);
        let vector = record.embedding.as_ref().map(|e| {
            let mut v = e.clone();
            normalise(&mut v);
            v
        });
        Self { terms, len, vector }
    }
}

impl Index {
    pub fn lineage_count(&self) -> usize {
        self.lineages.len()
    }

    pub fn lineage_ids(&self) -> impl Iterator<Item = &MemoryId> {
        self.lineages.keys()
    }

    pub fn scope_of(&self, row: u32) -> Option<&Scope> {
        self.hot
            .get(row as usize)
            .and_then(|h| self.scopes.values.get(h.scope as usize))
    }

    pub fn tier_of(&self, row: u32) -> Tier {
        match self.hot.get(row as usize).map(|h| h.tier) {
            Some(1) => Tier::Project,
            Some(2) => Tier::LongTerm,
            _ => Tier::Working,
        }
    }

    pub fn is_pinned(&self, row: u32) -> bool {
        self.hot
            .get(row as usize)
            .is_some_and(|h| h.flags & FLAG_PINNED != 0)
    }

    pub fn is_tombstone(&self, row: u32) -> bool {
        self.hot
            .get(row as usize)
            .is_some_and(|h| h.flags & FLAG_TOMBSTONE != 0)
    }

    /// Checks that a vector fits this index's dimension (fixing it on first use).
    pub fn check_dims(&self, len: usize) -> Result<(), usize> {
        match self.dims {
            Some(d) if d != len => Err(d),
            _ => Ok(()),
        }
    }

    /// Adds one version. When the lineage has rows, the previous latest row is retired at this
    /// version's `recorded_at` (unless the record says otherwise, as when loading).
    pub fn insert(&mut self, record: &MemoryRecord, prepared: Prepared) {
        let row = self.hot.len() as u32;
        let recorded = micros(record.recorded_at);
        if let Some(rows) = self.lineages.get(&record.id) {
            if let Some(&prev) = rows.last() {
                if let Some(h) = self.hot.get_mut(prev as usize) {
                    if h.retired == i64::MAX {
                        h.retired = recorded;
                    }
                }
            }
        }
        let scope = self.scopes.intern(&record.scope);
        let kind = self.kinds.intern(&record.kind);
        let mut flags = 0;
        if record.tombstone.is_some() {
            flags |= FLAG_TOMBSTONE;
        }
        if record.pinned {
            flags |= FLAG_PINNED;
        }
        self.hot.push(Hot {
            recorded,
            retired: record.retired_at.map_or(i64::MAX, micros),
            scope,
            tier: record.tier.index() as u8,
            flags,
        });
        self.cold.push(Cold {
            id: record.id,
            version: record.version,
            kind,
            valid_from: record.valid_from.map_or(i64::MIN, micros),
            valid_to: record.valid_to.map_or(i64::MAX, micros),
            importance: record.importance,
            expires: record.expires_at.map_or(i64::MAX, micros),
            metadata: record.metadata.clone(),
        });
        let mut slot = NONE;
        if let Some(v) = prepared.vector {
            if self.dims.is_none() {
                self.dims = Some(v.len());
            }
            if Some(v.len()) == self.dims {
                slot = self.slot_row.len() as u32;
                self.matrix.extend_from_slice(&v);
                self.slot_row.push(row);
            }
        }
        self.vec_slot.push(slot);
        self.lineages.entry(record.id).or_default().push(row);
        self.bm25.doc_len.push(prepared.len);
        if prepared.len > 0 {
            self.bm25.docs += 1;
            self.bm25.total_len += u64::from(prepared.len);
            for (term, tf) in prepared.terms {
                let id = match self.bm25.terms.get(term.as_str()) {
                    Some(id) => *id,
                    None => {
                        let id = self.bm25.postings.len() as u32;
                        self.bm25.postings.push(Vec::new());
                        self.bm25.terms.insert(term.into_boxed_str(), id);
                        id
                    }
                };
                if let Some(p) = self.bm25.postings.get_mut(id as usize) {
                    p.push((row, tf));
                }
            }
        }
    }

    /// Marks every row of a lineage deleted. Returns whether it existed.
    pub fn delete(&mut self, id: &MemoryId) -> bool {
        let Some(rows) = self.lineages.remove(id) else {
            return false;
        };
        for row in rows {
            if let Some(h) = self.hot.get_mut(row as usize) {
                h.flags |= FLAG_DELETED;
            }
            let len = self.bm25.doc_len.get(row as usize).copied().unwrap_or(0);
            if len > 0 {
                self.bm25.docs = self.bm25.docs.saturating_sub(1);
                self.bm25.total_len = self.bm25.total_len.saturating_sub(u64::from(len));
            }
        }
        true
    }

    /// The latest row of a lineage.
    pub fn latest(&self, id: &MemoryId) -> Option<u32> {
        self.lineages.get(id).and_then(|r| r.last().copied())
    }

    /// The row of a lineage visible at system time `as_of` (tombstones included).
    pub fn visible_row(&self, id: &MemoryId, as_of: i64) -> Option<u32> {
        self.lineages.get(id)?.iter().rev().copied().find(|r| {
            self.hot
                .get(*r as usize)
                .is_some_and(|h| h.recorded <= as_of && as_of < h.retired)
        })
    }

    /// Compiles a filter. `scope_ok(scope)` returns the tier mask allowed in that scope.
    pub fn compile(
        &self,
        as_of: i64,
        scope_ok: impl Fn(&Scope) -> u8,
        kinds: &[MemoryKind],
        valid_at: Option<i64>,
        metadata: &Metadata,
    ) -> Filter {
        let scope_tiers = self.scopes.values.iter().map(scope_ok).collect();
        let kinds = if kinds.is_empty() {
            Vec::new()
        } else {
            self.kinds
                .values
                .iter()
                .map(|k| kinds.contains(k))
                .collect()
        };
        Filter {
            as_of,
            scope_tiers,
            kinds,
            valid_at,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    #[inline]
    pub fn passes(&self, filter: &Filter, row: u32) -> bool {
        let Some(h) = self.hot.get(row as usize) else {
            return false;
        };
        if !filter.hot_ok(h) {
            return false;
        }
        !filter.needs_cold()
            || self
                .cold
                .get(row as usize)
                .is_some_and(|c| filter.cold_ok(c))
    }

    /// Exact top-`k` rows by cosine similarity to `query` (already unit length).
    pub fn vector_top(&self, filter: &Filter, query: &[f32], k: usize) -> Vec<Cand> {
        let mut top = TopK::new(k);
        let Some(d) = self.dims else {
            return Vec::new();
        };
        if d == 0 || query.len() != d || filter.is_empty() {
            return Vec::new();
        }
        let cold = filter.needs_cold();
        for (v, &row) in self.matrix.chunks_exact(d).zip(&self.slot_row) {
            let Some(h) = self.hot.get(row as usize) else {
                continue;
            };
            if !filter.hot_ok(h) {
                continue;
            }
            if cold
                && !self
                    .cold
                    .get(row as usize)
                    .is_some_and(|c| filter.cold_ok(c))
            {
                continue;
            }
            top.push(Cand {
                score: dot(v, query),
                row,
            });
        }
        top.into_sorted()
    }

    /// Top-`k` rows by BM25 for `text`.
    pub fn keyword_top(&self, filter: &Filter, text: &str, k: usize) -> Vec<Cand> {
        if self.bm25.docs == 0 || filter.is_empty() {
            return Vec::new();
        }
        let mut terms: Vec<u32> = Vec::new();
        tokenize(text, |t| {
            if let Some(id) = self.bm25.terms.get(t) {
                if !terms.contains(id) {
                    terms.push(*id);
                }
            }
        });
        let n = self.bm25.docs as f32;
        let avgdl = (self.bm25.total_len as f32 / n).max(1.0);
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for term in terms {
            let Some(postings) = self.bm25.postings.get(term as usize) else {
                continue;
            };
            let df = postings.len() as f32;
            let idf = (1.0 + (n - df + 0.5).max(0.0) / (df + 0.5)).ln();
            for &(row, tf) in postings {
                if !self.passes(filter, row) {
                    continue;
                }
                let dl = self.bm25.doc_len.get(row as usize).copied().unwrap_or(0) as f32;
                let tf = tf as f32;
                let s = idf * tf * (BM25_K1 + 1.0)
                    / (tf + BM25_K1 * (1.0 - BM25_B + BM25_B * dl / avgdl));
                *scores.entry(row).or_insert(0.0) += s;
            }
        }
        let mut top = TopK::new(k);
        for (row, score) in scores {
            top.push(Cand { score, row });
        }
        top.into_sorted()
    }

    /// Every row passing the filter (for listing without a query).
    pub fn matching_rows(&self, filter: &Filter) -> Vec<u32> {
        if filter.is_empty() {
            return Vec::new();
        }
        (0..self.hot.len() as u32)
            .filter(|r| self.passes(filter, *r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        for n in [0usize, 1, 7, 16, 17, 33, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn top_k_keeps_the_best_deterministically() {
        let mut t = TopK::new(3);
        for (row, score) in [(0, 0.1), (1, 0.9), (2, 0.5), (3, 0.9), (4, 0.2), (5, 0.7)] {
            t.push(Cand { score, row });
        }
        let rows: Vec<u32> = t.into_sorted().iter().map(|c| c.row).collect();
        assert_eq!(rows, vec![1, 3, 5]);
    }

    #[test]
    fn tokens_are_lowercase_words() {
        let mut out = Vec::new();
        tokenize("The Invoice, due FRIDAY; über-fast 42", |t| {
            out.push(t.to_owned())
        });
        assert_eq!(
            out,
            ["the", "invoice", "due", "friday", "über", "fast", "42"]
        );
        let (counts, len) = term_counts("a b a");
        assert_eq!(len, 3);
        assert_eq!(counts, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
    }
}
