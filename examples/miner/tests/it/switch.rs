//! `miner_signal` switching the chat model, against the local sequencer with the real
//! SmolLM2 model: when the loaded model's queue runs dry the sequencer names another chat model
//! with work; the worker finishes its jobs in flight, loads the other model's GGUF and serves
//! (and is credited for) its jobs, losing none; a suggested model it does not have is ignored.
//! Also the presence check behind `--llm-alt-model`: a file is taken only when it matches the
//! registry's checksum.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use heurist_inference::{ChatEngine, DeviceSpec, smollm2_path};
use heurist_miner::download::ModelStore;
use heurist_miner::llm::{ChatModels, SharedEngine};
use heurist_miner::spool::Spool;
use heurist_miner::worker::{LlmWorker, Stats};
use heurist_protocol::{IdentityWallet, MinerLimits, Registry, RegistryEntry, SubmitJob};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

/// The same GGUF under a second registry name: the model the signal switches to.
const OTHER: &str = "smollm2-135m-copy";
/// A chat model the sequencer has work for but the miner does not have.
const ABSENT: &str = "smollm2-135m-absent";

fn entry(name: &str, checksum: Option<&str>) -> RegistryEntry {
    let mut e = json!({"name": name, "type": "llm135m", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "bits": 4});
    if let Some(c) = checksum {
        e["checksum"] = json!(c);
    }
    serde_json::from_value(e).unwrap()
}

fn job_for(model: &str, id: &str, prompt: &str) -> SubmitJob {
    let messages = serde_json::to_string(&json!([{"role": "user", "content": prompt}])).unwrap();
    serde_json::from_value(json!({"job_id": id, "model_id": model,
        "model_input": {"LLM": {"prompt": messages, "temperature": 0, "max_tokens": 6, "seed": 3}}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_switches_the_chat_model_and_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec![KEY.into()];
    let mut registry = Registry::bundled().unwrap();
    registry.models.extend([llm_entry(), entry(OTHER, None), entry(ABSENT, None)]);
    config.registry = registry;
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = client(&seq.url());
    // Work for the loaded model, then more for the other (the busiest: suggested first), and
    // some for a model this miner does not have.
    let prompts = ["Name a fruit.", "Say hi.", "Count to three."];
    for (i, p) in prompts.iter().enumerate() {
        c.submit_job(KEY, &job_for(LLM_MODEL, &format!("first-{i}"), p)).await.unwrap();
        c.submit_job(KEY, &job_for(OTHER, &format!("other-{i}"), p)).await.unwrap();
    }
    for i in 0..2 {
        c.submit_job(KEY, &job_for(ABSENT, &format!("absent-{i}"), "Hello?")).await.unwrap();
    }

    let first = Arc::new(SharedEngine::new(ChatEngine::load_gguf(smollm2_path().unwrap(), DeviceSpec::Cpu).unwrap()));
    let others = HashMap::from([(OTHER.to_owned(), smollm2_path().unwrap())]);
    let models = Arc::new(ChatModels::switchable(LLM_MODEL, first.clone(), others, DeviceSpec::Cpu));
    let miner = "0x00000000000000000000000000000000000000c7-cpu0";
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let stats = Arc::new(Stats::default());
    let worker = Arc::new(LlmWorker {
        miner_id: miner.parse().unwrap(),
        wallet: Arc::new(IdentityWallet::generate().unwrap()),
        models: models.clone(),
        client: c.clone(),
        spool: spool.clone(),
        limits: MinerLimits { sleep_duration: 1, signal_interval: 1, ..MinerLimits::default() },
        version: "llm-v1.2.0".into(),
        hardware: "cpu".into(),
        stats: stats.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(stop_rx));
    wait_until(Duration::from_secs(240), "both models' jobs", || stats.done.load(Ordering::Relaxed) >= 6).await;
    // A few more signals: the absent model is the only one with work now, and is not taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.done.load(Ordering::Relaxed), 6, "every job of both models, none twice");
    let (loaded, engine) = models.loaded();
    assert_eq!(loaded, OTHER, "the absent model was suggested last and ignored");
    assert_eq!(models.choice().current(), OTHER);
    assert!(!Arc::ptr_eq(&engine, &first), "the other model runs on an engine loaded from its file");
    assert!(spool.pending().unwrap().is_empty());
    for i in 0..3 {
        for model in ["first", "other"] {
            let s = job_status(&seq.url(), &format!("{model}-{i}")).await;
            assert_eq!(s["result"]["miner_id"], miner, "{s}");
        }
    }
    for i in 0..2 {
        let s = job_status(&seq.url(), &format!("absent-{i}")).await;
        assert!(s["result"].is_null(), "{s}");
    }
    let p = portal(&seq.url()).await;
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner).unwrap();
    assert_eq!(me["jobs_done"], 6, "{p}");
    assert_eq!(me["model_id"], OTHER, "the miner asks for (and signals) the new model: {p}");
    // Each result is accepted and recorded under the model its job was asked for by.
    let recent = p["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 6, "{p}");
    for r in recent {
        let model = if r["job_id"].as_str().unwrap().starts_with("other-") { OTHER } else { LLM_MODEL };
        assert_eq!(r["verdict"]["status"], "accepted", "{r}");
        assert_eq!(r["verdict"]["record"]["model_id"], model, "{r}");
    }
    seq.shutdown().await.unwrap();
}

/// `--llm-alt-model MODEL_ID=PATH`: the file is taken when it matches the registry's checksum,
/// refused (and left in place: it is the operator's) when it does not; a model with no file in
/// the cache is simply absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alternative_chat_model_must_match_the_registry_checksum() {
    use sha2::Digest;
    let gguf = smollm2_path().unwrap();
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&gguf).unwrap()));
    let wrong = "0".repeat(64);
    let mut registry = Registry::bundled().unwrap();
    registry.models.extend([entry(OTHER, Some(&digest)), entry(ABSENT, Some(&wrong))]);
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path().join("models")).unwrap();

    assert_eq!(store.local_checked(&registry, OTHER, Some(&gguf)).await.unwrap(), Some(gguf.clone()));
    let e = store.local_checked(&registry, ABSENT, Some(&gguf)).await.unwrap_err().to_string();
    assert!(e.contains(ABSENT), "{e}");
    assert!(gguf.is_file(), "an operator's file is never deleted");
    // Nothing in the (empty) cache, and nothing is fetched for it.
    assert_eq!(store.local_checked(&registry, OTHER, None).await.unwrap(), None);
    // A file the hub client left in the cache is found (a link stands in for the download).
    let snapshot = dir.path().join("models/hf/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink(&gguf, snapshot.join("SmolLM2-135M-Instruct-Q4.gguf")).unwrap();
    assert_eq!(store.local_checked(&registry, OTHER, None).await.unwrap(), Some(snapshot.join("SmolLM2-135M-Instruct-Q4.gguf")));
        // A cached file that does not match is deleted, as the downloader does (here the link).
    assert!(store.local_checked(&registry, ABSENT, None).await.is_err());
    assert!(!snapshot.join("SmolLM2-135M-Instruct-Q4.gguf").exists() && gguf.is_file());
    let missing = dir.path().join("nope.gguf");
    let e = store.local_checked(&registry, OTHER, Some(&missing)).await.unwrap_err().to_string();
    assert!(e.contains("nope.gguf"), "{e}");
}

