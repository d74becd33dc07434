//! The generation loop's contract on the real model: stop strings, `max_tokens`, the observer,
//! seeded sampling, token counts.

use heurist_inference::{ChatRequest, FinishReason, TokenEvent};

use crate::support::{engine, fixture, model_lock};

fn case(name: &str) -> &'static crate::support::Case {
    fixture().cases.iter().find(|c| c.name == name).expect("fixture case")
}

#[test]
fn max_tokens_cuts_with_finish_reason_length() {
    let _model = model_lock();
    let case = case("code_python");
    let request = ChatRequest::new(case.chat_messages());
    let long = engine().chat(&request.clone().with_max_tokens(12)).unwrap();
    let out = engine().chat(&request.with_max_tokens(5)).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.token_ids, long.token_ids[..5]);
    assert_eq!(out.usage.completion_tokens, 5);
    assert_eq!(out.usage.prompt_tokens, case.prompt_token_ids.len());
    assert_eq!(out.text, engine().tokenizer().decode(&out.token_ids).unwrap());
    assert!(long.text.starts_with(&out.text));
}

#[test]
fn stop_string_ends_the_text_before_it() {
    let _model = model_lock();
    let case = case("multi_turn_system");
    let request = ChatRequest::new(case.chat_messages()).with_max_tokens(24);
    let full = engine().chat(&request).unwrap();
    assert_eq!(full.finish_reason, FinishReason::Length, "{:?}", full.text);
    // A stop string from the middle of the greedy answer, likely spanning a token boundary.
    let text = &full.text;
    let at = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = text[at..].chars().take(4).collect();
    let first = text.find(&stop).unwrap();
    let out = engine()
        .chat(&request.with_stop([stop.clone(), "never appears ¤¤".to_owned()]))
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, text[..first], "stop {stop:?}");
    assert!(out.token_ids.len() < full.token_ids.len());
    assert_eq!(out.token_ids, full.token_ids[..out.token_ids.len()]);
    // The token that completed the stop string is the last one generated.
    let through_last = engine().tokenizer().decode(&out.token_ids).unwrap();
    let before_last = engine().tokenizer().decode(&out.token_ids[..out.token_ids.len() - 1]).unwrap();
    assert!(through_last.contains(&stop) && !before_last.contains(&stop));
}

#[test]
fn observer_sees_every_token_with_its_log_prob() {
    let _model = model_lock();
    let case = case("greeting");
    let mut seen = Vec::new();
    let mut observe = |e: &TokenEvent<'_>| {
        seen.push((e.index, e.token_id, e.log_prob, e.logits.len()));
    };
    let request = ChatRequest::new(case.chat_messages()).with_max_tokens(8);
    let out = engine().chat_with_observer(&request, &mut observe).unwrap();
    assert_eq!(seen.len(), out.token_ids.len());
    for (i, &(index, token, log_prob, vocab)) in seen.iter().enumerate() {
        assert_eq!(index, i);
        assert_eq!(token, out.token_ids[i]);
        assert!(log_prob <= 0.0 && log_prob.is_finite(), "{log_prob}");
        assert_eq!(vocab, engine().tokenizer().vocab_size());
    }
    assert!(out.timings.time_to_first_token > std::time::Duration::ZERO);
}

#[test]
fn a_seed_fixes_sampled_tokens() {
    let _model = model_lock();
    let case = case("emoji_french");
    let run = |seed| {
        let request = ChatRequest::new(case.chat_messages())
            .with_max_tokens(12)
            .with_sampling(0.9, Some(seed));
        engine().chat(&request).unwrap().token_ids
    };
    let a = run(11);
    assert_eq!(a, run(11));
    // Text of sampled tokens stays valid UTF-8 (the emoji prompt invites split characters).
    let text = engine().tokenizer().decode(&a).unwrap();
    assert!(!text.is_empty());
}
