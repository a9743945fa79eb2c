//! One request's inference loop: the prompt in chunks, then one token at a
//! time, checking between every step whether the caller still wants it.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::Session;
use crate::options::GenerateOptions;
use crate::sampling::Sampler;
use crate::stop::StopStrings;
use crate::tokenizer::Tokenizer;

/// Prompt tokens evaluated per forward pass.  Cancellation and deadlines
/// are checked between chunks, so this bounds how long a cancelled prompt
/// keeps a worker busy.
pub const PROMPT_CHUNK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    StopToken,
    /// A stop string appeared; it is not part of the text.
    StopString,
    /// `max_tokens` were generated.
    Length,
    /// The request was cancelled before it finished.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Tokens sampled, not counting an end-of-generation token.
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    pub queue_time: Duration,
    pub prompt_time: Duration,
    pub generation_time: Duration,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub usage: Usage,
}

/// Runs `prompt` through a fresh cache and samples until a stop condition.
/// `interrupt` is called before every forward pass; an error from it ends
/// the work with that error.
pub fn generate(
    session: &mut dyn Session,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    seed: u64,
    interrupt: &dyn Fn() -> Result<()>,
) -> Result<Completion> {
    if prompt.is_empty() {
        return Err(Error::invalid_argument("the prompt has no tokens"));
    }
    let start = Instant::now();
    session.reset();
    let mut logits = Vec::new();
    let mut pos = 0;
    for chunk in prompt.chunks(PROMPT_CHUNK) {
        interrupt()?;
        logits = session.forward(chunk, pos)?;
        pos += chunk.len();
    }
    let prompt_time = start.elapsed();

    let mut sampler = Sampler::new(options.sampling, seed);
    let stops = StopStrings::new(&options.stop);
    let mut history = prompt.to_vec();
    let mut generated = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let finish_reason = loop {
        let id = sampler.sample(&mut logits, &history);
        if tokenizer.is_eog(id) {
            break FinishReason::StopToken;
        }
        generated.push(id);
        history.push(id);
        let checked = bytes.len();
        bytes.extend_from_slice(tokenizer.piece(id));
        if let Some(at) = stops.find(&bytes, checked) {
            bytes.truncate(at);
            break FinishReason::StopString;
        }
        if generated.len() >= options.max_tokens {
            break FinishReason::Length;
        }
        interrupt()?;
        logits = session.forward(&[id], pos)?;
        pos += 1;
    };
    let usage = Usage {
        prompt_tokens: prompt.len(),
        completion_tokens: generated.len(),
        finish_reason,
        queue_time: Duration::ZERO,
        prompt_time,
        generation_time: start.elapsed() - prompt_time,
    };
    Ok(Completion {
        // A token may end inside a multi-byte character: replace, never fail.
        text: String::from_utf8_lossy(&bytes).into_owned(),
        tokens: generated,
        usage,
    })
}
