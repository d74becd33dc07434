//! Image models named by registry name only (`--sd-model-id`): the binary finds the entry,
//! downloads its `file_url` from a model host on loopback into `<base_dir>/models`, checks it
//! against the registry checksum, loads it and serves an image job end to end. With a wrong
//! checksum the file is deleted after each attempt and never loaded: the error names the
//! model and the mismatch, and nothing is left in the cache to load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::time::Duration;

use common::*;
use heurist_miner::MinerError;
use heurist_miner::download::ModelStore;
use heurist_miner::sd::{CheckpointSpec, SdRunner, checkpoints_for};
use heurist_protocol::Registry;
use serde_json::json;
use sha2::{Digest, Sha256};

const MINER: &str = "0x00000000000000000000000000000000000000c3-cpu0";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn registry_dir(dir: &std::path::Path, entry: &heurist_protocol::RegistryEntry) -> std::path::PathBuf {
    let reg = dir.join("registry");
    std::fs::create_dir_all(&reg).unwrap();
    std::fs::write(reg.join("models.json"), serde_json::to_vec(&json!([entry])).unwrap()).unwrap();
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fetches_a_registry_image_model_checks_it_and_serves() {
    let checkpoint = std::fs::read(tiny_sd15()).unwrap();
    let url = serve_file("tiny-sd15.safetensors", checkpoint.clone()).await;
    let entry = sd15_entry(TINY_SD15, Some(&url), Some(&sha256_hex(&checkpoint)));
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_dir(dir.path(), &entry);
    let (s3, seq) = image_sequencer(dir.path(), &[entry]).await;
    let job: heurist_protocol::SubmitJob = serde_json::from_value(json!({"job_id": "reg-img", "model_id": TINY_SD15,
        "model_input": {"SD": {"prompt": "a lighthouse", "width": 64, "height": 64, "num_iterations": 2, "guidance_scale": 7, "seed": 9}}}))
    .unwrap();
    client(&seq.url()).submit_job(KEY, &job).await.unwrap();

    let work = dir.path().join("miner");
    let id = write_identity(&work.join("keys"), MINER);
    let cache = work.join("cache");
    std::fs::write(
        work.join("config.toml"),
        format!("[service]\nbase_url = \"{}\"\n[storage]\nbase_dir = \"{}\"\n[system]\nsleep_duration = 1\n", seq.url(), cache.display()),
    )
    .unwrap();
    let (reg, endpoint) = (reg.display().to_string(), s3.endpoint());
    let mut child = miner_bin(
        &work,
        ["--config", "config.toml", "--miner-id", MINER, "--keys-dir", "keys", "--registry", &reg, "--sd-model-id", TINY_SD15, "--s3-endpoint", &endpoint],
    );
    let status = wait_result(&seq.url(), "reg-img", Duration::from_secs(120), Some(&mut child)).await;
    kill(child);
    assert_eq!(status["result"]["verdict"]["status"], "accepted", "{status}");
    let fetched = cache.join("models").join(format!("{TINY_SD15}.safetensors"));
    assert!(std::fs::read(&fetched).unwrap() == checkpoint, "the cached file is the served checkpoint");
    let key = heurist_protocol::SubmitResult::s3_key_for("reg-img", &id);
    let (w, h, rgb) = decode_png(&std::fs::read(s3.object_path(BUCKET, &key)).unwrap());
    assert_eq!((w, h), (64, 64));
    assert!(rgb.iter().any(|&v| v != rgb[0]), "a painted image");
    seq.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_image_model_with_a_wrong_checksum_is_never_loaded() {
    let checkpoint = std::fs::read(tiny_sd15()).unwrap();
    let url = serve_file("tiny-sd15.safetensors", checkpoint.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().join("models")).unwrap().with_retry_base(Duration::from_millis(1));

    // Right checksum first: the spec points at the checked file, which loads.
    let good = Registry { models: vec![sd15_entry(TINY_SD15, Some(&url), Some(&sha256_hex(&checkpoint)))], ..Registry::default() };
    let specs = checkpoints_for(&store, &good, &[TINY_SD15.into()], &[]).await.unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].model_id, TINY_SD15);
    assert!(std::fs::read(&specs[0].path).unwrap() == checkpoint);
    assert_eq!(SdRunner::load(&specs, heurist_inference::DeviceSpec::Cpu).unwrap().models(), [TINY_SD15]);

    // A model an explicit spec already names is not fetched at all.
    let given = [CheckpointSpec { model_id: "other".into(), path: tiny_sd15() }];
    let unfetched = Registry { models: vec![sd15_entry("other", Some("http://127.0.0.1:9/never"), None)], ..Registry::default() };
    assert_eq!(checkpoints_for(&store, &unfetched, &["other".into()], &given).await.unwrap(), given);

    // Wrong checksum: the cached good file no longer matches either; every copy is deleted.
    let wrong = sha256_hex(b"not the checkpoint");
    let bad = Registry { models: vec![sd15_entry(TINY_SD15, Some(&url), Some(&wrong))], ..Registry::default() };
    let e = checkpoints_for(&store, &bad, &[TINY_SD15.into()], &[]).await.unwrap_err();
    assert!(matches!(&e, MinerError::Download { model, .. } if model == TINY_SD15), "{e}");
    assert!(e.to_string().to_lowercase().contains("checksum") || e.to_string().contains(&wrong), "names the mismatch: {e}");
    let left: Vec<_> = std::fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing left in the cache to load: {left:?}");

    // Not an image model, and not in the registry: named.
    let chat = Registry { models: vec![llm_entry()], ..Registry::default() };
    let e = checkpoints_for(&store, &chat, &[LLM_MODEL.into()], &[]).await.unwrap_err();
    assert!(e.to_string().contains(LLM_MODEL) && e.to_string().contains("not an image model"), "{e}");
    let e = checkpoints_for(&store, &chat, &["nope".into()], &[]).await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
