//! Any id sequence, in or out of the vocabulary, back to text through both
//! tokenizers and through the C API's zeph_engine_detokenize: never a
//! panic, always valid UTF-8.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zeph_llm::gguf::Gguf;
use zeph_llm::tokenizer::Tokenizer;

#[path = "common.rs"]
mod common;

fn tokenizers() -> &'static [Tokenizer; 2] {
    static T: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let load = |var: &str| {
            let g = Gguf::open(&common::model(var)).expect("the model opens");
            Tokenizer::load(&g, None).expect("its tokenizer loads")
        };
        [load("ZEPH_FUZZ_SMOLLM2"), load("ZEPH_FUZZ_GEMMA3")]
    })
}

fuzz_target!(|data: &[u8]| {
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for tok in tokenizers() {
        for remove_special in [false, true] {
            let text = tok.decode(&ids, remove_special);
            let bytes = tok.decode_bytes(&ids, remove_special);
            assert_eq!(text, String::from_utf8_lossy(&bytes));
        }
    }
});
