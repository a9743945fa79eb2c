//! The C ABI.  This layer only converts: C pointers to references, C strings
//! to `&str`, option structs to Rust options, core errors to `zeph_status`.
//! Every exported function runs its body through [`boundary::boundary`], so
//! no panic unwinds into the caller and every failure sets this thread's
//! message.
//!
//! One file per exported type, holding its `zeph_<type>_*` functions; the
//! helpers every function uses are in `boundary.rs`.  Data flows one way:
//! these files use the core (`crate::engine`, ...), never the reverse.

#![allow(non_camel_case_types)]
// The safety contract of each exported function is written for C callers in
// its doc comment (which becomes the header), not as a Rust `# Safety` section.
#![allow(clippy::missing_safety_doc)]

mod boundary;
mod cancel;
mod engine;
mod engine_options;
mod generate_options;
mod limits;
mod logprobs;
mod message;
mod model_info;
mod pooling;
mod status;
mod stream;
mod string;
#[cfg(test)]
mod tests;
mod usage;

pub use cancel::*;
pub use engine::*;
pub use engine_options::*;
pub use generate_options::*;
pub use limits::*;
pub use logprobs::*;
pub use message::*;
pub use model_info::*;
pub use pooling::*;
pub use status::*;
pub use stream::*;
pub use string::*;
pub use usage::*;
