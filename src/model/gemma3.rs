//! `gemma3`: Gemma 3.  What sets it apart, as llama.cpp runs it: GELU (tanh)
//! in the feed-forward, RMS norm on q and k, norms after attention and after
//! the feed-forward (the decoder finds those tensors), embeddings scaled by
//! sqrt(n_embd), and every sixth layer global while the others see a
//! sliding window with their own rotary base.

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
    let local_base = g.float("gemma3.rope.local_freq_base").unwrap_or(10_000.0) as f32;
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
        ..Config::plain(&hp, context_length, RopeStyle::Halves)
    }
}
