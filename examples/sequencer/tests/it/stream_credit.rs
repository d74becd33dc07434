//! Streamed answers are credited only through the signed `miner_submit`: a stream carries no
//! signature, so one sent under the assignee's miner id by anybody earns nothing; the honest
//! stream followed by the assignee's signed submission of the same answer is credited exactly
//! once, and audited like any `Text` result; a signed submission that contradicts the stream
//! is refused with a 422 and changes nothing; a stream after the result is a conflict, and
//! one from another address than the job was handed to is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heurist_points::LedgerStore;
use heurist_points::ledger::{EntryKind, EntryQuery, SqliteLedger};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::openai::{ChatMessage, Choice, FinishReason, Role};
use heurist_protocol::stream::{HEADER_JOB_ID, HEADER_MINER_ID};
use heurist_protocol::{IdentityWallet, Job, MinerId, MinerRequest, MinerSubmit, Nullable, ProtocolError, RequestAnswer, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use heurist_sequencer::audit::{AuditPolicy, AuditVerdict, Auditor};
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
    stream_text(url, job_id, miner, ANSWER, complete).await
}

async fn stream_text(url: &str, job_id: &str, miner: &MinerId, text: &str, complete: bool) -> (u16, Value) {
    stream_from(url, job_id, miner, text, complete, None).await
}

/// [`stream_text`] sent from `local` (another loopback address: another host, to the
/// sequencer).
async fn stream_from(url: &str, job_id: &str, miner: &MinerId, text: &str, complete: bool, local: Option<std::net::IpAddr>) -> (u16, Value) {
    let mut pieces: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
    if let Some(last) = pieces.last_mut() {
        *last = last.trim_end().to_owned();
    }
    if complete {
        pieces.push("[DONE]".into());
    }
    let body = futures_util::stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(p.into_bytes())));
    let r = reqwest::Client::builder()
        .local_address(local)
        .build()
        .unwrap()
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
    answer_submit(job, miner, wallet, ANSWER)
}

fn answer_submit(job: &Job, miner: &MinerId, wallet: &IdentityWallet, answer: &str) -> MinerSubmit {
    let choices = [Choice { index: 0, message: ChatMessage::text(Role::Assistant, answer), finish_reason: Some(FinishReason::Stop), extra: Default::default() }];
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
        usage: None,
        extra: Default::default(),
    }
}

