//! The network detection table of chat answers on SmolLM2-135M-Instruct (real weights): honest
//! answers of other engines must never be accused, cheats must be caught.
//!
//! Reads `tests/fixtures/honest/` (made by `tools/make_llm_honest_sets.py`): greedy and sampled
//! (T 0.7 and 1.0) answers of llama.cpp with f16 and with f32 KV cache and of transformers in
//! f32 and in bf16, over two disjoint prompt sets. Every answer is judged as `heurist verify`
//! judges it:
//! greedy jobs by `llm::check_greedy_margin`, sampled jobs by `llm::check_sampled`, both with
//! `llm::check_usage` on the claimed token counts, at the default bars.
//!
//! - `--calibrate`: the calibration prompts' honest answers of the four other engines, judged
//!   with bars that never reject; prints each statistic's worst honest value and the bar the
//!   rule of `GreedyThresholds::default` / `SampledThresholds::default` derives from it. This
//!   is the only run the bars come from.
//! - default: the evaluation prompts. Honest rows: the four engines and this crate's engine
//!   (its answers generated here). Cheat rows: answers of the substitute models of
//!   `tools/make_llm_substitutes.py` (perturbed weights, re-quantised to 3 bits, two layers
//!   dropped) and answers sampled 0.3 hotter than the job asks (greedy jobs: T 0.3), generated
//!   here on the first 150 prompts; and, derived from llama.cpp's (f16 KV) honest answers on
//!   the first 200, another job's answer (same task, other topic; same topic, other task),
//!   the answer cut in half and claimed as a natural end, random tokens, and usage inflated by
//!   a quarter. Sampled rows are also reported by answer length.
//!
//! ```sh
//! cargo run --release -p heurist-verify --features inference --example llm_detection_table -- --calibrate
//! cargo run --release -p heurist-verify --features inference --example llm_detection_table
//! ```
//! `--jobs N` judges the first N prompts of the set only (a quick run); `--no-ours` skips
//! generating this engine's answers.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, FinishReason, smollm2_path};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;
use heurist_verify::llm::{
    ClaimedUsage, GreedyThresholds, OPENING_TOKENS, SampledThresholds, UsageTolerance, check_greedy_margin,
    check_sampled, check_usage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

type Error = Box<dyn std::error::Error>;

const ENGINES: [(&str, &str); 4] = [
    ("llama-f16kv", "llama.cpp, f16 KV cache"),
    ("llama-f32kv", "llama.cpp, f32 KV cache"),
    ("tf-f32", "transformers, f32"),
    ("tf-bf16", "transformers, bf16"),
];

/// One answer of a fixture file.
#[derive(Clone, Debug, Deserialize)]
struct Answer {
    set: String,
    prompt: usize,
    messages: Vec<Message>,
    temperature: f64,
    seed: u64,
    text: String,
    finish_reason: String,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Clone, Debug, Deserialize)]
struct Message {
    content: String,
}

#[derive(Deserialize)]
struct Fixture {
    max_tokens: usize,
    answers: Vec<Answer>,
}

fn fixture(name: &str) -> Result<Fixture, Error> {
    let path = format!("{}/tests/fixtures/honest/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e} (make it with tools/make_llm_honest_sets.py)"))?;
    Ok(serde_json::from_str(&text)?)
}

/// The statistics and verdict of one judged answer.
#[derive(Clone, Debug, Default)]
struct Judged {
    greedy: bool,
    tokens: usize,
    holds: bool,
    /// Which tests rejected it: token, total, z, opening, end, usage.
    by: Vec<&'static str>,
    // Greedy statistics.
    max_gap: f32,
    total_gap: f32,
    end_gap: Option<f32>,
    // Sampled statistics.
    z: f64,
    opening_z: f64,
    prompt_gain: f64,
    least_log_prob: f64,
    end_log_prob: Option<f64>,
    // Usage: claimed minus the most an honest claim can name.
    usage_margin: (i64, i64),
    reasons: Vec<String>,
    /// The job's prompt index in its set.
    prompt: usize,
}

