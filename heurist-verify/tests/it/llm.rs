//! Chat answers on SmolLM2 (feature `inference`): sampled answers by likelihood.

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, FinishReason, smollm2_path};
use heurist_verify::VerifyError;
use heurist_verify::llm::{SampledThresholds, check_sampled};

fn engine() -> ChatEngine {
    ChatEngine::load_gguf(smollm2_path().unwrap_or_else(|e| panic!("{e}")), DeviceSpec::Cpu).unwrap()
}

#[test]
fn sampled_answers_hold_and_substitutes_do_not() {
    let engine = engine();
    let t = SampledThresholds::default();
    for (seed, question) in [(1, "Write two sentences about the moon."), (2, "Give three tips related to sleep.")] {
        let request = ChatRequest::new(vec![ChatMessage::user(question)])
            .with_max_tokens(40)
            .with_sampling(0.8, Some(seed))
            .with_stop(["<|im_end|>"]);
        let honest = engine.chat(&request).unwrap();
        let at_limit = honest.finish_reason == FinishReason::Length;
        let c = check_sampled(&engine, &request, &honest.text, at_limit, &t).unwrap();
        assert!(c.holds, "{c:?} {:?}", honest.text);
        assert!(c.z.abs() < 4.0, "{c:?}");

        // Made-up text from another "model": implausible tokens.
        let fake = "Zebra quantum ukulele; 7731 marmalade!! ¿Por qué? ∑ the the the.";
        let c = check_sampled(&engine, &request, fake, false, &t).unwrap();
        assert!(!c.holds, "{c:?}");

        // The greedy answer offered for a sampled job is more likely than a sample: z > 0 (over
        // 40 tokens not past the |z| > 6 bar; the crate docs' table says how often it is).
        let greedy = engine.chat(&request.clone().with_sampling(0.0, None)).unwrap();
        let c = check_sampled(&engine, &request, &greedy.text, greedy.finish_reason == FinishReason::Length, &t).unwrap();
        assert!(c.z > 1.0, "{c:?}");
    }
    let request = ChatRequest::new(vec![ChatMessage::user("hi")]);
    assert!(matches!(check_sampled(&engine, &request, "hello", false, &t), Err(VerifyError::NotSampled { .. })));
}

#[test]
fn an_answer_cut_mid_sentence_is_refused() {
    let engine = engine();
    let request = ChatRequest::new(vec![ChatMessage::user("Explain gravity to a ten-year-old.")])
        .with_max_tokens(48)
        .with_sampling(0.7, Some(3))
        .with_stop(["<|im_end|>"]);
    let honest = engine.chat(&request).unwrap();
    let truncated = honest.finish_reason == FinishReason::Length;
    let defaults = SampledThresholds::default();
    let full = check_sampled(&engine, &request, &honest.text, truncated, &defaults).unwrap();
    assert!(full.holds, "{full:?}");
    let cut = &honest.text[..honest.text.char_indices().nth(honest.text.chars().count() / 2).unwrap().0];
    let c = check_sampled(&engine, &request, cut, false, &defaults).unwrap();
    let end = c.end_log_prob.unwrap();
    // Ending mid-answer is far less likely than where the model ended it.
    if let Some(full_end) = full.end_log_prob {
        assert!(end < full_end - 5.0, "cut {end}, full {full_end}");
    }
    // Whether a given cut falls past the default δ = 1e-7 depends on where it lands (the crate
    // docs' table: about half do, and the kernel's rounding moves this one across); at
    // δ = 1e-4 this one is refused, and the reason names the cause.
    let strict = SampledThresholds { min_end_log_prob: (1e-4f64).ln(), ..defaults };
    let c = check_sampled(&engine, &request, cut, false, &strict).unwrap();
    assert!(end < (1e-4f64).ln(), "{c:?} {cut:?}");
    assert!(!c.holds && c.reasons.iter().any(|r| r.contains("cut short")), "{c:?}");
}
