//! A faster matrix product for Q4_1 weights.  candle 0.11 has no SIMD
//! kernel for Q4_1 (its scalar dot product took ~73% of SmolLM2's decode
//! time).  This one computes what candle computes — the activations
//! quantized to Q8_1, the same per-block formula, the blocks summed in the
//! same order — with the integer part of each block's dot product in AVX2
//! when the CPU has it, and the output rows spread over rayon's pool.  One
//! difference: each Q8_1 block's sum is stored as ggml stores it,
//! `f16(d · Σq)`, where candle rounds `Σq` itself to f16 first (llama.cpp is
//! the ground truth the reference decoder stands in for).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// A [rows, cols] Q4_1 matrix: per block of 32 weights a scale `d`, a
/// minimum `m` and 16 bytes of 4-bit values (low nibbles are weights 0..16,
/// high nibbles 16..32); weight = d * q + m.
pub struct Q41Matrix {
    rows: usize,
    cols: usize,
    /// The f16 scales and minimums, widened once (exactly) to f32.
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<[u8; 16]>,
}

/// One row of activations quantized to Q8_1 as ggml does it (the f16
/// scale and sum widened to f32).
struct Q81Row {
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<[i8; QK]>,
}

impl Q41Matrix {
    /// `None` when the tensor is not a 2-D Q4_1 tensor.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Self>> {
        let dims = t.shape().dims();
        if t.dtype() != GgmlDType::Q4_1 || dims.len() != 2 || !dims[1].is_multiple_of(QK) {
            return Ok(None);
        }
        let (rows, cols) = (dims[0], dims[1]);
        let data = t.data()?;
        let blocks = rows * cols / QK;
        if data.len() != blocks * 20 {
            return Ok(None);
        }
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(blocks);
        let mut qs = Vec::with_capacity(blocks);
        for b in data.chunks_exact(20) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            m.push(f16::from_le_bytes([b[2], b[3]]).to_f32());
            qs.push(b[4..20].try_into().expect("16 bytes"));
        }
        Ok(Some(Self {
            rows,
            cols,
            d,
            m,
            qs,
        }))
    }

    /// `x` [.., cols] times the transpose of this matrix: [.., rows].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        if k != self.cols {
            candle_core::bail!(
                "Q4_1 matmul: input has {k} columns, the matrix {}",
                self.cols
            )
        }
        let xs = x
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let inputs: Vec<Q81Row> = xs.chunks_exact(k).map(quantize_q8_1).collect();
        let n = self.rows;
        let blocks_per_row = self.cols / QK;
        let avx2 = has_avx2();
        let mut out = vec![0f32; inputs.len() * n];
        // Each task computes a run of output rows for every input row.
        const ROWS_PER_TASK: usize = 16;
        let mut columns: Vec<Vec<f32>> = (0..n.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .map(|task| {
                let r0 = task * ROWS_PER_TASK;
                let r1 = (r0 + ROWS_PER_TASK).min(n);
                let mut part = Vec::with_capacity((r1 - r0) * inputs.len());
                for input in &inputs {
                    for r in r0..r1 {
                        let b0 = r * blocks_per_row;
                        part.push(self.dot(b0, blocks_per_row, input, avx2));
                    }
                }
                part
            })
            .collect();
        for (task, part) in columns.iter_mut().enumerate() {
            let r0 = task * ROWS_PER_TASK;
            let width = (r0 + ROWS_PER_TASK).min(n) - r0;
            for (i, chunk) in part.chunks_exact(width).enumerate() {
                out[i * n + r0..i * n + r0 + width].copy_from_slice(chunk);
            }
        }
        let mut shape = dims;
        *shape.last_mut().expect("at least one dimension") = n;
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    fn dot(&self, b0: usize, nb: usize, x: &Q81Row, avx2: bool) -> f32 {
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked at run time).
            unsafe { self.dot_avx2(b0, nb, x) }
        } else {
            self.dot_with(b0, nb, x, block_dot)
        }
    }

    /// The blocks' products summed in order, exactly as candle sums them.
    #[inline(always)]
    fn dot_with(
        &self,
        b0: usize,
        nb: usize,
        x: &Q81Row,
        block: impl Fn(&[u8; 16], &[i8; QK]) -> i32,
    ) -> f32 {
        let (d, m, qs) = (
            &self.d[b0..b0 + nb],
            &self.m[b0..b0 + nb],
            &self.qs[b0..b0 + nb],
        );
        let mut sumf = 0f32;
        for i in 0..nb {
            let sumi = block(&qs[i], &x.qs[i]);
            sumf += sumi as f32 * d[i] * x.d[i] + m[i] * x.s[i];
        }
        sumf
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dot_avx2(&self, b0: usize, nb: usize, x: &Q81Row) -> f32 {
        self.dot_with(b0, nb, x, |w, q| unsafe { block_dot_avx2(w, q) })
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn dot_avx2(&self, b0: usize, nb: usize, x: &Q81Row) -> f32 {
        self.dot_with(b0, nb, x, block_dot)
    }
}

/// ggml's `quantize_row_q8_1` as its x86 code computes it (candle's
/// `BlockQ8_1::from_float` multiplies by `1 / d` and rounds ties away from
/// zero, and rounds the sum differently).
fn quantize_q8_1(xs: &[f32]) -> Q81Row {
    let nb = xs.len() / QK;
    let mut row = Q81Row {
        d: Vec::with_capacity(nb),
        s: Vec::with_capacity(nb),
        qs: Vec::with_capacity(nb),
    };
    for block in xs.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        // llama.cpp's x86 code: times 127 / amax, ties to even.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let dh = f16::from_f32(d);
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            qs[j] = (block[j] * id).round_ties_even() as i8;
            qs[j + QK / 2] = (block[j + QK / 2] * id).round_ties_even() as i8;
            sum += qs[j] as i32 + qs[j + QK / 2] as i32;
        }
        row.d.push(dh.to_f32());
        // ggml's quantize_row_q8_1: the sum times the unrounded scale, then
        // rounded to f16.  (candle computes f16(sum) · f16(d) in f16, which
        // loses low bits of sums above 2048.)
        row.s.push(f16::from_f32(d * sum as f32).to_f32());
        row.qs.push(qs);
    }
    row
}

