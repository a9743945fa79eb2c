//! The option structs and their conversion to Rust options.
//!
//! Extensibility: each struct begins with `struct_size`, which
//! `*_default()` sets to `sizeof` the struct in the header the caller was
//! compiled with.  A later library reads only the fields an older caller
//! knew of (the rest keep their defaults); an older library accepts a
//! larger struct from a newer caller only when the fields it does not know
//! are zero, so a request is never silently half-understood.  New fields
//! are only ever added at the end; the structs have no padding.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{null_argument, opt_str_arg};
use crate::constraint::ConstraintKind;
use crate::error::{Error, Result};
use crate::log::{LogLevel, Logger};
use crate::options::{EngineOptions, GenerateOptions, SamplingOptions};

/// `seed` value that asks for a different seed on every request.
pub const ZEPH_SEED_RANDOM: u64 = u64::MAX;

// Upper bounds on the sizes an input sets.  Each is checked before anything
// is allocated for the input; past it the call returns
// ZEPH_STATUS_INVALID_ARGUMENT with a message naming the limit.

/// Most bytes of a prompt, of a text to tokenize, and of a conversation's
/// messages together (16 MiB).
pub const ZEPH_MAX_TEXT_BYTES: usize = 16777216;
/// Most messages in a conversation.
pub const ZEPH_MAX_MESSAGES: usize = 65536;
/// Most bytes of a message's role.
pub const ZEPH_MAX_ROLE_BYTES: usize = 256;
/// Most ids one `zeph_engine_detokenize` call takes.
pub const ZEPH_MAX_DETOKENIZE_IDS: usize = 1048576;
/// Largest context length in tokens: the `context_length` option, and the
/// most a model file may claim.
pub const ZEPH_MAX_CONTEXT_LENGTH: u32 = 16777216;
/// Most bytes of the `chat_template` engine option (1 MiB).
pub const ZEPH_MAX_TEMPLATE_BYTES: usize = 1048576;
/// Most bytes of the `tokenizer_path` engine option.
pub const ZEPH_MAX_PATH_BYTES: usize = 4096;
/// Most stop strings of a request.
pub const ZEPH_MAX_STOP_STRINGS: usize = 64;
/// Most bytes of one stop string.
pub const ZEPH_MAX_STOP_BYTES: usize = 1024;

// The header's numbers are the core's.
const _: () = {
    use crate::options as o;
    assert!(ZEPH_MAX_TEXT_BYTES == o::MAX_TEXT_BYTES);
    assert!(ZEPH_MAX_MESSAGES == o::MAX_MESSAGES);
    assert!(ZEPH_MAX_ROLE_BYTES == o::MAX_ROLE_BYTES);
    assert!(ZEPH_MAX_DETOKENIZE_IDS == o::MAX_DETOKENIZE_IDS);
    assert!(ZEPH_MAX_CONTEXT_LENGTH as usize == o::MAX_CONTEXT_LENGTH);
    assert!(ZEPH_MAX_TEMPLATE_BYTES == o::MAX_TEMPLATE_BYTES);
    assert!(ZEPH_MAX_PATH_BYTES == o::MAX_PATH_BYTES);
    assert!(ZEPH_MAX_STOP_STRINGS == o::MAX_STOP_STRINGS);
    assert!(ZEPH_MAX_STOP_BYTES == o::MAX_STOP_LEN);
};

/// As `opt_str_arg`, refusing a string longer than `limit` bytes before
/// it is read as UTF-8 or copied.
///
/// # Safety
/// As for `opt_str_arg`.
pub(crate) unsafe fn bounded_str_arg<'a>(
    ptr: *const c_char,
    name: &str,
    limit: usize,
) -> Result<Option<&'a str>> {
    if !ptr.is_null() {
        let len = std::ffi::CStr::from_ptr(ptr).to_bytes().len();
        crate::options::check_len(name, len, limit, "bytes")?;
    }
    opt_str_arg(ptr, name)
}

