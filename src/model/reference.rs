//! The reference decoder, written on candle's device-generic tensors: the
//! runtime's logits are tested against it.  It is a second forward pass,
//! written independently of the runtime's (`decoder.rs`: its buffers,
//! threads, packed weights, ring caches and batching), which computes the
//! same arithmetic: every product, norm, softmax and activation in the one
//! order the runtime specifies for them (`runtime::ops`, `runtime::quant`),
//! through the runtime's portable (scalar) kernels and operations, which
//! are that order's definition (the kernels are tested against
//! dequantize-then-f64 products, and every SIMD level against them).  So
//! the two decoders give the same bits where the forward pass is the same,
//! and any difference is one of the passes.  The KV cache holds f16 values,
//! as llama.cpp's default cache does; masks and rotary tables are ours.

use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use half::f16;
use rayon::prelude::*;

use super::config::{Activation, Config, RopeStyle};
use super::rope::{Rope, Ropes};
use super::{candle_error, Session, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::runtime::ops;
use crate::runtime::quant::{self, act, ActRow, Dot, WType, MAX_COLS};
use crate::runtime::simd::SimdLevel;

/// A weight matrix of `rows` rows of `k` values, the file's bytes.
pub struct Linear {
    ty: WType,
    rows: usize,
    k: usize,
    bytes: Arc<Vec<u8>>,
    dot: Dot,
}

impl Linear {
    fn new(ty: WType, rows: usize, k: usize, bytes: Arc<Vec<u8>>) -> Result<Self> {
        if bytes.len() != rows * ty.row_bytes(k) {
            return Err(Error::model(format!(
                "a {} matrix of {rows} × {k} has {} bytes",
                ty.name(),
                bytes.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            k,
            bytes,
            dot: quant::dot_kernel(ty, SimdLevel::Scalar),
        })
    }

    fn row(&self, r: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.k);
        &self.bytes[r * rb..(r + 1) * rb]
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(products(&[self], x)?.remove(0))
    }

    /// `n` rows of `x` (`k` values each) times this matrix: `[n][rows]`.
    fn product(&self, acts: &Acts, x: &[f32], n: usize) -> Vec<f32> {
        let arows: Vec<ActRow<'_>> = (0..if acts.k > 0 { n } else { 0 })
            .map(|t| acts.row(t))
            .collect();
        let frows: Vec<&[f32]> = (0..n).map(|t| &x[t * self.k..(t + 1) * self.k]).collect();
        let mut by_row = vec![0f32; self.rows * n];
        by_row
            .par_chunks_mut(n)
            .with_min_len(64)
            .enumerate()
            .for_each(|(r, o)| {
                let w = self.row(r);
                let mut t0 = 0;
                while t0 < n {
                    let cols = (n - t0).min(MAX_COLS);
                    let out = &mut o[t0..t0 + cols];
                    // SAFETY: `w` is one whole row of this matrix's type,
                    // each activation row holds `k` values (quantized or
                    // not), `out` one value per activation row; the scalar
                    // kernels run on any CPU.
                    match self.dot {
                        Dot::Quant(f) => unsafe { f(w, &arows[t0..t0 + cols], out) },
                        Dot::Float(f) => unsafe { f(w, &frows[t0..t0 + cols], out) },
                    }
                    t0 += cols;
                }
            });
        let mut y = vec![0f32; n * self.rows];
        for r in 0..self.rows {
            for t in 0..n {
                y[t * self.rows + r] = by_row[r * n + t];
            }
        }
        y
    }
}

/// Activation rows quantized once for the products of one input: in blocks
/// of 256 (Q8_K) when every matrix of the group is a K-quant and `k` a
/// multiple of 256, in blocks of 32 otherwise, as the runtime does.
struct Acts {
    k: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    dsum: Vec<f32>,
    s16: Vec<i16>,
}

impl Acts {
    fn new(x: &[f32], n: usize, k: usize, ws: &[&Linear]) -> Self {
        if !k.is_multiple_of(32) || ws.iter().all(|w| w.ty.is_float()) {
            return Self {
                k: 0,
                qs: Vec::new(),
                d: Vec::new(),
                dsum: Vec::new(),
                s16: Vec::new(),
            };
        }
        let q8k = k.is_multiple_of(256) && ws.iter().all(|w| w.ty.wants_q8k());
        let mut a = Self {
            k,
            qs: vec![0; n * k],
            d: vec![0.0; n * k / 32],
            dsum: vec![0.0; n * k / 32],
            s16: vec![0; n * k / 16],
        };
        for t in 0..n {
            let (qs, d) = (
                &mut a.qs[t * k..(t + 1) * k],
                &mut a.d[t * k / 32..(t + 1) * k / 32],
            );
            let dsum = &mut a.dsum[t * k / 32..(t + 1) * k / 32];
            let s16 = &mut a.s16[t * k / 16..(t + 1) * k / 16];
            let row = &x[t * k..(t + 1) * k];
            if q8k {
                act::quantize_row_q8k(row, qs, d, dsum, s16);
            } else {
                ops::quantize_row_q8(row, qs, d, dsum, s16);
            }
        }
        a
    }

    fn row(&self, t: usize) -> ActRow<'_> {
        let k = self.k;
        ActRow {
            qs: &self.qs[t * k..(t + 1) * k],
            d: &self.d[t * k / 32..(t + 1) * k / 32],
            dsum: &self.dsum[t * k / 32..(t + 1) * k / 32],
            s16: &self.s16[t * k / 16..(t + 1) * k / 16],
        }
    }
}

/// `x` (`[.., k]`) times each matrix of `ws` (all of `k` columns), its rows
/// quantized once for all of them.
fn products(ws: &[&Linear], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let k = ws[0].k;
    let dims = x.dims().to_vec();
    if dims.last() != Some(&k) || ws.iter().any(|w| w.k != k) {
        candle_core::bail!("product of {dims:?} with matrices of {k} columns");
    }
    let n = x.elem_count() / k.max(1);
    let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let acts = Acts::new(&v, n, k, ws);
    ws.iter()
        .map(|w| {
            let mut shape = dims.clone();
            *shape.last_mut().unwrap() = w.rows;
            Tensor::from_vec(w.product(&acts, &v, n), shape, x.device())
        })
        .collect()
}

/// `f` applied to each row of `n` values of `x`, in place.
fn map_rows(x: &Tensor, n: usize, f: impl Fn(&mut [f32])) -> candle_core::Result<Tensor> {
    let mut v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    for row in v.chunks_exact_mut(n) {
        f(row);
    }
    Tensor::from_vec(v, x.shape(), x.device())
}

/// RMS norm in the specified order (`ops::rms_norm`).
pub struct Norm {
    w: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.w.len();
        map_rows(x, n, |row| {
            let mut out = vec![0f32; n];
            ops::rms_norm(row, &self.w, self.eps, &mut out);
            row.copy_from_slice(&out);
        })
    }
}

