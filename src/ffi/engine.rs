//! `zeph_engine_*`: creating an engine, generating text, shutting down.

use std::ffi::{c_char, c_void};
use std::path::Path;

use super::options::{engine_options, generate_options, out_struct_size};
use super::string::into_c_string;
use super::{boundary, null_argument, str_arg, write_out, zeph_status};
use crate::chat::Message;
use crate::embed::Pooling;
use crate::engine::Engine;
use crate::error::Error;
use crate::error::Result;
use crate::generate::{Completion, FinishReason};

/// A loaded model with its worker threads.  Opaque.
///
/// Threads: every `zeph_engine_*` call except `zeph_engine_free` may be made
/// on the same engine from any number of threads at once.
pub struct zeph_engine {
    engine: Engine,
    info: super::model::InfoStrings,
}

/// # Safety
/// `engine` is a live, non-NULL engine.
pub(crate) unsafe fn info_strings<'a>(engine: *const zeph_engine) -> &'a super::model::InfoStrings {
    &(*engine).info
}

/// One chat message.  Both strings are UTF-8, borrowed for the duration of
/// the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_message {
    /// "system", "user", "assistant", or another role the template knows.
    pub role: *const c_char,
    pub content: *const c_char,
}

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
    pub logprobs: *mut super::zeph_logprobs,
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

/// Loads the GGUF model at `model_path` and starts its workers.
///
/// `options` may be NULL for the defaults; it and its strings are only read
/// during the call.  On success `*engine_out` receives a new engine, which
/// the caller frees with `zeph_engine_free`; on failure `*engine_out` is
/// left untouched and `zeph_last_error()` says why (`ZEPH_STATUS_IO`: the
/// file cannot be read; `ZEPH_STATUS_MODEL`: not a GGUF, truncated, or an
/// unsupported architecture; `ZEPH_STATUS_TOKENIZER`, `ZEPH_STATUS_TEMPLATE`,
/// `ZEPH_STATUS_INVALID_ARGUMENT` for options out of range;
/// `ZEPH_STATUS_CANCELLED`: the `progress` callback returned false, and
/// everything loaded so far was freed).
///
/// Threads: any thread; the `progress` and `log` callbacks of `options`
/// run on it during the call.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_new(
    model_path: *const c_char,
    options: *const super::zeph_engine_options,
    engine_out: *mut *mut zeph_engine,
) -> zeph_status {
    boundary(|| {
        let path = str_arg(model_path, "model_path")?;
        if engine_out.is_null() {
            return Err(null_argument("engine_out"));
        }
        let options = engine_options(options)?;
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("ZEPH_FAULT").is_some() {
            crate::error::quiet_injected_panics();
        }
        let engine = Engine::new(Path::new(path), options)?;
        let info = super::model::InfoStrings::new(&engine);
        write_out(
            engine_out,
            Box::into_raw(Box::new(zeph_engine { engine, info })),
        );
        Ok(())
    })
}

/// Loads a GGUF model from the `len` bytes at `data` (a model shipped
/// inside an application bundle, downloaded, or decrypted in memory) and
/// starts its workers; otherwise as `zeph_engine_new`.
///
/// Ownership: the bytes are COPIED during the call (into an anonymous
/// in-memory file that the engine maps as it maps a model file, freed with
/// the engine): the caller may free or reuse `data` as soon as the call
/// returns.  The engine's memory therefore includes a copy of the model
/// file; loading from a path (`zeph_engine_new`) needs no copy.
///
/// Failures: `ZEPH_STATUS_NULL_ARGUMENT` for NULL `data` or `engine_out`;
/// `ZEPH_STATUS_MODEL` when the bytes are not a whole GGUF model (messages
/// name the model `<memory>`); `ZEPH_STATUS_IO` when the copy cannot be
/// made; the rest as `zeph_engine_new`.
///
/// Threads: any thread; the `progress` and `log` callbacks of `options`
/// run on it during the call.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_new_from_memory(
    data: *const c_void,
    len: usize,
    options: *const super::zeph_engine_options,
    engine_out: *mut *mut zeph_engine,
) -> zeph_status {
    boundary(|| {
        if data.is_null() {
            return Err(null_argument("data"));
        }
        if engine_out.is_null() {
            return Err(null_argument("engine_out"));
        }
        let options = engine_options(options)?;
        let bytes = std::slice::from_raw_parts(data as *const u8, len);
        let engine = Engine::from_memory(bytes, options)?;
        let info = super::model::InfoStrings::new(&engine);
        write_out(
            engine_out,
            Box::into_raw(Box::new(zeph_engine { engine, info })),
        );
        Ok(())
    })
}

