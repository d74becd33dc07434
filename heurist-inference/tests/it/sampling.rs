//! The sampling filters against transformers' logits processors (RepetitionPenalty,
//! Temperature, TopK, TopP, MinP) plus the OpenAI frequency / presence formula, applied in
//! vLLM's order to fixed random logits and token histories (tools/make_transformers_fixtures.py):
//! the same tokens are kept and every probability agrees within 1e-6.

use heurist_inference::SamplingParams;
use serde::Deserialize;

/// Both sides compute the penalties and temperature in f32 and the filters and softmax in
/// f64 (ours) or f32 then f64 (theirs); probabilities agree to a few f32 ulps.
const TOLERANCE: f64 = 1e-6;

#[derive(Debug, Deserialize)]
struct Fixture {
    order: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    params: Params,
    logits: Vec<f32>,
    prompt_token_ids: Vec<u32>,
    output_token_ids: Vec<u32>,
    kept: Vec<usize>,
    probs: Vec<f64>,
}

#[derive(Debug, Deserialize)]
struct Params {
    temperature: f64,
    top_p: f64,
    top_k: usize,
    min_p: f64,
    repetition_penalty: f64,
    presence_penalty: f64,
    frequency_penalty: f64,
}

#[test]
fn filtered_distributions_match_transformers() {
    let fixture: Fixture =
        serde_json::from_str(include_str!("../fixtures/transformers/sampling.json")).expect("sampling.json parses");
    assert_eq!(fixture.order, ["repetition", "frequency_presence", "temperature", "top_k", "top_p", "min_p"]);
    assert!(fixture.cases.len() >= 15);
    for case in &fixture.cases {
        let p = &case.params;
        let params = SamplingParams {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
        };
        let ours = params.distribution(&case.logits, &case.prompt_token_ids, &case.output_token_ids);
        let kept: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] > 0.0).collect();
        assert_eq!(kept, case.kept, "{}: kept set", case.name);
        for (id, (a, b)) in ours.iter().zip(&case.probs).enumerate() {
            assert!((a - b).abs() <= TOLERANCE, "{}: token {id}: {a} vs transformers {b}", case.name);
        }
        let total: f64 = ours.iter().sum();
        assert!((total - 1.0).abs() < 1e-12, "{}: sums to {total}", case.name);
    }
}

/// The engine feeds the sampler the prompt and the output so far: with penalties on, each
/// greedy token is the argmax of the penalised distribution over the raw logits the observer
/// saw, and each sampled token lies in the kept set. Runs the tiny Llama 3 fixture model.
#[test]
fn engine_samples_from_the_filtered_distribution() {
    use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, TokenEvent};

    let _guard = crate::support::model_lock();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformers/models/llama3");
    let engine = ChatEngine::load_safetensors(&dir, DeviceSpec::Cpu).expect("tiny llama3 loads");
    let messages = vec![ChatMessage::user("Hello, how are you?")];
    let prompt = engine.tokenizer().encode(&engine.render_prompt(&messages).expect("renders")).expect("encodes");

    let greedy = SamplingParams { repetition_penalty: 1.5, frequency_penalty: 0.7, ..SamplingParams::default() };
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: 20,
        top_p: 0.9,
        min_p: 0.02,
        presence_penalty: 0.4,
        ..SamplingParams::default()
    };
    let mut outputs = Vec::new();
    for params in [greedy, sampled] {
        let request = ChatRequest::new(messages.clone()).with_max_tokens(24).with_sampling_params(params);
        let request = ChatRequest { seed: Some(11), ..request };
        let mut steps: Vec<(Vec<f32>, u32)> = Vec::new();
        let mut observer = |e: &TokenEvent<'_>| steps.push((e.logits.to_vec(), e.token_id));
        let output = engine.chat_with_observer(&request, &mut observer).expect("chat");
        for (index, (logits, token)) in steps.iter().enumerate() {
            let probs = params.distribution(logits, &prompt, &output.token_ids[..index]);
            if params.is_greedy() {
                let best = (0..probs.len()).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
                assert_eq!(*token as usize, best, "greedy step {index}");
            } else {
                assert!(probs[*token as usize] > 0.0, "step {index}: token {token} was filtered out");
            }
        }
        // The same seed gives the same tokens.
        assert_eq!(engine.chat(&request).expect("chat").token_ids, output.token_ids);
        outputs.push(output.token_ids);
    }
    // The penalties change the greedy run (the fixture's plain greedy run repeats tokens).
    let plain = engine.chat(&ChatRequest::new(messages).with_max_tokens(24)).expect("chat").token_ids;
    assert_ne!(outputs[0], plain);
}
