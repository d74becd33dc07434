//! The attacks of a hostile miner that holds only its own identity key, replayed against a
//! real sequencer on loopback with the real S3 server: each must change nothing it should not.

use std::time::Duration;

use heurist_protocol::client::SequencerClient;
use heurist_protocol::{BindIdentity, IdentityWallet, Job, MinerId, MinerRequest, NoJob, ProtocolError, RequestAnswer, SubmitJob, SubmitResult, TokenUsage};
use heurist_sequencer::s3::LocalS3;
use heurist_sequencer::{RunningSequencer, SequencerConfig};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde_json::{Value, json};

use super::{KEY, Miner, client, llm_job, now, portal, sd_job};

const BUCKET: &str = "heurist-images";

fn status(e: ProtocolError) -> u16 {
    match e {
        ProtocolError::Status { status, .. } => status,
        other => panic!("expected an HTTP status, got {other}"),
    }
}

fn config(dir: &std::path::Path) -> SequencerConfig {
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("seq")).unwrap();
    config.api_keys = vec![KEY.into()];
    config.requeue_interval = Duration::from_millis(50);
    config
}

async fn with_s3(dir: &std::path::Path) -> (RunningSequencer, LocalS3) {
    let s3 = LocalS3::start(dir.join("s3"), "operator-key", "operator-secret").await.unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let mut c = config(dir);
    s3.configure(&mut c, BUCKET);
    (heurist_sequencer::start(c).await.unwrap(), s3)
}

fn miner_row(p: &Value, id: &MinerId) -> Value {
    p["miners"].as_array().unwrap().iter().find(|m| m["miner_id"] == id.to_string()).cloned().unwrap_or(Value::Null)
}

fn llama(p: &Value, id: &MinerId) -> f64 {
    miner_row(p, id)["llama_points"].as_f64().unwrap_or(0.0)
}

/// The status a refused `miner_request` answered with (the client reads any error status as
/// "no job").
async fn refused_request(c: &SequencerClient, request: &MinerRequest) -> Option<u16> {
    match c.request_job(request).await {
        Ok(RequestAnswer::NoJob(NoJob::Status(s))) => Some(s),
        Err(e) => Some(status(e)),
        Ok(_) => None,
    }
}

async fn take(c: &SequencerClient, request: &MinerRequest) -> Job {
    match c.request_job(request).await.unwrap() {
        RequestAnswer::Job(j) => *j,
        other => panic!("expected a job, got {other:?}"),
    }
}

async fn put_status(http: &reqwest::Client, url: impl reqwest::IntoUrl, body: &'static [u8]) -> u16 {
    http.put(url).body(body).send().await.unwrap().status().as_u16()
}

fn chat_result(text: &str) -> SubmitResult {
    SubmitResult::Text(json!([{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]).to_string())
}

/// 1. A miner cannot set its own Llama points: `usage` is capped by what the job allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_usage_is_capped_by_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let seq = heurist_sequencer::start(config(dir.path())).await.unwrap();
    let c = client(&seq.url());
    let m = Miner::new("usage");
    // The job allows 16 answer tokens on a 32-byte prompt.
    c.submit_job(KEY, &llm_job("greedy-1")).await.unwrap();
    c.submit_job(KEY, &llm_job("greedy-2")).await.unwrap();
    let job = take(&c, &m.request("dolphin-2.9-llama3-8b")).await;
    let mut inflated = m.submit(&job, chat_result("Hello there."));
    inflated.usage = Some(TokenUsage { prompt_tokens: 1_000_000_000_000, completion_tokens: 1_000_000_000_000 });
    c.submit(&inflated).await.unwrap();
    // At most (32 + 64) prompt tokens and 16 answer tokens at 0.24 per 1,000.
    let bound = (32.0 + 64.0 + 16.0) / 1000.0 * 0.24;
    let first = llama(&portal(&seq.url()).await, &m.id);
    assert!(first > 0.0 && first <= bound + 1e-9, "credited {first}, the job allows at most {bound}");
    // No usage at all: the estimate is capped the same way.
    let job = take(&c, &m.request("dolphin-2.9-llama3-8b")).await;
    c.submit(&m.submit(&job, chat_result(&"x".repeat(200_000)))).await.unwrap();
    let second = llama(&portal(&seq.url()).await, &m.id) - first;
    assert!(second > 0.0 && second <= bound + 1e-9, "credited {second} for a 16-token job");
    seq.shutdown().await.unwrap();
}

