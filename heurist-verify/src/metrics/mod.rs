//! Claimed hardware and latencies against physics and against the miner's peers.
//!
//! A miner reports its GPU (`miner_signal`'s `hardware`, as `nvidia-smi` names it) and, with
//! each result, how long inference took (`miner_submit`'s `inference_latency`). Both are
//! cheap to lie about. This module flags two kinds of claim, each [`Flag`] saying why with
//! the numbers:
//!
//! - **physically impossible**, one job at a time ([`MetricsChecker::check`]): inference
//!   faster than the job's FLOPs at the GPU's peak dense FP16 rate (the FLOPs model is in
//!   [`flops`], a lower bound per family); a GPU below the image category's minimum GPU; a
//!   GPU without the VRAM the rule set asks for the model (or, for a model the rule set does
//!   not list, that the registry's `size_gb` says its weights need).
//! - **statistically implausible**, over many jobs ([`population`]): a miner whose latencies
//!   are far below those of the other miners with the same GPU and model, or whose latencies
//!   vary far less than real timings do.
//!
//! The GPU catalogue and the rule set come from `heurist-points` (no ledger backend is
//! needed, so this works with `--no-default-features`), the model's type from the
//! `heurist-protocol` registry. An unknown GPU or model, a model without a FLOPs model, or a
//! result paired with no job is a typed error, never a flag: a flag is evidence against the
//! miner and must rest on known numbers.
//!
//! ```
//! use heurist_points::{GpuCatalogue, RuleSet};
//! use heurist_protocol::Registry;
//! use heurist_verify::metrics::{Claim, Flag, MetricsChecker, Work};
//!
//! let registry = Registry::bundled()?;
//! let rules = RuleSet::preset("seed")?;
//! let checker = MetricsChecker::new(&registry, &rules, GpuCatalogue::builtin()?);
//! let claim = Claim {
//!     miner_id: "0xabc-gpu0".into(),
//!     job_id: "job-1".into(),
//!     model_id: "SDXL".into(),
//!     work: Work::Image { width: 1024, height: 1024, steps: 25, guided: true },
//!     gpu: "NVIDIA GeForce RTX 4090".into(),
//!     inference_latency_s: 0.5,
//! };
//! let report = checker.check(&claim)?;
//! // 2 x 25 UNet evaluations of >= 6.2 TFLOPs cannot run in 0.5 s at 330 TFLOPs.
//! assert!(matches!(report.flags[..], [Flag::FasterThanPeak { .. }]));
//! assert!(report.min_inference_s > 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod flops;
pub mod population;

use std::fmt;

use heurist_points::{GpuCatalogue, JobKind, JobRecord, PointsError, RuleSet};
use heurist_protocol::{Job, JobParams, MinerLimits, MinerSubmit, Registry};

pub use self::flops::{CostModel, Work};
pub use self::population::{Observation, PopulationThresholds, check_population};

use crate::error::{Result, VerifyError};

/// What a miner claims about one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// Who claims it.
    pub miner_id: String,
    /// The job.
    pub job_id: String,
    /// The registry model name of the job.
    pub model_id: String,
    /// The job's work (tokens recounted by the verifier, or the clamped image size).
    pub work: Work,
    /// The GPU as the miner names it.
    pub gpu: String,
    /// Seconds of inference the miner reports.
    pub inference_latency_s: f64,
}

impl Claim {
    /// The claim of `submit`, the result of `job`, by a miner reporting `gpu`.
    ///
    /// Image work is the job's size and steps after the miner's clamping
    /// ([`MinerLimits::default`]). Chat work needs the token counts (`tokens`: prompt and
    /// answer, recounted with the model's tokenizer): a submission carries no usage.
    /// A submission for another job is [`VerifyError::NoJob`].
    pub fn from_submission(job: &Job, submit: &MinerSubmit, gpu: &str, tokens: Option<(u64, u64)>) -> Result<Self> {
        if submit.job_id != job.job_id {
            return Err(VerifyError::NoJob { job_id: submit.job_id.clone(), miner_id: submit.miner_id.to_string() });
        }
        // The seed does not change the work; a fixed one keeps this deterministic.
        let clamped = MinerLimits::default()
            .clamp(job, || 0)
            .map_err(|e| VerifyError::MalformedJob { job_id: job.job_id.clone(), source: Box::new(e) })?;
        let work = match (&clamped.params, tokens) {
            (JobParams::Sd(sd), _) => {
                Work::Image { width: sd.width, height: sd.height, steps: sd.steps, guided: sd.guidance_scale > 1.0 }
            }
            (JobParams::Llm(_), Some((input_tokens, output_tokens))) => Work::Llm { input_tokens, output_tokens },
            (JobParams::Llm(_), None) => {
                return Err(VerifyError::InvalidClaim {
                    field: "tokens",
                    value: "none".to_owned(),
                    expected: "the prompt and answer token counts of a chat job",
                });
            }
        };
        Ok(Self {
            miner_id: submit.miner_id.to_string(),
            job_id: job.job_id.clone(),
            model_id: job.model_id.clone(),
            work,
            gpu: gpu.to_owned(),
            inference_latency_s: submit.inference_latency,
        })
    }
}

