//! The approximate vector index (feature `ann`): an HNSW graph over the rows of the exact
//! matrix, consulted for vector recall in large memories.
//!
//! Why `hnsw_rs`: it is pure Rust (no C++ toolchain, unlike usearch's binding), dual
//! MIT/Apache-2.0 like this project, maintained (releases through 2025), and, unlike
//! `instant-distance`, it inserts points one at a time into a live graph, which a memory
//! that keeps being written needs. Its layer draws come from a fixed seed, so inserting the
//! same rows in the same order builds the same graph and answers the same way.
//!
//! How it stays exact where it must:
//!
//! - every row with a vector is inserted when it is indexed (remember, revise, import,
//!   migration, and the rebuild on open), keyed by its row; a new version is a new row and
//!   its predecessor stays in the graph for recall `as_of` an earlier time;
//! - the graph never decides visibility: it proposes candidates, each is checked against the
//!   query's filter (scope, tiers, system and world time, kinds, metadata, deleted and
//!   retracted rows) and scored with the exact cosine from the matrix. Pruned lineages stay in
//!   the graph as dead nodes that the filter drops;
//! - when few rows can pass the filter, or the filtered candidates are fewer than asked, the
//!   recall falls back to the exact scan; below [`AnnOptions::min_vectors`] it never uses the
//!   graph at all.

use hnsw_rs::prelude::{Distance, Hnsw};

use crate::index::{dot, Cand};
use crate::MemoryError;

/// Settings of the approximate vector index, given to [`crate::MemoryBuilder::ann`]
/// (feature `ann`).
///
/// Defaults and why:
///
/// - `min_vectors = 20_000`: below that the exact scan reads at most 30 MB of 384-dimension
///   vectors, about as long as a graph search takes, and it is exact; the graph is still kept
///   up to date so that crossing the threshold costs nothing;
/// - `connections = 16` (HNSW's `M`, twice that on the ground layer) and
///   `ef_construction = 100`: the usual trade-off between build time, memory and recall;
/// - `ef_search = 96`: the width of a search, about ten times the usual `k`; what it gives
///   on the benchmark's data is in `benches/RESULTS.md` (MEM-RECALL-ANN). Raise it for
///   recall, lower it for speed;
/// - `min_share = 0.05`: when the query's filters let through less than 5 % of the rows, the
///   graph would have to be searched 20 times wider to find enough of them, so the exact
///   scan (which then touches only the passing rows) answers instead.
///
/// ```
/// use aios_memory::AnnOptions;
/// let o = AnnOptions::default().ef_search(128).min_vectors(50_000);
/// assert_eq!((o.ef_search, o.min_vectors, o.connections), (128, 50_000, 16));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AnnOptions {
    /// Below this many vectors in the memory, recall scans exactly.
    pub min_vectors: usize,
    /// Links per node per layer (HNSW's `M`): `2..=128`.
    pub connections: usize,
    /// Width of the search that links a new node (at least 1).
    pub ef_construction: usize,
    /// Width of a recall's search (at least 1); a recall asking for more candidates searches
    /// that wide.
    pub ef_search: usize,
    /// The smallest estimated share of rows passing the filters for which the graph is used
    /// (`0..=1`).
    pub min_share: f32,
}

impl Default for AnnOptions {
    fn default() -> Self {
        Self {
            min_vectors: 20_000,
            connections: 16,
            ef_construction: 100,
            ef_search: 96,
            min_share: 0.05,
        }
    }
}

impl AnnOptions {
    /// Sets [`AnnOptions::min_vectors`].
    pub fn min_vectors(mut self, n: usize) -> Self {
        self.min_vectors = n;
        self
    }

    /// Sets [`AnnOptions::connections`].
    pub fn connections(mut self, m: usize) -> Self {
        self.connections = m;
        self
    }

    /// Sets [`AnnOptions::ef_construction`].
    pub fn ef_construction(mut self, ef: usize) -> Self {
        self.ef_construction = ef;
        self
    }

    /// Sets [`AnnOptions::ef_search`].
    pub fn ef_search(mut self, ef: usize) -> Self {
        self.ef_search = ef;
        self
    }

    /// Sets [`AnnOptions::min_share`].
    pub fn min_share(mut self, share: f32) -> Self {
        self.min_share = share;
        self
    }

    pub(crate) fn check(&self) -> Result<(), MemoryError> {
        if !(2..=128).contains(&self.connections) {
            return Err(MemoryError::invalid(
                "ann.connections",
                format!("`{}` is not within 2..=128", self.connections),
            ));
        }
        if self.ef_construction == 0 {
            return Err(MemoryError::invalid(
                "ann.ef_construction",
                "`0`: a search needs a width of at least 1",
            ));
        }
        if self.ef_search == 0 {
            return Err(MemoryError::invalid(
                "ann.ef_search",
                "`0`: a search needs a width of at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_share) {
            return Err(MemoryError::invalid(
                "ann.min_share",
                format!("`{}` is not within 0..=1", self.min_share),
            ));
        }
        Ok(())
    }
}

/// The widest search a recall runs before it falls back to the exact scan.
const MAX_EF: usize = 4096;

/// `1 - cosine` of two unit vectors, never negative (the graph expects distances >= 0).
#[derive(Debug, Clone, Copy, Default)]
struct UnitDot;

impl Distance<f32> for UnitDot {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// The graph, keyed by index row.
pub(crate) struct Ann {
    pub options: AnnOptions,
    graph: Hnsw<'static, f32, UnitDot>,
    /// How many vectors the graph holds.
    pub nodes: usize,
}

impl std::fmt::Debug for Ann {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ann")
            .field("options", &self.options)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Ann {
    /// An empty graph (the options are checked by the builder).
    pub fn new(options: AnnOptions) -> Self {
        Self {
            options,
            graph: Hnsw::new(options.connections, 0, 16, options.ef_construction, UnitDot),
            nodes: 0,
        }
    }

    /// Adds the unit vector of `row`.
    pub fn insert(&mut self, vector: &[f32], row: u32) {
        self.graph.insert_slice((vector, row as usize));
        self.nodes += 1;
    }

    /// How wide a search must be to yield `want` rows when about `share` of them pass,
    /// with room for the estimate being off; `None` when that is wider than [`MAX_EF`].
    pub fn width(&self, want: usize, share: f32) -> Option<usize> {
        let needed = (want as f32 * 2.0 / share.max(1e-6)).ceil();
        let ef = self.options.ef_search.max(want).max(needed as usize);
        (ef <= MAX_EF).then_some(ef)
    }

    /// Up to `ef` rows near `query`, nearest first by the graph's reckoning, checked
    /// against `passes` and scored exactly by `similarity`, best first.
    pub fn search(
        &self,
        query: &[f32],
        ef: usize,
        passes: impl Fn(u32) -> bool,
        similarity: impl Fn(u32) -> Option<f32>,
    ) -> Vec<Cand> {
        let mut out: Vec<Cand> = self
            .graph
            .search(query, ef, ef)
            .into_iter()
            .filter_map(|n| {
                let row = u32::try_from(n.d_id).ok()?;
                if !passes(row) {
                    return None;
                }
                Some(Cand {
                    score: similarity(row)?,
                    row,
                })
            })
            .collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }
}
