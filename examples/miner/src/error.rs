//! The miner's errors: each says which setting, job or file is at fault.

/// Result alias.
pub type Result<T, E = MinerError> = std::result::Result<T, E>;

/// What can stop a miner or fail one job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MinerError {
    /// A setting is missing or malformed.
    #[error("setting {setting}: {reason}")]
    Config {
        /// The file, key or flag.
        setting: String,
        /// What is wrong.
        reason: String,
    },
    /// The job could not be decoded or clamped.
    #[error("job {job_id}: {error}")]
    BadJob {
        /// The job.
        job_id: String,
        /// The protocol's reason (names the field; boxed to keep results small).
        error: Box<heurist_protocol::ProtocolError>,
    },
    /// The engine failed on a job.
    #[error("job {job_id}: inference failed: {error}")]
    Inference {
        /// The job.
        job_id: String,
        /// The engine's reason (boxed: it is large and rare).
        error: Box<heurist_inference::InferenceError>,
    },
    /// The image engine (or the PNG encoder) failed on a job.
    #[error("job {job_id}: image generation failed: {error}")]
    Image {
        /// The job.
        job_id: String,
        /// The engine's reason.
        error: Box<crate::image::ImageError>,
    },
    /// This worker cannot run the job (another family, a model it does not serve).
    #[error("job {job_id}: {reason}")]
    Unsupported {
        /// The job.
        job_id: String,
        /// Why.
        reason: String,
    },
    /// The spool could not be read or written.
    #[error("spool {path}: {error}")]
    Spool {
        /// The file or folder.
        path: String,
        /// The OS or JSON error.
        error: String,
    },
    /// An image result could not be stored in S3 (one attempt; delivery retries).
    #[error("S3 upload of {key}: {reason}")]
    Upload {
        /// The object key.
        key: String,
        /// The HTTP status and body, or the connection error.
        reason: String,
    },
    /// A model file could not be fetched or did not check out.
    #[error("model {model}: {reason}")]
    Download {
        /// The model name (or URL).
        model: String,
        /// What went wrong, with the URL, path or digests.
        reason: String,
    },
    /// A protocol-level failure (signing, talking to the sequencer).
    #[error(transparent)]
    Protocol(Box<heurist_protocol::ProtocolError>),
}

impl From<heurist_protocol::ProtocolError> for MinerError {
    fn from(e: heurist_protocol::ProtocolError) -> Self {
        Self::Protocol(Box::new(e))
    }
}
