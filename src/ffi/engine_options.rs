//! `zeph_engine_options`: the options of `zeph_engine_new`, and their
//! conversion to the core's `EngineOptions`.
//! Versioned by its `struct_size`: see `boundary::Versioned`.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::boundary::{bounded_str_arg, read_versioned, to_c_string, Versioned};
use super::limits::{ZEPH_MAX_PATH_BYTES, ZEPH_MAX_TEMPLATE_BYTES};
use crate::error::{Error, Result};
use crate::log::{LogLevel, Logger};
use crate::options::EngineOptions;

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
    /// the report of a panic caught in a worker, ...), with
    /// `log_user_data` and a level; the message is valid during the call
    /// only.  With a callback, nothing is written to standard error; NULL
    /// (default) = warnings and errors go to standard error.
    ///
    /// Threads: unlike every other callback of this API, it runs on library
    /// threads.  It is called on the thread that called `zeph_engine_new`
    /// (or `zeph_engine_new_from_memory`) during that call, and afterwards
    /// on the engine's worker threads (`n_workers` of them) until
    /// `zeph_engine_free` returns; several workers may call it at the same
    /// time, also while the loading call is still logging.  So it must be
    /// safe to call from any thread, concurrently with itself, must return
    /// promptly (a worker waits for it), and must not call into the engine.
    pub log: zeph_log_fn,
    /// Passed as is to `log`; never read by the library.
    pub log_user_data: *mut c_void,
    /// Non-zero: read the whole model file into memory while loading
    /// instead of memory-mapping it, so that the engine no longer uses the
    /// file once `zeph_engine_new` returns: the file may then be truncated,
    /// rewritten, replaced or deleted without harm.  For hosts that cannot
    /// promise the file stays as it is while the engine lives (a mapped
    /// file that shrinks kills the process with SIGBUS: see
    /// `zeph_engine_new`).  The cost: the engine's memory holds a private
    /// copy of the file (anonymous memory, not page cache shared with other
    /// processes) and loading reads the whole file first.  It is the copy
    /// `zeph_engine_new_from_memory` makes, which ignores this field.  0
    /// (default) = map the file.
    pub load_into_memory: u32,
    /// Reserved for a later option; must be 0.
    pub reserved2: u32,
}

// SAFETY: repr(C), `struct_size` first, no padding (the fields are laid
// out in pairs of u32 and 8-byte fields, the last pair two u32).
unsafe impl Versioned for zeph_engine_options {
    const NAME: &'static str = "zeph_engine_options";
    // The first version ended before the callbacks.
    const MIN_SIZE: usize = std::mem::offset_of!(zeph_engine_options, progress);
}

/// The load-progress callback of `zeph_engine_options`: `user_data`, then
/// the fraction loaded (0 to 1); returns whether to go on.  Runs only on
/// the thread that called `zeph_engine_new` (or
/// `zeph_engine_new_from_memory`), before that call returns; never
/// concurrently with itself.
pub type zeph_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, progress: f32) -> bool>;

/// The log callback of `zeph_engine_options`: `user_data`, the level, and
/// the message (NUL-terminated UTF-8, valid during the call only).  Runs
/// on the loading thread and on the engine's worker threads, possibly on
/// several at once: see `zeph_engine_options.log`.
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
        load_into_memory: 0,
        reserved2: 0,
    }
}
/// # Safety
/// `ptr` is NULL or points to a valid `zeph_engine_options` whose string
/// pointers are NULL or valid C strings.
pub(crate) unsafe fn engine_options(ptr: *const zeph_engine_options) -> Result<EngineOptions> {
    if ptr.is_null() {
        return Ok(EngineOptions::default());
    }
    let o = read_versioned(ptr, zeph_engine_options_default())?;
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
        load_into_memory: o.load_into_memory != 0,
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
                let message = to_c_string(message);
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
    if o.reserved2 != 0 {
        return Err(Error::invalid_argument(
            "zeph_engine_options.reserved2 must be 0",
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
