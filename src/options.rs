//! Options of the engine and of one request, in Rust types, with the range
//! checks that turn absurd values into `InvalidArgument` errors naming the
//! option.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::constraint::ConstraintKind;
use crate::error::{Error, Result};
use crate::log::{Logger, ProgressFn};

pub const MAX_WORKERS: usize = 64;

// Upper bounds on the sizes an input sets, checked before anything is
// allocated for it; each error message names its limit.

/// Most bytes of a prompt, of a text to tokenize, and of a conversation's
/// messages together (16 MiB).
pub const MAX_TEXT_BYTES: usize = 1 << 24;
/// Most messages in a conversation.
pub const MAX_MESSAGES: usize = 1 << 16;
/// Most bytes of a message's role.
pub const MAX_ROLE_BYTES: usize = 256;
/// Most ids one detokenize call turns into text.
pub const MAX_DETOKENIZE_IDS: usize = 1 << 20;
/// Largest context length, in tokens: the engine option, and what a model
/// file may claim.
pub const MAX_CONTEXT_LENGTH: usize = 1 << 24;
/// Most bytes of a chat template given as an option (1 MiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Most bytes of a file path given as an option.
pub const MAX_PATH_BYTES: usize = 4096;

/// `what` has `len` bytes: an error past `limit`, naming it.
pub fn check_len(what: &str, len: usize, limit: usize, unit: &str) -> Result<()> {
    if len > limit {
        return Err(Error::invalid_argument(format!(
            "{what} has {len} {unit}; the limit is {limit}"
        )));
    }
    Ok(())
}

/// The bounds on a conversation, from the sizes of its (role, content)
/// pairs, before anything is copied.
pub fn check_conversation(n: usize, sizes: impl Iterator<Item = (usize, usize)>) -> Result<()> {
    check_len("the conversation", n, MAX_MESSAGES, "messages")?;
    let mut total = 0usize;
    for (i, (role, content)) in sizes.enumerate() {
        check_len(
            &format!("messages[{i}].role"),
            role,
            MAX_ROLE_BYTES,
            "bytes",
        )?;
        total = total.saturating_add(role).saturating_add(content);
        check_len(
            &format!("the conversation up to messages[{i}]"),
            total,
            MAX_TEXT_BYTES,
            "bytes",
        )?;
    }
    Ok(())
}
pub const MAX_QUEUE_CAPACITY: usize = 1 << 16;

#[derive(Clone)]
pub struct EngineOptions {
    pub n_workers: usize,
    pub queue_capacity: usize,
    /// Deadline of a request whose own timeout is 0.
    pub default_timeout: Duration,
    /// An external `tokenizer.json`; `None` uses the GGUF's own vocabulary.
    pub tokenizer_path: Option<PathBuf>,
    /// A chat template replacing the model's own; `None` uses the model's.
    pub chat_template: Option<String>,
    /// Upper bound on the context length; 0 = the model's own.
    pub context_length: usize,
    /// Compute threads per worker; 0 = the available cores divided by
    /// `n_workers`, at least 1.
    pub n_threads: usize,
    /// Sequences each worker runs together, each with its own KV cache.
    pub n_parallel: usize,
    /// Bound on the KV cache memory of all sequences together, in bytes;
    /// 0 = none (each sequence is bounded by the context length).
    pub kv_memory: usize,
    /// Copy the model file into memory instead of mapping it, so that the
    /// engine no longer depends on the file once loaded (see
    /// `Gguf::open_into_memory`).  Loading from memory copies anyway.
    pub load_into_memory: bool,
    /// Told how far loading got (0 to 1) on the loading thread; returning
    /// false cancels the load (`Cancelled`).
    pub progress: Option<ProgressFn>,
    /// Where messages go (the log callback, or standard error).
    pub logger: Logger,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("n_workers", &self.n_workers)
            .field("queue_capacity", &self.queue_capacity)
            .field("default_timeout", &self.default_timeout)
            .field("tokenizer_path", &self.tokenizer_path)
            .field("context_length", &self.context_length)
            .field("n_threads", &self.n_threads)
            .field("n_parallel", &self.n_parallel)
            .field("kv_memory", &self.kv_memory)
            .field("load_into_memory", &self.load_into_memory)
            .field("progress", &self.progress.is_some())
            .field("logger", &self.logger)
            .finish_non_exhaustive()
    }
}

