//! The engine's default prompt path against the reference miner's long-prompt-weighting
//! pipelines (tests/fixtures/sd/lpw.*, made by tools/make_lpw_fixtures.py: the miner's
//! vendor/lpw_stable_diffusion*.py run on the tiny models with the real CLIP tokenizer).
//!
//! A weighted prompt of 120 tokens (nested, explicit and de-emphasis weights, an escaped
//! bracket) and a weighted negative prompt: the conditioning (SD 1.5: two 77-token chunks side
//! by side, mean-preserving weights; SDXL: chunks of both encoders, weighted towards each chunk's
//! end token, pooled from the last chunk) within 1e-4 relative, and a seeded run of the whole
//! pipeline to its per-step latents and its PIL image at PSNR >= 40 dB.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{ImageEngine, ImageJob, PromptEncoding};
use heurist_inference::{DeviceSpec, InferenceError};
use serde_json::Value;

use super::image_sd::{psnr, relative_error, sd_dir};

const TOLERANCE: f32 = 1e-4;

fn fixture() -> &'static (HashMap<String, Tensor>, Value) {
    static FIXTURE: OnceLock<(HashMap<String, Tensor>, Value)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tensors =
            candle_core::safetensors::load(sd_dir().join("lpw.safetensors"), &Device::Cpu).unwrap();
        let json = std::fs::read_to_string(sd_dir().join("lpw.json")).unwrap();
        (tensors, serde_json::from_str(&json).unwrap())
    })
}

fn tensor(name: &str) -> Tensor {
    fixture().0[name].clone()
}

fn string(key: &str) -> String {
    fixture().1[key].as_str().unwrap().to_owned()
}

fn sd15() -> &'static ImageEngine {
    super::image_sd::engine()
}

fn sdxl() -> &'static ImageEngine {
    static ENGINE: OnceLock<ImageEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        ImageEngine::load_checkpoint(sd_dir().join("tiny-sdxl-fp16.safetensors"), DeviceSpec::Cpu)
            .unwrap()
    })
}

fn job(run: &str) -> ImageJob {
    let run = &fixture().1[run];
    let number = |k: &str| run[k].as_u64().unwrap();
    ImageJob {
        prompt: string("prompt"),
        neg_prompt: string("neg_prompt"),
        width: number("width") as u32,
        height: number("height") as u32,
        steps: number("steps") as usize,
        guidance_scale: run["guidance_scale"].as_f64().unwrap(),
        seed: number("seed"),
        sampler: None,
    }
}

/// The whole pipeline: per-step latents within 1e-4, the image at PSNR >= 40 dB.
fn check_run(engine: &ImageEngine, run: &str, prefix: &str) {
    let job = job(run);
    let expected = tensor(&format!("{prefix}_latents"));
    let mut noise = TorchCpuGenerator::new(job.seed);
    let mut worst = 0f32;
    let mut steps = 0;
    let image = engine
        .generate_with(
            &job,
            PromptEncoding::LongPromptWeighting,
            &mut noise,
            &mut |step, latents| {
                let want = expected.get(step).unwrap().unsqueeze(0).unwrap();
                worst = worst.max(relative_error(latents, &want));
                steps += 1;
            },
        )
        .unwrap();
    assert_eq!(steps, expected.dim(0).unwrap());
    assert!(
        worst < TOLERANCE,
        "{prefix}: latents relative error {worst:e}"
    );
    let want = tensor(&format!("{prefix}_image"))
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let db = psnr(&image.rgb, &want);
    eprintln!("{prefix}: latents error {worst:e}, image PSNR {db:.1} dB");
    assert!(db >= 40.0, "{prefix}: PSNR {db:.1} dB");
    // The default entry point is this same path.
    assert_eq!(engine.generate(&job).unwrap().rgb, image.rgb);
}

#[test]
fn image_lpw_sd15_embeddings_match_the_reference_pipeline() {
    assert!(fixture().1["prompt_tokens"].as_u64().unwrap() > 77);
    let cond = sd15()
        .encode_prompts(&string("prompt"), Some(&string("neg_prompt")))
        .unwrap();
    let expected = tensor("lpw_sd15_context");
    // Two chunks of 77 side by side; the negative prompt padded to as many.
    assert_eq!(expected.dims(), [2, 154, 8]);
    let err = relative_error(&cond.context, &expected);
    assert!(
        err < TOLERANCE,
        "SD 1.5 LPW embeddings relative error {err:e}"
    );
    assert!(cond.pooled.is_none());
    // Without guidance only the prompt, with the same chunks.
    let alone = sd15().encode_prompts(&string("prompt"), None).unwrap();
    let err = relative_error(
        &alone.context,
        &expected.get(1).unwrap().unsqueeze(0).unwrap(),
    );
    assert!(err < TOLERANCE, "prompt alone: {err:e}");
}

#[test]
fn image_lpw_sd15_run_matches_the_reference_pipeline() {
    check_run(sd15(), "sd15_run", "lpw_sd15");
}

#[test]
fn image_lpw_sdxl_embeddings_match_the_reference_pipeline() {
    let cond = sdxl()
        .encode_prompts(&string("prompt"), Some(&string("neg_prompt")))
        .unwrap();
    let expected = tensor("lpw_sdxl_context");
    assert!(expected.dim(1).unwrap() > 77, "{:?}", expected.dims());
    let err = relative_error(&cond.context, &expected);
    assert!(
        err < TOLERANCE,
        "SDXL LPW embeddings relative error {err:e}"
    );
    let err = relative_error(cond.pooled.as_ref().unwrap(), &tensor("lpw_sdxl_pooled"));
    assert!(err < TOLERANCE, "SDXL pooled relative error {err:e}");
}

#[test]
fn image_lpw_sdxl_run_matches_the_reference_pipeline() {
    check_run(sdxl(), "sdxl_run", "lpw_sdxl");
}

#[test]
fn image_lpw_weights_change_the_conditioning_and_bad_weights_are_typed_errors() {
    let plain = sd15().encode_prompts("a red cat", Some("")).unwrap();
    let weighted = sd15().encode_prompts("a (red:1.5) cat", Some("")).unwrap();
    assert!(relative_error(&weighted.context, &plain.context) > 1e-3);
    let err = sd15()
        .encode_prompts("a (red:1.2.3) cat", Some(""))
        .unwrap_err();
    assert!(matches!(err, InferenceError::Prompt(_)), "{err:?}");
    assert!(err.to_string().contains("1.2.3"), "{err}");
    let err = sdxl().encode_prompts("", Some("")).unwrap_err();
    assert!(matches!(err, InferenceError::Prompt(_)), "{err:?}");
}
