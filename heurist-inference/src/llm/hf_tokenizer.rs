//! The tokenizer and chat template of a Hugging Face model directory: `tokenizer.json` (the
//! `tokenizers` library's own format, loaded as is, so prompt ids equal transformers') and
//! `tokenizer_config.json` (the chat template and the BOS / EOS spellings).
//!
//! Encoding is the `tokenizers` crate's, with no special tokens added: the chat template writes
//! the BOS itself, as `apply_chat_template(tokenize=True)` assumes. Decoding goes through raw
//! bytes per token, like the GGUF tokenizer's, so multi-byte characters split across tokens
//! stream correctly. Two vocabulary spellings are understood, picked from the decoder:
//! - byte-level BPE (Llama 3, GPT-2): tokens in the GPT-2 byte alphabet;
//! - SentencePiece-style BPE (Llama 2, Mistral, Mixtral): `▁` for a space, `<0xNN>` byte
//!   fallback tokens. The decoder's "strip one leading space" step is not applied: a streamed
//!   completion keeps the space its first token carries, as vLLM's incremental detokenizer
//!   (which decodes after the prompt's last tokens) does.
//!
//! Added tokens marked `special` are control tokens (left out of the text), as are the end
//! texts llama.cpp treats as end of generation (`<|eot_id|>`, `<|im_end|>` …).

use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use crate::error::{InferenceError, Result};
use crate::llm::tokenizer::{EOG_TEXTS, Tokenizer, byte_token, unicode_to_byte};

/// What `tokenizer.json`'s decoder says about token spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2 byte alphabet.
    ByteLevel,
    /// `▁` for spaces, `<0xNN>` byte tokens.
    SentencePiece,
}

/// The tokenizer and the chat templates (those `tokenizer_config.json` has) of `dir`.
///
/// `config_eos` are `config.json`'s `eos_token_id`s; `model_vocab` is the embedding's row count
/// (ids past the tokenizer's vocabulary decode to nothing rather than fail).
pub(crate) fn load(dir: &Path, config_eos: &[u32], model_vocab: usize) -> Result<(Tokenizer, TemplateSources)> {
    let tokenizer_path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tokenizer_path)
        .map_err(|source| InferenceError::Io { path: tokenizer_path.clone(), source })?;
    let spec: Value = serde_json::from_str(&text)
        .map_err(|source| InferenceError::InvalidJson { path: tokenizer_path.clone(), source })?;
    let inner = tokenizers::Tokenizer::from_str(&text).map_err(|source| InferenceError::Tokenizer {
        context: format!("building from {}", tokenizer_path.display()),
        source,
    })?;
    let spelling = spelling(&tokenizer_path, &spec)?;

    let config_path = dir.join("tokenizer_config.json");
    let config: Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|source| InferenceError::InvalidJson { path: config_path.clone(), source })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(source) => return Err(InferenceError::Io { path: config_path, source }),
    };

    let vocab = inner.get_vocab_size(true).max(model_vocab);
    let added = inner.get_added_tokens_decoder();
    let unicode_to_byte = unicode_to_byte();
    let mut bytes = Vec::with_capacity(vocab);
    let mut control = Vec::with_capacity(vocab);
    let mut eog = config_eos.to_vec();
    for id in 0..vocab {
        let id = u32::try_from(id).map_err(|_| InferenceError::InvalidMetadata {
            path: tokenizer_path.clone(),
            key: "model.vocab".into(),
            problem: format!("more than {} tokens", u32::MAX),
        })?;
        let Some(token) = inner.id_to_token(id) else {
            // A hole in the vocabulary, or an embedding row past it.
            bytes.push(Vec::new());
            control.push(false);
            continue;
        };
        let is_eog_text = EOG_TEXTS.contains(&token.as_str());
        if is_eog_text {
            eog.push(id);
        }
        if let Some(added) = added.get(&id) {
            bytes.push(token.as_bytes().to_vec());
            control.push(added.special || is_eog_text);
            continue;
        }
        bytes.push(match spelling {
            Spelling::ByteLevel => token
                .chars()
                .flat_map(|c| match unicode_to_byte.get(&c) {
                    Some(&b) => vec![b],
                    None => c.to_string().into_bytes(),
                })
                .collect(),
            Spelling::SentencePiece => match byte_token(&token) {
                Some(b) => vec![b],
                None => token.replace('\u{2581}', " ").into_bytes(),
            },
        });
        control.push(is_eog_text);
    }

    let special_id = |key: &str| -> Result<Option<u32>> {
        let Some(spelling) = token_text(&config[key]) else { return Ok(None) };
        inner.token_to_id(spelling).map(Some).ok_or_else(|| InferenceError::InvalidMetadata {
            path: config_path.clone(),
            key: key.to_owned(),
            problem: format!("token {spelling:?} is not in the vocabulary"),
        })
    };
    let bos = special_id("bos_token")?;
    let eos = match special_id("eos_token")? {
        Some(id) => id,
        None => *config_eos.first().ok_or_else(|| InferenceError::MissingMetadata {
            path: config_path.clone(),
            key: "eos_token (tokenizer_config.json) or eos_token_id (config.json)".into(),
        })?,
    };
    if eos as usize >= vocab {
        return Err(InferenceError::UnknownToken { token_id: eos, vocab_size: vocab });
    }

    let template = chat_template(&config_path, &config["chat_template"])?;
    let tokenizer = Tokenizer::from_parts(inner, bytes, &control, bos, eos, eog);
    Ok((tokenizer, template))
}

/// A special token's spelling: a string, or an added-token object's `content`.
fn token_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// The chat templates of `tokenizer_config.json`: the one used for every request, and the one
/// transformers' `apply_chat_template` picks instead when a request passes tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TemplateSources {
    /// `chat_template` (a string), or its entry named "default" (a list).
    pub(crate) default: Option<String>,
    /// The list's entry named "tool_use" (Hermes 2 Pro ships its tool prompt so).
    pub(crate) tool_use: Option<String>,
}

/// `chat_template`: a string, or a list of `{name, template}` ("default", "tool_use").
fn chat_template(path: &Path, value: &Value) -> Result<TemplateSources> {
    match value {
        Value::Null => Ok(TemplateSources::default()),
        Value::String(s) => Ok(TemplateSources { default: Some(s.clone()), tool_use: None }),
        Value::Array(list) => {
            let named = |name: &str| {
                list.iter().find(|t| t["name"] == name).and_then(|t| t["template"].as_str()).map(str::to_owned)
            };
            Ok(TemplateSources { default: named("default"), tool_use: named("tool_use") })
        }
        other => Err(InferenceError::InvalidMetadata {
            path: path.to_path_buf(),
            key: "chat_template".into(),
            problem: format!("expected a string or a list of named templates, found {other}"),
        }),
    }
}

/// Which spelling the decoder undoes.
fn spelling(path: &Path, spec: &Value) -> Result<Spelling> {
    let decoder = spec["decoder"].to_string();
    if decoder.contains("\"ByteLevel\"") {
        Ok(Spelling::ByteLevel)
    } else if decoder.contains("\"Metaspace\"") || decoder.contains("\u{2581}") || decoder.contains("\"ByteFallback\"") {
        Ok(Spelling::SentencePiece)
    } else {
        Err(InferenceError::UnsupportedTokenizer {
            path: path.to_path_buf(),
            model: format!("decoder {decoder}"),
        })
    }
}