/// # Safety
/// `engine` is NULL or a live engine from `zeph_engine_new`.
pub(crate) unsafe fn engine_ref<'a>(engine: *const zeph_engine) -> Result<&'a Engine> {
    engine
        .as_ref()
        .map(|e| &e.engine)
        .ok_or_else(|| null_argument("engine"))
}

/// `sizeof(zeph_usage)` before `status` was added: callers built with that
/// header keep working (they get the fields they know of).
pub(crate) const USAGE_V1_SIZE: usize = std::mem::offset_of!(zeph_usage, status);

/// Validates `usage_out` before any work is done, so a bad struct_size
/// fails fast rather than after generation.
///
/// # Safety
/// `usage_out` is NULL or points to a `zeph_usage` valid for its
/// `struct_size` bytes.
pub(crate) unsafe fn check_usage(usage_out: *mut zeph_usage) -> Result<()> {
    if !usage_out.is_null() {
        out_struct_size(usage_out, USAGE_V1_SIZE, "zeph_usage")?;
    }
    Ok(())
}

/// Whether `usage_out` has room for the `logprobs` field.
///
/// # Safety
/// `usage_out` is NULL or passed `check_usage`.
pub(crate) unsafe fn usage_has_logprobs(usage_out: *const zeph_usage) -> bool {
    !usage_out.is_null() && (*usage_out).struct_size as usize >= std::mem::size_of::<zeph_usage>()
}

