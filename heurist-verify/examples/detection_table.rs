//! The detection table of sampled chat answers on SmolLM2-135M-Instruct (real weights).
//!
//! For each job (prompts and llama.cpp answers from
//! `tests/fixtures/llama-cpp/smollm2_sampled.json`, made by `tools/make_llm_calibration.py`),
//! this rescores with `heurist_verify::llm::check_sampled`:
//!
//! - honest answers sampled by our engine at the job's temperature and seed,
//! - honest answers sampled by llama.cpp (the fixture),
//! - substitutes: the honest answer cut in half, random tokens, an answer sampled at a
//!   hotter temperature (`T + 0.5`), and the greedy answer (temperature ignored),
//!
//! and prints how many of each the check rejects, as the markdown table of the crate docs.
//!
//! ```sh
//! cargo run --release -p heurist-verify --features inference --example detection_table -- 200
//! ```
//! The argument is the number of jobs (at most the fixture's 500).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, FinishReason, smollm2_path};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;
use heurist_verify::llm::{SampledThresholds, check_sampled};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Default)]
struct Row {
    jobs: usize,
    rejected: usize,
    z_min: f64,
    z_max: f64,
}

impl Row {
    fn add(&mut self, holds: bool, z: f64) {
        if self.jobs == 0 {
            (self.z_min, self.z_max) = (z, z);
        }
        self.jobs += 1;
        self.rejected += usize::from(!holds);
        self.z_min = self.z_min.min(z);
        self.z_max = self.z_max.max(z);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200);
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-cpp/smollm2_sampled.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    let engine = ChatEngine::load_gguf(smollm2_path()?, DeviceSpec::Cpu)?;
    let thresholds = SampledThresholds::default();
    let names = ["honest, our engine", "honest, llama.cpp", "cut in half", "random tokens", "hotter (T + 0.5)", "greedy"];
    let mut rows: Vec<Row> = names.iter().map(|_| Row::default()).collect();
    let mut rng = StdRng::seed_from_u64(9);
    let started = Instant::now();
    let vocab = engine.tokenizer().vocab_size() as u32;
    for (i, job) in doc["jobs"].as_array().ok_or("no jobs")?.iter().take(jobs).enumerate() {
        let question = job["messages"][0]["content"].as_str().ok_or("no prompt")?;
        let t = job["temperature"].as_f64().ok_or("no temperature")?;
        let max_tokens = job["max_tokens"].as_u64().ok_or("no max_tokens")? as usize;
        let seed = job["seed"].as_u64().ok_or("no seed")?;
        let request = ChatRequest::new(vec![ChatMessage::user(question)])
            .with_max_tokens(max_tokens)
            .with_sampling(t, Some(seed))
            .with_stop(REFERENCE_STOP_STRINGS);
        let mut judge = |row: usize, text: &str, at_limit: bool| -> Result<(), Box<dyn std::error::Error>> {
            let c = check_sampled(&engine, &request, text, at_limit, &thresholds)?;
            if row < 2 && !c.holds {
                println!("false accusation, job {i} ({names_row}): {:?} {:?}", c.reasons, text, names_row = names[row]);
            }
            rows[row].add(c.holds, c.z);
            Ok(())
        };
        let ours = engine.chat(&request)?;
        judge(0, &ours.text, ours.finish_reason == FinishReason::Length)?;
        let theirs = job["text"].as_str().ok_or("no text")?;
        judge(1, theirs, job["finish_reason"] == "length")?;
        let mut cut = ours.text.len() / 2;
        while !ours.text.is_char_boundary(cut) {
            cut -= 1;
        }
        judge(2, &ours.text[..cut], false)?;
        let random: Vec<u32> = (0..ours.usage.completion_tokens.max(8))
            .map(|_| rng.random_range(0..vocab))
            .filter(|&id| !engine.tokenizer().is_control(id).unwrap_or(true))
            .collect();
        judge(3, &engine.tokenizer().decode(&random)?, false)?;
        let hot = engine.chat(&request.clone().with_sampling(t + 0.5, Some(seed)))?;
        judge(4, &hot.text, hot.finish_reason == FinishReason::Length)?;
        let greedy = engine.chat(&request.clone().with_sampling(0.0, None))?;
        judge(5, &greedy.text, greedy.finish_reason == FinishReason::Length)?;
        if (i + 1) % 20 == 0 {
            eprintln!("{} jobs, {:.0} s", i + 1, started.elapsed().as_secs_f64());
        }
    }
    println!("| answers | jobs | rejected | rate | z range |");
    println!("|---|---:|---:|---:|---|");
    for (name, r) in names.iter().zip(&rows) {
        let rate = 100.0 * r.rejected as f64 / r.jobs.max(1) as f64;
        println!("| {name} | {} | {} | {rate:.1}% | {:.1} to {:.1} |", r.jobs, r.rejected, r.z_min, r.z_max);
    }
    eprintln!("{:.0} s in all", started.elapsed().as_secs_f64());
    Ok(())
}
