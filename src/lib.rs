//! zeph-llm: local GGUF language models behind a small, stable C ABI.
//!
//! Data flows one way: C call → [`ffi`] (conversions only) → [`engine`]
//! (deadlines, queue) → [`worker`] thread → [`generate`] (prompt chunks,
//! tokens, stop rules) → [`model`] (logits) — and the text back.  Everything
//! but `ffi` is safe Rust without raw pointers, and nothing in it imports
//! `ffi`.

/// cbindgen:ignore
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub mod alloc;
/// cbindgen:ignore
pub mod cancel;
/// cbindgen:ignore
pub mod chat;
/// cbindgen:ignore
pub mod constraint;
/// cbindgen:ignore
pub mod embed;
/// cbindgen:ignore
pub mod engine;
/// cbindgen:ignore
pub mod error;
/// cbindgen:ignore
pub mod generate;
/// cbindgen:ignore
pub mod gguf;
/// cbindgen:ignore
pub mod log;
/// cbindgen:ignore
pub mod logprobs;
/// cbindgen:ignore
pub mod model;
/// cbindgen:ignore
pub mod options;
/// cbindgen:ignore
pub mod runtime;
/// cbindgen:ignore
pub mod sampling;
/// cbindgen:ignore
mod scheduler;
/// cbindgen:ignore
pub mod stop;
/// cbindgen:ignore
pub mod tokenizer;

pub mod ffi;

#[cfg(all(
    feature = "own-allocator",
    not(test),
    target_os = "linux",
    target_env = "gnu"
))]
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

pub use cancel::CancelToken;
pub use chat::Message;
pub use embed::Pooling;
pub use engine::Engine;
pub use error::{Error, ErrorKind, Result};
pub use generate::{Completion, FinishReason, Usage};
pub use logprobs::TokenLogprob;
pub use options::{EngineOptions, GenerateOptions, SamplingOptions};
