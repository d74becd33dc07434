//! The network detection table of image results: honest images of the reference miner's stack
//! and cheats, judged by `heurist_verify::image::rerun::check_rgb`'s rule on the tiny
//! random-weight SD 1.5 and SDXL of heurist-inference's fixtures.
//!
//! - **Honest images** are the fixture of tools/make_image_honest_sets.py
//!   (tests/fixtures/honest_images): diffusers 0.30.2 on torch 2.4.0 through the reference
//!   miner's vendored long-prompt-weighting pipelines, its schedulers and its LoRA path, in f32,
//!   f16 and bf16, over four job kinds (SD 1.5, SDXL, LoRA composites, weighted prompts). Its
//!   calibration split sets the bars (`--calibrate`); the table counts the evaluation split.
//! - **Cheats** are made here, by this engine with f32 noise, the numerics nearest to the
//!   verifier's own re-run and so the hardest to tell apart: one step fewer, half the steps,
//!   another seed, another checkpoint (the same file with every UNet and text-encoder tensor's
//!   values shuffled), the composite's LoRA at the nearest other weight of the registry's grid,
//!   another job's prompt, and the image made at half the size and scaled up (Lanczos). Each
//!   evaluation job gives `--variants` cheat jobs (its own seed, then fresh ones), and LoRA jobs
//!   four times as many for the LoRA-weight cheat, so that every row holds 200 and more.
//!
//! A claimed image holds if it matches the verifier's re-run with the noise of any precision a
//! miner may draw in (f32, f16, bf16: `NOISE_DTYPES`); each row gives the range of the evidence
//! of the closest re-run.
//!
//! ```sh
//! cargo run --release -p heurist-verify --features inference,image --example image_detection_table
//! cargo run --release -p heurist-verify --features inference,image --example image_detection_table -- --calibrate
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "support/honest_images.rs"]
mod honest_images;

use std::collections::BTreeMap;
use std::time::Instant;

use heurist_inference::image::{ImageEngine, ImageJob, PromptEncoding};
use heurist_verify::image::rerun::{reference_image, rerun};
use heurist_verify::image::{ImageEvidence, Precision, PrecisionBars, compare_rgb, resize, rgb_image};
use honest_images::{BoxResult, Engines, HonestImage, SIDE, load_honest};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The registry's LoRA weights the honest set draws from; the cheat takes the nearest other.
const LORA_WEIGHTS: [f64; 4] = [0.6, 0.7, 0.8, 1.0];

/// One row of the table: how many images, how many rejected, the evidence's range.
#[derive(Default)]
struct Row {
    images: usize,
    rejected: usize,
    ssim: Option<(f64, f64)>,
    dist: Option<(u32, u32)>,
    mean_diff: Option<(f64, f64)>,
    psnr: Option<(f64, f64)>,
}

fn widen<T: PartialOrd + Copy>(range: &mut Option<(T, T)>, v: T) {
    *range = Some(match *range {
        None => (v, v),
        Some((lo, hi)) => (if v < lo { v } else { lo }, if v > hi { v } else { hi }),
    });
}

impl Row {
    fn add(&mut self, holds: bool, e: &ImageEvidence) {
        self.images += 1;
        self.rejected += usize::from(!holds);
        widen(&mut self.ssim, e.ssim);
        widen(&mut self.dist, e.hash_distance);
        widen(&mut self.mean_diff, e.mean_abs_diff);
        widen(&mut self.psnr, e.psnr);
    }

    fn print(&self, name: &str) {
        let (s, d, m, p) = (self.ssim.unwrap_or_default(), self.dist.unwrap_or_default(),
                            self.mean_diff.unwrap_or_default(), self.psnr.unwrap_or_default());
        println!(
            "| {name} | {} | {} | {:.1}% | {:.4} to {:.4} | {} to {} | {:.2} to {:.2} | {:.1} to {:.1} |",
            self.images,
            self.rejected,
            100.0 * self.rejected as f64 / self.images.max(1) as f64,
            s.0, s.1, d.0, d.1, m.0, m.1, p.0, p.1
        );
    }
}