/// Most sequences per worker.
pub const MAX_PARALLEL: usize = 64;

/// Most compute threads per worker.
pub const MAX_THREADS: usize = 256;

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            n_workers: 1,
            queue_capacity: 16,
            default_timeout: Duration::from_millis(120_000),
            tokenizer_path: None,
            chat_template: None,
            context_length: 0,
            n_threads: 0,
            n_parallel: 4,
            kv_memory: 0,
            load_into_memory: false,
            progress: None,
            logger: Logger::default(),
        }
    }
}

impl EngineOptions {
    /// Compute threads each worker runs: `n_threads`, or when that is 0
    /// the available cores shared between the workers.
    pub fn threads_per_worker(&self) -> usize {
        if self.n_threads > 0 {
            return self.n_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / self.n_workers.max(1)).max(1)
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_WORKERS).contains(&self.n_workers) {
            return Err(Error::invalid_argument(format!(
                "n_workers = {} is outside 1..={MAX_WORKERS}",
                self.n_workers
            )));
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return Err(Error::invalid_argument(format!(
                "queue_capacity = {} is outside 1..={MAX_QUEUE_CAPACITY}",
                self.queue_capacity
            )));
        }
        if self.n_threads > MAX_THREADS {
            return Err(Error::invalid_argument(format!(
                "n_threads = {} is more than {MAX_THREADS}",
                self.n_threads
            )));
        }
        if !(1..=MAX_PARALLEL).contains(&self.n_parallel) {
            return Err(Error::invalid_argument(format!(
                "n_parallel = {} is outside 1..={MAX_PARALLEL}",
                self.n_parallel
            )));
        }
        check_len(
            "context_length",
            self.context_length,
            MAX_CONTEXT_LENGTH,
            "tokens",
        )?;
        if let Some(t) = &self.chat_template {
            check_len("chat_template", t.len(), MAX_TEMPLATE_BYTES, "bytes")?;
        }
        if let Some(p) = &self.tokenizer_path {
            check_len(
                "tokenizer_path",
                p.as_os_str().len(),
                MAX_PATH_BYTES,
                "bytes",
            )?;
        }
        if self.default_timeout.is_zero() {
            return Err(Error::invalid_argument(
                "default_timeout_ms = 0; it must be at least 1",
            ));
        }
        Ok(())
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    /// `None`: a seed drawn from the clock for each request.
    pub seed: Option<u64>,
    /// Covers queue wait and inference; `None` = the engine's default.
    pub timeout: Option<Duration>,
    pub stop: Vec<String>,
    /// Cancels the request when tripped.
    pub cancel: Option<Arc<CancelToken>>,
    /// Reuse the part of the prompt already in a worker's KV cache.
    pub cache_prompt: bool,
    /// Keep generating through end-of-generation tokens (benchmarks).
    pub ignore_eog: bool,
    /// Alternatives reported per generated token (0 = no log-probabilities;
    /// at most `logprobs::MAX_LOGPROBS`).
    pub n_logprobs: usize,
    /// What the answer must satisfy (structured output).
    pub constraint: Option<ConstraintKind>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelToken({})", self.is_cancelled())
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingOptions::default(),
            seed: None,
            timeout: None,
            stop: Vec::new(),
            cancel: None,
            cache_prompt: true,
            ignore_eog: false,
            n_logprobs: 0,
            constraint: None,
        }
    }
}

