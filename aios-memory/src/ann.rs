//! The approximate vector index (feature `ann`): an HNSW graph over the rows of the exact
//! matrix, consulted for vector recall in large memories.
//!
//! Why `hnsw_rs`: it is pure Rust (no C++ toolchain, unlike usearch's binding), dual
//! MIT/Apache-2.0 like this project, maintained (releases through 2025), and, unlike
//! `instant-distance`, it inserts points one at a time into a live graph, which a memory
//! that keeps being written needs. Its layer draws come from a fixed seed, so inserting the
//! same rows in the same order with one thread ([`AnnOptions::threads`]) builds the same graph
//! and answers the same way.
//!
//! The graph holds its own copy of each unit vector in 16-bit fixed point (half the bytes of
//! `f32`, a resolution of 3e-5): a search is bound by reading its nodes' vectors from memory,
//! and every candidate it proposes is scored again from the exact `f32` matrix.
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

use crate::index::Cand;
use crate::MemoryError;

/// Settings of the approximate vector index, given to [`crate::MemoryBuilder::ann`]
/// (feature `ann`).
///
/// Defaults and why:
///
/// - `min_vectors = 50_000`: below that the exact scan (at most 77 MB of 384-dimension
///   vectors) costs about as much as a graph search and is exact (measured at 30,000
///   vectors: 2.7 ms of CPU per exact query against 3.9 ms through the graph; at 100,000
///   the graph answered in a third of the exact scan's time); the graph is still kept up to
///   date so that crossing the threshold costs nothing;
/// - `connections = 16` (HNSW's `M`, twice that on the ground layer) and
///   `ef_construction = 100`: the usual trade-off between build time, memory and recall
///   (measured on 384 dimensions: about 2.3 ms of CPU to link a vector at 50,000 vectors,
///   with recall@10 of 1.0 at `ef_search = 96`; see `benches/RESULTS.md`);
/// - `ef_search = 96`: the width of a search, about ten times the usual `k`; what it gives
///   on the benchmark's data is in `benches/RESULTS.md` (MEM-RECALL-ANN). Raise it for
///   recall, lower it for speed. Measured on 384-dimension vectors around 2,000 centres,
///   recall@10 against the exact scan was 1.0 up to 200,000 vectors and 0.99 at 400,000, but
///   0.86 at 700,000 and 0.67 at 1,000,000 (likely `hnsw_rs`'s query descent, see
///   `benches/RESULTS.md`): keep the exact scan where recall matters in larger memories;
/// - `threads = 1`: a batch written through [`crate::Memory::remember_many`] (or loaded
///   when the memory opens) is linked into the graph by this many threads at once; with
///   more than one, the memory owns a pool of that many threads (spawned on the first batch
///   that needs them) and the graph no longer depends only on the order of the rows
///   (recall is as good, the exact links differ between builds). The default spawns
///   nothing, as the library promises; a host that can spare the cores sets it (the link
///   step is what bounds the write rate of a memory with a graph);
/// - `min_share = 0.05`: when the query's filters let through less than 5 % of the rows, the
///   graph would have to be searched 20 times wider to find enough of them, so the exact
///   scan (which then touches only the passing rows) answers instead.
///
/// ```
/// use aios_memory::AnnOptions;
/// let o = AnnOptions::default().ef_search(128).min_vectors(100_000).threads(2);
/// assert_eq!((o.ef_search, o.min_vectors, o.connections), (128, 100_000, 16));
/// assert_eq!(o.threads, 2);
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
    /// Threads that link a batch of new vectors into the graph (`1..=256`; 1: the writing
    /// thread alone, nothing spawned).
    pub threads: usize,
}