/// 2. A job's S3 key opens that job's object only: no overwrite of another miner's PNG, no
/// listing, deleting or making buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_s3_key_opens_only_its_own_object() {
    let dir = tempfile::tempdir().unwrap();
    let (seq, s3) = with_s3(dir.path()).await;
    let c = client(&seq.url());
    c.submit_job(KEY, &sd_job("img-victim")).await.unwrap();
    c.submit_job(KEY, &sd_job("img-attacker")).await.unwrap();
    let victim = Miner::new("victim");
    let attacker = Miner::new("attacker");
    let vjob = take(&c, &victim.request("AnimagineXL")).await;
    let ajob = take(&c, &attacker.request("AnimagineXL")).await;
    let (vcreds, acreds) = (vjob.temp_credentials.clone().unwrap(), ajob.temp_credentials.clone().unwrap());
    assert_ne!(vcreds.access_key_id(), acreds.access_key_id(), "each job has its own key");
    assert_ne!(acreds.access_key_id(), "operator-key", "the operator's key is never handed out");

    let http = reqwest::Client::new();
    let bucket = Bucket::new(s3.endpoint().parse().unwrap(), UrlStyle::Path, BUCKET.to_owned(), "us-east-1").unwrap();
    let as_creds = |t: &heurist_protocol::TempCredentials| Credentials::new(t.access_key_id().to_owned(), t.secret_access_key().to_owned());
    let (vc, ac) = (as_creds(&vcreds), as_creds(&acreds));
    let ttl = Duration::from_secs(60);
    let vkey = SubmitResult::s3_key_for(&vjob.job_id, &victim.id);
    let akey = SubmitResult::s3_key_for(&ajob.job_id, &attacker.id);

    let put = |url, body| put_status(&http, url, body);
    assert_eq!(put(bucket.put_object(Some(&vc), &vkey).sign(ttl), b"victim png").await, 200);
    assert_eq!(put(bucket.put_object(Some(&ac), &akey).sign(ttl), b"attacker png").await, 200);
    // The attacker's key on the victim's object, on a new key, on the bucket, on a new bucket.
    assert_eq!(put(bucket.put_object(Some(&ac), &vkey).sign(ttl), b"overwritten").await, 403);
    assert_eq!(put(bucket.put_object(Some(&ac), "free-space.png").sign(ttl), b"x").await, 403);
    let list = http.get(bucket.list_objects_v2(Some(&ac)).sign(ttl)).send().await.unwrap().status().as_u16();
    assert_eq!(list, 403, "listing");
    let delete = http.delete(bucket.delete_object(Some(&ac), &vkey).sign(ttl)).send().await.unwrap().status().as_u16();
    assert_eq!(delete, 403, "deleting another's object");
    let delete_own = http.delete(bucket.delete_object(Some(&ac), &akey).sign(ttl)).send().await.unwrap().status().as_u16();
    assert_eq!(delete_own, 403, "deleting even its own");
    let other = Bucket::new(s3.endpoint().parse().unwrap(), UrlStyle::Path, "attacker-bucket".to_owned(), "us-east-1").unwrap();
    let made = http.put(other.create_bucket(&ac).sign(ttl)).send().await.unwrap().status().as_u16();
    assert_eq!(made, 403, "making a bucket");
    assert_eq!(std::fs::read(s3.object_path(BUCKET, &vkey)).unwrap(), b"victim png", "the victim's object is unchanged");
    assert!(!s3.root().join("attacker-bucket").exists());

    // Both honest submissions are accepted (the sequencer reads with the operator's key).
    c.submit(&victim.submit(&vjob, SubmitResult::S3Key(vkey))).await.unwrap();
    c.submit(&attacker.submit(&ajob, SubmitResult::S3Key(akey))).await.unwrap();
    seq.shutdown().await.unwrap();
}

