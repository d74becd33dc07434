//! Per-model FIFO hand-out: a queued job is handed out before any job of the same model
//! queued after it (within a priority), whatever the job ids and however many jobs share a
//! millisecond; a job re-queued because its miner vanished keeps its place; other models'
//! queues do not disturb the order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{MinerId, MinerRequest, RequestAnswer, SubmitJob};
use heurist_sequencer::SequencerConfig;
use heurist_sequencer::store::{JobStatus, JobStore, Taker};
use serde_json::json;

/// A signed request (not capped per address).
const TAKER: Taker<'static> = Taker { peer: "127.0.0.1", signed: true, identity: None, max_unsigned_per_peer: 0 };

const KEY: &str = "fifo-key";

fn assign_all(store: &mut JobStore, model: &str, now: i64) -> Vec<String> {
    std::iter::from_fn(|| store.assign_next(model, "m", now, TAKER).unwrap().map(|j| j.job_id)).collect()
}

#[test]
fn the_store_hands_out_in_arrival_order_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = JobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
    let input = json!({});
    // Ids in reverse alphabetical order, all in one millisecond, two models interleaved.
    let ids: Vec<String> = (0..40).rev().map(|i| format!("job-{i:02}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let model = if n % 3 == 0 { "B" } else { "A" };
        store.enqueue(id, model, "SD", &input, 0, 1_000, 5_000).unwrap();
    }
    // A later job with a clock that stepped back still comes after the earlier ones.
    store.enqueue("late-but-earlier-clock", "A", "SD", &input, 0, 1_000, 1_000).unwrap();
    let want_a: Vec<String> = ids.iter().enumerate().filter(|(n, _)| n % 3 != 0).map(|(_, id)| id.clone()).chain(["late-but-earlier-clock".to_owned()]).collect();
    let want_b: Vec<String> = ids.iter().enumerate().filter(|(n, _)| n % 3 == 0).map(|(_, id)| id.clone()).collect();

    // The first three of A go out; the second one's miner vanishes and it is re-queued: it
    // is handed out again before everything queued after it.
    let first: Vec<String> = (0..3).map(|_| store.assign_next("A", "m", 6_000, TAKER).unwrap().unwrap().job_id).collect();
    assert_eq!(first, want_a[..3]);
    store.requeue_expired(6_000 + 1_001, 5).unwrap(); // all three expire ...
    let again = assign_all(&mut store, "A", 10_000);
    assert_eq!(again, want_a, "re-queued jobs first, in their order, then the rest in arrival order");
    assert_eq!(assign_all(&mut store, "B", 10_000), want_b);
    assert_eq!(store.job(&want_a[0]).unwrap().unwrap().status, JobStatus::Assigned);

    // Priority still goes first; within it, arrival order.
    for (id, prio) in [("p0-a", 0), ("p5-a", 5), ("p0-b", 0), ("p5-b", 5)] {
        store.enqueue(id, "C", "SD", &input, prio, 1_000, 20_000).unwrap();
    }
    assert_eq!(assign_all(&mut store, "C", 20_000), ["p5-a", "p5-b", "p0-a", "p0-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_get_jobs_in_the_order_clients_queued_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    let queued: Vec<String> = (0..30).map(|i| format!("z{:02}", 30 - i)).collect();
    for (i, id) in queued.iter().enumerate() {
        let job: SubmitJob = serde_json::from_value(json!({"job_id": id, "model_id": "AnimagineXL",
            "model_input": {"SD": {"prompt": "p", "width": 512, "height": 512, "num_iterations": 20, "guidance_scale": 7, "seed": i}}}))
        .unwrap();
        c.submit_job(KEY, &job).await.unwrap();
    }
    let miner = MinerId::new("0x00000000000000000000000000000000000000f1", Some("fifo")).unwrap();
    let request = MinerRequest {
        miner_id: miner,
        model_id: "AnimagineXL".into(),
        min_deadline: Some(1),
        hardware: Some("NVIDIA GeForce RTX 4090".into()),
        version: Some("sd-v1.4.0".into()),
        extra: Default::default(),
    };
    let mut handed = Vec::new();
    while let RequestAnswer::Job(job) = c.request_job(&request).await.unwrap() {
        handed.push(job.job_id.clone());
    }
    assert_eq!(handed, queued);
    seq.shutdown().await.unwrap();
}
