//! Matrix products `Y = X Wᵀ` of a weight matrix, read in place from the
//! memory-mapped file, with `n` activation rows.  Each thread of a pool job
//! takes a contiguous share of the weight rows; within it, blocks of weight
//! rows stay in cache while the activation rows pass by, up to
//! [`MAX_COLS`](super::quant::MAX_COLS) at a time per kernel call.

use super::quant::{
    dot_kernel, gemm_kernel, ActRow, ActRows, Dot, GemmFn, WType, MAX_COLS, PACK_ROWS,
};
use super::simd::SimdLevel;

/// Weight rows computed together against every activation row.
const ROW_BLOCK: usize = 16;

/// A weight matrix of `rows` rows of `k` values, at byte `offset` of the
/// mapped file, or, once [`Matrix::pack`] has run, at byte `offset` of the
/// model's packed weights in the GEMM kernel's layout.
#[derive(Clone)]
pub struct Matrix {
    pub ty: WType,
    pub rows: usize,
    pub k: usize,
    pub offset: usize,
    row_bytes: usize,
    dot: Dot,
    gemm: Option<GemmFn>,
}

impl Matrix {
    pub fn new(ty: WType, rows: usize, k: usize, offset: usize, level: SimdLevel) -> Self {
        Self {
            ty,
            rows,
            k,
            offset,
            row_bytes: ty.row_bytes(k),
            dot: dot_kernel(ty, level),
            gemm: None,
        }
    }

    /// Whether this matrix has a packed kernel at `level` (and at least one
    /// whole group of rows for it).
    pub fn packable(&self, level: SimdLevel) -> bool {
        self.rows >= PACK_ROWS && gemm_kernel(self.ty, level).is_some()
    }

    /// The rows in whole packed groups; the rest (fewer than `PACK_ROWS`)
    /// are stored after them as they are in the file and computed by the
    /// per-row kernel, which gives the same bits (one specified order).
    fn packed_rows(&self) -> usize {
        self.rows / PACK_ROWS * PACK_ROWS
    }

    /// Writes this matrix, rearranged for its GEMM kernel, at byte `start`
    /// of `packed`, and reads it from there from now on.  Call only when
    /// `packable`.  Uses up to `threads` threads, a slice of about 4 MiB at
    /// a time; `done` hears each slice's byte range (relative to the
    /// matrix) once it has been copied.
    pub fn pack(
        &mut self,
        file: &[u8],
        packed: &mut [u8],
        start: usize,
        level: SimdLevel,
        threads: usize,
        done: &dyn Fn(std::ops::Range<usize>),
    ) {
        let Some((pack, gemm)) = gemm_kernel(self.ty, level) else {
            return;
        };
        let group = PACK_ROWS * self.row_bytes;
        let whole = self.packed_rows() * self.row_bytes;
        let dst = &mut packed[start..start + self.bytes()];
        let src = &file[self.offset..self.offset + self.bytes()];
        dst[whole..].copy_from_slice(&src[whole..]);
        let (dst, src) = (&mut dst[..whole], &src[..whole]);
        let threads = threads.max(1);
        let slice = (4 << 20) / group * group + group;
        let k = self.k;
        for (i, (dst, src)) in dst.chunks_mut(slice).zip(src.chunks(slice)).enumerate() {
            let per = (src.len() / group).div_ceil(threads).max(1) * group;
            std::thread::scope(|s| {
                for (d, s_) in dst.chunks_mut(per).zip(src.chunks(per)) {
                    s.spawn(move || {
                        for (dg, sg) in d.chunks_mut(group).zip(s_.chunks(group)) {
                            pack(sg, k, dg);
                        }
                    });
                }
            });
            done(i * slice..i * slice + src.len());
        }
        self.offset = start;
        self.gemm = Some(gemm);
    }

    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    pub fn row<'a>(&self, file: &'a [u8], r: usize) -> &'a [u8] {
        let start = self.offset + r * self.row_bytes;
        &file[start..start + self.row_bytes]
    }
}

/// The activations of a product: quantized rows for quantized weights, f32
/// rows (consecutive, `k` apart) for float weights.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub q: &'a ActRows,
    pub f: &'a [f32],
}

/// An output matrix written by several threads at once, each to its own
/// columns.
#[derive(Clone, Copy)]
pub struct Out {
    ptr: *mut f32,
    len: usize,
    /// Distance between output rows.
    pub ld: usize,
}

// SAFETY: threads write disjoint elements (their own weight rows' columns).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub fn new(buf: &mut [f32], ld: usize) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            ld,
        }
    }

    /// # Safety
    /// No other thread reads or writes element `i` during the job, and the
    /// buffer outlives the job.
    #[inline]
    pub unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        *self.ptr.add(i) = v;
    }
}

