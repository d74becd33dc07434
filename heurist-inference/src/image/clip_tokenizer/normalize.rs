//! Text cleanup before CLIP's regex and BPE, as transformers' `CLIPTokenizer` does it when ftfy
//! is not installed (the reference miner does not install it): its `BasicTokenizer` with
//! `strip_accents=False, do_split_on_punc=False`.
//!
//! In order: drop NUL, U+FFFD and every "C*" category character except tab, newline and carriage
//! return; turn those three and every space separator (Zs) into a space; put spaces around CJK
//! ideographs; NFC; split on Python's `str.split()` whitespace; lower-case each piece with
//! Python's full Unicode mapping (Rust's `str::to_lowercase` has the same final-sigma rule);
//! join with single spaces.
//!
//! Python's `unicodedata` and this crate's tables may sit on different Unicode versions; the
//! only characters that can differ are ones one of them does not yet assign.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// The cleaned, lower-cased text whose regex matches are CLIP's words.
pub(super) fn clean(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            spaced.push(' ');
        } else if is_cjk_ideograph(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let normalized: String = spaced.nfc().collect();
    let mut out = String::with_capacity(normalized.len());
    for word in normalized.split(is_python_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word.to_lowercase());
    }
    out
}

/// transformers' `_is_control`: any "C*" category except the three whitespace controls.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.general_category_group() == GeneralCategoryGroup::Other
}

/// transformers' `_is_whitespace`.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || c.general_category() == GeneralCategory::SpaceSeparator
}

/// Python's `str.isspace()`: Unicode White_Space plus the four ASCII information separators.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The CJK blocks BERT's tokenizer isolates (`_is_chinese_char`).
fn is_cjk_ideograph(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn whitespace_controls_and_case() {
        assert_eq!(
            clean("  A\tPhoto\r\nOF\u{a0}a\u{3000}CAT  "),
            "a photo of a cat"
        );
        assert_eq!(
            clean("zero\u{200b}width bell\u{7} nul\0 \u{fffd}"),
            "zerowidth bell nul"
        );
        assert_eq!(clean("line\u{2028}sep"), "line sep");
    }

    #[test]
    fn cjk_nfc_and_final_sigma() {
        assert_eq!(clean("東京タワー"), "東 京 タワー");
        assert_eq!(clean("e\u{301}"), "\u{e9}");
        // Final sigma: Σ at the end of a word lower-cases to ς, as in Python.
        assert_eq!(
            clean("ΟΔΟΣ ΣΟΦΟΣ"),
            "\u{3bf}\u{3b4}\u{3bf}\u{3c2} \u{3c3}\u{3bf}\u{3c6}\u{3bf}\u{3c2}"
        );
    }
}
