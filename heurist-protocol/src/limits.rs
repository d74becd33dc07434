//! The reference miner's limits and defaults, and the clamping rules it applies to a job
//! before running it, as plain functions over one configuration type.
//!
//! - image size: each side clamped to its maximum, then rounded down to a multiple of 8;
//! - image steps: clamped to `max_iterations`;
//! - `max_tokens`: clamped to 4096;
//! - seed: negative (SD) or -1 (LLM) means "choose at random"; seeds above 2^53 are refused
//!   (the network's SDK draws seeds below 2^53 so that JavaScript clients keep them exact).

use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};
use crate::job::{Job, LlmPayload, ModelInput, SamplerSpec};

/// The largest seed accepted: 2^53.
pub const MAX_SEED: u64 = 1 << 53;

/// The reference miner's configuration defaults (its `config.toml`), plus the caps it applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MinerLimits {
    /// Seconds an image job may take from receipt to submission and still earn points.
    pub sd_timeout_seconds: u64,
    /// Seconds a chat job may take.
    pub llm_timeout_seconds: u64,
    /// Seconds between polls when there is no job.
    pub sleep_duration: u64,
    /// The `min_deadline` an SD miner sends.
    pub min_deadline: u64,
    /// Seconds between `miner_signal`s.
    pub signal_interval: u64,
    /// Seconds between registry reloads.
    pub reload_interval: u64,
    /// The most sampling steps run.
    pub max_iterations: u32,
    /// The widest image made.
    pub max_width: u32,
    /// The tallest image made.
    pub max_height: u32,
    /// The longest completion made.
    pub max_tokens: u32,
    /// Chat requests kept in flight per engine.
    pub concurrency_soft_limit: u32,
    /// Chat request pollers.
    pub num_child_process: u32,
}

impl Default for MinerLimits {
    fn default() -> Self {
        Self {
            sd_timeout_seconds: 18,
            llm_timeout_seconds: 180,
            sleep_duration: 2,
            min_deadline: 1,
            signal_interval: 600,
            reload_interval: 600,
            max_iterations: 35,
            max_width: 2048,
            max_height: 2048,
            max_tokens: 4096,
            concurrency_soft_limit: 5,
            num_child_process: 4,
        }
    }
}

/// Clamps one image side: to `max`, then down to a multiple of 8. Sides below 8 are refused.
pub fn clamp_side(field: &'static str, value: u32, max: u32) -> Result<u32> {
    let v = value.min(max) / 8 * 8;
    if v == 0 {
        return Err(ProtocolError::invalid(field, value, "an image side must be at least 8 pixels"));
    }
    Ok(v)
}

/// Clamps a step count to `max_iterations`; zero steps are refused.
pub fn clamp_steps(value: u32, max_iterations: u32) -> Result<u32> {
    if value == 0 {
        return Err(ProtocolError::invalid("num_iterations", value, "at least one step is needed"));
    }
    Ok(value.min(max_iterations))
}

/// Clamps `max_tokens` to `cap`; `None` means the cap. Zero or negative is refused.
pub fn clamp_max_tokens(value: Option<i64>, cap: u32) -> Result<u32> {
    match value {
        None => Ok(cap),
        Some(v) if v <= 0 => Err(ProtocolError::invalid("max_tokens", v, "must be at least 1")),
        Some(v) => Ok(u32::try_from(v).unwrap_or(u32::MAX).min(cap)),
    }
}

/// Resolves a seed: a negative one is replaced by `random()` reduced below 2^53; one above
/// 2^53 is refused. Returns the seed and whether it was drawn.
pub fn resolve_seed(field: &'static str, seed: i64, random: impl FnOnce() -> u64) -> Result<(u64, bool)> {
    if seed < 0 {
        return Ok((random() % MAX_SEED, true));
    }
    let s = seed.unsigned_abs();
    if s > MAX_SEED {
        return Err(ProtocolError::invalid(field, seed, "seeds above 2^53 are not accepted"));
    }
    Ok((s, false))
}

/// A job after the reference's clamping, with every value typed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClampedJob {
    /// The job id.
    pub job_id: String,
    /// The model asked for.
    pub model_id: String,
    /// The parameters to run with.
    pub params: JobParams,
}

/// Clamped parameters, per family.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum JobParams {
    /// An image job.
    #[serde(rename = "SD")]
    Sd(SdParams),
    /// A chat job.
    #[serde(rename = "LLM")]
    Llm(LlmParams),
}

/// An image job, clamped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SdParams {
    /// Prompt.
    pub prompt: String,
    /// Negative prompt (empty when none).
    pub neg_prompt: String,
    /// Width in pixels (multiple of 8, at most `max_width`).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Steps (at most `max_iterations`).
    pub steps: u32,
    /// Guidance scale.
    pub guidance_scale: f64,
    /// The seed used.
    pub seed: u64,
    /// Whether the seed was drawn at random (the job asked for none).
    pub seed_was_random: bool,
    /// The scheduler the job named, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerSpec>,
}

