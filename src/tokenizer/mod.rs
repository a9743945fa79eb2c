//! Text to token ids and back, built from the GGUF file's own vocabulary
//! (`tokenizer.ggml.*`), or from an external `tokenizer.json` when the caller
//! names one.  Special tokens are matched in text only when asked, never
//! split, and every id has a byte string so that generated text can be
//! assembled, checked for stop strings and streamed byte-exactly.

mod bpe;
mod hf;
mod specials;
mod spm;
mod vocab;

pub use bpe::byte_to_char_table;

use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// `tokenizer.ggml.token_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> Self {
        match v {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

struct SpmState {
    spm: spm::Spm,
    add_space_prefix: bool,
}

enum Algorithm {
    Bpe(Box<bpe::Bpe>),
    Spm(Box<SpmState>),
    Hf(Box<hf::HfTokenizer>),
}

pub struct Tokenizer {
    algorithm: Algorithm,
    /// Every entry's text, and the index from text to id.
    texts: vocab::Vocab,
    types: Vec<TokenType>,
    /// What each token stands for, as bytes (control tokens: their text).
    /// (all entries' bytes one after the other, and where each ends)
    pieces: (Vec<u8>, Vec<u32>),
    /// Control, user-defined and unknown tokens, longest text first: the
    /// order in which llama.cpp partitions text around them.
    specials: Vec<u32>,
    /// Their texts in a trie, and each one's distinct text there.
    special_index: specials::Specials,
    special_text: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog: Vec<u32>,
    /// Set when `tokenizer.ggml.pre` was not recognised.
    pub warning: Option<String>,
}

/// Texts that llama.cpp treats as end of generation wherever they occur in a
/// vocabulary, besides the ids the metadata names.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle pad, repository and separator tokens, which also end
/// generation in llama.cpp.
const FIM_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
    "<fim-sep>",
];

