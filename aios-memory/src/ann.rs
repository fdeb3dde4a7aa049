//! The approximate vector index (feature `ann`): an inverted file of the rows' vectors
//! (IVF), consulted for vector recall in large memories.
//!
//! The vectors are grouped into lists around centres found by spherical k-means. A recall
//! scores the query against every centre, reads the vectors of the nearest lists (the
//! probes), and scores every candidate again exactly from the `f32` matrix. Each list keeps
//! its vectors side by side in 16-bit fixed point (half the bytes of `f32`, a resolution of
//! 3e-5), so a probe is one sequential read.
//!
//! Why an inverted file, and not a graph (HNSW): measured on the benchmark's data (384
//! dimensions, 1,000,000 vectors around 2,000 centres, two cores), `hnsw_rs` 0.3.5 (this
//! index before) recalled 0.67 of the exact top 10 after a 58-minute build. `usearch` 2.26
//! (a C++ library behind a Rust binding) recalls 0.96 at a search width of 128 in about
//! 1 ms, but took 400 - 580 s to build on two threads (840 s of CPU) and needs a C++
//! toolchain. This inverted file recalls 1.0 at about 1 ms after a 94 s build (164 s of
//! CPU), in pure Rust, and answers the same whatever the threads. A graph search has to find
//! its way between clusters; the inverted file compares the query with every centre, so it
//! cannot lose its way. Its weakness is data without clusters: on uniformly random vectors
//! few of the true neighbours are in the nearest lists (see `benches/RESULTS.md`,
//! MEM-RECALL-ANN), where more probes or the exact scan are the answer. The lists are found
//! once and kept: vectors written later join the nearest list, and the lists are found
//! again each time the memory has grown fourfold.
//!
//! What it does, precisely:
//!
//! - until the memory holds [`TRAIN_MIN`] vectors, there is one list and no centres (and
//!   below [`AnnOptions::min_vectors`] recall never consults the index at all);
//! - training: [`AnnOptions::lists`] centres (by default `4 * sqrt(n)`), started from
//!   evenly spaced vectors of a seeded sample of [`SAMPLE_PER_LIST`] vectors per list, moved
//!   [`ITERATIONS`] times to the normalised mean of the sample vectors nearest to them; a
//!   centre left with nothing takes the sample vector farthest from its own centre. Then
//!   every vector is put in the list of its nearest centre. It runs when the index first
//!   holds [`TRAIN_MIN`] vectors and again each time it has grown fourfold since, inside
//!   the write that crossed the mark (which therefore takes longer, growing with the
//!   memory: the whole build of 1,000,000 vectors of 384 dimensions, trainings included,
//!   took 164 s of CPU);
//! - calibration: after each training, the number of lists a recall reads is set to what
//!   [`CALIBRATE_QUERIES`] held-out vectors need for [`CALIBRATE_RECALL`] of their 10
//!   nearest neighbours in the sample, never below [`AnnOptions::probes`], and lists whose
//!   centre scores within the matching margin of the query's best centre are read too;
//! - everything is deterministic: the same vectors inserted in the same order give the
//!   same lists and the same answers, whatever [`AnnOptions::threads`] is (threads only
//!   split the work of finding each vector's nearest centre, which does not depend on the
//!   split).
//!
//! How it stays exact where it must:
//!
//! - every row with a vector is inserted when it is indexed (remember, revise, import,
//!   migration, and the rebuild on open), keyed by its row; a new version is a new row and
//!   its predecessor stays in the index for recall `as_of` an earlier time;
//! - the index never decides visibility: it proposes candidates, each is checked against
//!   the query's filter (scope, tiers, system and world time, kinds, metadata, deleted and
//!   retracted rows) and scored with the exact cosine from the matrix. Pruned lineages stay
//!   as dead entries that the filter drops;
//! - when few rows can pass the filter, or the filtered candidates are fewer than asked,
//!   the recall falls back to the exact scan; below [`AnnOptions::min_vectors`] it never uses
//!   the index at all.

use crate::index::Cand;
use crate::MemoryError;

