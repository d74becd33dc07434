//! Which scheduler a job runs: [`SchedulerKind`] parses the names jobs use (diffusers class
//! names with their options, as in the network's example jobs' `sampler`, and the A1111 names
//! civitai metadata uses) and knows each model family's default; [`Scheduler`] is one of them,
//! built for a job's step count, behind one interface.
//!
//! The network's jobs name `DPMSolverMultistepScheduler` with `algorithm_type: "sde-dpmsolver++"`
//! and `use_karras_sigmas: true`; a job without a sampler gets its family's default, the one the
//! reference miner keeps (SD 1.5: that same DPM-Solver++ 2M SDE Karras; SDXL: its base config's
//! Euler, "leading" spacing, steps offset 1).

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use super::{
    DdimScheduler, DpmSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler, SchedulerConfig,
};
use crate::error::{InferenceError, Result};
use crate::image::noise::NoiseSource;

/// The schedulers this crate runs.
///
/// ```
/// use heurist_inference::image::scheduler::SchedulerKind;
///
/// let kind = SchedulerKind::from_diffusers(
///     "DPMSolverMultistepScheduler",
///     Some("sde-dpmsolver++"),
///     Some(true),
/// )?;
/// assert_eq!(kind, SchedulerKind::SD15_DEFAULT);
/// assert_eq!("Euler a".parse::<SchedulerKind>()?, SchedulerKind::EulerAncestralDiscrete);
/// assert!("PNDMScheduler".parse::<SchedulerKind>().is_err());
/// # Ok::<(), heurist_inference::InferenceError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DPMSolverMultistepScheduler`, `algorithm_type="sde-dpmsolver++"`,
    /// `use_karras_sigmas=True` (A1111: "DPM++ 2M SDE Karras").
    DpmSolverSdeKarras,
    /// `EulerDiscreteScheduler` (A1111: "Euler").
    EulerDiscrete,
    /// `EulerAncestralDiscreteScheduler` (A1111: "Euler a").
    EulerAncestralDiscrete,
    /// `DDIMScheduler` (A1111: "DDIM").
    Ddim,
}

impl SchedulerKind {
    /// The reference miner's scheduler for SD 1.5 models.
    pub const SD15_DEFAULT: Self = Self::DpmSolverSdeKarras;
    /// The reference miner's scheduler for SDXL models (SDXL base's own config).
    pub const SDXL_DEFAULT: Self = Self::EulerDiscrete;

    /// All of them, in a fixed order.
    pub const ALL: [Self; 4] = [
        Self::DpmSolverSdeKarras,
        Self::EulerDiscrete,
        Self::EulerAncestralDiscrete,
        Self::Ddim,
    ];

    /// The scheduler a job names as a diffusers class with the options jobs give
    /// (`algorithm_type`, `use_karras_sigmas`). Options a class does not have are ignored, as
    /// diffusers' `from_config` ignores them.
    ///
    /// # Errors
    /// [`InferenceError::UnknownScheduler`] for another class, and for options that change the
    /// algorithm into one this crate does not run: `DPMSolverMultistepScheduler` other than
    /// `sde-dpmsolver++` with Karras sigmas (diffusers' defaults are `dpmsolver++` without),
    /// `EulerDiscreteScheduler` with Karras sigmas.
    pub fn from_diffusers(
        class_name: &str,
        algorithm_type: Option<&str>,
        use_karras_sigmas: Option<bool>,
    ) -> Result<Self> {
        let karras = use_karras_sigmas.unwrap_or(false);
        let unsupported = |options: String| InferenceError::UnknownScheduler {
            name: format!("{class_name} ({options})"),
        };
        match class_name {
            "DPMSolverMultistepScheduler" => {
                let algorithm = algorithm_type.unwrap_or("dpmsolver++");
                if algorithm == "sde-dpmsolver++" && karras {
                    Ok(Self::DpmSolverSdeKarras)
                } else {
                    Err(unsupported(format!(
                        "algorithm_type {algorithm:?}, use_karras_sigmas {karras}"
                    )))
                }
            }
            "EulerDiscreteScheduler" if karras => {
                Err(unsupported("use_karras_sigmas true".to_owned()))
            }
            "EulerDiscreteScheduler" => Ok(Self::EulerDiscrete),
            "EulerAncestralDiscreteScheduler" => Ok(Self::EulerAncestralDiscrete),
            "DDIMScheduler" => Ok(Self::Ddim),
            other => Err(InferenceError::UnknownScheduler {
                name: other.to_owned(),
            }),
        }
    }

    /// The default scheduler of a registry model type (`sd15`, `composite15`: SD 1.5's;
    /// `sdxl10`, `compositexl`: SDXL's); `None` for types that are not SD 1.5 or SDXL.
    pub fn default_for_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "sd15" | "composite15" => Some(Self::SD15_DEFAULT),
            "sdxl10" | "compositexl" => Some(Self::SDXL_DEFAULT),
            _ => None,
        }
    }

    /// The diffusers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::DpmSolverSdeKarras => "DPMSolverMultistepScheduler",
            Self::EulerDiscrete => "EulerDiscreteScheduler",
            Self::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            Self::Ddim => "DDIMScheduler",
        }
    }

    /// The A1111 name.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::DpmSolverSdeKarras => "DPM++ 2M SDE Karras",
            Self::EulerDiscrete => "Euler",
            Self::EulerAncestralDiscrete => "Euler a",
            Self::Ddim => "DDIM",
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = InferenceError;

    /// A diffusers class name (with no options: `DPMSolverMultistepScheduler` alone means
    /// diffusers' default `dpmsolver++` and is refused) or an A1111 name.
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.a1111_name() == name)
            .map_or_else(|| Self::from_diffusers(name, None, None), Ok)
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.a1111_name())
    }
}

