//! In-process retrieval indexes, rebuilt from the store: a contiguous f32 matrix for exact
//! vector search, an inverted index for BM25, and compact per-row metadata for filtering.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use aios_core::{MemoryId, Timestamp};

use crate::{KeywordOptions, MemoryKind, MemoryRecord, Metadata, Scope, Stemming, Tier};

pub(crate) const NONE: u32 = u32::MAX;
const FLAG_TOMBSTONE: u8 = 1;
const FLAG_DELETED: u8 = 2;
const FLAG_PINNED: u8 = 4;

/// A fast multiplicative hasher for the index's maps (keys are ids, interned scopes and
/// words; the maps are private to the process).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxBuild;

impl BuildHasher for FxBuild {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

pub(crate) struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    /// Mixes high bits into low ones (a multiply only carries upwards, and the map picks
    /// buckets by the low bits).
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

type FxMap<K, V> = HashMap<K, V, FxBuild>;

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

    /// The lowest score kept, once `k` are kept.
    #[inline]
    pub fn min_score(&self) -> Option<f32> {
        if self.heap.len() < self.k {
            return None;
        }
        self.heap.peek().map(|r| r.0.score)
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Cand> {
        let mut v: Vec<Cand> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

/// The dot product, written as 16 independent lanes over fixed-size arrays so the compiler
/// emits full-width vector loads, multiplies and adds.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        if let (Ok(x), Ok(y)) = (<&[f32; 16]>::try_from(x), <&[f32; 16]>::try_from(y)) {
            // indexed on purpose: this form compiles to full-width loads; zipped iterators
            // compile to half-width ones here
            #[allow(clippy::needless_range_loop)]
            for i in 0..16 {
                acc[i] += x[i] * y[i];
            }
        }
    }
    let mut sum = 0f32;
    for (p, q) in ra.iter().zip(rb) {
        sum += p * q;
    }
    let mut quarter = [0f32; 4];
    for (i, h) in quarter.iter_mut().enumerate() {
        *h = (acc[i] + acc[i + 4]) + (acc[i + 8] + acc[i + 12]);
    }
    sum + (quarter[0] + quarter[1]) + (quarter[2] + quarter[3])
}

/// Scales `v` to unit length (a zero vector stays zero).
pub(crate) fn normalise(v: &mut [f32]) {
    let inv = unit_scale(v);
    if inv != 1.0 {
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// The factor that scales `v` to unit length (1 for a zero or non-finite norm).
#[inline]
pub(crate) fn unit_scale(v: &[f32]) -> f32 {
    let n = dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        1.0 / n
    } else {
        1.0
    }
}

/// Whether every value is finite, in lanes the compiler vectorises (`x * 0` is `NaN` exactly
/// for infinities and `NaN`s).
pub(crate) fn all_finite(v: &[f32]) -> bool {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder().iter().fold(0f32, |a, x| a + x * 0.0);
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    (rest + acc.iter().sum::<f32>()) == 0.0
}

/// What an ASCII byte is to the tokenizer: 0 between words, 1 in a word as it is, 2 in a
/// word but uppercase.
const ASCII_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_uppercase() {
            2
        } else if c.is_ascii_alphanumeric() {
            1
        } else {
            0
        };
        b += 1;
    }
    t
};

/// Lowercase alphanumeric word tokens, shared by indexing and querying; borrowed from the
/// text unless lowercasing changes them.
pub(crate) fn tokens(text: &str) -> Tokens<'_> {
    if text.is_ascii() {
        Tokens::Ascii { text, at: 0 }
    } else {
        Tokens::Unicode(text.split(not_alphanumeric as fn(char) -> bool))
    }
}

/// Where the tokenizer splits text that is not ASCII.
fn not_alphanumeric(c: char) -> bool {
    !c.is_alphanumeric()
}

/// The iterator of [`tokens`]: ASCII text is scanned byte by byte through a class table,
/// any other text split at every character that is not alphanumeric.
pub(crate) enum Tokens<'a> {
    /// ASCII text, and where the scan is.
    Ascii {
        /// The text.
        text: &'a str,
        /// The byte the scan resumes at.
        at: usize,
    },
    /// Any other text.
    Unicode(std::str::Split<'a, fn(char) -> bool>),
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Cow<'a, str>;

    #[inline]
    fn next(&mut self) -> Option<Cow<'a, str>> {
        match self {
            Tokens::Ascii { text, at } => {
                // one table load and one test per byte (a `u8` indexes the 256 entries
                // without a bounds check)
                let bytes = text.as_bytes();
                let mut i = *at;
                while ASCII_CLASS[usize::from(*bytes.get(i)?)] == 0 {
                    i += 1;
                }
                let start = i;
                let mut classes = 0u8;
                while let Some(&b) = bytes.get(i) {
                    let c = ASCII_CLASS[usize::from(b)];
                    if c == 0 {
                        break;
                    }
                    classes |= c;
                    i += 1;
                }
                *at = i;
                // ASCII text: every byte offset is a char boundary
                let word = text.get(start..i)?;
                Some(if classes & 2 != 0 {
                    Cow::Owned(word.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(word)
                })
            }
            Tokens::Unicode(split) => loop {
                let w = split.next()?;
                if w.is_empty() {
                    continue;
                }
                return Some(
                    if w.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
                        Cow::Borrowed(w)
                    } else {
                        Cow::Owned(w.chars().flat_map(char::to_lowercase).collect())
                    },
                );
            },
        }
    }
}

/// `word` reduced to its stem by `stemmer` (unchanged without one).
fn stem<'a>(stemmer: Option<&Stem>, word: Cow<'a, str>) -> Cow<'a, str> {
    match stemmer {
        None => word,
        Some(s) => match s.0.stem(&word) {
            Cow::Borrowed(b) if b.len() == word.len() => word,
            stemmed => Cow::Owned(stemmed.into_owned()),
        },
    }
}

#[derive(Debug, Default)]
struct Interner<T> {
    values: Vec<T>,
    ids: FxMap<T, u32>,
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

/// The keyword index: an inverted index whose postings lists grow in row order as records
/// are inserted, so a query reads only the postings of its terms, whatever the size of the
/// memory.
#[derive(Debug, Default)]
struct Bm25 {
    /// Words of up to 15 bytes, packed with their length into an integer (no pointer to
    /// follow, no string comparison).
    short_terms: FxMap<ShortKey, u32>,
    /// Longer words.
    long_terms: FxMap<Box<str>, u32>,
    /// Per term: its postings in row order.
    postings: Vec<Postings>,
    doc_len: Vec<u32>,
    docs: u64,
    total_len: u64,
    options: KeywordOptions,
    stemmer: Option<Arc<Stem>>,
    /// Scratch space of [`Bm25::merge`], kept between batches (when small) so that a run
    /// allocates nothing: a run's postings grouped by term.
    grouped: Vec<Posting>,
    /// Scratch space of the batches [`Index::insert_many`] tokenises itself (kept when
    /// small).
    scratch: Scratch,
}

/// One posting: a row holding a term, and how often it holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Posting {
    row: u32,
    tf: u32,
}

/// The postings a term's list holds in its first segment before it grows by whole segments.
const SEGMENT: usize = 1024;

/// A term's postings in row order, in segments that never move once allocated.
///
/// The first segment grows as a vector does, but never past room for [`SEGMENT`] postings;
/// once full it is set aside and the next is allocated as large as all before it together.
/// So appending never copies the postings a list holds beyond its first segment (a list
/// grown by reallocation copied itself into fresh memory at every doubling: most of the
/// time of appending postings at a million records), the room left unused is at most what
/// a doubling vector leaves, and a list of `n` postings has about `log2(n / SEGMENT)`
/// segments. The segment being filled sits in the
/// list itself, so an append reads nothing else; a short list costs one word more than a
/// vector.
#[derive(Debug, Default)]
struct Postings {
    /// The segment being filled: the last.
    head: Vec<Posting>,
    /// The full segments before it, once there are any.
    full: Option<Box<Full>>,
}

