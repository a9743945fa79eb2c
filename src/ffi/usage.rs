//! `zeph_usage`: what a request used, and how it ended
//! (`zeph_finish_reason`); written into the caller's versioned struct.

use super::boundary::{Versioned, VersionedOut};
use super::logprobs::zeph_logprobs;
use super::status::zeph_status;
use crate::error::{Error, ErrorKind, Result};
use crate::generate::{FinishReason, Usage};
use crate::options::GenerateOptions;

/// Why generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum zeph_finish_reason {
    /// Not finished yet (a stream that is still running).
    ZEPH_FINISH_NONE = 0,
    /// The model produced an end-of-generation token.
    ZEPH_FINISH_STOP_TOKEN = 1,
    /// A stop string was found; it is not part of the text.
    ZEPH_FINISH_STOP_STRING = 2,
    /// `max_tokens` tokens were generated.
    ZEPH_FINISH_LENGTH = 3,
    /// The request was cancelled.
    ZEPH_FINISH_CANCELLED = 4,
    /// The request's deadline passed.
    ZEPH_FINISH_TIMEOUT = 5,
    /// A stream ended in a failure other than a cancel or its deadline
    /// (shutdown, an inference error, a panic): `zeph_usage.status` says
    /// which, as `zeph_stream_next` did.
    ZEPH_FINISH_ERROR = 6,
}

/// What a request used.  The caller sets `struct_size` to
/// `sizeof(zeph_usage)` before the call (`zeph_usage u = { .struct_size = sizeof u };`);
/// the library writes no more than that many bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_usage {
    /// Set by the caller: `sizeof(zeph_usage)`.
    pub struct_size: u32,
    /// Tokens in the prompt, special tokens and BOS included.
    pub prompt_tokens: u32,
    /// Tokens generated, not counting an end-of-generation token.
    pub completion_tokens: u32,
    pub finish_reason: zeph_finish_reason,
    /// Prompt tokens whose KV cache was reused from an earlier request (see
    /// `cache_prompt`) instead of being evaluated.
    pub cached_tokens: u32,
    /// Index of the worker that ran the request (0 .. n_workers-1).
    pub worker: u32,
    /// Milliseconds the request waited for a slot of a worker (in the
    /// queue, or for KV memory).
    pub queue_ms: f64,
    /// Milliseconds spent evaluating the prompt.
    pub prompt_ms: f64,
    /// Milliseconds spent generating tokens.
    pub generation_ms: f64,
    /// How the request ended: `ZEPH_STATUS_OK`, or for a stream that ended
    /// early the status `zeph_stream_next` returned (TIMEOUT, CANCELLED,
    /// SHUTDOWN, INFERENCE, PANIC...).
    pub status: zeph_status,
    /// Reserved; 0.
    pub reserved: u32,
    /// The log-probabilities of the generated tokens when the request's
    /// `n_logprobs` > 0 (then `struct_size` must include this field), else
    /// NULL.  A new object for each call that fills this struct, owned by
    /// the caller, freed with `zeph_logprobs_free`.  A stream's is NULL
    /// until it has ended.
    pub logprobs: *mut zeph_logprobs,
}

impl From<FinishReason> for zeph_finish_reason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::StopToken => Self::ZEPH_FINISH_STOP_TOKEN,
            FinishReason::StopString => Self::ZEPH_FINISH_STOP_STRING,
            FinishReason::Length => Self::ZEPH_FINISH_LENGTH,
            FinishReason::Cancelled => Self::ZEPH_FINISH_CANCELLED,
            FinishReason::Timeout => Self::ZEPH_FINISH_TIMEOUT,
        }
    }
}

/// `sizeof(zeph_usage)` before `status` was added: callers built with that
/// header keep working (they get the fields they know of).
pub(crate) const USAGE_V1_SIZE: usize = std::mem::offset_of!(zeph_usage, status);

// SAFETY: repr(C), `struct_size` first, no padding (six 4-byte fields, three
// f64, two 4-byte fields, a pointer).
unsafe impl Versioned for zeph_usage {
    const NAME: &'static str = "zeph_usage";
    const MIN_SIZE: usize = USAGE_V1_SIZE;
}

/// Whether the caller's `zeph_usage` has the `logprobs` field.
pub(crate) fn has_logprobs(usage_out: Option<&VersionedOut<zeph_usage>>) -> bool {
    let end =
        std::mem::offset_of!(zeph_usage, logprobs) + std::mem::size_of::<*mut zeph_logprobs>();
    usage_out.is_some_and(|u| u.has(end))
}

/// A request with `n_logprobs` needs a usage struct to receive them.
pub(crate) fn check_logprobs(
    options: &GenerateOptions,
    usage_out: Option<&VersionedOut<zeph_usage>>,
) -> Result<()> {
    if options.n_logprobs > 0 && !has_logprobs(usage_out) {
        return Err(Error::invalid_argument(
            "n_logprobs > 0 needs usage_out, with a struct_size that includes zeph_usage.logprobs",
        ));
    }
    Ok(())
}

fn empty_usage() -> zeph_usage {
    zeph_usage {
        struct_size: std::mem::size_of::<zeph_usage>() as u32,
        prompt_tokens: 0,
        completion_tokens: 0,
        finish_reason: zeph_finish_reason::ZEPH_FINISH_STOP_TOKEN,
        cached_tokens: 0,
        worker: 0,
        queue_ms: 0.0,
        prompt_ms: 0.0,
        generation_ms: 0.0,
        status: zeph_status::ZEPH_STATUS_OK,
        reserved: 0,
        logprobs: std::ptr::null_mut(),
    }
}

/// The C form of a usage; `None` (still running) gives zeros and
/// `ZEPH_FINISH_NONE`.
pub(crate) fn usage_to_c(u: Option<&Usage>) -> zeph_usage {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    match u {
        None => zeph_usage {
            finish_reason: zeph_finish_reason::ZEPH_FINISH_NONE,
            ..empty_usage()
        },
        Some(u) => zeph_usage {
            struct_size: std::mem::size_of::<zeph_usage>() as u32,
            prompt_tokens: u.prompt_tokens as u32,
            completion_tokens: u.completion_tokens as u32,
            finish_reason: u.finish_reason.into(),
            cached_tokens: u.cached_tokens as u32,
            worker: u.worker as u32,
            queue_ms: ms(u.queue_time),
            prompt_ms: ms(u.prompt_time),
            generation_ms: ms(u.generation_time),
            status: zeph_status::ZEPH_STATUS_OK,
            reserved: 0,
            logprobs: std::ptr::null_mut(),
        },
    }
}

/// The C form of a stream's usage: as `usage_to_c`, with the failure it
/// ended with, if any, in `finish_reason` and `status`.
pub(crate) fn stream_usage_to_c(u: Option<&Usage>, error: Option<&Error>) -> zeph_usage {
    let mut c = usage_to_c(u);
    if let Some(e) = error {
        c.status = zeph_status::from(e.kind);
        if !matches!(e.kind, ErrorKind::Timeout | ErrorKind::Cancelled) {
            c.finish_reason = zeph_finish_reason::ZEPH_FINISH_ERROR;
        }
    }
    c
}
