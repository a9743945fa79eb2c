//! The small f32 operations of a forward pass, on one row at a time (so a
//! row's result never depends on other rows).  Each picks its SIMD path
//! from [`simd::detected`](super::simd::detected).
//!
//! Every path computes the same bits at every SIMD level: each operation
//! has one specified order, which the scalar code spells out and the SIMD
//! code follows lane for lane, so an answer does not depend on the CPU it
//! ran on (and the reference decoder can compute it too).  The order:
//!
//! * **Sums of products** (`dot_f32`, `dot_f16`): 64 lanes, element `i`
//!   fused-multiply-added into lane `i % 64` in increasing `i`; then lane
//!   `l < 16` takes `(s[l] + s[l + 16]) + (s[l + 32] + s[l + 48])`, and the
//!   16 are summed pairwise: `l + 8`, then `l + 4`, `l + 2`, `l + 1`
//!   ([`fold64`]).  Softmax's sum of exponentials is the same with a plain
//!   add.
//! * **Sums of squares** (RMS norm): each square in f32, summed in f64 in 32
//!   lanes (`i % 32`) over the whole groups of 32; lane `l < 8` takes
//!   `(s[l] + s[l + 8]) + (s[l + 16] + s[l + 24])`, summed pairwise (`l +
//!   4`, `l + 2`, `l + 1`); then the rest one after the other.
//! * **`exp`**: one polynomial (Cephes' range reduction and coefficients,
//!   with fused multiply-adds), see [`exp_spec`].
//! * Everything else is elementwise, the same operations in the same order.

#![allow(clippy::needless_range_loop)]

use super::simd::{self, SimdLevel};
use half::f16;

/// Σ a[i] · b[i].
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::dot_f32_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::dot_f32_avx2(a, b) },
        _ => dot_f32_scalar(a, b),
    }
}

fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        acc[i % 64] = x.mul_add(*y, acc[i % 64]);
    }
    fold64(&acc)
}

/// The 64 lanes of a sum folded to one, in the specified order (module
/// doc).
pub(crate) fn fold64(acc: &[f32; 64]) -> f32 {
    let mut v = [0f32; 16];
    for l in 0..16 {
        v[l] = (acc[l] + acc[l + 16]) + (acc[l + 32] + acc[l + 48]);
    }
    fold16(&v)
}

/// 16 lanes summed pairwise: `l + 8`, then `l + 4`, `l + 2`, `l + 1` (what
/// the SIMD code's horizontal sums compute).
pub(crate) fn fold16(v: &[f32; 16]) -> f32 {
    let mut a = [0f32; 8];
    for l in 0..8 {
        a[l] = v[l] + v[l + 8];
    }
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (b[0] + b[2]) + (b[1] + b[3])
}

/// Σ k[i] · q[i] with `k` in f16 (attention scores over the KV cache).
pub fn dot_f16(k: &[f16], q: &[f32]) -> f32 {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::dot_f16_avx512(k, q) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::dot_f16_avx2(k, q) },
        _ => dot_f16_scalar(k, q),
    }
}

fn dot_f16_scalar(k: &[f16], q: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    for (i, (x, y)) in k.iter().zip(q).enumerate() {
        acc[i % 64] = x.to_f32().mul_add(*y, acc[i % 64]);
    }
    fold64(&acc)
}

/// y[i] += a · x[i] with `x` in f16 (attention output over the V cache).
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::axpy_f16_avx512(y, a, x) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::axpy_f16_avx2(y, a, x) },
        _ => axpy_f16_scalar(y, a, x),
    }
}

/// Rows of a matrix stored one after another, `stride` values apart: row
/// `j` starts at value `first + j · stride` of its buffer (consecutive
/// cached keys or values of one KV head).
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub first: usize,
    pub stride: usize,
}

impl Rows {
    #[inline(always)]
    fn at(self, j: usize) -> usize {
        self.first + j * self.stride
    }

    /// Whether rows `0..n` of `len` values each lie inside `buf` values.
    fn fit(self, n: usize, len: usize, buf: usize) -> bool {
        n == 0
            || (n - 1)
                .checked_mul(self.stride)
                .and_then(|o| o.checked_add(self.first))
                .and_then(|o| o.checked_add(len))
                .is_some_and(|end| end <= buf)
    }
}

/// Attention scores of `heads` query vectors (`q`, `heads` · `hd` values,
/// the heads that share one KV head) over `n_keys` cached key rows (row j at
/// `k[rows.at(j)..][..hd]`): `s[h * ld + j] = dot_f16(key_j, q_h)`, bit
/// for bit, but at AVX-512 each key is read and converted once for all the
/// heads (up to 4 at a time) when `hd` is a multiple of 64.
#[allow(clippy::too_many_arguments)]
pub fn dot_rows_f16(
    k: &[f16],
    rows: Rows,
    n_keys: usize,
    q: &[f32],
    heads: usize,
    hd: usize,
    s: &mut [f32],
    ld: usize,
) {
    assert!(
        q.len() >= heads * hd,
        "dot_rows_f16: q holds fewer than {heads} heads"
    );
    assert!(
        heads == 0 || (n_keys <= ld && s.len() >= (heads - 1) * ld + n_keys),
        "dot_rows_f16: scores too short"
    );
    assert!(
        rows.fit(n_keys, hd, k.len()),
        "dot_rows_f16: keys outside k"
    );
    let mut h0 = 0;
    while h0 < heads {
        let g = (heads - h0).min(4);
        let qh = &q[h0 * hd..(h0 + g) * hd];
        let sh = &mut s[h0 * ld..];
        #[cfg(target_arch = "x86_64")]
        if simd::configured() == SimdLevel::Avx512 && hd.is_multiple_of(64) {
            // SAFETY: AVX-512 is the configured level; keys, queries and
            // scores were checked to lie inside their slices.
            unsafe {
                match g {
                    1 => x86::dot_rows_f16_avx512::<1>(k, rows, n_keys, qh, hd, sh, ld),
                    2 => x86::dot_rows_f16_avx512::<2>(k, rows, n_keys, qh, hd, sh, ld),
                    3 => x86::dot_rows_f16_avx512::<3>(k, rows, n_keys, qh, hd, sh, ld),
                    _ => x86::dot_rows_f16_avx512::<4>(k, rows, n_keys, qh, hd, sh, ld),
                }
            }
            h0 += g;
            continue;
        }
        for h in 0..g {
            for j in 0..n_keys {
                let st = rows.at(j);
                sh[h * ld + j] = dot_f16(&k[st..st + hd], &qh[h * hd..(h + 1) * hd]);
            }
        }
        h0 += g;
    }
}

/// y += Σ_j w[j] · x_j, where row x_j is `x[rows.at(j)..][..y.len()]`
/// (attention's output over the V cache): the same sums, element by element
/// in the same order, as [`axpy_f16`] once per row — bit-identical — but at
/// AVX-512 with `y` held in registers for the common head sizes (64, 128,
/// 256) instead of loaded and stored once per row.
pub fn axpy_rows_f16(y: &mut [f32], w: &[f32], x: &[f16], rows: Rows) {
    let n = y.len();
    assert!(
        rows.fit(w.len(), n, x.len()),
        "axpy_rows_f16: rows outside x"
    );
    #[cfg(target_arch = "x86_64")]
    if simd::configured() == SimdLevel::Avx512 {
        // SAFETY: AVX-512 is this CPU's configured level; every row was
        // checked to lie inside `x`.
        unsafe {
            match n {
                256 => return x86::axpy_rows_f16_avx512::<16>(y, w, x, rows),
                128 => return x86::axpy_rows_f16_avx512::<8>(y, w, x, rows),
                64 => return x86::axpy_rows_f16_avx512::<4>(y, w, x, rows),
                _ => {}
            }
        }
    }
    for (j, &a) in w.iter().enumerate() {
        let s = rows.at(j);
        axpy_f16(y, a, &x[s..s + n]);
    }
}

fn axpy_f16_scalar(y: &mut [f32], a: f32, x: &[f16]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = a.mul_add(x.to_f32(), *y);
    }
}

/// Rounds `src` to f16 (round to nearest even) into `dst`.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::f32_to_f16_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::f32_to_f16_avx2(src, dst) },
        _ => f32_to_f16_scalar(src, dst),
    }
}

fn f32_to_f16_scalar(src: &[f32], dst: &mut [f16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(*s);
    }
}

/// out = x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::rms_norm_avx512(x, w, eps, out) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::rms_norm_avx2(x, w, eps, out) },
        _ => rms_norm_scalar(x, w, eps, out),
    }
}

