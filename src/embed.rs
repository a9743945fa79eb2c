//! Embeddings: a text's final hidden states (after the output norm), pooled
//! into one vector and L2-normalized, as llama.cpp's `llama-embedding`
//! makes them (`--pooling mean|last --embd-normalize 2`).
//!
//! The narrow interface the worker calls is [`embed`]: the tokens in, a
//! vector out, through a sequence slot of a worker; pooling and normalizing
//! are pure functions.

use crate::error::{Error, Result};
use crate::generate::PROMPT_CHUNK;

/// How the hidden states of a text's tokens become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over every token (BOS included when the model adds it).
    Mean,
    /// The last token's hidden state.
    Last,
}

/// Runs `tokens` in chunks through `hidden_states` (a fresh sequence:
/// each call continues where the last one ended, and returns the final
/// hidden states of its tokens) and returns the pooled, L2-normalized
/// vector of `n_embd` values.  `interrupt` is called before every chunk.
pub fn embed(
    hidden_states: &mut dyn FnMut(&[u32]) -> Result<Vec<f32>>,
    tokens: &[u32],
    n_embd: usize,
    pooling: Pooling,
    interrupt: &dyn Fn() -> Result<()>,
) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Err(Error::invalid_argument("the text has no tokens"));
    }
    let mut sum = vec![0f64; n_embd];
    let mut last = Vec::new();
    for chunk in tokens.chunks(PROMPT_CHUNK) {
        interrupt()?;
        let hidden = hidden_states(chunk)?;
        if hidden.len() != chunk.len() * n_embd {
            return Err(Error::inference(format!(
                "the model returned {} hidden values for {} tokens of {n_embd}",
                hidden.len(),
                chunk.len()
            )));
        }
        pool_into(&mut sum, &hidden, n_embd);
        last = hidden[hidden.len() - n_embd..].to_vec();
    }
    let mut v: Vec<f32> = match pooling {
        Pooling::Mean => sum
            .iter()
            .map(|s| (s / tokens.len() as f64) as f32)
            .collect(),
        Pooling::Last => last,
    };
    l2_normalize(&mut v);
    Ok(v)
}

fn pool_into(sum: &mut [f64], hidden: &[f32], n_embd: usize) {
    for row in hidden.chunks(n_embd) {
        for (s, &h) in sum.iter_mut().zip(row) {
            *s += h as f64;
        }
    }
}

/// Scales `v` to unit Euclidean length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn rows_are_summed_per_dimension() {
        let mut sum = vec![0.0; 2];
        pool_into(&mut sum, &[1.0, 2.0, 3.0, 5.0], 2);
        assert_eq!(sum, vec![4.0, 7.0]);
    }
}
