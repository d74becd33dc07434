//! A chat job's engine request, built once for the miner that runs it and the verifier that
//! re-runs it: if the two built it differently, an honest answer would fail its check.

use heurist_inference::{ChatMessage, ChatRequest, FunctionCall, Role, SamplingOptions, ToolCall};
use heurist_protocol::LlmParams;
use heurist_protocol::openai::{self, StopSpec};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;

/// The engine request of a clamped chat job, as the reference miner hands it to vLLM: the
/// job's messages (with their tool calls, tool results and names), its `tools` (passed to the
/// chat template, which picks the model's tool-use template when there are any), `max_tokens`,
/// temperature and seed, the sampling parameters of its `extra_body` (`top_p`, `top_k`,
/// `min_p` and the three penalties; absent ones stay neutral), and the reference's stop
/// strings plus the job's own (empty ones dropped: they would end every answer at once).
///
/// A `top_k` below -1 is the engine's typed `InvalidSampling`; other values are range-checked
/// by the engine when the request runs, so a job with, say, `top_p: 7` fails with the
/// engine's typed error naming it.
///
/// ```
/// use heurist_protocol::{LlmInput, MinerLimits};
/// use heurist_verify::llm::chat_request;
///
/// let input: LlmInput = serde_json::from_value(serde_json::json!({
///     "prompt": r#"[{"role":"user","content":"Hi"}]"#,
///     "temperature": 0.7, "max_tokens": 64, "seed": 7,
///     "extra_body": r#"{"top_p": 0.9, "top_k": 40, "stop": ["END"]}"#,
/// })).unwrap();
/// let job = heurist_protocol::Job {
///     job_id: "j".into(), model_id: "dolphin-2.9-llama3-8b".into(),
///     model_input: heurist_protocol::ModelInput::Llm(input),
///     temp_credentials: None, extra: Default::default(),
/// };
/// let heurist_protocol::JobParams::Llm(params) = MinerLimits::default().clamp(&job, || 0).unwrap().params
/// else { unreachable!() };
/// let request = chat_request(&params).unwrap();
/// assert_eq!((request.top_p, request.top_k, request.seed), (0.9, 40, Some(7)));
/// assert!(request.stop.iter().any(|s| s == "END"));
/// ```
pub fn chat_request(params: &LlmParams) -> heurist_inference::Result<ChatRequest> {
    let payload = &params.payload;
    let messages = payload.messages.iter().map(engine_message).collect();
    let mut request = ChatRequest::new(messages)
        .with_max_tokens(params.max_tokens as usize)
        .with_sampling(params.temperature, Some(params.seed))
        .with_stop(REFERENCE_STOP_STRINGS);
    // The job's typed sampling options, with vLLM's conventions (top_k -1 or 0 = off; absent
    // options stay neutral; ranges are checked when the request runs).
    let sampling = &payload.sampling;
    request = request.with_sampling_options(SamplingOptions {
        top_p: sampling.top_p,
        top_k: sampling.top_k,
        min_p: sampling.min_p,
        repetition_penalty: sampling.repetition_penalty,
        presence_penalty: sampling.presence_penalty,
        frequency_penalty: sampling.frequency_penalty,
        stop: sampling.stop.as_ref().map(StopSpec::to_vec).unwrap_or_default(),
    })?;
    request.stop.retain(|s| !s.is_empty());
    if !payload.tools.is_empty() {
        // Serialising the typed tools cannot fail (strings and JSON values only).
        if let Ok(tools) = serde_json::to_string(&payload.tools) {
            request = request.with_tools(tools);
        }
    }
    Ok(request)
}