/// Options of `zeph_engine_new`.  Get the defaults from
/// `zeph_engine_options_default()`, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_engine_options {
    /// `sizeof(zeph_engine_options)`, set by `zeph_engine_options_default()`.
    pub struct_size: u32,
    /// Worker threads over one shared copy of the weights (1..=64, default
    /// 1).  Each runs up to `n_parallel` sequences together, with its own
    /// compute threads (`n_threads`).
    pub n_workers: u32,
    /// Requests that may wait for a worker (1..=65536, default 16).
    pub queue_capacity: u32,
    /// Upper bound on the context length in tokens; 0 (default) = the
    /// model's own; at most `ZEPH_MAX_CONTEXT_LENGTH`.
    pub context_length: u32,
    /// Deadline of requests whose `timeout_ms` is 0 (>= 1, default 120000).
    pub default_timeout_ms: u64,
    /// Path of a `tokenizer.json` to use instead of the GGUF's own
    /// vocabulary; NULL (default) = the GGUF's.  Copied during the call.
    pub tokenizer_path: *const c_char,
    /// A Jinja chat template to use instead of the model's own; NULL
    /// (default) = the model's (ChatML when the file has none).  Copied
    /// during the call.
    pub chat_template: *const c_char,
    /// Compute threads of each worker, which split every matrix product
    /// between them (the worker's own thread is one of them); 0 (default)
    /// = the available cores divided by `n_workers`, at least 1; at most
    /// 256.
    pub n_threads: u32,
    /// Reserved for a later option; must be 0.
    pub reserved: u32,
    /// Sequences each worker runs together (continuous batching), each with
    /// its own KV cache: every step evaluates the next token of all of them
    /// in one pass over the weights.  0 (default) = 4; at most 64.
    pub n_parallel: u32,
    /// Bound on the KV cache memory of all sequences of the engine
    /// together, in MiB; 0 (default) = no bound beyond each sequence's
    /// context length.  A request is charged for the most its cache can
    /// grow to (prompt plus `max_tokens` positions); one that needs more
    /// than the whole bound fails with `ZEPH_STATUS_CONTEXT_OVERFLOW`, one
    /// that must wait for other requests to free memory waits within its
    /// deadline (idle caches kept for reuse are dropped first).
    pub kv_memory_mib: u32,
    /// Called while the model loads, on the thread that called
    /// `zeph_engine_new` (or `zeph_engine_new_from_memory`) and before that
    /// call returns, with `progress_user_data` and the fraction done, from
    /// 0 to 1 (non-decreasing; at least at 0 and at 1, and between the
    /// loading stages).  Returning false stops loading: the call frees
    /// everything it made and returns `ZEPH_STATUS_CANCELLED`.  NULL
    /// (default) = no callback.
    pub progress: zeph_progress_fn,
    /// Passed as is to `progress`; never read by the library.
    pub progress_user_data: *mut c_void,
    /// Receives every message the library has for the user (a warning
    /// about the model's vocabulary, a summary when the model is loaded,
    /// ...), with `log_user_data` and a level; the message is valid during
    /// the call only.  With a callback, nothing is written to standard
    /// error; NULL (default) = warnings and errors go to standard error.
    /// Threads: called on the loading thread, and may be called on the
    /// engine's worker threads until `zeph_engine_free` returns: it must be
    /// safe to call from any thread, and must not call back into the engine.
    pub log: zeph_log_fn,
    /// Passed as is to `log`; never read by the library.
    pub log_user_data: *mut c_void,
}

/// The load-progress callback of `zeph_engine_options`: `user_data`, then
/// the fraction loaded (0 to 1); returns whether to go on.
pub type zeph_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, progress: f32) -> bool>;

/// The log callback of `zeph_engine_options`.
pub type zeph_log_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: zeph_log_level, message: *const c_char),
>;

