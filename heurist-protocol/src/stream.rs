//! `miner_submit_stream` framing: an LLM answer sent while it is generated.
//!
//! The miner POSTs to `{base_url}/miner_submit_stream` with headers `job_id` and `miner_id`,
//! `Content-Type: text/event-stream`, and a chunked body: the text in word-sized pieces, each
//! ending with a space, then the end marker `[DONE]`. It opens the request only once the first
//! non-empty piece exists. A stop string ends the stream and the text from it on is dropped.
//!
//! [`WordChunker`] is the miner side (text in, pieces out, stop strings honoured even when they
//! arrive split across tokens); [`StreamedText::parse`] is the sequencer side.

/// The marker that ends a stream.
pub const STREAM_END: &str = "[DONE]";

/// Header naming the job.
pub const HEADER_JOB_ID: &str = "job_id";
/// Header naming the miner.
pub const HEADER_MINER_ID: &str = "miner_id";
/// The stream's content type.
pub const STREAM_CONTENT_TYPE: &str = "text/event-stream";

/// The stop strings the reference LLM miner always applies.
pub const REFERENCE_STOP_STRINGS: [&str; 4] = ["[End]", "[end]", "<|im_start|>", "<|im_end|>"];

/// Cuts generated text into word-sized pieces and stops at stop strings.
#[derive(Clone, Debug)]
pub struct WordChunker {
    pending: String,
    stops: Vec<String>,
    stopped: bool,
}

impl WordChunker {
    /// A chunker that honours the reference's stop strings plus `extra_stops` (empty ones are
    /// ignored).
    pub fn new<I, S>(extra_stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut stops: Vec<String> = REFERENCE_STOP_STRINGS.iter().map(|s| (*s).to_owned()).collect();
        stops.extend(extra_stops.into_iter().map(Into::into).filter(|s| !s.is_empty()));
        Self { pending: String::new(), stops, stopped: false }
    }

    /// Whether a stop string has been seen: later text is ignored.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly generated text; returns the pieces that are complete (each ends with a space).
    ///
    /// ```
    /// use heurist_protocol::stream::WordChunker;
    /// let mut c = WordChunker::new(["STOP"]);
    /// assert_eq!(c.push("Hello wor"), vec!["Hello "]);
    /// assert_eq!(c.push("ld and ST"), vec!["world ", "and "]);
    /// assert_eq!(c.push("OP more"), Vec::<String>::new());
    /// assert!(c.stopped());
    /// assert_eq!(c.finish(), Vec::<String>::new());
    /// ```
    pub fn push(&mut self, text: &str) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        self.pending.push_str(text);
        if let Some(at) = self.first_stop() {
            self.pending.truncate(at);
            self.stopped = true;
            return self.drain_all();
        }
        // Hold back any tail that could be the start of a stop string.
        let hold = self.held_tail();
        let ready_len = self.pending.len() - hold;
        let Some(last_space) = self.pending[..ready_len].rfind(' ') else { return Vec::new() };
        let ready: String = self.pending.drain(..=last_space).collect();
        split_words(&ready)
    }

    /// Ends the text: returns what is left as pieces (the last one given a trailing space).
    pub fn finish(&mut self) -> Vec<String> {
        self.drain_all()
    }

    fn drain_all(&mut self) -> Vec<String> {
        let rest = std::mem::take(&mut self.pending);
        let mut pieces = split_words(&rest);
        if let Some(last) = pieces.last_mut()
            && !last.ends_with(' ')
        {
            last.push(' ');
        }
        pieces
    }

    fn first_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min()
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop.
    fn held_tail(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > best && p.ends_with(&stop[..i]) {
                    best = i;
                }
            }
        }
        best
    }
}

/// Splits text after each space, keeping the space with the word before it; runs of spaces
/// stay with the preceding word so that concatenating the pieces gives the text back.
fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            pieces.push(text[start..j].to_owned());
            start = j;
            i = j;
        } else {
            i += 1;
        }
    }
    if start < text.len() {
        pieces.push(text[start..].to_owned());
    }
    pieces
}

/// A streamed answer as the sequencer received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamedText {
    /// The text, without the end marker.
    pub text: String,
    /// Whether the end marker arrived (a stream cut short is incomplete).
    pub complete: bool,
}

impl StreamedText {
    /// Reads a whole stream body. Transport chunking does not matter: the body is the
    /// concatenation of the pieces, and `[DONE]` at its end marks completion.
    pub fn parse(body: &str) -> Self {
        match body.strip_suffix(STREAM_END) {
            Some(text) => Self { text: text.to_owned(), complete: true },
            None => Self { text: body.to_owned(), complete: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_to_the_text_up_to_the_stop() {
        let mut c = WordChunker::new(Vec::<String>::new());
        let mut out = Vec::new();
        for t in ["The", " quick", " brown fox", " jum", "ps<|im_", "end|> ignored"] {
            out.extend(c.push(t));
        }
        out.extend(c.finish());
        assert!(c.stopped());
        assert_eq!(out, vec!["The ", "quick ", "brown ", "fox ", "jumps "]);
    }

    #[test]
    fn a_stop_prefix_that_is_not_a_stop_is_released() {
        let mut c = WordChunker::new(["[End]"]);
        let mut out = c.push("see [En");
        assert_eq!(out, vec!["see "], "the possible stop prefix is held back");
        out.extend(c.push("glish] text"));
        out.extend(c.finish());
        assert!(!c.stopped());
        assert_eq!(out, vec!["see ", "[English] ", "text "]);
    }

    #[test]
    fn multibyte_text_splits_on_char_boundaries() {
        let mut c = WordChunker::new(["終わり"]);
        let mut out = c.push("こんにちは 世界 終わ");
        out.extend(c.push("り です"));
        assert_eq!(out, vec!["こんにちは ", "世界 "]);
    }

    #[test]
    fn parse_stream_body() {
        assert_eq!(StreamedText::parse("a b [DONE]"), StreamedText { text: "a b ".into(), complete: true });
        assert!(!StreamedText::parse("a b ").complete);
    }
}
