//! `zeph_engine_*`: every call on an engine: creating it, reading its
//! model and tokenizer, generating (blocking or as a stream), embedding,
//! shutting down.

use std::ffi::{c_char, c_void};
use std::path::Path;

use super::boundary::{
    boundary, boundary_or, buffer_out, bytes_arg, free_handle, handle_ref, into_handle,
    opt_versioned_out, out_arg, slice_arg, str_arg, versioned_out, Out, VersionedOut,
};
use super::engine_options::{engine_options, zeph_engine_options};
use super::generate_options::{generate_options, zeph_generate_options};
use super::logprobs::zeph_logprobs;
use super::message::{messages_arg, zeph_message};
use super::model_info::{zeph_model_info, InfoStrings};
use super::pooling::zeph_pooling_raw;
use super::status::zeph_status;
use super::stream::zeph_stream;
use super::string::into_c_string;
use super::usage::{check_logprobs, usage_to_c, zeph_usage};
use crate::engine::Engine;
use crate::error::Result;
use crate::generate::Completion;
use crate::options::{check_len, MAX_DETOKENIZE_IDS};

/// A loaded model with its worker threads.  Opaque.
///
/// Threads: every `zeph_engine_*` call except `zeph_engine_free` may be made
/// on the same engine from any number of threads at once.
///
/// Memory: the model file is memory-mapped (its pages are shared with the
/// page cache), or copied into the engine's memory when it was loaded from
/// memory or with `zeph_engine_options.load_into_memory`; KV caches and
/// other large buffers live in mappings of their own, returned to the
/// system when freed.  With glibc, a worker that has been idle for 1 s
/// after work hands the memory freed by its requests back to the system
/// (`malloc_trim(0)`), so the host's resident memory settles after a burst
/// of calls instead of staying at its peak.
pub struct zeph_engine {
    engine: Engine,
    info: InfoStrings,
}

impl zeph_engine {
    fn new_handle(engine: Engine) -> *mut Self {
        let info = InfoStrings::new(&engine);
        into_handle(Self { engine, info })
    }
}

/// # Safety
/// `engine` is NULL or a live engine from `zeph_engine_new`.
unsafe fn engine_arg<'a>(engine: *const zeph_engine) -> Result<&'a zeph_engine> {
    handle_ref(engine, "engine")
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
/// The file: by default it is memory-mapped, not read, and the engine reads
/// its weights from the mapping until `zeph_engine_free` returns.  The file
/// must therefore stay as it is while the engine lives: a file truncated
/// under the mapping, even for a moment (as copying another file over it
/// with `cp` or a shell's `>` does), makes the next read of a lost page
/// raise SIGBUS, which kills the host process (no status can report it);
/// a file rewritten in place changes the weights under the engine.
/// Replacing the file by renaming a new one over it, or deleting it, is
/// harmless: the mapping keeps the old file.  A host that
/// cannot promise this sets `load_into_memory` in `options`: the file is
/// then read into memory during this call and not used afterwards.
///
/// Threads: any thread.  The `progress` callback of `options` runs on it
/// during the call; the `log` callback runs on it during the call and
/// afterwards on the engine's worker threads (see
/// `zeph_engine_options.log`).
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_new(
    model_path: *const c_char,
    options: *const zeph_engine_options,
    engine_out: *mut *mut zeph_engine,
) -> zeph_status {
    boundary(|| {
        let path = str_arg(model_path, "model_path")?;
        let engine_out = out_arg(engine_out, "engine_out")?;
        let options = engine_options(options)?;
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("ZEPH_FAULT").is_some() {
            crate::error::quiet_injected_panics();
        }
        let engine = Engine::new(Path::new(path), options)?;
        engine_out.write(zeph_engine::new_handle(engine));
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
/// `options->load_into_memory` makes no difference here: the bytes are
/// always copied, and the engine never depends on the caller's memory.
///
/// Threads: any thread.  The `progress` callback of `options` runs on it
/// during the call; the `log` callback runs on it during the call and
/// afterwards on the engine's worker threads (see
/// `zeph_engine_options.log`).
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_new_from_memory(
    data: *const c_void,
    len: usize,
    options: *const zeph_engine_options,
    engine_out: *mut *mut zeph_engine,
) -> zeph_status {
    boundary(|| {
        let bytes = bytes_arg(data, len, "data")?;
        let engine_out = out_arg(engine_out, "engine_out")?;
        let options = engine_options(options)?;
        let engine = Engine::from_memory(bytes, options)?;
        engine_out.write(zeph_engine::new_handle(engine));
        Ok(())
    })
}

/// Fills `*info_out` (set its `struct_size` first) with facts about the
/// engine's model.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_model_info(
    engine: *const zeph_engine,
    info_out: *mut zeph_model_info,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let info_out = versioned_out(info_out, "info_out")?;
        info_out.write(zeph_model_info::new(&e.engine, &e.info));
        Ok(())
    })
}

/// The context length in tokens that requests must fit (prompt plus
/// `max_tokens`), or 0 when `engine` is NULL.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_context_length(engine: *const zeph_engine) -> u32 {
    boundary_or(0, || {
        engine
            .as_ref()
            .map_or(0, |e| e.engine.info().context_length as u32)
    })
}

