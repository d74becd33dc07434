//! Registry composites on the tiny SD 1.5: entries shaped like the real `composite15` ones (a
//! LoRA over a named base at `default_weight`) load in one call, and switch over one loaded base
//! to give exactly what a fresh load of the base with the LoRA merged gives.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use heurist_inference::image::{CompositeSpec, Composites, ImageEngine, Lora, LoraScale};
use heurist_inference::{DeviceSpec, InferenceError};

use crate::image_sd::{checkpoint_fp16, fixed_ids, fixture_job, reference_json, sd_dir};

/// A registry entry as models.json has them, for the tiny model.
fn entry(name: &str, weight: f64, kind: &str, base: &str) -> CompositeSpec {
    let json = serde_json::json!({
        "name": name, "base": base, "author": "tests", "type": kind,
        "file_url": format!("https://example.invalid/{name}.safetensors"), "dtype": "float16",
        "size_mb": 1, "default_weight": weight, "checksum": "00",
        "defaults": {"width": 64, "height": 64, "num_inference_steps": 6, "guidance_scale": 7}
    });
    serde_json::from_value(json).unwrap()
}

fn run(engine: &ImageEngine) -> Vec<u8> {
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference_json()["prompt_ids"].clone()).unwrap();
    let job = fixture_job(&reference_json()["run"], None);
    engine.generate_with_ids(&job, &fixed_ids(&ids)).unwrap().rgb
}

fn fresh(lora: &str, weight: f64) -> Vec<u8> {
    let mut engine = ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    engine
        .set_lora(Some((Arc::new(Lora::open(sd_dir().join(lora)).unwrap()), LoraScale::reference(weight))))
        .unwrap();
    run(&engine)
}

#[test]
fn image_composites_switch_over_one_base() {
    let kohya = sd_dir().join("tiny-sd15-lora.safetensors");
    let peft = sd_dir().join("tiny-sd15-lora-peft.safetensors");
    let a = entry("TinyKoi", 0.8, "composite15", "TinyBase");
    let b = entry("TinyPepe", 0.6, "composite15", "TinyBase");

    let one = ImageEngine::load_composite(&a, checkpoint_fp16(), &kohya, DeviceSpec::Cpu).unwrap();
    assert_eq!(one.lora().unwrap().1, LoraScale::reference(0.8));
    let expected_a = fresh("tiny-sd15-lora.safetensors", 0.8);
    assert_eq!(run(&one), expected_a);

    let mut c = Composites::load("TinyBase", checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    let base = run(c.engine());
    let got_a = run(c.select(&a, &kohya).unwrap());
    assert_eq!(got_a, expected_a);
    let got_b = run(c.select(&b, &peft).unwrap());
    assert_eq!(c.current(), Some("TinyPepe"));
    assert_eq!(got_b, fresh("tiny-sd15-lora-peft.safetensors", 0.6));
    assert_ne!(got_a, got_b);
    // Back and forth over the same base: the same images, the base untouched.
    assert_eq!(run(c.select(&a, &kohya).unwrap()), expected_a);
    assert_eq!(run(c.select_base().unwrap()), base);
    assert_eq!(c.current(), None);
}

#[test]
fn image_composite_errors_name_what_does_not_fit() {
    let kohya = sd_dir().join("tiny-sd15-lora.safetensors");
    let mut c = Composites::load("TinyBase", checkpoint_fp16(), DeviceSpec::Cpu).unwrap();
    let cases = [
        (entry("X", 0.8, "composite15", "OtherBase"), "OtherBase"),
        (entry("X", 0.8, "compositexl", "TinyBase"), "Sdxl"),
        (entry("X", 0.8, "sd15", "TinyBase"), "\"sd15\""),
        (entry("X", f64::NAN, "composite15", "TinyBase"), "default_weight"),
    ];
    for (spec, needle) in cases {
        let err = c.select(&spec, &kohya).unwrap_err();
        assert!(matches!(err, InferenceError::Composite { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert_eq!(c.current(), None);
    // An SDXL LoRA as an SD 1.5 composite: the LoRA's own mismatch.
    let err = c.select(&entry("Y", 0.8, "composite15", "TinyBase"), sd_dir().join("tiny-sdxl-lora.safetensors")).unwrap_err();
    assert!(matches!(err, InferenceError::LoraMismatch { .. }), "{err}");
    assert_eq!(c.current(), None);
}
