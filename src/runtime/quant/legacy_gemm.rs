//! Packed GEMM kernels for the legacy block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0), for AVX-512 VNNI and for AVX2 (the same layout; the AVX2 kernels
//! give the same bits, see `mod avx2`): [`PACK_ROWS`] = 8 weight rows
//! interleaved so that one VNNI
//! instruction (`vpdpbusd` on 256 bits) multiplies four weights of each of
//! the 8 rows by the same four activations (one 32-bit group of a column,
//! broadcast), giving partial sums for the 8 rows in 8 lanes.  The 8 rows'
//! block scales are then one vector: a block costs one conversion, one
//! multiply and one FMA per column for all 8 rows.
//!
//! # Packed layout
//!
//! A group of 8 rows of `nb` blocks each is stored block after block (one
//! sequential stream; separate regions per part streamed from memory at
//! half the speed); block `b` of the 8 rows is, in this order:
//!
//! | part | bytes | contents |
//! | --- | --- | --- |
//! | scales | 16 | the 8 rows' f16 `d` |
//! | minimums (Q4_1, Q5_1) | 16 | the 8 rows' f16 `m` |
//! | fifth bits (Q5 only) | 32 | eight `u32` masks `i`; bits `4r..4r + 4` of mask `i` are bits `4i..4i + 4` of row `r`'s `qh` |
//! | quants | 128 (nibble types), 256 (Q8_0) | 32-byte chunks `m`; bytes `4r..4r + 4` of a chunk are bytes `4m..4m + 4` of row `r`'s quants |
//!
//! The parts add up to `8 ·` the block size, so a packed group
//! has exactly the bytes of the 8 rows.  Q8_0's bytes are stored with the
//! sign bit flipped (`s + 128`, unsigned).
//!
//! Nibble chunk `m` holds elements `4m..4m + 4` (low nibbles) and
//! `16 + 4m..` (high nibbles) of each row, so its low nibbles pair with the
//! activations' 32-bit group `m` and its high nibbles with group `m + 4`.
//!
//! # Arithmetic
//!
//! The weights enter `vpdpbusd` as unsigned codes `u` (Q4: 0..16, Q5:
//! 0..32, Q8_0: 0..256) against the signed activations `q`.  The types with
//! an offset `o` (Q4_0: 8, Q5_0: 16, Q8_0: 128) start each block's integer
//! sum at `−o · Σ q` (from the activations' half-block sums `s16`), so each
//! lane holds exactly `Σ s · q` for its row; Q4_1 and Q5_1 add `m · dsum`
//! in a separate accumulator, as the per-row kernels do.  Every column has
//! its own accumulators and the same operations in the same order whatever
//! the number of columns, so a column's results are the same bits in any
//! tile.

use super::act::ActRow;
use super::{GemmFn, PackFn, WType, MAX_COLS, PACK_ROWS};
use crate::runtime::simd::SimdLevel;

// The types and their GGUF block layout, as legacy.rs defines them.
use super::legacy::{block_bytes, has_min, qh_offset, qs_offset, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

const fn is_q5(t: u8) -> bool {
    t == Q5_0 || t == Q5_1
}

/// Quant bytes of one block of the 8 rows in the packed layout.
const fn quant_bytes(t: u8) -> usize {
    if t == Q8_0 {
        256
    } else {
        128
    }
}

/// What the unsigned codes exceed the signed values by (0 for the types
/// with a minimum).
const fn offset(t: u8) -> i32 {
    match t {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8_0 => 128,
        _ => 0,
    }
}

/// The packed kernel for `ty` at `level` (or the best below it), or `None`
/// when there is none (then the caller uses the per-row dot kernels).
pub fn gemm(ty: WType, level: SimdLevel) -> Option<(PackFn, GemmFn)> {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= SimdLevel::Avx512 {
            let k: (PackFn, GemmFn) = match ty {
                WType::Q4_0 => (pack::<Q4_0>, avx512::gemm::<Q4_0>),
                WType::Q4_1 => (pack::<Q4_1>, avx512::gemm::<Q4_1>),
                WType::Q5_0 => (pack::<Q5_0>, avx512::gemm::<Q5_0>),
                WType::Q5_1 => (pack::<Q5_1>, avx512::gemm::<Q5_1>),
                WType::Q8_0 => (pack::<Q8_0>, avx512::gemm::<Q8_0>),
                _ => return None,
            };
            return Some(k);
        }
        if level >= SimdLevel::Avx2 {
            let k: (PackFn, GemmFn) = match ty {
                WType::Q4_0 => (pack::<Q4_0>, avx2::gemm::<Q4_0>),
                WType::Q4_1 => (pack::<Q4_1>, avx2::gemm::<Q4_1>),
                WType::Q5_0 => (pack::<Q5_0>, avx2::gemm::<Q5_0>),
                WType::Q5_1 => (pack::<Q5_1>, avx2::gemm::<Q5_1>),
                WType::Q8_0 => (pack::<Q8_0>, avx2::gemm::<Q8_0>),
                _ => return None,
            };
            return Some(k);
        }
    }
    let _ = (ty, level);
    None
}

