//! Embeddings against llama.cpp's `llama-embedding` (tests/data, see
//! SOURCE.md): every text of both test models, mean and last pooling,
//! cosine similarity at least 0.99.

mod common;

use common::model_path;
use zeph_llm::{Engine, EngineOptions, ErrorKind, Pooling};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn check_model(name: &str) {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/llamacpp-embeddings.json")).unwrap();
    let entries = data["models"][name].as_array().unwrap();
    assert!(entries.len() >= 10, "{name}: {} entries", entries.len());
    let engine = Engine::new(&model_path(name), EngineOptions::default()).unwrap();
    let n = engine.info().embedding_length;
    for entry in entries {
        let text = entry["text"].as_str().unwrap();
        let pooling = match entry["pooling"].as_str().unwrap() {
            "mean" => Pooling::Mean,
            "last" => Pooling::Last,
            other => panic!("unknown pooling {other}"),
        };
        let want: Vec<f32> = entry["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = engine.embed(text, pooling).unwrap();
        assert_eq!(got.len(), n);
        assert_eq!(want.len(), n);
        let norm: f64 = got.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let cos = cosine(&got, &want);
        println!("{name} {pooling:?} {cos:.5} {text:?}");
        assert!(cos >= 0.99, "{name} {pooling:?} {text:?}: cosine {cos}");
    }
}

#[test]
fn smollm2_embeddings_match_llama_cpp() {
    check_model("smollm2");
}

#[test]
fn gemma3_embeddings_match_llama_cpp() {
    check_model("gemma3");
}

#[test]
fn mean_and_last_differ_and_an_empty_text_without_bos_is_refused() {
    let engine = Engine::new(&model_path("smollm2"), EngineOptions::default()).unwrap();
    let mean = engine.embed("two words", Pooling::Mean).unwrap();
    let last = engine.embed("two words", Pooling::Last).unwrap();
    assert!(cosine(&mean, &last) < 0.999);
    // SmolLM2 adds no BOS: "" has no tokens.
    let err = engine.embed("", Pooling::Mean).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    // Generation after an embedding on the same worker is unaffected.
    let a = engine.complete("two words", &common::greedy(4)).unwrap();
    let b = Engine::new(&model_path("smollm2"), EngineOptions::default())
        .unwrap()
        .complete("two words", &common::greedy(4))
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
}