/// The image this engine makes for `job` drawing `precision`'s noise.
fn made(engine: &ImageEngine, job: &ImageJob, precision: Precision) -> BoxResult<RgbImage> {
    Ok(reference_image(&rerun(engine, job, PromptEncoding::LongPromptWeighting, precision.into())?)?)
}

/// The verifier's references for a job: its re-runs with each precision's noise.
fn references(engine: &ImageEngine, job: &ImageJob) -> BoxResult<Vec<(Precision, RgbImage)>> {
    Precision::ALL.iter().map(|&p| Ok((p, made(engine, job, p)?))).collect()
}

/// As `check_rgb` judges: holds if it passes some precision's bars against that precision's
/// re-run. Also returns the evidence against the re-run of `own` precision (the miner's).
fn judge(bars: &PrecisionBars, claimed: &RgbImage, refs: &[(Precision, RgbImage)], own: Precision) -> (bool, ImageEvidence) {
    let mut holds = false;
    let mut mine = None;
    for (p, r) in refs {
        let e = compare_rgb(claimed, r);
        holds |= bars.get(*p).judge(e).holds();
        if *p == own {
            mine = Some(e);
        }
    }
    (holds, mine.unwrap_or(compare_rgb(claimed, claimed)))
}

fn precision_of(name: &str) -> BoxResult<Precision> {
    Precision::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| format!("precision {name}").into())
}

fn nearest_other_weight(w: f64) -> f64 {
    LORA_WEIGHTS
        .iter()
        .copied()
        .filter(|&x| (x - w).abs() > 1e-9)
        .min_by(|a, b| (a - w).abs().total_cmp(&(b - w).abs()))
        .unwrap_or(w / 2.0)
}

