//! `qwen2` (biases on q, k, v) and `qwen3` (RMS norm on q and k); the
//! decoder picks both up from the tensors present.

use super::config::{Config, RopeStyle};
use super::Hparams;
use crate::gguf::Gguf;

pub fn config(_g: &Gguf, hp: Hparams, context_length: usize) -> Config {
    Config::plain(&hp, context_length, RopeStyle::Halves)
}