async fn status(url: &str, id: &str) -> Value {
    reqwest::Client::new().get(format!("{url}/job/{id}")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
}

/// Fails every job it is shown, and remembers which: proves audits reach a result.
#[derive(Default)]
struct FailAll(Mutex<Vec<String>>);

impl Auditor for FailAll {
    fn audit(&self, job: &Job, _submit: &MinerSubmit) -> AuditVerdict {
        self.0.lock().unwrap().push(job.job_id.clone());
        AuditVerdict::Fail { evidence: format!("test auditor: {} re-checked and refused", job.job_id) }
    }
}

fn credits(dir: &std::path::Path) -> Vec<(String, i64)> {
    let mut ledger = SqliteLedger::open(dir.join("ledger.sqlite")).unwrap();
    let mut out: Vec<_> = ledger
        .entries(&EntryQuery::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Credit)
        .map(|e| (e.job_id.clone().unwrap(), e.amount_micro))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_credited_only_through_the_signed_submission_that_agrees_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    let seq = heurist_sequencer::start(config).await.unwrap();
    let url = seq.url();
    let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    for id in ["forged", "honest", "plain", "mismatch", "cut", "cut-bad"] {
        c.submit_job(KEY, &llm_job(id)).await.unwrap();
    }
    let wallet = IdentityWallet::generate().unwrap();
    let miner = MinerId::new("0x00000000000000000000000000000000000005ea", Some("stream")).unwrap();
    let other = MinerId::new("0x00000000000000000000000000000000000005eb", Some("other")).unwrap();

    // A complete stream under the assignee's id, with no signed submission: the client sees
    // the text, nothing is stored or credited, the job stays assigned (its deadline re-queues
    // it).
    let forged = take(&c, &miner).await;
    assert_eq!(forged.job_id, "forged");
    assert_eq!(stream(&url, "forged", &other, true).await.0, 403, "only the assignee's id may stream");
    // Under the assignee's id but from another address than the job was handed to: refused,
    // and not shown to the client.
    let elsewhere = Some("127.0.0.2".parse().unwrap());
    let (code, body) = stream_from(&url, "forged", &miner, "Lies. ", true, elsewhere).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("127.0.0.2"), "{body}");
    assert!(status(&url, "forged").await["stream"].is_null());
    let (code, ack) = stream(&url, "forged", &miner, true).await;
    assert_eq!((code, ack["status"].clone(), ack["complete"].clone()), (200, json!("streamed"), json!(true)), "{ack}");
    let st = status(&url, "forged").await;
    assert!(st["result"].is_null(), "a stream alone is no result: {st}");
    assert_eq!(st["job"]["status"], "assigned", "{st}");
    assert_eq!(st["stream"]["text"], ANSWER, "{st}");

    // The honest miner: the stream, then the signed submission of the same answer (the
    // pieces' trailing space does not matter). Credited once; a replay and a late stream are
    // conflicts.
    let honest = take(&c, &miner).await;
    let (code, ack) = stream_text(&url, &honest.job_id, &miner, &format!("{ANSWER} "), true).await;
    assert_eq!((code, ack["status"].clone()), (200, json!("streamed")), "{ack}");
    assert!(status(&url, "honest").await["result"].is_null(), "nothing before the signed submission");
    c.submit(&text_submit(&honest, &miner, &wallet)).await.unwrap();
    let replay = c.submit(&text_submit(&honest, &miner, &wallet)).await.unwrap_err();
    assert!(matches!(replay, ProtocolError::Status { status: 409, .. }), "{replay}");
    assert_eq!(stream(&url, "honest", &miner, true).await.0, 409, "a stream after the result changes nothing");
    // The same answer submitted without a stream earns the same.
    let plain = take(&c, &miner).await;
    c.submit(&text_submit(&plain, &miner, &wallet)).await.unwrap();
    let (h, p) = (status(&url, "honest").await, status(&url, "plain").await);
    assert_eq!(h["result"]["verdict"]["status"], "accepted", "{h}");
    assert_eq!(h["result"]["miner_id"], miner.to_string());
    assert_eq!(h["result"]["submission"]["result"], p["result"]["submission"]["result"], "the same Text result");
    assert!(h["result"]["verdict"]["points"].as_f64().unwrap() > 0.0, "{h}");
    assert_eq!(h["result"]["verdict"]["points"], p["result"]["verdict"]["points"], "{h} {p}");

    // A signed answer that is not the one streamed: 422 naming the job, nothing stored.
    let mismatch = take(&c, &miner).await;
    assert_eq!(stream(&url, &mismatch.job_id, &miner, true).await.0, 200);
    let refused = c.submit(&answer_submit(&mismatch, &miner, &wallet, "Lyon is the capital of France.")).await.unwrap_err();
    match &refused {
        ProtocolError::Status { status: 422, body, .. } => {
            assert!(body.contains("mismatch") && body.contains("not the one streamed"), "{body}");
        }
        other => panic!("expected a 422, got {other}"),
    }
    assert!(status(&url, "mismatch").await["result"].is_null());

    // A stream cut short (the miner's stream failed): the signed answer must begin with what
    // was streamed.
    let cut = take(&c, &miner).await;
    let (code, ack) = stream_text(&url, &cut.job_id, &miner, "Paris is", false).await;
    assert_eq!((code, ack["complete"].clone()), (200, json!(false)), "{ack}");
    c.submit(&text_submit(&cut, &miner, &wallet)).await.unwrap();
    let cut_bad = take(&c, &miner).await;
    assert_eq!(stream_text(&url, &cut_bad.job_id, &miner, "Berlin is", false).await.0, 200);
    let refused = c.submit(&text_submit(&cut_bad, &miner, &wallet)).await.unwrap_err();
    assert!(matches!(refused, ProtocolError::Status { status: 422, .. }), "{refused}");
    seq.shutdown().await.unwrap();

    let got = credits(dir.path());
    let jobs: Vec<_> = got.iter().map(|(j, _)| j.as_str()).collect();
    assert_eq!(jobs, ["cut", "honest", "plain"], "one credit each; none for the forged stream or the refused answers");
    assert_eq!(got[1].1, got[2].1, "streamed and plain answers earn the same");
}

