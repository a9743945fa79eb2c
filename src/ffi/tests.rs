//! The boundary helpers on their own, with no model: what they read and
//! write of the caller's memory, NULL and bad-UTF-8 handling, ownership.
//! Also run under miri (`make miri`), which checks every access against the
//! exact buffers given here: a read or write past a caller's `struct_size`
//! is an error there.

use std::ffi::{c_char, CStr};
use std::ptr;

use super::boundary::*;
use super::*;
use crate::error::ErrorKind;

#[test]
fn c_strings_replace_interior_nuls_and_round_trip_through_free() {
    assert_eq!(to_c_string("a\0b").to_str().unwrap(), "a\u{FFFD}b");
    let p = string::into_c_string("héllo");
    assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), "héllo");
    unsafe {
        zeph_string_free(p);
        zeph_string_free(ptr::null_mut());
    }
}

#[test]
fn string_arguments_name_null_and_bad_utf8() {
    let e = unsafe { str_arg(ptr::null(), "prompt") }.unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::NullArgument, "prompt is NULL")
    );
    let bad = b"ab\xffc\0";
    let e = unsafe { str_arg(bad.as_ptr() as *const c_char, "prompt") }.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidUtf8);
    assert!(e.message.contains("at byte 2"), "{}", e.message);
    assert_eq!(unsafe { opt_str_arg(ptr::null(), "x") }.unwrap(), None);
    assert_eq!(unsafe { str_arg(c"ok".as_ptr(), "x") }.unwrap(), "ok");
    let e = unsafe { bounded_str_arg(c"12345".as_ptr(), "stop", 4) }.unwrap_err();
    assert!(e.message.contains("the limit is 4"), "{}", e.message);
}

#[test]
fn boundary_turns_errors_and_panics_into_statuses_and_messages() {
    let st = boundary(|| Err(crate::error::Error::invalid_argument("n_x = 5 is too big")));
    assert_eq!(st, zeph_status::ZEPH_STATUS_INVALID_ARGUMENT);
    let msg = unsafe { CStr::from_ptr(zeph_last_error()) };
    assert_eq!(msg.to_str().unwrap(), "n_x = 5 is too big");
    let st = boundary(|| panic!("boom"));
    assert_eq!(st, zeph_status::ZEPH_STATUS_PANIC);
    let msg = unsafe { CStr::from_ptr(zeph_last_error()) };
    assert!(msg.to_str().unwrap().contains("boom"));
    assert_eq!(boundary_or(7, || panic!("x")), 7);
    assert_eq!(boundary(|| Ok(())), zeph_status::ZEPH_STATUS_OK);
}

#[test]
fn out_parameters_are_checked_once_when_taken() {
    let mut x = 0u32;
    unsafe {
        out_arg(&mut x, "x_out").unwrap().write(5);
        let e = out_arg(ptr::null_mut::<u32>(), "n_out").err().unwrap();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NullArgument, "n_out is NULL")
        );
        assert!(opt_out_arg(ptr::null_mut::<u32>()).is_none());
        opt_out_arg(&mut x).unwrap().write(6);
    }
    assert_eq!(x, 6);
}

#[test]
fn buffers_are_filled_within_their_capacity() {
    // Exactly three elements the caller owns, the fourth of the array
    // beside them untouched.
    let mut buf = [0u32; 4];
    unsafe {
        let out = buffer_out(buf.as_mut_ptr(), 3, "ids").unwrap();
        let e = out.check_room(4, "the text has 4 tokens").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(e.message, "capacity 3 is too small: the text has 4 tokens");
        out.check_room(3, "").unwrap();
        out.write(&[7, 8, 9]).unwrap();
        let out = buffer_out(buf.as_mut_ptr(), 3, "ids").unwrap();
        assert!(out.write(&[1, 2, 3, 4]).is_err());
        // NULL sizes the buffer with capacity 0, and is refused past it.
        let out = buffer_out(ptr::null_mut::<u32>(), 0, "ids").unwrap();
        out.write(&[]).unwrap();
        let e = buffer_out(ptr::null_mut::<u32>(), 1, "ids").err().unwrap();
        assert_eq!(e.message, "ids (with capacity > 0) is NULL");
    }
    assert_eq!(buf, [7, 8, 9, 0]);
}

