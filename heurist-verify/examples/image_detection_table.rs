//! The detection table of image results on the tiny random-weight SD 1.5 model of
//! heurist-inference's fixtures.
//!
//! For each of N jobs (64x64, 6 to 14 steps of the network's DPM-Solver++ 2M SDE Karras,
//! guidance 5 to 8, prompts with weighting syntax, seeds spread over 2^53), this re-runs the
//! job here (the verifier, all threads) and judges with
//! `heurist_verify::image::ImageThresholds::DEFAULT` (and, for the record, `STRICT` and
//! `STRUCTURAL`):
//!
//! - honest images made in a child process with one thread (`RAYON_NUM_THREADS=1`), plain and
//!   with the fixture LoRA at 0.8;
//! - honest images made by diffusers on the same model, in f32 and in f16 (48 jobs each, from
//!   `tests/fixtures/sd/verify_honest.safetensors` of heurist-inference, made by
//!   tools/make_sd_verify_fixtures.py);
//! - substitutes: another checkpoint (the same file with every UNet and text-encoder tensor's
//!   values shuffled: other random weights of the same statistics), half the steps, one step
//!   fewer, another seed, the LoRA at 0.4 where the job asks for 0.8 (the fixture LoRA, and
//!   the same with its alphas 8x, a LoRA that moves the picture as a real one does), and the
//!   image made at half the size and scaled up (Lanczos);
//!
//! each judged as `heurist_verify::image::rerun::check_rgb` judges: it holds if it matches the
//! verifier's re-run with f32 noise or the one with f16 noise (a 16-bit miner's);
//!
//! and prints how many of each it rejects, with the ranges of SSIM, pHash distance and mean
//! difference, as the markdown table of the crate docs.
//!
//! ```sh
//! cargo run --release -p heurist-verify --features inference,image --example image_detection_table -- 200
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use heurist_inference::DeviceSpec;
use heurist_inference::image::noise::NoiseDType;
use heurist_inference::image::{ImageEngine, ImageJob, Lora, PromptEncoding};
use heurist_verify::image::rerun::{NOISE_DTYPES, reference_image};
use heurist_verify::image::{ImageEvidence, ImageThresholds, compare_rgb, resize, rgb_image};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SIDE: u32 = 64;
const LORA_WEIGHT: f64 = 0.8;
const CHEAT_LORA_WEIGHT: f64 = 0.4;
const PROMPTS: [&str; 8] = [
    "a koi in a pond, (masterpiece:1.2)",
    "portrait of an old sailor, oil painting",
    "a red fox in the snow, [blurry]",
    "cyberpunk street at night, neon, rain",
    "(watercolor) mountains at dawn",
    "a bowl of ramen, studio lighting, (highly detailed:1.1)",
    "an astronaut riding a horse",
    "isometric castle, pixel art",
];

fn sd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../heurist-inference/tests/fixtures/sd")
}

/// Job `i` of the table: the same in the parent and the child.
fn job(i: usize) -> ImageJob {
    let mut rng = StdRng::seed_from_u64(0x1_0000 + i as u64);
    ImageJob {
        prompt: PROMPTS[i % PROMPTS.len()].into(),
        neg_prompt: if i.is_multiple_of(3) { "lowres, bad anatomy".into() } else { String::new() },
        width: SIDE,
        height: SIDE,
        steps: rng.random_range(6..=14),
        guidance_scale: [5.0, 6.0, 7.0, 7.5, 8.0][i % 5],
        seed: rng.random_range(0..(1u64 << 53)),
        sampler: None,
    }
}

fn load(path: &Path, lora: Option<(&Path, f64)>) -> Result<ImageEngine, Box<dyn std::error::Error>> {
    let mut engine = ImageEngine::load_checkpoint(path, DeviceSpec::Cpu)?;
    if let Some((file, w)) = lora {
        engine.set_lora(Some((Arc::new(Lora::open(file)?), w)))?;
    }
    Ok(engine)
}

