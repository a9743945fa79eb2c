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
//! The SIMD code for these types is the packed kernels of `legacy_gemm`;
//! this module's portable kernel follows their order (see [`dot_fn`]).

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

/// The dot kernel for legacy type `ty` at `level`: at every level the one
/// specified order, which the packed kernels (`legacy_gemm`) compute for
/// whole groups of 8 rows at AVX2 and AVX-512, and this portable code for a
/// row on its own (a matrix whose rows are not a whole number of groups):
/// per row, `acc = fma(I_b, d_w · d_a, acc)` over the blocks `b` in order
/// with the exact integer sum `I_b` of the block, the minimums of Q4_1 and
/// Q5_1 in a second accumulator, `macc = fma(m_b, dsum_b, macc)`, then
/// `acc + macc`.
pub fn dot_fn(ty: WType, level: SimdLevel) -> QuantDot {
    let _ = level;
    match type_code(ty) {
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
    let mut macc = [0f32; C];
    for (b, blk) in w.chunks_exact(block_bytes(T)).take(nb).enumerate() {
        let (d, m, v) = decode_block::<T>(blk);
        for c in 0..C {
            let r = &a[c];
            let q = &r.qs[b * 32..b * 32 + 32];
            let isum: i32 = v.iter().zip(q).map(|(&x, &y)| x as i32 * y as i32).sum();
            acc[c] = (isum as f32).mul_add(d * r.d[b], acc[c]);
            if has_min(T) {
                macc[c] = m.mul_add(r.dsum[b], macc[c]);
            }
        }
    }
    for c in 0..C {
        out[c] = if has_min(T) { acc[c] + macc[c] } else { acc[c] };
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
                    for level in simd::levels_to_test() {
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
                for level in simd::levels_to_test() {
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
