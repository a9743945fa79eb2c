//! Strings the library hands to the caller.

use std::ffi::{c_char, CString};

use super::boundary::{boundary_or, to_c_string};

/// Frees a string returned by this library (`text_out` of the generation
/// calls).  NULL is a no-op.  Passing any other pointer, or the same string
/// twice, is undefined behaviour.
///
/// Threads: any thread, not necessarily the one that received the string.
#[no_mangle]
pub unsafe extern "C" fn zeph_string_free(text: *mut c_char) {
    boundary_or((), || {
        if !text.is_null() {
            drop(CString::from_raw(text));
        }
    })
}

/// Moves `s` to the caller as a C string owned by it.
pub(crate) fn into_c_string(s: &str) -> *mut c_char {
    to_c_string(s).into_raw()
}