fn fixture_lora() -> PathBuf {
    sd_dir().join("tiny-sd15-lora.safetensors")
}

/// The job's image as an honest miner drawing in `noise` precision makes it.
fn rerun(engine: &ImageEngine, job: &ImageJob, noise: NoiseDType) -> Result<image::RgbImage, Box<dyn std::error::Error>> {
    let out = heurist_verify::image::rerun::rerun(engine, job, PromptEncoding::LongPromptWeighting, noise)?;
    Ok(reference_image(&out)?)
}

/// The verifier's references for a job: its re-runs in each precision a miner may draw in.
fn references(engine: &ImageEngine, job: &ImageJob) -> Result<Vec<image::RgbImage>, Box<dyn std::error::Error>> {
    NOISE_DTYPES.iter().map(|&n| rerun(engine, job, n)).collect()
}

/// The fixture LoRA with its alphas multiplied by 8: a LoRA that moves the picture as much
/// as a real style LoRA does (the fixture's barely moves it).
fn strong_lora(to: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut tensors = candle_core::safetensors::load(fixture_lora(), &Device::Cpu)?;
    for (name, t) in tensors.iter_mut() {
        if name.ends_with(".alpha") {
            *t = (t.to_dtype(candle_core::DType::F32)? * 8.0)?;
        }
    }
    candle_core::safetensors::save(&tensors, to)?;
    Ok(())
}

/// The child: the honest images (plain, then with the LoRA) of jobs 0..n, raw RGB, in `out`.
fn child(out: &Path, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let checkpoint = sd_dir().join("tiny-sd15-fp16.safetensors");
    let lora = fixture_lora();
    let (plain, lora) = (load(&checkpoint, None)?, load(&checkpoint, Some((&lora, LORA_WEIGHT)))?);
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(rerun(&plain, &job(i), NoiseDType::F32)?.into_raw());
        bytes.extend(rerun(&lora, &job(i), NoiseDType::F32)?.into_raw());
    }
    std::fs::write(out, bytes)?;
    Ok(())
}

/// The tiny checkpoint with the values of every UNet and text-encoder tensor shuffled.
fn other_checkpoint(from: &Path, to: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(77);
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load(from, &Device::Cpu)?.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let shuffle = (name.starts_with("model.diffusion_model.") || name.starts_with("cond_stage_model."))
            && t.dtype().is_float()
            && t.elem_count() > 1;
        let t = if shuffle {
            let (dtype, shape) = (t.dtype(), t.shape().clone());
            let mut v = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            v.shuffle(&mut rng);
            Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
        } else {
            t
        };
        out.insert(name, t);
    }
    candle_core::safetensors::save(&out, to)?;
    Ok(())
}

#[derive(Default)]
struct Row {
    jobs: usize,
    rejected: usize,
    /// Rejected under [`ImageThresholds::STRICT`].
    strict: usize,
    /// Rejected under [`ImageThresholds::STRUCTURAL`].
    structural: usize,
    ssim: (f64, f64),
    dist: (u32, u32),
    mean_diff: (f64, f64),
}

impl Row {
    fn add(&mut self, holds: bool, strict_holds: bool, structural_holds: bool, e: &ImageEvidence) {
        if self.jobs == 0 {
            (self.ssim, self.dist) = ((e.ssim, e.ssim), (e.hash_distance, e.hash_distance));
            self.mean_diff = (e.mean_abs_diff, e.mean_abs_diff);
        }
        self.jobs += 1;
        self.rejected += usize::from(!holds);
        self.strict += usize::from(!strict_holds);
        self.structural += usize::from(!structural_holds);
        self.ssim = (self.ssim.0.min(e.ssim), self.ssim.1.max(e.ssim));
        self.dist = (self.dist.0.min(e.hash_distance), self.dist.1.max(e.hash_distance));
        self.mean_diff = (self.mean_diff.0.min(e.mean_abs_diff), self.mean_diff.1.max(e.mean_abs_diff));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--honest-child") {
        return child(Path::new(&args[2]), args[3].parse()?);
    }
    let n: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(200);
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let honest_file = dir.path().join("honest.rgb");
    let status = Command::new(std::env::current_exe()?)
        .args(["--honest-child", honest_file.to_str().ok_or("temp path")?, &n.to_string()])
        .env("RAYON_NUM_THREADS", "1")
        .status()?;
    assert!(status.success(), "the honest child failed: {status}");
    let honest = std::fs::read(&honest_file)?;
    let child_s = started.elapsed().as_secs_f64();

