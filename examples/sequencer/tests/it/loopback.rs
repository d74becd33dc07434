//! The sequencer end to end on loopback, through heurist-protocol's client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::openai::{ChatMessage, Choice, FinishReason, Role};
use heurist_protocol::{
    IdentityWallet, Job, MinerId, MinerRequest, MinerSubmit, Nullable, ProtocolError, RequestAnswer, SubmitJob,
    SubmitResult, TokenUsage,
};
use heurist_sequencer::{RunningSequencer, S3Grant, SequencerConfig};
use serde_json::{Value, json};

#[path = "attacks.rs"]
mod attacks;

const KEY: &str = "test-key";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn start(dir: &std::path::Path) -> RunningSequencer {
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    config.requeue_interval = Duration::from_millis(100);
    config.s3 = Some(S3Grant {
        endpoint: "http://127.0.0.1:9".into(),
        bucket: "heurist-images".into(),
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret".into(),
        session_token: String::new(),
    });
    heurist_sequencer::start(config).await.unwrap()
}

fn client(url: &str) -> SequencerClient {
    SequencerClient::new(ClientConfig { base_url: url.into(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap()
}

struct Miner {
    id: MinerId,
    wallet: IdentityWallet,
}

impl Miner {
    fn new(tag: &str) -> Self {
        let wallet = IdentityWallet::generate().unwrap();
        let reward = format!("0x{}", &hex_of(wallet.address().as_str())[..40]);
        Self { id: MinerId::new(&reward, Some(tag)).unwrap(), wallet }
    }

    fn request(&self, model: &str) -> MinerRequest {
        MinerRequest {
            miner_id: self.id.clone(),
            model_id: model.into(),
            min_deadline: Some(1),
            hardware: Some("NVIDIA GeForce RTX 4090".into()),
            version: Some("sd-v1.4.0".into()),
            extra: Default::default(),
        }
    }

    fn submit(&self, job: &Job, result: SubmitResult) -> MinerSubmit {
        MinerSubmit {
            miner_id: self.id.clone(),
            job_id: job.job_id.clone(),
            result,
            request_latency: 0.01,
            loading_latency: Nullable::Null,
            inference_latency: 2.0,
            upload_latency: Nullable::Value(0.1),
            signature: self.wallet.sign_hourly(&self.id, now()).unwrap(),
            identity_address: self.wallet.address().clone(),
            usage: None,
            extra: Default::default(),
        }
    }
}

/// A reward address unrelated to the identity (any 40 hex digits will do).
fn hex_of(s: &str) -> String {
    s.trim_start_matches("0x").chars().rev().collect()
}

fn sd_job(id: &str) -> SubmitJob {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../heurist-protocol/data/heurist-models/examples/AnimagineXL.json")).unwrap();
    let input: Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json!({"job_id": id, "model_id": "AnimagineXL", "model_input": {"SD": input}})).unwrap()
}

fn llm_job(id: &str) -> SubmitJob {
    serde_json::from_value(json!({"job_id": id, "model_id": "dolphin-2.9-llama3-8b",
        "model_input": {"LLM": {"prompt": "[{\"role\":\"user\",\"content\":\"hi\"}]", "temperature": 0, "max_tokens": 16, "seed": 1}}}))
    .unwrap()
}

async fn next_job(c: &SequencerClient, m: &Miner, model: &str) -> Job {
    match c.request_job(&m.request(model)).await.unwrap() {
        RequestAnswer::Job(j) => *j,
        other => panic!("expected a job, got {other:?}"),
    }
}

async fn portal(url: &str) -> Value {
    let body = reqwest_get(&format!("{url}/api/portal")).await;
    serde_json::from_str(&body).unwrap()
}

async fn reqwest_get(url: &str) -> String {
    // The protocol client has no GET; a raw HTTP/1.0 request keeps the test free of another HTTP crate.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn waifu(p: &Value, miner: &MinerId) -> f64 {
    p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == miner.to_string()).map_or(0.0, |m| m["waifu_points"].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_chat_jobs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let seq = start(dir.path()).await;
    let c = client(&seq.url());
    c.submit_job(KEY, &sd_job("sd-1")).await.unwrap();
    c.submit_job(KEY, &llm_job("llm-1")).await.unwrap();

    let m = Miner::new("gpu0");
    assert_eq!(c.request_job(&m.request("NoSuchModel")).await.unwrap(), RequestAnswer::NoJob(heurist_protocol::NoJob::Null));
    let job = next_job(&c, &m, "AnimagineXL").await;
    assert_eq!(job.job_id, "sd-1");
    assert_eq!(job.temp_credentials.as_ref().unwrap().access_key_id(), "AKIDTEST");
    let key = SubmitResult::s3_key_for(&job.job_id, &m.id);
    c.submit(&m.submit(&job, SubmitResult::S3Key(key))).await.unwrap();

    let job = next_job(&c, &m, "dolphin-2.9-llama3-8b").await;
    let choices = vec![Choice { index: 0, message: ChatMessage::text(Role::Assistant, "Hello!"), finish_reason: Some(FinishReason::Stop), extra: Default::default() }];
    let mut s = m.submit(&job, SubmitResult::from_choices(&choices).unwrap());
    s.loading_latency = Nullable::Absent;
    s.upload_latency = Nullable::Absent;
    s.usage = Some(TokenUsage { prompt_tokens: 1000, completion_tokens: 1000 });
    c.submit(&s).await.unwrap();

    let p = portal(&seq.url()).await;
    // 680 x 1024 x 25 steps of an SDXL checkpoint (multiplier 1) against the seed's unit.
    assert!(waifu(&p, &m.id) > 0.0, "{p}");
    let miner = p["miners"].as_array().unwrap().iter().find(|x| x["miner_id"] == m.id.to_string()).unwrap();
    assert_eq!(miner["jobs_done"], 2);
    assert_eq!(miner["hardware"], "NVIDIA GeForce RTX 4090");
    // The claimed 2000 tokens are capped by the job: 32 prompt bytes + 64 template tokens, and
    // max_tokens 16; 112 tokens of dolphin (0.24x per 1000) = 0.02688 Llama points.
    assert!((miner["llama_points"].as_f64().unwrap() - 0.02688).abs() < 1e-9, "{miner}");
    let html = reqwest_get(&format!("{}/", seq.url())).await;
    assert!(html.contains(&m.id.to_string()));
    seq.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let seq = start(dir.path()).await;
    let c = client(&seq.url());
    let status = |e: ProtocolError| match e {
        ProtocolError::Status { status, .. } => status,
        other => panic!("{other}"),
    };
    // Client side: no key, unknown model, wrong family, duplicate id, bad size.
    assert_eq!(status(c.submit_job("wrong", &sd_job("a")).await.unwrap_err()), 401);
    let mut unknown = sd_job("b");
    unknown.model_id = "NoSuchModel".into();
    assert_eq!(status(c.submit_job(KEY, &unknown).await.unwrap_err()), 400);
    let mut wrong = llm_job("c");
    wrong.model_id = "AnimagineXL".into();
    assert_eq!(status(c.submit_job(KEY, &wrong).await.unwrap_err()), 400);
    c.submit_job(KEY, &sd_job("d")).await.unwrap();
    assert_eq!(status(c.submit_job(KEY, &sd_job("d")).await.unwrap_err()), 409);

    let honest = Miner::new("a");
    let other = Miner::new("b");
    let job = next_job(&c, &honest, "AnimagineXL").await;
    let key = SubmitResult::s3_key_for(&job.job_id, &honest.id);
    // Another miner submits for honest's job: 403.
    let mut theft = other.submit(&job, SubmitResult::S3Key(SubmitResult::s3_key_for(&job.job_id, &other.id)));
    assert_eq!(status(c.submit(&theft).await.unwrap_err()), 403);
    // A signature by another key: 403.
    let mut forged = honest.submit(&job, SubmitResult::S3Key(key.clone()));
    forged.signature = other.wallet.sign_hourly(&honest.id, now()).unwrap();
    assert_eq!(status(c.submit(&forged).await.unwrap_err()), 403);
    // Last hour but two: 403.
    let mut stale = honest.submit(&job, SubmitResult::S3Key(key.clone()));
    stale.signature = honest.wallet.sign_hourly(&honest.id, now() - 7300).unwrap();
    assert_eq!(status(c.submit(&stale).await.unwrap_err()), 403);
    let before = portal(&seq.url()).await;
    assert_eq!(waifu(&before, &honest.id), 0.0);

    // The honest submission, then its replay.
    let good = honest.submit(&job, SubmitResult::S3Key(key));
    c.submit(&good).await.unwrap();
    let after = portal(&seq.url()).await;
    assert_eq!(status(c.submit(&good).await.unwrap_err()), 409);
    theft.job_id = "no-such-job".into();
    assert_eq!(status(c.submit(&theft).await.unwrap_err()), 404);
    assert_eq!(portal(&seq.url()).await["miners"], after["miners"], "refusals changed nothing");

    // Malformed JSON and a 100 MB body.
    let raw = |path: &'static str, body: Vec<u8>| {
        let url = seq.url();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let host = url.trim_start_matches("http://").to_owned();
            let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
            let head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = s.write_all(&body).await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).split(' ').nth(1).unwrap_or("").to_owned()
        }
    };
    for path in ["/miner_request", "/miner_submit", "/miner_signal"] {
        assert_eq!(raw(path, b"{\"miner_id\": 12".to_vec()).await, "400", "{path}");
    }
    assert_eq!(raw("/miner_submit", vec![b' '; 100 * 1024 * 1024]).await, "413");
    assert_eq!(portal(&seq.url()).await["miners"], after["miners"]);
    seq.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_miners_job_goes_to_another_and_results_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let seq = start(dir.path()).await;
    let c = client(&seq.url());
    let mut job = sd_job("requeued");
    job.deadline = Some(1);
    c.submit_job(KEY, &job).await.unwrap();
    let gone = Miner::new("gone");
    let j = next_job(&c, &gone, "AnimagineXL").await;
    assert_eq!(j.job_id, "requeued");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = Miner::new("second");
    let j = next_job(&c, &second, "AnimagineXL").await;
    assert_eq!(j.job_id, "requeued", "re-queued after the deadline");
    c.submit(&second.submit(&j, SubmitResult::S3Key(SubmitResult::s3_key_for(&j.job_id, &second.id)))).await.unwrap();
    // The vanished miner's late submission is refused: the job has its result (while it had
    // none, the first result of a miner that was handed it would have been taken).
    let late = gone.submit(&j, SubmitResult::S3Key(SubmitResult::s3_key_for(&j.job_id, &gone.id)));
    match c.submit(&late).await {
        Err(ProtocolError::Status { status: 409, .. }) => {}
        other => panic!("expected 409, got {other:?}"),
    }
    let before = portal(&seq.url()).await;
    seq.shutdown().await.unwrap();

    let seq = start(dir.path()).await;
    let after = portal(&seq.url()).await;
    assert_eq!(after["miners"], before["miners"]);
    assert!(waifu(&after, &second.id) > 0.0);
    seq.shutdown().await.unwrap();
}