impl Default for AnnOptions {
    fn default() -> Self {
        Self {
            min_vectors: 50_000,
            connections: 16,
            ef_construction: 100,
            ef_search: 96,
            min_share: 0.05,
            threads: 1,
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

    /// Sets [`AnnOptions::threads`].
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
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
        if !(1..=256).contains(&self.threads) {
            return Err(MemoryError::invalid(
                "ann.threads",
                format!("`{}` is not within 1..=256", self.threads),
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

/// The fixed-point scale of the graph's copies of the vectors: components of a unit vector
/// lie within `-1..=1`, so `x * 32767` always fits an `i16`, with a resolution of 3e-5.
const SCALE: f32 = 32767.0;

/// A unit vector in the graph's fixed-point form (half the bytes of `f32`: a graph search is
/// bound by reading its nodes' vectors from memory, and the exact similarity of every
/// candidate is computed again from the `f32` matrix anyway).
fn quantise(v: &[f32], out: &mut Vec<i16>) {
    out.extend(
        v.iter()
            .map(|x| (x * SCALE).round().clamp(-SCALE, SCALE) as i16),
    );
}

/// The dot product of two fixed-point unit vectors, in units of `SCALE²`. Sixteen `i32`
/// lanes, which the compiler turns into multiply-adds of 16-bit pairs. No lane can
/// overflow: each lane's sum is a partial dot product, bounded by the product of the two
/// vectors' norms (at most about `SCALE²`, 1.07e9, for unit vectors, under `i32::MAX`);
/// the adds wrap instead of trapping all the same.
#[inline]
fn dot_q(a: &[i16], b: &[i16]) -> i64 {
    let mut acc = [0i32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        if let (Ok(x), Ok(y)) = (<&[i16; 16]>::try_from(x), <&[i16; 16]>::try_from(y)) {
            // indexed on purpose, as in `index::dot`: full-width loads
            #[allow(clippy::needless_range_loop)]
            for i in 0..16 {
                acc[i] = acc[i].wrapping_add(i32::from(x[i]) * i32::from(y[i]));
            }
        }
    }
    let rest: i64 = ra
        .iter()
        .zip(rb)
        .map(|(p, q)| i64::from(*p) * i64::from(*q))
        .sum();
    rest + acc.iter().map(|x| i64::from(*x)).sum::<i64>()
}

/// `1 - cosine` of two fixed-point unit vectors, never negative (the graph expects
/// distances >= 0).
#[derive(Debug, Clone, Copy, Default)]
struct UnitDot;

impl Distance<i16> for UnitDot {
    #[inline]
    fn eval(&self, va: &[i16], vb: &[i16]) -> f32 {
        (1.0 - dot_q(va, vb) as f32 / (SCALE * SCALE)).max(0.0)
    }
}

/// The graph, keyed by index row.
pub(crate) struct Ann {
    pub options: AnnOptions,
    graph: Hnsw<'static, i16, UnitDot>,
    /// How many vectors the graph holds.
    pub nodes: usize,
    /// The threads linking a batch, once one needed them (`options.threads > 1`).
    pool: Option<rayon::ThreadPool>,
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
            pool: None,
        }
    }

    /// Adds the unit vectors of rows, in order; with [`AnnOptions::threads`] above 1 and
    /// more than one vector, linked by that many threads at once.
    pub fn insert_many(&mut self, rows: &[(&[f32], u32)]) {
        let Some(d) = rows.first().map(|(v, _)| v.len()) else {
            return;
        };
        let mut q = Vec::with_capacity(rows.len() * d);
        for (v, _) in rows {
            quantise(v, &mut q);
        }
        let items: Vec<(&[i16], usize)> = q
            .chunks_exact(d.max(1))
            .zip(rows)
            .map(|(v, (_, row))| (v, *row as usize))
            .collect();
        if self.options.threads > 1 && items.len() > 1 {
            if self.pool.is_none() {
                // a pool that cannot be built (no threads to spare) leaves the serial path
                self.pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(self.options.threads)
                    .thread_name(|i| format!("aios-memory-ann-{i}"))
                    .build()
                    .ok();
            }
            if let Some(pool) = &self.pool {
                let graph = &self.graph;
                pool.install(|| graph.parallel_insert_slice(&items));
                self.nodes += items.len();
                return;
            }
        }
        for item in &items {
            self.graph.insert_slice(*item);
        }
        self.nodes += items.len();
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
        let mut q = Vec::with_capacity(query.len());
        quantise(query, &mut q);
        let mut out: Vec<Cand> = self
            .graph
            .search(&q, ef, ef)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot;

    /// The fixed-point dot product agrees with the `f32` one to within its resolution, for
    /// unit vectors of any direction (including the extremes that bound the lanes).
    #[test]
    fn fixed_point_dot_matches_f32() {
        let mut rng = aios_core::SeededRng::new(21);
        let unit = |mut v: Vec<f32>| {
            crate::index::normalise(&mut v);
            v
        };
        let mut cases: Vec<(Vec<f32>, Vec<f32>)> = (0..200)
            .map(|i| {
                let n = [384, 17, 1, 33][i % 4];
                (
                    unit((0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()),
                    unit((0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()),
                )
            })
            .collect();
        // all weight in one lane, and a vector with itself
        let mut e = vec![0f32; 384];
        e[5] = 1.0;
        cases.push((e.clone(), e.clone()));
        let flat = unit(vec![1.0; 384]);
        cases.push((flat.clone(), flat.clone()));
        cases.push((flat.clone(), flat.iter().map(|x| -x).collect()));
        for (a, b) in cases {
            let (mut qa, mut qb) = (Vec::new(), Vec::new());
            quantise(&a, &mut qa);
            quantise(&b, &mut qb);
            let exact = dot(&a, &b);
            let fixed = dot_q(&qa, &qb) as f32 / (SCALE * SCALE);
            assert!((exact - fixed).abs() < 2e-3, "{exact} vs {fixed}");
            let d = UnitDot.eval(&qa, &qb);
            assert!(d >= 0.0 && (d - (1.0 - exact).max(0.0)).abs() < 2e-3);
        }
    }
}