/// How much a log message matters.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum zeph_log_level {
    ZEPH_LOG_ERROR = 0,
    ZEPH_LOG_WARN = 1,
    ZEPH_LOG_INFO = 2,
    ZEPH_LOG_DEBUG = 3,
}

/// Options of one generation request.  Get the defaults from
/// `zeph_generate_options_default()`, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_generate_options {
    /// `sizeof(zeph_generate_options)`, set by `zeph_generate_options_default()`.
    pub struct_size: u32,
    /// Most tokens to generate (>= 1, default 256).
    pub max_tokens: u32,
    /// Sampling temperature (finite, >= 0; 0 = greedy; default 0.8).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off; default 40).
    pub top_k: u32,
    /// Nucleus sampling mass, in (0, 1] (1 = off; default 0.95).
    pub top_p: f32,
    /// Drop tokens below min_p times the top probability, in [0, 1]
    /// (0 = off; default 0.05).
    pub min_p: f32,
    /// Penalty on recently seen tokens (finite, > 0; 1 = off; default 1).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at (default 64).
    pub repeat_last_n: u32,
    /// Seed of the sampler: same seed, options and prompt give the same
    /// text.  `ZEPH_SEED_RANDOM` (default) draws a new seed per request.
    pub seed: u64,
    /// Deadline of the whole request in milliseconds, counted from the
    /// start of the call: rendering the chat template, tokenizing the
    /// prompt (which stops at the deadline) and the queue wait included;
    /// 0 (default) = the engine's `default_timeout_ms`.
    pub timeout_ms: u64,
    /// Stop strings (NULL when `n_stop` is 0): generation stops before the
    /// first occurrence of any of them, which is not part of the text.
    /// At most `ZEPH_MAX_STOP_STRINGS`, each 1 to `ZEPH_MAX_STOP_BYTES`
    /// bytes of UTF-8.  Copied during the call.
    pub stop: *const *const c_char,
    /// Number of entries in `stop`.
    pub n_stop: usize,
    /// A cancel token that stops this request when cancelled from another
    /// thread; NULL (default) = none.  Borrowed: it must outlive the call.
    pub cancel: *const super::zeph_cancel_token,
    /// Non-zero (default): reuse the part of the prompt that is already in a
    /// KV cache, as a multi-turn conversation's history is; only the rest of
    /// the prompt is evaluated (`zeph_usage.cached_tokens` says how much was
    /// reused).  How requests are placed: each worker runs up to
    /// `n_parallel` sequences, each in a slot with its own cache.  A request
    /// goes to a worker with a free slot whose idle cache it continues (its
    /// prompt shares at least half of that cache, as the next turn of a
    /// conversation shares its history), else to the shared queue.  The
    /// worker that takes it uses the free slot it continues, else an empty
    /// slot, else the free slot sharing the longest prefix with it, else
    /// the least recently used one (whose cache is then rebuilt from the
    /// prompt: same answer, just the full prompt-evaluation time).  0:
    /// evaluate the whole prompt.
    pub cache_prompt: u32,
    /// Non-zero: do not stop at end-of-generation tokens (for benchmarks);
    /// default 0.
    pub ignore_eog: u32,
    /// A JSON Schema (text) the answer must satisfy: the answer is one JSON
    /// value valid under it, written on one line with `", "` and `": "`
    /// between items (unless the schema's top level sets llguidance's
    /// `"x-guidance"` JSON options, e.g. `{"whitespace_flexible": true}`).
    /// Drafts 4 to 2020-12 as llguidance supports them.  NULL (default) =
    /// no constraint.  At most one
    /// of `json_schema`, `regex` and `grammar` may be set.  Copied during
    /// the call.  See "Structured output" at `grammar`.
    pub json_schema: *const c_char,
    /// A regular expression the whole answer must match (Rust `regex`
    /// syntax, implicitly anchored at both ends).  NULL (default) = none.
    pub regex: *const c_char,
    /// A context-free grammar the whole answer must match, in llguidance's
    /// Lark-like syntax (https://github.com/guidance-ai/llguidance, "Lark
    /// syntax"; rules `name: ...`, terminals `NAME: ...`, `start` is the
    /// start rule; `%json {...}` embeds a JSON Schema).  NULL (default) =
    /// none.
    ///
    /// Structured output: the constraint masks every token that cannot
    /// continue a valid answer before sampling (greedy or not), and the
    /// model's end-of-generation token is allowed only where the answer is
    /// complete; so an answer that ends by itself (`ZEPH_FINISH_STOP_TOKEN`)
    /// always satisfies it.  An answer cut by `max_tokens`
    /// (`ZEPH_FINISH_LENGTH`) or by a stop string may be incomplete.  A
    /// schema, regex or grammar that does not compile returns
    /// `ZEPH_STATUS_GRAMMAR` with the compiler's message, before any work.
    pub grammar: *const c_char,
    /// Log-probabilities: how many most likely alternatives to report per
    /// generated token (0..=20); 0 (default) = no log-probabilities.  With
    /// n_logprobs > 0 a blocking call needs a `zeph_usage` (whose `logprobs`
    /// field receives them) and a stream gives them by `zeph_stream_usage`
    /// once it has ended.  See `zeph_logprobs`.
    pub n_logprobs: u32,
    /// Reserved for a later option; must be 0.
    pub reserved: u32,
}

