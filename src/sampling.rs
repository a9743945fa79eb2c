//! Choosing the next token from logits: repeat penalty, then top-k, top-p,
//! min-p and temperature (llama.cpp's order), then a draw from a seeded
//! generator.  Temperature 0 is greedy.

use crate::options::SamplingOptions;

/// SplitMix64: small, fast, and the same sequence on every platform for a
/// given seed, which is all per-request reproducibility needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    opts: SamplingOptions,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(opts: SamplingOptions, seed: u64) -> Self {
        Self {
            opts,
            rng: Rng::new(seed),
            candidates: Vec::new(),
        }
    }

    /// Picks the next token.  `history` is every token of the sequence so
    /// far (the penalty looks at its last `repeat_last_n`).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repeat_penalty(logits, history);
        self.choose(logits)
    }

    /// The repeat penalty alone (the first half of `sample`).
    pub fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        self.apply_repeat_penalty(logits, history);
    }

    /// The choice from already penalized logits (the second half of
    /// `sample`); `logits` are only read.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.opts.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        candidates(logits, &self.opts, c);
        if c.is_empty() {
            return 0;
        }
        let probs = softmax(c, self.opts.temperature);
        let mut r = self.rng.next_f64();
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return c[i].0;
            }
            r -= p;
        }
        c[c.len() - 1].0
    }

    fn apply_repeat_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.opts.repeat_penalty;
        if penalty == 1.0 || self.opts.repeat_last_n == 0 {
            return;
        }
        let start = history.len().saturating_sub(self.opts.repeat_last_n);
        let mut recent: Vec<u32> = history[start..].to_vec();
        recent.sort_unstable();
        recent.dedup();
        for id in recent {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// The tokens a draw at temperature > 0 chooses from: every non-NaN logit,
/// cut by top-k, top-p and min-p (at temperature 1, llama.cpp's order),
/// best first (ties by id).  Empty only when every logit is NaN.
pub fn candidates(logits: &[f32], opts: &SamplingOptions, c: &mut Vec<(u32, f32)>) {
    c.clear();
    c.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l)),
    );
    if c.is_empty() {
        return;
    }
    let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = opts.top_k;
    if k > 0 && k < c.len() {
        c.select_nth_unstable_by(k - 1, by_logit_desc);
        c.truncate(k);
    }
    c.sort_unstable_by(by_logit_desc);

    // Probabilities at temperature 1 for the truncation steps.
    let probs = softmax(c, 1.0);
    if opts.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = c.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= opts.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep.max(1));
    }
    if opts.min_p > 0.0 {
        let threshold = probs[0] * opts.min_p as f64;
        let keep = probs[..c.len()]
            .iter()
            .take_while(|&&p| p >= threshold)
            .count();
        c.truncate(keep.max(1));
    }
}

/// Index of the largest logit; the first one on ties, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_val = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_val {
            best = i;
            best_val = l;
        }
    }
    best as u32
}

fn softmax(c: &[(u32, f32)], temperature: f32) -> Vec<f64> {
    let t = temperature as f64;
    let max = c
        .iter()
        .map(|x| x.1 as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut p: Vec<f64> = c.iter().map(|x| ((x.1 as f64 - max) / t).exp()).collect();
    let sum: f64 = p.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        p.iter_mut().for_each(|x| *x /= sum);
    } else {
        // Every logit was -inf: fall back to the first candidate.
        p.iter_mut().for_each(|x| *x = 0.0);
        p[0] = 1.0;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SamplingOptions {
        SamplingOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_ignores_nan() {
        let mut s = Sampler::new(
            SamplingOptions {
                temperature: 0.0,
                ..opts()
            },
            1,
        );
        assert_eq!(s.sample(&mut [0.5, f32::NAN, 2.0, 2.0, -1.0], &[]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        for seed in 0..50 {
            let mut s = Sampler::new(SamplingOptions { top_k: 1, ..opts() }, seed);
            assert_eq!(s.sample(&mut [1.0, 3.0, 2.9, 0.0], &[]), 1);
        }
    }

    #[test]
    fn same_seed_same_draws_and_different_seeds_differ() {
        let logits = vec![1.0f32; 1000];
        let draw = |seed| {
            let mut s = Sampler::new(opts(), seed);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // p ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        for seed in 0..50 {
            let mut s = Sampler::new(
                SamplingOptions {
                    top_p: 0.5,
                    ..opts()
                },
                seed,
            );
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
            let mut s = Sampler::new(
                SamplingOptions {
                    min_p: 0.5,
                    ..opts()
                },
                seed,
            );
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
        }
        // With top_p 0.95 the last token (3%) can never be drawn.
        let mut s = Sampler::new(
            SamplingOptions {
                top_p: 0.85,
                ..opts()
            },
            3,
        );
        for _ in 0..500 {
            assert!(s.sample(&mut logits.clone(), &[]) < 2);
        }
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
        let s = Sampler::new(
            SamplingOptions {
                repeat_penalty: 2.0,
                repeat_last_n: 2,
                ..opts()
            },
            0,
        );
        let mut logits = [4.0f32, -4.0, 4.0, 4.0];
        // Token 3 is outside the last 2 of the history; token 0 counts once.
        s.apply_repeat_penalty(&mut logits, &[3, 0, 1, 0]);
        assert_eq!(logits, [2.0, -8.0, 4.0, 4.0]);
    }

    #[test]
    fn low_temperature_concentrates_on_the_maximum() {
        let mut s = Sampler::new(
            SamplingOptions {
                temperature: 0.01,
                ..opts()
            },
            11,
        );
        for _ in 0..200 {
            assert_eq!(s.sample(&mut [1.0, 1.2, 0.9], &[]), 1);
        }
    }
}
