//! What an image job asks for and what the engine gives back.
//!
//! [`ImageJob`] reads the fields of the network's SD `model_input` and of the reference's example
//! jobs (`num_iterations` or `num_inference_steps`); [`ImageJob::checked`] rounds the sides down
//! to the VAE's multiple of 8 and refuses only what this engine cannot run (a side below 8 or
//! above [`MAX_IMAGE_SIDE`], 0 steps or more than the scheduler's training timesteps, a guidance
//! scale that is not a finite number >= 0). The network's limits (35 steps, 2048 pixels by
//! default) are not applied here: the miner applies its configured ones, once, with
//! heurist-protocol's `MinerLimits::clamp` before the job reaches the engine.
//! [`PromptTokenizer`] is for callers that bring their own token ids
//! (`PromptEncoding::TokenIds`); by default the engine tokenizes and weights prompts itself.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{InferenceError, Result};
use crate::image::scheduler::{DEFAULT_SCHEDULER_CONFIG, SchedulerKind};

/// The largest width and height this engine runs: a 1024x1024 latent, four times the network's
/// default `max_width`, so any limit a miner configures for the network fits. Beyond it the
/// UNet's activations alone run to tens of gigabytes, and a side such as 100000 (a typo, a
/// hostile job) would abort the process on a failed allocation; it is refused before anything
/// is allocated. This is the engine's bound, not the network's: heurist-protocol's
/// `MinerLimits` holds those.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// The multiple of 8 pixels a side is rounded down to: the VAE's downscale factor, so the
/// decoded image has the job's size.
const SIDE_MULTIPLE: u32 = 8;

/// One text-to-image job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageJob {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (the unconditional branch of classifier-free guidance).
    #[serde(default)]
    pub neg_prompt: String,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Denoising steps.
    #[serde(alias = "num_iterations", alias = "num_inference_steps")]
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 runs without guidance, as diffusers does.
    pub guidance_scale: f64,
    /// The seed of torch's CPU generator.
    pub seed: u64,
    /// The scheduler the job names (the real examples' `sampler`: a diffusers class with its
    /// options, or a bare class or A1111 name); `None`: the family's default
    /// ([`SchedulerKind::SD15_DEFAULT`], [`SchedulerKind::SDXL_DEFAULT`]).
    #[serde(default, deserialize_with = "deserialize_sampler")]
    pub sampler: Option<SchedulerKind>,
}

/// A sampler as a job may name it: the network's form, a diffusers class with its options
/// (`{"class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++",
/// "use_karras_sigmas": true}`, other keys ignored), or a bare class or A1111 name
/// (`"DDIMScheduler"`, `"Euler a"`). Read through [`SchedulerKind::from_diffusers`] and
/// [`SchedulerKind`]'s `FromStr`, so the job and the engine share one vocabulary.
#[derive(Deserialize)]
#[serde(untagged)]
enum SamplerName {
    Named(String),
    Diffusers {
        class_name: String,
        #[serde(default)]
        algorithm_type: Option<String>,
        #[serde(default)]
        use_karras_sigmas: Option<bool>,
    },
}

/// Deserializes an optional [`SamplerName`] into the scheduler it names; a name this crate does
/// not run fails the job's parse with [`InferenceError::UnknownScheduler`]'s message.
fn deserialize_sampler<'de, D>(
    deserializer: D,
) -> std::result::Result<Option<SchedulerKind>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let Some(name) = Option::<SamplerName>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let kind = match name {
        SamplerName::Named(name) => name.parse(),
        SamplerName::Diffusers {
            class_name,
            algorithm_type,
            use_karras_sigmas,
        } => {
            SchedulerKind::from_diffusers(&class_name, algorithm_type.as_deref(), use_karras_sigmas)
        }
    };
    kind.map(Some).map_err(serde::de::Error::custom)
}

