//! The detection table of chat answers on SmolLM2-135M-Instruct (real weights).
//!
//! For each job (prompts, seeds and llama.cpp answers from
//! `tests/fixtures/llama-cpp/smollm2_sampled.json`, made by `tools/make_llm_calibration.py`;
//! 48 tokens at most, T 0.7 or 1.0) this judges, with `heurist_verify::llm::check_sampled`
//! at its default bars plus `check_usage` on the claimed token counts:
//!
//! - honest answers sampled by our engine at the job's temperature and seed (the row names
//!   the thread count: set `RAYON_NUM_THREADS` to change it), and by llama.cpp (the fixture);
//! - substitutes sampled at the job's temperature and seed by SmolLM2 with perturbed weights,
//!   with weights re-quantised to 3 bits, and with two layers dropped (the GGUFs of
//!   `tools/make_llm_substitutes.py`);
//! - the honest answer sampled hotter (`T + 0.5`), cut in half, replaced by random tokens,
//!   replaced by the greedy answer, and the honest answer with its prompt usage inflated by a
//!   quarter;
//!
//! and, with `--greedy`, the same prompts as greedy jobs judged by `check_greedy` (exact
//! agreement): the honest answer and the three substitute models' greedy answers.
//!
//! `--seeded` judges instead every answer made by our sampler with `check_seeded` (the replay
//! of the job's seeded draws under the claimed model): the honest answer alone and from a
//! batch shared with the next three jobs, and, when the verifier has more than one thread,
//! the honest answer made on one thread; then the three substitutes, the hotter, cut, random
//! and greedy answers (not with `--honest-only`). llama.cpp's answers are not in these rows: its sampler is not ours, and
//! the seeded replay is only for answers whose miner says it ran this engine.
//!
//! ```sh
//! python3 tools/fetch_smollm2.py && tools/.venv/bin/python tools/make_llm_substitutes.py
//! cargo run --release -p heurist-verify --features inference --example detection_table -- 200
//! ```
//! Arguments: `N` or `A..B` (the fixture's jobs to run), `--greedy` (the greedy rows),
//! `--honest-only` (the honest rows alone: more honest jobs for less time), `--json PATH`
//! (write the tallies there after every job, so that shards run in parallel and a stopped run
//! keeps what it did), `--merge PATH...` (print the table of several such files).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use std::sync::Arc;

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, ChatServer, DeviceSpec, FinishReason, smollm2_path};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;
use heurist_verify::llm::{
    ClaimedUsage, SampledThresholds, SeededThresholds, UsageTolerance, check_greedy, check_sampled, check_seeded,
    check_usage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

/// The substitute models of `tools/make_llm_substitutes.py`: row name and file name.
const SUBSTITUTES: [(&str, &str); 3] = [
    ("perturbed weights (σ 5% of row RMS)", "SmolLM2-135M-Instruct.perturbed.Q4_1.gguf"),
    ("re-quantised to 3 bits", "SmolLM2-135M-Instruct.requant3.Q4_1.gguf"),
    ("two layers dropped (28 of 30)", "SmolLM2-135M-Instruct.drop2.Q4_1.gguf"),
];

/// One row's tally: how many judged, how many rejected and by which test.
#[derive(Default, Clone)]
struct Row {
    jobs: u64,
    rejected: u64,
    by_token: u64,
    by_z: u64,
    by_end: u64,
    by_usage: u64,
    by_mismatch: u64,
    z_min: f64,
    z_max: f64,
}

impl Row {
    fn to_json(&self) -> Value {
        json!([self.jobs, self.rejected, self.by_token, self.by_z, self.by_end, self.by_usage, self.by_mismatch, self.z_min, self.z_max])
    }

    fn from_json(v: &Value) -> Option<Self> {
        let n = |i: usize| v.get(i).and_then(Value::as_u64);
        let f = |i: usize| v.get(i).and_then(Value::as_f64);
        Some(Self {
            jobs: n(0)?,
            rejected: n(1)?,
            by_token: n(2)?,
            by_z: n(3)?,
            by_end: n(4)?,
            by_usage: n(5)?,
            by_mismatch: n(6)?,
            z_min: f(7)?,
            z_max: f(8)?,
        })
    }

    fn merge(&mut self, o: &Row) {
        if o.jobs == 0 {
            return;
        }
        if self.jobs == 0 {
            (self.z_min, self.z_max) = (o.z_min, o.z_max);
        }
        self.jobs += o.jobs;
        self.rejected += o.rejected;
        self.by_token += o.by_token;
        self.by_z += o.by_z;
        self.by_end += o.by_end;
        self.by_usage += o.by_usage;
        self.by_mismatch += o.by_mismatch;
        self.z_min = self.z_min.min(o.z_min);
        self.z_max = self.z_max.max(o.z_max);
    }
}

/// Rows in the order they were first met (a map keeps the JSON readable).
#[derive(Default)]
struct Table {
    order: Vec<String>,
    rows: BTreeMap<String, Row>,
}

impl Table {
    fn row(&mut self, name: &str) -> &mut Row {
        if !self.rows.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.rows.entry(name.to_owned()).or_default()
    }

    fn to_json(&self) -> Value {
        Value::Array(self.order.iter().map(|n| json!([n, self.rows[n].to_json()])).collect())
    }

    fn merge_json(&mut self, v: &Value) -> Result<(), Error> {
        for entry in v.as_array().ok_or("tallies: not an array")? {
            let name = entry[0].as_str().ok_or("tallies: no row name")?;
            let row = Row::from_json(&entry[1]).ok_or("tallies: malformed row")?;
            self.row(name).merge(&row);
        }
        Ok(())
    }

    fn print(&self) {
        println!("| answers | jobs | rejected | rate | by token / z / end / usage / mismatch | z range |");
        println!("|---|---:|---:|---:|---|---|");
        for name in &self.order {
            let r = &self.rows[name];
            let rate = 100.0 * r.rejected as f64 / r.jobs.max(1) as f64;
            let z = if r.by_mismatch > 0 || name.starts_with("greedy job") || name.starts_with("seeded") {
                "–".to_owned()
            } else {
                format!("{:.1} to {:.1}", r.z_min, r.z_max)
            };
            println!(
                "| {name} | {} | {} | {rate:.1}% | {} / {} / {} / {} / {} | {z} |",
                r.jobs, r.rejected, r.by_token, r.by_z, r.by_end, r.by_usage, r.by_mismatch
            );
        }
    }
}

struct Args {
    range: std::ops::Range<usize>,
    greedy: bool,
    seeded: bool,
    honest_only: bool,
    json: Option<PathBuf>,
    merge: Vec<PathBuf>,
}

fn args() -> Result<Args, Error> {
    let mut a = Args { range: 0..200, greedy: false, seeded: false, honest_only: false, json: None, merge: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--greedy" => a.greedy = true,
            "--seeded" => a.seeded = true,
            "--honest-only" => a.honest_only = true,
            "--json" => a.json = Some(it.next().ok_or("--json needs a path")?.into()),
            "--merge" => a.merge.extend(it.by_ref().map(PathBuf::from)),
            range => {
                a.range = match range.split_once("..") {
                    Some((from, to)) => from.parse()?..to.parse()?,
                    None => 0..range.parse()?,
                }
            }
        }
    }
    Ok(a)
}

