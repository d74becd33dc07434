//! The `heurist-miner` binary set up the reference miner's way: a `config.toml` with the
//! reference's sections and a `.env` with `MINER_ID_0` in the folder it starts in, identity
//! keys in the configured folder. It starts, serves a chat job on the real SmolLM2 model
//! against the local sequencer, and its spool ends empty. Bad settings are named.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use heurist_inference::smollm2_path;
use heurist_protocol::Registry;
use heurist_sequencer::SequencerConfig;
use serde_json::json;

const MODEL: &str = LLM_MODEL;
const MINER: &str = "0x00000000000000000000000000000000000000b5-cpu0";
const BIN: &str = env!("CARGO_BIN_EXE_heurist-miner");

/// A `config.toml` as the reference miner's README describes it, pointing at `base_url`
/// and keeping keys and cache under `dir`. Keys this miner does not use are tolerated.
fn reference_config(base_url: &str, dir: &std::path::Path) -> String {
    format!(
        r#"# Heurist miner configuration (reference layout)
[service]
base_url = "{base_url}"
signal_url = ""
sd_timeout_seconds = 18
llm_timeout_seconds = 180

[versions]
sd_version = "sd-v1.4.0"
llm_version = "llm-v1.2.0"

[storage]
s3_bucket = "heurist-images"
base_dir = "{cache}"
keys_dir = "{keys}"

[model_config]
model_config_url = "https://example.invalid/models.json"
vae_config_url = "https://example.invalid/vae.json"
lora_config_url = "https://example.invalid/lora.json"

[system]
num_cuda_devices = 1
num_child_process = 4
sleep_duration = 1
min_deadline = 1
reload_interval = 600
signal_interval = 600

[processing_limits]
max_iterations = 35
max_width = 2048
max_height = 2048
concurrency_soft_limit = 5

[logging]
log_level = "INFO"
"#,
        cache = dir.join("cache").display(),
        keys = dir.join("keys").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_reference_config_and_env_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let seq = llm_sequencer(&dir.path().join("seq")).await;
    client(&seq.url()).submit_job(KEY, &llm_job("cfg-1", "Say hi.", 6, 1)).await.unwrap();

    let work = dir.path().join("miner");
    write_identity(&work.join("keys"), MINER);
    std::fs::write(work.join("config.toml"), reference_config(&seq.url(), &work)).unwrap();
    std::fs::write(work.join(".env"), format!("# one miner id per GPU\nMINER_ID_0={MINER}\n")).unwrap();
    let gguf = smollm2_path().unwrap().display().to_string();
    let mut child = miner_bin(&work, ["--config", "config.toml", "--llm-model-id", MODEL, "--llm-gguf", &gguf]);
    let status = wait_result(&seq.url(), "cfg-1", Duration::from_secs(120), Some(&mut child)).await;
    assert_eq!(status["result"]["verdict"]["status"], "accepted", "{status}");
    assert_eq!(status["result"]["miner_id"], MINER, "the id from .env");
    let t = Instant::now();
    let spool = work.join("cache").join("spool");
    while std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(1) != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the spool under [storage].base_dir was not emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(child);
    seq.shutdown().await.unwrap();
}

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).current_dir(dir).args(args).env_remove("MINER_ID_0").stdin(Stdio::null()).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Every long flag `src/main.rs` declares (`#[arg(long)]` on a field, or `long = "..."`),
/// read from the source so that a new flag cannot be left out of the check.
fn declared_flags() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/main.rs")).unwrap();
    let body = &src[src.find("struct Args {").unwrap()..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let mut flags = Vec::new();
    let mut long: Option<Option<String>> = None;
    for line in body.lines().map(str::trim) {
        if line.starts_with("#[arg(") && line.contains("long") {
            let named = line.split("long = \"").nth(1).and_then(|r| r.split('"').next()).map(str::to_owned);
            long = Some(named);
        } else if let Some(named) = long.take_if(|_| line.contains(':') && !line.starts_with("///") && !line.starts_with("#[")) {
            let field = line.trim_start_matches("pub ").split(':').next().unwrap().trim();
            flags.push(format!("--{}", named.unwrap_or_else(|| field.replace('_', "-"))));
        }
    }
    flags
}