impl ImageJob {
    /// The job as the engine runs it: width and height rounded down to a multiple of 8 (the
    /// VAE's factor), everything else as asked. No network limit is applied: a job the miner's
    /// `MinerLimits` let through with 50 steps runs 50 steps.
    ///
    /// # Errors
    /// [`InferenceError::InvalidImageSize`] when a side is below 8 (nothing is left after
    /// rounding) or above [`MAX_IMAGE_SIDE`], [`InferenceError::InvalidInferenceSteps`] for 0
    /// steps or more than the scheduler's training timesteps (1000),
    /// [`InferenceError::InvalidSampling`] for a guidance scale that is NaN, infinite or
    /// negative.
    pub fn checked(&self) -> Result<Self> {
        let side = |name: &'static str, value: u32| {
            if (SIDE_MULTIPLE..=MAX_IMAGE_SIDE).contains(&value) {
                Ok(value / SIDE_MULTIPLE * SIDE_MULTIPLE)
            } else {
                Err(InferenceError::InvalidImageSize {
                    name,
                    value,
                    max: MAX_IMAGE_SIDE,
                })
            }
        };
        let train_timesteps = DEFAULT_SCHEDULER_CONFIG.num_train_timesteps;
        if !(1..=train_timesteps).contains(&self.steps) {
            return Err(InferenceError::InvalidInferenceSteps {
                steps: self.steps,
                train_timesteps,
            });
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return Err(InferenceError::InvalidSampling {
                name: "guidance_scale",
                value: self.guidance_scale,
                expected: "a finite number >= 0",
            });
        }
        Ok(Self {
            width: side("width", self.width)?,
            height: side("height", self.height)?,
            ..self.clone()
        })
    }
}

/// Turns a prompt into CLIP token ids: the start token, the text's tokens, the end token. The
/// engine pads or truncates to the encoder's 77 positions and applies no weights (the default
/// path, `PromptEncoding::LongPromptWeighting`, does both as the reference miner). Closures
/// `Fn(&str) -> Result<Vec<u32>>` are tokenizers.
pub trait PromptTokenizer {
    /// The ids of `text`.
    ///
    /// # Errors
    /// Whatever the tokenizer cannot encode.
    fn token_ids(&self, text: &str) -> Result<Vec<u32>>;
}

impl<F: Fn(&str) -> Result<Vec<u32>>> PromptTokenizer for F {
    fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        self(text)
    }
}

/// How long each phase of a job took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImageTimings {
    /// Tokenizing and encoding both prompts.
    pub encode: Duration,
    /// All denoising steps.
    pub denoise: Duration,
    /// VAE decoding and PNG encoding.
    pub decode: Duration,
}

/// A finished image and the facts a verifier or a reward needs.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// The image as a PNG file (8-bit RGB).
    pub png: Vec<u8>,
    /// The pixels, 8-bit RGB, row-major.
    pub rgb: Vec<u8>,
    /// Width in pixels (rounded down to a multiple of 8, [`ImageJob::checked`]).
    pub width: u32,
    /// Height in pixels (rounded down to a multiple of 8).
    pub height: u32,
    /// Denoising steps run.
    pub steps: usize,
    /// The seed used.
    pub seed: u64,
    /// The final latents (1, channels, height / 8, width / 8), f32, before VAE scaling.
    pub latents: Vec<f32>,
    /// Phase timings.
    pub timings: ImageTimings,
}