const CHEATS: [&str; 7] = [
    "one step fewer",
    "half the steps",
    "another seed",
    "another checkpoint (shuffled weights)",
    "LoRA at the nearest other weight",
    "another job's prompt",
    "half size, scaled up",
];

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let calibrate = args.iter().any(|a| a == "--calibrate");
    let variants: usize = match args.iter().position(|a| a == "--variants") {
        Some(i) => args.get(i + 1).ok_or("--variants N")?.parse()?,
        None => 3,
    };
    let split = if calibrate { "calibration" } else { "evaluation" };
    let th = PrecisionBars::NETWORK;
    let started = Instant::now();
    let all = load_honest()?;
    let honest: Vec<&HonestImage> = all.iter().filter(|h| h.split == split).collect();
    let mut engines = Engines::new()?;

    // Honest rows, by kind and precision; the re-runs are shared by a job's three precisions.
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut all_honest = Row::default();
    let mut refs_of: BTreeMap<(String, u64, usize), Vec<(Precision, RgbImage)>> = BTreeMap::new();
    // The evidence against the re-run in the miner's own precision, for the calibration.
    let mut honest_by: BTreeMap<Precision, Row> = BTreeMap::new();
    for h in &honest {
        let key = (h.family.clone(), h.job.seed, h.job.steps);
        if !refs_of.contains_key(&key) {
            let engine = engines.get(&h.family, false, h.lora_weight)?;
            refs_of.insert(key.clone(), references(engine, &h.job)?);
        }
        let claimed = rgb_image(SIDE, SIDE, h.rgb.clone())?;
        let precision = precision_of(&h.precision)?;
        let (holds, e) = judge(&th, &claimed, &refs_of[&key], precision);
        honest_by.entry(precision).or_default().add(holds, &e);
        if !holds {
            println!("honest rejected: {} {} {} seed {}: {e}", h.kind, h.family, h.precision, h.job.seed);
        }
        rows.entry(format!("honest {}, diffusers {}", h.kind, h.precision)).or_default().add(holds, &e);
        all_honest.add(holds, &e);
    }
    let honest_s = started.elapsed().as_secs_f64();

    // Cheats on the split's jobs (one per job: the f32 rows).
    let jobs: Vec<&HonestImage> = honest.iter().copied().filter(|h| h.precision == "f32").collect();
    let mut cheats: Vec<Row> = CHEATS.iter().map(|_| Row::default()).collect();
    let mut cheats_by: BTreeMap<(usize, Precision), Row> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(if calibrate { 5 } else { 6 });
    for (n, h) in jobs.iter().enumerate() {
        let rounds = if h.lora_weight.is_some() { 4 * variants } else { variants };
        for v in 0..rounds {
            let job = ImageJob {
                seed: if v == 0 { h.job.seed } else { rng.random_range(0..(1u64 << 53)) },
                ..h.job.clone()
            };
            let engine = engines.get(&h.family, false, h.lora_weight)?;
            let refs = references(engine, &job)?;
            // The cheat draws the noise of one precision in turn, as a miner of that precision.
            let p = Precision::ALL[v % Precision::ALL.len()];
            let mut add = |row: usize, claimed: RgbImage| {
                let (holds, e) = judge(&th, &claimed, &refs, p);
                cheats[row].add(holds, &e);
                cheats_by.entry((row, p)).or_default().add(holds, &e);
            };
            if let Some(w) = h.lora_weight {
                let other = engines.get(&h.family, false, Some(nearest_other_weight(w)))?;
                add(4, made(other, &job, p)?);
            }
            if v >= variants {
                continue; // the extra rounds of LoRA jobs are for the LoRA-weight cheat only
            }
            let engine = engines.get(&h.family, false, h.lora_weight)?;
            if job.steps > 1 {
                add(0, made(engine, &ImageJob { steps: job.steps - 1, ..job.clone() }, p)?);
            }
            add(1, made(engine, &ImageJob { steps: (job.steps / 2).max(1), ..job.clone() }, p)?);
            add(2, made(engine, &ImageJob { seed: job.seed ^ 1, ..job.clone() }, p)?);
            let prompt = &jobs[(n + 1 + v) % jobs.len()].job.prompt;
            add(5, made(engine, &ImageJob { prompt: prompt.clone(), ..job.clone() }, p)?);
            let small = ImageJob { width: job.width / 2, height: job.height / 2, ..job.clone() };
            add(6, resize(&made(engine, &small, p)?, job.width, job.height));
            let other = engines.get(&h.family, true, h.lora_weight)?;
            add(3, made(other, &job, p)?);
        }
    }

    println!("{split} split: {} honest images, {} jobs; thresholds {th}", honest.len(), jobs.len());
    println!();
    println!("| images | count | rejected | rate | SSIM | pHash distance | mean difference | PSNR (dB) |");
    println!("|---|---:|---:|---:|---|---|---|---|");
    for (name, r) in &rows {
        r.print(name);
    }
    all_honest.print("**all honest**");
    for (name, r) in CHEATS.iter().zip(&cheats) {
        r.print(name);
    }
    println!();
    println!("By the miner's precision (the cheat's noise; evidence against the re-run in it):");
    println!();
    println!("| images | count | rejected | rate | SSIM | pHash distance | mean difference | PSNR (dB) |");
    println!("|---|---:|---:|---:|---|---|---|---|");
    for (p, r) in &honest_by {
        r.print(&format!("honest, {p}"));
    }
    for ((row, p), r) in &cheats_by {
        r.print(&format!("{}, {p}", CHEATS[*row]));
    }
    println!();
    println!(
        "{:.0} s in all ({honest_s:.0} s for the honest rows); {variants} cheat variants a job",
        started.elapsed().as_secs_f64()
    );
    if calibrate {
        calibration(&honest_by, &cheats_by);
    }
    Ok(())
}

/// The PSNR bars by the rule fixed before any evaluation row was judged: for each precision,
/// the lower of the worst honest calibration image less 3 dB (a margin for the honest side: a
/// false accusation costs a miner its stake) and the midpoint between that worst honest image
/// and the closest calibration cheat of the same precision.
fn calibration(honest: &BTreeMap<Precision, Row>, cheats: &BTreeMap<(usize, Precision), Row>) {
    println!();
    for p in Precision::ALL {
        let worst = honest.get(&p).and_then(|r| r.psnr).map_or(f64::NAN, |r| r.0);
        let closest = cheats
            .iter()
            .filter(|((_, q), _)| *q == p)
            .filter_map(|(_, r)| r.psnr.map(|r| r.1))
            .fold(f64::NEG_INFINITY, f64::max);
        let bar = (worst - 3.0).min((worst + closest) / 2.0);
        println!("{p}: worst honest PSNR {worst:.2} dB, closest cheat {closest:.2} dB: min_psnr {bar:.1}");
    }
}