/// Where the parts of one block of the 8 rows start, from the block's
/// start: scales, minimums, fifth bits, quants (a part a type lacks has
/// no bytes).
const fn parts(t: u8) -> [usize; 4] {
    let m = 16;
    let h = m + if has_min(t) { 16 } else { 0 };
    let q = h + if is_q5(t) { 32 } else { 0 };
    [0, m, h, q]
}

/// Packs 8 rows of `k` values (`src`, GGUF layout) into `dst`.
fn pack<const T: u8>(src: &[u8], k: usize, dst: &mut [u8]) {
    assert!(k.is_multiple_of(32), "k = {k} is not whole blocks");
    let nb = k / 32;
    let bb = block_bytes(T);
    let rb = nb * bb;
    assert!(src.len() == PACK_ROWS * rb && dst.len() == src.len());
    let [dof, mo, ho, qo] = parts(T);
    let qb = quant_bytes(T);
    for r in 0..PACK_ROWS {
        for b in 0..nb {
            let blk = &src[r * rb + b * bb..][..bb];
            let out = &mut dst[b * PACK_ROWS * bb..][..PACK_ROWS * bb];
            out[dof + 2 * r..][..2].copy_from_slice(&blk[0..2]);
            if has_min(T) {
                out[mo + 2 * r..][..2].copy_from_slice(&blk[2..4]);
            }
            let qs = &blk[qs_offset(T)..];
            for m in 0..qb / 32 {
                let o = qo + 32 * m + 4 * r;
                for t in 0..4 {
                    let v = qs[4 * m + t];
                    out[o + t] = if T == Q8_0 { v ^ 0x80 } else { v };
                }
            }
            if is_q5(T) {
                let o = qh_offset(T);
                let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                for i in 0..8 {
                    let at = ho + 4 * i;
                    let mut mask = u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
                    // Rows write disjoint bit fields; clear ours first.
                    mask &= !(0xF << (4 * r));
                    mask |= ((qh >> (4 * i)) & 0xF) << (4 * r);
                    out[at..at + 4].copy_from_slice(&mask.to_le_bytes());
                }
            }
        }
    }
}

