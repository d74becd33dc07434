//! One worker: one miner id polling the sequencer, running jobs on its engine, spooling and
//! delivering every result. A job that fails to decode or run fails alone; an unreachable
//! sequencer means waiting and trying again, never an exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use heurist_points::JobRecord;
use heurist_protocol::client::SequencerClient;
use heurist_protocol::{
    HeartbeatClock, IdentityWallet, Job, JobParams, MinerId, MinerLimits, MinerRequest, ModelKind, Nullable,
    RequestAnswer, SubmitResult, TokenUsage,
};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::deliver::{Delivery, deliver};
use crate::error::{MinerError, Result};
use crate::estimate::Estimator;
use crate::signal::{SignalSetup, signal_loop};
use crate::spool::{Finished, Spool};
use crate::{llm, now_ms, now_s};

/// Counters a status line shows.
#[derive(Debug, Default)]
pub struct Stats {
    /// Results the sequencer took.
    pub done: AtomicU64,
    /// Jobs that failed to decode or run, or whose result was refused or expired.
    pub failed: AtomicU64,
    /// Tokens generated.
    pub tokens: AtomicU64,
    /// Milliseconds spent generating.
    pub busy_ms: AtomicU64,
    /// Points of the accepted jobs as `estimator` prices them, in micro-points (Llama for
    /// chat, Waifu for images).
    pub points_micro: AtomicU64,
    /// What prices accepted jobs; none: no points are estimated.
    pub estimator: Option<Arc<Estimator>>,
}

impl Stats {
    /// Counters whose accepted jobs are priced by `estimator`.
    pub fn estimating(estimator: Arc<Estimator>) -> Self {
        Self { estimator: Some(estimator), ..Self::default() }
    }

    /// Adds the estimated points of an accepted job.
    pub fn credit(&self, record: JobRecord) {
        if let Some(points) = self.estimator.as_ref().and_then(|e| e.points(record)) {
            self.points_micro.fetch_add(points.micro(), Ordering::Relaxed);
        }
    }

    /// The one-line status of worker `id`: jobs done and failed, speed (tokens per second for
    /// chat, seconds per image for images) and the estimated points.
    pub fn status_line(&self, id: &str, image: bool) -> String {
        let (tokens, ms) = (self.tokens.load(Ordering::Relaxed), self.busy_ms.load(Ordering::Relaxed).max(1));
        let (done, failed) = (self.done.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
        let (rate, currency) = if image {
            (format!("{:.2} s/image", ms as f64 / 1000.0 / (done + failed).max(1) as f64), "Waifu")
        } else {
            (format!("{:.1} tok/s", tokens as f64 * 1000.0 / ms as f64), "Llama")
        };
        let mut line = format!("{id}: {done} done, {failed} failed, {rate}");
        if self.estimator.is_some() {
            let points = self.points_micro.load(Ordering::Relaxed) as f64 / 1e6;
            line.push_str(&format!(", ~{points:.4} {currency} Points"));
        }
        line
    }
}

/// What one `miner_request` came to, for a worker's loop: a job to run, or a pause before
/// the next request.
#[derive(Debug)]
pub enum Polled {
    /// Run it.
    Job(Box<Job>),
    /// Ask again after this long (no job, an operator warning, or a failure's backoff).
    Wait(Duration),
}

/// The request loop's arms other than a job, shared by the chat and image workers: an
/// operator warning is logged and waited on like "no job" (`sleep_duration`); an
/// unreachable or failing sequencer is waited on with a backoff of 500 ms doubled per
/// failure in a row, capped at 30 s, so a sequencer that is down is not hammered and one
/// that comes back is found within half a minute.
#[derive(Debug)]
pub struct PollPace {
    idle: Duration,
    failures: u32,
}

/// The longest backoff after failed requests.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl PollPace {
    /// Pacing for a worker whose idle pause is `sleep_duration` seconds.
    pub fn new(sleep_duration: u64) -> Self {
        Self { idle: Duration::from_secs(sleep_duration), failures: 0 }
    }

    /// The pause after `n` failures in a row: 500 ms << n, at most [`MAX_BACKOFF`].
    pub fn backoff(n: u32) -> Duration {
        Duration::from_millis(500u64 << n.min(6)).min(MAX_BACKOFF)
    }

