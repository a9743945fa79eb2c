//! `phi3`: fused q/k/v and gate/up projections (the decoder detects both),
//! and an optional sliding window.  Phi-3's own long-context scaling (its
//! `rope_factors_long`/`_short` tensors) is not applied.

use super::config::{Config, RopeStyle};
use super::Hparams;
use crate::gguf::Gguf;

pub fn config(g: &Gguf, hp: Hparams, context_length: usize) -> Config {
    let window = g
        .uint("phi3.attention.sliding_window")
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    Config {
        window: vec![window; hp.n_layer],
        ..Config::plain(&hp, context_length, RopeStyle::Halves)
    }
}
