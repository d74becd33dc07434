//! The schedulers against diffusers 0.30.2 (tests/fixtures/diffusers/schedulers.json, made by
//! tools/make_image_fixtures.py): `set_timesteps(n)` tables and whole seeded trajectories with a
//! fake model (eps = 0.9 * scale_model_input(x)), noise from the torch generator port. Each
//! table carries the diffusers config it was made with; the tests build the same config here.
//!
//! Tolerance: 1e-5 relative to max(1, |value|). diffusers computes the schedule's scalars with
//! numpy / torch f32 kernels whose last-ulp rounding this port does not chase (only the noise is
//! bit-exact); one f32 ulp is 1.2e-7 relative, so 1e-5 still catches any wrong formula.

// The helpers read the fixture too: a malformed one should fail the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use heurist_inference::InferenceError;
use heurist_inference::image::noise::{NoiseDType, NoiseSource, TorchCpuGenerator, TorchCpuKernel};
use heurist_inference::image::scheduler::{
    BetaSchedule, DEFAULT_SCHEDULER_CONFIG, DdimScheduler, DpmSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PredictionType, Scheduler,
    SchedulerConfig, SchedulerKind, TimestepSpacing,
};
use serde_json::Value;

const TOLERANCE: f64 = 1e-5;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/diffusers/schedulers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The largest relative error (to max(1, |want|)), after checking the lengths agree.
fn max_error(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// The scheduler a fixture table was made with: its diffusers class (the first two tables,
/// from before the class was recorded, by name) and options.
fn table_kind(name: &str, table: &Value) -> SchedulerKind {
    let class = table["class_name"].as_str().unwrap_or_else(|| match name {
        "dpmpp_2m_sde_karras" => "DPMSolverMultistepScheduler",
        "euler_leading" => "EulerDiscreteScheduler",
        other => panic!("fixture table {other} has no class"),
    });
    let config = &table["config"];
    SchedulerKind::from_diffusers(
        class,
        config["algorithm_type"].as_str(),
        config["use_karras_sigmas"].as_bool(),
    )
    .unwrap()
}

/// The fixture's diffusers config as a [`SchedulerConfig`], through the crate's own parsers of
/// diffusers' names.
fn table_config(table: &Value) -> SchedulerConfig {
    let c = &table["config"];
    let clip = c["clip_sample"].as_bool().unwrap_or(false);
    SchedulerConfig {
        num_train_timesteps: c["num_train_timesteps"].as_u64().unwrap() as usize,
        beta_start: c["beta_start"].as_f64().unwrap(),
        beta_end: c["beta_end"].as_f64().unwrap(),
        steps_offset: c["steps_offset"].as_u64().unwrap() as usize,
        beta_schedule: BetaSchedule::from_diffusers(c["beta_schedule"].as_str().unwrap()).unwrap(),
        timestep_spacing: TimestepSpacing::from_diffusers(c["timestep_spacing"].as_str().unwrap())
            .unwrap(),
        prediction_type: PredictionType::from_diffusers(c["prediction_type"].as_str().unwrap())
            .unwrap(),
        set_alpha_to_one: c["set_alpha_to_one"].as_bool().unwrap_or(false),
        clip_sample: clip.then(|| c["clip_sample_range"].as_f64().unwrap()),
    }
}

fn as_f64s<T: Copy + Into<f64>>(values: &[T]) -> Vec<f64> {
    values.iter().map(|&v| v.into()).collect()
}

#[test]
fn tables_match_diffusers() {
    let fixture = fixture();
    let tables = fixture["tables"].as_object().unwrap();
    let mut worst: f64 = 0.0;
    let mut kinds = BTreeSet::new();
    let mut spacings = BTreeSet::new();
    let mut cases = 0;
    for (name, table) in tables {
        let kind = table_kind(name, table);
        let config = table_config(table);
        kinds.insert(kind.class_name());
        spacings.insert(format!("{:?}", config.timestep_spacing));
        for case in table["steps"].as_array().unwrap() {
            let n = case["num_inference_steps"].as_u64().unwrap() as usize;
            let what = format!("{name} {n}");
            let want_t = floats(&case["timesteps"]);
            let scheduler = match Scheduler::new(kind, config, n) {
                // diffusers indexes alpha_bar at -1 (wrapping to the last) for the extra
                // "trailing" timestep numpy makes for some n; this port refuses that.
                Err(InferenceError::InvalidSchedulerConfig { problem })
                    if kind == SchedulerKind::Ddim && want_t.contains(&-1.0) =>
                {
                    assert!(problem.contains("timestep -1"), "{what}: {problem}");
                    continue;
                }
                other => other.unwrap(),
            };
            assert_eq!(scheduler.timesteps(), want_t, "{what} timesteps");
            let mut check = |label: &str, got: &[f64], want: &Value| {
                let e = max_error(&format!("{what} {label}"), got, &floats(want));
                assert!(e <= TOLERANCE, "{what} {label}: error {e}");
                worst = worst.max(e);
            };
            check(
                "init_noise_sigma",
                &[f64::from(scheduler.init_noise_sigma())],
                &Value::from(vec![case["init_noise_sigma"].clone()]),
            );
            match &scheduler {
                Scheduler::DpmSolverSdeKarras(s) => {
                    check("sigmas", &as_f64s(s.sigmas()), &case["sigmas"])
                }
                Scheduler::EulerDiscrete(s) => {
                    check("sigmas", &as_f64s(s.sigmas()), &case["sigmas"])
                }
                Scheduler::EulerAncestralDiscrete(s) => {
                    check("sigmas", &as_f64s(s.sigmas()), &case["sigmas"])
                }
                Scheduler::Ddim(s) => {
                    check(
                        "alphas_cumprod",
                        &as_f64s(s.alphas_cumprod()),
                        &case["alphas_cumprod"],
                    );
                    check(
                        "alphas_cumprod_prev",
                        &as_f64s(s.alphas_cumprod_prev()),
                        &case["alphas_cumprod_prev"],
                    );
                }
            }
            cases += 1;
        }
    }
    // The fixture covers every scheduler and spacing (a truncated fixture must not pass).
    assert_eq!(kinds.len(), SchedulerKind::ALL.len(), "{kinds:?}");
    assert_eq!(spacings.len(), 3, "{spacings:?}");
    assert!(cases >= 90, "only {cases} tables");
    eprintln!("scheduler tables: {cases} tables, worst relative error {worst:e}");
}

#[test]
fn trajectories_match_diffusers() {
    let fixture = fixture();
    let mut worst: f64 = 0.0;
    let mut kinds = BTreeSet::new();
    for traj in fixture["trajectories"].as_array().unwrap() {
        let name = traj["scheduler"].as_str().unwrap();
        let table = &fixture["tables"][name];
        let n = traj["num_inference_steps"].as_u64().unwrap() as usize;
        let seed = traj["seed"].as_u64().unwrap();
        let shape: Vec<usize> = traj["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let kernel = match traj["capability"].as_str().unwrap() {
            "NO AVX" => TorchCpuKernel::Default,
            _ => TorchCpuKernel::Avx2,
        };
        let mut generator = TorchCpuGenerator::with_kernel(seed, kernel);
        let initial = generator.randn(&shape, NoiseDType::F32).unwrap();
        let want_initial: Vec<f32> = floats(&traj["initial_noise"])
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert_eq!(initial, want_initial, "{name} {n}: initial noise");
        let kind = table_kind(name, table);
        kinds.insert(kind.class_name());
        let config = table_config(table);
        let mut scheduler = match traj["eta"].as_f64() {
            Some(eta) => Scheduler::Ddim(
                DdimScheduler::new(config, n)
                    .unwrap()
                    .with_eta(eta)
                    .unwrap(),
            ),
            None => Scheduler::new(kind, config, n).unwrap(),
        };
        assert_eq!(scheduler.kind(), kind);
        let mut x = (Tensor::from_vec(initial, shape.as_slice(), &Device::Cpu).unwrap()
            * f64::from(scheduler.init_noise_sigma()))
        .unwrap();
        let steps = traj["latents_after_step"].as_array().unwrap();
        assert_eq!(
            steps.len(),
            scheduler.timesteps().len(),
            "{name} {n}: steps"
        );
        for (i, want) in steps.iter().enumerate() {
            assert_eq!(scheduler.step_index(), i);
            let eps = (scheduler.scale_model_input(&x).unwrap() * 0.9).unwrap();
            x = scheduler.step(&eps, &x, &mut generator).unwrap();
            let got: Vec<f64> = x
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let e = max_error(&format!("{name} {n} step {i}"), &got, &floats(want));
            assert!(e <= TOLERANCE, "{name} {n} step {i}: error {e}");
            worst = worst.max(e);
        }
        // Every scheduler refuses a step past the end.
        let eps = x.zeros_like().unwrap();
        let err = scheduler.step(&eps, &x, &mut generator).unwrap_err();
        assert!(
            matches!(err, InferenceError::SchedulerFinished { .. }),
            "{err}"
        );
    }
    assert_eq!(kinds.len(), SchedulerKind::ALL.len(), "{kinds:?}");
    eprintln!("scheduler trajectories: worst relative error {worst:e}");
}

/// A noise source that records what is drawn from it (standard normal stand-ins: zeros).
#[derive(Default)]
struct Recorder {
    draws: Vec<(Vec<usize>, NoiseDType)>,
}

impl NoiseSource for Recorder {
    fn randn(&mut self, shape: &[usize], dtype: NoiseDType) -> heurist_inference::Result<Vec<f32>> {
        self.draws.push((shape.to_vec(), dtype));
        Ok(vec![0.0; shape.iter().product()])
    }
}

/// What each scheduler draws per step, in which dtype: the order of draws is what makes a seed
/// mean the same image as in diffusers.
#[test]
fn noise_draws_follow_diffusers() {
    let shape = [1, 4, 3, 5];
    let n = 6;
    for (kind, eta, dtype, want) in [
        (
            SchedulerKind::EulerAncestralDiscrete,
            None,
            DType::F32,
            Some(NoiseDType::F32),
        ),
        (
            SchedulerKind::EulerAncestralDiscrete,
            None,
            DType::F16,
            Some(NoiseDType::F16),
        ),
        (
            SchedulerKind::EulerDiscrete,
            None,
            DType::F16,
            Some(NoiseDType::F16),
        ),
        // DPM-Solver++ upcasts to f32 before drawing.
        (
            SchedulerKind::DpmSolverSdeKarras,
            None,
            DType::F16,
            Some(NoiseDType::F32),
        ),
        (SchedulerKind::Ddim, None, DType::F32, None),
        (SchedulerKind::Ddim, Some(0.0), DType::F32, None),
        (
            SchedulerKind::Ddim,
            Some(0.7),
            DType::F16,
            Some(NoiseDType::F16),
        ),
    ] {
        let what = format!("{kind} eta {eta:?} {dtype:?}");
        let mut scheduler = match eta {
            Some(eta) => Scheduler::Ddim(
                DdimScheduler::new(DEFAULT_SCHEDULER_CONFIG, n)
                    .unwrap()
                    .with_eta(eta)
                    .unwrap(),
            ),
            None => Scheduler::new(kind, DEFAULT_SCHEDULER_CONFIG, n).unwrap(),
        };
        let mut recorder = Recorder::default();
        let mut x = Tensor::ones(&shape, dtype, &Device::Cpu).unwrap();
        for _ in 0..n {
            let eps = (scheduler.scale_model_input(&x).unwrap() * 0.5).unwrap();
            x = scheduler.step(&eps, &x, &mut recorder).unwrap();
            assert_eq!(
                x.dtype(),
                dtype,
                "{what}: the step keeps the model output's dtype"
            );
        }
        let want: Vec<_> = want
            .map(|d| vec![(shape.to_vec(), d); n])
            .unwrap_or_default();
        assert_eq!(recorder.draws, want, "{what}");
    }
}

/// Ancestral steps add the drawn noise with weight sigma_up, and DDIM with eta * its std:
/// the same schedule with other noise gives another sample, by the expected amount.
#[test]
fn ancestral_noise_enters_with_its_weight() {
    struct Constant(f32);
    impl NoiseSource for Constant {
        fn randn(&mut self, shape: &[usize], _: NoiseDType) -> heurist_inference::Result<Vec<f32>> {
            Ok(vec![self.0; shape.iter().product()])
        }
    }
    let x = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.1]], &Device::Cpu).unwrap();
    let eps = (&x * 0.25).unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
    };

    let s = EulerAncestralDiscreteScheduler::new(DEFAULT_SCHEDULER_CONFIG, 10).unwrap();
    let (from, to) = (s.sigmas()[0], s.sigmas()[1]);
    let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
    let a = s.clone().step(&eps, &x, &mut Constant(0.0)).unwrap();
    let b = s.clone().step(&eps, &x, &mut Constant(1.0)).unwrap();
    assert!(
        (diff(&b, &a) - sigma_up).abs() < 1e-5,
        "{} vs {sigma_up}",
        diff(&b, &a)
    );
    assert!(sigma_up > 0.1);

    let s = DdimScheduler::new(DEFAULT_SCHEDULER_CONFIG, 10)
        .unwrap()
        .with_eta(1.0)
        .unwrap();
    let (at, ap) = (s.alphas_cumprod()[0], s.alphas_cumprod_prev()[0]);
    let std = ((1.0 - ap) / (1.0 - at) * (1.0 - at / ap)).sqrt();
    let a = s.clone().step(&eps, &x, &mut Constant(0.0)).unwrap();
    let b = s.clone().step(&eps, &x, &mut Constant(1.0)).unwrap();
    assert!(
        (diff(&b, &a) - std).abs() < 1e-5,
        "{} vs {std}",
        diff(&b, &a)
    );
}

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../heurist-protocol/data/heurist-models")
}

