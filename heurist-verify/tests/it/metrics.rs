//! Metrics: the FLOPs model against PyTorch's counts, physical flags, population flags, and
//! bad input.

use heurist_points::{GpuCatalogue, RuleSet};
use heurist_protocol::{Job, MinerSubmit, Registry};
use heurist_verify::VerifyError;
use heurist_verify::metrics::{
    Claim, CostModel, Flag, MetricsChecker, Observation, PopulationThresholds, Work, check_population, job_of,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fixture;

/// The current registry plus the July 2024 one (the seed rules' LLMs).
fn registry() -> Registry {
    let mut r = Registry::bundled().unwrap();
    r.extend(Registry::bundled_2024_07().unwrap());
    r
}

fn claim(model_id: &str, work: Work, gpu: &str, latency: f64) -> Claim {
    Claim {
        miner_id: "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0".into(),
        job_id: "job-1".into(),
        model_id: model_id.into(),
        work,
        gpu: gpu.into(),
        inference_latency_s: latency,
    }
}

const SDXL_1024: Work = Work::Image { width: 1024, height: 1024, steps: 25, guided: true };

#[test]
fn unet_flops_model_is_a_tight_lower_bound_of_torch_counts() {
    let text = std::fs::read_to_string(fixture("torch-flop-counter/unet_flops.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert!(rows.len() >= 8);
    for row in rows {
        let ty = match row["family"].as_str().unwrap() {
            "sd15" => heurist_protocol::ModelType::Sd15,
            _ => heurist_protocol::ModelType::Sdxl10,
        };
        let (w, h) = (row["width"].as_u64().unwrap() as u32, row["height"].as_u64().unwrap() as u32);
        let ours = CostModel::of("m", &ty)
            .unwrap()
            .flops("m", &Work::Image { width: w, height: h, steps: 1, guided: false })
            .unwrap();
        let torch = row["flops"].as_f64().unwrap();
        // Never above the real count (an honest claim is never impossible), and not so far
        // below it that the check is toothless: within 45% at every size up to 1024².
        assert!(ours <= torch, "{row}: ours {ours:e} > torch {torch:e}");
        assert!(ours >= 0.55 * torch, "{row}: ours {ours:e} < 0.55 x torch {torch:e}");
    }
}

#[test]
fn physically_impossible_latency_is_flagged_with_its_numbers() {
    let registry = registry();
    let rules = RuleSet::preset("seed").unwrap();
    let checker = MetricsChecker::new(&registry, &rules, GpuCatalogue::builtin().unwrap());

    // SDXL 1024² x 25 steps x 2 (guidance): 50 x 5.9e6 x 1024² = 3.09e14 FLOPs; at 330.3
    // TFLOPs that is 0.937 s.
    let report = checker.check(&claim("SDXL", SDXL_1024, "NVIDIA GeForce RTX 4090", 0.5)).unwrap();
    assert_eq!(report.gpu, "NVIDIA GeForce RTX 4090");
    assert!((report.min_inference_s - 50.0 * 5.9e6 * 1048576.0 / 330.3e12).abs() < 1e-9, "{report:?}");
    let [Flag::FasterThanPeak { min_s, claimed_s, .. }] = &report.flags[..] else { panic!("{report:?}") };
    assert_eq!(*claimed_s, 0.5);
    let text = report.flags[0].to_string();
    assert!(text.contains("0.500 s") && text.contains("0.937 s") && text.contains("330.3"), "{text}");
    assert!(*min_s > 0.9);

    // A real 4090 takes some 4 s: nothing to flag, and the multiple says how far above.
    let honest = checker.check(&claim("SDXL", SDXL_1024, "NVIDIA GeForce RTX 4090", 4.0)).unwrap();
    assert!(honest.flags.is_empty(), "{honest:?}");
    assert!(honest.bound_multiple > 4.0);
    // Without guidance, half the work: 0.5 s is possible.
    let unguided = Work::Image { width: 1024, height: 1024, steps: 25, guided: false };
    assert!(checker.check(&claim("SDXL", unguided, "NVIDIA GeForce RTX 4090", 0.5)).unwrap().flags.is_empty());
    // A composite (SD 1.5 LoRA over a base) is costed as its family.
    let sd = Work::Image { width: 512, height: 768, steps: 25, guided: true };
    let report = checker.check(&claim("MagusDevon", sd, "NVIDIA GeForce RTX 4090", 0.1)).unwrap();
    assert!(matches!(report.flags[..], [Flag::FasterThanPeak { .. }]), "{report:?}");
}

#[test]
fn gpu_below_the_category_minimum_or_without_the_vram_is_flagged() {
    let registry = registry();
    let rules = RuleSet::preset("seed").unwrap();
    let checker = MetricsChecker::new(&registry, &rules, GpuCatalogue::builtin().unwrap());

    // SDXL needs an RTX 3090 in the 30 series.
    let report = checker.check(&claim("SDXL", SDXL_1024, "NVIDIA GeForce RTX 3060", 30.0)).unwrap();
    let [Flag::BelowCategoryMinimum { category, minimum, .. }] = &report.flags[..] else { panic!("{report:?}") };
    assert_eq!(category, "sdxl");
    assert!(minimum.iter().any(|m| m == "NVIDIA GeForce RTX 3090"));
    assert!(report.flags[0].to_string().contains("NVIDIA GeForce RTX 3090"));
    assert!(checker.check(&claim("SDXL", SDXL_1024, "NVIDIA GeForce RTX 3090", 30.0)).unwrap().flags.is_empty());

    // dolphin needs 16 GB (rule set); the RTX 3060 name guarantees 8.
    let chat = Work::Llm { input_tokens: 600, output_tokens: 400 };
    let report = checker.check(&claim("dolphin-2.9-llama3-8b", chat, "NVIDIA GeForce RTX 3060", 20.0)).unwrap();
    assert!(
        matches!(&report.flags[..], [Flag::NotEnoughVram { vram_gb: 8, needed_gb, source, .. }] if *needed_gb == 16.0 && source.contains("rule set")),
        "{report:?}"
    );
    // Mixtral 8x7B GPTQ is not rewarded by the seed rules; its weights are 28 GB (registry).
    let report =
        checker.check(&claim("mistralai/mixtral-8x7b-instruct", chat, "NVIDIA GeForce RTX 4090", 20.0)).unwrap();
    assert!(
        matches!(&report.flags[..], [Flag::NotEnoughVram { needed_gb, source, .. }] if *needed_gb == 28.0 && source.contains("registry")),
        "{report:?}"
    );
    assert!(checker.check(&claim("mistralai/mixtral-8x7b-instruct", chat, "NVIDIA A100-SXM4-80GB", 20.0)).unwrap().flags.is_empty());
    // Llama 3 70B: no size in the registry, so the VRAM is left unchecked, and said so.
    let report =
        checker.check(&claim("meta-llama/llama-3-70b-instruct", chat, "NVIDIA A100-SXM4-80GB", 20.0)).unwrap();
    assert!(report.flags.is_empty());
    assert!(report.unchecked.iter().any(|u| u.contains("size_gb")), "{report:?}");
    // 1,000 tokens through 70 x 0.85 B parameters in 1 ms is faster than any card.
    let report =
        checker.check(&claim("meta-llama/llama-3-70b-instruct", chat, "NVIDIA H100 80GB HBM3", 0.001)).unwrap();
    assert!(matches!(report.flags[..], [Flag::FasterThanPeak { .. }]), "{report:?}");
}

#[test]
fn bad_input_gets_typed_errors() {
    let registry = registry();
    let rules = RuleSet::preset("seed").unwrap();
    let checker = MetricsChecker::new(&registry, &rules, GpuCatalogue::builtin().unwrap());
    let laptop = checker.check(&claim("SDXL", SDXL_1024, "NVIDIA GeForce RTX 4090 Laptop GPU", 4.0));
    assert!(matches!(&laptop, Err(VerifyError::UnknownGpu { name }) if name.contains("Laptop")), "{laptop:?}");
    let unknown = checker.check(&claim("NoSuchModel", SDXL_1024, "NVIDIA GeForce RTX 4090", 4.0));
    assert!(matches!(&unknown, Err(VerifyError::Registry { model, .. }) if model == "NoSuchModel"), "{unknown:?}");
    let flux = checker.check(&claim("FLUX.1-dev", SDXL_1024, "NVIDIA GeForce RTX 4090", 4.0));
    assert!(matches!(&flux, Err(VerifyError::NoFlopsModel { model_type, .. }) if model_type == "flux-dev"), "{flux:?}");
    let api = checker.check(&claim("openai/gpt-5", Work::Llm { input_tokens: 1, output_tokens: 1 }, "NVIDIA L4", 4.0));
    assert!(matches!(api, Err(VerifyError::NoFlopsModel { .. })));
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        let r = checker.check(&claim("SDXL", SDXL_1024, "NVIDIA GeForce RTX 4090", bad));
        assert!(matches!(r, Err(VerifyError::InvalidClaim { field: "inference_latency", .. })), "{bad}");
    }
    let tokens_for_image = checker.check(&claim("SDXL", Work::Llm { input_tokens: 1, output_tokens: 1 }, "NVIDIA L4", 4.0));
    assert!(matches!(tokens_for_image, Err(VerifyError::WorkMismatch { .. })));
}

fn submit_for(job_id: &str, latency: f64) -> MinerSubmit {
    let body = serde_json::json!({
        "miner_id": "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0", "job_id": job_id,
        "result": {"S3Key": format!("{job_id}-x.png")}, "request_latency": 0.1, "inference_latency": latency,
        "signature": format!("{}1b", "11".repeat(64)), "identity_address": "0x3f71f00ad1266be038917addd150943ca7c60f6a",
    });
    MinerSubmit::from_slice(body.to_string().as_bytes()).unwrap()
}

#[test]
fn claims_come_from_a_job_and_its_submission() {
    let job = Job::from_slice(
        br#"{"job_id":"sdk-image-1","model_id":"SDXL","model_input":{"SD":{"prompt":"p","height":1024,"width":1024,"num_iterations":25,"guidance_scale":5,"seed":-1}}}"#,
    )
    .unwrap();
    let claim = Claim::from_submission(&job, &submit_for("sdk-image-1", 3.5), "NVIDIA GeForce RTX 4090", None).unwrap();
    assert_eq!(claim.work, SDXL_1024);
    assert_eq!(claim.inference_latency_s, 3.5);
    // A result without its job.
    let orphan = submit_for("sdk-image-2", 3.5);
    assert!(matches!(job_of([&job], &orphan), Err(VerifyError::NoJob { job_id, .. }) if job_id == "sdk-image-2"));
    assert!(matches!(Claim::from_submission(&job, &orphan, "NVIDIA L4", None), Err(VerifyError::NoJob { .. })));
    assert_eq!(job_of([&job], &submit_for("sdk-image-1", 1.0)).unwrap().job_id, "sdk-image-1");
    // A chat job needs the recounted tokens.
    let chat = Job::from_slice(
        br#"{"job_id":"c1","model_id":"dolphin-2.9-llama3-8b","model_input":{"LLM":{"prompt":"[{\"role\":\"user\",\"content\":\"hi\"}]","temperature":0,"max_tokens":50,"seed":1}}}"#,
    )
    .unwrap();
    let s = submit_for("c1", 1.0);
    assert!(matches!(Claim::from_submission(&chat, &s, "NVIDIA L4", None), Err(VerifyError::InvalidClaim { field: "tokens", .. })));
    let c = Claim::from_submission(&chat, &s, "NVIDIA L4", Some((30, 12))).unwrap();
    assert_eq!(c.work, Work::Llm { input_tokens: 30, output_tokens: 12 });
}

/// Honest miners: each with its own efficiency (±15%, a different driver, clock, batch mix)
/// and log-normal jitter of 8 to 25% per job, with an occasional stall.
fn honest_jobs(rng: &mut StdRng, miner: &str, jobs: usize, out: &mut Vec<Observation>) {
    let efficiency: f64 = rng.random_range(-0.15..0.15);
    let jitter: f64 = rng.random_range(0.08..0.25);
    for _ in 0..jobs {
        // Sum of uniforms: near-normal, no extra dependency.
        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
        let stall = if rng.random::<f64>() < 0.02 { 3.0f64.ln() } else { 0.0 };
        let m = (4.0f64.ln() + efficiency + jitter * z + stall).exp();
        out.push(Observation { miner_id: miner.into(), gpu: "NVIDIA GeForce RTX 4090".into(), model_id: "SDXL".into(), bound_multiple: m });
    }
}

#[test]
fn population_flags_fast_and_regular_miners_and_no_honest_one() {
    let thresholds = PopulationThresholds::default();
    let mut honest_flags = 0;
    let mut caught_fast = 0;
    let mut caught_regular = 0;
    let runs = 200;
    for seed in 0..runs {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut obs = Vec::new();
        for i in 0..12 {
            let jobs = rng.random_range(20..80);
            honest_jobs(&mut rng, &format!("honest-{i}"), jobs, &mut obs);
        }
        // Claims 2.5x faster than it ran, with real jitter.
        let mut fast = Vec::new();
        honest_jobs(&mut rng, "fast", 40, &mut fast);
        obs.extend(fast.into_iter().map(|o| Observation { bound_multiple: o.bound_multiple / 2.5, ..o }));
        // Latencies from a formula: a constant multiple with rounding noise only.
        for _ in 0..40 {
            let m = 4.0 * (1.0 + rng.random_range(-0.002..0.002));
            obs.push(Observation { miner_id: "formula".into(), gpu: "NVIDIA GeForce RTX 4090".into(), model_id: "SDXL".into(), bound_multiple: m });
        }
        // A miner with too few jobs is not judged, however odd.
        obs.push(Observation { miner_id: "few".into(), gpu: "NVIDIA GeForce RTX 4090".into(), model_id: "SDXL".into(), bound_multiple: 1.01 });
        for flag in check_population(&obs, &thresholds) {
            match &flag {
                Flag::FasterThanPeers(e) if e.miner_id == "fast" => caught_fast += 1,
                Flag::TooRegular(e) if e.miner_id == "formula" => caught_regular += 1,
                other => {
                    honest_flags += 1;
                    eprintln!("seed {seed}: {other}");
                }
            }
        }
    }
    assert_eq!(honest_flags, 0, "honest miners flagged");
    assert_eq!(caught_regular, runs, "formula latencies missed");
    assert!(caught_fast >= runs * 99 / 100, "2.5x-faster claims caught in {caught_fast} of {runs}");
}

#[test]
fn population_flags_say_why() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut obs = Vec::new();
    for i in 0..6 {
        honest_jobs(&mut rng, &format!("h{i}"), 30, &mut obs);
    }
    for _ in 0..30 {
        obs.push(Observation { miner_id: "x".into(), gpu: "NVIDIA GeForce RTX 4090".into(), model_id: "SDXL".into(), bound_multiple: 1.2 });
    }
    let flags = check_population(&obs, &PopulationThresholds::default());
    let texts: Vec<String> = flags.iter().map(ToString::to_string).collect();
    assert!(texts.iter().any(|t| t.starts_with("miner x is") && t.contains("faster than its 6 peers") && t.contains("30 jobs")), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("miner x's latencies") && t.contains("vary by 0.00%")), "{texts:?}");
    // Too few peers: nobody is judged.
    let few: Vec<Observation> = obs.iter().filter(|o| o.miner_id == "x" || o.miner_id == "h0").cloned().collect();
    assert!(check_population(&few, &PopulationThresholds::default()).is_empty());
}