fn block_dot(w: &[u8; 16], x: &[i8; QK]) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK / 2 {
        sum += (w[j] & 0x0F) as i32 * x[j] as i32 + (w[j] >> 4) as i32 * x[j + QK / 2] as i32;
    }
    sum
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_dot_avx2(w: &[u8; 16], x: &[i8; QK]) -> i32 {
    use std::arch::x86_64::*;
    let q = _mm_loadu_si128(w.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    // Weights 0..16 then 16..32, as unsigned bytes 0..15.
    let wv = _mm256_set_m128i(hi, lo);
    let xv = _mm256_loadu_si256(x.as_ptr() as *const __m256i);
    // u8 x i8 pairs summed to i16 (at most 2 * 15 * 128: no overflow), then
    // pairs of those to i32.
    let p16 = _mm256_maddubs_epi16(wv, xv);
    let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(p32),
        _mm256_extracti128_si256(p32, 1),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_dot_avx2(w: &[u8; 16], x: &[i8; QK]) -> i32 {
    block_dot(w, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    /// candle's own Q4_1 product and the exact product of the dequantized
    /// weights with the activations agree with ours within the rounding of
    /// the activations' Q8_1 blocks (the sums' f16 rounding is the only
    /// difference from candle's).
    #[test]
    fn agrees_with_candles_q4_1_product() {
        let mut rng = crate::sampling::Rng::new(9);
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f64() as f32 - 0.5) * 4.0)
                .collect()
        };
        let (rows, cols) = (70, 96);
        let w = Tensor::from_vec(random(rows * cols), (rows, cols), &Device::Cpu).unwrap();
        let qw = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let wd = qw
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours = Q41Matrix::from_qtensor(&qw).unwrap().unwrap();
        let theirs = QMatMul::from_qtensor(qw).unwrap();
        for seq in [1, 3] {
            let xv = random(seq * cols);
            let x = Tensor::from_vec(xv.clone(), (1, seq, cols), &Device::Cpu).unwrap();
            let a = ours.forward(&x).unwrap();
            let b = theirs.forward(&x).unwrap();
            assert_eq!(a.dims(), b.dims());
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for t in 0..seq {
                for r in 0..rows {
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for j in 0..cols {
                        let p = wd[r * cols + j] as f64 * xv[t * cols + j] as f64;
                        exact += p;
                        mag += p.abs();
                    }
                    let (got, cand) = (a[t * rows + r] as f64, b[t * rows + r] as f64);
                    assert!(
                        (got - cand).abs() <= 1e-4 * mag,
                        "seq {seq}: {got} vs candle {cand}"
                    );
                    // Activations in 8 bits: up to half a step (amax / 254)
                    // per value.
                    assert!(
                        (got - exact).abs() <= 0.01 * mag,
                        "seq {seq}: {got} vs {exact}"
                    );
                }
            }
        }
        // The scalar and the AVX2 block products agree.
        let w: [u8; 16] = std::array::from_fn(|i| (i * 37 % 256) as u8);
        let x: [i8; 32] = std::array::from_fn(|i| (i as i32 * 11 - 128) as i8);
        if has_avx2() {
            assert_eq!(unsafe { block_dot_avx2(&w, &x) }, block_dot(&w, &x));
        }
    }
}