/// The factor 1 / sqrt(mean(x²) + eps) from the sum of the squares, as
/// ggml computes it: each square in f32, summed in f64, the mean narrowed
/// to f32 before the f32 square root.  The activations quantized after a
/// norm have exact rounding ties (a Q8_0 embedding's values are small
/// integer multiples of one scale): a scale one ulp off llama.cpp's turns
/// some of them the other way, which the layers then amplify.
#[inline(always)]
fn rms_factor(sum_sq: f64, n: usize, eps: f32) -> f32 {
    let mean = (sum_sq / n as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// Σ x², each square in f32, summed in f64 in the specified order (module
/// doc).
pub(crate) fn sum_sq_scalar(x: &[f32]) -> f64 {
    let whole = x.len() / 32 * 32;
    let mut acc = [0f64; 32];
    for (i, v) in x[..whole].iter().enumerate() {
        acc[i % 32] += (v * v) as f64;
    }
    let mut t = [0f64; 8];
    for l in 0..8 {
        t[l] = (acc[l] + acc[l + 8]) + (acc[l + 16] + acc[l + 24]);
    }
    let u = [t[0] + t[4], t[1] + t[5], t[2] + t[6], t[3] + t[7]];
    let mut s = (u[0] + u[2]) + (u[1] + u[3]);
    for v in &x[whole..] {
        s += (v * v) as f64;
    }
    s
}

fn rms_norm_scalar(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let r = rms_factor(sum_sq_scalar(x), x.len(), eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * w;
    }
}

/// x = softmax(x), in place.
pub fn softmax(x: &mut [f32]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::softmax_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::softmax_avx2(x) },
        _ => softmax_scalar(x),
    }
}

fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut acc = [0f32; 64];
    for (i, v) in x.iter_mut().enumerate() {
        *v = exp_spec(*v - max);
        acc[i % 64] += *v;
    }
    let inv = 1.0 / fold64(&acc);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// g[i] = silu(g[i]) · u[i].
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::silu_mul_avx512(g, u) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::silu_mul_avx2(g, u) },
        _ => silu_mul_scalar(g, u),
    }
}

fn silu_mul_scalar(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp_spec(-*g)) * u;
    }
}

/// g[i] = gelu(g[i]) · u[i], with GELU's tanh approximation, computed by
/// the identity `0.5·x·(1 + tanh(y)) = x / (1 + e^(-2y))`, which is also
/// accurate where `1 + tanh(y)` cancels (x well below 0).
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::gelu_mul_avx512(g, u) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::gelu_mul_avx2(g, u) },
        _ => gelu_mul_scalar(g, u),
    }
}

/// sqrt(2/pi).
const GELU_C: f32 = 0.797_884_6;
/// GELU's cubic coefficient.
const GELU_A: f32 = 0.044_715;

fn gelu_mul_scalar(g: &mut [f32], u: &[f32]) {
    let (k0, k1) = (-2.0 * GELU_C, -2.0 * GELU_C * GELU_A);
    for (g, u) in g.iter_mut().zip(u) {
        let x = *g;
        // -2y = x · (-2C - 2C·A·x²)
        let e = exp_spec(x * (x * x).mul_add(k1, k0));
        *g = x / (1.0 + e) * u;
    }
}

/// y[i] += x[i].
pub fn add(y: &mut [f32], x: &[f32]) {
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::add_avx512(y, x) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::add_avx2(y, x) },
        _ => add_scalar(y, x),
    }
}

fn add_scalar(y: &mut [f32], x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// Quantizes a row of `k = x.len()` values (`k` a multiple of 32) for the
/// integer dot kernels, exactly as [`quantize_block`] does on each block of
/// 32 (bit-identical results at every SIMD level): `qs` gets `k` values, `d`
/// and `dsum` `k / 32`, `s16` `k / 16` (longer slices keep their tails).
///
/// [`quantize_block`]: super::quant::act::quantize_block
pub fn quantize_row_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], dsum: &mut [f32], s16: &mut [i16]) {
    let k = x.len();
    let nb = k / 32;
    assert!(
        k.is_multiple_of(32)
            && qs.len() >= k
            && d.len() >= nb
            && dsum.len() >= nb
            && s16.len() >= 2 * nb,
        "quantize_row_q8: bad lengths"
    );
    match simd::configured() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::quantize_row_q8_avx512(x, qs, d, dsum, s16) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::quantize_row_q8_avx2(x, qs, d, dsum, s16) },
        _ => quantize_row_q8_scalar(x, qs, d, dsum, s16),
    }
}

fn quantize_row_q8_scalar(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    dsum: &mut [f32],
    s16: &mut [i16],
) {
    for b in 0..x.len() / 32 {
        super::quant::act::quantize_block(
            &x[b * 32..b * 32 + 32],
            (&mut qs[b * 32..b * 32 + 32]).try_into().unwrap(),
            &mut d[b],
            &mut dsum[b],
            (&mut s16[b * 2..b * 2 + 2]).try_into().unwrap(),
        );
    }
}

/// Quantizes a row for K-quant weights (Q8_K blocks of 256), exactly as
/// the portable [`quantize_row_q8k`] does (bit-identical at every SIMD
/// level; lengths as there).
///
/// [`quantize_row_q8k`]: super::quant::act::quantize_row_q8k
pub fn quantize_row_q8k(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    dsum: &mut [f32],
    s16: &mut [i16],
) {
    super::quant::act::check_q8k_lengths(x, qs, d, dsum, s16);
    match simd::configured() {
        // SAFETY: AVX-512 is the configured level; lengths checked above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::quantize_row_q8k_avx512(x, qs, d, dsum, s16) },
        _ => super::quant::act::quantize_row_q8k(x, qs, d, dsum, s16),
    }
}

/// A block's scale and its inverse from its largest magnitude, with the
/// same operations as `quantize_block`.
#[inline(always)]
fn q8_scale(amax: f32) -> (f32, f32) {
    super::quant::act::q8_scale(amax)
}