/// The full segments of a [`Postings`] list, and how many postings they hold.
#[derive(Debug, Default)]
struct Full {
    segments: Vec<Vec<Posting>>,
    len: usize,
}

impl Postings {
    /// The postings held.
    fn len(&self) -> usize {
        self.full.as_ref().map_or(0, |f| f.len) + self.head.len()
    }

    /// The segments, in row order.
    fn segments(&self) -> impl Iterator<Item = &[Posting]> {
        self.full
            .iter()
            .flat_map(|f| f.segments.iter().map(Vec::as_slice))
            .chain(std::iter::once(self.head.as_slice()))
    }

    /// Appends `new` (rows above every row held, in order).
    fn extend(&mut self, mut new: &[Posting]) {
        while !new.is_empty() {
            // the first segment grows to `SEGMENT`; a later one is filled to its capacity
            let limit = match self.full {
                Some(_) => self.head.capacity(),
                None => SEGMENT,
            };
            let room = limit.saturating_sub(self.head.len());
            if room == 0 {
                let full = self.full.get_or_insert_with(Default::default);
                let held = full.len + self.head.len();
                let done = std::mem::replace(&mut self.head, Vec::with_capacity(held));
                full.len += done.len();
                full.segments.push(done);
                continue;
            }
            let (now, rest) = new.split_at(room.min(new.len()));
            if self.full.is_none() && self.head.len() + now.len() > self.head.capacity() {
                // grow as a vector would, but never past `SEGMENT`: the first segment keeps
                // its room once set aside
                let want = (self.head.capacity() * 2)
                    .max(self.head.len() + now.len())
                    .clamp(4, SEGMENT);
                self.head.reserve_exact(want - self.head.len());
            }
            self.head.extend_from_slice(now);
            new = rest;
        }
    }
}

/// The English Snowball stemmer, shared by indexing and querying.
pub(crate) struct Stem(rust_stemmers::Stemmer);

impl std::fmt::Debug for Stem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stem(english)")
    }
}

/// A word of up to 15 bytes packed with its length, hashed as two integers (the array's
/// own `Hash` writes a length and then the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShortKey([u64; 2]);

impl std::hash::Hash for ShortKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
        state.write_u64(self.0[1]);
    }
}

/// A word of up to 15 bytes packed with its length.
fn short_key(word: &str) -> Option<ShortKey> {
    let b = word.as_bytes();
    if b.len() > 15 {
        return None;
    }
    // loaded straight from the word, with overlapping loads for the odd lengths: no bytes
    // stored to forward into a wide load, no loop
    let (lo, hi) = b.split_at(b.len().min(8));
    let k = [le_word(lo), le_word(hi) | (b.len() as u64) << 56];
    Some(ShortKey(k))
}

/// Up to 8 bytes as a little-endian integer (zero above them).
#[inline]
fn le_word(b: &[u8]) -> u64 {
    let n = b.len();
    let at = |i: usize| b.get(i).map_or(0, |x| u64::from(*x) << (8 * i));
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, |w| u64::from(u32::from_le_bytes(w)) << (8 * i))
    };
    if n >= 8 {
        b.get(..8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    } else if n >= 4 {
        u32_at(0) | u32_at(n - 4)
    } else if n > 0 {
        at(0) | at(n / 2) | at(n - 1)
    } else {
        0
    }
}

impl Bm25 {
    fn term(&self, word: &str) -> Option<u32> {
        match short_key(word) {
            Some(k) => self.short_terms.get(&k).copied(),
            None => self.long_terms.get(word).copied(),
        }
    }

    /// The id of a batch's term, given one if it is new.
    fn term_or_insert(&mut self, word: &Word) -> u32 {
        let found = match word {
            Word::Short(k) => self.short_terms.get(k),
            Word::Long(w) => self.long_terms.get(w),
        };
        if let Some(id) = found {
            return *id;
        }
        let id = self.postings.len() as u32;
        self.postings.push(Postings::default());
        match word {
            Word::Short(k) => self.short_terms.insert(*k, id),
            Word::Long(w) => self.long_terms.insert(w.clone(), id),
        };
        id
    }

    /// The terms of `text` as the index sees them: [`tokens`], stemmed when configured.
    fn terms<'a>(&'a self, text: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        tokens(text).map(move |t| stem(self.stemmer.as_deref(), t))
    }

    /// The BM25 weight of one posting.
    #[inline]
    fn weight(&self, idf: f32, tf: u32, dl: u32, avgdl: f32) -> f32 {
        let (k1, b) = (self.options.k1, self.options.b);
        let tf = tf as f32;
        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl as f32 / avgdl))
    }

    /// Appends the postings of freshly inserted rows: `rows` pairs each row (in ascending
    /// order, every one below `total_rows` and above every row already indexed) with its text
    /// in `batch`.
    ///
    /// In runs of [`INSERT_RUN`] rows, by a counting sort over the batch's own term numbers
    /// (dense and few, so the counts stay in cache): each term counts its postings in the run,
    /// gets a group of the right size, the postings are scattered into their groups (still in
    /// row order within each), and each group is appended to its term's list in one copy. A
    /// term is looked up in the dictionary once per batch, not once per word.
    fn merge(&mut self, batch: &Tokenized, rows: &[(u32, u32)], total_rows: usize) {
        // one length per row, zero for a row without text (a tombstone)
        if self.doc_len.len() < total_rows {
            self.doc_len.resize(total_rows, 0);
        }
        if rows.is_empty() {
            return;
        }
        let terms = batch.words.len();
        let mut global = vec![NONE; terms];
        let mut count = vec![0u32; terms];
        let mut touched: Vec<u32> = Vec::new();
        let mut grouped = std::mem::take(&mut self.grouped);
        for run in rows.chunks(INSERT_RUN) {
            for &(row, text) in run {
                let len = batch.lens.get(text as usize).copied().unwrap_or(0);
                if let Some(d) = self.doc_len.get_mut(row as usize) {
                    *d = len;
                }
                if len > 0 {
                    self.docs += 1;
                    self.total_len += u64::from(len);
                }
                for &(term, _) in batch.postings_of(text) {
                    if let Some(c) = count.get_mut(term as usize) {
                        if *c == 0 {
                            touched.push(term);
                        }
                        *c += 1;
                    }
                }
            }
            // each touched term's group: its count becomes where its group starts
            let mut start = 0u32;
            for &term in &touched {
                if let Some(c) = count.get_mut(term as usize) {
                    let n = *c;
                    *c = start;
                    start += n;
                }
            }
            grouped.clear();
            grouped.resize(start as usize, Posting::default());
            for &(row, text) in run {
                for &(term, tf) in batch.postings_of(text) {
                    if let Some(c) = count.get_mut(term as usize) {
                        if let Some(slot) = grouped.get_mut(*c as usize) {
                            *slot = Posting { row, tf };
                        }
                        *c += 1;
                    }
                }
            }
            // the run's rows are above every row already indexed, and each group is in row
            // order, so each postings list stays in row order; after the scatter a term's
            // count is where its group ends
            let mut from = 0usize;
            for term in touched.drain(..) {
                let (Some(c), Some(g)) =
                    (count.get_mut(term as usize), global.get_mut(term as usize))
                else {
                    continue;
                };
                let to = *c as usize;
                *c = 0;
                if *g == NONE {
                    if let Some(word) = batch.words.get(term as usize) {
                        *g = self.term_or_insert(word);
                    }
                }
                if let (Some(list), Some(group)) =
                    (self.postings.get_mut(*g as usize), grouped.get(from..to))
                {
                    list.extend(group);
                }
                from = to;
            }
        }
        if grouped.capacity() <= 1 << 16 {
            self.grouped = grouped;
        }
    }
}

/// A term of a [`Tokenized`] batch, as the dictionary keys it.
#[derive(Debug)]
enum Word {
    /// A word of up to 15 bytes.
    Short(ShortKey),
    /// A longer word.
    Long(Box<str>),
}

