//! One request's generation as a state machine ([`Sequence`]): the prompt in
//! chunks, then one token at a time, each step driven by the scheduler.

use std::time::{Duration, Instant};

use crate::constraint::Constraint;
use crate::error::{Error, Result};
use crate::logprobs::{token_logprob, TokenLogprob};
use crate::model::Session;
use crate::options::GenerateOptions;
use crate::sampling::Sampler;
use crate::stop::StopStrings;
use crate::tokenizer::Tokenizer;

/// Prompt tokens evaluated per forward pass (shared by the sequences that
/// read their prompt in one step).  Cancellation and deadlines are checked
/// between passes, so this bounds how long a cancelled prompt keeps a
/// worker busy, and how long a prompt holds up other sequences' tokens.
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
pub type Sink<'a, 'b> = &'a mut (dyn FnMut(&str) -> Result<()> + 'b);

/// One request's generation, stepped from outside: the scheduler feeds it
/// prompt tokens in chunks, then the token it sampled last, one forward
/// pass at a time, and hands it the logits after each step that completes
/// its input.  What it produces depends only on the prompt, the options,
/// the seed and the logits, never on what ran beside it.
pub struct Sequence {
    prompt: Vec<u32>,
    /// Prompt tokens in the cache (reused or fed).
    fed: usize,
    /// Prompt tokens that were already in the cache.
    cached: usize,
    /// The sampled token not yet fed to the model.
    next: Option<u32>,
    /// Generated tokens fed to the model (in its cache).
    gen_fed: usize,
    max_tokens: usize,
    ignore_eog: bool,
    sampler: Sampler,
    stops: StopStrings,
    history: Vec<u32>,
    generated: Vec<u32>,
    bytes: Vec<u8>,
    emitted: usize,
    started: Instant,
    prompt_time: Option<Duration>,
    finished: Option<FinishReason>,
    /// The structured-output constraint every token must satisfy.
    constraint: Option<Constraint>,
    /// `n_logprobs` of the options, and what was gathered.
    n_logprobs: usize,
    logprobs: Vec<TokenLogprob>,
    scratch: Vec<(u32, f32)>,
    sampling: crate::options::SamplingOptions,
}

impl Sequence {
    /// A sequence whose cache already holds the first `cached` tokens of
    /// `prompt` (fewer than all of them: the last one is always evaluated,
    /// for its logits).
    pub fn new(
        prompt: Vec<u32>,
        cached: usize,
        options: &GenerateOptions,
        seed: u64,
        constraint: Option<Constraint>,
    ) -> Self {
        debug_assert!(cached < prompt.len());
        Self {
            history: prompt.clone(),
            fed: cached,
            cached,
            next: None,
            gen_fed: 0,
            max_tokens: options.max_tokens,
            ignore_eog: options.ignore_eog,
            sampler: Sampler::new(options.sampling, seed),
            stops: StopStrings::new(&options.stop),
            generated: Vec::new(),
            bytes: Vec::new(),
            emitted: 0,
            started: Instant::now(),
            prompt_time: None,
            finished: None,
            constraint,
            n_logprobs: options.n_logprobs,
            logprobs: Vec::new(),
            scratch: Vec::new(),
            sampling: options.sampling,
            prompt,
        }
    }

    /// Whether it still reads its prompt.
    pub fn in_prompt(&self) -> bool {
        self.fed < self.prompt.len()
    }

    /// Why it finished, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Its next input: up to `budget` (≥ 1) prompt tokens, or the token it
    /// sampled last; empty once finished.
    pub fn input(&self, budget: usize) -> &[u32] {
        if self.finished.is_some() {
            &[]
        } else if self.in_prompt() {
            let end = self
                .prompt
                .len()
                .min(self.fed.saturating_add(budget.max(1)));
            &self.prompt[self.fed..end]
        } else {
            self.next.as_slice()
        }
    }

    /// Whether running `n` tokens of its input needs the logits after them
    /// (the prompt is then complete, or the input is a generated token).
    pub fn completes(&self, n: usize) -> bool {
        !self.in_prompt() || self.fed + n >= self.prompt.len()
    }

    /// Records that its input of `n` tokens ran; true when the logits after
    /// them are needed (the prompt is complete, or a generated token ran).
    pub fn ran(&mut self, n: usize) -> bool {
        if self.in_prompt() {
            self.fed += n;
            !self.in_prompt()
        } else {
            self.next = None;
            self.gen_fed += 1;
            true
        }
    }

