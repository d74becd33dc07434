//! Euler discrete sampling (Karras et al. 2022, algorithm 2 without churn), as diffusers'
//! `EulerDiscreteScheduler` with linear sigma interpolation and the config's timestep spacing
//! ("leading" with steps offset 1 for SDXL base).
//!
//! Invariant: like diffusers, every step draws one noise tensor (model output's shape and dtype)
//! from the generator even though churn is zero and the noise is unused, so the generator's
//! state after a run equals the reference's.

use candle_core::{DType, Tensor};

use super::{PredictionType, SchedulerConfig, noise_dtype, spacing};
use crate::error::{InferenceError, Result};
use crate::image::noise::NoiseSource;

/// Euler discrete scheduler, for `num_inference_steps` steps.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    steps: SigmaSteps,
}

impl EulerDiscreteScheduler {
    /// The schedule of `set_timesteps(num_inference_steps)`.
    ///
    /// # Errors
    /// [`InferenceError::InvalidInferenceSteps`] for 0 steps or more than the training
    /// timesteps; [`InferenceError::InvalidSchedulerConfig`] for an unusable `config`.
    pub fn new(config: SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        Ok(Self { steps: SigmaSteps::new(config, num_inference_steps, "euler")? })
    }

    /// The timesteps, one per step, from the noisiest.
    pub fn timesteps(&self) -> &[f32] {
        &self.steps.timesteps
    }

    /// The sigmas, one per step plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.steps.sigmas
    }

    /// What the initial standard normal latents are multiplied by.
    pub fn init_noise_sigma(&self) -> f32 {
        self.steps.init_noise_sigma
    }

    /// The next step's index (0 before the first step).
    pub fn step_index(&self) -> usize {
        self.steps.step_index
    }

    /// The sample scaled for the model's input at the current step, `x / sqrt(sigma^2 + 1)`.
    ///
    /// # Errors
    /// [`InferenceError::SchedulerFinished`] after the last step; [`InferenceError::Tensor`]
    /// when candle fails.
    pub fn scale_model_input(&self, sample: &Tensor) -> Result<Tensor> {
        self.steps.scale_model_input(sample)
    }

    /// One Euler step from `sample` with the model's noise prediction `model_output`; draws
    /// (and discards) one noise tensor from `noise`, as diffusers does.
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
        let sigma = self.steps.current_sigma()?;
        noise.randn(model_output.dims(), noise_dtype(model_output.dtype()))?;
        let sigma_next = self.steps.sigmas[self.steps.step_index + 1];
        let run = || -> candle_core::Result<Tensor> {
            let sample = sample.to_dtype(DType::F32)?;
            let derivative = self.steps.derivative(&sample, model_output, sigma)?;
            let prev = (&sample + (derivative * f64::from(sigma_next - sigma))?)?;
            prev.to_dtype(model_output.dtype())
        };
        let prev = run().map_err(|source| self.steps.tensor_error(source))?;
        self.steps.step_index += 1;
        Ok(prev)
    }
}

/// The state the Euler family shares: the sigma table of the config's spacing, where the run
/// is, and the prediction type that turns a model output into a denoised estimate.
#[derive(Debug, Clone)]
pub(super) struct SigmaSteps {
    pub(super) prediction_type: PredictionType,
    pub(super) timesteps: Vec<f32>,
    pub(super) sigmas: Vec<f32>,
    pub(super) init_noise_sigma: f32,
    pub(super) step_index: usize,
    /// The scheduler's name in error contexts.
    name: &'static str,
}

impl SigmaSteps {
    pub(super) fn new(config: SchedulerConfig, num_inference_steps: usize, name: &'static str) -> Result<Self> {
        config.check(num_inference_steps)?;
        let (timesteps, sigmas) = spacing::euler_schedule(&config, num_inference_steps);
        Ok(Self {
            prediction_type: config.prediction_type,
            init_noise_sigma: spacing::euler_init_noise_sigma(&config, &sigmas),
            timesteps,
            sigmas,
            step_index: 0,
            name,
        })
    }

    /// `x / sqrt(sigma^2 + 1)` at the current step.
    pub(super) fn scale_model_input(&self, sample: &Tensor) -> Result<Tensor> {
        let sigma = self.current_sigma()?;
        let scale = 1.0 / (sigma * sigma + 1.0).sqrt();
        (sample * f64::from(scale)).map_err(|source| self.tensor_error(source))
    }

    /// The ODE direction `(x - x0) / sigma`, in f32 (`sample` already f32), from the model's
    /// output under the configured prediction type.
    pub(super) fn derivative(&self, sample: &Tensor, model_output: &Tensor, sigma: f32) -> candle_core::Result<Tensor> {
        let model_output = model_output.to_dtype(DType::F32)?;
        let x0 = match self.prediction_type {
            // x0 = x - sigma * eps
            PredictionType::Epsilon => (sample - (&model_output * f64::from(sigma))?)?,
            // x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)
            PredictionType::VPrediction => {
                let v_weight = -sigma / (sigma * sigma + 1.0).sqrt();
                let x_weight = 1.0 / (sigma * sigma + 1.0);
                ((&model_output * f64::from(v_weight))? + (sample * f64::from(x_weight))?)?
            }
        };
        (sample - &x0)? / f64::from(sigma)
    }

    pub(super) fn current_sigma(&self) -> Result<f32> {
        if self.step_index >= self.timesteps.len() {
            return Err(InferenceError::SchedulerFinished {
                step: self.step_index,
                steps: self.timesteps.len(),
            });
        }
        Ok(self.sigmas[self.step_index])
    }

    pub(super) fn tensor_error(&self, source: candle_core::Error) -> InferenceError {
        InferenceError::Tensor {
            context: format!("{} scheduler step {}", self.name, self.step_index),
            source,
        }
    }
}