/// The default engine options (see each field).
///
/// Threads: any thread.
#[no_mangle]
pub extern "C" fn zeph_engine_options_default() -> zeph_engine_options {
    let d = EngineOptions::default();
    zeph_engine_options {
        struct_size: std::mem::size_of::<zeph_engine_options>() as u32,
        n_workers: d.n_workers as u32,
        queue_capacity: d.queue_capacity as u32,
        context_length: 0,
        default_timeout_ms: d.default_timeout.as_millis() as u64,
        tokenizer_path: std::ptr::null(),
        chat_template: std::ptr::null(),
        n_threads: 0,
        reserved: 0,
        n_parallel: 0,
        kv_memory_mib: 0,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        log: None,
        log_user_data: std::ptr::null_mut(),
    }
}

/// The default generation options (see each field).
///
/// Threads: any thread.
#[no_mangle]
pub extern "C" fn zeph_generate_options_default() -> zeph_generate_options {
    let d = GenerateOptions::default();
    zeph_generate_options {
        struct_size: std::mem::size_of::<zeph_generate_options>() as u32,
        max_tokens: d.max_tokens as u32,
        temperature: d.sampling.temperature,
        top_k: d.sampling.top_k as u32,
        top_p: d.sampling.top_p,
        min_p: d.sampling.min_p,
        repeat_penalty: d.sampling.repeat_penalty,
        repeat_last_n: d.sampling.repeat_last_n as u32,
        seed: ZEPH_SEED_RANDOM,
        timeout_ms: 0,
        stop: std::ptr::null(),
        n_stop: 0,
        cancel: std::ptr::null(),
        cache_prompt: 1,
        ignore_eog: 0,
        json_schema: std::ptr::null(),
        regex: std::ptr::null(),
        grammar: std::ptr::null(),
        n_logprobs: 0,
        reserved: 0,
    }
}

