//! The text ⇄ token-id mapping, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! GGUF stores a GPT-2 style byte-level BPE vocabulary (tokens spelled with the GPT-2
//! byte-to-unicode alphabet), its merges and a type per token. We rebuild it with the
//! `tokenizers` crate so that the ids equal llama.cpp's for the same text:
//! - the pre-tokenizer follows `tokenizer.ggml.pre` as llama.cpp's `llama-vocab.cpp` does;
//!   for `smollm` (and the starcoder family) that is "split every digit" then the GPT-2 regex,
//!   and never a prefix space (candle's GGUF tokenizer helper adds one, which shifts every id
//!   of the first word);
//! - control and user-defined tokens (`<|im_start|>` …) are matched in the text before
//!   pre-tokenisation, as llama.cpp does with `parse_special = true`;
//! - no BOS is added: a chat template writes the BOS itself when the model wants one, as
//!   Hugging Face's `apply_chat_template` and llama-cpp-python's chat path both assume.
//!
//! Decoding goes through raw bytes ([`Tokenizer::token_bytes`]), never through lossy strings,
//! so a multi-byte character split across tokens survives (see `detokenize.rs`).

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::error::{InferenceError, Result};
use crate::weights::gguf::GgufFile;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Token texts llama.cpp treats as end of generation whatever the metadata says
/// (`llama_vocab::impl::load`, the `special_eog_ids` list).
pub(crate) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
];

/// How a token's text is turned back into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ordinary vocabulary entry: its bytes appear in the output.
    Text,
    /// A control token (`<|im_end|>`): structure, not text; dropped from decoded output.
    Control,
}

