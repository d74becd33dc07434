//! Models found in the miner's cache: a `miner_signal` answer naming a model that is not on
//! the command line switches to it when its file is in `<base_dir>/models` (where downloads
//! go) and matches the registry's checksum, against the local sequencer on loopback. A cached
//! file that does not match is deleted and never loaded; a model whose registry entry has no
//! checksum, or of the other family, is not taken; nothing is downloaded for a signal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use heurist_inference::{DeviceSpec, smollm2_path};
use heurist_miner::discover::{CacheFinder, Family};
use heurist_miner::download::ModelStore;
use heurist_miner::image::{ImageRunner, ImageWorker};
use heurist_miner::sd::{CheckpointSpec, SdRunner};
use heurist_miner::signal::ModelChoice;
use heurist_miner::spool::Spool;
use heurist_protocol::{MinerLimits, Registry, RegistryEntry, SdParams, SubmitJob, SubmitResult};
use serde_json::json;
use sha2::{Digest, Sha256};

/// No server answers here: a test that fetched anything would fail.
const NOWHERE: &str = "http://127.0.0.1:9/models";

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A registry entry of `kind` whose `file_url` nobody serves.
fn entry(name: &str, kind: &str, ext: &str, checksum: Option<&str>) -> RegistryEntry {
    let mut e = json!({"name": name, "type": kind, "file_url": format!("{NOWHERE}/{name}.{ext}")});
    if let Some(c) = checksum {
        e["checksum"] = json!(c);
    }
    serde_json::from_value(e).unwrap()
}

fn link(target: &Path, at: PathBuf) -> PathBuf {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, &at).unwrap();
    at
}

/// The finder on its own, on small files: which models count as present.
#[tokio::test]
async fn the_finder_takes_only_checked_registry_models_of_its_family() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let body = b"GGUF stand-in: the finder checks bytes, not formats".to_vec();
    let sum = hex::encode(Sha256::digest(&body));
    for name in ["good", "bad", "nosum", "image"] {
        std::fs::write(models.join(format!("{name}.gguf")), &body).unwrap();
    }
    std::fs::write(models.join("sd-good.safetensors"), &body).unwrap();
    let registry = Arc::new(Registry {
        models: vec![
            entry("good", "llm8b", "gguf", Some(&sum)),
            entry("bad", "llm8b", "gguf", Some(&"0".repeat(64))),
            entry("nosum", "llm8b", "gguf", None),
            // An image model whose file happens to end in .gguf: not a chat model.
            entry("image", "sd15", "gguf", Some(&sum)),
            entry("sd-good", "sd15", "safetensors", Some(&sum)),
            entry("absent", "llm8b", "gguf", Some(&sum)),
        ],
        ..Registry::default()
    });
    let store = ModelStore::new(&models).unwrap();
    let chat = CacheFinder::new(store.clone(), registry.clone(), Family::Chat);
    assert_eq!(chat.cached(), ["bad", "good"], "files of chat models with a checksum, unchecked yet");
    assert_eq!(chat.find("good").await, Some(models.join("good.gguf")));
    assert_eq!(chat.find("good").await, Some(models.join("good.gguf")), "remembered");
    assert_eq!(chat.find("bad").await, None);
    assert!(!models.join("bad.gguf").exists(), "a file that does not match is deleted");
    assert_eq!(chat.find("nosum").await, None, "no checksum: not taken on a signal's word");
    assert!(models.join("nosum.gguf").exists(), "and left alone");
    assert_eq!(chat.find("image").await, None, "another family");
    assert_eq!(chat.find("absent").await, None);
    assert_eq!(chat.find("not-in-the-registry").await, None);
    assert_eq!(chat.cached(), ["good"]);
    let image = CacheFinder::new(store, registry, Family::Image);
    assert_eq!(image.cached(), ["image", "sd-good"]);
    assert_eq!(image.find("sd-good").await, Some(models.join("sd-good.safetensors")));
    assert_eq!(image.find("good").await, None, "a chat model is not an image model");

    // The choice a signal loop changes: a found model becomes present (with its file) and
    // current; one that failed to load is not offered again.
    let finder = Arc::new(CacheFinder::new(ModelStore::new(&models).unwrap(), Arc::new(Registry {
        models: vec![entry("good", "llm8b", "gguf", Some(&sum))],
        ..Registry::default()
    }), Family::Chat));
    let choice = ModelChoice::new("loaded", vec!["loaded".into()]).with_finder(finder);
    assert!(!choice.offer("absent").await);
    assert!(choice.offer("good").await);
    assert_eq!((choice.current(), choice.file("good")), ("good".to_owned(), Some(models.join("good.gguf"))));
    choice.fall_back("loaded", "good");
    assert!(!choice.offer("good").await, "a model that failed to load is not tried again");
    assert_eq!(choice.current(), "loaded");
    assert!(!ModelChoice::pinned("loaded").offer("good").await, "a pinned choice never switches");
}

