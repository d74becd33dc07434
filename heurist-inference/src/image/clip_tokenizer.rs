//! CLIP's byte-level BPE tokenizer: text to the token ids Stable Diffusion's text encoders read.
//!
//! SD 1.5's encoder (OpenAI CLIP ViT-L/14) and both of SDXL's (the same one, and OpenCLIP
//! ViT-bigG/14) share one vocabulary: `bpe_simple_vocab_16e6.txt.gz`, which ships in the
//! `open-clip-torch` package (MIT, see `data/clip/LICENSE-open_clip.txt`) and is embedded in this
//! crate, since single-file checkpoints carry no tokenizer. The ids equal those of transformers'
//! (slow) `CLIPTokenizer`, the class the reference miner's pipelines load:
//! - the vocabulary is the 256 byte characters, the same with `</w>`, the first 48,894 merges'
//!   results, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407);
//! - the special tokens (and, for SDXL's second tokenizer, its pad token `"!"`) are split out of
//!   the raw text first, exactly as written, as transformers does with added tokens;
//! - the rest is cleaned as transformers' `BasicTokenizer` cleans it (see `normalize`), split
//!   with CLIP's regex, mapped to the GPT-2 byte alphabet, and BPE-merged with `</w>` marking a
//!   word's last symbol (the `tokenizers` crate's BPE model);
//! - [`ClipTokenizer::encode_padded`] gives the 77 ids a plain (not long-prompt) pipeline feeds
//!   the encoder: BOS, at most 75 ids, EOS, then the pad token.
//!
//! Long prompts and `(word:1.2)` weights are [`super::prompt`]'s business; it calls
//! [`ClipTokenizer::encode`] on each weighted piece.

mod normalize;

use std::io::Read;

use tokenizers::Model;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::utils::SysRegex;

/// Id of `<|startoftext|>`, which opens every sequence the text encoder reads.
pub const CLIP_BOS_TOKEN_ID: u32 = 49406;
/// Id of `<|endoftext|>`, which closes every sequence (and pads SD 1.5's).
pub const CLIP_EOS_TOKEN_ID: u32 = 49407;
/// Id of `"!"`, the pad token of SDXL's second tokenizer in diffusers' layout.
pub const CLIP_EXCLAMATION_TOKEN_ID: u32 = 0;
/// Tokens the text encoders read at once (their position embeddings), BOS and EOS included.
pub const CLIP_CONTEXT_LENGTH: usize = 77;
/// Tokens in the vocabulary.
pub const CLIP_VOCAB_SIZE: usize = 49408;

/// The embedded vocabulary: open-clip-torch 2.26.1's `open_clip/bpe_simple_vocab_16e6.txt.gz`,
/// byte for byte (SHA-256 924691ac…6804a).
const EMBEDDED_VOCAB_GZ: &[u8] = include_bytes!("../../data/clip/bpe_simple_vocab_16e6.txt.gz");

/// Merges CLIP uses: the file holds 262,144 but CLIP's 49,408-token vocabulary stops at
/// `49152 - 256 - 2` of them (the line numbers transformers and open_clip both slice).
const MERGES_USED: usize = 49152 - 256 - 2;

/// CLIP's word regex (transformers' `CLIPTokenizer.pat`, case-insensitive as there).
const WORD_PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

const STARTOFTEXT: &str = "<|startoftext|>";
const ENDOFTEXT: &str = "<|endoftext|>";

/// Which token fills a padded sequence; the only difference between SD's CLIP tokenizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPadToken {
    /// `<|endoftext|>` (49407): SD 1.5's tokenizer and SDXL's first (openai/clip-vit-large-patch14).
    EndOfText,
    /// `"!"` (0): SDXL's second tokenizer (laion/CLIP-ViT-bigG-14 in diffusers' layout). Being a
    /// special token there, every `"!"` in a prompt is split out and becomes id 0 too.
    Exclamation,
}

impl ClipPadToken {
    /// The pad token's id.
    pub fn id(self) -> u32 {
        match self {
            Self::EndOfText => CLIP_EOS_TOKEN_ID,
            Self::Exclamation => CLIP_EXCLAMATION_TOKEN_ID,
        }
    }
}