/// The keyword terms of a batch of texts, found without the index (so before its lock is
/// taken, or on another thread): the batch's distinct terms numbered by first appearance, and
/// per text each of its terms once with how often it holds it.
#[derive(Debug, Default)]
pub(crate) struct Tokenized {
    /// The batch's terms, by number.
    words: Vec<Word>,
    /// Per text: where its postings end in `postings`.
    ends: Vec<u32>,
    /// Per text: its length in terms (zero without text).
    lens: Vec<u32>,
    /// The texts' (term, count) pairs, text after text.
    postings: Vec<(u32, u32)>,
}

impl Tokenized {
    /// The terms of text `text`, with their counts.
    fn postings_of(&self, text: u32) -> &[(u32, u32)] {
        let i = text as usize;
        let from = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).copied().unwrap_or(0),
            None => 0,
        } as usize;
        let to = self.ends.get(i).copied().unwrap_or(0) as usize;
        self.postings.get(from..to).unwrap_or_default()
    }
}

/// The terms of each of `texts` as the keyword index sees them ([`tokens`], stemmed by
/// `stemmer` if given), numbered within the batch: what [`Index::insert_tokenized`] appends.
/// `None` is a text without terms (a tombstone). Works in `scratch` (cleared first) and
/// leaves the result in it ([`Scratch::tokenized`]): a writer that keeps its scratch between
/// batches allocates nothing for them once it has grown to a batch's size.
pub(crate) fn tokenize<'t>(
    mut scratch: Scratch,
    stemmer: Option<&Stem>,
    texts: impl IntoIterator<Item = Option<&'t str>>,
) -> Scratch {
    let texts = texts.into_iter();
    // sized for the batch at once (a dozen distinct words per text, up to a bound) rather
    // than grown and rehashed several times per batch
    let room = texts.size_hint().0.saturating_mul(12).min(1 << 16);
    scratch.short.reserve(room);
    scratch.last.reserve(room);
    scratch.out.words.reserve(room);
    scratch.out.postings.reserve(room * 2);
    scratch.tokenize(stemmer, texts);
    scratch
}

/// The working space of [`tokenize`], which the index keeps for the writes it tokenises
/// itself (a single write then allocates nothing for it) and [`crate::Memory`] for its
/// batches.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// The batch's short words, by key, with their numbers.
    short: FxMap<ShortKey, u32>,
    /// The batch's longer words.
    long: FxMap<Box<str>, u32>,
    /// Per batch term: the text it last came up in (counted from 1) and where its posting is.
    last: Vec<(u32, u32)>,
    /// The result.
    out: Tokenized,
}

impl Scratch {
    /// What the last [`tokenize`] found.
    pub fn tokenized(&self) -> &Tokenized {
        &self.out
    }

    /// Whether it is small enough to keep for the next batch: a batch far larger than the
    /// usual leaves a scratch whose memory is better given back.
    pub fn worth_keeping(&self) -> bool {
        self.out.postings.capacity() <= 1 << 17
    }

    /// Tokenises `texts` into `self.out`, after clearing what an earlier call left.
    fn tokenize<'t>(
        &mut self,
        stemmer: Option<&Stem>,
        texts: impl IntoIterator<Item = Option<&'t str>>,
    ) {
        let Scratch {
            short,
            long,
            last,
            out,
        } = self;
        short.clear();
        long.clear();
        last.clear();
        out.words.clear();
        out.ends.clear();
        out.lens.clear();
        out.postings.clear();
        // A text's words are first cut and packed into keys, and only then looked up: the
        // lookups are the cache misses, and without the scan's branches between them the
        // processor has several of them in flight at once (in the scale harness, tokenising
        // took about 30% less time). A word of more than 15 bytes keeps its place as `LONG`,
        // its text in `longs`.
        let mut keys: Vec<ShortKey> = Vec::with_capacity(64);
        let mut longs: Vec<Cow<'t, str>> = Vec::new();
        for (i, text) in texts.into_iter().enumerate() {
            let mark = i as u32 + 1;
            keys.clear();
            longs.clear();
            // an empty text for none: no terms (a flattened option would cost a test per word)
            for term in tokens(text.unwrap_or_default()) {
                let term = stem(stemmer, term);
                match short_key(&term) {
                    Some(k) => keys.push(k),
                    None => {
                        keys.push(LONG);
                        longs.push(term);
                    }
                }
            }
            let mut longs = longs.drain(..);
            for &k in &keys {
                let next = out.words.len() as u32;
                let id = if k == LONG {
                    let Some(term) = longs.next() else {
                        continue;
                    };
                    match long.get(term.as_ref()) {
                        Some(&id) => id,
                        None => {
                            let w: Box<str> = term.as_ref().into();
                            long.insert(w.clone(), next);
                            out.words.push(Word::Long(w));
                            next
                        }
                    }
                } else {
                    let id = *short.entry(k).or_insert(next);
                    if id == next {
                        out.words.push(Word::Short(k));
                    }
                    id
                };
                if id == next {
                    last.push((0, 0));
                }
                let Some(l) = last.get_mut(id as usize) else {
                    continue;
                };
                if l.0 == mark {
                    // the word came up before in this text
                    if let Some(p) = out.postings.get_mut(l.1 as usize) {
                        p.1 += 1;
                    }
                } else {
                    *l = (mark, out.postings.len() as u32);
                    out.postings.push((id, 1));
                }
            }
            out.ends.push(out.postings.len() as u32);
            out.lens.push(keys.len() as u32);
        }
    }
}

/// The place of a word longer than a [`ShortKey`] holds among a text's keys: its length byte
/// (255) is one no short word has.
const LONG: ShortKey = ShortKey([0, u64::MAX]);

/// The vector a record brings to the matrix, if any: none for a tombstone. (It takes a slot
/// if it has the index's length.)
fn vector_of(record: &MemoryRecord) -> Option<&[f32]> {
    record
        .embedding
        .as_deref()
        .filter(|_| record.tombstone.is_none())
}

/// The most rows sampled to estimate the share of rows a filter lets through (a standard
/// error under 0.016 for any share).
const SHARE_SAMPLE: usize = 1024;

/// Rows inserted together by [`Index::insert_many`] before their postings are appended: a
/// run's postings (about 25 per record) stay in cache while they are grouped per term.
const INSERT_RUN: usize = 1024;

/// The fewest records [`Index::insert_many`] shares with a second thread (when the memory
/// has two write threads): below it, starting the thread would cost more than it saves.
pub(crate) const PARALLEL_MIN: usize = 256;

/// The fewest vectors of a batch that [`crate::Memory::remember_many`] gathers into blocks
/// for the matrix to adopt (see [`Index::insert_tokenized`]): a smaller batch's vectors are
/// copied into the matrix's chunks instead.
pub(crate) const SHARE_MIN: usize = 256;

/// The most bytes of one block of a batch's vectors (see [`SHARE_MIN`]). Below the size at
/// which the common allocators map fresh memory for each allocation (glibc's default
/// threshold is 128 KiB), so that a block takes the memory the batch's own vectors free as
/// they are gathered, rather than memory the process never touched (the costly part of a
/// bulk write: every fresh page is a fault, and on a virtual machine a slow one). The scan
/// reads each block as one slice, and 120 KiB is long enough to stream.
pub(crate) const BLOCK_BYTES: usize = 120 * 1024;

/// The indexes of one [`crate::Memory`].

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub dims: Option<usize>,
    /// The normalised vectors, `Matrix::ROWS` rows per chunk: contiguous for the scan, and
    /// growing by whole chunks so inserting never moves the vectors already stored.
    matrix: crate::matrix::Matrix,
    slot_row: Vec<u32>,
    pub hot: Vec<Hot>,
    pub cold: Vec<Cold>,
    vec_slot: Vec<u32>,
    /// Per lineage: its latest row.
    latest: FxMap<MemoryId, u32>,
    /// Per row: the row of the previous version of its lineage.
    prev_row: Vec<u32>,
    scopes: Interner<Scope>,
    kinds: Interner<MemoryKind>,
    bm25: Bm25,
    /// The approximate vector index, when the memory has one (feature `ann`).
    #[cfg(feature = "ann")]
    ann: Option<crate::ann::Ann>,
    /// The threads a batch is indexed with (1 or 2; see [`Index::insert_many`]).
    pub threads: usize,
}

