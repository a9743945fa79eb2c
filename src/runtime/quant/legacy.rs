//! GGUF's "legacy" block types of 32 values: Q4_0, Q4_1, Q5_0, Q5_1 and
//! Q8_0, in ggml's block layouts:
//!
//! | type | bytes | layout | value |
//! | --- | --- | --- | --- |
//! | Q4_0 | 18 | f16 d, 16 bytes of nibbles | d · (q − 8) |
//! | Q4_1 | 20 | f16 d, f16 m, 16 bytes of nibbles | d · q + m |
//! | Q5_0 | 22 | f16 d, u32 qh, 16 bytes of nibbles | d · (q − 16) |
//! | Q5_1 | 24 | f16 d, f16 m, u32 qh, 16 bytes of nibbles | d · q + m |
//! | Q8_0 | 34 | f16 d, 32 × i8 | d · q |
//!
//! Element `j < 16` of a nibble block is the low nibble of byte `j`, element
//! `j + 16` its high nibble; the fifth bit of element `j` is bit `j` of the
//! little-endian `qh`.
//!
//! The dot kernels take activations already quantized to int8 blocks
//! ([`ActRow`]): inside each block of 32 the product is an exact integer
//! (offsets included), scaled once by `d_w · d_a` in f32; the minimum of
//! Q4_1 and Q5_1 adds `m · dsum` (`dsum = d_a · Σ q`).  Each weight block is
//! decoded once and used for every activation column, and every column has
//! its own accumulators, fed in the same order whatever the number of
//! columns, so a column's result is the same bits in any tile.
//!
//! The AVX-512 kernels work on two blocks (64 values) per 512-bit VNNI
//! instruction (`vpdpbusd`, unsigned × signed bytes): the types with an
//! offset (Q4_0, Q5_0, Q8_0) decode to signed weights `s` and flip the
//! activations to unsigned `q + 128`, so the product is
//! `Σ (q + 128) · s − 128 · Σ s`, the correction coming from the weights
//! alone (once per block, shared by the columns); Q4_1 and Q5_1 multiply
//! their unsigned codes by the signed activations directly.

use super::act::ActRow;
use super::{QuantDot, WType};
use crate::runtime::simd::SimdLevel;

// The types, as const-generic parameters of the kernels.
pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_0: u8 = 2;
pub(super) const Q5_1: u8 = 3;
pub(super) const Q8_0: u8 = 4;

