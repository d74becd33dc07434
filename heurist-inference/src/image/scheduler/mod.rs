//! Diffusion schedulers with diffusers' configuration semantics: the noise schedule a model was
//! trained with, the timesteps and sigmas `set_timesteps(n)` makes, and the update `step()`.
//!
//! - [`DpmSolverMultistepScheduler`]: DPM-Solver++ (2M) in its SDE variant with Karras sigmas,
//!   the reference miner's sampler for SD 1.5 (`algorithm_type="sde-dpmsolver++"`,
//!   `use_karras_sigmas=True`);
//! - [`EulerDiscreteScheduler`]: Euler, by default with "leading" spacing (the SDXL base
//!   default);
//! - [`EulerAncestralDiscreteScheduler`]: Euler with ancestral noise, one fresh tensor per step;
//! - [`DdimScheduler`]: DDIM, deterministic at `eta = 0` (the pipelines' default);
//! - [`SchedulerKind`] names them as a job does (diffusers class names and options) and gives
//!   each model family its default; [`Scheduler`] runs whichever a job named.
//!
//! [`SchedulerConfig`] holds the diffusers config keys these read (`beta_schedule`,
//! `timestep_spacing`, `steps_offset`, `prediction_type`, DDIM's `set_alpha_to_one` and
//! `clip_sample`); a scheduler ignores the keys diffusers' class of the same name ignores.
//!
//! Invariants: the sigma schedulers' sigmas end with 0 (diffusers' `final_sigmas_type="zero"`),
//! so the last step returns the model's clean-sample estimate; a schedule has `n` timesteps and
//! `n + 1` sigmas (except diffusers' own quirk: numpy makes `n + 1` "trailing" timesteps for a
//! few `n`, such as 61, and so does this port); the tables are computed in the precisions
//! diffusers uses (training tables in f32, interpolation in f64, stored sigmas in f32) and agree
//! with diffusers 0.30.2 within 1e-5 (tests/fixtures/diffusers). Noise is drawn from the
//! [`NoiseSource`](crate::image::noise::NoiseSource) in diffusers' order: the ancestral and SDE
//! steps draw one tensor per step, Euler draws one it does not use, DDIM draws only when
//! `eta > 0`; the dtype is the model output's (f16 for an f16 model output, as torch draws f16
//! noise then; f32 otherwise), except DPM-Solver++, which diffusers upcasts to f32 first.

mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod kind;
mod spacing;

pub use ddim::DdimScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use kind::{Scheduler, SchedulerKind};

use crate::error::{InferenceError, Result};

/// How the training betas run from `beta_start` to `beta_end` (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BetaSchedule {
    /// `"linear"`: a linear ramp of the betas.
    Linear,
    /// `"scaled_linear"`: squares of a linear ramp between the square roots of the bounds (SD 1.5
    /// and SDXL).
    ScaledLinear,
}

/// Where `set_timesteps(n)` puts the `n` timesteps among the training ones (diffusers'
/// `timestep_spacing`, after table 2 of Lin et al. 2023, "Common Diffusion Noise Schedules and
/// Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestepSpacing {
    /// `"linspace"`: evenly from `T - 1` down to 0, fractional for the sigma schedulers.
    Linspace,
    /// `"leading"`: multiples of `T / n` (integer division) plus `steps_offset`.
    Leading,
    /// `"trailing"`: `round(T - i * T / n) - 1`, so the first is always `T - 1`.
    Trailing,
}

/// What the model predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PredictionType {
    /// `"epsilon"`: the noise (SD 1.5, SDXL).
    Epsilon,
    /// `"v_prediction"`: the velocity `alpha * noise - sigma * x0` (SD 2.x 768, some fine-tunes).
    VPrediction,
}

impl BetaSchedule {
    /// The schedule diffusers names `name`.
    ///
    /// # Errors
    /// [`InferenceError::InvalidSchedulerConfig`] naming any other value.
    pub fn from_diffusers(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear),
            "scaled_linear" => Ok(Self::ScaledLinear),
            other => Err(unsupported_value(
                "beta_schedule",
                other,
                "linear, scaled_linear",
            )),
        }
    }
}

impl TimestepSpacing {
    /// The spacing diffusers names `name`.
    ///
    /// # Errors
    /// [`InferenceError::InvalidSchedulerConfig`] naming any other value.
    pub fn from_diffusers(name: &str) -> Result<Self> {
        match name {
            "linspace" => Ok(Self::Linspace),
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            other => Err(unsupported_value(
                "timestep_spacing",
                other,
                "linspace, leading, trailing",
            )),
        }
    }
}

impl PredictionType {
    /// The prediction type diffusers names `name`.
    ///
    /// # Errors
    /// [`InferenceError::InvalidSchedulerConfig`] naming any other value (`"sample"` included).
    pub fn from_diffusers(name: &str) -> Result<Self> {
        match name {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            other => Err(unsupported_value(
                "prediction_type",
                other,
                "epsilon, v_prediction",
            )),
        }
    }
}

fn unsupported_value(key: &str, value: &str, expected: &str) -> InferenceError {
    InferenceError::InvalidSchedulerConfig {
        problem: format!("{key} {value:?} is not supported (expected one of {expected})"),
    }
}