/// A record prepared for insertion (tokenised and normalised outside the lock).
/// What of a record the keyword index reads: its text, unless it is a tombstone.
pub(crate) struct Prepared<'a> {
    text: Option<&'a str>,
}

impl<'a> Prepared<'a> {
    pub fn of(record: &'a MemoryRecord) -> Self {
        Self {
            text: record
                .tombstone
                .is_none()
                .then_some(record.content.as_str()),
        }
    }
}

impl Index {
    /// An empty index whose keyword search tokenises and scores as `options` say.
    pub fn new(options: KeywordOptions) -> Self {
        let mut index = Index::default();
        index.bm25.options = options;
        index.bm25.stemmer = match options.stemming {
            Stemming::None => None,
            Stemming::English => Some(Arc::new(Stem(rust_stemmers::Stemmer::create(
                rust_stemmers::Algorithm::English,
            )))),
        };
        index
    }

    pub fn lineage_count(&self) -> usize {
        self.latest.len()
    }

    pub fn lineage_ids(&self) -> impl Iterator<Item = &MemoryId> {
        self.latest.keys()
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

    /// Keeps an approximate vector index from now on (call before inserting rows: rows
    /// already indexed are not added to it).
    #[cfg(feature = "ann")]
    pub fn enable_ann(&mut self, options: crate::AnnOptions) {
        self.ann = Some(crate::ann::Ann::new(options));
    }

    /// How many vectors the approximate index holds, if there is one.
    #[cfg(feature = "ann")]
    pub fn ann_nodes(&self) -> Option<usize> {
        self.ann.as_ref().map(|a| a.nodes)
    }

    /// The cosine similarity of a row's vector to `query` (unit length), if it has one.
    #[cfg(feature = "ann")]
    fn row_similarity(&self, row: u32, query: &[f32]) -> Option<f32> {
        let d = self.dims?;
        let slot = *self.vec_slot.get(row as usize)?;
        if slot == NONE {
            return None;
        }
        let v = self.matrix.row(slot as usize, d)?;
        Some(dot(v, query) * self.matrix.inverse_norm(slot as usize)?)
    }

    /// The estimated share of vector rows that pass `filter`, from at most
    /// [`SHARE_SAMPLE`] evenly spaced rows, and how many rows were sampled. Bounded so
    /// that the estimate costs the same at any size: each sampled row is likely a cache miss,
    /// and every 64th row of a million (15,600 rows) is of the order of the whole search of
    /// the approximate index.
    fn pass_share(&self, filter: &Filter) -> (usize, usize) {
        let step = self.slot_row.len().div_ceil(SHARE_SAMPLE).max(1);
        let sampled = self.slot_row.len().div_ceil(step);
        let passing = self
            .slot_row
            .iter()
            .step_by(step)
            .filter(|r| self.passes(filter, **r))
            .count();
        (passing, sampled)
    }

    /// Candidates from the approximate index, best first by exact similarity, all passing
    /// `filter`, at least `want` of them; `None` when the exact scan must answer instead (no
    /// approximate index, a small memory, a filter few rows pass, or too few candidates).
    #[cfg(feature = "ann")]
    fn ann_top(&self, filter: &Filter, query: &[f32], want: usize) -> Option<Vec<Cand>> {
        let ann = self.ann.as_ref()?;
        if want == 0
            || ann.nodes < ann.options.min_vectors
            || ann.nodes != self.slot_row.len()
            || Some(query.len()) != self.dims
            || filter.is_empty()
        {
            return None;
        }
        let (passing, sampled) = self.pass_share(filter);
        let share = passing as f32 / sampled.max(1) as f32;
        if share < ann.options.min_share {
            return None;
        }
        let ef = ann.width(want, share)?;
        let found = ann.search(
            query,
            ef,
            |row| self.passes(filter, row),
            |row| self.row_similarity(row, query),
        );
        (found.len() >= want).then_some(found)
    }

    #[cfg(not(feature = "ann"))]
    #[inline]
    fn ann_top(&self, _filter: &Filter, _query: &[f32], _want: usize) -> Option<Vec<Cand>> {
        None
    }

    /// Checks that a vector fits this index's dimension (fixing it on first use).
    pub fn check_dims(&self, len: usize) -> Result<(), usize> {
        match self.dims {
            Some(d) if d != len => Err(d),
            _ => Ok(()),
        }
    }

    /// Adds one version; see [`Index::insert_many`].
    pub fn insert(&mut self, record: &MemoryRecord, prepared: Prepared<'_>) {
        self.insert_many(std::iter::once((record, prepared)));
    }

    /// Adds versions in order. When a lineage has rows, its previous latest row is retired at
    /// the new version's `recorded_at` (unless the record says otherwise, as when loading).
    /// A version older than the lineage's latest indexed one (its writer indexed it after a
    /// concurrent revision had indexed the next) is linked in before its successor instead.
    ///
    /// The texts are [`tokenize`]d first, then the rows are placed and the keyword postings
    /// appended in runs of up to [`INSERT_RUN`] rows, grouped by term: each term's list is
    /// touched once per run instead of once per record (see [`Index::insert_tokenized`]).
    pub fn insert_many<'a>(
        &mut self,
        batch: impl IntoIterator<Item = (&'a MemoryRecord, Prepared<'a>)>,
    ) {
        let batch: Vec<(&'a MemoryRecord, Prepared<'a>)> = batch.into_iter().collect();
        let mut scratch = std::mem::take(&mut self.bm25.scratch);
        scratch.tokenize(
            self.bm25.stemmer.as_deref(),
            batch.iter().map(|(_, p)| p.text),
        );
        let records: Vec<(&MemoryRecord, u32)> = batch
            .iter()
            .enumerate()
            .map(|(i, (r, _))| (*r, i as u32))
            .collect();
        self.insert_tokenized(&records, &scratch.out, &[]);
        if scratch.worth_keeping() {
            self.bm25.scratch = scratch;
        }
    }

    /// The stemmer the keyword index applies, for [`tokenize`] outside the lock.
    pub fn stemmer(&self) -> Option<Arc<Stem>> {
        self.bm25.stemmer.clone()
    }

    /// [`Index::insert_many`] with the texts already tokenised: each record is paired with
    /// its text's number in `tokenized` (made by [`tokenize`] with this index's
    /// [`Index::stemmer`]).
    ///
    /// When the records that take a vector slot view `blocks` row after row (as
    /// [`crate::Memory::remember_many`] makes them, see [`SHARE_MIN`]), the matrix adopts the
    /// blocks as they are: the vectors are not copied. Otherwise they are copied into the
    /// matrix: with two threads (`threads == 2`) and at least [`PARALLEL_MIN`] records, on a
    /// second thread while this one places the rows and appends the postings.
    pub fn insert_tokenized(
        &mut self,
        batch: &[(&MemoryRecord, u32)],
        tokenized: &Tokenized,
        blocks: &[Arc<Vec<f32>>],
    ) {
        if let Some((rows, dims)) = self.block_rows(batch, blocks) {
            for (block, &n) in blocks.iter().zip(&rows) {
                // checked by `block_rows`: each holds its rows
                self.matrix.adopt(block.clone(), n, dims);
            }
            self.dims = Some(dims);
            self.insert_serial(batch, tokenized, false);
            debug_assert_eq!(self.matrix.rows(), self.slot_row.len());
            return;
        }
        if self.threads > 1 && batch.len() >= PARALLEL_MIN {
            self.insert_parallel(batch, tokenized);
        } else {
            self.insert_serial(batch, tokenized, true);
        }
    }