#[test]
fn input_arrays_may_be_null_only_when_empty() {
    let v = [1u32, 2];
    unsafe {
        assert_eq!(slice_arg(v.as_ptr(), 2, "ids", "n_ids").unwrap(), &[1, 2]);
        assert!(slice_arg(ptr::null::<u32>(), 0, "ids", "n_ids")
            .unwrap()
            .is_empty());
        let e = slice_arg(ptr::null::<u32>(), 1, "ids", "n_ids").unwrap_err();
        assert_eq!(e.message, "ids (with n_ids > 0) is NULL");
        let e = bytes_arg(ptr::null(), 0, "data").unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NullArgument, "data is NULL")
        );
        let b = bytes_arg(v.as_ptr().cast(), 3, "data").unwrap();
        assert_eq!(b.len(), 3);
    }
}

#[test]
fn handles_round_trip_and_null_is_refused_or_ignored() {
    struct Counted(std::rc::Rc<()>);
    let live = std::rc::Rc::new(());
    let h = into_handle(Counted(live.clone()));
    unsafe {
        assert!(std::rc::Rc::ptr_eq(&handle_ref(h, "x").unwrap().0, &live));
        let e = handle_ref(ptr::null::<Counted>(), "stream").err().unwrap();
        assert_eq!(e.message, "stream is NULL");
        assert_eq!(std::rc::Rc::strong_count(&live), 2);
        free_handle(h);
        free_handle(ptr::null_mut::<Counted>());
    }
    assert_eq!(std::rc::Rc::strong_count(&live), 1);
}

/// An option struct inside exactly `size` bytes the caller owns.
fn caller_buffer<T: Copy>(value: T, size: usize) -> Vec<u64> {
    let mut buf = vec![0u64; size.div_ceil(8)];
    let n = size.min(std::mem::size_of::<T>());
    unsafe {
        ptr::copy_nonoverlapping(
            &value as *const T as *const u8,
            buf.as_mut_ptr() as *mut u8,
            n,
        );
        (buf.as_mut_ptr() as *mut u32).write(size as u32);
    }
    buf
}

#[test]
fn option_structs_are_read_within_their_struct_size() {
    let ours = std::mem::size_of::<zeph_generate_options>();
    // The same size: read as given.
    let mut o = zeph_generate_options_default();
    o.max_tokens = 7;
    let buf = caller_buffer(o, ours);
    let got = unsafe { generate_options::generate_options(buf.as_ptr() as *const _) }.unwrap();
    assert_eq!(got.max_tokens, 7);
    // A newer caller's larger struct, its extra bytes zero: accepted; not
    // zero: refused, naming the struct.  (The buffer is exactly that large.)
    let mut buf = caller_buffer(o, ours + 16);
    let got = unsafe { generate_options::generate_options(buf.as_ptr() as *const _) }.unwrap();
    assert_eq!(got.max_tokens, 7);
    unsafe { *(buf.as_mut_ptr() as *mut u8).add(ours + 3) = 1 };
    let e = unsafe { generate_options::generate_options(buf.as_ptr() as *const _) }.unwrap_err();
    assert!(e.message.contains("does not support"), "{}", e.message);
    // Too small: refused without reading past the size given.
    let buf = caller_buffer(o, 8);
    let e = unsafe { generate_options::generate_options(buf.as_ptr() as *const _) }.unwrap_err();
    assert!(e.message.contains("struct_size = 8"), "{}", e.message);
    // The engine options, likewise.
    let eo = zeph_engine_options_default();
    let buf = caller_buffer(eo, std::mem::size_of::<zeph_engine_options>());
    assert!(unsafe { engine_options::engine_options(buf.as_ptr() as *const _) }.is_ok());
    let buf = caller_buffer(eo, 4);
    assert!(unsafe { engine_options::engine_options(buf.as_ptr() as *const _) }.is_err());
}