/// The job a submission answers, among `jobs`; none is [`VerifyError::NoJob`].
pub fn job_of<'a>(jobs: impl IntoIterator<Item = &'a Job>, submit: &MinerSubmit) -> Result<&'a Job> {
    jobs.into_iter()
        .find(|j| j.job_id == submit.job_id)
        .ok_or_else(|| VerifyError::NoJob { job_id: submit.job_id.clone(), miner_id: submit.miner_id.to_string() })
}

/// Why a claim cannot be true, with the numbers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Flag {
    /// Inference faster than the job's FLOPs at the GPU's peak.
    FasterThanPeak {
        /// The catalogue name of the GPU.
        gpu: String,
        /// Its peak dense FP16 TFLOPs.
        peak_tflops: f64,
        /// The job's FLOPs (a lower bound).
        flops: f64,
        /// `flops / peak`: no run can be shorter.
        min_s: f64,
        /// The claimed seconds.
        claimed_s: f64,
    },
    /// A GPU below the image category's minimum GPU.
    BelowCategoryMinimum {
        /// The catalogue name of the GPU.
        gpu: String,
        /// The category.
        category: String,
        /// The category's minimum GPUs, one per series.
        minimum: Vec<String>,
    },
    /// A GPU without the memory the model needs.
    NotEnoughVram {
        /// The catalogue name of the GPU.
        gpu: String,
        /// The memory its name guarantees.
        vram_gb: u32,
        /// The memory needed.
        needed_gb: f64,
        /// Where the need comes from (the rule set, or the registry's size of the weights).
        source: &'static str,
    },
    /// A miner's latencies far below its peers' on the same GPU and model.
    FasterThanPeers(population::PeerEvidence),
    /// A miner's latencies far more regular than real timings are.
    TooRegular(population::PeerEvidence),
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flag::FasterThanPeak { gpu, peak_tflops, flops, min_s, claimed_s } => write!(
                f,
                "inference in {claimed_s:.3} s is faster than physically possible: the job needs at least {:.1} TFLOP, \
                 which takes at least {min_s:.3} s on a {gpu} at its peak {peak_tflops} TFLOPs",
                flops / 1e12
            ),
            Flag::BelowCategoryMinimum { gpu, category, minimum } => {
                write!(f, "{gpu} is below the minimum GPU of image category {category:?} ({})", minimum.join(", "))
            }
            Flag::NotEnoughVram { gpu, vram_gb, needed_gb, source } => {
                write!(f, "{gpu} guarantees {vram_gb} GB of VRAM; the model needs {needed_gb} GB ({source})")
            }
            Flag::FasterThanPeers(e) => write!(
                f,
                "miner {} is {:.2}x faster than its {} peers on {} / {} over {} jobs (median latency {:.2}x the \
                 physical bound, peers {:.2}x; robust z = {:.1})",
                e.miner_id,
                (e.peers_median - e.median).exp(),
                e.peers,
                e.gpu,
                e.model_id,
                e.jobs,
                e.median.exp(),
                e.peers_median.exp(),
                e.z
            ),
            Flag::TooRegular(e) => write!(
                f,
                "miner {}'s latencies on {} / {} vary by {:.2}% over {} jobs (robust spread of log latency), where its {} \
                 peers' vary by {:.2}% (median): too regular to be measured",
                e.miner_id,
                e.gpu,
                e.model_id,
                e.spread * 100.0,
                e.jobs,
                e.peers,
                e.peers_spread * 100.0
            ),
        }
    }
}

/// The physical checks of one claim.
#[derive(Clone, Debug, PartialEq)]
pub struct JobMetrics {
    /// The catalogue name of the claimed GPU.
    pub gpu: String,
    /// The job's FLOPs, a lower bound.
    pub flops: f64,
    /// The shortest inference the GPU could do it in.
    pub min_inference_s: f64,
    /// `claimed / min_inference_s`: how far above the physical bound the claim is (an
    /// honest run is above 1; [`population`] compares miners on it).
    pub bound_multiple: f64,
    /// What cannot be true, empty when nothing.
    pub flags: Vec<Flag>,
    /// Checks that could not be made, and why (no VRAM figure for the model).
    pub unchecked: Vec<String>,
}

