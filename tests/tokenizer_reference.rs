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
    assert!(!cases.is_empty(), "{model}: no reference cases");
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

/// Corners of our own: no reference ids, but decoding must give the text
/// back, and special-token lookalikes must stay text unless asked.
fn corners(model: &str) {
    let gguf = Gguf::open(&common::model_path(model)).unwrap();
    let tok = Tokenizer::load(&gguf, None).unwrap();
    let texts = [
        "",
        " ",
        "    ",
        "\t\t  \n\n\n   x",
        "line one\r\nline two\r\n",
        "family: 👨‍👩‍👧‍👦, flag: 🏳️‍🌈, skin: 👍🏽",
        "<|im_start|",
        "<|im_start|>",
        "<|im_start|>user<|im_end|",
        "<start_of_turn",
        "<start_of_turn>model",
        "<<bos>>",
        "</s><s>",
        "<0x41>",
        "a\u{0}b",
        "12345678901234567890",
    ];
    for text in texts {
        for parse_special in [false, true] {
            let ids = tok.encode(text, false, parse_special).unwrap();
            assert_eq!(
                tok.decode(&ids, false),
                text,
                "{model}: {text:?} parse_special={parse_special}"
            );
            if !parse_special {
                for &id in &ids {
                    let t = tok.token_text(id).unwrap();
                    let control = [
                        "<|im_start|>",
                        "<|im_end|>",
                        "<start_of_turn>",
                        "<bos>",
                        "<eos>",
                    ];
                    assert!(
                        !control.contains(&t),
                        "{model}: {text:?} gave control token {t}"
                    );
                }
            }
        }
    }
    // SentencePiece vocabularies write a space as U+2581, so that character
    // in the input comes back as a space, as in llama.cpp.
    let back = tok.decode(&tok.encode("\u{2581}x", false, false).unwrap(), false);
    assert!(
        back == "\u{2581}x" || (model == "gemma3" && back == " x"),
        "{back:?}"
    );
    // Special tokens are never split when parsed, and dropped on request.
    let bos = tok.bos().unwrap();
    let text = tok.token_text(bos).unwrap().to_string();
    assert_eq!(tok.encode(&text, false, true).unwrap(), vec![bos]);
    assert_eq!(tok.decode(&[bos], true), "");
    // Any id sequence decodes without panicking; bad ids yield nothing.
    let ids: Vec<u32> = (0..2000)
        .map(|i| (i * 7919) % (tok.vocab_size() as u32 + 100))
        .collect();
    let _ = tok.decode(&ids, false);
}

#[test]
fn smollm2_corner_strings_round_trip() {
    corners("smollm2");
}

#[test]
fn gemma3_corner_strings_round_trip() {
    corners("gemma3");
}

/// Control characters, some of which SmolLM2's byte-level vocabulary has no
/// token for (0x04, 0x06, 0x14, 0x16, 0x1d): llama.cpp leaves those bytes
/// out (no unknown token) and does not merge across them; Gemma 3's
/// SentencePiece vocabulary has byte tokens for all of them.  Ids from
/// llama.cpp's own tokenizer, `llama-tokenize -m MODEL -p TEXT --ids
/// --no-bos`, built from the llama.cpp source vendored in the
/// llama-cpp-python 0.3.36 sdist (the build `make bench` uses).
#[test]
fn bytes_without_a_token_are_left_out_as_llama_cpp_does() {
    let cases: [(&str, &str, &[u32]); 6] = [
        ("smollm2", "a\u{4}b", &[81, 82]),
        ("smollm2", "hel\u{6}lo world\u{1d}!", &[2797, 5365, 905, 17]),
        ("smollm2", "\u{14}\u{16}", &[]),
        ("gemma3", "a\u{4}b", &[236746, 242, 236763]),
        (
            "gemma3",
            "hel\u{6}lo world\u{1d}!",
            &[3983, 244, 844, 1902, 267, 236888],
        ),
        ("gemma3", "\u{14}\u{16}", &[255321, 260]),
    ];
    for model in ["smollm2", "gemma3"] {
        let gguf = Gguf::open(&common::model_path(model)).unwrap();
        let tok = Tokenizer::load(&gguf, None).unwrap();
        for (m, text, want) in cases.iter().filter(|c| c.0 == model) {
            assert_eq!(
                tok.encode(text, false, true).unwrap(),
                want.to_vec(),
                "{m}: {text:?}"
            );
        }
    }
}

/// llama.cpp's test vocabularies (`models/ggml-vocab-NAME.gguf` in its
/// source, fetched by `scripts/fetch-models.sh llama-vocabs`) with the
/// tokenizations its own tokenizer test expects (`.inp`: texts separated
/// by `\n__ggml_vocab_test__\n`; `.out`: one line of ids per text), read
/// as its `test-tokenizer-0` reads them: no BOS/EOS added, special tokens
/// not parsed.  One vocabulary per tokenizer kind the README claims.
fn llama_vocab(name: &str) {
    let dir = common::model_path("llama-vocabs");
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let gguf = Gguf::open(&base).unwrap();
    let tok = Tokenizer::load(&gguf, None).unwrap();
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
    // The file ends with the separator, which closes the last text.
    let texts: Vec<&str> = inp
        .strip_suffix("\n__ggml_vocab_test__\n")
        .unwrap_or(&inp)
        .split("\n__ggml_vocab_test__\n")
        .collect();
    let want: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), want.len(), "{name}: .inp and .out disagree");
    let mut failures = Vec::new();
    for (text, want) in texts.iter().zip(&want) {
        let got = tok.encode(text, false, false).unwrap();
        if &got != want {
            failures.push(format!("{text:?}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    println!(
        "{name}: {} of {} texts as llama.cpp",
        texts.len() - failures.len(),
        texts.len()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

#[test]
fn llama_cpp_vocab_llama_spm() {
    llama_vocab("llama-spm");
}

#[test]
fn llama_cpp_vocab_phi_3() {
    llama_vocab("phi-3");
}

#[test]
fn llama_cpp_vocab_gpt_2() {
    llama_vocab("gpt-2");
}

#[test]
fn llama_cpp_vocab_llama_bpe() {
    llama_vocab("llama-bpe");
}

#[test]
fn llama_cpp_vocab_qwen2() {
    llama_vocab("qwen2");
}
