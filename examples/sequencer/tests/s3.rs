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
