//! The model behind a narrow interface of our own: token ids and a position
//! in, logits of the last position out, and a cache that can be reset.  One
//! general decoder runs every architecture; each architecture is one file
//! that maps its GGUF metadata onto a [`config::Config`], and `load`
//! dispatches on `general.architecture`.  Two decoders run a `Config`:
//! [`decoder`] on our CPU runtime (what the engine uses) and, with the
//! `reference` feature, `reference` on candle's tensors (what the runtime
//! is tested against).  Nothing outside this folder knows which one
//! computes the logits.

#[cfg(all(test, feature = "reference"))]
mod compare;
pub mod config;
pub mod decoder;
mod gemma3;
mod llama;
mod phi3;
mod qwen;
#[cfg(feature = "reference")]
pub mod reference;
mod rope;
#[cfg(test)]
mod trace;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
use config::{Config, RopeScaling};

/// Which decoder computes the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Our CPU runtime, with this many threads per session (at least 1).
    Cpu { threads: usize },
    /// The candle reference decoder (tests; the `reference` feature).
    #[cfg(feature = "reference")]
    Reference,
}

/// Facts about a loaded model that the engine and callers need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: String,
    /// Context length the model was trained with (`<arch>.context_length`).
    pub trained_context_length: usize,
    /// Longest sequence this engine runs: the trained length, capped by the
    /// engine option when that is set.
    pub context_length: usize,
    pub vocab_size: usize,
    /// Values per hidden state (`<arch>.embedding_length`): the length of
    /// an embedding.
    pub embedding_length: usize,
    pub parameter_count: u64,
    /// The most common tensor type of the weights ("Q4_1", "Q4_K", ...).
    pub quantization: String,
    /// What the file asks for that this build does not apply (an unknown
    /// rope scaling type, ...): the engine logs each as a warning.
    pub warnings: Vec<String>,
}

/// The shared, read-only part of a model: its weights.  One copy serves all
/// workers.
pub trait Weights: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// A new sequence state (KV cache) over these weights.
    fn new_session(&self) -> Box<dyn Session>;
    /// `slots` sequence states evaluated together (see [`Batch`]).
    fn new_batch(&self, slots: usize) -> Box<dyn Batch>;
}

/// One sequence's part of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Which sequence (KV cache) of the batch.
    pub slot: usize,
    /// Its next tokens, at the positions after those its cache holds.
    pub tokens: &'a [u32],
    /// Whether the logits of the last of them are wanted.
    pub logits: bool,
}

