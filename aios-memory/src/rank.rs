//! Ranking: what each recall mode orders by, and the boosts, computed over the index.
//!
//! Every ranking here is a total order over the rows a query can see that does not depend on
//! the query's `k` (ties go to the earlier row), so the top `k` is always a prefix of the top
//! `k + 1`.

use std::collections::HashMap;

use crate::index::{Cand, Filter, Index, TopK};
use crate::{RecallWeights, ScoreBreakdown};

/// The signals a recall runs, resolved from its mode and inputs.
pub(crate) enum Signals<'a> {
    /// No text and no vector: every visible row, by boosts alone.
    Listing,
    /// Cosine similarity to a unit query vector.
    Vector(&'a [f32]),
    /// BM25 of the text, normalised by the best score.
    Keyword(&'a str),
    /// Reciprocal-rank fusion of both.
    Hybrid(&'a [f32], &'a str),
}

/// Computes the recency and importance boosts of rows at one reference time.
struct Boosts<'a> {
    index: &'a Index,
    weights: &'a RecallWeights,
    reference_us: i64,
    half_life_s: f64,
}

impl Boosts<'_> {
    /// An upper bound of `recency + importance` for any row (with room for rounding).
    fn max(&self) -> f32 {
        (self.weights.recency + self.weights.importance) * (1.0 + 1e-5) + 1e-9
    }

    /// `(recency, importance)` of a row.
    fn of(&self, row: u32) -> (f32, f32) {
        let (Some(hot), Some(cold)) = (
            self.index.hot.get(row as usize),
            self.index.cold.get(row as usize),
        ) else {
            return (0.0, 0.0);
        };
        // when the statement became true, if the record says; else when it was recorded
        let since = if cold.valid_from == i64::MIN {
            hot.recorded
        } else {
            cold.valid_from
        };
        let age_s = (self.reference_us.saturating_sub(since)).max(0) as f64 / 1e6;
        let recency = self.weights.recency * 0.5f64.powf(age_s / self.half_life_s) as f32;
        // written importance is clamped to 0..=1; an imported record is not checked
        let stored = if cold.importance.is_nan() {
            0.0
        } else {
            cold.importance.clamp(0.0, 1.0)
        };
        let importance = self.weights.importance * stored;
        (recency, importance)
    }

    /// The breakdown of a row with relevance `fused`.
    fn score(&self, row: u32, fused: f32) -> ScoreBreakdown {
        let (recency, importance) = self.of(row);
        ScoreBreakdown {
            fused,
            recency,
            importance,
            total: total(fused, recency, importance),
            ..ScoreBreakdown::default()
        }
    }
}

/// What hits are ordered by (one expression, so every path rounds alike).
#[inline]
fn total(fused: f32, recency: f32, importance: f32) -> f32 {
    fused + recency + importance
}

/// The 1-based rank of `c` among `all` (best first by score, then lower row).
fn rank_in(all: &[Cand], c: Cand) -> usize {
    1 + all.iter().filter(|o| **o > c).count()
}

/// The best `k` rows for `signals` under `filter`, best first, with their breakdowns.
pub(crate) fn rank(
    index: &Index,
    filter: &Filter,
    signals: Signals<'_>,
    k: usize,
    weights: &RecallWeights,
    reference_us: i64,
) -> Vec<(u32, ScoreBreakdown)> {
    let boosts = Boosts {
        index,
        weights,
        reference_us,
        half_life_s: weights.recency_half_life.as_secs_f64().max(1e-6),
    };
    if k == 0 {
        return Vec::new();
    }
    match signals {
        Signals::Listing => {
            let mut top = TopK::new(k);
            for row in index.matching_rows(filter) {
                let (r, i) = boosts.of(row);
                top.push(Cand {
                    score: total(0.0, r, i),
                    row,
                });
            }
            top.into_sorted()
                .into_iter()
                .map(|c| (c.row, boosts.score(c.row, 0.0)))
                .collect()
        }
        Signals::Vector(q) => {
            let (top, seen) = index.vector_top_by(filter, q, k, boosts.max(), |row, sim| {
                let (r, i) = boosts.of(row);
                total(sim, r, i)
            });
            // every row more similar than a hit was looked at, so ranks among `seen` are exact
            let sims: HashMap<u32, f32> = seen.iter().map(|c| (c.row, c.score)).collect();
            top.into_iter()
                .map(|c| {
                    let sim = sims.get(&c.row).copied().unwrap_or(0.0);
                    let mut s = boosts.score(c.row, sim);
                    s.vector = Some(sim);
                    s.vector_rank = Some(rank_in(
                        &seen,
                        Cand {
                            score: sim,
                            row: c.row,
                        },
                    ));
                    (c.row, s)
                })
                .collect()
        }
        Signals::Keyword(text) => {
            let all = index.keyword_scores(filter, text);
            let best = all.iter().map(|c| c.score).fold(0f32, f32::max);
            if best <= 0.0 {
                return Vec::new();
            }
            let max_boost = boosts.max();
            let mut top = TopK::new(k);
            let mut threshold = f32::NEG_INFINITY;
            for c in &all {
                let rel = c.score / best;
                if rel + max_boost >= threshold {
                    let (r, i) = boosts.of(c.row);
                    top.push(Cand {
                        score: total(rel, r, i),
                        row: c.row,
                    });
                    if let Some(m) = top.min_score() {
                        threshold = m;
                    }
                }
            }
            let by_row: HashMap<u32, f32> = all.iter().map(|c| (c.row, c.score)).collect();
            top.into_sorted()
                .into_iter()
                .map(|c| {
                    let bm25 = by_row.get(&c.row).copied().unwrap_or(0.0);
                    let mut s = boosts.score(c.row, bm25 / best);
                    s.keyword = Some(bm25);
                    s.keyword_rank = Some(rank_in(
                        &all,
                        Cand {
                            score: bm25,
                            row: c.row,
                        },
                    ));
                    (c.row, s)
                })
                .collect()
        }
        Signals::Hybrid(q, text) => hybrid(index, filter, q, text, k, weights, &boosts),
    }
}

