//! The one error type of `heurist-verify`.
//!
//! A refusal is an error, never a `false`: a file whose checksum does not match comes back as
//! [`VerifyError::ChecksumMismatch`] with both digests, a submission signed by the wrong key as
//! [`VerifyError::SignatureMismatch`] with the protocol's evidence as its source. Every variant
//! carries the value at fault (the path, the address, the digests) so that a log line or the
//! `heurist` tool's output is the evidence. Protocol errors are boxed: they are large, and
//! every `Result` of this crate would carry their size.

use std::path::PathBuf;

use heurist_protocol::ProtocolError;

/// Result alias for this crate.
pub type Result<T, E = VerifyError> = std::result::Result<T, E>;

/// An error raised by a lookup behind [`crate::IdentityBinding`] (a contract call, a database).
pub type BindingSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a check can refuse or fail on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A chat answer check was asked for a sampled request; only greedy answers are a
    /// function of the prompt.
    #[error("temperature {temperature}: only greedy (temperature 0) answers can be checked by re-generation")]
    NotGreedy {
        /// The request's temperature.
        temperature: f64,
    },
    /// A likelihood check asked for a greedy request; greedy answers are re-generated instead.
    #[error("temperature {temperature}: the likelihood check is for sampled answers; check greedy ones by re-generation")]
    NotSampled {
        /// The request's temperature.
        temperature: f64,
    },
    /// A likelihood check asked of a request that truncates or penalises the distribution
    /// (top-k, top-p, min-p, penalties), which the likelihood statistic does not model; the
    /// seeded replay ([`crate::llm::check_seeded`]) does.
    #[error("{name} = {value}: the likelihood check models plain tempered sampling only; replay the seed instead")]
    UnmodelledSampling {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A seeded replay asked for a request without a seed (or a greedy one): there are no
    /// draws to replay.
    #[error("temperature {temperature}, seed {seed:?}: the seeded replay is for sampled answers with a seed")]
    NotSeeded {
        /// The request's temperature.
        temperature: f64,
        /// The request's seed.
        seed: Option<u64>,
    },
    /// A chat check asked of an image job or an image result (an S3 key).
    #[error("job {job_id:?}: not a chat job with a text result; only chat answers are re-checked here")]
    NotChatResult {
        /// The job id.
        job_id: String,
    },
    /// The reference engine failed while re-checking an answer.
    #[error("reference inference failed: {reason}")]
    Inference {
        /// The engine's error.
        reason: String,
    },
    /// A claimed image is not a PNG that decodes.
    #[error("claimed image does not decode as a PNG: {problem}")]
    ImageDecode {
        /// The decoder's complaint.
        problem: String,
    },
    /// Pixels that are not `width * height * 3` bytes of RGB.
    #[error("{len} bytes are not an 8-bit RGB image of {width}x{height} ({} expected)", u64::from(*width) * u64::from(*height) * 3)]
    ImageBuffer {
        /// The width given.
        width: u32,
        /// The height given.
        height: u32,
        /// The bytes given.
        len: usize,
    },
    /// Opening, reading or inspecting a file failed.
    #[error("{}: cannot {action}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done (`open`, `read`, `stat`, ...).
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's size, modification time or inode changed while it was being hashed, so its
    /// digest belongs to no version of the file.
    #[error("{}: changed while it was being hashed ({before_bytes} bytes before, {after_bytes} after, {hashed_bytes} hashed); hash it again once it is complete", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Its size when it was opened.
        before_bytes: u64,
        /// Its size when hashing ended.
        after_bytes: u64,
        /// The bytes actually hashed.
        hashed_bytes: u64,
    },
    /// The file's SHA-256 is not the expected one: the file is not to be loaded.
    #[error("{}: SHA-256 {actual}, expected {expected}; the file is corrupt, truncated or another file: download it again", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The expected digest, lower-case hex.
        expected: String,
        /// The file's digest, lower-case hex.
        actual: String,
    },
    /// An expected checksum that is not 64 hex digits.
    #[error("checksum {value:?}: {reason}; expected 64 hex digits (SHA-256, any case)")]
    ChecksumFormat {
        /// The checksum as given (cut to 100 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry has no usable checksum for this model (unknown model, malformed entry).
    #[error("model registry: cannot check {model:?}")]
    Registry {
        /// The model name asked for.
        model: String,
        /// The registry's reason.
        #[source]
        source: Box<ProtocolError>,
    },
    /// The registry entry has no checksum, so its file cannot be verified.
    #[error("model registry: {model:?} has no checksum; its file cannot be verified")]
    NoChecksum {
        /// The model name.
        model: String,
    },
    /// The verified-files cache could not be read or written.
    #[error("verified-files cache {}: {reason}; delete the file to start afresh", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A hashing thread stopped without a result (it panicked, or its reader vanished).
    #[error("{}: the hashing thread stopped without a result", path.display())]
    HashThread {
        /// The file it was hashing.
        path: PathBuf,
    },
    /// A `miner_submit` body that does not decode (bad JSON, a malformed signature or address).
    #[error("miner_submit does not decode")]
    MalformedSubmit {
        /// The protocol's reason, naming the field.
        #[source]
        source: Box<ProtocolError>,
    },
    /// The miner's reward address has no identity wallet bound to it.
    #[error("reward address {reward_address} has no identity bound; bind an identity wallet to it before mining")]
    NotBound {
        /// The reward address (lower case).
        reward_address: String,
    },
    /// The submission names an identity other than the one bound to its reward address.
    #[error("reward address {reward_address} is bound to identity {bound}, but the submission names {claimed}")]
    BoundToOther {
        /// The reward address (lower case).
        reward_address: String,
        /// The identity bound to it.
        bound: String,
        /// The identity the submission names.
        claimed: String,
    },
    /// The signature is by another key, or for an hour other than the current or previous one.
    #[error("signature of {miner_id} is not by identity {identity} for the hour of {unix_time} or the hour before")]
    SignatureMismatch {
        /// The miner id of the submission.
        miner_id: String,
        /// The bound identity that should have signed.
        identity: String,
        /// The time the check was made for.
        unix_time: u64,
        /// The protocol's evidence (who did sign, for which hour).
        #[source]
        source: Box<ProtocolError>,
    },
    /// A signature from which no key can be recovered at all (r or s out of range, ...).
    #[error("signature of {miner_id} recovers no key")]
    MalformedSignature {
        /// The miner id of the submission.
        miner_id: String,
        /// The protocol's reason.
        #[source]
        source: Box<ProtocolError>,
    },
    /// The identity look-up itself failed (the contract or table could not be read).
    #[error("identity binding of {reward_address}: look-up failed")]
    BindingLookup {
        /// The reward address looked up.
        reward_address: String,
        /// The look-up's own error.
        #[source]
        source: BindingSource,
    },
    /// A bindings table file that is not a map of reward address to identity address.
    #[error("identity bindings {}: {reason}; expected a map of reward address to identity address", path.display())]
    BindingsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A GPU name that is not in the GPU catalogue; a claim on it cannot be judged.
    #[error("GPU {name:?} is not in the GPU catalogue; report the name nvidia-smi prints (laptop parts are not listed)")]
    UnknownGpu {
        /// The name as given.
        name: String,
    },
    /// A model whose registry type has no FLOPs model (Flux, API-served LLMs of no stated size).
    #[error("model {model:?} (type {model_type:?}) has no FLOPs model; only sd15/sdxl UNets and llm<size>b types do")]
    NoFlopsModel {
        /// The model name.
        model: String,
        /// Its registry type.
        model_type: String,
    },
    /// Work of the wrong family for the model (tokens for an image model, or the reverse).
    #[error("model {model:?} needs {expected} as its work, got {got}")]
    WorkMismatch {
        /// The model name.
        model: String,
        /// What it needs.
        expected: &'static str,
        /// What was given.
        got: &'static str,
    },
    /// A result whose job is not known: it cannot be judged.
    #[error("result of job {job_id:?} by {miner_id}: no such job")]
    NoJob {
        /// The job id of the result.
        job_id: String,
        /// The miner that submitted it.
        miner_id: String,
    },
    /// A job that does not decode or clamp (bad size, bad prompt JSON).
    #[error("job {job_id:?} is malformed")]
    MalformedJob {
        /// The job id.
        job_id: String,
        /// The protocol's reason, naming the field.
        #[source]
        source: Box<ProtocolError>,
    },
    /// A claimed value out of range (a negative or NaN latency, missing token counts).
    #[error("claimed {field} {value}: expected {expected}")]
    InvalidClaim {
        /// The field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// An audit setting out of range (a probability above 1, a negative slash share).
    #[error("audit {field} {value}: expected {expected}")]
    InvalidAudit {
        /// The setting.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The rule set or ledger of `heurist-points` refused (an unknown model type, a bad record).
    #[error("reward rules")]
    Rules {
        /// The rule set's or ledger's reason.
        #[source]
        source: Box<heurist_points::PointsError>,
    },
}

impl VerifyError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, action, source }
    }
}
