//! Image jobs end to end against the local sequencer and its embedded S3 server: the job
//! polled, the image painted by the runner seam, the PNG spooled, uploaded with the job's
//! temporary credentials, the key submitted and its signature accepted; the object really
//! stored, decoding to the pixels painted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use heurist_miner::spool::Spool;
use heurist_protocol::SubmitResult;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_job_uploaded_to_s3_and_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, seq) = image_sequencer(dir.path(), &[]).await;
    let c = client(&seq.url());
    c.submit_job(KEY, &sd_job("img-1", 64, 48, 11)).await.unwrap();
    c.submit_job(KEY, &sd_job("img-2", 32, 32, 12)).await.unwrap();

    let miner = "0x00000000000000000000000000000000000000d1-gpu0";
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let runner = Arc::new(GradientRunner::default());
    let (worker, stats) = image_worker(miner, &seq.url(), &s3.endpoint(), &spool, runner.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::new(worker).run(stop_rx));
    wait_until(Duration::from_secs(60), "two images", || stats.done.load(Ordering::Relaxed) >= 2).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert_eq!(runner.calls.load(Ordering::Relaxed), 2);
    assert!(spool.pending().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(spool.dir()).unwrap().count(), 0, "no PNG left behind");

    let miner_id = miner.parse().unwrap();
    for (id, w, h, seed) in [("img-1", 64, 48, 11), ("img-2", 32, 32, 12)] {
        let key = SubmitResult::s3_key_for(id, &miner_id);
        let stored = std::fs::read(s3.object_path(BUCKET, &key)).unwrap();
        let (sw, sh, rgb) = decode_png(&stored);
        assert_eq!((sw, sh), (w, h));
        assert_eq!(rgb, gradient(w, h, seed), "{id}: the stored PNG holds the painted pixels");
        let status = job_status(&seq.url(), id).await;
        assert_eq!(status["result"]["submission"]["result"]["S3Key"], key, "{status}");
        assert_eq!(status["result"]["verdict"]["status"], "accepted", "{status}");
        let upload = status["result"]["submission"]["upload_latency"].as_f64().unwrap();
        assert!(upload > 0.0, "the upload was timed: {status}");
    }
    let p = portal(&seq.url()).await;
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner).unwrap();
    assert_eq!(me["jobs_done"], 2, "{p}");
    seq.shutdown().await.unwrap();
}

/// `miner_signal`: a worker with nothing to do on its model is told of another with work
/// waiting, switches to it (it has it present) and serves its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_switches_to_a_present_model_with_work() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, seq) = image_sequencer(dir.path(), &[]).await;
    let c = client(&seq.url());
    for i in 0..2 {
        c.submit_job(KEY, &sd_job_for(SD_MODEL_2, &format!("other-{i}"), 16, 16, i)).await.unwrap();
    }
    let miner = "0x00000000000000000000000000000000000000d2-gpu0";
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let runner = Arc::new(GradientRunner::default());
    let (mut worker, stats) = image_worker(miner, &seq.url(), &s3.endpoint(), &spool, runner.clone());
    let choice = Arc::new(heurist_miner::signal::ModelChoice::new(SD_MODEL, vec![SD_MODEL.into(), SD_MODEL_2.into()]));
    worker.model = choice.clone();
    worker.limits.signal_interval = 1;
    worker.limits.sleep_duration = 1;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::new(worker).run(stop_rx));
    wait_until(Duration::from_secs(30), "the other model's jobs", || stats.done.load(Ordering::Relaxed) >= 2).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(choice.current(), SD_MODEL_2);
    let p = portal(&seq.url()).await;
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner).unwrap();
    assert_eq!(me["jobs_done"], 2, "{p}");
    seq.shutdown().await.unwrap();
}

/// The status line's points: each accepted image priced with `heurist-points` (seed rules,
/// the bundled registry's type for the model) comes to what the sequencer's ledger credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_status_line_estimates_the_points_the_sequencer_credits() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, seq) = image_sequencer(dir.path(), &[]).await;
    let c = client(&seq.url());
    c.submit_job(KEY, &sd_job("pts-1", 512, 512, 21)).await.unwrap();
    c.submit_job(KEY, &sd_job("pts-2", 256, 128, 22)).await.unwrap();

    let miner = "0x00000000000000000000000000000000000000d3-gpu0";
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let (mut worker, _) = image_worker(miner, &seq.url(), &s3.endpoint(), &spool, Arc::new(GradientRunner::default()));
    let rules = heurist_points::RuleSet::load("seed").unwrap();
    let estimator = heurist_miner::estimate::Estimator::new(rules, &heurist_protocol::Registry::bundled().unwrap());
    let stats = Arc::new(heurist_miner::worker::Stats::estimating(Arc::new(estimator)));
    worker.stats = stats.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Arc::new(worker).run(stop_rx));
    wait_until(Duration::from_secs(60), "two images", || stats.done.load(Ordering::Relaxed) >= 2).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();

    let micro = stats.points_micro.load(Ordering::Relaxed);
    assert!(micro > 0, "an SDXL model earns Waifu Points");
    let p = portal(&seq.url()).await;
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner).unwrap();
    let credited = (me["waifu_points"].as_f64().unwrap() * 1e6).round() as u64;
    assert_eq!(micro, credited, "{p}");
    let line = stats.status_line("miner (image)", true);
    let shown = format!("~{:.4} Waifu Points", micro as f64 / 1e6);
    assert!(line.starts_with("miner (image): 2 done, 0 failed, ") && line.ends_with(&shown), "{line}");
    seq.shutdown().await.unwrap();
}
