//! What distinguishes one architecture's decoder from another's: each
//! architecture file maps its GGUF metadata onto a [`Config`], which both
//! decoders (the runtime's and the reference) run.

pub use super::rope::RopeScaling;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's "norm" (Llama, Mistral).
    Interleaved,
    /// Pairs (i, i + d/2): llama.cpp's "neox" (Gemma, Qwen, Phi-3).
    Halves,
}

/// What distinguishes one architecture's decoder from another's.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_style: RopeStyle,
    pub rope_dim: usize,
    /// Rope scaling of each layer (linear or YaRN; none by default): the
    /// file's for every layer but Gemma 3's sliding-window layers, which
    /// llama.cpp never scales.
    pub rope_scaling: Vec<RopeScaling>,
    /// Rotary base of each layer.
    pub rope_base: Vec<f32>,
    /// Sliding attention window of each layer (`None`: full attention).
    pub window: Vec<Option<usize>>,
    /// Multiplies the token embeddings (Gemma: sqrt(n_embd)).
    pub embed_scale: Option<f64>,
    pub activation: Activation,
    /// Attention scores are multiplied by this (usually 1/sqrt(head_dim)).
    pub attn_scale: f64,
    /// Soft-capping of the final logits (Gemma 2), if any.
    pub final_softcap: Option<f64>,
    pub context_length: usize,
}

impl Config {
    /// The plain decoder (Llama's): full attention everywhere, one rotary
    /// base, SiLU, no embedding scale, attention scaled by 1/sqrt(head_dim).
    /// Architectures change what differs with struct update syntax.
    pub fn plain(hp: &super::Hparams, context_length: usize, rope_style: RopeStyle) -> Self {
        Self {
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            n_head: hp.n_head,
            n_kv_head: hp.n_kv_head,
            head_dim: hp.head_dim,
            rms_eps: hp.rms_eps,
            rope_style,
            rope_dim: hp.rope_dim,
            rope_scaling: vec![hp.rope_scaling; hp.n_layer],
            rope_base: vec![hp.rope_base; hp.n_layer],
            window: vec![None; hp.n_layer],
            embed_scale: None,
            activation: Activation::Silu,
            attn_scale: 1.0 / (hp.head_dim as f64).sqrt(),
            final_softcap: None,
            context_length,
        }
    }
}