/// One job's scheduler, whichever it is.
///
/// ```
/// use heurist_inference::image::scheduler::{DEFAULT_SCHEDULER_CONFIG, Scheduler, SchedulerKind};
///
/// let s = Scheduler::new(SchedulerKind::SDXL_DEFAULT, DEFAULT_SCHEDULER_CONFIG, 25)?;
/// assert_eq!(s.kind(), SchedulerKind::EulerDiscrete);
/// assert_eq!(s.timesteps().len(), 25);
/// # Ok::<(), heurist_inference::InferenceError>(())
/// ```
#[derive(Debug, Clone)]
pub enum Scheduler {
    /// DPM-Solver++ 2M SDE Karras.
    DpmSolverSdeKarras(DpmSolverMultistepScheduler),
    /// Euler discrete.
    EulerDiscrete(EulerDiscreteScheduler),
    /// Euler ancestral.
    EulerAncestralDiscrete(EulerAncestralDiscreteScheduler),
    /// DDIM (build it with [`DdimScheduler::with_eta`] for `eta > 0`).
    Ddim(DdimScheduler),
}

impl Scheduler {
    /// `kind` under `config`, set for `num_inference_steps` steps (DDIM with `eta = 0`).
    ///
    /// # Errors
    /// The schedulers' `new` errors.
    pub fn new(
        kind: SchedulerKind,
        config: SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self> {
        Ok(match kind {
            SchedulerKind::DpmSolverSdeKarras => Self::DpmSolverSdeKarras(
                DpmSolverMultistepScheduler::new(config, num_inference_steps)?,
            ),
            SchedulerKind::EulerDiscrete => {
                Self::EulerDiscrete(EulerDiscreteScheduler::new(config, num_inference_steps)?)
            }
            SchedulerKind::EulerAncestralDiscrete => Self::EulerAncestralDiscrete(
                EulerAncestralDiscreteScheduler::new(config, num_inference_steps)?,
            ),
            SchedulerKind::Ddim => Self::Ddim(DdimScheduler::new(config, num_inference_steps)?),
        })
    }

    /// Which scheduler this is.
    pub fn kind(&self) -> SchedulerKind {
        match self {
            Self::DpmSolverSdeKarras(_) => SchedulerKind::DpmSolverSdeKarras,
            Self::EulerDiscrete(_) => SchedulerKind::EulerDiscrete,
            Self::EulerAncestralDiscrete(_) => SchedulerKind::EulerAncestralDiscrete,
            Self::Ddim(_) => SchedulerKind::Ddim,
        }
    }

    /// The timesteps, one per step, from the noisiest (what the model is conditioned on).
    pub fn timesteps(&self) -> Vec<f64> {
        match self {
            Self::DpmSolverSdeKarras(s) => s.timesteps().iter().map(|&t| t as f64).collect(),
            Self::EulerDiscrete(s) => s.timesteps().iter().map(|&t| f64::from(t)).collect(),
            Self::EulerAncestralDiscrete(s) => {
                s.timesteps().iter().map(|&t| f64::from(t)).collect()
            }
            Self::Ddim(s) => s.timesteps().iter().map(|&t| t as f64).collect(),
        }
    }

    /// What the initial standard normal latents are multiplied by.
    pub fn init_noise_sigma(&self) -> f32 {
        match self {
            Self::DpmSolverSdeKarras(s) => s.init_noise_sigma(),
            Self::EulerDiscrete(s) => s.init_noise_sigma(),
            Self::EulerAncestralDiscrete(s) => s.init_noise_sigma(),
            Self::Ddim(s) => s.init_noise_sigma(),
        }
    }

    /// The next step's index (0 before the first step).
    pub fn step_index(&self) -> usize {
        match self {
            Self::DpmSolverSdeKarras(s) => s.step_index(),
            Self::EulerDiscrete(s) => s.step_index(),
            Self::EulerAncestralDiscrete(s) => s.step_index(),
            Self::Ddim(s) => s.step_index(),
        }
    }

    /// The sample scaled for the model's input at the current step.
    ///
    /// # Errors
    /// The Euler schedulers' [`InferenceError::SchedulerFinished`] after the last step and
    /// [`InferenceError::Tensor`].
    pub fn scale_model_input(&self, sample: &Tensor) -> Result<Tensor> {
        match self {
            Self::DpmSolverSdeKarras(s) => Ok(s.scale_model_input(sample)),
            Self::EulerDiscrete(s) => s.scale_model_input(sample),
            Self::EulerAncestralDiscrete(s) => s.scale_model_input(sample),
            Self::Ddim(s) => Ok(s.scale_model_input(sample)),
        }
    }

    /// One step with the model's prediction, drawing what the scheduler draws from `noise`.
    ///
    /// # Errors
    /// The schedulers' `step` errors.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        match self {
            Self::DpmSolverSdeKarras(s) => s.step(model_output, sample, noise),
            Self::EulerDiscrete(s) => s.step(model_output, sample, noise),
            Self::EulerAncestralDiscrete(s) => s.step(model_output, sample, noise),
            Self::Ddim(s) => s.step(model_output, sample, noise),
        }
    }
}
