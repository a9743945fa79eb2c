//! GGUF K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): super-blocks of 256
//! values in ggml's exact byte layouts, their dequantization, and dot
//! kernels against the int8 activations of [`super::act`].
//!
//! Every type is decoded into unsigned integer *codes* with an integer scale
//! per group of 16 or 32 values, a constant code offset (Q3_K: 4, Q6_K: 32)
//! and/or a float minimum per group (Q2_K, Q4_K, Q5_K):
//!
//! `w = d · sc_g · (code − off) − min_g`
//!
//! Dot kernels multiply the codes with the int8 activations in integers
//! (`vpdpbusd` / `vpmaddubsw`, u8 × i8), then apply the weight scale times the
//! activation scale of each block of 32 in f32.  The offset and the minimum
//! are applied through the activations' precomputed sums (`s16` per 16,
//! `dsum` per 32).
//!
//! Every kernel is a `<const C: usize>` tile: each activation column has its
//! own accumulators and goes through the same operations in the same order,
//! so `out[c]` does not depend on how many columns are computed together or
//! at which position.  Each weight block is decoded once per tile.

// Index loops mirror the ggml layouts more clearly than iterator chains.
#![allow(clippy::needless_range_loop)]

use super::act::ActRow;
use super::{QuantDot, WType};
use crate::runtime::ops::fold16;
use crate::runtime::simd::SimdLevel;

/// Values per super-block.
pub(super) const QK: usize = 256;

const Q2K_BYTES: usize = 84;
const Q3K_BYTES: usize = 110;
const Q4K_BYTES: usize = 144;
const Q5K_BYTES: usize = 176;
const Q6K_BYTES: usize = 210;

fn block_bytes(ty: WType) -> usize {
    match ty {
        WType::Q2K => Q2K_BYTES,
        WType::Q3K => Q3K_BYTES,
        WType::Q4K => Q4K_BYTES,
        WType::Q5K => Q5K_BYTES,
        WType::Q6K => Q6K_BYTES,
        _ => panic!("kquants: {} is not a K-quant type", ty.name()),
    }
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Q4_K / Q5_K: the 12 bytes of 6-bit scales and minimums of the 8
/// sub-blocks of 32, unpacked to one byte each: (scales, mins) as
/// little-endian u64 (byte `j` = sub-block `j`).
///
/// Bytes 0..4 hold scale 0..4 in their low 6 bits, bytes 4..8 min 0..4; bytes
/// 8..12 hold the low 4 bits of scale 4..8 (low nibble) and of min 4..8 (high
/// nibble), whose top 2 bits are the top bits of bytes 0..4 (scales) and 4..8
/// (mins).
#[inline(always)]
fn q4k_scales_mins(s: &[u8]) -> (u64, u64) {
    let w0 = u32_at(s, 0);
    let w1 = u32_at(s, 4);
    let w2 = u32_at(s, 8);
    let sc_lo = w0 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030);
    let mn_lo = w1 & 0x3f3f_3f3f;
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

/// Q3_K: the 12 bytes of 6-bit scales of the 16 groups of 16, unpacked to
/// one byte each (still biased by 32).  Group `i`: low 4 bits from byte `i`
/// (i < 8) or the high nibble of byte `i − 8`; top 2 bits are bits
/// `2·(i / 4)` of byte `8 + i % 4`.
#[inline(always)]
fn q3k_scales(s: &[u8]) -> [u8; 16] {
    let w0 = u32_at(s, 0);
    let w1 = u32_at(s, 4);
    let w2 = u32_at(s, 8);
    let a = (w0 & 0x0f0f_0f0f) | ((w2 << 4) & 0x3030_3030);
    let b = (w1 & 0x0f0f_0f0f) | ((w2 << 2) & 0x3030_3030);
    let c = ((w0 >> 4) & 0x0f0f_0f0f) | (w2 & 0x3030_3030);
    let e = ((w1 >> 4) & 0x0f0f_0f0f) | ((w2 >> 2) & 0x3030_3030);
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&a.to_le_bytes());
    out[4..8].copy_from_slice(&b.to_le_bytes());
    out[8..12].copy_from_slice(&c.to_le_bytes());
    out[12..16].copy_from_slice(&e.to_le_bytes());
    out
}

/// Q4_K / Q5_K codes (4 or 5 bits) of one block.  Chunk c (64 values)
/// uses qs[32c..32c+32]: low nibbles are values 64c+l, high nibbles
/// 64c+32+l; Q5_K's fifth bit of sub-block j (= 2c or 2c+1) is bit j of
/// qh[l].
pub(super) fn q45_codes(blk: &[u8], five: bool) -> [u8; QK] {
    let mut codes = [0u8; QK];
    let qs = if five { &blk[48..176] } else { &blk[16..144] };
    for c in 0..4 {
        for l in 0..32 {
            let q = qs[32 * c + l];
            let (mut lo, mut hi) = (q & 0xf, q >> 4);
            if five {
                let qh = blk[16 + l];
                lo |= ((qh >> (2 * c)) & 1) << 4;
                hi |= ((qh >> (2 * c + 1)) & 1) << 4;
            }
            codes[64 * c + l] = lo;
            codes[64 * c + 32 + l] = hi;
        }
    }
    codes
}

