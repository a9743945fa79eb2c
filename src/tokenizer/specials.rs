//! Which special tokens occur in a text, found in one pass over it.
//!
//! `Tokenizer::partition` splits a text around the special tokens one
//! token at a time, longest first, as llama.cpp does; a token that does not
//! occur leaves the text as it was.  Gemma 3 has 6,414 special tokens, and
//! looking for each one in turn was a scan of the whole text per token
//! (165 scans even when control tokens are not parsed).  This index finds
//! the ones that occur with one walk of a trie per text position, so that
//! only those are split around; the result is the same.
//!
//! The trie holds at most the first [`DEPTH`] bytes of each text, so that
//! its size stays a small multiple of the texts' (a hostile file's special
//! tokens cannot make it large); longer texts are compared in full where
//! their first `DEPTH` bytes are found.

use std::collections::HashMap;

use super::bpe::{spend, PairHasher, CHECK_EVERY};
use crate::error::Result;

/// Bytes of a text in the trie (Gemma 3's `<unused6241>` is 12).
const DEPTH: usize = 12;

/// A trie of the special tokens' texts.  Nodes are numbered from 1; the
/// first byte is looked up in a table, the following ones in one map.
pub struct Specials {
    /// Node of each first byte (0: no text starts with it).
    root: [u32; 256],
    /// `node << 8 | next byte` -> node.
    edges: HashMap<u64, u32, std::hash::BuildHasherDefault<PairHasher>>,
    /// Per node (index = node - 1): the text that ends there, plus one
    /// (0: none).
    ends: Vec<u32>,
    /// Texts longer than `DEPTH`, by the node of their first `DEPTH`
    /// bytes: (start in `long_bytes`, length, distinct text).
    long: HashMap<u32, Vec<(u32, u32, u32)>, std::hash::BuildHasherDefault<PairHasher>>,
    long_bytes: Vec<u8>,
    texts: usize,
}

impl Specials {
    /// Indexes `texts` (non-empty).  Equal texts share an index: the
    /// result of [`Specials::occurring`] is per distinct text, and
    /// `distinct[i]` is the distinct text of `texts[i]`.
    pub fn new<'a>(texts: impl Iterator<Item = &'a str>) -> (Self, Vec<u32>) {
        let mut s = Self {
            root: [0; 256],
            edges: HashMap::default(),
            ends: Vec::new(),
            long: HashMap::default(),
            long_bytes: Vec::new(),
            texts: 0,
        };
        let mut long_seen: HashMap<&'a str, u32> = HashMap::new();
        let mut distinct = Vec::new();
        for t in texts {
            let b = t.as_bytes();
            assert!(!b.is_empty(), "special token texts are not empty");
            let mut node = s.root[b[0] as usize];
            if node == 0 {
                node = s.add_node();
                s.root[b[0] as usize] = node;
            }
            for &c in &b[1..b.len().min(DEPTH)] {
                node = match s.edges.get(&edge(node, c)) {
                    Some(&n) => n,
                    None => {
                        let n = s.add_node();
                        s.edges.insert(edge(node, c), n);
                        n
                    }
                };
            }
            let id = if b.len() > DEPTH {
                *long_seen.entry(t).or_insert_with(|| {
                    let id = s.texts as u32;
                    s.texts += 1;
                    let start = s.long_bytes.len() as u32;
                    s.long_bytes.extend_from_slice(b);
                    s.long
                        .entry(node)
                        .or_default()
                        .push((start, b.len() as u32, id));
                    id
                })
            } else {
                let end = &mut s.ends[node as usize - 1];
                if *end == 0 {
                    s.texts += 1;
                    *end = s.texts as u32;
                }
                *end - 1
            };
            distinct.push(id);
        }
        (s, distinct)
    }

    fn add_node(&mut self) -> u32 {
        self.ends.push(0);
        self.ends.len() as u32
    }

    /// Per distinct text, whether it occurs in `text`.
    pub fn occurring(&self, text: &str, interrupt: &dyn Fn() -> Result<()>) -> Result<Vec<bool>> {
        let mut seen = vec![false; self.texts];
        let mut found = 0;
        let mut budget = CHECK_EVERY;
        let b = text.as_bytes();
        let mark = |id: u32, seen: &mut [bool], found: &mut usize| {
            if !seen[id as usize] {
                seen[id as usize] = true;
                *found += 1;
            }
        };
        for start in 0..b.len() {
            if found == self.texts {
                break;
            }
            let mut node = self.root[b[start] as usize];
            let mut depth = 1;
            let mut work = 1;
            while node != 0 {
                let end = self.ends[node as usize - 1];
                if end != 0 {
                    mark(end - 1, &mut seen, &mut found);
                }
                if depth == DEPTH {
                    for &(at, len, id) in self.long.get(&node).into_iter().flatten() {
                        let t = &self.long_bytes[at as usize..(at + len) as usize];
                        work += 1;
                        if b[start..].starts_with(t) {
                            work += t.len();
                            mark(id, &mut seen, &mut found);
                        }
                    }
                    break;
                }
                let Some(&c) = b.get(start + depth) else {
                    break;
                };
                node = self.edges.get(&edge(node, c)).copied().unwrap_or(0);
                depth += 1;
                work += 1;
            }
            spend(&mut budget, work, interrupt)?;
        }
        Ok(seen)
    }
}

#[inline]
fn edge(node: u32, byte: u8) -> u64 {
    (node as u64) << 8 | byte as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_texts_that_occur() {
        // Longer than DEPTH: compared in full past the trie.
        let texts = [
            "<a>",
            "<ab>",
            "\n",
            "\n\n",
            "<a>",
            "xyz",
            "<start_of_turn>",
            "<start_of_image>",
            "<start_of_turn>",
            "<start_of_tu",
        ];
        let (s, distinct) = Specials::new(texts.iter().copied());
        assert_eq!(distinct, vec![0, 1, 2, 3, 0, 4, 5, 6, 5, 7]);
        let ok = &|| Ok(());
        for text in [
            "",
            "plain",
            "<a",
            "x<ab>y\n",
            "\n\n<a>",
            "xy",
            "xyz<",
            "<start_of_turn",
            "a<start_of_turn>b",
            "<start_of_tu<start_of_image>",
        ] {
            let seen = s.occurring(text, ok).unwrap();
            for (i, t) in texts.iter().enumerate() {
                assert_eq!(
                    seen[distinct[i] as usize],
                    text.contains(t),
                    "{t:?} in {text:?}"
                );
            }
        }
    }

    #[test]
    fn stops_when_interrupted() {
        let (s, _) = Specials::new(["\n\n\n"].into_iter());
        let text = "\n\nx".repeat(100_000);
        let r = s.occurring(&text, &|| Err(crate::error::Error::tokenizer("stop")));
        assert!(r.is_err());
    }
}
