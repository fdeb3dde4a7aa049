//! Memory records, their provenance and checksums.

use std::collections::BTreeMap;
use std::sync::Arc;

use aios_core::{MemoryId, Principal, RunId, TaskId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{MemoryKind, Scope, Tier};

/// The schema version of [`MemoryRecord`] this build writes and reads. Older records are
/// upgraded through a [`crate::Migrator`] on import.
pub const MEMORY_SCHEMA_VERSION: u32 = 1;

/// Free-form, filterable key-value metadata (ordered, so checksums are stable).
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// Who wrote a memory, in which run and task, from what source, derived from which records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The principal that wrote this version.
    pub author: Principal,
    /// The run it was written in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// The task it was written in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// Where it came from (`email:2026-01-03`, a URL, a tool name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Records this one was derived from (for summaries and promotions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived_from: Vec<MemoryId>,
}

impl Provenance {
    /// Provenance naming only the author.
    pub fn by(author: Principal) -> Self {
        Self {
            author,
            run: None,
            task: None,
            source: None,
            derived_from: Vec::new(),
        }
    }
}

/// A record's vector: immutable, and shared rather than copied.
///
/// The store, the memory's vector index and every record handed out (by a write, a read or a
/// recall that asks for vectors) can hold the same floats: cloning an embedding costs a
/// reference count, not a copy (1.5 KB for 384 dimensions). A batch written with
/// [`Memory::remember_many`](crate::Memory::remember_many) keeps its vectors once, in one
/// block that the index scans and every record of the batch views.
///
/// It reads as a `&[f32]` (it dereferences to one); it is made from a `Vec<f32>` (without
/// copying it), a slice, an array or an iterator of floats; it serialises as a list of
/// numbers, as a `Vec<f32>` does.
///
/// ```
/// use aios_memory::Embedding;
/// let e = Embedding::from(vec![0.6, 0.8]);
/// let shared = e.clone(); // the same floats, not a copy
/// assert_eq!(&shared[..], &[0.6, 0.8]);
/// assert_eq!(e.len(), 2);
/// assert_eq!(serde_json::to_string(&e).unwrap(), "[0.6,0.8]");
/// ```
#[derive(Clone)]
pub struct Embedding {
    /// The floats this one is a run of (its own, or a batch's block).
    buf: Arc<Vec<f32>>,
    /// Where its run starts in `buf`.
    start: usize,
    /// How many floats it has.
    len: usize,
}

impl Embedding {
    /// The floats, as a new vector.
    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }

    /// The floats.
    pub fn as_slice(&self) -> &[f32] {
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// The `len` floats of `block` from `start`: a view, nothing copied (the range lies in
    /// the block; one that does not reads as empty).
    pub(crate) fn view(block: &Arc<Vec<f32>>, start: usize, len: usize) -> Self {
        Self {
            buf: block.clone(),
            start,
            len,
        }
    }

    /// Whether it is the view of `block` from `start`.
    pub(crate) fn views(&self, block: &Arc<Vec<f32>>, start: usize) -> bool {
        Arc::ptr_eq(&self.buf, block) && self.start == start
    }
}

