//! Bytes as a GGUF file: opening it and reading its metadata must give a
//! value or an error, never a panic, a crash or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zeph_llm::gguf::Gguf;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_file(data);
    if let Ok(g) = Gguf::open(&path) {
        let _ = g.architecture();
        let _ = g.string_array("tokenizer.ggml.tokens");
        let _ = g.strings("tokenizer.ggml.tokens").map(|s| s.count());
        let _ = g.int_array("tokenizer.ggml.token_type");
        let _ = g.float_array("tokenizer.ggml.scores");
        let _ = g.string("tokenizer.chat_template");
        let _ = g.dominant_type();
        let _ = g.parameter_count();
    }
});
