//! `llama` architecture (Llama 2/3, Mistral, SmolLM2, TinyLlama) through
//! candle-transformers' quantized implementation.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use super::{candle_error, effective_context, ModelInfo, Session, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

pub struct Llama {
    /// A never-run copy: sessions clone it, which shares the weight tensors
    /// and starts with an empty cache.
    pristine: Arc<ModelWeights>,
    info: ModelInfo,
}

impl Llama {
    pub fn load(gguf: &mut Gguf, max_context: usize) -> Result<Self> {
        check_hyperparameters(gguf)?;
        let trained = gguf.uint("llama.context_length").unwrap_or(2048) as usize;
        let info = ModelInfo {
            architecture: "llama".into(),
            name: gguf.string("general.name").unwrap_or("").to_string(),
            trained_context_length: trained,
            context_length: effective_context(trained, MAX_SEQ_LEN, max_context),
            vocab_size: gguf
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .unwrap_or(0),
            parameter_count: gguf.parameter_count(),
        };
        let emptied = empty_content(&gguf.content);
        let content = std::mem::replace(&mut gguf.content, emptied);
        let model = ModelWeights::from_gguf(content, &mut gguf.reader, &Device::Cpu)
            .map_err(|e| Error::model(format!("loading llama weights: {e}")))?;
        Ok(Self {
            pristine: Arc::new(model),
            info,
        })
    }
}

/// What is left in `Gguf` once candle has taken the content by value: the
/// header, without metadata or tensors (read everything needed first).
fn empty_content(
    c: &candle_core::quantized::gguf_file::Content,
) -> candle_core::quantized::gguf_file::Content {
    candle_core::quantized::gguf_file::Content {
        magic: c.magic,
        metadata: Default::default(),
        tensor_infos: Default::default(),
        tensor_data_offset: c.tensor_data_offset,
    }
}

/// Rejects metadata that would make candle divide by zero, index out of
/// range or allocate beyond what the tensors in the file can back.
fn check_hyperparameters(g: &Gguf) -> Result<()> {
    let heads = g.require_uint("llama.attention.head_count", 1 << 12)?;
    let kv_heads = g.require_uint("llama.attention.head_count_kv", heads)?;
    let embd = g.require_uint("llama.embedding_length", 1 << 17)?;
    let blocks = g.require_uint("llama.block_count", 1 << 12)?;
    let rope = g.require_uint("llama.rope.dimension_count", 1 << 12)?;
    if heads % kv_heads != 0 || embd % heads != 0 {
        return Err(Error::model(format!(
            "inconsistent attention sizes: embedding {embd}, {heads} heads, {kv_heads} KV heads"
        )));
    }
    let head_dim = embd / heads;
    if rope > head_dim || rope % 2 != 0 {
        return Err(Error::model(format!(
            "llama.rope.dimension_count = {rope} does not fit head size {head_dim}"
        )));
    }
    if g.float("llama.attention.layer_norm_rms_epsilon").is_none() {
        return Err(Error::model(
            "metadata llama.attention.layer_norm_rms_epsilon is missing",
        ));
    }
    if let Some(base) = g.float("llama.rope.freq_base") {
        if !(base.is_finite() && base > 0.0) {
            return Err(Error::model(format!(
                "llama.rope.freq_base = {base} is invalid"
            )));
        }
    }
    let tensors = &g.content.tensor_infos;
    let embd_t = tensors
        .get("token_embd.weight")
        .ok_or_else(|| Error::model("tensor token_embd.weight is missing"))?;
    if embd_t.shape.dims().len() != 2 || embd_t.shape.dims()[1] as u64 != embd {
        return Err(Error::model(format!(
            "token_embd.weight has shape {:?}, expected [vocab, {embd}]",
            embd_t.shape.dims()
        )));
    }
    for i in 0..blocks {
        for t in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_norm",
            "ffn_norm",
        ] {
            let name = format!("blk.{i}.{t}.weight");
            if !tensors.contains_key(&name) {
                return Err(Error::model(format!("tensor {name} is missing")));
            }
        }
    }
    Ok(())
}

impl Weights for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_session(&self) -> Box<dyn Session> {
        Box::new(LlamaSession {
            model: (*self.pristine).clone(),
            pristine: self.pristine.clone(),
        })
    }
}

struct LlamaSession {
    model: ModelWeights,
    pristine: Arc<ModelWeights>,
}

impl Session for LlamaSession {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        if tokens.is_empty() || pos + tokens.len() > MAX_SEQ_LEN {
            return Err(Error::inference(format!(
                "forward of {} tokens at position {pos} exceeds the limit {MAX_SEQ_LEN}",
                tokens.len()
            )));
        }
        let input = Tensor::new(tokens, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(candle_error)?;
        let logits = self.model.forward(&input, pos).map_err(candle_error)?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_dtype(candle_core::DType::F32))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(candle_error)
    }

    fn reset(&mut self) {
        // A fresh clone also drops the attention masks candle caches per
        // (length, position), which would otherwise grow without bound.
        self.model = (*self.pristine).clone();
    }
}
