//! Chat jobs on a `heurist-inference` engine: the protocol's clamped job in, the
//! ChatCompletion `choices` array and token usage out.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, FinishReason, Role};
use heurist_protocol::openai::{self, Choice};
use heurist_protocol::stream::REFERENCE_STOP_STRINGS;
use heurist_protocol::LlmParams;

use crate::error::{MinerError, Result};

/// A chat engine shared by workers (and, in a sequencer, by an auditor), running one
/// generation at a time.
///
/// On a CPU each generation already uses every core through candle's thread pool, whose
/// threads spin while they wait; two generations at once only fight over the cores and both
/// get slower. Until batched decoding lands in the engine, one at a time is the fastest.
pub struct SharedEngine {
    engine: ChatEngine,
    gate: Mutex<()>,
}

impl SharedEngine {
    /// Wraps an engine.
    pub fn new(engine: ChatEngine) -> Self {
        Self { engine, gate: Mutex::new(()) }
    }

    /// The engine, for calls that do not generate (tokenizer, template).
    pub fn engine(&self) -> &ChatEngine {
        &self.engine
    }

    /// Waits for the engine's turn; generate on [`SharedEngine::engine`] while holding it.
    pub fn turn(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Generates, waiting for any generation in progress to end first.
    pub fn chat(&self, request: &ChatRequest) -> heurist_inference::Result<heurist_inference::ChatOutput> {
        let _turn = self.turn();
        self.engine.chat(request)
    }
}

/// What a chat job produced.
#[derive(Clone, Debug)]
pub struct ChatResult {
    /// The `choices` array.
    pub choices: Vec<Choice>,
    /// Tokens of the templated prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

fn role(r: openai::Role) -> Role {
    match r {
        openai::Role::System => Role::System,
        openai::Role::User => Role::User,
        openai::Role::Assistant => Role::Assistant,
        openai::Role::Tool => Role::Tool,
    }
}

/// The engine request for a clamped chat job: the reference's stop strings plus the job's.
pub fn request_for(params: &LlmParams) -> ChatRequest {
    let messages = params.payload.messages.iter().map(|m| ChatMessage::new(role(m.role), m.text_content())).collect();
    let mut stop: Vec<String> = REFERENCE_STOP_STRINGS.iter().map(|s| (*s).to_owned()).collect();
    if let Some(s) = &params.payload.sampling.stop {
        stop.extend(s.to_vec());
    }
    ChatRequest::new(messages)
        .with_max_tokens(params.max_tokens as usize)
        .with_sampling(params.temperature, Some(params.seed))
        .with_stop(stop)
}

/// Runs a chat job on a blocking thread (generation is CPU- or GPU-bound).
pub async fn run(engine: Arc<SharedEngine>, job_id: &str, params: &LlmParams) -> Result<ChatResult> {
    let request = request_for(params);
    let id = job_id.to_owned();
    let out = tokio::task::spawn_blocking(move || engine.chat(&request))
        .await
        .map_err(|e| MinerError::Unsupported { job_id: id.clone(), reason: format!("inference task died: {e}") })?
        .map_err(|error| MinerError::Inference { job_id: id, error: Box::new(error) })?;
    let finish = match out.finish_reason {
        FinishReason::Stop => openai::FinishReason::Stop,
        FinishReason::Length => openai::FinishReason::Length,
        FinishReason::ToolCalls => openai::FinishReason::ToolCalls,
    };
    Ok(ChatResult {
        choices: vec![Choice {
            index: 0,
            message: openai::ChatMessage::text(openai::Role::Assistant, out.text),
            finish_reason: Some(finish),
            extra: Default::default(),
        }],
        prompt_tokens: out.usage.prompt_tokens,
        completion_tokens: out.usage.completion_tokens,
    })
}