#[test]
fn engine_options_of_a_caller_built_before_load_into_memory_are_read_as_before() {
    // A caller compiled against the header before `load_into_memory`: its
    // struct ends at `log_user_data`, and the bytes past it (here a
    // non-zero sentinel) are not its own.
    let old = std::mem::offset_of!(zeph_engine_options, load_into_memory);
    let mut eo = zeph_engine_options_default();
    eo.n_workers = 3;
    eo.load_into_memory = 1;
    let mut buf = caller_buffer(eo, std::mem::size_of::<zeph_engine_options>());
    unsafe { (buf.as_mut_ptr() as *mut u32).write(old as u32) };
    let got = unsafe { engine_options::engine_options(buf.as_ptr() as *const _) }.unwrap();
    assert_eq!(got.n_workers, 3);
    assert!(!got.load_into_memory, "read past the caller's struct_size");
    // The current size reads the field; the reserved field after it must be 0.
    let got = unsafe { engine_options::engine_options(&eo) }.unwrap();
    assert!(got.load_into_memory);
    eo.reserved2 = 1;
    let e = unsafe { engine_options::engine_options(&eo) }.unwrap_err();
    assert!(e.message.contains("reserved2"), "{}", e.message);
}

#[test]
fn too_many_stop_strings_are_refused_before_the_array_is_read() {
    let one: [*const c_char; 1] = [c"x".as_ptr()];
    let mut o = zeph_generate_options_default();
    o.stop = one.as_ptr();
    o.n_stop = crate::options::MAX_STOP_STRINGS + 1;
    let e = unsafe { generate_options::generate_options(&o) }.unwrap_err();
    assert!(e.message.contains("n_stop"), "{}", e.message);
    o.n_stop = 1;
    assert_eq!(
        unsafe { generate_options::generate_options(&o) }
            .unwrap()
            .stop,
        vec!["x"]
    );
}

#[test]
fn messages_are_bounded_before_they_are_read() {
    let m = [zeph_message {
        role: c"user".as_ptr(),
        content: c"hi".as_ptr(),
    }];
    // A count past the limit with a one-element array: refused before
    // any element is touched.
    let e =
        unsafe { message::messages_arg(m.as_ptr(), crate::options::MAX_MESSAGES + 1) }.unwrap_err();
    assert!(e.message.contains("65536"), "{}", e.message);
    let got = unsafe { message::messages_arg(m.as_ptr(), 1) }.unwrap();
    assert_eq!(got[0].content, "hi");
    let null_role = [zeph_message {
        role: ptr::null(),
        content: c"hi".as_ptr(),
    }];
    let e = unsafe { message::messages_arg(null_role.as_ptr(), 1) }.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NullArgument);
    assert!(unsafe { message::messages_arg(ptr::null(), 0) }
        .unwrap()
        .is_empty());
}

#[test]
fn usage_is_written_within_the_callers_struct_size() {
    let usage = zeph_usage {
        prompt_tokens: 3,
        completion_tokens: 4,
        status: zeph_status::ZEPH_STATUS_TIMEOUT,
        ..usage::usage_to_c(None)
    };
    // A caller built before `status` existed: exactly that many bytes.
    let old = usage::USAGE_V1_SIZE;
    let mut buf = vec![0u64; old / 8];
    unsafe { (buf.as_mut_ptr() as *mut u32).write(old as u32) };
    let out = buf.as_mut_ptr() as *mut zeph_usage;
    unsafe {
        let u = versioned_out(out, "usage_out").unwrap();
        assert!(!usage::has_logprobs(Some(&u)));
        u.write(usage);
        let words = std::slice::from_raw_parts(buf.as_ptr() as *const u32, 3);
        assert_eq!(words, [old as u32, 3, 4]);
    }
    // The current size gets the status too.
    let mut full = usage::usage_to_c(None);
    full.struct_size = std::mem::size_of::<zeph_usage>() as u32;
    unsafe {
        let u = opt_versioned_out(&mut full).unwrap().unwrap();
        assert!(usage::has_logprobs(Some(&u)));
        u.write(usage);
    }
    assert_eq!(full.status, zeph_status::ZEPH_STATUS_TIMEOUT);
    // Smaller than the first version: refused; NULL: absent, or refused
    // when required.
    let mut tiny = [4u32, 0];
    let e = unsafe { opt_versioned_out(tiny.as_mut_ptr() as *mut zeph_usage) }
        .err()
        .unwrap();
    assert!(e.message.contains("struct_size = 4"), "{}", e.message);
    assert!(unsafe { opt_versioned_out(ptr::null_mut::<zeph_usage>()) }
        .unwrap()
        .is_none());
    let e = unsafe { versioned_out(ptr::null_mut::<zeph_usage>(), "usage_out") }
        .err()
        .unwrap();
    assert_eq!(e.message, "usage_out is NULL");
}