/// Every real example job's sampler parses, to the scheduler the network uses; examples without
/// one get their model's family default (by the registry's model type), and the FLUX ones none.
#[test]
fn real_jobs_name_their_scheduler() {
    let dir = examples_dir();
    let mut types = std::collections::HashMap::new();
    for file in ["models.json", "models-new.json", "models-2024-07.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for model in serde_json::from_str::<Vec<Value>>(&text).unwrap() {
            if let (Some(name), Some(t)) = (model["name"].as_str(), model["type"].as_str()) {
                types.insert(name.to_owned(), t.to_owned());
            }
        }
    }
    let (mut named, mut defaulted) = (0, 0);
    for entry in std::fs::read_dir(dir.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let job: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let model = stem.trim_end_matches("-2").trim_end_matches("-3");
        let sampler = &job["sampler"];
        if sampler.is_null() {
            // The jobs without a sampler are FLUX ones (and Nikita, which the registries lack):
            // no SD default applies to them.
            let model_type = types.get(model).map(String::as_str).unwrap_or("");
            let default = SchedulerKind::default_for_model_type(model_type);
            assert_eq!(default, None, "{stem} ({model_type})");
            defaulted += 1;
            continue;
        }
        let kind = SchedulerKind::from_diffusers(
            sampler["class_name"].as_str().unwrap(),
            sampler["algorithm_type"].as_str(),
            sampler["use_karras_sigmas"].as_bool(),
        )
        .unwrap();
        assert_eq!(kind, SchedulerKind::SD15_DEFAULT, "{stem}");
        // The jobs that name a sampler are for SD models, which all have a default.
        let model_type = types.get(model).map(String::as_str).unwrap_or("");
        if !model_type.is_empty() {
            assert!(
                SchedulerKind::default_for_model_type(model_type).is_some(),
                "{stem} ({model_type})"
            );
        }
        named += 1;
    }
    assert!(
        named >= 50 && defaulted >= 1,
        "{named} named, {defaulted} without a sampler"
    );
}