    /// If the records of `batch` that will take a vector slot view `blocks` row after row
    /// (each block from its start, the next once one is used up): how many rows they take
    /// of each block (none of those after the last used), and of how many dimensions.
    fn block_rows(
        &self,
        batch: &[(&MemoryRecord, u32)],
        blocks: &[Arc<Vec<f32>>],
    ) -> Option<(Vec<usize>, usize)> {
        if blocks.is_empty() {
            return None;
        }
        let dims = self
            .dims
            .or_else(|| {
                batch
                    .iter()
                    .find_map(|(r, _)| vector_of(r))
                    .map(<[f32]>::len)
            })
            .filter(|&d| d > 0)?;
        let mut rows: Vec<usize> = vec![0];
        for (record, _) in batch {
            let Some(e) = record
                .embedding
                .as_ref()
                .filter(|_| record.tombstone.is_none())
            else {
                continue;
            };
            if e.len() != dims {
                // takes no slot (the rule of `insert_row`)
                continue;
            }
            let mut b = rows.len() - 1;
            if rows
                .get(b)
                .is_some_and(|&n| (n + 1) * dims > blocks.get(b).map_or(0, |x| x.len()))
            {
                // this block is used up: the next
                rows.push(0);
                b += 1;
            }
            let n = rows.get_mut(b)?;
            if !e.views(blocks.get(b)?, *n * dims) {
                return None;
            }
            *n += 1;
        }
        rows.retain(|&n| n > 0);
        (!rows.is_empty()).then_some((rows, dims))
    }

    /// [`Index::insert_tokenized`] on this thread, in runs of [`INSERT_RUN`]; the vectors
    /// copied into the matrix only with `place_vectors` (otherwise it holds them already).
    fn insert_serial(
        &mut self,
        batch: &[(&MemoryRecord, u32)],
        tokenized: &Tokenized,
        place_vectors: bool,
    ) {
        let mut rows = Vec::with_capacity(batch.len().min(INSERT_RUN));
        for run in batch.chunks(INSERT_RUN) {
            let first_slot = self.slot_row.len();
            rows.clear();
            for &(record, text) in run {
                rows.push((self.insert_row(record, place_vectors), text));
            }
            self.bm25.merge(tokenized, &rows, self.hot.len());
            self.link_vectors(first_slot);
        }
    }