/// Fails results whose answer text contains "CHEAT" (a stand-in for heurist-verify's checks:
/// this test is about what the sequencer does with a verdict).
struct TextAuditor;

impl heurist_sequencer::Auditor for TextAuditor {
    fn audit(&self, _job: &Job, submit: &MinerSubmit) -> heurist_sequencer::AuditVerdict {
        match &submit.result {
            SubmitResult::Text(t) if t.contains("CHEAT") => heurist_sequencer::AuditVerdict::Fail { evidence: "answer contains CHEAT".into() },
            _ => heurist_sequencer::AuditVerdict::Pass,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_slashes_the_job_with_its_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    config.audit = Some(heurist_sequencer::AuditPolicy { auditor: std::sync::Arc::new(TextAuditor), rate: 1.0 });
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = client(&seq.url());
    let honest = Miner::new("honest");
    let cheat = Miner::new("cheat");
    for (i, (m, text)) in [(&honest, "Hello!"), (&cheat, "CHEAT")].into_iter().enumerate() {
        c.submit_job(KEY, &llm_job(&format!("audit-{i}"))).await.unwrap();
        let job = next_job(&c, m, "dolphin-2.9-llama3-8b").await;
        let choices = vec![Choice { index: 0, message: ChatMessage::text(Role::Assistant, text), finish_reason: Some(FinishReason::Stop), extra: Default::default() }];
        let mut s = m.submit(&job, SubmitResult::from_choices(&choices).unwrap());
        s.usage = Some(TokenUsage { prompt_tokens: 500, completion_tokens: 500 });
        c.submit(&s).await.unwrap();
    }
    // Audits run after the answer; wait for both verdicts.
    let mut p = portal(&seq.url()).await;
    for _ in 0..100 {
        if p["recent"].as_array().unwrap().iter().all(|r| r["verdict"].get("audit").is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        p = portal(&seq.url()).await;
    }
    let llama = |id: &MinerId| p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == id.to_string()).unwrap()["llama_points"].as_f64().unwrap();
    // The claimed 1000 tokens, capped by the job to 96 + 16 (see image_and_chat_jobs_end_to_end).
    assert!((llama(&honest.id) - 0.02688).abs() < 1e-9, "{p}");
    assert_eq!(llama(&cheat.id), 0.0, "credited then slashed: {p}");
    let slashes = p["slashes"].as_array().unwrap();
    assert_eq!(slashes.len(), 1);
    assert_eq!(slashes[0]["miner_id"], cheat.id.to_string());
    assert_eq!(slashes[0]["reason"], "answer contains CHEAT");
    let cheat_result = p["recent"].as_array().unwrap().iter().find(|r| r["miner_id"] == cheat.id.to_string()).unwrap();
    assert_eq!(cheat_result["verdict"]["status"], "slashed");
    seq.shutdown().await.unwrap();
}
