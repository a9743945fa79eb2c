//! Stop strings: find the first one in generated text, and tell how much of
//! the text's tail could still turn into one (and so must not be shown yet).

pub struct StopStrings {
    stops: Vec<Vec<u8>>,
    longest: usize,
}

impl StopStrings {
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<Vec<u8>> = stops.iter().map(|s| s.as_bytes().to_vec()).collect();
        let longest = stops.iter().map(Vec::len).max().unwrap_or(0);
        Self { stops, longest }
    }

    /// The byte offset where the earliest stop string begins in `text`,
    /// looking only at matches that end after `checked` (bytes before it
    /// were searched already).
    pub fn find(&self, text: &[u8], checked: usize) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let from = checked.saturating_sub(self.longest.saturating_sub(1));
        self.stops
            .iter()
            .filter_map(|s| {
                text[from..]
                    .windows(s.len())
                    .position(|w| w == s.as_slice())
                    .map(|p| p + from)
            })
            .min()
    }

    /// How many bytes at the end of `text` are a proper prefix of some stop
    /// string, and so could still become one.
    pub fn pending_suffix(&self, text: &[u8]) -> usize {
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(text.len());
            for n in (best + 1..=max).rev() {
                if text.ends_with(&s[..n]) {
                    best = n;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> StopStrings {
        StopStrings::new(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn finds_the_earliest_of_several() {
        let s = stops(&["world", "lo"]);
        assert_eq!(s.find(b"hello world", 0), Some(3));
        assert_eq!(s.find(b"nothing here", 0), None);
        assert_eq!(stops(&[]).find(b"abc", 0), None);
    }

    #[test]
    fn a_match_across_the_checked_boundary_is_found() {
        let s = stops(&["STOP"]);
        // "ST" was already seen without a match; "OP" arrives.
        assert_eq!(s.find(b"abcST", 0), None);
        assert_eq!(s.find(b"abcSTOP", 5), Some(3));
    }

    #[test]
    fn pending_suffix_holds_back_possible_starts() {
        let s = stops(&["</end>", "xyz"]);
        assert_eq!(s.pending_suffix(b"text </e"), 3);
        assert_eq!(s.pending_suffix(b"text x"), 1);
        assert_eq!(s.pending_suffix(b"text"), 0);
        assert_eq!(s.pending_suffix(b"<"), 1);
    }
}
