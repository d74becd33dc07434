//! A1111 attention syntax: `(word)`, `(word:1.3)`, `[word]`, escapes, and (SDXL) `BREAK`.
//!
//! A transcription of the reference pipelines' `parse_prompt_attention` (the same function in
//! both, the SDXL one adding `BREAK`), behaviour for behaviour:
//! - `(` and `[` open a group; `)` multiplies everything since the matching `(` by 1.1, `:w)` by
//!   `w`, `]` by `1 / 1.1`; closers with nothing open, and `:w)` with no `(` open, are text;
//! - groups still open at the end are closed there (round ones first, then square ones);
//! - `\(`, `\)`, `\[`, `\]`, `\\` are the character itself; a lone `\` vanishes;
//! - runs of equal weight (exact f64 equality) are merged; an empty prompt is `("", 1.0)`;
//! - SDXL: a whole-word `BREAK` with the white space around it becomes the text `"BREAK"` with
//!   weight -1 (inside groups, times their multipliers), which the tokenizer turns into the word
//!   "break" with a negative weight: not A1111's chunk break, but what the reference does.
//!
//! Weights are f64 products in the reference's order, so they equal Python's floats exactly.
//! A `:w)` whose `w` is not a number (`1.2.3`, `.`) is the one error (Python's `float()` raises).

use super::{PromptError, PromptFlavor};

/// `(`'s multiplier.
const ROUND_MULTIPLIER: f64 = 1.1;
/// `[`'s multiplier, computed as the reference does (`1 / 1.1`, not a division per use).
const SQUARE_MULTIPLIER: f64 = 1.0 / 1.1;

/// A piece of prompt text and the attention weight its tokens get.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedText {
    /// The text, escapes resolved.
    pub text: String,
    /// Its weight: 1.0 is neutral.
    pub weight: f64,
}

/// One match of the reference's `re_attention` regex.
enum Piece<'a> {
    /// `\x` for x in `()[]\`: the character; a lone `\`: nothing.
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:w)` with the text of `w`.
    WeightClose(&'a str),
    CloseRound,
    CloseSquare,
    /// Anything else, including a `:` that does not start `:w)`.
    Text,
}

/// Splits `text` into `(text, weight)` runs as the reference's `parse_prompt_attention` does.
///
/// ```
/// use heurist_inference::image::prompt::{parse_prompt_attention, PromptFlavor};
///
/// let parsed = parse_prompt_attention("an (important) word", PromptFlavor::Sd15).unwrap();
/// let weights: Vec<(&str, f64)> = parsed.iter().map(|p| (p.text.as_str(), p.weight)).collect();
/// assert_eq!(weights, [("an ", 1.0), ("important", 1.1), (" word", 1.0)]);
/// ```
pub fn parse_prompt_attention(
    text: &str,
    flavor: PromptFlavor,
) -> Result<Vec<WeightedText>, PromptError> {
    let mut res: Vec<WeightedText> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<WeightedText>, from: usize, by: f64| {
        for piece in &mut res[from..] {
            piece.weight *= by;
        }
    };
    let mut rest = text;
    while !rest.is_empty() {
        let (piece, len) = next_piece(rest);
        rest = &rest[len..];
        match piece {
            Piece::Escaped(s) => res.push(WeightedText {
                text: s.to_owned(),
                weight: 1.0,
            }),
            Piece::OpenRound => round.push(res.len()),
            Piece::OpenSquare => square.push(res.len()),
            Piece::WeightClose(w) if !round.is_empty() => {
                let weight = parse_python_float(w).ok_or_else(|| PromptError::InvalidWeight {
                    weight: w.to_owned(),
                    prompt: text.to_owned(),
                })?;
                if let Some(from) = round.pop() {
                    multiply(&mut res, from, weight);
                }
            }
            Piece::CloseRound if !round.is_empty() => {
                if let Some(from) = round.pop() {
                    multiply(&mut res, from, ROUND_MULTIPLIER);
                }
            }
            Piece::CloseSquare if !square.is_empty() => {
                if let Some(from) = square.pop() {
                    multiply(&mut res, from, SQUARE_MULTIPLIER);
                }
            }
            Piece::WeightClose(_) | Piece::CloseRound | Piece::CloseSquare | Piece::Text => {
                let literal = &text[text.len() - rest.len() - len..text.len() - rest.len()];
                match flavor {
                    PromptFlavor::Sd15 => res.push(WeightedText {
                        text: literal.to_owned(),
                        weight: 1.0,
                    }),
                    PromptFlavor::Sdxl => push_split_on_break(&mut res, literal),
                }
            }
        }
    }
    for from in round {
        multiply(&mut res, from, ROUND_MULTIPLIER);
    }
    for from in square {
        multiply(&mut res, from, SQUARE_MULTIPLIER);
    }
    if res.is_empty() {
        res.push(WeightedText {
            text: String::new(),
            weight: 1.0,
        });
    }
    let mut merged: Vec<WeightedText> = Vec::with_capacity(res.len());
    for piece in res {
        match merged.last_mut() {
            Some(last) if last.weight == piece.weight => last.text.push_str(&piece.text),
            _ => merged.push(piece),
        }
    }
    Ok(merged)
}

