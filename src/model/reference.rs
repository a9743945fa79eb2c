//! The reference decoder, written on candle's device-generic tensors: the
//! runtime's logits are tested against it, and it keeps a GPU backend
//! (candle's CUDA or Metal) one feature away.  Weights stay quantized
//! (candle's `QMatMul`); the KV cache, masks and rotary tables are ours.
//! K and V are rounded to f16 on their way into the cache, as llama.cpp's
//! default cache stores them.

use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_transformers::utils::repeat_kv;

use super::config::{Activation, Config, RopeStyle};
use super::rope::{Rope, Ropes};
use super::{candle_error, Session, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::runtime::quant::WType;

/// A weight matrix: our Q4_1 kernel where it applies, candle's otherwise.
pub enum Linear {
    /// With the blocks llama.cpp quantizes the activations to for it.
    Candle(QMatMul, ActBlocks),
    Q41(super::q4_1::Q41Matrix),
}

/// How llama.cpp quantizes a product's activations (its `vec_dot_type`).
#[derive(Clone, Copy)]
pub enum ActBlocks {
    /// Not quantized (float weights).
    None,
    /// Q8_0 / Q8_1: blocks of 32, scale amax / 127.
    Q8,
    /// Q8_K: blocks of 256, scale max / -127.
    Q8K,
}

impl Linear {
    fn new(t: QTensor) -> candle_core::Result<Self> {
        use candle_core::quantized::GgmlDType as G;
        let act = match t.dtype() {
            G::Q4_0 | G::Q4_1 | G::Q5_0 | G::Q5_1 | G::Q8_0 | G::Q8_1 => ActBlocks::Q8,
            G::Q2K | G::Q3K | G::Q4K | G::Q5K | G::Q6K | G::Q8K => ActBlocks::Q8K,
            _ => ActBlocks::None,
        };
        match super::q4_1::Q41Matrix::from_qtensor(&t)? {
            Some(m) => Ok(Self::Q41(m)),
            None => Ok(Self::Candle(QMatMul::from_qtensor(t)?, act)),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m, act) => m.forward(&llama_cpp_grid(x, *act)?),
            Self::Q41(m) => m.forward(x),
        }
    }
}

/// `x` with each value replaced by what llama.cpp's x86 code quantizes it
/// to for the product (its quantized value times the block's scale).
/// candle quantizes activations with slightly different arithmetic (it
/// multiplies by `1 / d`, rounds ties away from zero): given values already
/// on a block's grid, it finds the same quantized values, so its product
/// then is llama.cpp's.  The difference matters at exact rounding ties,
/// which are common (a Q8_0 embedding's values are small integer multiples
/// of one scale).
fn llama_cpp_grid(x: &Tensor, act: ActBlocks) -> candle_core::Result<Tensor> {
    let block = match act {
        ActBlocks::None => return Ok(x.clone()),
        ActBlocks::Q8 => 32,
        ActBlocks::Q8K => 256,
    };
    let k = x.dim(D::Minus1)?;
    if !k.is_multiple_of(block) {
        return Ok(x.clone());
    }
    let mut v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    for b in v.chunks_exact_mut(block) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &y in b.iter() {
            if y.abs() > amax {
                amax = y.abs();
                max = y;
            }
        }
        if amax == 0.0 {
            continue;
        }
        match act {
            ActBlocks::Q8 => {
                let (d, id) = (amax / 127.0, 127.0 / amax);
                for y in b.iter_mut() {
                    *y = (*y * id).round_ties_even().clamp(-127.0, 127.0) * d;
                }
            }
            _ => {
                let iscale = -127.0 / max;
                let d = 1.0 / iscale;
                for y in b.iter_mut() {
                    *y = (iscale * *y).round_ties_even().clamp(-127.0, 127.0) * d;
                }
            }
        }
    }
    Tensor::from_vec(v, x.shape(), x.device())
}

