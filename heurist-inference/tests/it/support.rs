//! Shared by the test modules: the SmolLM2 engine (loaded once per test binary) and the
//! llama.cpp fixture.

use std::sync::OnceLock;

use heurist_inference::{ChatEngine, ChatMessage, DeviceSpec, smollm2_path};
use serde::Deserialize;

/// The llama.cpp reference runs, made by tools/make_llama_cpp_fixtures.py.
#[derive(Debug, Deserialize)]
pub(crate) struct Fixture {
    pub(crate) chat_template: String,
    pub(crate) cases: Vec<Case>,
}

/// One chat prompt as llama.cpp rendered, tokenized and continued it.
#[derive(Debug, Deserialize)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) messages: serde_json::Value,
    pub(crate) rendered_prompt: String,
    pub(crate) prompt_token_ids: Vec<u32>,
    pub(crate) completion_token_ids: Vec<u32>,
    pub(crate) completion_text: String,
    pub(crate) top_token_ids: Vec<Vec<u32>>,
    pub(crate) top_logits: Vec<Vec<f32>>,
    pub(crate) kv_f32: Run,
}

/// The same greedy run with llama.cpp's KV cache in f32.
#[derive(Debug, Deserialize)]
pub(crate) struct Run {
    pub(crate) completion_token_ids: Vec<u32>,
    pub(crate) top_token_ids: Vec<Vec<u32>>,
    pub(crate) top_logits: Vec<Vec<f32>>,
}

impl Case {
    pub(crate) fn chat_messages(&self) -> Vec<ChatMessage> {
        ChatMessage::parse_list(&self.messages.to_string()).expect("fixture messages parse")
    }
}

pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let raw = include_str!("../fixtures/llama-cpp/smollm2_greedy.json");
        serde_json::from_str(raw).expect("fixture parses")
    })
}

pub(crate) fn engine() -> &'static ChatEngine {
    static ENGINE: OnceLock<ChatEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
        ChatEngine::load_gguf(&path, DeviceSpec::Cpu)
            .unwrap_or_else(|err| panic!("loading {}: {err}", path.display()))
    })
}

/// Held by every test that runs the model: candle's CPU kernels use all cores and spin while
/// waiting, so two forward passes at once on a 2-core machine are slower than one after the
/// other.
pub(crate) fn model_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
