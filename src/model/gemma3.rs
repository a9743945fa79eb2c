//! `gemma3`: Gemma 3.  What sets it apart, as llama.cpp runs it: GELU (tanh)
//! in the feed-forward, RMS norm on q and k, norms after attention and after
//! the feed-forward (the decoder finds those tensors), embeddings scaled by
//! sqrt(n_embd), and every sixth layer global while the others see a
//! sliding window with their own rotary base.  Attention scores are scaled
//! by 1/sqrt of the model's `query_pre_attn_scalar`, which the GGUF file
//! does not carry: llama.cpp derives it from the size, and so do we.

use super::config::{Activation, Config, RopeScaling, RopeStyle};
use super::Hparams;
use crate::gguf::Gguf;

pub fn config(g: &Gguf, hp: Hparams, context_length: usize) -> Config {
    let window = g
        .uint("gemma3.attention.sliding_window")
        .map(|w| w as usize);
    let pattern = g
        .uint("gemma3.attention.sliding_window_pattern")
        .filter(|&p| p > 0)
        .unwrap_or(6) as usize;
    // llama.cpp's key (`rope_freq_base_train_swa`, 10000 when absent).
    let local_base = g.float("gemma3.rope.freq_base_swa").unwrap_or(10_000.0) as f32;
    let global = |i: usize| (i + 1).is_multiple_of(pattern);
    Config {
        rope_base: (0..hp.n_layer)
            .map(|i| if global(i) { hp.rope_base } else { local_base })
            .collect(),
        // llama.cpp scales only the global layers' rotary angles (its
        // `rope_freq_scale_train_swa` is 1 for Gemma 3); the other YaRN
        // settings apply to every layer, as there.
        rope_scaling: (0..hp.n_layer)
            .map(|i| match global(i) {
                true => hp.rope_scaling,
                false => RopeScaling {
                    freq_scale: 1.0,
                    ..hp.rope_scaling
                },
            })
            .collect(),
        window: (0..hp.n_layer)
            .map(|i| if global(i) { None } else { window })
            .collect(),
        embed_scale: Some((hp.n_embd as f64).sqrt()),
        activation: Activation::GeluTanh,
        final_softcap: g.float("gemma3.final_logit_softcapping"),
        attn_scale: 1.0 / (query_pre_attn_scalar(&hp) as f64).sqrt(),
        ..Config::plain(&hp, context_length, RopeStyle::Halves)
    }
}

/// Gemma 3's `query_pre_attn_scalar`: `n_embd / n_head` for the 27B model
/// (62 layers; 168, where its heads are 128 wide), the head size for every
/// other size, as llama.cpp sets `f_attention_scale` for `gemma3`.
fn query_pre_attn_scalar(hp: &Hparams) -> usize {
    if hp.n_layer == 62 {
        hp.n_embd / hp.n_head
    } else {
        hp.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::RopeScaling;

    fn hparams(n_layer: usize, n_embd: usize, n_head: usize, head_dim: usize) -> Hparams {
        Hparams {
            n_layer,
            n_embd,
            n_head,
            n_kv_head: 1,
            head_dim,
            rope_dim: head_dim,
            rms_eps: 1e-6,
            rope_base: 1e6,
            rope_scaling: RopeScaling::linear(1.0),
            trained_context: 32768,
            warnings: Vec::new(),
        }
    }

    /// The scales of the published configs (`query_pre_attn_scalar` in each
    /// model's config.json: 256 for 270M, 168 for 27B, 256 for 4B).
    #[test]
    fn scores_are_scaled_by_the_query_pre_attn_scalar() {
        // An empty GGUF v3 file: magic, version, no tensors, no metadata.
        let mut file = b"GGUF".to_vec();
        file.extend(3u32.to_le_bytes());
        file.extend([0u8; 16]);
        let g = Gguf::from_memory(&file).unwrap();
        for (hp, scalar) in [
            (hparams(18, 640, 4, 256), 256.0f64),
            (hparams(62, 5376, 32, 128), 168.0),
            (hparams(34, 2560, 8, 256), 256.0),
        ] {
            let c = config(&g, hp, 4096);
            assert_eq!(c.attn_scale, 1.0 / scalar.sqrt());
        }
    }
}
