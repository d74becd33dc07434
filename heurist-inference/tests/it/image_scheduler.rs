//! The schedulers against diffusers 0.30.2 (tests/fixtures/diffusers/schedulers.json, made by
//! tools/make_image_fixtures.py): `set_timesteps(n)` tables and whole seeded trajectories with a
//! fake model (eps = 0.9 * scale_model_input(x)), noise from the torch generator port.
//!
//! Tolerance: 1e-5 relative to max(1, |value|). diffusers computes the schedule's scalars with
//! numpy / torch f32 kernels whose last-ulp rounding this port does not chase (only the noise is
//! bit-exact); one f32 ulp is 1.2e-7 relative, so 1e-5 still catches any wrong formula.

use candle_core::{Device, Tensor};
use heurist_inference::InferenceError;
use heurist_inference::image::noise::{NoiseDType, NoiseSource, TorchCpuGenerator, TorchCpuKernel};
use heurist_inference::image::scheduler::{
    DEFAULT_SCHEDULER_CONFIG, DpmSolverMultistepScheduler, EulerDiscreteScheduler,
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

#[test]
fn tables_match_diffusers() {
    let fixture = fixture();
    let tables = &fixture["tables"];
    let mut worst: f64 = 0.0;
    for case in tables["dpmpp_2m_sde_karras"]["steps"].as_array().unwrap() {
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let s = DpmSolverMultistepScheduler::new(DEFAULT_SCHEDULER_CONFIG, n).unwrap();
        let t: Vec<f64> = s.timesteps().iter().map(|&t| t as f64).collect();
        assert_eq!(t, floats(&case["timesteps"]), "dpm {n} timesteps");
        let sigmas: Vec<f64> = s.sigmas().iter().map(|&x| f64::from(x)).collect();
        let e = max_error(
            &format!("dpm {n} sigmas"),
            &sigmas,
            &floats(&case["sigmas"]),
        );
        assert!(e <= TOLERANCE, "dpm {n} sigmas: error {e}");
        assert_eq!(
            f64::from(s.init_noise_sigma()),
            case["init_noise_sigma"].as_f64().unwrap()
        );
        worst = worst.max(e);
    }
    for case in tables["euler_leading"]["steps"].as_array().unwrap() {
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let s = EulerDiscreteScheduler::new(DEFAULT_SCHEDULER_CONFIG, n).unwrap();
        let t: Vec<f64> = s.timesteps().iter().map(|&t| f64::from(t)).collect();
        assert_eq!(t, floats(&case["timesteps"]), "euler {n} timesteps");
        let sigmas: Vec<f64> = s.sigmas().iter().map(|&x| f64::from(x)).collect();
        let e = max_error(
            &format!("euler {n} sigmas"),
            &sigmas,
            &floats(&case["sigmas"]),
        );
        assert!(e <= TOLERANCE, "euler {n} sigmas: error {e}");
        let init = f64::from(s.init_noise_sigma());
        let e_init = max_error(
            "euler init sigma",
            &[init],
            &[case["init_noise_sigma"].as_f64().unwrap()],
        );
        assert!(
            e_init <= TOLERANCE,
            "euler {n} init_noise_sigma: error {e_init}"
        );
        worst = worst.max(e).max(e_init);
    }
    eprintln!("scheduler tables: worst relative error {worst:e}");
}

enum Scheduler {
    Dpm(DpmSolverMultistepScheduler),
    Euler(EulerDiscreteScheduler),
}

#[test]
fn trajectories_match_diffusers() {
    let fixture = fixture();
    let mut worst: f64 = 0.0;
    for traj in fixture["trajectories"].as_array().unwrap() {
        let name = traj["scheduler"].as_str().unwrap();
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
        let mut scheduler = match name {
            "dpmpp_2m_sde_karras" => Scheduler::Dpm(
                DpmSolverMultistepScheduler::new(DEFAULT_SCHEDULER_CONFIG, n).unwrap(),
            ),
            "euler_leading" => {
                Scheduler::Euler(EulerDiscreteScheduler::new(DEFAULT_SCHEDULER_CONFIG, n).unwrap())
            }
            other => panic!("fixture scheduler {other}"),
        };
        let init_sigma = match &scheduler {
            Scheduler::Dpm(s) => s.init_noise_sigma(),
            Scheduler::Euler(s) => s.init_noise_sigma(),
        };
        let mut x = (Tensor::from_vec(initial, shape.as_slice(), &Device::Cpu).unwrap()
            * f64::from(init_sigma))
        .unwrap();
        for (i, want) in traj["latents_after_step"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            x = match &mut scheduler {
                Scheduler::Dpm(s) => {
                    let eps = (s.scale_model_input(&x) * 0.9).unwrap();
                    s.step(&eps, &x, &mut generator).unwrap()
                }
                Scheduler::Euler(s) => {
                    let eps = (s.scale_model_input(&x).unwrap() * 0.9).unwrap();
                    s.step(&eps, &x, &mut generator).unwrap()
                }
            };
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
        // Both schedulers refuse a step past the end.
        let eps = x.zeros_like().unwrap();
        let err = match &mut scheduler {
            Scheduler::Dpm(s) => s.step(&eps, &x, &mut generator).unwrap_err(),
            Scheduler::Euler(s) => s.step(&eps, &x, &mut generator).unwrap_err(),
        };
        assert!(
            matches!(err, InferenceError::SchedulerFinished { .. }),
            "{err}"
        );
    }
    eprintln!("scheduler trajectories: worst relative error {worst:e}");
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
    }
    let mut config = DEFAULT_SCHEDULER_CONFIG;
    config.beta_end = f64::NAN;
    let err = EulerDiscreteScheduler::new(config, 20).unwrap_err();
    assert!(
        matches!(err, InferenceError::InvalidSchedulerConfig { .. }),
        "{err}"
    );
}
