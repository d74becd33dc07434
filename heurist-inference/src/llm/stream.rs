//! Streaming: a completion's text handed out while it is generated, in word-sized pieces.
//!
//! The network streams answers the way the reference miner does: each piece is a word and the
//! spaces after it, so every piece but possibly the last ends with a space (see
//! `miner_submit_stream` in the protocol). [`WordPieces`] cuts the generation's text
//! ([`crate::llm::generation::Generation::text`]) into such pieces as it grows. Two things make
//! the pieces safe to send at once:
//! - the text never holds half a character ([`crate::llm::detokenize`] keeps incomplete UTF-8
//!   back), so a piece is always valid text;
//! - a tail of the text that could be the beginning of a stop string is held back until the
//!   next tokens show whether the stop string follows: text a stop string will cut is never
//!   handed out.
//!
//! Concatenated, the pieces are exactly the final text (before tool calls are parsed out of it).

/// Cuts a growing text into word-sized pieces, holding back possible stop-string prefixes.
#[derive(Debug, Clone, Default)]
pub(crate) struct WordPieces {
    /// Bytes of the text already handed out.
    emitted: usize,
    stops: Vec<String>,
}

impl WordPieces {
    /// A cutter for a request with these stop strings.
    pub(crate) fn new(stops: &[String]) -> Self {
        Self { emitted: 0, stops: stops.to_vec() }
    }

    /// The pieces of `text` (the whole text so far) that are now final: whole words up to the
    /// last space before any tail that could start a stop string.
    pub(crate) fn ready(&mut self, text: &str) -> Vec<String> {
        let from = self.start(text);
        // A stop string already complete in the text cuts it there (whoever calls first, the
        // stop check or this); else a tail that may still become one waits.
        let safe = match self.first_stop(&text[from..]) {
            Some(at) => from + at,
            None => text.len() - self.held_tail(&text[from..]),
        };
        let Some(space) = text[from..safe].rfind(' ') else { return Vec::new() };
        let end = from + space + 1;
        self.emitted = end;
        split_words(&text[from..end])
    }

    /// The rest of `text` (the final text) as pieces; the last one ends with a space only if
    /// the text does.
    pub(crate) fn finish(&mut self, text: &str) -> Vec<String> {
        let from = self.start(text);
        self.emitted = text.len();
        split_words(&text[from..])
    }

    /// Where the text not yet handed out begins (kept on a character boundary of `text`).
    fn start(&self, text: &str) -> usize {
        let mut from = self.emitted.min(text.len());
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        from
    }

    /// Byte offset of the first complete stop string in `text`.
    fn first_stop(&self, text: &str) -> Option<usize> {
        self.stops.iter().filter(|stop| !stop.is_empty()).filter_map(|stop| text.find(stop.as_str())).min()
    }

    /// Length in bytes of the longest suffix of `text` that is a proper prefix of a stop string.
    fn held_tail(&self, text: &str) -> usize {
        let mut held = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > held && i <= text.len() && text.ends_with(&stop[..i]) {
                    held = i;
                }
            }
        }
        held
    }
}

/// Splits `text` after each run of spaces, the spaces staying with the word before them.
fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_is_space = chars.peek().is_some_and(|&(_, n)| n == ' ');
        if c == ' ' && !next_is_space {
            pieces.push(text[start..=i].to_owned());
            start = i + 1;
        }
    }
    if start < text.len() {
        pieces.push(text[start..].to_owned());
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(steps: &[&str], stops: &[&str], final_text: &str) -> Vec<Vec<String>> {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut w = WordPieces::new(&stops);
        let mut out: Vec<Vec<String>> = steps.iter().map(|t| w.ready(t)).collect();
        out.push(w.finish(final_text));
        out
    }

    #[test]
    fn words_end_with_their_spaces() {
        assert_eq!(split_words("Hello  big world"), ["Hello  ", "big ", "world"]);
        assert_eq!(split_words(" a "), [" ", "a "]);
        assert!(split_words("").is_empty());
        let out = pieces_of(&["Hel", "Hello wo", "Hello world, hi "], &[], "Hello world, hi there");
        assert_eq!(out, vec![vec![], vec!["Hello ".to_string()], vec!["world, ".into(), "hi ".into()], vec!["there".into()]]);
    }

    #[test]
    fn a_possible_stop_prefix_is_held_back() {
        // A stop string with a space in it: "the en" might become "the end".
        let out = pieces_of(&["see the en", "see the end"], &["the end"], "see ");
        assert_eq!(out, vec![vec!["see ".to_string()], vec![], vec![]]);
        // It did not follow: "the " comes out, the "t" that could start it again waits.
        let out = pieces_of(&["see the en", "see the ent"], &["the end"], "see the ent");
        assert_eq!(out, vec![vec!["see ".to_string()], vec!["the ".into()], vec!["ent".into()]]);
        // A stop arriving a character at a time.
        let out = pieces_of(&["a b#", "a b##E", "a b##EN"], &["##END"], "a b");
        assert_eq!(out, vec![vec!["a ".to_string()], vec![], vec![], vec!["b".into()]]);
    }

    #[test]
    fn multi_byte_text_and_stops() {
        let out = pieces_of(&["日本 ", "日本 語¿", "日本 語¿F"], &["¿FIN"], "日本 語");
        assert_eq!(out, vec![vec!["日本 ".to_string()], vec![], vec![], vec!["語".into()]]);
    }
}
