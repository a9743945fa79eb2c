//! What `Engine::info` (and so `zeph_engine_model_info`) reports about the
//! test models' files.

mod common;

use zeph_llm::{Engine, EngineOptions};

fn quantization(model: &str) -> String {
    let options = EngineOptions {
        context_length: 64,
        ..Default::default()
    };
    let engine = Engine::new(&common::model_path(model), options).unwrap();
    engine.info().quantization.clone()
}

/// The file type as llama.cpp names it (`general.file_type`), not the most
/// common tensor type: most of Gemma 3 Q4_K_M's tensors by count are Q8_0.
#[test]
fn quantization_is_the_file_type_llama_cpp_names() {
    assert_eq!(quantization("gemma3"), "Q4_K_M");
    // The default model, unless ZEPH_MODEL names another file.
    let default = common::model_path("smollm2").ends_with("SmolLM2-135M-Instruct.Q4_1.gguf");
    let smollm2 = quantization("smollm2");
    if default {
        assert_eq!(smollm2, "Q4_1");
    } else {
        assert!(!smollm2.is_empty());
    }
}