/// Reciprocal-rank fusion in bands. Band 0 holds the rows within the top `candidates` of
/// either signal, fused over those ranks; band `b` the further rows within the top
/// `candidates * 2^b`, fused over those deeper ranks. Bands come in order, rows within a band
/// by total. The bands do not depend on `k`; only as many are computed as `k` needs.
fn hybrid(
    index: &Index,
    filter: &Filter,
    q: &[f32],
    text: &str,
    k: usize,
    w: &RecallWeights,
    boosts: &Boosts<'_>,
) -> Vec<(u32, ScoreBreakdown)> {
    let p = w.candidates.max(1);
    let rows = index.hot.len().max(1);
    // the depth of the last band needed: the bands up to depth d hold at least d rows when a
    // signal has that many, so d >= k is enough
    let mut depth = p;
    while depth < k && depth < rows {
        depth = depth.saturating_mul(2);
    }
    let vec_hits = index.vector_top(filter, q, depth);
    let kw_hits = index.keyword_top(filter, text, depth);
    // per row: (vector rank, keyword rank), 1-based
    let mut ranks: HashMap<u32, (Option<usize>, Option<usize>)> = HashMap::new();
    for (i, c) in vec_hits.iter().enumerate() {
        ranks.entry(c.row).or_default().0 = Some(i + 1);
    }
    for (i, c) in kw_hits.iter().enumerate() {
        ranks.entry(c.row).or_default().1 = Some(i + 1);
    }
    let max_fused = (w.vector + w.keyword) / (w.rrf_k + 1.0);
    let mut bands: Vec<Vec<(Cand, ScoreBreakdown)>> = Vec::new();
    for (row, (vr, kr)) in ranks {
        let best = vr.unwrap_or(usize::MAX).min(kr.unwrap_or(usize::MAX));
        // the band: the first depth p * 2^b that reaches the row's best rank
        let (mut band, mut d) = (0usize, p);
        while d < best {
            band += 1;
            d = d.saturating_mul(2);
        }
        let vr = vr.filter(|r| *r <= d);
        let kr = kr.filter(|r| *r <= d);
        let mut fused = 0f32;
        if let Some(r) = vr {
            fused += w.vector / (w.rrf_k + r as f32);
        }
        if let Some(r) = kr {
            fused += w.keyword / (w.rrf_k + r as f32);
        }
        let fused = fused / max_fused;
        let mut s = boosts.score(row, fused);
        s.vector_rank = vr;
        s.vector = vr.and_then(|r| vec_hits.get(r - 1)).map(|c| c.score);
        s.keyword_rank = kr;
        s.keyword = kr.and_then(|r| kw_hits.get(r - 1)).map(|c| c.score);
        if bands.len() <= band {
            bands.resize_with(band + 1, Vec::new);
        }
        if let Some(b) = bands.get_mut(band) {
            b.push((
                Cand {
                    score: s.total,
                    row,
                },
                s,
            ));
        }
    }
    let mut out = Vec::with_capacity(k);
    for mut band in bands {
        band.sort_by_key(|b| std::cmp::Reverse(b.0));
        for (c, s) in band {
            if out.len() == k {
                return out;
            }
            out.push((c.row, s));
        }
    }
    out
}