struct Layer {
    attn_norm: Norm,
    /// Either one fused projection (Phi-3) or q, k, v.
    qkv: Qkv,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    wo: Linear,
    post_attn_norm: Option<Norm>,
    ffn_norm: Norm,
    /// Either separate gate and up projections, or one fused (Phi-3).
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Norm>,
}

enum Qkv {
    Fused(Linear),
    Split {
        q: Linear,
        k: Linear,
        v: Linear,
        bias: Option<[Tensor; 3]>,
    },
}

pub struct Model {
    cfg: Config,
    /// `token_embd`, its rows dequantized when looked up.
    embed: Linear,
    layers: Vec<Layer>,
    out_norm: Norm,
    output: Linear,
    /// Rotary frequencies and scaling (with `rope_freqs`, Llama 3.1+) per
    /// distinct base, and each layer's base.  The cos/sin tables are made
    /// per forward pass for its positions only, so that no context length,
    /// however large the file claims, is allocated up front.
    ropes: Ropes,
}

/// candle's name for one of our tensor types.
fn ggml_dtype(t: WType) -> GgmlDType {
    match t {
        WType::F32 => GgmlDType::F32,
        WType::F16 => GgmlDType::F16,
        WType::BF16 => GgmlDType::BF16,
        WType::Q4_0 => GgmlDType::Q4_0,
        WType::Q4_1 => GgmlDType::Q4_1,
        WType::Q5_0 => GgmlDType::Q5_0,
        WType::Q5_1 => GgmlDType::Q5_1,
        WType::Q8_0 => GgmlDType::Q8_0,
        WType::Q2K => GgmlDType::Q2K,
        WType::Q3K => GgmlDType::Q3K,
        WType::Q4K => GgmlDType::Q4K,
        WType::Q5K => GgmlDType::Q5K,
        WType::Q6K => GgmlDType::Q6K,
    }
}