/// What can go wrong building or running the CLIP tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipTokenizerError {
    /// The vocabulary is not a readable gzip stream.
    #[error("CLIP vocabulary: not a readable gzip stream: {source}")]
    Decompress {
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },

    /// The vocabulary has fewer merge lines than CLIP uses.
    #[error(
        "CLIP vocabulary: {found} merge lines, expected at least {expected} (a truncated file?)"
    )]
    TooFewMerges {
        /// Merge lines found after the header.
        found: usize,
        /// Merge lines CLIP uses.
        expected: usize,
    },

    /// A merge line is not two tokens separated by white space.
    #[error("CLIP vocabulary line {line}: {text:?} is not two tokens separated by a space")]
    BadMerge {
        /// 1-based line number in the decompressed file.
        line: usize,
        /// The line as found.
        text: String,
    },

    /// The `tokenizers` crate rejected the vocabulary (a merge naming an unknown token).
    #[error("CLIP vocabulary: {source}")]
    Bpe {
        /// The `tokenizers` crate's error.
        #[source]
        source: tokenizers::Error,
    },

    /// BPE failed on one word of the text.
    #[error("CLIP tokenizer: encoding {word:?}: {source}")]
    Encode {
        /// The word (after cleanup) being merged.
        word: String,
        /// The `tokenizers` crate's error.
        #[source]
        source: tokenizers::Error,
    },
}

/// CLIP's tokenizer, ids equal to transformers' `CLIPTokenizer`'s.
///
/// ```
/// use heurist_inference::image::clip_tokenizer::{ClipTokenizer, CLIP_BOS_TOKEN_ID};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tokenizer = ClipTokenizer::new()?;
/// assert_eq!(tokenizer.encode("a photo of a cat")?, [320, 1125, 539, 320, 2368]);
/// let padded = tokenizer.encode_padded("a photo of a cat")?;
/// assert_eq!((padded.len(), padded[0]), (77, CLIP_BOS_TOKEN_ID));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ClipTokenizer {
    bpe: BPE,
    words: SysRegex,
    pad: ClipPadToken,
    /// The GPT-2 byte alphabet: byte `b` is written as `byte_chars[b]` in the vocabulary.
    byte_chars: [char; 256],
}

impl ClipTokenizer {
    /// SD 1.5's tokenizer (and SDXL's first) from the embedded vocabulary.
    ///
    /// Building decompresses the vocabulary and indexes 49k merges (about 0.15 s in a release
    /// build): make one per process and share it; encoding takes `&self`.
    pub fn new() -> Result<Self, ClipTokenizerError> {
        Self::from_vocab_gz(EMBEDDED_VOCAB_GZ, ClipPadToken::EndOfText)
    }

    /// SDXL's second tokenizer (pad `"!"`) from the embedded vocabulary.
    pub fn sdxl_second() -> Result<Self, ClipTokenizerError> {
        Self::from_vocab_gz(EMBEDDED_VOCAB_GZ, ClipPadToken::Exclamation)
    }