impl std::ops::Deref for Embedding {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl AsRef<[f32]> for Embedding {
    fn as_ref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl PartialEq for Embedding {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<[f32]> for Embedding {
    fn eq(&self, other: &[f32]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<f32>> for Embedding {
    fn eq(&self, other: &Vec<f32>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl From<Vec<f32>> for Embedding {
    fn from(v: Vec<f32>) -> Self {
        let len = v.len();
        Self {
            buf: Arc::new(v),
            start: 0,
            len,
        }
    }
}

impl From<&[f32]> for Embedding {
    fn from(v: &[f32]) -> Self {
        Self::from(v.to_vec())
    }
}

impl<const N: usize> From<[f32; N]> for Embedding {
    fn from(v: [f32; N]) -> Self {
        Self::from(v.to_vec())
    }
}

impl FromIterator<f32> for Embedding {
    fn from_iter<I: IntoIterator<Item = f32>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<f32>>())
    }
}

impl Serialize for Embedding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for Embedding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<f32>::deserialize(deserializer).map(Self::from)
    }
}

/// The mark of a retracted lineage: the version that carries it hides the record from recall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Why the record was retracted.
    pub reason: String,
}

/// One version of a memory lineage, as stored.
///
/// Versions are immutable once written except for [`MemoryRecord::retired_at`], which the
/// store sets when the next version supersedes this one. The [`MemoryRecord::checksum`] covers
/// every other field, and [`MemoryRecord::prev_checksum`] links the version to the one it
/// supersedes, so a version chain can be verified like a hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// The schema version of this record.
    pub schema: u32,
    /// The lineage id, shared by every version.
    pub id: MemoryId,
    /// The version, starting at 1 and growing by 1.
    pub version: u32,
    /// Where the memory belongs.
    pub scope: Scope,
    /// How long-lived it is.
    pub tier: Tier,
    /// What kind of statement it is.
    pub kind: MemoryKind,
    /// The text.
    pub content: String,
    /// The vector, given by the writer or computed by the embedder (shared, not copied,
    /// when the record is cloned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Embedding>,
    /// Filterable metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
    /// Who wrote it and from what.
    pub provenance: Provenance,
    /// World time: since when the statement holds (unknown if `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Timestamp>,
    /// World time: until when it holds (still holds if `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<Timestamp>,
    /// System time: when this version was recorded.
    pub recorded_at: Timestamp,
    /// System time: when a later version superseded this one (`None` while it is the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Timestamp>,
    /// How much it matters, in `0.0..=1.0`.
    pub importance: f32,
    /// Pinned records are never pruned and never dropped from an assembled context.
    #[serde(default)]
    pub pinned: bool,
    /// When pruning may remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Set on the version that retracted the lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone: Option<Tombstone>,
    /// The checksum of the version this one supersedes (`None` for version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_checksum: Option<String>,
    /// CRC-32 (hex) over a canonical encoding of every field but `retired_at` and itself.
    pub checksum: String,
}

impl MemoryRecord {
    /// Whether this version retracted the lineage.
    pub fn is_retracted(&self) -> bool {
        self.tombstone.is_some()
    }

    /// Whether the version was current at system time `at`.
    pub fn is_current_at(&self, at: Timestamp) -> bool {
        self.recorded_at <= at && self.retired_at.map_or(true, |r| at < r)
    }

    /// Whether the statement holds at world time `at` (unknown bounds hold).
    pub fn is_valid_at(&self, at: Timestamp) -> bool {
        self.valid_from.map_or(true, |f| f <= at) && self.valid_to.map_or(true, |t| at < t)
    }

    /// Recomputes the checksum from the other fields.
    pub fn compute_checksum(&self) -> String {
        let mut h = Crc32::new();
        h.update(b"aios-memory-record\0");
        h.update(self.schema.to_le_bytes());
        h.update(self.id.as_uuid().as_bytes());
        h.update(self.version.to_le_bytes());
        put_str(&mut h, self.scope.as_str());
        h.update([self.tier.index() as u8]);
        match &self.kind {
            MemoryKind::Fact => put_str(&mut h, "fact"),
            MemoryKind::Episode => put_str(&mut h, "episode"),
            MemoryKind::Preference => put_str(&mut h, "preference"),
            MemoryKind::Instruction => put_str(&mut h, "instruction"),
            MemoryKind::Summary => put_str(&mut h, "summary"),
            MemoryKind::Other(k) => {
                put_str(&mut h, "other");
                put_str(&mut h, k);
            }
        }
        put_str(&mut h, &self.content);
        match &self.embedding {
            Some(v) => {
                h.update((v.len() as u64).to_le_bytes());
                put_floats(&mut h, v);
            }
            None => h.update(u64::MAX.to_le_bytes()),
        }
        h.update((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut h, k);
            put_str(&mut h, &v.to_string());
        }
        match self.provenance.author {
            Principal::Human(id) => {
                h.update([1]);
                h.update(id.as_uuid().as_bytes());
            }
            Principal::Agent(id) => {
                h.update([2]);
                h.update(id.as_uuid().as_bytes());
            }
            Principal::System => h.update([3]),
        }
        put_opt(&mut h, self.provenance.run.map(|r| *r.as_uuid().as_bytes()));
        put_opt(
            &mut h,
            self.provenance.task.map(|t| *t.as_uuid().as_bytes()),
        );
        match &self.provenance.source {
            Some(s) => {
                h.update([1]);
                put_str(&mut h, s);
            }
            None => h.update([0]),
        }
        h.update((self.provenance.derived_from.len() as u64).to_le_bytes());
        for d in &self.provenance.derived_from {
            h.update(d.as_uuid().as_bytes());
        }
        put_time(&mut h, self.valid_from);
        put_time(&mut h, self.valid_to);
        put_time(&mut h, Some(self.recorded_at));
        h.update(self.importance.to_le_bytes());
        h.update([u8::from(self.pinned)]);
        put_time(&mut h, self.expires_at);
        match &self.tombstone {
            Some(t) => {
                h.update([1]);
                put_str(&mut h, &t.reason);
            }
            None => h.update([0]),
        }
        match &self.prev_checksum {
            Some(p) => {
                h.update([1]);
                put_str(&mut h, p);
            }
            None => h.update([0]),
        }
        to_hex(&h.finalize().to_be_bytes())
    }

