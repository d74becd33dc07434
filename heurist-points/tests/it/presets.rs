//! Every row of both shipped presets, each expected value worked out by hand.
//!
//! Units of both presets: one Waifu Point = 512*512*20 = 5,242,880 pixel-steps of SD 1.5
//! (multiplier 0.3), so a job earns `px / 5,242,880 * m / 0.3`; one Llama Point = 1,000
//! tokens of the 1x model, so a job earns `tokens / 1000 * m`. Results are micro-points,
//! rounded down.

use heurist_points::{Currency, GpuCatalogue, JobRecord, PointsError, RuleSet};

fn image(model_id: &str, model_type: Option<&str>, w: u32, h: u32, steps: u32, latency_s: f64) -> JobRecord {
    JobRecord {
        model_id: model_id.into(),
        model_type: model_type.map(Into::into),
        width: w,
        height: h,
        steps,
        latency_s,
        ..Default::default()
    }
}

fn llm(model_id: &str, input: u64, output: u64, latency_s: f64) -> JobRecord {
    JobRecord {
        model_id: model_id.into(),
        model_type: Some("llm8b16b".into()),
        input_tokens: input,
        output_tokens: output,
        latency_s,
        ..Default::default()
    }
}

fn micro(rules: &RuleSet, job: &JobRecord, currency: Currency) -> u64 {
    let p = rules.points(job).unwrap();
    assert_eq!(p.currency(), currency, "{job:?}");
    p.micro()
}

#[test]
fn seed_image_rows() {
    let r = RuleSet::preset("seed").unwrap();
    // SD 1.5 (sd15), Aurora 512x768x25: 9,830,400 / 5,242,880 = 1.875; * 0.3 / 0.3 = 1.875.
    assert_eq!(micro(&r, &image("Aurora", Some("sd15"), 512, 768, 25, 4.0), Currency::Waifu), 1_875_000);
    // SD 1.5 LoRA (composite15), MagusDevon 512x512x20: the unit itself, 1 point.
    assert_eq!(micro(&r, &image("MagusDevon", Some("composite15"), 512, 512, 20, 4.0), Currency::Waifu), 1_000_000);
    // SDXL (sdxl10) 1024x1024x25: 26,214,400 / 5,242,880 = 5; * 1 / 0.3 = 16.6666666 -> 16.666666.
    assert_eq!(micro(&r, &image("SDXL", Some("sdxl10"), 1024, 1024, 25, 9.0), Currency::Waifu), 16_666_666);
    // SDXL LoRA (compositexl), PepeXL 680x1024x20: 13,926,400 / 5,242,880 = 2.65625; * 1.2 / 0.3 = 10.625.
    assert_eq!(micro(&r, &image("PepeXL", Some("compositexl"), 680, 1024, 20, 9.0), Currency::Waifu), 10_625_000);
    // Flux (flux-dev) 680x1024x22: 15,319,040 / 5,242,880 = 2.921875; * 10 / 0.3 = 97.3958333 -> 97.395833.
    assert_eq!(micro(&r, &image("FLUX.1-dev", Some("flux-dev"), 680, 1024, 22, 15.0), Currency::Waifu), 97_395_833);
    // Flux LoRA (flux-dev-lora) 512x512x20: 1 * 10 / 0.3 = 33.3333333 -> 33.333333.
    assert_eq!(micro(&r, &image("HeuristLogo", Some("flux-dev-lora"), 512, 512, 20, 15.0), Currency::Waifu), 33_333_333);
}

