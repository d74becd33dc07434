//! proptest round trips for every message type: encode, decode, compare.

use heurist_protocol::openai::{ChatMessage, Choice, FinishReason, Role, SamplingParams};
use heurist_protocol::stream::{StreamedText, WordChunker};
use heurist_protocol::{
    Address, Job, LlmInput, MinerId, MinerRequest, MinerSignal, MinerSubmit, ModelInput, ModelKind, Nullable,
    RequestAnswer, SdInput, SignalAnswer, SignalOptions, Signature, SubmitJob, SubmitResult, TempCredentials, TokenUsage,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

fn miner_id() -> impl Strategy<Value = MinerId> {
    ("[0-9a-fA-F]{40}", proptest::option::of("[A-Za-z0-9_]{1,12}"))
        .prop_map(|(h, t)| MinerId::new(&format!("0x{h}"), t.as_deref()).unwrap())
}

fn address() -> impl Strategy<Value = Address> {
    "[0-9a-f]{40}".prop_map(|h| Address::parse(&format!("0x{h}")).unwrap())
}

fn signature() -> impl Strategy<Value = Signature> {
    (proptest::collection::vec(any::<u8>(), 64), any::<bool>()).prop_map(|(rs, v)| {
        let mut b = [0u8; 65];
        b[..64].copy_from_slice(&rs);
        b[64] = if v { 28 } else { 27 };
        Signature::from_bytes(b).unwrap()
    })
}

fn extra() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map("x_[a-z]{1,6}", any::<i32>(), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        (0u32..100).prop_map(Number::from),
        (0.0f64..100.0).prop_map(|f| Number::from_f64(f).unwrap()),
    ]
}

fn latency() -> impl Strategy<Value = f64> {
    0.0f64..1e4
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn sd_input() -> impl Strategy<Value = SdInput> {
    (text(), proptest::option::of(text()), any::<u32>(), any::<u32>(), proptest::option::of(any::<u32>()), number(), any::<i64>(), extra())
        .prop_map(|(prompt, neg_prompt, height, width, steps, guidance_scale, seed, extra)| SdInput {
            prompt,
            neg_prompt,
            height,
            width,
            num_iterations: steps,
            num_inference_steps: None,
            guidance_scale,
            seed,
            sampler: None,
            extra,
        })
}

fn llm_input() -> impl Strategy<Value = LlmInput> {
    let msgs = proptest::collection::vec((prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)], text()), 1..4);
    (msgs, proptest::option::of(number()), proptest::option::of(any::<i64>()), proptest::option::of(any::<i64>()), proptest::option::of(any::<bool>()), proptest::option::of(0.0f64..1.0), extra())
        .prop_map(|(m, temperature, max_tokens, seed, use_stream, top_p, extra)| {
            let messages: Vec<ChatMessage> = m.into_iter().map(|(r, t)| ChatMessage::text(r, t)).collect();
            let sampling = SamplingParams { top_p, ..SamplingParams::default() };
            LlmInput {
                prompt: serde_json::to_string(&messages).unwrap(),
                temperature,
                max_tokens,
                seed,
                use_stream,
                tools: Some(String::new()),
                extra_body: Some(serde_json::to_string(&sampling).unwrap()),
                extra,
            }
        })
}

fn model_input() -> impl Strategy<Value = ModelInput> {
    prop_oneof![sd_input().prop_map(ModelInput::Sd), llm_input().prop_map(ModelInput::Llm)]
}

fn job() -> impl Strategy<Value = Job> {
    ("[a-z0-9-]{1,20}", "[A-Za-z0-9.-]{1,20}", model_input(), proptest::option::of(("[A-Z0-9]{4,20}", text(), text())), extra())
        .prop_map(|(job_id, model_id, model_input, creds, extra)| Job {
            job_id,
            model_id,
            model_input,
            temp_credentials: creds.map(|(a, b, c)| TempCredentials(a, b, c)),
            extra,
        })
}

fn nullable() -> impl Strategy<Value = Nullable<f64>> {
    prop_oneof![Just(Nullable::Absent), Just(Nullable::Null), latency().prop_map(Nullable::Value)]
}

fn choices() -> impl Strategy<Value = Vec<Choice>> {
    proptest::collection::vec(
        (text(), prop_oneof![Just(FinishReason::Stop), Just(FinishReason::Length), Just(FinishReason::ToolCalls)]),
        1..3,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (t, f))| Choice {
                index: i as u32,
                message: ChatMessage::text(Role::Assistant, t),
                finish_reason: Some(f),
                extra: Map::new(),
            })
            .collect()
    })
}

