//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`), as llama.cpp
//! applies it: spaces become '▁', the text is split into characters, and
//! the adjacent pair whose joined text is the highest-scoring vocabulary
//! entry is merged first (leftmost on ties) until no pair is in the
//! vocabulary.  Characters left outside it fall back to `<0xNN>` tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::bpe::{spend, CHECK_EVERY};
use super::vocab::Vocab;
use crate::error::Result;

pub struct Spm {
    scores: Vec<f32>,
    /// Token id of each `<0xNN>` byte token.
    byte_ids: [Option<u32>; 256],
    /// The characters other than '▁' that some vocabulary entry has right
    /// before a '▁' (Gemma 3: only '>', in `>▁</`).  Before any other
    /// character, a '▁' starts a piece of text that no merge crosses.
    /// Sorted (a hostile vocabulary may have many).
    before_space: Vec<char>,
}

const SPACE: char = '\u{2581}';

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest score first; on ties, the leftmost pair.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(scores: Vec<f32>, vocab: &Vocab) -> Self {
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = vocab.id(&format!("<0x{b:02X}>"));
        }
        let mut before_space = std::collections::HashSet::new();
        for t in vocab.iter() {
            // '▁' is E2 96 81, and 0xE2 only ever starts a character.
            let b = t.as_bytes();
            let mut from = 1;
            while let Some(k) = b
                .get(from..)
                .and_then(|r| r.iter().position(|&x| x == 0xE2))
            {
                let i = from + k;
                from = i + 1;
                if t[i..].starts_with(SPACE) {
                    let p = t[..i].chars().next_back();
                    if let Some(p) = p.filter(|&p| p != SPACE) {
                        before_space.insert(p);
                    }
                }
            }
        }
        Self {
            scores,
            byte_ids,
            before_space: {
                let mut v: Vec<char> = before_space.into_iter().collect();
                v.sort_unstable();
                v
            },
        }
    }

    /// Appends the ids of `text` (already with '▁' for spaces) to `out`.
    pub fn encode(
        &self,
        text: &str,
        vocab: &Vocab,
        out: &mut Vec<u32>,
        unk: Option<u32>,
        interrupt: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if text.len() > u32::MAX as usize {
            return Err(crate::error::Error::tokenizer(format!(
                "a text of {} bytes is longer than {} bytes",
                text.len(),
                u32::MAX
            )));
        }
        let mut budget = CHECK_EVERY;
        // Merges join only pairs whose text is a vocabulary entry, so none
        // crosses a '▁' that follows a character no entry has before one:
        // the pieces between such spaces are merged one after the other
        // (the same result, with a small queue instead of one as long as
        // the text).
        let mut scratch = (Vec::new(), BinaryHeap::new());
        let cuts = text
            .char_indices()
            .scan(SPACE, |prev, (i, c)| {
                let cut =
                    c == SPACE && *prev != SPACE && self.before_space.binary_search(prev).is_err();
                *prev = c;
                Some((i, cut))
            })
            .filter_map(|(i, cut)| cut.then_some(i))
            .chain([text.len()]);
        let mut from = 0;
        for to in cuts {
            let piece = &text[from..to];
            self.encode_piece(piece, vocab, out, unk, &mut scratch, &mut budget, interrupt)?;
            from = to;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_piece(
        &self,
        text: &str,
        vocab: &Vocab,
        out: &mut Vec<u32>,
        unk: Option<u32>,
        (symbols, queue): &mut (Vec<Symbol>, BinaryHeap<Bigram>),
        budget: &mut usize,
        interrupt: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        symbols.clear();
        queue.clear();
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let try_add = |queue: &mut BinaryHeap<Bigram>,
                       symbols: &[Symbol],
                       l: Option<usize>,
                       r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (&symbols[l], &symbols[r]);
            let joined = &text[a.start..b.start + b.len];
            if let Some(id) = vocab.id(joined) {
                if let Some(&score) = self.scores.get(id as usize) {
                    queue.push(Bigram {
                        score,
                        left: l as u32,
                        right: r as u32,
                        size: joined.len() as u32,
                    });
                }
            }
        };
        for i in 1..symbols.len() {
            try_add(queue, symbols, Some(i - 1), Some(i));
            spend(budget, 1, interrupt)?;
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left as usize, bigram.right as usize);
            // Skip pairs whose symbols changed since the pair was queued.
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != bigram.size as usize
            {
                continue;
            }
            spend(budget, 1, interrupt)?;
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            symbols[l].next = symbols[r].next;
            if let Some(n) = symbols[r].next {
                symbols[n].prev = Some(l);
            }
            let (prev, next) = (symbols[l].prev, symbols[l].next);
            try_add(queue, symbols, prev, Some(l));
            try_add(queue, symbols, Some(l), next);
        }
        let mut i = Some(0);
        while let Some(idx) = i {
            let s = &symbols[idx];
            let piece = &text[s.start..s.start + s.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        if let Some(id) = self.byte_ids[b as usize].or(unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    /// The bytes a vocabulary entry stands for: `<0xNN>` is the byte NN,
    /// '▁' is a space.
    #[cfg(test)]
    pub fn token_bytes(text: &str, is_byte: bool) -> Vec<u8> {
        let mut out = Vec::new();
        Self::append_token_bytes(text, is_byte, &mut out);
        out
    }

    /// [`Spm::token_bytes`] appended to `out`.
    pub fn append_token_bytes(text: &str, is_byte: bool, out: &mut Vec<u8>) {
        if is_byte {
            if let Some(b) = text
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                return;
            }
        }
        // '▁' is E2 96 81 in UTF-8 (0xE2 only ever starts a character):
        // replaced byte by byte, which for Gemma 3's 262k entries takes a
        // fraction of `str::replace`'s time (a searcher and a growing
        // String per entry).
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == 0xE2 && b.get(i + 1) == Some(&0x96) && b.get(i + 2) == Some(&0x81) {
                out.push(b' ');
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bytes_turn_the_space_mark_into_spaces() {
        for t in [
            "",
            "▁",
            "▁▁a▁",
            "abc",
            "é▁ü",
            "\u{2580}\u{2582}",
            "<0x41>",
            "▁<0xZZ>",
        ] {
            assert_eq!(
                Spm::token_bytes(t, false),
                t.replace('\u{2581}', " ").into_bytes(),
                "{t:?}"
            );
        }
        assert_eq!(Spm::token_bytes("<0x41>", true), b"A");
        assert_eq!(Spm::token_bytes("<0xZZ>", true), b"<0xZZ>");
    }

    fn vocab(entries: &[(&str, f32)]) -> (Vocab, Vec<f32>) {
        let map = Vocab::new(entries.iter().map(|e| e.0)).unwrap();
        (map, entries.iter().map(|e| e.1).collect())
    }

    #[test]
    fn highest_score_merges_first() {
        let entries = [
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -1.0),
            ("bc", -0.5),
        ];
        let (map, scores) = vocab(&entries);
        let spm = Spm::new(scores, &map);
        let mut out = Vec::new();
        // "bc" (-0.5) beats "ab" (-1), and "a" + "bc" is no entry.
        spm.encode("abc", &map, &mut out, None, &|| Ok(())).unwrap();
        assert_eq!(out, vec![0, 4]);
        // With "abc" in the vocabulary, the merged pair merges on.
        let (map, scores) = vocab(&[entries.as_slice(), &[("abc", -2.0)]].concat());
        let spm = Spm::new(scores, &map);
        out.clear();
        spm.encode("abc", &map, &mut out, None, &|| Ok(())).unwrap();
        assert_eq!(out, vec![5]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let mut entries: Vec<(String, f32)> =
            (0..256).map(|b| (format!("<0x{b:02X}>"), 0.0)).collect();
        entries.push(("a".into(), 0.0));
        let refs: Vec<(&str, f32)> = entries.iter().map(|(t, s)| (t.as_str(), *s)).collect();
        let (map, scores) = vocab(&refs);
        let spm = Spm::new(scores, &map);
        let mut out = Vec::new();
        spm.encode("aé", &map, &mut out, None, &|| Ok(())).unwrap();
        assert_eq!(out, vec![256, 0xC3, 0xA9]);
        assert_eq!(Spm::token_bytes("<0x0A>", true), vec![10]);
        assert_eq!(Spm::token_bytes("\u{2581}the", false), b" the".to_vec());
    }

    #[test]
    fn merges_across_a_space_only_where_an_entry_has_one_inside() {
        // ">▁<" has a space after '>': pieces are cut before a space after
        // any other character only, and the merge across it still happens.
        let entries = [
            ("a", 0.0),
            ("\u{2581}", 0.0),
            ("b", 0.0),
            (">", 0.0),
            ("<", 0.0),
            (">\u{2581}", -1.0),
            (">\u{2581}<", -0.5),
            ("a\u{2581}", -9.0),
        ];
        let run = |entries: &[(&str, f32)]| {
            let (map, scores) = vocab(entries);
            let spm = Spm::new(scores, &map);
            let mut out = Vec::new();
            let text = "b\u{2581}>\u{2581}<a\u{2581}b";
            spm.encode(text, &map, &mut out, None, &|| Ok(())).unwrap();
            (spm.before_space, out)
        };
        assert_eq!(run(&entries), (vec!['>', 'a'], vec![2, 1, 6, 7, 2]));
        // Without "a▁", 'a' and the space after it stay apart.
        assert_eq!(run(&entries[..7]), (vec!['>'], vec![2, 1, 6, 0, 1, 2]));
    }
}