/// A byte-level BPE tokenizer with the vocabulary of one model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of every token, indexed by id.
    bytes: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
    bos_token: Option<u32>,
    eos_token: u32,
    /// Every id that ends generation (EOS, EOT and llama.cpp's list of end texts).
    eog_tokens: Vec<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer from the `tokenizer.ggml.*` metadata of an open GGUF file.
    pub(crate) fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let model = gguf.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(InferenceError::UnsupportedTokenizer {
                path: path.to_path_buf(),
                model: model.to_owned(),
            });
        }
        let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre_tokenizer = pre_tokenizer_for(path, pre)?;

        let tokens = gguf.str_array("tokenizer.ggml.tokens")?;
        let types = match gguf.opt_i64_array("tokenizer.ggml.token_type")? {
            Some(types) if types.len() == tokens.len() => types,
            Some(types) => {
                return Err(InferenceError::InvalidMetadata {
                    path: path.to_path_buf(),
                    key: "tokenizer.ggml.token_type".into(),
                    problem: format!("{} entries for {} tokens", types.len(), tokens.len()),
                });
            }
            None => vec![TYPE_NORMAL; tokens.len()],
        };
        let merges = gguf
            .str_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, merge)| {
                merge.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| {
                    InferenceError::InvalidMetadata {
                        path: path.to_path_buf(),
                        key: "tokenizer.ggml.merges".into(),
                        problem: format!("merge {i} ({merge:?}) is not two tokens separated by a space"),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| Ok(((*token).to_owned(), token_id(path, id)?)))
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|source| tokenizer_error(path, source))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| matches!(**ty, TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|(token, _)| AddedToken::from(*token, true))
            .collect();
        inner.add_special_tokens(&specials);

        let mut bytes = Vec::with_capacity(tokens.len());
        let mut kinds = Vec::with_capacity(tokens.len());
        let unicode_to_byte = unicode_to_byte();
        for (token, ty) in tokens.iter().zip(&types) {
            let (b, kind) = match *ty {
                TYPE_CONTROL => (token.as_bytes().to_vec(), Kind::Control),
                TYPE_USER_DEFINED => (token.as_bytes().to_vec(), Kind::Text),
                TYPE_BYTE => (byte_token(token).map_or_else(|| token.as_bytes().to_vec(), |b| vec![b]), Kind::Text),
                _ => (
                    token
                        .chars()
                        .flat_map(|c| match unicode_to_byte.get(&c) {
                            Some(&b) => vec![b],
                            // Not in the GPT-2 alphabet: llama.cpp copies the character as is.
                            None => c.to_string().into_bytes(),
                        })
                        .collect(),
                    Kind::Text,
                ),
            };
            bytes.push(b);
            kinds.push(kind);
        }

        let vocab_size = tokens.len();
        let check_id = |key: &str, id: u32| {
            if (id as usize) < vocab_size {
                Ok(id)
            } else {
                Err(InferenceError::InvalidMetadata {
                    path: path.to_path_buf(),
                    key: key.to_owned(),
                    problem: format!("token id {id} is outside the vocabulary of {vocab_size}"),
                })
            }
        };
        let eos_token = check_id("tokenizer.ggml.eos_token_id", gguf.u32("tokenizer.ggml.eos_token_id")?)?;
        let bos_token = gguf
            .opt_u32("tokenizer.ggml.bos_token_id")?
            .map(|id| check_id("tokenizer.ggml.bos_token_id", id))
            .transpose()?;
        let mut eog_tokens = vec![eos_token];
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = gguf.opt_u32(key)? {
                eog_tokens.push(check_id(key, id)?);
            }
        }
        for (id, token) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(token) {
                eog_tokens.push(token_id(path, id)?);
                // llama.cpp forces these to control tokens so they never print.
                kinds[id] = Kind::Control;
            }
        }
        eog_tokens.sort_unstable();
        eog_tokens.dedup();
        tracing::debug!(vocab_size, pre, ?eog_tokens, "built tokenizer from GGUF metadata");

        Ok(Self { inner, bytes, kinds, bos_token, eos_token, eog_tokens })
    }

    /// Assembles a tokenizer built elsewhere (`hf_tokenizer.rs`, from `tokenizer.json`):
    /// `bytes[id]` is what token `id` decodes to, `control[id]` whether decoded text leaves it
    /// out; `eog_tokens` end generation.
    pub(crate) fn from_parts(
        inner: tokenizers::Tokenizer,
        bytes: Vec<Vec<u8>>,
        control: &[bool],
        bos_token: Option<u32>,
        eos_token: u32,
        mut eog_tokens: Vec<u32>,
    ) -> Self {
        let kinds = control.iter().map(|&c| if c { Kind::Control } else { Kind::Text }).collect();
        eog_tokens.push(eos_token);
        eog_tokens.sort_unstable();
        eog_tokens.dedup();
        Self { inner, bytes, kinds, bos_token, eos_token, eog_tokens }
    }

    /// Token ids of `text`, with control tokens written in the text recognised as such and no
    /// BOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|source| InferenceError::Tokenizer {
                context: format!("encoding {} bytes of text", text.len()),
                source,
            })
    }

    /// The text of `ids`, control tokens left out, invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            if !self.is_control(id)? {
                bytes.extend_from_slice(self.token_bytes(id)?);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes token `id` stands for (for a control token, its spelling).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice).ok_or_else(|| self.unknown(id))
    }

    /// Whether `id` is a control token, which decoded text leaves out.
    pub fn is_control(&self, id: u32) -> Result<bool> {
        self.kinds.get(id as usize).map(|k| *k == Kind::Control).ok_or_else(|| self.unknown(id))
    }

    /// Whether generating `id` ends the completion.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog_tokens.binary_search(&id).is_ok()
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The BOS token's spelling, for chat templates that write it (empty when there is none).
    pub fn bos_text(&self) -> &str {
        self.bos_token.and_then(|id| self.spelling(id)).unwrap_or("")
    }

    /// The EOS token's spelling, for chat templates that write it.
    pub fn eos_text(&self) -> &str {
        self.spelling(self.eos_token).unwrap_or("")
    }

    /// The EOS token id.
    pub fn eos_token_id(&self) -> u32 {
        self.eos_token
    }

    fn spelling(&self, id: u32) -> Option<&str> {
        self.bytes.get(id as usize).and_then(|b| std::str::from_utf8(b).ok())
    }

    fn unknown(&self, token_id: u32) -> InferenceError {
        InferenceError::UnknownToken { token_id, vocab_size: self.bytes.len() }
    }
}

fn tokenizer_error(path: &Path, source: tokenizers::Error) -> InferenceError {
    InferenceError::Tokenizer { context: format!("building from {}", path.display()), source }
}

fn token_id(path: &Path, index: usize) -> Result<u32> {
    u32::try_from(index).map_err(|_| InferenceError::InvalidMetadata {
        path: path.to_path_buf(),
        key: "tokenizer.ggml.tokens".into(),
        problem: format!("more than {} tokens", u32::MAX),
    })
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = pre` (its `llama-vocab.cpp`).
fn pre_tokenizer_for(path: &Path, pre: &str) -> Result<PreTokenizerWrapper> {
    // The GPT-2 regex ('s|'t|…| ?\p{L}+| ?\p{N}+|…), no prefix space.
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" | "trillion" => Ok(byte_level.into()),
        // llama.cpp: `"\\p{N}"` first, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        other => Err(InferenceError::UnsupportedTokenizer {
            path: path.to_path_buf(),
            model: format!("gpt2 with pre-tokenizer {other:?}"),
        }),
    }
}

/// `<0x0A>` → 0x0A, for byte-fallback tokens.
pub(crate) fn byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes are shifted to U+0100 onwards in order.
pub(crate) fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_alphabet_round_trips_all_bytes() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'A'], b'A');
        assert_eq!(map[&'ñ'], 0xF1);
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token("<0x0A>"), Some(0x0A));
        assert_eq!(byte_token("<0xff>"), Some(0xFF));
        assert_eq!(byte_token("<0x>"), None);
        assert_eq!(byte_token("hello"), None);
    }
}
