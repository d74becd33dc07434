//! `heurist chat` end to end on SmolLM2: the ChatCompletion JSON, streamed text, typed errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Output;

use heurist_inference::{ChatEngine, ChatMessage, ChatOutput, ChatRequest, DeviceSpec, smollm2_path};

const MESSAGES: &str = r#"[{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": "Name three colours of the rainbow."}]"#;

fn heurist_chat(args: &[&str], stdin: &str) -> Output {
    let model = smollm2_path().unwrap_or_else(|e| panic!("{e}"));
    let mut all = vec!["chat", "--model", model.to_str().unwrap()];
    all.extend(args);
    crate::cli::heurist(&all, Some(stdin))
}

/// The same request answered in this process.
fn answer(request: ChatRequest) -> ChatOutput {
    let engine = ChatEngine::load_gguf(smollm2_path().unwrap(), DeviceSpec::Cpu).unwrap();
    engine.chat(&request).unwrap()
}

fn messages() -> Vec<ChatMessage> {
    ChatMessage::parse_list(MESSAGES).unwrap()
}

/// `--prompt-only` prints the prompt exactly as llama-cpp-python 0.3.36 rendered it from the
/// same GGUF's chat template (the fixture's `rendered_prompt`, with Jinja2), for every case.
#[test]
fn prompt_only_prints_the_rendered_prompt_as_llama_cpp_python_renders_it() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../heurist-inference/tests/fixtures/llama-cpp/smollm2_greedy.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let out = heurist_chat(&["--messages", "-", "--prompt-only"], &case["messages"].to_string());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8(out.stdout).unwrap(), case["rendered_prompt"].as_str().unwrap(), "{}", case["name"]);
    }
    let both = heurist_chat(&["--messages", "-", "--prompt-only", "--stream"], MESSAGES);
    assert!(!both.status.success(), "--prompt-only and --stream together are refused");
}

#[test]
fn prints_the_chat_completion_json() {
    let out = heurist_chat(&["--messages", "-", "--max-tokens", "12"], MESSAGES);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let completion: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = answer(ChatRequest::new(messages()).with_max_tokens(12));
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], want.text.as_str());
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(completion["usage"]["prompt_tokens"], want.usage.prompt_tokens);
    assert_eq!(completion["usage"]["completion_tokens"], 12);
    assert_eq!(completion["usage"]["total_tokens"], want.usage.prompt_tokens + 12);
}

#[test]
fn streams_the_text_with_sampling_and_stop_strings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.json");
    std::fs::write(&file, MESSAGES).unwrap();
    let args = [
        "--messages", file.to_str().unwrap(), "--max-tokens", "24", "--temperature", "0.8", "--top-p", "0.9",
        "--seed", "17", "--stop", "\n", "--stop", "zzz", "--stream",
    ];
    let out = heurist_chat(&args, "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut request = ChatRequest::new(messages()).with_max_tokens(24).with_sampling(0.8, Some(17)).with_stop(["\n", "zzz"]);
    request.top_p = 0.9;
    let want = answer(request);
    assert!(!want.text.is_empty());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}\n", want.text));
}

#[test]
fn bad_messages_and_settings_are_named() {
    let cases: [(&[&str], &str, &str); 7] = [
        (&["--messages", "-"], "[{\"role\": \"user\", \"content\": \"hi\"", "messages"),
        (&["--messages", "-"], r#"[{"role": "wizard", "content": "hi"}]"#, "wizard"),
        (&["--messages", "-"], "[]", "message"),
        (&["--messages", "-", "--max-tokens", "0"], MESSAGES, "max_tokens"),
        (&["--messages", "-", "--temperature", "-1"], MESSAGES, "temperature"),
        // --dtype is for safetensors directories; a GGUF runs its own kernels.
        (&["--messages", "-", "--dtype", "bf16"], MESSAGES, "--dtype"),
        (&["--messages", "-", "--dtype", "f8"], MESSAGES, "auto, f32, f16 or bf16"),
    ];
    for (args, stdin, named) in cases {
        let out = heurist_chat(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {stdin}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(named), "{args:?} {stdin}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = heurist_chat(&["--messages", "-", "--tokenizer", "/nonexistent/vocab.txt"], MESSAGES);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vocab.txt"));
}
