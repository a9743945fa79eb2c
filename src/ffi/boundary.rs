//! The boundary helpers, each written once: running a body (panics and
//! errors to a status), reading arguments (handles, strings, arrays,
//! versioned structs) and writing out-parameters (plain, arrays, versioned
//! structs, new handles).  Every exported function uses these: a pointer the
//! caller gives is checked for NULL in one place, when it is first taken.

use std::ffi::{c_char, c_void, CStr, CString};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

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

// ---- handles ---------------------------------------------------------------

/// Moves `value` to the caller as an opaque handle, freed with
/// `free_handle` (by the type's `_free`).
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Borrows the object behind a handle.
///
/// # Safety
/// `ptr` is NULL or a live handle from `into_handle`, not freed during `'a`.
pub(crate) unsafe fn handle_ref<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    ptr.as_ref().ok_or_else(|| null_argument(name))
}

/// Frees a handle; NULL is a no-op.
///
/// # Safety
/// `ptr` is NULL or a live handle from `into_handle`, which no other call
/// uses and which is not used again.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) {
    if !ptr.is_null() {
        drop(Box::from_raw(ptr));
    }
}

// ---- arrays ----------------------------------------------------------------

/// Borrows the caller's array of `n` elements; `ptr` may be NULL only when
/// `n` is 0.  Check `n` against its limit first.
///
/// # Safety
/// `ptr` is NULL or valid for reads of `n` elements during `'a`.
pub(crate) unsafe fn slice_arg<'a, T>(
    ptr: *const T,
    n: usize,
    name: &str,
    n_name: &str,
) -> Result<&'a [T]> {
    if n == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(null_argument(&format!("{name} (with {n_name} > 0)")))
    } else {
        Ok(std::slice::from_raw_parts(ptr, n))
    }
}

/// Borrows the caller's `len` bytes; `ptr` is required even when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or valid for reads of `len` bytes during `'a`.
pub(crate) unsafe fn bytes_arg<'a>(ptr: *const c_void, len: usize, name: &str) -> Result<&'a [u8]> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    Ok(std::slice::from_raw_parts(ptr as *const u8, len))
}

// ---- out-parameters ----------------------------------------------------------

/// An out-parameter, checked not NULL when it was taken: writing it needs no
/// further check.  Consumed by the write, so it is written at most once.
pub(crate) struct Out<'a, T> {
    ptr: NonNull<T>,
    _caller: PhantomData<&'a mut T>,
}

impl<T> Out<'_, T> {
    pub(crate) fn write(self, value: T) {
        // SAFETY: `out_arg`'s contract: valid for a write of `T`.
        unsafe { self.ptr.as_ptr().write(value) }
    }
}

/// Takes a required out-parameter (NULL: `ZEPH_STATUS_NULL_ARGUMENT`).
///
/// # Safety
/// `ptr` is NULL or valid for a write of `T` during `'a`; what it points to
/// need not be initialised.
pub(crate) unsafe fn out_arg<'a, T>(ptr: *mut T, name: &str) -> Result<Out<'a, T>> {
    opt_out_arg(ptr).ok_or_else(|| null_argument(name))
}

/// Takes an optional out-parameter: NULL means "not wanted".
///
/// # Safety
/// As for `out_arg`.
pub(crate) unsafe fn opt_out_arg<'a, T>(ptr: *mut T) -> Option<Out<'a, T>> {
    NonNull::new(ptr).map(|ptr| Out {
        ptr,
        _caller: PhantomData,
    })
}

/// The caller's array of `capacity` elements to fill; NULL only with
/// `capacity` 0 (a first call that asks for the size).
pub(crate) struct BufferOut<'a, T> {
    ptr: *mut T,
    capacity: usize,
    _caller: PhantomData<&'a mut [T]>,
}

impl<T: Copy> BufferOut<'_, T> {
    /// `ZEPH_STATUS_INVALID_ARGUMENT` unless `n` elements fit; `what` says
    /// how many are needed and why.
    pub(crate) fn check_room(&self, n: usize, what: impl std::fmt::Display) -> Result<()> {
        if n > self.capacity {
            return Err(Error::invalid_argument(format!(
                "capacity {} is too small: {what}",
                self.capacity
            )));
        }
        Ok(())
    }

    /// Copies `values` to the start of the array.
    pub(crate) fn write(self, values: &[T]) -> Result<()> {
        self.check_room(values.len(), format_args!("{} values", values.len()))?;
        if !values.is_empty() {
            // SAFETY: `buffer_out`'s contract, and `values` fit (checked).
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr, values.len()) }
        }
        Ok(())
    }
}