impl Tokenizer {
    /// Builds the tokenizer from the GGUF metadata, or from `external`
    /// (a `tokenizer.json`) when given.  Special-token ids and the BOS/EOS
    /// rules always come from the GGUF file.
    pub fn load(gguf: &Gguf, external: Option<&Path>) -> Result<Self> {
        let texts = gguf
            .strings("tokenizer.ggml.tokens")
            .ok_or_else(|| Error::tokenizer("metadata tokenizer.ggml.tokens is missing"))?;
        let texts = vocab::Vocab::new(texts)
            .ok_or_else(|| Error::tokenizer("metadata tokenizer.ggml.tokens is 4 GiB or more"))?;
        if texts.is_empty() {
            return Err(Error::tokenizer("metadata tokenizer.ggml.tokens is empty"));
        }
        let n = texts.len();
        let types: Vec<TokenType> = match gguf.int_array("tokenizer.ggml.token_type") {
            Some(t) if t.len() == n => t.into_iter().map(TokenType::from_gguf).collect(),
            Some(t) => {
                return Err(Error::tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    t.len()
                )))
            }
            None => vec![TokenType::Normal; n],
        };
        let id = |key: &str| gguf.uint(key).filter(|&v| v < n as u64).map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let unk = id("tokenizer.ggml.unknown_token_id");
        let model = gguf.string("tokenizer.ggml.model").unwrap_or("");
        let named_eog: Vec<u32> = EOG_TEXTS
            .iter()
            .chain(FIM_TEXTS)
            .filter_map(|t| texts.id(t))
            .collect();

        let mut warning = None;
        let (algorithm, add_bos_default) = match external {
            Some(path) => (
                Algorithm::Hf(Box::new(hf::HfTokenizer::from_file(path)?)),
                false,
            ),
            None => match model {
                "gpt2" => {
                    let pre = gguf.string("tokenizer.ggml.pre").unwrap_or("default");
                    let (patterns, known) = bpe::pre_tokenizer_patterns(pre);
                    if !known {
                        warning = Some(format!(
                            "unknown tokenizer.ggml.pre '{pre}': using the GPT-2 pre-tokenizer"
                        ));
                    }
                    let merges = gguf.string_array("tokenizer.ggml.merges").ok_or_else(|| {
                        Error::tokenizer("metadata tokenizer.ggml.merges is missing")
                    })?;
                    (
                        Algorithm::Bpe(Box::new(bpe::Bpe::new(
                            &patterns,
                            &merges,
                            &texts,
                            bpe::ignores_merges(pre),
                        )?)),
                        false,
                    )
                }
                "llama" => {
                    let scores =
                        match gguf.float_array("tokenizer.ggml.scores") {
                            Some(s) if s.len() == n => s,
                            _ => return Err(Error::tokenizer(
                                "metadata tokenizer.ggml.scores is missing or has the wrong length",
                            )),
                        };
                    (
                        Algorithm::Spm(Box::new(SpmState {
                            spm: spm::Spm::new(scores, &texts),
                            add_space_prefix: gguf
                                .bool("tokenizer.ggml.add_space_prefix")
                                .unwrap_or(true),
                        })),
                        true,
                    )
                }
                other => {
                    return Err(Error::tokenizer(format!(
                        "tokenizer.ggml.model '{other}' is not supported (supported: gpt2, llama); \
                         pass a tokenizer.json with the tokenizer_path option"
                    )))
                }
            },
        };
        let add_bos = gguf
            .bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(add_bos_default);
        let add_eos = gguf.bool("tokenizer.ggml.add_eos_token").unwrap_or(false);

        let mut pieces = (Vec::with_capacity(texts.bytes()), Vec::with_capacity(n));
        for (id, ty) in types.iter().enumerate() {
            let text = texts.text(id as u32);
            let out = &mut pieces.0;
            match (&algorithm, ty) {
                (_, TokenType::Control | TokenType::UserDefined) => {
                    out.extend_from_slice(text.as_bytes())
                }
                (Algorithm::Bpe(b), _) => out.extend(b.token_bytes(text)),
                (Algorithm::Spm(_), ty) => {
                    spm::Spm::append_token_bytes(text, *ty == TokenType::Byte, out)
                }
                (Algorithm::Hf(h), _) => out.extend(h.token_bytes(text)),
            }
            let end = u32::try_from(out.len())
                .map_err(|_| Error::tokenizer("the vocabulary's bytes are 4 GiB or more"))?;
            pieces.1.push(end);
        }

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !texts.text(i).is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(texts.text(i).len()));
        let (special_index, special_text) =
            specials::Specials::new(specials.iter().map(|&i| texts.text(i)));

        let mut eog: Vec<u32> = [
            eos,
            id("tokenizer.ggml.eot_token_id"),
            id("tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        eog.extend(named_eog);
        eog.sort_unstable();
        eog.dedup();

        Ok(Self {
            algorithm,
            texts,
            types,
            pieces,
            specials,
            special_index,
            special_text,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            eog,
            warning,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The id of the vocabulary entry whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.texts.id(text)
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id)
    }

    /// Whether generating `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The kind of token `id` is; `None` outside the vocabulary.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    fn is_control(&self, id: u32) -> bool {
        matches!(
            self.types.get(id as usize),
            Some(TokenType::Control | TokenType::Unknown)
        )
    }

    /// Tokenizes `text`.  `add_special` adds BOS/EOS as the model's metadata
    /// asks (a text that already begins with BOS gets a second one, as in
    /// llama.cpp; the chat path leaves the template's out instead);
    /// `parse_special` matches control tokens written in the text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, parse_special, &|| Ok(()))
    }

    /// As `encode`, calling `interrupt` every few thousand bytes or merges
    /// of work (a deadline or cancel check): its error stops the work and is
    /// returned.  With an external `tokenizer.json` the check runs only
    /// between the fragments around special tokens.
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        interrupt: &dyn Fn() -> Result<()>,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            if let Some(bos) = self.bos {
                out.push(bos);
            }
        }
        // SentencePiece models may prefix text that follows a special
        // token (or starts the input) with a space.
        let mut after_special = true;
        for fragment in self.partition(text, parse_special, interrupt)? {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                // As in llama.cpp, which makes no fragment of empty text:
                // an empty input gives no tokens, not a lone space prefix.
                Fragment::Text("") => {}
                Fragment::Text(t) => {
                    match &self.algorithm {
                        Algorithm::Bpe(b) => b.encode(t, &self.texts, &mut out, interrupt)?,
                        Algorithm::Spm(state) => {
                            let SpmState {
                                spm,
                                add_space_prefix,
                            } = state.as_ref();
                            let prefix = if *add_space_prefix && after_special {
                                " "
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{t}").replace(' ', "\u{2581}");
                            spm.encode(&escaped, &self.texts, &mut out, self.unk, interrupt)?;
                        }
                        Algorithm::Hf(h) => {
                            interrupt()?;
                            h.encode(t, &mut out)?
                        }
                    }
                    after_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            if let Some(eos) = self.eos {
                out.push(eos);
            }
        }
        Ok(out)
    }

    /// Splits `text` around special tokens, longest first, as llama.cpp does.
    /// User-defined tokens are always matched; control and unknown tokens
    /// only with `parse_special`.
    fn partition<'t>(
        &self,
        text: &'t str,
        parse_special: bool,
        interrupt: &dyn Fn() -> Result<()>,
    ) -> Result<Vec<Fragment<'t>>> {
        let mut fragments = vec![Fragment::Text(text)];
        // Only the special tokens that occur (one pass over the text) are
        // split around; each of those is one scan of the text.
        let occurring = self.special_index.occurring(text, interrupt)?;
        let mut budget = bpe::CHECK_EVERY;
        for (k, &id) in self.specials.iter().enumerate() {
            if !occurring[self.special_text[k] as usize] || (!parse_special && self.is_control(id))
            {
                continue;
            }
            bpe::spend(&mut budget, text.len() / 64 + 1, interrupt)?;
            let needle = self.texts.text(id);
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(pos) = t.find(needle) {
                            if pos > 0 {
                                next.push(Fragment::Text(&t[..pos]));
                            }
                            next.push(Fragment::Token(id));
                            t = &t[pos + needle.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Fragment::Text(t));
                        }
                    }
                    token => next.push(token),
                }
            }
            fragments = next;
        }
        Ok(fragments)
    }

    /// The bytes token `id` stands for; empty for an id outside the vocabulary.
    pub fn piece(&self, id: u32) -> &[u8] {
        let (bytes, ends) = &self.pieces;
        if (id as usize) < ends.len() {
            &bytes[vocab::span(ends, id as usize)]
        } else {
            &[]
        }
    }

    /// The bytes of a whole id sequence; control tokens are dropped when
    /// `remove_special` is set.  Never fails: unknown ids yield nothing.
    pub fn decode_bytes(&self, ids: &[u32], remove_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if remove_special && self.is_control(id) {
                continue;
            }
            out.extend_from_slice(self.piece(id));
        }
        out
    }

    /// As `decode_bytes`, with invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32], remove_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, remove_special)).into_owned()
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}
