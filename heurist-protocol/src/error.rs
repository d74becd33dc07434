//! The one error type of `heurist-protocol`.
//!
//! Every variant carries the offending value (or the JSON path of the offending field) so that
//! a miner log line or a sequencer 4xx body says what was wrong without a debugger.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

/// Everything that can go wrong while decoding, signing or talking to a sequencer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A JSON body or file did not decode; `field` is the JSON path of the offending field
    /// (`.` for the top level, e.g. `model_input.SD.width`).
    #[error("{what}: field `{field}`: {error}")]
    Json {
        /// What was being decoded (`job`, `miner_submit`, `models.json`, ...).
        what: String,
        /// JSON path of the field at fault.
        field: String,
        /// The decoder's own message (line and column included; shown in this error's
        /// message, so not repeated as its source).
        error: serde_json::Error,
    },
    /// A field that holds JSON inside a string (`prompt`, `tools`, `extra_body`) did not decode.
    #[error("field `{field}` holds JSON text that does not decode: at `{path}`: {error}")]
    EmbeddedJson {
        /// The wire field holding the JSON text.
        field: &'static str,
        /// Path inside the embedded document.
        path: String,
        /// The decoder's message (shown in this error's message).
        error: serde_json::Error,
    },
    /// A body larger than the limit this decoder accepts.
    #[error("{what}: body of {len} bytes is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// What was being decoded.
        what: String,
        /// Its size (or the size read so far, when it was cut off).
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A body that is not UTF-8.
    #[error("{what}: body is not UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// What was being decoded.
        what: String,
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },
    /// A value that decoded but breaks a rule of the protocol.
    #[error("field `{field}`: {value:?} is invalid: {reason}")]
    InvalidField {
        /// Wire name of the field.
        field: &'static str,
        /// The value as received.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A miner id that is not `0x` + 40 hex digits, optionally `-tag` with tag `[A-Za-z0-9_]+`.
    #[error("miner id {value:?}: {reason}; expected 0x followed by 40 hex digits, optionally -tag ([A-Za-z0-9_]+)")]
    MinerId {
        /// The id as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An Ethereum address that is not `0x` + 40 hex digits.
    #[error("address {value:?} is not 0x followed by 40 hex digits")]
    Address {
        /// The address as given.
        value: String,
    },
    /// A signature that is not 65 bytes of hex (r‖s‖v), with or without `0x`.
    #[error("signature {value:?}: {reason}")]
    SignatureFormat {
        /// The signature as given (cut to 140 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed signature from which no public key can be recovered.
    #[error("signature does not recover a signer for message {message:?}: {reason}")]
    SignatureRecovery {
        /// The signed text.
        message: String,
        /// The curve library's reason.
        reason: String,
    },
    /// The signature holds, but for another key, or for an hour outside the allowed window.
    #[error(
        "signature for {reward_address} at {unix_time} is by none of the allowed hours' signers: expected identity {expected}, recovered {recovered_current} (this hour) and {recovered_previous} (previous hour)"
    )]
    SignerMismatch {
        /// The reward address whose message was checked.
        reward_address: String,
        /// The time the check was made for.
        unix_time: u64,
        /// The identity address that should have signed.
        expected: String,
        /// Who signed, if the message is this hour's.
        recovered_current: String,
        /// Who signed, if the message is the previous hour's.
        recovered_previous: String,
    },
    /// A BIP-39 phrase that is not 12 (or 15..24) valid English words with a good checksum.
    #[error("seed phrase is not a valid BIP-39 English mnemonic: {reason}")]
    Mnemonic {
        /// The BIP-39 library's reason (the phrase itself is never printed).
        reason: String,
    },
    /// An identity key file that is not in the reference's two-line format.
    #[error("identity key file {}: {reason}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (shown in this error's message).
        error: std::io::Error,
    },
    /// A look-up in the model registry found nothing.
    #[error("model registry: no {kind} named {name:?}")]
    UnknownModel {
        /// `model`, `lora`, `vae`, `base model`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// An HTTP request to the sequencer failed before an answer came back.
    #[cfg(feature = "client")]
    #[error("{endpoint}: request failed: {error}")]
    Http {
        /// The URL.
        endpoint: String,
        /// reqwest's error (connection refused, TLS, ...; shown in this error's message).
        error: reqwest::Error,
    },
    /// The sequencer answered with an error status.
    #[cfg(feature = "client")]
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        endpoint: String,
        /// The status code.
        status: u16,
        /// The start of the body (at most 500 characters).
        body: String,
    },
    /// No answer within the configured timeout.
    #[cfg(feature = "client")]
    #[error("{endpoint}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The URL.
        endpoint: String,
        /// The timeout that ran out.
        timeout_ms: u64,
    },
}

impl ProtocolError {
    /// Shorthand for [`ProtocolError::InvalidField`].
    pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::InvalidField { field, value: value.to_string(), reason: reason.into() }
    }
}
