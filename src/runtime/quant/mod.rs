//! Weight types of GGUF files and the kernels that multiply them.
//!
//! A matrix product `y = W x` quantizes each activation row `x` once
//! ([`act::ActRows`], blocks of 32 int8 values with an f32 scale) and then
//! runs one *dot kernel* per weight row, with integer dot products inside
//! each block.  Float weights (F32, F16, BF16) take the activations as f32.
//!
//! Every kernel computes each activation column with the same operations in
//! the same order whatever the number of columns it is given, so a token's
//! result does not depend on the tokens computed beside it.

pub mod act;
pub mod float;
pub mod kquants;
pub mod kquants_gemm;
pub mod legacy;
pub mod legacy_gemm;
mod types;

use super::simd::SimdLevel;
pub use act::{ActRow, ActRows};
pub use types::{Dot, FloatDot, GemmFn, PackFn, QuantDot, WType, MAX_COLS, PACK_ROWS};

/// Dequantizes one row: `w` holds whole blocks, `out.len()` values.
pub fn dequantize_row(ty: WType, w: &[u8], out: &mut [f32]) {
    match ty {
        WType::F32 | WType::F16 | WType::BF16 => float::dequantize_row(ty, w, out),
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
            legacy::dequantize_row(ty, w, out)
        }
        _ => kquants::dequantize_row(ty, w, out),
    }
}

/// The dot kernel for weights of type `ty` at SIMD level `level` (which the
/// caller has checked the CPU supports): the best kernel at or below it.
pub fn dot_kernel(ty: WType, level: SimdLevel) -> Dot {
    match ty {
        WType::F32 | WType::F16 | WType::BF16 => Dot::Float(float::dot_fn(ty, level)),
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
            Dot::Quant(legacy::dot_fn(ty, level))
        }
        _ => Dot::Quant(kquants::dot_fn(ty, level)),
    }
}

/// The packed (row-interleaved) kernel for `ty` at `level`, when there is
/// one: the weights are then rearranged at load by the [`PackFn`], and
/// products use the [`GemmFn`].
pub fn gemm_kernel(ty: WType, level: SimdLevel) -> Option<(PackFn, GemmFn)> {
    match ty {
        WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::Q8_0 => {
            legacy_gemm::gemm(ty, level)
        }
        WType::Q2K | WType::Q3K | WType::Q4K | WType::Q5K | WType::Q6K => {
            kquants_gemm::gemm(ty, level)
        }
        _ => None,
    }
}
