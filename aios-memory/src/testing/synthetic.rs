//! The synthetic data of the memory benchmarks (MEM-WRITE, MEM-RECALL-EXACT,
//! MEM-RECALL-HYBRID, MEM-RECALL-ANN), in one place so that the report binary and
//! standalone harnesses measure the same records and vectors.
//!
//! Everything is seeded: the same seed gives the same data on every machine.
//!
//! ```
//! use aios_memory::testing::synthetic;
//! let records = synthetic::records(3, 1);
//! assert_eq!(records.len(), 3);
//! let mut vectors = synthetic::Clustered::new(11, 20);
//! assert_eq!(vectors.draw().len(), synthetic::DIMS);
//! ```

use aios_core::{Principal, SeededRng};

use crate::{MemoryKind, NewMemory, Scope, Tier};

/// The embedding dimension of every workload (that of all-MiniLM-L6-v2).
pub const DIMS: usize = 384;

const STOPWORDS: &[&str] = &[
    "the", "a", "of", "to", "and", "in", "is", "for", "on", "with", "that", "it", "as", "at", "by",
    "from", "was", "we", "our", "this",
];

/// A synthetic vocabulary: `n` pronounceable words.
pub fn vocabulary(n: usize) -> Vec<String> {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ren", "sa", "tu", "vi", "zor", "bel", "dan", "fi", "gor", "ha", "jun",
        "ke", "lys", "mor", "nel", "pa", "quin", "ro", "sol", "ta", "ul",
    ];
    (0..n)
        .map(|i| {
            let mut w = String::new();
            let mut x = i;
            loop {
                w.push_str(SYL[x % SYL.len()]);
                x /= SYL.len();
                if x == 0 {
                    break;
                }
            }
            w
        })
        .collect()
}

/// About 200 bytes of text: a third stopwords, the rest from the vocabulary.
pub fn text(rng: &mut SeededRng, vocab: &[String]) -> String {
    let mut s = String::with_capacity(220);
    while s.len() < 200 {
        if !s.is_empty() {
            s.push(' ');
        }
        if rng.next_u64() % 3 == 0 {
            s.push_str(STOPWORDS[(rng.next_u64() % STOPWORDS.len() as u64) as usize]);
        } else {
            s.push_str(&vocab[(rng.next_u64() % vocab.len() as u64) as usize]);
        }
    }
    s
}

/// `v` scaled to unit length.
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// A unit-length vector of [`DIMS`] seeded components, uniformly random in direction.
pub fn vector(rng: &mut SeededRng) -> Vec<f32> {
    unit((0..DIMS).map(|_| rng.next_f64() as f32 - 0.5).collect())
}

/// `n` records of about 200 bytes of text with a [`DIMS`]-dimension embedding, spread over 8
/// scopes (`bench/team-a/p0` .. `bench/team-b/p3`) and the three tiers: the MEM-WRITE data.
pub fn records(n: usize, seed: u64) -> Vec<NewMemory> {
    let mut rng = SeededRng::new(seed);
    let vocab = vocabulary(5000);
    let scopes: Vec<Scope> = ["a", "b"]
        .iter()
        .flat_map(|t| (0..4).map(move |p| format!("bench/team-{t}/p{p}")))
        .filter_map(|s| Scope::parse(&s).ok())
        .collect();
    (0..n)
        .map(|i| {
            NewMemory::new(
                scopes[i % scopes.len()].clone(),
                Tier::ALL[i % 3],
                text(&mut rng, &vocab),
                Principal::System,
            )
            .kind(MemoryKind::Episode)
            .importance((i % 10) as f32 / 10.0)
            .embedding(vector(&mut rng))
        })
        .collect()
}

/// Unit vectors of [`DIMS`] dimensions around seeded centres (each component of a vector is
/// its centre's plus uniform noise of amplitude 0.08, so that neighbours within a cluster
/// have cosine similarities of about 0.5 to 0.8, as sentence embeddings of related text do);
/// with no centres, uniformly random ones: the MEM-RECALL-ANN data.
#[derive(Debug, Clone)]
pub struct Clustered {
    rng: SeededRng,
    centres: Vec<Vec<f32>>,
}

impl Clustered {
    /// A generator with `centres` clusters (0: uniform).
    pub fn new(seed: u64, centres: usize) -> Self {
        let mut rng = SeededRng::new(seed);
        let centres = (0..centres).map(|_| vector(&mut rng)).collect();
        Self { rng, centres }
    }

    /// A generator over the same centres drawing from another seed.
    pub fn fork(&self, seed: u64) -> Self {
        Self {
            rng: SeededRng::new(seed),
            centres: self.centres.clone(),
        }
    }

    /// The next vector.
    pub fn draw(&mut self) -> Vec<f32> {
        if self.centres.is_empty() {
            return vector(&mut self.rng);
        }
        let c = (self.rng.next_u64() % self.centres.len() as u64) as usize;
        // |noise| ~ 0.9, |centre| = 1
        let rng = &mut self.rng;
        unit(
            self.centres[c]
                .iter()
                .map(|x| x + 0.16 * (rng.next_f64() as f32 - 0.5))
                .collect(),
        )
    }
}
