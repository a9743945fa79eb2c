//! Our CPU runtime: kernels for every common GGUF weight type, chosen at run
//! time from the CPU's features ([`simd`]), matrix products that read the
//! weights in place ([`matmul`], [`mmap`]), the per-row operations of a
//! forward pass ([`ops`]) and the thread pool that runs them ([`pool`]).
//! It knows nothing of models: `crate::model::decoder` builds on it.

pub mod matmul;
pub mod mmap;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod simd;