/// Q6_K codes (6 bits, offset 32) of one block.  Half h (128 values):
/// ql[64h..64h+64], qh[32h..32h+32]; value 128h + 32k + l has the low
/// nibble of ql[64h+l] (k = 0), ql[64h+32+l] (k = 1), their high nibbles
/// (k = 2, 3), and its top 2 bits at shift 2k of qh[32h+l].
pub(super) fn q6_codes(blk: &[u8]) -> [u8; QK] {
    let mut codes = [0u8; QK];
    let ql = &blk[0..128];
    let qh = &blk[128..192];
    for h in 0..2 {
        for l in 0..32 {
            let a = ql[64 * h + l];
            let b = ql[64 * h + 32 + l];
            let hb = qh[32 * h + l];
            let base = 128 * h + l;
            codes[base] = (a & 0xf) | (hb & 3) << 4;
            codes[base + 32] = (b & 0xf) | ((hb >> 2) & 3) << 4;
            codes[base + 64] = (a >> 4) | ((hb >> 4) & 3) << 4;
            codes[base + 96] = (b >> 4) | ((hb >> 6) & 3) << 4;
        }
    }
    codes
}

/// One super-block in a common form: `w[i] = (d·sc[i/16])·(codes[i] − off) − mn[i/16]`.
struct Decoded {
    codes: [u8; QK],
    d: f32,
    sc: [i32; 16],
    mn: [f32; 16],
    off: i32,
}

impl Decoded {
    fn new() -> Self {
        Self {
            codes: [0; QK],
            d: 0.0,
            sc: [0; 16],
            mn: [0.0; 16],
            off: 0,
        }
    }
}

/// Decodes block `blk` of type `ty` (exactly one block's bytes).
fn decode(ty: WType, blk: &[u8], o: &mut Decoded) {
    match ty {
        WType::Q2K => {
            // scales[16] qs[64] d dmin
            let scales = &blk[0..16];
            let qs = &blk[16..80];
            o.d = f16_at(blk, 80);
            let dmin = f16_at(blk, 82);
            o.off = 0;
            for g in 0..16 {
                o.sc[g] = (scales[g] & 0xf) as i32;
                o.mn[g] = dmin * (scales[g] >> 4) as f32;
            }
            // Half h (128 values) uses qs[32h..32h+32]; its 4 bit pairs at
            // shift 2j give values 128h+32j+l (l < 32) from qs[32h+l].
            for h in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        o.codes[128 * h + 32 * j + l] = (qs[32 * h + l] >> (2 * j)) & 3;
                    }
                }
            }
        }
        WType::Q3K => {
            // hmask[32] qs[64] scales[12] d
            let hmask = &blk[0..32];
            let qs = &blk[32..96];
            let sc = q3k_scales(&blk[96..108]);
            o.d = f16_at(blk, 108);
            o.off = 4;
            for g in 0..16 {
                o.sc[g] = sc[g] as i32 - 32;
                o.mn[g] = 0.0;
            }
            // Like Q2_K for the low 2 bits; the third bit of value
            // 128h+32j+l is bit (4h+j) of hmask[l].
            for h in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        let lo = (qs[32 * h + l] >> (2 * j)) & 3;
                        let hi = (hmask[l] >> (4 * h + j)) & 1;
                        o.codes[128 * h + 32 * j + l] = lo | hi << 2;
                    }
                }
            }
        }
        WType::Q4K | WType::Q5K => {
            // d dmin scales[12] (qh[32]) qs[128]
            o.d = f16_at(blk, 0);
            let dmin = f16_at(blk, 2);
            let (sc, mn) = q4k_scales_mins(&blk[4..16]);
            o.off = 0;
            for g in 0..16 {
                o.sc[g] = (sc >> (8 * (g / 2))) as u8 as i32;
                o.mn[g] = dmin * (mn >> (8 * (g / 2))) as u8 as f32;
            }
            // Chunk c (64 values) uses qs[32c..32c+32]: see `q45_codes`.
            o.codes = q45_codes(blk, ty == WType::Q5K);
        }
        WType::Q6K => {
            // ql[128] qh[64] scales[16] (i8) d
            o.d = f16_at(blk, 208);
            o.off = 32;
            for g in 0..16 {
                o.sc[g] = blk[192 + g] as i8 as i32;
                o.mn[g] = 0.0;
            }
            o.codes = q6_codes(blk);
        }
        _ => panic!("kquants: {} is not a K-quant type", ty.name()),
    }
}

/// Dequantizes one row of K-quant type `ty`: `w` holds whole super-blocks,
/// `out.len()` values (a multiple of 256).  Same float formulas as ggml.
pub fn dequantize_row(ty: WType, w: &[u8], out: &mut [f32]) {
    let bb = block_bytes(ty);
    assert!(out.len().is_multiple_of(QK) && w.len() >= out.len() / QK * bb);
    let mut dec = Decoded::new();
    for (blk, y) in w.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        decode(ty, blk, &mut dec);
        for g in 0..16 {
            let dl = dec.d * dec.sc[g] as f32;
            let ml = dec.mn[g];
            for i in 16 * g..16 * g + 16 {
                y[i] = dl * (dec.codes[i] as i32 - dec.off) as f32 - ml;
            }
        }
    }
}