/// Reads a caller's versioned struct: `min_size` is the size of the first
/// published version, `default` supplies fields the caller did not know.
///
/// # Safety
/// `ptr` must point to a readable struct whose first field is a `u32`
/// `struct_size` and which is valid for `struct_size` bytes.
pub(crate) unsafe fn read_versioned<T: Copy>(
    ptr: *const T,
    default: T,
    min_size: usize,
    name: &str,
) -> Result<T> {
    let size = (ptr as *const u32).read() as usize;
    let ours = std::mem::size_of::<T>();
    if size < min_size {
        return Err(Error::invalid_argument(format!(
            "{name}.struct_size = {size} is smaller than any version of {name} ({min_size}); \
             initialise the struct with {name}_default()"
        )));
    }
    if size > ours {
        let extra = std::slice::from_raw_parts((ptr as *const u8).add(ours), size - ours);
        if extra.iter().any(|&b| b != 0) {
            return Err(Error::invalid_argument(format!(
                "{name} has fields this library version ({}) does not support \
                 (struct_size {size}, known {ours})",
                env!("CARGO_PKG_VERSION")
            )));
        }
    }
    let mut value = default;
    std::ptr::copy_nonoverlapping(
        ptr as *const u8,
        &mut value as *mut T as *mut u8,
        size.min(ours),
    );
    Ok(value)
}

/// The `struct_size` of a struct the library fills, checked: at least
/// `min_size` (the first published version).  Only this field is read, so
/// whatever else the caller's memory holds does not matter.
///
/// # Safety
/// `ptr` points to a struct whose first field is a `u32` `struct_size`.
pub(crate) unsafe fn out_struct_size<T>(ptr: *const T, min_size: usize, name: &str) -> Result<u32> {
    let size = (ptr as *const u32).read();
    if (size as usize) < min_size {
        return Err(Error::invalid_argument(format!(
            "{name}.struct_size = {size} is smaller than any version of {name} ({min_size}); \
             set it to sizeof({name})"
        )));
    }
    Ok(size)
}

/// # Safety
/// `ptr` is NULL or points to a valid `zeph_engine_options` whose string
/// pointers are NULL or valid C strings.
pub(crate) unsafe fn engine_options(ptr: *const zeph_engine_options) -> Result<EngineOptions> {
    if ptr.is_null() {
        return Ok(EngineOptions::default());
    }
    let o = read_versioned(
        ptr,
        zeph_engine_options_default(),
        // The first version ended before the callbacks.
        std::mem::offset_of!(zeph_engine_options, progress),
        "zeph_engine_options",
    )?;
    let options = EngineOptions {
        n_workers: o.n_workers as usize,
        queue_capacity: o.queue_capacity as usize,
        default_timeout: Duration::from_millis(o.default_timeout_ms),
        tokenizer_path: bounded_str_arg(
            o.tokenizer_path,
            "options->tokenizer_path",
            ZEPH_MAX_PATH_BYTES,
        )?
        .map(PathBuf::from),
        chat_template: bounded_str_arg(
            o.chat_template,
            "options->chat_template",
            ZEPH_MAX_TEMPLATE_BYTES,
        )?
        .map(str::to_string),
        context_length: o.context_length as usize,
        n_threads: o.n_threads as usize,
        n_parallel: match o.n_parallel {
            0 => EngineOptions::default().n_parallel,
            n => n as usize,
        },
        kv_memory: (o.kv_memory_mib as usize) << 20,
        progress: o.progress.map(|f| {
            let user = UserData(o.progress_user_data);
            Arc::new(move |done: f32| {
                let user = &user;
                // SAFETY: the caller's callback, with its own pointer.
                unsafe { f(user.0, done) }
            }) as crate::log::ProgressFn
        }),
        logger: Logger(o.log.map(|f| {
            let user = UserData(o.log_user_data);
            Arc::new(move |level: LogLevel, message: &str| {
                let user = &user;
                let level = match level {
                    LogLevel::Error => zeph_log_level::ZEPH_LOG_ERROR,
                    LogLevel::Warn => zeph_log_level::ZEPH_LOG_WARN,
                    LogLevel::Info => zeph_log_level::ZEPH_LOG_INFO,
                    LogLevel::Debug => zeph_log_level::ZEPH_LOG_DEBUG,
                };
                let message = super::to_c_string(message);
                // SAFETY: the caller's callback, with its own pointer and a
                // string valid during the call.
                unsafe { f(user.0, level, message.as_ptr()) }
            }) as crate::log::LogFn
        })),
    };
    if o.reserved != 0 {
        return Err(Error::invalid_argument(
            "zeph_engine_options.reserved must be 0",
        ));
    }
    options.validate()?;
    Ok(options)
}