    /// A copy without the embedding (the vector is not copied).
    pub(crate) fn clone_without_embedding(&self) -> MemoryRecord {
        MemoryRecord {
            schema: self.schema,
            id: self.id,
            version: self.version,
            scope: self.scope.clone(),
            tier: self.tier,
            kind: self.kind.clone(),
            content: self.content.clone(),
            embedding: None,
            metadata: self.metadata.clone(),
            provenance: self.provenance.clone(),
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            recorded_at: self.recorded_at,
            retired_at: self.retired_at,
            importance: self.importance,
            pinned: self.pinned,
            expires_at: self.expires_at,
            tombstone: self.tombstone.clone(),
            prev_checksum: self.prev_checksum.clone(),
            checksum: self.checksum.clone(),
        }
    }

    /// Sets [`MemoryRecord::checksum`] from the other fields.
    pub fn seal(&mut self) {
        self.checksum = self.compute_checksum();
    }

    /// Whether the stored checksum matches the fields.
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.compute_checksum()
    }
}

/// The floats' little-endian bytes: read in place where that is how they are held.
#[cfg(target_endian = "little")]
fn put_floats(h: &mut Crc32, v: &[f32]) {
    h.update(bytemuck::cast_slice::<f32, u8>(v));
}

/// The floats' little-endian bytes, converted a block at a time.
#[cfg(not(target_endian = "little"))]
fn put_floats(h: &mut Crc32, v: &[f32]) {
    let mut buf = [0u8; 4 * 256];
    for chunk in v.chunks(256) {
        for (dst, x) in buf.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&x.to_le_bytes());
        }
        h.update(buf.get(..chunk.len() * 4).unwrap_or_default());
    }
}

/// The record checksum: CRC-32 (hardware-accelerated) over a canonical encoding of the
/// fields. It detects corruption and broken version chains; tamper evidence is the audit
/// log's job (SHA-256 chain), not the memory store's.
///
/// The many small fields are gathered in a buffer and hashed together: the hasher's cost is
/// per call, and most fields are a few bytes.
struct Crc32 {
    hasher: crc32fast::Hasher,
    buf: [u8; 256],
    len: usize,
}

