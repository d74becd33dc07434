//! The SDXL engine against diffusers 0.30.2 / transformers 4.44.2 on a tiny random-weight SDXL
//! (tests/fixtures/sd/tiny-sdxl-fp16.safetensors, made by tools/make_sd_models.py): a single-file
//! checkpoint with CLIP ViT-L in transformers' names and OpenCLIP bigG in its own (fused q/k/v,
//! transposed projection), `label_emb` for the added conditioning. The text conditioning (both
//! encoders' penultimate states and the pooled projection), one UNet forward with pooled
//! embedding and time ids, and whole seeded CFG runs (DPM++ SDE Karras, Euler, and with a kohya
//! LoRA whose `lora_te2_` adapters land on slices of bigG's fused q/k/v) must match, as for
//! SD 1.5.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};
use heurist_inference::DeviceSpec;
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{
    AddEmbeddingDims, ClipActivation, ImageEngine, Lora, LoraScale, PromptEncoding, SchedulerKind,
    SdFamily,
};

use crate::image_sd::{fixed_ids, fixture_job, psnr, reference_json, relative_error, sd_dir, tensor};

const TOLERANCE: f32 = 1e-4;

fn engine() -> &'static ImageEngine {
    static ENGINE: OnceLock<ImageEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        ImageEngine::load_checkpoint(sd_dir().join("tiny-sdxl-fp16.safetensors"), DeviceSpec::Cpu)
            .unwrap()
    })
}

/// The prompts' ids without padding (the engine pads each encoder its own way).
fn prompt_ids() -> Vec<Vec<u32>> {
    serde_json::from_value(reference_json()["prompt_ids"].clone()).unwrap()
}

#[test]
fn image_sdxl_architecture_is_read_from_the_tensors() {
    let arch = engine().architecture();
    assert_eq!(arch.family, SdFamily::Sdxl);
    assert_eq!(arch.unet_channels, [32, 64]);
    assert_eq!(arch.unet_attention, [None, Some(2)]);
    assert_eq!((arch.mid_depth, arch.context_dim), (2, 16));
    assert_eq!(arch.layers_per_block, 1);
    assert_eq!(arch.unet_heads, [1, 1]);
    assert!(arch.linear_projection);
    assert_eq!(
        arch.add_embedding,
        Some(AddEmbeddingDims {
            time_id_dim: 8,
            in_features: 56
        })
    );
    let clip2 = arch.clip2.as_ref().unwrap();
    assert_eq!(
        (clip2.hidden, clip2.layers, clip2.projection),
        (8, 2, Some(8))
    );
    assert_eq!(clip2.activation, ClipActivation::Gelu);
    assert_eq!(arch.clip.activation, ClipActivation::QuickGelu);
}

#[test]
fn image_sdxl_text_and_unet_match_diffusers() {
    let ids = prompt_ids();
    // The engine's padding must be diffusers' (end token for CLIP-L, "!" for bigG).
    let padded1 = tensor("xl_ids_1")
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let padded2 = tensor("xl_ids_2")
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(padded1[0][..7], ids[0][..]);
    assert_eq!(padded2[1][2], 0);
    let text = engine().encode_token_ids(&ids).unwrap();
    let err = relative_error(&text.context, &tensor("xl_context"));
    eprintln!("SDXL context relative error {err:e}");
    assert!(err < TOLERANCE, "context {err}");
    let pooled = text.pooled.unwrap();
    let err = relative_error(&pooled, &tensor("xl_pooled"));
    eprintln!("SDXL pooled relative error {err:e}");
    assert!(err < TOLERANCE, "pooled {err}");

    let timestep = reference_json()["unet_timestep"].as_f64().unwrap();
    let out = engine()
        .unet_forward(
            &tensor("xl_unet_sample"),
            timestep,
            &tensor("xl_context"),
            Some((&tensor("xl_pooled"), &tensor("xl_time_ids"))),
        )
        .unwrap();
    let err = relative_error(&out, &tensor("xl_unet_out"));
    eprintln!("SDXL UNet relative error {err:e}");
    assert!(err < TOLERANCE, "UNet {err}");
    // Without its added conditioning the SDXL UNet refuses to run.
    let err = engine()
        .unet_forward(
            &tensor("xl_unet_sample"),
            timestep,
            &tensor("xl_context"),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("time ids"), "{err}");
}

/// The seeded CFG run of the fixture with `sampler`, against diffusers' latents and image.
fn check_run(sampler: Option<SchedulerKind>, latents_key: &str, image: &str) {
    let json = reference_json();
    let run = &json["xl_run"];
    let ids = prompt_ids();
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(run, sampler);
    let expected = tensor(latents_key);
    let mut worst = 0f32;
    let mut noise = TorchCpuGenerator::new(job.seed);
    let out = engine()
        .generate_with(
            &job,
            PromptEncoding::TokenIds(&tokenizer),
            &mut noise,
            &mut |step, latents: &Tensor| {
                let err =
                    relative_error(latents, &expected.get(step).unwrap().unsqueeze(0).unwrap());
                eprintln!("{latents_key} step {step}: relative error {err:e}");
                worst = worst.max(err);
            },
        )
        .unwrap();
    assert!(
        worst < TOLERANCE,
        "{latents_key}: trajectory relative error {worst}"
    );
    let expected_rgb = tensor(image)
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let psnr = psnr(&out.rgb, &expected_rgb);
    eprintln!("{image}: PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "{image}: PSNR {psnr}");
}

#[test]
fn image_sdxl_seeded_run_matches_diffusers() {
    // The network's sampler, as its SDXL example jobs name it.
    let kind = SchedulerKind::from_diffusers(
        "DPMSolverMultistepScheduler",
        Some("sde-dpmsolver++"),
        Some(true),
    )
    .unwrap();
    check_run(Some(kind), "xl_run_latents", "xl_run_image");
}

#[test]
fn image_sdxl_default_euler_run_matches_diffusers() {
    assert_eq!(engine().default_sampler(), SchedulerKind::EulerDiscrete);
    check_run(None, "xl_euler_latents", "xl_euler_image");
}

#[test]
fn image_sdxl_lora_matches_diffusers_fused_lora() {
    let mut engine =
        ImageEngine::load_checkpoint(sd_dir().join("tiny-sdxl-fp16.safetensors"), DeviceSpec::Cpu)
            .unwrap();
    let lora = Lora::open(sd_dir().join("tiny-sdxl-lora.safetensors")).unwrap();
    let scale = reference_json()["lora_scale"].as_f64().unwrap();
    engine.set_lora(Some((Arc::new(lora), LoraScale::fused(scale)))).unwrap();
    let text = engine.encode_token_ids(&prompt_ids()).unwrap();
    let err = relative_error(&text.context, &tensor("xl_lora_context"));
    eprintln!("SDXL LoRA context relative error {err:e}");
    assert!(err < TOLERANCE, "context {err}");
    assert!(relative_error(&text.context, &tensor("xl_context")) > 1e-2);
    let err = relative_error(&text.pooled.unwrap(), &tensor("xl_lora_pooled"));
    assert!(err < TOLERANCE, "pooled {err}");

    let run = &reference_json()["xl_run"];
    let ids = prompt_ids();
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(run, Some(SchedulerKind::DpmSolverSdeKarras));
    let image = engine.generate_with_ids(&job, &tokenizer).unwrap();
    let expected = tensor("xl_lora_run_image")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let psnr = psnr(&image.rgb, &expected);
    eprintln!("SDXL LoRA image PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "PSNR {psnr}");
}