/// Tokenizes `text` (UTF-8, at most `ZEPH_MAX_TEXT_BYTES`) with the model's
/// tokenizer into `ids`.
///
/// `add_special` adds BOS/EOS as the model's metadata asks, as llama.cpp
/// does: a text that already starts with the BOS token then begins with two
/// (the chat calls leave out a BOS their template writes); `parse_special` matches
/// control tokens written in the text (such as `<|im_start|>`) instead of
/// tokenizing them as plain text.
///
/// `*n_out` receives the number of ids.  When `capacity` is smaller than
/// that, nothing is written to `ids`, the call returns
/// `ZEPH_STATUS_INVALID_ARGUMENT` and `*n_out` still receives the number
/// needed, so a first call with `capacity` 0 (and `ids` NULL) sizes the
/// buffer.  `ids` is owned by the caller.
///
/// Tokenizing runs on the calling thread within the engine's
/// `default_timeout_ms` (`ZEPH_STATUS_TIMEOUT` past it) and stops with
/// `ZEPH_STATUS_SHUTDOWN` when the engine is shut down meanwhile.
///
/// Threads: any thread; it does not wait for the workers.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_tokenize(
    engine: *const zeph_engine,
    text: *const c_char,
    add_special: bool,
    parse_special: bool,
    ids: *mut u32,
    capacity: usize,
    n_out: *mut usize,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let text = str_arg(text, "text")?;
        let n_out = out_arg(n_out, "n_out")?;
        let ids = buffer_out(ids, capacity, "ids")?;
        let tokens = e.engine.tokenize(text, add_special, parse_special)?;
        n_out.write(tokens.len());
        ids.check_room(
            tokens.len(),
            format_args!("the text has {} tokens", tokens.len()),
        )?;
        ids.write(&tokens)
    })
}

/// Turns token ids back into text (at most `ZEPH_MAX_DETOKENIZE_IDS` per
/// call).  Ids outside the vocabulary yield nothing; `remove_special` drops control tokens (BOS, EOS, turn markers).
/// Bytes that do not form valid UTF-8 become U+FFFD.  On success
/// `*text_out` receives a string the caller frees with `zeph_string_free`.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_detokenize(
    engine: *const zeph_engine,
    ids: *const u32,
    n_ids: usize,
    remove_special: bool,
    text_out: *mut *mut c_char,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let text_out = out_arg(text_out, "text_out")?;
        check_len("n_ids", n_ids, MAX_DETOKENIZE_IDS, "ids")?;
        let ids = slice_arg(ids, n_ids, "ids", "n_ids")?;
        let text = e.engine.tokenizer().decode(ids, remove_special);
        text_out.write(into_c_string(&text));
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
        let e = engine_arg(engine)?;
        let messages = messages_arg(messages, n_messages)?;
        let text_out = out_arg(text_out, "text_out")?;
        let text = e
            .engine
            .apply_chat_template(&messages, add_generation_prompt)?;
        text_out.write(into_c_string(&text));
        Ok(())
    })
}