/// Settings of the approximate vector index, given to [`crate::MemoryBuilder::ann`]
/// (feature `ann`).
///
/// Defaults and why:
///
/// - `min_vectors = 50_000`: below that the exact scan (at most 77 MB of 384-dimension
///   vectors) answers in a few milliseconds and is exact; the index is still kept up to
///   date so that crossing the threshold costs nothing;
/// - `lists = 0` (automatic): `4 * sqrt(n)` lists when the index trains on `n` vectors, the
///   lower end of the usual advice for inverted files: more lists make each probe cheaper
///   and the scan of the centres dearer;
/// - `probes = 16`: the fewest lists a recall reads (more when the filter lets few of their
///   vectors through). It is a floor: each training measures, on its own sample, how many
///   lists hold 95 % of the 10 nearest neighbours of 64 held-out vectors, and recalls read
///   that many if it is more. Clustered data, like embeddings of text, needs few (on the
///   benchmark's data, 1,000,000 vectors around 2,000 centres, recall@10 was 1.0 at 8 and at
///   16); data without clusters needs most of the lists, and gets them, at a cost close to
///   half the exact scan's (uniformly random vectors: recall@10 0.91 at 100,000; see
///   `benches/RESULTS.md`). Raise it for recall, lower it for speed;
/// - `candidates = 96`: how many of the probed vectors, best first by their fixed-point
///   score, are scored exactly and checked against the filter; about ten times the usual
///   `k` (a recall asking for more looks at more);
/// - `threads = 1`: the threads that find the nearest centre of each vector of a batch
///   (`remember_many`, a page loaded when the memory opens) and of the training sample; with
///   more than one the memory owns a pool of that many threads, spawned the first time a
///   batch needs them. The default spawns nothing, as the library promises; answers are the
///   same either way;
/// - `min_share = 0.05`: when the query's filters let through less than 5 % of the rows,
///   the index would have to be read 20 times wider to find enough of them, so the exact
///   scan (which then touches only the passing rows) answers instead.
///
/// ```
/// use aios_memory::AnnOptions;
/// let o = AnnOptions::default().probes(32).min_vectors(100_000).threads(2);
/// assert_eq!((o.probes, o.min_vectors, o.candidates), (32, 100_000, 96));
/// assert_eq!((o.lists, o.threads), (0, 2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct AnnOptions {
    /// Below this many vectors in the memory, recall scans exactly.
    pub min_vectors: usize,
    /// How many lists the vectors are grouped into at each training (`0`: `4 * sqrt(n)`;
    /// at most 65,536).
    pub lists: usize,
    /// How many of the nearest lists a recall reads at least (at least 1); training raises
    /// it where the data needs more.
    pub probes: usize,
    /// How many candidates a recall scores exactly (at least 1); a recall asking for more
    /// hits looks at more.
    pub candidates: usize,
    /// The smallest estimated share of rows passing the filters for which the index is
    /// used (`0..=1`).
    pub min_share: f32,
    /// Threads that find the nearest centres of a batch (`1..=256`; 1: the writing thread
    /// alone, nothing spawned).
    pub threads: usize,
}

