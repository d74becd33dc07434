//! Bad input gets a typed error, never a panic: wrong, truncated or missing model files,
//! unknown roles, prompts past the context, `max_tokens` 0, a CUDA request in a
//! CPU-only build.

use std::io::Write;

use heurist_inference::{
    ChatEngine, ChatMessage, ChatRequest, DeviceSpec, InferenceError, smollm2_path,
};

use crate::support::engine;

fn load(bytes: &[u8]) -> InferenceError {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file.flush().expect("flush temp file");
    match ChatEngine::load_gguf(file.path(), DeviceSpec::Cpu) {
        Ok(_) => panic!("a bad file loaded"),
        Err(err) => err,
    }
}

fn model_bytes() -> Vec<u8> {
    std::fs::read(smollm2_path().unwrap_or_else(|err| panic!("{err}"))).expect("read the model")
}

#[test]
fn truncated_gguf_names_the_cut_tensor() {
    let bytes = model_bytes();
    // Cut inside the tensor data, near the end (where output/embedding-sized tensors sit).
    let err = load(&bytes[..bytes.len() - 1000]);
    match err {
        InferenceError::TruncatedFile { ref tensor, needed_bytes, actual_bytes, .. } => {
            assert!(!tensor.is_empty());
            assert_eq!(needed_bytes as usize, bytes.len());
            assert_eq!(actual_bytes as usize, bytes.len() - 1000);
        }
        other => panic!("expected TruncatedFile, got {other:?}"),
    }
    // Cut inside the header: a parse error, not a panic.
    assert!(matches!(load(&bytes[..5000]), InferenceError::MalformedGguf { .. }));
    // Cut right after the magic.
    assert!(matches!(load(&bytes[..4]), InferenceError::MalformedGguf { .. }));
}

#[test]
fn non_gguf_files_are_rejected_by_magic() {
    let err = load(b"{\"this is\": \"json\"}");
    assert!(matches!(err, InferenceError::NotGguf { ref found, .. } if found == b"{\"th"), "{err:?}");
    assert!(matches!(load(b""), InferenceError::NotGguf { ref found, .. } if found.is_empty()));
    let msg = load(b"PK\x03\x04zip").to_string();
    assert!(msg.contains("not a GGUF file"), "{msg}");
}

#[test]
fn missing_file_is_io_error() {
    let err = ChatEngine::load_gguf("/nonexistent/model.gguf", DeviceSpec::Cpu).unwrap_err();
    assert!(matches!(err, InferenceError::Io { .. }), "{err:?}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_request_without_the_feature_is_typed() {
    let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
    let err = ChatEngine::load_gguf(path, DeviceSpec::Cuda { ordinal: 0 }).unwrap_err();
    assert!(matches!(err, InferenceError::CudaNotCompiled { ordinal: 0 }), "{err:?}");
}

#[test]
fn unknown_role_is_typed() {
    let err = ChatMessage::parse_list(r#"[{"role":"narrator","content":"once upon a time"}]"#)
        .unwrap_err();
    assert!(matches!(err, InferenceError::UnknownRole { index: 0, ref role } if role == "narrator"));
}

#[test]
fn prompt_longer_than_the_context_is_typed() {
    let long = "word ".repeat(engine().context_length() + 10);
    let err = engine().chat(&ChatRequest::new(vec![ChatMessage::user(long)])).unwrap_err();
    match err {
        InferenceError::PromptTooLong { prompt_tokens, context_length } => {
            assert!(prompt_tokens > context_length);
            assert_eq!(context_length, engine().context_length());
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[test]
fn max_tokens_out_of_range_is_typed() {
    let messages = vec![ChatMessage::user("hi")];
    let err = engine().chat(&ChatRequest::new(messages).with_max_tokens(0)).unwrap_err();
    assert!(matches!(err, InferenceError::InvalidMaxTokens { max_tokens: 0 }), "{err:?}");
    assert!(err.to_string().contains("max_tokens 0"), "{err}");
}

/// Issue 26: the network's 4096 is the miner's limit (`MinerLimits::max_tokens`), not the
/// engine's; a request for 8192 tokens on a short prompt runs, the context length its only
/// bound. (Stop strings end it after a word or two, to keep the test short.)
#[test]
fn max_tokens_above_the_networks_4096_is_not_refused() {
    let _lock = crate::support::model_lock();
    let request = ChatRequest::new(vec![ChatMessage::user("Say hello.")])
        .with_max_tokens(8192)
        .with_stop([" ", "\n", ".", ","]);
    let out = engine()
        .chat(&request)
        .unwrap_or_else(|err| panic!("max_tokens 8192 refused: {err}"));
    assert!(out.usage.completion_tokens <= 8192, "{out:?}");
}

#[test]
fn empty_conversation_is_typed() {
    assert!(matches!(engine().chat(&ChatRequest::new(vec![])), Err(InferenceError::EmptyMessages)));
}