/// RMS norm as ggml computes it: the squares in f32 summed in f64, the
/// mean narrowed to f32, then `x · (1 / sqrt(mean + eps)) · w` (candle's
/// `rms_norm` divides by the root instead, a last-bit difference that turns
/// rounding ties of the next activation quantization the other way).
pub struct Norm {
    w: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.w.len();
        let mut v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        for row in v.chunks_exact_mut(n) {
            let sum: f64 = row.iter().map(|y| (y * y) as f64).sum();
            let mean = (sum / n as f64) as f32;
            let scale = 1.0 / (mean + self.eps).sqrt();
            for (y, w) in row.iter_mut().zip(&self.w) {
                *y = *y * scale * w;
            }
        }
        Tensor::from_vec(v, x.shape(), x.device())
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
    embed: Tensor,
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
        Linear::new(self.qtensor(name)?).map_err(|e| Error::model(format!("tensor {name}: {e}")))
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
        let embed_q = l.qtensor("token_embd.weight")?;
        let embed = embed_q.dequantize(&Device::Cpu).map_err(candle_error)?;
        let output = if l.has("output.weight") {
            l.matmul("output.weight", vocab, e)?
        } else {
            Linear::new(embed_q).map_err(candle_error)?
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
        self.embed.dim(0).unwrap_or(0)
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

/// Additive attention mask for queries at positions `pos..pos+seq` over keys
/// `0..pos+seq`: causal, and within `window` when the layer has one.
fn mask(seq: usize, pos: usize, window: Option<usize>) -> Result<Option<Tensor>> {
    let kv = pos + seq;
    let needed = seq > 1 || window.is_some_and(|w| kv > w);
    if !needed {
        return Ok(None);
    }
    let mut m = vec![0f32; seq * kv];
    for i in 0..seq {
        let q = pos + i;
        for k in 0..kv {
            let hidden = k > q || window.is_some_and(|w| q - k >= w);
            if hidden {
                m[i * kv + k] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (1, 1, seq, kv), &Device::Cpu)
        .map(Some)
        .map_err(candle_error)
}

impl Model {
    fn forward(
        &self,
        cache: &mut [Option<(Tensor, Tensor)>],
        tokens: &[u32],
        pos: usize,
        all_hidden: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let seq = tokens.len();
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?.unsqueeze(0)?;
        if let Some(s) = c.embed_scale {
            x = (x * s)?;
        }
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
                    let (mut q, mut k, mut v) = (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?);
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
            let v = heads(v, c.n_kv_head)?;
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
            // The cache holds f16 values, as llama.cpp's (and the runtime's)
            // default KV cache does.
            let f16_round = |t: Tensor| t.to_dtype(DType::F16)?.to_dtype(DType::F32);
            let k = rope(&k)?;
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.k"), &k);
            let k = f16_round(k)?;
            let v = f16_round(v)?;
            let (k, v) = match cache[i].take() {
                Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
                None => (k, v),
            };
            cache[i] = Some((k.clone(), v.clone()));
            let rep = c.n_head / c.n_kv_head;
            let k = repeat_kv(k, rep)?.contiguous()?;
            let v = repeat_kv(v, rep)?.contiguous()?;
            let mut att = (q.matmul(&k.t()?)? * c.attn_scale)?;
            if let Some(m) =
                mask(seq, pos, c.window[i]).map_err(|e| candle_core::Error::Msg(e.message))?
            {
                att = att.broadcast_add(&m)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((1, seq, q_dim))?;
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
                Some(gate) => (gate.forward(&h)?, layer.up.forward(&h)?),
                None => {
                    let gu = layer.up.forward(&h)?;
                    let ff = gu.dim(D::Minus1)? / 2;
                    (gu.narrow(D::Minus1, 0, ff)?, gu.narrow(D::Minus1, ff, ff)?)
                }
            };
            #[cfg(test)]
            super::trace::record_tensor(|| format!("{i}.gu"), &Tensor::cat(&[&g, &u], D::Minus1)?);
            let g = match c.activation {
                Activation::Silu => candle_nn::ops::silu(&g)?,
                Activation::GeluTanh => g.gelu()?,
            };
            let a = (g * u)?;
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
        let mut logits = self.output.forward(&x)?.squeeze(0)?;
        if let Some(cap) = c.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        logits.to_dtype(DType::F32)
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
            cache: vec![None; self.model.layers.len()],
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
    cache: Vec<Option<(Tensor, Tensor)>>,
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
        self.cache.iter_mut().for_each(|c| *c = None);
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
        for c in self.cache.iter_mut() {
            let cut = c
                .as_ref()
                .and_then(|(k, v)| Some((k.narrow(2, 0, len).ok()?, v.narrow(2, 0, len).ok()?)));
            *c = cut;
        }
        if self.cache.iter().any(Option::is_none) {
            self.reset();
        } else {
            self.len = len;
        }
        self.len
    }
}