/// One wire message as the engine's: role, text (an array of parts joined, as vLLM joins
/// them), tool calls, the id of the call a tool message answers, and the name.
pub fn engine_message(m: &openai::ChatMessage) -> ChatMessage {
    let role = match m.role {
        openai::Role::System => Role::System,
        openai::Role::User => Role::User,
        openai::Role::Assistant => Role::Assistant,
        openai::Role::Tool => Role::Tool,
    };
    let mut message = ChatMessage::new(role, m.text_content());
    message.tool_calls = m.tool_calls.as_ref().map(|calls| {
        calls
            .iter()
            .map(|c| ToolCall {
                id: c.id.clone(),
                kind: c.kind.clone(),
                function: FunctionCall { name: c.function.name.clone(), arguments: c.function.arguments.clone() },
            })
            .collect()
    });
    message.tool_call_id = m.tool_call_id.clone();
    message.name = m.name.clone();
    message
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use heurist_protocol::{Job, LlmInput, MinerLimits, ModelInput};
    use heurist_inference::InferenceError;
    use serde_json::json;

    use super::*;

    fn params(input: serde_json::Value) -> LlmParams {
        let input: LlmInput = serde_json::from_value(input).unwrap();
        let job = Job {
            job_id: "j".into(),
            model_id: "openhermes-2-pro-mistral-7b".into(),
            model_input: ModelInput::Llm(input),
            temp_credentials: None,
            extra: Default::default(),
        };
        match MinerLimits::default().clamp(&job, || 0).unwrap().params {
            heurist_protocol::JobParams::Llm(p) => p,
            other => panic!("not a chat job: {other:?}"),
        }
    }

    #[test]
    fn a_tool_conversation_keeps_its_calls_results_and_tools() {
        let messages = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": "18 C"},
        ]);
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let request = chat_request(&params(json!({
            "prompt": messages.to_string(), "tools": tools.to_string(), "temperature": 0, "max_tokens": 32, "seed": 1,
        })))
        .unwrap();
        let m = &request.messages;
        assert_eq!(m.len(), 3);
        let calls = m[1].tool_calls.as_ref().unwrap();
        assert_eq!((calls[0].id.as_str(), calls[0].function.name.as_str()), ("call_0", "get_weather"));
        assert_eq!(calls[0].function.arguments, "{\"city\": \"Paris\"}");
        assert_eq!((m[2].role, m[2].tool_call_id.as_deref(), m[2].name.as_deref()), (Role::Tool, Some("call_0"), Some("get_weather")));
        let sent: serde_json::Value = serde_json::from_str(request.tools.as_deref().unwrap()).unwrap();
        assert_eq!(sent, tools);
    }

    #[test]
    fn extra_body_sampling_reaches_the_engine() {
        let base = json!({"prompt": "[{\"role\":\"user\",\"content\":\"Hi\"}]", "temperature": 0.8, "max_tokens": 16, "seed": 3});
        let plain = chat_request(&params(base.clone())).unwrap();
        let neutral = ChatRequest::new(Vec::new());
        assert_eq!((plain.top_p, plain.top_k, plain.min_p), (neutral.top_p, neutral.top_k, neutral.min_p));
        assert!(plain.tools.is_none());
        let mut with = base;
        with["extra_body"] = json!(json!({"top_p": 0.9, "top_k": -1, "min_p": 0.05, "repetition_penalty": 1.1,
            "frequency_penalty": 0.2, "presence_penalty": 0.3, "stop": ["", "END"]}).to_string());
        let r = chat_request(&params(with)).unwrap();
        assert_eq!((r.top_p, r.top_k, r.min_p), (0.9, 0, 0.05));
        assert_eq!((r.repetition_penalty, r.frequency_penalty, r.presence_penalty), (1.1, 0.2, 0.3));
        assert_eq!((r.temperature, r.seed, r.max_tokens), (0.8, Some(3), 16));
        assert_eq!(r.stop.last().map(String::as_str), Some("END"));
        assert!(!r.stop.iter().any(String::is_empty), "an empty stop string would end every answer");
        for s in REFERENCE_STOP_STRINGS {
            assert!(r.stop.iter().any(|x| x == s), "{s}");
        }
        // One stop string, not a list, as vLLM also takes it.
        let mut one = json!({"prompt": "[{\"role\":\"user\",\"content\":\"Hi\"}]", "temperature": 0.8, "max_tokens": 16, "seed": 3});
        one["extra_body"] = json!(json!({"stop": "FIN", "top_k": 7}).to_string());
        let r = chat_request(&params(one)).unwrap();
        assert_eq!((r.stop.last().map(String::as_str), r.top_k), (Some("FIN"), 7));
        // A negative count other than vLLM's -1 is refused, not read as "off".
        let mut bad = json!({"prompt": "[{\"role\":\"user\",\"content\":\"Hi\"}]", "temperature": 0.8, "max_tokens": 16, "seed": 3});
        bad["extra_body"] = json!(json!({"top_k": -5}).to_string());
        let err = chat_request(&params(bad)).unwrap_err();
        assert!(matches!(err, InferenceError::InvalidSampling { name: "top_k", .. }), "{err}");
    }
}