/// 3. A stranger's key cannot lock a wallet out: a refused submission binds nothing, a binding
/// survives restarts, and the reward wallet's own signature takes back a wallet that a
/// stranger's accepted job claimed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_key_cannot_lock_a_wallet_out() {
    let dir = tempfile::tempdir().unwrap();
    let seq = heurist_sequencer::start(config(dir.path())).await.unwrap();
    let c = client(&seq.url());
    let victim = Miner::new("v");
    let stranger = IdentityWallet::generate().unwrap();
    // Signed by the stranger's own key for the victim's wallet: a job that does not exist,
    // then one that was never handed to it.
    c.submit_job(KEY, &llm_job("lock-1")).await.unwrap();
    let job = take(&c, &victim.request("dolphin-2.9-llama3-8b")).await;
    let mut forged = victim.submit(&job, chat_result("hi"));
    forged.job_id = "no-such-job".into();
    forged.signature = stranger.sign_hourly(&victim.id, now()).unwrap();
    forged.identity_address = stranger.address().clone();
    assert_eq!(status(c.submit(&forged).await.unwrap_err()), 404);
    // The victim's honest submission is accepted and binds its identity.
    c.submit(&victim.submit(&job, chat_result("hi"))).await.unwrap();
    forged.job_id = job.job_id.clone();
    assert_eq!(status(c.submit(&forged).await.unwrap_err()), 403);

    // After a restart the binding holds: the stranger still cannot sign for the wallet.
    let url = seq.url();
    seq.shutdown().await.unwrap();
    let mut again = config(dir.path());
    again.listen = url.trim_start_matches("http://").parse().unwrap();
    let seq = heurist_sequencer::start(again).await.unwrap();
    let c = client(&seq.url());
    c.submit_job(KEY, &llm_job("lock-2")).await.unwrap();
    let job = take(&c, &victim.request("dolphin-2.9-llama3-8b")).await;
    let mut forged = victim.submit(&job, chat_result("mine"));
    forged.signature = stranger.sign_hourly(&victim.id, now()).unwrap();
    forged.identity_address = stranger.address().clone();
    assert_eq!(status(c.submit(&forged).await.unwrap_err()), 403);
    c.submit(&victim.submit(&job, chat_result("hi"))).await.unwrap();

    // A wallet nobody used yet, claimed by a stranger's accepted job (trust on first use),
    // is taken back by the reward wallet's own signature; a stranger's signature cannot.
    let reward_key = IdentityWallet::generate().unwrap();
    let owner = Miner { id: MinerId::new(reward_key.address().as_str(), Some("g0")).unwrap(), wallet: IdentityWallet::generate().unwrap() };
    let squatter = Miner { id: owner.id.clone(), wallet: IdentityWallet::generate().unwrap() };
    c.submit_job(KEY, &llm_job("lock-3")).await.unwrap();
    let job = take(&c, &squatter.request("dolphin-2.9-llama3-8b")).await;
    c.submit(&squatter.submit(&job, chat_result("hi"))).await.unwrap();
    let bind = |body: BindIdentity| {
        let url = format!("{}/bind_identity", seq.url());
        async move { reqwest::Client::new().post(url).json(&body).send().await.unwrap().status().as_u16() }
    };
    let fake = BindIdentity::sign(&stranger, squatter.wallet.address(), now()).map(|mut b| {
        b.reward_address = reward_key.address().clone();
        b
    });
    assert_eq!(bind(fake.unwrap()).await, 400, "a binding not signed by the reward wallet");
    assert_eq!(bind(BindIdentity::sign(&reward_key, owner.wallet.address(), now() - 7200).unwrap()).await, 400, "a stale one");
    assert_eq!(bind(BindIdentity::sign(&reward_key, owner.wallet.address(), now()).unwrap()).await, 200);
    c.submit_job(KEY, &llm_job("lock-4")).await.unwrap();
    let job = take(&c, &owner.request("dolphin-2.9-llama3-8b")).await;
    c.submit(&owner.submit(&job, chat_result("hi"))).await.unwrap();
    seq.shutdown().await.unwrap();
}

