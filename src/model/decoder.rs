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
use super::rope::Ropes;
use super::{Batch, ModelInfo, SeqInput, Session, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::runtime::matmul::{matmul_rows, Input, Matrix, Out};
use crate::runtime::mmap::{AnonBuf, F16Buf, Mmap};
use crate::runtime::ops;
use crate::runtime::pool::{share, Pool};
use crate::runtime::quant::{dequantize_row, ActRows, WType};
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
    /// Rotary frequencies and scaling per base (with `rope_freqs`, Llama
    /// 3.1+, applied), and each layer's base.
    ropes: Ropes,
}

fn wtype(g: &Gguf, name: &str) -> Result<WType> {
    g.tensor(name)
        .map(|t| t.ty)
        .ok_or_else(|| Error::model(format!("tensor {name} is missing")))
}

struct Tensors<'a> {
    g: &'a Gguf,
    level: SimdLevel,
}

impl Tensors<'_> {
    fn has(&self, name: &str) -> bool {
        self.g.tensor(name).is_some()
    }

    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.g.tensor(name).map(|t| t.dims.clone())
    }

    fn offset(&self, name: &str) -> usize {
        self.g
            .tensor(name)
            .map_or(0, |t| self.g.tensor_range(t).start)
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
        let map = Mmap::map(g.file())
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
        let ropes = Ropes::new(&cfg, rope_freqs.as_deref());
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
            ropes,
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
        Box::new(DecoderSession(DecoderBatch::new(self.model.clone(), 1)))
    }

    fn new_batch(&self, slots: usize) -> Box<dyn Batch> {
        Box::new(DecoderBatch::new(self.model.clone(), slots))
    }
}

/// Most tokens one pass of a model with sliding-window layers computes
/// per sequence: longer inputs are split (which changes no result), so that
/// a window layer's ring needs only this many positions beyond its window.
const WINDOW_PASS: usize = 64;

/// Positions a KV cache's storage grows by.
const KV_STEP: usize = 256;

/// One layer's cache: rows of `n_kv_head · head_dim` values per position.
/// A sliding-window layer keeps only its last `ring` positions, position
/// `p` in row `p % ring`.
#[derive(Default)]
struct KvLayer {
    k: F16Buf,
    v: F16Buf,
    ring: Option<usize>,
}

impl KvLayer {
    #[inline]
    fn row(&self, p: usize) -> usize {
        self.ring.map_or(p, |r| p % r)
    }
}

/// One sequence's KV cache.
struct SeqKv {
    layers: Vec<KvLayer>,
    len: usize,
}

/// Where a row of a pass comes from: its sequence slot and position.
#[derive(Clone, Copy)]
struct Row {
    slot: usize,
    pos: usize,
}

/// One sequence's part of a pass.
#[derive(Clone, Copy)]
struct PassItem {
    slot: usize,
    /// Range of the input's tokens in this pass.
    from: usize,
    to: usize,
    input: usize,
    /// The logits row this part's last token writes, if it wants logits.
    logits: Option<usize>,
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
    /// Attention scores: per thread, a row of keys for each head of a KV group.
    scores: Vec<f32>,
    /// cos and sin of each rotary pair of each row, per rotary base.
    rope: Vec<Vec<f32>>,
    /// Logits rows of the inputs that asked for them.
    logits: Vec<f32>,
    rows: Vec<Row>,
    tokens: Vec<u32>,
    items: Vec<PassItem>,
    /// Per slot, the K and V storage of the layer being computed.
    kv_ptrs: Vec<(Shared<f16>, Shared<f16>, Option<usize>)>,
}

/// Several sequences over one model: a KV cache per slot, one thread pool
/// and one set of work buffers.  A pass evaluates the new tokens of every
/// sequence in it together (each weight block is read once for all their
/// rows), and each row's result is the same as if it ran alone.
pub struct DecoderBatch {
    model: Arc<Model>,
    pool: Pool,
    seqs: Vec<SeqKv>,
    buf: Buffers,
    /// Per input of the last forward that asked for logits, its row in
    /// `buf.logits`.
    logit_rows: Vec<usize>,
    /// When set, every pass appends its rows' final hidden states (after
    /// the output norm) here.
    hidden: Option<Vec<f32>>,
}

