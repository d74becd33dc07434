//! # heurist-miner
//!
//! A native Heurist miner made of the workspace's crates: `heurist-protocol` speaks to the
//! sequencer and signs, `heurist-inference` runs the models. This library holds the parts a
//! test (or a fork) wants to call: the reference-compatible configuration, the spool that
//! keeps every finished job until the sequencer has it, delivery with retries, and the worker
//! loop. `src/main.rs` composes them into the `heurist-miner` binary.

pub mod config;
pub mod deliver;
pub mod devices;
pub mod discover;
pub mod download;
mod error;
pub mod estimate;
pub mod image;
pub mod llm;
pub mod sd;
pub mod signal;
pub mod spool;
pub mod upload;
pub mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::{MinerError, Result};

/// How long past its timeout a finished job is kept and retried (upload and submission):
/// the sequencer takes a late result from a miner that was handed the job while the job has
/// none, so an S3 or network outage of minutes loses nothing. An hour, matching the reference
/// sequencer's scoped S3 keys.
pub const RESULT_GRACE_MS: i64 = 3_600_000;

/// `request` with the hourly signature of the miner's identity (two extra fields the reference
/// sequencer ignores): a sequencer that knows them can tell this miner's requests from anyone
/// else asking under its id. A signing failure leaves the request unsigned, as the reference
/// sends it.
pub(crate) fn signed_request(mut request: heurist_protocol::MinerRequest, wallet: &heurist_protocol::IdentityWallet) -> heurist_protocol::MinerRequest {
    if let Err(e) = request.sign(wallet, now_s()) {
        tracing::warn!(error = %e, "could not sign the job request; sending it unsigned");
    }
    request
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
