//! What checking an LLM answer costs against generating it (issue #9's goal: at most a tenth)
//! and against one bare scoring pass over the same tokens (issue #24's: at most 1.2x), on
//! SmolLM2-135M-Instruct Q4_1 on the CPU, in one run.
//!
//! The job: a story prompt, temperature 0.8, a fixed seed, `max_tokens` 256. The engine has no
//! "ignore end of text" switch (and a verifier must score what an honest miner sends), so the
//! bench takes the first seed from 1 whose answer runs the full 256 tokens (a long-answer
//! prompt makes that the common case) and asserts it did. Then, in interleaved rounds (so load
//! from other processes falls on both alike):
//! - **generate**: `ChatEngine::chat` of the job (prefill + 255 decode steps);
//! - **verify**: `heurist_verify::llm::check_sampled` of the answer (re-encode the text, one
//!   teacher-forced scoring pass over prompt + answer, the likelihood statistics over every
//!   position's full distribution);
//! - **score only**: `ChatEngine::score` of the same tokens with no observer (the forward pass
//!   alone, to show what the statistics add);
//! - the same job greedy (temperature 0; its answer must also run 256 tokens, else the row is
//!   skipped): generating it, scoring its tokens alone, and `check_greedy_margin` judging it
//!   (the network's greedy check: one scoring pass, the gap of every token to the best).
//!
//! The table (stderr) gives each one's median and the median per-round ratio to generate, the
//! load average and the kernels' threads. Then criterion times generate and verify alone.
//! `HEURIST_BENCH_ROUNDS` sets the rounds (5; 0 skips the table).
//!
//! `python3 tools/fetch_smollm2.py && cargo bench -p heurist-benches --bench verify_cost`

// criterion_group! defines an undocumented pub fn.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, FinishReason, NoObserver, smollm2_path};
use heurist_verify::llm::{GreedyThresholds, SampledThresholds, check_greedy_margin, check_sampled};

const ANSWER_TOKENS: usize = 256;
const TEMPERATURE: f64 = 0.8;
const ROUNDS: usize = 5;

fn rounds() -> usize {
    std::env::var("HEURIST_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(ROUNDS)
}

/// The job and its honest answer (text and token ids), from the first seed whose answer runs
/// to `max_tokens`.
fn job(engine: &ChatEngine) -> (ChatRequest, String, Vec<u32>) {
    let messages = vec![
        ChatMessage::system("You are a storyteller. Your stories are long and detailed."),
        ChatMessage::user("Write a long story, with many chapters, about a dragon who learns to bake bread."),
    ];
    for seed in 1..=50 {
        let request = ChatRequest::new(messages.clone())
            .with_max_tokens(ANSWER_TOKENS)
            .with_sampling(TEMPERATURE, Some(seed));
        let out = engine.chat(&request).unwrap_or_else(|err| panic!("{err}"));
        if out.finish_reason == FinishReason::Length {
            assert_eq!(out.usage.completion_tokens, ANSWER_TOKENS);
            return (request, out.text, out.token_ids);
        }
    }
    panic!("no seed in 1..=50 gave a {ANSWER_TOKENS}-token answer");
}

fn generate(engine: &ChatEngine, request: &ChatRequest) -> Duration {
    let started = Instant::now();
    let out = engine.chat(request).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out.usage.completion_tokens, ANSWER_TOKENS);
    started.elapsed()
}

fn verify(engine: &ChatEngine, request: &ChatRequest, text: &str) -> Duration {
    let started = Instant::now();
    let check = check_sampled(engine, request, text, true, &SampledThresholds::default())
        .unwrap_or_else(|err| panic!("{err}"));
    let elapsed = started.elapsed();
    assert!(check.holds, "the honest answer must pass: {:?}", check.reasons);
    elapsed
}

fn score(engine: &ChatEngine, request: &ChatRequest, tokens: &[u32]) -> Duration {
    let started = Instant::now();
    let out = engine.score(&request.messages, tokens, &mut NoObserver).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out.log_probs.len(), tokens.len());
    started.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The interleaved table.
