//! The demo binary runs to completion: honest jobs accepted and audited, the cheater caught.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

#[test]
fn demo_runs_honest_jobs_and_catches_the_cheater() {
    let out = Command::new(env!("CARGO_BIN_EXE_heurist-demo"))
        .args(["--jobs", "4", "--max-tokens", "6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("honest jobs accepted and passed: yes"), "{stdout}");
    assert!(stdout.contains("portal http://127.0.0.1:"), "{stdout}");
    // Either the cheater took jobs and was caught on every one, or it took none.
    assert!(stdout.contains("cheater caught: yes") || !stdout.contains("mallory   "), "{stdout}");
}