    /// Turns one request's answer into what the loop does next, logging warnings and
    /// failures.
    pub fn answer(&mut self, answer: heurist_protocol::Result<RequestAnswer>) -> Polled {
        match answer {
            Ok(RequestAnswer::Job(job)) => {
                self.failures = 0;
                Polled::Job(job)
            }
            Ok(RequestAnswer::Warning(w)) => {
                self.failures = 0;
                tracing::warn!(message = w, "the sequencer says");
                Polled::Wait(self.idle)
            }
            Ok(RequestAnswer::NoJob(_)) => {
                self.failures = 0;
                Polled::Wait(self.idle)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let wait = Self::backoff(self.failures);
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "sequencer unreachable");
                Polled::Wait(wait)
            }
        }
    }
}

/// Sleeps `pause`, or less if `stop` turns true meanwhile.
pub async fn pause_unless_stopped(pause: Duration, stop: &watch::Receiver<bool>) {
    let mut s = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = s.wait_for(|v| *v) => {}
    }
}

/// What a chat worker needs.
pub struct LlmWorker {
    /// Its miner id.
    pub miner_id: MinerId,
    /// Its identity.
    pub wallet: Arc<IdentityWallet>,
    /// The chat model it serves (shared with the other chat workers), and those `miner_signal`
    /// may switch it to.
    pub models: Arc<llm::ChatModels>,
    /// The sequencer.
    pub client: SequencerClient,
    /// The spool.
    pub spool: Spool,
    /// Limits and intervals.
    pub limits: MinerLimits,
    /// Sent as `version` in heartbeats.
    pub version: String,
    /// Sent as `hardware` in heartbeats.
    pub hardware: String,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl LlmWorker {
    /// Submits what an earlier run left in the spool.
    pub async fn drain_spool(&self, stop: &watch::Receiver<bool>) -> Result<()> {
        for job in self.spool.pending()? {
            if job.miner_id != self.miner_id {
                continue;
            }
            tracing::info!(job_id = job.job_id, "resubmitting a result from the spool");
            self.count(&deliver(&self.client, &self.wallet, &self.spool, &job, stop).await);
        }
        Ok(())
    }

    fn count(&self, d: &Delivery) {
        match d {
            Delivery::Accepted | Delivery::AlreadyThere => self.stats.done.fetch_add(1, Ordering::Relaxed),
            Delivery::Refused(_) | Delivery::Expired => self.stats.failed.fetch_add(1, Ordering::Relaxed),
            Delivery::Interrupted => 0,
        };
    }

    /// Polls and serves until `stop` turns true, then finishes the jobs in flight (their
    /// results are delivered, or left in the spool if a second stop comes first). Signals
    /// every `signal_interval` (none when it is 0); when the answer switches the model, the
    /// jobs in flight are finished on the old engine before the new one is loaded and asked
    /// jobs for.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> Result<()> {
        self.drain_spool(&stop).await?;
        if self.limits.signal_interval > 0 {
            let setup = SignalSetup {
                miner_id: self.miner_id.clone(),
                kind: ModelKind::Llm,
                hardware: self.hardware.clone(),
                version: self.version.clone(),
                interval: Duration::from_secs(self.limits.signal_interval),
            };
            tokio::spawn(signal_loop(self.client.clone(), setup, self.models.choice(), stop.clone()));
        }
        let mut clock = HeartbeatClock::default();
        let slots = Arc::new(Semaphore::new(self.limits.concurrency_soft_limit.max(1) as usize));
        let mut in_flight = JoinSet::new();
        let mut poll = PollPace::new(self.limits.sleep_duration);
        while !*stop.borrow() {
            while in_flight.try_join_next().is_some() {}
            if self.models.wants_switch() {
                // Jobs were asked for under the old model: they finish on its engine first.
                while in_flight.join_next().await.is_some() {}
                self.models.switch().await;
                continue;
            }
            let permit = match slots.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => break,
            };
            // Stop may have come while every slot was busy: take no new job after it.
            if *stop.borrow() {
                break;
            }
            let heartbeat = clock.due(&self.miner_id, now_s());
            let (model_id, engine) = self.models.loaded();
            let request = MinerRequest {
                miner_id: self.miner_id.clone(),
                model_id,
                min_deadline: None,
                hardware: heartbeat.then(|| self.hardware.clone()),
                version: heartbeat.then(|| self.version.clone()),
                extra: Default::default(),
            };
            let request = crate::signed_request(request, &self.wallet);
            let asked = Instant::now();
            match poll.answer(self.client.request_job(&request).await) {
                Polled::Job(job) => {
                    let me = self.clone();
                    let stop = stop.clone();
                    let request_latency = asked.elapsed().as_secs_f64();
                    in_flight.spawn(async move {
                        let _permit = permit;
                        me.serve(*job, engine, request_latency, &stop).await;
                    });
                }
                Polled::Wait(pause) => {
                    drop(permit);
                    pause_unless_stopped(pause, &stop).await;
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
        Ok(())
    }

    /// Runs one job; whatever happens, the worker goes on.
    async fn serve(&self, job: Job, engine: Arc<llm::SharedEngine>, request_latency: f64, stop: &watch::Receiver<bool>) {
        let job_id = job.job_id.clone();
        match self.run_job(job, engine, request_latency).await {
            Ok((finished, mut record)) => {
                let d = deliver(&self.client, &self.wallet, &self.spool, &finished, stop).await;
                tracing::info!(job_id, outcome = ?d, "job delivered");
                self.count(&d);
                if matches!(d, Delivery::Accepted) {
                    record.latency_s = request_latency + (now_ms() - finished.received_at_ms) as f64 / 1000.0;
                    self.stats.credit(record);
                }
            }
            Err(e) => {
                tracing::error!(job_id, error = %e, "job failed");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs a job to a spooled result, and the record its points are estimated from (its
    /// latency filled in once the result is accepted).
    async fn run_job(&self, job: Job, engine: Arc<llm::SharedEngine>, request_latency: f64) -> Result<(Finished, JobRecord)> {
        let received_at_ms = now_ms();
        let clamped = self
            .limits
            .clamp(&job, rand::random::<u64>)
            .map_err(|error| MinerError::BadJob { job_id: job.job_id.clone(), error: Box::new(error) })?;
        let JobParams::Llm(params) = &clamped.params else {
            return Err(MinerError::Unsupported { job_id: job.job_id, reason: "an image job sent to a chat worker".into() });
        };
        let started = Instant::now();
        let out = if params.stream {
            llm::run_and_stream(engine, &self.client, &self.miner_id, &job.job_id, params).await?
        } else {
            llm::run(engine, &job.job_id, params).await?
        };
        let inference_latency = started.elapsed().as_secs_f64();
        self.stats.tokens.fetch_add(out.completion_tokens as u64, Ordering::Relaxed);
        self.stats.busy_ms.fetch_add((inference_latency * 1000.0) as u64, Ordering::Relaxed);
        let finished = Finished {
            job_id: job.job_id.clone(),
            miner_id: self.miner_id.clone(),
            result: SubmitResult::from_choices(&out.choices)?,
            request_latency,
            loading_latency: Nullable::Absent,
            inference_latency,
            upload_latency: Nullable::Absent,
            extra: serde_json::Map::new(),
            usage: Some(TokenUsage { prompt_tokens: out.prompt_tokens as u64, completion_tokens: out.completion_tokens as u64 }),
            received_at_ms,
            // A late result earns nothing but the sequencer may still take it; past twice the
            // timeout it is dropped.
            expires_at_ms: received_at_ms + 1000 * self.limits.llm_timeout_seconds as i64 + crate::RESULT_GRACE_MS,
            upload: None,
        };
        // On disk before anything is sent: from here on the result cannot be lost.
        self.spool.put(&finished)?;
        let record = JobRecord {
            model_id: job.model_id.clone(),
            input_tokens: out.prompt_tokens as u64,
            output_tokens: out.completion_tokens as u64,
            ..JobRecord::default()
        };
        Ok((finished, record))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use heurist_protocol::ProtocolError;

    fn unreachable() -> heurist_protocol::Result<RequestAnswer> {
        Err(ProtocolError::Status { endpoint: "http://127.0.0.1:1/miner_request".into(), status: 503, body: "down".into() })
    }

    #[test]
    fn backoff_doubles_from_half_a_second_and_stops_at_thirty() {
        let mut pace = PollPace::new(3);
        let mut waits = Vec::new();
        for _ in 0..9 {
            match pace.answer(unreachable()) {
                Polled::Wait(d) => waits.push(d.as_millis() as u64),
                Polled::Job(_) => panic!("no job in an error"),
            }
        }
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
        assert_eq!(PollPace::backoff(u32::MAX), MAX_BACKOFF);
        // A warning or "no job" means the sequencer answered: the idle pause, and the next
        // failure starts again from the bottom.
        let warned = pace.answer(Ok(RequestAnswer::Warning("update your miner".into())));
        assert!(matches!(warned, Polled::Wait(d) if d == Duration::from_secs(3)), "{warned:?}");
        assert!(matches!(pace.answer(unreachable()), Polled::Wait(d) if d == Duration::from_millis(1000)));
    }
}
