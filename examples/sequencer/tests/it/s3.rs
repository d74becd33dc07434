//! The embedded S3 server speaks real S3 with SigV4 checked: a PUT signed with the key the
//! sequencer hands out lands as a file and reads back; one signed with a wrong secret, an
//! unknown key or no signature at all is refused and stores nothing.

#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use heurist_sequencer::s3::LocalS3;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

fn bucket(endpoint: &str) -> Bucket {
    Bucket::new(endpoint.parse().unwrap(), UrlStyle::Path, "heurist-images", "us-east-1").unwrap()
}

async fn put(endpoint: &str, creds: Option<&Credentials>, key: &str, body: &'static [u8]) -> reqwest::StatusCode {
    let b = bucket(endpoint);
    let url = b.put_object(creds, key).sign(Duration::from_secs(60));
    reqwest::Client::new().put(url).body(body).send().await.unwrap().status()
}

#[tokio::test]
async fn signed_put_lands_and_wrong_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(dir.path().join("s3"), "miner-key", "miner-secret").await.unwrap();
    s3.create_bucket("heurist-images").unwrap();
    let grant = s3.grant("heurist-images");
    assert_eq!(grant.endpoint, s3.endpoint());
    let ep = s3.endpoint();

    let good = Credentials::new(grant.access_key_id.clone(), grant.secret_access_key.clone());
    assert!(put(&ep, Some(&good), "job-1-0xabc-g.png", b"\x89PNG first").await.is_success());
    let stored = std::fs::read(s3.object_path("heurist-images", "job-1-0xabc-g.png")).unwrap();
    assert_eq!(stored, b"\x89PNG first");

    // Read back through the protocol too, signed.
    let get = bucket(&ep).get_object(Some(&good), "job-1-0xabc-g.png").sign(Duration::from_secs(60));
    let r = reqwest::get(get).await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x89PNG first");

    let wrong_secret = Credentials::new("miner-key", "not-the-secret");
    let unknown_key = Credentials::new("someone-else", "miner-secret");
    for (creds, name) in [(Some(&wrong_secret), "wrong secret"), (Some(&unknown_key), "unknown key"), (None, "anonymous")] {
        let status = put(&ep, creds, "job-2-0xabc-g.png", b"forged").await;
        assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{name}");
        assert!(!s3.object_path("heurist-images", "job-2-0xabc-g.png").exists(), "{name}: nothing stored");
    }
    // An overwrite with the wrong secret leaves the stored object alone.
    assert_eq!(put(&ep, Some(&wrong_secret), "job-1-0xabc-g.png", b"forged").await, reqwest::StatusCode::FORBIDDEN);
    assert_eq!(std::fs::read(s3.object_path("heurist-images", "job-1-0xabc-g.png")).unwrap(), b"\x89PNG first");

    // A bucket that does not exist is refused, not created.
    let other = Bucket::new(ep.parse().unwrap(), UrlStyle::Path, "no-such-bucket", "us-east-1").unwrap();
    let r = reqwest::Client::new().put(other.put_object(Some(&good), "k").sign(Duration::from_secs(60))).body("x").send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    s3.shutdown().await;
}

#[tokio::test]
async fn bad_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = LocalS3::start(dir.path(), "", "x").await.unwrap_err();
    assert!(e.to_string().contains("s3 credentials"), "{e}");
    let s3 = LocalS3::start(dir.path(), "k", "s").await.unwrap();
    let e = s3.create_bucket("Bad_Bucket").unwrap_err();
    assert!(e.to_string().contains("Bad_Bucket"), "{e}");
}

/// With `verify_s3_objects`, an image result whose PNG is not in the bucket is refused (and
/// nothing is recorded); once the PNG is uploaded with the job's temporary credentials the
/// same submission is accepted. A silent S3 is a 503, which a miner retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_results_are_accepted_only_once_their_object_is_stored() {
    use heurist_protocol::client::{ClientConfig, SequencerClient};
    use heurist_protocol::{IdentityWallet, MinerId, MinerRequest, MinerSubmit, Nullable, ProtocolError, RequestAnswer, SubmitJob, SubmitResult};

    let dir = tempfile::tempdir().unwrap();
    let s3 = LocalS3::start(dir.path().join("s3"), "miner-key", "miner-secret").await.unwrap();
    s3.create_bucket("heurist-images").unwrap();
    let mut config = heurist_sequencer::SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq")).unwrap();
    config.api_keys = vec!["k".into()];
    s3.configure(&mut config, "heurist-images");
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    let job: SubmitJob = serde_json::from_value(serde_json::json!({"job_id": "head-1", "model_id": "AnimagineXL",
        "model_input": {"SD": {"prompt": "p", "width": 64, "height": 64, "num_iterations": 4, "guidance_scale": 7, "seed": 1}}}))
    .unwrap();
    c.submit_job("k", &job).await.unwrap();
    let wallet = IdentityWallet::generate().unwrap();
    let id: MinerId = "0x00000000000000000000000000000000000000c1-g0".parse().unwrap();
    let req = MinerRequest { miner_id: id.clone(), model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: None, version: None, extra: Default::default() };
    let RequestAnswer::Job(j) = c.request_job(&req).await.unwrap() else { panic!("a job") };
    let creds = j.temp_credentials.clone().unwrap();
    let key = SubmitResult::s3_key_for(&j.job_id, &id);
    let submit = || MinerSubmit {
        miner_id: id.clone(),
        job_id: j.job_id.clone(),
        result: SubmitResult::S3Key(key.clone()),
        request_latency: 0.01,
        loading_latency: Nullable::Null,
        inference_latency: 1.0,
        upload_latency: Nullable::Value(0.1),
        signature: wallet.sign_hourly(&id, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap(),
        identity_address: wallet.address().clone(),
        usage: None,
        extra: Default::default(),
    };
    match c.submit(&submit()).await {
        Err(ProtocolError::Status { status: 403, body, .. }) => assert!(body.contains(&key), "names the key: {body}"),
        other => panic!("expected 403, got {other:?}"),
    }
    let creds = Credentials::new(creds.access_key_id(), creds.secret_access_key());
    assert!(put(&s3.endpoint(), Some(&creds), &key, b"\x89PNG stored").await.is_success());
    c.submit(&submit()).await.unwrap();
    seq.shutdown().await.unwrap();

    // The bucket's server gone: the sequencer cannot tell, and says so with a 503.
    let endpoint = s3.endpoint();
    s3.shutdown().await;
    let mut config = heurist_sequencer::SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("seq2")).unwrap();
    config.api_keys = vec!["k".into()];
    config.s3 = Some(heurist_sequencer::S3Grant { endpoint, bucket: "heurist-images".into(), access_key_id: "miner-key".into(), secret_access_key: "miner-secret".into(), session_token: String::new() });
    config.verify_s3_objects = true;
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    c.submit_job("k", &job).await.unwrap();
    let RequestAnswer::Job(_) = c.request_job(&req).await.unwrap() else { panic!("a job") };
    match c.submit(&submit()).await {
        Err(ProtocolError::Status { status: 503, .. }) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    seq.shutdown().await.unwrap();
}