/// A request with `n_logprobs` needs a usage struct to receive them.
///
/// # Safety
/// As for `usage_has_logprobs`.
pub(crate) unsafe fn check_logprobs(
    options: &crate::options::GenerateOptions,
    usage_out: *const zeph_usage,
) -> Result<()> {
    if options.n_logprobs > 0 && !usage_has_logprobs(usage_out) {
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
pub(crate) fn usage_to_c(u: Option<&crate::generate::Usage>) -> zeph_usage {
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
pub(crate) fn stream_usage_to_c(
    u: Option<&crate::generate::Usage>,
    error: Option<&crate::error::Error>,
) -> zeph_usage {
    use crate::error::ErrorKind;
    let mut c = usage_to_c(u);
    if let Some(e) = error {
        c.status = zeph_status::from(e.kind);
        if !matches!(e.kind, ErrorKind::Timeout | ErrorKind::Cancelled) {
            c.finish_reason = zeph_finish_reason::ZEPH_FINISH_ERROR;
        }
    }
    c
}

/// Copies `usage` into the caller's struct, no more than its `struct_size`
/// bytes, keeping the caller's `struct_size`.
///
/// # Safety
/// `usage_out` is non-NULL and passed `check_usage`.
pub(crate) unsafe fn write_usage(usage_out: *mut zeph_usage, usage: zeph_usage) {
    let size = (*usage_out).struct_size;
    let usage = zeph_usage {
        struct_size: size,
        ..usage
    };
    let n = (size as usize).min(std::mem::size_of::<zeph_usage>());
    std::ptr::copy_nonoverlapping(
        &usage as *const zeph_usage as *const u8,
        usage_out as *mut u8,
        n,
    );
}

/// A new `zeph_logprobs` for the caller.
pub(crate) fn logprobs_out(
    logprobs: Vec<crate::logprobs::TokenLogprob>,
) -> *mut super::zeph_logprobs {
    Box::into_raw(Box::new(super::zeph_logprobs::new(logprobs)))
}

/// Writes the text and usage of a finished request.
///
/// # Safety
/// `text_out` is valid for a write; `usage_out` is NULL or passed
/// `check_usage`.
unsafe fn deliver(
    asked: bool,
    c: Completion,
    text_out: *mut *mut c_char,
    usage_out: *mut zeph_usage,
) {
    if !usage_out.is_null() {
        let mut usage = usage_to_c(Some(&c.usage));
        if asked {
            usage.logprobs = logprobs_out(c.logprobs);
        }
        write_usage(usage_out, usage);
    }
    write_out(text_out, into_c_string(&c.text));
}

/// Continues `prompt` (UTF-8, at most `ZEPH_MAX_TEXT_BYTES`) and returns the
/// generated text.
///
/// The prompt is read as llama.cpp's completion reads it: special tokens
/// written in it (such as `<|im_start|>`) are parsed as such, and BOS is
/// added when the model asks for it.  `options` may be NULL for the
/// defaults.  The call blocks until the answer is ready or the request's
/// deadline (`timeout_ms`, queue wait included) passes; then it returns
/// `ZEPH_STATUS_TIMEOUT` at once and the work is cancelled.
///
/// On success `*text_out` receives a NUL-terminated UTF-8 string owned by
/// the caller, freed with `zeph_string_free` (an interior NUL the model
/// produced is replaced by U+FFFD), and `*usage_out` (may be NULL; set its
/// `struct_size` first) is filled.  On failure neither is written.
///
/// Threads: any thread; calls from several threads run together (up to
/// `n_workers × n_parallel` sequences at once, see `zeph_engine_options`),
/// or wait in its queue.  The answer does not depend on what else runs:
/// a greedy or seeded request gives the same text alone or beside others.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_complete(
    engine: *mut zeph_engine,
    prompt: *const c_char,
    options: *const super::zeph_generate_options,
    text_out: *mut *mut c_char,
    usage_out: *mut zeph_usage,
) -> zeph_status {
    boundary(|| {
        let engine = engine_ref(engine)?;
        let prompt = str_arg(prompt, "prompt")?;
        if text_out.is_null() {
            return Err(null_argument("text_out"));
        }
        check_usage(usage_out)?;
        let options = generate_options(options)?;
        check_logprobs(&options, usage_out)?;
        let completion = engine.complete(prompt, &options)?;
        deliver(options.n_logprobs > 0, completion, text_out, usage_out);
        Ok(())
    })
}

/// # Safety
/// `messages` is NULL (with `n == 0`) or points to `n` valid messages.
pub(crate) unsafe fn messages_arg(messages: *const zeph_message, n: usize) -> Result<Vec<Message>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if messages.is_null() {
        return Err(null_argument("messages (with n_messages > 0)"));
    }
    crate::options::check_len("n_messages", n, crate::options::MAX_MESSAGES, "messages")?;
    // The sizes first, so that nothing is copied past a limit.
    let len = |p: *const c_char| {
        if p.is_null() {
            0
        } else {
            std::ffi::CStr::from_ptr(p).to_bytes().len()
        }
    };
    crate::options::check_conversation(
        n,
        (0..n).map(|i| {
            let m = &*messages.add(i);
            (len(m.role), len(m.content))
        }),
    )?;
    (0..n)
        .map(|i| {
            let m = &*messages.add(i);
            Ok(Message::new(
                str_arg(m.role, &format!("messages[{i}].role"))?,
                str_arg(m.content, &format!("messages[{i}].content"))?,
            ))
        })
        .collect()
}

/// Renders `messages` with the engine's chat template (the model's own, or
/// the `chat_template` engine option), adds the prompt for the assistant's
/// turn, and generates the reply.  At most `ZEPH_MAX_MESSAGES` messages,
/// roles of at most `ZEPH_MAX_ROLE_BYTES`, all strings together at most
/// `ZEPH_MAX_TEXT_BYTES`.
///
/// Ownership, deadline and threads as for `zeph_engine_complete`; the
/// messages are only read during the call.  A template that fails returns
/// `ZEPH_STATUS_TEMPLATE` with the template's own message.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_chat(
    engine: *mut zeph_engine,
    messages: *const zeph_message,
    n_messages: usize,
    options: *const super::zeph_generate_options,
    text_out: *mut *mut c_char,
    usage_out: *mut zeph_usage,
) -> zeph_status {
    boundary(|| {
        let engine = engine_ref(engine)?;
        let messages = messages_arg(messages, n_messages)?;
        if text_out.is_null() {
            return Err(null_argument("text_out"));
        }
        check_usage(usage_out)?;
        let options = generate_options(options)?;
        check_logprobs(&options, usage_out)?;
        let completion = engine.chat(&messages, &options)?;
        deliver(options.n_logprobs > 0, completion, text_out, usage_out);
        Ok(())
    })
}

/// Renders `messages` with the engine's chat template, without generating.
/// `add_generation_prompt` non-zero appends the start of the assistant's
/// turn.  On success `*text_out` receives a string the caller frees with
/// `zeph_string_free`.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_apply_chat_template(
    engine: *const zeph_engine,
    messages: *const zeph_message,
    n_messages: usize,
    add_generation_prompt: bool,
    text_out: *mut *mut c_char,
) -> zeph_status {
    boundary(|| {
        let engine = engine_ref(engine)?;
        let messages = messages_arg(messages, n_messages)?;
        if text_out.is_null() {
            return Err(null_argument("text_out"));
        }
        let text = engine.apply_chat_template(&messages, add_generation_prompt)?;
        write_out(text_out, into_c_string(&text));
        Ok(())
    })
}

