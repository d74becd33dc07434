//! Continuous batching on SmolLM2-135M-Instruct (Q4_1 GGUF, CPU): aggregate decode tokens/s
//! with 1, 4 and 8 concurrent requests on one `heurist_inference::ChatServer`, and the
//! process's peak resident memory.
//!
//! Each round submits N greedy requests (different prompts, 64 tokens at most) at once. The
//! server prefills all of them, then decodes them together, one batched step for all; the
//! decode window runs from the last request's first token (the end of the prefills) to the
//! last answer, and the aggregate rate is the tokens generated after each request's first
//! token over that window. The table (stderr) gives the median of `HEURIST_BENCH_ROUNDS`
//! rounds (default 3) and the speed-up over one request; the rounds of all sizes are
//! interleaved so they see the same machine load, which the table also prints.
//!
//! Threads: the CPU body's pool follows `RAYON_NUM_THREADS`, else the CPU count; the figures
//! in the README are for `RAYON_NUM_THREADS=2`.
//!
//! `python3 tools/fetch_smollm2.py && RAYON_NUM_THREADS=2 cargo bench -p heurist-benches --bench llm_batch`

use std::sync::Arc;
use std::time::Instant;

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, ChatServer, DeviceSpec, smollm2_path};

const MAX_TOKENS: usize = 64;
const SIZES: [usize; 3] = [1, 4, 8];
const TOPICS: [&str; 8] = [
    "a dragon who learns to bake bread",
    "the history of the printing press",
    "a robot exploring the deep sea",
    "how volcanoes form and erupt",
    "a detective solving a mystery on a train",
    "the life cycle of a butterfly",
    "a city built in the clouds",
    "why the sky is blue at noon and red at sunset",
];

/// One round with `n` concurrent requests: tokens decoded after the first, and the window.
fn round(server: &ChatServer, n: usize) -> (usize, f64) {
    let handles: Vec<_> = TOPICS[..n]
        .iter()
        .map(|topic| {
            let request =
                ChatRequest::new(vec![ChatMessage::user(format!("Write a long story about {topic}."))])
                    .with_max_tokens(MAX_TOKENS);
            server.submit(request)
        })
        .collect();
    let waiters: Vec<_> = handles
        .into_iter()
        .map(|handle| {
            std::thread::spawn(move || {
                let out = handle.wait().unwrap_or_else(|err| panic!("request failed: {err}"));
                let done = Instant::now();
                (done - out.timings.decode, done, out.usage.completion_tokens.saturating_sub(1))
            })
        })
        .collect();
    let results: Vec<(Instant, Instant, usize)> =
        waiters.into_iter().map(|w| w.join().unwrap_or_else(|_| panic!("waiter panicked"))).collect();
    let start = results.iter().map(|r| r.0).max().unwrap_or_else(Instant::now);
    let end = results.iter().map(|r| r.1).max().unwrap_or(start);
    let tokens = results.iter().map(|r| r.2).sum();
    (tokens, (end - start).as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn peak_rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or_else(|| "unknown".to_owned(), |kb| format!("{:.0} MiB", kb / 1024.0))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn main() {
    let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
    let engine = Arc::new(ChatEngine::load_gguf(&path, DeviceSpec::Cpu).unwrap_or_else(|err| panic!("{err}")));
    let server = ChatServer::new(Arc::clone(&engine), *SIZES.iter().max().unwrap_or(&1))
        .unwrap_or_else(|err| panic!("{err}"));
    let rounds: usize = std::env::var("HEURIST_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
        std::thread::available_parallelism().map_or_else(|_| "?".to_owned(), |n| n.get().to_string())
    });
    eprintln!("\nSmolLM2-135M Q4_1, continuous batching, {threads} threads, {rounds} rounds, ≤{MAX_TOKENS} tokens each");
    eprintln!("load average before: {}", load_average());

    // Warm-up: the pool's threads and the caches.
    let _ = round(&server, 1);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    let mut tokens: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
    for _ in 0..rounds {
        for (i, &n) in SIZES.iter().enumerate() {
            let (decoded, seconds) = round(&server, n);
            rates[i].push(decoded as f64 / seconds);
            tokens[i].push(decoded as f64);
        }
    }
    let base = median(rates[0].clone());
    eprintln!("\n| concurrent | tokens decoded | aggregate decode tok/s | per request tok/s | vs 1 |");
    eprintln!("|---:|---:|---:|---:|---:|");
    for (i, &n) in SIZES.iter().enumerate() {
        let rate = median(rates[i].clone());
        eprintln!(
            "| {n} | {:.0} | {rate:.1} | {:.1} | {:.2}x |",
            median(tokens[i].clone()),
            rate / n as f64,
            rate / base
        );
    }
    eprintln!("\nload average after: {}", load_average());
    eprintln!("peak resident memory: {}\n", peak_rss_mib());
    server.shutdown();
}