    /// The tokens its cache holds after the last step.
    pub fn cache_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.prompt[..self.fed]
            .iter()
            .chain(&self.generated[..self.gen_fed])
            .copied()
    }

    /// Samples from the logits after its input, and sends the new text to
    /// `sink` (whole UTF-8 characters, never a possible start of a stop
    /// string).  Returns whether it finished.
    pub fn accept(
        &mut self,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        mut sink: Option<Sink>,
    ) -> Result<bool> {
        if self.prompt_time.is_none() {
            self.prompt_time = Some(self.started.elapsed());
        }
        let id = match self.constraint.as_mut() {
            None => self.sampler.sample(logits, &self.history),
            Some(c) => {
                self.sampler.penalize(logits, &self.history);
                if self.n_logprobs > 0 {
                    // Log-probabilities are of the masked distribution.
                    c.mask(logits)?;
                    self.sampler.choose(logits)
                } else {
                    let sampler = &mut self.sampler;
                    c.sample(logits, &mut |l| sampler.choose(l))?
                }
            }
        };
        let reason = self.take(id, logits, tokenizer, &mut sink)?;
        if let Some(reason) = reason {
            self.finished = Some(reason);
            if let Some(sink) = sink.as_mut() {
                self.emitted += emit(&self.bytes[self.emitted..], true, *sink)?;
            }
        }
        Ok(reason.is_some())
    }

    /// Appends the sampled token `id`; returns why the sequence ends, if
    /// it does.
    fn take(
        &mut self,
        id: u32,
        logits: &[f32],
        tokenizer: &Tokenizer,
        sink: &mut Option<Sink>,
    ) -> Result<Option<FinishReason>> {
        if tokenizer.is_eog(id) && !self.ignore_eog {
            return Ok(Some(FinishReason::StopToken));
        }
        if let Some(c) = self.constraint.as_mut() {
            c.commit(id)?;
        }
        if self.n_logprobs > 0 {
            self.logprobs.push(token_logprob(
                logits,
                id,
                &self.sampling,
                self.n_logprobs,
                &mut self.scratch,
                &|t| tokenizer.piece(t).to_vec(),
            ));
        }
        self.generated.push(id);
        self.history.push(id);
        let checked = self.bytes.len();
        self.bytes.extend_from_slice(tokenizer.piece(id));
        if let Some(at) = self.stops.find(&self.bytes, checked) {
            self.bytes.truncate(at);
            return Ok(Some(FinishReason::StopString));
        }
        if let Some(sink) = sink.as_mut() {
            let safe = self.bytes.len() - self.stops.pending_suffix(&self.bytes);
            self.emitted += emit(&self.bytes[self.emitted..safe], false, *sink)?;
        }
        if self.generated.len() >= self.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        self.next = Some(id);
        Ok(None)
    }

    /// Counts so far, with `reason` as the finish reason.
    pub fn usage(&self, reason: FinishReason) -> Usage {
        let total = self.started.elapsed();
        let prompt_time = self.prompt_time.unwrap_or(total);
        Usage {
            prompt_tokens: self.prompt.len(),
            cached_tokens: self.cached,
            worker: 0,
            completion_tokens: self.generated.len(),
            finish_reason: reason,
            queue_time: Duration::ZERO,
            prompt_time,
            generation_time: total.saturating_sub(prompt_time),
        }
    }

    /// The completion of a finished sequence.
    pub fn completion(self) -> Completion {
        let usage = self.usage(self.finished.unwrap_or(FinishReason::Length));
        Completion {
            // A token may end inside a multi-byte character: replace, never fail.
            text: String::from_utf8_lossy(&self.bytes).into_owned(),
            tokens: self.generated,
            logprobs: self.logprobs,
            usage,
        }
    }
}

/// Runs `prompt` on `session` (from position 0) and samples until a stop
/// condition: one sequence with nothing beside it, for tests and tools.
pub fn generate(
    session: &mut dyn Session,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    seed: u64,
    mut sink: Option<Sink>,
    constraint: Option<Constraint>,
) -> Result<Completion> {
    if prompt.is_empty() {
        return Err(Error::invalid_argument("the prompt has no tokens"));
    }
    session.reset();
    let mut seq = Sequence::new(prompt.to_vec(), 0, options, seed, constraint);
    let mut pos = 0;
    loop {
        let input = seq.input(PROMPT_CHUNK).to_vec();
        let mut logits = session.forward(&input, pos)?;
        pos += input.len();
        if seq.ran(input.len()) && seq.accept(&mut logits, tokenizer, sink.as_deref_mut())? {
            return Ok(seq.completion());
        }
    }
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
