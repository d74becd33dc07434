//! Points computations per second: `RuleSet::points` on a mix of image and LLM jobs (the
//! seed preset, hardware checked), against a bare `f64` formula with no rule lookup, in
//! the same run.
//!
//! `cargo bench -p heurist-benches --bench points`

// criterion_group! defines an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heurist_points::{JobRecord, RuleSet};

const JOBS: usize = 1024;

fn jobs() -> Vec<JobRecord> {
    let image = [("Aurora", "sd15"), ("SDXL", "sdxl10"), ("PepeXL", "compositexl"), ("FLUX.1-dev", "flux-dev")];
    let llm = ["dolphin-2.9-llama3-8b", "openhermes-2-pro-mistral-7b", "openhermes-mixtral-8x7b-gptq"];
    (0..JOBS)
        .map(|i| {
            if i % 2 == 0 {
                let (id, ty) = image[i / 2 % image.len()];
                JobRecord {
                    model_id: id.into(),
                    model_type: Some(ty.into()),
                    width: 512 + 64 * (i % 8) as u32,
                    height: 768,
                    steps: 20 + (i % 10) as u32,
                    latency_s: 1.0 + (i % 17) as f64,
                    hardware: Some("NVIDIA GeForce RTX 4090".into()),
                    ..Default::default()
                }
            } else {
                JobRecord {
                    model_id: llm[i / 2 % llm.len()].into(),
                    model_type: Some("llm8b16b".into()),
                    input_tokens: 100 + i as u64,
                    output_tokens: 50 + (i % 300) as u64,
                    latency_s: 2.5,
                    hardware: Some("NVIDIA A100-SXM4-80GB".into()),
                    ..Default::default()
                }
            }
        })
        .collect()
}

/// What a naive implementation does: a float formula, multipliers matched by hand.
fn f64_formula(job: &JobRecord) -> f64 {
    let m = match job.model_type.as_deref() {
        Some("sd15") => 0.3,
        Some("sdxl10") => 1.0,
        Some("compositexl") => 1.2,
        Some("flux-dev") => 10.0,
        _ => match job.model_id.as_str() {
            "dolphin-2.9-llama3-8b" => 0.24,
            "openhermes-2-pro-mistral-7b" => 0.2,
            _ => 1.0,
        },
    };
    if job.width > 0 {
        if job.latency_s > 18.0 { 0.0 } else { f64::from(job.width * job.height * job.steps) / 5_242_880.0 * m / 0.3 }
    } else if job.latency_s > 180.0 {
        0.0
    } else {
        (job.input_tokens + job.output_tokens) as f64 / 1000.0 * m
    }
}

fn bench(c: &mut Criterion) {
    let rules = RuleSet::preset("seed").expect("seed preset");
    let jobs = jobs();
    let mut group = c.benchmark_group("points");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.bench_function("cpu/ruleset-seed/mixed", |b| {
        b.iter(|| {
            let mut total = 0u64;
            for job in &jobs {
                total = total.wrapping_add(rules.points(black_box(job)).expect("points").micro());
            }
            total
        })
    });
    group.bench_function("cpu/f64-formula/mixed", |b| {
        b.iter(|| jobs.iter().map(|j| f64_formula(black_box(j))).sum::<f64>())
    });
    let text: Vec<String> = jobs.iter().map(|j| serde_json::to_string(j).expect("json")).collect();
    group.bench_function("cpu/ruleset-seed/json-record", |b| {
        b.iter(|| {
            let mut total = 0u64;
            for t in &text {
                let job = JobRecord::from_json_str(black_box(t)).expect("record");
                total = total.wrapping_add(rules.points(&job).expect("points").micro());
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
