//! The boundary helpers, each written once: running a body (panics and
//! errors to a status), reading arguments (NULL, UTF-8, sizes) and writing
//! out-parameters.  Every exported function uses these; none checks a
//! pointer by hand.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::{set_last_error, zeph_status};
use crate::error::{panic_message, Error, ErrorKind, Result};

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
            set_last_error(to_c_string(&e.message));
            zeph_status::from(e.kind)
        }
    }
}

/// Like `boundary` for functions that cannot report a status: a panic is
/// swallowed and `fallback` returned.
pub(crate) fn boundary_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
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
