//! OpenAI `tools` through the engine: they reach the chat template (in the order sent) and
//! count in the prompt; a malformed `tools` is a typed error. The Hermes `<tool_call>` parsing
//! itself is unit-tested in `llm/tool_calls.rs` (a random-weight model does not call tools).

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, FinishReason, InferenceError};

/// A ChatML template with a Hermes-style tools preamble, written for this test.
const TEMPLATE: &str = "{% if tools %}<|im_start|>system\n<tools>{{ tools|tojson }}</tools><|im_end|>\n{% endif %}\
{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[test]
fn tools_reach_the_prompt() {
    let _guard = crate::support::model_lock();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformers/models/llama3");
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(&source).expect("fixture dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    let config_path = dir.path().join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("parse");
    config["chat_template"] = TEMPLATE.into();
    std::fs::write(&config_path, config.to_string()).expect("write");
    // The tiny vocabulary spells JSON nearly byte by byte: give the prompt room (RoPE tables
    // only; the weights do not depend on it).
    let model_config = dir.path().join("config.json");
    let mut model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model_config).expect("read")).expect("parse");
    model["max_position_embeddings"] = 512.into();
    std::fs::write(&model_config, model.to_string()).expect("write");
    let engine = ChatEngine::load_safetensors(dir.path(), DeviceSpec::Cpu).expect("loads");

    let tools = r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]"#;
    let plain = ChatRequest::new(vec![ChatMessage::user("Weather in Paris?")]).with_max_tokens(4);
    let with_tools = plain.clone().with_tools(tools);
    let a = engine.chat(&plain).expect("chat");
    let b = engine.chat(&with_tools).expect("chat with tools");
    let preamble = format!("<|im_start|>system\n<tools>{tools}</tools><|im_end|>\n");
    // Verbatim: keys in the order sent ("type" before "function"), Python's separators.
    let rendered = engine.template().render_with_tools(&plain.messages, Some(tools), true).expect("renders");
    assert!(rendered.starts_with(&preamble), "{rendered}");
    let preamble_tokens = engine.tokenizer().encode(&preamble).expect("encode").len();
    assert_eq!(b.usage.prompt_tokens, a.usage.prompt_tokens + preamble_tokens);
    // The random model writes no <tool_call>: a plain answer.
    assert!(b.tool_calls.is_empty());
    assert_ne!(b.finish_reason, FinishReason::ToolCalls);

    let err = engine.chat(&plain.with_tools(r#"{"name": "f"}"#)).expect_err("tools must be an array");
    assert!(matches!(err, InferenceError::InvalidTools { .. }), "{err:?}");
}