/// The dot kernel for `ty` at `level`.  Every level computes the same bits
/// in one specified order:
///
/// * Q4_K, Q5_K and Q6_K in the packed kernels' order (`kquants_gemm`, whose
///   AVX2 and AVX-512 code computes it for whole groups of 8 rows): per
///   row, two float accumulators `h`, fed in turn (Q4_K / Q5_K: sub-block
///   `j` of 32 into `j % 2`; Q6_K: the two groups of 16 of sub-block `j`
///   into 0 and 1), each with `fma(I, (sc · d) · d_a, acc)` of the exact
///   integer sum `I` of its values (Q6_K: `Σ code·q − 32·Σ q`), the
///   minimums of Q4_K / Q5_K in two more by `fma(m · dmin, dsum, accm)`;
///   then `(acc₀ − accm₀) + (acc₁ − accm₁)`.  This portable code is the one
///   kernel for a row on its own (a matrix whose rows are not a whole
///   number of groups of 8).
/// * Q2_K and Q3_K in the AVX-512 kernel's order ([`g16_spec`]).
pub fn dot_fn(ty: WType, level: SimdLevel) -> QuantDot {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= SimdLevel::Avx512 {
            match ty {
                WType::Q2K => return x86::q2k_avx512_dispatch,
                WType::Q3K => return x86::q3k_avx512_dispatch,
                _ => {}
            }
        }
    }
    let _ = level;
    match ty {
        WType::Q2K => scalar_q2k,
        WType::Q3K => scalar_q3k,
        WType::Q4K => scalar_q4k,
        WType::Q5K => scalar_q5k,
        WType::Q6K => scalar_q6k,
        _ => panic!("kquants: {} is not a K-quant type", ty.name()),
    }
}

// ---------------------------------------------------------------- scalar

macro_rules! scalar_entry {
    ($name:ident, $kernel:ident, $ty:expr) => {
        unsafe fn $name(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
            match a.len() {
                1 => $kernel::<1>($ty, w, a, out),
                2 => $kernel::<2>($ty, w, a, out),
                3 => $kernel::<3>($ty, w, a, out),
                4 => $kernel::<4>($ty, w, a, out),
                n => panic!("kquants: {n} columns"),
            }
        }
    };
}
scalar_entry!(scalar_q2k, g16_spec, WType::Q2K);
scalar_entry!(scalar_q3k, g16_spec, WType::Q3K);
scalar_entry!(scalar_q4k, q45k_spec, WType::Q4K);
scalar_entry!(scalar_q5k, q45k_spec, WType::Q5K);
scalar_entry!(scalar_q6k, q6k_spec, WType::Q6K);

