//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp applies it:
//! split the text with the pre-tokenizer regexes named by `tokenizer.ggml.pre`,
//! map each piece's bytes to GPT-2's printable byte alphabet, then apply the
//! merges in rank order, lowest rank and leftmost pair first.

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::error::{Error, Result};

/// The regex of GPT-2, which llama.cpp also uses for `default` and as the
/// second stage of several other pre-tokenizers.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes for a `tokenizer.ggml.pre` value, applied one after the other,
/// and whether the value was recognised.
pub fn pre_tokenizer_patterns(pre: &str) -> (Vec<&'static str>, bool) {
    match pre {
        "default" | "gpt2" | "gpt-2" => (vec![GPT2], true),
        // Digits one by one, then GPT-2.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            (vec![r"\p{N}", GPT2], true)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (vec![LLAMA3], true),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (vec![QWEN2], true),
        _ => (vec![GPT2], false),
    }
}

/// GPT-2's reversible map from bytes to printable characters.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("code points 256..324 are valid");
            next += 1;
            c
        };
    }
    table
}

pub struct Bpe {
    pre: Vec<Regex>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The inverse of `byte_to_char_table`.
    char_bytes: HashMap<char, u8>,
    /// Token id of each byte's printable character, if the vocabulary has it.
    byte_ids: [Option<u32>; 256],
}

impl Bpe {
    pub fn new(
        patterns: &[&str],
        merges: &[String],
        token_to_id: &HashMap<String, u32>,
    ) -> Result<Self> {
        let pre = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| Error::tokenizer(format!("pre-tokenizer regex: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut map = HashMap::with_capacity(merges.len());
        let mut buf = String::new();
        for (rank, line) in merges.iter().enumerate() {
            let Some((l, r)) = line.split_once(' ') else {
                continue;
            };
            let (Some(&lid), Some(&rid)) = (token_to_id.get(l), token_to_id.get(r)) else {
                continue;
            };
            buf.clear();
            buf.push_str(l);
            buf.push_str(r);
            if let Some(&merged) = token_to_id.get(buf.as_str()) {
                map.entry((lid, rid)).or_insert((rank as u32, merged));
            }
        }
        let byte_chars = byte_to_char_table();
        let mut byte_ids = [None; 256];
        let mut s = String::new();
        for b in 0..256 {
            s.clear();
            s.push(byte_chars[b]);
            byte_ids[b] = token_to_id.get(s.as_str()).copied();
        }
        Ok(Self {
            pre,
            merges: map,
            char_bytes: (0..=255u8).map(|b| (byte_chars[b as usize], b)).collect(),
            byte_ids,
        })
    }

    /// Splits `text` with each regex in turn; matches and the gaps between
    /// them both become pieces, as in llama.cpp's `unicode_regex_split`.
    fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.pre {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    // A regex error (backtrack limit) leaves the rest as one piece.
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    /// Appends the ids of `text` (which holds no special tokens) to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>, unk: Option<u32>) {
        for piece in self.pre_tokenize(text) {
            self.encode_piece(piece, out, unk);
        }
    }

    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>, unk: Option<u32>) {
        let mut symbols: Vec<u32> = Vec::with_capacity(piece.len());
        for &b in piece.as_bytes() {
            match self.byte_ids[b as usize].or(unk) {
                Some(id) => symbols.push(id),
                None => continue,
            }
        }
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        out.extend_from_slice(&symbols);
    }

    /// The bytes a vocabulary entry stands for.
    pub fn token_bytes(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.char_bytes.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printable_chars() {
        let t = byte_to_char_table();
        let mut seen = std::collections::HashSet::new();
        for c in t {
            assert!(!c.is_control() && !c.is_whitespace(), "{c:?}");
            assert!(seen.insert(c));
        }
        assert_eq!(t[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(t[b'\n' as usize], '\u{10A}'); // 'Ċ'
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn smollm_splits_digits_one_by_one() {
        let (patterns, known) = pre_tokenizer_patterns("smollm");
        assert!(known);
        let bpe = Bpe::new(&patterns, &[], &HashMap::new()).unwrap();
        assert_eq!(
            bpe.pre_tokenize("ab 123  x"),
            vec!["ab", " ", "1", "2", "3", " ", " x"]
        );
    }

    #[test]
    fn merges_apply_lowest_rank_first() {
        let vocab: HashMap<String, u32> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        // "b c" outranks "a b", so "abc" becomes a + bc, and there is no "a bc".
        let merges = vec!["b c".to_string(), "a b".to_string()];
        let bpe = Bpe::new(&[GPT2], &merges, &vocab).unwrap();
        let mut out = Vec::new();
        bpe.encode("abc", &mut out, None);
        assert_eq!(out, vec![0, 4]);
        let merges = vec!["a b".to_string(), "ab c".to_string()];
        let bpe = Bpe::new(&[GPT2], &merges, &vocab).unwrap();
        out.clear();
        bpe.encode("abc", &mut out, None);
        assert_eq!(out, vec![5]);
    }
}
