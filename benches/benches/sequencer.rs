//! Requests per second through one local sequencer on loopback: `miner_request` (a job
//! assigned per request) and `miner_submit` (signature check, result stored, points
//! credited), 16 clients at once.

#![allow(missing_docs)] // criterion_group! writes an undocumented function

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{IdentityWallet, Job, MinerId, MinerRequest, MinerSubmit, Nullable, RequestAnswer, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

const CLIENTS: usize = 16;

struct Rig {
    rt: tokio::runtime::Runtime,
    client: SequencerClient,
    _seq: heurist_sequencer::RunningSequencer,
    _dir: tempfile::TempDir,
    next: std::cell::Cell<u64>,
}

impl Rig {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = SequencerConfig::new("127.0.0.1:0".parse().expect("addr"), dir.path().to_path_buf()).expect("config");
        config.api_keys = vec!["bench".into()];
        config.limits.sd_timeout_seconds = 3600;
        let seq = rt.block_on(heurist_sequencer::start(config)).expect("sequencer");
        let client = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(30), ..ClientConfig::default() })
            .expect("client");
        Self { rt, client, _seq: seq, _dir: dir, next: std::cell::Cell::new(0) }
    }

    fn enqueue(&self, n: u64) {
        let start = self.next.get();
        self.next.set(start + n);
        self.rt.block_on(async {
            for i in start..start + n {
                let job: SubmitJob = serde_json::from_value(json!({"job_id": format!("b-{i}"), "model_id": "AnimagineXL",
                    "model_input": {"SD": {"prompt": "p", "height": 512, "width": 512, "num_iterations": 20, "guidance_scale": 7, "seed": i}}}))
                .expect("job");
                self.client.submit_job("bench", &job).await.expect("submit_job");
            }
        });
    }

    /// `n` requests spread over the clients; returns the jobs handed out and the time taken.
    fn request(&self, miners: &[(MinerId, IdentityWallet)], n: u64) -> (Vec<(usize, Job)>, Duration) {
        self.rt.block_on(async {
            let t = Instant::now();
            let per = n.div_ceil(CLIENTS as u64);
            let tasks = (0..CLIENTS).map(|c| {
                let client = self.client.clone();
                let id = miners[c].0.clone();
                async move {
                    let req = MinerRequest { miner_id: id, model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: None, version: None, extra: Default::default() };
                    let mut got = Vec::new();
                    for _ in 0..per {
                        if let Ok(RequestAnswer::Job(j)) = client.request_job(&req).await {
                            got.push((c, *j));
                        }
                    }
                    got
                }
            });
            let jobs: Vec<_> = join_all(tasks).await.into_iter().flatten().collect();
            (jobs, t.elapsed())
        })
    }

    fn submit(&self, miners: &[(MinerId, IdentityWallet)], jobs: Vec<(usize, Job)>) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let bodies: Vec<Vec<MinerSubmit>> = (0..CLIENTS)
            .map(|c| {
                jobs.iter()
                    .filter(|(m, _)| *m == c)
                    .map(|(_, j)| {
                        let (id, wallet) = &miners[c];
                        MinerSubmit {
                            miner_id: id.clone(),
                            job_id: j.job_id.clone(),
                            result: SubmitResult::S3Key(SubmitResult::s3_key_for(&j.job_id, id)),
                            request_latency: 0.0,
                            loading_latency: Nullable::Null,
                            inference_latency: 1.0,
                            upload_latency: Nullable::Value(0.1),
                            signature: wallet.sign_hourly(id, now).expect("sign"),
                            identity_address: wallet.address().clone(),
                            usage: None,
                            extra: Default::default(),
                        }
                    })
                    .collect()
            })
            .collect();
        self.rt.block_on(async {
            let t = Instant::now();
            let tasks = bodies.into_iter().map(|subs| {
                let client = self.client.clone();
                async move {
                    for s in subs {
                        client.submit(&s).await.expect("submit");
                    }
                }
            });
            join_all(tasks).await;
            t.elapsed()
        })
    }
}

fn bench(c: &mut Criterion) {
    let rig = Rig::new();
    let miners: Vec<(MinerId, IdentityWallet)> = (0..CLIENTS)
        .map(|i| (MinerId::new(&format!("0x{:040x}", i + 1), Some("bench")).expect("id"), IdentityWallet::generate().expect("wallet")))
        .collect();
    let mut g = c.benchmark_group("sequencer_loopback_16_clients");
    g.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("miner_request", |b| {
        b.iter_custom(|iters| {
            rig.enqueue(iters);
            let (jobs, took) = rig.request(&miners, iters);
            // Finish the handed-out jobs (untimed) so the queue stays clean.
            rig.submit(&miners, jobs);
            took
        })
    });
    g.bench_function("miner_submit", |b| {
        b.iter_custom(|iters| {
            rig.enqueue(iters);
            let (jobs, _) = rig.request(&miners, iters);
            let n = jobs.len().max(1) as u32;
            // Scale to the number actually submitted (requests are rounded up per client).
            rig.submit(&miners, jobs) * (iters as u32) / n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