/// Reads tensors by name, with the file's name in errors.
pub struct Loader<'a> {
    gguf: &'a Gguf,
}

impl<'a> Loader<'a> {
    pub fn new(gguf: &'a Gguf) -> Self {
        Self { gguf }
    }

    pub fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.gguf.tensor(name).map(|t| t.dims.clone())
    }

    /// A tensor as candle's, its bytes copied from the file.
    pub fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        let g = self.gguf;
        let (Some(t), Some(data)) = (g.tensor(name), g.tensor_data(name)) else {
            return Err(Error::model(format!("tensor {name} is missing")));
        };
        qtensor_from_ggml(ggml_dtype(t.ty), data, t.dims.clone(), &Device::Cpu)
            .map_err(|e| Error::model(format!("tensor {name}: {e}")))
    }

    /// A weight matrix of shape [rows, cols], checked.
    pub fn matmul(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        match self.dims(name) {
            Some(d) if d == [rows, cols] => {}
            Some(d) => {
                return Err(Error::model(format!(
                    "tensor {name} has shape {d:?}, expected [{rows}, {cols}]"
                )))
            }
            None => return Err(Error::model(format!("tensor {name} is missing"))),
        }
        self.linear(name, rows, cols)
    }

    /// The bytes of a matrix of `rows` × `cols`, as they are in the file.
    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let g = self.gguf;
        let (Some(t), Some(data)) = (g.tensor(name), g.tensor_data(name)) else {
            return Err(Error::model(format!("tensor {name} is missing")));
        };
        Linear::new(t.ty, rows, cols, Arc::new(data.to_vec()))
            .map_err(|e| Error::model(format!("tensor {name}: {}", e.message)))
    }

    pub fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        match self.dims(name) {
            Some(d) if d == [len] => {}
            Some(d) => {
                return Err(Error::model(format!(
                    "tensor {name} has shape {d:?}, expected [{len}]"
                )))
            }
            None => return Err(Error::model(format!("tensor {name} is missing"))),
        }
        self.qtensor(name)?
            .dequantize(&Device::Cpu)
            .map_err(|e| Error::model(format!("tensor {name}: {e}")))
    }

    pub fn norm(&mut self, name: &str, len: usize, eps: f64) -> Result<Norm> {
        let w = self.vector(name, len)?;
        Ok(Norm {
            w: w.to_vec1::<f32>().map_err(candle_error)?,
            eps: eps as f32,
        })
    }

    pub fn opt_norm(&mut self, name: &str, len: usize, eps: f64) -> Result<Option<Norm>> {
        if self.has(name) {
            self.norm(name, len, eps).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Model {
    pub fn load(cfg: Config, l: &mut Loader) -> Result<Self> {
        let (e, hd) = (cfg.n_embd, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.n_head * hd, cfg.n_kv_head * hd);
        let vocab = match l.dims("token_embd.weight") {
            Some(d) if d.len() == 2 && d[1] == e => d[0],
            other => {
                return Err(Error::model(format!(
                    "token_embd.weight has shape {other:?}, expected [vocab, {e}]"
                )))
            }
        };
        let embed = l.linear("token_embd.weight", vocab, e)?;
        let output = if l.has("output.weight") {
            l.matmul("output.weight", vocab, e)?
        } else {
            Linear::new(embed.ty, vocab, e, embed.bytes.clone())?
        };
        let out_norm = l.norm("output_norm.weight", e, cfg.rms_eps)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |t: &str| format!("blk.{i}.{t}.weight");
            let qkv = if l.has(&n("attn_qkv")) {
                Qkv::Fused(l.matmul(&n("attn_qkv"), q_dim + 2 * kv_dim, e)?)
            } else {
                let bias = if l.has(&format!("blk.{i}.attn_q.bias")) {
                    Some([
                        l.vector(&format!("blk.{i}.attn_q.bias"), q_dim)?,
                        l.vector(&format!("blk.{i}.attn_k.bias"), kv_dim)?,
                        l.vector(&format!("blk.{i}.attn_v.bias"), kv_dim)?,
                    ])
                } else {
                    None
                };
                Qkv::Split {
                    q: l.matmul(&n("attn_q"), q_dim, e)?,
                    k: l.matmul(&n("attn_k"), kv_dim, e)?,
                    v: l.matmul(&n("attn_v"), kv_dim, e)?,
                    bias,
                }
            };
            let ff = match l.dims(&n("ffn_down")) {
                Some(d) if d.len() == 2 && d[0] == e => d[1],
                other => {
                    return Err(Error::model(format!(
                        "{} has shape {other:?}, expected [{e}, n_ff]",
                        n("ffn_down")
                    )))
                }
            };
            let (gate, up) = if l.has(&n("ffn_gate")) {
                (
                    Some(l.matmul(&n("ffn_gate"), ff, e)?),
                    l.matmul(&n("ffn_up"), ff, e)?,
                )
            } else {
                (None, l.matmul(&n("ffn_up"), 2 * ff, e)?)
            };
            layers.push(Layer {
                attn_norm: l.norm(&n("attn_norm"), e, cfg.rms_eps)?,
                qkv,
                q_norm: l.opt_norm(&n("attn_q_norm"), hd, cfg.rms_eps)?,
                k_norm: l.opt_norm(&n("attn_k_norm"), hd, cfg.rms_eps)?,
                wo: l.matmul(&n("attn_output"), e, q_dim)?,
                post_attn_norm: l.opt_norm(&n("post_attention_norm"), e, cfg.rms_eps)?,
                ffn_norm: l.norm(&n("ffn_norm"), e, cfg.rms_eps)?,
                gate,
                up,
                down: l.matmul(&n("ffn_down"), e, ff)?,
                post_ffn_norm: l.opt_norm(&n("post_ffw_norm"), e, cfg.rms_eps)?,
            });
        }
        let rope_freqs = if l.has("rope_freqs.weight") {
            let t = l.vector("rope_freqs.weight", cfg.rope_dim / 2)?;
            Some(t.to_vec1::<f32>().map_err(candle_error)?)
        } else {
            None
        };
        let ropes = Ropes::new(&cfg, rope_freqs.as_deref());
        Ok(Self {
            ropes,
            cfg,
            embed,
            layers,
            out_norm,
            output,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.embed.rows
    }
}

/// cos and sin of the rotary angles for positions `from..from + len`.
fn rope_table(rope: &Rope, from: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let half = rope.pairs();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in from..from + len {
        for i in 0..half {
            let (c, s) = rope.cos_sin(p, i);
            cos.push(c);
            sin.push(s);
        }
    }
    let shape = (len, half);
    Ok((
        Tensor::from_vec(cos, shape, &Device::Cpu)?,
        Tensor::from_vec(sin, shape, &Device::Cpu)?,
    ))
}

/// One layer's cache: each position's keys and values rounded to f16, a
/// row of `n_kv_head · head_dim` values per position.
#[derive(Clone, Default)]
struct LayerCache {
    k: Vec<f16>,
    v: Vec<f16>,
}

/// Attention of the `seq` queries `q` (`[seq][n_head][head_dim]`, at
/// positions `pos..`) over layer `li`'s cache (which holds them already):
/// each head's scores over the keys it sees (its window, when the layer has
/// one, up to itself), scaled, softmaxed, and the values summed with those
/// weights one key after the other, in the specified order.
fn attention(
    c: &Config,
    li: usize,
    q: &[f32],
    lc: &LayerCache,
    seq: usize,
    pos: usize,
) -> Vec<f32> {
    let hd = c.head_dim;
    let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
    let group = c.n_head / c.n_kv_head;
    let scale = c.attn_scale as f32;
    let mut y = vec![0f32; seq * q_dim];
    y.par_chunks_mut(hd).enumerate().for_each(|(ih, out)| {
        let (i, h) = (ih / c.n_head, ih % c.n_head);
        let p = pos + i;
        let lo = c.window[li].map_or(0, |w| (p + 1).saturating_sub(w));
        let at = |j: usize| j * kv_dim + (h / group) * hd;
        let qh = &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
        let mut s: Vec<f32> = (lo..=p)
            .map(|j| ops::dot_f16(&lc.k[at(j)..at(j) + hd], qh) * scale)
            .collect();
        ops::softmax(&mut s);
        for (j, &w) in (lo..=p).zip(&s) {
            ops::axpy_f16(out, w, &lc.v[at(j)..at(j) + hd]);
        }
    });
    y
}

/// A tensor's values, row after row.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()
}

impl Model {
    fn forward(
        &self,
        cache: &mut [LayerCache],
        tokens: &[u32],
        pos: usize,
        all_hidden: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let seq = tokens.len();
        let e = c.n_embd;
        let dev = Device::Cpu;
        let mut xe = vec![0f32; seq * e];
        for (row, &id) in xe.chunks_exact_mut(e).zip(tokens) {
            quant::dequantize_row(self.embed.ty, self.embed.row(id as usize), row);
            if let Some(s) = c.embed_scale {
                let s = s as f32;
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        let mut x = Tensor::from_vec(xe, (1, seq, e), &dev)?;
        #[cfg(test)]
        super::trace::record_tensor(|| "embed".into(), &x);
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let ropes = self
            .ropes
            .bases
            .iter()
            .map(|rope| rope_table(rope, pos, seq))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.attn_norm"), &h);
            let (q, k, v) = match &layer.qkv {
                Qkv::Fused(w) => {
                    let qkv = w.forward(&h)?;
                    (
                        qkv.narrow(D::Minus1, 0, q_dim)?,
                        qkv.narrow(D::Minus1, q_dim, kv_dim)?,
                        qkv.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                    )
                }
                Qkv::Split { q, k, v, bias } => {
                    let mut r = products(&[q, k, v], &h)?;
                    let (mut v, mut k, mut q) =
                        (r.pop().unwrap(), r.pop().unwrap(), r.pop().unwrap());
                    if let Some([bq, bk, bv]) = bias {
                        q = q.broadcast_add(bq)?;
                        k = k.broadcast_add(bk)?;
                        v = v.broadcast_add(bv)?;
                    }
                    (q, k, v)
                }
            };
            #[cfg(test)]
            super::trace::record_tensor(
                || format!("{i}.qkv_raw"),
                &Tensor::cat(&[&q, &k, &v], D::Minus1)?,
            );
            let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
                t.reshape((1, seq, n, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let mut q = heads(q, c.n_head)?;
            let mut k = heads(k, c.n_kv_head)?;
            if let Some(n) = &layer.q_norm {
                q = n.forward(&q)?;
            }
            if let Some(n) = &layer.k_norm {
                k = n.forward(&k)?;
            }
            let (cos, sin) = &ropes[self.ropes.of_layer[i]];
            let rope = |t: &Tensor| match c.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(t, cos, sin),
                RopeStyle::Halves => candle_nn::rotary_emb::rope(t, cos, sin),
            };
            let q = rope(&q)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.q"), &q);
            let k = rope(&k)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.k"), &k);
            // Back to a row per position, the cache's rows in f16.
            let lc = &mut cache[i];
            lc.k.extend(values(&k.transpose(1, 2)?)?.into_iter().map(f16::from_f32));
            lc.v.extend(values(&v)?.into_iter().map(f16::from_f32));
            let y = attention(c, i, &values(&q.transpose(1, 2)?)?, lc, seq, pos);
            let y = Tensor::from_vec(y, (1, seq, q_dim), &dev)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.att"), &y);
            let mut y = layer.wo.forward(&y)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.wo"), &y);
            if let Some(n) = &layer.post_attn_norm {
                y = n.forward(&y)?;
            }
            x = (x + y)?;

            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.x_attn"), &x);
            let h = layer.ffn_norm.forward(&x)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.ffn_norm"), &h);
            let (g, u) = match &layer.gate {
                Some(gate) => {
                    let mut r = products(&[gate, &layer.up], &h)?;
                    let u = r.pop().unwrap();
                    (r.pop().unwrap(), u)
                }
                None => {
                    let gu = layer.up.forward(&h)?;
                    let ff = gu.dim(D::Minus1)? / 2;
                    (gu.narrow(D::Minus1, 0, ff)?, gu.narrow(D::Minus1, ff, ff)?)
                }
            };
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.gu"), &Tensor::cat(&[&g, &u], D::Minus1)?);
            // activation(g) · u, elementwise.
            let mut gv = values(&g)?;
            let uv = values(&u)?;
            match c.activation {
                Activation::Silu => ops::silu_mul(&mut gv, &uv),
                Activation::GeluTanh => ops::gelu_mul(&mut gv, &uv),
            }
            let a = Tensor::from_vec(gv, g.shape(), &dev)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.act"), &a);
            let mut y = layer.down.forward(&a)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.down"), &y);
            if let Some(n) = &layer.post_ffn_norm {
                y = n.forward(&y)?;
            }
            x = (x + y)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.x"), &x);
        }
        if all_hidden {
            // Every position's hidden state after the output norm.
            return self
                .out_norm
                .forward(&x)?
                .flatten_all()?
                .to_dtype(DType::F32);
        }
        let x = self.out_norm.forward(&x.i((.., seq - 1, ..))?)?;
        #[cfg(test)]
        super::trace::record_tensor(|| "out_norm".into(), &x);
        let mut logits = values(&self.output.forward(&x)?)?;
        if let Some(cap) = c.final_softcap {
            let cap = cap as f32;
            logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        let n = logits.len();
        Tensor::from_vec(logits, n, &dev)
    }
}

/// Shares one `Model` between sessions.
pub struct SharedModel {
    pub model: Arc<Model>,
    pub info: super::ModelInfo,
}

impl Weights for SharedModel {
    fn info(&self) -> &super::ModelInfo {
        &self.info
    }

    fn new_session(&self) -> Box<dyn Session> {
        Box::new(TransformerSession {
            cache: vec![LayerCache::default(); self.model.layers.len()],
            model: self.model.clone(),
            len: 0,
        })
    }

    fn new_batch(&self, slots: usize) -> Box<dyn super::Batch> {
        Box::new(super::SessionBatch::new(self, slots))
    }
}

struct TransformerSession {
    model: Arc<Model>,
    cache: Vec<LayerCache>,
    len: usize,
}

impl TransformerSession {
    fn run(&mut self, tokens: &[u32], pos: usize, all_hidden: bool) -> Result<Vec<f32>> {
        let limit = self.model.cfg.context_length;
        if tokens.is_empty() || pos + tokens.len() > limit || pos != self.len {
            return Err(Error::inference(format!(
                "forward of {} tokens at position {pos} (cache holds {}, limit {limit})",
                tokens.len(),
                self.len
            )));
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.model.vocab_size())
        {
            return Err(Error::inference(format!(
                "token id {bad} is outside the model's {} embeddings",
                self.model.vocab_size()
            )));
        }
        let logits = self
            .model
            .forward(&mut self.cache, tokens, pos, all_hidden)
            .and_then(|l| l.to_vec1::<f32>());
        match logits {
            Ok(l) => {
                self.len += tokens.len();
                Ok(l)
            }
            Err(e) => {
                // The cache may hold part of this step: drop it.
                self.reset();
                Err(candle_error(e))
            }
        }
    }
}

impl Session for TransformerSession {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        self.run(tokens, pos, false)
    }

    fn hidden_states(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        self.run(tokens, pos, true)
    }

    fn reset(&mut self) {
        self.cache
            .iter_mut()
            .for_each(|c| *c = LayerCache::default());
        self.len = 0;
    }

    fn truncate(&mut self, len: usize) -> usize {
        if len == 0 {
            self.reset();
            return 0;
        }
        if len >= self.len {
            return self.len;
        }
        let c = &self.model.cfg;
        let kv_dim = c.n_kv_head * c.head_dim;
        for lc in self.cache.iter_mut() {
            lc.k.truncate(len * kv_dim);
            lc.v.truncate(len * kv_dim);
        }
        self.len = len;
        self.len
    }
}
