//! The memory service: writes through the store, keeps the indexes, answers recalls.

use std::sync::Arc;

use aios_core::{
    AuditEvent, AuditLog, AuditRecord, Clock, Embedder, IdGen, MemoryId, Principal, StoreError,
    Timestamp,
};
use parking_lot::RwLock;

use crate::index::{
    micros, tokenize, Index, Prepared, Scratch, Stem, BLOCK_BYTES, PARALLEL_MIN, SHARE_MIN,
};
use crate::rank::{rank, Signals};
use crate::{
    Embedding, GetOptions, Grant, GrantSubject, InMemoryMemoryStore, KeywordOptions, MemoryError,
    MemoryRecord, MemoryStore, MemoryView, NewMemory, RecallHit, RecallMode, RecallQuery, Revision,
    Scope, ScoreBreakdown, Tier, Tombstone, ViewSubject, MEMORY_SCHEMA_VERSION,
};

/// How many lineages [`Memory::open`] reads per store page.
const SCAN_PAGE: usize = 512;

/// Layered memory: the main entry point.
///
/// Owns a [`MemoryStore`] (the records), an optional [`Embedder`], a [`Clock`] and an
/// [`IdGen`], and keeps in-process indexes (an exact vector matrix and a BM25 inverted index)
/// that [`Memory::open`] rebuilds from the store, so every backend recalls identically.
/// Clones share everything.
///
/// ```
/// use std::sync::Arc;
/// use aios_core::{HashEmbedder, ManualClock, Principal};
/// use aios_memory::{Memory, NewMemory, RecallQuery, Revision, Scope, Tier};
/// # futures::executor::block_on(async {
/// let memory = Memory::builder(Arc::new(ManualClock::default()))
///     .embedder(Arc::new(HashEmbedder::new(64)))
///     .open()
///     .await?;
/// let scope = Scope::parse("org/acme")?;
/// let fact = memory
///     .remember(NewMemory::new(scope.clone(), Tier::Project, "the invoice is due friday", Principal::System))
///     .await?;
/// let revised = memory
///     .revise(fact.id, Revision::new(Principal::System).content("the invoice is due monday"))
///     .await?;
/// assert_eq!(revised.version, 2);
/// let hits = memory.recall(&RecallQuery::text("when is the invoice due").in_scope(scope).k(5)).await?;
/// assert_eq!(hits[0].record.content, "the invoice is due monday");
/// assert_eq!(memory.history(fact.id).await?.len(), 2);
/// # Ok::<(), aios_memory::MemoryError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn MemoryStore>,
    embedder: Option<Arc<dyn Embedder>>,
    pub(crate) clock: Arc<dyn Clock>,
    ids: IdGen,
    audit: Option<Arc<dyn AuditLog>>,
    pub(crate) index: RwLock<Index>,
    /// The keyword working space of earlier batches, kept for the next ones (at most one
    /// per batch written at once, and only of the usual size): reused, its memory is already
    /// the process's, where a fresh one costs page faults on every batch.
    scratch: parking_lot::Mutex<Vec<Scratch>>,
}

/// Configures and opens a [`Memory`].
#[derive(Debug)]
pub struct MemoryBuilder {
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn MemoryStore>>,
    embedder: Option<Arc<dyn Embedder>>,
    audit: Option<Arc<dyn AuditLog>>,
    seed: u64,
    keyword: KeywordOptions,
    write_threads: usize,
    #[cfg(feature = "ann")]
    ann: Option<crate::AnnOptions>,
}

