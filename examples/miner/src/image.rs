//! Image jobs: the seam an image engine plugs into ([`ImageRunner`]), PNG encoding, and the
//! worker that polls for image jobs, runs them one at a time, spools the PNG, uploads it to
//! S3 with the job's temporary credentials and submits its key.
//!
//! The order is what makes a finished image impossible to lose: the PNG and its spool record
//! are on disk before the upload starts; the record says the upload is pending until the
//! S3 server has answered `200`; only then is the `S3Key` submitted (`deliver.rs`). A crash
//! anywhere in between resumes from the spool on the next start.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use heurist_points::JobRecord;
use heurist_protocol::client::SequencerClient;
use heurist_protocol::{
    HeartbeatClock, IdentityWallet, Job, JobParams, MinerId, MinerLimits, MinerRequest, ModelKind, Nullable, SdParams,
    SubmitResult,
};
use tokio::sync::watch;

use crate::deliver::{Delivery, deliver_with};
use crate::error::{MinerError, Result};
use crate::signal::{ModelChoice, SignalSetup, signal_loop};
use crate::spool::{Finished, PendingUpload, Spool};
use crate::upload::Uploader;
use crate::worker::{PollPace, Polled, Stats, pause_unless_stopped};
use crate::{now_ms, now_s};

/// An 8-bit RGB image, rows top to bottom, as an engine produces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    /// Wraps `rgb` (`width * height * 3` bytes). A size that does not match is an error
    /// naming both.
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> std::result::Result<Self, ImageError> {
        let want = width as usize * height as usize * 3;
        if width == 0 || height == 0 || rgb.len() != want {
            return Err(ImageError::Size { width, height, len: rgb.len() });
        }
        Ok(Self { width, height, rgb })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels, RGB, row-major.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The PNG file (8-bit RGB, default compression), what the network stores.
    pub fn to_png(&self) -> std::result::Result<Vec<u8>, ImageError> {
        let mut out = Vec::with_capacity(self.rgb.len() / 2 + 1024);
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| ImageError::Png(e.to_string()))?;
        writer.write_image_data(&self.rgb).map_err(|e| ImageError::Png(e.to_string()))?;
        writer.finish().map_err(|e| ImageError::Png(e.to_string()))?;
        Ok(out)
    }
}

/// What an image engine or the PNG encoder can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The pixel buffer does not fit the size.
    #[error("image of {width}x{height} needs {} RGB bytes, got {len}", *width as usize * *height as usize * 3)]
    Size {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Bytes given.
        len: usize,
    },
    /// The PNG encoder failed.
    #[error("PNG encoding: {0}")]
    Png(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] heurist_inference::InferenceError),
    /// This runner does not serve the model.
    #[error("model {0:?} is not loaded by this image runner")]
    UnknownModel(String),
}

/// An image engine, as the worker sees it: a clamped job in, an RGB image out. Runs on a
/// blocking thread, one job at a time per runner (a GPU is busy with one image).
///
/// The SD engines of `heurist-inference` implement it; so can a fork's own pipeline.
pub trait ImageRunner: Send + Sync {
    /// Generates the image of `params` (already clamped: size, steps, seed) on `model_id`.
    fn generate(&self, model_id: &str, params: &SdParams) -> std::result::Result<Image, ImageError>;

    /// Whether `model_id` is loaded. The default says yes to all: a runner that cannot load
    /// models later serves what it was built with, and the worker only switches among those.
    fn serves(&self, _model_id: &str) -> bool {
        true
    }

    /// Loads `model_id` from the checked single-file `checkpoint` (a model `miner_signal`
    /// switched to that was found in the cache). The default cannot.
    fn load(&self, model_id: &str, _checkpoint: &std::path::Path) -> std::result::Result<(), ImageError> {
        Err(ImageError::UnknownModel(model_id.to_owned()))
    }
}