/// A chat job, clamped and decoded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmParams {
    /// Messages, tools and sampling parameters.
    #[serde(flatten)]
    pub payload: LlmPayload,
    /// Temperature (0 = greedy; 1 when the job gives none, as OpenAI's default).
    pub temperature: f64,
    /// Completion limit (at most `max_tokens`).
    pub max_tokens: u32,
    /// The seed used.
    pub seed: u64,
    /// Whether the seed was drawn at random.
    pub seed_was_random: bool,
    /// Whether to stream through `miner_submit_stream`.
    pub stream: bool,
}

impl MinerLimits {
    /// Applies the clamping rules to a job. `random` is called once if the job asks for a
    /// random seed.
    pub fn clamp(&self, job: &Job, random: impl FnOnce() -> u64) -> Result<ClampedJob> {
        let params = match &job.model_input {
            ModelInput::Sd(sd) => {
                let steps = sd
                    .steps()
                    .ok_or_else(|| ProtocolError::invalid("num_iterations", "absent", "an image job needs a step count"))?;
                let guidance = sd.guidance_scale.as_f64().unwrap_or(f64::NAN);
                if !guidance.is_finite() || guidance < 0.0 {
                    return Err(ProtocolError::invalid("guidance_scale", &sd.guidance_scale, "must be a finite number ≥ 0"));
                }
                let (seed, seed_was_random) = resolve_seed("seed", sd.seed, random)?;
                JobParams::Sd(SdParams {
                    prompt: sd.prompt.clone(),
                    neg_prompt: sd.neg_prompt.clone().unwrap_or_default(),
                    width: clamp_side("width", sd.width, self.max_width)?,
                    height: clamp_side("height", sd.height, self.max_height)?,
                    steps: clamp_steps(steps, self.max_iterations)?,
                    guidance_scale: guidance,
                    seed,
                    seed_was_random,
                    sampler: sd.sampler.clone(),
                })
            }
            ModelInput::Llm(llm) => {
                let payload = llm.decode()?;
                let temperature = match &llm.temperature {
                    None => 1.0,
                    Some(n) => n.as_f64().unwrap_or(f64::NAN),
                };
                if !temperature.is_finite() || temperature < 0.0 {
                    return Err(ProtocolError::invalid("temperature", temperature, "must be a finite number ≥ 0"));
                }
                let (seed, seed_was_random) = resolve_seed("seed", llm.seed.unwrap_or(-1), random)?;
                JobParams::Llm(LlmParams {
                    payload,
                    temperature,
                    max_tokens: clamp_max_tokens(llm.max_tokens, self.max_tokens)?,
                    seed,
                    seed_was_random,
                    stream: llm.use_stream.unwrap_or(false),
                })
            }
        };
        Ok(ClampedJob { job_id: job.job_id.clone(), model_id: job.model_id.clone(), params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_round_down_to_8_after_the_maximum() {
        assert_eq!(clamp_side("width", 680, 2048).unwrap(), 680);
        assert_eq!(clamp_side("width", 1023, 2048).unwrap(), 1016);
        assert_eq!(clamp_side("width", 5000, 2048).unwrap(), 2048);
        assert_eq!(clamp_side("width", 2047, 2044).unwrap(), 2040);
        assert!(clamp_side("width", 7, 2048).is_err());
        assert!(clamp_side("width", 0, 2048).is_err());
    }

    #[test]
    fn steps_tokens_and_seeds() {
        assert_eq!(clamp_steps(50, 35).unwrap(), 35);
        assert_eq!(clamp_steps(20, 35).unwrap(), 20);
        assert!(clamp_steps(0, 35).is_err());
        assert_eq!(clamp_max_tokens(Some(1_000_000_000), 4096).unwrap(), 4096);
        assert_eq!(clamp_max_tokens(Some(100), 4096).unwrap(), 100);
        assert_eq!(clamp_max_tokens(None, 4096).unwrap(), 4096);
        assert!(clamp_max_tokens(Some(0), 4096).is_err());
        assert!(clamp_max_tokens(Some(-5), 4096).is_err());
        assert_eq!(resolve_seed("seed", 2288435497, || 0).unwrap(), (2288435497, false));
        assert_eq!(resolve_seed("seed", (1 << 53) - 1, || 0).unwrap(), ((1 << 53) - 1, false));
        assert_eq!(resolve_seed("seed", -1, || (1 << 53) + 7).unwrap(), (7, true));
        assert!(resolve_seed("seed", (1 << 53) + 1, || 0).is_err());
    }
}
