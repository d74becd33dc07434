//! Incremental detokenisation: token bytes in, complete UTF-8 text out.
//!
//! A byte-level BPE token can end in the middle of a character (an emoji is four bytes and often
//! two or three tokens). [`Utf8Stream`] holds back an incomplete trailing sequence until the
//! bytes that complete it arrive, so streamed text never contains a split character and the
//! concatenation of the pieces equals decoding all tokens at once. Bytes that can never become
//! valid UTF-8 are replaced by U+FFFD exactly as `String::from_utf8_lossy` would.

/// Turns a stream of byte chunks into a stream of valid UTF-8 pieces.
#[derive(Debug, Default, Clone)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes` and returns the text that is now complete (possibly empty).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    // `valid_up_to` bytes are valid UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match err.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
        let kept = rest.len();
        let drop = self.pending.len() - kept;
        self.pending.drain(..drop);
        out
    }

    /// Ends the stream: an incomplete trailing sequence becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = Utf8Stream::default();
        let mut pieces: Vec<String> = chunks.iter().map(|c| s.push(c)).collect();
        pieces.push(s.finish());
        pieces
    }

    #[test]
    fn holds_back_split_characters() {
        let crab = "🦀".as_bytes(); // f0 9f a6 80
        let pieces = stream(&[b"a", &crab[..1], &crab[1..3], &crab[3..], "é".as_bytes()]);
        assert_eq!(pieces, ["a", "", "", "🦀", "é", ""]);
    }

    #[test]
    fn every_split_point_gives_the_same_text() {
        let text = "naïve 日本語 🦀 ok";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let pieces = stream(&[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(pieces.concat(), text, "cut at {cut}");
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
        }
    }

    #[test]
    fn invalid_bytes_match_lossy_decoding() {
        let bytes: &[u8] = b"ok\xffmid\xe6\x97end\xf0\x9f";
        let pieces = stream(&[&bytes[..3], &bytes[3..9], &bytes[9..]]);
        assert_eq!(pieces.concat(), String::from_utf8_lossy(bytes));
    }
}
