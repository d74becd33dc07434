//! Delivering a finished job: upload an image's PNG to S3 if that is still to do, then sign,
//! submit, and retry either step with backoff until the sequencer has it or the job's
//! deadline passes. The `S3Key` is submitted only after the S3 server has stored the PNG,
//! and only the sequencer's acknowledgement (or its word that it has the result already)
//! removes a job from the spool.

use std::time::Duration;

use heurist_protocol::client::SequencerClient;
use heurist_protocol::{IdentityWallet, ProtocolError, SubmitResult};

use crate::spool::{Finished, Spool};
use crate::upload::Uploader;
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

/// Submits `job` until it lands, is refused, expires, or `stop` turns true. For a chat
/// result; an image whose upload is pending needs [`deliver_with`] and an uploader.
pub async fn deliver(
    client: &SequencerClient,
    wallet: &IdentityWallet,
    spool: &Spool,
    job: &Finished,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Delivery {
    deliver_with(client, wallet, spool, None, job, stop).await
}

/// Waits `wait`, or returns `false` at once if `stop` turns true meanwhile.
async fn pause(wait: Duration, stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Uploads `job`'s PNG if that is pending (with `uploader`), then submits it, until it
/// lands, is refused, expires, or `stop` turns true.
pub async fn deliver_with(
    client: &SequencerClient,
    wallet: &IdentityWallet,
    spool: &Spool,
    uploader: Option<&Uploader>,
    job: &Finished,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Delivery {
    let mut job = job.clone();
    let mut attempt = 0u32;
    loop {
        if now_ms() > job.expires_at_ms {
            tracing::warn!(job_id = job.job_id, "deadline passed before the sequencer took the result: dropped");
            let _ = spool.remove(&job.job_id);
            return Delivery::Expired;
        }
        if let Some(pending) = job.upload.clone() {
            let Some(uploader) = uploader else {
                tracing::error!(job_id = job.job_id, "an image result to upload, but no S3 endpoint is configured");
                let _ = spool.set_aside(&job.job_id);
                return Delivery::Refused("no S3 endpoint configured for a pending upload".into());
            };
            let png = match spool.image(&job.job_id) {
                Ok(png) => png,
                Err(e) => {
                    tracing::error!(job_id = job.job_id, error = %e, "the spooled PNG is unreadable");
                    let _ = spool.set_aside(&job.job_id);
                    return Delivery::Refused(e.to_string());
                }
            };
            let SubmitResult::S3Key(key) = job.result.clone() else {
                tracing::error!(job_id = job.job_id, "a pending upload on a chat result: set aside");
                let _ = spool.set_aside(&job.job_id);
                return Delivery::Refused("a pending upload on a chat result".into());
            };
            let started = std::time::Instant::now();
            match uploader.put(&pending.credentials, &pending.bucket, &key, png).await {
                Ok(()) => {
                    job.upload = None;
                    job.upload_latency = heurist_protocol::Nullable::Value(started.elapsed().as_secs_f64());
                    // Remember it is uploaded; if this write fails, a restart uploads again
                    // (the same bytes to the same key), which is harmless.
                    if let Err(e) = spool.put(&job) {
                        tracing::warn!(job_id = job.job_id, error = %e, "uploaded, but the spool record could not be updated");
                    }
                    attempt = 0;
                }
                Err(e) => {
                    let wait = backoff(attempt);
                    tracing::warn!(job_id = job.job_id, attempt, error = %e, wait_ms = wait.as_millis() as u64, "S3 upload failed; retrying");
                    attempt += 1;
                    if !pause(wait, stop).await {
                        return Delivery::Interrupted;
                    }
                    continue;
                }
            }
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
                if !pause(wait, stop).await {
                    return Delivery::Interrupted;
                }
            }
        }
    }
}
