//! YaRN rope scaling on the fixture models (tests/fixtures): the runtime
//! and the reference decoder agree bit for bit on files that carry it, it
//! changes the logits of the same weights, and bad YaRN metadata is a load
//! error that names its key.  The frequency and magnitude formulas
//! themselves are checked in `src/model/rope.rs` against YaRN's published
//! ones.

mod common;

use common::fixtures;
use zeph_llm::gguf::Gguf;
use zeph_llm::log::LogLevel;
use zeph_llm::model::{load_with, Backend, Weights};
use zeph_llm::sampling::argmax;
use zeph_llm::{Engine, EngineOptions, ErrorKind};

fn weights_of(bytes: &[u8], backend: Backend) -> zeph_llm::Result<Box<dyn Weights>> {
    let mut gguf = Gguf::from_memory(bytes)?;
    load_with(&mut gguf, 0, backend)
}

fn weights(file: &str, backend: Backend) -> Box<dyn Weights> {
    weights_of(&std::fs::read(fixtures().join(file)).unwrap(), backend).unwrap()
}

/// Far past the fixtures' original contexts (64 and 128 positions), within
/// the shorter one's context (256).
fn sequence() -> Vec<u32> {
    (0..250u32).map(|i| 32 + (i * 37 + i / 7) % 200).collect()
}

/// Logits at every position of `seq`, one token per pass.
fn per_position(w: &dyn Weights, seq: &[u32]) -> Vec<Vec<f32>> {
    let mut s = w.new_session();
    (0..seq.len())
        .map(|i| s.forward(&seq[i..i + 1], i).unwrap())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn the_runtime_and_the_reference_agree_on_yarn_files() {
    let seq = sequence();
    for file in ["tiny-qwen3-yarn.gguf", "tiny-llama-yarn.gguf"] {
        let cpu = weights(file, Backend::Cpu { threads: 2 });
        let reference = weights(file, Backend::Reference);
        let a = per_position(&*cpu, &seq);
        let b = per_position(&*reference, &seq);
        // Both compute in the order the runtime specifies (the reference
        // through the portable kernels): the same bits at every position,
        // as on the real models (tests/runtime.rs).
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                bits(x) == bits(y),
                "{file}: position {pos}: the logits differ (by up to {:e})",
                max_diff(x, y)
            );
        }
        // The runtime's promises hold with YaRN too: one pass, chunks and
        // thread counts give the same bits.
        let whole = cpu.new_session().forward(&seq, 0).unwrap();
        assert_eq!(
            whole,
            a[seq.len() - 1],
            "{file}: one pass vs token by token"
        );
        let mut s = cpu.new_session();
        for (n, chunk) in seq.chunks(7).enumerate() {
            let l = s.forward(chunk, n * 7).unwrap();
            assert_eq!(l, a[n * 7 + chunk.len() - 1], "{file}: chunks of 7");
        }
        for threads in [1, 3] {
            let w = weights(file, Backend::Cpu { threads });
            assert_eq!(
                w.new_session().forward(&seq, 0).unwrap(),
                whole,
                "{file}: {threads} threads"
            );
        }
    }
}

/// `bytes` with the 4-byte value of metadata `key` (a u32 or f32) replaced.
fn patched(bytes: &[u8], key: &str, value: [u8; 4]) -> Vec<u8> {
    let k = key.as_bytes();
    // The value follows the key and its 4-byte type tag.
    let at = bytes.windows(k.len()).position(|w| w == k).unwrap() + k.len() + 4;
    let mut b = bytes.to_vec();
    b[at..at + 4].copy_from_slice(&value);
    b
}

/// `tiny-qwen3-yarn.gguf` with its `rope.scaling.type` ("yarn") replaced
/// by another four letters.
fn qwen_with_type(kind: &[u8; 4]) -> Vec<u8> {
    let mut b = std::fs::read(fixtures().join("tiny-qwen3-yarn.gguf")).unwrap();
    // The string follows the key, its type tag and its 8-byte length.
    let key = b"qwen3.rope.scaling.type";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
    assert_eq!(&b[at..at + 4], b"yarn");
    b[at..at + 4].copy_from_slice(kind);
    b
}