// Coefficients of exp: Cephes' expf (range reduction by ln 2 split in two
// parts, then a degree-5 polynomial for (e^r - 1 - r) / r²).
const EXP_HI: f32 = 89.0;
const EXP_LO: f32 = -105.0;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// e^x in the specified order, what `exp8` and `exp16` compute in each
/// lane: relative error about 2e-7 over the whole range (underflows to 0
/// below about -103.9, overflows to inf above 88.72, NaN stays NaN).
pub(crate) fn exp_spec(x: f32) -> f32 {
    let x = if x.is_nan() {
        x
    } else {
        x.clamp(EXP_LO, EXP_HI)
    };
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r + 1.0);
    // 2^n as 2^n1 · 2^n2 so that n in [-151, 128] stays representable.
    let ni = n as i32;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) << 23) as u32);
    let s2 = f32::from_bits(((n2 + 127) << 23) as u32);
    y * s1 * s2
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::quant::act::{q8k_scales, stored_scales};
    use super::{
        f16, q8_scale, rms_factor, Rows, EXP_HI, EXP_LO, EXP_P, GELU_A, GELU_C, LN2_HI, LN2_LO,
    };
    use std::arch::x86_64::*;

    const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    /// Rounding immediate of the f32 → f16 conversions (3 bits, no SAE flag).
    const CVT_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;

    // ============================================================ AVX2

    /// Lanes `0..rem` set (rem <= 8).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mask8(rem: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(rem as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hmax8(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 8 f16 values from `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn ldh8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// `rem < 8` f16 values from `p`, zeros after.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn ldh8_part(p: *const f16, rem: usize) -> __m256 {
        let mut b = [0u16; 8];
        std::ptr::copy_nonoverlapping(p as *const u16, b.as_mut_ptr(), rem);
        _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr() as *const __m128i))
    }

    /// e^x, relative error about 2e-7 over the whole range (underflows to
    /// 0 below about -103.9, overflows to inf above 88.72, NaN stays NaN).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        // max/min return their second operand when one is NaN: keep x's NaN.
        let x = _mm256_min_ps(
            _mm256_set1_ps(EXP_HI),
            _mm256_max_ps(_mm256_set1_ps(EXP_LO), x),
        );
        let n = _mm256_round_ps::<ROUND_NEAREST>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // 2^n as 2^n1 · 2^n2 so that n in [-151, 128] stays representable.
        let ni = _mm256_cvttps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(ni);
        let n2 = _mm256_sub_epi32(ni, n1);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        _mm256_mul_ps(_mm256_mul_ps(y, s1), s2)
    }

    /// The 64 lanes of a sum (vector `m` = lanes `8m..8m + 8`) folded to
    /// one as `fold64` does.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fold64_avx2(r: &[__m256; 8]) -> f32 {
        let lo = _mm256_add_ps(_mm256_add_ps(r[0], r[2]), _mm256_add_ps(r[4], r[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(r[1], r[3]), _mm256_add_ps(r[5], r[7]));
        hsum8(_mm256_add_ps(lo, hi))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *a);
            }
            i += 64;
        }
        // The rest into the lanes they belong to (zeros past the end).
        let mut j = 0;
        while i < n {
            acc[j] = if n - i >= 8 {
                _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[j],
                )
            } else {
                let m = mask8(n - i);
                _mm256_fmadd_ps(
                    _mm256_maskload_ps(pa.add(i), m),
                    _mm256_maskload_ps(pb.add(i), m),
                    acc[j],
                )
            };
            i += 8;
            j += 1;
        }
        fold64_avx2(&acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2(k: &[f16], q: &[f32]) -> f32 {
        let n = k.len().min(q.len());
        let (pk, pq) = (k.as_ptr(), q.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *a = _mm256_fmadd_ps(ldh8(pk.add(o)), _mm256_loadu_ps(pq.add(o)), *a);
            }
            i += 64;
        }
        let mut j = 0;
        while i < n {
            acc[j] = if n - i >= 8 {
                _mm256_fmadd_ps(ldh8(pk.add(i)), _mm256_loadu_ps(pq.add(i)), acc[j])
            } else {
                _mm256_fmadd_ps(
                    ldh8_part(pk.add(i), n - i),
                    _mm256_maskload_ps(pq.add(i), mask8(n - i)),
                    acc[j],
                )
            };
            i += 8;
            j += 1;
        }
        fold64_avx2(&acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16_avx2(y: &mut [f32], a: f32, x: &[f16]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, ldh8(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        if i < n {
            let m = mask8(n - i);
            let v = _mm256_fmadd_ps(
                av,
                ldh8_part(px.add(i), n - i),
                _mm256_maskload_ps(py.add(i), m),
            );
            _mm256_maskstore_ps(py.add(i), m, v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f32_to_f16_avx2(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm256_cvtps_ph::<CVT_NEAREST>(_mm256_loadu_ps(ps.add(i)));
            _mm_storeu_si128(pd.add(i) as *mut __m128i, h);
            i += 8;
        }
        if i < n {
            let rem = n - i;
            let h = _mm256_cvtps_ph::<CVT_NEAREST>(_mm256_maskload_ps(ps.add(i), mask8(rem)));
            let mut b = [0u16; 8];
            _mm_storeu_si128(b.as_mut_ptr() as *mut __m128i, h);
            std::ptr::copy_nonoverlapping(b.as_ptr(), pd.add(i) as *mut u16, rem);
        }
    }

    /// Σ x[i]² over the whole row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    /// Σ x², each square in f32 and summed in f64 (see `rms_factor`).
    unsafe fn sum_sq_avx2(x: &[f32]) -> f64 {
        let n = x.len();
        let p = x.as_ptr();
        // 32 f64 lanes: vector m = lanes 4m..4m + 4.
        let mut acc = [_mm256_setzero_pd(); 8];
        let mut i = 0;
        while i + 32 <= n {
            for j in 0..4 {
                let v = _mm256_loadu_ps(p.add(i + 8 * j));
                let sq = _mm256_mul_ps(v, v);
                acc[2 * j] = _mm256_add_pd(acc[2 * j], _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
                acc[2 * j + 1] = _mm256_add_pd(
                    acc[2 * j + 1],
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(sq)),
                );
            }
            i += 32;
        }
        let lo = _mm256_add_pd(_mm256_add_pd(acc[0], acc[2]), _mm256_add_pd(acc[4], acc[6]));
        let hi = _mm256_add_pd(_mm256_add_pd(acc[1], acc[3]), _mm256_add_pd(acc[5], acc[7]));
        let mut u = [0f64; 4];
        _mm256_storeu_pd(u.as_mut_ptr(), _mm256_add_pd(lo, hi));
        let mut s = (u[0] + u[2]) + (u[1] + u[3]);
        for &v in &x[i..] {
            s += (v * v) as f64;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rms_norm_avx2(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let r = rms_factor(sum_sq_avx2(x), x.len(), eps);
        let rv = _mm256_set1_ps(r);
        let n = out.len().min(x.len()).min(w.len());
        let (px, pw, po) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_loadu_ps(px.add(i)), rv),
                _mm256_loadu_ps(pw.add(i)),
            );
            _mm256_storeu_ps(po.add(i), v);
            i += 8;
        }
        if i < n {
            let m = mask8(n - i);
            let v = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_maskload_ps(px.add(i), m), rv),
                _mm256_maskload_ps(pw.add(i), m),
            );
            _mm256_maskstore_ps(po.add(i), m, v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn softmax_avx2(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        // Max: max_ps(v, acc) returns acc when v is NaN, like f32::max.
        let mut mx = [ninf; 4];
        let mut i = 0;
        while i + 32 <= n {
            for j in 0..4 {
                mx[j] = _mm256_max_ps(_mm256_loadu_ps(p.add(i + 8 * j)), mx[j]);
            }
            i += 32;
        }
        while i + 8 <= n {
            mx[0] = _mm256_max_ps(_mm256_loadu_ps(p.add(i)), mx[0]);
            i += 8;
        }
        let tail = n - i;
        let tm = mask8(tail);
        let tail_ld = |p: *const f32| {
            _mm256_blendv_ps(ninf, _mm256_maskload_ps(p, tm), _mm256_castsi256_ps(tm))
        };
        if tail > 0 {
            mx[1] = _mm256_max_ps(tail_ld(p.add(i)), mx[1]);
        }
        let max = hmax8(_mm256_max_ps(
            _mm256_max_ps(mx[0], mx[1]),
            _mm256_max_ps(mx[2], mx[3]),
        ));
        let mv = _mm256_set1_ps(max);
        // Exponentials and their sum.
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let q = p.add(i + 8 * j);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(q), mv));
                _mm256_storeu_ps(q, e);
                *a = _mm256_add_ps(*a, e);
            }
            i += 64;
        }
        let mut j = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            acc[j] = _mm256_add_ps(acc[j], e);
            i += 8;
            j += 1;
        }
        if tail > 0 {
            let e = exp8(_mm256_sub_ps(tail_ld(p.add(i)), mv));
            _mm256_maskstore_ps(p.add(i), tm, e);
            acc[j] = _mm256_add_ps(acc[j], _mm256_and_ps(e, _mm256_castsi256_ps(tm)));
        }
        let sum = fold64_avx2(&acc);
        let inv = _mm256_set1_ps(1.0 / sum);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
            i += 8;
        }
        if tail > 0 {
            let v = _mm256_mul_ps(_mm256_maskload_ps(p.add(i), tm), inv);
            _mm256_maskstore_ps(p.add(i), tm, v);
        }
    }

    /// g = f(g) · u elementwise over the common length, 8 at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn map2_avx2<F: Fn(__m256, __m256) -> __m256>(g: &mut [f32], u: &[f32], f: F) {
        let n = g.len().min(u.len());
        let (pg, pu) = (g.as_mut_ptr(), u.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let v = f(_mm256_loadu_ps(pg.add(i)), _mm256_loadu_ps(pu.add(i)));
            _mm256_storeu_ps(pg.add(i), v);
            i += 8;
        }
        if i < n {
            let m = mask8(n - i);
            let v = f(
                _mm256_maskload_ps(pg.add(i), m),
                _mm256_maskload_ps(pu.add(i), m),
            );
            _mm256_maskstore_ps(pg.add(i), m, v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        map2_avx2(g, u, |x, u| {
            let e = exp8(_mm256_xor_ps(x, neg));
            _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), u)
        });
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gelu_mul_avx2(g: &mut [f32], u: &[f32]) {
        let one = _mm256_set1_ps(1.0);
        let k0 = _mm256_set1_ps(-2.0 * GELU_C);
        let k1 = _mm256_set1_ps(-2.0 * GELU_C * GELU_A);
        map2_avx2(g, u, |x, u| {
            // -2y = x · (-2C - 2C·A·x²)
            let z = _mm256_mul_ps(x, _mm256_fmadd_ps(_mm256_mul_ps(x, x), k1, k0));
            let e = exp8(z);
            _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), u)
        });
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn add_avx2(y: &mut [f32], x: &[f32]) {
        map2_avx2(y, x, |y, x| _mm256_add_ps(y, x));
    }

    /// round(v · inv) clamped to ±127 with NaN as 0, as i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_lanes8(v: __m256, inv: __m256) -> __m256i {
        let r = _mm256_round_ps::<ROUND_NEAREST>(_mm256_mul_ps(v, inv));
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_cvttps_epi32(r)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum8_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_row_q8_avx2(
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        dsum: &mut [f32],
        s16: &mut [i16],
    ) {
        let absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for b in 0..x.len() / 32 {
            let p = x.as_ptr().add(b * 32);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            // max_ps(|v|, m) keeps m when |v| is NaN, like f32::max.
            let mut m = _mm256_setzero_ps();
            for j in 0..4 {
                m = _mm256_max_ps(_mm256_and_ps(v[j], absm), m);
            }
            let (scale, inv) = q8_scale(hmax8(m));
            let iv = _mm256_set1_ps(inv);
            let q0 = q8_lanes8(v[0], iv);
            let q1 = q8_lanes8(v[1], iv);
            let q2 = q8_lanes8(v[2], iv);
            let q3 = q8_lanes8(v[3], iv);
            let s0 = hsum8_epi32(_mm256_add_epi32(q0, q1));
            let s1 = hsum8_epi32(_mm256_add_epi32(q2, q3));
            let w = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
            let w = _mm256_permutevar8x32_epi32(w, perm);
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * 32) as *mut __m256i, w);
            (d[b], dsum[b]) = stored_scales(scale, s0 + s1);
            s16[2 * b] = s0 as i16;
            s16[2 * b + 1] = s1 as i16;
        }
    }

    // ============================================================ AVX-512

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn mask16(rem: usize) -> __mmask16 {
        ((1u32 << rem) - 1) as __mmask16 // rem <= 16
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn hsum16(v: __m512) -> f32 {
        hsum8(_mm256_add_ps(
            _mm512_castps512_ps256(v),
            _mm512_extractf32x8_ps::<1>(v),
        ))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn hmax16(v: __m512) -> f32 {
        hmax8(_mm256_max_ps(
            _mm512_castps512_ps256(v),
            _mm512_extractf32x8_ps::<1>(v),
        ))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn ldh16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn ldh16_mask(p: *const f16, m: __mmask16) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16))
    }

    /// e^x as [`exp8`], 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_set1_ps(EXP_HI),
            _mm512_max_ps(_mm512_set1_ps(EXP_LO), x),
        );
        let n = _mm512_roundscale_ps::<ROUND_NEAREST>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(
            p,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let ni = _mm512_cvttps_epi32(n);
        let n1 = _mm512_srai_epi32::<1>(ni);
        let n2 = _mm512_sub_epi32(ni, n1);
        let bias = _mm512_set1_epi32(127);
        let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        _mm512_mul_ps(_mm512_mul_ps(y, s1), s2)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for j in 0..4 {
                let o = i + 16 * j;
                acc[j] = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(o)),
                    _mm512_loadu_ps(pb.add(o)),
                    acc[j],
                );
            }
            i += 64;
        }
        // The rest into the lanes they belong to (zeros past the end).
        let mut j = 0;
        while i < n {
            let m = mask16((n - i).min(16));
            acc[j] = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                acc[j],
            );
            i += 16;
            j += 1;
        }
        hsum16(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx512(k: &[f16], q: &[f32]) -> f32 {
        let n = k.len().min(q.len());
        let (pk, pq) = (k.as_ptr(), q.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for j in 0..4 {
                let o = i + 16 * j;
                acc[j] = _mm512_fmadd_ps(ldh16(pk.add(o)), _mm512_loadu_ps(pq.add(o)), acc[j]);
            }
            i += 64;
        }
        let mut j = 0;
        while i < n {
            let m = mask16((n - i).min(16));
            acc[j] = _mm512_fmadd_ps(
                ldh16_mask(pk.add(i), m),
                _mm512_maskz_loadu_ps(m, pq.add(i)),
                acc[j],
            );
            i += 16;
            j += 1;
        }
        hsum16(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16_avx512(y: &mut [f32], a: f32, x: &[f16]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm512_set1_ps(a);
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_fmadd_ps(av, ldh16(px.add(i)), _mm512_loadu_ps(py.add(i)));
            _mm512_storeu_ps(py.add(i), v);
            i += 16;
        }
        if i < n {
            let m = mask16(n - i);
            let v = _mm512_fmadd_ps(
                av,
                ldh16_mask(px.add(i), m),
                _mm512_maskz_loadu_ps(m, py.add(i)),
            );
            _mm512_mask_storeu_ps(py.add(i), m, v);
        }
    }

    /// `dot_f16_avx512` of each key row with `G` query vectors, the key
    /// converted once: per head the same four accumulators over the same
    /// 64-value steps and the same final sum (`hd` is a multiple of 64, so
    /// that kernel has no tail either).
    ///
    /// # Safety
    /// AVX-512 is available; `hd` is a multiple of 64; every key row lies
    /// inside `k`, `q` holds `G` · `hd` values, `s` holds `(G - 1) · ld +
    /// n_keys` scores.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows_f16_avx512<const G: usize>(
        k: &[f16],
        rows: Rows,
        n_keys: usize,
        q: &[f32],
        hd: usize,
        s: &mut [f32],
        ld: usize,
    ) {
        let pq = q.as_ptr();
        let ps = s.as_mut_ptr();
        for j in 0..n_keys {
            let pk = k.as_ptr().add(rows.at(j));
            let mut acc = [[_mm512_setzero_ps(); 4]; G];
            let mut i = 0;
            while i < hd {
                for jj in 0..4 {
                    let o = i + 16 * jj;
                    let kv = ldh16(pk.add(o));
                    for (h, a) in acc.iter_mut().enumerate() {
                        a[jj] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(pq.add(h * hd + o)), a[jj]);
                    }
                }
                i += 64;
            }
            for (h, a) in acc.iter().enumerate() {
                *ps.add(h * ld + j) = hsum16(_mm512_add_ps(
                    _mm512_add_ps(a[0], a[1]),
                    _mm512_add_ps(a[2], a[3]),
                ));
            }
        }
    }

    /// `axpy_f16_avx512` over rows of exactly `R` · 16 values, `y` in `R`
    /// registers throughout: per element the same fused multiply-adds in the
    /// same order.
    ///
    /// # Safety
    /// AVX-512 is available; `y.len() == 16 · R` and every row
    /// `rows.at(j)..rows.at(j) + 16 · R` lies inside `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn axpy_rows_f16_avx512<const R: usize>(
        y: &mut [f32],
        w: &[f32],
        x: &[f16],
        rows: Rows,
    ) {
        debug_assert_eq!(y.len(), 16 * R);
        let py = y.as_mut_ptr();
        let mut acc = [_mm512_setzero_ps(); R];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(py.add(16 * i));
        }
        for (j, &wj) in w.iter().enumerate() {
            let px = x.as_ptr().add(rows.at(j));
            let av = _mm512_set1_ps(wj);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(av, ldh16(px.add(16 * i)), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(py.add(16 * i), *a);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn f32_to_f16_avx512(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm512_cvtps_ph::<CVT_NEAREST>(_mm512_loadu_ps(ps.add(i)));
            _mm256_storeu_si256(pd.add(i) as *mut __m256i, h);
            i += 16;
        }
        if i < n {
            let m = mask16(n - i);
            let h = _mm512_cvtps_ph::<CVT_NEAREST>(_mm512_maskz_loadu_ps(m, ps.add(i)));
            _mm256_mask_storeu_epi16(pd.add(i) as *mut i16, m, h);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    /// Σ x², each square in f32 and summed in f64 (see `rms_factor`).
    unsafe fn sum_sq_avx512(x: &[f32]) -> f64 {
        let n = x.len();
        let p = x.as_ptr();
        let mut acc = [_mm512_setzero_pd(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for j in 0..2 {
                let v = _mm512_loadu_ps(p.add(i + 16 * j));
                let sq = _mm512_mul_ps(v, v);
                acc[2 * j] = _mm512_add_pd(acc[2 * j], _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));
                acc[2 * j + 1] = _mm512_add_pd(
                    acc[2 * j + 1],
                    _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                        _mm512_castps_pd(sq),
                    ))),
                );
            }
            i += 32;
        }
        let t = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
        let mut u = [0f64; 4];
        _mm256_storeu_pd(
            u.as_mut_ptr(),
            _mm256_add_pd(_mm512_castpd512_pd256(t), _mm512_extractf64x4_pd::<1>(t)),
        );
        let mut s = (u[0] + u[2]) + (u[1] + u[3]);
        for &v in &x[i..] {
            s += (v * v) as f64;
        }
        s
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn rms_norm_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let r = rms_factor(sum_sq_avx512(x), x.len(), eps);
        let rv = _mm512_set1_ps(r);
        let n = out.len().min(x.len()).min(w.len());
        let (px, pw, po) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_loadu_ps(px.add(i)), rv),
                _mm512_loadu_ps(pw.add(i)),
            );
            _mm512_storeu_ps(po.add(i), v);
            i += 16;
        }
        if i < n {
            let m = mask16(n - i);
            let v = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_maskz_loadu_ps(m, px.add(i)), rv),
                _mm512_maskz_loadu_ps(m, pw.add(i)),
            );
            _mm512_mask_storeu_ps(po.add(i), m, v);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn softmax_avx512(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut mx = [ninf; 4];
        let mut i = 0;
        while i + 64 <= n {
            for j in 0..4 {
                mx[j] = _mm512_max_ps(_mm512_loadu_ps(p.add(i + 16 * j)), mx[j]);
            }
            i += 64;
        }
        while i + 16 <= n {
            mx[0] = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), mx[0]);
            i += 16;
        }
        let tail = n - i;
        let tm = mask16(tail);
        if tail > 0 {
            mx[1] = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, tm, p.add(i)), mx[1]);
        }
        let max = hmax16(_mm512_max_ps(
            _mm512_max_ps(mx[0], mx[1]),
            _mm512_max_ps(mx[2], mx[3]),
        ));
        let mv = _mm512_set1_ps(max);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for j in 0..4 {
                let q = p.add(i + 16 * j);
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(q), mv));
                _mm512_storeu_ps(q, e);
                acc[j] = _mm512_add_ps(acc[j], e);
            }
            i += 64;
        }
        let mut j = 0;
        while i + 16 <= n {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), mv));
            _mm512_storeu_ps(p.add(i), e);
            acc[j] = _mm512_add_ps(acc[j], e);
            i += 16;
            j += 1;
        }
        if tail > 0 {
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, p.add(i)), mv));
            _mm512_mask_storeu_ps(p.add(i), tm, e);
            acc[j] = _mm512_add_ps(acc[j], _mm512_maskz_mov_ps(tm, e));
        }
        let sum = hsum16(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ));
        let inv = _mm512_set1_ps(1.0 / sum);
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
            i += 16;
        }
        if tail > 0 {
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, p.add(i)), inv);
            _mm512_mask_storeu_ps(p.add(i), tm, v);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn map2_avx512<F: Fn(__m512, __m512) -> __m512>(g: &mut [f32], u: &[f32], f: F) {
        let n = g.len().min(u.len());
        let (pg, pu) = (g.as_mut_ptr(), u.as_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let v = f(_mm512_loadu_ps(pg.add(i)), _mm512_loadu_ps(pu.add(i)));
            _mm512_storeu_ps(pg.add(i), v);
            i += 16;
        }
        if i < n {
            let m = mask16(n - i);
            let v = f(
                _mm512_maskz_loadu_ps(m, pg.add(i)),
                _mm512_maskz_loadu_ps(m, pu.add(i)),
            );
            _mm512_mask_storeu_ps(pg.add(i), m, v);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn silu_mul_avx512(g: &mut [f32], u: &[f32]) {
        let one = _mm512_set1_ps(1.0);
        let neg = _mm512_set1_ps(-0.0);
        map2_avx512(g, u, |x, u| {
            let e = exp16(_mm512_xor_ps(x, neg));
            _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), u)
        });
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn gelu_mul_avx512(g: &mut [f32], u: &[f32]) {
        let one = _mm512_set1_ps(1.0);
        let k0 = _mm512_set1_ps(-2.0 * GELU_C);
        let k1 = _mm512_set1_ps(-2.0 * GELU_C * GELU_A);
        map2_avx512(g, u, |x, u| {
            let z = _mm512_mul_ps(x, _mm512_fmadd_ps(_mm512_mul_ps(x, x), k1, k0));
            let e = exp16(z);
            _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), u)
        });
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn add_avx512(y: &mut [f32], x: &[f32]) {
        map2_avx512(y, x, |y, x| _mm512_add_ps(y, x));
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_lanes16(v: __m512, inv: __m512) -> __m512i {
        let r = _mm512_roundscale_ps::<ROUND_NEAREST>(_mm512_mul_ps(v, inv));
        let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r);
        let r = _mm512_maskz_mov_ps(ord, r);
        let r = _mm512_min_ps(
            _mm512_max_ps(r, _mm512_set1_ps(-127.0)),
            _mm512_set1_ps(127.0),
        );
        _mm512_cvttps_epi32(r)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn quantize_row_q8_avx512(
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        dsum: &mut [f32],
        s16: &mut [i16],
    ) {
        for b in 0..x.len() / 32 {
            let p = x.as_ptr().add(b * 32);
            let v0 = _mm512_loadu_ps(p);
            let v1 = _mm512_loadu_ps(p.add(16));
            // max_ps(|v|, m) keeps m when |v| is NaN, like f32::max.
            let m = _mm512_max_ps(
                _mm512_abs_ps(v1),
                _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps()),
            );
            let (scale, inv) = q8_scale(hmax16(m));
            let iv = _mm512_set1_ps(inv);
            let q0 = q8_lanes16(v0, iv);
            let q1 = q8_lanes16(v1, iv);
            let s0 = _mm512_reduce_add_epi32(q0);
            let s1 = _mm512_reduce_add_epi32(q1);
            let o = qs.as_mut_ptr().add(b * 32) as *mut __m128i;
            _mm_storeu_si128(o, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(o.add(1), _mm512_cvtepi32_epi8(q1));
            (d[b], dsum[b]) = stored_scales(scale, s0 + s1);
            s16[2 * b] = s0 as i16;
            s16[2 * b + 1] = s1 as i16;
        }
    }

    /// `act::quantize_row_q8k` on 16 lanes: the largest magnitude (NaN
    /// skipped, as there), the first value that has it (which sets the
    /// scale's sign), then the same product, rounding and clamp per value.
    ///
    /// # Safety
    /// AVX-512 is available; `x.len()` is a multiple of 256 and the other
    /// slices are as long as `quantize_row_q8k` asks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn quantize_row_q8k_avx512(
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        dsum: &mut [f32],
        s16: &mut [i16],
    ) {
        for b in 0..x.len() / 256 {
            let p = x.as_ptr().add(b * 256);
            // max_ps(|v|, m) keeps m when |v| is NaN, as `>` skips it there.
            let mut m = _mm512_setzero_ps();
            for j in 0..16 {
                m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(p.add(16 * j))), m);
            }
            let amax = hmax16(m);
            let mut max = 0f32;
            if amax > 0.0 {
                let a = _mm512_set1_ps(amax);
                for j in 0..16 {
                    let v = _mm512_abs_ps(_mm512_loadu_ps(p.add(16 * j)));
                    let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, a);
                    if hit != 0 {
                        max = *p.add(16 * j + hit.trailing_zeros() as usize);
                        break;
                    }
                }
            }
            let iscale = if amax > 0.0 { -127.0 / max } else { 0.0 };
            let iv = _mm512_set1_ps(iscale);
            let o = qs.as_mut_ptr().add(b * 256) as *mut __m128i;
            for j in 0..16 {
                let q = q8_lanes16(_mm512_loadu_ps(p.add(16 * j)), iv);
                s16[b * 16 + j] = _mm512_reduce_add_epi32(q) as i16;
                _mm_storeu_si128(o.add(j), _mm512_cvtepi32_epi8(q));
            }
            q8k_scales(
                amax,
                iscale,
                &s16[b * 16..],
                &mut d[b * 8..],
                &mut dsum[b * 8..],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in [-1, 1).
        fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn row(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.f() * scale).collect()
        }
    }

    const LENS: [usize; 16] = [
        0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 129, 640, 2051,
    ];

    fn levels() -> Vec<SimdLevel> {
        simd::levels_to_test()
    }

    // Each op at an explicit level (the caller checked the CPU).
    #[allow(unreachable_patterns)]
    fn dot_f32_at(l: SimdLevel, a: &[f32], b: &[f32]) -> f32 {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::dot_f32_avx512(a, b) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::dot_f32_avx2(a, b) },
            _ => dot_f32_scalar(a, b),
        }
    }
    #[allow(unreachable_patterns)]
    fn dot_f16_at(l: SimdLevel, k: &[f16], q: &[f32]) -> f32 {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::dot_f16_avx512(k, q) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::dot_f16_avx2(k, q) },
            _ => dot_f16_scalar(k, q),
        }
    }
    #[allow(unreachable_patterns)]
    fn axpy_f16_at(l: SimdLevel, y: &mut [f32], a: f32, x: &[f16]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::axpy_f16_avx512(y, a, x) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::axpy_f16_avx2(y, a, x) },
            _ => axpy_f16_scalar(y, a, x),
        }
    }
    #[allow(unreachable_patterns)]
    fn f32_to_f16_at(l: SimdLevel, s: &[f32], d: &mut [f16]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::f32_to_f16_avx512(s, d) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::f32_to_f16_avx2(s, d) },
            _ => f32_to_f16_scalar(s, d),
        }
    }
    #[allow(unreachable_patterns)]
    fn rms_norm_at(l: SimdLevel, x: &[f32], w: &[f32], eps: f32, o: &mut [f32]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::rms_norm_avx512(x, w, eps, o) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::rms_norm_avx2(x, w, eps, o) },
            _ => rms_norm_scalar(x, w, eps, o),
        }
    }
    #[allow(unreachable_patterns)]
    fn softmax_at(l: SimdLevel, x: &mut [f32]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::softmax_avx512(x) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::softmax_avx2(x) },
            _ => softmax_scalar(x),
        }
    }
    #[allow(unreachable_patterns)]
    fn silu_mul_at(l: SimdLevel, g: &mut [f32], u: &[f32]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::silu_mul_avx512(g, u) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::silu_mul_avx2(g, u) },
            _ => silu_mul_scalar(g, u),
        }
    }
    #[allow(unreachable_patterns)]
    fn gelu_mul_at(l: SimdLevel, g: &mut [f32], u: &[f32]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::gelu_mul_avx512(g, u) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::gelu_mul_avx2(g, u) },
            _ => gelu_mul_scalar(g, u),
        }
    }
    #[allow(unreachable_patterns)]
    fn add_at(l: SimdLevel, y: &mut [f32], x: &[f32]) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::add_avx512(y, x) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::add_avx2(y, x) },
            _ => add_scalar(y, x),
        }
    }
    #[allow(unreachable_patterns)]
    fn quantize_at(
        l: SimdLevel,
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        ds: &mut [f32],
        s: &mut [i16],
    ) {
        match l {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::quantize_row_q8_avx512(x, qs, d, ds, s) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::quantize_row_q8_avx2(x, qs, d, ds, s) },
            _ => quantize_row_q8_scalar(x, qs, d, ds, s),
        }
    }

    /// |got - want| <= rel · |want| + abs, with a message on failure.
    fn close(got: f32, want: f64, rel: f64, abs: f64, what: &str) {
        let err = (got as f64 - want).abs();
        assert!(
            err <= rel * want.abs() + abs || (got.is_nan() && want.is_nan()),
            "{what}: got {got}, want {want} (err {err})"
        );
    }

    #[test]
    fn weighted_rows_are_repeated_axpys_bit_for_bit() {
        // At the configured level (the one `axpy_rows_f16` dispatches on);
        // the AVX-512 body runs only on a CPU that has it.
        simd::levels_to_test();
        let mut rng = Rng(0x0bad_cafe_1234_5678);
        for n in [64usize, 128, 256, 100, 16] {
            let rows = 37;
            let x: Vec<f16> = rng
                .row(rows * n + 7, 2.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let w = rng.row(rows, 1.0);
            // Rows further apart than their length, as one KV head's are.
            let at = Rows {
                first: 3,
                stride: n + 3,
            };
            let y0 = rng.row(n, 1.0);
            let mut want = y0.clone();
            let used = (rows * n + 7 - 3 - n) / at.stride + 1;
            for (j, &a) in w[..used].iter().enumerate() {
                axpy_f16(&mut want, a, &x[at.at(j)..at.at(j) + n]);
            }
            let mut got = y0.clone();
            axpy_rows_f16(&mut got, &w[..used], &x, at);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "n = {n}");
        }
    }

    #[test]
    fn grouped_scores_are_single_dots_bit_for_bit() {
        // As above: at the configured level.
        simd::levels_to_test();
        let mut rng = Rng(0x5151_2323_4545_6767);
        for (hd, heads) in [
            (256usize, 4usize),
            (64, 3),
            (128, 6),
            (64, 1),
            (100, 2),
            (256, 1),
        ] {
            let keys = 29;
            let k: Vec<f16> = rng
                .row(keys * hd + 5, 2.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let q = rng.row(heads * hd, 1.0);
            let at = Rows {
                first: 2,
                stride: hd,
            };
            let ld = keys + 3;
            let mut got = vec![0f32; heads * ld];
            dot_rows_f16(&k, at, keys, &q, heads, hd, &mut got, ld);
            for h in 0..heads {
                for j in 0..keys {
                    let want = dot_f16(&k[at.at(j)..at.at(j) + hd], &q[h * hd..(h + 1) * hd]);
                    assert_eq!(
                        got[h * ld + j].to_bits(),
                        want.to_bits(),
                        "hd {hd}, head {h} of {heads}, key {j}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside x")]
    fn weighted_rows_outside_x_panic() {
        let x = vec![f16::ZERO; 100];
        let mut y = vec![0f32; 64];
        axpy_rows_f16(
            &mut y,
            &[1.0],
            &x,
            Rows {
                first: 40,
                stride: 64,
            },
        );
    }

    #[test]
    fn simd_levels_are_detected() {
        // Makes a silent fallback to scalar visible on SIMD machines.
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert!(simd::configured() >= SimdLevel::Avx2);
        }
        assert_eq!(simd::available()[0], SimdLevel::Scalar);
    }

    #[test]
    fn dots_match_f64() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for l in levels() {
            for n in LENS {
                let a = rng.row(n, 3.0);
                let b = rng.row(n + 5, 1.0); // longer: only the common part counts
                let k: Vec<f16> = rng.row(n, 2.0).into_iter().map(f16::from_f32).collect();
                let (mut r, mut m, mut rk, mut mk) = (0f64, 0f64, 0f64, 0f64);
                for i in 0..n {
                    r += a[i] as f64 * b[i] as f64;
                    m += (a[i] as f64 * b[i] as f64).abs();
                    rk += k[i].to_f64() * b[i] as f64;
                    mk += (k[i].to_f64() * b[i] as f64).abs();
                }
                let eps = f32::EPSILON as f64;
                let tol = |m: f64| 2.0 * eps * (n as f64).sqrt() * m;
                close(
                    dot_f32_at(l, &a, &b),
                    r,
                    0.0,
                    tol(m),
                    &format!("dot_f32 {l:?} n={n}"),
                );
                close(
                    dot_f16_at(l, &k, &b),
                    rk,
                    0.0,
                    tol(mk),
                    &format!("dot_f16 {l:?} n={n}"),
                );
                // Deterministic: same bits on a second call.
                assert_eq!(
                    dot_f32_at(l, &a, &b).to_bits(),
                    dot_f32_at(l, &a, &b).to_bits()
                );
            }
        }
    }

    #[test]
    fn axpy_and_add_match_scalar() {
        let mut rng = Rng(42);
        for l in levels() {
            for n in LENS {
                let y0 = rng.row(n, 2.0);
                let x: Vec<f16> = rng.row(n, 2.0).into_iter().map(f16::from_f32).collect();
                let a = rng.f();
                let mut y = y0.clone();
                axpy_f16_at(l, &mut y, a, &x);
                for i in 0..n {
                    let want = y0[i] as f64 + a as f64 * x[i].to_f64();
                    let mag = y0[i].abs() as f64 + (a as f64 * x[i].to_f64()).abs();
                    close(
                        y[i],
                        want,
                        0.0,
                        1.5 * f32::EPSILON as f64 * mag,
                        &format!("axpy {l:?} n={n} i={i}"),
                    );
                }
                // Values past the common length are untouched.
                let mut y = vec![7.0f32; n + 3];
                axpy_f16_at(l, &mut y, a, &x);
                assert_eq!(&y[n..], &[7.0; 3]);

                let xs = rng.row(n, 1.0);
                let mut y1 = y0.clone();
                let mut y2 = y0.clone();
                add_at(l, &mut y1, &xs);
                add_scalar(&mut y2, &xs);
                assert_eq!(y1, y2, "add {l:?} n={n}");
            }
        }
    }

    #[test]
    fn f32_to_f16_is_bit_identical_to_half() {
        let mut rng = Rng(7);
        let mut special = vec![
            0.0,
            -0.0,
            1.0,
            65504.0,
            65519.99,
            65520.0,
            1e6,
            -1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            5.960_464_5e-8,
            2.980_232_2e-8,
            2.980_233e-8,
            1e-10,
            6.103_515_6e-5,
            6.1e-5,
            // Exact ties between two f16 values: round to even.
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            -(1.0 + 1.0 / 2048.0),
        ];
        for _ in 0..2000 {
            let e = (rng.next() % 40) as i32 - 28;
            special.push(rng.f() * 2f32.powi(e));
            special.push(f32::from_bits(rng.next() as u32));
        }
        for l in levels() {
            for n in LENS.into_iter().chain([special.len()]) {
                let src = &special[special.len() - n..];
                let mut got = vec![f16::from_bits(0xABCD); n + 2];
                f32_to_f16_at(l, src, &mut got);
                for (i, (g, s)) in got.iter().zip(src).enumerate() {
                    let want = f16::from_f32(*s);
                    if s.is_nan() {
                        assert!(g.is_nan(), "{l:?} {s} -> {g}");
                    } else {
                        assert_eq!(g.to_bits(), want.to_bits(), "{l:?} n={n} i={i} {s:e}");
                    }
                }
                assert_eq!(got[n].to_bits(), 0xABCD, "{l:?}: wrote past the end");
            }
        }
    }

    #[test]
    fn rms_norm_is_ggmls_at_every_level() {
        // ggml_compute_forward_rms_norm_f32 then the weight's product: the
        // squares summed in f64 in order, mean and root in f32.  The f64
        // sums' order differs per level, which cannot move the f32 mean.
        let mut rng = Rng(7);
        for l in levels() {
            for n in LENS.into_iter().filter(|&n| n > 0) {
                let x = rng.row(n, 30.0);
                let w = rng.row(n, 2.0);
                let eps = 1e-6;
                let mut sum = 0f64;
                for v in &x {
                    sum += (v * v) as f64;
                }
                let mean = (sum / n as f64) as f32;
                let scale = 1.0f32 / (mean + eps).sqrt();
                let mut out = vec![0f32; n];
                rms_norm_at(l, &x, &w, eps, &mut out);
                for i in 0..n {
                    assert_eq!(out[i], x[i] * scale * w[i], "{l:?} n={n} i={i}");
                }
            }
        }
    }

    #[test]
    fn rms_norm_matches_f64() {
        let mut rng = Rng(99);
        for l in levels() {
            for n in LENS.into_iter().filter(|&n| n > 0) {
                let x = rng.row(n, 4.0);
                let w = rng.row(n, 1.5);
                let eps = 1e-5;
                let mut out = vec![0f32; n];
                rms_norm_at(l, &x, &w, eps, &mut out);
                let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
                let r = 1.0 / (ss + eps as f64).sqrt();
                for i in 0..n {
                    let want = x[i] as f64 * r * w[i] as f64;
                    close(
                        out[i],
                        want,
                        4e-7 * (n as f64).sqrt().max(4.0),
                        0.0,
                        &format!("rms {l:?} n={n}"),
                    );
                }
                let mut s = vec![0f32; n];
                rms_norm_scalar(&x, &w, eps, &mut s);
                for i in 0..n {
                    close(
                        out[i],
                        s[i] as f64,
                        1e-5,
                        0.0,
                        &format!("rms vs scalar {l:?} n={n}"),
                    );
                }
            }
        }
    }

    fn softmax_ref(x: &[f32]) -> Vec<f64> {
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let e: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn softmax_matches_f64() {
        let mut rng = Rng(1234);
        for l in levels() {
            for n in LENS.into_iter().chain([3000, 4099]).filter(|&n| n > 0) {
                for scale in [1.0, 20.0, 200.0] {
                    let x0 = rng.row(n, scale);
                    let want = softmax_ref(&x0);
                    let mut x = x0.clone();
                    softmax_at(l, &mut x);
                    let mut s = x0.clone();
                    softmax_scalar(&mut s);
                    for i in 0..n {
                        close(
                            x[i],
                            want[i],
                            4e-6,
                            1e-44,
                            &format!("softmax {l:?} n={n} s={scale}"),
                        );
                        close(
                            x[i],
                            s[i] as f64,
                            1e-5,
                            1e-37,
                            &format!("softmax vs scalar {l:?} n={n}"),
                        );
                    }
                    let mut y = x0.clone();
                    softmax_at(l, &mut y);
                    assert_eq!(x, y, "deterministic");
                }
            }
        }
    }

    #[test]
    fn softmax_masked() {
        let mut rng = Rng(5);
        for l in levels() {
            for n in LENS.into_iter().filter(|&n| n > 0) {
                // Causal-style mask: the second half is -inf.
                let mut x = rng.row(n, 5.0);
                let keep = n.div_ceil(2);
                for v in &mut x[keep..] {
                    *v = f32::NEG_INFINITY;
                }
                let want = softmax_ref(&x);
                softmax_at(l, &mut x);
                for i in 0..n {
                    close(x[i], want[i], 4e-6, 1e-44, &format!("masked {l:?} n={n}"));
                    if i >= keep {
                        assert_eq!(x[i].to_bits(), 0, "{l:?} masked entry not +0");
                    }
                }
                // All -inf but one: exactly one-hot.
                for &j in &[0, n / 2, n - 1] {
                    let mut x = vec![f32::NEG_INFINITY; n];
                    x[j] = rng.f() * 100.0;
                    softmax_at(l, &mut x);
                    for (i, v) in x.iter().enumerate() {
                        let want = if i == j { 1.0 } else { 0.0 };
                        assert_eq!(*v, want, "{l:?} one-hot n={n} j={j} i={i}");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate() {
        #[cfg(target_arch = "x86_64")]
        for l in levels() {
            use std::arch::x86_64::*;
            let mut xs: Vec<f32> = (-2100..=2000).map(|i| i as f32 * 0.0443).collect();
            xs.extend([
                0.0, -0.0, 88.7, 88.72, 88.73, 89.5, 1e10, -87.0, -100.0, -103.9, -104.5, -1e10,
            ]);
            xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
            for &x in &xs {
                let got = match l {
                    SimdLevel::Avx512 => unsafe {
                        let mut o = [0f32; 16];
                        _mm512_storeu_ps(o.as_mut_ptr(), x86::exp16(_mm512_set1_ps(x)));
                        o[0]
                    },
                    SimdLevel::Avx2 => unsafe {
                        let mut o = [0f32; 8];
                        _mm256_storeu_ps(o.as_mut_ptr(), x86::exp8(_mm256_set1_ps(x)));
                        o[0]
                    },
                    SimdLevel::Scalar => exp_spec(x),
                };
                if !x.is_nan() {
                    assert_eq!(
                        got.to_bits(),
                        exp_spec(x).to_bits(),
                        "exp({x}) {l:?}: not the scalar bits"
                    );
                }
                let want = (x as f64).exp();
                if x.is_nan() {
                    assert!(got.is_nan());
                } else if want > f32::MAX as f64 {
                    assert_eq!(got, f32::INFINITY, "exp({x})");
                } else if want < f32::MIN_POSITIVE as f64 {
                    // Subnormal results: absolute accuracy.
                    close(got, want, 0.0, 2e-45, &format!("exp({x}) {l:?}"));
                } else {
                    close(got, want, 3e-7, 0.0, &format!("exp({x}) {l:?}"));
                }
            }
        }
    }

    /// The specified order (module doc) at every level: the SIMD paths give
    /// the scalar code's bits, on every length (tails included) and on
    /// values spanning many magnitudes (where the order shows).
    #[test]
    fn every_level_gives_the_scalar_bits() {
        let mut rng = Rng(0x5eed_0bad_f00d_1234);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut lens: Vec<usize> = LENS.to_vec();
        lens.extend([63, 65, 127, 128, 200, 256, 1000]);
        for l in levels() {
            for &n in &lens {
                for scale in [1.0f32, 1e3, 1e-3] {
                    // Magnitudes spread over 2^±8, so that sums round.
                    let spread = |r: &mut Rng| -> Vec<f32> {
                        (0..n)
                            .map(|_| r.f() * scale * 2f32.powi((r.next() % 17) as i32 - 8))
                            .collect()
                    };
                    let a = spread(&mut rng);
                    let b = spread(&mut rng);
                    let k: Vec<f16> = spread(&mut rng).into_iter().map(f16::from_f32).collect();
                    let what = format!("{l:?} n={n} scale={scale}");
                    assert_eq!(
                        dot_f32_at(l, &a, &b).to_bits(),
                        dot_f32_scalar(&a, &b).to_bits(),
                        "dot_f32 {what}"
                    );
                    assert_eq!(
                        dot_f16_at(l, &k, &b).to_bits(),
                        dot_f16_scalar(&k, &b).to_bits(),
                        "dot_f16 {what}"
                    );
                    let (mut y1, mut y2) = (a.clone(), a.clone());
                    axpy_f16_at(l, &mut y1, 0.37, &k);
                    axpy_f16_scalar(&mut y2, 0.37, &k);
                    assert_eq!(bits(&y1), bits(&y2), "axpy {what}");
                    if n > 0 {
                        let (mut o1, mut o2) = (vec![0f32; n], vec![0f32; n]);
                        rms_norm_at(l, &a, &b, 1e-6, &mut o1);
                        rms_norm_scalar(&a, &b, 1e-6, &mut o2);
                        assert_eq!(bits(&o1), bits(&o2), "rms_norm {what}");
                    }
                    let x: Vec<f32> = a.iter().map(|v| v / scale * 8.0).collect();
                    let (mut s1, mut s2) = (x.clone(), x.clone());
                    softmax_at(l, &mut s1);
                    softmax_scalar(&mut s2);
                    assert_eq!(bits(&s1), bits(&s2), "softmax {what}");
                    let (mut g1, mut g2) = (x.clone(), x.clone());
                    silu_mul_at(l, &mut g1, &b);
                    silu_mul_scalar(&mut g2, &b);
                    assert_eq!(bits(&g1), bits(&g2), "silu {what}");
                    let (mut g1, mut g2) = (x.clone(), x.clone());
                    gelu_mul_at(l, &mut g1, &b);
                    gelu_mul_scalar(&mut g2, &b);
                    assert_eq!(bits(&g1), bits(&g2), "gelu {what}");
                }
            }
        }
    }

    #[test]
    fn silu_gelu_match_f64() {
        let mut rng = Rng(777);
        for l in levels() {
            for n in LENS {
                for scale in [1.0f32, 6.0, 30.0] {
                    let g0 = rng.row(n, scale);
                    let u = rng.row(n, 2.0);
                    let mut g = g0.clone();
                    silu_mul_at(l, &mut g, &u);
                    let mut gs = g0.clone();
                    silu_mul_scalar(&mut gs, &u);
                    for i in 0..n {
                        let x = g0[i] as f64;
                        let want = x / (1.0 + (-x).exp()) * u[i] as f64;
                        close(g[i], want, 1e-6, 1e-30, &format!("silu {l:?} x={x}"));
                        close(
                            g[i],
                            gs[i] as f64,
                            2e-6,
                            1e-38,
                            &format!("silu vs scalar {l:?} x={x}"),
                        );
                    }

                    let mut g = g0.clone();
                    gelu_mul_at(l, &mut g, &u);
                    let mut gs = g0.clone();
                    gelu_mul_scalar(&mut gs, &u);
                    for i in 0..n {
                        let x = g0[i] as f64;
                        let c = GELU_C as f64;
                        let y = c * (x + GELU_A as f64 * x * x * x);
                        // Same function, two forms: 0.5x(1+tanh y) = x/(1+e^-2y).
                        let want = x / (1.0 + (-2.0 * y).exp()) * u[i] as f64;
                        let want_tanh = 0.5 * x * (1.0 + y.tanh()) * u[i] as f64;
                        // The f32 argument 2y carries relative error ~2 ulp,
                        // which e^-2y turns into |2y|·2 ulp.
                        let rel = 1e-6 + 2.5e-7 * (2.0 * y).abs();
                        // The scalar tanh form loses accuracy where 1 + tanh(y)
                        // cancels (x well below 0): there, absolute accuracy
                        // relative to |x·u|.
                        let abs = if l == SimdLevel::Scalar {
                            4e-7 * (x * u[i] as f64).abs()
                        } else {
                            1e-30
                        };
                        close(g[i], want, rel, abs, &format!("gelu {l:?} x={x}"));
                        close(
                            g[i],
                            want_tanh,
                            rel,
                            abs + 1e-15,
                            &format!("gelu/tanh {l:?} x={x}"),
                        );
                        close(
                            g[i],
                            gs[i] as f64,
                            3e-6,
                            4e-7 * (x * u[i] as f64).abs(),
                            &format!("gelu vs scalar {l:?} x={x}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantize_row_q8_is_bit_identical_to_quantize_block() {
        let mut rng = Rng(31337);
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for nb in [1, 2, 3, 8, 64] {
            rows.push(rng.row(32 * nb, 1.0));
            rows.push(rng.row(32 * nb, 1e-3));
            rows.push(rng.row(32 * nb, 3e38));
            rows.push(vec![0.0; 32 * nb]);
            // Mixed magnitudes, zeros, exact ties (k + 0.5 after scaling).
            let mut r = rng.row(32 * nb, 10.0);
            for (i, v) in r.iter_mut().enumerate() {
                match i % 7 {
                    0 => *v = 0.0,
                    1 => *v = -0.0,
                    2 => *v = (i as f32 % 50.0) - 25.0 + 0.5,
                    3 => *v = 127.0,
                    _ => {}
                }
            }
            rows.push(r);
            // Tiny (subnormal scales), huge and non-finite values.
            let mut r = rng.row(32 * nb, 1e-39);
            r[0] = 1e-44;
            rows.push(r);
            let mut r = rng.row(32 * nb, 1.0);
            r[5] = f32::INFINITY;
            if nb > 1 {
                r[40] = f32::NAN;
                r[70 % (32 * nb)] = f32::NEG_INFINITY;
            }
            rows.push(r);
            rows.push(
                (0..32 * nb)
                    .map(|_| f32::from_bits(rng.next() as u32))
                    .collect(),
            );
        }
        // Values that land exactly on .5 after scaling by 127 / amax = 1.
        let mut r: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.5).collect();
        r[0] = 127.0;
        r[32] = -127.0;
        rows.push(r);

        for x in &rows {
            let k = x.len();
            let mut want = (
                vec![0i8; k],
                vec![0f32; k / 32],
                vec![0f32; k / 32],
                vec![0i16; k / 16],
            );
            for b in 0..k / 32 {
                crate::runtime::quant::act::quantize_block(
                    &x[b * 32..b * 32 + 32],
                    (&mut want.0[b * 32..b * 32 + 32]).try_into().unwrap(),
                    &mut want.1[b],
                    &mut want.2[b],
                    (&mut want.3[b * 2..b * 2 + 2]).try_into().unwrap(),
                );
            }
            for l in levels() {
                let mut got = (
                    vec![0i8; k],
                    vec![0f32; k / 32],
                    vec![0f32; k / 32],
                    vec![0i16; k / 16],
                );
                quantize_at(l, x, &mut got.0, &mut got.1, &mut got.2, &mut got.3);
                assert_eq!(got.0, want.0, "{l:?} qs k={k}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.1), bits(&want.1), "{l:?} d");
                assert_eq!(bits(&got.2), bits(&want.2), "{l:?} dsum");
                assert_eq!(got.3, want.3, "{l:?} s16");
            }
            // The public entry point.
            let mut got = (
                vec![0i8; k],
                vec![0f32; k / 32],
                vec![0f32; k / 32],
                vec![0i16; k / 16],
            );
            quantize_row_q8(x, &mut got.0, &mut got.1, &mut got.2, &mut got.3);
            assert_eq!(got.0, want.0);
            assert_eq!(got.3, want.3);
        }
    }

    type Quantizer<'a> = dyn Fn(&[f32], &mut [i8], &mut [f32], &mut [f32], &mut [i16]) + 'a;

    /// The Q8_K quantizer (blocks of 256) at every level against the
    /// portable one: random rows at several scales, zeros, ties in
    /// magnitude of both signs (the first one sets the scale's sign),
    /// subnormal, infinite and NaN values, and random bit patterns.
    #[test]
    fn quantize_row_q8k_gives_the_portable_bits() {
        let mut rng = Rng(0x05ee_d084);
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for nb in [1, 2, 3] {
            let k = 256 * nb;
            for scale in [1.0, 1e-3, 3e38, 1e-39] {
                rows.push(rng.row(k, scale));
            }
            rows.push(vec![0.0; k]);
            rows.push(vec![-0.0; k]);
            let mut r = rng.row(k, 1.0);
            r[17] = -2.0;
            r[200] = 2.0;
            rows.push(r);
            let mut r = rng.row(k, 1.0);
            r[3] = 2.0;
            r[100] = -2.0;
            rows.push(r);
            let mut r = rng.row(k, 10.0);
            for (i, v) in r.iter_mut().enumerate() {
                if i % 5 == 0 {
                    *v = (i % 50) as f32 - 25.0 + 0.5;
                }
            }
            rows.push(r);
            let mut r = rng.row(k, 1.0);
            r[9] = f32::NAN;
            rows.push(r.clone());
            r[250] = f32::NEG_INFINITY;
            rows.push(r);
            let mut r = vec![f32::NAN; k];
            r[k - 1] = 0.5;
            rows.push(r);
            rows.push((0..k).map(|_| f32::from_bits(rng.next() as u32)).collect());
        }
        for x in &rows {
            let k = x.len();
            let run = |f: &Quantizer<'_>| {
                let mut o = (
                    vec![0i8; k],
                    vec![0f32; k / 32],
                    vec![0f32; k / 32],
                    vec![0i16; k / 16],
                );
                f(x, &mut o.0, &mut o.1, &mut o.2, &mut o.3);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (o.0, bits(&o.1), bits(&o.2), o.3)
            };
            let want =
                run(&|x, q, d, ds, s| crate::runtime::quant::act::quantize_row_q8k(x, q, d, ds, s));
            for l in levels() {
                #[allow(unreachable_patterns)]
                let got = run(&|x, q, d, ds, s| match l {
                    #[cfg(target_arch = "x86_64")]
                    SimdLevel::Avx512 => unsafe { x86::quantize_row_q8k_avx512(x, q, d, ds, s) },
                    _ => crate::runtime::quant::act::quantize_row_q8k(x, q, d, ds, s),
                });
                assert_eq!(got, want, "{l:?} k={k} {:?}", &x[..4]);
            }
            assert_eq!(run(&quantize_row_q8k), want);
        }
    }

    #[test]
    fn public_entry_points_run() {
        let mut rng = Rng(3);
        let a = rng.row(100, 1.0);
        let b = rng.row(100, 1.0);
        let l = simd::configured();
        assert_eq!(dot_f32(&a, &b).to_bits(), dot_f32_at(l, &a, &b).to_bits());
        let mut x = a.clone();
        softmax(&mut x);
        let mut y = a.clone();
        softmax_at(l, &mut y);
        assert_eq!(x, y);
        let mut g = a.clone();
        silu_mul(&mut g, &b);
        let mut g2 = a.clone();
        silu_mul_at(l, &mut g2, &b);
        assert_eq!(g, g2);
        let mut g = a.clone();
        gelu_mul(&mut g, &b);
        let mut g2 = a.clone();
        gelu_mul_at(l, &mut g2, &b);
        assert_eq!(g, g2);
        let mut o = vec![0f32; 100];
        rms_norm(&a, &b, 1e-6, &mut o);
        let mut o2 = vec![0f32; 100];
        rms_norm_at(l, &a, &b, 1e-6, &mut o2);
        assert_eq!(o, o2);
        let k: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
        assert_eq!(dot_f16(&k, &b).to_bits(), dot_f16_at(l, &k, &b).to_bits());
        let mut h = vec![f16::ZERO; 100];
        f32_to_f16(&a, &mut h);
        assert_eq!(h, k);
        let mut y = b.clone();
        axpy_f16(&mut y, 0.5, &k);
        let mut y2 = b.clone();
        axpy_f16_at(l, &mut y2, 0.5, &k);
        assert_eq!(y, y2);
        let mut y = b.clone();
        add(&mut y, &a);
        let mut y2 = b.clone();
        add_scalar(&mut y2, &a);
        assert_eq!(y, y2);
    }
}
