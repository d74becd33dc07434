//! Jobs naming the samplers beside the network's, Euler ancestral (`EulerAncestralDiscreteScheduler`)
//! and DDIM (`DDIMScheduler`), run end to end through [`ImageEngine::generate`] on the tiny SD 1.5
//! model, against diffusers 0.30.2's seeded runs of the same model and prompts
//! (tests/fixtures/sd/samplers.safetensors, made by tools/make_sampler_fixtures.py): every step's
//! latents within 1e-4 relative, the image at PSNR >= 40 dB. Euler ancestral draws a fresh noise
//! tensor from the job's generator every step, so its trajectory only matches when the engine
//! draws in diffusers' order and dtype; DDIM at `eta = 0` draws nothing after the initial latents.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{ImageJob, PromptEncoding, SchedulerKind};
use serde_json::Value;

use crate::image_sd::{engine, psnr, relative_error, sd_dir};

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> &'static HashMap<String, Tensor> {
    static FIXTURES: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        candle_core::safetensors::load(sd_dir().join("samplers.safetensors"), &Device::Cpu).unwrap()
    })
}

/// The fixture's run as a job in the network's JSON, naming `sampler`. The prompts are the ones
/// whose CLIP token ids the fixture's runs were conditioned on.
fn job(sampler: &str) -> ImageJob {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(sd_dir().join("samplers.json")).unwrap())
            .unwrap();
    let mut job = json["run"].clone();
    job["prompt"] = "a photo of a cat".into();
    job["neg_prompt"] = "".into();
    let steps = job.as_object_mut().unwrap().remove("steps").unwrap();
    job["num_inference_steps"] = steps;
    job["sampler"] = serde_json::from_str(sampler).unwrap();
    serde_json::from_value(job).unwrap()
}

fn check_run(sampler: &str, kind: SchedulerKind, key: &str) {
    let job = job(sampler);
    assert_eq!(job.sampler, Some(kind));
    let expected = &fixtures()[&format!("{key}_latents")];
    let mut worst = 0f32;
    let mut steps_seen = 0;
    let mut noise = TorchCpuGenerator::new(job.seed);
    let image = engine()
        .generate_with(
            &job,
            PromptEncoding::LongPromptWeighting,
            &mut noise,
            &mut |step, latents| {
                let err =
                    relative_error(latents, &expected.get(step).unwrap().unsqueeze(0).unwrap());
                eprintln!("{key} step {step}: latents relative error {err:e}");
                worst = worst.max(err);
                steps_seen += 1;
            },
        )
        .unwrap();
    assert_eq!(steps_seen, job.steps);
    assert!(
        worst < TOLERANCE,
        "{key}: trajectory relative error {worst}"
    );
    let expected_rgb = fixtures()[&format!("{key}_image")]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let psnr = psnr(&image.rgb, &expected_rgb);
    eprintln!("{key}: image PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "{key}: PSNR {psnr}");
    // `generate` is that same run: the job's seed, long-prompt weighting.
    assert_eq!(engine().generate(&job).unwrap().rgb, image.rgb);
}

#[test]
fn image_sd_euler_ancestral_job_matches_diffusers() {
    check_run(
        r#"{"class_name": "EulerAncestralDiscreteScheduler"}"#,
        SchedulerKind::EulerAncestralDiscrete,
        "euler_a",
    );
}

#[test]
fn image_sd_ddim_job_matches_diffusers() {
    check_run(
        r#"{"class_name": "DDIMScheduler"}"#,
        SchedulerKind::Ddim,
        "ddim",
    );
}

#[test]
fn image_sd_samplers_give_different_images() {
    // The same seed and prompts: what differs is the sampler alone (Euler ancestral's fresh
    // noise per step, DDIM's deterministic update, the default DPM++ SDE's), so a job's sampler
    // must reach the engine rather than fall back to the family's default.
    let images: Vec<Vec<u8>> = [r#""Euler a""#, r#""DDIM""#, "null"]
        .into_iter()
        .map(|sampler| engine().generate(&job(sampler)).unwrap().rgb)
        .collect();
    assert_ne!(images[0], images[1]);
    assert_ne!(images[0], images[2]);
    assert_ne!(images[1], images[2]);
}
