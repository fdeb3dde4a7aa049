//! Recall queries and hits.

use std::time::Duration;

use aios_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{MemoryKind, MemoryRecord, Metadata, Scope, Tier};

/// Which signals a recall uses, and so what it ranks by.
///
/// Every mode adds the same two boosts to its relevance (see [`RecallWeights`]): recency and
/// importance, each at most its weight, so a boost can only reorder hits whose relevance
/// differs by less than `recency + importance` (0.02 with the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecallMode {
    /// Vector and keyword search fused by reciprocal rank. Needs query text and a query
    /// vector (given, or the embedder's for the text): without either the recall fails
    /// with [`crate::MemoryError::InvalidInput`], as vector mode does without a vector,
    /// instead of quietly running one signal. A query with neither text nor vector lists.
    Hybrid,
    /// Exact vector search only: ranks by cosine similarity.
    Vector,
    /// BM25 keyword search only: ranks by BM25, divided by the query's best BM25 score so
    /// that it lies in `0..=1` like the other modes' relevance.
    Keyword,
    /// Whatever the query supports, said in each hit's [`ScoreBreakdown`]: hybrid with text
    /// and a vector (given or embedded), keyword with text only (no vector, no embedder),
    /// vector with a vector only, a listing with neither. The default, so that a text query
    /// works on a memory without an embedder; ask for [`RecallMode::Hybrid`] to be told
    /// when the vector signal is missing.
    #[default]
    Auto,
}

/// How signals are weighed and boosted. Every mode ranks by a relevance in about `0..=1`
/// (hybrid: the fusion; vector: the similarity; keyword: the normalised BM25), plus the
/// recency and importance boosts.
///
/// Defaults and why:
///
/// - `rrf_k = 60`: the constant of Cormack, Clarke and Büttcher (2009), the usual choice;
///   larger values flatten the difference between ranks;
/// - `candidates = 10`: each signal contributes its top 10 to the fusion. A shallow pool
///   keeps fusion from promoting records that are mediocre in both signals over records one
///   signal ranks at the top. It does not grow with the query's `k`: a larger `k` appends
///   further bands (the records within the top 20 of a signal, then 40, ...), each ranked the
///   same way, so the first hits never change with `k`;
/// - `vector = keyword = 1.0`: neither signal is trusted more than the other without
///   evidence from the host's data;
/// - `recency = 0.01` with a 30-day half-life, `importance = 0.01`: together at most 0.02,
///   enough to order near-equal hits by freshness and importance, never to overturn a
///   clear relevance gap (in hybrid mode, 0.02 is less than the step from first to third
///   place in both signals).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecallWeights {
    /// The `k` of reciprocal-rank fusion: a hit at rank `r` (1-based) in one signal adds
    /// `weight / (rrf_k + r)`. Must be finite and at least 0.
    pub rrf_k: f32,
    /// How many candidates each signal contributes to the first band of the fusion (at
    /// least 1). Independent of the query's `k` (see the type's documentation).
    pub candidates: usize,
    /// Weight of recency, `recency * 0.5 ^ (age / half_life)`, added to the relevance. The
    /// age counts from when the statement became true (`valid_from`) when the record says,
    /// else from when it was recorded; a future time counts as age 0.
    pub recency: f32,
    /// The age at which recency halves.
    pub recency_half_life: Duration,
    /// Weight of the record's importance (`0..=1`), added to the relevance.
    pub importance: f32,
    /// Weight of the vector signal in the fusion.
    #[serde(default = "one")]
    pub vector: f32,
    /// Weight of the keyword signal in the fusion.
    #[serde(default = "one")]
    pub keyword: f32,
}

fn one() -> f32 {
    1.0
}

impl Default for RecallWeights {
    fn default() -> Self {
        Self {
            rrf_k: 60.0,
            candidates: 10,
            recency: 0.01,
            recency_half_life: Duration::from_secs(30 * 24 * 3600),
            importance: 0.01,
            vector: 1.0,
            keyword: 1.0,
        }
    }
}

impl RecallWeights {
    /// Checks every weight is finite and not negative, and the pool not empty.
    pub(crate) fn check(&self) -> Result<(), crate::MemoryError> {
        for (name, w) in [
            ("weights.rrf_k", self.rrf_k),
            ("weights.recency", self.recency),
            ("weights.importance", self.importance),
            ("weights.vector", self.vector),
            ("weights.keyword", self.keyword),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(crate::MemoryError::invalid(
                    name,
                    format!("`{w}` is not a finite weight of at least 0"),
                ));
            }
        }
        if self.candidates == 0 {
            return Err(crate::MemoryError::invalid(
                "weights.candidates",
                "`0`: each signal contributes at least one candidate",
            ));
        }
        if self.vector + self.keyword <= 0.0 {
            return Err(crate::MemoryError::invalid(
                "weights.vector",
                "the vector and keyword weights are both 0",
            ));
        }
        Ok(())
    }
}