/// Computes weight rows `rows` of `w` for all `n` activation rows:
/// `out[t * ld + col + r] = Σ_i W[r][i] · x[t][i]`.  `file` is the mapped
/// file, `packed` the model's packed weights.
///
/// # Safety
/// `out` is written only by this call at those elements during the job;
/// the kernel's SIMD level is supported by this CPU; for a packed matrix,
/// `rows` starts on a whole group of `PACK_ROWS` rows and ends on one or at
/// the matrix's last row.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_rows(
    w: &Matrix,
    file: &[u8],
    packed: &[u8],
    x: Input<'_>,
    n: usize,
    rows: std::ops::Range<usize>,
    out: Out,
    col: usize,
) {
    if let Some(gemm) = w.gemm {
        let group = PACK_ROWS * w.row_bytes;
        let mut res = [0f32; MAX_COLS * PACK_ROWS];
        // The activation rows' views, made once: made again for every group
        // of weight rows they cost ~10% of Gemma 3's prompt processing.
        // On the stack when they fit (generation: no allocation per step).
        let mut stack: [ActRow<'_>; MAX_COLS] = [x.q.row(0); MAX_COLS];
        let heap: Vec<ActRow<'_>>;
        let acts: &[ActRow<'_>] = if n <= MAX_COLS {
            for (t, slot) in stack.iter_mut().enumerate().take(n) {
                *slot = x.q.row(t);
            }
            &stack[..n]
        } else {
            heap = (0..n).map(|t| x.q.row(t)).collect();
            &heap
        };
        let tail = rows.start.max(w.packed_rows())..rows.end;
        for g in rows.start / PACK_ROWS..rows.end.min(w.packed_rows()) / PACK_ROWS {
            let src = &packed[w.offset + g * group..w.offset + (g + 1) * group];
            let mut t0 = 0;
            while t0 < n {
                let cols = (n - t0).min(MAX_COLS);
                gemm(src, &acts[t0..t0 + cols], &mut res[..cols * PACK_ROWS]);
                for c in 0..cols {
                    let base = (t0 + c) * out.ld + col + g * PACK_ROWS;
                    for i in 0..PACK_ROWS {
                        out.write(base + i, res[c * PACK_ROWS + i]);
                    }
                }
                t0 += cols;
            }
        }
        // The rows after the last whole group, stored as in the file.
        if let (false, Dot::Quant(f)) = (tail.is_empty(), w.dot) {
            let rb = w.row_bytes;
            for r in tail {
                let wr = &packed[w.offset + r * rb..w.offset + (r + 1) * rb];
                let mut t0 = 0;
                while t0 < n {
                    let cols = (n - t0).min(MAX_COLS);
                    f(wr, &acts[t0..t0 + cols], &mut res[..cols]);
                    for (c, v) in res[..cols].iter().enumerate() {
                        out.write((t0 + c) * out.ld + col + r, *v);
                    }
                    t0 += cols;
                }
            }
        }
        return;
    }
    let mut res = [0f32; MAX_COLS];
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + ROW_BLOCK).min(rows.end);
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + MAX_COLS).min(n);
            let cols = t1 - t0;
            match w.dot {
                Dot::Quant(f) => {
                    let mut a: [ActRow<'_>; MAX_COLS] = [x.q.row(t0); MAX_COLS];
                    for (c, slot) in a.iter_mut().enumerate().take(cols) {
                        *slot = x.q.row(t0 + c);
                    }
                    for r in r0..r1 {
                        f(w.row(file, r), &a[..cols], &mut res[..cols]);
                        for (c, v) in res[..cols].iter().enumerate() {
                            out.write((t0 + c) * out.ld + col + r, *v);
                        }
                    }
                }
                Dot::Float(f) => {
                    let k = w.k;
                    let mut a: [&[f32]; MAX_COLS] = [&[]; MAX_COLS];
                    for (c, slot) in a.iter_mut().enumerate().take(cols) {
                        *slot = &x.f[(t0 + c) * k..(t0 + c + 1) * k];
                    }
                    for r in r0..r1 {
                        f(w.row(file, r), &a[..cols], &mut res[..cols]);
                        for (c, v) in res[..cols].iter().enumerate() {
                            out.write((t0 + c) * out.ld + col + r, *v);
                        }
                    }
                }
            }
            t0 = t1;
        }
        r0 = r1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::quant::kquants::tests::{random_row, Rng};
    use crate::runtime::simd;

    /// A matrix whose rows are not a whole number of packed groups: its
    /// whole groups packed, the rest computed row by row, the same bits as
    /// computing every row with the per-row kernel, at every level and for
    /// any split of the rows between threads.
    #[test]
    fn partly_packed_matrices_give_the_per_row_bits() {
        let mut rng = Rng(0x0dd_5eed);
        for ty in [WType::Q4K, WType::Q6K] {
            let (rows, k, n) = (21, 512, 5);
            let file = random_row(ty, rows * k / 256, &mut rng);
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 201) as f32 / 50.0 - 2.0)
                .collect();
            let mut q = ActRows::new();
            q.quantize(&x, n, k);
            let input = Input { q: &q, f: &x };
            let run = |m: &Matrix, packed: &[u8], splits: &[usize]| {
                let mut out = vec![0f32; n * rows];
                let o = Out::new(&mut out, rows);
                for w in splits.windows(2) {
                    // SAFETY: one call at a time; splits start on whole groups.
                    unsafe { matmul_rows(m, &file, packed, input, n, w[0]..w[1], o, 0) };
                }
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let plain = Matrix::new(ty, rows, k, 0, SimdLevel::Scalar);
            let want = run(&plain, &[], &[0, rows]);
            for level in simd::levels_to_test() {
                let mut m = Matrix::new(ty, rows, k, 0, level);
                if !m.packable(level) {
                    continue;
                }
                let mut packed = vec![0u8; m.bytes()];
                m.pack(&file, &mut packed, 0, level, 2, &|_| {});
                for splits in [&[0, rows][..], &[0, 8, rows], &[0, 16, rows]] {
                    assert_eq!(
                        run(&m, &packed, splits),
                        want,
                        "{ty:?} {level:?} {splits:?}"
                    );
                }
            }
        }
    }
}
