//! Log-probabilities against an independent computation: the log-softmax
//! (in the test, in f64) of the reference decoder's logits (candle), fed
//! the same prompt and, teacher-forced, the tokens the engine generated.

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

fn check(model: &str, pairs: &[(f64, f64)], tolerance: f64) {
    let worst = pairs
        .iter()
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    let mean = pairs.iter().map(|(a, b)| (a - b).abs()).sum::<f64>() / pairs.len() as f64;
    println!(
        "{model}: {} tokens, |ours - reference| mean {mean:.4}, worst {worst:.4}",
        pairs.len()
    );
    assert!(worst < tolerance, "{model}: {pairs:?}");
    assert!(mean < tolerance / 2.5, "{model}: {pairs:?}");
}

#[test]
fn greedy_logprobs_are_the_reference_log_softmax() {
    for model in ["smollm2", "gemma3"] {
        let options = GenerateOptions {
            n_logprobs: 5,
            ..greedy(16)
        };
        let pairs = compare(model, "The capital of France is", &options, 1.0);
        check(model, &pairs, 0.25);
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
    let pairs = compare("smollm2", "Once upon a time", &options, 0.7);
    check("smollm2", &pairs, 0.35);
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
    while stream
        .next(std::time::Duration::from_secs(60))
        .unwrap()
        .is_some()
    {}
    assert_eq!(stream.logprobs().unwrap(), blocking.logprobs);
}