/// The signed submission of a streamed answer is audited like any `Text` result: a failed
/// audit slashes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_audited_like_a_text_submission() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    let auditor = Arc::new(FailAll::default());
    config.audit = Some(AuditPolicy { auditor: auditor.clone(), rate: 1.0 });
    let seq = heurist_sequencer::start(config).await.unwrap();
    let url = seq.url();
    let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    c.submit_job(KEY, &llm_job("streamed")).await.unwrap();
    let wallet = IdentityWallet::generate().unwrap();
    let miner = MinerId::new("0x00000000000000000000000000000000000005ec", Some("stream")).unwrap();
    let job = take(&c, &miner).await;
    assert_eq!(stream(&url, "streamed", &miner, true).await.0, 200);
    c.submit(&text_submit(&job, &miner, &wallet)).await.unwrap();
    let t = std::time::Instant::now();
    loop {
        let s = status(&url, "streamed").await;
        if s["result"]["verdict"]["status"] == "slashed" {
            assert_eq!(s["result"]["verdict"]["audit"]["status"], "fail", "{s}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never audited: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*auditor.0.lock().unwrap(), ["streamed"]);
    let p: Value = reqwest::get(format!("{url}/api/portal")).await.unwrap().json().await.unwrap();
    assert_eq!(p["slashes"].as_array().map(Vec::len), Some(1), "{p}");
    seq.shutdown().await.unwrap();
}

/// What the sequencer keeps of a stream lasts as long as the assignment: a job whose miner
/// streamed and then never submitted is re-queued without its stale stream (the next assignee
/// streams afresh), and an accepted job's stream gives way to its stored result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lasts_as_long_as_its_assignment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    config.requeue_interval = Duration::from_millis(100);
    let seq = heurist_sequencer::start(config).await.unwrap();
    let url = seq.url();
    let c = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    let mut short = llm_job("abandoned");
    short.deadline = Some(1);
    c.submit_job(KEY, &short).await.unwrap();
    let wallet = IdentityWallet::generate().unwrap();
    let first = MinerId::new("0x00000000000000000000000000000000000005ed", Some("gone")).unwrap();
    let second = MinerId::new("0x00000000000000000000000000000000000005ee", Some("next")).unwrap();
    take(&c, &first).await;
    assert_eq!(stream_text(&url, "abandoned", &first, "Half an", false).await.0, 200);
    assert_eq!(status(&url, "abandoned").await["stream"]["text"], "Half an");
    // The first miner goes silent; its deadline (1 s) passes and the sweep re-queues the job.
    let t = std::time::Instant::now();
    loop {
        let s = status(&url, "abandoned").await;
        if s["job"]["status"] == "queued" {
            assert!(s["stream"].is_null(), "a re-queued job shows no stale stream: {s}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never re-queued: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next assignee streams afresh and submits: accepted, its own stream shown.
    let job = take(&c, &second).await;
    assert_eq!(job.job_id, "abandoned");
    assert_eq!(stream(&url, "abandoned", &second, true).await.0, 200);
    c.submit(&text_submit(&job, &second, &wallet)).await.unwrap();
    let s = status(&url, "abandoned").await;
    assert_eq!(s["result"]["verdict"]["status"], "accepted", "{s}");
    assert_eq!(s["stream"]["miner_id"], second.to_string(), "{s}");
    seq.shutdown().await.unwrap();
}
