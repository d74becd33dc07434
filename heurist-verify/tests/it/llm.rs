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
        // Inside the calibrated bar, not merely by some other rule: honest 40-token answers
        // have heavier tails than a normal z (seed 1 gives -4.26 with the panel kernels).
        assert!(c.z.abs() < t.max_abs_z, "{c:?}");

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

/// A greedy chat job for SmolLM2 and a submission answering it with `answer` and `usage`.
fn usage_submission(answer: &str, usage: Option<serde_json::Value>) -> (heurist_protocol::Job, heurist_protocol::MinerSubmit) {
    let job = heurist_protocol::Job::from_slice(
        br#"{"job_id":"u1","model_id":"smollm2","model_input":{"LLM":{"prompt":"[{\"role\":\"user\",\"content\":\"Name a colour.\"}]","temperature":0,"max_tokens":20,"seed":1}}}"#,
    )
    .unwrap();
    let choices = serde_json::json!([{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]);
    let mut body = serde_json::json!({
        "miner_id": "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0", "job_id": "u1",
        "result": {"Text": choices.to_string()}, "request_latency": 0.1, "inference_latency": 1.0,
        "signature": format!("{}1b", "11".repeat(64)), "identity_address": "0x3f71f00ad1266be038917addd150943ca7c60f6a",
    });
    if let Some(u) = usage {
        body["usage"] = u;
    }
    (job, heurist_protocol::MinerSubmit::from_slice(body.to_string().as_bytes()).unwrap())
}

#[test]
fn claimed_usage_is_recounted_and_inflation_refused() {
    use heurist_verify::llm::{ClaimedUsage, UsageTolerance, check_usage, check_usage_submission, claimed_usage};
    let engine = engine();
    let tolerance = UsageTolerance::default();
    let request = ChatRequest::new(vec![ChatMessage::user("Name a colour.")])
        .with_max_tokens(20)
        .with_sampling(0.0, None)
        .with_stop(["<|im_end|>"]);
    let out = engine.chat(&request).unwrap();
    let honest = ClaimedUsage {
        prompt_tokens: out.usage.prompt_tokens as u64,
        completion_tokens: out.usage.completion_tokens as u64,
    };
    // The engine's own counts (the end token included) hold, and the recount of the prompt is
    // exactly the engine's.
    let c = check_usage(&engine, &request, &out.text, honest, &tolerance).unwrap();
    assert!(c.holds, "{c:?}");
    assert_eq!(c.prompt_tokens, honest.prompt_tokens);
    assert!(c.completion_tokens <= honest.completion_tokens && honest.completion_tokens <= c.completion_tokens + 1, "{c:?}");

    // One prompt token more than the template gives is refused, and the evidence has the numbers.
    let inflated = ClaimedUsage { prompt_tokens: honest.prompt_tokens + 1, ..honest };
    let c = check_usage(&engine, &request, &out.text, inflated, &tolerance).unwrap();
    assert!(!c.holds);
    let evidence = c.evidence();
    assert!(evidence.contains(&format!("claimed usage {} prompt", honest.prompt_tokens + 1)), "{evidence}");
    assert!(evidence.contains(&format!("recounted {} +", honest.prompt_tokens)), "{evidence}");
    // More answer tokens than the text plus its slack are refused.
    let c = check_usage(&engine, &request, &out.text, ClaimedUsage { completion_tokens: c.max_completion_tokens + 1, ..honest }, &tolerance).unwrap();
    assert!(!c.holds, "{c:?}");
    let c = check_usage(&engine, &request, "", ClaimedUsage { completion_tokens: 21, ..honest }, &tolerance).unwrap();
    assert!(!c.holds && c.max_completion_tokens <= 3, "{c:?}");
    // Under-claiming costs the miner, not the network.
    let c = check_usage(&engine, &request, &out.text, ClaimedUsage { prompt_tokens: 1, completion_tokens: 0 }, &tolerance).unwrap();
    assert!(c.holds, "{c:?}");
    // A nonsensical tolerance is refused by name.
    let bad = UsageTolerance { completion_ratio: f64::NAN, ..tolerance };
    assert!(matches!(check_usage(&engine, &request, &out.text, honest, &bad), Err(VerifyError::InvalidClaim { .. })));

    // From the wire: the submission's `usage` beside the result.
    let usage = serde_json::json!({"prompt_tokens": honest.prompt_tokens, "completion_tokens": honest.completion_tokens});
    let (job, submit) = usage_submission(&out.text, Some(usage));
    assert_eq!(claimed_usage(&submit).unwrap(), Some(honest));
    assert!(check_usage_submission(&engine, &job, &submit, &tolerance).unwrap().unwrap().holds);
    let usage = serde_json::json!({"prompt_tokens": honest.prompt_tokens * 2, "completion_tokens": honest.completion_tokens});
    let (job, submit) = usage_submission(&out.text, Some(usage));
    assert!(!check_usage_submission(&engine, &job, &submit, &tolerance).unwrap().unwrap().holds);
    let (job, submit) = usage_submission(&out.text, None);
    assert_eq!(check_usage_submission(&engine, &job, &submit, &tolerance).unwrap(), None);
    // A `usage` that is not two counts fails the submission's decoding, naming the field.
    let mut body = serde_json::to_value(&submit).unwrap();
    body["usage"] = serde_json::json!({"prompt_tokens": -3, "completion_tokens": "many"});
    let err = heurist_protocol::MinerSubmit::from_slice(body.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("miner_submit"), "{err}");
    let (_, orphan) = usage_submission(&out.text, None);
    let other = heurist_protocol::Job::from_slice(
        br#"{"job_id":"u2","model_id":"smollm2","model_input":{"LLM":{"prompt":"[{\"role\":\"user\",\"content\":\"hi\"}]","temperature":0,"max_tokens":20,"seed":1}}}"#,
    )
    .unwrap();
    assert!(matches!(check_usage_submission(&engine, &other, &orphan, &tolerance), Err(VerifyError::NoJob { .. })));
}

#[test]
fn filtered_or_penalised_sampling_is_refused_not_misjudged() {
    let engine = engine();
    let base = ChatRequest::new(vec![ChatMessage::user("hi")]).with_max_tokens(8).with_sampling(0.8, Some(1));
    let mut top_p = base.clone();
    top_p.top_p = 0.9;
    let mut penalised = base.clone();
    penalised.repetition_penalty = 1.1;
    for (request, name) in [(top_p, "top_p"), (penalised, "repetition_penalty")] {
        let err = check_sampled(&engine, &request, "Hello", false, &SampledThresholds::default()).unwrap_err();
        assert!(matches!(err, VerifyError::UnmodelledSampling { name: n, .. } if n == name), "{err}");
    }
}