impl Crc32 {
    fn new() -> Self {
        Self {
            hasher: crc32fast::Hasher::new(),
            buf: [0; 256],
            len: 0,
        }
    }

    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(free) => {
                free.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => {
                self.flush();
                if bytes.len() >= self.buf.len() {
                    self.hasher.update(bytes);
                } else if let Some(free) = self.buf.get_mut(..bytes.len()) {
                    free.copy_from_slice(bytes);
                    self.len = bytes.len();
                }
            }
        }
    }

    fn flush(&mut self) {
        self.hasher
            .update(self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
    }

    fn finalize(mut self) -> u32 {
        self.flush();
        self.hasher.finalize()
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn put_str(h: &mut Crc32, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn put_opt(h: &mut Crc32, b: Option<[u8; 16]>) {
    match b {
        Some(b) => {
            h.update([1]);
            h.update(b);
        }
        None => h.update([0]),
    }
}

fn put_time(h: &mut Crc32, t: Option<Timestamp>) {
    match t {
        Some(t) => {
            h.update([1]);
            h.update(t.timestamp().to_le_bytes());
            h.update(t.timestamp_subsec_nanos().to_le_bytes());
        }
        None => h.update([0]),
    }
}

/// What to remember: the input of [`crate::Memory::remember`].
///
/// ```
/// use aios_memory::{MemoryKind, NewMemory, Scope, Tier};
/// use aios_core::Principal;
/// let m = NewMemory::new(Scope::parse("org/acme")?, Tier::Project, "the invoice is due friday", Principal::System)
///     .kind(MemoryKind::Fact)
///     .importance(0.8)
///     .meta("customer", "acme");
/// assert_eq!(m.importance, 0.8);
/// # Ok::<(), aios_memory::MemoryError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NewMemory {
    /// Where it belongs.
    pub scope: Scope,
    /// How long-lived it is.
    pub tier: Tier,
    /// What kind of statement it is.
    pub kind: MemoryKind,
    /// The text.
    pub content: String,
    /// A vector; when `None` the memory's embedder (if any) computes it.
    pub embedding: Option<Embedding>,
    /// Filterable metadata.
    pub metadata: Metadata,
    /// Who wrote it and from what.
    pub provenance: Provenance,
    /// World time since when it holds.
    pub valid_from: Option<Timestamp>,
    /// World time until when it holds.
    pub valid_to: Option<Timestamp>,
    /// How much it matters, in `0.0..=1.0` (default 0.5).
    pub importance: f32,
    /// Never pruned, never dropped from context.
    pub pinned: bool,
    /// When pruning may remove it.
    pub expires_at: Option<Timestamp>,
    /// System time to record the version at instead of the clock's now, for importing or
    /// backfilling history (the clock does not move). It may not lie after the clock's now.
    pub recorded_at: Option<Timestamp>,
    /// The lineage id to use instead of a fresh one, for writes that must happen once: a
    /// writer that may repeat the write (after a crash, say) derives the id from what it is
    /// doing, and a repeated write returns the record already written (see
    /// [`Memory::remember`](crate::Memory::remember)).
    pub id: Option<MemoryId>,
}

impl NewMemory {
    /// A fact in `scope` and `tier` written by `author`, importance 0.5.
    pub fn new(scope: Scope, tier: Tier, content: impl Into<String>, author: Principal) -> Self {
        Self {
            scope,
            tier,
            kind: MemoryKind::Fact,
            content: content.into(),
            embedding: None,
            metadata: Metadata::new(),
            provenance: Provenance::by(author),
            valid_from: None,
            valid_to: None,
            importance: 0.5,
            pinned: false,
            expires_at: None,
            recorded_at: None,
            id: None,
        }
    }

    /// Records it at system time `at` instead of now (see [`NewMemory::recorded_at`]).
    pub fn recorded_at(mut self, at: Timestamp) -> Self {
        self.recorded_at = Some(at);
        self
    }

    /// Writes under lineage `id` (see [`NewMemory::id`]).
    pub fn with_id(mut self, id: MemoryId) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: MemoryKind) -> Self {
        self.kind = kind;
        self
    }

    /// Supplies the vector instead of asking the embedder.
    pub fn embedding(mut self, embedding: impl Into<Embedding>) -> Self {
        self.embedding = Some(embedding.into());
        self
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the whole provenance.
    pub fn provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = provenance;
        self
    }

    /// Records the run it was written in.
    pub fn run(mut self, run: RunId) -> Self {
        self.provenance.run = Some(run);
        self
    }

    /// Records the task it was written in.
    pub fn task(mut self, task: TaskId) -> Self {
        self.provenance.task = Some(task);
        self
    }

    /// Records where it came from.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.provenance.source = Some(source.into());
        self
    }

    /// Records the memories it was derived from.
    pub fn derived_from(mut self, ids: impl IntoIterator<Item = MemoryId>) -> Self {
        self.provenance.derived_from.extend(ids);
        self
    }

    /// Sets the world-time interval in which it holds.
    pub fn valid(mut self, from: Option<Timestamp>, to: Option<Timestamp>) -> Self {
        self.valid_from = from;
        self.valid_to = to;
        self
    }

    /// Sets the importance (clamped to `0.0..=1.0`).
    pub fn importance(mut self, importance: f32) -> Self {
        self.importance = importance;
        self
    }

    /// Pins it.
    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// Sets when pruning may remove it.
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// A change to a memory: the input of [`crate::Memory::revise`]. Fields left `None` keep the
/// previous version's value.
///
/// ```
/// use aios_memory::Revision;
/// use aios_core::Principal;
/// let r = Revision::new(Principal::System).content("due monday").expect_version(1);
/// assert_eq!(r.expected_version, Some(1));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Revision {
    /// Who revises, and from what; replaces the provenance of the new version.
    pub provenance: Option<Provenance>,
    /// Only revise if the latest version is this one (otherwise a conflict).
    pub expected_version: Option<u32>,
    /// New text (the embedding is recomputed unless one is given).
    pub content: Option<String>,
    /// New vector.
    pub embedding: Option<Embedding>,
    /// New tier.
    pub tier: Option<Tier>,
    /// New kind.
    pub kind: Option<MemoryKind>,
    /// Entries to set in the metadata.
    pub metadata: Metadata,
    /// New world-time start.
    pub valid_from: Option<Timestamp>,
    /// New world-time end.
    pub valid_to: Option<Timestamp>,
    /// New importance.
    pub importance: Option<f32>,
    /// New pin state.
    pub pinned: Option<bool>,
    /// New expiry.
    pub expires_at: Option<Timestamp>,
    /// System time to record the new version at instead of the clock's now, for backfilling
    /// history: not before the latest version's `recorded_at`, not after now.
    pub recorded_at: Option<Timestamp>,
}

impl Revision {
    /// A revision by `author`.
    pub fn new(author: Principal) -> Self {
        Self {
            provenance: Some(Provenance::by(author)),
            ..Self::default()
        }
    }

