//! Load on loopback: many simulated miners and many jobs through one sequencer, restarted in
//! the middle; no job lost, none credited twice, no accepted submission lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heurist_points::LedgerStore;
use heurist_points::ledger::{EntryKind, EntryQuery, SqliteLedger};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{IdentityWallet, MinerId, MinerRequest, MinerSubmit, Nullable, RequestAnswer, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

const KEY: &str = "load-key";

/// Jobs and miners: the figure is 10,000 jobs and 100 miners; HEURIST_LOAD_JOBS
/// lowers it for a quick local run.
fn job_count() -> usize {
    std::env::var("HEURIST_LOAD_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}
const MINERS: usize = 100;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config(dir: &std::path::Path, port: u16) -> SequencerConfig {
    let mut c = SequencerConfig::new(([127, 0, 0, 1], port).into(), dir.to_path_buf()).unwrap();
    c.api_keys = vec![KEY.into()];
    // No assignment expires during the run: every job must be done by the miner it went to.
    c.limits.sd_timeout_seconds = 3600;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_miners_ten_thousand_jobs_with_a_restart() {
    let jobs = job_count();
    let dir = tempfile::tempdir().unwrap();
    let seq = heurist_sequencer::start(config(dir.path(), 0)).await.unwrap();
    let port = seq.addr.port();
    let url = seq.url();
    let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap();
    let started = Instant::now();
    for i in 0..jobs {
        let job: SubmitJob = serde_json::from_value(json!({"job_id": format!("load-{i}"), "model_id": "AnimagineXL",
            "model_input": {"SD": {"prompt": "p", "height": 512, "width": 512, "num_iterations": 20, "guidance_scale": 7, "seed": i}}}))
        .unwrap();
        c.submit_job(KEY, &job).await.unwrap();
    }
    let queued_s = started.elapsed().as_secs_f64();

    // Miners: each loops request → submit until the queue is empty; retries through the
    // restart. Every accepted submission is remembered.
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for m in 0..MINERS {
        let (accepted, done, url) = (accepted.clone(), done.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let c = SequencerClient::new(ClientConfig { base_url: url, timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap();
            let wallet = IdentityWallet::generate().unwrap();
            let id = MinerId::new(&format!("0x{:040x}", m + 1), Some("load")).unwrap();
            let req = MinerRequest { miner_id: id.clone(), model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: Some("NVIDIA GeForce RTX 4090".into()), version: None, extra: Default::default() };
            let mut empty = 0;
            let mut held: Option<heurist_protocol::Job> = None;
            loop {
                let job = match held.take() {
                    Some(j) => j,
                    None => match c.request_job(&req).await {
                        Ok(RequestAnswer::Job(j)) => *j,
                        Ok(_) => {
                            empty += 1;
                            if empty > 20 {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                empty = 0;
                let submit = MinerSubmit {
                    miner_id: id.clone(),
                    job_id: job.job_id.clone(),
                    result: SubmitResult::S3Key(SubmitResult::s3_key_for(&job.job_id, &id)),
                    request_latency: 0.0,
                    loading_latency: Nullable::Null,
                    inference_latency: 1.0,
                    upload_latency: Nullable::Value(0.1),
                    signature: wallet.sign_hourly(&id, now()).unwrap(),
                    identity_address: wallet.address().clone(),
                    extra: Default::default(),
                };
                match c.submit(&submit).await {
                    Ok(_) => {
                        accepted.lock().unwrap().push(job.job_id.clone());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // 409: the answer to a submission that did arrive was lost; it counts.
                    Err(heurist_protocol::ProtocolError::Status { status: 409, .. }) => {
                        accepted.lock().unwrap().push(job.job_id.clone());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    // Down (restarting): keep the finished job and submit it again.
                    Err(_) => {
                        held = Some(job);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // Restart the sequencer once a third of the jobs are done.
    while done.load(Ordering::Relaxed) < jobs / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seq.shutdown().await.unwrap();
    let seq = heurist_sequencer::start(config(dir.path(), port)).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let total_s = started.elapsed().as_secs_f64();
    seq.shutdown().await.unwrap();

    let accepted = accepted.lock().unwrap().clone();
    let unique: HashSet<_> = accepted.iter().cloned().collect();
    assert_eq!(unique.len(), jobs, "every job done once");
    let mut ledger = SqliteLedger::open(dir.path().join("ledger.sqlite")).unwrap();
    let credits: Vec<_> = ledger.entries(&EntryQuery::default()).unwrap().into_iter().filter(|e| e.kind == EntryKind::Credit).collect();
    let credited: HashSet<_> = credits.iter().filter_map(|e| e.job_id.clone()).collect();
    assert_eq!(credits.len(), jobs, "one credit per job, none twice");
    assert_eq!(credited, unique, "every accepted submission credited");
    eprintln!("load: {jobs} jobs queued in {queued_s:.1} s, all done by {MINERS} miners in {total_s:.1} s with one restart");
}
