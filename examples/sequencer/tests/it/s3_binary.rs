//! `heurist-sequencer --s3-dir` starts the embedded S3 server beside the sequencer, creates
//! the bucket, and hands its endpoint to image jobs; the server refuses unsigned writes.

#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_dir_runs_an_s3_server_and_grants_it_to_image_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_heurist-sequencer"))
        .args(["--listen", "127.0.0.1:0", "--api-key", "k", "--s3-bucket", "heurist-images"])
        .arg("--data-dir")
        .arg(dir.path().join("seq"))
        .arg("--s3-dir")
        .arg(dir.path().join("s3"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut s3, mut seq) = (None, None);
    let t = Instant::now();
    while s3.is_none() || seq.is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "no start-up lines");
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.strip_prefix("S3 server on ") {
            s3 = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("heurist-sequencer listening on ") {
            seq = rest.split_whitespace().next().map(|a| format!("http://{a}"));
        }
    }
    let (s3, seq) = (s3.unwrap(), seq.unwrap());
    assert!(dir.path().join("s3").join("heurist-images").is_dir(), "the bucket is created");

    let http = reqwest::Client::new();
    let put = http.put(format!("{s3}/heurist-images/x.png")).body("x").send().await.unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::FORBIDDEN, "unsigned writes refused");

    // An image job carries a key of its own (scoped to its object), never the server's.
    let job = serde_json::json!({"job_id": "g-1", "model_id": "AnimagineXL",
        "model_input": {"SD": {"prompt": "p", "width": 64, "height": 64, "num_iterations": 4, "guidance_scale": 7, "seed": 1}}});
    assert!(http.post(format!("{seq}/submit_job")).bearer_auth("k").json(&job).send().await.unwrap().status().is_success());
    let req = serde_json::json!({"miner_id": "0x00000000000000000000000000000000000000c9-g", "model_id": "AnimagineXL", "min_deadline": 1});
    let answer: serde_json::Value = http.post(format!("{seq}/miner_request")).json(&req).send().await.unwrap().json().await.unwrap();
    let creds = answer["temp_credentials"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert!(creds[0].as_str().unwrap().starts_with("HJOB"), "a per-job key: {answer}");
    assert!(creds[1].as_str().unwrap().len() >= 32, "a random secret");
    child.kill().unwrap();
    child.wait().unwrap();
}
