//! The portal in a real headless browser (Debian's chromium): the page loads, shows the
//! miners and their points after a run (in the table and as a chart over time, never a
//! `-0.000000`), and logs no console errors.
//!
//! Needs `/usr/bin/chromium` (`.ci/run` installs it). Without it the test is skipped with a
//! message, except under `CI=true`, where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{IdentityWallet, MinerId, MinerRequest, MinerSubmit, Nullable, RequestAnswer, SubmitJob, SubmitResult};
use heurist_sequencer::SequencerConfig;
use serde_json::json;

fn chromium() -> Option<String> {
    let path = std::env::var("HEURIST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no chromium at {path}: .ci/run must install it");
    eprintln!("skipped: no chromium at {path} (apt-get install chromium, or set HEURIST_CHROMIUM)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_loads_with_miners_and_points_and_no_console_errors() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()).unwrap();
    config.api_keys = vec!["k".into()];
    let seq = heurist_sequencer::start(config).await.unwrap();
    let c = SequencerClient::new(ClientConfig { base_url: seq.url(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap();
    let job: SubmitJob = serde_json::from_value(json!({"job_id": "portal-1", "model_id": "AnimagineXL",
        "model_input": {"SD": {"prompt": "p", "height": 1024, "width": 1024, "num_iterations": 20, "guidance_scale": 7, "seed": 1}}}))
    .unwrap();
    c.submit_job("k", &job).await.unwrap();
    let wallet = IdentityWallet::generate().unwrap();
    let id = MinerId::new("0x00000000000000000000000000000000000000aa", Some("portal")).unwrap();
    let req = MinerRequest { miner_id: id.clone(), model_id: "AnimagineXL".into(), min_deadline: Some(1), hardware: Some("NVIDIA GeForce RTX 4090".into()), version: Some("sd-v1.4.0".into()), extra: Default::default() };
    let RequestAnswer::Job(j) = c.request_job(&req).await.unwrap() else { panic!("a job") };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    c.submit(&MinerSubmit {
        miner_id: id.clone(),
        job_id: j.job_id.clone(),
        result: SubmitResult::S3Key(SubmitResult::s3_key_for(&j.job_id, &id)),
        request_latency: 0.0,
        loading_latency: Nullable::Null,
        inference_latency: 1.0,
        upload_latency: Nullable::Value(0.1),
        signature: wallet.sign_hourly(&id, now).unwrap(),
        identity_address: wallet.address().clone(),
        usage: None,
        extra: Default::default(),
    })
    .await
    .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/", seq.url());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                &format!("--user-data-dir={}", profile.path().display()),
                "--virtual-time-budget=3000",
                "--dump-dom",
                &url,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    assert!(dom.contains("Heurist local sequencer"), "{dom}");
    assert!(dom.contains(&id.to_string()), "the miner is listed: {dom}");
    assert!(dom.contains("NVIDIA GeForce RTX 4090"));
    // 1024 x 1024 x 20 steps of SDXL: a positive Waifu amount in the miner's row.
    let row = dom.split("<tr>").find(|r| r.contains(&id.to_string())).unwrap();
    let cells: Vec<&str> = row.split("<td>").collect();
    let waifu: f64 = cells[6].trim_end_matches("</td>").parse().unwrap();
    assert!(waifu > 0.0, "{row}");
    assert!(cells[7].starts_with("0.000000</td>"), "no Llama points, printed as a plain zero: {row}");
    assert!(!dom.contains("-0.000000"), "a negative zero: {dom}");
    // The chart: one inline SVG, the miner's Waifu balance as a polyline, the miner in the legend.
    assert_eq!((dom.matches("<svg").count(), dom.matches("</svg>").count()), (1, 1), "{dom}");
    let svg = &dom[dom.find("<svg").unwrap()..dom.find("</svg>").unwrap()];
    let line = format!("<polyline class=\"series\" data-miner=\"{id}\" data-currency=\"waifu\"");
    assert_eq!(svg.matches(&line).count(), 1, "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 1, "one miner, one currency: {svg}");
    assert!(svg.contains(&format!("{waifu:.6} Waifu points")), "the line ends at the balance: {svg}");
    let legend = &dom[dom.find("id=\"chart-legend\"").unwrap()..];
    assert!(legend.contains(&format!("<code>{id}</code>")), "{legend}");
    assert!(!dom.contains("chart-empty"));
    // The same series in the JSON view.
    let portal: serde_json::Value = reqwest::get(format!("{}/api/portal", seq.url())).await.unwrap().json().await.unwrap();
    let series = portal["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{portal}");
    assert_eq!((series[0]["miner_id"].as_str(), series[0]["currency"].as_str(), series[0]["entries"].as_u64()), (Some(id.to_string().as_str()), Some("waifu"), Some(1)));
    let last = series[0]["points"].as_array().unwrap().last().unwrap().clone();
    assert!(last[0].as_i64().unwrap() > 0 && (last[1].as_f64().unwrap() - waifu).abs() < 1e-6, "{last}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    seq.shutdown().await.unwrap();
}
