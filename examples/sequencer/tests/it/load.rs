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
use heurist_protocol::{IdentityWallet, MinerId, MinerRequest, MinerSubmit, Nullable, RequestAnswer, SubmitJob, SubmitResult, TokenUsage};
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

/// An image job's submission, signed for this hour.
fn image_result(id: &MinerId, job_id: &str, wallet: &IdentityWallet) -> MinerSubmit {
    MinerSubmit {
        miner_id: id.clone(),
        job_id: job_id.to_owned(),
        result: SubmitResult::S3Key(SubmitResult::s3_key_for(job_id, id)),
        request_latency: 0.0,
        loading_latency: Nullable::Null,
        inference_latency: 1.0,
        upload_latency: Nullable::Value(0.1),
        signature: wallet.sign_hourly(id, now()).unwrap(),
        identity_address: wallet.address().clone(),
        usage: None,
        extra: Default::default(),
    }
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
            let mut req = MinerRequest { miner_id: id.clone(), model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: Some("NVIDIA GeForce RTX 4090".into()), version: None, extra: Default::default() };
            // As our miner does: requests signed by the identity (not capped per address once
            // the wallet is bound).
            req.sign(&wallet, now()).unwrap();
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
                let submit = image_result(&id, &job.job_id, &wallet);
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


/// Peak resident memory of this process (the sequencer runs in it), from /proc.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// 50 concurrent miners, 40 honest and 10 hostile, 5,000 requests in all: every honest job
/// credited exactly once, no 5xx, the sequencer's memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_miners_honest_and_hostile() {
    const HONEST: usize = 40;
    const HOSTILE: usize = 10;
    const REQUESTS: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 0);
    // Jobs held by made-up ids come back after 2 s.
    cfg.limits.sd_timeout_seconds = 2;
    cfg.limits.llm_timeout_seconds = 2;
    cfg.requeue_interval = Duration::from_millis(100);
    let seq = heurist_sequencer::start(cfg).await.unwrap();
    let url = seq.url();
    let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap();
    let jobs = 1_000;
    for i in 0..jobs {
        let job: SubmitJob = serde_json::from_value(json!({"job_id": format!("mixed-{i}"), "model_id": "AnimagineXL",
            "model_input": {"SD": {"prompt": "p", "height": 512, "width": 512, "num_iterations": 20, "guidance_scale": 7, "seed": i}}}))
        .unwrap();
        c.submit_job(KEY, &job).await.unwrap();
    }
    let rss_before = vm_hwm_kib();
    let sent = Arc::new(AtomicUsize::new(0));
    let server_errors = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let budget = Duration::from_secs(240);
    let mut tasks = Vec::new();
    let honest_ids: Vec<MinerId> = (0..HONEST).map(|m| MinerId::new(&format!("0x{:040x}", m + 1), Some("honest")).unwrap()).collect();
    for m in 0..HONEST + HOSTILE {
        let (sent, server_errors, accepted, url) = (sent.clone(), server_errors.clone(), accepted.clone(), url.clone());
        let victims = honest_ids.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap();
            let wallet = IdentityWallet::generate().unwrap();
            let count = |e: &heurist_protocol::ProtocolError| {
                if let heurist_protocol::ProtocolError::Status { status, .. } = e
                    && *status >= 500
                {
                    server_errors.fetch_add(1, Ordering::Relaxed);
                }
            };
            let mut round = 0u64;
            while sent.fetch_add(1, Ordering::Relaxed) < REQUESTS && started.elapsed() < budget {
                round += 1;
                if m < HONEST {
                    let id = victims[m].clone();
                    let mut req = MinerRequest { miner_id: id.clone(), model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: Some("NVIDIA GeForce RTX 4090".into()), version: None, extra: Default::default() };
                    req.sign(&wallet, now()).unwrap();
                    let job = match c.request_job(&req).await {
                        Ok(RequestAnswer::Job(j)) => *j,
                        Ok(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(e) => {
                            count(&e);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let mut submit = image_result(&id, &job.job_id, &wallet);
                    submit.sign_job(&wallet, now()).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                    match c.submit(&submit).await {
                        Ok(_) => accepted.lock().unwrap().push(job.job_id.clone()),
                        Err(e) => count(&e),
                    }
                } else {
                    // Hostile: ask under made-up ids, sign for honest wallets with its own key,
                    // send huge labels, absurd usage, streams into others' jobs, bindings.
                    let victim = &victims[(round as usize * 7 + m) % HONEST];
                    let ghost = MinerId::new(&format!("0x{:040x}", 1_000_000 + m as u64 * 100_000 + round), Some("ghost")).unwrap();
                    let result = match round % 5 {
                        0 => c.request_job(&MinerRequest { miner_id: ghost, model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: None, version: None, extra: Default::default() }).await.map(|_| ()),
                        1 => {
                            let forged = MinerSubmit {
                                miner_id: victim.clone(),
                                job_id: format!("mixed-{}", round % 1000),
                                result: SubmitResult::S3Key(format!("mixed-{}-{victim}.png", round % 1000)),
                                request_latency: 0.0,
                                loading_latency: Nullable::Null,
                                inference_latency: 1.0,
                                upload_latency: Nullable::Null,
                                signature: wallet.sign_hourly(victim, now()).unwrap(),
                                identity_address: wallet.address().clone(),
                                usage: Some(TokenUsage { prompt_tokens: 0, completion_tokens: 1 << 50 }),
                                extra: Default::default(),
                            };
                            c.submit(&forged).await.map(|_| ())
                        }
                        2 => c.request_job(&MinerRequest { miner_id: ghost, model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: Some("x".repeat(64 * 1024)), version: None, extra: Default::default() }).await.map(|_| ()),
                        3 => c.submit_stream(&format!("mixed-{}", round % 1000), victim, futures_util::stream::iter(vec!["spoof ".to_owned(); 64])).await.map(|_| ()),
                        _ => {
                            let bind = heurist_protocol::BindIdentity::sign(&wallet, wallet.address(), now()).unwrap();
                            let mut body = serde_json::to_value(&bind).unwrap();
                            body["reward_address"] = json!(victim.reward_address());
                            let r = http.post(format!("{url}/bind_identity")).json(&body).send().await.unwrap();
                            if r.status().is_server_error() {
                                server_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(())
                        }
                    };
                    if let Err(e) = result {
                        count(&e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total_s = started.elapsed().as_secs_f64();
    let rss_after = vm_hwm_kib();
    seq.shutdown().await.unwrap();

    assert_eq!(server_errors.load(Ordering::Relaxed), 0, "no 5xx");
    let accepted = accepted.lock().unwrap().clone();
    let unique: HashSet<_> = accepted.iter().cloned().collect();
    assert_eq!(unique.len(), accepted.len(), "no honest job accepted twice");
    assert!(!accepted.is_empty());
    let mut ledger = SqliteLedger::open(dir.path().join("ledger.sqlite")).unwrap();
    let credits: Vec<_> = ledger.entries(&EntryQuery::default()).unwrap().into_iter().filter(|e| e.kind == EntryKind::Credit).collect();
    let credited: HashSet<_> = credits.iter().filter_map(|e| e.job_id.clone()).collect();
    assert_eq!(credits.len(), unique.len(), "one credit per honest job, and none for the hostile");
    assert_eq!(credited, unique, "every honest job credited");
    let honest: HashSet<String> = honest_ids.iter().map(ToString::to_string).collect();
    assert!(credits.iter().all(|e| honest.contains(&e.miner_id)), "credits go to honest miners only");
    let grown_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    assert!(grown_mib < 256.0, "peak memory grew {grown_mib:.0} MiB");
    eprintln!(
        "hostile load: {} requests by {HONEST} honest and {HOSTILE} hostile miners in {total_s:.1} s; {} honest jobs credited once each; 0 5xx; peak RSS {:.0} -> {:.0} MiB",
        sent.load(Ordering::Relaxed).min(REQUESTS),
        unique.len(),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
}