/// 4. Requests under made-up miner ids fail no queued job, hold a bounded number of them, and
/// a client never sees a miner's signature; a signature seen elsewhere delivers nothing from
/// another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_requests_fail_no_job_and_signatures_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.sd_timeout_seconds = 1;
    cfg.max_attempts = 2;
    cfg.max_unsigned_assignments_per_peer = 4;
    let seq = heurist_sequencer::start(cfg).await.unwrap();
    let c = client(&seq.url());
    for i in 0..3 {
        c.submit_job(KEY, &sd_job(&format!("drain-{i}"))).await.unwrap();
    }
    // Ten rounds of asking under fresh ids and vanishing: more than max_attempts each.
    for round in 0..10 {
        for i in 0..3 {
            let ghost = Miner::new(&format!("ghost{round}x{i}"));
            let _ = c.request_job(&ghost.request("AnimagineXL")).await;
        }
        tokio::time::sleep(Duration::from_millis(1150)).await;
    }
    let p = portal(&seq.url()).await;
    let failed = p["jobs"].as_array().unwrap().iter().find(|s| s[0] == "failed").map_or(0, |s| s[1].as_i64().unwrap());
    assert_eq!(failed, 0, "no job failed: {}", p["jobs"]);
    // At most 4 jobs held by unsigned requests from one address at once.
    for i in 0..3 {
        c.submit_job(KEY, &sd_job(&format!("hold-{i}"))).await.unwrap();
    }
    let mut refused = 0;
    for i in 0..6 {
        if let Some(code) = refused_request(&c, &Miner::new(&format!("hog{i}")).request("AnimagineXL")).await {
            assert_eq!(code, 429);
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused} refused of 6 with 6 jobs queued and a cap of 4");

    // Their jobs come back when the hogs' assignments expire. A signed request from the
    // wallet's bound identity is not capped, and its miner's signatures never show to an
    // API-key holder.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let honest = Miner::new("honest");
    c.submit_job(KEY, &llm_job("private-1")).await.unwrap();
    let mut req = honest.request("dolphin-2.9-llama3-8b");
    req.sign(&honest.wallet, now()).unwrap();
    let job = take(&c, &req).await;
    let mut sub = honest.submit(&job, chat_result("hi"));
    sub.sign_job(&honest.wallet, now()).unwrap();
    c.submit(&sub).await.unwrap();
    let seen = reqwest::Client::new()
        .get(format!("{}/job/private-1", seq.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!seen.contains(&sub.signature.to_hex()) && !seen.contains("job_signature"), "{seen}");

    // Its wallet now signs jobs by name: a leaked hourly signature delivers nothing, and an
    // unsigned request under its id is refused.
    c.submit_job(KEY, &llm_job("private-2")).await.unwrap();
    assert_eq!(refused_request(&c, &honest.request("dolphin-2.9-llama3-8b")).await, Some(403));
    let mut req = honest.request("dolphin-2.9-llama3-8b");
    req.sign(&honest.wallet, now()).unwrap();
    let job = take(&c, &req).await;
    let leaked = honest.submit(&job, chat_result("words put in its mouth"));
    assert_eq!(status(c.submit(&leaked).await.unwrap_err()), 403);
    let mut own = honest.submit(&job, chat_result("hi"));
    own.sign_job(&honest.wallet, now()).unwrap();
    c.submit(&own).await.unwrap();

    // A reference miner (no job signatures): its submission must come from the address the
    // job was handed to; a third party elsewhere on loopback holding its signature cannot.
    let plain = Miner::new("plain");
    c.submit_job(KEY, &llm_job("elsewhere-1")).await.unwrap();
    let job = take(&c, &plain.request("dolphin-2.9-llama3-8b")).await;
    let from_elsewhere = reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let body = plain.submit(&job, chat_result("not mine"));
    let code = from_elsewhere.post(format!("{}/miner_submit", seq.url())).json(&body).send().await.unwrap().status().as_u16();
    assert_eq!(code, 403);
    c.submit(&plain.submit(&job, chat_result("hi"))).await.unwrap();
    seq.shutdown().await.unwrap();
}

/// 5 and 7: unbounded strings are refused before they are stored; an absurd deadline is
/// refused instead of expiring the job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_labels_and_absurd_deadlines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seq = heurist_sequencer::start(config(dir.path())).await.unwrap();
    let c = client(&seq.url());
    let m = Miner::new("big");
    let mut req = m.request("AnimagineXL");
    req.hardware = Some("x".repeat(1 << 20));
    assert_eq!(refused_request(&c, &req).await, Some(400));
    let mut req = m.request("AnimagineXL");
    req.version = Some("v".repeat(300));
    assert_eq!(refused_request(&c, &req).await, Some(400));
    let mut req = m.request(&"m".repeat(300));
    req.hardware = None;
    assert_eq!(refused_request(&c, &req).await, Some(400));
    assert!(miner_row(&portal(&seq.url()).await, &m.id).is_null(), "nothing stored");

    for deadline in [0u64, u64::MAX, 1 << 60] {
        let mut job = sd_job(&format!("deadline-{deadline}"));
        job.deadline = Some(deadline);
        assert_eq!(status(c.submit_job(KEY, &job).await.unwrap_err()), 400, "deadline {deadline}");
    }
    let mut job: SubmitJob = sd_job("deadline-ok");
    job.deadline = Some(600);
    c.submit_job(KEY, &job).await.unwrap();
    let taken = take(&c, &m.request("AnimagineXL")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.submit(&m.submit(&taken, SubmitResult::S3Key(SubmitResult::s3_key_for(&taken.job_id, &m.id)))).await.unwrap();
    let row = miner_row(&portal(&seq.url()).await, &m.id);
    assert_eq!((row["jobs_done"].as_i64(), row["jobs_failed"].as_i64()), (Some(1), Some(0)));
    seq.shutdown().await.unwrap();
}

/// 6. A stream costs memory and work in proportion to its size, and a refused one keeps
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_a_refused_one_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_stream_bytes = 256 * 1024;
    let seq = heurist_sequencer::start(cfg).await.unwrap();
    let c = client(&seq.url());
    let m = Miner::new("streamer");
    c.submit_job(KEY, &llm_job("stream-1")).await.unwrap();
    let job = take(&c, &m.request("dolphin-2.9-llama3-8b")).await;
    // 250 KiB in 256-byte pieces is taken, with the text as sent.
    let pieces: Vec<String> = (0..1000).map(|i| format!("{:0>255} ", i)).collect();
    let sent = pieces.concat();
    let ack = c.submit_stream(&job.job_id, &m.id, futures_util::stream::iter(pieces.clone())).await;
    assert!(ack.is_ok(), "{ack:?}");
    let view = |url: String| async move {
        let text = reqwest::Client::new().get(url).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let v = view(format!("{}/job/stream-1", seq.url())).await;
    assert_eq!(v["stream"]["text"].as_str().map(str::len), Some(sent.len()));
    // Over the limit: 413, and the stream is gone.
    let mut over = pieces.clone();
    over.push("!".repeat(6 * 1024));
    assert_eq!(status(c.submit_stream(&job.job_id, &m.id, futures_util::stream::iter(over)).await.unwrap_err()), 413);
    let v = view(format!("{}/job/stream-1", seq.url())).await;
    assert!(v["stream"].is_null(), "{}", v["stream"]);
    seq.shutdown().await.unwrap();
}

/// 8. A forged submission naming a miner does not count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_submissions_charge_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let seq = heurist_sequencer::start(config(dir.path())).await.unwrap();
    let c = client(&seq.url());
    let victim = Miner::new("victim");
    let stranger = IdentityWallet::generate().unwrap();
    c.submit_job(KEY, &llm_job("charge-1")).await.unwrap();
    let job = take(&c, &victim.request("dolphin-2.9-llama3-8b")).await;
    for _ in 0..5 {
        let mut forged = victim.submit(&job, chat_result("forged"));
        forged.signature = stranger.sign_hourly(&victim.id, now()).unwrap();
        assert_eq!(status(c.submit(&forged).await.unwrap_err()), 403);
    }
    assert_eq!(miner_row(&portal(&seq.url()).await, &victim.id)["jobs_failed"], 0);
    c.submit(&victim.submit(&job, chat_result("hi"))).await.unwrap();
    seq.shutdown().await.unwrap();
}

