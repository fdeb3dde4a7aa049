//! The embedder port and a deterministic embedder for tests and examples.

use async_trait::async_trait;

use crate::Transience;

/// A dense vector.
pub type Embedding = Vec<f32>;

/// Why embedding failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The backend is unreachable or overloaded.
    #[error("embedder unavailable: {0}")]
    Unavailable(String),
    /// The input cannot be embedded.
    #[error("invalid embedder input: {0}")]
    InvalidInput(String),
    /// The backend refused the credentials; retrying with the same credentials will fail
    /// again.
    #[error("embedder rejected the credentials: {0}")]
    Unauthorized(String),
}

impl Transience for EmbedError {
    fn is_transient(&self) -> bool {
        matches!(self, EmbedError::Unavailable(_))
    }
}

/// Turns text into vectors.
///
/// Contract: `embed` returns exactly one vector per input, in order, each of length
/// [`Embedder::dimensions`]; the same text gives the same vector for the life of the embedder.
#[async_trait]
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// The length of every vector.
    fn dimensions(&self) -> usize;

    /// Embeds each text.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError>;
}

/// A deterministic embedder by feature hashing: lowercase word tokens and their character
/// trigrams are hashed (FNV-1a) into signed buckets and the vector is L2-normalised. Texts that
/// share words are close; no model is needed. Good for tests and examples, not for semantics.
///
/// ```
/// use aios_core::{cosine, HashEmbedder};
/// let e = HashEmbedder::new(64);
/// let a = e.embed_one("the invoice is due friday");
/// let b = e.embed_one("invoice due on friday");
/// let c = e.embed_one("weather in lisbon");
/// assert!(cosine(&a, &b) > cosine(&a, &c));
/// ```
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dims: usize,
}

impl HashEmbedder {
    /// An embedder producing `dims`-dimensional vectors (at least 1).
    pub fn new(dims: usize) -> Self {
        Self { dims: dims.max(1) }
    }

    /// Embeds one text synchronously.
    pub fn embed_one(&self, text: &str) -> Embedding {
        let mut v = vec![0f32; self.dims];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let word = word.to_lowercase();
            self.add(&mut v, word.as_bytes(), 1.0);
            let chars: Vec<char> = format!("#{word}#").chars().collect();
            for tri in chars.windows(3) {
                let s: String = tri.iter().collect();
                self.add(&mut v, s.as_bytes(), 0.3);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn add(&self, v: &mut [f32], token: &[u8], weight: f32) {
        let h = fnv1a(token);
        let idx = (h % self.dims as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[idx] += sign * weight;
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn dimensions(&self) -> usize {
        self.dims
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

/// Cosine similarity of two vectors (0 if either is zero or the lengths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}