    /// Builds the tokenizer from a gzip'd `bpe_simple_vocab_16e6.txt`.
    pub fn from_vocab_gz(gz: &[u8], pad: ClipPadToken) -> Result<Self, ClipTokenizerError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .map_err(|source| ClipTokenizerError::Decompress { source })?;
        Self::from_merges(&text, pad)
    }

    /// Builds the tokenizer from the text of `bpe_simple_vocab_16e6.txt` (or a merges.txt in the
    /// same layout: a header line, then one `left right` merge a line in rank order).
    pub fn from_merges(text: &str, pad: ClipPadToken) -> Result<Self, ClipTokenizerError> {
        let lines: Vec<&str> = text.trim().split('\n').skip(1).take(MERGES_USED).collect();
        if lines.len() < MERGES_USED {
            return Err(ClipTokenizerError::TooFewMerges {
                found: lines.len(),
                expected: MERGES_USED,
            });
        }
        let merges = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_owned(), b.to_owned())),
                    _ => Err(ClipTokenizerError::BadMerge {
                        line: i + 2,
                        text: (*line).to_owned(),
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let byte_chars = byte_chars();
        // Insertion order gives the ids; a repeated spelling keeps its last id, as a Python
        // dict built from the same list does.
        let mut vocab = Vocab::default();
        let mut next_id = 0u32;
        let mut insert = |token: String| {
            vocab.insert(token, next_id);
            next_id += 1;
        };
        for c in byte_chars_in_vocab_order(&byte_chars) {
            insert(c.to_string());
        }
        for c in byte_chars_in_vocab_order(&byte_chars) {
            insert(format!("{c}</w>"));
        }
        for (a, b) in &merges {
            insert(format!("{a}{b}"));
        }
        insert(STARTOFTEXT.to_owned());
        insert(ENDOFTEXT.to_owned());

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".to_owned())
            .build()
            .map_err(|source| ClipTokenizerError::Bpe { source })?;
        let words =
            SysRegex::new(WORD_PATTERN).map_err(|source| ClipTokenizerError::Bpe { source })?;
        Ok(Self {
            bpe,
            words,
            pad,
            byte_chars,
        })
    }

    /// The pad token this tokenizer's padded sequences end with.
    pub fn pad_token(&self) -> ClipPadToken {
        self.pad
    }

    /// The ids of `text`, without BOS and EOS and without truncation (transformers'
    /// `tokenizer(text).input_ids[1:-1]`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ClipTokenizerError> {
        let mut ids = Vec::new();
        let mut rest = text;
        while let Some((at, special, id)) = self.next_special(rest) {
            self.encode_plain(&rest[..at], &mut ids)?;
            ids.push(id);
            rest = &rest[at + special.len()..];
        }
        self.encode_plain(rest, &mut ids)?;
        Ok(ids)
    }

    /// The [`CLIP_CONTEXT_LENGTH`] ids a plain pipeline feeds the encoder: BOS, the first 75 ids
    /// of `text`, EOS, then the pad token (transformers' `padding="max_length", max_length=77,
    /// truncation=True`).
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>, ClipTokenizerError> {
        let ids = self.encode(text)?;
        let kept = ids.len().min(CLIP_CONTEXT_LENGTH - 2);
        let mut padded = Vec::with_capacity(CLIP_CONTEXT_LENGTH);
        padded.push(CLIP_BOS_TOKEN_ID);
        padded.extend_from_slice(&ids[..kept]);
        padded.push(CLIP_EOS_TOKEN_ID);
        padded.resize(CLIP_CONTEXT_LENGTH, self.pad.id());
        Ok(padded)
    }

    /// The first special token written in `text`: its byte offset, spelling and id.
    fn next_special(&self, text: &str) -> Option<(usize, &'static str, u32)> {
        let specials: &[(&'static str, u32)] = match self.pad {
            ClipPadToken::EndOfText => &[
                (STARTOFTEXT, CLIP_BOS_TOKEN_ID),
                (ENDOFTEXT, CLIP_EOS_TOKEN_ID),
            ],
            ClipPadToken::Exclamation => &[
                (STARTOFTEXT, CLIP_BOS_TOKEN_ID),
                (ENDOFTEXT, CLIP_EOS_TOKEN_ID),
                ("!", CLIP_EXCLAMATION_TOKEN_ID),
            ],
        };
        specials
            .iter()
            .filter_map(|&(s, id)| text.find(s).map(|at| (at, s, id)))
            .min_by_key(|&(at, _, _)| at)
    }

    /// Text with no special token written in it: cleanup, CLIP's regex, bytes, BPE.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), ClipTokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let cleaned = normalize::clean(text);
        let mut mapped = String::new();
        for (start, end) in self.words.find_iter(&cleaned) {
            let word = &cleaned[start..end];
            // transformers' `bpe()` cache starts with these two, so a special token that only
            // appears after lower-casing (`<|ENDOFTEXT|>`) still becomes its id.
            match word {
                STARTOFTEXT => ids.push(CLIP_BOS_TOKEN_ID),
                ENDOFTEXT => ids.push(CLIP_EOS_TOKEN_ID),
                _ => {
                    mapped.clear();
                    mapped.extend(word.bytes().map(|b| self.byte_chars[usize::from(b)]));
                    let tokens = self.bpe.tokenize(&mapped).map_err(|source| {
                        ClipTokenizerError::Encode {
                            word: word.to_owned(),
                            source,
                        }
                    })?;
                    ids.extend(tokens.iter().map(|t| t.id));
                }
            }
        }
        Ok(())
    }
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// take the code points from U+0100 upward in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The byte characters in the order CLIP's vocabulary lists them: the printable bytes first
/// (`bytes_to_unicode().values()` keeps that dict's insertion order), then the others.
fn byte_chars_in_vocab_order(table: &[char; 256]) -> impl Iterator<Item = char> + '_ {
    let printable = |b: usize| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    (0..256)
        .filter(move |&b| printable(b))
        .chain((0..256).filter(move |&b| !printable(b)))
        .map(|b| table[b])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let table = byte_chars();
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[0], '\u{100}');
        assert_eq!(table[usize::from(b' ')], '\u{120}');
        assert_eq!(table[0xad], '\u{143}');
        let first: Vec<char> = byte_chars_in_vocab_order(&table).take(2).collect();
        assert_eq!(first, ['!', '"']);
    }

    #[test]
    fn bad_vocabularies_are_typed_errors() {
        assert!(matches!(
            ClipTokenizer::from_vocab_gz(b"not gzip", ClipPadToken::EndOfText),
            Err(ClipTokenizerError::Decompress { .. })
        ));
        assert!(matches!(
            ClipTokenizer::from_merges("#version\ni n\nt h\n", ClipPadToken::EndOfText),
            Err(ClipTokenizerError::TooFewMerges { found: 2, .. })
        ));
        let mut bad = String::from("#version\n");
        for _ in 0..MERGES_USED {
            bad.push_str("i n\n");
        }
        bad.push_str("x\n");
        let bad = bad.replacen("i n\n", "i n x\n", 1);
        match ClipTokenizer::from_merges(&bad, ClipPadToken::EndOfText) {
            Err(ClipTokenizerError::BadMerge { line: 2, text }) => assert_eq!(text, "i n x"),
            other => panic!("expected BadMerge, got {other:?}"),
        }
    }
}
