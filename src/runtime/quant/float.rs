//! Float weights (F32, F16, BF16: GGUF's raw little-endian bytes) against
//! f32 activations.
//!
//! Every kernel is a tile generic over the number of activation columns
//! `N`: each column has its own accumulators and sees the same operations
//! in the same order whatever `N` is and wherever the column sits, so a
//! column's result is bit-identical whether it is computed alone or beside
//! others.  Weight bytes may be unaligned; rows may have any length.
//!
//! Every level computes one specified order, so a result is the same bits
//! on every CPU: 16 lanes, value `i` fused-multiply-added into lane
//! `i % 16` in increasing `i`, the lanes then summed pairwise (`l + 8`,
//! `l + 4`, `l + 2`, `l + 1`; `ops::fold16`).

#![allow(clippy::needless_range_loop)]

use super::{FloatDot, WType};
use crate::runtime::simd::SimdLevel;

/// The weight encodings, as const-generic tags.
const TF32: u8 = 0;
const TF16: u8 = 1;
const TBF16: u8 = 2;

/// Bytes per value of an encoding tag.
const fn elem_bytes(t: u8) -> usize {
    if t == TF32 {
        4
    } else {
        2
    }
}

/// Dequantizes one row of F32, F16 or BF16 weights: `out.len()` values.
pub fn dequantize_row(ty: WType, w: &[u8], out: &mut [f32]) {
    match ty {
        WType::F32 => {
            assert!(w.len() >= out.len() * 4);
            for (o, b) in out.iter_mut().zip(w.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WType::F16 => {
            assert!(w.len() >= out.len() * 2);
            for (o, b) in out.iter_mut().zip(w.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        WType::BF16 => {
            assert!(w.len() >= out.len() * 2);
            for (o, b) in out.iter_mut().zip(w.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        _ => panic!("float::dequantize_row: {} is not a float type", ty.name()),
    }
}

#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Weight `i` of a row of encoding `T`, scalar.
#[inline(always)]
fn load_scalar<const T: u8>(w: &[u8], i: usize) -> f32 {
    if T == TF32 {
        f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]])
    } else if T == TF16 {
        half::f16::from_bits(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])).to_f32()
    } else {
        bf16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]))
    }
}

/// The dot kernel for float weights of type `ty`: the best one at or below
/// `level` (which the caller has checked the CPU supports).
pub fn dot_fn(ty: WType, level: SimdLevel) -> FloatDot {
    #[cfg(target_arch = "x86_64")]
    {
        match (ty, level) {
            (WType::F32, SimdLevel::Avx512) => return x86::entry512::<TF32>,
            (WType::F16, SimdLevel::Avx512) => return x86::entry512::<TF16>,
            (WType::BF16, SimdLevel::Avx512) => return x86::entry512::<TBF16>,
            (WType::F32, SimdLevel::Avx2) => return x86::entry256::<TF32>,
            (WType::F16, SimdLevel::Avx2) => return x86::entry256::<TF16>,
            (WType::BF16, SimdLevel::Avx2) => return x86::entry256::<TBF16>,
            _ => {}
        }
    }
    let _ = level;
    match ty {
        WType::F32 => entry_scalar::<TF32>,
        WType::F16 => entry_scalar::<TF16>,
        WType::BF16 => entry_scalar::<TBF16>,
        _ => panic!("float::dot_fn: {} is not a float type", ty.name()),
    }
}

/// Row length of `w` for encoding `T`, after checking the shapes.
#[inline(always)]
fn check<const T: u8>(w: &[u8], a: &[&[f32]], out: &[f32]) -> usize {
    let n = w.len() / elem_bytes(T);
    assert!(
        !a.is_empty() && a.len() <= super::MAX_COLS && out.len() == a.len(),
        "float dot: bad column count"
    );
    assert!(
        a.iter().all(|c| c.len() >= n),
        "float dot: short activation row"
    );
    n
}

// ---------------------------------------------------------------- scalar

/// Lanes of the specified order.
const SL: usize = 16;

unsafe fn entry_scalar<const T: u8>(w: &[u8], a: &[&[f32]], out: &mut [f32]) {
    let n = check::<T>(w, a, out);
    match a.len() {
        1 => dot_scalar::<T, 1>(w, a, out, n),
        2 => dot_scalar::<T, 2>(w, a, out, n),
        3 => dot_scalar::<T, 3>(w, a, out, n),
        _ => dot_scalar::<T, 4>(w, a, out, n),
    }
}

