//! The `heurist` binary end to end: exit codes, stdout, stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};

const REWARD: &str = "0x3f71f00ad1266be038917addd150943ca7c60f6a";

pub(crate) fn heurist(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_heurist"))
        .args(args)
        .env_remove("HEURIST_KEYS_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // The tool may exit before reading its input (a bad flag): a closed pipe is fine.
        let _ = input.write_all(s.as_bytes());
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn restore_sign_and_verify_match_eth_account() {
    // Vector 0 of heurist-protocol's eth-account fixtures.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../heurist-protocol/tests/fixtures/eth-account/vectors.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let v = &doc["vectors"][0];
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path().to_str().unwrap();
    let miner = v["miner_id"].as_str().unwrap();
    let out = heurist(&["wallet", "restore", "--address", miner, "--keys", k], Some(v["mnemonic"].as_str().unwrap()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(v["identity_address"].as_str().unwrap()));
    // Restoring again without --force is refused: the file may hold the bound key.
    let again = heurist(&["wallet", "restore", "--address", miner, "--keys", k], Some(v["mnemonic"].as_str().unwrap()));
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"));

    let time = v["unix_time"].as_u64().unwrap().to_string();
    let out = heurist(&["sign", "--address", miner, "--time", &time, "--keys", k], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), v["signature"].as_str().unwrap());

    let identity = v["identity_address"].as_str().unwrap();
    let sig = v["signature"].as_str().unwrap();
    let ok = heurist(&["verify-signature", "--address", miner, "--identity", identity, "--signature", sig, "--time", &time], None);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let later = (v["unix_time"].as_u64().unwrap() + 7200).to_string();
    let stale = heurist(&["verify-signature", "--address", miner, "--identity", identity, "--signature", sig, "--time", &later], None);
    assert_eq!(stale.status.code(), Some(1));
    let other = heurist(&["verify-signature", "--address", miner, "--identity", REWARD, "--signature", sig, "--time", &time], None);
    assert_eq!(other.status.code(), Some(1));
    let malformed = heurist(&["verify-signature", "--address", miner, "--identity", identity, "--signature", "0x12", "--time", &time], None);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains("--signature"));
}

#[test]
fn new_wallet_is_stored_and_shown() {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path().to_str().unwrap();
    let out = heurist(&["wallet", "new", "--address", &format!("{REWARD}-gpu1"), "--keys", k], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = keys.path().join(format!("{REWARD}.txt"));
    let stored = std::fs::read_to_string(&file).unwrap();
    let shown = heurist(&["wallet", "show", "--address", REWARD, "--keys", k], None);
    let addr_line = stdout(&shown).lines().next().unwrap().to_owned();
    assert!(stored.contains(&addr_line), "{stored} / {addr_line}");
    assert!(!stdout(&shown).contains("Seed Phrase"), "the phrase is shown only on request");
    let missing = heurist(&["wallet", "show", "--address", "0x0000000000000000000000000000000000000001", "--keys", k], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no identity key file"));
}

#[cfg(unix)]
#[test]
fn key_files_end_owner_only_after_force_and_loose_ones_are_tightened_on_load() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let set = |p: &std::path::Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path().to_str().unwrap();
    let file = keys.path().join(format!("{REWARD}.txt"));
    std::fs::write(&file, "old key file\n").unwrap();
    set(&file, 0o666);
    let out = heurist(&["wallet", "new", "--address", REWARD, "--keys", k, "--force"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&file), 0o600, "--force over a 0666 file must leave it 0600");
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("Seed Phrase: "));

    // A key file others can read still loads, but is set to 0600 and named on stderr.
    set(&file, 0o644);
    let shown = heurist(&["wallet", "show", "--address", REWARD, "--keys", k], None);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_eq!(mode(&file), 0o600);
    let warning = stderr(&shown);
    assert!(warning.contains("warning:") && warning.contains(&file.display().to_string()) && warning.contains("0644"), "{warning}");
}

#[test]
fn job_check_prints_the_clamped_form_and_names_bad_fields() {
    let job = r#"{"job_id":"j","model_id":"AAMXLAnimeMix","model_input":{"SD":{"prompt":"p","height":1023,"width":4000,"num_iterations":99,"guidance_scale":4,"seed":5}}}"#;
    let out = heurist(&["job", "check", "-"], Some(job));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["params"]["width"], 2048);
    assert_eq!(v["params"]["height"], 1016);
    assert_eq!(v["params"]["steps"], 35);
    assert_eq!(v["params"]["seed"], 5);

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../heurist-protocol/data/heurist-models/examples/AnimagineXL.json");
    let out = heurist(&["job", "check", example], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"model_id\": \"AnimagineXL\""));

    let bad = heurist(&["job", "check", "-"], Some(&job.replace("\"SD\"", "\"XL\"")));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("model_input"), "{}", stderr(&bad));
    let missing = heurist(&["job", "check", "/no/such/file.json"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/no/such/file.json"));
}

#[test]
fn registry_table_lists_the_bundled_models() {
    let out = heurist(&["registry"], None);
    assert!(out.status.success());
    let s = stdout(&out);
    for name in ["AAMXLAnimeMix", "PepeXL", "FLUX.1-dev"] {
        assert!(s.contains(name), "{name}");
    }
    let bad = heurist(&["registry", "--file", "/no/such/models.json"], None);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn points_of_records_under_both_presets() {
    // SDXL checkpoint, 1024 x 1024 x 20 steps, seed table: 1024*1024*20 / (512*512*20 / 0.3)
    // = 4 / 0.3 * 1 (multiplier) = 13.333333 (rounded down to the micro-point).
    let rec = r#"{"model_id":"AnimagineXL","width":1024,"height":1024,"steps":20,"latency_s":5,"hardware":"NVIDIA GeForce RTX 4090"}"#;
    let out = heurist(&["points", "-"], Some(rec));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["currency"], "waifu");
    assert_eq!(v["points"], 13.333333);
    // dolphin, 600 + 400 tokens: 1000/1000 * 0.24 (seed) and * 0.5 (later).
    let rec = r#"{"model_id":"dolphin-2.9-llama3-8b","input_tokens":600,"output_tokens":400,"latency_s":2}"#;
    let seed: serde_json::Value = serde_json::from_str(&stdout(&heurist(&["points", "-"], Some(rec)))).unwrap();
    let later: serde_json::Value = serde_json::from_str(&stdout(&heurist(&["points", "--rules", "later", "-"], Some(rec)))).unwrap();
    assert_eq!((seed["currency"].as_str(), seed["points"].as_f64()), (Some("llama"), Some(0.24)));
    assert_eq!(later["points"].as_f64(), Some(0.5));
    // Past the 18 s image timeout: nothing.
    let late = r#"{"model_id":"AnimagineXL","width":1024,"height":1024,"steps":20,"latency_s":19}"#;
    let v: serde_json::Value = serde_json::from_str(&stdout(&heurist(&["points", "-"], Some(late)))).unwrap();
    assert_eq!(v["points"], 0.0);
    // Bad input: a typed error in plain words, exit 2.
    let bad = heurist(&["points", "-"], Some(r#"{"model_id":"AnimagineXL""#));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("job record"), "{}", stderr(&bad));
    let unknown = heurist(&["points", "--rules", "no-such-preset", "-"], Some(rec));
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn ledger_balances_from_a_file() {
    use heurist_points::LedgerStore;
    use heurist_points::ledger::{NewPhase, SqliteLedger};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    {
        let mut l = SqliteLedger::open(&path).unwrap();
        l.open_phase(&NewPhase { id: "p1".into(), opened_at_ms: 0, emission: Default::default() }).unwrap();
        l.credit("j1", &format!("{REWARD}-a"), heurist_points::Points::from_micro(heurist_points::Currency::Waifu, 1_500_000)).unwrap();
        l.credit("j2", &format!("{REWARD}-b"), heurist_points::Points::from_micro(heurist_points::Currency::Waifu, 500_000)).unwrap();
    }
    let p = path.to_str().unwrap();
    let out = heurist(&["ledger", "--ledger", p, "--format", "json", "balances", "--wallets"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["owner"], REWARD);
    assert_eq!(v[0]["total_micro"], 2_000_000);
    let table = heurist(&["ledger", "--ledger", p, "balances"], None);
    assert!(stdout(&table).contains(&format!("{REWARD}-a")));
    let missing = heurist(&["ledger", "--ledger", "/no/such/ledger.sqlite", "balances"], None);
    assert_eq!(missing.status.code(), Some(2));
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn generate_runs_a_real_example_job_on_the_tiny_model() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let model = format!("{root}/heurist-inference/tests/fixtures/sd/tiny-sd15-fp16.safetensors");
    let example = format!("{root}/heurist-protocol/data/heurist-models/examples/ArchitectureRealMix.json");
    let mut job: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    assert_eq!((job["width"].as_u64(), job["height"].as_u64()), (Some(512), Some(768)));
    // The real example as a whole job's model_input, two steps to keep the debug build quick.
    job["num_inference_steps"] = 2.into();
    let dir = tempfile::tempdir().unwrap();
    let job_path = dir.path().join("job.json");
    std::fs::write(&job_path, serde_json::json!({"model_input": {"SD": job}}).to_string()).unwrap();
    let out_path = dir.path().join("out.png");
    let (job_arg, out_arg) = (job_path.to_str().unwrap(), out_path.to_str().unwrap());
    let out = heurist(&["generate", "--model", &model, "--family", "sd15", job_arg, "--out", out_arg], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(png_size(&std::fs::read(&out_path).unwrap()), (512, 768));
    let progress = stderr(&out);
    assert!(progress.contains("step 1/2") && progress.contains("step 2/2"), "{progress}");
    assert!(stdout(&out).is_empty());

    // Typed errors: exit 2 with a plain message naming the fault, no PNG.
    let missing = dir.path().join("missing.png");
    let missing_arg = missing.to_str().unwrap();
    let wrong = heurist(&["generate", "--model", &model, "--family", "sdxl", job_arg, "--out", missing_arg], None);
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("--family sdxl"), "{}", stderr(&wrong));
    job["num_inference_steps"] = 0.into();
    std::fs::write(&job_path, job.to_string()).unwrap();
    let zero = heurist(&["generate", "--model", &model, job_arg, "--out", missing_arg], None);
    assert_eq!(zero.status.code(), Some(2));
    assert!(stderr(&zero).contains("at least one step"), "{}", stderr(&zero));
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not a safetensors file").unwrap();
    job["num_inference_steps"] = 2.into();
    std::fs::write(&job_path, job.to_string()).unwrap();
    let bad = heurist(&["generate", "--model", corrupt.to_str().unwrap(), job_arg, "--out", missing_arg], None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("corrupt.safetensors"), "{}", stderr(&bad));
    assert!(!missing.exists());
}

/// Issue 26: `generate` reads the job through heurist-protocol, as a miner does, so seed -1 (the
/// network's "no seed") is a seed drawn at random, printed, and the one the image is made with.
#[test]
fn generate_with_seed_minus_one_draws_a_seed_and_prints_it() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let model = format!("{root}/heurist-inference/tests/fixtures/sd/tiny-sd15-fp16.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let job_path = dir.path().join("job.json");
    let job = serde_json::json!({"job_id": "seedless", "model_id": "tiny-sd15", "model_input": {"SD": {
        "prompt": "a lighthouse at dusk", "neg_prompt": "", "width": 64, "height": 64,
        "num_iterations": 2, "guidance_scale": 7, "seed": -1}}});
    std::fs::write(&job_path, job.to_string()).unwrap();
    let out_path = dir.path().join("out.png");
    let (job_arg, out_arg) = (job_path.to_str().unwrap(), out_path.to_str().unwrap());
    let out = heurist(&["generate", "--model", &model, job_arg, "--out", out_arg], None);
    let progress = stderr(&out);
    assert!(out.status.success(), "{progress}");
    assert_eq!(png_size(&std::fs::read(&out_path).unwrap()), (64, 64));
    // The drawn seed is printed, and the image is reported as made with it.
    let drawn: u64 = progress
        .split("drew ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drawn seed in: {progress}"));
    assert!(drawn < 1 << 53, "{drawn}");
    assert!(progress.contains(&format!("seed {drawn})")), "{progress}");
}

#[test]
fn checksum_prints_the_digest_and_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    std::fs::write(&file, b"abc").unwrap();
    let f = file.to_str().unwrap();
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let out = heurist(&["checksum", f], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{abc}  {f}\n"));
    // Any case is accepted.
    let ok = heurist(&["checksum", f, "--expect", &abc.to_uppercase()], None);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    // One byte changed: refused, both digests shown.
    std::fs::write(&file, b"abd").unwrap();
    let bad = heurist(&["checksum", f, "--expect", abc], None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("mismatch: expected ba7816bf"), "{}", stdout(&bad));
    assert!(!stdout(&bad).starts_with(abc));
    // A malformed digest or a missing file is bad input.
    let malformed = heurist(&["checksum", f, "--expect", "ba78"], None);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains("--expect") && stderr(&malformed).contains("64 hex digits"), "{}", stderr(&malformed));
    let missing = heurist(&["checksum", "/no/such/model.safetensors"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/no/such/model.safetensors"));
}

#[test]
fn checksum_shows_progress_for_big_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    // A sparse 65 MiB file: zeros, cheap to make and to read.
    std::fs::File::create(&big).unwrap().set_len(65 << 20).unwrap();
    let out = heurist(&["checksum", big.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    // SHA-256 of 65 MiB of zeros, by Python's hashlib: hashlib.sha256(bytes(65 << 20)).hexdigest().
    assert!(stdout(&out).starts_with("25631f11bd18756ec0029380ec886af0c8824dc6b2706bbdb1d9451c7cf45f42"), "{}", stdout(&out));
    assert!(stderr(&out).contains("65 / 65 MiB (100%)"), "{}", stderr(&out));
    let quiet = heurist(&["checksum", "--quiet", big.to_str().unwrap()], None);
    assert_eq!(stderr(&quiet), "");
    let small = dir.path().join("small.bin");
    std::fs::write(&small, b"x").unwrap();
    assert_eq!(stderr(&heurist(&["checksum", small.to_str().unwrap()], None)), "");
}

/// A chat job for SmolLM2 at `temperature` (with `seed`, or leaving it to the miner) and the
/// model's own answer, made in-process with the engine (the request built here by hand, not by
/// the code under test).
fn chat_job_and_answer(temperature: f64, seed: Option<u64>) -> (std::path::PathBuf, String, String) {
    use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, smollm2_path};
    let model = smollm2_path().unwrap_or_else(|e| panic!("{e}"));
    let engine = ChatEngine::load_gguf(&model, DeviceSpec::Cpu).unwrap();
    let question = "Name three primary colors.";
    let request = ChatRequest::new(vec![ChatMessage::user(question)])
        .with_max_tokens(24)
        .with_sampling(temperature, Some(seed.unwrap_or(0)))
        .with_stop(heurist_protocol::stream::REFERENCE_STOP_STRINGS);
    let answer = engine.chat(&request).unwrap().text;
    let prompt = serde_json::to_string(&serde_json::json!([{"role": "user", "content": question}])).unwrap();
    let mut input = serde_json::json!({"prompt": prompt, "temperature": temperature, "max_tokens": 24});
    if let Some(seed) = seed {
        input["seed"] = seed.into();
    }
    let job = serde_json::json!({"job_id": "llm-job-1", "model_id": "SmolLM2-135M-Instruct", "model_input": {"LLM": input}});
    (model, job.to_string(), answer)
}

fn greedy_job_and_answer() -> (std::path::PathBuf, String, String) {
    chat_job_and_answer(0.0, Some(7))
}

#[test]
fn verify_judges_sampled_answers_by_likelihood_or_by_replaying_the_seed() {
    let (model, job, answer) = chat_job_and_answer(0.9, Some(11));
    let (_, _, other_seed) = chat_job_and_answer(0.9, Some(12));
    assert_ne!(answer, other_seed, "two seeds gave the same answer; pick others");
    let dir = tempfile::tempdir().unwrap();
    let job_file = dir.path().join("job.json");
    std::fs::write(&job_file, &job).unwrap();
    let run = |claimed: &str, extra: &[&str]| {
        let f = dir.path().join("submit.json");
        std::fs::write(&f, submit_body("llm-job-1", claimed)).unwrap();
        let mut args = vec!["verify", "--model", model.to_str().unwrap(), job_file.to_str().unwrap(), f.to_str().unwrap()];
        args.extend_from_slice(extra);
        heurist(&args, None)
    };
    // The honest answer holds either way.
    let likely = run(&answer, &[]);
    assert_eq!(likely.status.code(), Some(0), "{}{}", stdout(&likely), stderr(&likely));
    assert!(stdout(&likely).contains("likely sample"), "{}", stdout(&likely));
    let replayed = run(&answer, &["--seeded-replay"]);
    assert_eq!(replayed.status.code(), Some(0), "{}{}", stdout(&replayed), stderr(&replayed));
    assert!(stdout(&replayed).contains("the job's seed draw"), "{}", stdout(&replayed));
    // Another seed's answer is as likely a sample, so only the replay refuses it.
    let likely = run(&other_seed, &[]);
    assert_eq!(likely.status.code(), Some(0), "{}{}", stdout(&likely), stderr(&likely));
    let replayed = run(&other_seed, &["--seeded-replay"]);
    assert_eq!(replayed.status.code(), Some(1), "{}{}", stdout(&replayed), stderr(&replayed));
    assert!(stdout(&replayed).starts_with("rejected: job llm-job-1"), "{}", stdout(&replayed));
    // Made-up text fails the likelihood test too.
    let junk = "ꙮ ᚠ ཀ ญ ⵣ ꝏ ᛟ ꧁ ߷ ꙮ ᚠ ཀ";
    let out = run(junk, &[]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    // A job that left its seed to the miner cannot be replayed: exit 2, saying so.
    let (_, seedless, answer) = chat_job_and_answer(0.9, None);
    std::fs::write(&job_file, &seedless).unwrap();
    let out = run(&answer, &["--seeded-replay"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("seed"), "{}", stderr(&out));
}

fn submit_body(job_id: &str, answer: &str) -> String {
    let choices = serde_json::json!([{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}]);
    serde_json::json!({
        "miner_id": format!("{REWARD}-gpu0"), "job_id": job_id, "result": {"Text": choices.to_string()},
        "request_latency": 0.1, "inference_latency": 1.0,
        "signature": format!("{}1b", "11".repeat(64)), "identity_address": REWARD,
    })
    .to_string()
}

#[test]
fn verify_accepts_the_greedy_answer_and_rejects_substitutes() {
    let (model, job, answer) = greedy_job_and_answer();
    assert!(answer.len() > 20, "{answer:?}");
    let dir = tempfile::tempdir().unwrap();
    let job_file = dir.path().join("job.json");
    std::fs::write(&job_file, &job).unwrap();
    let m = model.to_str().unwrap();
    let j = job_file.to_str().unwrap();
    let run = |submit: &str| {
        let f = dir.path().join("submit.json");
        std::fs::write(&f, submit).unwrap();
        heurist(&["verify", "--model", m, j, f.to_str().unwrap()], None)
    };

    let honest = run(&submit_body("llm-job-1", &answer));
    assert_eq!(honest.status.code(), Some(0), "{}{}", stdout(&honest), stderr(&honest));
    assert!(stdout(&honest).starts_with("holds: job llm-job-1"), "{}", stdout(&honest));

    // Truncated, altered, made up: rejected, with the evidence (where the model would not
    // stop; a token far below the model's best).
    let cut = &answer[..answer.len() / 2];
    for (what, claimed, evidence) in [
        ("truncated", cut.to_owned(), "cut short"),
        ("altered", answer.replacen(' ', "  ", 1), "below the claimed model's best"),
        ("made up", "Red, green and blue.".to_owned(), "below the claimed model's best"),
    ] {
        assert_ne!(claimed, answer, "{what}");
        let out = run(&submit_body("llm-job-1", &claimed));
        assert_eq!(out.status.code(), Some(1), "{what}: {}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).starts_with("rejected: job llm-job-1") && stdout(&out).contains(evidence), "{what}: {}", stdout(&out));
    }

    // Cannot be judged: exit 2 with the reason.
    let other = run(&submit_body("llm-job-2", &answer));
    assert_eq!(other.status.code(), Some(2));
    assert!(stderr(&other).contains("llm-job-2"), "{}", stderr(&other));
    let sampled_file = dir.path().join("sampled.json");
    // A sampled job whose top-k the likelihood test does not model.
    let mut top_k: serde_json::Value = serde_json::from_str(&job).unwrap();
    top_k["model_input"]["LLM"]["temperature"] = 0.7.into();
    top_k["model_input"]["LLM"]["extra_body"] = "{\"top_k\": 5}".into();
    std::fs::write(&sampled_file, top_k.to_string()).unwrap();
    let f = dir.path().join("submit.json");
    std::fs::write(&f, submit_body("llm-job-1", &answer)).unwrap();
    let sampled = heurist(&["verify", "--model", m, sampled_file.to_str().unwrap(), f.to_str().unwrap()], None);
    assert_eq!(sampled.status.code(), Some(2), "{}{}", stdout(&sampled), stderr(&sampled));
    assert!(stderr(&sampled).contains("top_k"), "{}", stderr(&sampled));
    let malformed = run("{\"miner_id\": 1");
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains("miner_submit"), "{}", stderr(&malformed));
    let good = dir.path().join("good.json");
    std::fs::write(&good, submit_body("llm-job-1", &answer)).unwrap();
    let no_model = heurist(&["verify", "--model", "/no/such/model.gguf", j, good.to_str().unwrap()], None);
    assert_eq!(no_model.status.code(), Some(2));
    assert!(stderr(&no_model).contains("/no/such/model.gguf"), "{}", stderr(&no_model));
}

/// An honest image of the reference miner's stack (heurist-verify's fixture, made by
/// tools/make_image_honest_sets.py: diffusers 0.30.2 through the miner's vendored pipelines):
/// the first evaluation row of `kind` in `precision`, as a job file's `model_input` and PNG.
fn reference_image(kind: &str, precision: &str) -> (serde_json::Value, Vec<u8>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../heurist-verify/tests/fixtures/honest_images");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/jobs.json")).unwrap()).unwrap();
    let rows = meta["images"].as_array().unwrap();
    let i = rows.iter().position(|r| r["split"] == "evaluation" && r["kind"] == kind && r["precision"] == precision).unwrap();
    let r = &rows[i];
    let images = candle_core::safetensors::load(format!("{dir}/images.safetensors"), &candle_core::Device::Cpu).unwrap();
    let rgb = images["images"].get(i).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let input = serde_json::json!({"SD": {
        "prompt": r["prompt"], "neg_prompt": r["neg_prompt"], "width": r["width"], "height": r["height"],
        "num_iterations": r["steps"], "guidance_scale": r["guidance"], "seed": r["seed"],
    }});
    (input, heurist_inference::image::encode_png(&rgb, 64, 64).unwrap())
}

/// Issue 24: `heurist verify --image` judges an image job's uploaded PNG: an honest f16 image
/// of diffusers (the network's miners' precision) holds, another job's image is rejected, and
/// what cannot be judged says why.
#[test]
fn verify_judges_an_image_job_by_its_png() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let model = format!("{root}/heurist-inference/tests/fixtures/sd/tiny-sd15-fp16.safetensors");
    let (input, png) = reference_image("sd15", "f16");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let job = |seed: &serde_json::Value| {
        let mut input = input.clone();
        input["SD"]["seed"] = seed.clone();
        serde_json::json!({"job_id": "img-1", "model_id": "tiny-sd15", "model_input": input}).to_string()
    };
    let job_file = write("job.json", job(&input["SD"]["seed"]).as_bytes());
    let submit = serde_json::json!({
        "miner_id": format!("{REWARD}-gpu0"), "job_id": "img-1", "result": {"S3Key": format!("img-1-{REWARD}-gpu0.png")},
        "request_latency": 0.1, "inference_latency": 1.0,
        "signature": format!("{}1b", "11".repeat(64)), "identity_address": REWARD,
    });
    let submit_file = write("submit.json", submit.to_string().as_bytes());
    let png_file = write("result.png", &png);
    let verify = |job: &str, image: Option<&str>, extra: &[&str]| {
        let mut args = vec!["verify", "--model", &model, job, &submit_file];
        if let Some(image) = image {
            args.extend(["--image", image]);
        }
        args.extend(extra);
        heurist(&args, None)
    };

    let honest = verify(&job_file, Some(&png_file), &[]);
    assert_eq!(honest.status.code(), Some(0), "{}{}", stdout(&honest), stderr(&honest));
    assert!(stdout(&honest).starts_with("holds: job img-1") && stdout(&honest).contains("f16"), "{}", stdout(&honest));

    // The same picture for a job with another seed: rejected, with the evidence.
    let other_seed = write("other.json", job(&serde_json::json!(input["SD"]["seed"].as_u64().unwrap() ^ 1)).as_bytes());
    let cheat = verify(&other_seed, Some(&png_file), &[]);
    assert_eq!(cheat.status.code(), Some(1), "{}{}", stdout(&cheat), stderr(&cheat));
    assert!(stdout(&cheat).starts_with("rejected: job img-1") && stdout(&cheat).contains("PSNR"), "{}", stdout(&cheat));
    // Bytes that are no PNG: the miner's fault, rejected.
    let garbage = write("garbage.png", b"GIF89a");
    let bad = verify(&job_file, Some(&garbage), &[]);
    assert_eq!(bad.status.code(), Some(1), "{}{}", stdout(&bad), stderr(&bad));
    assert!(stdout(&bad).contains("not a PNG"), "{}", stdout(&bad));

    // Cannot be judged: exit 2 with the reason.
    let no_image = verify(&job_file, None, &[]);
    assert_eq!(no_image.status.code(), Some(2));
    assert!(stderr(&no_image).contains("--image"), "{}", stderr(&no_image));
    let wrong_family = verify(&job_file, Some(&png_file), &["--family", "sdxl"]);
    assert_eq!(wrong_family.status.code(), Some(2));
    assert!(stderr(&wrong_family).contains("--family sdxl"), "{}", stderr(&wrong_family));
    let seedless = write("seedless.json", job(&serde_json::json!(-1)).as_bytes());
    let no_seed = verify(&seedless, Some(&png_file), &[]);
    assert_eq!(no_seed.status.code(), Some(2));
    assert!(stderr(&no_seed).contains("no seed"), "{}", stderr(&no_seed));
}