/// Several sequences, each with its own KV cache, evaluated in one forward
/// pass: every weight is read once for the new tokens of all of them.  A
/// sequence's logits do not depend on which others ran beside it.
pub trait Batch: Send {
    /// Number of sequences (slots).
    fn slots(&self) -> usize;
    /// Positions the slot's cache holds.
    fn len(&self, slot: usize) -> usize;
    /// Keeps at most the first `len` positions of the slot and returns how
    /// many it kept (see [`Session::truncate`]).
    fn truncate(&mut self, slot: usize, len: usize) -> usize;
    /// Empties the slot and frees its storage.
    fn release(&mut self, slot: usize);
    /// Bytes of KV storage the slot holds now.
    fn kv_bytes(&self, slot: usize) -> usize;
    /// Bytes of KV storage a slot holding `positions` positions holds at
    /// most.
    fn kv_bytes_for(&self, positions: usize) -> usize;
    fn vocab_size(&self) -> usize;
    /// Runs each input's tokens at the end of its slot's cache (each slot
    /// at most once).  A refused forward (bad slot, token or length)
    /// changes no cache; a failed one empties the slots it touched.
    fn forward(&mut self, inputs: &[SeqInput<'_>]) -> Result<()>;
    /// The logits of the `k`-th input of the last forward that asked for
    /// them (empty when there is no such input).
    fn logits(&mut self, k: usize) -> &mut [f32];
    /// Runs `tokens` at the end of the slot's cache, as [`Batch::forward`]
    /// does for one input, and returns their final hidden states (see
    /// [`Session::hidden_states`]).  For embeddings.
    fn hidden_states(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>>;
}

/// A [`Batch`] made of independent sessions run one after the other (the
/// reference decoder's).
pub struct SessionBatch {
    sessions: Vec<(Box<dyn Session>, usize)>,
    vocab: usize,
    logits: Vec<Vec<f32>>,
}

impl SessionBatch {
    pub fn new(weights: &dyn Weights, slots: usize) -> Self {
        Self {
            sessions: (0..slots.max(1))
                .map(|_| (weights.new_session(), 0))
                .collect(),
            vocab: weights.info().vocab_size,
            logits: Vec::new(),
        }
    }
}

impl Batch for SessionBatch {
    fn slots(&self) -> usize {
        self.sessions.len()
    }
    fn len(&self, slot: usize) -> usize {
        self.sessions.get(slot).map_or(0, |s| s.1)
    }
    fn truncate(&mut self, slot: usize, len: usize) -> usize {
        match self.sessions.get_mut(slot) {
            Some((s, l)) => {
                *l = s.truncate(len);
                *l
            }
            None => 0,
        }
    }
    fn release(&mut self, slot: usize) {
        if let Some((s, l)) = self.sessions.get_mut(slot) {
            s.reset();
            *l = 0;
        }
    }
    fn kv_bytes(&self, _slot: usize) -> usize {
        0
    }
    fn kv_bytes_for(&self, _positions: usize) -> usize {
        0
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn forward(&mut self, inputs: &[SeqInput<'_>]) -> Result<()> {
        self.logits.clear();
        for input in inputs {
            let Some((s, len)) = self.sessions.get_mut(input.slot) else {
                return Err(Error::inference(format!("no slot {}", input.slot)));
            };
            match s.forward(input.tokens, *len) {
                Ok(l) => {
                    *len += input.tokens.len();
                    if input.logits {
                        self.logits.push(l);
                    }
                }
                Err(e) => {
                    s.reset();
                    *len = 0;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
    fn logits(&mut self, k: usize) -> &mut [f32] {
        self.logits.get_mut(k).map_or(&mut [], |l| l.as_mut_slice())
    }
    fn hidden_states(&mut self, slot: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        let Some((s, len)) = self.sessions.get_mut(slot) else {
            return Err(Error::inference(format!("no slot {slot}")));
        };
        match s.hidden_states(tokens, *len) {
            Ok(h) => {
                *len += tokens.len();
                Ok(h)
            }
            Err(e) => {
                s.reset();
                *len = 0;
                Err(e)
            }
        }
    }
}

/// One sequence being evaluated: the weights plus its own KV cache.
pub trait Session: Send {
    /// Runs `tokens`, which occupy positions `pos..pos + tokens.len()` of the
    /// sequence (the cache must hold exactly `pos` tokens), and returns the
    /// logits for the last of them.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>>;
    /// As `forward`, but returns the final hidden states (after the output
    /// norm, before the output matrix) of every one of `tokens`: row `t`
    /// is `out[t * n_embd..(t + 1) * n_embd]`.  For embeddings.
    fn hidden_states(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>>;
    /// Empties the cache.
    fn reset(&mut self);
    /// Keeps at most the first `len` positions of the cache, drops the
    /// rest, and returns how many it kept: fewer than `len` (down to 0)
    /// when the cache no longer holds what those positions need (a
    /// sliding-window layer keeps only its window).
    fn truncate(&mut self, len: usize) -> usize;
}

/// Architectures this build can run, for error messages.
pub const SUPPORTED: &[&str] = &["llama", "gemma3", "qwen2", "qwen3", "phi3"];

/// The hyperparameters every architecture has, read and range-checked so
/// that no later arithmetic divides by zero or allocates absurd sizes.
pub struct Hparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    pub rope_scaling: RopeScaling,
    pub trained_context: usize,
    /// What the file asks for that is not applied, for the caller's log.
    pub warnings: Vec<String>,
}

impl Hparams {
    fn read(g: &Gguf, arch: &str) -> Result<Self> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_head = g.require_uint(&k("attention.head_count"), 1 << 12)? as usize;
        let n_kv_head = match g.uint(&k("attention.head_count_kv")) {
            Some(_) => g.require_uint(&k("attention.head_count_kv"), n_head as u64)? as usize,
            None => n_head,
        };
        let n_embd = g.require_uint(&k("embedding_length"), 1 << 17)? as usize;
        let n_layer = g.require_uint(&k("block_count"), 1 << 12)? as usize;
        let head_dim = match g.uint(&k("attention.key_length")) {
            Some(_) => g.require_uint(&k("attention.key_length"), 1 << 12)? as usize,
            None => n_embd / n_head,
        };
        let rope_dim = match g.uint(&k("rope.dimension_count")) {
            Some(_) => g.require_uint(&k("rope.dimension_count"), head_dim as u64)? as usize,
            None => head_dim,
        };
        if !n_head.is_multiple_of(n_kv_head)
            || head_dim == 0
            || rope_dim % 2 != 0
            || rope_dim != head_dim
        {
            return Err(Error::model(format!(
                "unsupported attention shape: {n_head} heads, {n_kv_head} KV heads, head size {head_dim}, rotary size {rope_dim}"
            )));
        }
        let rms_eps = g
            .float(&k("attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| {
                Error::model(format!(
                    "metadata {} is missing",
                    k("attention.layer_norm_rms_epsilon")
                ))
            })?;
        let rope_base = g.float(&k("rope.freq_base")).unwrap_or(10_000.0) as f32;
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rope_base.is_finite() && rope_base > 0.0) {
            return Err(Error::model(format!(
                "invalid layer_norm_rms_epsilon {rms_eps} or rope.freq_base {rope_base}"
            )));
        }
        let trained_context = g.require_uint(&k("context_length"), 1 << 24)? as usize;
        // Linear and YaRN rope scaling, which both decoders apply (see
        // `rope.rs`); another kind runs unscaled, with a warning.
        let mut warnings = Vec::new();
        let rope_scaling = rope_scaling(g, arch, trained_context, &mut warnings)?;
        Ok(Self {
            n_layer,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            rope_dim,
            rms_eps,
            rope_base,
            rope_scaling,
            trained_context,
            warnings,
        })
    }
}

/// The rope scaling of the file, read as llama.cpp reads it:
/// `rope.scaling.type` (absent: linear) with `rope.scaling.factor` (or the
/// older `rope.scale_linear`); for YaRN also the original context length
/// (default: the trained one) and the `yarn_*` parameters with llama.cpp's
/// defaults (ext_factor 1, attn_factor 1, beta_fast 32, beta_slow 1).
/// Linear scaling keeps its old leniency (an unusable factor means none);
/// every YaRN value is range-checked, and an error names the key.  A type
/// this build does not apply (longrope, ...) runs unscaled, with a warning.
fn rope_scaling(
    g: &Gguf,
    arch: &str,
    trained_context: usize,
    warnings: &mut Vec<String>,
) -> Result<RopeScaling> {
    let k = |s: &str| format!("{arch}.rope.scaling.{s}");
    let linear = |f: Option<f64>| match f {
        Some(f) if f.is_finite() && f > 0.0 => RopeScaling::linear((1.0 / f) as f32),
        _ => RopeScaling::NONE,
    };
    let kind = match g.get(&k("type")) {
        None => None,
        Some(_) => Some(
            g.string(&k("type"))
                .ok_or_else(|| Error::model(format!("metadata {} is not a string", k("type"))))?,
        ),
    };
    match kind {
        None => return Ok(linear(g.float(&format!("{arch}.rope.scale_linear")))),
        Some("linear") => return Ok(linear(g.float(&k("factor")))),
        Some("none") => return Ok(RopeScaling::NONE),
        Some("yarn") => {}
        Some(other) => {
            warnings.push(format!(
                "{} '{other}' is not applied: the model runs without rope scaling",
                k("type")
            ));
            return Ok(RopeScaling::NONE);
        }
    }
    // A YaRN value: absent means `default`; present, it must be a number
    // in `range`.
    let value = |name: &str, default: f64, range: std::ops::RangeInclusive<f64>| {
        let key = k(name);
        match g.get(&key) {
            None => Ok(default),
            Some(_) => match g.float(&key) {
                Some(v) if v.is_finite() && range.contains(&v) => Ok(v),
                Some(v) => Err(Error::model(format!(
                    "metadata {key} = {v} is outside the supported range {}..={}",
                    range.start(),
                    range.end()
                ))),
                None => Err(Error::model(format!("metadata {key} is not a float"))),
            },
        }
    };
    // Factors below 1 would shrink the context; above 1024 no file goes.
    let factor = value("factor", 1.0, 1.0..=1024.0)?;
    let ext_factor = value("yarn_ext_factor", 1.0, 0.0..=1.0)?;
    let attn_factor =
        value("attn_factor", 1.0, 0.01..=16.0)? * value("yarn_attn_factor", 1.0, 0.01..=16.0)?;
    let beta_fast = value("yarn_beta_fast", 32.0, 0.01..=1e4)?;
    let beta_slow = value("yarn_beta_slow", 1.0, 0.01..=1e4)?;
    if beta_slow > beta_fast {
        return Err(Error::model(format!(
            "metadata {} = {beta_slow} is above {} = {beta_fast}",
            k("yarn_beta_slow"),
            k("yarn_beta_fast")
        )));
    }
    let orig_context = match g.get(&k("original_context_length")) {
        None => trained_context,
        Some(_) => g.require_uint(&k("original_context_length"), 1 << 24)? as usize,
    };
    if g.get(&k("yarn_log_multiplier")).is_some() {
        warnings.push(format!(
            "{} is not applied (DeepSeek's YaRN magnitude)",
            k("yarn_log_multiplier")
        ));
    }
    Ok(RopeScaling {
        freq_scale: (1.0 / factor) as f32,
        ext_factor: ext_factor as f32,
        attn_factor: attn_factor as f32,
        beta_fast: beta_fast as f32,
        beta_slow: beta_slow as f32,
        orig_context,
    })
}

/// Loads the weights of `gguf` for the CPU runtime with `threads` threads
/// per session.  `max_context` (0 = no cap) limits the context length
/// below the model's own.
pub fn load(gguf: &mut Gguf, max_context: usize, threads: usize) -> Result<Box<dyn Weights>> {
    load_with(gguf, max_context, Backend::Cpu { threads })
}

/// [`load`] with a choice of decoder.
pub fn load_with(
    gguf: &mut Gguf,
    max_context: usize,
    backend: Backend,
) -> Result<Box<dyn Weights>> {
    let arch = gguf.architecture()?.to_string();
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(Error::model(format!(
            "architecture '{arch}' is not supported (supported: {})",
            SUPPORTED.join(", ")
        )));
    }
    if gguf.uint(&format!("{arch}.expert_count")).unwrap_or(0) > 1 {
        return Err(Error::model(format!(
            "mixture-of-experts models ({arch}.expert_count > 1) are not supported"
        )));
    }
    let hp = Hparams::read(gguf, &arch)?;
    let context_length = if max_context > 0 {
        hp.trained_context.min(max_context)
    } else {
        hp.trained_context
    };
    let trained_context = hp.trained_context;
    let embedding_length = hp.n_embd;
    let warnings = hp.warnings.clone();
    let cfg: Config = match arch.as_str() {
        "llama" => llama::config(gguf, hp, context_length),
        "gemma3" => gemma3::config(gguf, hp, context_length),
        "qwen2" | "qwen3" => qwen::config(gguf, hp, context_length),
        _ => phi3::config(gguf, hp, context_length),
    };
    let info = ModelInfo {
        architecture: arch.clone(),
        name: gguf.string("general.name").unwrap_or("").to_string(),
        trained_context_length: trained_context,
        context_length,
        vocab_size: 0,
        embedding_length,
        parameter_count: gguf.parameter_count(),
        quantization: gguf.file_type(),
        warnings,
    };
    match backend {
        Backend::Cpu { threads } => {
            let model = decoder::Model::load(cfg, gguf, threads).map_err(|e| e.context(&arch))?;
            let info = ModelInfo {
                vocab_size: model.vocab_size(),
                ..info
            };
            Ok(Box::new(decoder::SharedModel {
                model: Arc::new(model),
                info,
            }))
        }
        #[cfg(feature = "reference")]
        Backend::Reference => {
            let model = reference::Model::load(cfg, &mut reference::Loader::new(gguf))
                .map_err(|e| e.context(&arch))?;
            let info = ModelInfo {
                vocab_size: model.vocab_size(),
                ..info
            };
            Ok(Box::new(reference::SharedModel {
                model: Arc::new(model),
                info,
            }))
        }
    }
}

#[cfg(feature = "reference")]
pub(crate) fn candle_error(e: candle_core::Error) -> Error {
    Error::inference(e.to_string())
}
