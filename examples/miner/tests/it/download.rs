//! Model downloads against a loopback HTTP server that serves a file with `Range` support and
//! can cut a response short or serve corrupted bytes: a full download, a resume after a cut
//! (a `Range` request for the rest, not the whole file again), a wrong checksum refused and
//! fetched again, a corrupted cached file replaced, and a file that never matches never
//! left where it would be loaded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use heurist_miner::MinerError;
use heurist_miner::download::ModelStore;
use heurist_protocol::{Registry, RegistryEntry};
use sha2::{Digest, Sha256};

const SIZE: usize = 3 << 20;

struct Server {
    data: Vec<u8>,
    /// Responses still to cut after half their bytes.
    cuts: AtomicU32,
    /// Responses still to serve with a flipped byte.
    corrupt: AtomicU32,
    /// The Range header of each request ("" for none).
    ranges: Mutex<Vec<String>>,
    sent: AtomicU64,
}

async fn serve(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    s.ranges.lock().unwrap().push(range.clone());
    let mut data = s.data.clone();
    if s.corrupt.load(Ordering::SeqCst) > 0 {
        s.corrupt.fetch_sub(1, Ordering::SeqCst);
        data[SIZE / 3] ^= 0xff;
    }
    let start = match range.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')) {
        Some(n) => n.parse::<usize>().unwrap(),
        None => 0,
    };
    if start >= data.len() {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    let body = data[start..].to_vec();
    let len = body.len();
    let cut = s.cuts.load(Ordering::SeqCst) > 0;
    let body = if cut {
        s.cuts.fetch_sub(1, Ordering::SeqCst);
        // Half the bytes, then the connection fails: the client sees a short body.
        let half = body[..len / 2].to_vec();
        s.sent.fetch_add(half.len() as u64, Ordering::SeqCst);
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(half), Err(std::io::Error::other("cut"))];
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        s.sent.fetch_add(len as u64, Ordering::SeqCst);
        Body::from(body)
    };
    let mut r = Response::builder().header(header::CONTENT_LENGTH, len);
    r = if range.is_empty() {
        r.status(StatusCode::OK)
    } else {
        r.status(StatusCode::PARTIAL_CONTENT).header(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", data.len() - 1, data.len()))
    };
    r.body(body).unwrap()
}

async fn server() -> (Arc<Server>, String) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let s = Arc::new(Server { data, cuts: AtomicU32::new(0), corrupt: AtomicU32::new(0), ranges: Mutex::new(Vec::new()), sent: AtomicU64::new(0) });
    let app = axum::Router::new().route("/files/tiny.safetensors", axum::routing::get(serve)).with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/files/tiny.safetensors", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (s, url)
}

fn registry(url: &str, data: &[u8]) -> Registry {
    let checksum = hex::encode_upper(Sha256::digest(data));
    let entry: RegistryEntry = serde_json::from_value(serde_json::json!({
        "name": "TinySD", "type": "sd15", "checksum": checksum, "file_url": url, "size_mb": 3
    }))
    .unwrap();
    let mut r = Registry::default();
    r.models.push(entry);
    r
}

fn store(dir: &std::path::Path) -> ModelStore {
    ModelStore::new(dir).unwrap().with_retry_base(Duration::from_millis(10))
}

#[tokio::test]
async fn full_download_then_kept() {
    let (s, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&url, &s.data);
    let path = store(dir.path()).ensure(&reg, "TinySD").await.unwrap();
    assert_eq!(path, dir.path().join("TinySD.safetensors"));
    assert_eq!(std::fs::read(&path).unwrap(), s.data);
    assert!(!dir.path().join("TinySD.safetensors.part").exists());
    // Present and matching: checked, not fetched again.
    store(dir.path()).ensure(&reg, "TinySD").await.unwrap();
    assert_eq!(s.ranges.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn resumes_after_a_cut() {
    let (s, url) = server().await;
    s.cuts.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let path = store(dir.path()).ensure(&registry(&url, &s.data), "TinySD").await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), s.data);
    let ranges = s.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!(ranges[0], "", "the first request asks for the whole file");
    assert_eq!(ranges[1], format!("bytes={}-", SIZE / 2), "the second asks for the rest");
    assert_eq!(ranges[2], format!("bytes={}-", SIZE / 2 + (SIZE - SIZE / 2) / 2));
    assert_eq!(s.sent.load(Ordering::SeqCst), SIZE as u64, "no byte fetched twice");
}

#[tokio::test]
async fn wrong_checksum_refused_and_fetched_again() {
    let (s, url) = server().await;
    s.corrupt.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&url, &s.data);
    let path = store(dir.path()).ensure(&reg, "TinySD").await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), s.data, "the corrupted copy was not kept");
    assert_eq!(s.ranges.lock().unwrap().as_slice(), ["", ""], "fetched whole, twice");

    // A cached file damaged on disk is deleted and fetched again before use.
    let mut bad = s.data.clone();
    bad[7] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    store(dir.path()).ensure(&reg, "TinySD").await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), s.data);
}

#[tokio::test]
async fn a_file_that_never_matches_is_never_left_to_load() {
    let (s, url) = server().await;
    s.corrupt.store(u32::MAX, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let e = store(dir.path()).ensure(&registry(&url, &s.data), "TinySD").await.unwrap_err();
    assert!(matches!(e, MinerError::Download { ref model, .. } if model == "TinySD"), "{e}");
    assert!(e.to_string().contains(&hex::encode(Sha256::digest(&s.data))), "names the expected digest: {e}");
    assert!(!dir.path().join("TinySD.safetensors").exists());
    assert!(!dir.path().join("TinySD.safetensors.part").exists());

    // And bad registry input is named.
    let e = store(dir.path()).ensure(&registry(&url, &s.data), "NoSuchModel").await.unwrap_err();
    assert!(e.to_string().contains("NoSuchModel"), "{e}");
    let e = store(dir.path()).fetch_checked("x", "http://127.0.0.1:9/none", &dir.path().join("x"), Some("zz")).await;
    assert!(e.is_err());
}
