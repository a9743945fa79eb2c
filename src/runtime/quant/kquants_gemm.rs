//! Packed (row-interleaved) GEMM kernels for K-quant weights: `PACK_ROWS`
//! (8) consecutive rows are rearranged so that one `vpdpbusd` computes
//! partial sums for all 8 rows at once.
//!
//! Lane layout.  A zmm holds 16 i32 lanes; lane `2r + h` belongs to row `r`
//! and to one of two groups of values `h` (Q4_K / Q5_K: sub-blocks of 32
//! `2p` and `2p + 1`; Q6_K: the two groups of 16 of sub-block `j`).  Each
//! weight vector holds 4 codes per lane; the activation vector is one 8-byte
//! pair (4 activations of group `h = 0`, 4 of group `h = 1`) broadcast to
//! every 64-bit lane, taken from a copy of the column's super-block whose
//! 4-byte groups the kernel interleaves once (`vpermd`).  The scales of a
//! pair of groups for the 8 rows are then one vector, multiplied by the
//! activation scales (also an 8-byte broadcast) in f32.
//!
//! Packed super-block group layouts (the same number of bytes as the 8 GGUF
//! rows; `r` row, `h` group of the pair, `e` byte of a 4-byte lane):
//!
//! * Q4_K (8 × 144): `d[8]` f16, `dmin[8]` f16, scales (96 bytes, below),
//!   codes: for pair `p < 4`, `u < 4`, 64 bytes, byte `8r + 4h + e` =
//!   code(r, 32(2p+h) + 4u + e) | code(r, 32(2p+h) + 16 + 4u + e) << 4.
//! * Q5_K (8 × 176): as Q4_K, with 256 bytes of fifth bits between the
//!   scales and the codes: for pair `p`, 64 bytes, bit `t` of byte
//!   `8r + 4h + e` = bit 4 of code(r, 32(2p+h) + 4t + e).
//! * Q6_K (8 × 210): `d[8]` f16, scales: byte `16j + 2r + h` = sc(r, 2j+h)
//!   (i8), low nibbles: for `j < 8`, `u < 2`, 64 bytes, byte `8r + 4h + e`
//!   = low4(r, 32j+16h+4u+e) | low4(r, 32j+16h+4(u+2)+e) << 4, then top
//!   bits: for `j`, 64 bytes, bits `2t..2t+2` of byte `8r + 4h + e` = top 2
//!   bits of code(r, 32j+16h+4t+e).
//!
//! Q4_K / Q5_K scales: the 64 scales and 64 minimums of the 8 rows, index
//! `i = 16p + 2r + h` (sub-block `2p + h`), 6 bits each: 64 bytes `sc_i & 15 |
//! (m_i & 15) << 4`, then 32 bytes holding the top 2 bits of sc_i (bits 0-1),
//! sc_{i+32} (2-3), m_i (4-5), m_{i+32} (6-7) for `i < 32`.
//!
//! The AVX2 kernels use the same layout, each zmm taken as two ymm (rows
//! 0..4 and 4..8), and give the AVX-512 kernels' results bit for bit.
//!
//! Every column has its own accumulators and goes through the same
//! operations in the same order whatever the number of columns, so its 8
//! results are bit-identical however it is batched.

// Index loops mirror the layouts more clearly than iterator chains.
#![allow(clippy::needless_range_loop)]
// Only the x86 kernels use the packing code.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use super::act::ActRow;
use super::{GemmFn, PackFn, WType, MAX_COLS, PACK_ROWS};
use crate::runtime::simd::SimdLevel;

/// Values per super-block.
use super::kquants::{q45_codes, q6_codes, QK};
const R: usize = PACK_ROWS;

const Q4K_BYTES: usize = 144;
const Q5K_BYTES: usize = 176;
const Q6K_BYTES: usize = 210;

/// A packed kernel for `ty` at `level` (or the best below it), or None (then
/// the caller uses the per-row dot kernels).
pub fn gemm(ty: WType, level: SimdLevel) -> Option<(PackFn, GemmFn)> {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= SimdLevel::Avx512 {
            match ty {
                WType::Q4K => return Some((pack_q4k, x86::q4k_entry)),
                WType::Q5K => return Some((pack_q5k, x86::q5k_entry)),
                WType::Q6K => return Some((pack_q6k, x86::q6k_entry)),
                _ => {}
            }
        }
        if level >= SimdLevel::Avx2 {
            match ty {
                WType::Q4K => return Some((pack_q4k, x86::q4k_avx2_entry)),
                WType::Q5K => return Some((pack_q5k, x86::q5k_avx2_entry)),
                WType::Q6K => return Some((pack_q6k, x86::q6k_avx2_entry)),
                _ => {}
            }
        }
    }
    let _ = (ty, level);
    None
}

// ---------------------------------------------------------------- decoding

/// Q4_K / Q5_K: the 8 scales and 8 minimums (6 bits) of a block's 12 bytes.
fn q45_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4;
        mn[j] = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
    (sc, mn)
}

// ---------------------------------------------------------------- packing

