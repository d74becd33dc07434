//! Decoding JSON from the wire: size limit first, then UTF-8, then serde with the path of the
//! failing field kept.
//!
//! Every public `from_slice`-style entry point of this crate goes through [`json`], so a
//! 100 MB body is refused before it is parsed and every error names the field at fault.

use serde::de::DeserializeOwned;

use crate::error::{ProtocolError, Result};

/// The largest body this crate decodes by default (16 MiB). Real jobs and submissions are a
/// few KiB; an LLM answer of 4096 tokens is well under 100 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Checks size and UTF-8 of a body, returning it as text.
pub(crate) fn text<'a>(what: &str, body: &'a [u8], limit: usize) -> Result<&'a str> {
    if body.len() > limit {
        return Err(ProtocolError::BodyTooLarge { what: what.to_owned(), len: body.len(), limit });
    }
    std::str::from_utf8(body)
        .map_err(|e| ProtocolError::InvalidUtf8 { what: what.to_owned(), valid_up_to: e.valid_up_to() })
}

/// Decodes `body` as `T`, naming the failing field on error.
pub(crate) fn json<T: DeserializeOwned>(what: &str, body: &[u8], limit: usize) -> Result<T> {
    let text = text(what, body, limit)?;
    json_str(what, text)
}

/// Decodes already-checked text as `T`, naming the failing field on error.
pub(crate) fn json_str<T: DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(de).map_err(|e| ProtocolError::Json {
        what: what.to_owned(),
        field: path_of(e.path()),
        error: e.into_inner(),
    })?;
    Ok(value)
}

/// Decodes JSON text held inside a string field (`prompt`, `tools`, `extra_body`).
pub(crate) fn embedded<T: DeserializeOwned>(field: &'static str, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| ProtocolError::EmbeddedJson {
        field,
        path: path_of(e.path()),
        error: e.into_inner(),
    })
}

fn path_of(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p.is_empty() { ".".to_owned() } else { p }
}
