//! DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models"), as diffusers' `DDIMScheduler`:
//! works on the variance-preserving sample with `alpha_bar` of integer training timesteps.
//!
//! Invariants, as in diffusers: the previous timestep of `t` is `t - T / n` (integer division)
//! whatever the spacing, and below 0 it stands for the final `alpha_bar` (1 with
//! `set_alpha_to_one`, else the first training timestep's); noise is drawn (model output's shape
//! and dtype) only when `eta > 0`, once per step after the deterministic update; the update runs
//! in f32 and the result takes the model output's dtype.

use candle_core::{DType, Tensor};

use super::{PredictionType, SchedulerConfig, noise_dtype, spacing};
use crate::error::{InferenceError, Result};
use crate::image::noise::NoiseSource;

/// DDIM scheduler, for `num_inference_steps` steps.
///
/// ```
/// use heurist_inference::image::scheduler::{DEFAULT_SCHEDULER_CONFIG, DdimScheduler};
///
/// let s = DdimScheduler::new(DEFAULT_SCHEDULER_CONFIG, 20)?.with_eta(0.5)?;
/// assert_eq!(s.timesteps()[..3], [951, 901, 851]);
/// assert_eq!(s.init_noise_sigma(), 1.0);
/// assert!(DdimScheduler::new(DEFAULT_SCHEDULER_CONFIG, 20)?.with_eta(f64::NAN).is_err());
/// # Ok::<(), heurist_inference::InferenceError>(())
/// ```
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    prediction_type: PredictionType,
    clip_sample: Option<f32>,
    timesteps: Vec<i64>,
    /// `alpha_bar` at each timestep.
    alphas_cumprod: Vec<f32>,
    /// `alpha_bar` at each step's previous timestep (the final one where that is below 0).
    alphas_cumprod_prev: Vec<f32>,
    eta: f32,
    step_index: usize,
}

