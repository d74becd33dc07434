//! A chat job with `use_stream: true` against the local sequencer on loopback, on the real
//! SmolLM2 model: the answer arrives through `miner_submit_stream` complete (ended by
//! `[DONE]`) and equal to the model's answer, and the signed result is still delivered
//! through the spool. Alongside it, plain jobs share the engine's batch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, smollm2_path};
use heurist_miner::spool::Spool;
use heurist_miner::worker::{LlmWorker, Stats};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;
use heurist_protocol::{IdentityWallet, MinerId, MinerLimits, Registry, RegistryEntry, SubmitJob};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

const MODEL: &str = "smollm2-135m-instruct";
const PROMPT: &str = "Write two sentences about the sea.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chat_job_arrives_whole_and_is_still_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec!["k".into()];
    let mut registry = Registry::bundled().unwrap();
    let entry: RegistryEntry = serde_json::from_value(json!({"name": MODEL, "type": "llm135m", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "bits": 4})).unwrap();
    registry.models.push(entry);
    config.registry = registry;
    let seq = heurist_sequencer::start(config).await.unwrap();
    let client = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(30), ..ClientConfig::default() }).unwrap();
    for (job_id, prompt, stream) in [("streamed", PROMPT, true), ("plain-1", "Say hello.", false), ("plain-2", "Name a fruit.", false)] {
        let messages = serde_json::to_string(&json!([{"role": "user", "content": prompt}])).unwrap();
        let job: SubmitJob = serde_json::from_value(json!({"job_id": job_id, "model_id": MODEL,
            "model_input": {"LLM": {"prompt": messages, "temperature": 0, "max_tokens": 40, "seed": 3, "use_stream": stream}}}))
        .unwrap();
        client.submit_job("k", &job).await.unwrap();
    }

    let engine = ChatEngine::load_gguf(smollm2_path().unwrap(), DeviceSpec::Cpu).unwrap();
    // What the model answers alone, with the reference's stop strings as the miner applies them.
    let want = engine
        .chat(&ChatRequest::new(vec![ChatMessage::user(PROMPT)]).with_max_tokens(40).with_stop(REFERENCE_STOP_STRINGS))
        .unwrap()
        .text;
    assert!(want.contains(' '), "{want:?}: the answer should come in several pieces");

    let miner: MinerId = "0x00000000000000000000000000000000000000c5-cpu0".parse().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let stats = Arc::new(Stats::default());
    let worker = Arc::new(LlmWorker {
        miner_id: miner.clone(),
        wallet: Arc::new(IdentityWallet::generate().unwrap()),
        models: Arc::new(heurist_miner::llm::ChatModels::single(MODEL, Arc::new(heurist_miner::llm::SharedEngine::new(engine)))),
        client: client.clone(),
        spool: spool.clone(),
        limits: MinerLimits { sleep_duration: 0, ..MinerLimits::default() },
        version: "llm-v1.2.0".into(),
        hardware: "cpu".into(),
        stats: stats.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(stop_rx));
    let t = Instant::now();
    while stats.done.load(Ordering::Relaxed) < 3 {
        assert!(t.elapsed() < Duration::from_secs(240), "timed out: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert!(spool.pending().unwrap().is_empty());

    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/job/streamed", seq.url().trim_end_matches('/')))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["stream"]["complete"], true, "{status}");
    // Every piece ends with a space, the last one too, as the reference sends them.
    let sent = if want.ends_with(' ') { want.clone() } else { format!("{want} ") };
    assert_eq!(status["stream"]["text"], sent.as_str(), "{status}");
    assert!(!status["result"].is_null(), "the signed result was delivered too: {status}");
    seq.shutdown().await.unwrap();
}