/// 9. A miner whose upload was held up past its assignment still delivers, with its job's
/// key, while the job has no result; the refusal of a stranger names where the job is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_of_a_miner_that_was_handed_the_job_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(dir.path().join("s3"), "operator-key", "operator-secret").await.unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let mut cfg = config(dir.path());
    s3.configure(&mut cfg, BUCKET);
    cfg.limits.sd_timeout_seconds = 1;
    let seq = heurist_sequencer::start(cfg).await.unwrap();
    let c = client(&seq.url());
    c.submit_job(KEY, &sd_job("late-1")).await.unwrap();
    let m = Miner::new("late");
    let job = take(&c, &m.request("AnimagineXL")).await;
    // The assignment expires (S3 down, say) and the job is queued again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stranger = Miner::new("stranger");
    // (Its object put there with the operator's key, so that the refusal is about the job.)
    let bucket = Bucket::new(s3.endpoint().parse().unwrap(), UrlStyle::Path, BUCKET.to_owned(), "us-east-1").unwrap();
    let operator = Credentials::new("operator-key", "operator-secret");
    let skey = SubmitResult::s3_key_for(&job.job_id, &stranger.id);
    let http = reqwest::Client::new();
    assert_eq!(put_status(&http, bucket.put_object(Some(&operator), &skey).sign(Duration::from_secs(60)), b"png").await, 200);
    let err = c.submit(&stranger.submit(&job, SubmitResult::S3Key(skey))).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("never handed to") && text.contains("queued"), "{text}");
    // S3 is back: the first miner uploads with its own key and delivers.
    let creds = job.temp_credentials.clone().unwrap();
    let key = SubmitResult::s3_key_for(&job.job_id, &m.id);
    let creds = Credentials::new(creds.access_key_id().to_owned(), creds.secret_access_key().to_owned());
    let url = bucket.put_object(Some(&creds), &key).sign(Duration::from_secs(60));
    assert_eq!(put_status(&http, url, b"png").await, 200);
    c.submit(&m.submit(&job, SubmitResult::S3Key(key))).await.unwrap();
    // The next miner asking finds no job: it was done.
    assert!(matches!(c.request_job(&stranger.request("AnimagineXL")).await.unwrap(), RequestAnswer::NoJob(_)));
    seq.shutdown().await.unwrap();
}