/// The regex alternative that matches at the start of `s`, in the regex's order, and its length.
fn next_piece(s: &str) -> (Piece<'_>, usize) {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return (Piece::Text, 0);
    };
    match first {
        '\\' => match chars.next() {
            Some(c @ ('(' | ')' | '[' | ']' | '\\')) => {
                (Piece::Escaped(&s[1..1 + c.len_utf8()]), 1 + c.len_utf8())
            }
            _ => (Piece::Escaped(""), 1),
        },
        '(' => (Piece::OpenRound, 1),
        '[' => (Piece::OpenSquare, 1),
        ')' => (Piece::CloseRound, 1),
        ']' => (Piece::CloseSquare, 1),
        ':' => match weight_close(s) {
            Some(len) => (Piece::WeightClose(&s[1..len - 1]), len),
            None => (Piece::Text, 1),
        },
        _ => {
            let len = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Piece::Text, len)
        }
    }
}

/// Length of `:([+-]?[.\d]+)\)` at the start of `s` (which starts with `:`), if it matches.
/// `\d` is Python's: any Unicode decimal digit.
fn weight_close(s: &str) -> Option<usize> {
    let mut len = 1;
    let mut rest = s[1..].chars().peekable();
    if let Some(&c @ ('+' | '-')) = rest.peek() {
        len += c.len_utf8();
        rest.next();
    }
    let mut body = 0;
    while let Some(&c) = rest.peek() {
        if c == '.' || decimal_digit(c).is_some() {
            len += c.len_utf8();
            body += 1;
            rest.next();
        } else {
            break;
        }
    }
    (body > 0 && rest.next() == Some(')')).then_some(len + 1)
}

/// Python's `float()` on `[+-]?[.\d]+`: Unicode digits count as their ASCII values.
fn parse_python_float(s: &str) -> Option<f64> {
    let ascii: String = s
        .chars()
        .map(|c| match decimal_digit(c) {
            Some(d) => char::from(b'0' + d),
            None => c,
        })
        .collect();
    ascii
        .parse::<f64>()
        .ok()
        .filter(|_| ascii.chars().any(|c| c.is_ascii_digit()))
}

/// The value of a Unicode decimal digit (general category Nd). Unicode assigns those in
/// contiguous runs of ten, 0 to 9, so the value is the distance to the run's start, mod 10.
fn decimal_digit(c: char) -> Option<u8> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    let is_nd = |c: char| c.general_category() == GeneralCategory::DecimalNumber;
    if c.is_ascii_digit() {
        return Some(c as u8 - b'0');
    }
    if !is_nd(c) {
        return None;
    }
    let mut start = u32::from(c);
    while let Some(prev) = start.checked_sub(1).and_then(char::from_u32) {
        if !is_nd(prev) {
            break;
        }
        start -= 1;
    }
    Some(((u32::from(c) - start) % 10) as u8)
}