/// How keyword search tokenises text and scores it: set once for a memory with
/// [`crate::MemoryBuilder::keyword`], since it shapes the index.
///
/// Defaults and why: `k1 = 1.2` and `b = 0.75`, the values of Robertson and Zaragoza's
/// BM25 that most engines (Lucene, Elasticsearch) ship; no stemming, because a stemmer is
/// language-specific (it would mangle non-English text), conflates words a user may want
/// apart, and costs write time; turn it on for English text.
///
/// ```
/// use aios_memory::{KeywordOptions, Stemming};
/// let o = KeywordOptions::default().k1(1.5).b(0.5).stemming(Stemming::English);
/// assert_eq!((o.k1, o.b, o.stemming), (1.5, 0.5, Stemming::English));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeywordOptions {
    /// BM25 term-frequency saturation: how much a repeated term adds (finite, at least 0).
    pub k1: f32,
    /// BM25 length normalisation: 0 ignores record length, 1 normalises fully (`0..=1`).
    pub b: f32,
    /// Whether words are reduced to a stem before indexing and querying.
    pub stemming: Stemming,
}

impl Default for KeywordOptions {
    fn default() -> Self {
        Self {
            k1: 1.2,
            b: 0.75,
            stemming: Stemming::None,
        }
    }
}

impl KeywordOptions {
    /// Sets `k1`.
    pub fn k1(mut self, k1: f32) -> Self {
        self.k1 = k1;
        self
    }

    /// Sets `b`.
    pub fn b(mut self, b: f32) -> Self {
        self.b = b;
        self
    }

    /// Sets the stemming.
    pub fn stemming(mut self, stemming: Stemming) -> Self {
        self.stemming = stemming;
        self
    }

    pub(crate) fn check(&self) -> Result<(), crate::MemoryError> {
        if !self.k1.is_finite() || self.k1 < 0.0 {
            return Err(crate::MemoryError::invalid(
                "keyword.k1",
                format!("`{}` is not finite and at least 0", self.k1),
            ));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(crate::MemoryError::invalid(
                "keyword.b",
                format!("`{}` is not within 0..=1", self.b),
            ));
        }
        Ok(())
    }
}

/// How keyword search reduces words before matching them. Words are always lowercase runs
/// of letters and digits (Unicode-aware).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stemming {
    /// Words match exactly (after lowercasing).
    #[default]
    None,
    /// The English Snowball (Porter 2) stemmer: `invoices`, `invoiced` and `invoicing`
    /// all match `invoice`.
    English,
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
    /// Whether hits carry their records' embeddings (default `false`: a hit's
    /// `record.embedding` is `None`, and the vectors are not copied).
    pub embeddings: bool,
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

    /// Hits carry their records' embeddings (see [`RecallQuery::embeddings`]).
    pub fn with_embeddings(mut self) -> Self {
        self.embeddings = true;
        self
    }
}

/// Why a hit ranked where it did.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ScoreBreakdown {
    /// Cosine similarity, if the vector signal ran and ranked the record within the depth
    /// that counted for it (`None` in keyword mode and in a listing).
    pub vector: Option<f32>,
    /// Its 1-based rank in the vector signal (by similarity alone).
    pub vector_rank: Option<usize>,
    /// BM25 score, if the keyword signal ran and matched the record within the depth that
    /// counted for it (`None` in vector mode and in a listing).
    pub keyword: Option<f32>,
    /// Its 1-based rank in the keyword signal (by BM25 alone).
    pub keyword_rank: Option<usize>,
    /// The relevance the mode ranks by, before boosts: in hybrid mode the weighted
    /// reciprocal-rank fusion, divided by its maximum (first in both signals is 1); in vector
    /// mode the cosine similarity; in keyword mode the BM25 score divided by the query's best;
    /// 0 in a listing.
    pub fused: f32,
    /// The weighted recency contribution.
    pub recency: f32,
    /// The weighted importance contribution.
    pub importance: f32,
    /// What the hits are ordered by: `fused + recency + importance` (in hybrid mode, within
    /// a band of the pool: see [`RecallWeights::candidates`]).
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
