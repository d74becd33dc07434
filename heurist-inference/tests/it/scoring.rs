//! Teacher-forced scoring against generation: on the CPU body `ChatEngine::score` runs the
//! prompt and the answer in one forward pass, and every position's logits must be bit for bit
//! the logits generation sampled from (what lets a verifier re-check a greedy answer exactly
//! and rescore a sampled one without rounding noise).

use heurist_inference::{ChatMessage, ChatRequest, SamplingParams, TokenEvent};

use crate::support::engine;

/// Generates `request` recording each step's logits, scores the answer, and checks both runs
/// saw the same logits at every step; returns the answer's length.
fn generate_then_score(request: &ChatRequest) -> usize {
    let engine = engine();
    let mut seen: Vec<(u32, Vec<f32>)> = Vec::new();
    let mut record = |e: &TokenEvent<'_>| seen.push((e.token_id, e.logits.to_vec()));
    let out = engine.chat_with_observer(request, &mut record).expect("generation");
    assert_eq!(out.token_ids.len(), seen.len());

    let mut scored: Vec<(u32, f32, Vec<f32>)> = Vec::new();
    let mut record = |e: &TokenEvent<'_>| scored.push((e.token_id, e.log_prob, e.logits.to_vec()));
    let score = engine.score(&request.messages, &out.token_ids, &mut record).expect("scoring");
    assert_eq!(score.usage.prompt_tokens, out.usage.prompt_tokens);
    assert_eq!(score.log_probs.len(), out.token_ids.len());
    assert_eq!(scored.len(), seen.len(), "one event per answer token");

    for (step, ((token, generated), (scored_token, log_prob, rescored))) in seen.iter().zip(&scored).enumerate() {
        assert_eq!(token, scored_token, "step {step}");
        assert_eq!(*log_prob, score.log_probs[step]);
        let first_diff = generated.iter().zip(rescored).position(|(a, b)| a.to_bits() != b.to_bits());
        if let Some(i) = first_diff {
            panic!(
                "step {step} of {}: logit {i} is {} in generation but {} when scored",
                seen.len(),
                generated[i],
                rescored[i]
            );
        }
    }
    out.token_ids.len()
}

#[test]
fn scored_logits_equal_generation_bit_for_bit() {
    let story = vec![ChatMessage::user("Write a long story about a dragon who learns to bake bread.")];
    let question = vec![
        ChatMessage::system("You are a terse assistant."),
        ChatMessage::user("Name three rivers in Europe and say one thing about each."),
    ];
    let cases = [
        // Greedy, long enough to pass both the decode attention switch (position 64) and the
        // scoring pass's projection chunk (64 positions).
        ChatRequest::new(story.clone()).with_max_tokens(90),
        ChatRequest::new(story).with_max_tokens(40).with_sampling(0.8, Some(7)),
        ChatRequest::new(question.clone()).with_max_tokens(70).with_sampling(1.2, Some(3)),
        ChatRequest::new(question).with_max_tokens(50).with_sampling(0.7, Some(11)).with_sampling_params(
            SamplingParams { temperature: 0.7, top_p: 0.9, top_k: 40, repetition_penalty: 1.1, ..SamplingParams::default() },
        ),
    ];
    let mut lengths = Vec::new();
    for (i, request) in cases.iter().enumerate() {
        let n = generate_then_score(request);
        assert!(n >= 5, "case {i}: a {n}-token answer tests little");
        lengths.push(n);
    }
    assert!(lengths[0] > 70, "the greedy story should run past 64 positions: {lengths:?}");
    eprintln!("scored answers of {lengths:?} tokens: logits bitwise equal to generation's");
}

#[test]
fn scoring_one_token_and_none() {
    let engine = engine();
    let messages = vec![ChatMessage::user("Hi")];
    let out = engine.chat(&ChatRequest::new(messages.clone()).with_max_tokens(1)).expect("generation");
    let score = engine.score(&messages, &out.token_ids, &mut |_: &TokenEvent<'_>| {}).expect("one token");
    assert_eq!(score.log_probs.len(), 1);
    assert!(score.log_probs[0] <= 0.0 && score.log_probs[0].is_finite());
    let empty = engine.score(&messages, &[], &mut |_: &TokenEvent<'_>| {}).expect("no tokens");
    assert!(empty.log_probs.is_empty());
    assert_eq!(empty.usage.prompt_tokens, score.usage.prompt_tokens);
}
