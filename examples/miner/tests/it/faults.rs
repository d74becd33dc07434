//! The miner under faults, each test failing if the fault loses a finished job or delivers
//! one twice: the sequencer down during a submit and back, answering 500, answering too
//! slowly (the client gives up but the submission landed); the S3 server refusing PUTs; a
//! malformed job and a job the engine fails on between good ones; and a 1,000-job soak with
//! faults injected at random on every hop and a sequencer restart halfway.
//!
//! Image jobs run on the gradient runner (a real PNG, stored by the embedded S3 server) so
//! that the tests measure delivery, not inference. The SIGKILL test, which runs the miner
//! binary, is in `kill.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use heurist_miner::spool::Spool;
use heurist_points::LedgerStore;
use heurist_points::ledger::{EntryKind, EntryQuery, SqliteLedger};
use heurist_protocol::SubmitResult;
use heurist_sequencer::RunningSequencer;
use heurist_sequencer::s3::LocalS3;
use rand::Rng;

/// A sequencer and an S3 server, each behind a fault proxy.
struct Rig {
    dir: tempfile::TempDir,
    s3: LocalS3,
    seq: Option<RunningSequencer>,
    seq_addr: SocketAddr,
    seq_proxy: FaultProxy,
    s3_proxy: FaultProxy,
}

impl Rig {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s3 = LocalS3::start(dir.path().join("s3"), "miner-key", "miner-secret").await.unwrap();
        s3.create_bucket(BUCKET).unwrap();
        let seq = heurist_sequencer::start(sequencer_config(&dir.path().join("seq"), "127.0.0.1:0".parse().unwrap(), &s3)).await.unwrap();
        let seq_addr = seq.addr;
        let seq_proxy = FaultProxy::start(&seq.url()).await;
        let s3_proxy = FaultProxy::start(&s3.endpoint()).await;
        Self { dir, s3, seq: Some(seq), seq_addr, seq_proxy, s3_proxy }
    }

    fn seq_url(&self) -> String {
        format!("http://{}", self.seq_addr)
    }

    async fn stop_sequencer(&mut self) {
        if let Some(seq) = self.seq.take() {
            seq.shutdown().await.unwrap();
        }
    }

    async fn start_sequencer(&mut self) {
        let c = sequencer_config(&self.dir.path().join("seq"), self.seq_addr, &self.s3);
        self.seq = Some(heurist_sequencer::start(c).await.unwrap());
    }

    async fn queue(&self, jobs: &[(&str, u32, u64)]) {
        let c = client(&self.seq_url());
        for (id, side, seed) in jobs {
            c.submit_job(KEY, &sd_job(id, *side, *side, *seed)).await.unwrap();
        }
    }

    /// The sequencer's view of a job: `{job, result, stream}`.
    async fn job(&self, id: &str) -> serde_json::Value {
        reqwest::Client::new().get(format!("{}/job/{id}", self.seq_url())).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
    }

    /// Job ids credited in the ledger, with repeats (read after the sequencer stopped).
    async fn credits(&mut self) -> Vec<String> {
        self.stop_sequencer().await;
        let mut ledger = SqliteLedger::open(self.dir.path().join("seq").join("ledger.sqlite")).unwrap();
        ledger.entries(&EntryQuery::default()).unwrap().into_iter().filter(|e| e.kind == EntryKind::Credit).filter_map(|e| e.job_id).collect()
    }

    /// Checks the stored object of `id` holds the gradient of `side` and `seed`.
    fn assert_stored(&self, id: &str, miner: &str, side: u32, seed: u64) {
        let key = SubmitResult::s3_key_for(id, &miner.parse().unwrap());
        let bytes = std::fs::read(self.s3.object_path(BUCKET, &key)).unwrap_or_else(|e| panic!("{id}: no S3 object {key}: {e}"));
        let (w, h, rgb) = decode_png(&bytes);
        assert_eq!((w, h), (side, side), "{id}");
        assert!(rgb == gradient(side, side, seed), "{id}: stored pixels differ");
    }
}

type Stop = tokio::sync::watch::Sender<bool>;

fn spawn(worker: heurist_miner::image::ImageWorker) -> (Stop, tokio::task::JoinHandle<heurist_miner::Result<()>>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (tx, tokio::spawn(Arc::new(worker).run(rx)))
}

async fn stop(tx: Stop, task: tokio::task::JoinHandle<heurist_miner::Result<()>>) {
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("the worker stops").unwrap().unwrap();
}

