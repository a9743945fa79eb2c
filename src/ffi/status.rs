//! Status codes, error messages and the library version.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

use crate::error::ErrorKind;

thread_local! {
    /// The message of the last failing call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as the calling thread's last error.
pub(crate) fn set_last_error(message: CString) {
    // Only fails while the thread is being torn down: nothing to report to.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = message;
        }
    });
}

/// The result of every fallible call.  The numbers are stable: new codes
/// are only ever added at the end.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum zeph_status {
    /// Success; out-parameters were written.
    ZEPH_STATUS_OK = 0,
    /// A required pointer argument was NULL.
    ZEPH_STATUS_NULL_ARGUMENT = 1,
    /// An argument or option is out of range (the message names it).
    ZEPH_STATUS_INVALID_ARGUMENT = 2,
    /// A string argument is not valid UTF-8.
    ZEPH_STATUS_INVALID_UTF8 = 3,
    /// A file could not be opened or read.
    ZEPH_STATUS_IO = 4,
    /// The model file is not a GGUF file, is truncated, or uses an
    /// unsupported architecture or metadata.
    ZEPH_STATUS_MODEL = 5,
    /// The tokenizer could not be built, or failed on the input.
    ZEPH_STATUS_TOKENIZER = 6,
    /// The chat template failed to compile or to render.
    ZEPH_STATUS_TEMPLATE = 7,
    /// The prompt plus `max_tokens` does not fit the context length.
    ZEPH_STATUS_CONTEXT_OVERFLOW = 8,
    /// The request queue stayed full until the request's deadline.
    ZEPH_STATUS_QUEUE_FULL = 9,
    /// The request's deadline passed; its work was cancelled.
    ZEPH_STATUS_TIMEOUT = 10,
    /// The request was cancelled.
    ZEPH_STATUS_CANCELLED = 11,
    /// The engine was shut down.
    ZEPH_STATUS_SHUTDOWN = 12,
    /// The model failed while computing.
    ZEPH_STATUS_INFERENCE = 13,
    /// An internal error (a Rust panic) was caught at the boundary; the
    /// engine stays usable.
    ZEPH_STATUS_PANIC = 14,
    /// A structured-output constraint (`json_schema`, `regex` or `grammar`
    /// of `zeph_generate_options`) does not compile; the message is the
    /// compiler's.  Also a constraint that fails while generating.
    ZEPH_STATUS_GRAMMAR = 15,
}

impl From<ErrorKind> for zeph_status {
    fn from(kind: ErrorKind) -> Self {
        use zeph_status::*;
        match kind {
            ErrorKind::NullArgument => ZEPH_STATUS_NULL_ARGUMENT,
            ErrorKind::InvalidArgument => ZEPH_STATUS_INVALID_ARGUMENT,
            ErrorKind::InvalidUtf8 => ZEPH_STATUS_INVALID_UTF8,
            ErrorKind::Io => ZEPH_STATUS_IO,
            ErrorKind::Model => ZEPH_STATUS_MODEL,
            ErrorKind::Tokenizer => ZEPH_STATUS_TOKENIZER,
            ErrorKind::Template => ZEPH_STATUS_TEMPLATE,
            ErrorKind::ContextOverflow => ZEPH_STATUS_CONTEXT_OVERFLOW,
            ErrorKind::QueueFull => ZEPH_STATUS_QUEUE_FULL,
            ErrorKind::Timeout => ZEPH_STATUS_TIMEOUT,
            ErrorKind::Cancelled => ZEPH_STATUS_CANCELLED,
            ErrorKind::Shutdown => ZEPH_STATUS_SHUTDOWN,
            ErrorKind::Inference => ZEPH_STATUS_INFERENCE,
            ErrorKind::Panic => ZEPH_STATUS_PANIC,
            ErrorKind::Grammar => ZEPH_STATUS_GRAMMAR,
        }
    }
}

/// A `zeph_status` as C passes it: any int.  The header spells it
/// `zeph_status` (see cbindgen.toml); taking the raw integer means an
/// out-of-range value from C is handled, not undefined behaviour.
#[repr(transparent)]
pub struct zeph_status_raw(pub c_int);

const NAMES: [&str; 16] = [
    "ZEPH_STATUS_OK\0",
    "ZEPH_STATUS_NULL_ARGUMENT\0",
    "ZEPH_STATUS_INVALID_ARGUMENT\0",
    "ZEPH_STATUS_INVALID_UTF8\0",
    "ZEPH_STATUS_IO\0",
    "ZEPH_STATUS_MODEL\0",
    "ZEPH_STATUS_TOKENIZER\0",
    "ZEPH_STATUS_TEMPLATE\0",
    "ZEPH_STATUS_CONTEXT_OVERFLOW\0",
    "ZEPH_STATUS_QUEUE_FULL\0",
    "ZEPH_STATUS_TIMEOUT\0",
    "ZEPH_STATUS_CANCELLED\0",
    "ZEPH_STATUS_SHUTDOWN\0",
    "ZEPH_STATUS_INFERENCE\0",
    "ZEPH_STATUS_PANIC\0",
    "ZEPH_STATUS_GRAMMAR\0",
];

/// The name of a status code, e.g. `"ZEPH_STATUS_TIMEOUT"`, or
/// `"ZEPH_STATUS_UNKNOWN"` for a number that is not a status.
///
/// Ownership: the returned string is static; do not free it.
/// Threads: any thread.
#[no_mangle]
pub extern "C" fn zeph_status_name(status: zeph_status_raw) -> *const c_char {
    let name = usize::try_from(status.0)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("ZEPH_STATUS_UNKNOWN\0");
    name.as_ptr().cast()
}

/// The message of the last call that failed on the calling thread, naming
/// the cause (which file, which option, which limit), or `""` when no call
/// has failed on this thread.
///
/// Ownership: the string belongs to the library and stays valid until the
/// next failing call on the same thread; copy it to keep it.
/// Threads: each thread has its own message.
#[no_mangle]
pub extern "C" fn zeph_last_error() -> *const c_char {
    // `try_` forms: nothing here can panic, so no boundary is needed.
    LAST_ERROR
        .try_with(|e| e.try_borrow().map(|c| c.as_ptr()).ok())
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}

/// The library version, `"MAJOR.MINOR.PATCH"`, equal to `ZEPH_VERSION` of
/// the header the library was built with.
///
/// Ownership: static; do not free.  Threads: any thread.
#[no_mangle]
pub extern "C" fn zeph_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_numbers() {
        use std::ffi::CStr;
        let name = |i| unsafe { CStr::from_ptr(zeph_status_name(zeph_status_raw(i))) };
        assert_eq!(name(0).to_str().unwrap(), "ZEPH_STATUS_OK");
        assert_eq!(name(1).to_str().unwrap(), "ZEPH_STATUS_NULL_ARGUMENT");
        assert_eq!(name(10).to_str().unwrap(), "ZEPH_STATUS_TIMEOUT");
        assert_eq!(name(14).to_str().unwrap(), "ZEPH_STATUS_PANIC");
        assert_eq!(name(15).to_str().unwrap(), "ZEPH_STATUS_GRAMMAR");
        assert_eq!(name(16).to_str().unwrap(), "ZEPH_STATUS_UNKNOWN");
        assert_eq!(name(-3).to_str().unwrap(), "ZEPH_STATUS_UNKNOWN");
        assert_eq!(zeph_status::from(ErrorKind::Timeout) as c_int, 10);
    }
}