#[test]
fn seed_llm_rows() {
    let r = RuleSet::preset("seed").unwrap();
    // dolphin-2.9-llama3-8b 0.24x: (1200 + 300) / 1000 = 1.5; * 0.24 = 0.36.
    assert_eq!(micro(&r, &llm("dolphin-2.9-llama3-8b", 1200, 300, 20.0), Currency::Llama), 360_000);
    // openhermes-2-pro-mistral-7b 0.2x: (700 + 300) / 1000 = 1; * 0.2 = 0.2.
    assert_eq!(micro(&r, &llm("openhermes-2-pro-mistral-7b", 700, 300, 20.0), Currency::Llama), 200_000);
    // openhermes-mixtral-8x7b-gptq 1x: (2000 + 500) / 1000 = 2.5.
    assert_eq!(micro(&r, &llm("openhermes-mixtral-8x7b-gptq", 2000, 500, 20.0), Currency::Llama), 2_500_000);
    // 1 Llama Point = 1,000 tokens of the 1x model (Season 1).
    assert_eq!(micro(&r, &llm("openhermes-mixtral-8x7b-gptq", 1000, 0, 1.0), Currency::Llama), 1_000_000);
    // 7 tokens of dolphin: 0.007 * 0.24 = 0.00168 -> 1,680 micro-points exactly.
    assert_eq!(micro(&r, &llm("dolphin-2.9-llama3-8b", 4, 3, 1.0), Currency::Llama), 1_680);
}

#[test]
fn later_image_rows() {
    let r = RuleSet::preset("later").unwrap();
    // Unchanged categories, same arithmetic as the seed rows.
    assert_eq!(micro(&r, &image("Aurora", Some("sd15"), 512, 768, 25, 4.0), Currency::Waifu), 1_875_000);
    assert_eq!(micro(&r, &image("SDXL", Some("sdxl10"), 1024, 1024, 25, 9.0), Currency::Waifu), 16_666_666);
    assert_eq!(micro(&r, &image("PepeXL", Some("compositexl"), 680, 1024, 20, 9.0), Currency::Waifu), 10_625_000);
    // Flux "temporarily disabled": 2.921875 * 0 / 0.3 = 0.
    assert_eq!(micro(&r, &image("FLUX.1-dev", Some("flux-dev"), 680, 1024, 22, 15.0), Currency::Waifu), 0);
}

#[test]
fn later_llm_rows() {
    let r = RuleSet::preset("later").unwrap();
    // dolphin-2.9-llama3-8b 0.5x: 1.5 * 0.5 = 0.75.
    assert_eq!(micro(&r, &llm("dolphin-2.9-llama3-8b", 1200, 300, 20.0), Currency::Llama), 750_000);
    // hermes-3-llama3.1-8b 0.5x: (1000 + 1000) / 1000 = 2; * 0.5 = 1.
    assert_eq!(micro(&r, &llm("hermes-3-llama3.1-8b", 1000, 1000, 20.0), Currency::Llama), 1_000_000);
    // theia-llama-3.1-8b 0.5x: (300 + 100) / 1000 = 0.4; * 0.5 = 0.2.
    assert_eq!(micro(&r, &llm("theia-llama-3.1-8b", 300, 100, 20.0), Currency::Llama), 200_000);
    // openhermes-mixtral-8x7b-gptq 1x: 2.5.
    assert_eq!(micro(&r, &llm("openhermes-mixtral-8x7b-gptq", 2000, 500, 20.0), Currency::Llama), 2_500_000);
    // openhermes-2-pro-mistral-7b was dropped.
    let err = r.points(&llm("openhermes-2-pro-mistral-7b", 700, 300, 20.0)).unwrap_err();
    assert!(matches!(err, PointsError::UnknownModel { ref model_id, .. } if model_id == "openhermes-2-pro-mistral-7b"));
}