/// Encodes 8-bit RGB pixels as a PNG.
///
/// # Errors
/// [`InferenceError::ImageEncoding`] when the png crate refuses (a buffer of the wrong length).
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let fail = |err: png::EncodingError| InferenceError::ImageEncoding {
        problem: err.to_string(),
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(rgb).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn job() -> ImageJob {
        ImageJob {
            prompt: "p".into(),
            neg_prompt: String::new(),
            width: 1023,
            height: 4000,
            steps: 50,
            guidance_scale: 7.0,
            seed: 1,
            sampler: None,
        }
    }

    #[test]
    fn reads_the_protocols_sd_input_and_the_example_jobs() {
        // PROTOCOL.md's `model_input.SD` (num_iterations) ...
        let job: ImageJob = serde_json::from_str(
            r#"{"prompt": "p", "neg_prompt": "n", "height": 1024, "width": 680,
                "num_iterations": 22, "guidance_scale": 4, "seed": 2288435497}"#,
        )
        .unwrap();
        assert_eq!(
            (job.width, job.height, job.steps, job.seed),
            (680, 1024, 22, 2288435497)
        );
        assert_eq!(job.sampler, None);
        // ... and the reference's example files (num_inference_steps, sampler, no neg_prompt).
        let job: ImageJob = serde_json::from_str(
            r#"{"prompt": "p", "seed": 1, "width": 512, "height": 768,
                "num_inference_steps": 20, "guidance_scale": 7,
                "sampler": {"class_name": "DPMSolverMultistepScheduler",
                            "use_karras_sigmas": true, "algorithm_type": "sde-dpmsolver++"}}"#,
        )
        .unwrap();
        assert_eq!((job.steps, job.neg_prompt.as_str()), (20, ""));
        assert_eq!(job.sampler, Some(SchedulerKind::DpmSolverSdeKarras));
        // The other samplers by class, by A1111 name, and the options a class does not read.
        let sampler = |json: &str| {
            serde_json::from_str::<ImageJob>(&format!(
                r#"{{"prompt": "p", "seed": 1, "width": 64, "height": 64,
                    "num_inference_steps": 2, "guidance_scale": 7, "sampler": {json}}}"#
            ))
            .map(|job| job.sampler)
        };
        let cases = [
            (
                r#"{"class_name": "EulerAncestralDiscreteScheduler"}"#,
                SchedulerKind::EulerAncestralDiscrete,
            ),
            (
                r#"{"class_name": "DDIMScheduler", "use_karras_sigmas": false, "eta": 0}"#,
                SchedulerKind::Ddim,
            ),
            (
                r#"{"class_name": "EulerDiscreteScheduler"}"#,
                SchedulerKind::EulerDiscrete,
            ),
            (r#""Euler a""#, SchedulerKind::EulerAncestralDiscrete),
            (r#""DDIMScheduler""#, SchedulerKind::Ddim),
        ];
        for (json, kind) in cases {
            assert_eq!(sampler(json).unwrap(), Some(kind), "{json}");
        }
        assert_eq!(sampler("null").unwrap(), None);
    }

    #[test]
    fn sides_round_down_to_the_vaes_factor_and_no_network_limit_applies() {
        // 50 steps and 4000 px are above the network's default limits (35, 2048): those are
        // the miner's `MinerLimits` to apply, not the engine's.
        let checked = job().checked().unwrap();
        assert_eq!(
            (checked.width, checked.height, checked.steps),
            (1016, 4000, 50)
        );
        let most = ImageJob {
            width: MAX_IMAGE_SIDE,
            height: 8,
            steps: 1000,
            ..job()
        }
        .checked()
        .unwrap();
        assert_eq!(
            (most.width, most.height, most.steps),
            (MAX_IMAGE_SIDE, 8, 1000)
        );
    }

    #[test]
    fn impossible_jobs_are_typed_errors() {
        let err = ImageJob { width: 7, ..job() }.checked().unwrap_err();
        assert!(matches!(
            err,
            InferenceError::InvalidImageSize {
                name: "width",
                value: 7,
                max: MAX_IMAGE_SIDE
            }
        ));
        // What the engine cannot run is refused, naming the value and the bound.
        let err = ImageJob {
            height: 100_000,
            ..job()
        }
        .checked()
        .unwrap_err();
        assert!(matches!(
            err,
            InferenceError::InvalidImageSize {
                name: "height",
                value: 100_000,
                max: MAX_IMAGE_SIDE
            }
        ));
        assert!(
            err.to_string().contains("100000") && err.to_string().contains("8192"),
            "{err}"
        );
        let err = ImageJob { steps: 0, ..job() }.checked().unwrap_err();
        assert!(matches!(
            err,
            InferenceError::InvalidInferenceSteps { steps: 0, .. }
        ));
        let err = ImageJob {
            steps: 1001,
            ..job()
        }
        .checked()
        .unwrap_err();
        assert!(matches!(
            err,
            InferenceError::InvalidInferenceSteps {
                steps: 1001,
                train_timesteps: 1000
            }
        ));
        // A sampler this crate does not run fails the parse, naming it and its options.
        let err = serde_json::from_str::<ImageJob>(
            r#"{"prompt": "p", "seed": 1, "width": 64, "height": 64, "steps": 2,
                "guidance_scale": 7, "sampler": {"class_name": "DPMSolverMultistepScheduler",
                "algorithm_type": "dpmsolver++", "use_karras_sigmas": true}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"dpmsolver++\""), "{err}");
        let err = serde_json::from_str::<ImageJob>(
            r#"{"prompt": "p", "seed": 1, "width": 64, "height": 64, "steps": 2,
                "guidance_scale": 7, "sampler": "PNDMScheduler"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("PNDMScheduler"), "{err}");
        let err = ImageJob {
            guidance_scale: f64::NAN,
            ..job()
        }
        .checked()
        .unwrap_err();
        assert!(err.to_string().contains("guidance_scale"), "{err}");
    }
}