pub const MAX_STOP_STRINGS: usize = 64;
pub const MAX_STOP_LEN: usize = 1024;

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        let s = &self.sampling;
        if self.max_tokens == 0 {
            return Err(Error::invalid_argument(
                "max_tokens = 0; it must be at least 1",
            ));
        }
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(Error::invalid_argument(format!(
                "temperature = {} must be a finite number >= 0",
                s.temperature
            )));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(Error::invalid_argument(format!(
                "top_p = {} is outside (0, 1]",
                s.top_p
            )));
        }
        if !(0.0..=1.0).contains(&s.min_p) {
            return Err(Error::invalid_argument(format!(
                "min_p = {} is outside [0, 1]",
                s.min_p
            )));
        }
        if !(s.repeat_penalty.is_finite() && s.repeat_penalty > 0.0) {
            return Err(Error::invalid_argument(format!(
                "repeat_penalty = {} must be a finite number > 0",
                s.repeat_penalty
            )));
        }
        if self.n_logprobs > crate::logprobs::MAX_LOGPROBS {
            return Err(Error::invalid_argument(format!(
                "n_logprobs = {} is more than {}",
                self.n_logprobs,
                crate::logprobs::MAX_LOGPROBS
            )));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(Error::invalid_argument(format!(
                "n_stop = {} is more than {MAX_STOP_STRINGS} stop strings",
                self.stop.len()
            )));
        }
        for (i, stop) in self.stop.iter().enumerate() {
            if stop.is_empty() || stop.len() > MAX_STOP_LEN {
                return Err(Error::invalid_argument(format!(
                    "stop[{i}] has {} bytes; stop strings must have 1..={MAX_STOP_LEN}",
                    stop.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: impl FnOnce(&mut GenerateOptions)) -> Result<()> {
        let mut o = GenerateOptions::default();
        f(&mut o);
        o.validate()
    }

    #[test]
    fn defaults_are_valid() {
        GenerateOptions::default().validate().unwrap();
        EngineOptions::default().validate().unwrap();
    }

    #[test]
    fn absurd_generation_options_name_the_option() {
        type Case = (Box<dyn FnOnce(&mut GenerateOptions)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                Box::new(|o| o.sampling.temperature = f32::NAN),
                "temperature",
            ),
            (Box::new(|o| o.sampling.temperature = -0.5), "temperature"),
            (
                Box::new(|o| o.sampling.temperature = f32::INFINITY),
                "temperature",
            ),
            (Box::new(|o| o.sampling.top_p = 0.0), "top_p"),
            (Box::new(|o| o.sampling.top_p = 1.5), "top_p"),
            (Box::new(|o| o.sampling.top_p = f32::NAN), "top_p"),
            (Box::new(|o| o.sampling.min_p = -0.1), "min_p"),
            (
                Box::new(|o| o.sampling.repeat_penalty = 0.0),
                "repeat_penalty",
            ),
            (Box::new(|o| o.max_tokens = 0), "max_tokens"),
            (Box::new(|o| o.n_logprobs = 21), "n_logprobs"),
            (Box::new(|o| o.stop = vec![String::new()]), "stop[0]"),
            (Box::new(|o| o.stop = vec!["x".into(); 65]), "n_stop"),
        ];
        for (f, name) in cases {
            let e = check(f).unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::InvalidArgument);
            assert!(e.message.contains(name), "{name}: {}", e.message);
        }
        check(|o| o.sampling.temperature = 0.0).unwrap();
        check(|o| o.sampling.top_p = 1.0).unwrap();
    }

    #[test]
    fn absurd_engine_options_name_the_option() {
        for (o, name) in [
            (
                EngineOptions {
                    n_workers: 0,
                    ..Default::default()
                },
                "n_workers",
            ),
            (
                EngineOptions {
                    n_workers: 1000,
                    ..Default::default()
                },
                "n_workers",
            ),
            (
                EngineOptions {
                    queue_capacity: 0,
                    ..Default::default()
                },
                "queue_capacity",
            ),
            (
                EngineOptions {
                    default_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "default_timeout_ms",
            ),
            (
                EngineOptions {
                    context_length: MAX_CONTEXT_LENGTH + 1,
                    ..Default::default()
                },
                "context_length has 16777217 tokens; the limit is 16777216",
            ),
            (
                EngineOptions {
                    chat_template: Some("x".repeat(MAX_TEMPLATE_BYTES + 1)),
                    ..Default::default()
                },
                "chat_template",
            ),
        ] {
            let e = o.validate().unwrap_err();
            assert!(e.message.contains(name), "{}", e.message);
        }
    }

    #[test]
    fn conversations_are_bounded_before_copying() {
        let e = check_conversation(MAX_MESSAGES + 1, std::iter::empty()).unwrap_err();
        assert!(e.message.contains("65536"), "{}", e.message);
        let e = check_conversation(2, [(4, MAX_TEXT_BYTES), (4, 1)].into_iter()).unwrap_err();
        assert!(e.message.contains("messages[0]"), "{}", e.message);
        assert!(e.message.contains("16777216"), "{}", e.message);
        let e = check_conversation(1, [(MAX_ROLE_BYTES + 1, 0)].into_iter()).unwrap_err();
        assert!(e.message.contains("messages[0].role"), "{}", e.message);
        check_conversation(2, [(4, 10), (9, 10)].into_iter()).unwrap();
    }
}