/// The binary: `--llm-alt-model OTHER=PATH` (checked against the registry checksum) is
/// switched to when the sequencer's signal answer names it, and its jobs are served; one whose
/// file does not match its checksum is left out, so its jobs are never asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_switches_to_a_checked_alternative_model() {
    use sha2::Digest;
    let gguf = smollm2_path().unwrap();
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&gguf).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = dir.path().join("registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let entries = [llm_entry(), entry(OTHER, Some(&digest)), entry(ABSENT, Some(&"0".repeat(64)))];
    std::fs::write(reg_dir.join("models.json"), serde_json::to_vec(&entries).unwrap()).unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec![KEY.into()];
    config.registry = Registry::from_dir(&reg_dir).unwrap();
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = client(&seq.url());
    c.submit_job(KEY, &job_for(LLM_MODEL, "first-0", "Say hi.")).await.unwrap();
    for i in 0..2 {
        c.submit_job(KEY, &job_for(OTHER, &format!("other-{i}"), "Name a colour.")).await.unwrap();
    }
    c.submit_job(KEY, &job_for(ABSENT, "absent-0", "Hello?")).await.unwrap();

    let work = dir.path().join("miner");
    let miner = "0x00000000000000000000000000000000000000c8-cpu0";
    write_identity(&work.join("keys"), miner);
    let config = format!(
        "[service]\nbase_url = \"{}\"\nsignal_url = \"\"\n\n[storage]\nbase_dir = \"{}\"\nkeys_dir = \"{}\"\n\n[system]\nsleep_duration = 1\nsignal_interval = 1\n",
        seq.url(),
        work.join("cache").display(),
        work.join("keys").display()
    );
    std::fs::write(work.join("config.toml"), config).unwrap();
    let (g, reg) = (gguf.display().to_string(), reg_dir.display().to_string());
    let (other, absent) = (format!("{OTHER}={g}"), format!("{ABSENT}={g}"));
    let args = ["--config", "config.toml", "--miner-id", miner, "--registry", &reg, "--llm-model-id", LLM_MODEL, "--llm-gguf", &g];
    let mut child = miner_bin(&work, args.into_iter().chain(["--llm-alt-model", &other, "--llm-alt-model", &absent]));
    for id in ["first-0", "other-0", "other-1"] {
        let s = wait_result(&seq.url(), id, Duration::from_secs(120), Some(&mut child)).await;
        assert_eq!(s["result"]["verdict"]["status"], "accepted", "{s}");
        assert_eq!(s["result"]["miner_id"], miner, "{s}");
    }
    // Signals now name the absent model (the only one with work): it is not taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.try_wait().unwrap().is_none(), "the miner keeps running");
    kill(child);
    assert!(job_status(&seq.url(), "absent-0").await["result"].is_null());
    let p = portal(&seq.url()).await;
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner).unwrap();
    assert_eq!(me["jobs_done"], 3, "{p}");
    assert_eq!(me["model_id"], OTHER, "{p}");
    seq.shutdown().await.unwrap();
}
