//! The decoder the engine runs: the [`Config`] of any supported
//! architecture on the CPU runtime ([`crate::runtime`]).  Weights are used in
//! place from the memory-mapped file; each session owns a thread pool, a KV
//! cache written in place (f16) and work buffers that grow to the largest
//! step once and are then reused.
//!
//! Every per-token computation (norms, activation quantization, the
//! products' kernels, rotary, attention) works on one token row at a time in
//! a fixed order, so a token's logits do not depend on how the prompt was
//! split into passes, nor on the number of threads.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use half::f16;

use super::config::{Activation, Config, RopeStyle};
use super::{ModelInfo, Session, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::runtime::matmul::{matmul_rows, Input, Matrix, Out};
use crate::runtime::mmap::{AnonBuf, Mmap};
use crate::runtime::ops;
use crate::runtime::pool::{share, Pool};
use crate::runtime::quant::{act, dequantize_row, ActRows, WType};
use crate::runtime::simd::{self, SimdLevel};

/// Below this many token rows, the small per-row steps run on the calling
/// thread alone: a pool job costs more than they do.
const PAR_ROWS: usize = 8;

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v: one fused matrix, or three (written side by side).
    qkv: Vec<Matrix>,
    qkv_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Matrix,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// gate and up: one fused matrix, or two (written side by side).
    gate_up: Vec<Matrix>,
    down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
}

pub struct Model {
    cfg: Config,
    map: Mmap,
    /// The layer matrices that have a GEMM kernel, rearranged for it.
    packed: AnonBuf,
    level: SimdLevel,
    threads: usize,
    embed: Matrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Matrix,
    n_ff: usize,
    /// Frequency divisors of the rotary pairs (`rope_freqs`, Llama 3.1+).
    rope_freqs: Option<Vec<f32>>,
}

fn wtype(g: &Gguf, name: &str) -> Result<WType> {
    use candle_core::quantized::GgmlDType as G;
    let info = &g.content.tensor_infos[name];
    let t = match info.ggml_dtype {
        G::F32 => WType::F32,
        G::F16 => WType::F16,
        G::BF16 => WType::BF16,
        G::Q4_0 => WType::Q4_0,
        G::Q4_1 => WType::Q4_1,
        G::Q5_0 => WType::Q5_0,
        G::Q5_1 => WType::Q5_1,
        G::Q8_0 => WType::Q8_0,
        G::Q2K => WType::Q2K,
        G::Q3K => WType::Q3K,
        G::Q4K => WType::Q4K,
        G::Q5K => WType::Q5K,
        G::Q6K => WType::Q6K,
        other => {
            return Err(Error::model(format!(
                "tensor {name} has type {other:?}, which this runtime does not support"
            )))
        }
    };
    Ok(t)
}

struct Tensors<'a> {
    g: &'a Gguf,
    level: SimdLevel,
}

