//! Activations quantized for integer dot products: each row of `k` values
//! (`k` a multiple of 32) becomes blocks of 32 int8 values `q` with one f32
//! scale `d` (value ≈ d · q, |q| ≤ 127), plus the sums the kernels need for
//! weight types with an offset or a minimum.  Stored as separate arrays so
//! that SIMD loads of consecutive blocks are contiguous.

/// One quantized activation row, borrowed.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    /// `k` values.
    pub qs: &'a [i8],
    /// `k / 32` scales.
    pub d: &'a [f32],
    /// `k / 32` values `d · Σ q` over each block of 32.
    pub dsum: &'a [f32],
    /// `k / 16` integer sums `Σ q` over each half block of 16.
    pub s16: &'a [i16],
}

/// Quantized activation rows, owned; reused between products so that no
/// step allocates once it has reached its largest size.
#[derive(Default)]
pub struct ActRows {
    k: usize,
    n: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    dsum: Vec<f32>,
    s16: Vec<i16>,
}

impl ActRows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `n` rows of `k` values each, stored consecutively in `x`,
    /// in blocks of 32 (portable code; the runtime quantizes through
    /// [`RowWriter`]).
    pub fn quantize(&mut self, x: &[f32], n: usize, k: usize) {
        assert!(x.len() >= n * k);
        self.resize(n, k);
        for b in 0..n * k / 32 {
            quantize_block(
                &x[b * 32..b * 32 + 32],
                (&mut self.qs[b * 32..b * 32 + 32]).try_into().unwrap(),
                &mut self.d[b],
                &mut self.dsum[b],
                (&mut self.s16[b * 2..b * 2 + 2]).try_into().unwrap(),
            );
        }
    }

    /// Makes room for `n` rows of `k` values (a multiple of 32), keeping
    /// the allocation when it is large enough.
    pub fn resize(&mut self, n: usize, k: usize) {
        assert!(k.is_multiple_of(32));
        self.k = k;
        self.n = n;
        fit(&mut self.qs, n * k);
        fit(&mut self.d, n * k / 32);
        fit(&mut self.dsum, n * k / 32);
        fit(&mut self.s16, n * k / 16);
    }

    /// A handle through which several threads quantize distinct rows.
    pub fn writer(&mut self) -> RowWriter {
        RowWriter {
            k: self.k,
            n: self.n,
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            dsum: self.dsum.as_mut_ptr(),
            s16: self.s16.as_mut_ptr(),
        }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    #[inline]
    pub fn row(&self, i: usize) -> ActRow<'_> {
        let k = self.k;
        ActRow {
            qs: &self.qs[i * k..(i + 1) * k],
            d: &self.d[i * k / 32..(i + 1) * k / 32],
            dsum: &self.dsum[i * k / 32..(i + 1) * k / 32],
            s16: &self.s16[i * k / 16..(i + 1) * k / 16],
        }
    }
}

/// A Q8_0 / Q8_1 block's scale `amax / 127` and the factor its values are
/// multiplied by, `127 / amax`: as llama.cpp's x86 code quantizes (its
/// portable code multiplies by `1 / scale` instead, which differs in the
/// last bit and so at rounding ties).
#[inline(always)]
pub fn q8_scale(amax: f32) -> (f32, f32) {
    let scale = amax / 127.0;
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    (scale, inv)
}

/// One block: the scale set by the largest magnitude, rounded to nearest
/// with ties to even (as llama.cpp's x86 code, `_mm256_round_ps`).
#[inline]
pub fn quantize_block(
    x: &[f32],
    qs: &mut [i8; 32],
    d: &mut f32,
    dsum: &mut f32,
    s16: &mut [i16; 2],
) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (scale, inv) = q8_scale(amax);
    let mut sums = [0i32; 2];
    for (i, (q, v)) in qs.iter_mut().zip(x).enumerate() {
        let r = round_even_small(v * inv).clamp(-127.0, 127.0) as i8;
        *q = r;
        sums[i / 16] += r as i32;
    }
    (*d, *dsum) = stored_scales(scale, sums[0] + sums[1]);
    *s16 = [sums[0] as i16, sums[1] as i16];
}

/// What a block keeps of its scale `scale` and integer sum `sum`: `d` and
/// `dsum = d · sum`, each rounded to f16 as ggml stores them in its Q8_0 and
/// Q8_1 activation blocks (the quants themselves come from the unrounded
/// scale, as in ggml), so that products with legacy weights agree with
/// llama.cpp's.  A value outside f16's normal range is kept in f32 (ggml
/// would store infinity or lose it).
#[inline(always)]
pub fn stored_scales(scale: f32, sum: i32) -> (f32, f32) {
    (to_f16_range(scale), to_f16_range(scale * sum as f32))
}

