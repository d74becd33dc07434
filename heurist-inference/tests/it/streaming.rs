//! Streaming on the real model: word-sized pieces handed out while tokens are generated, whole
//! characters only, and never text that a stop string later cuts.

use std::cell::RefCell;

use heurist_inference::{ChatOutput, ChatRequest, TokenEvent};

use crate::support::{engine, fixture, model_lock};

fn request(name: &str, max_tokens: usize) -> ChatRequest {
    let case = fixture().cases.iter().find(|c| c.name == name).expect("fixture case");
    ChatRequest::new(case.chat_messages()).with_max_tokens(max_tokens)
}

#[derive(Debug, PartialEq)]
enum Seen {
    Token,
    Piece(String),
}

/// Streams `request`, logging token events and pieces in the order they happened.
fn stream(request: &ChatRequest) -> (Vec<Seen>, ChatOutput) {
    let log = RefCell::new(Vec::new());
    let out = engine()
        .chat_stream_with_observer(
            request,
            &mut |_: &TokenEvent<'_>| log.borrow_mut().push(Seen::Token),
            &mut |piece: &str| log.borrow_mut().push(Seen::Piece(piece.to_owned())),
        )
        .unwrap_or_else(|err| panic!("{err}"));
    (log.into_inner(), out)
}

fn pieces(log: &[Seen]) -> Vec<&str> {
    log.iter().filter_map(|s| if let Seen::Piece(p) = s { Some(p.as_str()) } else { None }).collect()
}

#[test]
fn pieces_are_words_streamed_as_generated_and_add_up_to_the_answer() {
    let _model = model_lock();
    for name in ["short_question", "greeting", "code_python"] {
        let request = request(name, 32);
        let (log, out) = stream(&request);
        let alone = engine().chat(&request).unwrap();
        assert_eq!(out.token_ids, alone.token_ids, "{name}");
        let pieces = pieces(&log);
        assert_eq!(pieces.concat(), alone.text, "{name}");
        assert!(pieces.len() >= 5, "{name}: {pieces:?}");
        for piece in &pieces[..pieces.len() - 1] {
            let word = piece.trim_end_matches(' ');
            // A run of spaces split by a token boundary may come as a piece of its own.
            assert!(piece.ends_with(' ') && !word.contains(' '), "{name}: piece {piece:?}");
        }
        // Pieces come out between tokens, not all at the end.
        let first_piece = log.iter().position(|s| matches!(s, Seen::Piece(_))).unwrap();
        let tokens_after = log[first_piece..].iter().filter(|s| **s == Seen::Token).count();
        assert!(tokens_after >= out.token_ids.len() / 2, "{name}: first piece after all but {tokens_after} tokens");
    }
    // Multi-byte characters split across tokens arrive whole (the French accents above, and
    // here emoji of three tokens each).
    let (log, out) = stream(&request("emoji_french", 12));
    assert!(out.text.chars().any(|c| c.len_utf8() == 4) && !out.text.contains('\u{FFFD}'), "{:?}", out.text);
    assert!(out.text.chars().count() < out.token_ids.len(), "{:?}: characters span tokens", out.text);
    assert_eq!(pieces(&log).concat(), out.text);
}

/// A stop string with a space in it that completes a token after the space arrived: without
/// holding back its possible beginning, the words before the space would be streamed and then
/// cut. The text before it is streamed, nothing from it on ever is.
#[test]
fn a_stop_string_split_across_tokens_is_never_streamed() {
    let _model = model_lock();
    let tokenizer = engine().tokenizer();
    let base = request("short_question", 24);
    let full = engine().chat(&base).unwrap();
    let text = &full.text;
    // Where each token's text ends in the answer.
    let ends: Vec<usize> =
        (1..=full.token_ids.len()).map(|n| tokenizer.decode(&full.token_ids[..n]).unwrap().len()).collect();
    // A space in the second half; the token holding it ends at `e`; the stop string runs from
    // two characters before the space to two characters after `e`.
    let (start, stop) = text
        .char_indices()
        .filter(|&(p, c)| c == ' ' && p > text.len() / 2)
        .find_map(|(p, _)| {
            let e = *ends.iter().find(|&&e| e > p)?;
            let start = text[..p].char_indices().rev().nth(1)?.0;
            let end = text.get(e..)?.char_indices().nth(2).map(|(i, _)| e + i)?;
            let stop = &text[start..end];
            (text.find(stop) == Some(start)).then(|| (start, stop.to_owned()))
        })
        .expect("a space followed by more tokens");

    let (log, out) = stream(&base.clone().with_stop([stop.clone()]));
    assert_eq!(out.text, text[..start], "stop {stop:?}");
    assert_eq!(pieces(&log).concat(), out.text, "stop {stop:?}: streamed text past the cut");
    assert!(!out.text.is_ascii(), "{:?}", out.text);
}
