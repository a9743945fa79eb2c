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

    /// Quantizes `n` rows of `k` values each, stored consecutively in `x`
    /// (portable code; the runtime quantizes through [`RowWriter`]).
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

/// One block: round to nearest with the scale set by the largest magnitude.
#[inline]
pub fn quantize_block(
    x: &[f32],
    qs: &mut [i8; 32],
    d: &mut f32,
    dsum: &mut f32,
    s16: &mut [i16; 2],
) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sums = [0i32; 2];
    for (i, (q, v)) in qs.iter_mut().zip(x).enumerate() {
        let r = (v * inv).round().clamp(-127.0, 127.0) as i8;
        *q = r;
        sums[i / 16] += r as i32;
    }
    *d = scale;
    *dsum = scale * (sums[0] + sums[1]) as f32;
    *s16 = [sums[0] as i16, sums[1] as i16];
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