/// Bytes per block.
pub(super) const fn block_bytes(t: u8) -> usize {
    match t {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

/// Whether the type has a minimum `m` (stored right after `d`).
pub(super) const fn has_min(t: u8) -> bool {
    t == Q4_1 || t == Q5_1
}

/// Offset of the quants (nibbles or bytes) in a block.
pub(super) const fn qs_offset(t: u8) -> usize {
    match t {
        Q4_0 => 2,
        Q4_1 => 4,
        Q5_0 => 6,
        Q5_1 => 8,
        _ => 2,
    }
}

/// Offset of `qh` in a Q5 block.
pub(super) const fn qh_offset(t: u8) -> usize {
    if t == Q5_0 {
        2
    } else {
        4
    }
}

fn type_code(ty: WType) -> u8 {
    match ty {
        WType::Q4_0 => Q4_0,
        WType::Q4_1 => Q4_1,
        WType::Q5_0 => Q5_0,
        WType::Q5_1 => Q5_1,
        WType::Q8_0 => Q8_0,
        _ => panic!("{} is not a legacy block type", ty.name()),
    }
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// One block: its scale, its minimum (0 for types without one) and its 32
/// integer weights — signed with the offset applied for Q4_0, Q5_0 and Q8_0,
/// the unsigned codes for Q4_1 and Q5_1.
#[inline(always)]
fn decode_block<const T: u8>(b: &[u8]) -> (f32, f32, [i8; 32]) {
    let d = f16_at(b, 0);
    let m = if has_min(T) { f16_at(b, 2) } else { 0.0 };
    let mut v = [0i8; 32];
    if T == Q8_0 {
        for (v, &q) in v.iter_mut().zip(&b[2..34]) {
            *v = q as i8;
        }
        return (d, m, v);
    }
    let qs = &b[qs_offset(T)..qs_offset(T) + 16];
    let qh = if T == Q5_0 || T == Q5_1 {
        let o = qh_offset(T);
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    } else {
        0
    };
    let offset: i8 = match T {
        Q4_0 => 8,
        Q5_0 => 16,
        _ => 0,
    };
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4) as u8;
        let hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
        v[j] = lo as i8 - offset;
        v[j + 16] = hi as i8 - offset;
    }
    (d, m, v)
}

/// Dequantizes one row of whole blocks of a legacy type into `out`
/// (`out.len()` values).
pub fn dequantize_row(ty: WType, w: &[u8], out: &mut [f32]) {
    match type_code(ty) {
        Q4_0 => dequantize::<Q4_0>(w, out),
        Q4_1 => dequantize::<Q4_1>(w, out),
        Q5_0 => dequantize::<Q5_0>(w, out),
        Q5_1 => dequantize::<Q5_1>(w, out),
        _ => dequantize::<Q8_0>(w, out),
    }
}

fn dequantize<const T: u8>(w: &[u8], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(32) && w.len() >= out.len() / 32 * block_bytes(T));
    for (b, o) in w.chunks_exact(block_bytes(T)).zip(out.chunks_exact_mut(32)) {
        let (d, m, v) = decode_block::<T>(b);
        for (o, &q) in o.iter_mut().zip(&v) {
            *o = if has_min(T) {
                q as f32 * d + m
            } else {
                q as f32 * d
            };
        }
    }
}

