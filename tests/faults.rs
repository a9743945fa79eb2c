//! The recovery paths no well-formed input reaches, through the C API: a
//! panic on the caller's thread or in a worker becomes ZEPH_STATUS_PANIC and
//! the engine goes on.  Needs the `fault-injection` feature, which makes the
//! engine read `ZEPH_FAULT` (`make test-rust` runs
//! `cargo test --release --features fault-injection --test faults`).

mod common;

use std::ffi::{c_char, CStr, CString};
use std::ptr;
use std::sync::Mutex;

use zeph_llm::ffi::*;

/// ZEPH_FAULT is process-wide: one engine made at a time.
static ENV: Mutex<()> = Mutex::new(());

fn engine_with_fault(fault: &str) -> *mut zeph_engine {
    let _guard = ENV.lock().unwrap();
    // The real model: the fixtures would be written by a `cargo run` of
    // the build without the feature, which would rebuild the library twice.
    let path = CString::new(common::model_path("smollm2").to_str().unwrap()).unwrap();
    std::env::set_var("ZEPH_FAULT", fault);
    let mut e = ptr::null_mut();
    let status = unsafe { zeph_engine_new(path.as_ptr(), ptr::null(), &mut e) };
    std::env::remove_var("ZEPH_FAULT");
    assert_eq!(status, zeph_status::ZEPH_STATUS_OK);
    e
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(zeph_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn greedy() -> zeph_generate_options {
    let mut o = zeph_generate_options_default();
    o.temperature = 0.0;
    o.max_tokens = 2;
    o
}

fn complete(e: *mut zeph_engine) -> zeph_status {
    let mut text: *mut c_char = ptr::null_mut();
    let status =
        unsafe { zeph_engine_complete(e, c"a".as_ptr(), &greedy(), &mut text, ptr::null_mut()) };
    unsafe { zeph_string_free(text) };
    status
}

#[test]
fn panics_become_zeph_status_panic_and_the_engine_goes_on() {
    for fault in ["caller-panic", "worker-panic"] {
        let e = engine_with_fault(fault);
        assert_eq!(complete(e), zeph_status::ZEPH_STATUS_PANIC, "{fault}");
        assert!(last_error().contains("panic"), "{fault}: {}", last_error());
        assert_eq!(
            complete(e),
            zeph_status::ZEPH_STATUS_PANIC,
            "{fault}: again"
        );
        unsafe { zeph_engine_free(e) };
    }
}

#[test]
fn a_stream_whose_worker_panics_reports_panic_with_its_counts() {
    let e = engine_with_fault("worker-panic");
    let mut n_prompt = 0usize;
    unsafe {
        zeph_engine_tokenize(
            e,
            c"a".as_ptr(),
            true,
            true,
            ptr::null_mut(),
            0,
            &mut n_prompt,
        );
    }
    let mut s = ptr::null_mut();
    let status = unsafe { zeph_engine_stream_complete(e, c"a".as_ptr(), &greedy(), &mut s) };
    assert_eq!(status, zeph_status::ZEPH_STATUS_OK);
    let mut piece: *mut c_char = ptr::null_mut();
    let status = unsafe { zeph_stream_next(s, 60_000, &mut piece) };
    assert_eq!(status, zeph_status::ZEPH_STATUS_PANIC, "{}", last_error());
    let mut u: zeph_usage = unsafe { std::mem::zeroed() };
    u.struct_size = std::mem::size_of::<zeph_usage>() as u32;
    assert_eq!(
        unsafe { zeph_stream_usage(s, &mut u) },
        zeph_status::ZEPH_STATUS_OK
    );
    assert_eq!(u.finish_reason, zeph_finish_reason::ZEPH_FINISH_ERROR);
    assert_eq!(u.status, zeph_status::ZEPH_STATUS_PANIC);
    assert_eq!(u.prompt_tokens as usize, n_prompt);
    // Later calls say the same.
    assert_eq!(
        unsafe { zeph_stream_next(s, 0, &mut piece) },
        zeph_status::ZEPH_STATUS_PANIC
    );
    unsafe {
        zeph_stream_free(s);
        zeph_engine_free(e);
    }
}