fn dot_scalar<const T: u8, const N: usize>(w: &[u8], a: &[&[f32]], out: &mut [f32], n: usize) {
    let mut acc = [[0f32; SL]; N];
    let full = n / SL * SL;
    let eb = elem_bytes(T);
    for (k, wc) in w[..full * eb].chunks_exact(SL * eb).enumerate() {
        let mut wv = [0f32; SL];
        for l in 0..SL {
            wv[l] = load_scalar::<T>(wc, l);
        }
        for c in 0..N {
            let ac = &a[c][k * SL..k * SL + SL];
            for l in 0..SL {
                acc[c][l] = wv[l].mul_add(ac[l], acc[c][l]);
            }
        }
    }
    for j in full..n {
        let wv = load_scalar::<T>(w, j);
        for c in 0..N {
            acc[c][j - full] = wv.mul_add(a[c][j], acc[c][j - full]);
        }
    }
    for c in 0..N {
        out[c] = crate::runtime::ops::fold16(&acc[c]);
    }
}

// ---------------------------------------------------------------- x86

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{check, TF16, TF32};
    use std::arch::x86_64::*;

    // ------------------------------------------------------------ AVX2

    /// 8 weights from `w + i` (in values) as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn ld8<const T: u8>(w: *const u8, i: usize) -> __m256 {
        if T == TF32 {
            _mm256_loadu_ps(w.add(4 * i) as *const f32)
        } else if T == TF16 {
            _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i))
        } else {
            let h = _mm_loadu_si128(w.add(2 * i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    pub(super) unsafe fn entry256<const T: u8>(w: &[u8], a: &[&[f32]], out: &mut [f32]) {
        let n = check::<T>(w, a, out);
        match a.len() {
            1 => dot256::<T, 1>(w, a, out, n),
            2 => dot256::<T, 2>(w, a, out, n),
            3 => dot256::<T, 3>(w, a, out, n),
            _ => dot256::<T, 4>(w, a, out, n),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot256<const T: u8, const N: usize>(
        w: &[u8],
        a: &[&[f32]],
        out: &mut [f32],
        n: usize,
    ) {
        let wp = w.as_ptr();
        let mut ap = [std::ptr::null::<f32>(); N];
        for c in 0..N {
            ap[c] = a[c].as_ptr();
        }
        let mut acc0 = [_mm256_setzero_ps(); N];
        let mut acc1 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i + 16 <= n {
            let w0 = ld8::<T>(wp, i);
            let w1 = ld8::<T>(wp, i + 8);
            for c in 0..N {
                acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(ap[c].add(i)), acc0[c]);
                acc1[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(ap[c].add(i + 8)), acc1[c]);
            }
            i += 16;
        }
        let mut high = false;
        if i + 8 <= n {
            let w0 = ld8::<T>(wp, i);
            for c in 0..N {
                acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(ap[c].add(i)), acc0[c]);
            }
            i += 8;
            high = true;
        }
        if i < n {
            // Tail of 1..=7 values, zero-padded to a whole vector.
            let rem = n - i;
            let eb = super::elem_bytes(T);
            let mut wb = [0u8; 32];
            std::ptr::copy_nonoverlapping(wp.add(i * eb), wb.as_mut_ptr(), rem * eb);
            let w1 = ld8::<T>(wb.as_ptr(), 0);
            let m = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(rem as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            // Lanes 8.. after a whole 8, lanes 0.. otherwise.
            for c in 0..N {
                let av = _mm256_maskload_ps(ap[c].add(i), m);
                if high {
                    acc1[c] = _mm256_fmadd_ps(w1, av, acc1[c]);
                } else {
                    acc0[c] = _mm256_fmadd_ps(w1, av, acc0[c]);
                }
            }
        }
        for c in 0..N {
            out[c] = hsum256(_mm256_add_ps(acc0[c], acc1[c]));
        }
    }

    // ------------------------------------------------------------ AVX-512

    /// 16 weights from `w + i` (in values) as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn ld16<const T: u8>(w: *const u8, i: usize) -> __m512 {
        if T == TF32 {
            _mm512_loadu_ps(w.add(4 * i) as *const f32)
        } else if T == TF16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * i) as *const __m256i))
        } else {
            let h = _mm256_loadu_si256(w.add(2 * i) as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }

    /// The lanes of `m` of 16 weights from `w + i`, zeros elsewhere; reads
    /// no memory outside the lanes of `m`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn ld16_mask<const T: u8>(w: *const u8, i: usize, m: __mmask16) -> __m512 {
        if T == TF32 {
            _mm512_maskz_loadu_ps(m, w.add(4 * i) as *const f32)
        } else if T == TF16 {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.add(2 * i) as *const i16))
        } else {
            let h = _mm256_maskz_loadu_epi16(m, w.add(2 * i) as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn hsum512(v: __m512) -> f32 {
        let h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    pub(super) unsafe fn entry512<const T: u8>(w: &[u8], a: &[&[f32]], out: &mut [f32]) {
        let n = check::<T>(w, a, out);
        match a.len() {
            1 => dot512::<T, 1>(w, a, out, n),
            2 => dot512::<T, 2>(w, a, out, n),
            3 => dot512::<T, 3>(w, a, out, n),
            _ => dot512::<T, 4>(w, a, out, n),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn dot512<const T: u8, const N: usize>(
        w: &[u8],
        a: &[&[f32]],
        out: &mut [f32],
        n: usize,
    ) {
        let wp = w.as_ptr();
        let mut ap = [std::ptr::null::<f32>(); N];
        for c in 0..N {
            ap[c] = a[c].as_ptr();
        }
        let mut acc = [_mm512_setzero_ps(); N];
        let mut i = 0;
        while i + 16 <= n {
            let w0 = ld16::<T>(wp, i);
            for c in 0..N {
                acc[c] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(ap[c].add(i)), acc[c]);
            }
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u16 << (n - i)) - 1;
            let w1 = ld16_mask::<T>(wp, i, m);
            for c in 0..N {
                let av = _mm512_maskz_loadu_ps(m, ap[c].add(i));
                acc[c] = _mm512_fmadd_ps(w1, av, acc[c]);
            }
        }
        for c in 0..N {
            out[c] = hsum512(acc[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::simd;

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
    }

    const TYPES: [WType; 3] = [WType::F32, WType::F16, WType::BF16];
    const LENS: [usize; 14] = [1, 7, 8, 15, 16, 17, 33, 63, 64, 65, 100, 129, 640, 1000];

    /// A random row of `n` weights of type `ty`, as bytes, starting at byte
    /// offset 1 of the returned buffer (so SIMD loads are unaligned).
    fn weights(ty: WType, n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut b = vec![0u8];
        for _ in 0..n {
            let v = rng.f() * 2.0;
            match ty {
                WType::F32 => b.extend_from_slice(&v.to_le_bytes()),
                WType::F16 => b.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
                _ => b.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
            }
        }
        b
    }

    fn acts(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.f()).collect()
    }

    #[test]
    fn dequantize_known_patterns() {
        let f16s: [(u16, f32); 9] = [
            (0x3C00, 1.0),
            (0xC000, -2.0),
            (0x7BFF, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0400, 6.103_515_6e-5),
            (0x3555, 0.333_251_95),
            (0x7C00, f32::INFINITY),
            (0xFC00, f32::NEG_INFINITY),
            (0x0000, 0.0),
        ];
        let w: Vec<u8> = f16s.iter().flat_map(|(b, _)| b.to_le_bytes()).collect();
        let mut out = vec![0f32; f16s.len()];
        dequantize_row(WType::F16, &w, &mut out);
        for (o, (b, v)) in out.iter().zip(&f16s) {
            assert_eq!(o.to_bits(), v.to_bits(), "f16 {b:#06x}");
        }
        // -0.0 keeps its sign.
        dequantize_row(WType::F16, &0x8000u16.to_le_bytes(), &mut out[..1]);
        assert_eq!(out[0].to_bits(), 0x8000_0000);

        let bf16s: [(u16, f32); 7] = [
            (0x3F80, 1.0),
            (0xC040, -3.0),
            (0x4049, 3.140625),
            (0x3E80, 0.25),
            (0x7F80, f32::INFINITY),
            (0x0001, f32::from_bits(0x0001_0000)),
            (0x8000, -0.0),
        ];
        let w: Vec<u8> = bf16s.iter().flat_map(|(b, _)| b.to_le_bytes()).collect();
        let mut out = vec![0f32; bf16s.len()];
        dequantize_row(WType::BF16, &w, &mut out);
        for (o, (b, v)) in out.iter().zip(&bf16s) {
            assert_eq!(o.to_bits(), v.to_bits(), "bf16 {b:#06x}");
        }

        let vals = [1.5f32, -0.125, 3.0e38, f32::MIN_POSITIVE];
        let w: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0f32; 4];
        dequantize_row(WType::F32, &w, &mut out);
        assert_eq!(out, vals);
    }

    /// Every kernel with one-hot activations returns the dequantized weight
    /// itself: the SIMD conversions agree with the scalar ones.
    #[test]
    fn one_hot_matches_dequantize() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for ty in TYPES {
            for level in simd::levels_to_test() {
                let n = 37;
                let wb = weights(ty, n, &mut rng);
                let w = &wb[1..];
                let mut deq = vec![0f32; n];
                dequantize_row(ty, w, &mut deq);
                let f = dot_fn(ty, level);
                for i in 0..n {
                    let mut a = vec![0f32; n];
                    a[i] = 1.0;
                    let mut out = [0f32];
                    unsafe { f(w, &[&a], &mut out) };
                    assert_eq!(out[0].to_bits(), deq[i].to_bits(), "{ty:?} {level:?} {i}");
                }
            }
        }
    }

    #[test]
    fn dot_matches_f64_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for ty in TYPES {
            for level in simd::levels_to_test() {
                let f = dot_fn(ty, level);
                for n in LENS {
                    for _ in 0..4 {
                        let wb = weights(ty, n, &mut rng);
                        let w = &wb[1..];
                        let mut deq = vec![0f32; n];
                        dequantize_row(ty, w, &mut deq);
                        let cols: Vec<Vec<f32>> = (0..4).map(|_| acts(n, &mut rng)).collect();
                        let a: Vec<&[f32]> = cols.iter().map(|c| c.as_slice()).collect();
                        let mut out = [0f32; 4];
                        unsafe { f(w, &a, &mut out) };
                        for c in 0..4 {
                            let (mut r, mut m) = (0f64, 0f64);
                            for i in 0..n {
                                let p = deq[i] as f64 * cols[c][i] as f64;
                                r += p;
                                m += p.abs();
                            }
                            let err = (out[c] as f64 - r).abs();
                            let tol = 4.0 * f32::EPSILON as f64 * (n as f64).sqrt() * m + 1e-30;
                            assert!(
                                err <= tol,
                                "{ty:?} {level:?} n={n} col={c}: {} vs {r} (err {err}, tol {tol})",
                                out[c]
                            );
                        }
                    }
                }
            }
        }
    }

    /// A column's result does not depend on how many columns are computed
    /// with it nor on its position among them.
    #[test]
    fn columns_are_bit_identical() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let orders: [&[usize]; 9] = [
            &[0],
            &[3],
            &[1, 0],
            &[2, 3],
            &[3, 1, 2],
            &[0, 2, 1],
            &[0, 1, 2, 3],
            &[3, 2, 1, 0],
            &[2, 0, 3, 1],
        ];
        for ty in TYPES {
            for level in simd::levels_to_test() {
                let f = dot_fn(ty, level);
                for n in LENS {
                    let wb = weights(ty, n, &mut rng);
                    let w = &wb[1..];
                    let cols: Vec<Vec<f32>> = (0..4).map(|_| acts(n, &mut rng)).collect();
                    let mut alone = [0f32; 4];
                    for c in 0..4 {
                        let mut o = [0f32];
                        unsafe { f(w, &[&cols[c]], &mut o) };
                        alone[c] = o[0];
                    }
                    for ord in orders {
                        let a: Vec<&[f32]> = ord.iter().map(|&c| cols[c].as_slice()).collect();
                        let mut out = vec![0f32; ord.len()];
                        unsafe { f(w, &a, &mut out) };
                        for (k, &c) in ord.iter().enumerate() {
                            assert_eq!(
                                out[k].to_bits(),
                                alone[c].to_bits(),
                                "{ty:?} {level:?} n={n} order={ord:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The specified order (module doc): every level gives the portable
    /// kernel's bits, on every length.
    #[test]
    fn every_level_gives_the_portable_bits() {
        let mut rng = Rng(0x51ab_1e00_0000_0004);
        for ty in TYPES {
            let portable = dot_fn(ty, SimdLevel::Scalar);
            for n in LENS.iter().copied().chain([63, 65, 100, 1000]) {
                let wb = weights(ty, n, &mut rng);
                let w = &wb[1..];
                let cols: Vec<Vec<f32>> = (0..4).map(|_| acts(n, &mut rng)).collect();
                let a: Vec<&[f32]> = cols.iter().map(|c| c.as_slice()).collect();
                let mut want = [0f32; 4];
                unsafe { portable(w, &a, &mut want) };
                for level in simd::levels_to_test() {
                    let mut got = [1f32; 4];
                    unsafe { dot_fn(ty, level)(w, &a, &mut got) };
                    for c in 0..4 {
                        assert_eq!(
                            got[c].to_bits(),
                            want[c].to_bits(),
                            "{ty:?} {level:?} n={n}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_row_is_zero() {
        for ty in TYPES {
            for level in simd::levels_to_test() {
                let mut out = [1f32; 2];
                let e: &[f32] = &[];
                unsafe { dot_fn(ty, level)(&[], &[e, e], &mut out) };
                assert_eq!(out, [0.0, 0.0]);
            }
        }
    }
}