#[test]
fn a_versioned_write_keeps_the_callers_struct_size() {
    // A caller's struct from a newer header, larger than ours: its
    // struct_size and the bytes past our fields stay as they were.
    let ours = std::mem::size_of::<zeph_usage>();
    let mut buf = vec![u64::MAX; ours / 8 + 2];
    unsafe { (buf.as_mut_ptr() as *mut u32).write(ours as u32 + 16) };
    let value = zeph_usage {
        prompt_tokens: 9,
        ..usage::usage_to_c(None)
    };
    unsafe {
        versioned_out(buf.as_mut_ptr() as *mut zeph_usage, "usage_out")
            .unwrap()
            .write(value);
        let words = std::slice::from_raw_parts(buf.as_ptr() as *const u32, 2);
        assert_eq!(words, [ours as u32 + 16, 9]);
    }
    assert_eq!(&buf[ours / 8..], [u64::MAX, u64::MAX]);
}

#[test]
fn a_failed_streams_usage_names_the_failure() {
    use crate::error::Error;
    let u = crate::generate::Usage {
        prompt_tokens: 5,
        cached_tokens: 0,
        worker: 0,
        completion_tokens: 2,
        finish_reason: crate::generate::FinishReason::Cancelled,
        queue_time: Default::default(),
        prompt_time: Default::default(),
        generation_time: Default::default(),
    };
    for (kind, reason, status) in [
        (
            ErrorKind::Shutdown,
            zeph_finish_reason::ZEPH_FINISH_ERROR,
            zeph_status::ZEPH_STATUS_SHUTDOWN,
        ),
        (
            ErrorKind::Panic,
            zeph_finish_reason::ZEPH_FINISH_ERROR,
            zeph_status::ZEPH_STATUS_PANIC,
        ),
        (
            ErrorKind::Inference,
            zeph_finish_reason::ZEPH_FINISH_ERROR,
            zeph_status::ZEPH_STATUS_INFERENCE,
        ),
        (
            ErrorKind::Cancelled,
            zeph_finish_reason::ZEPH_FINISH_CANCELLED,
            zeph_status::ZEPH_STATUS_CANCELLED,
        ),
    ] {
        let c = usage::stream_usage_to_c(Some(&u), Some(&Error::new(kind, "x")));
        assert_eq!(
            (c.finish_reason, c.status, c.prompt_tokens),
            (reason, status, 5)
        );
    }
    let c = usage::stream_usage_to_c(None, None);
    assert_eq!(
        (c.finish_reason, c.status),
        (
            zeph_finish_reason::ZEPH_FINISH_NONE,
            zeph_status::ZEPH_STATUS_OK
        )
    );
}

#[test]
fn cancel_tokens_and_null_handles() {
    let mut t = ptr::null_mut();
    unsafe {
        assert_eq!(zeph_cancel_token_new(&mut t), zeph_status::ZEPH_STATUS_OK);
        assert!(!zeph_cancel_token_is_cancelled(t));
        zeph_cancel_token_cancel(t);
        zeph_cancel_token_cancel(t);
        assert!(zeph_cancel_token_is_cancelled(t));
        zeph_cancel_token_free(t);
        zeph_cancel_token_free(ptr::null_mut());
        assert_eq!(
            zeph_cancel_token_new(ptr::null_mut()),
            zeph_status::ZEPH_STATUS_NULL_ARGUMENT
        );
        let mut piece = ptr::null_mut();
        assert_eq!(
            zeph_stream_next(ptr::null_mut(), 0, &mut piece),
            zeph_status::ZEPH_STATUS_NULL_ARGUMENT
        );
        zeph_stream_free(ptr::null_mut());
        zeph_stream_cancel(ptr::null());
        assert_eq!(zeph_engine_context_length(ptr::null()), 0);
        let mut text = ptr::null_mut();
        assert_eq!(
            zeph_engine_complete(
                ptr::null_mut(),
                c"a".as_ptr(),
                ptr::null(),
                &mut text,
                ptr::null_mut()
            ),
            zeph_status::ZEPH_STATUS_NULL_ARGUMENT
        );
    }
}
