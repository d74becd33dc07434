//! Honest answers of other engines (llama.cpp, transformers: `tests/fixtures/honest/`, made by
//! `tools/make_llm_honest_sets.py`) judged at the default bars on SmolLM2 (feature
//! `inference`): none accused, where exact re-generation accuses llama.cpp's greedy answers;
//! another job's answer and a cut answer caught in greedy jobs, another job's answer caught at
//! the sampled jobs' (lower) rate.

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, smollm2_path};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;
use heurist_verify::llm::{GreedyThresholds, SampledThresholds, check_greedy, check_greedy_margin, check_sampled};
use serde_json::Value;

/// Evaluation prompts a test judges (a scoring pass each, 0.1 s on 2 cores).
const PROMPTS: usize = 24;

fn engine() -> ChatEngine {
    ChatEngine::load_gguf(smollm2_path().unwrap_or_else(|e| panic!("{e}")), DeviceSpec::Cpu).unwrap()
}

struct Answer {
    prompt: usize,
    request: ChatRequest,
    text: String,
    ran_to_limit: bool,
}

/// The evaluation answers of one engine's fixture, greedy or sampled, of the first prompts.
fn answers(engine: &str, greedy: bool) -> Vec<Answer> {
    let path = crate::fixture(&format!("honest/{engine}.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let max_tokens = doc["max_tokens"].as_u64().unwrap() as usize;
    doc["answers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["set"] == "evaluation" && (a["temperature"].as_f64().unwrap() == 0.0) == greedy)
        .filter(|a| (a["prompt"].as_u64().unwrap() as usize) < PROMPTS)
        .map(|a| Answer {
            prompt: a["prompt"].as_u64().unwrap() as usize,
            request: ChatRequest::new(vec![ChatMessage::user(a["messages"][0]["content"].as_str().unwrap())])
                .with_max_tokens(max_tokens)
                .with_sampling(a["temperature"].as_f64().unwrap(), a["seed"].as_u64())
                .with_stop(REFERENCE_STOP_STRINGS),
            text: a["text"].as_str().unwrap().to_owned(),
            ran_to_limit: a["finish_reason"] == "length",
        })
        .collect()
}

#[test]
fn greedy_answers_of_other_engines_hold_where_exact_regeneration_accuses_them() {
    let engine = engine();
    let t = GreedyThresholds::default();
    let mut differ = 0;
    for name in ["llama-f16kv", "llama-f32kv", "tf-f32", "tf-bf16"] {
        for a in answers(name, true) {
            let c = check_greedy_margin(&engine, &a.request, &a.text, a.ran_to_limit, &t).unwrap();
            assert!(c.holds, "{name}, prompt {}: {:?}", a.prompt, c.reasons);
            if name == "llama-f16kv" && c.departures > 0 {
                // The old verdict (re-generate, compare texts) on an answer that leaves our
                // argmax somewhere.
                differ += usize::from(!check_greedy(&engine, &a.request, &a.text).unwrap().matches);
            }
        }
    }
    assert!(differ > 0, "no llama.cpp greedy answer departs from ours in the first {PROMPTS} prompts: the test shows nothing");
}

#[test]
fn greedy_cheats_are_caught() {
    let engine = engine();
    let t = GreedyThresholds::default();
    let honest = answers("llama-f16kv", true);
    for (i, a) in honest.iter().enumerate() {
        // Another job's answer (the next topic of the same task).
        let other = &honest[(i + 1) % honest.len()];
        let c = check_greedy_margin(&engine, &a.request, &other.text, other.ran_to_limit, &t).unwrap();
        assert!(!c.holds, "prompt {}: another job's answer passed ({c:?})", a.prompt);
        // Cut in half, claimed as a natural end.
        let mut cut = a.text.len() / 2;
        while !a.text.is_char_boundary(cut) {
            cut -= 1;
        }
        let c = check_greedy_margin(&engine, &a.request, &a.text[..cut], false, &t).unwrap();
        assert!(!c.holds && c.reasons.iter().any(|r| r.contains("cut short")), "prompt {}: a cut answer passed ({c:?})", a.prompt);
    }
}

#[test]
fn sampled_answers_of_other_engines_hold_and_another_jobs_answer_does_not() {
    let engine = engine();
    let t = SampledThresholds::default();
    for name in ["llama-f16kv", "llama-f32kv", "tf-f32", "tf-bf16"] {
        for a in answers(name, false) {
            let c = check_sampled(&engine, &a.request, &a.text, a.ran_to_limit, &t).unwrap();
            assert!(c.holds, "{name}, prompt {}: {:?}", a.prompt, c.reasons);
        }
    }
    let honest = answers("llama-f16kv", false);
    let mut caught = 0;
    for (i, a) in honest.iter().enumerate() {
        // Two on: the same temperature (jobs alternate 0.7 and 1.0), the next topic but one.
        let other = &honest[(i + 2) % honest.len()];
        let c = check_sampled(&engine, &a.request, &other.text, other.ran_to_limit, &t).unwrap();
        caught += usize::from(!c.holds);
    }
    // The detection table (crate docs, `detection`) measures what the likelihood tests can
    // and cannot do here: at T 0.7 and 1.0 SmolLM2-135M's honest openings are often barely
    // on the question, so an answer to another prompt is caught a third of the time. This
    // guards that rate.
    assert!(caught * 4 >= honest.len(), "another job's answer caught {caught} of {} times", honest.len());
}
