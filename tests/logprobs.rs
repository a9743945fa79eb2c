//! Log-probabilities against the reference decoder: the log-softmax (in
//! the test, in f64) of its logits, fed the same prompt and, teacher-forced,
//! the tokens the engine generated.  A self-consistency check, not an
//! independent one: the reference decoder computes through the runtime's
//! portable kernels and its logits equal the runtime's bit for bit
//! (tests/runtime.rs).  What is checked here is the engine's side: which
//! token and which distribution each entry describes, and its log-softmax.

mod common;

use common::{greedy, model_path};
use zeph_llm::gguf::Gguf;
use zeph_llm::model::{load_with, Backend};
use zeph_llm::{Engine, EngineOptions, GenerateOptions, SamplingOptions};

/// log p of every token under softmax(logits / t), in f64.
fn log_softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
    let z = logits
        .iter()
        .map(|&x| (x as f64 / t - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| x as f64 / t - z).collect()
}

/// Runs `options` through the engine, then the reference decoder over the
/// same tokens; returns (ours, reference) log-probabilities of each chosen
/// token, after checking ids, bytes and the alternatives.
fn compare(model: &str, prompt: &str, options: &GenerateOptions, t: f64) -> Vec<(f64, f64)> {
    let engine = Engine::new(&model_path(model), EngineOptions::default()).unwrap();
    let c = engine.complete(prompt, options).unwrap();
    assert_eq!(c.logprobs.len(), c.tokens.len());
    assert!(!c.tokens.is_empty());
    let prompt_ids = engine.tokenizer().encode(prompt, true, true).unwrap();
    let mut gguf = Gguf::open(&model_path(model)).unwrap();
    let reference = load_with(&mut gguf, 0, Backend::Reference).unwrap();
    let mut s = reference.new_session();
    let mut logits = s.forward(&prompt_ids, 0).unwrap();
    let mut pairs = Vec::new();
    for (pos, (lp, &id)) in (prompt_ids.len()..).zip(c.logprobs.iter().zip(&c.tokens)) {
        assert_eq!(lp.token.id, id);
        assert_eq!(lp.token.bytes, engine.tokenizer().piece(id));
        assert!(lp.top.len() <= options.n_logprobs);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        for alt in &lp.top {
            assert_eq!(alt.bytes, engine.tokenizer().piece(alt.id));
        }
        let want = log_softmax(&logits, t);
        pairs.push((lp.token.logprob as f64, want[id as usize]));
        logits = s.forward(&[id], pos).unwrap();
    }
    pairs
}

/// The logits being the same bits, the two log-probabilities differ only
/// by the engine's rounding of its f64 result to f32 (at most an f32 ulp)
/// and by the order of the two f64 sums (the engine adds the candidates best
/// first, the test in vocabulary order: ~1e-15 of log Z).
fn check(model: &str, pairs: &[(f64, f64)]) {
    let worst = pairs
        .iter()
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    println!(
        "{model}: {} tokens, |ours - reference| at most {worst:.2e}",
        pairs.len()
    );
    for &(ours, reference) in pairs {
        let bound = reference.abs() * f32::EPSILON as f64 + 1e-12;
        assert!(
            (ours - reference).abs() <= bound,
            "{model}: {ours} vs the reference's {reference}: {pairs:?}"
        );
    }
}

#[test]
fn greedy_logprobs_are_the_reference_log_softmax() {
    for model in ["smollm2", "gemma3"] {
        let options = GenerateOptions {
            n_logprobs: 5,
            ..greedy(16)
        };
        let pairs = compare(model, "The capital of France is", &options, 1.0);
        check(model, &pairs);
    }
}

#[test]
fn sampled_logprobs_follow_the_temperature() {
    // No truncation: the distribution is softmax(logits / 0.7) over all.
    let options = GenerateOptions {
        n_logprobs: 3,
        max_tokens: 16,
        seed: Some(42),
        sampling: SamplingOptions {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    // The temperature as the engine reads it (0.7 as an f32).
    let t = options.sampling.temperature as f64;
    let pairs = compare("smollm2", "Once upon a time", &options, t);
    check("smollm2", &pairs);
}

#[test]
fn truncated_sampling_lists_only_kept_candidates_which_sum_to_one() {
    let engine = Engine::new(&model_path("smollm2"), EngineOptions::default()).unwrap();
    let options = GenerateOptions {
        n_logprobs: 20,
        max_tokens: 12,
        seed: Some(3),
        sampling: SamplingOptions {
            temperature: 0.9,
            top_k: 4,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = engine.complete("Once upon a time", &options).unwrap();
    for lp in &c.logprobs {
        assert!(lp.top.len() <= 4 && !lp.top.is_empty());
        let mass: f64 = lp.top.iter().map(|a| (a.logprob as f64).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-4, "{mass}");
        assert!(lp.top.iter().any(|a| a.id == lp.token.id));
    }
    // Without n_logprobs there are none.
    let c = engine.complete("Once upon a time", &greedy(4)).unwrap();
    assert!(c.logprobs.is_empty());
}

#[test]
fn a_stream_gives_the_same_logprobs_once_it_has_ended() {
    let engine = Engine::new(&model_path("smollm2"), EngineOptions::default()).unwrap();
    let options = GenerateOptions {
        n_logprobs: 2,
        ..greedy(10)
    };
    let blocking = engine.complete("Hello", &options).unwrap();
    let stream = engine.stream_complete("Hello", &options).unwrap();
    assert!(stream.logprobs().is_none());
    while stream.next(common::HANG_GUARD).unwrap().is_some() {}
    assert_eq!(stream.logprobs().unwrap(), blocking.logprobs);
}
