//! Log-probabilities of generated tokens under the distribution the sampler
//! actually drew from, computed from the logits it used (after the repeat
//! penalty and any output constraint's mask):
//!
//! - temperature > 0: the softmax at that temperature over the candidates
//!   top-k, top-p and min-p kept (every other token has probability 0, so
//!   at most that many alternatives are listed);
//! - greedy (temperature 0), which has no distribution of its own: the
//!   model's, the softmax of the logits at temperature 1.

use crate::options::SamplingOptions;
use crate::sampling::candidates;

/// Most alternatives a request may ask for per token.
pub const MAX_LOGPROBS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub id: u32,
    /// The natural log-probability (`-inf`: probability 0).
    pub logprob: f32,
    /// The token's text (not necessarily whole UTF-8 characters).
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token (its log-probability is `-inf` only if the
    /// distribution gave it none, which sampling never does).
    pub token: Choice,
    /// The most likely tokens, best first (ties by id); the generated
    /// token is among them when it ranks.
    pub top: Vec<Choice>,
}

/// The log-probability of `chosen` and the `n_top` best alternatives, from
/// `logits` as the sampler with `opts` used them; `piece` gives a token's
/// bytes.  `scratch` is reused between calls.
pub fn token_logprob(
    logits: &[f32],
    chosen: u32,
    opts: &SamplingOptions,
    n_top: usize,
    scratch: &mut Vec<(u32, f32)>,
    piece: &dyn Fn(u32) -> Vec<u8>,
) -> TokenLogprob {
    let greedy = opts.temperature <= 0.0;
    let t = if greedy { 1.0 } else { opts.temperature as f64 };
    if greedy {
        let keep_all = SamplingOptions {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..*opts
        };
        candidates(logits, &keep_all, scratch);
    } else {
        candidates(logits, opts, scratch);
    }
    // log p_i = x_i / t - log Σ_j exp(x_j / t), with the maximum taken out.
    let max = scratch.first().map_or(0.0, |c| c.1 as f64 / t);
    let sum: f64 = scratch.iter().map(|c| (c.1 as f64 / t - max).exp()).sum();
    let log_z = max + sum.ln();
    let logprob = |x: f32| (x as f64 / t - log_z) as f32;
    let chosen_lp = scratch
        .iter()
        .find(|c| c.0 == chosen)
        .map_or(f32::NEG_INFINITY, |c| logprob(c.1));
    TokenLogprob {
        token: Choice {
            id: chosen,
            logprob: chosen_lp,
            bytes: piece(chosen),
        },
        top: scratch
            .iter()
            .take(n_top)
            .map(|c| Choice {
                id: c.0,
                logprob: logprob(c.1),
                bytes: piece(c.0),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32) -> SamplingOptions {
        SamplingOptions {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
        }
    }

    #[test]
    fn greedy_gives_the_log_softmax_of_the_logits() {
        let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
        let z = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        let lp = token_logprob(&logits, 2, &opts(0.0), 3, &mut Vec::new(), &|_| Vec::new());
        assert!((lp.token.logprob as f64 - (2.0 - z)).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 2, 0]);
        assert!((lp.top[0].logprob as f64 - (3.0 - z)).abs() < 1e-6);
    }

    #[test]
    fn temperature_and_truncation_shape_the_distribution() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        // top_k 2 at temperature 0.5: only ids 1 and 2, logits doubled.
        let o = SamplingOptions {
            top_k: 2,
            ..opts(0.5)
        };
        let lp = token_logprob(&logits, 2, &o, 5, &mut Vec::new(), &|_| Vec::new());
        let z = (6f64.exp() + 4f64.exp()).ln();
        assert!((lp.token.logprob as f64 - (4.0 - z)).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2, "only the kept candidates are listed");
        let total: f64 = lp.top.iter().map(|t| (t.logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        // A token outside the kept set has probability 0.
        let out = token_logprob(&logits, 3, &o, 0, &mut Vec::new(), &|_| Vec::new());
        assert_eq!(out.token.logprob, f32::NEG_INFINITY);
    }
}
