//! Stop strings: the completion ends where the first of them appears, and the text ends just
//! before it (OpenAI semantics: the stop string itself is not returned).
//!
//! Matching runs on decoded text, not tokens, because one stop string can span several tokens
//! and one token can hold a stop string plus more text. After each new piece only the tail that
//! could hold a new match is searched, so the cost per token is bounded by the longest stop
//! string, not by the completion's length.

/// The request's stop strings, with the search window they need.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopStrings {
    stops: Vec<String>,
    longest: usize,
}

impl StopStrings {
    /// Stop strings must be non-empty (checked when the request is validated).
    pub(crate) fn new(stops: &[String]) -> Self {
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self { stops: stops.to_vec(), longest }
    }

    /// Where the earliest stop string starts in `text`, given that the previous call saw
    /// `text[..previous_len]` (so earlier matches are impossible).
    pub(crate) fn find(&self, text: &str, previous_len: usize) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let mut from = previous_len.saturating_sub(self.longest.saturating_sub(1)).min(text.len());
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let window = &text[from..];
        self.stops.iter().filter_map(|stop| window.find(stop.as_str())).min().map(|at| from + at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        StopStrings::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn finds_a_stop_spanning_pieces() {
        let s = stops(&["###", "\n\n"]);
        let mut text = String::new();
        let mut found = None;
        for piece in ["Hello #", "#", "# rest"] {
            let before = text.len();
            text.push_str(piece);
            found = s.find(&text, before);
            if found.is_some() {
                break;
            }
        }
        assert_eq!(found, Some(6));
        assert_eq!(&text[..6], "Hello ");
    }

    #[test]
    fn earliest_of_several_wins() {
        let s = stops(&["world", "lo"]);
        assert_eq!(s.find("hello world", 0), Some(3));
    }

    #[test]
    fn window_respects_char_boundaries() {
        let s = stops(&["ab", "日"]);
        let text = "x日本語ab";
        assert_eq!(s.find(text, text.len() - 1), Some(text.len() - 2));
        assert_eq!(s.find("日本", 4), Some(0));
    }

    #[test]
    fn no_stops_never_match() {
        assert_eq!(stops(&[]).find("anything", 0), None);
    }
}
