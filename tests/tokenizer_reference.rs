//! Tokenizers built from the GGUF files alone against llama.cpp's ids
//! (tests/data/llamacpp-tokens-and-greedy.json), for both test models.

mod common;

use zeph_llm::gguf::Gguf;
use zeph_llm::tokenizer::Tokenizer;

fn check(model: &str) {
    let gguf = Gguf::open(&common::model_path(model)).unwrap();
    let tok = Tokenizer::load(&gguf, None).unwrap();
    let reference = common::reference();
    let cases = reference["models"][model]["tokenize"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (key, add_special) in [("ids_with_bos_default", true), ("ids_no_bos", false)] {
            let want = common::ids(&case[key]);
            let got = tok.encode(text, add_special, true).unwrap();
            if got != want {
                failures.push(format!(
                    "{text:?} ({key}):\n  got  {got:?}\n  want {want:?}"
                ));
            }
        }
        // Round trip: the text comes back byte for byte.
        let ids = tok.encode(text, false, true).unwrap();
        let back = tok.decode(&ids, false);
        if back != text {
            failures.push(format!("{text:?}: decodes to {back:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{model}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_tokens_match_llama_cpp() {
    check("smollm2");
}

#[test]
fn gemma3_tokens_match_llama_cpp() {
    check("gemma3");
}
