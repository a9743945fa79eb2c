//! Reading the model: its facts, and its tokenizer.

use std::ffi::{c_char, CString};

use super::engine::engine_ref;
use super::options::out_struct_size;
use super::string::into_c_string;
use super::{boundary, null_argument, str_arg, write_out, zeph_status};
use crate::error::{Error, ErrorKind};

/// Facts about the engine's model.  The caller sets `struct_size` to
/// `sizeof(zeph_model_info)` before `zeph_engine_model_info`; the strings
/// belong to the engine and stay valid until `zeph_engine_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct zeph_model_info {
    /// Set by the caller: `sizeof(zeph_model_info)`.
    pub struct_size: u32,
    /// Tokens a request may use (prompt plus `max_tokens`).
    pub context_length: u32,
    /// Context length the model was trained with.
    pub trained_context_length: u32,
    pub vocab_size: u32,
    /// Number of weights.
    pub parameter_count: u64,
    /// Beginning-of-sequence token id, or -1.
    pub bos_id: i32,
    /// End-of-sequence token id, or -1.
    pub eos_id: i32,
    /// `general.architecture`, e.g. "llama".
    pub architecture: *const c_char,
    /// `general.name`, or "".
    pub name: *const c_char,
    /// The file's quantization as llama.cpp names it (`general.file_type`),
    /// e.g. "Q4_K_M" or "Q4_1"; the tensor type holding most weights when
    /// the file does not say.
    pub quantization: *const c_char,
    /// Where the chat template comes from: "gguf" (the model file),
    /// "option" (the engine's `chat_template`), or "builtin:NAME".
    pub chat_template: *const c_char,
}

/// The C strings `zeph_model_info` points into, made once per engine.
pub(crate) struct InfoStrings {
    architecture: CString,
    name: CString,
    quantization: CString,
    chat_template: CString,
}

impl InfoStrings {
    pub(crate) fn new(engine: &crate::engine::Engine) -> Self {
        let info = engine.info();
        let c = |s: &str| super::to_c_string(s);
        Self {
            architecture: c(&info.architecture),
            name: c(&info.name),
            quantization: c(&info.quantization),
            chat_template: c(engine.chat_template_origin()),
        }
    }
}

/// Fills `*info_out` (set its `struct_size` first) with facts about the
/// engine's model.
///
/// Threads: any thread.
#[no_mangle]
pub unsafe extern "C" fn zeph_engine_model_info(
    engine: *const super::zeph_engine,
    info_out: *mut zeph_model_info,
) -> zeph_status {
    boundary(|| {
        let (e, strings) = engine_ref(engine).map(|e| (e, super::engine::info_strings(engine)))?;
        if info_out.is_null() {
            return Err(null_argument("info_out"));
        }
        let size = out_struct_size(
            info_out,
            std::mem::size_of::<zeph_model_info>(),
            "zeph_model_info",
        )?;
        let info = e.info();
        let tok = e.tokenizer();
        let id = |i: Option<u32>| i.map(|i| i as i32).unwrap_or(-1);
        let value = zeph_model_info {
            struct_size: size,
            context_length: info.context_length as u32,
            trained_context_length: info.trained_context_length as u32,
            vocab_size: info.vocab_size as u32,
            parameter_count: info.parameter_count,
            bos_id: id(tok.bos()),
            eos_id: id(tok.eos()),
            architecture: strings.architecture.as_ptr(),
            name: strings.name.as_ptr(),
            quantization: strings.quantization.as_ptr(),
            chat_template: strings.chat_template.as_ptr(),
        };
        let n = (size as usize).min(std::mem::size_of::<zeph_model_info>());
        std::ptr::copy_nonoverlapping(&value as *const _ as *const u8, info_out as *mut u8, n);
        Ok(())
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
    engine: *const super::zeph_engine,
    text: *const c_char,
    add_special: bool,
    parse_special: bool,
    ids: *mut u32,
    capacity: usize,
    n_out: *mut usize,
) -> zeph_status {
    boundary(|| {
        let e = engine_ref(engine)?;
        let text = str_arg(text, "text")?;
        if n_out.is_null() {
            return Err(null_argument("n_out"));
        }
        if ids.is_null() && capacity > 0 {
            return Err(null_argument("ids (with capacity > 0)"));
        }
        let tokens = e.tokenize(text, add_special, parse_special)?;
        write_out(n_out, tokens.len());
        if tokens.len() > capacity {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "capacity {capacity} is too small: the text has {} tokens",
                    tokens.len()
                ),
            ));
        }
        if !tokens.is_empty() {
            std::ptr::copy_nonoverlapping(tokens.as_ptr(), ids, tokens.len());
        }
        Ok(())
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
    engine: *const super::zeph_engine,
    ids: *const u32,
    n_ids: usize,
    remove_special: bool,
    text_out: *mut *mut c_char,
) -> zeph_status {
    boundary(|| {
        let e = engine_ref(engine)?;
        if text_out.is_null() {
            return Err(null_argument("text_out"));
        }
        crate::options::check_len("n_ids", n_ids, crate::options::MAX_DETOKENIZE_IDS, "ids")?;
        let ids: &[u32] = if n_ids == 0 {
            &[]
        } else if ids.is_null() {
            return Err(null_argument("ids (with n_ids > 0)"));
        } else {
            std::slice::from_raw_parts(ids, n_ids)
        };
        let text = e.tokenizer().decode(ids, remove_special);
        write_out(text_out, into_c_string(&text));
        Ok(())
    })
}