/// SDXL: `re.split(r"\s*\bBREAK\b\s*", text)`, with `["BREAK", -1]` between the parts.
fn push_split_on_break(res: &mut Vec<WeightedText>, text: &str) {
    let mut part_start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK").map(|i| i + search) {
        let end = found + "BREAK".len();
        let before = text[..found].chars().next_back();
        let after = text[end..].chars().next();
        if before.is_some_and(is_python_word) || after.is_some_and(is_python_word) {
            search = found + 1;
            continue;
        }
        // The match starts at the white space run just before BREAK (not before the previous
        // match's end) and takes the white space after it.
        let lead = text[part_start..found]
            .trim_end_matches(is_python_space)
            .len()
            + part_start;
        let trail = text[end..].len() - text[end..].trim_start_matches(is_python_space).len() + end;
        res.push(WeightedText {
            text: text[part_start..lead].to_owned(),
            weight: 1.0,
        });
        res.push(WeightedText {
            text: "BREAK".to_owned(),
            weight: -1.0,
        });
        part_start = trail;
        search = trail;
    }
    res.push(WeightedText {
        text: text[part_start..].to_owned(),
        weight: 1.0,
    });
}

/// Python's `\w` for str patterns: letters, numbers (any N category) and `_`.
fn is_python_word(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    c == '_'
        || matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number
        )
}

/// Python's `\s` / `str.isspace()`.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str, flavor: PromptFlavor) -> Vec<(String, f64)> {
        parse_prompt_attention(text, flavor)
            .unwrap()
            .into_iter()
            .map(|p| (p.text, p.weight))
            .collect()
    }

    #[test]
    fn docstring_examples_of_the_reference() {
        let p = |t| pairs(t, PromptFlavor::Sd15);
        assert_eq!(p("normal text"), [("normal text".into(), 1.0)]);
        assert_eq!(p("(unbalanced"), [("unbalanced".into(), 1.1)]);
        assert_eq!(p("\\(literal\\]"), [("(literal]".into(), 1.0)]);
        assert_eq!(
            p("(unnecessary)(parens)"),
            [("unnecessaryparens".into(), 1.1)]
        );
        assert_eq!(p(""), [(String::new(), 1.0)]);
    }

    #[test]
    fn break_only_as_a_whole_word() {
        let p = |t| pairs(t, PromptFlavor::Sdxl);
        assert_eq!(
            p("red cat BREAK blue"),
            [
                ("red cat".into(), 1.0),
                ("BREAK".into(), -1.0),
                ("blue".into(), 1.0)
            ]
        );
        assert_eq!(p("BREAKfast"), [("BREAKfast".into(), 1.0)]);
        assert_eq!(
            pairs("a BREAK b", PromptFlavor::Sd15),
            [("a BREAK b".into(), 1.0)]
        );
    }

    #[test]
    fn unicode_digits_and_bad_weights() {
        assert_eq!(decimal_digit('５'), Some(5));
        assert_eq!(decimal_digit('\u{1d7d9}'), Some(1)); // mathematical double-struck one
        assert_eq!(parse_python_float("１.５"), Some(1.5));
        assert!(matches!(
            parse_prompt_attention("(a:1.2.3)", PromptFlavor::Sd15),
            Err(PromptError::InvalidWeight { weight, .. }) if weight == "1.2.3"
        ));
        // Outside any group `:w)` is text, so a bad number there is no error.
        assert_eq!(
            pairs("a:1.2.3)", PromptFlavor::Sd15),
            [("a:1.2.3)".into(), 1.0)]
        );
    }
}
