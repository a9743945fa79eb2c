//! The model behind a narrow interface of our own: token ids and a position
//! in, logits of the last position out, and a cache that can be reset.  Each
//! architecture is one file; `load` dispatches on `general.architecture`.
//! Nothing outside this folder knows which library computes the logits.

mod llama;

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Facts about a loaded model that the engine and callers need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    /// Context length the model was trained with (`<arch>.context_length`).
    pub trained_context_length: usize,
    /// Longest sequence this implementation can run: the trained length,
    /// capped by the implementation's own limits and the engine option.
    pub context_length: usize,
    pub vocab_size: usize,
    pub parameter_count: u64,
}

/// The shared, read-only part of a model: its weights.  One copy serves all
/// workers.
pub trait Weights: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// A new sequence state (KV cache) over these weights.
    fn new_session(&self) -> Box<dyn Session>;
}

/// One sequence being evaluated: the weights plus its own KV cache.
pub trait Session: Send {
    /// Runs `tokens`, which occupy positions `pos..pos + tokens.len()` of the
    /// sequence (the cache must hold exactly `pos` tokens), and returns the
    /// logits for the last of them.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>>;
    /// Empties the cache.
    fn reset(&mut self);
}

/// Architectures this build can run, for error messages.
pub const SUPPORTED: &[&str] = &["llama"];

/// Loads the weights of `gguf`.  `max_context` (0 = no cap) limits the
/// context length below the model's own.
pub fn load(gguf: &mut Gguf, max_context: usize) -> Result<Box<dyn Weights>> {
    let arch = gguf.architecture()?.to_string();
    let weights: Box<dyn Weights> = match arch.as_str() {
        "llama" => Box::new(llama::Llama::load(gguf, max_context)?),
        other => {
            return Err(Error::model(format!(
                "architecture '{other}' is not supported (supported: {})",
                SUPPORTED.join(", ")
            )))
        }
    };
    Ok(weights)
}

pub(crate) fn candle_error(e: candle_core::Error) -> Error {
    Error::inference(e.to_string())
}

/// The context length to run with: the trained one, capped by `limit` (the
/// implementation's) and by `max_context` when that is non-zero.
pub(crate) fn effective_context(trained: usize, limit: usize, max_context: usize) -> usize {
    let mut n = trained.min(limit);
    if max_context > 0 {
        n = n.min(max_context);
    }
    n
}