/// The AVX2 kernels: the same packed layout, with `vpmaddubsw` + `vpmaddwd`
/// (u8 × i8 pairs to i16, then to i32) in place of `vpdpbusd`.  Q4 and Q5
/// codes (≤ 31) times activations (|q| ≤ 127) cannot saturate the i16
/// pairs; Q8_0's weights are turned back to signed values `s` and enter as
/// `|s|` against `q · sign(s)` (|s| ≤ 128), so its sums start at 0 instead
/// of `−128 · Σ q`.  Every lane's integer sum is therefore exactly the
/// AVX-512 kernel's, and the float steps are the same operations in the
/// same order: the results are the AVX-512 kernel's, bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    pub unsafe fn gemm<const T: u8>(packed: &[u8], a: &[ActRow], out: &mut [f32]) {
        match a.len() {
            1 => tile::<T, 1>(packed, a, out),
            2 => tile::<T, 2>(packed, a, out),
            3 => tile::<T, 3>(packed, a, out),
            _ => tile::<T, 4>(packed, a, out),
        }
    }

    /// Byte `j` = 0xFF where bit `j` of `k` is set, else 0.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn expand_bits(k: u32) -> __m256i {
        let v = _mm256_shuffle_epi8(
            _mm256_set1_epi32(k as i32),
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

    /// The 8 weight chunks of block `b`: unsigned codes (Q4, Q5), or the
    /// signed Q8_0 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn weights<const T: u8>(blk: *const u8) -> [__m256i; 8] {
        let [_, _, ho, qo] = parts(T);
        let p = blk.add(qo);
        let mut w = [_mm256_setzero_si256(); 8];
        if T == Q8_0 {
            let flip = _mm256_set1_epi8(-128);
            for (i, w) in w.iter_mut().enumerate() {
                *w = _mm256_xor_si256(_mm256_loadu_si256(p.add(32 * i) as *const __m256i), flip);
            }
            return w;
        }
        let nib = _mm256_set1_epi8(0x0F);
        for m in 0..4 {
            let v = _mm256_loadu_si256(p.add(32 * m) as *const __m256i);
            w[m] = _mm256_and_si256(v, nib);
            w[m + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
        }
        if is_q5(T) {
            let h = blk.add(ho);
            let sixteen = _mm256_set1_epi8(0x10);
            for (i, w) in w.iter_mut().enumerate() {
                let k = std::ptr::read_unaligned(h.add(4 * i) as *const u32);
                *w = _mm256_or_si256(*w, _mm256_and_si256(expand_bits(k), sixteen));
            }
        }
        w
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const T: u8, const C: usize>(packed: &[u8], a: &[ActRow], out: &mut [f32]) {
        let gb = PACK_ROWS * block_bytes(T);
        let nb = packed.len() / gb;
        assert!(packed.len() == nb * gb);
        assert!(a.len() == C && C <= MAX_COLS && out.len() >= C * PACK_ROWS);
        for r in a {
            assert!(r.qs.len() >= nb * 32 && r.d.len() >= nb);
            assert!(if has_min(T) {
                r.dsum.len() >= nb
            } else {
                r.s16.len() >= 2 * nb
            });
        }
        let a: &[ActRow; C] = a.try_into().unwrap();
        let [dof, mo, _, _] = parts(T);
        let mut acc = [_mm256_setzero_ps(); C];
        let mut macc = [_mm256_setzero_ps(); C];
        let neg_o = _mm256_set1_epi16(-offset(T) as i16);
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let blk = packed.as_ptr().add(b * gb);
            let w = weights::<T>(blk);
            // Q8_0: |s|, and the signs applied to the activations below.
            let wa = if T == Q8_0 {
                w.map(|v| _mm256_abs_epi8(v))
            } else {
                w
            };
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(dof) as *const __m128i));
            let mw = if has_min(T) {
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(mo) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for c in 0..C {
                let r = &a[c];
                let ap = r.qs.as_ptr().add(32 * b);
                let mut i0 = if has_min(T) || T == Q8_0 {
                    _mm256_setzero_si256()
                } else {
                    let s = std::ptr::read_unaligned(r.s16.as_ptr().add(2 * b) as *const i32);
                    _mm256_madd_epi16(_mm256_set1_epi32(s), neg_o)
                };
                let mut i1 = _mm256_setzero_si256();
                for g in 0..4 {
                    let mut x0 =
                        _mm256_set1_epi32(std::ptr::read_unaligned(ap.add(8 * g) as *const i32));
                    let mut x1 = _mm256_set1_epi32(std::ptr::read_unaligned(
                        ap.add(8 * g + 4) as *const i32
                    ));
                    if T == Q8_0 {
                        x0 = _mm256_sign_epi8(x0, w[2 * g]);
                        x1 = _mm256_sign_epi8(x1, w[2 * g + 1]);
                    }
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[2 * g], x0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[2 * g + 1], x1), ones);
                    i0 = _mm256_add_epi32(i0, p0);
                    i1 = _mm256_add_epi32(i1, p1);
                }
                let isum = _mm256_add_epi32(i0, i1);
                let s = _mm256_mul_ps(dw, _mm256_set1_ps(*r.d.get_unchecked(b)));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s, acc[c]);
                if has_min(T) {
                    let ds = _mm256_set1_ps(*r.dsum.get_unchecked(b));
                    macc[c] = _mm256_fmadd_ps(mw, ds, macc[c]);
                }
            }
        }
        for c in 0..C {
            let mut v = acc[c];
            if has_min(T) {
                v = _mm256_add_ps(v, macc[c]);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(c * PACK_ROWS), v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    pub unsafe fn gemm<const T: u8>(packed: &[u8], a: &[ActRow], out: &mut [f32]) {
        match a.len() {
            1 => tile::<T, 1>(packed, a, out),
            2 => tile::<T, 2>(packed, a, out),
            3 => tile::<T, 3>(packed, a, out),
            _ => tile::<T, 4>(packed, a, out),
        }
    }

    /// The 8 weight chunks of block `b` as unsigned bytes: chunk `i` holds
    /// the 8 rows' codes for activation group `i` (elements `4i..4i + 4`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn weights<const T: u8>(blk: *const u8) -> [__m256i; 8] {
        let [_, _, ho, qo] = parts(T);
        let p = blk.add(qo);
        let mut w = [_mm256_setzero_si256(); 8];
        if T == Q8_0 {
            for (i, w) in w.iter_mut().enumerate() {
                *w = _mm256_loadu_si256(p.add(32 * i) as *const __m256i);
            }
            return w;
        }
        let nib = _mm256_set1_epi8(0x0F);
        for m in 0..4 {
            let v = _mm256_loadu_si256(p.add(32 * m) as *const __m256i);
            w[m] = _mm256_and_si256(v, nib);
            w[m + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
        }
        if is_q5(T) {
            let h = blk.add(ho);
            let sixteen = _mm256_set1_epi8(0x10);
            for (i, w) in w.iter_mut().enumerate() {
                let k = std::ptr::read_unaligned(h.add(4 * i) as *const u32);
                *w = _mm256_mask_add_epi8(*w, k, *w, sixteen);
            }
        }
        w
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const T: u8, const C: usize>(packed: &[u8], a: &[ActRow], out: &mut [f32]) {
        let gb = PACK_ROWS * block_bytes(T);
        let nb = packed.len() / gb;
        assert!(packed.len() == nb * gb);
        assert!(a.len() == C && C <= MAX_COLS && out.len() >= C * PACK_ROWS);
        for r in a {
            assert!(r.qs.len() >= nb * 32 && r.d.len() >= nb);
            assert!(if has_min(T) {
                r.dsum.len() >= nb
            } else {
                r.s16.len() >= 2 * nb
            });
        }
        let a: &[ActRow; C] = a.try_into().unwrap();
        let [dof, mo, _, _] = parts(T);
        let mut acc = [_mm256_setzero_ps(); C];
        let mut macc = [_mm256_setzero_ps(); C];
        // −o for the pairs of half-block sums (vpmaddwd adds the two).
        let neg_o = _mm256_set1_epi16(-offset(T) as i16);
        for b in 0..nb {
            let blk = packed.as_ptr().add(b * gb);
            let w = weights::<T>(blk);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(dof) as *const __m128i));
            let mw = if has_min(T) {
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(mo) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for c in 0..C {
                let r = &a[c];
                let ap = r.qs.as_ptr().add(32 * b);
                // Two chains of four, for latency.
                let mut i0 = if has_min(T) {
                    _mm256_setzero_si256()
                } else {
                    let s = std::ptr::read_unaligned(r.s16.as_ptr().add(2 * b) as *const i32);
                    _mm256_madd_epi16(_mm256_set1_epi32(s), neg_o)
                };
                let mut i1 = _mm256_setzero_si256();
                for g in 0..4 {
                    let x0 =
                        _mm256_set1_epi32(std::ptr::read_unaligned(ap.add(8 * g) as *const i32));
                    let x1 = _mm256_set1_epi32(std::ptr::read_unaligned(
                        ap.add(8 * g + 4) as *const i32
                    ));
                    i0 = _mm256_dpbusd_epi32(i0, w[2 * g], x0);
                    i1 = _mm256_dpbusd_epi32(i1, w[2 * g + 1], x1);
                }
                let isum = _mm256_add_epi32(i0, i1);
                let s = _mm256_mul_ps(dw, _mm256_set1_ps(*r.d.get_unchecked(b)));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s, acc[c]);
                if has_min(T) {
                    let ds = _mm256_set1_ps(*r.dsum.get_unchecked(b));
                    macc[c] = _mm256_fmadd_ps(mw, ds, macc[c]);
                }
            }
        }
        for c in 0..C {
            let mut v = acc[c];
            if has_min(T) {
                v = _mm256_add_ps(v, macc[c]);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(c * PACK_ROWS), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::quant::{legacy, ActRows};
    use crate::runtime::simd;

    // The random data of legacy.rs's tests, shared.
    use crate::runtime::quant::legacy::tests::{exact_product, f16_bits, random_scale, Rng, TYPES};

    /// A row of `nb` random blocks, with all-zero blocks, blocks of maximal
    /// and of minimal codes mixed in.
    fn random_row(ty: WType, nb: usize, r: &mut Rng) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut w = vec![0u8; nb * bb];
        for blk in w.chunks_exact_mut(bb) {
            let kind = r.below(10);
            if kind == 0 {
                continue;
            }
            for x in blk.iter_mut() {
                *x = r.next() as u8;
            }
            if kind == 1 {
                blk.fill(0xFF);
            }
            if kind == 2 {
                let start = if ty == WType::Q8_0 { 2 } else { 4 };
                blk[start..].fill(if ty == WType::Q8_0 { 0x80 } else { 0 });
            }
            if kind == 3 && ty == WType::Q8_0 {
                blk[2..].fill(0x7F);
            }
            blk[0..2].copy_from_slice(&f16_bits(random_scale(r)));
            if matches!(ty, WType::Q4_1 | WType::Q5_1) {
                blk[2..4].copy_from_slice(&f16_bits(random_scale(r)));
            }
        }
        w
    }

    fn random_acts(k: usize, r: &mut Rng) -> Vec<f32> {
        let scale = match r.below(5) {
            0 => 1e4,
            1 => 1e-3,
            2 => 1e15,
            _ => 1.0,
        };
        let kind = r.below(8);
        (0..k)
            .map(|i| match (kind, r.below(10)) {
                (0, _) => 0.0,
                (1, _) => scale,
                (_, 0) => 0.0,
                (_, 1) if i % 64 < 32 => 0.0,
                (_, 2) => r.unit() * 1e3 * scale,
                _ => r.unit() * scale,
            })
            .collect()
    }

    const KS: [usize; 6] = [32, 64, 96, 576, 640, 1536];

    struct Case {
        src: Vec<u8>,
        packed: Vec<u8>,
        acts: ActRows,
    }

    fn case(ty: WType, k: usize, r: &mut Rng) -> Case {
        let mut src = Vec::new();
        for _ in 0..PACK_ROWS {
            src.extend(random_row(ty, k / 32, r));
        }
        let mut x = Vec::new();
        for _ in 0..MAX_COLS {
            x.extend(random_acts(k, r));
        }
        let mut acts = ActRows::new();
        acts.quantize(&x, MAX_COLS, k);
        // Poisoned, to see that packing writes every byte.
        let packed = vec![0xA5; src.len()];
        Case { src, packed, acts }
    }

    #[test]
    fn kernels_match_the_dequantized_product() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut worst = 0f64;
        let mut ran = 0;
        for ty in TYPES {
            for &k in &KS {
                for _ in 0..4 {
                    let mut cs = case(ty, k, &mut r);
                    let rb = ty.row_bytes(k);
                    let wf: Vec<Vec<f32>> = cs
                        .src
                        .chunks_exact(rb)
                        .map(|row| {
                            let mut f = vec![0f32; k];
                            legacy::dequantize_row(ty, row, &mut f);
                            f
                        })
                        .collect();
                    let rows: Vec<_> = (0..MAX_COLS).map(|i| cs.acts.row(i)).collect();
                    for level in simd::levels_to_test() {
                        let Some((pack, gemm)) = gemm(ty, level) else {
                            continue;
                        };
                        ran += 1;
                        pack(&cs.src, k, &mut cs.packed);
                        let mut out = [0f32; MAX_COLS * PACK_ROWS];
                        unsafe { gemm(&cs.packed, &rows, &mut out) };
                        for (c, col) in rows.iter().enumerate() {
                            for (i, wrow) in wf.iter().enumerate() {
                                let raw = &cs.src[i * rb..(i + 1) * rb];
                                let (exact, mag) = exact_product(ty, raw, wrow, col);
                                let got = out[c * PACK_ROWS + i];
                                let err = (got as f64 - exact).abs();
                                if mag > 0.0 {
                                    worst = worst.max(err / mag);
                                }
                                assert!(
                                    err <= 1e-5 * mag + 1e-30,
                                    "{} {} k={k} col {c} row {i}: {got} vs {exact} (Σ|wa| {mag})",
                                    ty.name(),
                                    level.name(),
                                );
                            }
                        }
                    }
                }
            }
        }
        eprintln!("worst error / Σ|w·a|: {worst:e} over {ran} products");
        // Every x86 level from AVX2 up has its kernels, each run on every case.
        let with_kernels = simd::levels_to_test()
            .into_iter()
            .filter(|&l| l >= simd::SimdLevel::Avx2)
            .count();
        assert_eq!(ran, with_kernels * TYPES.len() * KS.len() * 4);
    }

    #[test]
    fn a_column_gives_the_same_bits_in_any_tile() {
        let mut r = Rng(12345);
        for ty in TYPES {
            for &k in &KS {
                let mut cs = case(ty, k, &mut r);
                for level in simd::levels_to_test() {
                    let Some((pack, gemm)) = gemm(ty, level) else {
                        continue;
                    };
                    pack(&cs.src, k, &mut cs.packed);
                    let alone: Vec<[u32; PACK_ROWS]> = (0..MAX_COLS)
                        .map(|c| {
                            let mut o = [0f32; PACK_ROWS];
                            unsafe { gemm(&cs.packed, &[cs.acts.row(c)], &mut o) };
                            o.map(f32::to_bits)
                        })
                        .collect();
                    for n in 2..=MAX_COLS {
                        for start in 0..MAX_COLS {
                            let cols: Vec<usize> = (0..n).map(|i| (start + i) % MAX_COLS).collect();
                            let rows: Vec<_> = cols.iter().map(|&c| cs.acts.row(c)).collect();
                            let mut o = vec![0f32; n * PACK_ROWS];
                            unsafe { gemm(&cs.packed, &rows, &mut o) };
                            for (i, &c) in cols.iter().enumerate() {
                                let got: Vec<u32> = o[i * PACK_ROWS..(i + 1) * PACK_ROWS]
                                    .iter()
                                    .map(|v| v.to_bits())
                                    .collect();
                                assert_eq!(
                                    got,
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

    /// The AVX2 kernels give the AVX-512 kernels' results bit for bit (the
    /// same integer sums, the same float steps), so a model computes the
    /// same logits at both levels wherever these kernels run.
    #[test]
    fn avx2_and_avx512_kernels_give_the_same_bits() {
        if !simd::can_test(simd::SimdLevel::Avx512) {
            return;
        }
        let mut r = Rng(4242);
        for ty in TYPES {
            for &k in &KS {
                let mut cs = case(ty, k, &mut r);
                let (pack, g2) = gemm(ty, simd::SimdLevel::Avx2).unwrap();
                let (_, g5) = gemm(ty, simd::SimdLevel::Avx512).unwrap();
                pack(&cs.src, k, &mut cs.packed);
                for n in 1..=MAX_COLS {
                    let rows: Vec<_> = (0..n).map(|c| cs.acts.row(c)).collect();
                    let (mut o2, mut o5) = (vec![0f32; n * PACK_ROWS], vec![1f32; n * PACK_ROWS]);
                    unsafe {
                        g2(&cs.packed, &rows, &mut o2);
                        g5(&cs.packed, &rows, &mut o5);
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&o2), bits(&o5), "{} k={k} n={n}", ty.name());
                }
            }
        }
    }

    /// The specified order (`legacy::dot_fn`): every packed kernel gives
    /// the portable per-row kernel's bits, so a row's result does not
    /// depend on the SIMD level or on whether its matrix was packed.
    #[test]
    fn packed_kernels_give_the_portable_bits() {
        let mut r = Rng(0x51ab_1e00_0000_0001);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for ty in TYPES {
            let portable = legacy::dot_fn(ty, simd::SimdLevel::Scalar);
            for &k in &KS {
                let mut cs = case(ty, k, &mut r);
                let rb = ty.row_bytes(k);
                for level in simd::levels_to_test() {
                    let Some((pack, g)) = gemm(ty, level) else {
                        continue;
                    };
                    pack(&cs.src, k, &mut cs.packed);
                    for n in 1..=MAX_COLS {
                        let rows: Vec<_> = (0..n).map(|c| cs.acts.row(c)).collect();
                        let mut got = vec![0f32; n * PACK_ROWS];
                        unsafe { g(&cs.packed, &rows, &mut got) };
                        let mut want = vec![0f32; n * PACK_ROWS];
                        for i in 0..PACK_ROWS {
                            let mut o = vec![0f32; n];
                            unsafe { portable(&cs.src[i * rb..(i + 1) * rb], &rows, &mut o) };
                            for c in 0..n {
                                want[c * PACK_ROWS + i] = o[c];
                            }
                        }
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{} {level:?} k={k} n={n}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }

    /// Reads the packed layout back into GGUF rows (the inverse of `pack`,
    /// written independently from the layout's description).
    fn unpack(ty: WType, packed: &[u8], k: usize) -> Vec<u8> {
        let t = match ty {
            WType::Q4_0 => Q4_0,
            WType::Q4_1 => Q4_1,
            WType::Q5_0 => Q5_0,
            WType::Q5_1 => Q5_1,
            _ => Q8_0,
        };
        let (nb, bb) = (k / 32, block_bytes(t));
        let rb = nb * bb;
        let [dof, mo, ho, qo] = parts(t);
        let qb = quant_bytes(t);
        let mut src = vec![0u8; PACK_ROWS * rb];
        for r in 0..PACK_ROWS {
            for b in 0..nb {
                let blk = &mut src[r * rb + b * bb..][..bb];
                let g = &packed[b * PACK_ROWS * bb..][..PACK_ROWS * bb];
                blk[0..2].copy_from_slice(&g[dof + 2 * r..][..2]);
                if has_min(t) {
                    blk[2..4].copy_from_slice(&g[mo + 2 * r..][..2]);
                }
                for j in 0..qb / 8 {
                    let v = g[qo + 32 * (j / 4) + 4 * r + j % 4];
                    blk[qs_offset(t) + j] = if t == Q8_0 { v ^ 0x80 } else { v };
                }
                if is_q5(t) {
                    let mut qh = 0u32;
                    for i in 0..8 {
                        let at = ho + 4 * i;
                        let m = u32::from_le_bytes(g[at..at + 4].try_into().unwrap());
                        qh |= ((m >> (4 * r)) & 0xF) << (4 * i);
                    }
                    blk[qh_offset(t)..qh_offset(t) + 4].copy_from_slice(&qh.to_le_bytes());
                }
            }
        }
        src
    }

    #[test]
    fn packing_keeps_the_size_and_every_bit() {
        let mut r = Rng(777);
        for ty in TYPES {
            for &k in &KS {
                let cs = case(ty, k, &mut r);
                assert_eq!(cs.src.len(), PACK_ROWS * ty.row_bytes(k));
                for level in simd::levels_to_test() {
                    let Some((pack, _)) = gemm(ty, level) else {
                        continue;
                    };
                    for fill in [0x00, 0xFF, 0xA5] {
                        let mut packed = vec![fill; cs.src.len()];
                        pack(&cs.src, k, &mut packed);
                        assert_eq!(packed.len(), cs.src.len());
                        assert_eq!(unpack(ty, &packed, k), cs.src, "{} k={k}", ty.name());
                    }
                }
            }
        }
    }

    #[test]
    fn only_legacy_types_have_kernels() {
        for level in simd::levels_to_test() {
            for ty in WType::ALL {
                if !TYPES.contains(&ty) {
                    assert!(gemm(ty, level).is_none());
                }
            }
        }
    }
}