impl Tensors<'_> {
    fn has(&self, name: &str) -> bool {
        self.g.content.tensor_infos.contains_key(name)
    }

    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.g
            .content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
    }

    fn offset(&self, name: &str) -> usize {
        (self.g.content.tensor_data_offset + self.g.content.tensor_infos[name].offset) as usize
    }

    /// A matrix of `rows` rows of `k` values (GGUF's [k, rows]).
    fn matrix(&self, name: &str, rows: usize, k: usize) -> Result<Matrix> {
        match self.dims(name) {
            Some(d) if d == [rows, k] => {}
            Some(d) => {
                return Err(Error::model(format!(
                    "tensor {name} has shape {d:?}, expected [{rows}, {k}]"
                )))
            }
            None => return Err(Error::model(format!("tensor {name} is missing"))),
        }
        let ty = wtype(self.g, name)?;
        if !k.is_multiple_of(ty.block_len()) || (!ty.is_float() && !k.is_multiple_of(32)) {
            return Err(Error::model(format!(
                "tensor {name}: rows of {k} values do not fit {} blocks",
                ty.name()
            )));
        }
        Ok(Matrix::new(ty, rows, k, self.offset(name), self.level))
    }

    fn vector(&self, map: &[u8], name: &str, len: usize) -> Result<Vec<f32>> {
        match self.dims(name) {
            Some(d) if d == [len] => {}
            Some(d) => {
                return Err(Error::model(format!(
                    "tensor {name} has shape {d:?}, expected [{len}]"
                )))
            }
            None => return Err(Error::model(format!("tensor {name} is missing"))),
        }
        let ty = wtype(self.g, name)?;
        if !len.is_multiple_of(ty.block_len()) {
            return Err(Error::model(format!("tensor {name}: bad length {len}")));
        }
        let start = self.offset(name);
        let mut out = vec![0f32; len];
        dequantize_row(ty, &map[start..start + ty.row_bytes(len)], &mut out);
        Ok(out)
    }

    fn opt_vector(&self, map: &[u8], name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(map, name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Model {
    pub fn load(cfg: Config, g: &Gguf, threads: usize) -> Result<Self> {
        let level = simd::configured();
        let map = Mmap::map(g.reader.get_ref())
            .map_err(|e| Error::model(format!("cannot map the model file: {e}")))?;
        let file = map.bytes();
        let t = Tensors { g, level };
        let (e, hd) = (cfg.n_embd, cfg.head_dim);
        if hd > 4096 {
            return Err(Error::model(format!(
                "attention heads of {hd} values are more than this runtime's 4096"
            )));
        }
        let (q_dim, kv_dim) = (cfg.n_head * hd, cfg.n_kv_head * hd);
        let vocab = match t.dims("token_embd.weight") {
            Some(d) if d.len() == 2 && d[1] == e => d[0],
            other => {
                return Err(Error::model(format!(
                    "token_embd.weight has shape {other:?}, expected [vocab, {e}]"
                )))
            }
        };
        let embed = t.matrix("token_embd.weight", vocab, e)?;
        let output = if t.has("output.weight") {
            t.matrix("output.weight", vocab, e)?
        } else {
            embed.clone()
        };
        let out_norm = t.vector(file, "output_norm.weight", e)?;
        let n_ff = match t.dims("blk.0.ffn_down.weight") {
            Some(d) if d.len() == 2 && d[0] == e => d[1],
            other => {
                return Err(Error::model(format!(
                    "blk.0.ffn_down.weight has shape {other:?}, expected [{e}, n_ff]"
                )))
            }
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let qkv = if t.has(&n("attn_qkv")) {
                vec![t.matrix(&n("attn_qkv"), q_dim + 2 * kv_dim, e)?]
            } else {
                vec![
                    t.matrix(&n("attn_q"), q_dim, e)?,
                    t.matrix(&n("attn_k"), kv_dim, e)?,
                    t.matrix(&n("attn_v"), kv_dim, e)?,
                ]
            };
            let qkv_bias = if t.has(&format!("blk.{i}.attn_q.bias")) {
                let mut b = t.vector(file, &format!("blk.{i}.attn_q.bias"), q_dim)?;
                b.extend(t.vector(file, &format!("blk.{i}.attn_k.bias"), kv_dim)?);
                b.extend(t.vector(file, &format!("blk.{i}.attn_v.bias"), kv_dim)?);
                Some(b)
            } else {
                None
            };
            let gate_up = if t.has(&n("ffn_gate")) {
                vec![
                    t.matrix(&n("ffn_gate"), n_ff, e)?,
                    t.matrix(&n("ffn_up"), n_ff, e)?,
                ]
            } else {
                vec![t.matrix(&n("ffn_up"), 2 * n_ff, e)?]
            };
            layers.push(Layer {
                attn_norm: t.vector(file, &n("attn_norm"), e)?,
                qkv,
                qkv_bias,
                q_norm: t.opt_vector(file, &n("attn_q_norm"), hd)?,
                k_norm: t.opt_vector(file, &n("attn_k_norm"), hd)?,
                wo: t.matrix(&n("attn_output"), e, q_dim)?,
                post_attn_norm: t.opt_vector(file, &n("post_attention_norm"), e)?,
                ffn_norm: t.vector(file, &n("ffn_norm"), e)?,
                gate_up,
                down: t.matrix(&n("ffn_down"), e, n_ff)?,
                post_ffn_norm: t.opt_vector(file, &n("post_ffw_norm"), e)?,
            });
        }
        let rope_freqs = t.opt_vector(file, "rope_freqs.weight", cfg.rope_dim / 2)?;
        let mut output = output;
        let packed = pack_matrices(&mut layers, &mut output, &map, level, threads.max(1))
            .map_err(|e| Error::model(format!("cannot allocate the packed weights: {e}")))?;
        Ok(Self {
            cfg,
            map,
            packed,
            level,
            threads: threads.max(1),
            embed,
            layers,
            out_norm,
            output,
            n_ff,
            rope_freqs,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.embed.rows
    }

    pub fn simd_level(&self) -> SimdLevel {
        self.level
    }
}

/// Rearranges every matrix that has a GEMM kernel into one buffer, and
/// drops the file's pages of those matrices from this process's memory.
/// The embedding stays in the file's layout, where its rows are looked up
/// (a tied output matrix is packed as a copy; the few embedding pages that
/// lookups touch come back from the page cache).
fn pack_matrices(
    layers: &mut [Layer],
    output: &mut Matrix,
    map: &Mmap,
    level: SimdLevel,
    threads: usize,
) -> std::io::Result<AnonBuf> {
    let mut all: Vec<&mut Matrix> = vec![output];
    for l in layers.iter_mut() {
        all.extend(l.qkv.iter_mut());
        all.push(&mut l.wo);
        all.extend(l.gate_up.iter_mut());
        all.push(&mut l.down);
    }
    let total: usize = all
        .iter()
        .filter(|m| m.packable(level))
        .map(|m| m.bytes())
        .sum();
    // Zeroed pages come from the kernel untouched: only packing writes them.
    // Each matrix is packed in slices whose file pages are released as soon
    // as they are copied, so the file's copy and the packed copy are never
    // both resident (peak memory stays at the packed size).
    let mut buf = AnonBuf::zeroed(total)?;
    let packed = buf.bytes_mut();
    let mut at = 0;
    for m in all {
        if m.packable(level) {
            let (offset, bytes) = (m.offset, m.bytes());
            m.pack(map.bytes(), packed, at, level, threads, &|done| {
                map.release(offset + done.start..offset + done.end)
            });
            at += bytes;
            map.release(offset..offset + bytes);
        }
    }
    Ok(buf)
}

/// Shares `Model` between sessions.
pub struct SharedModel {
    pub model: Arc<Model>,
    pub info: ModelInfo,
}

impl Weights for SharedModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_session(&self) -> Box<dyn Session> {
        Box::new(DecoderSession::new(self.model.clone()))
    }
}

/// Most tokens one pass of a model with sliding-window layers computes:
/// longer passes are split (which changes no result), so that a window
/// layer's ring needs only this many positions beyond its window.
const WINDOW_PASS: usize = 64;

/// One layer's cache: rows of `n_kv_head · head_dim` values per position.
/// A sliding-window layer keeps only its last `ring` positions, position
/// `p` in row `p % ring`.
#[derive(Default)]
struct KvLayer {
    k: Vec<f16>,
    v: Vec<f16>,
    ring: Option<usize>,
}

impl KvLayer {
    #[inline]
    fn row(&self, p: usize) -> usize {
        self.ring.map_or(p, |r| p % r)
    }
}

/// Work buffers of a forward pass, grown to the largest pass seen.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    /// The input of the next product: normed rows, attention output, or
    /// activated feed-forward rows.
    h: Vec<f32>,
    qkv: Vec<f32>,
    o: Vec<f32>,
    gu: Vec<f32>,
    act: ActRows,
    /// Attention scores, one row of keys per thread.
    scores: Vec<f32>,
    /// cos and sin of each rotary pair at each position, per rotary base.
    rope: Vec<Vec<f32>>,
    logits: Vec<f32>,
}

pub struct DecoderSession {
    model: Arc<Model>,
    pool: Pool,
    kv: Vec<KvLayer>,
    len: usize,
    buf: Buffers,
}

/// A pointer for jobs whose threads write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: every use below has threads touch disjoint elements.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(v: &mut [T]) -> Self {
        Self(v.as_mut_ptr())
    }
    /// # Safety
    /// `start..start + len` is inside the buffer and no other thread touches
    /// it during the job.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Grows `v` to at least `n` elements (never shrinks, so a session reaches
/// its largest size once).
fn fit<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl DecoderSession {
    fn new(model: Arc<Model>) -> Self {
        let layers = model.layers.len();
        Self {
            pool: Pool::new(model.threads),
            kv: (0..layers)
                .map(|i| KvLayer {
                    ring: model.cfg.window[i].map(|w| w + WINDOW_PASS),
                    ..KvLayer::default()
                })
                .collect(),
            len: 0,
            buf: Buffers::default(),
            model,
        }
    }

    /// Runs `f` over `0..n` split between the pool's threads, or on this
    /// thread alone when `n` is small.
    fn par(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let threads = self.pool.threads();
        if n < PAR_ROWS || threads == 1 {
            f(0..n)
        } else {
            self.pool.run(&|tid| f(share(n, threads, tid)))
        }
    }

    /// `out[t][..] = x[t] · Wᵀ` for the matrices `ws`, whose outputs go
    /// side by side in each output row (q, k, v or gate, up), all in one
    /// pool job.
    fn matmuls(&self, ws: &[Matrix], x: Input<'_>, n: usize, out: &mut [f32], ld: usize) {
        let out = Out::new(out, ld);
        let file = self.model.map.bytes();
        let packed = self.model.packed.bytes();
        // The rows of all matrices, in chunks that threads take one at a
        // time: a thread slowed by the memory or by another process does not
        // hold the others up.  A row is always computed whole by one thread
        // with the same kernel, so the split never changes a result.
        const MAX: usize = 3;
        assert!(ws.len() <= MAX);
        let chunk = if n == 1 { 64 } else { 32 };
        // First unit and first output column of each matrix.
        let (mut starts, mut cols) = ([0usize; MAX + 1], [0usize; MAX]);
        let (mut units, mut col) = (0, 0);
        for (i, w) in ws.iter().enumerate() {
            starts[i] = units;
            cols[i] = col;
            units += w.rows.div_ceil(chunk);
            col += w.rows;
        }
        starts[ws.len()] = units;
        let starts = &starts[..=ws.len()];
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| loop {
            let u = next.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                break;
            }
            let i = starts.partition_point(|&s| s <= u) - 1;
            let (w, col) = (&ws[i], cols[i]);
            let r0 = (u - starts[i]) * chunk;
            let rows = r0..(r0 + chunk).min(w.rows);
            // SAFETY: each unit's rows are written by the one thread that
            // took it; chunks are whole packed groups (multiples of 8); the
            // kernels were chosen for this CPU's level.
            unsafe { matmul_rows(w, file, packed, x, n, rows, out, col) };
        });
    }

    /// Runs `tokens` at `pos..`; returns the last one's logits when
    /// `logits` is set (an empty vector otherwise).
    fn forward_pass(&mut self, tokens: &[u32], pos: usize, logits: bool) -> Vec<f32> {
        let model = self.model.clone();
        let m = &*model;
        let c = &m.cfg;
        let n = tokens.len();
        let (e, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let ff = m.n_ff;
        let file = m.map.bytes();
        let total = pos + n;
        {
            let b = &mut self.buf;
            fit(&mut b.x, n * e);
            fit(&mut b.h, n * e.max(q_dim).max(ff));
            fit(&mut b.qkv, n * qkv_dim);
            fit(&mut b.o, n * e);
            fit(&mut b.gu, n * 2 * ff);
            fit(&mut b.scores, self.pool.threads() * total);
        }
        for kv in &mut self.kv {
            // Storage grows in steps of 256 positions, never per token, up
            // to the ring of a sliding-window layer.
            let rows = total.div_ceil(256) * 256;
            let want = kv.ring.map_or(rows, |r| rows.min(r)) * kv_dim;
            if kv.k.len() < want {
                kv.k.resize(want, f16::ZERO);
                kv.v.resize(want, f16::ZERO);
            }
        }
        self.rope_tables(pos, n);

        // Embeddings, dequantized row by row.
        let x = Shared::new(&mut self.buf.x);
        self.par(n, &|r| {
            for t in r {
                // SAFETY: row t of x belongs to this thread.
                let row = unsafe { x.slice(t * e, e) };
                dequantize_row(m.embed.ty, m.embed.row(file, tokens[t] as usize), row);
                if let Some(s) = c.embed_scale {
                    let s = s as f32;
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
        });

        for (li, layer) in m.layers.iter().enumerate() {
            // Attention.
            self.norm_quantize(n, e, &layer.attn_norm, &layer.qkv);
            let mut qkv = std::mem::take(&mut self.buf.qkv);
            {
                let input = Input {
                    q: &self.buf.act,
                    f: &self.buf.h,
                };
                self.matmuls(&layer.qkv, input, n, &mut qkv, qkv_dim);
            }
            self.buf.qkv = qkv;
            self.attention(li, layer, n, pos);
            self.quantize_h(n, q_dim, std::slice::from_ref(&layer.wo));
            let mut o = std::mem::take(&mut self.buf.o);
            {
                let input = Input {
                    q: &self.buf.act,
                    f: &self.buf.h,
                };
                self.matmuls(std::slice::from_ref(&layer.wo), input, n, &mut o, e);
            }
            self.buf.o = o;
            self.residual(n, e, layer.post_attn_norm.as_deref());

            // Feed-forward.
            self.norm_quantize(n, e, &layer.ffn_norm, &layer.gate_up);
            let mut gu = std::mem::take(&mut self.buf.gu);
            {
                let input = Input {
                    q: &self.buf.act,
                    f: &self.buf.h,
                };
                self.matmuls(&layer.gate_up, input, n, &mut gu, 2 * ff);
            }
            self.buf.gu = gu;
            {
                let gu = Shared::new(&mut self.buf.gu);
                let h = Shared::new(&mut self.buf.h);
                self.par(n, &|r| {
                    for t in r {
                        // SAFETY: row t belongs to this thread.
                        let (g, u, out) = unsafe {
                            (
                                gu.slice(t * 2 * ff, ff),
                                gu.slice(t * 2 * ff + ff, ff),
                                h.slice(t * ff, ff),
                            )
                        };
                        match c.activation {
                            Activation::Silu => ops::silu_mul(g, u),
                            Activation::GeluTanh => ops::gelu_mul(g, u),
                        }
                        out.copy_from_slice(g);
                    }
                });
            }
            self.quantize_h(n, ff, std::slice::from_ref(&layer.down));
            let mut o = std::mem::take(&mut self.buf.o);
            {
                let input = Input {
                    q: &self.buf.act,
                    f: &self.buf.h,
                };
                self.matmuls(std::slice::from_ref(&layer.down), input, n, &mut o, e);
            }
            self.buf.o = o;
            self.residual(n, e, layer.post_ffn_norm.as_deref());
        }

        if !logits {
            return Vec::new();
        }
        // The last position's logits.
        let last = &self.buf.x[(n - 1) * e..n * e];
        ops::rms_norm(last, &m.out_norm, c.rms_eps as f32, &mut self.buf.h[..e]);
        self.quantize_h(1, e, std::slice::from_ref(&m.output));
        let mut logits = std::mem::take(&mut self.buf.logits);
        fit(&mut logits, m.output.rows);
        {
            let input = Input {
                q: &self.buf.act,
                f: &self.buf.h,
            };
            self.matmuls(
                std::slice::from_ref(&m.output),
                input,
                1,
                &mut logits,
                m.output.rows,
            );
        }
        let mut result = logits[..m.output.rows].to_vec();
        self.buf.logits = logits;
        if let Some(cap) = c.final_softcap {
            let cap = cap as f32;
            result.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        result
    }

    /// h = norm(x) · w, quantized into `act` for the products `ws`.
    fn norm_quantize(&mut self, n: usize, e: usize, w: &[f32], ws: &[Matrix]) {
        let eps = self.model.cfg.rms_eps as f32;
        let x = &self.buf.x;
        let h = Shared::new(&mut self.buf.h);
        self.par(n, &|r| {
            for t in r {
                // SAFETY: row t of h belongs to this thread.
                let out = unsafe { h.slice(t * e, e) };
                ops::rms_norm(&x[t * e..(t + 1) * e], w, eps, out);
            }
        });
        self.quantize_h(n, e, ws);
    }

    /// Quantizes `n` rows of `k` values of `h` into `act` for the products
    /// `ws` (float weights read `h` itself): as llama.cpp does, in blocks of
    /// 256 (Q8_K) when every one of them has K-quant weights, in blocks of 32
    /// (Q8_0 / Q8_1) otherwise.
    fn quantize_h(&mut self, n: usize, k: usize, ws: &[Matrix]) {
        if !k.is_multiple_of(32) {
            return;
        }
        let q8k = k.is_multiple_of(256) && ws.iter().all(|w| w.ty.is_k_quant());
        let quantize = if q8k {
            act::quantize_row_q8k
        } else {
            ops::quantize_row_q8
        };
        let mut act = std::mem::take(&mut self.buf.act);
        act.resize(n, k);
        {
            let h = &self.buf.h;
            let w = act.writer();
            self.par(n, &|r| {
                for t in r {
                    // SAFETY: row t of `act` belongs to this thread.
                    let (qs, d, dsum, s16) = unsafe { w.row_mut(t) };
                    quantize(&h[t * k..(t + 1) * k], qs, d, dsum, s16);
                }
            });
        }
        self.buf.act = act;
    }

    /// x += post_norm(o).  Uses `h` as scratch: its rows are free by then.
    fn residual(&mut self, n: usize, e: usize, post_norm: Option<&[f32]>) {
        let eps = self.model.cfg.rms_eps as f32;
        let o = Shared::new(&mut self.buf.o);
        let x = Shared::new(&mut self.buf.x);
        let h = Shared::new(&mut self.buf.h);
        self.par(n, &|r| {
            for t in r {
                // SAFETY: row t belongs to this thread.
                let (o, x, tmp) =
                    unsafe { (o.slice(t * e, e), x.slice(t * e, e), h.slice(t * e, e)) };
                if let Some(w) = post_norm {
                    ops::rms_norm(o, w, eps, tmp);
                    ops::add(x, tmp);
                } else {
                    ops::add(x, o);
                }
            }
        });
    }

    /// cos/sin of every rotary pair at positions `pos..pos + n`, per base.
    fn rope_tables(&mut self, pos: usize, n: usize) {
        let c = &self.model.cfg;
        let half = c.rope_dim / 2;
        let mut bases: Vec<f32> = Vec::new();
        for &b in &c.rope_base {
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        self.buf.rope.resize(bases.len(), Vec::new());
        for (bi, &base) in bases.iter().enumerate() {
            let table = &mut self.buf.rope[bi];
            table.clear();
            for p in pos..pos + n {
                for i in 0..half {
                    let mut f = 1.0 / base.powf((2 * i) as f32 / c.rope_dim as f32);
                    if let Some(div) = &self.model.rope_freqs {
                        f /= div[i];
                    }
                    let a = p as f32 * c.rope_scale * f;
                    table.push(a.cos());
                    table.push(a.sin());
                }
            }
        }
    }

    fn rope_index(&self, layer: usize) -> usize {
        let c = &self.model.cfg;
        let mut bases: Vec<f32> = Vec::new();
        for &b in &c.rope_base {
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        bases
            .iter()
            .position(|&b| b == c.rope_base[layer])
            .unwrap_or(0)
    }

    /// Bias, q/k norms and rotary on the new q and k; k and v into the
    /// cache; then each (token, head)'s attention into `h`, the input of
    /// the output projection.
    fn attention(&mut self, li: usize, layer: &Layer, n: usize, pos: usize) {
        let model = self.model.clone();
        let m = &*model;
        let c = &m.cfg;
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let eps = c.rms_eps as f32;
        let rope = &self.buf.rope[self.rope_index(li)];
        let half = c.rope_dim / 2;
        let qkv = Shared::new(&mut self.buf.qkv);
        let kv = &mut self.kv[li];
        let ring = kv.ring;
        let kc = Shared::new(&mut kv.k);
        let vc = Shared::new(&mut kv.v);
        let heads = c.n_head + c.n_kv_head;
        let par = |n: usize, f: &(dyn Fn(Range<usize>) + Sync)| {
            let threads = self.pool.threads();
            if n < PAR_ROWS || threads == 1 {
                f(0..n)
            } else {
                self.pool.run(&|tid| f(share(n, threads, tid)))
            }
        };
        // Per (token, q or k head): bias, norm, rotary; k and v cached.
        par(n, &|r| {
            // Head sizes are at most 4096 (checked at load), so no
            // allocation per step.
            let mut tmp = [0f32; 4096];
            let tmp = &mut tmp[..hd];
            for t in r {
                // SAFETY: row t belongs to this thread, as do cache row pos+t.
                let row = unsafe { qkv.slice(t * qkv_dim, qkv_dim) };
                if let Some(b) = &layer.qkv_bias {
                    ops::add(row, b);
                }
                let cs = &rope[t * half * 2..(t + 1) * half * 2];
                for h in 0..heads {
                    let v = &mut row[h * hd..(h + 1) * hd];
                    let norm = if h < c.n_head {
                        &layer.q_norm
                    } else {
                        &layer.k_norm
                    };
                    if let Some(w) = norm {
                        ops::rms_norm(v, w, eps, tmp);
                        v.copy_from_slice(tmp);
                    }
                    rotate(v, cs, c.rope_style);
                }
                let r = ring.map_or(pos + t, |c| (pos + t) % c);
                unsafe {
                    ops::f32_to_f16(&row[q_dim..q_dim + kv_dim], kc.slice(r * kv_dim, kv_dim));
                    ops::f32_to_f16(&row[q_dim + kv_dim..], vc.slice(r * kv_dim, kv_dim));
                }
            }
        });
        // Attention of each (token, head) over the cache.
        let kv = &self.kv[li];
        let att = Shared::new(&mut self.buf.h);
        let scores = Shared::new(&mut self.buf.scores);
        let qkv = &self.buf.qkv;
        let group = c.n_head / c.n_kv_head;
        let scale = c.attn_scale as f32;
        let window = c.window[li];
        let total = pos + n;
        let threads = self.pool.threads();
        let work = |tid: usize, stride: usize| {
            // SAFETY: each thread has its own row of scores.
            let s_all = unsafe { scores.slice(tid * total, total) };
            let mut i = tid;
            while i < n * c.n_head {
                let (t, h) = (i / c.n_head, i % c.n_head);
                let p = pos + t;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let q = &qkv[t * qkv_dim + h * hd..t * qkv_dim + (h + 1) * hd];
                let g = h / group;
                let s = &mut s_all[lo..=p];
                for (j, sv) in s.iter_mut().enumerate() {
                    let r = kv.row(lo + j);
                    let key = &kv.k[r * kv_dim + g * hd..r * kv_dim + (g + 1) * hd];
                    *sv = ops::dot_f16(key, q) * scale;
                }
                ops::softmax(s);
                // SAFETY: (t, h) is this thread's.
                let out = unsafe { att.slice(t * q_dim + h * hd, hd) };
                out.iter_mut().for_each(|v| *v = 0.0);
                for (j, &w) in s.iter().enumerate() {
                    let r = kv.row(lo + j);
                    let val = &kv.v[r * kv_dim + g * hd..r * kv_dim + (g + 1) * hd];
                    ops::axpy_f16(out, w, val);
                }
                i += stride;
            }
        };
        if threads == 1 || n * c.n_head < 2 {
            work(0, 1);
        } else {
            self.pool.run(&|tid| work(tid, threads));
        }
    }
}

/// Rotates one head's vector by the angles in `cs` (cos, sin pairs).
fn rotate(v: &mut [f32], cs: &[f32], style: RopeStyle) {
    let half = cs.len() / 2;
    match style {
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (cos, sin) = (cs[2 * i], cs[2 * i + 1]);
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                v[2 * i] = a * cos - b * sin;
                v[2 * i + 1] = a * sin + b * cos;
            }
        }
        RopeStyle::Halves => {
            for i in 0..half {
                let (cos, sin) = (cs[2 * i], cs[2 * i + 1]);
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * cos - b * sin;
                v[i + half] = a * sin + b * cos;
            }
        }
    }
}

impl Session for DecoderSession {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        let limit = self.model.cfg.context_length;
        if tokens.is_empty() || pos + tokens.len() > limit || pos != self.len {
            return Err(Error::inference(format!(
                "forward of {} tokens at position {pos} (cache holds {}, limit {limit})",
                tokens.len(),
                self.len
            )));
        }
        let vocab = self.model.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::inference(format!(
                "token id {bad} is outside the model's {vocab} embeddings"
            )));
        }
        let windowed = self.kv.iter().any(|kv| kv.ring.is_some());
        let step = if windowed { WINDOW_PASS } else { tokens.len() };
        let mut logits = Vec::new();
        let mut at = pos;
        for chunk in tokens.chunks(step) {
            let last = at + chunk.len() == pos + tokens.len();
            logits = self.forward_pass(chunk, at, last);
            at += chunk.len();
            self.len = at;
        }
        Ok(logits)
    }

    fn reset(&mut self) {
        self.len = 0;
    }

    fn truncate(&mut self, len: usize) -> usize {
        let len = self.len.min(len);
        // A window ring holds positions from `self.len - ring` on; position
        // `len` needs those from `len - window` on.
        let lost = self.kv.iter().any(|kv| {
            kv.ring
                .is_some_and(|r| len.saturating_sub(r - WINDOW_PASS) < self.len.saturating_sub(r))
        });
        self.len = if lost { 0 } else { len };
        self.len
    }
}
