//! The demo binary runs to completion: honest chat and image jobs (SD 1.5 and SDXL) accepted
//! and audited, both cheaters (chat and image) caught on every job they took, the image
//! cheater on at least one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

#[test]
fn demo_runs_honest_jobs_and_catches_the_cheater() {
    let out = Command::new(env!("CARGO_BIN_EXE_heurist-demo"))
        .args(["--jobs", "4", "--max-tokens", "6", "--image-jobs", "4", "--sdxl-jobs", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("honest jobs accepted and passed: yes"), "{stdout}");
    assert!(stdout.contains("portal http://127.0.0.1:"), "{stdout}");
    // Every cheater that took jobs was caught on every one ...
    assert!(stdout.contains("cheater caught: yes"), "{stdout}");
    // ... and the image cheater took some (two image miners poll; while one paints, the other
    // gets the next job), each a slash with the pixel evidence.
    let eve = stdout.lines().find(|l| l.starts_with("cheater eve: took ")).expect("a line on the image cheater");
    assert!(!eve.starts_with("cheater eve: took 0 ") && eve.ends_with("slashed on every one"), "{stdout}");
    assert!(stdout.contains("is not the image of job demo-image-"), "image slash evidence: {stdout}");
    // The honest image miner's jobs were accepted and passed their audit, earning Waifu points.
    let honest_images: usize = stdout.lines().find_map(|l| l.strip_prefix("honest image jobs: ")).unwrap().parse().unwrap();
    assert!(honest_images >= 1, "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("carol") && l.contains("waifu") && l.contains("audit passed")), "{stdout}");
    // The SDXL example jobs ran on the tiny SDXL checkpoint, every one accepted and audited.
    assert!(stdout.contains("honest SDXL image jobs: 2 of 2"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("demo-sdxl-") && l.contains("tiny-sdxl") && l.contains("dave") && l.contains("waifu") && l.contains("audit passed")), "{stdout}");
}