/// A one-sequence [`DecoderBatch`], for callers of the [`Session`]
/// interface.
pub struct DecoderSession(DecoderBatch);

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

impl DecoderBatch {
    fn new(model: Arc<Model>, slots: usize) -> Self {
        let seqs = (0..slots.max(1)).map(|_| Self::empty_kv(&model)).collect();
        Self {
            pool: Pool::new(model.threads),
            seqs,
            buf: Buffers::default(),
            logit_rows: Vec::new(),
            hidden: None,
            model,
        }
    }

    fn empty_kv(model: &Model) -> SeqKv {
        SeqKv {
            layers: (0..model.layers.len())
                .map(|i| KvLayer {
                    ring: model.cfg.window[i].map(|w| w + WINDOW_PASS),
                    ..KvLayer::default()
                })
                .collect(),
            len: 0,
        }
    }

    /// Values of one layer's K (or V) per position.
    fn kv_dim(&self) -> usize {
        self.model.cfg.n_kv_head * self.model.cfg.head_dim
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
            // took it; chunks start on a whole packed group and end on one
            // or at the matrix's last row; the kernels were chosen for this
            // CPU's level.
            unsafe { matmul_rows(w, file, packed, x, n, rows, out, col) };
        });
    }

    /// Checks `inputs` against the slots and the model before anything is
    /// computed, so that a refused forward changes no cache.
    fn check(&self, inputs: &[SeqInput<'_>]) -> Result<()> {
        let limit = self.model.cfg.context_length;
        let vocab = self.model.vocab_size();
        for (i, input) in inputs.iter().enumerate() {
            let Some(seq) = self.seqs.get(input.slot) else {
                return Err(Error::inference(format!(
                    "slot {} of a batch of {}",
                    input.slot,
                    self.seqs.len()
                )));
            };
            if inputs[..i].iter().any(|o| o.slot == input.slot) {
                return Err(Error::inference(format!(
                    "slot {} appears twice in one forward",
                    input.slot
                )));
            }
            if input.tokens.is_empty() || seq.len + input.tokens.len() > limit {
                return Err(Error::inference(format!(
                    "forward of {} tokens at position {} (limit {limit})",
                    input.tokens.len(),
                    seq.len
                )));
            }
            if let Some(&bad) = input.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::inference(format!(
                    "token id {bad} is outside the model's {vocab} embeddings"
                )));
            }
        }
        Ok(())
    }

    /// Runs the rows of `self.buf.items` (parts of the inputs) in one
    /// pass, and writes the logits rows they ask for.
    fn forward_pass(&mut self, inputs: &[SeqInput<'_>]) -> Result<()> {
        let model = self.model.clone();
        let m = &*model;
        let c = &m.cfg;
        let (e, hd) = (c.n_embd, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let ff = m.n_ff;
        let file = m.map.bytes();
        let vocab = m.output.rows;

        let mut rows = std::mem::take(&mut self.buf.rows);
        let mut tokens = std::mem::take(&mut self.buf.tokens);
        rows.clear();
        tokens.clear();
        let mut total = 0;
        let mut n_logits = 0;
        for it in &self.buf.items {
            let seq = &mut self.seqs[it.slot];
            let part = &inputs[it.input].tokens[it.from..it.to];
            let pos = seq.len;
            for (i, &t) in part.iter().enumerate() {
                rows.push(Row {
                    slot: it.slot,
                    pos: pos + i,
                });
                tokens.push(t);
            }
            let end = pos + part.len();
            total = total.max(end);
            // Storage grows in steps of KV_STEP positions, never per token,
            // up to the ring of a sliding-window layer.
            for kv in &mut seq.layers {
                let want = kv.ring.map_or(end.div_ceil(KV_STEP) * KV_STEP, |r| {
                    (end.div_ceil(KV_STEP) * KV_STEP).min(r)
                }) * kv_dim;
                if kv.k.len() < want {
                    // Exactly: the KV memory bound counts this storage.
                    let grown = kv.k.grow_to(want).and_then(|_| kv.v.grow_to(want));
                    grown.map_err(|e| {
                        Error::inference(format!("cannot grow the KV cache to {want} values: {e}"))
                    })?;
                }
            }
            if let Some(r) = it.logits {
                n_logits = n_logits.max(r + 1);
            }
        }
        let n = rows.len();
        {
            let b = &mut self.buf;
            fit(&mut b.x, n * e);
            fit(&mut b.h, n * e.max(q_dim).max(ff));
            fit(&mut b.qkv, n * qkv_dim);
            fit(&mut b.o, n * e);
            fit(&mut b.gu, n * 2 * ff);
            // A row of keys per head of a KV group, per thread.
            fit(
                &mut b.scores,
                self.pool.threads() * total * (c.n_head / c.n_kv_head).max(1),
            );
            fit(&mut b.logits, n_logits * vocab);
        }
        self.rope_tables(&rows);

        // Embeddings, dequantized row by row.
        let x = Shared::new(&mut self.buf.x);
        let toks = &tokens;
        self.par(n, &|r| {
            for t in r {
                // SAFETY: row t of x belongs to this thread.
                let row = unsafe { x.slice(t * e, e) };
                dequantize_row(m.embed.ty, m.embed.row(file, toks[t] as usize), row);
                if let Some(s) = c.embed_scale {
                    let s = s as f32;
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
        });

        #[cfg(test)]
        super::trace::record(|| "embed".into(), &self.buf.x[..n * e]);
        for (li, layer) in m.layers.iter().enumerate() {
            // Attention.
            self.norm_quantize(n, e, &layer.attn_norm, &layer.qkv);
            #[cfg(test)]
            super::trace::record(|| format!("{li}.attn_norm"), &self.buf.h[..n * e]);
            let mut qkv = std::mem::take(&mut self.buf.qkv);
            {
                let input = Input {
                    q: &self.buf.act,
                    f: &self.buf.h,
                };
                self.matmuls(&layer.qkv, input, n, &mut qkv, qkv_dim);
            }
            self.buf.qkv = qkv;
            #[cfg(test)]
            super::trace::record(|| format!("{li}.qkv_raw"), &self.buf.qkv[..n * qkv_dim]);
            self.attention(li, layer, &rows, total);
            #[cfg(test)]
            {
                super::trace::record(|| format!("{li}.q"), &self.buf.qkv[..q_dim]);
                super::trace::record(|| format!("{li}.k"), &self.buf.qkv[q_dim..q_dim + kv_dim]);
            }
            #[cfg(test)]
            super::trace::record(|| format!("{li}.att"), &self.buf.h[..n * q_dim]);
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
            #[cfg(test)]
            super::trace::record(|| format!("{li}.wo"), &self.buf.o[..n * e]);
            self.residual(n, e, layer.post_attn_norm.as_deref());
            #[cfg(test)]
            super::trace::record(|| format!("{li}.x_attn"), &self.buf.x[..n * e]);

            // Feed-forward.
            self.norm_quantize(n, e, &layer.ffn_norm, &layer.gate_up);
            #[cfg(test)]
            super::trace::record(|| format!("{li}.ffn_norm"), &self.buf.h[..n * e]);
            let mut gu = std::mem::take(&mut self.buf.gu);
            {
                let input = Input {
                    q: &self.buf.act,
                    f: &self.buf.h,
                };
                self.matmuls(&layer.gate_up, input, n, &mut gu, 2 * ff);
            }
            self.buf.gu = gu;
            #[cfg(test)]
            super::trace::record(|| format!("{li}.gu"), &self.buf.gu[..n * 2 * ff]);
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
            #[cfg(test)]
            super::trace::record(|| format!("{li}.act"), &self.buf.h[..n * ff]);
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
            #[cfg(test)]
            super::trace::record(|| format!("{li}.down"), &self.buf.o[..n * e]);
            self.residual(n, e, layer.post_ffn_norm.as_deref());
            #[cfg(test)]
            super::trace::record(|| format!("{li}.x"), &self.buf.x[..n * e]);
        }

        if let Some(out) = self.hidden.as_mut() {
            let at = out.len();
            out.resize(at + n * e, 0.0);
            for (x, h) in self.buf.x[..n * e].chunks(e).zip(out[at..].chunks_mut(e)) {
                ops::rms_norm(x, &m.out_norm, c.rms_eps as f32, h);
            }
        }

        // The caches now hold the pass's positions.
        for it in &self.buf.items {
            self.seqs[it.slot].len += it.to - it.from;
        }

        // Logits of each part that asks for them: its last row, normed,
        // through the output matrix, into its logits row.  They go through
        // one product: `forward` numbers the logits rows in the order the
        // passes produce them, so a pass's rows are consecutive.
        let mut last_rows = 0;
        let mut first_dest = None;
        let mut at = 0;
        for it in &self.buf.items {
            at += it.to - it.from;
            if let Some(dest) = it.logits {
                first_dest.get_or_insert(dest);
                let src = (at - 1) * e;
                let (x, h) = (&self.buf.x, &mut self.buf.h);
                ops::rms_norm(
                    &x[src..src + e],
                    &m.out_norm,
                    c.rms_eps as f32,
                    &mut h[last_rows * e..(last_rows + 1) * e],
                );
                last_rows += 1;
            }
        }
        self.buf.rows = rows;
        self.buf.tokens = tokens;
        let Some(first) = first_dest else {
            return Ok(());
        };
        #[cfg(test)]
        super::trace::record(|| "out_norm".into(), &self.buf.h[..last_rows * e]);
        self.quantize_h(last_rows, e, std::slice::from_ref(&m.output));
        let mut logits = std::mem::take(&mut self.buf.logits);
        {
            let input = Input {
                q: &self.buf.act,
                f: &self.buf.h,
            };
            self.matmuls(
                std::slice::from_ref(&m.output),
                input,
                last_rows,
                &mut logits[first * vocab..],
                vocab,
            );
        }
        if let Some(cap) = c.final_softcap {
            let cap = cap as f32;
            logits[first * vocab..(first + last_rows) * vocab]
                .iter_mut()
                .for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        self.buf.logits = logits;
        Ok(())
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
    /// 256 (Q8_K) when every one of them has a type llama.cpp pairs with Q8_K
    /// ([`WType::wants_q8k`]), in blocks of 32
    /// (Q8_0 / Q8_1) otherwise.
    fn quantize_h(&mut self, n: usize, k: usize, ws: &[Matrix]) {
        if !k.is_multiple_of(32) {
            return;
        }
        let q8k = k.is_multiple_of(256) && ws.iter().all(|w| w.ty.wants_q8k());
        let quantize = if q8k {
            ops::quantize_row_q8k
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

    /// cos/sin of every rotary pair at each row's position, per base.
    fn rope_tables(&mut self, rows: &[Row]) {
        let ropes = &self.model.ropes.bases;
        self.buf.rope.resize(ropes.len(), Vec::new());
        for (table, rope) in self.buf.rope.iter_mut().zip(ropes) {
            table.clear();
            for r in rows {
                for i in 0..rope.pairs() {
                    let (cos, sin) = rope.cos_sin(r.pos, i);
                    table.push(cos);
                    table.push(sin);
                }
            }
        }
    }

    /// Bias, q/k norms and rotary on the new q and k; k and v into each
    /// row's cache; then each (row, head)'s attention over its own
    /// sequence into `h`, the input of the output projection.
    fn attention(&mut self, li: usize, layer: &Layer, rows: &[Row], total: usize) {
        let model = self.model.clone();
        let m = &*model;
        let c = &m.cfg;
        let n = rows.len();
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let eps = c.rms_eps as f32;
        let rope = &self.buf.rope[m.ropes.of_layer[li]];
        let half = c.rope_dim / 2;
        let qkv = Shared::new(&mut self.buf.qkv);
        let mut ptrs = std::mem::take(&mut self.buf.kv_ptrs);
        ptrs.clear();
        for seq in &mut self.seqs {
            let kv = &mut seq.layers[li];
            ptrs.push((Shared::new(&mut kv.k), Shared::new(&mut kv.v), kv.ring));
        }
        let heads = c.n_head + c.n_kv_head;
        let pool = &self.pool;
        let par = |n: usize, f: &(dyn Fn(Range<usize>) + Sync)| {
            let threads = pool.threads();
            if n < PAR_ROWS || threads == 1 {
                f(0..n)
            } else {
                pool.run(&|tid| f(share(n, threads, tid)))
            }
        };
        // Per (row, q or k head): bias, norm, rotary; k and v cached.
        {
            let ptrs = &ptrs;
            par(n, &|r| {
                // Head sizes are at most 4096 (checked at load), so no
                // allocation per step.
                let mut tmp = [0f32; 4096];
                let tmp = &mut tmp[..hd];
                for t in r {
                    // SAFETY: row t belongs to this thread, as does its
                    // position's cache row (a pass holds each (sequence,
                    // position) once).
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
                    let Row { slot, pos } = rows[t];
                    let (kc, vc, ring) = ptrs[slot];
                    let r = ring.map_or(pos, |c| pos % c);
                    unsafe {
                        ops::f32_to_f16(&row[q_dim..q_dim + kv_dim], kc.slice(r * kv_dim, kv_dim));
                        ops::f32_to_f16(&row[q_dim + kv_dim..], vc.slice(r * kv_dim, kv_dim));
                    }
                }
            });
        }
        self.buf.kv_ptrs = ptrs;
        // Attention of each (row, head) over its sequence's cache.
        let seqs = &self.seqs;
        let att = Shared::new(&mut self.buf.h);
        let scores = Shared::new(&mut self.buf.scores);
        let qkv = &self.buf.qkv;
        let group = c.n_head / c.n_kv_head;
        let scale = c.attn_scale as f32;
        let window = c.window[li];
        let threads = self.pool.threads();
        // Work items: a row and `hc` heads of one KV group, which read each
        // cached key once.  Whole groups when there are enough rows to keep
        // every thread busy; one head per item otherwise (generation).
        let hc = if n * c.n_kv_head >= 2 * threads {
            group
        } else {
            1
        };
        let items = n * (c.n_head / hc);
        let work = |tid: usize, stride: usize| {
            // SAFETY: each thread has its own `hc` rows of scores.
            let s_all = unsafe { scores.slice(tid * hc * total, hc * total) };
            let mut i = tid;
            while i < items {
                let (t, h0) = (i / (c.n_head / hc), (i % (c.n_head / hc)) * hc);
                let Row { slot, pos: p } = rows[t];
                let kv = &seqs[slot].layers[li];
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let len = p + 1 - lo;
                let g = h0 / group;
                let q = &qkv[t * qkv_dim + h0 * hd..t * qkv_dim + (h0 + hc) * hd];
                // Positions lo..=p are consecutive cache rows, in at most
                // two runs: a window's ring (longer than the window) wraps
                // at most once.  Run (first row, first position - lo, length).
                let r0 = kv.row(lo);
                let n0 = kv.ring.map_or(len, |c| len.min(c - r0));
                let runs = [(r0, 0, n0), (0, n0, len - n0)];
                let rows = |r: usize| ops::Rows {
                    first: r * kv_dim + g * hd,
                    stride: kv_dim,
                };
                for &(r, j0, m) in runs.iter().filter(|run| run.2 > 0) {
                    ops::dot_rows_f16(&kv.k, rows(r), m, q, hc, hd, &mut s_all[j0..], total);
                }
                for hh in 0..hc {
                    let h = h0 + hh;
                    let s = &mut s_all[hh * total..hh * total + len];
                    s.iter_mut().for_each(|v| *v *= scale);
                    ops::softmax(s);
                    // SAFETY: (t, h) is this thread's.
                    let out = unsafe { att.slice(t * q_dim + h * hd, hd) };
                    out.iter_mut().for_each(|v| *v = 0.0);
                    for &(r, j0, m) in runs.iter().filter(|run| run.2 > 0) {
                        ops::axpy_rows_f16(out, &s[j0..j0 + m], &kv.v, rows(r));
                    }
                }
                i += stride;
            }
        };
        if threads == 1 || items < 2 {
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

impl Batch for DecoderBatch {
    fn slots(&self) -> usize {
        self.seqs.len()
    }

    fn len(&self, slot: usize) -> usize {
        self.seqs.get(slot).map_or(0, |s| s.len)
    }

    fn truncate(&mut self, slot: usize, len: usize) -> usize {
        let Some(seq) = self.seqs.get_mut(slot) else {
            return 0;
        };
        let len = seq.len.min(len);
        // A window ring holds positions from `seq.len - ring` on; position
        // `len` needs those from `len - window` on.
        let lost = seq.layers.iter().any(|kv| {
            kv.ring
                .is_some_and(|r| len.saturating_sub(r - WINDOW_PASS) < seq.len.saturating_sub(r))
        });
        seq.len = if lost { 0 } else { len };
        seq.len
    }

    fn release(&mut self, slot: usize) {
        if slot < self.seqs.len() {
            self.seqs[slot] = Self::empty_kv(&self.model);
        }
    }

    fn kv_bytes(&self, slot: usize) -> usize {
        self.seqs.get(slot).map_or(0, |s| {
            s.layers
                .iter()
                .map(|kv| (kv.k.len() + kv.v.len()) * 2)
                .sum()
        })
    }

    fn kv_bytes_for(&self, positions: usize) -> usize {
        let rows = positions.div_ceil(KV_STEP) * KV_STEP;
        self.model
            .cfg
            .window
            .iter()
            .map(|w| w.map_or(rows, |w| rows.min(w + WINDOW_PASS)) * self.kv_dim() * 2 * 2)
            .sum()
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn forward(&mut self, inputs: &[SeqInput<'_>]) -> Result<()> {
        self.check(inputs)?;
        let windowed = self.seqs[0].layers.iter().any(|kv| kv.ring.is_some());
        let step = if windowed { WINDOW_PASS } else { usize::MAX };
        // Pass k holds part k of every input that has one.  Logits rows are
        // numbered in the order the passes write them; `logit_rows` maps
        // each asking input (in input order) to its row.
        let asking = inputs.iter().filter(|i| i.logits).count();
        self.logit_rows.clear();
        self.logit_rows.resize(asking, 0);
        let mut next = 0;
        let mut from = 0;
        loop {
            let mut items = std::mem::take(&mut self.buf.items);
            items.clear();
            let mut k = 0;
            for (i, input) in inputs.iter().enumerate() {
                let len = input.tokens.len();
                if from < len {
                    let to = len.min(from.saturating_add(step));
                    let logits = (to == len && input.logits).then(|| {
                        self.logit_rows[k] = next;
                        next += 1;
                        next - 1
                    });
                    items.push(PassItem {
                        slot: input.slot,
                        from,
                        to,
                        input: i,
                        logits,
                    });
                }
                k += usize::from(input.logits);
            }
            let done = items.is_empty();
            self.buf.items = items;
            if done {
                break;
            }
            self.forward_pass(inputs)?;
            if step == usize::MAX {
                break;
            }
            from += step;
        }
        Ok(())
    }

    fn hidden_states(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        self.hidden = Some(Vec::with_capacity(tokens.len() * self.model.cfg.n_embd));
        let ran = self.forward(&[SeqInput {
            slot,
            tokens,
            logits: false,
        }]);
        let hidden = self.hidden.take().unwrap_or_default();
        ran.map(|()| hidden)
    }

    fn logits(&mut self, k: usize) -> &mut [f32] {
        let vocab = self.model.output.rows;
        match self.logit_rows.get(k) {
            Some(&r) => &mut self.buf.logits[r * vocab..(r + 1) * vocab],
            None => &mut [],
        }
    }
}

impl Session for DecoderSession {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        if pos != self.0.seqs[0].len {
            return Err(Error::inference(format!(
                "forward at position {pos}, but the cache holds {}",
                self.0.seqs[0].len
            )));
        }
        self.0.forward(&[SeqInput {
            slot: 0,
            tokens,
            logits: true,
        }])?;
        Ok(self.0.logits(0).to_vec())
    }

    fn hidden_states(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        if pos != self.0.seqs[0].len {
            return Err(Error::inference(format!(
                "forward at position {pos}, but the cache holds {}",
                self.0.seqs[0].len
            )));
        }
        self.0.hidden_states(0, tokens)
    }

    fn reset(&mut self) {
        self.0.seqs[0].len = 0;
    }

    fn truncate(&mut self, len: usize) -> usize {
        self.0.truncate(0, len)
    }
}
