//! Diffusion schedulers with diffusers' configuration semantics: the noise schedule a model was
//! trained with, the timesteps and sigmas `set_timesteps(n)` makes, and the update `step()`.
//!
//! - [`DpmSolverMultistepScheduler`]: DPM-Solver++ (2M) in its SDE variant with Karras sigmas,
//!   the reference miner's sampler for SD 1.5 (`algorithm_type="sde-dpmsolver++"`,
//!   `use_karras_sigmas=True`);
//! - [`EulerDiscreteScheduler`]: Euler with "leading" timestep spacing, the SDXL base default.
//!
//! Invariants: sigmas end with 0 (diffusers' `final_sigmas_type="zero"`), so the last step
//! returns the model's clean-sample estimate; a schedule has `n` timesteps and `n + 1` sigmas;
//! the tables are computed in the precisions diffusers uses (training sigmas in f32, Karras
//! interpolation in f64, stored sigmas in f32) and agree with diffusers 0.30.2 within 1e-5
//! (tests/fixtures/diffusers).

mod dpm_solver;
mod euler;

pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;

use crate::error::{InferenceError, Result};

/// The training noise schedule, diffusers' `beta_schedule="scaled_linear"` (the one of SD 1.5
/// and SDXL: betas are squares of a linear ramp between the square roots of the bounds).
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
}

/// SD 1.5's and SDXL's schedule: 1000 steps, betas 0.00085 to 0.012, steps offset 1.
pub const DEFAULT_SCHEDULER_CONFIG: SchedulerConfig = SchedulerConfig {
    num_train_timesteps: 1000,
    beta_start: 0.00085,
    beta_end: 0.012,
    steps_offset: 1,
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
        if num_inference_steps == 0 || num_inference_steps > self.num_train_timesteps {
            return Err(InferenceError::InvalidInferenceSteps {
                steps: num_inference_steps,
                train_timesteps: self.num_train_timesteps,
            });
        }
        Ok(())
    }

    /// The training sigmas `sqrt((1 - alpha_bar) / alpha_bar)` per timestep, in f32 as diffusers
    /// computes them (torch f32 `linspace`, square, `cumprod`).
    fn train_sigmas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let start = self.beta_start.sqrt() as f32;
        let end = self.beta_end.sqrt() as f32;
        let step = (end - start) / (n - 1) as f32;
        let halfway = n / 2;
        let mut alpha_bar = 1.0f32;
        (0..n)
            .map(|i| {
                // torch's linspace fills the first half from the start and the second half back
                // from the end, so that both ends are exact.
                let root = if i < halfway {
                    start + step * i as f32
                } else {
                    end - step * (n - i - 1) as f32
                };
                alpha_bar *= 1.0 - root * root;
                ((1.0 - alpha_bar) / alpha_bar).sqrt()
            })
            .collect()
    }
}

/// `alpha_t` and `sigma_t` of diffusers' `_sigma_to_alpha_sigma_t` for an epsilon model in the
/// variance-exploding parametrisation.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}