fn table(engine: &ChatEngine, request: &ChatRequest, text: &str, tokens: &[u32]) {
    let rounds = rounds();
    if rounds == 0 {
        return;
    }
    let load_before = loadavg();
    let greedy = request.clone().with_sampling(0.0, None);
    let greedy_out = engine.chat(&greedy).unwrap_or_else(|err| panic!("{err}"));
    let greedy_full = greedy_out.finish_reason == FinishReason::Length;
    let (mut gen_s, mut verify_s, mut score_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut greedy_gen_s, mut greedy_check_s, mut greedy_score_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        gen_s.push(generate(engine, request).as_secs_f64());
        verify_s.push(verify(engine, request, text).as_secs_f64());
        score_s.push(score(engine, request, tokens).as_secs_f64());
        if greedy_full {
            greedy_gen_s.push(generate(engine, &greedy).as_secs_f64());
            greedy_score_s.push(score(engine, &greedy, &greedy_out.token_ids).as_secs_f64());
            let started = Instant::now();
            let check = check_greedy_margin(engine, &greedy, &greedy_out.text, true, &GreedyThresholds::default())
                .unwrap_or_else(|err| panic!("{err}"));
            greedy_check_s.push(started.elapsed().as_secs_f64());
            assert!(check.holds && check.resplits == 0, "the honest greedy answer must pass in one pass: {:?}", check.reasons);
        }
    }
    let ratio = |v: &[f64]| median(v.iter().zip(&gen_s).map(|(a, g)| a / g).collect());
    eprintln!(
        "\nSmolLM2-135M-Instruct Q4_1, a {ANSWER_TOKENS}-token answer at temperature {TEMPERATURE}, {rounds} interleaved rounds (medians), {} kernel threads",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| format!("{} (all CPUs)", std::thread::available_parallelism().map_or(0, |n| n.get())))
    );
    eprintln!("load average (1/5/15 min) before: {load_before}; after: {}", loadavg());
    eprintln!("{:<34} {:>10} {:>14}", "", "seconds", "/ generate");
    eprintln!("{:<34} {:>10.3} {:>14}", "generate (chat)", median(gen_s.clone()), "1");
    eprintln!("{:<34} {:>10.3} {:>13.3}x", "verify (check_sampled)", median(verify_s.clone()), ratio(&verify_s));
    eprintln!("{:<34} {:>10.3} {:>13.3}x", "  of which the scoring pass (score)", median(score_s.clone()), ratio(&score_s));
    let per_round = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(a, b)| a / b).collect());
    eprintln!("verify / bare scoring pass: {:.3}x (issue #24's bound: 1.2x)", per_round(&verify_s, &score_s));
    if greedy_full {
        let ratio = per_round(&greedy_check_s, &greedy_gen_s);
        let to_score = per_round(&greedy_check_s, &greedy_score_s);
        let score_ratio = per_round(&greedy_score_s, &greedy_gen_s);
        eprintln!("{:<34} {:>10.3} {:>14}", "generate greedy", median(greedy_gen_s), "1");
        eprintln!("{:<34} {:>10.3} {:>13.3}x", "verify greedy (check_greedy_margin)", median(greedy_check_s), ratio);
        eprintln!("{:<34} {:>10.3} {:>13.3}x", "  bare scoring pass (score)", median(greedy_score_s), score_ratio);
        eprintln!("verify greedy / bare scoring pass: {to_score:.3}x (issue #24's bound: 1.2x)");
    } else {
        eprintln!("(the greedy answer ended before {ANSWER_TOKENS} tokens: greedy rows skipped)");
    }
    eprintln!("issue #9's goal: verify / generate <= 0.1\n");
}

fn bench(c: &mut Criterion) {
    let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
    let engine = ChatEngine::load_gguf(&path, DeviceSpec::Cpu).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let (request, text, tokens) = job(&engine);
    table(&engine, &request, &text, &tokens);

    let mut group = c.benchmark_group(format!("verify_cost/smollm2_{ANSWER_TOKENS}tok"));
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.bench_function("generate", |b| b.iter_custom(|iters| (0..iters).map(|_| generate(&engine, &request)).sum()));
    group.bench_function("verify", |b| b.iter_custom(|iters| (0..iters).map(|_| verify(&engine, &request, &text)).sum()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
