//! `zeph_stream_*`: text as it is generated, pulled by the caller.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::boundary::{
    boundary, boundary_or, free_handle, handle_ref, into_handle, null_argument, out_arg,
    to_c_string, versioned_out,
};
use super::logprobs::zeph_logprobs;
use super::status::zeph_status;
use super::string::into_c_string;
use super::usage::{has_logprobs, stream_usage_to_c, zeph_usage};
use crate::engine::Stream;
use crate::error::{Error, ErrorKind};

/// One request's text, piece by piece.  Opaque.
///
/// Threads: `zeph_stream_next` and `zeph_stream_for_each` are for one
/// consumer thread at a time; `zeph_stream_cancel` and `zeph_stream_usage`
/// may be called from any thread at any time.  A stream never calls the
/// caller from a library thread: pieces are pulled (the engine's `log`
/// callback is the one callback that runs on library threads).
pub struct zeph_stream {
    stream: Stream,
    /// Where `zeph_stream_for_each` is (IDLE, PULLING, CALLING, FREED).
    in_callback: AtomicU8,
}

impl zeph_stream {
    pub(crate) fn new_handle(stream: Stream) -> *mut Self {
        into_handle(Self {
            stream,
            in_callback: AtomicU8::new(IDLE),
        })
    }
}

/// Called by `zeph_stream_for_each` with each piece (`len` bytes of UTF-8,
/// NUL-terminated, valid only during the call); return true to go on, false
/// to cancel the request.
pub type zeph_piece_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, piece: *const c_char, len: usize) -> bool>;

/// Waits up to `timeout_ms` for the next piece of text.
///
/// - `ZEPH_STATUS_OK` with `*piece_out` a piece (whole UTF-8 characters,
///   never text that may still become a stop string), which the caller frees
///   with `zeph_string_free`; or `ZEPH_STATUS_OK` with `*piece_out` NULL once
///   the stream has ended (the finish reason is in `zeph_stream_usage`).
///   The pieces add up to exactly the text `zeph_engine_complete` returns.
/// - `ZEPH_STATUS_TIMEOUT`: no piece within `timeout_ms`; the stream goes on,
///   call again.  When instead the request's own deadline (its options'
///   `timeout_ms`) passed, the stream has ended: `zeph_stream_usage` reports
///   `ZEPH_FINISH_TIMEOUT`, and every later call returns TIMEOUT again.
/// - `ZEPH_STATUS_CANCELLED` after `zeph_stream_cancel` (or the request's
///   cancel token); `ZEPH_STATUS_SHUTDOWN`; or the request's failure.
///
/// Threads: one consumer thread at a time.
#[no_mangle]
pub unsafe extern "C" fn zeph_stream_next(
    stream: *mut zeph_stream,
    timeout_ms: u32,
    piece_out: *mut *mut c_char,
) -> zeph_status {
    boundary(|| {
        let s = handle_ref(stream, "stream")?;
        let piece_out = out_arg(piece_out, "piece_out")?;
        if s.in_callback.load(Ordering::Acquire) != IDLE {
            return Err(Error::invalid_argument(
                "zeph_stream_for_each is running on this stream (called from on_piece?)",
            ));
        }
        let piece = s.stream.next(Duration::from_millis(timeout_ms as u64))?;
        piece_out.write(piece.map_or(std::ptr::null_mut(), |p| into_c_string(&p)));
        Ok(())
    })
}

