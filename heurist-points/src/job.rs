//! The finished-job record ([`JobRecord`]) and the points of one job.
//!
//! Image jobs earn Waifu Points: `w * h * steps` (after the category's clamps) over the
//! unit's reference pixel-steps, times the category multiplier over the reference's.
//! LLM jobs earn Llama Points: `input + output tokens` over the unit's tokens, times the
//! model multiplier over the reference's. Past the timeout a job earns 0; inside it the
//! latency curve's factor applies. The result is computed in integers and **rounded down
//! to a micro-point**, once per job: a reward is never more than the rules say, and since
//! each job is rounded on its own, a total is the same in any order and any batching.

use serde::{Deserialize, Serialize};

use crate::catalogue::{Gpu, GpuCatalogue};
use crate::currency::{Currency, Points};
use crate::decimal::Decimal;
use crate::error::{PointsError, Result};
use crate::rules::{RuleSet, Target};

/// A finished job, as a reward service or a miner's earnings estimate sees it.
///
/// | field | meaning |
/// |---|---|
/// | `model_id` | the registry model name (`SDXL`, `dolphin-2.9-llama3-8b`) |
/// | `model_type` | the registry `type` (`sd15`, `sdxl10`, `compositexl`, `flux-dev`, `llm8b16b`...); optional where the rule set's `model_types` or LLM table knows the id |
/// | `width`, `height`, `steps` | image size and sampling steps actually used (image jobs; default 0) |
/// | `input_tokens`, `output_tokens` | tokens of the chat-templated prompt and of the answer, by the model's own tokenizer (LLM jobs; default 0) |
/// | `latency_s` | seconds from job start to result, as measured by the sequencer |
/// | `hardware` | the GPU name as `nvidia-smi` prints it; optional, checked against the category's minimum GPU or the model's VRAM when given |
///
/// ```
/// use heurist_points::JobRecord;
/// let job: JobRecord = serde_json::from_str(r#"{"model_id": "SDXL", "model_type": "sdxl10",
///     "width": 1024, "height": 1024, "steps": 20, "latency_s": 6.5,
///     "hardware": "NVIDIA GeForce RTX 4090"}"#)?;
/// assert_eq!(job.input_tokens, 0);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The registry model name.
    pub model_id: String,
    /// The registry `type` of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Image width in pixels, after clamping.
    #[serde(default)]
    pub width: u32,
    /// Image height in pixels, after clamping.
    #[serde(default)]
    pub height: u32,
    /// Sampling steps actually run.
    #[serde(default)]
    pub steps: u32,
    /// Input tokens (chat-templated prompt).
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Seconds from start to result.
    pub latency_s: f64,
    /// The GPU name as `nvidia-smi` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
}

impl JobRecord {
    /// A record from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| PointsError::RecordJson { line: e.line(), source: e })
    }
}

/// What a rule set makes of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind<'a> {
    /// An image job of this category (Waifu Points).
    Image {
        /// The category name.
        category: &'a str,
    },
    /// An LLM job of this model (Llama Points).
    Llm {
        /// The model id.
        model: &'a str,
    },
}

impl JobKind<'_> {
    /// The currency the job earns.
    pub fn currency(&self) -> Currency {
        match self {
            JobKind::Image { .. } => Currency::Waifu,
            JobKind::Llm { .. } => Currency::Llama,
        }
    }
}