impl DdimScheduler {
    /// The schedule of `set_timesteps(num_inference_steps)` under `config`, with `eta = 0`
    /// (deterministic, the diffusers pipelines' default).
    ///
    /// # Errors
    /// [`InferenceError::InvalidInferenceSteps`] for 0 steps or more than the training
    /// timesteps; [`InferenceError::InvalidSchedulerConfig`] for an unusable `config`, and for a
    /// spacing that puts a timestep outside the training ones (diffusers would index out of its
    /// table, or wrap around for -1: "leading" with a large `steps_offset`, "trailing" for the
    /// few step counts where numpy makes one timestep too many).
    pub fn new(config: SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.check(num_inference_steps)?;
        let train = config.num_train_timesteps;
        let table = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            table[0]
        };
        let timesteps: Vec<i64> = spacing::spaced_timesteps(&config, num_inference_steps)
            .into_iter()
            .map(|t| t.round_ties_even() as i64)
            .collect();
        let ratio = (train / num_inference_steps) as i64;
        let lookup = |t: i64| usize::try_from(t).ok().and_then(|i| table.get(i).copied());
        let mut alphas_cumprod = Vec::with_capacity(timesteps.len());
        let mut alphas_cumprod_prev = Vec::with_capacity(timesteps.len());
        for &t in &timesteps {
            let Some(alpha) = lookup(t) else {
                return Err(InferenceError::InvalidSchedulerConfig {
                    problem: format!(
                        "DDIM timestep {t} for {num_inference_steps} steps with {:?} spacing \
                         and steps_offset {} is outside the {train} training timesteps",
                        config.timestep_spacing, config.steps_offset
                    ),
                });
            };
            alphas_cumprod.push(alpha);
            alphas_cumprod_prev.push(lookup(t - ratio).unwrap_or(final_alpha_cumprod));
        }
        Ok(Self {
            prediction_type: config.prediction_type,
            clip_sample: config.clip_sample.map(|r| r as f32),
            timesteps,
            alphas_cumprod,
            alphas_cumprod_prev,
            eta: 0.0,
            step_index: 0,
        })
    }

    /// The same schedule with the noise weight `eta` (0: deterministic DDIM, 1: DDPM-like).
    ///
    /// # Errors
    /// [`InferenceError::InvalidSchedulerConfig`] for an `eta` that is not a finite number from
    /// 0 to 1.
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
            return Err(InferenceError::InvalidSchedulerConfig {
                problem: format!("DDIM eta {eta} (expected a finite number from 0 to 1)"),
            });
        }
        self.eta = eta as f32;
        Ok(self)
    }

    /// The timesteps, one per step, from the noisiest.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// `alpha_bar` at each timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `alpha_bar` at each step's previous timestep, the one the step goes to.
    pub fn alphas_cumprod_prev(&self) -> &[f32] {
        &self.alphas_cumprod_prev
    }

    /// The noise weight.
    pub fn eta(&self) -> f64 {
        f64::from(self.eta)
    }

    /// What the initial standard normal latents are multiplied by (1: DDIM works on the
    /// variance-preserving sample).
    pub fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// The next step's index (0 before the first step).
    pub fn step_index(&self) -> usize {
        self.step_index
    }

    /// The sample as the model takes it: unchanged for this scheduler.
    pub fn scale_model_input(&self, sample: &Tensor) -> Tensor {
        sample.clone()
    }

    /// One DDIM step from `sample` with the model's prediction `model_output`; draws the step's
    /// noise from `noise` when `eta > 0`.
    ///
    /// # Errors
    /// [`InferenceError::SchedulerFinished`] after the last step; the noise source's errors;
    /// [`InferenceError::Tensor`] when the tensors do not fit together.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let i = self.step_index;
        let steps = self.timesteps.len();
        if i >= steps {
            return Err(InferenceError::SchedulerFinished { step: i, steps });
        }
        let tensor_error = |source| InferenceError::Tensor {
            context: format!("ddim scheduler step {i}"),
            source,
        };
        let alpha_t = self.alphas_cumprod[i];
        let alpha_prev = self.alphas_cumprod_prev[i];
        let beta_t = 1.0 - alpha_t;
        let variance = (1.0 - alpha_prev) / beta_t * (1.0 - alpha_t / alpha_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction_weight = (1.0 - alpha_prev - std_dev * std_dev).sqrt();
        let (prediction_type, clip_sample) = (self.prediction_type, self.clip_sample);
        let update = || -> candle_core::Result<Tensor> {
            let x = sample.to_dtype(DType::F32)?;
            let out = model_output.to_dtype(DType::F32)?;
            let (root_alpha, root_beta) = (f64::from(alpha_t.sqrt()), f64::from(beta_t.sqrt()));
            let (mut x0, eps) = match prediction_type {
                PredictionType::Epsilon => (((&x - (&out * root_beta)?)? / root_alpha)?, out),
                PredictionType::VPrediction => (
                    ((&x * root_alpha)? - (&out * root_beta)?)?,
                    ((&out * root_alpha)? + (&x * root_beta)?)?,
                ),
            };
            if let Some(range) = clip_sample {
                x0 = x0.clamp(-range, range)?;
            }
            // x_prev = sqrt(alpha_prev) x0 + sqrt(1 - alpha_prev - std^2) eps
            (x0 * f64::from(alpha_prev.sqrt()))? + (eps * f64::from(direction_weight))?
        };
        let mut prev = update().map_err(tensor_error)?;
        if self.eta > 0.0 {
            let fresh = noise.randn_tensor(
                model_output.dims(),
                noise_dtype(model_output.dtype()),
                model_output.device(),
            )?;
            prev = fresh
                .to_dtype(DType::F32)
                .and_then(|fresh| fresh * f64::from(std_dev))
                .and_then(|scaled| prev + scaled)
                .map_err(tensor_error)?;
        }
        let prev = prev.to_dtype(model_output.dtype()).map_err(tensor_error)?;
        self.step_index += 1;
        Ok(prev)
    }
}