impl Default for AnnOptions {
    fn default() -> Self {
        Self {
            min_vectors: 50_000,
            lists: 0,
            probes: 16,
            candidates: 96,
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

    /// Sets [`AnnOptions::lists`].
    pub fn lists(mut self, n: usize) -> Self {
        self.lists = n;
        self
    }

    /// Sets [`AnnOptions::probes`].
    pub fn probes(mut self, n: usize) -> Self {
        self.probes = n;
        self
    }

    /// Sets [`AnnOptions::candidates`].
    pub fn candidates(mut self, n: usize) -> Self {
        self.candidates = n;
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
        if self.lists > MAX_LISTS {
            return Err(MemoryError::invalid(
                "ann.lists",
                format!("`{}` is more than {MAX_LISTS}", self.lists),
            ));
        }
        if self.probes == 0 {
            return Err(MemoryError::invalid(
                "ann.probes",
                "`0`: a recall must read at least one list",
            ));
        }
        if self.candidates == 0 {
            return Err(MemoryError::invalid(
                "ann.candidates",
                "`0`: a recall must score at least one candidate",
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

/// The most lists an index may have.
pub const MAX_LISTS: usize = 65_536;

/// The index first trains when it holds this many vectors (before, it is one list).
pub const TRAIN_MIN: usize = 1_024;

/// The training sample: this many vectors per list (or every vector, if fewer).
pub const SAMPLE_PER_LIST: usize = 32;

/// How many times training moves the centres.
pub const ITERATIONS: usize = 8;

/// The held-out vectors whose neighbours calibrate the number of lists a recall reads.
pub const CALIBRATE_QUERIES: usize = 64;

// a training always has vectors to hold out beside its sample
const _: () = assert!(TRAIN_MIN > 2 * CALIBRATE_QUERIES);

/// The share of the calibration queries' 10 nearest neighbours that the lists read must
/// hold.
pub const CALIBRATE_RECALL: f64 = 0.95;

/// The most candidates a recall scores before it falls back to the exact scan.
const MAX_CANDIDATES: usize = 4096;

/// The seed of the training sample.
const SEED: u64 = 0x1f5a_7c3d_0e29_b481;

/// One list: its vectors' rows, and their fixed-point vectors side by side.
#[derive(Debug, Default)]
struct List {
    rows: Vec<u32>,
    codes: Vec<i16>,
}

/// The inverted file, keyed by index row.
pub(crate) struct Ann {
    pub options: AnnOptions,
    /// How many vectors the index holds.
    pub nodes: usize,
    /// The vectors' dimension (0 until the first one).
    dims: usize,
    /// The centres, `lists.len() * dims` fixed-point components; empty until the first
    /// training (then everything is in the one list).
    centres: Vec<i16>,
    lists: Vec<List>,
    /// How many vectors the last training saw (0: never trained).
    trained_at: usize,
    /// How many lists a recall reads: [`AnnOptions::probes`], or more if the last training
    /// measured that its data needs more ([`Ann::calibrate`]).
    probes: usize,
    /// Lists whose centre scores within this much (fixed point) of the query's best centre
    /// are read too, whatever their rank: the margin the last training measured for its
    /// held-out vectors ([`Ann::calibrate`]). A query far from every cluster, whose centres
    /// all score about the same, so reads more lists than one inside a cluster.
    gap: i64,
    /// The threads finding nearest centres, once a batch needed them (`options.threads > 1`).
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Ann {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ann")
            .field("options", &self.options)
            .field("nodes", &self.nodes)
            .field("lists", &self.lists.len())
            .field("trained_at", &self.trained_at)
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl Ann {
    /// An empty index (the options are checked by the builder).
    pub fn new(options: AnnOptions) -> Self {
        Self {
            options,
            nodes: 0,
            dims: 0,
            centres: Vec::new(),
            lists: vec![List::default()],
            trained_at: 0,
            probes: options.probes,
            gap: 0,
            pool: None,
        }
    }

    /// How many lists the vectors are in (1 before the first training).
    #[cfg(test)]
    pub fn list_count(&self) -> usize {
        self.lists.len()
    }

    /// Adds the unit vectors of rows, in order, each to the list of its nearest centre;
    /// trains again whenever the index reaches the next mark. The marks fall between
    /// vectors, not between batches, so how the rows were batched changes nothing.
    pub fn insert_many(&mut self, rows: &[(&[f32], u32)]) {
        let mut rest = rows;
        while !rest.is_empty() {
            let due = if self.trained_at == 0 {
                TRAIN_MIN
            } else {
                self.trained_at.saturating_mul(4)
            };
            let take = due.saturating_sub(self.nodes).clamp(1, rest.len());
            let (now, later) = rest.split_at(take);
            self.add(now);
            rest = later;
            if self.nodes >= due {
                self.train();
            }
        }
    }

    /// Adds rows to the lists of their nearest centres, without training.
    fn add(&mut self, rows: &[(&[f32], u32)]) {
        let Some(d) = rows.first().map(|(v, _)| v.len()) else {
            return;
        };
        if self.dims == 0 {
            self.dims = d;
        }
        if d != self.dims || d == 0 || rows.iter().any(|(v, _)| v.len() != d) {
            // the memory checks dimensions before indexing: not reachable, but a vector of
            // another size must never be read as one of this size (the index then holds
            // fewer vectors than the memory, and recall scans exactly)
            return;
        }
        let mut codes = Vec::with_capacity(rows.len() * d);
        for (v, _) in rows {
            quantise(v, &mut codes);
        }
        let nearest = self.nearest_all(&codes);
        for ((code, (_, row)), list) in codes.chunks_exact(d).zip(rows).zip(nearest) {
            self.push(list, *row, code);
        }
        self.nodes += rows.len();
    }

    /// Appends a row and its fixed-point vector to list `list`.
    fn push(&mut self, list: u32, row: u32, code: &[i16]) {
        if let Some(list) = self.lists.get_mut(list as usize) {
            list.rows.push(row);
            list.codes.extend_from_slice(code);
        }
    }

    /// The list of each fixed-point vector of `codes` (all 0 before the first training).
    fn nearest_all(&mut self, codes: &[i16]) -> Vec<u32> {
        if self.centres.is_empty() {
            return vec![0; codes.len() / self.dims.max(1)];
        }
        self.nearest_scored(codes)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    /// Finds the centres again on everything the index holds and regroups the vectors.
    fn train(&mut self) {
        let d = self.dims;
        let n = self.nodes;
        let want = if self.options.lists > 0 {
            self.options.lists
        } else {
            (4.0 * (n as f64).sqrt()).round() as usize
        };
        let k = want.clamp(1, MAX_LISTS).min(n.max(1));
        // every vector, in list order (a stable order: the lists were built deterministically)
        let mut all_rows: Vec<u32> = Vec::with_capacity(n);
        let mut all_codes: Vec<i16> = Vec::with_capacity(n * d);
        for list in std::mem::take(&mut self.lists) {
            all_rows.extend_from_slice(&list.rows);
            all_codes.extend_from_slice(&list.codes);
        }
        // the sample: a seeded choice without repeats (a partial Fisher-Yates shuffle); the
        // calibration's queries are held out of it, so that the estimate is that of vectors
        // the centres were not fitted to (a training sees at least TRAIN_MIN vectors)
        let size = (k * SAMPLE_PER_LIST).min(n.saturating_sub(CALIBRATE_QUERIES));
        let k = k.min(size.max(1));
        let drawn = (size + CALIBRATE_QUERIES).min(n);
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = aios_core::SeededRng::new(SEED);
        for i in 0..drawn {
            let j = i + (rng.next_u64() % (n - i) as u64) as usize;
            order.swap(i, j);
        }
        order.truncate(drawn);
        let mut held_out = order.split_off(size);
        // in row order, so that the sample is the same whatever order the lists held it in
        let by_row = |i: &u32| all_rows.get(*i as usize).copied().unwrap_or(u32::MAX);
        order.sort_unstable_by_key(by_row);
        held_out.sort_unstable_by_key(by_row);
        let gather = |positions: &[u32]| -> Vec<i16> {
            positions
                .iter()
                .flat_map(|&i| {
                    let i = i as usize;
                    all_codes.get(i * d..(i + 1) * d).unwrap_or_default()
                })
                .copied()
                .collect()
        };
        let sample = gather(&order);
        let queries = gather(&held_out);
        // start from evenly spaced sample vectors
        let step = size / k;
        self.centres = (0..k)
            .flat_map(|c| {
                sample
                    .get(c * step * d..(c * step + 1) * d)
                    .unwrap_or_default()
            })
            .copied()
            .collect();
        for _ in 0..ITERATIONS {
            let assigned = self.nearest_scored(&sample);
            let mut sums = vec![0f64; k * d];
            let mut counts = vec![0usize; k];
            for (code, (c, _)) in sample.chunks_exact(d).zip(&assigned) {
                let c = *c as usize;
                if let (Some(sum), Some(count)) =
                    (sums.get_mut(c * d..(c + 1) * d), counts.get_mut(c))
                {
                    for (s, x) in sum.iter_mut().zip(code) {
                        *s += f64::from(*x);
                    }
                    *count += 1;
                }
            }
            // centres left with nothing take the sample vectors farthest from their own
            let mut farthest: Vec<usize> = (0..assigned.len()).collect();
            farthest.sort_by(|a, b| {
                let (sa, sb) = (assigned[*a].1, assigned[*b].1);
                sa.cmp(&sb).then(a.cmp(b))
            });
            let mut spare = farthest.into_iter();
            let mut next = Vec::with_capacity(k * d);
            for (c, count) in counts.iter().enumerate() {
                let mut v: Vec<f32> = if *count > 0 {
                    sums[c * d..(c + 1) * d].iter().map(|x| *x as f32).collect()
                } else {
                    match spare.next() {
                        Some(i) => sample[i * d..(i + 1) * d]
                            .iter()
                            .map(|x| f32::from(*x))
                            .collect(),
                        None => self.centres[c * d..(c + 1) * d]
                            .iter()
                            .map(|x| f32::from(*x))
                            .collect(),
                    }
                };
                crate::index::normalise(&mut v);
                quantise(&v, &mut next);
            }
            self.centres = next;
        }
        (self.probes, self.gap) = self.calibrate(&sample, &queries);
        // regroup everything around the final centres
        let lists = self.nearest_all(&all_codes);
        self.lists = (0..k).map(|_| List::default()).collect();
        for ((code, row), l) in all_codes.chunks_exact(d).zip(all_rows).zip(lists) {
            self.push(l, row, code);
        }
        self.trained_at = n;
    }

    /// How many lists a recall must read so that [`CALIBRATE_RECALL`] of the 10 nearest
    /// neighbours in the training `sample` of [`CALIBRATE_QUERIES`] vectors are in the lists
    /// read: at least [`AnnOptions::probes`]. The queries are `held_out`: vectors outside the
    /// sample. Data
    /// with clusters needs few lists; data without them (where every vector is about as far
    /// from every other) needs most of them, and then reads them rather than silently
    /// missing the neighbours. Also returns the margin below the best centre's score within
    /// which the same share of those neighbours' lists scored: rank and margin both bound
    /// what a recall reads, so that a query unlike the held-out ones (far from every
    /// cluster, its centres all scoring about the same) reads more lists, not fewer.
    fn calibrate(&mut self, sample: &[i16], held_out: &[i16]) -> (usize, i64) {
        let d = self.dims.max(1);
        let k = self.centres.len() / d;
        let floor = self.options.probes.min(k.max(1));
        let n = sample.len() / d;
        if k <= floor || n < 2 {
            return (floor, 0);
        }
        let list_of: Vec<u32> = self
            .nearest_scored(sample)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        let by_score = |a: &(i64, usize), b: &(i64, usize)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        // for each query, the rank (by centre score) of the list of each of its neighbours
        let mut ranks: Vec<usize> = Vec::with_capacity(CALIBRATE_QUERIES * 10);
        // and how far below the best centre's score its centre scored
        let mut gaps: Vec<i64> = Vec::with_capacity(CALIBRATE_QUERIES * 10);
        for q in held_out.chunks_exact(d) {
            let mut near: Vec<(i64, usize)> = sample
                .chunks_exact(d)
                .enumerate()
                .map(|(i, v)| (dot_q(v, q), i))
                .collect();
            let top = 10.min(near.len());
            if top < near.len() {
                near.select_nth_unstable_by(top, by_score);
            }
            let mut order: Vec<(i64, usize)> = self
                .centres
                .chunks_exact(d)
                .enumerate()
                .map(|(c, v)| (dot_q(v, q), c))
                .collect();
            order.sort_unstable_by(by_score);
            let mut rank = vec![0usize; k];
            for (r, (_, c)) in order.iter().enumerate() {
                if let Some(slot) = rank.get_mut(*c) {
                    *slot = r;
                }
            }
            let best = order.first().map_or(0, |(s, _)| *s);
            for (_, i) in &near[..top] {
                let list = list_of.get(*i).copied().unwrap_or(0) as usize;
                let r = rank.get(list).copied().unwrap_or(k - 1);
                ranks.push(r);
                gaps.push(order.get(r).map_or(0, |(s, _)| best - s));
            }
        }
        if ranks.is_empty() {
            return (floor, 0);
        }
        ranks.sort_unstable();
        gaps.sort_unstable();
        let at = ((ranks.len() as f64 * CALIBRATE_RECALL).ceil() as usize).clamp(1, ranks.len());
        let needed = ranks.get(at - 1).map_or(k, |r| r + 1);
        let gap = gaps.get(at - 1).copied().unwrap_or(0);
        (needed.clamp(floor, k), gap)
    }

    /// The nearest centre of each vector of `codes`, with its fixed-point similarity; split
    /// between [`AnnOptions::threads`] threads when there is enough to share.
    fn nearest_scored(&mut self, codes: &[i16]) -> Vec<(u32, i64)> {
        /// Vectors per piece of work handed to a thread.
        const CHUNK: usize = 256;
        let d = self.dims.max(1);
        if self.options.threads > 1 && codes.len() > CHUNK * d && self.pool.is_none() {
            // a pool that cannot be built (no threads to spare) leaves the serial path
            self.pool = rayon::ThreadPoolBuilder::new()
                .num_threads(self.options.threads)
                .thread_name(|i| format!("aios-memory-ann-{i}"))
                .build()
                .ok();
        }
        let centres = &self.centres;
        match &self.pool {
            Some(pool) if codes.len() > CHUNK * d => {
                use rayon::prelude::*;
                pool.install(|| {
                    codes
                        .par_chunks(CHUNK * d)
                        .flat_map_iter(|chunk| {
                            chunk.chunks_exact(d).map(|code| nearest(centres, d, code))
                        })
                        .collect()
                })
            }
            _ => codes
                .chunks_exact(d)
                .map(|code| nearest(centres, d, code))
                .collect(),
        }
    }

    /// How many candidates to score to yield `want` rows when about `share` of them pass,
    /// with room for the estimate being off; `None` when that is more than the index will
    /// score.
    pub fn width(&self, want: usize, share: f32) -> Option<usize> {
        let needed = (want as f32 * 2.0 / share.max(1e-6)).ceil();
        let ef = self.options.candidates.max(want).max(needed as usize);
        (ef <= MAX_CANDIDATES).then_some(ef)
    }

    /// Up to `ef` rows near `query` that pass `passes`, scored exactly by `similarity`,
    /// best first. Reads the [`AnnOptions::probes`] lists nearest to the query, and more
    /// while fewer than `ef` of their vectors pass.
    pub fn search(
        &self,
        query: &[f32],
        ef: usize,
        passes: impl Fn(u32) -> bool,
        similarity: impl Fn(u32) -> Option<f32>,
    ) -> Vec<Cand> {
        let d = self.dims;
        if query.len() != d || d == 0 {
            return Vec::new();
        }
        let mut q = Vec::with_capacity(d);
        quantise(query, &mut q);
        // the lists, nearest centre first (the one list before training)
        let mut order: Vec<(i64, u32)> = self
            .centres
            .chunks_exact(d)
            .enumerate()
            .map(|(i, c)| (dot_q(c, &q), i as u32))
            .collect();
        if order.is_empty() {
            order.push((0, 0));
        }
        // the calibrated count, or every list within the calibrated margin of the best
        let best = order.iter().map(|(s, _)| *s).max().unwrap_or(0);
        let within = order.iter().filter(|(s, _)| best - s <= self.gap).count();
        let probes = self.probes.max(within).min(order.len());
        let by_score = |a: &(i64, u32), b: &(i64, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if probes < order.len() {
            order.select_nth_unstable_by(probes, by_score);
        }
        order[..probes].sort_unstable_by(by_score);
        let mut sorted_rest = false;
        let mut scanned: Vec<(i64, u32)> = Vec::new();
        let mut out: Vec<Cand> = Vec::new();
        let mut read = 0;
        while read < order.len() {
            // the first `probes` lists, then twice as many each time while too few pass
            let upto = if read == 0 {
                probes
            } else {
                (read * 2).min(order.len())
            };
            if upto > probes && !sorted_rest {
                order[probes..].sort_unstable_by(by_score);
                sorted_rest = true;
            }
            for &(_, l) in &order[read..upto] {
                if let Some(list) = self.lists.get(l as usize) {
                    for (code, row) in list.codes.chunks_exact(d).zip(&list.rows) {
                        scanned.push((dot_q(code, &q), *row));
                    }
                }
            }
            read = upto;
            // the best by fixed-point score first; only those are checked and rescored.
            // Sorting everything read would cost more than reading it: the best `2 * ef`
            // are set apart and sorted first, the rest only if too few of those pass.
            out.clear();
            let head = (2 * ef).min(scanned.len());
            if head < scanned.len() {
                scanned.select_nth_unstable_by(head, by_score);
            }
            scanned[..head].sort_unstable_by(by_score);
            let mut sorted_tail = false;
            let mut i = 0;
            while i < scanned.len() && out.len() < ef {
                if i == head && !sorted_tail {
                    scanned[head..].sort_unstable_by(by_score);
                    sorted_tail = true;
                }
                let row = scanned[i].1;
                if passes(row) {
                    if let Some(score) = similarity(row) {
                        out.push(Cand { score, row });
                    }
                }
                i += 1;
            }
            if out.len() >= ef {
                break;
            }
        }
        out.sort_by(|a, b| b.cmp(a));
        out
    }
}

/// The nearest of the fixed-point `centres` (each `d` long) to `code`, and its score; ties
/// go to the first.
#[inline]
fn nearest(centres: &[i16], d: usize, code: &[i16]) -> (u32, i64) {
    let mut best = (0u32, i64::MIN);
    for (i, c) in centres.chunks_exact(d).enumerate() {
        let s = dot_q(c, code);
        if s > best.1 {
            best = (i as u32, s);
        }
    }
    best
}

/// The fixed-point scale of the index's copies of the vectors: components of a unit vector
/// lie within `-1..=1`, so `x * 32767` always fits an `i16`, with a resolution of 3e-5.
const SCALE: f32 = 32767.0;

/// A unit vector in the index's fixed-point form (half the bytes of `f32`: a probe is
/// bound by reading its vectors from memory, and the exact similarity of every candidate
/// is computed again from the `f32` matrix anyway).
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
///
/// Never inlined: on its own it compiles to 16-bit multiply-adds (about 13 G per second on
/// the benchmark machine), but inlined into the search's loop over a list the compiler kept
/// it scalar, four times slower (seen in a profile of MEM-RECALL-ANN).
#[inline(never)]
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
        }
    }

    fn unit_vectors(n: usize, centres: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = aios_core::SeededRng::new(seed);
        let mut draw = |scale: f32| -> Vec<f32> {
            (0..24)
                .map(|_| scale * (rng.next_f64() as f32 - 0.5))
                .collect()
        };
        let cs: Vec<Vec<f32>> = (0..centres).map(|_| draw(1.0)).collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = cs[i % centres]
                    .iter()
                    .zip(draw(0.3))
                    .map(|(c, x)| c + x)
                    .collect();
                crate::index::normalise(&mut v);
                v
            })
            .collect()
    }

    fn build(vectors: &[Vec<f32>], options: AnnOptions, batch: usize) -> Ann {
        let mut ann = Ann::new(options);
        let rows: Vec<(&[f32], u32)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), i as u32))
            .collect();
        for chunk in rows.chunks(batch) {
            ann.insert_many(chunk);
        }
        ann
    }

    fn exact_top(vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<Cand> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| Cand {
                score: dot(v, q),
                row: i as u32,
            })
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        all.iter().take(k).map(|c| c.row).collect()
    }

    /// Training happens at the first mark and at each fourfold growth, every vector is in
    /// exactly one list, and a search reading every list is the exact answer.
    #[test]
    fn trains_at_the_marks_and_keeps_every_vector_once() {
        let vectors = unit_vectors(TRAIN_MIN * 4 + 100, 40, 3);
        let mut ann = build(&vectors[..TRAIN_MIN - 1], AnnOptions::default(), 1000);
        assert_eq!((ann.list_count(), ann.trained_at), (1, 0));
        let rest: Vec<(&[f32], u32)> = vectors
            .iter()
            .enumerate()
            .skip(TRAIN_MIN - 1)
            .map(|(i, v)| (v.as_slice(), i as u32))
            .collect();
        ann.insert_many(&rest[..1]);
        let lists = (4.0 * (TRAIN_MIN as f64).sqrt()).round() as usize;
        assert_eq!((ann.list_count(), ann.trained_at), (lists, TRAIN_MIN));
        ann.insert_many(&rest[1..]);
        assert_eq!(ann.trained_at, TRAIN_MIN * 4, "trained again at four times");
        let mut rows: Vec<u32> = ann.lists.iter().flat_map(|l| l.rows.clone()).collect();
        rows.sort_unstable();
        assert_eq!(rows, (0..vectors.len() as u32).collect::<Vec<_>>());
        for l in &ann.lists {
            assert_eq!(l.codes.len(), l.rows.len() * 24);
        }
        // reading every list is the exact scan
        let mut all = ann;
        all.probes = MAX_LISTS;
        for q in unit_vectors(10, 7, 4) {
            let found = all.search(&q, 10, |_| true, |r| Some(dot(&vectors[r as usize], &q)));
            let rows: Vec<u32> = found.iter().map(|c| c.row).collect();
            assert_eq!(rows, exact_top(&vectors, &q, 10));
        }
    }

    /// The same vectors in the same order give the same index whatever the batches and the
    /// threads; the filter is always applied, and too few passing rows widen the probe.
    #[test]
    fn deterministic_filtered_and_widening() {
        let vectors = unit_vectors(6000, 30, 5);
        let a = build(&vectors, AnnOptions::default(), 6000);
        let b = build(&vectors, AnnOptions::default().threads(2), 333);
        assert_eq!(a.centres, b.centres);
        for (x, y) in a.lists.iter().zip(&b.lists) {
            assert_eq!((&x.rows, &x.codes), (&y.rows, &y.codes));
        }
        let q = &vectors[17];
        let sim = |r: u32| Some(dot(&vectors[r as usize], q));
        let one = a.search(q, 20, |r| r % 97 == 0, sim);
        assert_eq!(one.len(), 20, "more lists were read until 20 passed");
        assert!(one.iter().all(|c| c.row % 97 == 0));
        assert!(one.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(a.search(q, 5, |_| false, sim).is_empty());
        // a vector finds itself first
        assert_eq!(
            a.search(q, 10, |_| true, sim).first().map(|c| c.row),
            Some(17)
        );
    }

    /// Data without clusters needs more lists than the floor to reach its neighbours: the
    /// training measures that and reads them, instead of answering with a poor recall;
    /// clustered data keeps a small probe.
    #[test]
    fn calibration_widens_the_probe_where_the_data_needs_it() {
        let recall = |ann: &Ann, vectors: &[Vec<f32>], queries: &[Vec<f32>]| {
            let mut found = 0;
            for q in queries {
                let sim = |r: u32| Some(dot(&vectors[r as usize], q));
                let got: Vec<u32> = ann
                    .search(q, 10, |_| true, sim)
                    .iter()
                    .map(|c| c.row)
                    .collect();
                found += exact_top(vectors, q, 10)
                    .iter()
                    .filter(|r| got.contains(r))
                    .count();
            }
            found as f64 / (10 * queries.len()) as f64
        };
        let mut rng = aios_core::SeededRng::new(9);
        let mut uniform = |n: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|_| {
                    let mut v: Vec<f32> = (0..64).map(|_| rng.next_f64() as f32 - 0.5).collect();
                    crate::index::normalise(&mut v);
                    v
                })
                .collect()
        };
        let flat = uniform(5000);
        let flat_queries = uniform(30);
        let options = AnnOptions::default().probes(4);
        let a = build(&flat, options, 1000);
        assert!(
            a.probes > 4 * 4,
            "uniform data: {} lists of {}",
            a.probes,
            a.list_count()
        );
        let r = recall(&a, &flat, &flat_queries);
        assert!(
            r >= 0.85,
            "uniform recall@10 {r} reading {} lists",
            a.probes
        );

        let clustered = unit_vectors(5000, 40, 11);
        let b = build(&clustered, options, 1000);
        assert!(b.probes < a.probes, "{} vs {}", b.probes, a.probes);
        let queries = unit_vectors(30, 40, 11);
        let r = recall(&b, &clustered, &queries[..]);
        assert!(
            r >= 0.9,
            "clustered recall@10 {r} reading {} lists",
            b.probes
        );
    }

    /// Extreme list counts are clamped to what the data allows and still answer: one list
    /// (an exhaustive fixed-point scan) and more lists than vectors.
    #[test]
    fn extreme_list_counts_still_answer() {
        let vectors = unit_vectors(1500, 12, 13);
        let q = &vectors[3];
        let sim = |r: u32| Some(dot(&vectors[r as usize], q));
        let one = build(&vectors, AnnOptions::default().lists(1), 500);
        assert_eq!(one.list_count(), 1);
        let rows: Vec<u32> = one
            .search(q, 10, |_| true, sim)
            .iter()
            .map(|c| c.row)
            .collect();
        assert_eq!(
            rows,
            exact_top(&vectors, q, 10),
            "one list is the exact answer"
        );
        let many = build(&vectors, AnnOptions::default().lists(MAX_LISTS), 500);
        assert!(many.list_count() <= 1024, "{} lists", many.list_count());
        let found = many.search(q, 10, |_| true, sim);
        assert_eq!(found.len(), 10);
        assert_eq!(found[0].row, 3, "a vector finds itself first");
    }
}