#[test]
fn yarn_changes_the_logits_of_the_same_weights() {
    let seq = sequence();
    let yarn = qwen_with_type(b"yarn");
    let none = qwen_with_type(b"none");
    for backend in [Backend::Cpu { threads: 2 }, Backend::Reference] {
        let plain = per_position(&*weights_of(&none, backend).unwrap(), &seq);
        let scaled = per_position(&*weights_of(&yarn, backend).unwrap(), &seq);
        // Position 0 rotates nothing and attends to itself alone: YaRN's
        // magnitude changes no logit there ...
        assert_eq!(plain[0], scaled[0], "{backend:?}: position 0");
        // ... while past the original context (64) every position's logits
        // move (the two decoders' logits being the same bits).
        let least = (64..seq.len())
            .map(|p| max_diff(&plain[p], &scaled[p]))
            .fold(f32::INFINITY, f32::min);
        let top_changed = (64..seq.len())
            .filter(|&p| argmax(&plain[p]) != argmax(&scaled[p]))
            .count();
        println!(
            "{backend:?}: positions 64..{}: YaRN moves some logit of each by >= {least:.3}; \
             the top token changes at {top_changed}",
            seq.len()
        );
        assert!(
            least > 0.05,
            "{backend:?}: YaRN moved a position's logits by {least} only"
        );
    }
}

#[test]
fn bad_yarn_metadata_is_a_load_error_naming_the_key() {
    let qwen = std::fs::read(fixtures().join("tiny-qwen3-yarn.gguf")).unwrap();
    let llama = std::fs::read(fixtures().join("tiny-llama-yarn.gguf")).unwrap();
    let f = |v: f32| v.to_le_bytes();
    let cases: Vec<(&[u8], &str, [u8; 4], &str)> = vec![
        (
            &qwen,
            "qwen3.rope.scaling.factor",
            f(f32::NAN),
            "qwen3.rope.scaling.factor",
        ),
        (
            &qwen,
            "qwen3.rope.scaling.factor",
            f(f32::INFINITY),
            "qwen3.rope.scaling.factor",
        ),
        (
            &qwen,
            "qwen3.rope.scaling.factor",
            f(0.0),
            "qwen3.rope.scaling.factor",
        ),
        (
            &qwen,
            "qwen3.rope.scaling.factor",
            f(-4.0),
            "qwen3.rope.scaling.factor",
        ),
        (
            &qwen,
            "qwen3.rope.scaling.factor",
            f(0.5),
            "qwen3.rope.scaling.factor",
        ),
        (
            &qwen,
            "qwen3.rope.scaling.factor",
            f(1e9),
            "qwen3.rope.scaling.factor",
        ),
        (
            &qwen,
            "qwen3.rope.scaling.original_context_length",
            0u32.to_le_bytes(),
            "qwen3.rope.scaling.original_context_length",
        ),
        (
            &llama,
            "llama.rope.scaling.attn_factor",
            f(0.0),
            "llama.rope.scaling.attn_factor",
        ),
        (
            &llama,
            "llama.rope.scaling.attn_factor",
            f(f32::NAN),
            "llama.rope.scaling.attn_factor",
        ),
        (
            &llama,
            "llama.rope.scaling.yarn_ext_factor",
            f(-1.0),
            "llama.rope.scaling.yarn_ext_factor",
        ),
        (
            &llama,
            "llama.rope.scaling.yarn_ext_factor",
            f(2.0),
            "llama.rope.scaling.yarn_ext_factor",
        ),
        (
            &llama,
            "llama.rope.scaling.yarn_attn_factor",
            f(-1.0),
            "llama.rope.scaling.yarn_attn_factor",
        ),
        (
            &llama,
            "llama.rope.scaling.yarn_beta_fast",
            f(f32::INFINITY),
            "llama.rope.scaling.yarn_beta_fast",
        ),
        (
            &llama,
            "llama.rope.scaling.yarn_beta_slow",
            f(0.0),
            "llama.rope.scaling.yarn_beta_slow",
        ),
        // Slow above fast: the ramp would run backwards.
        (
            &llama,
            "llama.rope.scaling.yarn_beta_slow",
            f(20.0),
            "llama.rope.scaling.yarn_beta_slow",
        ),
    ];
    for (file, key, value, named) in cases {
        let bad = patched(file, key, value);
        for backend in [Backend::Cpu { threads: 1 }, Backend::Reference] {
            let Err(err) = weights_of(&bad, backend) else {
                panic!("{key} = {value:?} loaded ({backend:?})")
            };
            assert_eq!(err.kind, ErrorKind::Model, "{err}");
            assert!(err.message.contains(named), "{key}: {err}");
        }
        let Err(err) = Engine::from_memory(&bad, EngineOptions::default()) else {
            panic!("{key} = {value:?} loaded in the engine")
        };
        assert!(err.message.contains(named), "{key}: {err}");
    }
    // The untouched files load.
    for file in [&qwen, &llama] {
        weights_of(file, Backend::Cpu { threads: 1 }).unwrap();
    }
}