/// What an image worker needs.
pub struct ImageWorker {
    /// Its miner id.
    pub miner_id: MinerId,
    /// Its identity.
    pub wallet: Arc<IdentityWallet>,
    /// The model it asks jobs for, which `miner_signal` answers may switch among those
    /// present (every `limits.signal_interval` seconds; 0: no signals).
    pub model: Arc<ModelChoice>,
    /// The engine.
    pub runner: Arc<dyn ImageRunner>,
    /// Where results go.
    pub uploader: Uploader,
    /// The bucket (`[storage].s3_bucket`; the network's is `heurist-images`).
    pub bucket: String,
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

impl ImageWorker {
    fn count(&self, d: &Delivery) {
        match d {
            Delivery::Accepted | Delivery::AlreadyThere => self.stats.done.fetch_add(1, Ordering::Relaxed),
            Delivery::Refused(_) | Delivery::Expired => self.stats.failed.fetch_add(1, Ordering::Relaxed),
            Delivery::Interrupted => 0,
        };
    }

    async fn deliver(&self, job: &Finished, stop: &watch::Receiver<bool>) -> Delivery {
        deliver_with(&self.client, &self.wallet, &self.spool, Some(&self.uploader), job, stop).await
    }

    /// Uploads and submits what an earlier run left in the spool.
    pub async fn drain_spool(&self, stop: &watch::Receiver<bool>) -> Result<()> {
        for job in self.spool.pending()? {
            if job.miner_id != self.miner_id {
                continue;
            }
            tracing::info!(job_id = job.job_id, upload_pending = job.upload.is_some(), "resubmitting a result from the spool");
            let d = self.deliver(&job, stop).await;
            self.count(&d);
        }
        Ok(())
    }

    /// Polls and serves, one job at a time, until `stop` turns true; the job in progress is
    /// finished and delivered first.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> Result<()> {
        self.drain_spool(&stop).await?;
        if self.limits.signal_interval > 0 {
            let setup = SignalSetup {
                miner_id: self.miner_id.clone(),
                kind: ModelKind::Sd,
                hardware: self.hardware.clone(),
                version: self.version.clone(),
                interval: Duration::from_secs(self.limits.signal_interval),
            };
            tokio::spawn(signal_loop(self.client.clone(), setup, self.model.clone(), stop.clone()));
        }
        let mut clock = HeartbeatClock::default();
        let mut poll = PollPace::new(self.limits.sleep_duration);
        // The model it starts on was loaded at start and is never unloaded: where a failed
        // switch goes back to.
        let home = self.model.current();
        let mut serving = home.clone();
        while !*stop.borrow() {
            let model_id = self.model.current();
            // Switched by a signal (between jobs: this worker runs one at a time), or unloaded
            // by another worker on the same runner that switched elsewhere.
            if !self.runner.serves(&model_id) && !self.ensure_loaded(&model_id).await {
                if model_id == home {
                    // Nothing else to go back to: ask for it anyway; its jobs fail alone.
                    tracing::error!(miner = %self.miner_id, model = model_id, "the image model this worker started on is not loaded");
                } else {
                    self.model.fall_back(&home, &model_id);
                    continue;
                }
            }
            if model_id != serving {
                tracing::info!(miner = %self.miner_id, from = serving, to = model_id, "now serving");
                serving = model_id.clone();
            }
            let heartbeat = clock.due(&self.miner_id, now_s());
            let request = MinerRequest {
                miner_id: self.miner_id.clone(),
                model_id,
                min_deadline: Some(self.limits.min_deadline),
                hardware: heartbeat.then(|| self.hardware.clone()),
                version: heartbeat.then(|| self.version.clone()),
                extra: Default::default(),
            };
            let request = crate::signed_request(request, &self.wallet);
            let asked = Instant::now();
            match poll.answer(self.client.request_job(&request).await) {
                Polled::Job(job) => self.serve(*job, asked.elapsed().as_secs_f64(), &stop).await,
                Polled::Wait(pause) => pause_unless_stopped(pause, &stop).await,
            }
        }
        Ok(())
    }

