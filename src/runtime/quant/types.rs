//! The weight types and the kernel signatures every kernel file shares.

use super::act::ActRow;

/// Most activation columns one dot-kernel call takes.
pub const MAX_COLS: usize = 4;

/// `out[c] = Σ_i w[i] · a[c][i]` over one weight row `w` (its raw bytes,
/// whole blocks) for every column `c < a.len()`; `1 <= a.len() <= MAX_COLS`,
/// `out.len() == a.len()`, and every `a[c]` has the row's length.
///
/// # Safety
/// The caller has checked that the CPU supports the kernel's SIMD level and
/// that the lengths above hold.
pub type QuantDot = unsafe fn(w: &[u8], a: &[ActRow<'_>], out: &mut [f32]);

/// The same for float weights, against f32 activations.
///
/// # Safety
/// As for [`QuantDot`].
pub type FloatDot = unsafe fn(w: &[u8], a: &[&[f32]], out: &mut [f32]);

#[derive(Clone, Copy)]
pub enum Dot {
    Quant(QuantDot),
    Float(FloatDot),
}

/// GGUF tensor types (the numbers are GGUF's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl WType {
    pub const ALL: [WType; 13] = [
        WType::F32,
        WType::F16,
        WType::BF16,
        WType::Q4_0,
        WType::Q4_1,
        WType::Q5_0,
        WType::Q5_1,
        WType::Q8_0,
        WType::Q2K,
        WType::Q3K,
        WType::Q4K,
        WType::Q5K,
        WType::Q6K,
    ];

    pub fn from_gguf(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Q2_K .. Q6_K: super-blocks of 256 values.
    pub fn is_k_quant(self) -> bool {
        matches!(
            self,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K
        )
    }

    /// Whether llama.cpp quantizes the activations of this type's products
    /// in Q8_K blocks of 256 (its type traits' `vec_dot_type`), rather than
    /// in Q8_0 / Q8_1 blocks of 32.  A type added here must say which.
    pub fn wants_q8k(self) -> bool {
        self.is_k_quant()
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block length).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_len() * self.block_bytes()
    }
}

/// Weight rows interleaved together for the GEMM kernels.
pub const PACK_ROWS: usize = 8;

/// Rearranges `PACK_ROWS` consecutive weight rows of `k` values (`src`,
/// `PACK_ROWS · row_bytes` bytes in the file's layout) into the kernel's
/// layout in `dst` (exactly as many bytes).
pub type PackFn = fn(src: &[u8], k: usize, dst: &mut [u8]);

/// `out[c · PACK_ROWS + i] = Σ_j W[i][j] · a[c][j]` for the `PACK_ROWS`
/// rows `i` of one packed group and every column `c < a.len() ≤ MAX_COLS`;
/// `out.len() == a.len() · PACK_ROWS`.  As for [`QuantDot`], a column's
/// results are bit-identical whatever `a.len()` is and wherever the column
/// sits.
///
/// # Safety
/// As for [`QuantDot`]; `packed` is one group made by the matching
/// [`PackFn`].
pub type GemmFn = unsafe fn(packed: &[u8], a: &[ActRow<'_>], out: &mut [f32]);