const MINER: &str = "0x00000000000000000000000000000000000000f1-gpu0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequencer_down_during_submit_then_back() {
    let mut rig = Rig::new().await;
    rig.queue(&[("down-1", 16, 1)]).await;
    let spool = Spool::open(rig.dir.path().join("spool")).unwrap();
    let (runner, gate) = GradientRunner::gated();
    // Straight to the sequencer: down means connection refused, no proxy answering for it.
    let (worker, stats) = image_worker(MINER, &rig.seq_url(), &rig.s3.endpoint(), &spool, Arc::new(runner));
    let (tx, task) = spawn(worker);
    // The job is assigned and running; the sequencer goes away before it finishes.
    let t = std::time::Instant::now();
    while rig.job("down-1").await["job"]["miner_id"] != MINER {
        assert!(t.elapsed() < Duration::from_secs(30), "never assigned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.stop_sequencer().await;
    gate.send(()).unwrap();
    // Finished, uploaded, and kept while the submission fails.
    wait_until(Duration::from_secs(30), "the upload", || rig.s3.object_path(BUCKET, &SubmitResult::s3_key_for("down-1", &MINER.parse().unwrap())).exists()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pending = spool.pending().unwrap();
    assert_eq!(pending.len(), 1, "the finished job waits in the spool");
    assert!(pending[0].upload.is_none(), "marked uploaded: a retry does not upload again");
    assert_eq!(stats.done.load(Ordering::Relaxed), 0);

    rig.start_sequencer().await;
    wait_until(Duration::from_secs(30), "the submission after the restart", || stats.done.load(Ordering::Relaxed) == 1).await;
    stop(tx, task).await;
    assert_eq!(rig.job("down-1").await["result"]["verdict"]["status"], "accepted");
    assert!(spool.pending().unwrap().is_empty());
    rig.assert_stored("down-1", MINER, 16, 1);
    assert_eq!(rig.credits().await, ["down-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequencer_answering_500_then_too_slowly() {
    let mut rig = Rig::new().await;
    rig.queue(&[("e500", 16, 2)]).await;
    let spool = Spool::open(rig.dir.path().join("spool")).unwrap();
    let submits = Arc::new(AtomicU64::new(0));
    let n = submits.clone();
    // Three 500s, then one answer slower than the miner waits (the submission lands but the
    // miner does not hear of it), then normal service.
    rig.seq_proxy.set(move |m, path| {
        if m == "POST" && path == "/miner_submit" {
            match n.fetch_add(1, Ordering::SeqCst) {
                0..=2 => return Fault::Refuse(500),
                3 => return Fault::Delay(Duration::from_millis(1500)),
                _ => {}
            }
        }
        Fault::Pass
    });
    let (mut worker, stats) = image_worker(MINER, &rig.seq_proxy.url(), &rig.s3.endpoint(), &spool, Arc::new(GradientRunner::default()));
    worker.client = heurist_protocol::client::SequencerClient::new(heurist_protocol::client::ClientConfig {
        base_url: rig.seq_proxy.url(),
        timeout: Duration::from_millis(700),
        ..Default::default()
    })
    .unwrap();
    let (tx, task) = spawn(worker);
    wait_until(Duration::from_secs(60), "the job delivered", || stats.done.load(Ordering::Relaxed) == 1).await;
    // The slow one landed after the miner gave up: wait for it to have reached the sequencer.
    wait_until(Duration::from_secs(10), "the slow submission", || rig.seq_proxy.ok("POST", "/miner_submit") >= 1).await;
    stop(tx, task).await;
    assert!(submits.load(Ordering::SeqCst) >= 5, "500 ×3, slow, then a retry: {}", submits.load(Ordering::SeqCst));
    assert_eq!(rig.seq_proxy.ok("POST", "/miner_submit"), 1, "accepted once; the retry after the slow one was told 409");
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert!(spool.pending().unwrap().is_empty());
    rig.assert_stored("e500", MINER, 16, 2);
    assert_eq!(rig.credits().await, ["e500"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refusing_puts_holds_the_submission_back() {
    let mut rig = Rig::new().await;
    rig.queue(&[("s3-no", 24, 3)]).await;
    let spool = Spool::open(rig.dir.path().join("spool")).unwrap();
    rig.s3_proxy.set(|m, _| if m == "PUT" { Fault::Refuse(403) } else { Fault::Pass });
    let (worker, stats) = image_worker(MINER, &rig.seq_url(), &rig.s3_proxy.url(), &spool, Arc::new(GradientRunner::default()));
    let (tx, task) = spawn(worker);
    wait_until(Duration::from_secs(30), "three refused PUTs", || rig.s3_proxy.seen("PUT", "/") >= 3).await;
    assert!(rig.job("s3-no").await["result"].is_null(), "no S3Key submitted before the object is stored");
    let pending = spool.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].upload.is_some());
    assert_eq!(decode_png(&spool.image("s3-no").unwrap()).2, gradient(24, 24, 3), "the PNG is on disk meanwhile");

    // Then one PUT whose answer is lost (stored, but the miner hears 502), then service.
    let lost = Arc::new(AtomicU64::new(0));
    let l = lost.clone();
    rig.s3_proxy.set(move |m, _| if m == "PUT" && l.fetch_add(1, Ordering::SeqCst) == 0 { Fault::LoseAnswer } else { Fault::Pass });
    wait_until(Duration::from_secs(30), "the job delivered", || stats.done.load(Ordering::Relaxed) == 1).await;
    stop(tx, task).await;
    assert_eq!(rig.job("s3-no").await["result"]["verdict"]["status"], "accepted");
    rig.assert_stored("s3-no", MINER, 24, 3);
    assert!(spool.pending().unwrap().is_empty());
    assert_eq!(rig.credits().await, ["s3-no"]);
}

/// An S3 outage of 100 s (HEURIST_S3_OUTAGE_S to change it) loses no image job: the miner
/// keeps retrying its upload past the 18 s timeout (the sequencer re-queues the job
/// meanwhile), and the sequencer takes the late result of the miner that was handed the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_s3_outage_loses_no_image_job() {
    let outage = Duration::from_secs(std::env::var("HEURIST_S3_OUTAGE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(100));
    let mut rig = Rig::new().await;
    rig.queue(&[("s3-outage", 24, 9)]).await;
    let spool = Spool::open(rig.dir.path().join("spool")).unwrap();
    rig.s3_proxy.set(|_, _| Fault::Refuse(503));
    let (worker, stats) = image_worker(MINER, &rig.seq_url(), &rig.s3_proxy.url(), &spool, Arc::new(GradientRunner::default()));
    let (tx, task) = spawn(worker);
    tokio::time::sleep(outage).await;
    assert_eq!(rig.job("s3-outage").await["job"]["status"], "queued", "the sequencer re-queued the job meanwhile");
    assert_eq!(spool.pending().unwrap().len(), 1, "the miner still holds the finished job");
    rig.s3_proxy.set(|_, _| Fault::Pass);
    wait_until(Duration::from_secs(60), "the job delivered after the outage", || stats.done.load(Ordering::Relaxed) == 1).await;
    stop(tx, task).await;
    assert_eq!(rig.job("s3-outage").await["result"]["verdict"]["status"], "accepted");
    rig.assert_stored("s3-outage", MINER, 24, 9);
    assert_eq!(rig.credits().await, ["s3-outage"]);
}

/// A job the clamping rules refuse (a 4-pixel side), as a broken or hostile sequencer
/// might send it.
const MALFORMED: &str = r#"{"job_id":"malformed","model_id":"AnimagineXL","model_input":{"SD":{"prompt":"x","width":4,"height":4,"num_iterations":4,"guidance_scale":7,"seed":1}},"temp_credentials":["a","b","c"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_failing_jobs_fail_alone() {
    let mut rig = Rig::new().await;
    rig.queue(&[("good-1", 16, 10), ("poison", 16, 666), ("good-2", 16, 11)]).await;
    let spool = Spool::open(rig.dir.path().join("spool")).unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let n = requests.clone();
    rig.seq_proxy.set(move |m, path| {
        if m == "POST" && path == "/miner_request" && n.fetch_add(1, Ordering::SeqCst) == 1 {
            return Fault::Answer(200, MALFORMED);
        }
        Fault::Pass
    });
    let runner = Arc::new(GradientRunner { poison_seed: Some(666), ..GradientRunner::default() });
    let (worker, stats) = image_worker(MINER, &rig.seq_proxy.url(), &rig.s3.endpoint(), &spool, runner.clone());
    let (tx, task) = spawn(worker);
    wait_until(Duration::from_secs(60), "both good jobs", || stats.done.load(Ordering::Relaxed) == 2).await;
    stop(tx, task).await;
    assert_eq!(stats.failed.load(Ordering::Relaxed), 2, "the malformed job and the poisoned one");
    // Each queued job ran once, in whatever order the sequencer handed them out; the malformed
    // one (seed 1) never reached the engine.
    let mut seeds = runner.seeds.lock().unwrap().clone();
    seeds.sort_unstable();
    assert_eq!(seeds, [10, 11, 666], "the malformed job never reached the engine");
    for (id, seed) in [("good-1", 10), ("good-2", 11)] {
        assert_eq!(rig.job(id).await["result"]["verdict"]["status"], "accepted");
        rig.assert_stored(id, MINER, 16, seed);
    }
    assert!(rig.job("poison").await["result"].is_null());
    assert!(spool.pending().unwrap().is_empty());
    let mut credited = rig.credits().await;
    credited.sort();
    assert_eq!(credited, ["good-1", "good-2"]);
}

/// Jobs in the soak; `HEURIST_SOAK_JOBS` changes it.
fn soak_jobs() -> usize {
    std::env::var("HEURIST_SOAK_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_faults_every_job_submitted_exactly_once() {
    let jobs = soak_jobs();
    let mut rig = Rig::new().await;
    let ids: Vec<String> = (0..jobs).map(|i| format!("soak-{i}")).collect();
    let c = client(&rig.seq_url());
    for (i, id) in ids.iter().enumerate() {
        c.submit_job(KEY, &sd_job(id, 8, 8, i as u64)).await.unwrap();
    }
    // Faults on every hop, at random: polls refused, submissions answered 500, answered too
    // late to matter (lost), delayed; PUTs refused or their answers lost.
    rig.seq_proxy.set(|m, path| {
        let r: f64 = rand::thread_rng().r#gen();
        match (m.as_str(), path) {
            ("POST", "/miner_request") if r < 0.01 => Fault::Refuse(503),
            ("POST", "/miner_submit") if r < 0.04 => Fault::Refuse(500),
            ("POST", "/miner_submit") if r < 0.07 => Fault::LoseAnswer,
            ("POST", "/miner_submit") if r < 0.09 => Fault::Delay(Duration::from_millis(30)),
            _ => Fault::Pass,
        }
    });
    rig.s3_proxy.set(|m, _| {
        let r: f64 = rand::thread_rng().r#gen();
        match m.as_str() {
            "PUT" if r < 0.04 => Fault::Refuse(503),
            "PUT" if r < 0.07 => Fault::LoseAnswer,
            _ => Fault::Pass,
        }
    });
    let runner = Arc::new(GradientRunner::default());
    let miners = ["0x00000000000000000000000000000000000000a1-gpu0", "0x00000000000000000000000000000000000000a2-gpu1"];
    let mut running = Vec::new();
    let mut all_stats = Vec::new();
    for m in miners {
        let spool = Spool::open(rig.dir.path().join(format!("spool-{m}"))).unwrap();
        let (worker, stats) = image_worker(m, &rig.seq_proxy.url(), &rig.s3_proxy.url(), &spool, runner.clone());
        all_stats.push(stats);
        running.push((spawn(worker), spool));
    }
    let started = std::time::Instant::now();
    // Halfway, the sequencer itself goes down and comes back on the same port and data.
    let done = || all_stats.iter().map(|s| s.done.load(Ordering::Relaxed)).sum::<u64>();
    wait_until(Duration::from_secs(300), "half the soak", || done() >= jobs as u64 / 2).await;
    rig.stop_sequencer().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.start_sequencer().await;
    wait_until(Duration::from_secs(300), "every soak job", || all_stats.iter().map(|s| s.done.load(Ordering::Relaxed)).sum::<u64>() >= jobs as u64).await;
    let took = started.elapsed();
    for ((tx, task), spool) in running {
        stop(tx, task).await;
        assert!(spool.pending().unwrap().is_empty(), "nothing left in {}", spool.dir().display());
    }
    let failed: u64 = all_stats.iter().map(|s| s.failed.load(Ordering::Relaxed)).sum();
    assert_eq!(failed, 0);
    assert!(rig.seq_proxy.faults() + rig.s3_proxy.faults() > jobs as u64 / 20, "faults were injected");
    assert_eq!(runner.calls.load(Ordering::Relaxed), jobs as u64, "no job run twice");
    assert_eq!(rig.seq_proxy.ok("POST", "/miner_submit"), jobs as u64, "the sequencer accepted each job once");
    // Every object stored, under the key of the miner that did the job.
    let mut by_miner = 0;
    for (i, id) in ids.iter().enumerate() {
        let r = rig.job(id).await;
        assert_eq!(r["result"]["verdict"]["status"], "accepted", "{id}: {r}");
        let miner = r["result"]["miner_id"].as_str().unwrap().to_owned();
        rig.assert_stored(id, &miner, 8, i as u64);
        by_miner += usize::from(miner == miners[0]);
    }
    let credits = rig.credits().await;
    let unique: HashSet<_> = credits.iter().cloned().collect();
    assert_eq!(credits.len(), jobs, "one credit per job, none twice");
    assert_eq!(unique, ids.iter().cloned().collect::<HashSet<_>>());
    eprintln!(
        "soak: {jobs} jobs in {:.1} s ({:.0} jobs/s), {} + {} faults injected, {by_miner} by the first miner",
        took.as_secs_f64(),
        jobs as f64 / took.as_secs_f64(),
        rig.seq_proxy.faults(),
        rig.s3_proxy.faults()
    );
}