/// Checks claims against a registry, a rule set and a GPU catalogue.
#[derive(Clone, Copy, Debug)]
pub struct MetricsChecker<'a> {
    registry: &'a Registry,
    rules: &'a RuleSet,
    catalogue: &'a GpuCatalogue,
}

impl<'a> MetricsChecker<'a> {
    /// A checker; `GpuCatalogue::builtin()` is the usual catalogue.
    pub fn new(registry: &'a Registry, rules: &'a RuleSet, catalogue: &'a GpuCatalogue) -> Self {
        Self { registry, rules, catalogue }
    }

    /// The physical checks of one claim.
    pub fn check(&self, claim: &Claim) -> Result<JobMetrics> {
        let latency = claim.inference_latency_s;
        if !(latency.is_finite() && latency >= 0.0) {
            return Err(VerifyError::InvalidClaim {
                field: "inference_latency",
                value: latency.to_string(),
                expected: "a finite number of seconds, 0 or more",
            });
        }
        let gpu = self.catalogue.lookup(&claim.gpu).map_err(points_error)?;
        let entry = self
            .registry
            .get(&claim.model_id)
            .map_err(|e| VerifyError::Registry { model: claim.model_id.clone(), source: Box::new(e) })?;
        let cost = CostModel::of(&claim.model_id, &entry.model_type)?;
        let flops = cost.flops(&claim.model_id, &claim.work)?;
        let peak_tflops = gpu.fp16_tflops.to_f64();
        let min_s = flops / (peak_tflops * 1e12);
        let mut flags = Vec::new();
        let mut unchecked = Vec::new();
        if latency < min_s {
            flags.push(Flag::FasterThanPeak {
                gpu: gpu.name.clone(),
                peak_tflops,
                flops,
                min_s,
                claimed_s: latency,
            });
        }

        let record = JobRecord {
            model_id: claim.model_id.clone(),
            model_type: Some(entry.model_type.as_str().to_owned()),
            latency_s: latency,
            ..JobRecord::default()
        };
        match self.rules.classify(&record) {
            Ok(JobKind::Image { category }) => {
                if !self.rules.eligible_for_category(gpu, category).map_err(points_error)? {
                    let minimum =
                        self.rules.data().waifu.categories.get(category).map(|c| c.min_gpu.clone()).unwrap_or_default();
                    flags.push(Flag::BelowCategoryMinimum {
                        gpu: gpu.name.clone(),
                        category: category.to_owned(),
                        minimum,
                    });
                }
            }
            Ok(JobKind::Llm { model }) => {
                if !self.rules.eligible_for_model(gpu, model).map_err(points_error)? {
                    let needed = self.rules.data().llama.models.get(model).map_or(0, |m| m.vram_gb);
                    flags.push(Flag::NotEnoughVram {
                        gpu: gpu.name.clone(),
                        vram_gb: gpu.min_vram_gb(),
                        needed_gb: f64::from(needed),
                        source: "the rule set's requirement",
                    });
                }
            }
            // An LLM the rule set does not reward: the registry's size of its weights, if given.
            Err(PointsError::UnknownModel { .. }) if matches!(cost, CostModel::Llm { .. }) => {
                match entry.extra.get("size_gb").and_then(serde_json::Value::as_f64).filter(|s| *s > 0.0) {
                    Some(size_gb) if f64::from(gpu.min_vram_gb()) < size_gb => flags.push(Flag::NotEnoughVram {
                        gpu: gpu.name.clone(),
                        vram_gb: gpu.min_vram_gb(),
                        needed_gb: size_gb,
                        source: "the registry's size of its weights",
                    }),
                    Some(_) => {}
                    None => unchecked.push(format!(
                        "VRAM: rule set {:?} does not list {:?} and the registry gives no size_gb",
                        self.rules.name(),
                        claim.model_id
                    )),
                }
            }
            Err(e) => return Err(points_error(e)),
        }
        Ok(JobMetrics {
            gpu: gpu.name.clone(),
            flops,
            min_inference_s: min_s,
            bound_multiple: if min_s > 0.0 { latency / min_s } else { f64::INFINITY },
            flags,
            unchecked,
        })
    }
}

fn points_error(e: PointsError) -> VerifyError {
    match e {
        PointsError::UnknownGpu { name } => VerifyError::UnknownGpu { name },
        other => VerifyError::Rules { source: Box::new(other) },
    }
}
