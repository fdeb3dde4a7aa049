//! Recall queries and hits.

use std::time::Duration;

use aios_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{MemoryKind, MemoryRecord, Metadata, Scope, Tier};

/// Which signals a recall uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecallMode {
    /// Vector and keyword search fused by reciprocal rank (falls back to whichever signal
    /// the query supports).
    #[default]
    Hybrid,
    /// Exact vector search only.
    Vector,
    /// BM25 keyword search only.
    Keyword,
}

/// How signals are weighed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecallWeights {
    /// The `k` of reciprocal-rank fusion: a hit at rank `r` (1-based) in one signal adds
    /// `1 / (rrf_k + r)`.
    pub rrf_k: f32,
    /// How many candidates each signal contributes before fusion (at least the query's `k`).
    /// A shallow pool keeps fusion from promoting records that are mediocre in both signals
    /// over records one signal ranks at the top.
    pub candidates: usize,
    /// Weight of recency, `0.5 ^ (age / half_life)`, added to the fused score.
    pub recency: f32,
    /// The age at which recency halves.
    pub recency_half_life: Duration,
    /// Weight of the record's importance, added to the fused score.
    pub importance: f32,
}

impl Default for RecallWeights {
    fn default() -> Self {
        Self {
            rrf_k: 60.0,
            candidates: 10,
            recency: 0.002,
            recency_half_life: Duration::from_secs(30 * 24 * 3600),
            importance: 0.002,
        }
    }
}

/// What to recall: the input of [`crate::Memory::recall`].
///
/// ```
/// use aios_memory::{RecallQuery, Scope, Tier};
/// let q = RecallQuery::text("when is the invoice due")
///     .in_scope(Scope::parse("org/acme")?)
///     .tiers([Tier::Project, Tier::LongTerm])
///     .k(5);
/// assert_eq!(q.k, 5);
/// # Ok::<(), aios_memory::MemoryError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecallQuery {
    /// Text to search for (BM25, and embedded for vector search when there is an embedder).
    pub text: Option<String>,
    /// A query vector (takes precedence over embedding the text).
    pub vector: Option<Vec<f32>>,
    /// Only records within this scope prefix (all scopes if `None`).
    pub scope: Option<Scope>,
    /// Only these tiers (all if empty).
    pub tiers: Vec<Tier>,
    /// Only these kinds (all if empty).
    pub kinds: Vec<MemoryKind>,
    /// Only records whose metadata has each of these entries.
    pub metadata: Metadata,
    /// At most this many hits (default 10).
    pub k: usize,
    /// System time: recall what was recorded and not yet superseded at this time (now if
    /// `None`).
    pub as_of: Option<Timestamp>,
    /// World time: only statements valid at this time.
    pub valid_at: Option<Timestamp>,
    /// Which signals to use.
    pub mode: RecallMode,
    /// How to weigh them.
    pub weights: RecallWeights,
}

impl RecallQuery {
    /// A query with no text or vector: lists matching records by recency and importance.
    pub fn all() -> Self {
        Self {
            k: 10,
            ..Self::default()
        }
    }

    /// A text query.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::all()
        }
    }

    /// A vector query.
    pub fn vector(vector: Vec<f32>) -> Self {
        Self {
            vector: Some(vector),
            ..Self::all()
        }
    }

    /// Adds a query vector.
    pub fn with_vector(mut self, vector: Vec<f32>) -> Self {
        self.vector = Some(vector);
        self
    }

    /// Restricts to a scope prefix.
    pub fn in_scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Restricts to tiers.
    pub fn tiers(mut self, tiers: impl IntoIterator<Item = Tier>) -> Self {
        self.tiers = tiers.into_iter().collect();
        self
    }

    /// Restricts to kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = MemoryKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Requires a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets how many hits.
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Recalls as the system knew it at `at`.
    pub fn as_of(mut self, at: Timestamp) -> Self {
        self.as_of = Some(at);
        self
    }

    /// Only statements valid in the world at `at`.
    pub fn valid_at(mut self, at: Timestamp) -> Self {
        self.valid_at = Some(at);
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: RecallMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the weights.
    pub fn weights(mut self, weights: RecallWeights) -> Self {
        self.weights = weights;
        self
    }
}

/// Why a hit ranked where it did.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ScoreBreakdown {
    /// Cosine similarity, if the vector signal found it.
    pub vector: Option<f32>,
    /// Its 1-based rank in the vector signal.
    pub vector_rank: Option<usize>,
    /// BM25 score, if the keyword signal found it.
    pub keyword: Option<f32>,
    /// Its 1-based rank in the keyword signal.
    pub keyword_rank: Option<usize>,
    /// The reciprocal-rank-fusion score.
    pub fused: f32,
    /// The weighted recency contribution.
    pub recency: f32,
    /// The weighted importance contribution.
    pub importance: f32,
    /// What the hits are ordered by: `fused + recency + importance`.
    pub total: f32,
}

/// One recalled memory: the version visible at the query's time, with its provenance (in
/// the record) and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallHit {
    /// The record version.
    pub record: MemoryRecord,
    /// Why it ranked here.
    pub score: ScoreBreakdown,
}