#[test]
fn timeouts_of_both_presets() {
    for name in ["seed", "later"] {
        let r = RuleSet::preset(name).unwrap();
        // 18 s image deadline: on it earns (1 point for the unit job), past it by a microsecond earns 0.
        assert_eq!(micro(&r, &image("Aurora", Some("sd15"), 512, 512, 20, 18.0), Currency::Waifu), 1_000_000);
        assert_eq!(micro(&r, &image("Aurora", Some("sd15"), 512, 512, 20, 18.000_001), Currency::Waifu), 0);
        assert_eq!(micro(&r, &image("Aurora", Some("sd15"), 512, 512, 20, 18.000_000_1), Currency::Waifu), 0);
        // 180 s LLM deadline.
        let mixtral = |lat| llm("openhermes-mixtral-8x7b-gptq", 1000, 0, lat);
        assert_eq!(micro(&r, &mixtral(180.0), Currency::Llama), 1_000_000);
        assert_eq!(micro(&r, &mixtral(180.5), Currency::Llama), 0);
        // The default curve is flat: 0.1 s and 17.9 s earn the same.
        assert_eq!(
            micro(&r, &image("SDXL", Some("sdxl10"), 1024, 1024, 20, 0.1), Currency::Waifu),
            micro(&r, &image("SDXL", Some("sdxl10"), 1024, 1024, 20, 17.9), Currency::Waifu)
        );
    }
}

#[test]
fn clamps_and_registry_lookup() {
    let r = RuleSet::preset("seed").unwrap();
    // SD 1.5 clamps to 1024x1024: 2048x2048x20 counts as 1024x1024x20 = 20,971,520 px-steps = 4 points.
    assert_eq!(micro(&r, &image("Aurora", Some("sd15"), 2048, 2048, 20, 4.0), Currency::Waifu), 4_000_000);
    // No model_type: the preset's model_types knows "AnimagineXL" is sdxl10:
    // 1024x1024x20 = 4 units * 1 / 0.3 = 13.333333.
    assert_eq!(micro(&r, &image("AnimagineXL", None, 1024, 1024, 20, 4.0), Currency::Waifu), 13_333_333);
    // ... and an LLM id needs no type at all.
    let mut job = llm("dolphin-2.9-llama3-8b", 1000, 0, 1.0);
    job.model_type = None;
    assert_eq!(micro(&r, &job, Currency::Llama), 240_000);
    // An unknown image model without a type is refused, naming it.
    let err = r.points(&image("NoSuchModel", None, 512, 512, 20, 1.0)).unwrap_err();
    assert!(matches!(err, PointsError::UnknownModel { ref model_id, .. } if model_id == "NoSuchModel"));
    // A type that maps nowhere.
    let err = r.points(&image("X", Some("sd3"), 512, 512, 20, 1.0)).unwrap_err();
    assert!(matches!(err, PointsError::UnknownModelType { ref model_type, .. } if model_type == "sd3"));
    // A bad latency.
    assert!(matches!(r.points(&image("SDXL", Some("sdxl10"), 1, 1, 1, -1.0)), Err(PointsError::InvalidJob { .. })));
    assert!(matches!(r.points(&image("SDXL", Some("sdxl10"), 1, 1, 1, f64::NAN)), Err(PointsError::InvalidJob { .. })));
}

fn gpu(name: &str) -> &'static heurist_points::Gpu {
    GpuCatalogue::builtin().unwrap().lookup(name).unwrap()
}

#[test]
fn minimum_gpu_rows() {
    for name in ["seed", "later"] {
        let r = RuleSet::preset(name).unwrap();
        let ok = |g: &str, cat: &str| r.eligible_for_category(gpu(g), cat).unwrap();
        // SD 1.5: 3070, 4060 Ti, A4000.
        assert!(ok("NVIDIA GeForce RTX 3070", "sd15") && !ok("NVIDIA GeForce RTX 3060 Ti", "sd15"));
        assert!(ok("NVIDIA GeForce RTX 4060 Ti", "sd15") && !ok("NVIDIA GeForce RTX 4060", "sd15"));
        assert!(ok("NVIDIA RTX A4000", "sd15") && !ok("NVIDIA RTX A2000", "sd15"));
        // SDXL and SDXL LoRA: 3090, 4080, A4500.
        for cat in ["sdxl", "sdxl_lora"] {
            assert!(ok("NVIDIA GeForce RTX 3090", cat) && !ok("NVIDIA GeForce RTX 3080 Ti", cat));
            assert!(ok("NVIDIA GeForce RTX 4080", cat) && !ok("NVIDIA GeForce RTX 4070 Ti SUPER", cat));
            assert!(ok("NVIDIA RTX A4500", cat) && !ok("NVIDIA RTX A4000", cat));
        }
        // Flux: 4090, A100.
        assert!(ok("NVIDIA GeForce RTX 4090", "flux") && !ok("NVIDIA GeForce RTX 4080 SUPER", "flux"));
        assert!(ok("NVIDIA A100-SXM4-80GB", "flux") && ok("NVIDIA A100-PCIE-40GB", "flux"));
        assert!(ok("NVIDIA H100 80GB HBM3", "flux") && !ok("NVIDIA RTX A6000", "flux"));
        // A series the seed does not list (RTX 50) is held to the lowest listed minimum:
        // for Flux that is the A100 (312 TFLOPs): 5090 (419) yes, 5080 (225.1) no.
        assert!(ok("NVIDIA GeForce RTX 5090", "flux") && !ok("NVIDIA GeForce RTX 5080", "flux"));
    }
}

