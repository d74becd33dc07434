//! LoRAs in diffusers' key style (tools/make_sd_lora_fixtures.py): peft adapters saved by
//! `save_lora_weights` (`unet.….lora_A.weight` / `lora_B`, `text_encoder.…`, `text_encoder_2.…`;
//! linear layers, 1x1 and 3x3 convolutions; no alphas) for the tiny SD 1.5 and SDXL, merged at
//! 0.8 against diffusers' `load_lora_weights` + `fuse_lora(lora_scale=0.8)` on the recorded
//! seeded runs; the older `.lora.down` / `.lora_linear_layer.down` style merges identically; a
//! LoRA of one family on the other is a typed error naming what does not fit.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use heurist_inference::image::{ImageEngine, Lora, LoraScale, SchedulerKind};
use heurist_inference::{DeviceSpec, InferenceError};

use crate::image_sd::{checkpoint_fp16, fixed_ids, fixture_job, psnr, reference_json, sd_dir};

const SCALE: f64 = 0.8;

fn peft_reference(name: &str) -> Vec<u8> {
    static REF: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    let map = REF.get_or_init(|| {
        candle_core::safetensors::load(sd_dir().join("lora_peft_reference.safetensors"), &Device::Cpu)
            .unwrap()
    });
    map[name].flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn lora(name: &str) -> Arc<Lora> {
    Arc::new(Lora::open(sd_dir().join(name)).unwrap())
}

fn prompt_ids() -> Vec<Vec<u32>> {
    serde_json::from_value(reference_json()["prompt_ids"].clone()).unwrap()
}

fn sdxl() -> ImageEngine {
    ImageEngine::load_checkpoint(sd_dir().join("tiny-sdxl-fp16.safetensors"), DeviceSpec::Cpu).unwrap()
}

#[test]
fn image_sd15_peft_lora_matches_diffusers_fused_lora() {
    let peft = lora("tiny-sd15-lora-peft.safetensors");
    // 9 UNet adapters (linear, 1x1 and 3x3 convolutions) and 3 on the text encoder, under
    // the kohya names the engine merges by.
    let modules: Vec<&str> = peft.modules().collect();
    assert_eq!(modules.len(), 12, "{modules:?}");
    assert!(modules.contains(&"lora_unet_up_blocks_2_resnets_2_conv1"), "{modules:?}");
    assert!(modules.contains(&"lora_te_text_model_encoder_layers_0_mlp_fc2"), "{modules:?}");
    assert_eq!(peft.context_width(), Some(8));

    let mut engine = ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    let ids = prompt_ids();
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(&reference_json()["run"], None);
    let base = engine.generate_with_ids(&job, &tokenizer).unwrap();
    let expected = peft_reference("sd15_run_image");
    // The LoRA moves the picture: the base image is far from diffusers' LoRA image.
    assert!(psnr(&base.rgb, &expected) < 30.0);

    engine.set_lora(Some((peft, LoraScale::fused(SCALE)))).unwrap();
    let image = engine.generate_with_ids(&job, &tokenizer).unwrap();
    let db = psnr(&image.rgb, &expected);
    eprintln!("SD 1.5 peft LoRA image PSNR {db:.1} dB");
    assert!(db >= 40.0, "PSNR {db}");

    // The older diffusers style holds the same matrices: the same image, bit for bit.
    engine.set_lora(Some((lora("tiny-sd15-lora-diffusers-old.safetensors"), LoraScale::fused(SCALE)))).unwrap();
    let old = engine.generate_with_ids(&job, &tokenizer).unwrap();
    assert_eq!(old.rgb, image.rgb);
}

#[test]
fn image_sdxl_peft_lora_matches_diffusers_fused_lora() {
    let peft = lora("tiny-sdxl-lora-peft.safetensors");
    assert!(peft.adapts_second_text_encoder());
    assert!(peft.modules().any(|m| m == "lora_te_text_model_encoder_layers_1_self_attn_k_proj"));
    let mut engine = sdxl();
    let ids = prompt_ids();
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(&reference_json()["xl_run"], Some(SchedulerKind::DpmSolverSdeKarras));
    let base = engine.generate_with_ids(&job, &tokenizer).unwrap();
    let base_db = psnr(&base.rgb, &peft_reference("xl_run_image"));
    eprintln!("SDXL base vs diffusers' LoRA image: PSNR {base_db:.1} dB");
    assert!(base_db < 35.0, "the LoRA does not move the SDXL image: {base_db}");
    // `text_encoder.` of a diffusers file lands on SDXL's first encoder (kohya's `lora_te1_`).
    engine.set_lora(Some((peft, LoraScale::fused(SCALE)))).unwrap();
    let image = engine.generate_with_ids(&job, &tokenizer).unwrap();
    let db = psnr(&image.rgb, &peft_reference("xl_run_image"));
    eprintln!("SDXL peft LoRA image PSNR {db:.1} dB");
    assert!(db >= 40.0, "PSNR {db}");
}

#[test]
fn image_lora_of_the_other_family_names_the_mismatch() {
    // An SD 1.5 LoRA on SDXL: the cross-attention width tells.
    let mut engine = sdxl();
    let err = engine.set_lora(Some((lora("tiny-sd15-lora-peft.safetensors"), LoraScale::fused(SCALE)))).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, InferenceError::LoraMismatch { .. }), "{text}");
    assert!(text.contains("Sdxl") && text.contains("8-wide") && text.contains("16"), "{text}");
    assert!(engine.lora().is_none());

    // An SDXL LoRA on SD 1.5: its second text encoder has nowhere to go.
    let mut engine = ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    let err = engine.set_lora(Some((lora("tiny-sdxl-lora-peft.safetensors"), LoraScale::fused(SCALE)))).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("second text encoder") && text.contains("lora_"), "{text}");
}

#[test]
fn image_diffusers_lora_bad_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, keys: &[&str]| {
        let path = dir.path().join(name);
        let tensors: HashMap<String, Tensor> = keys
            .iter()
            .map(|k| ((*k).to_owned(), Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap()))
            .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        path
    };
    let cases = [
        ("up.safetensors", vec!["unet.a.to_q.lora_A.weight"], "lora_B"),
        ("dora.safetensors", vec!["unet.a.to_q.lora_A.weight", "unet.a.to_q.lora_B.weight", "unet.a.to_q.lora_magnitude_vector"], "DoRA"),
        ("vae.safetensors", vec!["vae.a.lora_A.weight", "vae.a.lora_B.weight"], "vae.a"),
    ];
    for (name, keys, needle) in cases {
        let err = Lora::open(save(name, &keys)).unwrap_err();
        assert!(matches!(err, InferenceError::LoraFormat { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
}