#[test]
fn an_unknown_scaling_type_runs_unscaled_with_a_warning() {
    let unknown = qwen_with_type(b"yorn");
    let seq = sequence();
    let plain = weights_of(&qwen_with_type(b"none"), Backend::Cpu { threads: 2 }).unwrap();
    assert_eq!(
        weights_of(&unknown, Backend::Cpu { threads: 2 })
            .unwrap()
            .new_session()
            .forward(&seq, 0)
            .unwrap(),
        plain.new_session().forward(&seq, 0).unwrap(),
        "an unknown type scales nothing"
    );
    let (options, lines) = common::logging_options();
    Engine::from_memory(&unknown, options).unwrap();
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().any(|(level, m)| *level == LogLevel::Warn
            && m.contains("qwen3.rope.scaling.type")
            && m.contains("yorn")),
        "{lines:?}"
    );
    // Known types warn of nothing.
    for kind in [b"yarn", b"none"] {
        let w = weights_of(&qwen_with_type(kind), Backend::Cpu { threads: 1 }).unwrap();
        assert!(w.info().warnings.is_empty(), "{:?}", w.info().warnings);
    }
}

/// `tiny-gemma3-linear.gguf` with every layer global (pattern 1) or every
/// layer sliding (pattern 1000), and its linear factor set to `factor`.
fn gemma_with(pattern: u32, factor: f32) -> Vec<u8> {
    let b = std::fs::read(fixtures().join("tiny-gemma3-linear.gguf")).unwrap();
    let b = patched(
        &b,
        "gemma3.attention.sliding_window_pattern",
        pattern.to_le_bytes(),
    );
    patched(&b, "gemma3.rope.scaling.factor", factor.to_le_bytes())
}

/// llama.cpp scales Gemma 3's rope in its global layers only (its
/// `rope_freq_scale_train_swa` is 1 for gemma3): with every layer sliding,
/// a linear factor of 8 changes no bit; with every layer global, it does.
#[test]
fn gemma3_scales_the_rope_of_its_global_layers_only() {
    let seq: Vec<u32> = sequence()[..40].to_vec();
    for backend in [Backend::Cpu { threads: 2 }, Backend::Reference] {
        let run = |pattern, factor| {
            per_position(
                &*weights_of(&gemma_with(pattern, factor), backend).unwrap(),
                &seq,
            )
        };
        assert_eq!(
            run(1000, 8.0),
            run(1000, 1.0),
            "{backend:?}: sliding-window layers were scaled"
        );
        let (scaled, plain) = (run(1, 8.0), run(1, 1.0));
        let moved = (1..seq.len())
            .map(|p| max_diff(&scaled[p], &plain[p]))
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-4,
            "{backend:?}: global layers were not scaled (logits moved {moved})"
        );
    }
}