#[test]
fn scheduler_names_and_family_defaults() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.a1111_name().parse::<SchedulerKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.a1111_name());
        if kind != SchedulerKind::DpmSolverSdeKarras {
            assert_eq!(kind.class_name().parse::<SchedulerKind>().unwrap(), kind);
        }
    }
    assert_eq!(
        SchedulerKind::default_for_model_type("sd15"),
        Some(SchedulerKind::DpmSolverSdeKarras)
    );
    assert_eq!(
        SchedulerKind::default_for_model_type("composite15"),
        Some(SchedulerKind::DpmSolverSdeKarras)
    );
    assert_eq!(
        SchedulerKind::default_for_model_type("sdxl10"),
        Some(SchedulerKind::EulerDiscrete)
    );
    assert_eq!(
        SchedulerKind::default_for_model_type("compositexl"),
        Some(SchedulerKind::EulerDiscrete)
    );
    assert_eq!(SchedulerKind::default_for_model_type("llm8b"), None);
    // Ignored options, as diffusers' from_config ignores keys a class lacks.
    assert_eq!(
        SchedulerKind::from_diffusers("DDIMScheduler", Some("sde-dpmsolver++"), Some(true))
            .unwrap(),
        SchedulerKind::Ddim
    );

    // Unknown classes and unsupported options name what was asked for.
    for (class, algorithm, karras, mention) in [
        ("PNDMScheduler", None, None, "PNDMScheduler"),
        (
            "eulerdiscretescheduler",
            None,
            None,
            "eulerdiscretescheduler",
        ),
        ("", None, None, "scheduler  is"),
        (
            "DPMSolverMultistepScheduler",
            None,
            Some(true),
            "\"dpmsolver++\"",
        ),
        (
            "DPMSolverMultistepScheduler",
            Some("sde-dpmsolver++"),
            None,
            "use_karras_sigmas false",
        ),
        (
            "DPMSolverMultistepScheduler",
            Some("dpmsolver"),
            Some(true),
            "\"dpmsolver\"",
        ),
        (
            "EulerDiscreteScheduler",
            None,
            Some(true),
            "use_karras_sigmas true",
        ),
    ] {
        let err = SchedulerKind::from_diffusers(class, algorithm, karras).unwrap_err();
        assert!(
            matches!(err, InferenceError::UnknownScheduler { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(mention), "{err} lacks {mention}");
    }
    let err = "DPMSolverMultistepScheduler"
        .parse::<SchedulerKind>()
        .unwrap_err();
    assert!(
        matches!(err, InferenceError::UnknownScheduler { .. }),
        "{err}"
    );
}

#[test]
fn bad_step_counts_are_typed_errors() {
    for n in [0, 1001] {
        let err = DpmSolverMultistepScheduler::new(DEFAULT_SCHEDULER_CONFIG, n).unwrap_err();
        assert!(
            matches!(err, InferenceError::InvalidInferenceSteps { steps, .. } if steps == n),
            "{err}"
        );
        let err = EulerDiscreteScheduler::new(DEFAULT_SCHEDULER_CONFIG, n).unwrap_err();
        assert!(
            matches!(err, InferenceError::InvalidInferenceSteps { steps, .. } if steps == n),
            "{err}"
        );
        for kind in SchedulerKind::ALL {
            let err = Scheduler::new(kind, DEFAULT_SCHEDULER_CONFIG, n).unwrap_err();
            assert!(
                matches!(err, InferenceError::InvalidInferenceSteps { steps, .. } if steps == n),
                "{kind}: {err}"
            );
        }
    }
    let config_error = |err: InferenceError, mention: &str| {
        assert!(
            matches!(err, InferenceError::InvalidSchedulerConfig { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(mention), "{err} lacks {mention}");
    };
    // diffusers' names outside what is implemented.
    config_error(
        BetaSchedule::from_diffusers("squaredcos_cap_v2").unwrap_err(),
        "squaredcos_cap_v2",
    );
    config_error(
        TimestepSpacing::from_diffusers("karras").unwrap_err(),
        "karras",
    );
    config_error(
        PredictionType::from_diffusers("sample").unwrap_err(),
        "sample",
    );
    // DDIM: eta out of range; a clip range that clamps everything; "leading" timesteps past
    // the table (1000 steps with offset 1 reach timestep 1000).
    for eta in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let err = DdimScheduler::new(DEFAULT_SCHEDULER_CONFIG, 10)
            .unwrap()
            .with_eta(eta)
            .unwrap_err();
        config_error(err, &format!("eta {eta}"));
    }
    let mut config = DEFAULT_SCHEDULER_CONFIG;
    config.clip_sample = Some(0.0);
    config_error(
        DdimScheduler::new(config, 10).unwrap_err(),
        "clip_sample_range 0",
    );
    config_error(
        DdimScheduler::new(DEFAULT_SCHEDULER_CONFIG, 1000).unwrap_err(),
        "timestep 1000",
    );
    // The Euler schedulers hold the last sigma past the table, as np.interp does.
    let s = EulerAncestralDiscreteScheduler::new(DEFAULT_SCHEDULER_CONFIG, 1000).unwrap();
    assert_eq!(s.timesteps()[0], 1000.0);
    assert_eq!(s.sigmas()[0], s.sigmas()[1]);
    let mut config = DEFAULT_SCHEDULER_CONFIG;
    config.beta_end = f64::NAN;
    let err = EulerDiscreteScheduler::new(config, 20).unwrap_err();
    assert!(
        matches!(err, InferenceError::InvalidSchedulerConfig { .. }),
        "{err}"
    );
}
