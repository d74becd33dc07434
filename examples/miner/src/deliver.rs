//! Delivering a finished job: sign, submit, retry with backoff until the sequencer has it or
//! the job's deadline passes. Only the sequencer's acknowledgement (or its word that it has
//! the result already) removes a job from the spool.

use std::time::Duration;

use heurist_protocol::client::SequencerClient;
use heurist_protocol::{IdentityWallet, ProtocolError};

use crate::spool::{Finished, Spool};
use crate::{now_ms, now_s};

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The sequencer accepted it.
    Accepted,
    /// The sequencer had it already (an earlier attempt arrived but its answer was lost).
    AlreadyThere,
    /// The sequencer refused it for good (4xx); kept in `refused/` of the spool.
    Refused(String),
    /// Its deadline passed before the sequencer took it; dropped with a log line.
    Expired,
    /// Shutdown was asked for while retrying; still in the spool for the next start.
    Interrupted,
}

/// Backoff between attempts: 250 ms doubling to 8 s, with up to 25% jitter so that many
/// miners coming back after an outage do not knock together.
fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(5)).min(8_000);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base + jitter)
}

/// Submits `job` until it lands, is refused, expires, or `stop` turns true.
pub async fn deliver(
    client: &SequencerClient,
    wallet: &IdentityWallet,
    spool: &Spool,
    job: &Finished,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Delivery {
    let mut attempt = 0u32;
    loop {
        if now_ms() > job.expires_at_ms {
            tracing::warn!(job_id = job.job_id, "deadline passed before the sequencer took the result: dropped");
            let _ = spool.remove(&job.job_id);
            return Delivery::Expired;
        }
        let outcome = match job.signed(wallet, now_s()) {
            Ok(body) => client.submit(&body).await,
            Err(e) => Err(match e {
                crate::error::MinerError::Protocol(p) => *p,
                other => ProtocolError::InvalidField { field: "signature", value: String::new(), reason: other.to_string() },
            }),
        };
        match outcome {
            Ok(_) => {
                if let Err(e) = spool.remove(&job.job_id) {
                    tracing::error!(job_id = job.job_id, error = %e, "submitted, but the spool file could not be removed");
                }
                return Delivery::Accepted;
            }
            Err(ProtocolError::Status { status: 409, .. }) => {
                let _ = spool.remove(&job.job_id);
                return Delivery::AlreadyThere;
            }
            Err(ProtocolError::Status { status, body, .. }) if (400..500).contains(&status) && status != 408 && status != 429 => {
                tracing::error!(job_id = job.job_id, status, body, "sequencer refused the result");
                let _ = spool.set_aside(&job.job_id);
                return Delivery::Refused(format!("HTTP {status}: {body}"));
            }
            Err(e) => {
                let wait = backoff(attempt);
                tracing::warn!(job_id = job.job_id, attempt, error = %e, wait_ms = wait.as_millis() as u64, "submission failed; retrying");
                attempt += 1;
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return Delivery::Interrupted,
                }
            }
        }
    }
}