/// The binary with only `--llm-model-id` (no `--llm-alt-model`): the sequencer's signal names
/// a chat model whose GGUF sits in `<base_dir>/models` with the registry's checksum, and the
/// miner serves its jobs; the next suggestion, a cached file with the wrong checksum, is
/// deleted and its job never taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_switches_to_a_chat_model_found_in_its_cache() {
    const CACHED: &str = "smollm2-135m-cached";
    const CORRUPT: &str = "smollm2-135m-corrupt";
    let gguf = smollm2_path().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = dir.path().join("registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let entries = [llm_entry(), entry(CACHED, "llm135m", "gguf", Some(&sha256_file(&gguf))), entry(CORRUPT, "llm135m", "gguf", Some(&"1".repeat(64)))];
    std::fs::write(reg_dir.join("models.json"), serde_json::to_vec(&entries).unwrap()).unwrap();
    let mut config = heurist_sequencer::SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec![KEY.into()];
    config.registry = Registry::from_dir(&reg_dir).unwrap();
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = client(&seq.url());
    let job = |model: &str, id: &str| -> SubmitJob {
        serde_json::from_value(json!({"job_id": id, "model_id": model,
            "model_input": {"LLM": {"prompt": "[{\"role\":\"user\",\"content\":\"Name a colour.\"}]", "temperature": 0, "max_tokens": 6, "seed": 3}}}))
        .unwrap()
    };
    c.submit_job(KEY, &job(LLM_MODEL, "first-0")).await.unwrap();
    // The cached model has the most work: suggested first; the corrupt one after.
    for i in 0..2 {
        c.submit_job(KEY, &job(CACHED, &format!("cached-{i}"))).await.unwrap();
    }
    c.submit_job(KEY, &job(CORRUPT, "corrupt-0")).await.unwrap();

    let work = dir.path().join("miner");
    let miner = "0x00000000000000000000000000000000000000c9-cpu0";
    write_identity(&work.join("keys"), miner);
    let cache = work.join("cache");
    link(&gguf, cache.join("models").join(format!("{CACHED}.gguf")));
    let corrupt = link(&gguf, cache.join("models").join(format!("{CORRUPT}.gguf")));
    let config = format!(
        "[service]\nbase_url = \"{}\"\nsignal_url = \"\"\n\n[storage]\nbase_dir = \"{}\"\nkeys_dir = \"{}\"\n\n[system]\nsleep_duration = 1\nsignal_interval = 1\n",
        seq.url(),
        cache.display(),
        work.join("keys").display()
    );
    std::fs::write(work.join("config.toml"), config).unwrap();
    let (g, reg) = (gguf.display().to_string(), reg_dir.display().to_string());
    let mut child = miner_bin(
        &work,
        ["--config", "config.toml", "--miner-id", miner, "--registry", &reg, "--llm-model-id", LLM_MODEL, "--llm-gguf", &g],
    );
    for id in ["first-0", "cached-0", "cached-1"] {
        let s = wait_result(&seq.url(), id, Duration::from_secs(150), Some(&mut child)).await;
        assert_eq!(s["result"]["verdict"]["status"], "accepted", "{s}");
        assert_eq!(s["result"]["miner_id"], miner, "{s}");
    }
    // Signals now name the corrupt model (the only one with work): its file is checked,
    // found wrong and deleted (the link; the model it pointed at is untouched).
    let t = std::time::Instant::now();
    while corrupt.symlink_metadata().is_ok() {
        assert!(t.elapsed() < Duration::from_secs(30), "the corrupt cached file was never checked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "the miner keeps running");
    kill(child);
    assert!(gguf.is_file());
    assert!(job_status(&seq.url(), "corrupt-0").await["result"].is_null());
    let p = portal(&seq.url()).await;
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner).unwrap();
    assert_eq!(me["jobs_done"], 3, "{p}");
    assert_eq!(me["model_id"], CACHED, "it asks for (and signals) the cached model: {p}");
    for r in p["recent"].as_array().unwrap() {
        let model = if r["job_id"].as_str().unwrap().starts_with("cached-") { CACHED } else { LLM_MODEL };
        assert_eq!(r["verdict"]["record"]["model_id"], model, "{r}");
    }
    seq.shutdown().await.unwrap();
}

/// An image worker started on the tiny SD 1.5 checkpoint is switched by the signal to an
/// SDXL checkpoint found in its cache: the runner loads it, the job is painted by it (the
/// stored PNG is exactly what the SDXL checkpoint paints for the job) and accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_worker_switches_to_a_checkpoint_found_in_its_cache() {
    const XL: &str = "tiny-sdxl-cached";
    let xl_file = sd_fixture("tiny-sdxl-fp16.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let entries = [sd15_entry(TINY_SD15, None, None), entry(XL, "sdxl10", "safetensors", Some(&sha256_file(&xl_file)))];
    let (s3, seq) = image_sequencer(dir.path(), &entries).await;
    let c = client(&seq.url());
    let job = |model: &str, id: &str| -> SubmitJob {
        serde_json::from_value(json!({"job_id": id, "model_id": model,
            "model_input": {"SD": {"prompt": "a lighthouse", "width": 64, "height": 64, "num_iterations": 2, "guidance_scale": 7, "seed": 11}}}))
        .unwrap()
    };
    c.submit_job(KEY, &job(TINY_SD15, "sd15-0")).await.unwrap();
    c.submit_job(KEY, &job(XL, "xl-0")).await.unwrap();

    let models = dir.path().join("cache/models");
    link(&xl_file, models.join(format!("{XL}.safetensors")));
    let registry = Arc::new(Registry { models: entries.to_vec(), ..Registry::default() });
    let finder = Arc::new(CacheFinder::new(ModelStore::new(&models).unwrap(), registry, Family::Image));
    let runner = Arc::new(SdRunner::load(&[CheckpointSpec { model_id: TINY_SD15.into(), path: tiny_sd15() }], DeviceSpec::Cpu).unwrap());
    let miner = "0x00000000000000000000000000000000000000da-cpu0";
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let stats = Arc::new(heurist_miner::worker::Stats::default());
    let choice = Arc::new(ModelChoice::new(TINY_SD15, runner.models()).with_finder(finder));
    let worker = ImageWorker {
        miner_id: miner.parse().unwrap(),
        wallet: Arc::new(heurist_protocol::IdentityWallet::generate().unwrap()),
        model: choice.clone(),
        runner: runner.clone(),
        uploader: heurist_miner::upload::Uploader::new(&s3.endpoint(), heurist_miner::upload::DEFAULT_REGION, Duration::from_secs(10)).unwrap(),
        bucket: BUCKET.into(),
        client: client(&seq.url()),
        spool: spool.clone(),
        limits: MinerLimits { sleep_duration: 1, signal_interval: 1, ..MinerLimits::default() },
        version: "sd-v1.4.0".into(),
        hardware: "cpu".into(),
        stats: stats.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::new(worker).run(stop_rx));
    wait_until(Duration::from_secs(150), "both images", || stats.done.load(Ordering::Relaxed) >= 2).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert_eq!(choice.current(), XL);
    assert_eq!(runner.models(), [TINY_SD15, XL], "loaded beside the model it started on");

    let id = miner.parse().unwrap();
    let stored = std::fs::read(s3.object_path(BUCKET, &SubmitResult::s3_key_for("xl-0", &id))).unwrap();
    let (w, h, rgb) = decode_png(&stored);
    assert_eq!((w, h), (64, 64));
    let params = SdParams {
        prompt: "a lighthouse".into(),
        neg_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: 7.0,
        seed: 11,
        seed_was_random: false,
        sampler: None,
    };
    let xl = SdRunner::load(&[CheckpointSpec { model_id: XL.into(), path: xl_file }], DeviceSpec::Cpu).unwrap();
    assert_eq!(rgb, xl.generate(XL, &params).unwrap().rgb(), "painted by the SDXL checkpoint");
    assert_ne!(rgb, runner.generate(TINY_SD15, &params).unwrap().rgb(), "not by the one it started on");
    for job_id in ["sd15-0", "xl-0"] {
        let s = job_status(&seq.url(), job_id).await;
        assert_eq!(s["result"]["verdict"]["status"], "accepted", "{s}");
    }
    seq.shutdown().await.unwrap();
}
