//! Greedy answers on SmolLM2 checked by one scoring pass (feature `inference`): honest answers
//! are confirmed without a re-generation, and every altered answer gets the re-generation's
//! verdict.

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, FinishReason, smollm2_path};
use heurist_verify::VerifyError;
use heurist_verify::llm::{check_greedy, check_greedy_scored};

fn engine() -> ChatEngine {
    ChatEngine::load_gguf(smollm2_path().unwrap_or_else(|e| panic!("{e}")), DeviceSpec::Cpu).unwrap()
}

#[test]
fn honest_greedy_answers_pass_in_one_pass_and_altered_ones_fail() {
    let engine = engine();
    let prompts = [
        ("What is the capital of France?", 64),
        ("Write a long story about a dragon who learns to bake bread.", 48),
        ("List three colours.", 40),
        ("Say hello.", 30),
    ];
    let (mut ended, mut at_limit) = (0, 0);
    for (prompt, max_tokens) in prompts {
        let request = ChatRequest::new(vec![ChatMessage::user(prompt)]).with_max_tokens(max_tokens);
        let honest = engine.chat(&request).unwrap();
        match honest.finish_reason {
            FinishReason::Length => at_limit += 1,
            _ => ended += 1,
        }
        let check = check_greedy_scored(&engine, &request, &honest.text).unwrap();
        assert!(check.check.matches, "{prompt:?}: {}", check.check.evidence(&honest.text));
        assert!(check.one_pass, "{prompt:?}: the honest answer needed a re-generation");

        // Cut short (not at max_tokens): the model would not end there.
        let words: Vec<&str> = honest.text.split(' ').collect();
        let cut = words[..words.len() / 2].join(" ");
        // One word replaced: not the argmax there.
        let mut edited = words.clone();
        edited[words.len() / 3] = "banana";
        let edited = edited.join(" ");
        // Extended past the model's end, or past max_tokens.
        let longer = format!("{} And then some more words.", honest.text);
        for (what, claimed) in [("cut", cut), ("edited", edited), ("longer", longer)] {
            let fast = check_greedy_scored(&engine, &request, &claimed).unwrap();
            let slow = check_greedy(&engine, &request, &claimed).unwrap();
            assert!(!fast.check.matches, "{prompt:?}: the {what} answer passed");
            assert!(!fast.one_pass, "{prompt:?}: a rejection must come from the re-generation");
            assert_eq!(fast.check, slow, "{prompt:?} {what}");
        }
    }
    assert!(ended > 0 && at_limit > 0, "both endings tested: {ended} ended, {at_limit} at the limit");
    let sampled = ChatRequest::new(vec![ChatMessage::user("Hi")]).with_sampling(0.7, Some(1));
    assert!(matches!(check_greedy_scored(&engine, &sampled, "Hello"), Err(VerifyError::NotGreedy { .. })));
}
