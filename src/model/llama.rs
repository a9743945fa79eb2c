//! `llama`: Llama 2/3, Mistral, SmolLM2, TinyLlama.

use super::transformer::{Activation, Config, RopeStyle};
use super::Hparams;
use crate::gguf::Gguf;

pub fn config(_g: &Gguf, hp: Hparams, context_length: usize) -> Config {
    Config {
        n_layer: hp.n_layer,
        n_embd: hp.n_embd,
        n_head: hp.n_head,
        n_kv_head: hp.n_kv_head,
        head_dim: hp.head_dim,
        rms_eps: hp.rms_eps,
        rope_style: RopeStyle::Interleaved,
        rope_dim: hp.rope_dim,
        rope_base: vec![hp.rope_base; hp.n_layer],
        window: vec![None; hp.n_layer],
        embed_scale: None,
        activation: Activation::Silu,
        attn_scale: 1.0 / (hp.head_dim as f64).sqrt(),
        final_softcap: None,
        context_length,
    }
}