    let checkpoint = sd_dir().join("tiny-sd15-fp16.safetensors");
    let other = dir.path().join("other.safetensors");
    other_checkpoint(&checkpoint, &other)?;
    let strong = dir.path().join("strong-lora.safetensors");
    strong_lora(&strong)?;
    let lora_file = fixture_lora();
    let plain = load(&checkpoint, None)?;
    let lora = load(&checkpoint, Some((&lora_file, LORA_WEIGHT)))?;
    let cheat_lora = load(&checkpoint, Some((&lora_file, CHEAT_LORA_WEIGHT)))?;
    let strong_lora = load(&checkpoint, Some((&strong, LORA_WEIGHT)))?;
    let cheat_strong_lora = load(&checkpoint, Some((&strong, CHEAT_LORA_WEIGHT)))?;
    let other = load(&other, None)?;
    let th = ImageThresholds::DEFAULT;
    let names = [
        "honest, 1 thread vs the verifier's",
        "honest + LoRA 0.8, 1 thread",
        "honest, diffusers f32 (fixture)",
        "honest, diffusers f16 (fixture)",
        "another checkpoint (shuffled weights)",
        "half the steps",
        "one step fewer",
        "another seed",
        "fixture LoRA at 0.4 for 0.8",
        "8x stronger LoRA at 0.4 for 0.8",
        "half size, scaled up",
    ];
    let mut rows: Vec<Row> = names.iter().map(|_| Row::default()).collect();
    let frame = (SIDE * SIDE * 3) as usize;
    // As `check_rgb` judges: the claimed image holds if it matches the re-run in either
    // precision; the evidence is the closer comparison.
    let mut judge = |row: usize, claimed: image::RgbImage, refs: &[image::RgbImage]| {
        let mut best: Option<ImageEvidence> = None;
        let (mut holds, mut strict_holds, mut structural_holds) = (false, false, false);
        for r in refs {
            let e = compare_rgb(&claimed, r);
            holds |= th.judge(e).holds();
            strict_holds |= ImageThresholds::STRICT.judge(e).holds();
            structural_holds |= ImageThresholds::STRUCTURAL.judge(e).holds();
            if best.is_none_or(|b| e.ssim > b.ssim) {
                best = Some(e);
            }
        }
        if let Some(e) = best {
            rows[row].add(holds, strict_holds, structural_holds, &e);
        }
    };
    for i in 0..n {
        let j = job(i);
        let reference = references(&plain, &j)?;
        let reference_lora = references(&lora, &j)?;
        let at = 2 * i * frame;
        judge(0, rgb_image(SIDE, SIDE, honest[at..at + frame].to_vec())?, &reference);
        judge(1, rgb_image(SIDE, SIDE, honest[at + frame..at + 2 * frame].to_vec())?, &reference_lora);
        judge(4, rerun(&other, &j, NoiseDType::F32)?, &reference);
        let half = ImageJob { steps: (j.steps / 2).max(1), ..j.clone() };
        judge(5, rerun(&plain, &half, NoiseDType::F32)?, &reference);
        let fewer = ImageJob { steps: j.steps - 1, ..j.clone() };
        judge(6, rerun(&plain, &fewer, NoiseDType::F32)?, &reference);
        let seed = ImageJob { seed: j.seed + 1, ..j.clone() };
        judge(7, rerun(&plain, &seed, NoiseDType::F32)?, &reference);
        judge(8, rerun(&cheat_lora, &j, NoiseDType::F32)?, &reference_lora);
        let reference_strong = references(&strong_lora, &j)?;
        judge(9, rerun(&cheat_strong_lora, &j, NoiseDType::F32)?, &reference_strong);
        let small = ImageJob { width: SIDE / 2, height: SIDE / 2, ..j.clone() };
        judge(10, resize(&rerun(&plain, &small, NoiseDType::F32)?, SIDE, SIDE), &reference);
    }
    // Honest images from another engine: diffusers on the same model, in f32 and in f16.
    let fixture = candle_core::safetensors::load(sd_dir().join("verify_honest.safetensors"), &Device::Cpu)?;
    let ids = |k: &str| -> Result<Vec<Vec<u32>>, candle_core::Error> {
        Ok(fixture[k].to_vec2::<i64>()?.into_iter().map(|r| r.into_iter().map(|v| v as u32).collect()).collect())
    };
    let (pos, neg) = (ids("ids")?, ids("neg_ids")?);
    let (seeds, steps) = (fixture["seed"].to_vec1::<i64>()?, fixture["steps"].to_vec1::<i64>()?);
    let guidance = fixture["guidance"].to_vec1::<f32>()?;
    let tokenizer = |text: &str| -> heurist_inference::Result<Vec<u32>> {
        let (list, row) = match text.strip_prefix('-') {
            Some(row) => (&neg, row),
            None => (&pos, text),
        };
        let ids = &list[row.parse::<usize>().unwrap_or(0)];
        let end = ids.iter().position(|&t| t == 49407).map_or(ids.len(), |e| e + 1);
        Ok(ids[..end].to_vec())
    };
    for row in 0..seeds.len() {
        let j = ImageJob {
            prompt: row.to_string(),
            neg_prompt: format!("-{row}"),
            width: SIDE,
            height: SIDE,
            steps: steps[row] as usize,
            guidance_scale: f64::from(guidance[row]),
            seed: seeds[row] as u64,
            sampler: None,
        };
        let refs: Vec<image::RgbImage> = NOISE_DTYPES
            .iter()
            .map(|&n| {
                let out = heurist_verify::image::rerun::rerun(&plain, &j, PromptEncoding::TokenIds(&tokenizer), n)?;
                Ok(reference_image(&out)?)
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?;
        for (r, key) in [(2, "image_f32"), (3, "image_half")] {
            let rgb = fixture[key].get(row)?.flatten_all()?.to_vec1::<u8>()?;
            judge(r, rgb_image(SIDE, SIDE, rgb)?, &refs);
        }
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
        std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
    });
    println!("N = {n} jobs, thresholds {th} (STRICT: {}); verifier threads {threads}", ImageThresholds::STRICT);
    println!();
    println!("| images | jobs | rejected | rate | rate, STRICT | rate, STRUCTURAL | SSIM range | pHash distance | mean difference |");
    println!("|---|---:|---:|---:|---:|---:|---|---|---|");
    for (name, r) in names.iter().zip(&rows) {
        println!(
            "| {name} | {} | {} | {:.1}% | {:.1}% | {:.1}% | {:.4} to {:.4} | {} to {} | {:.3} to {:.3} |",
            r.jobs,
            r.rejected,
            100.0 * r.rejected as f64 / r.jobs.max(1) as f64,
            100.0 * r.strict as f64 / r.jobs.max(1) as f64,
            100.0 * r.structural as f64 / r.jobs.max(1) as f64,
            r.ssim.0,
            r.ssim.1,
            r.dist.0,
            r.dist.1,
            r.mean_diff.0,
            r.mean_diff.1
        );
    }
    println!();
    println!(
        "{:.1} s in all ({child_s:.1} s in the 1-thread child: 2 runs a job; the verifier 15 runs a job)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