fn check_sizes(src: &[u8], k: usize, dst: &[u8], bb: usize) -> usize {
    assert!(k.is_multiple_of(QK), "kquants_gemm: k = {k}");
    let nb = k / QK;
    assert!(src.len() >= R * nb * bb && dst.len() == R * nb * bb);
    nb
}

/// Q4_K / Q5_K: d, dmin and the scales of 8 rows' block `b` into `o`
/// (offsets 0..128 of the packed group); returns the rows' codes.
fn pack_q45_head(src: &[u8], nb: usize, b: usize, bb: usize, o: &mut [u8]) -> [[u8; QK]; R] {
    let five = bb == Q5K_BYTES;
    let mut sc = [[0u8; 8]; R];
    let mut mn = [[0u8; 8]; R];
    let mut codes = [[0u8; QK]; R];
    for r in 0..R {
        let blk = &src[(r * nb + b) * bb..][..bb];
        o[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
        o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&blk[2..4]);
        (sc[r], mn[r]) = q45_scales(&blk[4..16]);
        codes[r] = q45_codes(blk, five);
    }
    let mut sv = [0u8; 64];
    let mut mv = [0u8; 64];
    for i in 0..64 {
        let (p, r, h) = (i / 16, (i % 16) / 2, i % 2);
        sv[i] = sc[r][2 * p + h];
        mv[i] = mn[r][2 * p + h];
        o[32 + i] = (sv[i] & 15) | (mv[i] & 15) << 4;
    }
    for i in 0..32 {
        o[96 + i] =
            (sv[i] >> 4) | (sv[i + 32] >> 4) << 2 | (mv[i] >> 4) << 4 | (mv[i + 32] >> 4) << 6;
    }
    codes
}

/// Q4_K / Q5_K low nibbles of the codes (1024 bytes).
fn pack_q45_nibbles(codes: &[[u8; QK]; R], o: &mut [u8]) {
    for p in 0..4 {
        for u in 0..4 {
            for r in 0..R {
                for h in 0..2 {
                    for e in 0..4 {
                        let v = 32 * (2 * p + h) + 4 * u + e;
                        o[(4 * p + u) * 64 + 8 * r + 4 * h + e] =
                            (codes[r][v] & 15) | (codes[r][v + 16] & 15) << 4;
                    }
                }
            }
        }
    }
}

fn pack_q4k(src: &[u8], k: usize, dst: &mut [u8]) {
    const G: usize = R * Q4K_BYTES;
    let nb = check_sizes(src, k, dst, Q4K_BYTES);
    for b in 0..nb {
        let o = &mut dst[b * G..(b + 1) * G];
        let codes = pack_q45_head(src, nb, b, Q4K_BYTES, o);
        pack_q45_nibbles(&codes, &mut o[128..]);
    }
}

fn pack_q5k(src: &[u8], k: usize, dst: &mut [u8]) {
    const G: usize = R * Q5K_BYTES;
    let nb = check_sizes(src, k, dst, Q5K_BYTES);
    for b in 0..nb {
        let o = &mut dst[b * G..(b + 1) * G];
        let codes = pack_q45_head(src, nb, b, Q5K_BYTES, o);
        for p in 0..4 {
            for r in 0..R {
                for h in 0..2 {
                    for e in 0..4 {
                        let mut x = 0u8;
                        for t in 0..8 {
                            x |= ((codes[r][32 * (2 * p + h) + 4 * t + e] >> 4) & 1) << t;
                        }
                        o[128 + 64 * p + 8 * r + 4 * h + e] = x;
                    }
                }
            }
        }
        pack_q45_nibbles(&codes, &mut o[384..]);
    }
}

