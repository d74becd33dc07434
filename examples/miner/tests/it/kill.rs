//! The miner binary killed with SIGKILL after finishing a job and before the sequencer took
//! it: restarted, it submits the result from its spool. The real `heurist-miner` process
//! runs the real SmolLM2 model; a fault proxy keeps the sequencer from taking the
//! submission until the kill.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use crate::common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use heurist_inference::smollm2_path;

const MODEL: &str = LLM_MODEL;
const MINER: &str = "0x00000000000000000000000000000000000000e7-cpu0";

fn miner(proxy: &str, dir: &std::path::Path) -> Child {
    let (keys, spool, gguf) = (dir.join("keys"), dir.join("spool"), smollm2_path().unwrap());
    let (keys, spool, gguf) = (keys.display().to_string(), spool.display().to_string(), gguf.display().to_string());
    miner_bin(dir, ["--base-url", proxy, "--miner-id", MINER, "--llm-model-id", MODEL, "--keys-dir", &keys, "--spool-dir", &spool, "--llm-gguf", &gguf])
}

fn spooled(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("spool"))
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_finishing_before_submitting_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let seq = llm_sequencer(&dir.path().join("seq")).await;
    let proxy = FaultProxy::start(&seq.url()).await;
    // Submissions do not get through: the miner finishes, spools, and keeps retrying.
    proxy.set(|m, path| if m == "POST" && path == "/miner_submit" { Fault::Refuse(503) } else { Fault::Pass });

    write_identity(&dir.path().join("keys"), MINER);
    client(&seq.url()).submit_job(KEY, &llm_job("killed-1", "Name a colour.", 8, 3)).await.unwrap();

    let mut first = miner(&proxy.url(), dir.path());
    let t = Instant::now();
    while !(spooled(dir.path()) == 1 && proxy.seen("POST", "/miner_submit") >= 1) {
        assert!(t.elapsed() < Duration::from_secs(180), "the job was never finished");
        assert!(first.try_wait().unwrap().is_none(), "the miner exited on its own");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL: no handler runs, nothing is flushed
    first.wait().unwrap();
    assert!(job_status(&seq.url(), "killed-1").await["result"].is_null(), "nothing reached the sequencer before the kill");
    assert_eq!(spooled(dir.path()), 1, "the finished job survived the kill on disk");

    proxy.pass();
    let mut second = miner(&proxy.url(), dir.path());
    let result = wait_result(&seq.url(), "killed-1", Duration::from_secs(120), Some(&mut second)).await;
    assert_eq!(result["result"]["verdict"]["status"], "accepted", "{result}");
    assert_eq!(result["result"]["miner_id"], MINER);
    let text = result["result"]["submission"]["result"]["Text"].as_str().unwrap();
    assert!(text.contains("assistant"), "a real chat answer: {text}");
    let t = Instant::now();
    while spooled(dir.path()) != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the spool was not emptied after the acknowledgement");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(second);
    assert_eq!(proxy.ok("POST", "/miner_submit"), 1, "submitted once");
    seq.shutdown().await.unwrap();
}

fn sigint(child: &Child) {
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -INT");
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < limit, "the miner did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ctrl-C while a finished job's submission is on the wire: the submission completes, the
/// miner exits cleanly. Ctrl-C while the sequencer refuses: the miner stops retrying and
/// exits, the result kept in the spool for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_the_submission_in_flight_land_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let seq = llm_sequencer(&dir.path().join("seq")).await;
    let proxy = FaultProxy::start(&seq.url()).await;
    proxy.set(|m, path| if m == "POST" && path == "/miner_submit" { Fault::Delay(Duration::from_millis(1500)) } else { Fault::Pass });
    write_identity(&dir.path().join("keys"), MINER);
    let c = client(&seq.url());
    for n in 1..=2 {
        c.submit_job(KEY, &llm_job(&format!("int-{n}"), "Name a fruit.", 6, n)).await.unwrap();
    }
    let url = seq.url();
    let result = |id: &'static str| job_status(&url, id);

    // One job at a time: the soft limit of 1 is set through a config file.
    std::fs::write(dir.path().join("config.toml"), "[processing_limits]\nconcurrency_soft_limit = 1\n").unwrap();
    let start = |dir: &std::path::Path| {
        let (keys, spool, gguf) = (dir.join("keys"), dir.join("spool"), smollm2_path().unwrap());
        let (keys, spool, gguf) = (keys.display().to_string(), spool.display().to_string(), gguf.display().to_string());
        let base = proxy.url();
        miner_bin(dir, ["--config", "config.toml", "--base-url", &base, "--miner-id", MINER, "--llm-model-id", MODEL, "--keys-dir", &keys, "--spool-dir", &spool, "--llm-gguf", &gguf])
    };
    let mut miner = start(dir.path());
    let t = Instant::now();
    while proxy.seen("POST", "/miner_submit") == 0 {
        assert!(t.elapsed() < Duration::from_secs(120), "no submission");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigint(&miner);
    let status = tokio::task::block_in_place(|| wait_exit(&mut miner, Duration::from_secs(30)));
    assert!(status.success(), "a clean exit: {status:?}");
    assert_eq!(result("int-1").await["result"]["verdict"]["status"], "accepted", "the submission in flight landed");
    assert!(result("int-2").await["result"].is_null(), "no new job after Ctrl-C");
    assert_eq!(spooled(dir.path()), 0);

    // Now the sequencer refuses: Ctrl-C stops the retries, the result stays spooled.
    proxy.set(|m, path| if m == "POST" && path == "/miner_submit" { Fault::Refuse(503) } else { Fault::Pass });
    let mut miner = start(dir.path());
    let t = Instant::now();
    while !(spooled(dir.path()) == 1 && proxy.seen("POST", "/miner_submit") >= 2) {
        assert!(t.elapsed() < Duration::from_secs(120), "the second job never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigint(&miner);
    let status = tokio::task::block_in_place(|| wait_exit(&mut miner, Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    assert_eq!(spooled(dir.path()), 1, "the unsubmitted result is kept for the next start");
    assert!(result("int-2").await["result"].is_null());
    seq.shutdown().await.unwrap();
}