/// The dot kernel for legacy type `ty`: the best one at or below `level`.
pub fn dot_fn(ty: WType, level: SimdLevel) -> QuantDot {
    let t = type_code(ty);
    #[cfg(target_arch = "x86_64")]
    {
        if level >= SimdLevel::Avx512 {
            return match t {
                Q4_0 => avx512::dot::<Q4_0>,
                Q4_1 => avx512::dot::<Q4_1>,
                Q5_0 => avx512::dot::<Q5_0>,
                Q5_1 => avx512::dot::<Q5_1>,
                _ => avx512::dot::<Q8_0>,
            };
        }
        if level >= SimdLevel::Avx2 {
            return match t {
                Q4_0 => avx2::dot::<Q4_0>,
                Q4_1 => avx2::dot::<Q4_1>,
                Q5_0 => avx2::dot::<Q5_0>,
                Q5_1 => avx2::dot::<Q5_1>,
                _ => avx2::dot::<Q8_0>,
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    match t {
        Q4_0 => dot_scalar::<Q4_0>,
        Q4_1 => dot_scalar::<Q4_1>,
        Q5_0 => dot_scalar::<Q5_0>,
        Q5_1 => dot_scalar::<Q5_1>,
        _ => dot_scalar::<Q8_0>,
    }
}

/// Checks the kernel contract's lengths; returns the number of blocks.
#[inline(always)]
fn check<const T: u8>(w: &[u8], a: &[ActRow], out: &[f32]) -> usize {
    let nb = w.len() / block_bytes(T);
    assert!(!a.is_empty() && a.len() <= super::MAX_COLS && out.len() >= a.len());
    for r in a {
        assert!(r.qs.len() >= nb * 32 && r.d.len() >= nb && (!has_min(T) || r.dsum.len() >= nb));
    }
    nb
}

unsafe fn dot_scalar<const T: u8>(w: &[u8], a: &[ActRow], out: &mut [f32]) {
    match a.len() {
        1 => tile_scalar::<T, 1>(w, a, out),
        2 => tile_scalar::<T, 2>(w, a, out),
        3 => tile_scalar::<T, 3>(w, a, out),
        _ => tile_scalar::<T, 4>(w, a, out),
    }
}

fn tile_scalar<const T: u8, const C: usize>(w: &[u8], a: &[ActRow], out: &mut [f32]) {
    let nb = check::<T>(w, a, out);
    let a: &[ActRow; C] = a.try_into().unwrap();
    let mut acc = [0f32; C];
    for (b, blk) in w.chunks_exact(block_bytes(T)).take(nb).enumerate() {
        let (d, m, v) = decode_block::<T>(blk);
        for (acc, r) in acc.iter_mut().zip(a) {
            let q = &r.qs[b * 32..b * 32 + 32];
            let isum: i32 = v.iter().zip(q).map(|(&x, &y)| x as i32 * y as i32).sum();
            let mut t = isum as f32 * (d * r.d[b]);
            if has_min(T) {
                t += m * r.dsum[b];
            }
            *acc += t;
        }
    }
    out[..C].copy_from_slice(&acc);
}

/// Reads `N <= 8` f16 values at `p`, `p + stride`, … as eight f32 (zeros
/// past `N`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn f16x8_bits<const N: usize>(p: *const u8, stride: usize) -> [u64; 2] {
    let mut h = [0u64; 2];
    for i in 0..N {
        let v = std::ptr::read_unaligned(p.add(i * stride) as *const u16) as u64;
        h[i / 4] |= v << (16 * (i % 4));
    }
    h
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    pub unsafe fn dot<const T: u8>(w: &[u8], a: &[ActRow], out: &mut [f32]) {
        match a.len() {
            1 => tile::<T, 1>(w, a, out),
            2 => tile::<T, 2>(w, a, out),
            3 => tile::<T, 3>(w, a, out),
            _ => tile::<T, 4>(w, a, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const T: u8, const C: usize>(w: &[u8], a: &[ActRow], out: &mut [f32]) {
        let nb = check::<T>(w, a, out);
        let a: &[ActRow; C] = a.try_into().unwrap();
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        let mut macc = [_mm256_setzero_ps(); C];
        let wp = w.as_ptr();
        let bb = block_bytes(T);
        let mut b0 = 0;
        while b0 + 8 <= nb {
            group::<T, C, 8>(wp.add(b0 * bb), a, b0, &mut acc, &mut macc);
            b0 += 8;
        }
        let wp = wp.add(b0 * bb);
        match nb - b0 {
            1 => group::<T, C, 1>(wp, a, b0, &mut acc, &mut macc),
            2 => group::<T, C, 2>(wp, a, b0, &mut acc, &mut macc),
            3 => group::<T, C, 3>(wp, a, b0, &mut acc, &mut macc),
            4 => group::<T, C, 4>(wp, a, b0, &mut acc, &mut macc),
            5 => group::<T, C, 5>(wp, a, b0, &mut acc, &mut macc),
            6 => group::<T, C, 6>(wp, a, b0, &mut acc, &mut macc),
            7 => group::<T, C, 7>(wp, a, b0, &mut acc, &mut macc),
            _ => {}
        }
        for c in 0..C {
            let mut s = hsum(_mm256_add_ps(acc[c][0], acc[c][1]));
            if has_min(T) {
                s += hsum(macc[c]);
            }
            out[c] = s;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Eight f32 from `a[b0..b0 + N]`, zeros past `N`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<const N: usize>(a: &[f32], b0: usize) -> __m256 {
        if N == 8 {
            _mm256_loadu_ps(a.as_ptr().add(b0))
        } else {
            let mut t = [0f32; 8];
            t[..N].copy_from_slice(&a[b0..b0 + N]);
            _mm256_loadu_ps(t.as_ptr())
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn f16x8<const N: usize>(p: *const u8, stride: usize) -> __m256 {
        let [lo, hi] = f16x8_bits::<N>(p, stride);
        _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
    }

    /// `N` blocks from `wb` (block `b0` of the row) against every column.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn group<const T: u8, const C: usize, const N: usize>(
        wb: *const u8,
        a: &[ActRow; C],
        b0: usize,
        acc: &mut [[__m256; 2]; C],
        macc: &mut [__m256; C],
    ) {
        let bb = block_bytes(T);
        let d8 = f16x8::<N>(wb, bb);
        // Per column: the eight scales d_w · d_a, read back one at a time.
        let mut sc = [[0f32; 8]; C];
        for c in 0..C {
            let s = _mm256_mul_ps(d8, load8::<N>(a[c].d, b0));
            _mm256_storeu_ps(sc[c].as_mut_ptr(), s);
        }
        if has_min(T) {
            let m8 = f16x8::<N>(wb.add(2), bb);
            for c in 0..C {
                macc[c] = _mm256_fmadd_ps(m8, load8::<N>(a[c].dsum, b0), macc[c]);
            }
        }
        let nib = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for j in 0..N {
            let b = wb.add(j * bb);
            // The 32 weights as bytes: unsigned codes `u` for the types with
            // a minimum, signed values `s` for the others.
            let v = if T == Q8_0 {
                _mm256_loadu_si256(b.add(2) as *const __m256i)
            } else {
                let q = _mm_loadu_si128(b.add(qs_offset(T)) as *const __m128i);
                let lo = _mm_and_si128(q, nib);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), nib);
                let u = _mm256_set_m128i(hi, lo);
                match T {
                    Q4_0 => _mm256_sub_epi8(u, _mm256_set1_epi8(8)),
                    Q4_1 => u,
                    _ => {
                        let qh = std::ptr::read_unaligned(b.add(qh_offset(T)) as *const u32);
                        let bits = expand_bits(qh);
                        if T == Q5_1 {
                            _mm256_or_si256(u, _mm256_and_si256(bits, _mm256_set1_epi8(0x10)))
                        } else {
                            // u − 16 where the bit is clear: u | 0xF0.
                            _mm256_or_si256(u, _mm256_andnot_si256(bits, _mm256_set1_epi8(-16)))
                        }
                    }
                }
            };
            let signed = !has_min(T);
            let av = if signed { _mm256_abs_epi8(v) } else { v };
            for c in 0..C {
                let q = _mm256_loadu_si256(a[c].qs.as_ptr().add((b0 + j) * 32) as *const __m256i);
                // |s| · (q · sign s) = s · q; pairs of products fit in i16
                // (|s| ≤ 128, |q| ≤ 127).
                let q = if signed { _mm256_sign_epi8(q, v) } else { q };
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(av, q), ones);
                let f = _mm256_cvtepi32_ps(p);
                let s = _mm256_broadcast_ss(&sc[c][j]);
                acc[c][j & 1] = _mm256_fmadd_ps(f, s, acc[c][j & 1]);
            }
        }
    }

    /// Byte `i` = 0xFF where bit `i` of `qh` is set, else 0.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn expand_bits(qh: u32) -> __m256i {
        let v = _mm256_set1_epi32(qh as i32);
        let v = _mm256_shuffle_epi8(
            v,
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    pub unsafe fn dot<const T: u8>(w: &[u8], a: &[ActRow], out: &mut [f32]) {
        match a.len() {
            1 => tile::<T, 1>(w, a, out),
            2 => tile::<T, 2>(w, a, out),
            3 => tile::<T, 3>(w, a, out),
            _ => tile::<T, 4>(w, a, out),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const T: u8, const C: usize>(w: &[u8], a: &[ActRow], out: &mut [f32]) {
        let nb = check::<T>(w, a, out);
        let a: &[ActRow; C] = a.try_into().unwrap();
        let mut acc = [[_mm512_setzero_ps(); 2]; C];
        let mut macc = [_mm256_setzero_ps(); C];
        let wp = w.as_ptr();
        let bb = block_bytes(T);
        let mut b0 = 0;
        while b0 + 8 <= nb {
            group::<T, C, 8>(wp.add(b0 * bb), a, b0, &mut acc, &mut macc);
            b0 += 8;
        }
        let wp = wp.add(b0 * bb);
        match nb - b0 {
            1 => group::<T, C, 1>(wp, a, b0, &mut acc, &mut macc),
            2 => group::<T, C, 2>(wp, a, b0, &mut acc, &mut macc),
            3 => group::<T, C, 3>(wp, a, b0, &mut acc, &mut macc),
            4 => group::<T, C, 4>(wp, a, b0, &mut acc, &mut macc),
            5 => group::<T, C, 5>(wp, a, b0, &mut acc, &mut macc),
            6 => group::<T, C, 6>(wp, a, b0, &mut acc, &mut macc),
            7 => group::<T, C, 7>(wp, a, b0, &mut acc, &mut macc),
            _ => {}
        }
        for c in 0..C {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[c][0], acc[c][1]));
            if has_min(T) {
                s += _mm512_reduce_add_ps(_mm512_zextps256_ps512(macc[c]));
            }
            out[c] = s;
        }
    }

    /// Eight f32 from `a[b0..b0 + N]`, zeros past `N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<const N: usize>(a: &[f32], b0: usize) -> __m256 {
        if N == 8 {
            _mm256_loadu_ps(a.as_ptr().add(b0))
        } else {
            _mm256_maskz_loadu_ps(((1u32 << N) - 1) as u8, a.as_ptr().add(b0))
        }
    }

    /// The scales `d` and minimums `m` (zeros for types without) of `N`
    /// blocks from `wb`, zeros past `N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn scales<const T: u8, const N: usize>(wb: *const u8) -> (__m256, __m256) {
        let bb = block_bytes(T);
        let f = |p: *const u8| {
            let [lo, hi] = f16x8_bits::<N>(p, bb);
            _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
        };
        let m = if has_min(T) {
            f(wb.add(2))
        } else {
            _mm256_setzero_ps()
        };
        (f(wb), m)
    }

    /// The 64 weights of blocks `b` and `b + 1` (or of `b` alone, the upper
    /// half zero, when `!two`) as bytes: signed values for the types without
    /// a minimum, unsigned codes for the others.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn decode_pair<const T: u8>(b: *const u8, two: bool) -> __m512i {
        let bb = block_bytes(T);
        if T == Q8_0 {
            let lo = _mm256_loadu_si256(b.add(2) as *const __m256i);
            return if two {
                let hi = _mm256_loadu_si256(b.add(bb + 2) as *const __m256i);
                _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
            } else {
                _mm512_zextsi256_si512(lo)
            };
        }
        // 128-bit lanes: block b's nibbles twice, then block b + 1's twice;
        // lanes 1 and 3 shifted to their high nibbles.
        let q0 = _mm_loadu_si128(b.add(qs_offset(T)) as *const __m128i);
        let z = if two {
            let q1 = _mm_loadu_si128(b.add(bb + qs_offset(T)) as *const __m128i);
            _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(q0), 0xFF00, q1)
        } else {
            _mm512_maskz_broadcast_i32x4(0x00FF, q0)
        };
        let z = _mm512_mask_srli_epi16::<4>(z, 0xFF00_FF00, z);
        let u = _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
        let valid: u64 = if two { !0 } else { 0xFFFF_FFFF };
        match T {
            Q4_0 => _mm512_mask_sub_epi8(u, valid, u, _mm512_set1_epi8(8)),
            Q4_1 => u,
            _ => {
                let o = qh_offset(T);
                let mut k = std::ptr::read_unaligned(b.add(o) as *const u32) as u64;
                if two {
                    k |= (std::ptr::read_unaligned(b.add(bb + o) as *const u32) as u64) << 32;
                }
                if T == Q5_1 {
                    _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(0x10))
                } else {
                    _mm512_mask_sub_epi8(u, !k & valid, u, _mm512_set1_epi8(0x10))
                }
            }
        }
    }

    /// `N` blocks from `wb` (block `b0` of the row) against every column,
    /// two blocks per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn group<const T: u8, const C: usize, const N: usize>(
        wb: *const u8,
        a: &[ActRow; C],
        b0: usize,
        acc: &mut [[__m512; 2]; C],
        macc: &mut [__m256; C],
    ) {
        let bb = block_bytes(T);
        let (d8, m8) = scales::<T, N>(wb);
        // Per column: the eight scales d_w · d_a.
        let mut sc = [_mm512_setzero_ps(); C];
        for c in 0..C {
            sc[c] = _mm512_castps256_ps512(_mm256_mul_ps(d8, load8::<N>(a[c].d, b0)));
        }
        if has_min(T) {
            for c in 0..C {
                macc[c] = _mm256_fmadd_ps(m8, load8::<N>(a[c].dsum, b0), macc[c]);
            }
        }
        let flip = _mm512_set1_epi8(-128);
        let zero = _mm512_setzero_si512();
        for p in 0..N.div_ceil(2) {
            let two = 2 * p + 1 < N;
            let v = decode_pair::<T>(wb.add(2 * p * bb), two);
            let signed = !has_min(T);
            // −128 · Σ s over each group of four weights: with activations
            // flipped to q + 128, vpdpbusd from there gives Σ q · s exactly.
            let base = if signed {
                _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, flip, v))
            } else {
                zero
            };
            // Lanes 0..8 take block 2p's scale, lanes 8..16 block 2p + 1's.
            let idx = _mm512_inserti64x4(
                _mm512_set1_epi32(2 * p as i32),
                _mm256_set1_epi32(2 * p as i32 + 1),
                1,
            );
            for c in 0..C {
                let qp = a[c].qs.as_ptr().add((b0 + 2 * p) * 32);
                let q = if two {
                    _mm512_loadu_si512(qp as *const _)
                } else {
                    _mm512_zextsi256_si512(_mm256_loadu_si256(qp as *const __m256i))
                };
                let isum = if signed {
                    _mm512_dpbusd_epi32(base, _mm512_xor_si512(q, flip), v)
                } else {
                    _mm512_dpbusd_epi32(zero, v, q)
                };
                let f = _mm512_cvtepi32_ps(isum);
                let s = _mm512_permutexvar_ps(idx, sc[c]);
                acc[c][p & 1] = _mm512_fmadd_ps(f, s, acc[c][p & 1]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::quant::ActRows;
    use crate::runtime::simd;

    pub(crate) const TYPES: [WType; 5] = [
        WType::Q4_0,
        WType::Q4_1,
        WType::Q5_0,
        WType::Q5_1,
        WType::Q8_0,
    ];

    /// xorshift64*.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Uniform in [-1, 1).
        pub(crate) fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// The product of a dequantized row `wf` (raw blocks `w`) with a
    /// quantized activation row, in f64, as the kernels define it: the
    /// minimum of Q4_1 / Q5_1 blocks multiplies the stored `dsum` (ggml's
    /// f16-rounded `d · Σq`), the rest `d · q`.  Returns (product, Σ|terms|).
    pub(crate) fn exact_product(ty: WType, w: &[u8], wf: &[f32], a: &ActRow) -> (f64, f64) {
        let bb = ty.block_bytes();
        let (mut exact, mut mag) = (0f64, 0f64);
        for (b, blk) in wf.chunks_exact(32).enumerate() {
            let m = if matches!(ty, WType::Q4_1 | WType::Q5_1) {
                f16_at(w, b * bb + 2)
            } else {
                0.0
            };
            for (j, &wv) in blk.iter().enumerate() {
                let x = b * 32 + j;
                let p = (wv - m) as f64 * (a.d[b] as f64 * a.qs[x] as f64);
                exact += p;
                mag += p.abs();
            }
            let p = m as f64 * a.dsum[b] as f64;
            exact += p;
            mag += p.abs();
        }
        (exact, mag)
    }

    pub(crate) fn f16_bits(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    pub(crate) fn random_scale(r: &mut Rng) -> f32 {
        match r.below(12) {
            0 => 0.0,
            1 => 1e-8,
            2 => -1e-8,
            3 => 60000.0,
            4 => -60000.0,
            5 => 6.1e-5, // smallest normal f16
            _ => r.unit() * 0.1,
        }
    }

    /// A row of `nb` random blocks, with all-zero blocks and blocks of
    /// maximal codes mixed in.
    fn random_row(ty: WType, nb: usize, r: &mut Rng) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut w = vec![0u8; nb * bb];
        for blk in w.chunks_exact_mut(bb) {
            let kind = r.below(10);
            if kind == 0 {
                continue; // all zero
            }
            for x in blk.iter_mut() {
                *x = r.next() as u8;
            }
            if kind == 1 {
                // Maximal codes, all fifth bits set.
                for x in blk.iter_mut() {
                    *x = 0xFF;
                }
            }
            if kind == 2 {
                // Minimal codes (Q8_0: -128).
                let start = if ty == WType::Q8_0 { 2 } else { 4 };
                for x in blk[start..].iter_mut() {
                    *x = if ty == WType::Q8_0 { 0x80 } else { 0 };
                }
            }
            blk[0..2].copy_from_slice(&f16_bits(random_scale(r)));
            if matches!(ty, WType::Q4_1 | WType::Q5_1) {
                blk[2..4].copy_from_slice(&f16_bits(random_scale(r)));
            }
        }
        w
    }

    fn random_acts(k: usize, r: &mut Rng) -> Vec<f32> {
        let scale = match r.below(4) {
            0 => 1e4,
            1 => 1e-3,
            _ => 1.0,
        };
        (0..k)
            .map(|i| match r.below(10) {
                0 => 0.0,
                1 if i % 64 < 32 => 0.0,
                2 => r.unit() * 1e3 * scale,
                _ => r.unit() * scale,
            })
            .collect()
    }

    const KS: [usize; 11] = [32, 64, 96, 160, 224, 256, 288, 576, 640, 1056, 2048];

    #[test]
    fn kernels_match_the_dequantized_product() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut worst = 0f64;
        for ty in TYPES {
            for &k in &KS {
                for _ in 0..6 {
                    let nb = k / 32;
                    let w = random_row(ty, nb, &mut r);
                    let mut wf = vec![0f32; k];
                    dequantize_row(ty, &w, &mut wf);
                    let mut x = Vec::new();
                    for _ in 0..4 {
                        x.extend(random_acts(k, &mut r));
                    }
                    let mut acts = ActRows::new();
                    acts.quantize(&x, 4, k);
                    let rows: Vec<_> = (0..4).map(|i| acts.row(i)).collect();
                    for level in simd::available() {
                        let f = dot_fn(ty, level);
                        let mut out = [0f32; 4];
                        unsafe { f(&w, &rows, &mut out) };
                        for (c, row) in rows.iter().enumerate() {
                            let (exact, mag) = exact_product(ty, &w, &wf, row);
                            let err = (out[c] as f64 - exact).abs();
                            if mag > 0.0 {
                                worst = worst.max(err / mag);
                            }
                            assert!(
                                err <= 1e-5 * mag + 1e-30,
                                "{} {} k={k} col {c}: {} vs {exact} (Σ|wa| {mag})",
                                ty.name(),
                                level.name(),
                                out[c],
                            );
                        }
                    }
                }
            }
        }
        eprintln!("worst error / Σ|w·a|: {worst:e}");
    }

    #[test]
    fn a_column_gives_the_same_bits_in_any_tile() {
        let mut r = Rng(12345);
        for ty in TYPES {
            for &k in &KS {
                let w = random_row(ty, k / 32, &mut r);
                let mut x = Vec::new();
                for _ in 0..4 {
                    x.extend(random_acts(k, &mut r));
                }
                let mut acts = ActRows::new();
                acts.quantize(&x, 4, k);
                for level in simd::available() {
                    let f = dot_fn(ty, level);
                    let alone: Vec<u32> = (0..4)
                        .map(|c| {
                            let mut o = [0f32];
                            unsafe { f(&w, &[acts.row(c)], &mut o) };
                            o[0].to_bits()
                        })
                        .collect();
                    for n in 2..=4 {
                        for start in 0..4 {
                            let cols: Vec<usize> = (0..n).map(|i| (start + i) % 4).collect();
                            let rows: Vec<_> = cols.iter().map(|&c| acts.row(c)).collect();
                            let mut o = vec![0f32; n];
                            unsafe { f(&w, &rows, &mut o) };
                            for (i, &c) in cols.iter().enumerate() {
                                assert_eq!(
                                    o[i].to_bits(),
                                    alone[c],
                                    "{} {} k={k}: column {c} at {i} of {n}",
                                    ty.name(),
                                    level.name()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dequantizes_hand_built_blocks() {
        // d = 0.5 and m = -1 are exact in f16: 0x3800 and 0xBC00.
        let d = [0x00, 0x38];
        let m = [0x00, 0xBC];
        // Nibble bytes: byte j holds element j (low) and j + 16 (high);
        // element j = j % 16, element j + 16 = 15 - j.
        let nibbles: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let lo: Vec<f32> = (0..16).map(|j| j as f32).collect();
        let hi: Vec<f32> = (0..16).map(|j| (15 - j) as f32).collect();
        let codes: Vec<f32> = lo.iter().chain(&hi).copied().collect();
        // Fifth bits: elements 1, 3 and 16..=31 (qh = 0xFFFF000A).
        let qh = 0xFFFF_000Au32.to_le_bytes();
        let fifth = |j: usize| {
            if j == 1 || j == 3 || j >= 16 {
                16.0
            } else {
                0.0
            }
        };

        let check = |ty: WType, block: Vec<u8>, want: Vec<f32>| {
            assert_eq!(block.len(), ty.block_bytes());
            let mut out = vec![0f32; 32];
            dequantize_row(ty, &block, &mut out);
            assert_eq!(out, want, "{}", ty.name());
        };

        let q4_0 = [&d[..], &nibbles].concat();
        check(
            WType::Q4_0,
            q4_0,
            codes.iter().map(|c| 0.5 * (c - 8.0)).collect(),
        );
        let q4_1 = [&d[..], &m, &nibbles].concat();
        check(
            WType::Q4_1,
            q4_1,
            codes.iter().map(|c| 0.5 * c - 1.0).collect(),
        );
        let q5_0 = [&d[..], &qh, &nibbles].concat();
        check(
            WType::Q5_0,
            q5_0,
            (0..32)
                .map(|j| 0.5 * (codes[j] + fifth(j) - 16.0))
                .collect(),
        );
        let q5_1 = [&d[..], &m, &qh, &nibbles].concat();
        check(
            WType::Q5_1,
            q5_1,
            (0..32).map(|j| 0.5 * (codes[j] + fifth(j)) - 1.0).collect(),
        );
        // Q8_0: values -128, -127, ..., and 127 at the end.
        let mut q8: Vec<u8> = d.to_vec();
        let vals: Vec<i8> = (0..32)
            .map(|j| if j == 31 { 127 } else { (-128 + 8 * j) as i8 })
            .collect();
        q8.extend(vals.iter().map(|&v| v as u8));
        check(
            WType::Q8_0,
            q8,
            vals.iter().map(|&v| 0.5 * v as f32).collect(),
        );
        // Two blocks in a row: the second block's scale applies to it alone.
        let mut two = [&d[..], &nibbles].concat();
        two.extend([0x00, 0x40]); // 2.0
        two.extend(std::iter::repeat_n(0x88, 16)); // all codes 8
        let mut out = vec![1f32; 64];
        dequantize_row(WType::Q4_0, &two, &mut out);
        assert!(out[32..].iter().all(|&v| v == 0.0));
        assert_eq!(out[0], -4.0);
        assert_eq!(out[31], 0.5 * (0.0 - 8.0));
    }
}
