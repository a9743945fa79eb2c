//! An external `tokenizer.json`, read with the `tokenizers` crate.

use std::path::Path;

use tokenizers::DecoderWrapper;

use crate::error::{Error, Result};

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    byte_level: bool,
    byte_chars: std::collections::HashMap<char, u8>,
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::tokenizer(format!("{}: {e}", path.display())))?;
        let byte_level = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(DecoderWrapper::Sequence(_)) | None => {
                // Decide from the pre-tokenizer: byte-level tokenizers map
                // the space to 'Ġ'.
                inner.token_to_id("\u{120}").is_some()
            }
            _ => false,
        };
        let table = super::bpe::byte_to_char_table();
        Ok(Self {
            inner,
            byte_level,
            byte_chars: (0..=255u8).map(|b| (table[b as usize], b)).collect(),
        })
    }

    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::tokenizer(format!("tokenizer.json: {e}")))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// The bytes a vocabulary entry stands for: GPT-2 byte-level entries are
    /// mapped back to bytes, SentencePiece entries get '▁' as a space and
    /// `<0xNN>` as the byte NN.
    pub fn token_bytes(&self, text: &str) -> Vec<u8> {
        if self.byte_level {
            let mut out = Vec::with_capacity(text.len());
            for c in text.chars() {
                match self.byte_chars.get(&c) {
                    Some(&b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                }
            }
            return out;
        }
        if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                if hex.len() == 2 {
                    return vec![b];
                }
            }
        }
        text.replace('\u{2581}', " ").into_bytes()
    }
}
