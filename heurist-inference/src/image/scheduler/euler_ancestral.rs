//! Euler ancestral sampling, as diffusers' `EulerAncestralDiscreteScheduler` (k-diffusion's
//! `sample_euler_ancestral` with eta 1): each step goes down to `sigma_down` along the Euler
//! direction, then adds fresh noise of standard deviation `sigma_up`, where
//! `sigma_up^2 + sigma_down^2 = sigma_next^2`.
//!
//! Invariants: the timesteps and sigmas are those of [`super::EulerDiscreteScheduler`] for the
//! same config (the same spacing code); every step draws exactly one noise tensor of the model
//! output's shape and dtype, after the Euler update and in step order, as diffusers does (the
//! last step's noise is drawn too and multiplied by `sigma_up = 0`); the update runs in f32 and
//! the result takes the model output's dtype.

use candle_core::{DType, Tensor};

use super::euler::SigmaSteps;
use super::{SchedulerConfig, noise_dtype};
#[cfg(doc)]
use crate::error::InferenceError;
use crate::error::Result;
use crate::image::noise::NoiseSource;

/// Euler ancestral scheduler, for `num_inference_steps` steps.
///
/// ```
/// use heurist_inference::image::scheduler::{
///     DEFAULT_SCHEDULER_CONFIG, EulerAncestralDiscreteScheduler,
/// };
///
/// let s = EulerAncestralDiscreteScheduler::new(DEFAULT_SCHEDULER_CONFIG, 20)?;
/// assert_eq!(s.timesteps()[0], 951.0); // "leading": 19 * 50 + steps offset 1
/// assert_eq!(s.sigmas().len(), 21);
/// # Ok::<(), heurist_inference::InferenceError>(())
/// ```
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    steps: SigmaSteps,
}

impl EulerAncestralDiscreteScheduler {
    /// The schedule of `set_timesteps(num_inference_steps)` under `config`.
    ///
    /// # Errors
    /// [`InferenceError::InvalidInferenceSteps`] for 0 steps or more than the training
    /// timesteps; [`InferenceError::InvalidSchedulerConfig`] for an unusable `config`.
    pub fn new(config: SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        Ok(Self { steps: SigmaSteps::new(config, num_inference_steps, "euler ancestral")? })
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

    /// One ancestral step from `sample` with the model's prediction `model_output`, drawing the
    /// step's noise from `noise`.
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
        let sigma_next = self.steps.sigmas[self.steps.step_index + 1];
        // The split of the way down to sigma_next into a deterministic and a noise part.
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
        let euler = || -> candle_core::Result<Tensor> {
            let sample = sample.to_dtype(DType::F32)?;
            let derivative = self.steps.derivative(&sample, model_output, sigma)?;
            &sample + (derivative * f64::from(sigma_down - sigma))?
        };
        let prev = euler().map_err(|source| self.steps.tensor_error(source))?;
        let fresh = noise.randn_tensor(
            model_output.dims(),
            noise_dtype(model_output.dtype()),
            model_output.device(),
        )?;
        let add_noise = || -> candle_core::Result<Tensor> {
            let fresh = fresh.to_dtype(DType::F32)?;
            (prev + (fresh * f64::from(sigma_up))?)?.to_dtype(model_output.dtype())
        };
        let prev = add_noise().map_err(|source| self.steps.tensor_error(source))?;
        self.steps.step_index += 1;
        Ok(prev)
    }
}