/// Takes the caller's array out-parameter.
///
/// # Safety
/// `ptr` is NULL or valid for writes of `capacity` elements during `'a`.
pub(crate) unsafe fn buffer_out<'a, T>(
    ptr: *mut T,
    capacity: usize,
    name: &str,
) -> Result<BufferOut<'a, T>> {
    if ptr.is_null() && capacity > 0 {
        return Err(null_argument(&format!("{name} (with capacity > 0)")));
    }
    Ok(BufferOut {
        ptr,
        capacity,
        _caller: PhantomData,
    })
}

// ---- versioned structs -------------------------------------------------------

/// A struct whose first field, `struct_size: u32`, says which version of it
/// the caller was compiled with (`sizeof` the struct in its header).  New
/// fields are only ever added at the end, so a version is a prefix of the
/// next.  Reading one (an options struct) takes the fields the caller knew
/// of, the rest from the defaults, and refuses a larger struct from a newer
/// caller unless the fields this library does not know are zero, so a
/// request is never silently half-understood.  Writing one (a result the
/// library fills) writes no more than `struct_size` bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]`, begin with `struct_size: u32`, have no
/// padding, and `MIN_SIZE` (the size of the first published version) is at
/// least 4 and at most their size.
pub(crate) unsafe trait Versioned: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// `sizeof` the first published version.
    const MIN_SIZE: usize;
}

/// The `struct_size` the caller set, at least `T::MIN_SIZE`.
///
/// # Safety
/// `ptr` is non-NULL and its first 4 bytes are readable.
unsafe fn struct_size<T: Versioned>(ptr: *const T, advice: &str) -> Result<usize> {
    let size = (ptr as *const u32).read() as usize;
    if size < T::MIN_SIZE {
        return Err(Error::invalid_argument(format!(
            "{name}.struct_size = {size} is smaller than any version of {name} ({min}); {advice}",
            name = T::NAME,
            min = T::MIN_SIZE,
        )));
    }
    Ok(size)
}

/// Reads a caller's versioned struct, `default` supplying the fields its
/// version does not have.
///
/// # Safety
/// `ptr` is non-NULL and valid for reads of its `struct_size` bytes.
pub(crate) unsafe fn read_versioned<T: Versioned>(ptr: *const T, default: T) -> Result<T> {
    let name = T::NAME;
    let size = struct_size(ptr, &format!("initialise the struct with {name}_default()"))?;
    let ours = std::mem::size_of::<T>();
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

/// A versioned struct the library fills, its `struct_size` checked when it
/// was taken (before any work is done, so a bad size fails fast).
pub(crate) struct VersionedOut<'a, T> {
    ptr: NonNull<T>,
    size: usize,
    _caller: PhantomData<&'a mut T>,
}

impl<T: Versioned> VersionedOut<'_, T> {
    /// Whether the caller's version has the bytes up to `end` (the end of a
    /// field: its offset plus its size).
    pub(crate) fn has(&self, end: usize) -> bool {
        self.size >= end
    }

    /// Writes `value`, no more than the caller's `struct_size` bytes, and
    /// keeps the caller's `struct_size`.
    pub(crate) fn write(self, value: T) {
        let start = std::mem::size_of::<u32>();
        let end = self.size.min(std::mem::size_of::<T>());
        // SAFETY: `versioned_out`'s contract: valid for writes of
        // `struct_size` bytes, and `end` is no more than that (nor than
        // `value`'s size); `start` <= `end` as `MIN_SIZE` >= 4.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&value as *const T as *const u8).add(start),
                (self.ptr.as_ptr() as *mut u8).add(start),
                end - start,
            );
        }
    }
}

/// Takes a versioned out-parameter; NULL means "not wanted".
///
/// # Safety
/// `ptr` is NULL or valid for reads and writes of its `struct_size` bytes
/// during `'a`.
pub(crate) unsafe fn opt_versioned_out<'a, T: Versioned>(
    ptr: *mut T,
) -> Result<Option<VersionedOut<'a, T>>> {
    let Some(ptr) = NonNull::new(ptr) else {
        return Ok(None);
    };
    let size = struct_size(ptr.as_ptr(), &format!("set it to sizeof({})", T::NAME))?;
    Ok(Some(VersionedOut {
        ptr,
        size,
        _caller: PhantomData,
    }))
}

/// Takes a required versioned out-parameter.
///
/// # Safety
/// As for `opt_versioned_out`.
pub(crate) unsafe fn versioned_out<'a, T: Versioned>(
    ptr: *mut T,
    name: &str,
) -> Result<VersionedOut<'a, T>> {
    opt_versioned_out(ptr)?.ok_or_else(|| null_argument(name))
}
