//! Any text through both tokenizers (SmolLM2's byte-level BPE, Gemma 3's
//! SentencePiece): bytes -> ids -> text gives the text back, byte for byte
//! (but for the bytes SmolLM2's vocabulary has no token for, which are left
//! out, and a literal U+2581 on Gemma 3, which reads back as a space, both
//! as in llama.cpp), and never panics.  The first byte picks the
//! model and the flags.
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

/// The bytes SmolLM2's byte-level vocabulary has no token for, read off
/// the file's token list (GPT-2's byte-to-character table applied to every
/// byte, each looked up in `tokenizer.ggml.tokens`).
const SMOLLM2_MISSING: [u8; 21] = [
    4, 6, 19, 20, 22, 29, 192, 193, 241, 242, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255,
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let tok = &tokenizers()[(flags & 1) as usize];
    let parse_special = flags & 2 != 0;
    let text = String::from_utf8_lossy(rest);
    let ids = tok
        .encode(&text, false, parse_special)
        .expect("tokenizing never fails");
    let back = tok.decode_bytes(&ids, false);
    let want: Vec<u8> = match flags & 1 {
        0 => text
            .bytes()
            .filter(|b| !SMOLLM2_MISSING.contains(b))
            .collect(),
        // SentencePiece's space marker typed literally reads back as the
        // space it stands for, as in llama.cpp.
        _ => text.replace('\u{2581}', " ").into_bytes(),
    };
    assert_eq!(
        back,
        want,
        "model {} parse_special {parse_special}: text {text:?}, ids {ids:?}",
        flags & 1
    );
    let _ = tok.encode(&text, true, parse_special);
});
