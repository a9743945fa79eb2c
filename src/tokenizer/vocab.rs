//! The vocabulary's texts in one buffer, with a hash index from text to id.
//!
//! Gemma 3 has 262,144 entries: a `String` per entry plus a copy of each as
//! a map key was half a million allocations per engine load, most of the
//! time it took to build the tokenizer.

use std::hash::Hasher;

use super::bpe::PairHasher;

#[derive(Default)]
pub struct Vocab {
    /// Every text, one after the other.
    buf: String,
    /// Where entry `i` ends in `buf` (it starts where `i - 1` ends).
    ends: Vec<u32>,
    /// Open addressing: per slot, id + 1 of the text hashed there (0 for
    /// empty) and the hash's high half, so that a probe reads a text only
    /// when the hashes agree.
    slots: Vec<(u32, u32)>,
}

/// The fast hash of the token maps, then mixed so that the low bits (the
/// slot) depend on every byte: a product's low bits see only the low bits
/// of what was multiplied.
fn hash(text: &str) -> u64 {
    let mut h = PairHasher::default();
    h.write(text.as_bytes());
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x
}

/// Where entry `i` of a buffer of entries one after the other lies, given
/// where each ends.
#[inline]
pub fn span(ends: &[u32], i: usize) -> std::ops::Range<usize> {
    (if i == 0 { 0 } else { ends[i - 1] as usize })..ends[i] as usize
}

impl Vocab {
    /// Entries in order, id = position.  `None` when the texts together
    /// are 4 GiB or more.
    pub fn new<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> Option<Self> {
        let mut v = Self::default();
        for t in texts {
            v.buf.push_str(t.as_ref());
            v.ends.push(u32::try_from(v.buf.len()).ok()?);
        }
        let size = (v.ends.len() * 2).next_power_of_two().max(16);
        v.slots = vec![(0, 0); size];
        for id in 0..v.ends.len() {
            let text = v.text(id as u32);
            let h = hash(text);
            let tag = (h >> 32) as u32;
            let mut s = h as usize & (size - 1);
            loop {
                match v.slots[s] {
                    // The first of equal texts keeps the text's id.
                    (0, _) => {
                        v.slots[s] = (id as u32 + 1, tag);
                        break;
                    }
                    (other, t) if t == tag && v.text(other - 1) == text => break,
                    _ => s = (s + 1) & (size - 1),
                }
            }
        }
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The texts' bytes together.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text of `id`, which must be below `len()`.
    #[inline]
    pub fn text(&self, id: u32) -> &str {
        &self.buf[span(&self.ends, id as usize)]
    }

    pub fn get(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.text(id))
    }

    /// The id of `text` (the first, if the vocabulary has it twice).
    #[inline]
    pub fn id(&self, text: &str) -> Option<u32> {
        let mask = self.slots.len().checked_sub(1)?;
        let h = hash(text);
        let tag = (h >> 32) as u32;
        let mut s = h as usize & mask;
        loop {
            match self.slots[s] {
                (0, _) => return None,
                (id, t) if t == tag && self.text(id - 1) == text => return Some(id - 1),
                _ => s = (s + 1) & mask,
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len() as u32).map(|i| self.text(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_ids_both_ways() {
        let texts = ["a", "", "bc", "a", "▁x", "bc"];
        let v = Vocab::new(texts).unwrap();
        assert_eq!(v.len(), 6);
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(v.text(i as u32), *t);
            // Equal texts: the first id.
            assert_eq!(v.id(t), texts.iter().position(|x| x == t).map(|p| p as u32));
        }
        assert_eq!(v.id("b"), None);
        assert_eq!(v.id("abc"), None);
        assert_eq!(v.get(6), None);
        assert_eq!(v.iter().collect::<Vec<_>>(), texts);
        let empty = Vocab::new(Vec::<String>::new()).unwrap();
        assert_eq!(empty.id("a"), None);
        assert!(empty.is_empty());
    }

    #[test]
    fn many_entries() {
        let texts: Vec<String> = (0..50_000).map(|i| format!("t{i}")).collect();
        let v = Vocab::new(&texts).unwrap();
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(v.id(t), Some(i as u32));
        }
        assert_eq!(v.id("t50000"), None);
    }
}