    /// [`Index::insert_tokenized`] on two threads: this one places the rows and appends the
    /// keyword postings while a second copies the vectors into the matrix (the bulk of the
    /// fresh memory a batch writes, and so of its page faults). The result is the same as on
    /// one thread; a second thread that cannot be started leaves the work to this one.
    fn insert_parallel(&mut self, batch: &[(&MemoryRecord, u32)], tokenized: &Tokenized) {
        // which records take a vector slot is known before the rows are placed, by the rule
        // `insert_row` applies: a vector of the index's length (set by the first ever)
        let dims = self.dims.or_else(|| {
            batch
                .iter()
                .find_map(|(r, _)| vector_of(r))
                .map(<[f32]>::len)
        });
        let vectors: Vec<&[f32]> = batch
            .iter()
            .filter_map(|(r, _)| vector_of(r).filter(|v| Some(v.len()) == dims))
            .collect();
        let first_slot = self.slot_row.len();
        let mut matrix = std::mem::take(&mut self.matrix);
        let place = |matrix: &mut crate::matrix::Matrix| {
            for v in &vectors {
                matrix.push(v);
            }
        };
        let outcome = std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new()
                .name("aios-memory-vectors".into())
                .spawn_scoped(scope, || place(&mut matrix));
            let rows: Vec<(u32, u32)> = batch
                .iter()
                .map(|&(record, text)| (self.insert_row(record, false), text))
                .collect();
            // (`merge` appends in runs of `INSERT_RUN` itself)
            self.bm25.merge(tokenized, &rows, self.hot.len());
            match spawned {
                Ok(handle) => handle.join().map(|()| true),
                Err(_) => Ok(false),
            }
        });
        match outcome {
            Ok(true) => {}
            Ok(false) => place(&mut matrix),
            Err(panic) => {
                self.matrix = matrix;
                std::panic::resume_unwind(panic);
            }
        }
        self.matrix = matrix;
        debug_assert_eq!(self.matrix.rows(), self.slot_row.len());
        self.link_vectors(first_slot);
    }

    /// The vectors placed from `first_slot` on, into the approximate index (feature `ann`),
    /// which takes them at unit length.
    fn link_vectors(&mut self, first_slot: usize) {
        #[cfg(feature = "ann")]
        if let (Some(ann), Some(d)) = (&mut self.ann, self.dims) {
            let slots = self.slot_row.get(first_slot..).unwrap_or_default();
            let mut units: Vec<f32> = Vec::with_capacity(slots.len() * d);
            let mut rows: Vec<u32> = Vec::with_capacity(slots.len());
            for (i, &row) in slots.iter().enumerate() {
                let slot = first_slot + i;
                if let (Some(v), Some(inv)) =
                    (self.matrix.row(slot, d), self.matrix.inverse_norm(slot))
                {
                    units.extend(v.iter().map(|x| x * inv));
                    rows.push(row);
                }
            }
            let linked: Vec<(&[f32], u32)> = units.chunks_exact(d).zip(rows).collect();
            ann.insert_many(&linked);
        }
        #[cfg(not(feature = "ann"))]
        let _ = first_slot;
    }

    /// Adds everything of one version but its keyword postings; returns its row.
    ///
    /// Its vector, if it takes a slot, is copied into the matrix only with `place_vector`:
    /// otherwise the caller places it (the next row of the matrix, in slot order).
    fn insert_row(&mut self, record: &MemoryRecord, place_vector: bool) -> u32 {
        let row = self.hot.len() as u32;
        let recorded = micros(record.recorded_at);
        let mut retired = record.retired_at.map_or(i64::MAX, micros);
        let prev = match self.latest.get(&record.id).copied() {
            Some(latest)
                if self
                    .cold
                    .get(latest as usize)
                    .is_some_and(|c| c.version > record.version) =>
            {
                // an older version arriving late: link it in before its successor, which
                // stays the latest
                let mut next = latest;
                while let Some(&p) = self.prev_row.get(next as usize) {
                    match self.cold.get(p as usize) {
                        Some(c) if c.version > record.version => next = p,
                        _ => break,
                    }
                }
                let before = self.prev_row.get(next as usize).copied().unwrap_or(NONE);
                if let Some(p) = self.prev_row.get_mut(next as usize) {
                    *p = row;
                }
                if retired == i64::MAX {
                    retired = self.hot.get(next as usize).map_or(i64::MAX, |h| h.recorded);
                }
                before
            }
            _ => {
                let prev = self.latest.insert(record.id, row).unwrap_or(NONE);
                if let Some(h) = self.hot.get_mut(prev as usize) {
                    if h.retired == i64::MAX {
                        h.retired = recorded;
                    }
                }
                prev
            }
        };
        self.prev_row.push(prev);
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
            retired,
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
        if let Some(v) = vector_of(record) {
            if self.dims.is_none() {
                self.dims = Some(v.len());
            }
            if Some(v.len()) == self.dims {
                slot = self.slot_row.len() as u32;
                self.slot_row.push(row);
                if place_vector {
                    self.matrix.push(v);
                }
            }
        }
        self.vec_slot.push(slot);
        row
    }

    /// Marks every row of a lineage deleted. Returns whether it existed.
    pub fn delete(&mut self, id: &MemoryId) -> bool {
        let Some(latest) = self.latest.remove(id) else {
            return false;
        };
        let mut rows = Vec::new();
        let mut r = latest;
        while let Some(&prev) = self.prev_row.get(r as usize) {
            rows.push(r);
            r = prev;
        }
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
        self.latest.get(id).copied()
    }

    /// The row of a lineage visible at system time `as_of` (tombstones included).
    pub fn visible_row(&self, id: &MemoryId, as_of: i64) -> Option<u32> {
        let mut r = *self.latest.get(id)?;
        loop {
            let h = self.hot.get(r as usize)?;
            if h.recorded <= as_of && as_of < h.retired {
                return Some(r);
            }
            r = *self.prev_row.get(r as usize)?;
        }
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

    /// Calls `visit(row, similarity)` for every row with a vector that passes `filter`, in
    /// row-slot order. `query` is already unit length.
    #[inline]
    fn scan(&self, filter: &Filter, query: &[f32], mut visit: impl FnMut(u32, f32)) {
        let Some(d) = self.dims else {
            return;
        };
        if d == 0 || query.len() != d || filter.is_empty() {
            return;
        }
        let cold = filter.needs_cold();
        let passes = |row: u32| {
            self.hot.get(row as usize).is_some_and(|h| filter.hot_ok(h))
                && (!cold
                    || self
                        .cold
                        .get(row as usize)
                        .is_some_and(|c| filter.cold_ok(c)))
        };
        // Skipping rows breaks the hardware's streaming of the matrix, and the scan is bound
        // by memory, not arithmetic: when many rows pass, score every row and keep those
        // that pass; when few pass, touch only those. Both give the same result.
        // estimate the share of passing rows from a sample
        let (passing, sampled) = self.pass_share(filter);
        // per part: its rows, their slots' rows and their inverse norms
        let mut first = 0;
        let parts = self.matrix.parts().map(|(floats, inverse)| {
            let rows = self
                .slot_row
                .get(first..first + inverse.len())
                .unwrap_or_default();
            first += inverse.len();
            (floats, rows, inverse)
        });
        if passing * 4 >= sampled {
            for (floats, rows, inverse) in parts {
                for ((v, &row), &inv) in floats.chunks_exact(d).zip(rows).zip(inverse) {
                    let score = dot(v, query) * inv;
                    if passes(row) {
                        visit(row, score);
                    }
                }
            }
        } else {
            for (floats, rows, inverse) in parts {
                for ((v, &row), &inv) in floats.chunks_exact(d).zip(rows).zip(inverse) {
                    if passes(row) {
                        visit(row, dot(v, query) * inv);
                    }
                }
            }
        }
    }

    /// Exact top-`k` rows by cosine similarity to `query` (already unit length).
    /// With an approximate index in a large memory the candidates come from it (every one
    /// passes the filter and carries its exact similarity, but a row may be missed).
    pub fn vector_top(&self, filter: &Filter, query: &[f32], k: usize) -> Vec<Cand> {
        if let Some(mut found) = self.ann_top(filter, query, k) {
            found.truncate(k);
            return found;
        }
        let mut top = TopK::new(k);
        self.scan(filter, query, |row, score| top.push(Cand { score, row }));
        top.into_sorted()
    }

    /// Exact top-`k` rows by `total(row, similarity)`, where `total` adds at most
    /// `max_boost` to the similarity, and every row whose similarity was looked at closely
    /// (a superset of the rows more similar than any returned one). `total` runs only for
    /// rows that could still enter the top `k`.
    pub fn vector_top_by(
        &self,
        filter: &Filter,
        query: &[f32],
        k: usize,
        max_boost: f32,
        mut total: impl FnMut(u32, f32) -> f32,
    ) -> (Vec<Cand>, Vec<Cand>) {
        if let Some(found) = self.ann_top(filter, query, k) {
            // approximate: every candidate the index found is looked at closely
            let mut top = TopK::new(k);
            for c in &found {
                top.push(Cand {
                    score: total(c.row, c.score),
                    row: c.row,
                });
            }
            return (top.into_sorted(), found);
        }
        let mut top = TopK::new(k);
        let mut seen = Vec::new();
        let mut threshold = f32::NEG_INFINITY;
        self.scan(filter, query, |row, score| {
            if score + max_boost >= threshold {
                seen.push(Cand { score, row });
                top.push(Cand {
                    score: total(row, score),
                    row,
                });
                if let Some(min) = top.min_score() {
                    threshold = min;
                }
            }
        });
        (top.into_sorted(), seen)
    }

    /// Every row passing the filter that matches a term of `text`, with its BM25 score, in
    /// row order. Reads only the postings of the query's terms.
    pub fn keyword_scores(&self, filter: &Filter, text: &str) -> Vec<Cand> {
        let mut out = Vec::new();
        self.keyword_visit(filter, text, |c| out.push(c));
        out
    }

    /// Calls `visit` for every row passing the filter that matches a term of `text`, with its
    /// BM25 score, in row order.
    fn keyword_visit(&self, filter: &Filter, text: &str, mut visit: impl FnMut(Cand)) {
        if self.bm25.docs == 0 || filter.is_empty() {
            return;
        }
        let mut terms: Vec<u32> = Vec::new();
        for t in self.bm25.terms(text) {
            if let Some(id) = self.bm25.term(&t) {
                if !terms.contains(&id) {
                    terms.push(id);
                }
            }
        }
        if terms.is_empty() {
            return;
        }
        let empty = Postings::default();
        let lists: Vec<&Postings> = terms
            .iter()
            .map(|t| self.bm25.postings.get(*t as usize).unwrap_or(&empty))
            .collect();
        let n = self.bm25.docs as f32;
        let avgdl = (self.bm25.total_len as f32 / n).max(1.0);
        let idf: Vec<f32> = lists
            .iter()
            .map(|l| {
                let df = l.len() as f32;
                (1.0 + (n - df + 0.5).max(0.5) / (df + 0.5)).ln()
            })
            .collect();
        let dl = |row: u32| self.bm25.doc_len.get(row as usize).copied().unwrap_or(0);
        let total: usize = lists.iter().map(|l| l.len()).sum();
        if total > self.hot.len() / 8 {
            // many postings: accumulate densely, in term order per row
            let mut acc = vec![0f32; self.hot.len()];
            for (list, idf) in lists.iter().zip(&idf) {
                for segment in list.segments() {
                    for &Posting { row, tf } in segment {
                        if let Some(a) = acc.get_mut(row as usize) {
                            *a += self.bm25.weight(*idf, tf, dl(row), avgdl);
                        }
                    }
                }
            }
            for (row, score) in acc.into_iter().enumerate() {
                if score > 0.0 && self.passes(filter, row as u32) {
                    visit(Cand {
                        score,
                        row: row as u32,
                    });
                }
            }
        } else {
            // few: gather (row, term, weight), order by row then term, sum runs
            let mut parts: Vec<(u32, u32, f32)> = Vec::with_capacity(total);
            for (i, (list, idf)) in lists.iter().zip(&idf).enumerate() {
                for segment in list.segments() {
                    for &Posting { row, tf } in segment {
                        if self.passes(filter, row) {
                            let w = self.bm25.weight(*idf, tf, dl(row), avgdl);
                            parts.push((row, i as u32, w));
                        }
                    }
                }
            }
            parts.sort_unstable_by_key(|p| (p.0, p.1));
            let mut run: Option<Cand> = None;
            for (row, _, w) in parts {
                match &mut run {
                    Some(c) if c.row == row => c.score += w,
                    _ => {
                        if let Some(c) = run.replace(Cand { score: w, row }) {
                            visit(c);
                        }
                    }
                }
            }
            if let Some(c) = run {
                visit(c);
            }
        }
    }

    /// Top-`k` rows by BM25 for `text`.
    pub fn keyword_top(&self, filter: &Filter, text: &str, k: usize) -> Vec<Cand> {
        let mut top = TopK::new(k);
        self.keyword_visit(filter, text, |c| top.push(c));
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

    fn record(n: u64, content: String) -> MemoryRecord {
        let t = Timestamp::from_timestamp_millis(1_700_000_000_000).unwrap_or_default();
        MemoryRecord {
            schema: crate::MEMORY_SCHEMA_VERSION,
            id: MemoryId::from_name(&n.to_string()),
            version: 1,
            scope: Scope::parse("s").unwrap(),
            tier: Tier::Project,
            kind: MemoryKind::Fact,
            content,
            embedding: None,
            metadata: Metadata::new(),
            provenance: crate::Provenance::by(aios_core::Principal::System),
            valid_from: None,
            valid_to: None,
            recorded_at: t,
            retired_at: None,
            importance: 0.5,
            pinned: false,
            expires_at: None,
            tombstone: None,
            prev_checksum: None,
            checksum: String::new(),
        }
    }

    /// BM25 over the postings equals a brute-force computation, with the default and other
    /// parameters.
    #[test]
    fn keyword_scores_match_brute_force() {
        let mut rng = aios_core::SeededRng::new(9);
        let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
        let docs: Vec<String> = (0..4000)
            .map(|_| {
                (0..12)
                    .map(|_| {
                        // skewed: low word numbers are common
                        let r = rng.next_f64();
                        words[((r * r) * words.len() as f64) as usize].as_str()
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        for options in [
            KeywordOptions::default(),
            KeywordOptions::default().k1(2.0).b(0.3),
        ] {
            let (k1, b) = (options.k1, options.b);
            let mut index = Index::new(options);
            for (i, d) in docs.iter().enumerate() {
                let r = record(i as u64, d.clone());
                index.insert(&r, Prepared::of(&r));
            }
            let filter = index.compile(i64::MAX - 1, |_| 0b111, &[], None, &Metadata::new());
            let n = docs.len() as f32;
            let avgdl = 12.0;
            let mut df_of: HashMap<&str, f32> = HashMap::new();
            for d in &docs {
                let mut uniq: Vec<&str> = d.split(' ').collect();
                uniq.sort_unstable();
                uniq.dedup();
                for w in uniq {
                    *df_of.entry(w).or_default() += 1.0;
                }
            }
            df_of.insert("nothing", 0.0);
            df_of.insert("here", 0.0);
            for query in ["w1 w50", "w299 w3 w3", "w7", "nothing here"] {
                let q: Vec<String> = tokens(query).map(|t| t.into_owned()).collect();
                let mut want: Vec<(f32, u32)> = Vec::new();
                for (row, d) in docs.iter().enumerate() {
                    let toks: Vec<&str> = d.split(' ').collect();
                    let mut score = 0.0;
                    let mut seen = Vec::new();
                    for t in &q {
                        if seen.contains(t) {
                            continue;
                        }
                        seen.push(t.clone());
                        let df = df_of[t.as_str()];
                        let tf = toks.iter().filter(|w| *w == t).count() as f32;
                        if tf > 0.0 {
                            let idf = (1.0 + (n - df + 0.5).max(0.5) / (df + 0.5)).ln();
                            score += idf * tf * (k1 + 1.0)
                                / (tf + k1 * (1.0 - b + b * toks.len() as f32 / avgdl));
                        }
                    }
                    if score > 0.0 {
                        want.push((score, row as u32));
                    }
                }
                want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                want.truncate(10);
                let got = index.keyword_top(&filter, query, 10);
                assert_eq!(got.len(), want.len(), "{query}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((g.score - w.0).abs() < 1e-3, "{query}: {g:?} vs {w:?}");
                }
            }
        }
    }

    /// A version indexed after its successor (two writers racing: a batch indexing version 1
    /// after a concurrent revision indexed version 2) is linked in before it: the successor
    /// stays the latest, each version is visible in its own time span, and a delete removes
    /// both.
    #[test]
    fn a_late_older_version_is_linked_before_its_successor() {
        let mut index = Index::default();
        let t = |ms: i64| Timestamp::from_timestamp_millis(1_700_000_000_000 + ms).unwrap();
        let mut v1 = record(1, "first words".into());
        v1.recorded_at = t(0);
        let mut v2 = record(1, "second words".into());
        v2.version = 2;
        v2.recorded_at = t(10);
        let other = record(2, "other words".into());
        index.insert(&other, Prepared::of(&other));
        index.insert(&v2, Prepared::of(&v2));
        index.insert(&v1, Prepared::of(&v1));
        let id = v1.id;
        assert_eq!(index.latest(&id), Some(1));
        assert_eq!(index.lineage_count(), 2);
        assert_eq!(index.visible_row(&id, micros(t(5))), Some(2));
        assert_eq!(index.visible_row(&id, micros(t(10))), Some(1));
        assert_eq!(index.visible_row(&id, micros(t(-1))), None);
        let now = index.compile(micros(t(20)), |_| 0b111, &[], None, &Metadata::new());
        let then = index.compile(micros(t(5)), |_| 0b111, &[], None, &Metadata::new());
        let rows = |index: &Index, f: &Filter, q: &str| -> Vec<u32> {
            index.keyword_top(f, q, 10).iter().map(|c| c.row).collect()
        };
        assert_eq!(rows(&index, &now, "first"), Vec::<u32>::new());
        assert_eq!(rows(&index, &then, "first"), [2]);
        assert_eq!(rows(&index, &now, "second"), [1]);
        assert!(index.delete(&id));
        assert_eq!(rows(&index, &then, "first"), Vec::<u32>::new());
        assert_eq!(rows(&index, &now, "words"), [0]);
    }

    #[test]
    fn long_and_short_words_are_both_searchable() {
        let mut index = Index::default();
        let texts = [
            "supercalifragilisticexpialidocious weather",
            "exactly15bytes! weather",
            "sixteen-bytes-xx weather",
            "plain weather",
        ];
        for (i, t) in texts.iter().enumerate() {
            let r = record(i as u64, t.to_string());
            index.insert(&r, Prepared::of(&r));
        }
        let filter = index.compile(i64::MAX - 1, |_| 0b111, &[], None, &Metadata::new());
        for (query, row) in [
            ("Supercalifragilisticexpialidocious", 0),
            ("exactly15bytes", 1),
            ("bytes", 2),
            ("sixteen", 2),
            ("plain", 3),
        ] {
            let got = index.keyword_top(&filter, query, 10);
            assert_eq!(
                got.iter().map(|c| c.row).collect::<Vec<_>>(),
                [row],
                "{query}"
            );
        }
        assert_eq!(index.keyword_top(&filter, "weather", 10).len(), 4);
        assert!(index
            .keyword_top(&filter, "supercalifragilistic", 10)
            .is_empty());
    }

    /// Exact search equals brute force whatever share of rows the filter lets through (the
    /// scan switches between scoring every row and touching only passing ones).
    #[test]
    fn vector_search_matches_brute_force_at_any_selectivity() {
        let mut rng = aios_core::SeededRng::new(5);
        let mut index = Index::default();
        let mut rows = Vec::new();
        for i in 0..3000u64 {
            let mut r = record(i, format!("doc {i}"));
            r.scope = Scope::parse(&format!("s/{}", i % 10)).unwrap();
            let v: Vec<f32> = (0..24).map(|_| rng.next_f64() as f32 - 0.5).collect();
            r.embedding = Some(v.clone().into());
            index.insert(&r, Prepared::of(&r));
            rows.push((r.scope.clone(), v));
        }
        let q: Vec<f32> = {
            let mut q: Vec<f32> = (0..24).map(|_| rng.next_f64() as f32 - 0.5).collect();
            normalise(&mut q);
            q
        };
        for allowed in [
            vec![],
            vec!["s/3"],
            vec!["s/1", "s/2", "s/3"],
            (0..10)
                .map(|i| format!("s/{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(|s| &**s)
                .collect::<Vec<&str>>(),
        ] {
            let allowed: Vec<Scope> = allowed.iter().map(|s| Scope::parse(s).unwrap()).collect();
            let filter = index.compile(
                i64::MAX - 1,
                |s| if allowed.contains(s) { 0b111 } else { 0 },
                &[],
                None,
                &Metadata::new(),
            );
            let mut want: Vec<(f32, u32)> = rows
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| allowed.contains(s))
                // the cosine, as the index computes it: the dot product times the inverse norm
                .map(|(i, (_, v))| (dot(v, &q) * unit_scale(v), i as u32))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            want.truncate(10);
            let got: Vec<(f32, u32)> = index
                .vector_top(&filter, &q, 10)
                .iter()
                .map(|c| (c.score, c.row))
                .collect();
            assert_eq!(got, want, "{allowed:?}");
        }
    }

    /// With an approximate index, a large enough memory and a broad filter, candidates come
    /// from the index (not the exact scan); every one passes the filter and carries its
    /// exact similarity. A narrow filter, a small memory or an index out of step with the
    /// matrix falls back to the exact scan.
    #[cfg(feature = "ann")]
    #[test]
    fn the_approximate_index_answers_only_when_it_should() {
        let mut rng = aios_core::SeededRng::new(3);
        let build = |options: crate::AnnOptions, rng: &mut aios_core::SeededRng| {
            let mut index = Index::default();
            index.enable_ann(options);
            for i in 0..1200u64 {
                let mut r = record(i, format!("doc {i}"));
                r.scope = Scope::parse(&format!("s/{}", i % 20)).unwrap();
                r.embedding = Some((0..12).map(|_| rng.next_f64() as f32 - 0.5).collect());
                index.insert(&r, Prepared::of(&r));
            }
            index
        };
        let index = build(crate::AnnOptions::default().min_vectors(500), &mut rng);
        let mut q: Vec<f32> = (0..12).map(|_| rng.next_f64() as f32 - 0.5).collect();
        normalise(&mut q);
        let wide = index.compile(i64::MAX - 1, |_| 0b111, &[], None, &Metadata::new());
        let found = index.ann_top(&wide, &q, 10).expect("the index answers");
        assert!(found.len() >= 10);
        for c in &found {
            assert_eq!(Some(c.score), index.row_similarity(c.row, &q));
        }
        assert!(found.windows(2).all(|w| w[0] > w[1]), "best first");
        // half the scopes: still the index, every candidate in them
        let half = index.compile(
            i64::MAX - 1,
            |s| {
                if s.to_string().as_str() < "s/5" {
                    0b111
                } else {
                    0
                }
            },
            &[],
            None,
            &Metadata::new(),
        );
        let found = index.ann_top(&half, &q, 10).expect("the index answers");
        assert!(found.iter().all(|c| index.passes(&half, c.row)));
        // one scope of twenty (5 %) under min_share 0.1: the exact scan
        let narrow = index.compile(
            i64::MAX - 1,
            |s| if s.to_string() == "s/3" { 0b111 } else { 0 },
            &[],
            None,
            &Metadata::new(),
        );
        let index = build(
            crate::AnnOptions::default().min_vectors(500).min_share(0.1),
            &mut rng,
        );
        assert!(index.ann_top(&narrow, &q, 10).is_none());
        // fewer vectors than min_vectors: the exact scan
        let index = build(crate::AnnOptions::default().min_vectors(1201), &mut rng);
        assert!(index.ann_top(&wide, &q, 10).is_none());
        assert_eq!(index.vector_top(&wide, &q, 10).len(), 10);
    }

    #[test]
    fn finiteness_check() {
        assert!(all_finite(&[1.0; 40]));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for pos in [0, 17, 39] {
                let mut v = vec![1.0; 40];
                v[pos] = bad;
                assert!(!all_finite(&v));
            }
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
        let out: Vec<String> = tokens("The Invoice, due FRIDAY; über-fast 42")
            .map(|t| t.into_owned())
            .collect();
        assert_eq!(
            out,
            ["the", "invoice", "due", "friday", "über", "fast", "42"]
        );
        let out: Vec<String> = tokens("Straße and ÉCOLE").map(|t| t.into_owned()).collect();
        assert_eq!(out, ["straße", "and", "école"]);
        let out: Vec<String> = tokens("  --A1 b2,,C  ").map(|t| t.into_owned()).collect();
        assert_eq!(out, ["a1", "b2", "c"]);
        assert_eq!(tokens("").count(), 0);
        assert_eq!(tokens(" ;; ").count(), 0);
    }

    proptest::proptest! {
        /// A segmented postings list holds exactly what a plain vector would after any
        /// sequence of appends (runs of 0 to 3,000 postings, crossing the first segment's
        /// limit and later ones), never moves a full segment, and grows by segments at least
        /// as large as everything before them.
        #[test]
        fn segmented_postings_hold_what_a_vector_would(runs in proptest::collection::vec(0usize..3_000, 0..40)) {
            let mut list = Postings::default();
            let mut plain: Vec<Posting> = Vec::new();
            let mut full: Vec<(*const Posting, usize)> = Vec::new();
            let mut head: Option<(*const Posting, usize)> = None;
            let mut row = 0u32;
            for n in runs {
                let run: Vec<Posting> = (0..n)
                    .map(|i| {
                        row += 1;
                        Posting { row, tf: i as u32 % 7 + 1 }
                    })
                    .collect();
                list.extend(&run);
                plain.extend_from_slice(&run);
                proptest::prop_assert_eq!(list.len(), plain.len());
                let segments: Vec<&[Posting]> = list.segments().collect();
                let flat: Vec<Posting> = segments.iter().flat_map(|s| s.iter().copied()).collect();
                proptest::prop_assert_eq!(&flat, &plain);
                // the segments set aside are where they were, with what they held
                let f = list.full.as_ref().map_or(&[][..], |f| &f.segments[..]);
                for (i, (ptr, len)) in full.iter().enumerate() {
                    proptest::prop_assert_eq!(f[i].as_ptr(), *ptr, "segment {} moved", i);
                    proptest::prop_assert_eq!(f[i].len(), *len);
                }
                full = f.iter().map(|s| (s.as_ptr(), s.len())).collect();
                // the segment being filled never moves once the first is set aside
                if let (Some((ptr, segments)), false) = (head, f.is_empty()) {
                    if segments == f.len() {
                        proptest::prop_assert_eq!(list.head.as_ptr(), ptr, "the head moved");
                    }
                }
                head = (!f.is_empty()).then_some((list.head.as_ptr(), f.len()));
                if let Some(first) = f.first() {
                    proptest::prop_assert!(first.capacity() <= SEGMENT, "first segment room {}", first.capacity());
                }
                let mut before = 0;
                for (i, s) in f.iter().enumerate() {
                    if i == 0 {
                        proptest::prop_assert_eq!(s.len(), SEGMENT);
                    } else {
                        proptest::prop_assert!(s.len() >= before, "segment {} smaller than what came before", i);
                    }
                    before += s.len();
                }
                let bound = (plain.len() / SEGMENT).max(1).ilog2() as usize + 2;
                proptest::prop_assert!(segments.len() <= bound, "{} segments for {}", segments.len(), plain.len());
            }
        }

        /// The ASCII scan splits and lowercases exactly as the general path does, on any
        /// ASCII text (letters of both cases, digits, separators, control bytes).
        #[test]
        fn the_ascii_scan_agrees_with_the_general_split(text in "[ -~\t\n\x00-\x1fA-Za-z0-9]{0,120}") {
            let ascii: Vec<String> = tokens(&text).map(|t| t.into_owned()).collect();
            let general: Vec<String> = Tokens::Unicode(text.split(not_alphanumeric as fn(char) -> bool))
                .map(|t| t.into_owned())
                .collect();
            let scanned = matches!(tokens(&text), Tokens::Ascii { .. });
            proptest::prop_assert!(scanned, "ASCII text takes the scan");
            proptest::prop_assert_eq!(ascii, general);
        }
    }

    /// The packed key of a short word is its bytes in little-endian order with the length in
    /// the top byte, for every length and position of the odd loads.
    #[test]
    fn short_keys_pack_every_length() {
        let word = "abcdefghijklmnopq";
        for n in 0..=16 {
            let w = word.get(..n).unwrap();
            let key = short_key(w);
            if n > 15 {
                assert!(key.is_none());
                continue;
            }
            let mut want = [0u64, (n as u64) << 56];
            for (i, b) in w.bytes().enumerate() {
                want[i / 8] |= u64::from(b) << (8 * (i % 8));
            }
            assert_eq!(key.unwrap().0, want, "length {n}");
        }
    }
}
