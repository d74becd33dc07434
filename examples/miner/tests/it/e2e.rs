//! The miner end to end against the local sequencer on loopback, with the real SmolLM2 model:
//! chat jobs polled, run, spooled, signed and accepted; the spool empty afterwards; results
//! left in the spool by a previous run delivered on start.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use heurist_inference::{ChatEngine, DeviceSpec, smollm2_path};
use heurist_miner::spool::{Finished, Spool};
use heurist_miner::worker::{LlmWorker, Stats};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{IdentityWallet, MinerId, MinerLimits, Nullable, Registry, RegistryEntry, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

const MODEL: &str = "smollm2-135m-instruct";

fn registry_with_smollm2() -> Registry {
    let mut r = Registry::bundled().unwrap();
    let entry: RegistryEntry = serde_json::from_value(json!({"name": MODEL, "type": "llm135m", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "bits": 4})).unwrap();
    r.models.push(entry);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_jobs_end_to_end_with_a_spooled_result_from_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec!["k".into()];
    config.registry = registry_with_smollm2();
    let seq = heurist_sequencer::start(config).await.unwrap();
    let client = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap();
    let prompts = ["What is the capital of France?", "Say hello in Spanish.", "Name a colour."];
    for (i, p) in prompts.iter().enumerate() {
        let messages = serde_json::to_string(&json!([{"role": "user", "content": p}])).unwrap();
        let job: SubmitJob = serde_json::from_value(json!({"job_id": format!("chat-{i}"), "model_id": MODEL,
            "model_input": {"LLM": {"prompt": messages, "temperature": 0, "max_tokens": 12, "seed": 7}}})).unwrap();
        client.submit_job("k", &job).await.unwrap();
    }

    let wallet = Arc::new(IdentityWallet::generate().unwrap());
    let miner: MinerId = "0x00000000000000000000000000000000000000c4-cpu0".parse().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    // A result a previous run finished but could not submit: it must be delivered first. Its
    // job was assigned to this miner before the "crash".
    let messages = serde_json::to_string(&json!([{"role": "user", "content": "left over"}])).unwrap();
    let job: SubmitJob = serde_json::from_value(json!({"job_id": "from-before", "model_id": MODEL,
        "model_input": {"LLM": {"prompt": messages, "temperature": 0, "max_tokens": 4, "seed": 1}}})).unwrap();
    client.submit_job("k", &job).await.unwrap();
    let heurist_protocol::RequestAnswer::Job(j) = client
        .request_job(&heurist_protocol::MinerRequest { miner_id: miner.clone(), model_id: MODEL.into(), min_deadline: None, hardware: None, version: None, extra: Default::default() })
        .await
        .unwrap()
    else {
        panic!("a job")
    };
    assert_eq!(j.job_id, "chat-0", "jobs are handed out in order; take the first one as the crashed one");
    let choices = vec![heurist_protocol::openai::Choice { index: 0, message: heurist_protocol::openai::ChatMessage::text(heurist_protocol::openai::Role::Assistant, "Paris."), finish_reason: Some(heurist_protocol::openai::FinishReason::Stop), extra: Default::default() }];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    spool
        .put(&Finished {
            job_id: j.job_id.clone(),
            miner_id: miner.clone(),
            result: SubmitResult::from_choices(&choices).unwrap(),
            request_latency: 0.01,
            loading_latency: Nullable::Absent,
            inference_latency: 0.5,
            upload_latency: Nullable::Absent,
            usage: None,
            extra: Default::default(),
            received_at_ms: now,
            expires_at_ms: now + 600_000,
            upload: None,
        })
        .unwrap();

    let engine = Arc::new(heurist_miner::llm::SharedEngine::new(ChatEngine::load_gguf(smollm2_path().unwrap(), DeviceSpec::Cpu).unwrap()));
    let stats = Arc::new(Stats::default());
    let limits = MinerLimits { sleep_duration: 0, ..MinerLimits::default() };
    let worker = Arc::new(LlmWorker {
        miner_id: miner.clone(),
        wallet,
        models: Arc::new(heurist_miner::llm::ChatModels::single(MODEL, engine)),
        client: client.clone(),
        spool: spool.clone(),
        limits,
        version: "llm-v1.2.0".into(),
        hardware: "cpu".into(),
        stats: stats.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(stop_rx));
    let t = Instant::now();
    // chat-0 from the spool, chat-1, chat-2 and from-before by the engine.
    while stats.done.load(Ordering::Relaxed) < 4 {
        assert!(t.elapsed() < Duration::from_secs(240), "timed out: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert!(spool.pending().unwrap().is_empty(), "the spool is empty once everything is acknowledged");

    let p: serde_json::Value = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(seq.addr).await.unwrap();
        s.write_all(b"GET /api/portal HTTP/1.0\r\n\r\n").await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        serde_json::from_str(buf.split_once("\r\n\r\n").unwrap().1).unwrap()
    };
    let me = p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner.to_string()).unwrap();
    assert_eq!(me["jobs_done"], 4, "{p}");
    let recent = p["recent"].as_array().unwrap();
    assert!(recent.iter().all(|r| r["verdict"]["status"] == "accepted"), "{p}");
    seq.shutdown().await.unwrap();
}
