//! Stable Diffusion 1.5 on the CPU through `heurist_inference::image::ImageEngine`, against
//! diffusers / torch on the CPU with the same thread count in the same run:
//! - one UNet step at SD 1.5's real shape (random weights; batch 2, the guidance batch; a 64x64
//!   latent, i.e. a 512x512 image; 77 context tokens of 768), criterion-timed, then both sides'
//!   median over the same number of steps and their ratio;
//! - a whole 20-step 512x512 job (long prompt weighting, DPM-Solver++ 2M SDE Karras, VAE decode,
//!   PNG), once, and the process's peak resident memory after it.
//!
//! The weights: `tools/bench_sd15_unet.py --save-diffusers` writes a seeded random SD 1.5 (UNet,
//! VAE, CLIP ViT-L) as a diffusers folder, about 2 GB, in `$HEURIST_BENCH_SD15_DIR` (default: the
//! temp dir's `heurist-bench-sd15`) on first use, and times diffusers' UNet on the same config.
//! Without tools/.venv-image the peer is skipped and a folder already there is used; with neither
//! the bench says so and stops.
//!
//! The bench sets the allocator as the miner does ([`heurist_inference::tune_allocator`]).
//!
//! `HEURIST_BENCH_SD15_TINY=1`: the same plumbing on the tiny test model (an 8x8 latent, a 64x64
//! job), a smoke run that measures nothing of interest. candle uses every core unless
//! `RAYON_NUM_THREADS` says otherwise; torch gets the same count. Run on a quiet machine.
//!
//! `cargo bench -p heurist-benches --bench image_sd15`

// criterion_group! defines an undocumented pub fn.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use heurist_inference::DeviceSpec;
use heurist_inference::image::{ImageEngine, ImageJob};

const PEER_STEPS: usize = 5;

struct Setup {
    tiny: bool,
    engine: ImageEngine,
    /// The latent side and the context width of the UNet input.
    latent: usize,
    context: usize,
    /// The job's image side.
    image: u32,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_python() -> Option<PathBuf> {
    let py = root().join("tools/.venv-image/bin/python");
    py.exists().then_some(py)
}

/// Runs the peer script; `None` (with the reason on stderr) when it cannot.
fn peer(threads: usize, tiny: bool, save: Option<&Path>) -> Option<serde_json::Value> {
    let Some(py) = venv_python() else {
        eprintln!(
            "image_sd15: tools/.venv-image is absent, skipping the diffusers peer (make it with \
             python3 tools/make_sd_models.py)"
        );
        return None;
    };
    let mut cmd = Command::new(py);
    cmd.arg(root().join("tools/bench_sd15_unet.py")).args([
        "--threads",
        &threads.to_string(),
        "--iters",
        &PEER_STEPS.to_string(),
    ]);
    if tiny {
        cmd.arg("--tiny");
    }
    if let Some(dir) = save {
        cmd.arg("--save-diffusers").arg(dir);
    }
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(text.lines().last().unwrap_or_default())
                .map_err(|err| eprintln!("image_sd15: peer output {text:?}: {err}"))
                .ok()
        }
        Ok(out) => {
            eprintln!(
                "image_sd15: the diffusers peer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(err) => {
            eprintln!("image_sd15: cannot run the diffusers peer: {err}");
            None
        }
    }
}

