//! The re-run half of an image check (features `image` and `inference`): the job run again on
//! the claimed model with `heurist-inference`, as an honest miner would have run it, then
//! compared with the claimed image.
//!
//! The caller loads the claimed checkpoint (and merges the job's LoRA at its weight) into the
//! [`ImageEngine`]; which file that is comes from the registry, and its checksum from
//! [`crate::verify_model_file`].
//!
//! A miner's precision changes its noise: a diffusers pipeline in f16 (what GPU miners run)
//! draws its initial latents in f16 (and, but for DPM-Solver++ SDE, its scheduler's noise), and
//! torch's f16 draws are other values than its f32 ones, so the same seed gives another picture (measured on the tiny model: a mean
//! difference of 63 levels). [`check_image`] therefore re-runs with f32 noise and, when that
//! image does not match, with f16 noise ([`NOISE_DTYPES`]); an honest miner matches one of them,
//! a cheat neither.

use heurist_inference::image::noise::{DrawnIn, NoiseDType, TorchCpuGenerator};
use heurist_inference::image::{GeneratedImage, ImageEngine, ImageJob, PromptEncoding};

use super::{ImageThresholds, ImageVerdict, compare_rgb, decode_png, rgb_image};
use crate::error::{Result, VerifyError};

/// The noise precisions an honest miner may have drawn in, in the order they are tried.
pub const NOISE_DTYPES: [NoiseDType; 2] = [NoiseDType::F32, NoiseDType::F16];

/// Runs `job` on `engine` with the reference's noise (torch's CPU generator seeded with the
/// job's seed, drawn as a diffusers pipeline in `noise` precision draws it:
/// [`DrawnIn::half_precision_miner`] for f16) and prompts encoded as asked: the image an honest
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
        NoiseDType::F16 => DrawnIn::half_precision_miner(
            generator,
            job.sampler.unwrap_or_else(|| engine.default_sampler()),
        ),
    };
    engine
        .generate_with(job, prompts, &mut source, &mut |_, _| {})
        .map_err(|e| VerifyError::Inference {
            reason: e.to_string(),
        })
}

/// Re-runs `job` on `engine` and judges `claimed_png` against it under `thresholds`, with each
/// of [`NOISE_DTYPES`] until one holds (the verdict of the last one tried otherwise).
///
/// # Errors
/// As [`rerun`]; [`VerifyError::ImageDecode`] when the claimed bytes are not a PNG (a
/// malformed result, which the caller may count against the miner).
pub fn check_image(
    engine: &ImageEngine,
    job: &ImageJob,
    prompts: PromptEncoding<'_>,
    claimed_png: &[u8],
    thresholds: &ImageThresholds,
) -> Result<ImageVerdict> {
    let claimed = decode_png(claimed_png)?;
    let (w, h) = claimed.dimensions();
    check_rgb(engine, job, prompts, (w, h, claimed.into_raw()), thresholds)
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
    thresholds: &ImageThresholds,
) -> Result<ImageVerdict> {
    let claimed = rgb_image(width, height, claimed_rgb)?;
    let mut verdict = None;
    for noise in NOISE_DTYPES {
        let reference = reference_image(&rerun(engine, job, prompts, noise)?)?;
        let v = thresholds.judge(compare_rgb(&claimed, &reference));
        if v.holds() {
            return Ok(v);
        }
        verdict = Some(v);
    }
    verdict.ok_or(VerifyError::Inference {
        reason: "no noise precision to re-run in".into(),
    })
}

/// The re-run's pixels as an image.
///
/// # Errors
/// [`VerifyError::ImageBuffer`] if the engine's buffer does not match its size.
pub fn reference_image(generated: &GeneratedImage) -> Result<image::RgbImage> {
    rgb_image(generated.width, generated.height, generated.rgb.clone())
}
