//! The re-run half of an image check (features `image` and `inference`): the job run again on
//! the claimed model with `heurist-inference`, as an honest miner would have run it, then
//! compared with the claimed image.
//!
//! The caller loads the claimed checkpoint (and merges the job's LoRA at its weight) into the
//! [`ImageEngine`]; which file that is comes from the registry, and its checksum from
//! [`crate::verify_model_file`].
//!
//! A miner's precision changes its noise: a diffusers pipeline in f16 (what GPU miners run) or
//! bf16 draws its initial latents in that precision (and, but for DPM-Solver++ SDE, its
//! scheduler's noise), and torch's f16 and bf16 draws are other values than its f32 ones, so the
//! same seed gives another picture (measured on the tiny models: about 10 dB apart, as far as
//! another seed). [`check_image`] therefore re-runs with f32 noise and, when that image does not
//! match, with f16 and then bf16 noise ([`Precision::ALL`]); an honest miner matches one of them,
//! a cheat none.

use heurist_inference::image::noise::{DrawnIn, NoiseDType, TorchCpuGenerator};
use heurist_inference::image::{GeneratedImage, ImageEngine, ImageJob, PromptEncoding};

use super::{ImageVerdict, Precision, PrecisionBars, decode_png, rgb_image};
use crate::error::{Result, VerifyError};

/// Runs `job` on `engine` with the reference's noise (torch's CPU generator seeded with the
/// job's seed, drawn as a diffusers pipeline in `noise` precision draws it:
/// [`DrawnIn::reduced_precision_miner`] for f16 and bf16) and prompts encoded as asked: the image an honest
/// miner running in that precision submits.
///
/// # Errors
/// [`VerifyError::Inference`] when the engine refuses the job or fails.
pub fn rerun(
    engine: &ImageEngine,
    job: &ImageJob,
    prompts: PromptEncoding<'_>,
    noise: NoiseDType,
) -> Result<GeneratedImage> {
    let generator = TorchCpuGenerator::new(job.seed);
    let mut source = match noise {
        NoiseDType::F32 => DrawnIn::new(generator, None, None),
        reduced => DrawnIn::reduced_precision_miner(
            generator,
            job.sampler.unwrap_or_else(|| engine.default_sampler()),
            reduced,
        ),
    };
    engine
        .generate_with(job, prompts, &mut source, &mut |_, _| {})
        .map_err(|e| VerifyError::Inference {
            reason: e.to_string(),
        })
}

/// Re-runs `job` on `engine` and judges `claimed_png` against it: with each [`Precision`]'s
/// noise in turn until the image passes that precision's bars in `bars`
/// ([`PrecisionBars::NETWORK`]: the calibrated ones). Returns the precision the image matched,
/// or, when none did, the closest one (highest PSNR) and its rejection.
///
/// # Errors
/// As [`rerun`]; [`VerifyError::ImageDecode`] when the claimed bytes are not a PNG (a
/// malformed result, which the caller may count against the miner).
pub fn check_image(
    engine: &ImageEngine,
    job: &ImageJob,
    prompts: PromptEncoding<'_>,
    claimed_png: &[u8],
    bars: &PrecisionBars,
) -> Result<(Precision, ImageVerdict)> {
    let claimed = decode_png(claimed_png)?;
    let (w, h) = claimed.dimensions();
    check_rgb(engine, job, prompts, (w, h, claimed.into_raw()), bars)
}

/// Like [`check_image`] for pixels already decoded (8-bit RGB, row-major).
///
/// # Errors
/// As [`rerun`]; [`VerifyError::ImageBuffer`] when `claimed_rgb` is not `width * height * 3`
/// bytes.
pub fn check_rgb(
    engine: &ImageEngine,
    job: &ImageJob,
    prompts: PromptEncoding<'_>,
    (width, height, claimed_rgb): (u32, u32, Vec<u8>),
    bars: &PrecisionBars,
) -> Result<(Precision, ImageVerdict)> {
    let claimed = rgb_image(width, height, claimed_rgb)?;
    bars.judge_reruns(&claimed, |precision| {
        reference_image(&rerun(engine, job, prompts, precision.into())?)
    })
}

impl From<Precision> for NoiseDType {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F32 => Self::F32,
            Precision::F16 => Self::F16,
            Precision::Bf16 => Self::BF16,
        }
    }
}

/// The re-run's pixels as an image.
///
/// # Errors
/// [`VerifyError::ImageBuffer`] if the engine's buffer does not match its size.
pub fn reference_image(generated: &GeneratedImage) -> Result<image::RgbImage> {
    rgb_image(generated.width, generated.height, generated.rgb.clone())
}