    /// Makes the runner serve `model`: loaded already, or loaded now from the file the choice
    /// found for it (on a blocking thread). Says whether it serves it.
    async fn ensure_loaded(&self, model: &str) -> bool {
        if self.runner.serves(model) {
            return true;
        }
        let Some(path) = self.model.file(model) else {
            tracing::error!(miner = %self.miner_id, model, "switched to an image model with no file to load");
            return false;
        };
        tracing::info!(miner = %self.miner_id, model, file = %path.display(), "loading the image model the signal asked for");
        let (runner, id) = (self.runner.clone(), model.to_owned());
        match tokio::task::spawn_blocking(move || runner.load(&id, &path)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::error!(miner = %self.miner_id, model, %error, "the image model could not be loaded; staying on the one loaded");
                false
            }
            Err(error) => {
                tracing::error!(miner = %self.miner_id, model, %error, "the load task died");
                false
            }
        }
    }

    async fn serve(&self, job: Job, request_latency: f64, stop: &watch::Receiver<bool>) {
        let job_id = job.job_id.clone();
        match self.run_job_priced(job, request_latency).await {
            Ok((finished, mut record)) => {
                let d = self.deliver(&finished, stop).await;
                tracing::info!(job_id, outcome = ?d, "image delivered");
                self.count(&d);
                if matches!(d, Delivery::Accepted) {
                    record.latency_s = request_latency + (now_ms() - finished.received_at_ms) as f64 / 1000.0;
                    self.stats.credit(record);
                }
            }
            Err(e) => {
                tracing::error!(job_id, error = %e, "image job failed");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs one job to a spooled PNG whose upload is pending.
    pub async fn run_job(&self, job: Job, request_latency: f64) -> Result<Finished> {
        Ok(self.run_job_priced(job, request_latency).await?.0)
    }

    /// [`ImageWorker::run_job`], and the record the job's points are estimated from (size and
    /// steps as clamped; the latency filled in once the result is accepted).
    async fn run_job_priced(&self, job: Job, request_latency: f64) -> Result<(Finished, JobRecord)> {
        let received_at_ms = now_ms();
        let clamped = self
            .limits
            .clamp(&job, rand::random::<u64>)
            .map_err(|error| MinerError::BadJob { job_id: job.job_id.clone(), error: Box::new(error) })?;
        let JobParams::Sd(params) = clamped.params else {
            return Err(MinerError::Unsupported { job_id: job.job_id, reason: "a chat job sent to an image worker".into() });
        };
        let Some(credentials) = job.temp_credentials.clone() else {
            return Err(MinerError::Unsupported {
                job_id: job.job_id,
                reason: "image job without temp_credentials: nowhere to upload the result".into(),
            });
        };
        let record = JobRecord {
            model_id: job.model_id.clone(),
            width: params.width,
            height: params.height,
            steps: params.steps,
            ..JobRecord::default()
        };
        let started = Instant::now();
        let runner = self.runner.clone();
        let model = job.model_id.clone();
        let id = job.job_id.clone();
        let png = tokio::task::spawn_blocking(move || runner.generate(&model, &params).and_then(|img| img.to_png()))
            .await
            .map_err(|e| MinerError::Unsupported { job_id: id.clone(), reason: format!("image task died: {e}") })?
            .map_err(|e| MinerError::Image { job_id: id.clone(), error: Box::new(e) })?;
        let inference_latency = started.elapsed().as_secs_f64();
        self.stats.busy_ms.fetch_add((inference_latency * 1000.0) as u64, Ordering::Relaxed);
        let finished = Finished {
            job_id: job.job_id.clone(),
            miner_id: self.miner_id.clone(),
            result: SubmitResult::S3Key(SubmitResult::s3_key_for(&job.job_id, &self.miner_id)),
            request_latency,
            loading_latency: Nullable::Absent,
            inference_latency,
            upload_latency: Nullable::Absent,
            extra: Default::default(),
            usage: None,
            received_at_ms,
            expires_at_ms: received_at_ms + 1000 * self.limits.sd_timeout_seconds as i64 + crate::RESULT_GRACE_MS,
            upload: Some(PendingUpload { bucket: self.bucket.clone(), credentials }),
        };
        // The PNG, then the record, on disk before the upload starts.
        self.spool.put_with_image(&finished, &png)?;
        Ok((finished, record))
    }
}