#[test]
fn bad_settings_are_named_and_help_lists_every_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (code, help) = run(dir.path(), &["--help"]);
    assert_eq!(code, 0);
    let flags = declared_flags();
    assert!(flags.len() >= 19 && flags.contains(&"--pin-models".to_owned()), "{flags:?}");
    for flag in &flags {
        assert!(help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")), "--help documents {flag}");
    }

    let (code, out) = run(dir.path(), &["--miner-id", "0x0000000000000000000000000000000000000001-gpu0", "--sd-checkpoint", "no-path-given"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no-path-given") && out.contains("MODEL_ID=PATH"), "names the bad checkpoint: {out}");
    let (code, out) = run(dir.path(), &["--miner-id", "0x0000000000000000000000000000000000000001-gpu0"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nothing to serve"), "{out}");

    std::fs::write(dir.path().join(".env"), "MINER_ID_0=not-a-miner-id\n").unwrap();
    let (code, out) = run(dir.path(), &["--llm-gguf", "x.gguf", "--llm-model-id", MODEL]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("MINER_ID_0"), "names the setting: {out}");

    std::fs::write(dir.path().join("config.toml"), "[system]\nsleep_duration = \"soon\"\n").unwrap();
    let (code, out) = run(dir.path(), &["--config", "config.toml", "--llm-gguf", "x.gguf", "--llm-model-id", MODEL]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("config.toml") && out.contains("sleep_duration"), "names the file and key: {out}");
}

/// Without `--llm-gguf` the binary finds the model in the registry (`--registry`), downloads
/// its `file_url` into `<base_dir>/models`, checks it against the registry checksum, loads it
/// and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_the_model_named_by_the_registry_then_serves() {
    use sha2::{Digest, Sha256};
    let gguf = std::fs::read(smollm2_path().unwrap()).unwrap();
    let checksum = hex::encode_upper(Sha256::digest(&gguf));
    let file_url = serve_file("SmolLM2.gguf", gguf.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let mut entry = serde_json::to_value(llm_entry()).unwrap();
    entry["file_url"] = json!(file_url);
    entry["checksum"] = json!(checksum);
    let reg_dir = dir.path().join("registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    std::fs::write(reg_dir.join("models.json"), serde_json::to_vec(&json!([entry])).unwrap()).unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec![KEY.into()];
    config.registry = Registry::from_dir(&reg_dir).unwrap();
    let seq = heurist_sequencer::start(config).await.unwrap();
    client(&seq.url()).submit_job(KEY, &llm_job("dl-1", "Say hi.", 4, 1)).await.unwrap();

    let work = dir.path().join("miner");
    write_identity(&work.join("keys"), MINER);
    std::fs::write(work.join("config.toml"), reference_config(&seq.url(), &work)).unwrap();
    let reg = reg_dir.display().to_string();
    let mut child = miner_bin(&work, ["--config", "config.toml", "--miner-id", MINER, "--llm-model-id", MODEL, "--registry", &reg]);
    let status = wait_result(&seq.url(), "dl-1", Duration::from_secs(180), Some(&mut child)).await;
    kill(child);
    assert_eq!(status["result"]["verdict"]["status"], "accepted", "{status}");
    let fetched = work.join("cache").join("models").join(format!("{MODEL}.gguf"));
    assert!(std::fs::read(&fetched).unwrap() == gguf, "the fetched file is the served one");
    seq.shutdown().await.unwrap();
}

/// The binary serving image jobs only: `--sd-checkpoint` naming the tiny SD 1.5 checkpoint
/// for a model id the sequencer's registry has, `--s3-endpoint` the sequencer's embedded S3
/// server. The job's PNG is stored there, of the job's size, and the key accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_an_image_job_from_an_sd_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, seq) = image_sequencer(dir.path(), &[sd15_entry(TINY_SD15, None, None)]).await;
    let job: heurist_protocol::SubmitJob = serde_json::from_value(json!({"job_id": "bin-img", "model_id": TINY_SD15,
        "model_input": {"SD": {"prompt": "a red boat", "width": 80, "height": 64, "num_iterations": 3, "guidance_scale": 7, "seed": 5}}}))
    .unwrap();
    client(&seq.url()).submit_job(KEY, &job).await.unwrap();

    let work = dir.path().join("miner");
    let id = write_identity(&work.join("keys"), MINER);
    std::fs::write(work.join("config.toml"), reference_config(&seq.url(), &work)).unwrap();
    let spec = format!("{TINY_SD15}={}", tiny_sd15().display());
    let endpoint = s3.endpoint();
    let mut child = miner_bin(&work, ["--config", "config.toml", "--miner-id", MINER, "--s3-endpoint", &endpoint, "--sd-checkpoint", &spec]);
    let status = wait_result(&seq.url(), "bin-img", Duration::from_secs(120), Some(&mut child)).await;
    kill(child);
    assert_eq!(status["result"]["verdict"]["status"], "accepted", "{status}");
    let key = heurist_protocol::SubmitResult::s3_key_for("bin-img", &id);
    let (w, h, rgb) = decode_png(&std::fs::read(s3.object_path(BUCKET, &key)).unwrap());
    assert_eq!((w, h), (80, 64));
    assert!(rgb.iter().any(|&v| v != rgb[0]), "a painted image, not a flat one");
    seq.shutdown().await.unwrap();
}