/// The diffusers scheduler config keys the schedulers here read. [`DEFAULT_SCHEDULER_CONFIG`]
/// is SD 1.5's and SDXL's; build others from it by changing fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// Training timesteps (`num_train_timesteps`).
    pub num_train_timesteps: usize,
    /// The first beta (`beta_start`).
    pub beta_start: f64,
    /// The last beta (`beta_end`).
    pub beta_end: f64,
    /// Added to "leading" timesteps (`steps_offset`).
    pub steps_offset: usize,
    /// How the betas run (`beta_schedule`).
    pub beta_schedule: BetaSchedule,
    /// Where the inference timesteps fall (`timestep_spacing`); DPM-Solver++ with Karras sigmas
    /// does not read it (its timesteps come from the sigmas).
    pub timestep_spacing: TimestepSpacing,
    /// What the model predicts (`prediction_type`).
    pub prediction_type: PredictionType,
    /// DDIM: the final step goes to `alpha_bar = 1` rather than to the first training
    /// timestep's (`set_alpha_to_one`).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the clean-sample estimate to `[-r, r]` (`clip_sample` and
    /// `clip_sample_range`); `None` for no clamp.
    pub clip_sample: Option<f64>,
}

/// SD 1.5's and SDXL's config: 1000 steps, `scaled_linear` betas 0.00085 to 0.012, "leading"
/// spacing with steps offset 1, epsilon prediction, and for DDIM `set_alpha_to_one=False`,
/// `clip_sample=False` (what `DDIMScheduler.from_config` of their scheduler configs gives).
pub const DEFAULT_SCHEDULER_CONFIG: SchedulerConfig = SchedulerConfig {
    num_train_timesteps: 1000,
    beta_start: 0.00085,
    beta_end: 0.012,
    steps_offset: 1,
    beta_schedule: BetaSchedule::ScaledLinear,
    timestep_spacing: TimestepSpacing::Leading,
    prediction_type: PredictionType::Epsilon,
    set_alpha_to_one: false,
    clip_sample: None,
};

impl Default for SchedulerConfig {
    fn default() -> Self {
        DEFAULT_SCHEDULER_CONFIG
    }
}

impl SchedulerConfig {
    /// Checks the configuration and `num_inference_steps` against it.
    fn check(&self, num_inference_steps: usize) -> Result<()> {
        let bad = |problem: String| Err(InferenceError::InvalidSchedulerConfig { problem });
        if self.num_train_timesteps < 2 {
            return bad(format!(
                "num_train_timesteps {} (expected at least 2)",
                self.num_train_timesteps
            ));
        }
        let betas_ok = self.beta_start.is_finite()
            && self.beta_end.is_finite()
            && self.beta_start > 0.0
            && self.beta_start <= self.beta_end
            && self.beta_end < 1.0;
        if !betas_ok {
            return bad(format!(
                "betas {} to {} (expected 0 < beta_start <= beta_end < 1)",
                self.beta_start, self.beta_end
            ));
        }
        if let Some(range) = self.clip_sample
            && !(range.is_finite() && range > 0.0)
        {
            return bad(format!(
                "clip_sample_range {range} (expected a finite number > 0)"
            ));
        }
        if num_inference_steps == 0 || num_inference_steps > self.num_train_timesteps {
            return Err(InferenceError::InvalidInferenceSteps {
                steps: num_inference_steps,
                train_timesteps: self.num_train_timesteps,
            });
        }
        Ok(())
    }

    /// The training `alpha_bar` per timestep, in f32 as diffusers computes it (torch f32
    /// `linspace`, squared for "scaled_linear", `cumprod` of `1 - beta`).
    fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let (start, end) = match self.beta_schedule {
            BetaSchedule::Linear => (self.beta_start as f32, self.beta_end as f32),
            BetaSchedule::ScaledLinear => {
                (self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32)
            }
        };
        let step = (end - start) / (n - 1) as f32;
        let halfway = n / 2;
        let mut alpha_bar = 1.0f32;
        (0..n)
            .map(|i| {
                // torch's linspace fills the first half from the start and the second half back
                // from the end, so that both ends are exact.
                let ramp = if i < halfway {
                    start + step * i as f32
                } else {
                    end - step * (n - i - 1) as f32
                };
                let beta = match self.beta_schedule {
                    BetaSchedule::Linear => ramp,
                    BetaSchedule::ScaledLinear => ramp * ramp,
                };
                alpha_bar *= 1.0 - beta;
                alpha_bar
            })
            .collect()
    }

    /// The training sigmas `sqrt((1 - alpha_bar) / alpha_bar)` per timestep, in f32 as diffusers
    /// computes them.
    fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod()
            .into_iter()
            .map(|alpha_bar| ((1.0 - alpha_bar) / alpha_bar).sqrt())
            .collect()
    }
}

/// The dtype diffusers' `randn_tensor(..., dtype=model_output.dtype)` draws in: the model
/// output's for f16 and bf16; f32 for the rest.
fn noise_dtype(dtype: candle_core::DType) -> crate::image::noise::NoiseDType {
    match dtype {
        candle_core::DType::F16 => crate::image::noise::NoiseDType::F16,
        candle_core::DType::BF16 => crate::image::noise::NoiseDType::BF16,
        _ => crate::image::noise::NoiseDType::F32,
    }
}

/// `alpha_t` and `sigma_t` of diffusers' `_sigma_to_alpha_sigma_t` for an epsilon model in the
/// variance-exploding parametrisation.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}
