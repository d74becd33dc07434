//! An SD job end to end on the real image engine: the tiny SD 1.5 checkpoint served by
//! [`SdRunner`] under a model id the sequencer's registry knows, the PNG uploaded to the
//! embedded S3 server with the job's temporary credentials, the key accepted (the sequencer
//! checks the object is there), the stored object a PNG of the job's size holding exactly what
//! the engine paints for that job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use heurist_inference::DeviceSpec;
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{ImageEngine, PromptEncoding};
use heurist_miner::image::{ImageRunner, ImageWorker};
use heurist_miner::sd::{CheckpointSpec, SdRunner};
use heurist_miner::spool::Spool;
use heurist_protocol::{Job, JobParams, MinerLimits, SdParams, SubmitJob, SubmitResult};
use serde_json::json;

const TINY: &str = TINY_SD15;

fn tiny_checkpoint() -> PathBuf {
    tiny_sd15()
}

fn job(id: &str, width: u32, height: u32, steps: u32, seed: u64) -> SubmitJob {
    serde_json::from_value(json!({"job_id": id, "model_id": TINY,
        "model_input": {"SD": {"prompt": "best quality, a lighthouse at dusk", "neg_prompt": "lowres, blurry",
            "width": width, "height": height, "num_iterations": steps, "guidance_scale": 7, "seed": seed}}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_job_on_the_tiny_checkpoint_is_stored_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, seq) = image_sequencer(dir.path(), &[sd15_entry(TINY, None, None)]).await;
    let c = client(&seq.url());
    // 72x64: a latent of 9x8, not a multiple of the UNet's downscale; the engine copes.
    let jobs = [("sd-1", 64u32, 64u32, 3u32, 42u64), ("sd-2", 72, 64, 2, 7)];
    for (id, w, h, steps, seed) in jobs {
        c.submit_job(KEY, &job(id, w, h, steps, seed)).await.unwrap();
    }

    let spec = CheckpointSpec { model_id: TINY.into(), path: tiny_checkpoint() };
    let runner = Arc::new(SdRunner::load(&[spec], DeviceSpec::Cpu).unwrap());
    assert_eq!(runner.models(), [TINY]);
    let miner = "0x00000000000000000000000000000000000000d2-cpu0";
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let stats = Arc::new(heurist_miner::worker::Stats::default());
    let worker = ImageWorker {
        miner_id: miner.parse().unwrap(),
        wallet: Arc::new(heurist_protocol::IdentityWallet::generate().unwrap()),
        model: Arc::new(heurist_miner::signal::ModelChoice::pinned(TINY)),
        runner: runner.clone(),
        uploader: heurist_miner::upload::Uploader::new(&s3.endpoint(), heurist_miner::upload::DEFAULT_REGION, Duration::from_secs(10))
            .unwrap(),
        bucket: BUCKET.into(),
        client: client(&seq.url()),
        spool: spool.clone(),
        limits: MinerLimits { sleep_duration: 0, ..MinerLimits::default() },
        version: "sd-v1.4.0".into(),
        hardware: "cpu".into(),
        stats: stats.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::new(worker).run(stop_rx));
    wait_until(Duration::from_secs(120), "two images", || stats.done.load(Ordering::Relaxed) >= 2).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert!(spool.pending().unwrap().is_empty());

    let miner_id = miner.parse().unwrap();
    let mut stored_images = Vec::new();
    for (id, w, h, steps, seed) in jobs {
        let key = SubmitResult::s3_key_for(id, &miner_id);
        let stored = std::fs::read(s3.object_path(BUCKET, &key)).unwrap();
        let (sw, sh, rgb) = decode_png(&stored);
        assert_eq!((sw, sh), (w, h), "{id}: the PNG has the job's size");
        // The same job run again on the same engine: the stored image is that image, not
        // some other (the engine is deterministic for a seed on one machine).
        let params = SdParams {
            prompt: "best quality, a lighthouse at dusk".into(),
            neg_prompt: "lowres, blurry".into(),
            width: w,
            height: h,
            steps,
            guidance_scale: 7.0,
            seed,
            seed_was_random: false,
            sampler: None,
        };
        let again = runner.generate(TINY, &params).unwrap();
        assert_eq!(rgb, again.rgb(), "{id}: the stored pixels are the engine's for this job");
        // Not a flat image: the VAE really decoded something.
        assert!(rgb.iter().any(|&v| v != rgb[0]), "{id}: a flat image");
        let status = job_status(&seq.url(), id).await;
        assert_eq!(status["result"]["submission"]["result"]["S3Key"], key, "{status}");
        assert_eq!(status["result"]["verdict"]["status"], "accepted", "{status}");
        assert_eq!(status["result"]["verdict"]["currency"], "waifu", "{status}");
        stored_images.push(rgb);
    }
    // Another seed, another image.
    let params = |seed| SdParams {
        prompt: "p".into(),
        neg_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: 7.0,
        seed,
        seed_was_random: false,
        sampler: None,
    };
    assert_ne!(runner.generate(TINY, &params(1)).unwrap().rgb(), runner.generate(TINY, &params(2)).unwrap().rgb());
    seq.shutdown().await.unwrap();
}

fn thread_check_params() -> SdParams {
    SdParams {
        prompt: "best quality, a lighthouse at dusk".into(),
        neg_prompt: "lowres".into(),
        width: 96,
        height: 64,
        steps: 4,
        guidance_scale: 7.0,
        seed: 2020697195,
        seed_was_random: false,
        sampler: None,
    }
}

/// Run by [`rerun_with_another_thread_count_gives_the_same_pixels`] in a child process: writes
/// the image's pixels where `HEURIST_SD_DUMP` says; does nothing otherwise.
#[test]
fn dump_pixels_for_the_thread_check() {
    let Ok(out) = std::env::var("HEURIST_SD_DUMP") else { return };
    let runner = SdRunner::load(&[CheckpointSpec { model_id: TINY.into(), path: tiny_checkpoint() }], DeviceSpec::Cpu).unwrap();
    std::fs::write(out, runner.generate(TINY, &thread_check_params()).unwrap().rgb()).unwrap();
}

/// What an image audit's tolerance rests on: the same job re-run in a process with another
/// thread count (1 against this machine's default) gives the same pixels, bit for bit.
#[test]
fn rerun_with_another_thread_count_gives_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for threads in ["1", "3"] {
        let path = dir.path().join(format!("t{threads}.rgb"));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sd_engine::dump_pixels_for_the_thread_check", "--test-threads", "1"])
            .env("HEURIST_SD_DUMP", &path)
            .env("RAYON_NUM_THREADS", threads)
            .status()
            .unwrap();
        assert!(status.success());
        images.push(std::fs::read(&path).unwrap());
    }
    let runner = SdRunner::load(&[CheckpointSpec { model_id: TINY.into(), path: tiny_checkpoint() }], DeviceSpec::Cpu).unwrap();
    let here = runner.generate(TINY, &thread_check_params()).unwrap();
    assert_eq!(images[0].len(), 96 * 64 * 3);
    let diff = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert_eq!(diff(&images[0], here.rgb()), 0, "1 thread against the default");
    assert_eq!(diff(&images[1], here.rgb()), 0, "3 threads against the default");
}

/// Issue 26: the miner's configured limits are the only ones applied. Under
/// `max_iterations = 50` a 50-step job is clamped to 50 (what the job's record claims: its
/// `steps` is the clamped count) and the engine runs all 50 (it once capped them at 35 itself).
#[test]
fn configured_max_iterations_of_50_runs_and_records_50_steps() {
    let limits = MinerLimits { max_iterations: 50, ..MinerLimits::default() };
    let job: Job = serde_json::from_value(json!({"job_id": "steps-50", "model_id": TINY,
        "model_input": {"SD": {"prompt": "a lighthouse", "neg_prompt": "", "width": 64, "height": 64,
            "num_iterations": 50, "guidance_scale": 7, "seed": 3}}}))
    .unwrap();
    let JobParams::Sd(params) = limits.clamp(&job, || 0).unwrap().params else { panic!("an SD job") };
    assert_eq!(params.steps, 50, "the clamped job, which the record copies");
    // The job as the miner's runner hands it to the engine (`SdRunner::generate`).
    let engine_job = heurist_miner::sd::image_job(&params).unwrap();
    let engine = ImageEngine::load_checkpoint(tiny_checkpoint(), DeviceSpec::Cpu).unwrap();
    let mut ran = 0;
    let image = engine
        .generate_with(
            &engine_job,
            PromptEncoding::LongPromptWeighting,
            &mut TorchCpuGenerator::new(params.seed),
            &mut |_, _| ran += 1,
        )
        .unwrap();
    assert_eq!((ran, image.steps), (50, 50), "denoising steps run and reported");
    assert_eq!((image.width, image.height), (64, 64));
}
