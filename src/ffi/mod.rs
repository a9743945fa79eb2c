//! The C ABI.  This layer only converts: C pointers to references, C strings
//! to `&str`, option structs to Rust options, core errors to `zeph_status`.
//! Every exported function runs its body through [`boundary`], so no panic
//! unwinds into the caller and every failure sets this thread's message.

#![allow(non_camel_case_types)]
// The safety contract of each exported function is written for C callers in
// its doc comment (which becomes the header), not as a Rust `# Safety` section.
#![allow(clippy::missing_safety_doc)]

mod cancel;
mod engine;
mod logprobs;
mod model;
mod options;
mod status;
mod stream;
mod string;
#[cfg(test)]
mod tests;

pub use cancel::*;
pub use engine::*;
pub use logprobs::*;
pub use model::*;
pub use options::*;
pub use status::*;
pub use stream::*;
pub use string::*;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{panic_message, Error, ErrorKind, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Runs an exported function's body: catches panics, maps errors to a
/// status and records the message for `zeph_last_error`.
pub(crate) fn boundary(f: impl FnOnce() -> Result<()>) -> zeph_status {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(Error::new(
            ErrorKind::Panic,
            format!(
                "internal error (panic): {}",
                panic_message(payload.as_ref())
            ),
        ))
    });
    match outcome {
        Ok(()) => zeph_status::ZEPH_STATUS_OK,
        Err(e) => {
            set_last_error(&e.message);
            zeph_status::from(e.kind)
        }
    }
}

/// Like `boundary` for functions that cannot report a status: a panic is
/// swallowed and `fallback` returned.
pub(crate) fn boundary_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

pub(crate) fn set_last_error(message: &str) {
    let c = to_c_string(message);
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A C string copy of `s`; an interior NUL (which C cannot hold) becomes
/// U+FFFD.
pub(crate) fn to_c_string(s: &str) -> CString {
    match CString::new(s) {
        Ok(c) => c,
        Err(_) => CString::new(s.replace('\0', "\u{FFFD}")).unwrap_or_default(),
    }
}

pub(crate) fn null_argument(name: &str) -> Error {
    Error::new(ErrorKind::NullArgument, format!("{name} is NULL"))
}

/// Borrows a C string as UTF-8.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that stays valid
/// for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    CStr::from_ptr(ptr).to_str().map_err(|e| {
        Error::new(
            ErrorKind::InvalidUtf8,
            format!("{name} is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// As `str_arg`, with NULL meaning "absent".
///
/// # Safety
/// As for `str_arg`.
pub(crate) unsafe fn opt_str_arg<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        str_arg(ptr, name).map(Some)
    }
}

/// Writes an out-parameter after checking it is not NULL.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) {
    if !out.is_null() {
        out.write(value);
    }
}
