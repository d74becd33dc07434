//! Stream-only answers: an LLM job answered through `miner_submit_stream` alone is stored
//! and credited exactly as the same text submitted as `Text` through `miner_submit`; a stream
//! cut short earns nothing and leaves the job assigned; a later `miner_submit` of a streamed
//! job is a conflict, and a stream after a submission changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heurist_points::LedgerStore;
use heurist_points::ledger::{EntryKind, EntryQuery, SqliteLedger};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::openai::{ChatMessage, Choice, FinishReason, Role};
use heurist_protocol::stream::{HEADER_JOB_ID, HEADER_MINER_ID};
use heurist_protocol::{IdentityWallet, Job, MinerId, MinerRequest, MinerSubmit, Nullable, ProtocolError, RequestAnswer, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use serde_json::{Value, json};

const KEY: &str = "stream-key";
const MODEL: &str = "dolphin-2.9-llama3-8b";
const ANSWER: &str = "Paris is the capital of France.";

fn llm_job(id: &str) -> SubmitJob {
    serde_json::from_value(json!({"job_id": id, "model_id": MODEL,
        "model_input": {"LLM": {"prompt": "[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]", "temperature": 0, "max_tokens": 32, "seed": 1, "use_stream": true}}}))
    .unwrap()
}

async fn take(c: &SequencerClient, miner: &MinerId) -> Job {
    let req = MinerRequest { miner_id: miner.clone(), model_id: MODEL.into(), min_deadline: None, hardware: Some("NVIDIA GeForce RTX 4090".into()), version: Some("llm-v1.2.0".into()), extra: Default::default() };
    match c.request_job(&req).await.unwrap() {
        RequestAnswer::Job(j) => *j,
        other => panic!("expected a job, got {other:?}"),
    }
}

/// The stream body in word-sized pieces, as a miner sends it, with or without the end marker.
async fn stream(url: &str, job_id: &str, miner: &MinerId, complete: bool) -> (u16, Value) {
    let mut pieces: Vec<String> = ANSWER.split(' ').map(|w| format!("{w} ")).collect();
    if let Some(last) = pieces.last_mut() {
        *last = last.trim_end().to_owned();
    }
    if complete {
        pieces.push("[DONE]".into());
    }
    let body = futures_util::stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(p.into_bytes())));
    let r = reqwest::Client::new()
        .post(format!("{url}/miner_submit_stream"))
        .header(HEADER_JOB_ID, job_id)
        .header(HEADER_MINER_ID, miner.to_string())
        .header("content-type", "text/event-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn text_submit(job: &Job, miner: &MinerId, wallet: &IdentityWallet) -> MinerSubmit {
    let choices = [Choice { index: 0, message: ChatMessage::text(Role::Assistant, ANSWER), finish_reason: Some(FinishReason::Stop), extra: Default::default() }];
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    MinerSubmit {
        miner_id: miner.clone(),
        job_id: job.job_id.clone(),
        result: SubmitResult::from_choices(&choices).unwrap(),
        request_latency: 0.01,
        loading_latency: Nullable::Absent,
        inference_latency: 1.0,
        upload_latency: Nullable::Absent,
        signature: wallet.sign_hourly(miner, now).unwrap(),
        identity_address: wallet.address().clone(),
        extra: Default::default(),
    }
}

async fn status(url: &str, id: &str) -> Value {
    reqwest::Client::new().get(format!("{url}/job/{id}")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_credited_like_the_same_text_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    let seq = heurist_sequencer::start(config).await.unwrap();
    let url = seq.url();
    let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    for id in ["streamed", "submitted", "cut", "both"] {
        c.submit_job(KEY, &llm_job(id)).await.unwrap();
    }
    let wallet = IdentityWallet::generate().unwrap();
    let miner = MinerId::new("0x00000000000000000000000000000000000005ea", Some("stream")).unwrap();
    let other = MinerId::new("0x00000000000000000000000000000000000005eb", Some("other")).unwrap();

    let streamed = take(&c, &miner).await;
    assert_eq!(streamed.job_id, "streamed");
    // Only the miner the job went to may stream its answer.
    assert_eq!(stream(&url, "streamed", &other, true).await.0, 403);
    let (code, ack) = stream(&url, "streamed", &miner, true).await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["status"], "accepted", "{ack}");

    let submitted = take(&c, &miner).await;
    c.submit(&text_submit(&submitted, &miner, &wallet)).await.unwrap();

    let s = status(&url, "streamed").await;
    let t = status(&url, "submitted").await;
    assert_eq!(s["result"]["verdict"]["status"], "accepted", "{s}");
    assert_eq!(s["result"]["miner_id"], miner.to_string());
    assert_eq!(s["result"]["submission"]["result"], t["result"]["submission"]["result"], "the same Text result");
    assert_eq!(s["result"]["verdict"]["points"], t["result"]["verdict"]["points"], "the same points: {s} {t}");
    assert_eq!(s["result"]["verdict"]["currency"], "llama", "{s}");
    assert!(s["result"]["verdict"]["points"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["stream"]["text"], ANSWER);

    // Cut short: nothing stored, nothing credited, still assigned.
    let cut = take(&c, &miner).await;
    let (code, ack) = stream(&url, &cut.job_id, &miner, false).await;
    assert_eq!((code, ack["complete"].clone()), (200, json!(false)), "{ack}");
    let st = status(&url, "cut").await;
    assert!(st["result"].is_null(), "{st}");
    assert_eq!(st["job"]["status"], "assigned");

    // Streamed, then submitted as well: the stream counted; the submission is a conflict.
    let both = take(&c, &miner).await;
    assert_eq!(stream(&url, &both.job_id, &miner, true).await.0, 200);
    let again = c.submit(&text_submit(&both, &miner, &wallet)).await.unwrap_err();
    assert!(matches!(again, ProtocolError::Status { status: 409, .. }), "{again}");
    let (code, ack) = stream(&url, &both.job_id, &miner, true).await;
    assert_eq!((code, ack["status"].clone()), (200, json!("already_submitted")), "{ack}");
    seq.shutdown().await.unwrap();

    let mut ledger = SqliteLedger::open(dir.path().join("ledger.sqlite")).unwrap();
    let credits: Vec<_> = ledger.entries(&EntryQuery::default()).unwrap().into_iter().filter(|e| e.kind == EntryKind::Credit).collect();
    let mut jobs: Vec<_> = credits.iter().filter_map(|e| e.job_id.clone()).collect();
    jobs.sort();
    assert_eq!(jobs, ["both", "streamed", "submitted"], "one credit each; none for the cut stream");
    let amount = |id: &str| credits.iter().find(|e| e.job_id.as_deref() == Some(id)).unwrap().amount_micro;
    assert_eq!(amount("streamed"), amount("submitted"));
}