struct Judge<'e> {
    engine: &'e ChatEngine,
    greedy: GreedyThresholds,
    sampled: SampledThresholds,
    usage: UsageTolerance,
    max_tokens: usize,
}

impl Judge<'_> {
    fn request(&self, a: &Answer) -> ChatRequest {
        ChatRequest::new(vec![ChatMessage::user(a.messages[0].content.clone())])
            .with_max_tokens(self.max_tokens)
            .with_sampling(a.temperature, Some(a.seed))
            .with_stop(REFERENCE_STOP_STRINGS)
    }

    fn judge(&self, a: &Answer, text: &str, usage: ClaimedUsage) -> Result<Judged, Error> {
        let request = self.request(a);
        let ran_to_limit = a.finish_reason == "length";
        let mut j = Judged { greedy: a.temperature == 0.0, prompt: a.prompt, ..Judged::default() };
        if j.greedy {
            let c = check_greedy_margin(self.engine, &request, text, ran_to_limit, &self.greedy)?;
            j.tokens = c.tokens;
            j.max_gap = c.max_gap.map_or(0.0, |(_, g)| g);
            j.total_gap = c.total_gap;
            j.end_gap = c.end_gap;
            for r in &c.reasons {
                j.by.push(if r.contains("cut short") {
                    "end"
                } else if r.contains("positions") {
                    "total"
                } else {
                    "token"
                });
            }
            j.reasons = c.reasons;
        } else {
            let c = check_sampled(self.engine, &request, text, ran_to_limit, &self.sampled)?;
            j.tokens = c.tokens;
            j.z = c.z;
            j.opening_z = c.opening_z;
            j.prompt_gain = c.prompt_gain;
            j.least_log_prob = c.least_likely.map_or(0.0, |(_, lp)| lp);
            j.end_log_prob = c.end_log_prob;
            for r in &c.reasons {
                j.by.push(if r.contains("cut short") {
                    "end"
                } else if r.contains("another prompt") {
                    "gain"
                } else if r.contains("first") {
                    "opening"
                } else if r.contains("z-score") {
                    "z"
                } else {
                    "token"
                });
            }
            j.reasons = c.reasons;
        }
        let u = check_usage(self.engine, &request, text, usage, &self.usage)?;
        j.usage_margin = (
            u.claimed.prompt_tokens as i64 - u.max_prompt_tokens as i64,
            u.claimed.completion_tokens as i64 - u.max_completion_tokens as i64,
        );
        if !u.holds {
            j.by.push("usage");
            j.reasons.push(u.evidence());
        }
        j.holds = j.by.is_empty();
        Ok(j)
    }
}

/// A row of the table.
#[derive(Default)]
struct Row {
    judged: Vec<Judged>,
}

impl Row {
    fn rejected(&self, pred: impl Fn(&Judged) -> bool) -> (usize, usize) {
        let of: Vec<&Judged> = self.judged.iter().filter(|j| pred(j)).collect();
        (of.iter().filter(|j| !j.holds).count(), of.len())
    }
}

#[derive(Default)]
struct Table {
    order: Vec<String>,
    rows: BTreeMap<String, Row>,
    dump: Option<std::io::BufWriter<std::fs::File>>,
}

impl Table {
    fn push(&mut self, row: &str, j: Judged) {
        if let Some(out) = &mut self.dump {
            use std::io::Write;
            let line = serde_json::json!({
                "row": row, "greedy": j.greedy, "tokens": j.tokens, "holds": j.holds, "by": j.by,
                "max_gap": j.max_gap, "total_gap": j.total_gap, "end_gap": j.end_gap, "z": j.z,
                "opening_z": j.opening_z, "prompt_gain": j.prompt_gain, "least_log_prob": j.least_log_prob, "end_log_prob": j.end_log_prob,
                "usage_margin": [j.usage_margin.0, j.usage_margin.1], "prompt": j.prompt, "reasons": j.reasons,
            });
            writeln!(out, "{line}").ok();
        }
        if !self.rows.contains_key(row) {
            self.order.push(row.to_owned());
        }
        self.rows.entry(row.to_owned()).or_default().judged.push(j);
    }