fn load(path: PathBuf) -> Result<ChatEngine, Error> {
    if !path.is_file() {
        return Err(format!(
            "{} is missing: make the substitute models with `tools/.venv/bin/python tools/make_llm_substitutes.py` (needs `pip install gguf==0.19.0`)",
            path.display()
        )
        .into());
    }
    Ok(ChatEngine::load_gguf(path, DeviceSpec::Cpu)?)
}

fn main() -> Result<(), Error> {
    let args = args()?;
    let mut table = Table::default();
    if !args.merge.is_empty() {
        for path in &args.merge {
            table.merge_json(&serde_json::from_str(&std::fs::read_to_string(path)?)?)?;
        }
        table.print();
        return Ok(());
    }
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama-cpp/smollm2_sampled.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    let jobs = doc["jobs"].as_array().ok_or("no jobs")?;
    if args.range.end > jobs.len() {
        return Err(format!("jobs {:?}: the fixture has {}", args.range, jobs.len()).into());
    }
    let model = smollm2_path()?;
    let engine = Arc::new(ChatEngine::load_gguf(&model, DeviceSpec::Cpu)?);
    let server = ChatServer::new(Arc::clone(&engine), 4)?;
    let substitutes: Vec<(&str, ChatEngine)> = if args.honest_only {
        Vec::new()
    } else {
        let dir = model.parent().ok_or("model path has no directory")?.join("substitutes");
        SUBSTITUTES.iter().map(|(name, file)| Ok((*name, load(dir.join(file))?))).collect::<Result<_, Error>>()?
    };
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let honest_ours = format!("honest, our engine, {threads} thread{}", if threads == 1 { "" } else { "s" });
    let thresholds = SampledThresholds::default();
    let tolerance = UsageTolerance::default();
    let mut rng = StdRng::seed_from_u64(9 + args.range.start as u64);
    let started = Instant::now();
    let vocab = engine.tokenizer().vocab_size() as u32;
    for i in args.range.clone() {
        let job = &jobs[i];
        let request = job_request(jobs, i)?;
        let (t, seed) = (request.temperature, request.seed);
        // Judges a sampled answer and its usage claim into `row`.
        let judge = |table: &mut Table, row: &str, text: &str, at_limit: bool, usage: ClaimedUsage| -> Result<(), Error> {
            let c = check_sampled(&engine, &request, text, at_limit, &thresholds)?;
            let u = check_usage(&engine, &request, text, usage, &tolerance)?;
            let holds = c.holds && u.holds;
            if row.starts_with("honest") && !holds {
                println!("false accusation, job {i} ({row}): {:?} {} {text:?}", c.reasons, u.evidence());
            }
            let r = table.row(row);
            if r.jobs == 0 {
                (r.z_min, r.z_max) = (c.z, c.z);
            }
            r.jobs += 1;
            r.rejected += u64::from(!holds);
            r.by_token += u64::from(c.reasons.iter().any(|r| r.contains("no honest sampler")));
            r.by_z += u64::from(c.reasons.iter().any(|r| r.contains("z-score")));
            r.by_end += u64::from(c.reasons.iter().any(|r| r.contains("cut short")));
            r.by_usage += u64::from(!u.holds);
            r.z_min = r.z_min.min(c.z);
            r.z_max = r.z_max.max(c.z);
            Ok(())
        };
        let usage_of = |out: &heurist_inference::ChatOutput| ClaimedUsage {
            prompt_tokens: out.usage.prompt_tokens as u64,
            completion_tokens: out.usage.completion_tokens as u64,
        };
        if args.seeded {
            seeded_rows(&mut table, &engine, &server, &substitutes, jobs, i, &request, &mut rng, threads, args.honest_only)?;
            if let Some(path) = &args.json {
                std::fs::write(path, table.to_json().to_string())?;
            }
            if (i + 1 - args.range.start) % 10 == 0 {
                eprintln!("{} jobs, {:.0} s", i + 1 - args.range.start, started.elapsed().as_secs_f64());
            }
            continue;
        }
        let ours = engine.chat(&request)?;
        judge(&mut table, &honest_ours, &ours.text, ours.finish_reason == FinishReason::Length, usage_of(&ours))?;
        let theirs = job["text"].as_str().ok_or("no text")?;
        let theirs_usage = ClaimedUsage {
            prompt_tokens: job["prompt_tokens"].as_u64().ok_or("no prompt_tokens")?,
            completion_tokens: job["completion_tokens"].as_u64().ok_or("no completion_tokens")?,
        };
        judge(&mut table, "honest, llama.cpp (fixture)", theirs, job["finish_reason"] == "length", theirs_usage)?;
        if !args.honest_only {
            for (name, sub) in &substitutes {
                let out = sub.chat(&request)?;
                judge(&mut table, name, &out.text, out.finish_reason == FinishReason::Length, usage_of(&out))?;
            }
            let hot = engine.chat(&request.clone().with_sampling(t + 0.5, seed))?;
            judge(&mut table, "another temperature (T + 0.5)", &hot.text, hot.finish_reason == FinishReason::Length, usage_of(&hot))?;
            let mut cut = ours.text.len() / 2;
            while !ours.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let cut_text = &ours.text[..cut];
            let cut_usage = ClaimedUsage {
                completion_tokens: engine.tokenizer().encode(cut_text)?.len() as u64 + 1,
                ..usage_of(&ours)
            };
            judge(&mut table, "truncated answer (cut in half)", cut_text, false, cut_usage)?;
            let random: Vec<u32> = (0..ours.usage.completion_tokens.max(8))
                .map(|_| rng.random_range(0..vocab))
                .filter(|&id| !engine.tokenizer().is_control(id).unwrap_or(true))
                .collect();
            let random_text = engine.tokenizer().decode(&random)?;
            let random_usage = ClaimedUsage { completion_tokens: random.len() as u64, ..usage_of(&ours) };
            judge(&mut table, "random text", &random_text, false, random_usage)?;
            let greedy = engine.chat(&request.clone().with_sampling(0.0, None))?;
            judge(&mut table, "greedy answer for a sampled job", &greedy.text, greedy.finish_reason == FinishReason::Length, usage_of(&greedy))?;
            let inflated = ClaimedUsage { prompt_tokens: ours.usage.prompt_tokens as u64 * 5 / 4, ..usage_of(&ours) };
            judge(&mut table, "inflated usage (prompt × 1.25)", &ours.text, ours.finish_reason == FinishReason::Length, inflated)?;

            if args.greedy {
                // One re-generation per job: `check_greedy` compares with the verifier's greedy
                // answer, which is the same for every claim, so the substitutes' answers are
                // compared with the reference of the honest check rather than re-generating it.
                let greedy_request = request.clone().with_sampling(0.0, None);
                let honest = check_greedy(&engine, &greedy_request, &greedy.text)?;
                let exact = |table: &mut Table, row: &str, matches: bool| {
                    let r = table.row(row);
                    r.jobs += 1;
                    r.rejected += u64::from(!matches);
                    r.by_mismatch += u64::from(!matches);
                };
                if !honest.matches {
                    println!("false accusation, greedy job {i}: {}", honest.evidence(&greedy.text));
                }
                exact(&mut table, &format!("greedy job, {honest_ours}"), honest.matches);
                for (name, sub) in &substitutes {
                    let out = sub.chat(&greedy_request)?;
                    exact(&mut table, &format!("greedy job, {name}"), out.text == honest.reference);
                }
            }
        }
        if let Some(path) = &args.json {
            std::fs::write(path, table.to_json().to_string())?;
        }
        let done = i + 1 - args.range.start;
        if done % 10 == 0 {
            eprintln!("{done} jobs, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    table.print();
    eprintln!("{:.0} s in all", started.elapsed().as_secs_f64());
    Ok(())
}

/// The request of job `i` of the fixture.
fn job_request(jobs: &[Value], i: usize) -> Result<ChatRequest, Error> {
    let job = &jobs[i];
    let question = job["messages"][0]["content"].as_str().ok_or("no prompt")?;
    let t = job["temperature"].as_f64().ok_or("no temperature")?;
    let max_tokens = job["max_tokens"].as_u64().ok_or("no max_tokens")? as usize;
    let seed = job["seed"].as_u64().ok_or("no seed")?;
    Ok(ChatRequest::new(vec![ChatMessage::user(question)])
        .with_max_tokens(max_tokens)
        .with_sampling(t, Some(seed))
        .with_stop(REFERENCE_STOP_STRINGS))
}

/// The `--seeded` rows of job `i`: every answer our sampler made for it, judged by the replay
/// of the job's seeded draws.
#[allow(clippy::too_many_arguments)]
fn seeded_rows(
    table: &mut Table,
    engine: &ChatEngine,
    server: &ChatServer,
    substitutes: &[(&str, ChatEngine)],
    jobs: &[Value],
    i: usize,
    request: &ChatRequest,
    rng: &mut StdRng,
    threads: usize,
    honest_only: bool,
) -> Result<(), Error> {
    let bar = SeededThresholds::default();
    let mut judge = |row: &str, text: &str, at_limit: bool| -> Result<(), Error> {
        let c = check_seeded(engine, request, text, at_limit, &bar)?;
        if row.contains("honest") && !c.holds {
            println!("false accusation, job {i} ({row}): {:?} {text:?}", c.reasons);
        }
        let r = table.row(&format!("seeded replay: {row}"));
        r.jobs += 1;
        r.rejected += u64::from(!c.holds);
        r.by_mismatch += u64::from(!c.holds);
        Ok(())
    };
    let limit = |out: &heurist_inference::ChatOutput| out.finish_reason == FinishReason::Length;
    // Row names as in the table of the crate docs, whose 1-thread rows came first.
    let at = if threads == 1 { String::new() } else { format!(", {threads} threads") };
    let ours = engine.chat(request)?;
    judge(&format!("honest, our engine, alone{at}"), &ours.text, limit(&ours))?;
    // The same job in a batch with the next three jobs (their requests decode beside it).
    let handle = server.submit(request.clone());
    let others: Vec<_> = (1..4).map(|k| job_request(jobs, (i + k) % jobs.len()).map(|r| server.submit(r))).collect::<Result<_, _>>()?;
    let batched = handle.wait()?;
    others.into_iter().for_each(|h| drop(h.wait()));
    judge(&format!("honest, our engine, in a batch of 4{at}"), &batched.text, limit(&batched))?;
    if threads > 1 {
        // A miner on one thread, judged by this verifier on `threads`: the kernels split rows
        // among threads, never a row's sum, so the bits must not move.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let single = pool.install(|| engine.chat(request))?;
        judge(&format!("honest, our engine, 1 thread, verified on {threads}"), &single.text, limit(&single))?;
    }
    if honest_only {
        return Ok(());
    }
    for (name, sub) in substitutes {
        let out = sub.chat(request)?;
        judge(name, &out.text, limit(&out))?;
    }
    let hot = engine.chat(&request.clone().with_sampling(request.temperature + 0.5, request.seed))?;
    judge("another temperature (T + 0.5)", &hot.text, limit(&hot))?;
    let mut cut = ours.text.len() / 2;
    while !ours.text.is_char_boundary(cut) {
        cut -= 1;
    }
    judge("truncated answer (cut in half)", &ours.text[..cut], false)?;
    let vocab = engine.tokenizer().vocab_size() as u32;
    let random: Vec<u32> = (0..ours.usage.completion_tokens.max(8))
        .map(|_| rng.random_range(0..vocab))
        .filter(|&id| !engine.tokenizer().is_control(id).unwrap_or(true))
        .collect();
    judge("random text", &engine.tokenizer().decode(&random)?, false)?;
    let greedy = engine.chat(&request.clone().with_sampling(0.0, None))?;
    judge("greedy answer for a sampled job", &greedy.text, limit(&greedy))?;
    Ok(())
}