fn submit() -> impl Strategy<Value = MinerSubmit> {
    let result = prop_oneof!["[a-z0-9.-]{1,40}".prop_map(SubmitResult::S3Key), choices().prop_map(|c| SubmitResult::from_choices(&c).unwrap())];
    let usage = proptest::option::of((any::<u64>(), any::<u64>()).prop_map(|(p, c)| TokenUsage { prompt_tokens: p, completion_tokens: c }));
    (miner_id(), "[a-z0-9-]{1,20}", result, latency(), nullable(), latency(), nullable(), signature(), address(), usage, extra()).prop_map(
        |(miner_id, job_id, result, request_latency, loading_latency, inference_latency, upload_latency, signature, identity_address, usage, extra)| {
            MinerSubmit {
                miner_id,
                job_id,
                result,
                request_latency,
                loading_latency,
                inference_latency,
                upload_latency,
                signature,
                identity_address,
                usage,
                extra,
            }
        },
    )
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    let bytes = serde_json::to_vec(value).unwrap();
    let back: T = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
    prop_assert_eq!(&back, value);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn miner_ids(id in miner_id()) {
        let s = id.to_string();
        prop_assert_eq!(&s, &s.to_string());
        prop_assert_eq!(MinerId::parse(&s).unwrap(), id.clone());
        prop_assert_eq!(MinerId::parse(&s.to_uppercase().replacen("0X", "0x", 1)).map(|i| i.reward_address().to_owned()).unwrap(), id.reward_address().to_owned());
        round_trip(&id)?;
    }

    #[test]
    fn jobs(job in job()) {
        round_trip(&job)?;
        let bytes = serde_json::to_vec(&job).unwrap();
        prop_assert_eq!(RequestAnswer::decode(200, &bytes).unwrap(), RequestAnswer::Job(Box::new(job)));
    }

    #[test]
    fn miner_requests(miner_id in miner_id(), model_id in "[A-Za-z0-9.-]{1,20}", min_deadline in proptest::option::of(any::<u64>()),
                      hw in proptest::option::of(text()), version in proptest::option::of("[a-z0-9.-]{1,10}"), extra in extra()) {
        round_trip(&MinerRequest { miner_id, model_id, min_deadline, hardware: hw, version, extra })?;
    }

    #[test]
    fn submissions(s in submit()) {
        round_trip(&s)?;
        if let Some(c) = s.result.choices() { c.unwrap(); }
    }

    #[test]
    fn signals(miner_id in miner_id(), sd in any::<bool>(), model_id in "[A-Za-z0-9.-]{1,20}", hw in proptest::option::of(text()),
               exclude in proptest::option::of(any::<bool>()), skip in proptest::option::of(any::<bool>()), extra in extra()) {
        let model_type = if sd { ModelKind::Sd } else { ModelKind::Llm };
        let options = exclude.map(|e| SignalOptions { exclude_sdxl: e, extra: Map::new() });
        round_trip(&MinerSignal { miner_id, model_type, model_id: model_id.clone(), hardware: hw, version: None, options, skip_update: skip, extra: extra.clone() })?;
        round_trip(&SignalAnswer { model_id: Some(model_id), extra })?;
    }

    #[test]
    fn client_jobs(job_id in "[a-z0-9-]{1,20}", model_id in "[A-Za-z0-9.-]{1,20}", input in model_input(), deadline in proptest::option::of(any::<u64>()),
                   priority in proptest::option::of(any::<i64>()), extra in extra()) {
        let model_type = Some(match input { ModelInput::Sd(_) => ModelKind::Sd, ModelInput::Llm(_) => ModelKind::Llm });
        round_trip(&SubmitJob { job_id, model_id, model_input: input, model_type, deadline, priority, extra })?;
    }

    #[test]
    fn stream_pieces_concatenate_to_the_text(words in proptest::collection::vec("[a-zé]{0,6}( {1,2})?", 0..20), cut in 1usize..7) {
        // Feed the text in arbitrary slices; the pieces concatenate to it (plus at most one
        // trailing space), each piece but none empty, each ending with a space.
        let text: String = words.concat();
        let mut c = WordChunker::new(Vec::<String>::new());
        let mut out = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(cut) {
            out.extend(c.push(&chunk.iter().collect::<String>()));
        }
        out.extend(c.finish());
        for p in &out { prop_assert!(p.ends_with(' ') && !p.is_empty()); }
        let joined = out.concat();
        prop_assert!(joined == text || joined == format!("{text} "), "{:?} vs {:?}", joined, text);
        let parsed = StreamedText::parse(&format!("{joined}[DONE]"));
        prop_assert!(parsed.complete);
        prop_assert_eq!(parsed.text, joined);
    }
}