    fn print(&self) {
        let pct = |(r, n): (usize, usize)| if n == 0 { "–".to_owned() } else { format!("{:.1}% of {n}", 100.0 * r as f64 / n as f64) };
        let by = |row: &Row, greedy: bool| {
            let names: &[&str] = if greedy { &["token", "total", "end", "usage"] } else { &["token", "z", "opening", "gain", "end", "usage"] };
            names
                .iter()
                .map(|n| row.judged.iter().filter(|j| j.greedy == greedy && j.by.contains(n)).count().to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!("Greedy jobs (check_greedy_margin + check_usage):\n");
        println!("| answers | jobs | rejected | by token gap / total gap / end / usage | worst token gap | worst total gap |");
        println!("|---|---:|---:|---|---:|---:|");
        for name in &self.order {
            let row = &self.rows[name];
            let (r, n) = row.rejected(|j| j.greedy);
            if n == 0 {
                continue;
            }
            let g: Vec<&Judged> = row.judged.iter().filter(|j| j.greedy).collect();
            let worst_token = g.iter().map(|j| j.max_gap).fold(0.0f32, f32::max);
            let worst_total = g.iter().map(|j| j.total_gap).fold(0.0f32, f32::max);
            println!(
                "| {name} | {n} | {r} ({}) | {} | {worst_token:.2} | {worst_total:.2} |",
                pct((r, n)).split(" of").next().unwrap(),
                by(row, true)
            );
        }
        println!("\nSampled jobs (check_sampled + check_usage), by the answer's length in tokens:\n");
        println!("| answers | jobs | rejected | < 32 tokens | 32–63 | ≥ 64 | by token / z / opening / gain / end / usage | z range | opening z range | prompt gain range |");
        println!("|---|---:|---:|---:|---:|---:|---|---|---|---|");
        for name in &self.order {
            let row = &self.rows[name];
            let (r, n) = row.rejected(|j| !j.greedy);
            if n == 0 {
                continue;
            }
            let s: Vec<&Judged> = row.judged.iter().filter(|j| !j.greedy).collect();
            let range = |f: &dyn Fn(&Judged) -> f64| {
                let lo = s.iter().map(|j| f(j)).fold(f64::INFINITY, f64::min);
                let hi = s.iter().map(|j| f(j)).fold(f64::NEG_INFINITY, f64::max);
                format!("{lo:.1} to {hi:.1}")
            };
            println!(
                "| {name} | {n} | {r} ({}) | {} | {} | {} | {} | {} | {} | {} |",
                pct((r, n)).split(" of").next().unwrap(),
                pct(row.rejected(|j| !j.greedy && j.tokens < 32)),
                pct(row.rejected(|j| !j.greedy && (32..64).contains(&j.tokens))),
                pct(row.rejected(|j| !j.greedy && j.tokens >= 64)),
                by(row, false),
                range(&|j| j.z),
                range(&|j| j.opening_z),
                range(&|j| j.prompt_gain),
            );
        }
    }
}

struct Args {
    calibrate: bool,
    dump: Option<std::path::PathBuf>,
    jobs: usize,
    ours: bool,
}

fn args() -> Result<Args, Error> {
    let mut a = Args { calibrate: false, dump: None, jobs: usize::MAX, ours: true };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calibrate" => a.calibrate = true,
            "--no-ours" => a.ours = false,
            "--dump" => a.dump = Some(it.next().ok_or("--dump needs a path")?.into()),
            "--jobs" => a.jobs = it.next().ok_or("--jobs needs a number")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Error> {
    let args = args()?;
    let engine = ChatEngine::load_gguf(smollm2_path()?, DeviceSpec::Cpu)?;
    let set = if args.calibrate { "calibration" } else { "evaluation" };
    let fixtures: Vec<(&str, Fixture)> =
        ENGINES.iter().map(|(file, row)| Ok((*row, fixture(file)?))).collect::<Result<_, Error>>()?;
    let max_tokens = fixtures[0].1.max_tokens;
    let (greedy, sampled) = if args.calibrate {
        (GreedyThresholds::PERMISSIVE, SampledThresholds::PERMISSIVE)
    } else {
        (GreedyThresholds::default(), SampledThresholds::default())
    };
    let judge = Judge { engine: &engine, greedy, sampled, usage: UsageTolerance::default(), max_tokens };
    let mut table = Table::default();
    if let Some(path) = &args.dump {
        table.dump = Some(std::io::BufWriter::new(std::fs::File::create(path)?));
    }
    let started = Instant::now();
    let usage_of = |a: &Answer| ClaimedUsage { prompt_tokens: a.prompt_tokens, completion_tokens: a.completion_tokens };
    let in_set = |a: &&Answer| a.set == set && a.prompt < args.jobs;
    for (row, fx) in &fixtures {
        for a in fx.answers.iter().filter(in_set) {
            let j = judge.judge(a, &a.text, usage_of(a))?;
            if !j.holds {
                println!("false accusation ({row}, prompt {}, T {}): {:?}\n    {:?}", a.prompt, a.temperature, j.reasons, a.text);
            }
            table.push(&format!("honest, {row}"), j);
        }
        eprintln!("{row}: {:.0} s", started.elapsed().as_secs_f64());
    }
    if args.calibrate {
        calibration_report(&table);
        return Ok(());
    }
    if args.ours {
        // This engine's own honest answers: one more honest row.
        for a in fixtures[0].1.answers.iter().filter(in_set) {
            let out = engine.chat(&judge.request(a))?;
            let ours = Answer {
                text: out.text.clone(),
                finish_reason: if out.finish_reason == FinishReason::Length { "length" } else { "stop" }.into(),
                ..a.clone()
            };
            let usage = ClaimedUsage {
                prompt_tokens: out.usage.prompt_tokens as u64,
                completion_tokens: out.usage.completion_tokens as u64,
            };
            let j = judge.judge(&ours, &ours.text, usage)?;
            if !j.holds {
                println!("false accusation (ours, prompt {}, T {}): {:?}", a.prompt, a.temperature, j.reasons);
            }
            table.push("honest, this engine", j);
        }
        eprintln!("ours: {:.0} s", started.elapsed().as_secs_f64());
    }
    cheat_rows(&judge, &mut table, &fixtures[0].1, &args)?;
    eprintln!("all: {:.0} s", started.elapsed().as_secs_f64());
    table.print();
    Ok(())
}

/// The substitute models of `tools/make_llm_substitutes.py`: row name and file name.
const SUBSTITUTES: [(&str, &str); 3] = [
    ("perturbed weights (σ 5% of row RMS)", "SmolLM2-135M-Instruct.perturbed.Q4_1.gguf"),
    ("re-quantised to 3 bits", "SmolLM2-135M-Instruct.requant3.Q4_1.gguf"),
    ("two layers dropped (28 of 30)", "SmolLM2-135M-Instruct.drop2.Q4_1.gguf"),
];

/// Evaluation prompts the generated cheats answer (greedy and sampled jobs each).
const GENERATED_CHEAT_PROMPTS: usize = 150;
/// Evaluation prompts the derived cheats answer (greedy and sampled jobs each).
const DERIVED_CHEAT_PROMPTS: usize = 200;

/// The cheat rows: answers generated by this engine on substitute models or sampled hotter
/// (a cheater's engine does not matter), and answers derived from llama.cpp's honest ones.
fn cheat_rows(judge: &Judge<'_>, table: &mut Table, honest: &Fixture, args: &Args) -> Result<(), Error> {
    let evaluation: Vec<&Answer> = honest.answers.iter().filter(|a| a.set == "evaluation").collect();
    let generated = || evaluation.iter().filter(|a| a.prompt < GENERATED_CHEAT_PROMPTS.min(args.jobs));
    let model = smollm2_path()?;
    let dir = model.parent().ok_or("model path has no directory")?.join("substitutes");
    let started = Instant::now();
    let answer = |table: &mut Table, row: &str, engine: &ChatEngine, a: &Answer, temperature: f64| -> Result<(), Error> {
        let out = engine.chat(&judge.request(a).with_sampling(temperature, Some(a.seed)))?;
        let claimed = Answer {
            finish_reason: if out.finish_reason == FinishReason::Length { "length" } else { "stop" }.into(),
            ..a.clone()
        };
        let usage = ClaimedUsage { prompt_tokens: out.usage.prompt_tokens as u64, completion_tokens: out.usage.completion_tokens as u64 };
        table.push(row, judge.judge(&claimed, &out.text, usage)?);
        Ok(())
    };
    for a in generated() {
        answer(table, "sampled hotter (T + 0.3)", judge.engine, a, a.temperature + 0.3)?;
    }
    eprintln!("hotter: {:.0} s", started.elapsed().as_secs_f64());
    for (row, file) in SUBSTITUTES {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(format!("{} is missing: make it with tools/make_llm_substitutes.py", path.display()).into());
        }
        let sub = ChatEngine::load_gguf(&path, DeviceSpec::Cpu)?;
        for a in generated() {
            answer(table, row, &sub, a, a.temperature)?;
        }
        eprintln!("{row}: {:.0} s", started.elapsed().as_secs_f64());
    }
    let find = |prompt: usize, greedy: bool| evaluation.iter().find(|a| a.prompt == prompt && (a.temperature == 0.0) == greedy).copied();
    let prompts = evaluation.iter().map(|a| a.prompt).max().map_or(0, |m| m + 1);
    let topics = 25;
    let mut rng = StdRng::seed_from_u64(24);
    let vocab = judge.engine.tokenizer().vocab_size() as u32;
    let cheat_jobs = evaluation.iter().filter(|a| a.prompt < DERIVED_CHEAT_PROMPTS.min(args.jobs));
    for a in cheat_jobs {
        let greedy = a.temperature == 0.0;
        let usage = ClaimedUsage { prompt_tokens: a.prompt_tokens, completion_tokens: a.completion_tokens };
        // Another job's answer: the next topic of the same task (two on, so a sampled job's
        // temperature is the same), and the same topic asked by another task.
        for (row, other) in [("another job's answer (same task, other topic)", a.prompt + 2), ("another job's answer (same topic, other task)", a.prompt + 2 * topics)] {
            if let Some(o) = find(other % prompts, greedy) {
                let claimed = Answer { finish_reason: o.finish_reason.clone(), ..(*a).clone() };
                table.push(row, judge.judge(&claimed, &o.text, usage)?);
            }
        }
        // Cut in half at a character boundary, claimed as a natural end.
        let mut cut = a.text.len() / 2;
        while !a.text.is_char_boundary(cut) {
            cut -= 1;
        }
        let claimed = Answer { finish_reason: "stop".into(), ..(*a).clone() };
        table.push("truncated (cut in half)", judge.judge(&claimed, &a.text[..cut], usage)?);
        // Random tokens, as many as the honest answer has.
        let n = (a.completion_tokens as usize).clamp(1, judge.max_tokens);
        let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
        let random = judge.engine.tokenizer().decode(&ids)?;
        table.push("random text", judge.judge(&claimed, &random, usage)?);
        let inflated = ClaimedUsage {
            prompt_tokens: a.prompt_tokens + a.prompt_tokens.div_ceil(4),
            completion_tokens: a.completion_tokens + a.completion_tokens.div_ceil(4),
        };
        table.push("inflated usage (× 1.25)", judge.judge(a, &a.text, inflated)?);
    }
    Ok(())
}

/// The worst honest value of each statistic over the calibration rows, and the bar the
/// defaults' rule derives from it.
fn calibration_report(table: &Table) {
    let all: Vec<&Judged> = table.rows.values().flat_map(|r| r.judged.iter()).collect();
    let greedy: Vec<&Judged> = all.iter().copied().filter(|j| j.greedy).collect();
    let sampled: Vec<&Judged> = all.iter().copied().filter(|j| !j.greedy).collect();
    let fmax = |v: &[&Judged], f: &dyn Fn(&Judged) -> f64| v.iter().map(|j| f(j)).fold(f64::NEG_INFINITY, f64::max);
    let fmin = |v: &[&Judged], f: &dyn Fn(&Judged) -> f64| v.iter().map(|j| f(j)).fold(f64::INFINITY, f64::min);
    println!("calibration: {} greedy and {} sampled honest answers of {} engines", greedy.len(), sampled.len(), table.rows.len());
    for (name, row) in &table.rows {
        let g: Vec<&Judged> = row.judged.iter().filter(|j| j.greedy).collect();
        let s: Vec<&Judged> = row.judged.iter().filter(|j| !j.greedy).collect();
        println!(
            "  {name}: greedy worst token gap {:.3}, total {:.3}, end {:.3}, departing {} of {}; sampled z {:.2}..{:.2}, opening z {:.2}..{:.2}, prompt gain from {:.2}, least ln p {:.1}, least end ln p {:.1}; usage margin max {:?}",
            fmax(&g, &|j| f64::from(j.max_gap)),
            fmax(&g, &|j| f64::from(j.total_gap)),
            fmax(&g, &|j| j.end_gap.map_or(0.0, f64::from)),
            g.iter().filter(|j| j.max_gap > 0.0).count(),
            g.len(),
            fmin(&s, &|j| j.z),
            fmax(&s, &|j| j.z),
            fmin(&s, &|j| j.opening_z),
            fmax(&s, &|j| j.opening_z),
            fmin(&s, &|j| j.prompt_gain),
            fmin(&s, &|j| j.least_log_prob),
            fmin(&s, &|j| j.end_log_prob.unwrap_or(0.0)),
            (row.judged.iter().map(|j| j.usage_margin.0).max(), row.judged.iter().map(|j| j.usage_margin.1).max()),
        );
    }
    let bar = |worst: f64| (2.0 * worst).max(1.0);
    println!("greedy bars (2 x worst, at least 1 logit):");
    println!("  max_token_gap {:.2}", bar(fmax(&greedy, &|j| f64::from(j.max_gap))));
    println!("  max_total_gap {:.2}", bar(fmax(&greedy, &|j| f64::from(j.total_gap))));
    println!("  max_end_gap {:.2}", bar(fmax(&greedy, &|j| j.end_gap.map_or(0.0, f64::from))));
    println!("sampled bars (1.5 x worst; the end bar no stricter than ln 1e-5):");
    println!("  max_abs_z {:.2}", 1.5 * fmax(&sampled, &|j| j.z.abs()));
    println!("  min_opening_z {:.2} (opening = first {OPENING_TOKENS} tokens)", 1.5 * fmin(&sampled, &|j| j.opening_z));
    let gain = fmin(&sampled, &|j| j.prompt_gain);
    println!("  min_prompt_gain {:.2} (worst {gain:.2}, less half its size)", gain - 0.5 * gain.abs());
    println!("  min_token_log_prob {:.2}", 1.5 * fmin(&sampled, &|j| j.least_log_prob));
    println!("  min_end_log_prob {:.2}", (1.5 * fmin(&sampled, &|j| j.end_log_prob.unwrap_or(0.0))).min((1e-5f64).ln()));
}
