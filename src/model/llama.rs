//! `llama`: Llama 2/3, Mistral, SmolLM2, TinyLlama: the plain decoder with
//! interleaved rotary pairs.

use super::config::{Config, RopeStyle};
use super::Hparams;
use crate::gguf::Gguf;

pub fn config(_g: &Gguf, hp: Hparams, context_length: usize) -> Config {
    Config::plain(&hp, context_length, RopeStyle::Interleaved)
}