/// Σ x·y of codes and activations, exactly.
#[inline(always)]
fn idot(x: &[u8], y: &[i8]) -> i32 {
    x.iter().zip(y).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// Q4_K / Q5_K in the specified order (see [`dot_fn`]).
fn q45k_spec<const C: usize>(ty: WType, w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
    let mut dec = Decoded::new();
    let mut acc = [[0f32; 2]; C];
    let mut accm = [[0f32; 2]; C];
    for (b, blk) in w.chunks_exact(block_bytes(ty)).enumerate() {
        decode(ty, blk, &mut dec);
        for c in 0..C {
            let ar = &a[c];
            let qs = &ar.qs[b * QK..b * QK + QK];
            for j in 0..8 {
                let h = j % 2;
                let i = idot(&dec.codes[32 * j..32 * j + 32], &qs[32 * j..32 * j + 32]);
                let fsc = dec.sc[2 * j] as f32 * dec.d;
                acc[c][h] = (i as f32).mul_add(fsc * ar.d[b * 8 + j], acc[c][h]);
                accm[c][h] = dec.mn[2 * j].mul_add(ar.dsum[b * 8 + j], accm[c][h]);
            }
        }
    }
    for c in 0..C {
        out[c] = (acc[c][0] - accm[c][0]) + (acc[c][1] - accm[c][1]);
    }
}

/// Q6_K in the specified order (see [`dot_fn`]).
fn q6k_spec<const C: usize>(ty: WType, w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
    let mut dec = Decoded::new();
    let mut acc = [[0f32; 2]; C];
    for (b, blk) in w.chunks_exact(block_bytes(ty)).enumerate() {
        decode(ty, blk, &mut dec);
        for c in 0..C {
            let ar = &a[c];
            let qs = &ar.qs[b * QK..b * QK + QK];
            for j in 0..8 {
                for h in 0..2 {
                    let g = 2 * j + h;
                    let i = idot(&dec.codes[16 * g..16 * g + 16], &qs[16 * g..16 * g + 16])
                        - dec.off * ar.s16[b * 16 + g] as i32;
                    let fsc = dec.sc[g] as f32 * dec.d;
                    acc[c][h] = (i as f32).mul_add(fsc * ar.d[b * 8 + j], acc[c][h]);
                }
            }
        }
    }
    for c in 0..C {
        out[c] = acc[c][0] + acc[c][1];
    }
}

/// Q2_K and Q3_K (groups of 16) in the AVX-512 kernel's order: 16 lanes;
/// lane `l` of step `i < 4` takes the exact sum of the four products of
/// values `64i + 4l ..`, as a float times `f_g = (d · sc_g) · d_a` of its
/// group `g = 4i + l/4`, steps 0 and 1 multiplied, 2 and 3 fused onto them,
/// the two then added to the lane's sum.  The activations' group sums in 16
/// more lanes, `fma(fm_g · d_a, Σ q, acco)` (`fm_g`: Q2_K `dmin · m_g`,
/// Q3_K `4 · d · sc_g`, its offset); both folded by `ops::fold16` and
/// subtracted.
fn g16_spec<const C: usize>(ty: WType, w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
    let mut dec = Decoded::new();
    let mut acc = [[0f32; 16]; C];
    let mut acco = [[0f32; 16]; C];
    for (b, blk) in w.chunks_exact(block_bytes(ty)).enumerate() {
        decode(ty, blk, &mut dec);
        let mut fw = [0f32; 16];
        let mut fm = [0f32; 16];
        for g in 0..16 {
            fw[g] = dec.d * dec.sc[g] as f32;
            fm[g] = if ty == WType::Q3K {
                4.0 * fw[g]
            } else {
                dec.mn[g]
            };
        }
        for c in 0..C {
            let ar = &a[c];
            let qs = &ar.qs[b * QK..b * QK + QK];
            let ad = |g: usize| ar.d[b * 8 + g / 2];
            let mut x = [[0f32; 16]; 2];
            for i in 0..4 {
                for l in 0..16 {
                    let at = 64 * i + 4 * l;
                    let v = idot(&dec.codes[at..at + 4], &qs[at..at + 4]) as f32;
                    let g = 4 * i + l / 4;
                    let f = fw[g] * ad(g);
                    x[i % 2][l] = if i < 2 {
                        v * f
                    } else {
                        v.mul_add(f, x[i % 2][l])
                    };
                }
            }
            for l in 0..16 {
                acc[c][l] += x[0][l] + x[1][l];
            }
            for g in 0..16 {
                let s = ar.s16[b * 16 + g] as f32;
                acco[c][g] = (fm[g] * ad(g)).mul_add(s, acco[c][g]);
            }
        }
    }
    for c in 0..C {
        out[c] = fold16(&acc[c]) - fold16(&acco[c]);
    }
}

// ---------------------------------------------------------------- x86

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{q3k_scales, ActRow, Q2K_BYTES, Q3K_BYTES, QK};
    use std::arch::x86_64::*;

    macro_rules! entry {
        ($name:ident, $kernel:ident) => {
            pub unsafe fn $name(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
                match a.len() {
                    1 => $kernel::<1>(w, a, out),
                    2 => $kernel::<2>(w, a, out),
                    3 => $kernel::<3>(w, a, out),
                    4 => $kernel::<4>(w, a, out),
                    n => panic!("kquants: {n} columns"),
                }
            }
        };
    }
    entry!(q2k_avx512_dispatch, q2k_avx512);
    entry!(q3k_avx512_dispatch, q3k_avx512);

    /// Two consecutive f16 at `p` as f32 in lanes 0 and 1.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16x2(p: *const u8) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn hsum512(v: __m512) -> f32 {
        let s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
        hsum256(s)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn idx512(v: &[i32; 16]) -> __m512i {
        _mm512_loadu_si512(v.as_ptr().cast())
    }

    /// Lane `l` of zmm `i` of a 256-value block belongs to group `4i + l/4`
    /// (16 values).
    const SUB16: [[i32; 16]; 4] = {
        let mut t = [[0i32; 16]; 4];
        let mut i = 0;
        while i < 4 {
            let mut l = 0;
            while l < 16 {
                t[i][l] = (4 * i + l / 4) as i32;
                l += 1;
            }
            i += 1;
        }
        t
    };
    /// Lane `l` ← lane `l/2`: one activation scale per 32 for each group of 16.
    const DUP2: [i32; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];

    // ------------------------------------------------------------ AVX-512

    /// Q2_K / Q3_K after decoding (groups of 16 like Q6_K): `wv[i]` are the
    /// codes of values 64i..64i+64, `fw` = d·sc_g and `fm` the per-group
    /// factor of the activation sums (Q2_K: dmin·m_g, Q3_K: 4·d·sc_g).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn g16_cols_avx512<const C: usize>(
        b: usize,
        wv: &[__m512i; 4],
        fw: __m512,
        fm: __m512,
        idx: &[__m512i; 4],
        dup2: __m512i,
        a: &[ActRow<'_>],
        acc: &mut [__m512; C],
        acco: &mut [__m512; C],
    ) {
        for c in 0..C {
            let ar = a.get_unchecked(c);
            let aq = ar.qs.as_ptr().add(b * QK);
            let ad = _mm512_castps256_ps512(_mm256_loadu_ps(ar.d.as_ptr().add(b * 8)));
            let ad = _mm512_permutexvar_ps(dup2, ad);
            let f = _mm512_mul_ps(fw, ad);
            let mut x = [_mm512_setzero_ps(); 2];
            for i in 0..4 {
                let av = _mm512_loadu_si512(aq.add(64 * i).cast());
                let dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[i], av);
                let fi = _mm512_permutexvar_ps(idx[i], f);
                let v = _mm512_cvtepi32_ps(dp);
                x[i & 1] = if i < 2 {
                    _mm512_mul_ps(v, fi)
                } else {
                    _mm512_fmadd_ps(v, fi, x[i & 1])
                };
            }
            acc[c] = _mm512_add_ps(acc[c], _mm512_add_ps(x[0], x[1]));
            let s16 = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256(
                ar.s16.as_ptr().add(b * 16).cast(),
            )));
            acco[c] = _mm512_fmadd_ps(_mm512_mul_ps(fm, ad), s16, acco[c]);
        }
    }

    /// 2-bit fields of values 64i..64i+64 of a Q2_K / Q3_K block: bits at
    /// shift 2j of `q[l]` (32 bytes) are values 32j+l of their half.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn low2_avx512(q: *const u8, i: usize) -> __m512i {
        let x = _mm512_broadcast_i64x4(_mm256_loadu_si256(q.add(32 * (i / 2)).cast()));
        let x = if i % 2 == 1 {
            _mm512_srli_epi16(x, 4)
        } else {
            x
        };
        let x = _mm512_mask_srli_epi16(x, 0xffff_0000, x, 2);
        _mm512_and_si512(x, _mm512_set1_epi8(3))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn q2k_avx512<const C: usize>(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
        let nb = w.len() / Q2K_BYTES;
        let idx = [
            idx512(&SUB16[0]),
            idx512(&SUB16[1]),
            idx512(&SUB16[2]),
            idx512(&SUB16[3]),
        ];
        let dup2 = idx512(&DUP2);
        let mut acc = [_mm512_setzero_ps(); C];
        let mut acco = [_mm512_setzero_ps(); C];
        for b in 0..nb {
            let p = w.as_ptr().add(b * Q2K_BYTES);
            let dd = f16x2(p.add(80));
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
            let fw = _mm512_mul_ps(
                _mm512_set1_ps(_mm_cvtss_f32(dd)),
                _mm512_cvtepi32_ps(_mm512_and_si512(sc, _mm512_set1_epi32(15))),
            );
            let fm = _mm512_mul_ps(
                _mm512_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dd))),
                _mm512_cvtepi32_ps(_mm512_srli_epi32(sc, 4)),
            );
            let mut wv = [_mm512_setzero_si512(); 4];
            for (i, v) in wv.iter_mut().enumerate() {
                *v = low2_avx512(p.add(16), i);
            }
            g16_cols_avx512::<C>(b, &wv, fw, fm, &idx, dup2, a, &mut acc, &mut acco);
        }
        for c in 0..C {
            *out.get_unchecked_mut(c) = hsum512(acc[c]) - hsum512(acco[c]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn q3k_avx512<const C: usize>(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
        let nb = w.len() / Q3K_BYTES;
        let idx = [
            idx512(&SUB16[0]),
            idx512(&SUB16[1]),
            idx512(&SUB16[2]),
            idx512(&SUB16[3]),
        ];
        let dup2 = idx512(&DUP2);
        let four = _mm512_set1_epi8(4);
        let mut acc = [_mm512_setzero_ps(); C];
        let mut acco = [_mm512_setzero_ps(); C];
        for b in 0..nb {
            let p = w.as_ptr().add(b * Q3K_BYTES);
            let d = _mm_cvtss_f32(f16x2(p.add(108)));
            let sc = q3k_scales(std::slice::from_raw_parts(p.add(96), 12));
            let sc = _mm512_sub_epi32(
                _mm512_cvtepu8_epi32(_mm_loadu_si128(sc.as_ptr().cast())),
                _mm512_set1_epi32(32),
            );
            let fw = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sc));
            let fm = _mm512_mul_ps(_mm512_set1_ps(4.0), fw);
            let hm = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast()));
            let mut wv = [_mm512_setzero_si512(); 4];
            for (i, v) in wv.iter_mut().enumerate() {
                let x = low2_avx512(p.add(32), i);
                // third bit: bit 4h + j of hmask[l], j = 2(i % 2) (low half)
                // or 2(i % 2) + 1 (high half)
                let bit = 2 * i as u32; // = 4h + 2(i % 2)
                let sel = _mm512_inserti64x4(
                    _mm512_set1_epi8((1u32 << bit) as u8 as i8),
                    _mm256_set1_epi8((2u32 << bit) as u8 as i8),
                    1,
                );
                let k = _mm512_test_epi8_mask(hm, sel);
                *v = _mm512_mask_add_epi8(x, k, x, four);
            }
            g16_cols_avx512::<C>(b, &wv, fw, fm, &idx, dup2, a, &mut acc, &mut acco);
        }
        for c in 0..C {
            *out.get_unchecked_mut(c) = hsum512(acc[c]) - hsum512(acco[c]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::quant::act::ActRows;
    use crate::runtime::simd;

    const TYPES: [WType; 5] = [WType::Q2K, WType::Q3K, WType::Q4K, WType::Q5K, WType::Q6K];

    /// xorshift64*
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn byte(&mut self) -> u8 {
            (self.next() >> 32) as u8
        }
        /// Uniform in [-1, 1).
        pub(crate) fn unit(&mut self) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        }
    }

    pub(crate) fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    /// Byte offsets of the f16 fields (d, and dmin if any) of each type.
    pub(crate) fn f16_fields(ty: WType) -> &'static [usize] {
        match ty {
            WType::Q2K => &[80, 82],
            WType::Q3K => &[108],
            WType::Q4K | WType::Q5K => &[0, 2],
            WType::Q6K => &[208],
            _ => unreachable!(),
        }
    }

    const SCALES: [f32; 9] = [1e-7, 60000.0, 0.0, -0.5, -60000.0, 0.01, 1.0, -1e-3, 3.5];

    /// A row of `nb` random blocks: random bits everywhere, f16 fields from
    /// a list of extreme and ordinary values; some blocks all zero, some
    /// with every code bit set.
    pub(crate) fn random_row(ty: WType, nb: usize, rng: &mut Rng) -> Vec<u8> {
        let bb = block_bytes(ty);
        let mut w = vec![0u8; nb * bb];
        for blk in w.chunks_exact_mut(bb) {
            let kind = rng.next() % 8;
            match kind {
                0 => {} // all zero
                1 => blk.fill(0xff),
                _ => blk.iter_mut().for_each(|x| *x = rng.byte()),
            }
            if kind != 0 {
                for &at in f16_fields(ty) {
                    let v = if rng.next().is_multiple_of(3) {
                        SCALES[(rng.next() % SCALES.len() as u64) as usize]
                    } else {
                        rng.unit() * 0.1
                    };
                    blk[at..at + 2].copy_from_slice(&h(v));
                }
            }
        }
        w
    }

    fn random_acts(n: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n * k)
            .map(|i| {
                let blk = i / 32;
                match blk % 7 {
                    0 => 0.0,
                    3 => rng.unit() * 1000.0,
                    5 => rng.unit() * 1e-4,
                    _ => rng.unit(),
                }
            })
            .collect()
    }

    /// Σ|terms| bound: the kernels compute `d·sc·code·a`, `d·sc·off·a` and
    /// `mn·a` separately, so the error is relative to their magnitudes.
    pub(crate) fn reference(ty: WType, w: &[u8], a: &ActRow<'_>, k: usize) -> (f64, f64) {
        let mut deq = vec![0f32; k];
        dequantize_row(ty, w, &mut deq);
        let bb = block_bytes(ty);
        let mut dec = Decoded::new();
        let (mut sum, mut mag) = (0f64, 0f64);
        // Q4_K and Q5_K have one minimum per 32 values, which the kernels
        // multiply by the activations' stored `dsum` (ggml's f16-rounded
        // `d · Σq` for blocks of 32, `d · Σq` for Q8_K rows).
        let mins32 = matches!(ty, WType::Q4K | WType::Q5K);
        for b in 0..k / QK {
            decode(ty, &w[b * bb..(b + 1) * bb], &mut dec);
            for i in 0..QK {
                let x = b * QK + i;
                let av = a.d[x / 32] as f64 * a.qs[x] as f64;
                let g = i / 16;
                if mins32 {
                    sum += (deq[x] as f64 + dec.mn[g] as f64) * av;
                    if i % 32 == 0 {
                        sum -= dec.mn[g] as f64 * a.dsum[x / 32] as f64;
                    }
                } else {
                    sum += deq[x] as f64 * av;
                }
                let ds = (dec.d as f64 * dec.sc[g] as f64).abs();
                mag += (ds * (dec.codes[i] as f64 + dec.off as f64) + (dec.mn[g] as f64).abs())
                    * av.abs();
            }
        }
        (sum, mag)
    }

    #[test]
    fn kernels_match_reference() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for &ty in &TYPES {
            for &k in &[256usize, 1024, 2048] {
                for _trial in 0..6 {
                    let w = random_row(ty, k / QK, &mut rng);
                    let x = random_acts(4, k, &mut rng);
                    let mut acts = ActRows::new();
                    acts.quantize(&x, 4, k);
                    let rows: Vec<_> = (0..4).map(|i| acts.row(i)).collect();
                    for level in simd::levels_to_test() {
                        let f = dot_fn(ty, level);
                        let mut out = [0f32; 4];
                        unsafe { f(&w, &rows, &mut out) };
                        for c in 0..4 {
                            let (want, mag) = reference(ty, &w, &rows[c], k);
                            let err = (out[c] as f64 - want).abs();
                            assert!(
                                err <= 2e-6 * mag + 1e-30,
                                "{} {} k={k} col {c}: got {} want {want} (mag {mag}, err {err})",
                                ty.name(),
                                level.name(),
                                out[c]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every level gives the portable kernel's bits (the specified order,
    /// see `dot_fn`).
    #[test]
    fn every_level_gives_the_portable_bits() {
        let mut rng = Rng(0x51ab_1e00_0000_0003);
        for &ty in &TYPES {
            let portable = dot_fn(ty, SimdLevel::Scalar);
            for &k in &[256usize, 1024, 2560] {
                let w = random_row(ty, k / QK, &mut rng);
                let x = random_acts(4, k, &mut rng);
                let mut acts = ActRows::new();
                acts.quantize(&x, 4, k);
                for n in 1..=4 {
                    let rows: Vec<_> = (0..n).map(|i| acts.row(i)).collect();
                    let mut want = vec![0f32; n];
                    unsafe { portable(&w, &rows, &mut want) };
                    for level in simd::levels_to_test() {
                        let mut got = vec![1f32; n];
                        unsafe { dot_fn(ty, level)(&w, &rows, &mut got) };
                        for c in 0..n {
                            assert_eq!(
                                got[c].to_bits(),
                                want[c].to_bits(),
                                "{} {level:?} k={k} n={n} col {c}",
                                ty.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn columns_are_independent() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let k = 1024;
        for &ty in &TYPES {
            let w = random_row(ty, k / QK, &mut rng);
            let x = random_acts(4, k, &mut rng);
            let mut acts = ActRows::new();
            acts.quantize(&x, 4, k);
            let rows: Vec<_> = (0..4).map(|i| acts.row(i)).collect();
            for level in simd::levels_to_test() {
                let f = dot_fn(ty, level);
                let single: Vec<f32> = (0..4)
                    .map(|c| {
                        let mut o = [0f32];
                        unsafe { f(&w, &rows[c..c + 1], &mut o) };
                        o[0]
                    })
                    .collect();
                for n in 2..=4 {
                    // every window of n columns, and rotations so each column
                    // appears at each position
                    for start in 0..4 {
                        let cols: Vec<usize> = (0..n).map(|i| (start + i) % 4).collect();
                        let a: Vec<_> = cols.iter().map(|&c| rows[c]).collect();
                        let mut out = vec![0f32; n];
                        unsafe { f(&w, &a, &mut out) };
                        for (pos, &c) in cols.iter().enumerate() {
                            assert_eq!(
                                out[pos].to_bits(),
                                single[c].to_bits(),
                                "{} {} n={n} pos={pos}",
                                ty.name(),
                                level.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn zero_and_full_blocks() {
        let k = 512;
        let mut rng = Rng(99);
        let x = random_acts(1, k, &mut rng);
        let mut acts = ActRows::new();
        acts.quantize(&x, 1, k);
        let rows = [acts.row(0)];
        for &ty in &TYPES {
            let bb = block_bytes(ty);
            let zero = vec![0u8; 2 * bb];
            let mut full = vec![0xffu8; 2 * bb];
            for blk in full.chunks_exact_mut(bb) {
                for &at in f16_fields(ty) {
                    blk[at..at + 2].copy_from_slice(&h(0.25));
                }
            }
            for level in simd::levels_to_test() {
                let f = dot_fn(ty, level);
                let mut out = [1f32];
                unsafe { f(&zero, &rows, &mut out) };
                assert_eq!(out[0], 0.0, "{} {}", ty.name(), level.name());
                unsafe { f(&full, &rows, &mut out) };
                let (want, mag) = reference(ty, &full, &rows[0], k);
                assert!(
                    (out[0] as f64 - want).abs() <= 2e-6 * mag,
                    "{} {}",
                    ty.name(),
                    level.name()
                );
            }
        }
    }

    fn approx(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1e-30)
    }

    #[test]
    fn dequant_q4k_by_hand() {
        let mut b = vec![0u8; Q4K_BYTES];
        b[0..2].copy_from_slice(&h(0.5)); // d
        b[2..4].copy_from_slice(&h(0.25)); // dmin
                                           // scales: sub-block 0: sc 5, m 7; sub-block 1: sc 63 m 0;
                                           // sub-block 5: sc = 0b10_1001 = 41, m = 0b01_0110 = 22
        let s = &mut b[4..16];
        s[0] = 5;
        s[4] = 7;
        s[1] = 63;
        s[5] = 0;
        s[9] = 0x69; // sub-block 5: low nibble of sc (9), low nibble of m (6)
        s[1] |= 0b10 << 6; // top bits of sc 5 live in byte 1
        s[5] |= 0b01 << 6; // top bits of m 5 live in byte 5
                           // qs: byte 0 = 0x3A: value 0 code 10, value 32 code 3.
        b[16] = 0x3a;
        // chunk 2 (values 128..192), byte l = 7: value 128+7 (sub-block 4) low
        // nibble, value 160+7 (sub-block 5) high nibble = 12.
        b[16 + 64 + 7] = 0xc0;
        let mut y = vec![0f32; 256];
        dequantize_row(WType::Q4K, &b, &mut y);
        assert!(approx(y[0], 0.5 * 5.0 * 10.0 - 0.25 * 7.0));
        assert!(approx(y[1], -0.25 * 7.0));
        // value 32 is sub-block 1: sc 63 (low 6 bits of byte 1), m 0
        assert!(approx(y[32], 0.5 * 63.0 * 3.0));
        assert!(approx(y[160 + 7], 0.5 * 41.0 * 12.0 - 0.25 * 22.0));
        assert_eq!(y[160 + 8], -0.25 * 22.0);
        // sub-block 4: sc = low nibble of byte 8 (0) | top bits of byte 0 (0)
        assert_eq!(y[128 + 7], 0.0);
    }

    #[test]
    fn dequant_q5k_by_hand() {
        let mut b = vec![0u8; Q5K_BYTES];
        b[0..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(2.0));
        for j in 0..4 {
            b[4 + j] = 1; // sc 1 for sub-blocks 0..4
        }
        b[12 + 3] = 0x31; // sub-block 7: sc low 1, m low 3
                          // qh[5]: bit 0 → value 5 gets +16, bit 7 → value 224+5 gets +16
        b[16 + 5] = 0x81;
        // qs: chunk 0 byte 5 = 0x2f: value 5 low 15, value 37 high 2
        b[48 + 5] = 0x2f;
        // chunk 3 byte 5 = 0x90: value 224+5 high nibble 9
        b[48 + 96 + 5] = 0x90;
        let mut y = vec![0f32; 256];
        dequantize_row(WType::Q5K, &b, &mut y);
        assert_eq!(y[5], 31.0);
        assert_eq!(y[37], 2.0);
        assert_eq!(y[229], 1.0 * (9.0 + 16.0) - 2.0 * 3.0);
        assert_eq!(y[228], -6.0);
        assert_eq!(y[200], 0.0); // sub-block 6: sc 0, m 0
    }

    #[test]
    fn dequant_q6k_by_hand() {
        let mut b = vec![0u8; Q6K_BYTES];
        b[208..210].copy_from_slice(&h(0.5));
        for g in 0..16 {
            b[192 + g] = (g as i8 - 8) as u8; // scales -8..7
        }
        // half 0, l = 3: ql[3] = 0xA5, ql[35] = 0x1F, qh[3] = 0b11_10_01_00
        b[3] = 0xa5;
        b[35] = 0x1f;
        b[128 + 3] = 0b1110_0100;
        // half 1, l = 20: ql[64+20] = 0x00, qh[32+20] = 0xff
        b[128 + 32 + 20] = 0xff;
        let mut y = vec![0f32; 256];
        dequantize_row(WType::Q6K, &b, &mut y);
        // value 3: low nibble 5, top bits 00 → 5; group 0 scale -8
        assert_eq!(y[3], 0.5 * -8.0 * (5.0 - 32.0));
        // value 35: ql[35] low nibble 15, top bits 01 → 31; group 2 scale -6
        assert_eq!(y[35], 0.5 * -6.0 * (31.0 - 32.0));
        // value 67: ql[3] high nibble 10, top bits 10 → 42; group 4 scale -4
        assert_eq!(y[67], 0.5 * -4.0 * (42.0 - 32.0));
        // value 99: ql[35] high nibble 1, top bits 11 → 49; group 6 scale -2
        assert_eq!(y[99], 0.5 * -2.0 * (49.0 - 32.0));
        // values 128+20+32k: nibbles 0, top bits 3 → 48; groups 9, 11, 13, 15
        for (k, g) in [9, 11, 13, 15].into_iter().enumerate() {
            assert_eq!(y[148 + 32 * k], 0.5 * (g as f32 - 8.0) * 16.0);
        }
        // everything else in half 1 at l = 21: code 0 → -32
        // (group 9, scale 1; group 13, scale 5)
        assert_eq!(y[128 + 21], 0.5 * 1.0 * -32.0);
        assert_eq!(y[128 + 64 + 21], 0.5 * 5.0 * -32.0);
    }

    #[test]
    fn dequant_q2k_by_hand() {
        let mut b = vec![0u8; Q2K_BYTES];
        b[80..82].copy_from_slice(&h(2.0));
        b[82..84].copy_from_slice(&h(0.5));
        for g in 0..16 {
            b[g] = (g as u8) << 4 | (15 - g as u8); // sc 15-g, min g
        }
        // qs[1] = 0b11_10_01_00: values 1 (code 0), 33 (1), 65 (2), 97 (3)
        b[16 + 1] = 0b1110_0100;
        // qs[32+17] = 0b01_00_00_11: values 128+17 (3), 128+96+17 (1)
        b[16 + 49] = 0b0100_0011;
        let mut y = vec![0f32; 256];
        dequantize_row(WType::Q2K, &b, &mut y);
        assert_eq!(y[1], 2.0 * 15.0 * 0.0 - 0.0);
        assert_eq!(y[33], 2.0 * 13.0 * 1.0 - 0.5 * 2.0);
        assert_eq!(y[65], 2.0 * 11.0 * 2.0 - 0.5 * 4.0);
        assert_eq!(y[97], 2.0 * 9.0 * 3.0 - 0.5 * 6.0);
        assert_eq!(y[145], 2.0 * 6.0 * 3.0 - 0.5 * 9.0);
        assert_eq!(y[128 + 96 + 17], 2.0 * 0.0 * 1.0 - 0.5 * 15.0);
        assert_eq!(y[128 + 96 + 16], -0.5 * 15.0);
    }

    #[test]
    fn dequant_q3k_by_hand() {
        let mut b = vec![0u8; Q3K_BYTES];
        b[108..110].copy_from_slice(&h(0.25));
        // scales (biased by 32):
        //  group 0: low 0x3 (byte 0 low), top 0b10 (byte 8 bits 0-1) → 35 → 3
        //  group 9: low 0xA (byte 1 high), top 0b01 (byte 9 bits 4-5) → 26 → -6
        //  group 14: low 0x7 (byte 6 high), top 0b11 (byte 10 bits 6-7) → 55 → 23
        //  group 5: low 0x0 (byte 5 low), top 0b10 (byte 9 bits 2-3) → 32 → 0
        let s = &mut b[96..108];
        s[0] = 0x03;
        s[8] = 0b10;
        s[1] = 0xa0;
        s[9] = 0b01 << 4 | 0b10 << 2;
        s[6] = 0x70;
        s[10] = 0b11 << 6;
        // value 2 (group 0): qs[2] bits 0-1 = 3, hmask[2] bit 0 set → 7 - 4 = 3
        b[32 + 2] = 0b11;
        b[2] |= 1;
        // value 150 (half 1, j 0, l 22 → group 9): qs[32+22] bits 0-1 = 1,
        // hmask[22] bit 4 clear → 1 - 4 = -3
        b[32 + 54] = 0b01;
        // value 128+64+32+5 = 229 (half 1, j 3, l 5 → group 14): qs[32+5]
        // bits 6-7 = 2, hmask[5] bit 7 set → 6 - 4 = 2
        b[32 + 37] = 0b10 << 6;
        b[5] |= 0x80;
        let mut y = vec![0f32; 256];
        dequantize_row(WType::Q3K, &b, &mut y);
        assert_eq!(y[2], 0.25 * 3.0 * 3.0);
        assert_eq!(y[150], 0.25 * -6.0 * -3.0);
        assert_eq!(y[229], 0.25 * 23.0 * 2.0);
        // value 3 (group 0): code 0, no high bit → -4
        assert_eq!(y[3], 0.25 * 3.0 * -4.0);
        // group 5 has scale 0
        assert_eq!(y[80], 0.0);
        // group 1: scale 0 - 32 = -32, code -4
        assert_eq!(y[16], 0.25 * -32.0 * -4.0);
    }
}
