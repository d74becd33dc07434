//! A kohya LoRA (tests/fixtures/sd/tiny-sd15-lora.safetensors: linear layers, 1x1 and 3x3
//! convolutions, text encoder and UNet, rank 2, alpha 1) merged at weight 0.8 against diffusers,
//! which loaded the same file with its kohya converter and peft and fused it at that scale
//! (tools/make_sd_models.py asserts that diffusers fused every adapter). Taking the LoRA out
//! gives the base model back; an SD 1.5 LoRA on SDXL is a typed error. Also the VAE override
//! (another VAE file in the registry's layout) against diffusers.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use heurist_inference::image::{ImageEngine, Lora, LoraScale};
use heurist_inference::{DeviceSpec, InferenceError};

use crate::image_sd::{checkpoint_fp16, fixed_ids, fixture_job, psnr, reference_json, relative_error, sd_dir, tensor};

const TOLERANCE: f32 = 1e-4;

fn lora() -> Arc<Lora> {
    Arc::new(Lora::open(sd_dir().join("tiny-sd15-lora.safetensors")).unwrap())
}

fn ids() -> Vec<Vec<u32>> {
    tensor("text_ids")
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap()
}

fn unet_out(engine: &ImageEngine, context: &Tensor) -> Tensor {
    let timestep = reference_json()["unet_timestep"].as_f64().unwrap();
    engine
        .unet_forward(&tensor("unet_sample"), timestep, context, None)
        .unwrap()
}

#[test]
fn image_sd_lora_matches_diffusers_fused_lora() {
    let mut engine = ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    let scale = reference_json()["lora_scale"].as_f64().unwrap();
    engine.set_lora(Some((lora(), LoraScale::fused(scale)))).unwrap();
    assert_eq!(engine.lora().unwrap().1, LoraScale::fused(scale));

    let hidden = engine.encode_token_ids(&ids()).unwrap().context;
    let err = relative_error(&hidden, &tensor("lora_text_hidden"));
    eprintln!("LoRA CLIP relative error {err:e}");
    assert!(err < TOLERANCE, "CLIP {err}");
    // The LoRA changes the text encoder: the base reference is far away.
    assert!(relative_error(&hidden, &tensor("text_hidden")) > 1e-2);

    let out = unet_out(&engine, &tensor("lora_text_hidden"));
    let err = relative_error(&out, &tensor("lora_unet_out"));
    eprintln!("LoRA UNet relative error {err:e}");
    assert!(err < TOLERANCE, "UNet {err}");

    let run = &reference_json()["run"];
    let ids = ids();
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(run, None);
    let image = engine.generate_with_ids(&job, &tokenizer).unwrap();
    let expected = tensor("lora_run_image")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let psnr = psnr(&image.rgb, &expected);
    eprintln!("LoRA image PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "PSNR {psnr}");

    // Out again: the base model, bit for bit as loaded without a LoRA.
    engine.set_lora(None).unwrap();
    assert!(engine.lora().is_none());
    let base = ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    let context = tensor("text_hidden");
    let again = unet_out(&engine, &context);
    assert_eq!(relative_error(&again, &unet_out(&base, &context)), 0.0);
    let hidden = engine.encode_token_ids(&ids).unwrap().context;
    assert!(relative_error(&hidden, &tensor("text_hidden")) < TOLERANCE);
}

#[test]
fn image_sd_lora_on_sdxl_is_a_typed_error() {
    let mut engine =
        ImageEngine::load_checkpoint(sd_dir().join("tiny-sdxl-fp16.safetensors"), DeviceSpec::Cpu)
            .unwrap();
    let err = engine.set_lora(Some((lora(), LoraScale::reference(1.0)))).unwrap_err();
    assert!(matches!(err, InferenceError::LoraMismatch { .. }), "{err}");
    assert!(err.to_string().contains("lora_"), "{err}");
    // The engine keeps working without it.
    assert!(engine.lora().is_none());
    let err = engine.set_lora(Some((lora(), LoraScale::reference(f64::NAN)))).unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::InvalidSampling {
                name: "lora_weight",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn image_sd_lora_file_without_adapters_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let tensors = HashMap::from([(
        "unet.down_blocks.0.lora_A.weight".to_owned(),
        Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = Lora::open(&path).unwrap_err();
    assert!(matches!(err, InferenceError::LoraFormat { .. }), "{err}");
}

#[test]
fn image_sd_vae_override_matches_diffusers() {
    let mut engine = ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    engine
        .set_vae(Some(&sd_dir().join("tiny-vae-override.safetensors")))
        .unwrap();
    let image = engine.vae_decode(&tensor("vae_latent")).unwrap();
    let err = relative_error(&image, &tensor("vae2_image"));
    eprintln!("VAE override relative error {err:e}");
    assert!(err < TOLERANCE, "VAE override {err}");
    assert!(relative_error(&image, &tensor("vae_image")) > 1e-2);
    engine.set_vae(None).unwrap();
    let image = engine.vae_decode(&tensor("vae_latent")).unwrap();
    assert!(relative_error(&image, &tensor("vae_image")) < TOLERANCE);
    // A file with no VAE in it.
    let err = engine
        .set_vae(Some(&sd_dir().join("tiny-sd15-lora.safetensors")))
        .unwrap_err();
    assert!(
        matches!(err, InferenceError::UnknownCheckpointLayout { .. }),
        "{err}"
    );
}
