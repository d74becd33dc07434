//! The sequencer's errors, each with the HTTP status it answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Result alias.
pub type Result<T, E = SequencerError> = std::result::Result<T, E>;

/// Everything a sequencer request or its storage can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SequencerError {
    /// The body did not decode, or broke a protocol rule.
    #[error("{0}")]
    BadRequest(#[from] heurist_protocol::ProtocolError),
    /// A header or field the endpoint needs is missing or malformed.
    #[error("{what}: {reason}")]
    BadInput {
        /// The header or field.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// No or wrong API key on a client endpoint.
    #[error("missing or unknown API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The model is not served by this sequencer.
    #[error("unknown model {model_id:?}: not in the registry this sequencer serves")]
    UnknownModel {
        /// The model asked for.
        model_id: String,
    },
    /// `model_input` is of the wrong family for the model.
    #[error("model {model_id:?} is a {expected} model but the job's model_input is {got}")]
    WrongFamily {
        /// The model.
        model_id: String,
        /// The family it serves.
        expected: &'static str,
        /// The family of the input.
        got: String,
    },
    /// The job id is taken.
    #[error("job {job_id:?} exists already")]
    DuplicateJob {
        /// The id.
        job_id: String,
    },
    /// No such job.
    #[error("no job {job_id:?}")]
    UnknownJob {
        /// The id.
        job_id: String,
    },
    /// The job was never handed to this miner.
    #[error("job {job_id:?} was never handed to {miner_id}: {}", where_it_is(*status, assigned_to.as_deref()))]
    NotAssigned {
        /// The job.
        job_id: String,
        /// Who submitted.
        miner_id: String,
        /// Where the job is.
        status: crate::store::JobStatus,
        /// Who holds it, or last held it.
        assigned_to: Option<String>,
    },
    /// Unsigned requests from one address hold as many jobs as they may.
    #[error("requests from {peer} without the wallet's signature hold {held} jobs already: deliver them first, or sign requests with the bound identity")]
    TooManyAssignments {
        /// The requesting address.
        peer: String,
        /// Jobs it holds.
        held: i64,
    },
    /// A result was accepted for this job already (a replay or a duplicate).
    #[error("job {job_id:?} has a result already")]
    AlreadySubmitted {
        /// The job.
        job_id: String,
    },
    /// A chat result that contradicts what was streamed for the job under the same miner id.
    #[error("job {job_id:?}: the submitted answer {submitted:?} is not the one streamed{} ({streamed:?})", if *complete { "" } else { " (a beginning of it was streamed)" })]
    StreamMismatch {
        /// The job.
        job_id: String,
        /// Whether the stream had ended with `[DONE]`.
        complete: bool,
        /// The streamed text (its beginning).
        streamed: String,
        /// The submitted answer's text (its beginning).
        submitted: String,
    },
    /// The signature, identity or result does not hold.
    #[error("submission refused: {reason}")]
    Refused {
        /// Why, with the evidence.
        reason: String,
    },
    /// The job store failed.
    #[error("job store: {what}: {error}")]
    Store {
        /// The operation.
        what: String,
        /// SQLite's error (shown in this message).
        error: rusqlite::Error,
    },
    /// A stored value that cannot be read back.
    #[error("job store holds a corrupt {what}: {value:?}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// What was found.
        value: String,
    },
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] heurist_points::PointsError),
    /// A service the check needs (the S3 endpoint) did not answer; the client may retry.
    #[error("{what} unavailable: {reason}")]
    Unavailable {
        /// The service.
        what: &'static str,
        /// Its error.
        reason: String,
    },
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

fn where_it_is(status: crate::store::JobStatus, assigned_to: Option<&str>) -> String {
    use crate::store::JobStatus;
    match (status, assigned_to) {
        (JobStatus::Assigned, Some(m)) => format!("it is assigned to {m}"),
        (JobStatus::Queued, _) => "it is queued".into(),
        (JobStatus::Done, _) => "it has a result".into(),
        (JobStatus::Failed, _) => "it failed".into(),
        (JobStatus::Assigned, None) => "it is assigned".into(),
    }
}

impl SequencerError {
    pub(crate) fn store(what: impl std::fmt::Display, error: rusqlite::Error) -> Self {
        Self::Store { what: what.to_string(), error }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(heurist_protocol::ProtocolError::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) | Self::BadInput { .. } | Self::UnknownModel { .. } | Self::WrongFamily { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooManyAssignments { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::DuplicateJob { .. } | Self::AlreadySubmitted { .. } => StatusCode::CONFLICT,
            Self::UnknownJob { .. } => StatusCode::NOT_FOUND,
            // Not 409: a miner takes that as "the sequencer has this result already".
            Self::StreamMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotAssigned { .. } | Self::Refused { .. } => StatusCode::FORBIDDEN,
            Self::Store { .. } | Self::Corrupt { .. } | Self::Ledger(_) | Self::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for SequencerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}