/// # Safety
/// `ptr` is NULL or points to a valid `zeph_generate_options` whose `stop`
/// array holds `n_stop` valid C strings.
pub(crate) unsafe fn generate_options(
    ptr: *const zeph_generate_options,
) -> Result<GenerateOptions> {
    if ptr.is_null() {
        return Ok(GenerateOptions::default());
    }
    let o = read_versioned(
        ptr,
        zeph_generate_options_default(),
        // The first version ended before the structured-output fields.
        std::mem::offset_of!(zeph_generate_options, json_schema),
        "zeph_generate_options",
    )?;
    if o.n_stop > crate::options::MAX_STOP_STRINGS {
        return Err(Error::invalid_argument(format!(
            "n_stop = {} is more than {} stop strings",
            o.n_stop,
            crate::options::MAX_STOP_STRINGS
        )));
    }
    let mut stop = Vec::with_capacity(o.n_stop);
    if o.n_stop > 0 {
        if o.stop.is_null() {
            return Err(null_argument("options->stop (with n_stop > 0)"));
        }
        for i in 0..o.n_stop {
            let name = format!("options->stop[{i}]");
            let ptr = *o.stop.add(i);
            if ptr.is_null() {
                return Err(null_argument(&name));
            }
            let s = bounded_str_arg(ptr, &name, ZEPH_MAX_STOP_BYTES)?.unwrap_or_default();
            stop.push(s.to_string());
        }
    }
    let options = GenerateOptions {
        max_tokens: o.max_tokens as usize,
        sampling: SamplingOptions {
            temperature: o.temperature,
            top_k: o.top_k as usize,
            top_p: o.top_p,
            min_p: o.min_p,
            repeat_penalty: o.repeat_penalty,
            repeat_last_n: o.repeat_last_n as usize,
        },
        seed: (o.seed != ZEPH_SEED_RANDOM).then_some(o.seed),
        timeout: (o.timeout_ms != 0).then(|| Duration::from_millis(o.timeout_ms)),
        stop,
        cancel: o.cancel.as_ref().map(|t| t.token.clone()),
        cache_prompt: o.cache_prompt != 0,
        ignore_eog: o.ignore_eog != 0,
        n_logprobs: o.n_logprobs as usize,
        constraint: constraint_kind(&o)?,
    };
    if o.reserved != 0 {
        return Err(Error::invalid_argument(
            "zeph_generate_options.reserved must be 0",
        ));
    }
    options.validate()?;
    Ok(options)
}

/// A caller's `user_data`: the library never reads it, only hands it back
/// to the caller's callback, on the threads the header promises.
struct UserData(*mut c_void);
// SAFETY: the pointer is opaque to the library; the header tells callers
// which threads their callbacks run on.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// The one structured-output constraint of `o`, if any.
///
/// # Safety
/// As for `generate_options`.
unsafe fn constraint_kind(o: &zeph_generate_options) -> Result<Option<ConstraintKind>> {
    let json_schema = opt_str_arg(o.json_schema, "options->json_schema")?;
    let regex = opt_str_arg(o.regex, "options->regex")?;
    let grammar = opt_str_arg(o.grammar, "options->grammar")?;
    match (json_schema, regex, grammar) {
        (None, None, None) => Ok(None),
        (Some(s), None, None) => Ok(Some(ConstraintKind::JsonSchema(s.to_string()))),
        (None, Some(r), None) => Ok(Some(ConstraintKind::Regex(r.to_string()))),
        (None, None, Some(g)) => Ok(Some(ConstraintKind::Grammar(g.to_string()))),
        _ => Err(Error::invalid_argument(
            "more than one of json_schema, regex and grammar is set; set at most one",
        )),
    }
}