/// Pulls every piece of the stream on the calling thread and passes each to
/// `on_piece(user_data, piece, len)` until the stream ends (`ZEPH_STATUS_OK`),
/// `on_piece` returns false (the request is cancelled:
/// `ZEPH_STATUS_CANCELLED`), or the request fails or its deadline passes.
/// The callback runs on the thread that called this function, never on a
/// library thread.
///
/// Rules for `on_piece`:
/// - It must not throw or unwind (a C++ exception, a longjmp): the frames
///   it would cross are C frames, and the process aborts.  C++ callers
///   catch inside the callback and return false.
/// - It may call `zeph_stream_cancel` and `zeph_stream_usage`.  Calling
///   `zeph_stream_next` or `zeph_stream_for_each` on the same stream from
///   inside it returns `ZEPH_STATUS_INVALID_ARGUMENT`.
/// - It should not call `zeph_stream_free` on the stream; if it does, the
///   stream is cancelled and freed when the callback returns, and this
///   function returns `ZEPH_STATUS_CANCELLED` without touching it again.
#[no_mangle]
pub unsafe extern "C" fn zeph_stream_for_each(
    stream: *mut zeph_stream,
    on_piece: zeph_piece_fn,
    user_data: *mut c_void,
) -> zeph_status {
    boundary(|| {
        handle_ref(stream, "stream")?;
        let Some(on_piece) = on_piece else {
            return Err(null_argument("on_piece"));
        };
        let _busy = Busy::enter(&(*stream).in_callback)?;
        // `_busy` is forgotten on every path that frees the stream.
        loop {
            let next = (*stream).stream.next(Duration::from_secs(3600));
            match next {
                Ok(Some(piece)) => {
                    let c = to_c_string(&piece);
                    (*stream).in_callback.store(CALLING, Ordering::Release);
                    let go_on = on_piece(user_data, c.as_ptr(), c.as_bytes().len());
                    if (*stream).in_callback.load(Ordering::Acquire) == FREED {
                        // zeph_stream_free ran inside the callback.
                        std::mem::forget(_busy);
                        free_handle(stream);
                        return Err(Error::new(
                            ErrorKind::Cancelled,
                            "on_piece freed the stream; it was cancelled and freed when on_piece returned",
                        ));
                    }
                    (*stream).in_callback.store(PULLING, Ordering::Release);
                    if !go_on {
                        (*stream).stream.cancel();
                        return Err(Error::new(ErrorKind::Cancelled, "on_piece returned false"));
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) if e.kind == ErrorKind::Timeout && (*stream).stream.usage().is_none() => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    })
}

/// `zeph_stream::in_callback` values.
const IDLE: u8 = 0;
/// `zeph_stream_for_each` is waiting for a piece.
const PULLING: u8 = 1;
/// `zeph_stream_for_each` is inside the caller's callback.
const CALLING: u8 = 2;
/// `zeph_stream_free` was called from inside the callback.
const FREED: u8 = 3;

/// Marks a stream as inside `zeph_stream_for_each` until dropped.
struct Busy<'a>(&'a AtomicU8);

impl<'a> Busy<'a> {
    fn enter(flag: &'a AtomicU8) -> Result<Self, Error> {
        flag.compare_exchange(IDLE, PULLING, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| {
                Error::invalid_argument(
                    "zeph_stream_for_each is already running on this stream (called from on_piece?)",
                )
            })?;
        Ok(Self(flag))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(IDLE, Ordering::Release);
    }
}

/// Fills `*usage_out` (set its `struct_size` first).  While the stream runs
/// the finish reason is `ZEPH_FINISH_NONE` and the counts are 0; after a
/// normal end, the request's usage.  A stream that ended early reports how
/// in `status` (the status `zeph_stream_next` returned) and `finish_reason`
/// (`ZEPH_FINISH_TIMEOUT`, `ZEPH_FINISH_CANCELLED`, or `ZEPH_FINISH_ERROR`
/// for shutdown, an inference error or a panic), with `prompt_tokens`
/// exact, `completion_tokens` the pieces delivered (each is the text of at
/// least one generated token, so a lower bound), and the times 0.
/// When the request asked for `n_logprobs` and has ended (whatever the
/// reason; an interrupted stream's is empty), `usage_out->logprobs`
/// receives a new `zeph_logprobs` (struct_size permitting), which the
/// caller frees with `zeph_logprobs_free`, at every such call.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_stream_usage(
    stream: *const zeph_stream,
    usage_out: *mut zeph_usage,
) -> zeph_status {
    boundary(|| {
        let stream = &handle_ref(stream, "stream")?.stream;
        let usage_out = versioned_out(usage_out, "usage_out")?;
        let outcome = stream.outcome();
        let mut usage = stream_usage_to_c(
            outcome.as_ref().map(|(u, _)| u),
            outcome.as_ref().and_then(|(_, e)| e.as_ref()),
        );
        if let Some(lp) = stream.logprobs().filter(|_| stream.logprobs_asked()) {
            if has_logprobs(Some(&usage_out)) {
                usage.logprobs = zeph_logprobs::new_handle(lp);
            }
        }
        usage_out.write(usage);
        Ok(())
    })
}

/// Cancels the stream's request: a queued one is dropped, a running one
/// stops before its next token; `zeph_stream_next` then returns
/// `ZEPH_STATUS_CANCELLED`.  NULL is a no-op.
///
/// Threads: any thread, at any time.
#[no_mangle]
pub unsafe extern "C" fn zeph_stream_cancel(stream: *const zeph_stream) {
    boundary_or((), || {
        if let Some(s) = stream.as_ref() {
            s.stream.cancel();
        }
    })
}

/// Frees a stream, cancelling its work if it has not ended.  NULL is a
/// no-op.  Call it once, when no other call on the stream is running (from
/// inside `zeph_stream_for_each`'s callback it is deferred: see there).  A
/// stream may outlive its engine: once the engine is freed, its
/// `zeph_stream_next` returns `ZEPH_STATUS_SHUTDOWN`, and it must still be
/// freed.
#[no_mangle]
pub unsafe extern "C" fn zeph_stream_free(stream: *mut zeph_stream) {
    boundary_or((), || {
        let Some(s) = stream.as_ref() else { return };
        // From inside zeph_stream_for_each's callback: cancel now, free
        // when the callback returns.
        let inside =
            s.in_callback
                .compare_exchange(CALLING, FREED, Ordering::AcqRel, Ordering::Acquire);
        if inside.is_ok() {
            s.stream.cancel();
        } else {
            free_handle(stream)
        }
    })
}