impl RuleSet {
    /// The category or model a job falls under.
    ///
    /// The type is the record's `model_type`, else the rule set's `model_types` entry for
    /// the model id; a model id listed under `llama.models` needs no type.
    pub fn classify<'a>(&'a self, job: &JobRecord) -> Result<JobKind<'a>> {
        let llama = &self.data.llama.models;
        let model_type = job
            .model_type
            .as_deref()
            .or_else(|| self.data.model_types.get(&job.model_id).map(String::as_str));
        let target = match model_type {
            Some(ty) => self.target_of(ty).ok_or_else(|| PointsError::UnknownModelType {
                model_type: ty.to_owned(),
                model_id: job.model_id.clone(),
                rules: self.data.name.clone(),
            })?,
            None if llama.contains_key(&job.model_id) => &Target::Llm,
            None => return Err(self.unknown_model(job)),
        };
        match target {
            Target::Image(category) => Ok(JobKind::Image { category }),
            Target::Llm => {
                let (model, _) = llama.get_key_value(&job.model_id).ok_or_else(|| self.unknown_model(job))?;
                Ok(JobKind::Llm { model })
            }
        }
    }

    fn unknown_model(&self, job: &JobRecord) -> PointsError {
        PointsError::UnknownModel { model_id: job.model_id.clone(), rules: self.data.name.clone() }
    }

    /// The points of one finished job, checking `hardware` (when given) against the
    /// built-in GPU catalogue.
    ///
    /// ```
    /// use heurist_points::{Currency, JobRecord, RuleSet};
    /// let rules = RuleSet::preset("seed")?;
    /// let job = JobRecord {
    ///     model_id: "dolphin-2.9-llama3-8b".into(),
    ///     input_tokens: 600,
    ///     output_tokens: 400,
    ///     latency_s: 3.0,
    ///     ..Default::default()
    /// };
    /// let points = rules.points(&job)?;
    /// // (600 + 400) / 1000 * 0.24
    /// assert_eq!((points.currency(), points.micro()), (Currency::Llama, 240_000));
    /// # Ok::<(), heurist_points::PointsError>(())
    /// ```
    pub fn points(&self, job: &JobRecord) -> Result<Points> {
        self.points_with(job, GpuCatalogue::builtin()?)
    }

    /// [`RuleSet::points`] with another GPU catalogue.
    pub fn points_with(&self, job: &JobRecord, catalogue: &GpuCatalogue) -> Result<Points> {
        let kind = self.classify(job)?;
        if let Some(name) = &job.hardware {
            self.check_hardware(catalogue.lookup(name)?, kind)?;
        }
        if !(job.latency_s.is_finite() && job.latency_s >= 0.0) {
            return Err(PointsError::InvalidJob {
                field: "latency_s",
                value: job.latency_s.to_string(),
                expected: "a finite number of seconds, 0 or more",
            });
        }
        // Rounded up past the microsecond: a hair past the deadline is past it.
        let latency = Decimal::from_f64(job.latency_s, true)?;
        let overflow = |what: &str| PointsError::Overflow { what: format!("{what} of job on {}", job.model_id) };
        match kind {
            JobKind::Image { category } => {
                let rules = &self.data.waifu;
                let cat = rules.categories.get(category).ok_or_else(|| self.unknown_model(job))?;
                let timeout = cat.timeout_s.unwrap_or(rules.timeout_s);
                if latency > timeout {
                    return Ok(Points::zero(Currency::Waifu));
                }
                let factor = crate::rules::factor_at(&rules.latency_curve, latency);
                let clamp = |v: u32, max: Option<u32>| u128::from(max.map_or(v, |m| v.min(m)));
                let pixel_steps = clamp(job.width, cat.max_width)
                    * clamp(job.height, cat.max_height)
                    * clamp(job.steps, cat.max_steps);
                let micro = scaled(pixel_steps, cat.multiplier, factor, self.waifu_divisor)
                    .ok_or_else(|| overflow("Waifu Points"))?;
                Ok(Points::from_micro(Currency::Waifu, micro))
            }
            JobKind::Llm { model } => {
                let rules = &self.data.llama;
                let m = rules.models.get(model).ok_or_else(|| self.unknown_model(job))?;
                if latency > rules.timeout_s {
                    return Ok(Points::zero(Currency::Llama));
                }
                let factor = crate::rules::factor_at(&rules.latency_curve, latency);
                let tokens = u128::from(job.input_tokens) + u128::from(job.output_tokens);
                let micro =
                    scaled(tokens, m.multiplier, factor, self.llama_divisor).ok_or_else(|| overflow("Llama Points"))?;
                Ok(Points::from_micro(Currency::Llama, micro))
            }
        }
    }

    fn check_hardware(&self, gpu: &Gpu, kind: JobKind<'_>) -> Result<()> {
        match kind {
            JobKind::Image { category } => self.check_category(gpu, category),
            JobKind::Llm { model } => self.check_model(gpu, model),
        }
    }

    fn check_category(&self, gpu: &Gpu, category: &str) -> Result<()> {
        let minimum: Vec<&Gpu> = self.min_gpus.get(category).map(|v| v.iter().collect()).unwrap_or_default();
        if gpu.meets_minimum(&minimum) {
            return Ok(());
        }
        let names: Vec<&str> = minimum.iter().map(|g| g.name.as_str()).collect();
        Err(PointsError::IneligibleGpu {
            gpu: gpu.name.clone(),
            target: format!("image category {category:?}"),
            requirement: format!("at least one of {names:?} in its series"),
        })
    }

    fn check_model(&self, gpu: &Gpu, model: &str) -> Result<()> {
        let vram_gb = self.data.llama.models.get(model).map_or(0, |m| m.vram_gb);
        if gpu.has_vram(vram_gb) {
            return Ok(());
        }
        Err(PointsError::IneligibleGpu {
            gpu: gpu.name.clone(),
            target: format!("model {model:?}"),
            requirement: format!("{vram_gb} GB of VRAM; the name guarantees {} GB", gpu.min_vram_gb()),
        })
    }

    /// Whether a GPU may run an image category (its minimum GPU).
    pub fn eligible_for_category(&self, gpu: &Gpu, category: &str) -> Result<bool> {
        if !self.data.waifu.categories.contains_key(category) {
            return Err(PointsError::UnknownCategory {
                name: category.to_owned(),
                path: "waifu.categories".to_owned(),
                line: None,
            });
        }
        Ok(self.check_category(gpu, category).is_ok())
    }

    /// Whether a GPU may run an LLM (its VRAM, by the smallest size sold under the name).
    pub fn eligible_for_model(&self, gpu: &Gpu, model_id: &str) -> Result<bool> {
        if !self.data.llama.models.contains_key(model_id) {
            return Err(PointsError::UnknownModel { model_id: model_id.to_owned(), rules: self.data.name.clone() });
        }
        Ok(self.check_model(gpu, model_id).is_ok())
    }
}

/// `floor(work * multiplier * factor / divisor)` in micro-points, `None` on overflow.
///
/// `multiplier` and `factor` are millionths and `divisor` is the reference work times the
/// reference multiplier in millionths, so the millionths of the multipliers cancel and the
/// factor's millionths become the micro of the result.
fn scaled(work: u128, multiplier: Decimal, factor_millionths: i64, divisor: u128) -> Option<u64> {
    let multiplier = u128::try_from(multiplier.millionths()).ok()?;
    let factor = u128::try_from(factor_millionths).ok()?;
    let numerator = work.checked_mul(multiplier)?.checked_mul(factor)?;
    u64::try_from(numerator.checked_div(divisor)?).ok()
}
