//! The C API's option structs filled with arbitrary bytes (every field,
//! `struct_size` included, up to the 256 bytes a caller provides), their
//! strings, constraints and stop arrays pointing at fuzzed C strings, its
//! callbacks valid functions or NULL: zeph_engine_new
//! must refuse or accept them (on a missing file: options are read first),
//! and a stream started with the generation options must start or fail
//! with a status, never crash or read outside what the caller provides.
#![no_main]

use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zeph_llm::ffi::*;

#[path = "common.rs"]
mod common;

struct Engine(*mut zeph_engine);
unsafe impl Send for Engine {}
unsafe impl Sync for Engine {}

fn engine() -> *mut zeph_engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let path = CString::new(common::model("ZEPH_FUZZ_TINY").to_str().unwrap()).unwrap();
        let mut e = ptr::null_mut();
        let st = unsafe { zeph_engine_new(path.as_ptr(), ptr::null(), &mut e) };
        assert_eq!(st, zeph_status::ZEPH_STATUS_OK);
        Engine(e)
    })
    .0
}

unsafe extern "C" fn progress(_: *mut std::ffi::c_void, done: f32) -> bool {
    done < 0.5
}

unsafe extern "C" fn log(_: *mut std::ffi::c_void, _: zeph_log_level, _: *const c_char) {}

/// 256 bytes the caller owns, the struct at the start.
#[repr(C, align(8))]
struct Buffer([u8; 256]);

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (head, tail) = data.split_at(data.len().min(256));
    // Strings for the pointer fields, from what follows the struct bytes.
    let strings: Vec<CString> = tail
        .split(|&b| b == 0)
        .take(70)
        .map(|s| CString::new(s).unwrap())
        .collect();
    let string = |i: usize| -> *const c_char { strings.get(i).map_or(ptr::null(), |s| s.as_ptr()) };
    let mut stops: Vec<*const c_char> = (0..64).map(|i| string(i + 2)).collect();
    stops
        .iter_mut()
        .filter(|p| p.is_null())
        .for_each(|p| *p = c"x".as_ptr());

    let mut token = ptr::null_mut();
    unsafe { zeph_cancel_token_new(&mut token) };

    // Engine options.
    let mut buf = Buffer([0; 256]);
    buf.0[..head.len()].copy_from_slice(head);
    let eo = buf.0.as_mut_ptr() as *mut zeph_engine_options;
    unsafe {
        (*eo).struct_size = (*eo).struct_size.min(256);
        (*eo).tokenizer_path = string(0);
        (*eo).chat_template = string(1);
        // The callbacks are the caller's code: valid functions or NULL.
        (*eo).progress = if (*eo).n_workers & 1 == 0 {
            None
        } else {
            Some(progress)
        };
        (*eo).progress_user_data = ptr::null_mut();
        (*eo).log = if (*eo).n_workers & 2 == 0 {
            None
        } else {
            Some(log)
        };
        (*eo).log_user_data = ptr::null_mut();
        let mut e = ptr::null_mut();
        let st = zeph_engine_new(c"/nonexistent/fuzz.gguf".as_ptr(), eo, &mut e);
        assert_ne!(st, zeph_status::ZEPH_STATUS_OK);
        assert!(e.is_null());
    }

    // Generation options, on a real (tiny) engine.
    let mut buf = Buffer([0; 256]);
    buf.0[..head.len()].copy_from_slice(head);
    let go = buf.0.as_mut_ptr() as *mut zeph_generate_options;
    unsafe {
        (*go).struct_size = (*go).struct_size.min(256);
        // Past 64 stop strings the count is refused before the array is
        // read; up to 64 the array has them all.
        (*go).stop = if (*go).n_stop == 0 {
            ptr::null()
        } else {
            stops.as_ptr()
        };
        (*go).cancel = if (*go).seed & 1 == 0 {
            ptr::null()
        } else {
            token
        };
        (*go).timeout_ms = (*go).timeout_ms.min(2000);
        // Constraints: fuzzed text, or NULL, as the seed's bits say (more
        // than one set is refused).
        let seed = (*go).seed;
        let pick = |bit: u64, i: usize| {
            if seed >> bit & 1 == 0 {
                ptr::null()
            } else {
                string(i)
            }
        };
        (*go).json_schema = pick(1, 66);
        (*go).regex = pick(2, 67);
        (*go).grammar = pick(3, 68);
        let mut s = ptr::null_mut();
        let st = zeph_engine_stream_complete(engine(), c"a".as_ptr(), go, &mut s);
        if st == zeph_status::ZEPH_STATUS_OK {
            let mut piece = ptr::null_mut();
            zeph_stream_next(s, 0, &mut piece);
            zeph_string_free(piece);
            zeph_stream_free(s);
        }
        zeph_cancel_token_free(token);
    }
});