    /// Replaces the text.
    pub fn content(mut self, content: impl Into<String>) -> Self {
        self.content = Some(content.into());
        self
    }

    /// Replaces the vector.
    pub fn embedding(mut self, embedding: impl Into<Embedding>) -> Self {
        self.embedding = Some(embedding.into());
        self
    }

    /// Requires the latest version to be `version`.
    pub fn expect_version(mut self, version: u32) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Moves it to another tier.
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = Some(tier);
        self
    }

    /// Sets a metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the world-time start.
    pub fn valid_from(mut self, at: Timestamp) -> Self {
        self.valid_from = Some(at);
        self
    }

    /// Sets the world-time end (the statement stops holding then).
    pub fn valid_to(mut self, at: Timestamp) -> Self {
        self.valid_to = Some(at);
        self
    }

    /// Sets the importance.
    pub fn importance(mut self, importance: f32) -> Self {
        self.importance = Some(importance);
        self
    }

    /// Pins or unpins.
    pub fn pinned(mut self, pinned: bool) -> Self {
        self.pinned = Some(pinned);
        self
    }

    /// Records the new version at system time `at` (see [`Revision::recorded_at`]).
    pub fn recorded_at(mut self, at: Timestamp) -> Self {
        self.recorded_at = Some(at);
        self
    }

    /// Records the source of the change.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        if let Some(p) = self.provenance.as_mut() {
            p.source = Some(source.into());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aios_core::{IdGen, ManualClock};

    fn record() -> MemoryRecord {
        let ids = IdGen::new(ManualClock::default(), 1);
        let mut r = MemoryRecord {
            schema: MEMORY_SCHEMA_VERSION,
            id: ids.next(),
            version: 1,
            scope: Scope::parse("a/b").unwrap(),
            tier: Tier::Project,
            kind: MemoryKind::Fact,
            content: "hello".into(),
            embedding: Some(vec![0.5, -0.25].into()),
            metadata: Metadata::from([("k".to_string(), serde_json::json!(1))]),
            provenance: Provenance::by(Principal::System),
            valid_from: None,
            valid_to: None,
            recorded_at: ManualClock::default().now_for_test(),
            retired_at: None,
            importance: 0.5,
            pinned: false,
            expires_at: None,
            tombstone: None,
            prev_checksum: None,
            checksum: String::new(),
        };
        r.seal();
        r
    }

    trait NowForTest {
        fn now_for_test(&self) -> Timestamp;
    }
    impl NowForTest for ManualClock {
        fn now_for_test(&self) -> Timestamp {
            aios_core::Clock::now(self)
        }
    }

    #[test]
    fn checksum_covers_fields_but_not_retirement() {
        let r = record();
        assert!(r.checksum_ok());
        let mut retired = r.clone();
        retired.retired_at = Some(r.recorded_at);
        assert!(retired.checksum_ok());
        type Mutation = Box<dyn Fn(&mut MemoryRecord)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|r| r.content.push('!')),
            Box::new(|r| r.version += 1),
            Box::new(|r| r.embedding = Some(vec![0.5, -0.26].into())),
            Box::new(|r| r.importance = 0.9),
            Box::new(|r| r.pinned = true),
            Box::new(|r| {
                r.metadata.insert("k".into(), serde_json::json!(2));
            }),
            Box::new(|r| r.tier = Tier::Working),
            Box::new(|r| r.prev_checksum = Some("x".into())),
        ];
        for (i, m) in mutations.iter().enumerate() {
            let mut c = r.clone();
            m(&mut c);
            assert!(!c.checksum_ok(), "mutation {i} is detected");
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = record();
        let json = serde_json::to_string(&r).unwrap();
        let back: MemoryRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(back.checksum_ok());
    }

    /// The checksum is stored with every record (the SQLite and PostgreSQL stores keep it),
    /// so its encoding never changes: these values were computed before the hasher was
    /// buffered, over records with and without a long embedding, metadata and a predecessor.
    #[test]
    fn checksums_are_stable_across_releases() {
        let r = record();
        let mut long = record();
        long.embedding = Some((0..1000).map(|i| (i as f32 * 0.37).sin()).collect());
        long.metadata
            .insert("project".into(), serde_json::json!({"n": 3}));
        long.metadata.insert("a".into(), serde_json::json!("x"));
        long.prev_checksum = Some("00ff".into());
        long.content = "é".repeat(300);
        long.seal();
        assert_eq!(
            (r.checksum.as_str(), long.checksum.as_str()),
            ("e17aa79e", "d2d6c077")
        );
    }
}
