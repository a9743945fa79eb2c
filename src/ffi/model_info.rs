//! `zeph_model_info`: facts about an engine's model.

use std::ffi::{c_char, CString};

use super::boundary::{to_c_string, Versioned};
use crate::engine::Engine;

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

// SAFETY: repr(C), `struct_size` first, no padding (four u32, a u64, two
// i32, four pointers).
unsafe impl Versioned for zeph_model_info {
    const NAME: &'static str = "zeph_model_info";
    // No field has been added since the first version.
    const MIN_SIZE: usize = std::mem::size_of::<zeph_model_info>();
}

/// The C strings `zeph_model_info` points into, made once per engine.
pub(crate) struct InfoStrings {
    architecture: CString,
    name: CString,
    quantization: CString,
    chat_template: CString,
}

impl InfoStrings {
    pub(crate) fn new(engine: &Engine) -> Self {
        let info = engine.info();
        let c = |s: &str| to_c_string(s);
        Self {
            architecture: c(&info.architecture),
            name: c(&info.name),
            quantization: c(&info.quantization),
            chat_template: c(engine.chat_template_origin()),
        }
    }
}

impl zeph_model_info {
    /// The facts of `engine`'s model, pointing into `strings` (made for that
    /// engine).
    pub(crate) fn new(engine: &Engine, strings: &InfoStrings) -> Self {
        let info = engine.info();
        let tok = engine.tokenizer();
        let id = |i: Option<u32>| i.map(|i| i as i32).unwrap_or(-1);
        Self {
            struct_size: std::mem::size_of::<Self>() as u32,
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
        }
    }
}