/// Writes the text and usage of a finished request.
fn deliver(
    asked_logprobs: bool,
    c: Completion,
    text_out: Out<*mut c_char>,
    usage_out: Option<VersionedOut<zeph_usage>>,
) {
    if let Some(usage_out) = usage_out {
        let mut usage = usage_to_c(Some(&c.usage));
        if asked_logprobs {
            usage.logprobs = zeph_logprobs::new_handle(c.logprobs);
        }
        usage_out.write(usage);
    }
    text_out.write(into_c_string(&c.text));
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
    engine: *const zeph_engine,
    prompt: *const c_char,
    options: *const zeph_generate_options,
    text_out: *mut *mut c_char,
    usage_out: *mut zeph_usage,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let prompt = str_arg(prompt, "prompt")?;
        let text_out = out_arg(text_out, "text_out")?;
        let usage_out = opt_versioned_out(usage_out)?;
        let options = generate_options(options)?;
        check_logprobs(&options, usage_out.as_ref())?;
        let completion = e.engine.complete(prompt, &options)?;
        deliver(options.n_logprobs > 0, completion, text_out, usage_out);
        Ok(())
    })
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
    engine: *const zeph_engine,
    messages: *const zeph_message,
    n_messages: usize,
    options: *const zeph_generate_options,
    text_out: *mut *mut c_char,
    usage_out: *mut zeph_usage,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let messages = messages_arg(messages, n_messages)?;
        let text_out = out_arg(text_out, "text_out")?;
        let usage_out = opt_versioned_out(usage_out)?;
        let options = generate_options(options)?;
        check_logprobs(&options, usage_out.as_ref())?;
        let completion = e.engine.chat(&messages, &options)?;
        deliver(options.n_logprobs > 0, completion, text_out, usage_out);
        Ok(())
    })
}

/// Starts `zeph_engine_complete`'s work as a stream.  The request is queued
/// now (waiting for room until its deadline: `ZEPH_STATUS_QUEUE_FULL`);
/// pieces are read with `zeph_stream_next`.  On success `*stream_out`
/// receives a stream the caller frees with `zeph_stream_free`.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_stream_complete(
    engine: *const zeph_engine,
    prompt: *const c_char,
    options: *const zeph_generate_options,
    stream_out: *mut *mut zeph_stream,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let prompt = str_arg(prompt, "prompt")?;
        let stream_out = out_arg(stream_out, "stream_out")?;
        let options = generate_options(options)?;
        let stream = e.engine.stream_complete(prompt, &options)?;
        stream_out.write(zeph_stream::new_handle(stream));
        Ok(())
    })
}

/// Starts `zeph_engine_chat`'s work as a stream; as
/// `zeph_engine_stream_complete` otherwise.  The messages are only read
/// during the call.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_stream_chat(
    engine: *const zeph_engine,
    messages: *const zeph_message,
    n_messages: usize,
    options: *const zeph_generate_options,
    stream_out: *mut *mut zeph_stream,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let messages = messages_arg(messages, n_messages)?;
        let stream_out = out_arg(stream_out, "stream_out")?;
        let options = generate_options(options)?;
        let stream = e.engine.stream_chat(&messages, &options)?;
        stream_out.write(zeph_stream::new_handle(stream));
        Ok(())
    })
}

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
    engine: *const zeph_engine,
    text: *const c_char,
    pooling: zeph_pooling_raw,
    out: *mut f32,
    capacity: usize,
    n_out: *mut usize,
) -> zeph_status {
    boundary(|| {
        let e = engine_arg(engine)?;
        let text = str_arg(text, "text")?;
        let n_out = out_arg(n_out, "n_out")?;
        let out = buffer_out(out, capacity, "out")?;
        let pooling = pooling.to_pooling()?;
        let n = e.engine.info().embedding_length;
        n_out.write(n);
        out.check_room(n, format_args!("the embedding has {n} values"))?;
        out.write(&e.engine.embed(text, pooling)?)
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
    boundary_or((), || {
        if let Some(e) = engine.as_ref() {
            e.engine.shutdown();
        }
    })
}

/// Shuts the engine down (if not done yet), joins its worker threads and
/// frees it.  NULL is a no-op.  With glibc, the memory freed is then handed
/// back to the system (`malloc_trim(0)`: glibc would otherwise keep tens of
/// megabytes of a freed model's heap resident for reuse).
///
/// Call it once, after every other call on this engine has returned (call
/// `zeph_engine_shutdown` first to make blocked calls return); the handle is
/// invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_free(engine: *mut zeph_engine) {
    boundary_or((), || free_handle(engine))
}