fn pack_q6k(src: &[u8], k: usize, dst: &mut [u8]) {
    const G: usize = R * Q6K_BYTES;
    let nb = check_sizes(src, k, dst, Q6K_BYTES);
    for b in 0..nb {
        let o = &mut dst[b * G..(b + 1) * G];
        let mut codes = [[0u8; QK]; R];
        for r in 0..R {
            let blk = &src[(r * nb + b) * Q6K_BYTES..][..Q6K_BYTES];
            o[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
            for j in 0..8 {
                for h in 0..2 {
                    o[16 + 16 * j + 2 * r + h] = blk[192 + 2 * j + h];
                }
            }
            codes[r] = q6_codes(blk);
        }
        for j in 0..8 {
            for r in 0..R {
                for h in 0..2 {
                    for e in 0..4 {
                        let v = 32 * j + 16 * h + e;
                        let at = 8 * r + 4 * h + e;
                        for u in 0..2 {
                            o[144 + (2 * j + u) * 64 + at] =
                                (codes[r][v + 4 * u] & 15) | (codes[r][v + 4 * (u + 2)] & 15) << 4;
                        }
                        let mut x = 0u8;
                        for t in 0..4 {
                            x |= (codes[r][v + 4 * t] >> 4) << (2 * t);
                        }
                        o[1168 + 64 * j + at] = x;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- x86

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActRow, MAX_COLS, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES, QK, R};
    use std::arch::x86_64::*;

    macro_rules! entry {
        ($name:ident, $kernel:ident $(, $arg:expr)?) => {
            pub unsafe fn $name(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
                debug_assert!(a.len() <= MAX_COLS && out.len() == a.len() * R);
                match a.len() {
                    1 => $kernel::<1 $(, $arg)?>(w, a, out),
                    2 => $kernel::<2 $(, $arg)?>(w, a, out),
                    3 => $kernel::<3 $(, $arg)?>(w, a, out),
                    4 => $kernel::<4 $(, $arg)?>(w, a, out),
                    n => panic!("kquants_gemm: {n} columns"),
                }
            }
        };
    }
    entry!(q4k_entry, q45k_avx512, false);
    entry!(q5k_entry, q45k_avx512, true);
    entry!(q6k_entry, q6k_avx512);
    entry!(q4k_avx2_entry, q45k_avx2, false);
    entry!(q5k_avx2_entry, q45k_avx2, true);
    entry!(q6k_avx2_entry, q6k_avx2);

    /// Pairs 4-byte groups of the two 32-byte halves: dword `2t` ← `t`,
    /// `2t + 1` ← `8 + t` (Q4_K / Q5_K: sub-blocks `2p` and `2p + 1`).
    const PAIR32: [i32; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];
    /// The same within each 32-byte half: dword `2t` ← `t`, `2t + 1` ←
    /// `4 + t` (Q6_K: the two groups of 16 of a sub-block).
    const PAIR16: [i32; 16] = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15];

    /// 8 f16 at `p` as 16 f32, each twice (lanes `2r`, `2r + 1` = value `r`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn f16x8_dup(p: *const u8) -> __m512 {
        let x = _mm_loadu_si128(p.cast());
        let lo = _mm_unpacklo_epi16(x, x);
        let hi = _mm_unpackhi_epi16(x, x);
        _mm512_cvtph_ps(_mm256_set_m128i(hi, lo))
    }

    /// 8 bytes at `p` broadcast to every 64-bit lane.
    #[inline(always)]
    unsafe fn bcast8(p: *const u8) -> __m512i {
        _mm512_set1_epi64(p.cast::<i64>().read_unaligned())
    }

    /// Two f32 at `p` broadcast to every pair of lanes.
    #[inline(always)]
    unsafe fn bcast2f(p: *const f32) -> __m512 {
        _mm512_castsi512_ps(_mm512_set1_epi64(p.cast::<i64>().read_unaligned()))
    }

    /// Copies the 256 activations of block `b` of column `ar` to `buf` with
    /// their 4-byte groups paired by `perm`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn pair_acts(ar: &ActRow<'_>, b: usize, perm: __m512i, buf: &mut [u8; QK]) {
        let q = ar.qs.as_ptr().add(b * QK);
        for i in 0..4 {
            let v = _mm512_loadu_si512(q.add(64 * i).cast());
            _mm512_storeu_si512(
                buf.as_mut_ptr().add(64 * i).cast(),
                _mm512_permutexvar_epi32(perm, v),
            );
        }
    }

    /// Lane pairs → rows: `out[r] = v[2r] + v[2r + 1]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn store_rows(v: __m512, out: &mut [f32]) {
        let mut t = [0f32; 16];
        _mm512_storeu_ps(t.as_mut_ptr(), v);
        for r in 0..R {
            out[r] = t[2 * r] + t[2 * r + 1];
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn q45k_avx512<const C: usize, const FIVE: bool>(
        w: &[u8],
        a: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        let gb = R * if FIVE { Q5K_BYTES } else { Q4K_BYTES };
        let qs_at = if FIVE { 384 } else { 128 };
        let nb = w.len() / gb;
        let m0f = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        let m10 = _mm512_set1_epi8(0x10);
        let perm = _mm512_loadu_si512(PAIR32.as_ptr().cast());
        let mut acc = [_mm512_setzero_ps(); C];
        let mut accm = [_mm512_setzero_ps(); C];
        let mut abuf = [[0u8; QK]; C];
        let mut scb = [0u8; 64];
        let mut mnb = [0u8; 64];
        for b in 0..nb {
            let p = w.as_ptr().add(b * gb);
            let dd = f16x8_dup(p);
            let dm = f16x8_dup(p.add(16));
            // 6-bit scales and minimums: low nibbles from 64 bytes, top bits
            // from 32 bytes (the upper half shifted by 2 for i >= 32).
            let l = _mm512_loadu_si512(p.add(32).cast());
            let hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(96).cast()));
            let hb = _mm512_mask_srli_epi16(hb, 0xffff_0000, hb, 2);
            let sc = _mm512_ternarylogic_epi32(
                _mm512_and_si512(l, m0f),
                _mm512_slli_epi16(hb, 4),
                m30,
                0xf8,
            );
            let mn = _mm512_ternarylogic_epi32(
                _mm512_and_si512(_mm512_srli_epi16(l, 4), m0f),
                hb,
                m30,
                0xf8,
            );
            _mm512_storeu_si512(scb.as_mut_ptr().cast(), sc);
            _mm512_storeu_si512(mnb.as_mut_ptr().cast(), mn);
            for c in 0..C {
                pair_acts(a.get_unchecked(c), b, perm, &mut abuf[c]);
            }
            for pi in 0..4 {
                let fsc = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                        scb.as_ptr().add(16 * pi).cast(),
                    ))),
                    dd,
                );
                let fmn = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                        mnb.as_ptr().add(16 * pi).cast(),
                    ))),
                    dm,
                );
                let mut wv = [_mm512_setzero_si512(); 8];
                for u in 0..4 {
                    let x = _mm512_loadu_si512(p.add(qs_at + (4 * pi + u) * 64).cast());
                    wv[u] = _mm512_and_si512(x, m0f);
                    wv[u + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m0f);
                }
                if FIVE {
                    let qh = _mm512_loadu_si512(p.add(128 + 64 * pi).cast());
                    for t in 0..8 {
                        let k = _mm512_test_epi8_mask(qh, _mm512_set1_epi8(1 << t));
                        wv[t] = _mm512_mask_add_epi8(wv[t], k, wv[t], m10);
                    }
                }
                for c in 0..C {
                    let ar = a.get_unchecked(c);
                    let ab = abuf[c].as_ptr().add(64 * pi);
                    let mut i0 = _mm512_setzero_si512();
                    for t in 0..8 {
                        i0 = _mm512_dpbusd_epi32(i0, wv[t], bcast8(ab.add(8 * t)));
                    }
                    let dp = _mm512_cvtepi32_ps(i0);
                    let da = bcast2f(ar.d.as_ptr().add(b * 8 + 2 * pi));
                    acc[c] = _mm512_fmadd_ps(dp, _mm512_mul_ps(fsc, da), acc[c]);
                    let ds = bcast2f(ar.dsum.as_ptr().add(b * 8 + 2 * pi));
                    accm[c] = _mm512_fmadd_ps(fmn, ds, accm[c]);
                }
            }
        }
        for c in 0..C {
            store_rows(_mm512_sub_ps(acc[c], accm[c]), &mut out[c * R..(c + 1) * R]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    unsafe fn q6k_avx512<const C: usize>(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
        const GB: usize = R * Q6K_BYTES;
        let nb = w.len() / GB;
        let m0f = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        let perm = _mm512_loadu_si512(PAIR16.as_ptr().cast());
        let mut acc = [_mm512_setzero_ps(); C];
        let mut abuf = [[0u8; QK]; C];
        // −32 · Σq per group of 16
        let mut obuf = [[0i32; 16]; C];
        for b in 0..nb {
            let p = w.as_ptr().add(b * GB);
            let dd = f16x8_dup(p);
            for c in 0..C {
                let ar = a.get_unchecked(c);
                pair_acts(ar, b, perm, &mut abuf[c]);
                let s =
                    _mm512_cvtepi16_epi32(_mm256_loadu_si256(ar.s16.as_ptr().add(b * 16).cast()));
                let s = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, 5));
                _mm512_storeu_si512(obuf[c].as_mut_ptr().cast(), s);
            }
            for j in 0..8 {
                let fsc = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        p.add(16 + 16 * j).cast(),
                    ))),
                    dd,
                );
                let x0 = _mm512_loadu_si512(p.add(144 + 128 * j).cast());
                let x1 = _mm512_loadu_si512(p.add(144 + 128 * j + 64).cast());
                let qh = _mm512_loadu_si512(p.add(1168 + 64 * j).cast());
                // A | (B & C)
                let wv = [
                    _mm512_ternarylogic_epi32(
                        _mm512_and_si512(x0, m0f),
                        _mm512_slli_epi16(qh, 4),
                        m30,
                        0xf8,
                    ),
                    _mm512_ternarylogic_epi32(
                        _mm512_and_si512(x1, m0f),
                        _mm512_slli_epi16(qh, 2),
                        m30,
                        0xf8,
                    ),
                    _mm512_ternarylogic_epi32(
                        _mm512_and_si512(_mm512_srli_epi16(x0, 4), m0f),
                        qh,
                        m30,
                        0xf8,
                    ),
                    _mm512_ternarylogic_epi32(
                        _mm512_and_si512(_mm512_srli_epi16(x1, 4), m0f),
                        _mm512_srli_epi16(qh, 2),
                        m30,
                        0xf8,
                    ),
                ];
                for c in 0..C {
                    let ar = a.get_unchecked(c);
                    let ab = abuf[c].as_ptr().add(32 * j);
                    // starts from −32·Σq of the two groups
                    let mut i0 = _mm512_set1_epi64(
                        obuf[c].as_ptr().add(2 * j).cast::<i64>().read_unaligned(),
                    );
                    for t in 0..4 {
                        i0 = _mm512_dpbusd_epi32(i0, wv[t], bcast8(ab.add(8 * t)));
                    }
                    let dp = _mm512_cvtepi32_ps(i0);
                    let da = _mm512_set1_ps(*ar.d.get_unchecked(b * 8 + j));
                    acc[c] = _mm512_fmadd_ps(dp, _mm512_mul_ps(fsc, da), acc[c]);
                }
            }
        }
        for c in 0..C {
            store_rows(acc[c], &mut out[c * R..(c + 1) * R]);
        }
    }

    // ------------------------------------------------------------ AVX2
    //
    // The same packed layout and the same arithmetic on 256 bits: each zmm
    // of the AVX-512 kernels is two ymm, rows 0..4 (its first 32 bytes) and
    // rows 4..8.  `vpmaddubsw` + `vpmaddwd` (u8 × i8 pairs to i16, then to
    // i32) replace `vpdpbusd`; codes are at most 63 and |q| at most 127, so
    // no i16 pair saturates and every lane's integer sum is the AVX-512
    // kernel's.  The float steps are the same operations in the same order:
    // the results are the AVX-512 kernels', bit for bit.

    /// 4 f16 at `p` as 8 f32, each twice (lanes `2r`, `2r + 1` = value `r`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16x4_dup(p: *const u8) -> __m256 {
        let x = _mm_loadl_epi64(p.cast());
        _mm256_cvtph_ps(_mm_unpacklo_epi16(x, x))
    }

    #[inline(always)]
    unsafe fn bcast8_256(p: *const u8) -> __m256i {
        _mm256_set1_epi64x(p.cast::<i64>().read_unaligned())
    }

    #[inline(always)]
    unsafe fn bcast2f_256(p: *const f32) -> __m256 {
        _mm256_castsi256_ps(_mm256_set1_epi64x(p.cast::<i64>().read_unaligned()))
    }

    /// The u8 × i8 products of `w` and `x` summed over each 4-byte group,
    /// added to `acc` (what `vpdpbusd` computes, for codes ≤ 63).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }

    /// 8 bytes (as 8 f32 lanes) at `p`, unsigned or signed.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn u8x8_ps(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn i8x8_ps(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
    }

    /// Lane pairs → rows: `out[r] = v[2r] + v[2r + 1]` for the 4 rows of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_rows4(v: __m256, out: &mut [f32]) {
        let mut t = [0f32; 8];
        _mm256_storeu_ps(t.as_mut_ptr(), v);
        for r in 0..4 {
            out[r] = t[2 * r] + t[2 * r + 1];
        }
    }

    /// `PAIR32` on the 256 activations of block `b` of column `ar`, into
    /// `buf`: per 64 bytes, dword `2t` ← `t`, `2t + 1` ← `8 + t`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair32_acts(ar: &ActRow<'_>, b: usize, buf: &mut [u8; QK]) {
        let q = ar.qs.as_ptr().add(b * QK);
        let lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        let hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
        for i in 0..4 {
            let v0 = _mm256_loadu_si256(q.add(64 * i).cast());
            let v1 = _mm256_loadu_si256(q.add(64 * i + 32).cast());
            let a = _mm256_blend_epi32::<0xAA>(
                _mm256_permutevar8x32_epi32(v0, lo),
                _mm256_permutevar8x32_epi32(v1, lo),
            );
            let c = _mm256_blend_epi32::<0xAA>(
                _mm256_permutevar8x32_epi32(v0, hi),
                _mm256_permutevar8x32_epi32(v1, hi),
            );
            _mm256_storeu_si256(buf.as_mut_ptr().add(64 * i).cast(), a);
            _mm256_storeu_si256(buf.as_mut_ptr().add(64 * i + 32).cast(), c);
        }
    }

    /// `PAIR16`: per 32 bytes, dword `2t` ← `t`, `2t + 1` ← `4 + t`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair16_acts(ar: &ActRow<'_>, b: usize, buf: &mut [u8; QK]) {
        let q = ar.qs.as_ptr().add(b * QK);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for i in 0..8 {
            let v = _mm256_loadu_si256(q.add(32 * i).cast());
            _mm256_storeu_si256(
                buf.as_mut_ptr().add(32 * i).cast(),
                _mm256_permutevar8x32_epi32(v, perm),
            );
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q45k_avx2<const C: usize, const FIVE: bool>(
        w: &[u8],
        a: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        let gb = R * if FIVE { Q5K_BYTES } else { Q4K_BYTES };
        let qs_at = if FIVE { 384 } else { 128 };
        let nb = w.len() / gb;
        let m0f = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let m10 = _mm256_set1_epi8(0x10);
        // [c][half]: rows 0..4, rows 4..8.
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        let mut accm = [[_mm256_setzero_ps(); 2]; C];
        let mut abuf = [[0u8; QK]; C];
        let mut scb = [0u8; 64];
        let mut mnb = [0u8; 64];
        for b in 0..nb {
            let p = w.as_ptr().add(b * gb);
            let dd = [f16x4_dup(p), f16x4_dup(p.add(8))];
            let dm = [f16x4_dup(p.add(16)), f16x4_dup(p.add(24))];
            // 6-bit scales and minimums (see the AVX-512 kernel).
            let hb0 = _mm256_loadu_si256(p.add(96).cast());
            let hb1 = _mm256_srli_epi16(hb0, 2);
            for (i, hb) in [hb0, hb1].into_iter().enumerate() {
                let l = _mm256_loadu_si256(p.add(32 + 32 * i).cast());
                let sc = _mm256_or_si256(
                    _mm256_and_si256(l, m0f),
                    _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30),
                );
                let mn = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l, 4), m0f),
                    _mm256_and_si256(hb, m30),
                );
                _mm256_storeu_si256(scb.as_mut_ptr().add(32 * i).cast(), sc);
                _mm256_storeu_si256(mnb.as_mut_ptr().add(32 * i).cast(), mn);
            }
            for c in 0..C {
                pair32_acts(a.get_unchecked(c), b, &mut abuf[c]);
            }
            for pi in 0..4 {
                for half in 0..2 {
                    let at = 16 * pi + 8 * half;
                    let fsc = _mm256_mul_ps(u8x8_ps(scb.as_ptr().add(at)), dd[half]);
                    let fmn = _mm256_mul_ps(u8x8_ps(mnb.as_ptr().add(at)), dm[half]);
                    let mut wv = [_mm256_setzero_si256(); 8];
                    for u in 0..4 {
                        let x =
                            _mm256_loadu_si256(p.add(qs_at + (4 * pi + u) * 64 + 32 * half).cast());
                        wv[u] = _mm256_and_si256(x, m0f);
                        wv[u + 4] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m0f);
                    }
                    if FIVE {
                        let qh = _mm256_loadu_si256(p.add(128 + 64 * pi + 32 * half).cast());
                        for t in 0..8 {
                            let bit = _mm256_set1_epi8(1 << t);
                            let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                            wv[t] = _mm256_or_si256(wv[t], _mm256_and_si256(set, m10));
                        }
                    }
                    for c in 0..C {
                        let ar = a.get_unchecked(c);
                        let ab = abuf[c].as_ptr().add(64 * pi);
                        let mut i0 = _mm256_setzero_si256();
                        for t in 0..8 {
                            i0 = dot4(i0, wv[t], bcast8_256(ab.add(8 * t)));
                        }
                        let dp = _mm256_cvtepi32_ps(i0);
                        let da = bcast2f_256(ar.d.as_ptr().add(b * 8 + 2 * pi));
                        acc[c][half] = _mm256_fmadd_ps(dp, _mm256_mul_ps(fsc, da), acc[c][half]);
                        let ds = bcast2f_256(ar.dsum.as_ptr().add(b * 8 + 2 * pi));
                        accm[c][half] = _mm256_fmadd_ps(fmn, ds, accm[c][half]);
                    }
                }
            }
        }
        for c in 0..C {
            for half in 0..2 {
                let o = c * R + 4 * half;
                store_rows4(
                    _mm256_sub_ps(acc[c][half], accm[c][half]),
                    &mut out[o..o + 4],
                );
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k_avx2<const C: usize>(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]) {
        const GB: usize = R * Q6K_BYTES;
        let nb = w.len() / GB;
        let m0f = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        let mut abuf = [[0u8; QK]; C];
        // −32 · Σq per group of 16
        let mut obuf = [[0i32; 16]; C];
        for b in 0..nb {
            let p = w.as_ptr().add(b * GB);
            let dd = [f16x4_dup(p), f16x4_dup(p.add(8))];
            for c in 0..C {
                let ar = a.get_unchecked(c);
                pair16_acts(ar, b, &mut abuf[c]);
                for i in 0..2 {
                    let s = _mm256_cvtepi16_epi32(_mm_loadu_si128(
                        ar.s16.as_ptr().add(b * 16 + 8 * i).cast(),
                    ));
                    let s = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s, 5));
                    _mm256_storeu_si256(obuf[c].as_mut_ptr().add(8 * i).cast(), s);
                }
            }
            for j in 0..8 {
                for half in 0..2 {
                    let fsc = _mm256_mul_ps(i8x8_ps(p.add(16 + 16 * j + 8 * half)), dd[half]);
                    let o = 32 * half;
                    let x0 = _mm256_loadu_si256(p.add(144 + 128 * j + o).cast());
                    let x1 = _mm256_loadu_si256(p.add(144 + 128 * j + 64 + o).cast());
                    let qh = _mm256_loadu_si256(p.add(1168 + 64 * j + o).cast());
                    let top = |v: __m256i| _mm256_and_si256(v, m30);
                    let wv = [
                        _mm256_or_si256(_mm256_and_si256(x0, m0f), top(_mm256_slli_epi16(qh, 4))),
                        _mm256_or_si256(_mm256_and_si256(x1, m0f), top(_mm256_slli_epi16(qh, 2))),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x0, 4), m0f), top(qh)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(x1, 4), m0f),
                            top(_mm256_srli_epi16(qh, 2)),
                        ),
                    ];
                    for c in 0..C {
                        let ar = a.get_unchecked(c);
                        let ab = abuf[c].as_ptr().add(32 * j);
                        // starts from −32·Σq of the two groups
                        let mut i0 = _mm256_set1_epi64x(
                            obuf[c].as_ptr().add(2 * j).cast::<i64>().read_unaligned(),
                        );
                        for t in 0..4 {
                            i0 = dot4(i0, wv[t], bcast8_256(ab.add(8 * t)));
                        }
                        let dp = _mm256_cvtepi32_ps(i0);
                        let da = _mm256_set1_ps(*ar.d.get_unchecked(b * 8 + j));
                        acc[c][half] = _mm256_fmadd_ps(dp, _mm256_mul_ps(fsc, da), acc[c][half]);
                    }
                }
            }
        }
        for c in 0..C {
            for half in 0..2 {
                let o = c * R + 4 * half;
                store_rows4(acc[c][half], &mut out[o..o + 4]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::quant::act::ActRows;
    use crate::runtime::simd;

    const TYPES: [WType; 3] = [WType::Q4K, WType::Q5K, WType::Q6K];

    // Random blocks, the f64 reference and its error bound: kquants.rs's.
    use crate::runtime::quant::kquants::tests::{f16_fields, h, random_row, reference, Rng};

    /// 8 rows of `nb` random blocks.
    fn random_rows(ty: WType, nb: usize, rng: &mut Rng) -> Vec<u8> {
        random_row(ty, R * nb, rng)
    }

    fn random_acts(n: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n * k)
            .map(|i| match (i / 32) % 7 {
                0 => 0.0,
                3 => rng.unit() * 1000.0,
                4 => rng.unit() * 1e6,
                5 => rng.unit() * 1e-4,
                _ => rng.unit(),
            })
            .collect()
    }

    fn packed(pack: PackFn, w: &[u8], k: usize) -> Vec<u8> {
        let mut p = vec![0u8; w.len()];
        pack(w, k, &mut p);
        p
    }

    #[test]
    fn gemm_matches_reference() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for &ty in &TYPES {
            let rb = |k: usize| ty.row_bytes(k);
            for &k in &[256usize, 1024, 2048] {
                for _trial in 0..4 {
                    let w = random_rows(ty, k / QK, &mut rng);
                    let x = random_acts(4, k, &mut rng);
                    let mut acts = ActRows::new();
                    acts.quantize(&x, 4, k);
                    let cols: Vec<_> = (0..4).map(|i| acts.row(i)).collect();
                    for level in simd::levels_to_test() {
                        let Some((pack, f)) = gemm(ty, level) else {
                            continue;
                        };
                        let p = packed(pack, &w, k);
                        let mut out = [0f32; 4 * R];
                        unsafe { f(&p, &cols, &mut out) };
                        for c in 0..4 {
                            for r in 0..R {
                                let row = &w[r * rb(k)..(r + 1) * rb(k)];
                                let (want, mag) = reference(ty, row, &cols[c], k);
                                let got = out[c * R + r];
                                let err = (got as f64 - want).abs();
                                assert!(
                                    err <= 2e-6 * mag + 1e-30,
                                    "{} {} k={k} col {c} row {r}: got {got} want {want} \
                                     (mag {mag}, err {err})",
                                    ty.name(),
                                    level.name(),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The specified order (`kquants::dot_fn`): every packed kernel gives
    /// the portable per-row kernel's bits.
    #[test]
    fn packed_kernels_give_the_portable_bits() {
        let mut rng = Rng(0x51ab_1e00_0000_0002);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for &ty in &TYPES {
            let portable = crate::runtime::quant::kquants::dot_fn(ty, simd::SimdLevel::Scalar);
            let rb = |k: usize| ty.row_bytes(k);
            for &k in &[256usize, 1024, 2560] {
                let w = random_rows(ty, k / QK, &mut rng);
                let x = random_acts(4, k, &mut rng);
                let mut acts = ActRows::new();
                acts.quantize(&x, 4, k);
                for level in simd::levels_to_test() {
                    let Some((pack, f)) = gemm(ty, level) else {
                        continue;
                    };
                    let p = packed(pack, &w, k);
                    for n in 1..=4 {
                        let cols: Vec<_> = (0..n).map(|i| acts.row(i)).collect();
                        let mut got = vec![0f32; n * R];
                        unsafe { f(&p, &cols, &mut got) };
                        let mut want = vec![0f32; n * R];
                        for r in 0..R {
                            let mut o = vec![0f32; n];
                            unsafe { portable(&w[r * rb(k)..(r + 1) * rb(k)], &cols, &mut o) };
                            for c in 0..n {
                                want[c * R + r] = o[c];
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

    #[test]
    fn zero_and_full_rows() {
        let k = 512;
        let mut rng = Rng(99);
        let x = random_acts(1, k, &mut rng);
        let mut acts = ActRows::new();
        acts.quantize(&x, 1, k);
        let cols = [acts.row(0)];
        for &ty in &TYPES {
            let bb = ty.block_bytes();
            let zero = vec![0u8; R * ty.row_bytes(k)];
            let mut full = vec![0xffu8; R * ty.row_bytes(k)];
            for blk in full.chunks_exact_mut(bb) {
                for &at in f16_fields(ty) {
                    blk[at..at + 2].copy_from_slice(&h(0.25));
                }
            }
            for level in simd::levels_to_test() {
                let Some((pack, f)) = gemm(ty, level) else {
                    continue;
                };
                let mut out = [1f32; R];
                unsafe { f(&packed(pack, &zero, k), &cols, &mut out) };
                assert!(
                    out.iter().all(|&v| v == 0.0),
                    "{} {}",
                    ty.name(),
                    level.name()
                );
                unsafe { f(&packed(pack, &full, k), &cols, &mut out) };
                let (want, mag) = reference(ty, &full[..ty.row_bytes(k)], &cols[0], k);
                for r in 0..R {
                    assert!(
                        (out[r] as f64 - want).abs() <= 2e-6 * mag,
                        "{} {}",
                        ty.name(),
                        level.name()
                    );
                }
            }
        }
    }

    #[test]
    fn columns_are_independent() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let k = 1024;
        for &ty in &TYPES {
            let w = random_rows(ty, k / QK, &mut rng);
            let x = random_acts(4, k, &mut rng);
            let mut acts = ActRows::new();
            acts.quantize(&x, 4, k);
            let cols: Vec<_> = (0..4).map(|i| acts.row(i)).collect();
            for level in simd::levels_to_test() {
                let Some((pack, f)) = gemm(ty, level) else {
                    continue;
                };
                let p = packed(pack, &w, k);
                let single: Vec<[f32; R]> = (0..4)
                    .map(|c| {
                        let mut o = [0f32; R];
                        unsafe { f(&p, &cols[c..c + 1], &mut o) };
                        o
                    })
                    .collect();
                for n in 2..=MAX_COLS {
                    for start in 0..4 {
                        let which: Vec<usize> = (0..n).map(|i| (start + i) % 4).collect();
                        let a: Vec<_> = which.iter().map(|&c| cols[c]).collect();
                        let mut out = vec![0f32; n * R];
                        unsafe { f(&p, &a, &mut out) };
                        for (pos, &c) in which.iter().enumerate() {
                            for r in 0..R {
                                assert_eq!(
                                    out[pos * R + r].to_bits(),
                                    single[c][r].to_bits(),
                                    "{} {} n={n} pos={pos} row {r}",
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

    /// The AVX2 kernels give the AVX-512 kernels' results bit for bit.
    #[test]
    fn avx2_and_avx512_kernels_give_the_same_bits() {
        if !simd::can_test(SimdLevel::Avx512) {
            return;
        }
        let mut rng = Rng(0x5eed);
        for &ty in &TYPES {
            for &k in &[256usize, 1024, 2048] {
                let w = random_rows(ty, k / QK, &mut rng);
                let x = random_acts(MAX_COLS, k, &mut rng);
                let mut acts = ActRows::new();
                acts.quantize(&x, MAX_COLS, k);
                let (pack, g2) = gemm(ty, SimdLevel::Avx2).unwrap();
                let (_, g5) = gemm(ty, SimdLevel::Avx512).unwrap();
                let p = packed(pack, &w, k);
                for n in 1..=MAX_COLS {
                    let cols: Vec<_> = (0..n).map(|i| acts.row(i)).collect();
                    let (mut o2, mut o5) = (vec![0f32; n * R], vec![1f32; n * R]);
                    unsafe {
                        g2(&p, &cols, &mut o2);
                        g5(&p, &cols, &mut o5);
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&o2), bits(&o5), "{} k={k} n={n}", ty.name());
                }
            }
        }
    }

    /// Packing writes every byte of a destination exactly as large as the
    /// source, and different rows give different packings.
    #[test]
    fn packing_preserves_size() {
        let mut rng = Rng(7);
        for &ty in &TYPES {
            for level in simd::levels_to_test() {
                let Some((pack, _)) = gemm(ty, level) else {
                    continue;
                };
                for &k in &[256usize, 2048] {
                    let w: Vec<u8> = (0..R * ty.row_bytes(k)).map(|_| rng.byte()).collect();
                    let mut d0 = vec![0u8; w.len()];
                    let mut d1 = vec![0xffu8; w.len()];
                    pack(&w, k, &mut d0);
                    pack(&w, k, &mut d1);
                    assert_eq!(d0, d1, "{} k={k}: bytes left unwritten", ty.name());
                    // a bijection: flipping any single source bit changes it
                    for _ in 0..64 {
                        let at = (rng.next() % w.len() as u64) as usize;
                        let mut w2 = w.clone();
                        w2[at] ^= 1 << (rng.next() % 8);
                        pack(&w2, k, &mut d1);
                        assert_ne!(d0, d1, "{} k={k}: byte {at} lost", ty.name());
                        let mut s0: Vec<u32> = d0.iter().map(|&b| b.count_ones()).collect();
                        let s1: u32 = d1.iter().map(|&b| b.count_ones()).sum();
                        s0.push(0);
                        let s0: u32 = s0.iter().sum();
                        assert_eq!(s0.abs_diff(s1), 1, "{} k={k}", ty.name());
                    }
                }
            }
        }
    }
}
