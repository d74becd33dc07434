//! Two sequencer instances sharing one PostgreSQL ledger (the issue's "several sequencer
//! processes" for a service that outgrows one machine): each keeps its own job queue, both
//! credit points into one ledger. Jobs are driven through both, some job ids through both at
//! once (a client failing over to the other sequencer), and one instance is restarted in the
//! middle. At the end every job is credited exactly once: none twice, none lost.
//!
//! Needs `--features postgres` and `HEURIST_TEST_POSTGRES_URL` (`.ci/run` starts the server
//! and sets it); without the URL it is skipped with a line saying so, except under CI.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heurist_points::LedgerStore;
use heurist_points::ledger::{EntryKind, EntryQuery, PostgresLedger};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{IdentityWallet, MinerId, MinerRequest, MinerSubmit, Nullable, RequestAnswer, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

const KEY: &str = "shared-key";
const MODEL: &str = "AnimagineXL";
const PER_SEQUENCER: usize = 80;
const SHARED: usize = 30;
const MINERS: usize = 8;

fn postgres_url() -> Option<String> {
    match std::env::var("HEURIST_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("HEURIST_TEST_POSTGRES_URL is unset under CI; .ci/run must start PostgreSQL and set it");
            }
            eprintln!("skipped: set HEURIST_TEST_POSTGRES_URL=postgres://... to run the shared PostgreSQL ledger test");
            None
        }
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config(dir: &std::path::Path, listen: SocketAddr, ledger: &str) -> SequencerConfig {
    let mut c = SequencerConfig::new(listen, dir.to_path_buf()).unwrap();
    c.api_keys = vec![KEY.into()];
    c.ledger = Some(ledger.to_owned());
    // No assignment expires during the run: every job is done by the miner it went to.
    c.limits.sd_timeout_seconds = 3600;
    c
}

fn client(url: &str) -> SequencerClient {
    SequencerClient::new(ClientConfig { base_url: url.into(), timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap()
}

fn job(id: &str, seed: usize) -> SubmitJob {
    serde_json::from_value(json!({"job_id": id, "model_id": MODEL,
        "model_input": {"SD": {"prompt": "p", "height": 512, "width": 512, "num_iterations": 20, "guidance_scale": 7, "seed": seed}}}))
    .unwrap()
}

/// One simulated miner: polls both sequencers in turn, submits a result for every job it
/// gets, holds a finished job through a restart, and stops after both have been empty for a
/// while. Returns the (sequencer, job id) pairs accepted.
async fn mine(m: usize, urls: [String; 2]) -> Vec<(usize, String)> {
    let clients = [client(&urls[0]), client(&urls[1])];
    let wallet = IdentityWallet::generate().unwrap();
    let id = MinerId::new(&format!("0x{:040x}", m + 0x51), Some("shared")).unwrap();
    let req = MinerRequest { miner_id: id.clone(), model_id: MODEL.into(), min_deadline: Some(1), hardware: Some("NVIDIA GeForce RTX 4090".into()), version: None, extra: Default::default() };
    let mut accepted = Vec::new();
    let mut empty = [0u32; 2];
    let mut turn = m % 2;
    while empty.iter().any(|&e| e < 15) {
        turn = 1 - turn;
        let c = &clients[turn];
        let job = match c.request_job(&req).await {
            Ok(RequestAnswer::Job(j)) => *j,
            Ok(_) => {
                empty[turn] += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
                continue;
            }
            // Restarting: try the other one, come back later.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(40)).await;
                continue;
            }
        };
        empty[turn] = 0;
        loop {
            let submit = MinerSubmit {
                miner_id: id.clone(),
                job_id: job.job_id.clone(),
                result: SubmitResult::S3Key(SubmitResult::s3_key_for(&job.job_id, &id)),
                request_latency: 0.0,
                loading_latency: Nullable::Null,
                inference_latency: 1.0,
                upload_latency: Nullable::Value(0.1),
                signature: wallet.sign_hourly(&id, now_s()).unwrap(),
                identity_address: wallet.address().clone(),
                usage: None,
                extra: Default::default(),
            };
            match c.submit(&submit).await {
                // 409: the answer to a submission that did arrive was lost; it counts.
                Ok(_) | Err(heurist_protocol::ProtocolError::Status { status: 409, .. }) => {
                    accepted.push((turn, job.job_id.clone()));
                    break;
                }
                // Down (restarting): keep the finished job and submit it again.
                Err(_) => tokio::time::sleep(Duration::from_millis(40)).await,
            }
        }
    }
    accepted
}

#[test]
fn two_sequencers_on_one_postgres_ledger_credit_every_job_once() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("heurist_shared_{}_{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis());
    // The schema and its tables, made once; both sequencers find them by search_path.
    drop(PostgresLedger::connect_in_schema(&url, &schema).unwrap());
    let sep = if url.contains('?') { '&' } else { '?' };
    let ledger_url = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let accepted = rt.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Started together: both find no phase, one opens it, the other takes that one.
        let (a, b) = tokio::join!(
            heurist_sequencer::start(config(dirs[0].path(), any, &ledger_url)),
            heurist_sequencer::start(config(dirs[1].path(), any, &ledger_url))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let a_addr = a.addr;
        let urls = [a.url(), b.url()];
        for (s, url) in urls.iter().enumerate() {
            let c = client(url);
            for i in 0..PER_SEQUENCER {
                c.submit_job(KEY, &job(&format!("seq{s}-{i}"), i)).await.unwrap();
            }
            // The same ids on both: whichever miner finishes each first, one credit.
            for i in 0..SHARED {
                c.submit_job(KEY, &job(&format!("both-{i}"), i)).await.unwrap();
            }
        }
        let done = Arc::new(AtomicUsize::new(0));
        let all = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for m in 0..MINERS {
            let (urls, done, all) = (urls.clone(), done.clone(), all.clone());
            tasks.push(tokio::spawn(async move {
                let got = mine(m, urls).await;
                done.fetch_add(got.len(), Ordering::Relaxed);
                all.lock().unwrap().extend(got);
            }));
        }
        // Restart the first instance while the miners work on both.
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let a = heurist_sequencer::start(config(dirs[0].path(), a_addr, &ledger_url)).await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        all.lock().unwrap().clone()
    });
    drop(rt);

    // Every job accepted once by each sequencer that queued it.
    let mut per_seq: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (s, id) in &accepted {
        per_seq.entry(*s).or_default().push(id.clone());
    }
    for (s, ids) in &per_seq {
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "sequencer {s} accepted a job twice");
        assert_eq!(ids.len(), PER_SEQUENCER + SHARED, "sequencer {s}: every queued job done");
    }
    let all_ids: BTreeSet<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(all_ids.len(), 2 * PER_SEQUENCER + SHARED);

    let mut ledger = PostgresLedger::connect_in_schema(&url, &schema).unwrap();
    let entries = ledger.entries(&EntryQuery::default()).unwrap();
    let credits: Vec<_> = entries.iter().filter(|e| e.kind == EntryKind::Credit).collect();
    let credited: BTreeSet<String> = credits.iter().filter_map(|e| e.job_id.clone()).collect();
    assert_eq!(credits.len(), credited.len(), "a job credited twice");
    assert_eq!(credited, all_ids, "every accepted job credited, none lost");
    let phases: BTreeSet<_> = credits.iter().map(|e| e.phase.clone()).collect();
    assert_eq!(phases.len(), 1, "both instances credit into one phase: {phases:?}");
    drop(ledger);
    PostgresLedger::drop_schema(&url, &schema).unwrap();
    eprintln!("shared ledger: {} submissions accepted on two sequencers, {} credits", accepted.len(), credits.len());
}
