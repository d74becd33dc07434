//! DPM-Solver++ (2M) in its SDE variant with Karras sigmas (Lu et al. 2022, "DPM-Solver++";
//! Karras et al. 2022), as diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="sde-dpmsolver++"`, `use_karras_sigmas=True`, `solver_order=2`,
//! `lower_order_final=True`, `final_sigmas_type="zero"`, for an epsilon- or v-predicting model.
//!
//! Invariants: every step draws one f32 noise tensor of the sample's shape from the generator
//! (diffusers upcasts to f32 before drawing), in step order; the first and the last step are
//! first order, the others second order (midpoint), as in diffusers (whose "lower order second"
//! rule only matters for third order).

use candle_core::{DType, Tensor};

use super::{PredictionType, SchedulerConfig, alpha_sigma};
use crate::error::{InferenceError, Result};
use crate::image::noise::{NoiseDType, NoiseSource};

/// Karras et al.'s rho.
const KARRAS_RHO: f64 = 7.0;

/// DPM-Solver++ 2M SDE with Karras sigmas, for `num_inference_steps` steps.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    prediction_type: PredictionType,
    timesteps: Vec<i64>,
    sigmas: Vec<f32>,
    step_index: usize,
    /// How many steps have run, capped at the solver order (diffusers' `lower_order_nums`).
    lower_order_nums: usize,
    /// The previous step's clean-sample estimate, for the second-order update.
    previous_x0: Option<Tensor>,
}

impl DpmSolverMultistepScheduler {
    /// The schedule of `set_timesteps(num_inference_steps)`.
    ///
    /// # Errors
    /// [`InferenceError::InvalidInferenceSteps`] for 0 steps or more than the training
    /// timesteps; [`InferenceError::InvalidSchedulerConfig`] for an unusable `config`.
    pub fn new(config: SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.check(num_inference_steps)?;
        let train = config.train_sigmas();
        // diffusers takes np.log of the f32 table and keeps f32.
        let log_train: Vec<f64> = train.iter().map(|s| f64::from(s.ln())).collect();
        let sigma_min = f64::from(train[0]);
        let sigma_max = f64::from(train[train.len() - 1]);
        let min_inv_rho = sigma_min.powf(1.0 / KARRAS_RHO);
        let max_inv_rho = sigma_max.powf(1.0 / KARRAS_RHO);
        let karras: Vec<f64> = (0..num_inference_steps)
            .map(|i| {
                // np.linspace(0, 1, n): i * (1 / (n - 1)), with the last point exactly 1.
                let ramp = match num_inference_steps {
                    1 => 0.0,
                    n if i == n - 1 => 1.0,
                    n => i as f64 * (1.0 / (n - 1) as f64),
                };
                (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(KARRAS_RHO)
            })
            .collect();
        let timesteps = karras.iter().map(|&s| sigma_to_t(s, &log_train)).collect();
        let mut sigmas: Vec<f32> = karras.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        Ok(Self {
            prediction_type: config.prediction_type,
            timesteps,
            sigmas,
            step_index: 0,
            lower_order_nums: 0,
            previous_x0: None,
        })
    }

    /// The timesteps, one per step, from the noisiest.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The sigmas, one per step plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// What the initial standard normal latents are multiplied by (1: this scheduler works on
    /// the variance-preserving sample).
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

    /// One solver step from `sample` with the model's noise prediction `model_output`, drawing
    /// the step's noise from `noise`.
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
        let steps = self.timesteps.len();
        let i = self.step_index;
        if i >= steps {
            return Err(InferenceError::SchedulerFinished { step: i, steps });
        }
        let tensor_error = |source| InferenceError::Tensor {
            context: format!("dpm-solver++ sde step {i}"),
            source,
        };
        // convert_model_output: the clean-sample estimate, x0 = (x - sigma_t * eps) / alpha_t
        // or x0 = alpha_t * x - sigma_t * v.
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let prediction_type = self.prediction_type;
        let clean = || -> candle_core::Result<Tensor> {
            let x = sample.to_dtype(DType::F32)?;
            let out = model_output.to_dtype(DType::F32)?;
            match prediction_type {
                PredictionType::Epsilon => {
                    (x - (out * f64::from(sigma_s0))?)? / f64::from(alpha_s0)
                }
                PredictionType::VPrediction => {
                    (x * f64::from(alpha_s0))? - (out * f64::from(sigma_s0))?
                }
            }
        };
        let x0 = clean().map_err(tensor_error)?;
        let noise = noise.randn(sample.dims(), NoiseDType::F32)?;
        let noise =
            Tensor::from_vec(noise, sample.dims(), sample.device()).map_err(tensor_error)?;

        let lower_order_final = i == steps - 1;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let lambda = |alpha: f32, sigma: f32| alpha.ln() - sigma.ln();
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        // With the final sigma 0, lambda_t is +inf and these become 0, 1 and 0: x0 is returned.
        let decay = sigma_t / sigma_s0 * (-h).exp();
        let x0_weight = alpha_t * (1.0 - (-2.0 * h).exp());
        let noise_weight = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();

        let sample_f32 = sample.to_dtype(DType::F32).map_err(tensor_error)?;
        let second_order = match &self.previous_x0 {
            Some(prev) if !(self.lower_order_nums < 1 || lower_order_final) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
                let h_0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                Some((prev, r0))
            }
            _ => None,
        };
        let run = || -> candle_core::Result<Tensor> {
            let mut x = ((&sample_f32 * f64::from(decay))? + (&x0 * f64::from(x0_weight))?)?;
            if let Some((prev, r0)) = second_order {
                // Midpoint: D1 = (x0 - x0_prev) / r0, weighted by half the x0 weight.
                let d1 = ((&x0 - prev)? * f64::from(1.0 / r0))?;
                x = (x + (d1 * f64::from(0.5 * x0_weight))?)?;
            }
            x = (x + (&noise * f64::from(noise_weight))?)?;
            x.to_dtype(model_output.dtype())
        };
        let prev_sample = run().map_err(tensor_error)?;
        self.previous_x0 = Some(x0);
        self.lower_order_nums = (self.lower_order_nums + 1).min(2);
        self.step_index += 1;
        Ok(prev_sample)
    }
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma `sigma` has,
/// by linear interpolation in log-sigma, rounded half to even as `np.round` does.
fn sigma_to_t(sigma: f64, log_train: &[f64]) -> i64 {
    let log_sigma = sigma.max(1e-10).ln();
    let below = log_train.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low = below.saturating_sub(1).min(log_train.len() - 2);
    let high = low + 1;
    let w = ((log_train[low] - log_sigma) / (log_train[low] - log_train[high])).clamp(0.0, 1.0);
    let t = (1.0 - w) * low as f64 + w * high as f64;
    t.round_ties_even() as i64
}