#[inline(always)]
fn to_f16_range(v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    if h.is_finite() && (h.is_normal() || v == 0.0) {
        h.to_f32()
    } else {
        v
    }
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2^22 (and
/// NaN stays NaN): adding and taking away 1.5 · 2^23 leaves no fraction bits.
/// The same result as `f32::round_ties_even`, which without SSE4.1 in the
/// baseline is a call to libm's `rintf` per value (measured: 7.6% of Gemma
/// 3's prompt processing); this one is two additions, and vectorises.
/// llama.cpp's `nearest_int` rounds Q8_K activations the same way.
#[inline(always)]
pub fn round_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes a row of `k = x.len()` values (`k` a multiple of 256) as
/// llama.cpp quantizes activations for K-quant weights (its Q8_K blocks):
/// one f32 scale per 256 values, set by the value of largest magnitude
/// (which becomes ∓127), rounded half to even.  The scale is repeated in
/// the 8 entries of `d` of its 256 values (the kernels read one per 32);
/// `dsum` and `s16` hold the sums as for [`quantize_block`].  The portable
/// definition: `ops::quantize_row_q8k` gives the same bits at every SIMD
/// level.
pub fn quantize_row_q8k(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    dsum: &mut [f32],
    s16: &mut [i16],
) {
    check_q8k_lengths(x, qs, d, dsum, s16);
    for b in 0..x.len() / 256 {
        let xb = &x[b * 256..b * 256 + 256];
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let iscale = if amax > 0.0 { -127.0 / max } else { 0.0 };
        let q = &mut qs[b * 256..b * 256 + 256];
        for (q, &v) in q.iter_mut().zip(xb) {
            // NaN becomes 0 (`as` saturates and maps NaN to 0).
            *q = round_even_small(iscale * v).clamp(-127.0, 127.0) as i8;
        }
        for j in 0..16 {
            let s: i32 = q[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
            s16[b * 16 + j] = s as i16;
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

/// A Q8_K block's scale, `1 / iscale` (0 when its largest magnitude
/// `amax` is 0), into its 8 entries of `d`, and each 32 values' `dsum` from
/// the block's 16 sums `s16`.
#[inline(always)]
pub fn q8k_scales(amax: f32, iscale: f32, s16: &[i16], d: &mut [f32], dsum: &mut [f32]) {
    let scale = if amax > 0.0 { 1.0 / iscale } else { 0.0 };
    for j in 0..8 {
        let sum = s16[2 * j] as i32 + s16[2 * j + 1] as i32;
        d[j] = scale;
        dsum[j] = scale * sum as f32;
    }
}

/// Panics unless `x` is whole Q8_K blocks and the outputs can hold them.
pub fn check_q8k_lengths(x: &[f32], qs: &[i8], d: &[f32], dsum: &[f32], s16: &[i16]) {
    let k = x.len();
    assert!(
        k.is_multiple_of(256)
            && qs.len() >= k
            && d.len() >= k / 32
            && dsum.len() >= k / 32
            && s16.len() >= k / 16,
        "quantize_row_q8k: bad lengths"
    );
}

fn fit<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Raw access to the rows of an [`ActRows`] for a pool job in which each
/// thread quantizes its own rows.  Valid while the `ActRows` is neither
/// resized nor dropped.
#[derive(Clone, Copy)]
pub struct RowWriter {
    k: usize,
    n: usize,
    qs: *mut i8,
    d: *mut f32,
    dsum: *mut f32,
    s16: *mut i16,
}

// SAFETY: threads write disjoint rows (the caller's contract).
unsafe impl Send for RowWriter {}
unsafe impl Sync for RowWriter {}

impl RowWriter {
    /// The parts of row `t`: values, scales, scaled sums, half sums.
    ///
    /// # Safety
    /// No other thread touches row `t` meanwhile, and the `ActRows` this
    /// came from is alive and unchanged.
    #[allow(clippy::mut_from_ref, clippy::type_complexity)]
    pub unsafe fn row_mut(&self, t: usize) -> (&mut [i8], &mut [f32], &mut [f32], &mut [i16]) {
        let k = self.k;
        assert!(t < self.n);
        (
            std::slice::from_raw_parts_mut(self.qs.add(t * k), k),
            std::slice::from_raw_parts_mut(self.d.add(t * k / 32), k / 32),
            std::slice::from_raw_parts_mut(self.dsum.add(t * k / 32), k / 32),
            std::slice::from_raw_parts_mut(self.s16.add(t * k / 16), k / 16),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_rounding_is_ties_to_even() {
        use super::round_even_small;
        let mut xs: Vec<f32> = (-300..=300).map(|k| k as f32 * 0.5).collect();
        xs.extend((-2000..=2000).map(|k| k as f32 * 0.0625 + 1e-3));
        xs.extend([
            0.0,
            -0.0,
            127.49999,
            -127.49999,
            0.49999997,
            -0.50000006,
            4194303.5,
        ]);
        for x in xs {
            assert_eq!(
                round_even_small(x),
                x.round_ties_even(),
                "{x}: {} against {}",
                round_even_small(x),
                x.round_ties_even()
            );
        }
        assert!(round_even_small(f32::NAN).is_nan());
    }

    use super::*;

    #[test]
    fn block_scales_are_stored_as_ggml_stores_them() {
        // 1/3 is not an f16: the stored scale is its f16 rounding, and the
        // sum is multiplied by the unrounded scale before its own rounding.
        let third = 1.0f32 / 3.0;
        let h = |v: f32| half::f16::from_f32(v).to_f32();
        assert_eq!(stored_scales(third, 0), (h(third), 0.0));
        assert_eq!(stored_scales(third, 3001), (h(third), h(third * 3001.0)));
        assert_ne!(h(third) * 3001.0, h(third * 3001.0));
        // Beyond f16's normal range the f32 value is kept.
        assert_eq!(stored_scales(1e6, 1), (1e6, 1e6));
        assert_eq!(stored_scales(1e-6, -1), (1e-6, -1e-6));
        assert_eq!(stored_scales(0.0, 0), (0.0, 0.0));

        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.0) / 3.0).collect();
        let (mut qs, mut d, mut dsum, mut s16) = ([0i8; 32], 0f32, 0f32, [0i16; 2]);
        quantize_block(&x, &mut qs, &mut d, &mut dsum, &mut s16);
        let scale = (16.0f32 / 3.0) / 127.0;
        assert_eq!(qs[31], 127);
        assert_eq!(qs[15], 0);
        let sum = s16[0] as i32 + s16[1] as i32;
        assert_eq!(sum, qs.iter().map(|&q| q as i32).sum::<i32>());
        assert_eq!((d, dsum), stored_scales(scale, sum));
    }

    #[test]
    fn q8_blocks_round_as_llama_cpp_on_x86() {
        // amax 127: the factor is 127 / 127 = 1, so the values are their own
        // quants before rounding; ties go to even (2.5 → 2, 3.5 → 4,
        // -2.5 → -2), not away from zero.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        x[4] = 0.5;
        let (mut qs, mut d, mut dsum, mut s16) = ([0i8; 32], 0f32, 0f32, [0i16; 2]);
        quantize_block(&x, &mut qs, &mut d, &mut dsum, &mut s16);
        assert_eq!(qs[..5], [127, 2, 4, -2, 0]);
        // The factor is 127 / amax, not 1 / (amax / 127): they differ in the
        // last bit for this amax, and so would round this value differently.
        let amax = 11.0f32;
        assert_ne!(127.0 / amax, 1.0 / (amax / 127.0));
        assert_eq!(q8_scale(amax), (amax / 127.0, 127.0 / amax));
    }

    #[test]
    fn q8k_rows_by_hand() {
        // Block 0: the largest magnitude is -2 (at 7): scale -2 / -127, so
        // -2 ↦ 127 with a negative scale; ties round to even.  Block 1: zero.
        let mut x = vec![0f32; 512];
        for (i, v) in x[..256].iter_mut().enumerate() {
            *v = ((i % 9) as f32 - 4.0) / 4.0;
        }
        x[7] = -2.0;
        // -127/-2 · v = 63.5 · v: v = 1/127 gives 0.5 → 0; 3/127 → 1.5 → 2.
        x[20] = 1.0 / 127.0;
        x[21] = 3.0 / 127.0;
        let (mut qs, mut d, mut dsum, mut s16) = (
            vec![9i8; 512],
            vec![9f32; 16],
            vec![9f32; 16],
            vec![9i16; 32],
        );
        quantize_row_q8k(&x, &mut qs, &mut d, &mut dsum, &mut s16);
        let scale = 1.0 / (-127.0f32 / -2.0);
        assert!(d[..8].iter().all(|&v| v == scale));
        assert_eq!(qs[7], -127);
        assert_eq!((qs[20], qs[21]), (0, 2));
        for (i, &q) in qs[..256].iter().enumerate() {
            if i != 20 && i != 21 {
                assert_eq!(q, (x[i] / scale).round() as i8, "value {i}");
            }
        }
        for j in 0..16 {
            let s: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(s16[j] as i32, s);
        }
        for j in 0..8 {
            let s = s16[2 * j] as i32 + s16[2 * j + 1] as i32;
            assert_eq!(dsum[j], scale * s as f32);
        }
        assert!(qs[256..].iter().all(|&q| q == 0));
        assert!(d[8..].iter().chain(&dsum[8..]).all(|&v| v == 0.0));
        assert!(s16[16..].iter().all(|&v| v == 0));
    }
}