fn setup(threads: usize) -> Option<(Setup, Option<serde_json::Value>)> {
    let tiny = std::env::var("HEURIST_BENCH_SD15_TINY").is_ok_and(|v| v == "1");
    if tiny {
        let path = root().join("heurist-inference/tests/fixtures/sd/tiny-sd15-fp16.safetensors");
        let engine = ImageEngine::load_checkpoint(&path, DeviceSpec::Cpu)
            .unwrap_or_else(|err| panic!("{err}"));
        let peer = peer(threads, true, None);
        let setup = Setup {
            tiny,
            engine,
            latent: 8,
            context: 8,
            image: 64,
        };
        return Some((setup, peer));
    }
    let dir = std::env::var_os("HEURIST_BENCH_SD15_DIR").map_or_else(
        || std::env::temp_dir().join("heurist-bench-sd15"),
        PathBuf::from,
    );
    let have = dir
        .join("unet/diffusion_pytorch_model.safetensors")
        .exists();
    // The peer writes the weights the first time, and times its UNet either way.
    let peer = peer(threads, false, (!have).then_some(dir.as_path()));
    if !dir
        .join("unet/diffusion_pytorch_model.safetensors")
        .exists()
    {
        eprintln!(
            "image_sd15: no SD 1.5 weights in {} and no peer to make them; nothing to measure",
            dir.display()
        );
        return None;
    }
    let engine =
        ImageEngine::load_diffusers(&dir, DeviceSpec::Cpu).unwrap_or_else(|err| panic!("{err}"));
    Some((
        Setup {
            tiny,
            engine,
            latent: 64,
            context: 768,
            image: 512,
        },
        peer,
    ))
}

fn unet_inputs(s: &Setup) -> (Tensor, Tensor) {
    let sample = Tensor::randn(0f32, 1.0, (2, 4, s.latent, s.latent), &Device::Cpu);
    let context = Tensor::randn(0f32, 1.0, (2, 77, s.context), &Device::Cpu);
    (sample.expect("sample"), context.expect("context"))
}

/// The peak resident set of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bench(c: &mut Criterion) {
    // What the miner and `heurist generate` do at start (heurist_inference::tune_allocator).
    let tuned = heurist_inference::tune_allocator();
    let threads = candle_core::utils::get_num_threads();
    let Some((s, peer)) = setup(threads) else {
        return;
    };
    let (sample, context) = unet_inputs(&s);
    let step = || {
        s.engine
            .unet_forward(&sample, 500.0, &context, None)
            .unwrap_or_else(|err| panic!("{err}"))
    };
    let label = if s.tiny { "tiny" } else { "sd15" };
    let mut group = c.benchmark_group(format!("image_sd15/{label}-cpu-{threads}threads"));
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.bench_function(format!("unet_step_batch2_latent{}", s.latent), |b| {
        b.iter(step)
    });
    group.finish();

    // The same statistic as the peer's: the median of PEER_STEPS steps after a warm-up.
    step();
    let mut ours: Vec<f64> = (0..PEER_STEPS)
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64()
        })
        .collect();
    ours.sort_by(f64::total_cmp);
    let ours = ours[PEER_STEPS / 2];
    match peer.as_ref().and_then(|p| p["unet_step_s"].as_f64()) {
        Some(theirs) => eprintln!(
            "image_sd15 [{label}, {threads} threads, allocator tuned: {tuned}]: UNet step heurist \
             {ours:.4} s, diffusers {theirs:.4} s (torch {}), speed ratio heurist/diffusers {:.2}x",
            peer.as_ref().map_or("?".into(), |p| p["torch"].to_string()),
            theirs / ours
        ),
        None => eprintln!(
            "image_sd15 [{label}, {threads} threads, allocator tuned: {tuned}]: UNet step heurist \
             {ours:.4} s"
        ),
    }

    let job = ImageJob {
        prompt: "a koi in a pond, (watercolour:1.2), soft light".into(),
        neg_prompt: "blurry, lowres".into(),
        width: s.image,
        height: s.image,
        steps: 20,
        guidance_scale: 7.0,
        seed: 2288435497,
        sampler: None,
    };
    let start = Instant::now();
    let image = s
        .engine
        .generate(&job)
        .unwrap_or_else(|err| panic!("{err}"));
    let t = image.timings;
    eprintln!(
        "image_sd15 [{label}]: 20-step {0}x{0} job {1:.2} s (encode {2:.2}, denoise {3:.2}, \
         decode {4:.2}); peak RSS {5}",
        s.image,
        start.elapsed().as_secs_f64(),
        t.encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.decode.as_secs_f64(),
        peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
