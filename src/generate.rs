//! One request's inference loop: the prompt in chunks, then one token at a
//! time, checking between every step whether the caller still wants it.

use std::time::{Duration, Instant};

use crate::constraint::Constraint;
use crate::error::{Error, Result};
use crate::logprobs::{token_logprob, TokenLogprob};
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
    /// The request's deadline passed before it finished.
    Timeout,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV cache was reused rather than computed.
    pub cached_tokens: usize,
    /// Index of the worker that ran the request.
    pub worker: usize,
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
    /// One per token of `tokens` when the request asked for `n_logprobs`.
    pub logprobs: Vec<TokenLogprob>,
    pub usage: Usage,
}

/// Receives the text as it is generated: whole UTF-8 characters, never a
/// possible start of a stop string.  An error (the consumer left) stops the
/// generation with that error.
pub type Sink<'a> = &'a mut dyn FnMut(&str) -> Result<()>;

/// A sequence's KV cache and the tokens it holds, kept between requests so
/// that a prompt sharing a prefix with the last one only evaluates the rest.
pub struct Cache {
    pub session: Box<dyn Session>,
    pub tokens: Vec<u32>,
}

impl Cache {
    pub fn new(session: Box<dyn Session>) -> Self {
        Self {
            session,
            tokens: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.session.reset();
        self.tokens.clear();
    }

    /// How many leading tokens of `prompt` are already cached.
    pub fn common_prefix(&self, prompt: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let pos = self.tokens.len();
        match self.session.forward(tokens, pos) {
            Ok(logits) => {
                self.tokens.extend_from_slice(tokens);
                Ok(logits)
            }
            Err(e) => {
                self.clear();
                Err(e)
            }
        }
    }
}

/// Runs `prompt` and samples until a stop condition.  With `reuse`, the
/// part of the prompt already in `cache` is not evaluated again.
/// `interrupt` is called before every forward pass; an error from it ends
/// the work with that error.  `sink`, when given, receives the text piece by
/// piece.  `constraint`, when given, limits every token to those it allows.
#[allow(clippy::too_many_arguments)] // until the batched scheduler replaces this loop
pub fn generate(
    cache: &mut Cache,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    seed: u64,
    interrupt: &dyn Fn() -> Result<()>,
    mut sink: Option<Sink>,
    mut constraint: Option<&mut Constraint>,
) -> Result<Completion> {
    if prompt.is_empty() {
        return Err(Error::invalid_argument("the prompt has no tokens"));
    }
    let start = Instant::now();
    // At least the last prompt token is evaluated, for its logits.
    let mut keep = if options.cache_prompt {
        cache.common_prefix(prompt).min(prompt.len() - 1)
    } else {
        0
    };
    if keep < cache.tokens.len() {
        keep = cache.session.truncate(keep);
        cache.tokens.truncate(keep);
    }
    if keep == 0 {
        cache.clear();
    }
    let mut logits = Vec::new();
    for chunk in prompt[keep..].chunks(PROMPT_CHUNK) {
        interrupt()?;
        logits = cache.forward(chunk)?;
    }
    let prompt_time = start.elapsed();

    let mut sampler = Sampler::new(options.sampling, seed);
    let stops = StopStrings::new(&options.stop);
    let mut history = prompt.to_vec();
    let mut generated = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut emitted = 0;
    let mut logprobs = Vec::new();
    let mut scratch = Vec::new();
    let finish_reason = loop {
        let id = match constraint.as_deref_mut() {
            None => sampler.sample(&mut logits, &history),
            Some(c) => {
                sampler.penalize(&mut logits, &history);
                if options.n_logprobs > 0 {
                    // Log-probabilities are of the masked distribution.
                    c.mask(&mut logits)?;
                    sampler.choose(&logits)
                } else {
                    c.sample(&mut logits, &mut |l| sampler.choose(l))?
                }
            }
        };
        if tokenizer.is_eog(id) && !options.ignore_eog {
            break FinishReason::StopToken;
        }
        if let Some(c) = constraint.as_deref_mut() {
            c.commit(id)?;
        }
        if options.n_logprobs > 0 {
            logprobs.push(token_logprob(
                &logits,
                id,
                &options.sampling,
                options.n_logprobs,
                &mut scratch,
                &|t| tokenizer.piece(t).to_vec(),
            ));
        }
        generated.push(id);
        history.push(id);
        let checked = bytes.len();
        bytes.extend_from_slice(tokenizer.piece(id));
        if let Some(at) = stops.find(&bytes, checked) {
            bytes.truncate(at);
            break FinishReason::StopString;
        }
        if let Some(sink) = sink.as_mut() {
            let safe = bytes.len() - stops.pending_suffix(&bytes);
            emitted += emit(&bytes[emitted..safe], false, sink)?;
        }
        if generated.len() >= options.max_tokens {
            break FinishReason::Length;
        }
        interrupt()?;
        logits = cache.forward(&[id])?;
    };
    if let Some(sink) = sink.as_mut() {
        emit(&bytes[emitted..], true, sink)?;
    }
    let usage = Usage {
        prompt_tokens: prompt.len(),
        cached_tokens: keep,
        worker: 0,
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
        logprobs,
        usage,
    })
}

/// Sends the longest prefix of `bytes` that is whole UTF-8 characters (all
/// of it when `last`), with invalid sequences as U+FFFD exactly as
/// `String::from_utf8_lossy` replaces them, so that the pieces add up to the
/// final text.  Returns how many bytes were consumed.
fn emit(bytes: &[u8], last: bool, sink: &mut dyn FnMut(&str) -> Result<()>) -> Result<usize> {
    let mut out = String::new();
    let mut used = 0;
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        used += chunk.valid().len();
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        // An incomplete character at the very end may still be completed.
        let at_end = used + invalid.len() == bytes.len();
        if at_end && !last && std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none()) {
            break;
        }
        out.push('\u{FFFD}');
        used += invalid.len();
    }
    if !out.is_empty() {
        sink(&out)?;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(parts: &[&[u8]]) -> (Vec<String>, String) {
        let mut all = Vec::new();
        let mut got = Vec::new();
        let mut emitted = 0;
        for p in parts {
            all.extend_from_slice(p);
            emitted += emit(&all[emitted..], false, &mut |s| {
                got.push(s.to_string());
                Ok(())
            })
            .unwrap();
        }
        emit(&all[emitted..], true, &mut |s| {
            got.push(s.to_string());
            Ok(())
        })
        .unwrap();
        (got, String::from_utf8_lossy(&all).into_owned())
    }

    #[test]
    fn split_characters_are_held_until_complete() {
        // "é" = C3 A9, "日" = E6 97 A5, split across tokens.
        let (got, whole) = pieces(&[b"a\xC3", b"\xA9b\xE6", b"\x97", b"\xA5"]);
        assert_eq!(got, vec!["a", "\u{e9}b", "\u{65e5}"]);
        assert_eq!(got.concat(), whole);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_like_lossy_decoding() {
        for parts in [
            &[&b"x\xFFy"[..]][..],
            &[b"\xE6\x97", b"z"],
            &[b"ok", b"\xF0\x9F"],
            &[b"\xC3", b"\xC3\xA9"],
        ] {
            let (got, whole) = pieces(parts);
            assert_eq!(got.concat(), whole, "{parts:?}");
            for p in &got {
                assert!(!p.is_empty());
            }
        }
    }
}