impl MemoryBuilder {
    /// Uses `store` (default: a new [`InMemoryMemoryStore`]).
    pub fn store(mut self, store: Arc<dyn MemoryStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Computes embeddings with `embedder` for records and queries that bring none.
    pub fn embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// Appends an [`AuditEvent::MemoryWritten`] for every remember, revise, retract and prune.
    pub fn audit(mut self, log: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(log);
        self
    }

    /// Seeds the id generator (default: a seed from the operating system,
    /// [`aios_core::os_seed`], so two processes writing one store never draw the same ids in
    /// the same millisecond). Tests that need reproducible ids pass a fixed seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets how keyword search tokenises and scores (default [`KeywordOptions::default`]).
    /// The index is built with them, so reopening a store with other options rebuilds it
    /// their way.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{ManualClock, Principal};
    /// use aios_memory::{KeywordOptions, Memory, NewMemory, RecallQuery, Scope, Stemming, Tier};
    /// # futures::executor::block_on(async {
    /// let memory = Memory::builder(Arc::new(ManualClock::default()))
    ///     .keyword(KeywordOptions::default().stemming(Stemming::English))
    ///     .open()
    ///     .await?;
    /// memory
    ///     .remember(NewMemory::new(Scope::parse("a")?, Tier::Project, "two invoices paid", Principal::System))
    ///     .await?;
    /// assert_eq!(memory.recall(&RecallQuery::text("invoice")).await?.len(), 1);
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    pub fn keyword(mut self, options: KeywordOptions) -> Self {
        self.keyword = options;
        self
    }

    /// Sets how many threads index a batch written with [`Memory::remember_many`] (and the
    /// store's records when the memory opens): 1 (the default) or 2. With 2, a batch of at
    /// least 256 records is split with a second thread, started for the batch: it finds the
    /// batch's keyword terms while the calling thread stores and audits the records, and
    /// copies their vectors into the index while the calling thread places the rows and
    /// postings. What is indexed is the same either way, and a thread that cannot be started
    /// leaves the work to the caller's. Worth it on a machine with a core to spare for bulk
    /// imports (about 1.4 times the records per second on two cores); a smaller batch, and
    /// every single write, stays on the caller's thread. [`MemoryBuilder::open`]
    /// fails with [`MemoryError::InvalidInput`] naming `write_threads` for any other number.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{ManualClock, Principal};
    /// use aios_memory::{Memory, NewMemory, RecallQuery, Scope, Tier};
    /// # futures::executor::block_on(async {
    /// let memory = Memory::builder(Arc::new(ManualClock::default()))
    ///     .write_threads(2)
    ///     .open()
    ///     .await?;
    /// let scope = Scope::parse("import")?;
    /// let batch = (0..300)
    ///     .map(|i| NewMemory::new(scope.clone(), Tier::Project, format!("note {i}"), Principal::System))
    ///     .collect();
    /// memory.remember_many(batch).await?;
    /// assert_eq!(memory.recall(&RecallQuery::text("note").k(500)).await?.len(), 300);
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    pub fn write_threads(mut self, n: usize) -> Self {
        self.write_threads = n;
        self
    }

    /// Keeps an approximate vector index (an inverted file: the vectors grouped in lists
    /// around k-means centres) beside the exact one and answers vector recall from it once
    /// the memory holds [`crate::AnnOptions::min_vectors`] vectors (feature `ann`). Filters
    /// stay exact: every hit passes the query's scope, tier, time, kind and metadata
    /// filters, and a recall whose filters let few rows through, or for which the index
    /// finds too few, scans exactly. What becomes approximate is which rows are found: a hit
    /// is never wrong, but one of the true top `k` may be missed. Every vector written joins
    /// the list of its nearest centre at once, and the lists are found again each time the
    /// memory has grown fourfold (the write that crosses that mark takes longer; see
    /// `benches/RESULTS.md`); opening rebuilds the index from the store.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{HashEmbedder, ManualClock, Principal};
    /// use aios_memory::{AnnOptions, Memory, NewMemory, RecallQuery, Scope, Tier};
    /// # futures::executor::block_on(async {
    /// let memory = Memory::builder(Arc::new(ManualClock::default()))
    ///     .embedder(Arc::new(HashEmbedder::new(32)))
    ///     .ann(AnnOptions::default().min_vectors(0))
    ///     .open()
    ///     .await?;
    /// let scope = Scope::parse("org/acme")?;
    /// for text in ["the invoice is due friday", "the office moves in may"] {
    ///     memory.remember(NewMemory::new(scope.clone(), Tier::Project, text, Principal::System)).await?;
    /// }
    /// let hits = memory.recall(&RecallQuery::text("invoice due friday").k(1)).await?;
    /// assert_eq!(hits[0].record.content, "the invoice is due friday");
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    #[cfg(feature = "ann")]
    pub fn ann(mut self, options: crate::AnnOptions) -> Self {
        self.ann = Some(options);
        self
    }

    /// Opens the memory, rebuilding the indexes from every record in the store. Fails with
    /// [`MemoryError::InvalidInput`] on invalid [`KeywordOptions`], a `write_threads` other
    /// than 1 or 2 (or invalid `AnnOptions`, with the feature `ann`).
    pub async fn open(self) -> Result<Memory, MemoryError> {
        self.keyword.check()?;
        if !(1..=2).contains(&self.write_threads) {
            return Err(MemoryError::invalid(
                "write_threads",
                format!("`{}` is neither 1 nor 2", self.write_threads),
            ));
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(InMemoryMemoryStore::new()));
        let mut index = Index::new(self.keyword);
        index.threads = self.write_threads;
        #[cfg(feature = "ann")]
        if let Some(options) = self.ann {
            options.check()?;
            index.enable_ann(options);
        }
        if let Some(e) = &self.embedder {
            index.dims = Some(e.dimensions());
        }
        let mut after = None;
        loop {
            let page = store.scan(after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            // every vector of the page checked against the index's dimension (fixed by the
            // first vector seen), then the page indexed together
            for record in &page {
                if let Some(e) = &record.embedding {
                    if index.dims.is_none() && record.tombstone.is_none() {
                        index.dims = Some(e.len());
                    }
                    if index.check_dims(e.len()).is_err() {
                        return Err(StoreError::Corrupt {
                            location: format!("memory {} version {}", record.id, record.version),
                            detail: format!(
                                "embedding has {} dimensions, the index has {:?}",
                                e.len(),
                                index.dims
                            ),
                        }
                        .into());
                    }
                }
            }
            index.insert_many(page.iter().map(|r| (r, Prepared::of(r))));
        }
        Ok(Memory {
            inner: Arc::new(Inner {
                store,
                embedder: self.embedder,
                ids: IdGen::with_clock(self.clock.clone(), self.seed),
                clock: self.clock,
                audit: self.audit,
                index: RwLock::new(index),
                scratch: parking_lot::Mutex::new(Vec::new()),
            }),
        })
    }
}

fn clamp_importance(x: f32) -> Result<f32, MemoryError> {
    if x.is_finite() {
        Ok(x.clamp(0.0, 1.0))
    } else {
        Err(MemoryError::invalid(
            "importance",
            format!("`{x}` is not finite"),
        ))
    }
}

impl Memory {
    /// Starts configuring a memory that reads time from `clock`.
    pub fn builder(clock: Arc<dyn Clock>) -> MemoryBuilder {
        MemoryBuilder {
            clock,
            store: None,
            embedder: None,
            audit: None,
            seed: aios_core::os_seed(),
            keyword: KeywordOptions::default(),
            write_threads: 1,
            #[cfg(feature = "ann")]
            ann: None,
        }
    }

    /// Opens a memory over `store` with no embedder and no audit log, rebuilding the indexes
    /// from the store: shorthand for `Memory::builder(clock).store(store).open()`.
    pub async fn open(
        store: Arc<dyn MemoryStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Memory, MemoryError> {
        Memory::builder(clock).store(store).open().await
    }

    /// The store records live in.
    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.inner.store
    }

    /// The clock this memory reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The dimension of vectors in the index, once known.
    pub fn dimensions(&self) -> Option<usize> {
        self.inner.index.read().dims
    }

    /// How many lineages the index holds (retracted ones included, pruned ones not).
    pub fn len(&self) -> usize {
        self.inner.index.read().lineage_count()
    }

    /// How many vectors the approximate index holds (every version with an embedding that
    /// was indexed, pruned ones included until the memory is reopened), or `None` without
    /// one (feature `ann`).
    #[cfg(feature = "ann")]
    pub fn approximate_vectors(&self) -> Option<usize> {
        self.inner.index.read().ann_nodes()
    }

    /// Whether the memory holds no lineage.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    async fn embed_text(&self, text: &str) -> Result<Option<Vec<f32>>, MemoryError> {
        let Some(e) = &self.inner.embedder else {
            return Ok(None);
        };
        let mut out = e.embed(&[text.to_owned()]).await?;
        match out.pop() {
            Some(v) if out.is_empty() => Ok(Some(v)),
            _ => Err(MemoryError::Embed(aios_core::EmbedError::InvalidInput(
                "embedder returned the wrong number of vectors".into(),
            ))),
        }
    }

    fn check_vector(&self, field: &str, v: &[f32]) -> Result<(), MemoryError> {
        if v.is_empty() {
            return Err(MemoryError::invalid(field, "empty vector"));
        }
        if !crate::index::all_finite(v) {
            let bad = v
                .iter()
                .find(|x| !x.is_finite())
                .copied()
                .unwrap_or(f32::NAN);
            return Err(MemoryError::invalid(
                field,
                format!("value `{bad}` is not finite"),
            ));
        }
        if let Err(d) = self.inner.index.read().check_dims(v.len()) {
            return Err(MemoryError::invalid(
                field,
                format!("{} dimensions where the index has {d}", v.len()),
            ));
        }
        Ok(())
    }

    async fn audit(
        &self,
        actor: Principal,
        record: &MemoryRecord,
        operation: &str,
    ) -> Result<(), MemoryError> {
        let event = AuditEvent::MemoryWritten {
            memory: record.id,
            version: record.version,
            scope: record.scope.to_string(),
            operation: operation.into(),
            run: record.provenance.run,
            task: record.provenance.task,
        };
        self.append_audit(actor, event, record.id, record.version)
            .await
    }

    /// Stores a new lineage at version 1 and indexes it. The embedding is the one given or,
    /// if none and an embedder is configured, the embedder's. The version is recorded at the
    /// clock's now, or at [`NewMemory::recorded_at`] when set (backfilling: the clock does
    /// not move).
    ///
    /// With [`NewMemory::id`] set the write is idempotent: if that lineage exists and its
    /// first version has the same scope, tier, kind and content, that version is returned and
    /// nothing is written; if it holds something else the write fails with
    /// [`StoreError::AlreadyExists`] naming the id.
    pub async fn remember(&self, new: NewMemory) -> Result<MemoryRecord, MemoryError> {
        if let Some(existing) = self.existing(&new).await? {
            return Ok(existing);
        }
        let embedding = match &new.embedding {
            Some(_) => None,
            None => self.embed_text(&new.content).await?.map(Embedding::from),
        };
        let record = self.build(new, embedding)?;
        self.commit(record, None, "remember").await
    }

    /// Remembers many records, in order, each exactly as [`Memory::remember`] would: each is
    /// validated, written and audited on its own, and one with [`NewMemory::id`] set is
    /// idempotent (a repeat returns the record already written). Records without an
    /// embedding are embedded in one call to the embedder. Returns the records in input
    /// order.
    ///
    /// The batch is indexed together once it is written (recall sees it when the call
    /// returns, or, after a failure, before the error returns): its keyword terms are found
    /// before the index is locked (on a second thread while the records are stored, with
    /// [`MemoryBuilder::write_threads`]`(2)`), the postings are appended per term rather than
    /// per record, and with an approximate index the
    /// new vectors are linked as one batch (by several threads with `AnnOptions::threads`).
    /// The result is the index single writes build.
    ///
    /// Every record is validated before anything is written, so an invalid one fails the
    /// call with nothing written. A failure while writing (the store, the audit log) stops
    /// there: the records before it stay written and audited, and the error says how many
    /// ([`MemoryError::Batch`]); repeating the call with the same ids finishes the work.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{ManualClock, MemoryId, Principal};
    /// use aios_memory::{Memory, NewMemory, Scope, Tier};
    /// # futures::executor::block_on(async {
    /// let memory = Memory::builder(Arc::new(ManualClock::default())).open().await?;
    /// let scope = Scope::parse("org/acme")?;
    /// let batch: Vec<NewMemory> = (0..3)
    ///     .map(|i| {
    ///         NewMemory::new(scope.clone(), Tier::Project, format!("note {i}"), Principal::System)
    ///             .with_id(MemoryId::from_name(&format!("note-{i}")))
    ///     })
    ///     .collect();
    /// let written = memory.remember_many(batch.clone()).await?;
    /// assert_eq!(written.len(), 3);
    /// // idempotent per record: a repeat writes nothing new
    /// assert_eq!(memory.remember_many(batch).await?, written);
    /// assert_eq!(memory.len(), 3);
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    pub async fn remember_many(
        &self,
        batch: Vec<NewMemory>,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        let tag = |index: usize, e: MemoryError| MemoryError::Batch {
            index,
            written: 0,
            source: Box::new(e),
        };
        // embed in one call what brings no vector
        let wanted: Vec<usize> = batch
            .iter()
            .enumerate()
            .filter(|(_, n)| n.embedding.is_none())
            .map(|(i, _)| i)
            .collect();
        let mut vectors: Vec<Option<Embedding>> = vec![None; batch.len()];
        if let (Some(e), false) = (&self.inner.embedder, wanted.is_empty()) {
            let texts: Vec<String> = wanted
                .iter()
                .filter_map(|i| batch.get(*i).map(|n| n.content.clone()))
                .collect();
            let out = e.embed(&texts).await?;
            if out.len() != texts.len() {
                return Err(MemoryError::Embed(aios_core::EmbedError::InvalidInput(
                    "embedder returned the wrong number of vectors".into(),
                )));
            }
            for (i, v) in wanted.into_iter().zip(out) {
                if let Some(slot) = vectors.get_mut(i) {
                    *slot = Some(v.into());
                }
            }
        }
        // The texts' keyword terms are found while the batch is sealed and written: on a
        // second thread with two write threads, else here once it is written; either way
        // outside the index's lock.
        let (stemmer, threads) = {
            let index = self.inner.index.read();
            (index.stemmer(), index.threads)
        };
        let scratch = self.inner.scratch.lock().pop().unwrap_or_default();
        let (helper, scratch) = if threads > 1 && batch.len() >= PARALLEL_MIN {
            (spawn_tokenize(scratch, stemmer.clone(), &batch), None)
        } else {
            (None, Some(scratch))
        };
        // validate every record before writing any
        let mut planned: Vec<Result<MemoryRecord, NewMemory>> = Vec::with_capacity(batch.len());
        for (i, (new, vector)) in batch.into_iter().zip(vectors).enumerate() {
            if new.id.is_some() {
                // may already exist: decided when its turn comes, like a single write
                self.validate(&new, vector.as_deref())
                    .map_err(|e| tag(i, e))?;
                let mut new = new;
                if new.embedding.is_none() {
                    new.embedding = vector;
                }
                planned.push(Err(new));
            } else {
                planned.push(Ok(self.build(new, vector).map_err(|e| tag(i, e))?));
            }
        }
        // the new records' vectors in one block that they view and the index adopts: each
        // vector is then held once (not by the store and again by the index)
        let blocks = self.share_vectors(&mut planned);
        // Each record is stored and audited in turn, as `remember` would; the fresh ones are
        // indexed together (one lock, the keyword postings grouped per term) once the batch
        // is done or, on a failure, before the error returns, so the index always ends up
        // with exactly what the store holds.
        let mut out = Vec::with_capacity(planned.len());
        let mut fresh: Vec<usize> = Vec::with_capacity(planned.len());
        let mut failed = None;
        for (i, p) in planned.into_iter().enumerate() {
            let record = match p {
                Ok(record) => record,
                Err(new) => match self.existing(&new).await {
                    Ok(Some(existing)) => {
                        out.push(existing);
                        continue;
                    }
                    Ok(None) => match self.build(new, None) {
                        Ok(record) => record,
                        Err(e) => {
                            failed = Some((i, e));
                            break;
                        }
                    },
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                },
            };
            if let Err(e) = self.inner.store.put(record.clone(), None).await {
                failed = Some((i, e.into()));
                break;
            }
            fresh.push(out.len());
            out.push(record);
            let audited = match out.last() {
                Some(r) => self.audit(r.provenance.author, r, "remember").await,
                None => Ok(()),
            };
            if let Err(e) = audited {
                failed = Some((i, e));
                break;
            }
        }
        let scratch = match helper.map(std::thread::JoinHandle::join) {
            Some(Ok(scratch)) => scratch,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            // the texts are the contents the batch came with: out[i] is batch[i]
            None => tokenize(
                scratch.unwrap_or_default(),
                stemmer.as_deref(),
                out.iter().map(|r| Some(r.content.as_str())),
            ),
        };
        let batch: Vec<(&MemoryRecord, u32)> = fresh
            .iter()
            .filter_map(|&i| Some((out.get(i)?, i as u32)))
            .collect();
        self.inner
            .index
            .write()
            .insert_tokenized(&batch, scratch.tokenized(), &blocks);
        if scratch.worth_keeping() {
            let mut kept = self.inner.scratch.lock();
            if kept.len() < 2 {
                kept.push(scratch);
            }
        }
        match failed {
            None => Ok(out),
            Some((index, e)) => Err(MemoryError::Batch {
                index,
                // a record stored but not audited is not counted as written
                written: index,
                source: Box::new(e),
            }),
        }
    }

    /// Gathers the vectors of a batch's new records into blocks (of up to [`BLOCK_BYTES`]),
    /// and has each record view its row of them instead of holding its own (the floats are
    /// the same, and so is every checksum). The store, the records returned and the index
    /// (which adopts the blocks, see [`Index::insert_tokenized`]) then share one copy, and the
    /// caller's vectors are freed as they are gathered. Only for a batch of at least
    /// [`SHARE_MIN`] vectors of the index's length with no write under a given id (those are
    /// decided one by one); otherwise none, and the vectors are copied into the index as for
    /// a single write.
    fn share_vectors(&self, planned: &mut [Result<MemoryRecord, NewMemory>]) -> Vec<Arc<Vec<f32>>> {
        if planned.iter().any(Result::is_err) {
            return Vec::new();
        }
        let dims = self.inner.index.read().dims.or_else(|| {
            planned
                .iter()
                .flatten()
                .find_map(|r| r.embedding.as_ref())
                .map(|e| e.len())
        });
        let Some(dims) = dims.filter(|&d| d > 0) else {
            return Vec::new();
        };
        let takes = |e: &Embedding| e.len() == dims;
        let mut taking: Vec<&mut Embedding> = planned
            .iter_mut()
            .flatten()
            .filter_map(|r| r.embedding.as_mut().filter(|e| takes(e)))
            .collect();
        if taking.len() < SHARE_MIN {
            return Vec::new();
        }
        let per_block = (BLOCK_BYTES / (dims * std::mem::size_of::<f32>())).max(1);
        let mut blocks = Vec::with_capacity(taking.len().div_ceil(per_block));
        for group in taking.chunks_mut(per_block) {
            let mut floats = Vec::with_capacity(group.len() * dims);
            for e in group.iter() {
                floats.extend_from_slice(e);
            }
            let block = Arc::new(floats);
            for (i, e) in group.iter_mut().enumerate() {
                **e = Embedding::view(&block, i * dims, dims);
            }
            blocks.push(block);
        }
        blocks
    }

    /// For a write with an id: the version already written under it if it is the same
    /// memory (auditing it if an earlier attempt stopped before its audit entry), an error if
    /// the id holds another, `None` if it is free.
    async fn existing(&self, new: &NewMemory) -> Result<Option<MemoryRecord>, MemoryError> {
        let Some(id) = new.id else {
            return Ok(None);
        };
        match self.inner.store.get(id, Some(1)).await {
            Ok(existing) => {
                if existing.scope == new.scope
                    && existing.tier == new.tier
                    && existing.kind == new.kind
                    && existing.content == new.content
                {
                    // the earlier attempt may have stopped between the store write and
                    // its audit entry: a write is never left unaudited
                    if !self.audited(id, 1).await? {
                        self.audit(existing.provenance.author, &existing, "remember")
                            .await?;
                    }
                    Ok(Some(existing))
                } else {
                    Err(StoreError::AlreadyExists {
                        what: format!("memory {id} with other content"),
                    }
                    .into())
                }
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a new memory (with `embedded`, the embedder's vector when it brings none).
    fn validate(&self, new: &NewMemory, embedded: Option<&[f32]>) -> Result<(), MemoryError> {
        clamp_importance(new.importance)?;
        if new.content.trim().is_empty() {
            return Err(MemoryError::invalid("content", "empty"));
        }
        if let (Some(f), Some(t)) = (new.valid_from, new.valid_to) {
            if t < f {
                return Err(MemoryError::invalid("valid_to", "before `valid_from`"));
            }
        }
        if let Some(at) = new.recorded_at {
            let now = self.now();
            if at > now {
                return Err(MemoryError::invalid(
                    "recorded_at",
                    format!("`{at}` is after the clock's now `{now}`"),
                ));
            }
        }
        if let Some(v) = new.embedding.as_deref().or(embedded) {
            self.check_vector("embedding", v)?;
        }
        Ok(())
    }

    /// Validates and seals version 1 of a new memory; `embedded` is the embedder's vector
    /// for a memory that brings none.
    fn build(
        &self,
        new: NewMemory,
        embedded: Option<Embedding>,
    ) -> Result<MemoryRecord, MemoryError> {
        self.validate(&new, embedded.as_deref())?;
        let importance = clamp_importance(new.importance)?;
        let recorded_at = new.recorded_at.unwrap_or_else(|| self.now());
        let mut record = MemoryRecord {
            schema: MEMORY_SCHEMA_VERSION,
            id: new.id.unwrap_or_else(|| self.inner.ids.next()),
            version: 1,
            scope: new.scope,
            tier: new.tier,
            kind: new.kind,
            content: new.content,
            embedding: new.embedding.or(embedded),
            metadata: new.metadata,
            provenance: new.provenance,
            valid_from: new.valid_from,
            valid_to: new.valid_to,
            recorded_at,
            retired_at: None,
            importance,
            pinned: new.pinned,
            expires_at: new.expires_at,
            tombstone: None,
            prev_checksum: None,
            checksum: String::new(),
        };
        record.seal();
        Ok(record)
    }

    /// Writes a version to the store, then to the index, then to the audit log.
    async fn commit(
        &self,
        record: MemoryRecord,
        expected: Option<u32>,
        operation: &str,
    ) -> Result<MemoryRecord, MemoryError> {
        let prepared = Prepared::of(&record);
        self.inner.store.put(record.clone(), expected).await?;
        self.inner.index.write().insert(&record, prepared);
        self.audit(record.provenance.author, &record, operation)
            .await?;
        Ok(record)
    }

    /// The latest version, or an error naming the id.
    pub async fn get(&self, id: MemoryId) -> Result<MemoryRecord, MemoryError> {
        self.inner.store.get(id, None).await.map_err(|e| match e {
            StoreError::NotFound { .. } => MemoryError::NotFound { id, version: None },
            e => e.into(),
        })
    }

    /// One version.
    pub async fn get_version(
        &self,
        id: MemoryId,
        version: u32,
    ) -> Result<MemoryRecord, MemoryError> {
        self.inner
            .store
            .get(id, Some(version))
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => MemoryError::NotFound {
                    id,
                    version: Some(version),
                },
                e => e.into(),
            })
    }

    /// Every version of a lineage, oldest first (retracted and superseded ones included).
    pub async fn history(&self, id: MemoryId) -> Result<Vec<MemoryRecord>, MemoryError> {
        self.inner.store.versions(id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => MemoryError::NotFound { id, version: None },
            e => e.into(),
        })
    }

    /// Writes a new version that supersedes the latest; history keeps the old one. Fields the
    /// revision leaves `None` are kept. When the content changes and no embedding is given,
    /// the embedder computes a new one (without an embedder the new version has none). Fails with
    /// [`MemoryError::Retracted`] on a retracted lineage and with a store conflict when
    /// [`Revision::expected_version`] is not the latest (or another writer won the race).
    pub async fn revise(
        &self,
        id: MemoryId,
        revision: Revision,
    ) -> Result<MemoryRecord, MemoryError> {
        let latest = self.get(id).await?;
        if latest.is_retracted() {
            return Err(MemoryError::Retracted { id });
        }
        if let Some(expected) = revision.expected_version {
            if expected != latest.version {
                return Err(StoreError::Conflict {
                    detail: format!(
                        "memory {id}: expected version {expected}, latest is {}",
                        latest.version
                    ),
                }
                .into());
            }
        }
        let content_changed = revision
            .content
            .as_ref()
            .is_some_and(|c| *c != latest.content);
        if let Some(c) = &revision.content {
            if c.trim().is_empty() {
                return Err(MemoryError::invalid("content", "empty"));
            }
        }
        let embedding = match (revision.embedding, content_changed) {
            (Some(v), _) => Some(v),
            (None, true) => self
                .embed_text(revision.content.as_deref().unwrap_or_default())
                .await?
                .map(Embedding::from),
            (None, false) => latest.embedding.clone(),
        };
        if let Some(v) = &embedding {
            self.check_vector("embedding", v)?;
        }
        let importance = match revision.importance {
            Some(x) => clamp_importance(x)?,
            None => latest.importance,
        };
        let recorded_at = match revision.recorded_at {
            None => self.now().max(latest.recorded_at),
            Some(at) => {
                let now = self.now();
                if at > now {
                    return Err(MemoryError::invalid(
                        "recorded_at",
                        format!("`{at}` is after the clock's now `{now}`"),
                    ));
                }
                if at < latest.recorded_at {
                    return Err(MemoryError::invalid(
                        "recorded_at",
                        format!(
                            "`{at}` is before version {} was recorded (`{}`)",
                            latest.version, latest.recorded_at
                        ),
                    ));
                }
                at
            }
        };
        let mut metadata = latest.metadata.clone();
        metadata.extend(revision.metadata);
        let provenance = revision
            .provenance
            .unwrap_or_else(|| latest.provenance.clone());
        let mut record = MemoryRecord {
            schema: MEMORY_SCHEMA_VERSION,
            id,
            version: latest.version.saturating_add(1),
            scope: latest.scope.clone(),
            tier: revision.tier.unwrap_or(latest.tier),
            kind: revision.kind.unwrap_or_else(|| latest.kind.clone()),
            content: revision.content.unwrap_or_else(|| latest.content.clone()),
            embedding,
            metadata,
            provenance,
            valid_from: revision.valid_from.or(latest.valid_from),
            valid_to: revision.valid_to.or(latest.valid_to),
            recorded_at,
            retired_at: None,
            importance,
            pinned: revision.pinned.unwrap_or(latest.pinned),
            expires_at: revision.expires_at.or(latest.expires_at),
            tombstone: None,
            prev_checksum: Some(latest.checksum.clone()),
            checksum: String::new(),
        };
        if let (Some(f), Some(t)) = (record.valid_from, record.valid_to) {
            if t < f {
                return Err(MemoryError::invalid("valid_to", "before `valid_from`"));
            }
        }
        record.seal();
        self.commit(record, Some(latest.version), "revise").await
    }

    /// Retracts a lineage: writes a tombstone version carrying `reason`. The lineage
    /// disappears from recall from now on; its history (and recall `as_of` an earlier time)
    /// still shows it.
    pub async fn retract(
        &self,
        id: MemoryId,
        by: Principal,
        reason: &str,
    ) -> Result<MemoryRecord, MemoryError> {
        let latest = self.get(id).await?;
        if latest.is_retracted() {
            return Err(MemoryError::Retracted { id });
        }
        let mut record = latest.clone();
        record.version = latest.version.saturating_add(1);
        record.provenance = crate::Provenance::by(by);
        record.recorded_at = self.now().max(latest.recorded_at);
        record.retired_at = None;
        record.tombstone = Some(Tombstone {
            reason: reason.to_owned(),
        });
        record.prev_checksum = Some(latest.checksum.clone());
        record.seal();
        self.commit(record, Some(latest.version), "retract").await
    }

    /// Recalls the `k` best records for the query, each with its score breakdown.
    pub async fn recall(&self, query: &RecallQuery) -> Result<Vec<RecallHit>, MemoryError> {
        self.recall_within(query, None).await
    }

    /// Recall restricted to what `grants` allow to read (used by [`MemoryView`]).
    pub(crate) async fn recall_within(
        &self,
        query: &RecallQuery,
        grants: Option<&[Grant]>,
    ) -> Result<Vec<RecallHit>, MemoryError> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
        query.weights.check()?;
        let has_text = query.text.is_some();
        let mut qvec = match (&query.vector, query.mode) {
            (_, RecallMode::Keyword) => None,
            (Some(v), _) => Some(v.clone()),
            (None, _) => match &query.text {
                Some(t) => self.embed_text(t).await?,
                None => None,
            },
        };
        if let Some(v) = &mut qvec {
            self.check_vector("vector", v)?;
            crate::index::normalise(v);
        }
        let text = query.text.as_deref();
        let listing = !has_text && query.vector.is_none();
        let signals = match (query.mode, qvec.as_deref(), text) {
            (_, _, _) if listing => Signals::Listing,
            (RecallMode::Vector, Some(v), _) => Signals::Vector(v),
            (RecallMode::Vector, None, _) => {
                return Err(MemoryError::invalid(
                    "vector",
                    "vector mode needs a query vector or an embedder for the text",
                ))
            }
            (RecallMode::Keyword, _, Some(t)) => Signals::Keyword(t),
            (RecallMode::Keyword, _, None) => {
                return Err(MemoryError::invalid(
                    "text",
                    "keyword mode needs query text",
                ))
            }
            (RecallMode::Hybrid, Some(v), Some(t)) => Signals::Hybrid(v, t),
            (RecallMode::Hybrid, None, _) => {
                return Err(MemoryError::invalid(
                    "vector",
                    "hybrid mode needs a query vector or an embedder for the text \
                     (keyword or auto mode run without one)",
                ))
            }
            (RecallMode::Hybrid, Some(_), None) => {
                return Err(MemoryError::invalid(
                    "text",
                    "hybrid mode needs query text (vector or auto mode run without it)",
                ))
            }
            (RecallMode::Auto, Some(v), Some(t)) => Signals::Hybrid(v, t),
            (RecallMode::Auto, Some(v), None) => Signals::Vector(v),
            (RecallMode::Auto, None, Some(t)) => Signals::Keyword(t),
            (RecallMode::Auto, None, None) => Signals::Listing,
        };
        let reference = query.as_of.unwrap_or_else(|| self.now());
        let picked: Vec<(MemoryId, u32, ScoreBreakdown)> = {
            let index = self.inner.index.read();
            let tier_mask = Tier::mask_of(&query.tiers);
            let filter = index.compile(
                micros(reference),
                |scope| {
                    let mut mask = match &query.scope {
                        Some(p) if !scope.is_within(p) => 0,
                        _ => tier_mask,
                    };
                    if let Some(grants) = grants {
                        mask &= crate::grants::read_mask(grants, scope);
                    }
                    mask
                },
                &query.kinds,
                query.valid_at.map(micros),
                &query.metadata,
            );
            rank(
                &index,
                &filter,
                signals,
                query.k,
                &query.weights,
                micros(reference),
            )
            .into_iter()
            .filter_map(|(row, s)| {
                let cold = index.cold.get(row as usize)?;
                Some((cold.id, cold.version, s))
            })
            .collect()
        };
        let options = GetOptions {
            embedding: query.embeddings,
        };
        let mut hits = Vec::with_capacity(picked.len());
        for (id, version, score) in picked {
            match self.inner.store.get_with(id, Some(version), options).await {
                Ok(record) => hits.push(RecallHit { record, score }),
                // pruned between the index read and the fetch
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(hits)
    }

    /// Reconstructs a scope as it was at system time `as_of`: the version of every lineage
    /// within `scope` that was current then, retracted ones left out, in id order.
    pub async fn replay(
        &self,
        scope: &Scope,
        as_of: Timestamp,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        let at = micros(as_of);
        let mut picked: Vec<(MemoryId, u32)> = {
            let index = self.inner.index.read();
            index
                .lineage_ids()
                .filter_map(|id| {
                    let row = index.visible_row(id, at)?;
                    if index.is_tombstone(row) || !index.scope_of(row)?.is_within(scope) {
                        return None;
                    }
                    Some((*id, index.cold.get(row as usize)?.version))
                })
                .collect()
        };
        picked.sort();
        let mut out = Vec::with_capacity(picked.len());
        for (id, version) in picked {
            out.push(self.get_version(id, version).await?);
        }
        Ok(out)
    }

    /// A view of this memory for `subject`, enforcing those of `grants` that name it (by
    /// agent or by one of its roles).
    pub fn view(&self, subject: ViewSubject, grants: Vec<Grant>) -> MemoryView {
        let grants = grants
            .into_iter()
            .filter(|g| match &g.subject {
                GrantSubject::Agent(a) => subject.principal.agent() == Some(*a),
                GrantSubject::Role(r) => subject.roles.contains(r),
            })
            .collect();
        MemoryView::new(self.clone(), subject, grants)
    }

    /// Deletes a lineage from the store and the index (used by pruning).
    pub(crate) async fn delete(&self, id: MemoryId) -> Result<(), MemoryError> {
        match self.inner.store.delete(id).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.inner.index.write().delete(&id);
        Ok(())
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Whether the audit log holds the `MemoryWritten` entry of version `version` of `id`
    /// (`true` without an audit log). Only a write repeated after an interruption asks.
    async fn audited(&self, id: MemoryId, version: u32) -> Result<bool, MemoryError> {
        let Some(log) = &self.inner.audit else {
            return Ok(true);
        };
        aios_core::AuditLogExt::any_event(log.as_ref(), |e| {
            matches!(e, AuditEvent::MemoryWritten { memory, version: v, .. }
                if *memory == id && *v == version)
        })
        .await
        .map_err(|source| MemoryError::AuditFailed {
            id,
            version,
            source,
        })
    }

    pub(crate) async fn audit_event(
        &self,
        actor: Principal,
        id: MemoryId,
        version: u32,
        scope: &Scope,
        operation: &str,
    ) -> Result<(), MemoryError> {
        let event = AuditEvent::MemoryWritten {
            memory: id,
            version,
            scope: scope.to_string(),
            operation: operation.into(),
            run: None,
            task: None,
        };
        self.append_audit(actor, event, id, version).await
    }

    /// Appends `event`, about version `version` of `id`, to the audit log if there is one.
    async fn append_audit(
        &self,
        actor: Principal,
        event: AuditEvent,
        id: MemoryId,
        version: u32,
    ) -> Result<(), MemoryError> {
        let Some(log) = &self.inner.audit else {
            return Ok(());
        };
        log.append(AuditRecord::new(actor, event).at(self.now()))
            .await
            .map(|_| ())
            .map_err(|source| MemoryError::AuditFailed {
                id,
                version,
                source,
            })
    }

    /// Stores an already-sealed record version as is (used by import and consolidation).
    pub(crate) async fn put_raw(
        &self,
        record: MemoryRecord,
        expected: Option<u32>,
    ) -> Result<(), MemoryError> {
        if let Some(v) = &record.embedding {
            if let Err(d) = self.inner.index.read().check_dims(v.len()) {
                return Err(MemoryError::invalid(
                    "embedding",
                    format!(
                        "memory `{}` has {} dimensions where the index has {d}",
                        record.id,
                        v.len()
                    ),
                ));
            }
        }
        let prepared = Prepared::of(&record);
        self.inner.store.put(record.clone(), expected).await?;
        self.inner.index.write().insert(&record, prepared);
        Ok(())
    }
}

/// Starts finding the keyword terms of a batch on a second thread (the contents copied into
/// one buffer, so the thread owns them while the batch is sealed and written). `None` if the
/// thread cannot be started: the caller then tokenises on its own thread.
fn spawn_tokenize(
    scratch: Scratch,
    stemmer: Option<Arc<Stem>>,
    batch: &[NewMemory],
) -> Option<std::thread::JoinHandle<Scratch>> {
    let mut joined = String::with_capacity(batch.iter().map(|n| n.content.len()).sum());
    let mut ends = Vec::with_capacity(batch.len());
    for n in batch {
        joined.push_str(&n.content);
        ends.push(joined.len());
    }
    std::thread::Builder::new()
        .name("aios-memory-keywords".into())
        .spawn(move || {
            let mut from = 0;
            let texts = ends.iter().map(|&to| {
                let text = joined.get(from..to);
                from = to;
                text
            });
            tokenize(scratch, stemmer.as_deref(), texts)
        })
        .ok()
}