#[test]
fn vram_rows() {
    let seed = RuleSet::preset("seed").unwrap();
    let later = RuleSet::preset("later").unwrap();
    let ok = |r: &RuleSet, g: &str, m: &str| r.eligible_for_model(gpu(g), m).unwrap();
    // Seed dolphin and openhermes-2-pro: 16 GB. A 4060 Ti may be the 8 GB card: not eligible.
    for m in ["dolphin-2.9-llama3-8b", "openhermes-2-pro-mistral-7b"] {
        assert!(ok(&seed, "NVIDIA RTX A4000", m) && ok(&seed, "NVIDIA GeForce RTX 4080", m));
        assert!(!ok(&seed, "NVIDIA GeForce RTX 4060 Ti", m) && !ok(&seed, "NVIDIA GeForce RTX 3080 Ti", m));
    }
    // Mixtral: 40 GB in both.
    for r in [&seed, &later] {
        assert!(ok(r, "NVIDIA A100-PCIE-40GB", "openhermes-mixtral-8x7b-gptq"));
        assert!(ok(r, "NVIDIA RTX A6000", "openhermes-mixtral-8x7b-gptq"));
        assert!(!ok(r, "NVIDIA GeForce RTX 4090", "openhermes-mixtral-8x7b-gptq"));
    }
    // Later: the 8B models on 24 GB.
    for m in ["dolphin-2.9-llama3-8b", "hermes-3-llama3.1-8b", "theia-llama-3.1-8b"] {
        assert!(ok(&later, "NVIDIA GeForce RTX 3090", m) && !ok(&later, "NVIDIA GeForce RTX 4080", m));
    }
}

#[test]
fn hardware_in_the_record_is_checked() {
    let r = RuleSet::preset("seed").unwrap();
    let mut job = image("SDXL", Some("sdxl10"), 1024, 1024, 20, 5.0);
    job.hardware = Some("NVIDIA GeForce RTX 4090".into());
    assert_eq!(r.points(&job).unwrap().micro(), 13_333_333);
    job.hardware = Some("NVIDIA GeForce RTX 3060".into());
    assert!(matches!(r.points(&job), Err(PointsError::IneligibleGpu { ref gpu, .. }) if gpu == "NVIDIA GeForce RTX 3060"));
    job.hardware = Some("NVIDIA GeForce RTX 4090 Laptop GPU".into());
    assert!(matches!(r.points(&job), Err(PointsError::UnknownGpu { ref name }) if name.contains("Laptop")));
}

#[test]
fn presets_round_trip_through_toml_and_json() {
    for name in heurist_points::rules::PRESETS {
        let r = RuleSet::preset(name).unwrap();
        let toml_text = r.to_toml_string().unwrap();
        let again = RuleSet::from_toml_str(&toml_text).unwrap();
        assert_eq!(again.data(), r.data());
        let json_text = serde_json::to_string_pretty(r.data()).unwrap();
        let again = RuleSet::from_json_str(&json_text).unwrap();
        assert_eq!(again.data(), r.data());
    }
    assert_eq!(heurist_points::rules::DEFAULT_PRESET, "seed");
}
