//! A property test that drives every endpoint with mutated bodies: the answer is never a 5xx,
//! garbage is never accepted, and the ledger does not move.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use heurist_sequencer::SequencerConfig;
use proptest::prelude::*;
use serde_json::{Value, json};

fn post(addr: &str, path: &str, headers: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn valid_bodies() -> Vec<(&'static str, &'static str, Value)> {
    let miner = "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0";
    vec![
        ("/miner_request", "", json!({"miner_id": miner, "model_id": "AnimagineXL", "min_deadline": 1})),
        ("/miner_submit", "", json!({"miner_id": miner, "job_id": "queued-1", "result": {"S3Key": format!("queued-1-{miner}.png")},
            "request_latency": 0.1, "loading_latency": null, "inference_latency": 1.0, "upload_latency": 0.1,
            "signature": "ab".repeat(64) + "1b", "identity_address": "0xb0a160faec1705618a7583e2cc1c12e72d259ac3"})),
        ("/miner_signal", "", json!({"miner_id": miner, "model_type": "SD", "model_id": "AnimagineXL"})),
        ("/submit_job", "authorization: Bearer k\r\n", json!({"job_id": "x", "model_id": "AnimagineXL",
            "model_input": {"SD": {"prompt": "p", "height": 512, "width": 512, "num_iterations": 20, "guidance_scale": 7, "seed": 1}}})),
        ("/miner_submit_stream", "job_id: queued-1\r\nminer_id: 0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0\r\n", json!("text [DONE]")),
    ]
}

/// A mutation of a JSON body: truncate, flip a byte, or swap one field's value.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Replace(usize, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({"SD": 1})),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), value).prop_map(|(i, v)| Mutation::Replace(i, v)),
    ]
}

fn apply(body: &Value, m: &Mutation) -> Vec<u8> {
    let bytes = serde_json::to_vec(body).unwrap();
    match m {
        Mutation::Truncate(i) => bytes[..i % bytes.len().max(1)].to_vec(),
        Mutation::Flip(i, b) => {
            let mut v = bytes.clone();
            let n = v.len();
            v[i % n] ^= b | 1;
            v
        }
        Mutation::Replace(i, val) => {
            let mut body = body.clone();
            if let Some(obj) = body.as_object_mut() {
                let keys: Vec<String> = obj.keys().cloned().collect();
                let k = &keys[i % keys.len()];
                obj.insert(k.clone(), val.clone());
            }
            serde_json::to_vec(&body).unwrap()
        }
    }
}

#[test]
fn mutated_bodies_get_4xx_and_leave_the_ledger_alone() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec!["k".into()];
    let seq = rt.block_on(heurist_sequencer::start(config)).unwrap();
    let addr = seq.addr.to_string();
    // One real job exists, assigned to nobody the mutations can sign for.
    let job = json!({"job_id": "queued-1", "model_id": "AnimagineXL",
        "model_input": {"SD": {"prompt": "p", "height": 512, "width": 512, "num_iterations": 20, "guidance_scale": 7, "seed": 1}}});
    assert_eq!(post(&addr, "/submit_job", "authorization: Bearer k\r\n", &serde_json::to_vec(&job).unwrap()), 200);
    let before: Value = serde_json::from_str(&get(&addr, "/api/portal")).unwrap();

    let bodies = valid_bodies();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(96));
    runner
        .run(&(0..bodies.len(), mutation()), |(which, m)| {
            let (path, headers, body) = &bodies[which];
            let sent = if *path == "/miner_submit_stream" { apply(&json!({"t": body}), &m) } else { apply(body, &m) };
            let status = post(&addr, path, headers, &sent);
            prop_assert!(status != 0 && status < 500, "{path} answered {status} to {:?}", String::from_utf8_lossy(&sent));
            if *path == "/miner_submit" {
                prop_assert!(status >= 400, "a submission with a forged signature was accepted");
            }
            Ok(())
        })
        .unwrap();
    let after: Value = serde_json::from_str(&get(&addr, "/api/portal")).unwrap();
    let points = |v: &Value| v["miners"].as_array().unwrap().iter().map(|m| (m["waifu_points"].as_f64().unwrap(), m["llama_points"].as_f64().unwrap())).collect::<Vec<_>>();
    assert!(points(&after).iter().all(|p| *p == (0.0, 0.0)), "the ledger moved: {after}");
    assert_eq!(before["slashes"], after["slashes"]);
    rt.block_on(seq.shutdown()).unwrap();
}