/// The context length in tokens that requests must fit (prompt plus
/// `max_tokens`), or 0 when `engine` is NULL.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_context_length(engine: *const zeph_engine) -> u32 {
    super::boundary_or(0, || {
        engine_ref(engine)
            .map(|e| e.info().context_length as u32)
            .unwrap_or(0)
    })
}

/// Makes every call waiting on the engine, and every later one, return
/// `ZEPH_STATUS_SHUTDOWN` promptly; running work stops before its next
/// token.  Does not free anything.  NULL is a no-op; calling it again is a
/// no-op.
///
/// Threads: any thread, at any time, including while other threads are
/// blocked in calls on the same engine.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_shutdown(engine: *mut zeph_engine) {
    super::boundary_or((), || {
        if let Ok(e) = engine_ref(engine) {
            e.shutdown();
        }
    })
}

/// Shuts the engine down (if not done yet), joins its worker threads and
/// frees it.  NULL is a no-op.
///
/// Call it once, after every other call on this engine has returned (call
/// `zeph_engine_shutdown` first to make blocked calls return); the handle is
/// invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_free(engine: *mut zeph_engine) {
    if !engine.is_null() {
        super::boundary_or((), || drop(Box::from_raw(engine)));
    }
}

/// How `zeph_engine_embed` turns the hidden states of a text's tokens into
/// one vector.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum zeph_pooling {
    /// The average of every token's final hidden state (BOS included when
    /// the model adds one).
    ZEPH_POOLING_MEAN = 0,
    /// The last token's final hidden state.
    ZEPH_POOLING_LAST = 1,
}

/// A `zeph_pooling` as C passes it: any int.  The header spells it
/// `zeph_pooling` (see cbindgen.toml), so that an out-of-range value is an
/// `INVALID_ARGUMENT`, not undefined behaviour.
#[repr(transparent)]
pub struct zeph_pooling_raw(pub std::ffi::c_int);

/// Computes the embedding of `text` (UTF-8): the final hidden states of its
/// tokens (after the model's output norm), pooled as `pooling` says, and
/// L2-normalized (unit length).  The text is tokenized as llama.cpp's
/// `llama-embedding` does: BOS added when the model asks for it, nothing
/// appended, special tokens written in the text parsed.
///
/// `*n_out` receives the embedding's length (the model's
/// `embedding_length`, the same for every text).  When `capacity` is
/// smaller than that, nothing is computed or written to `out`, the call
/// returns `ZEPH_STATUS_INVALID_ARGUMENT` and `*n_out` still receives the
/// length needed, so a first call with `capacity` 0 (and `out` NULL) sizes
/// the buffer.  `out` is owned by the caller.  Other failures:
/// `ZEPH_STATUS_INVALID_ARGUMENT` for an unknown `pooling` or a text with
/// no tokens, `ZEPH_STATUS_CONTEXT_OVERFLOW` for a text longer than the
/// context length, and the statuses of `zeph_engine_complete` (the work
/// runs on the engine's workers, through its queue, under its
/// `default_timeout_ms`: `ZEPH_STATUS_QUEUE_FULL`, `ZEPH_STATUS_TIMEOUT`,
/// `ZEPH_STATUS_SHUTDOWN`, ...).
///
/// Threads: any thread; calls from several threads run on the engine's
/// workers in parallel with each other and with generation requests.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_embed(
    engine: *mut zeph_engine,
    text: *const c_char,
    pooling: zeph_pooling_raw,
    out: *mut f32,
    capacity: usize,
    n_out: *mut usize,
) -> zeph_status {
    boundary(|| {
        let engine = engine_ref(engine)?;
        let text = str_arg(text, "text")?;
        if n_out.is_null() {
            return Err(null_argument("n_out"));
        }
        if out.is_null() && capacity > 0 {
            return Err(null_argument("out (with capacity > 0)"));
        }
        let pooling = match pooling.0 {
            0 => Pooling::Mean,
            1 => Pooling::Last,
            other => {
                return Err(Error::invalid_argument(format!(
                    "pooling = {other} is not a zeph_pooling value"
                )))
            }
        };
        let n = engine.info().embedding_length;
        write_out(n_out, n);
        if capacity < n {
            return Err(Error::invalid_argument(format!(
                "capacity {capacity} is too small: the embedding has {n} values"
            )));
        }
        let v = engine.embed(text, pooling)?;
        std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len().min(capacity));
        Ok(())
    })
}
