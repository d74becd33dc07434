//! Chat jobs on a `heurist-inference` engine: the protocol's clamped job in, the
//! ChatCompletion `choices` array and token usage out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};

use heurist_inference::{ChatEngine, ChatEvent, ChatRequest, ChatServer, DeviceSpec, FinishReason};
use heurist_protocol::openai::{self, Choice};
use heurist_protocol::client::SequencerClient;
use heurist_protocol::{LlmParams, MinerId};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::error::{MinerError, Result};
use crate::discover::CacheFinder;
use crate::signal::ModelChoice;

/// The most chat jobs one engine decodes together. Each worker keeps up to the reference's
/// soft limit of 5 in flight; several workers (miner ids) share the engine.
pub const MAX_BATCH: usize = 8;

/// A chat engine shared by workers (and, in a sequencer, by an auditor), serving their jobs
/// together with continuous batching ([`ChatServer`]): jobs join the running batch between
/// decode steps, each with its own sampler and stop strings, and a job's tokens do not depend
/// on what shares the batch.
pub struct SharedEngine {
    engine: Arc<ChatEngine>,
    /// Started on the first job (starting it can fail: the error then belongs to that job).
    server: OnceLock<std::result::Result<ChatServer, String>>,
    gate: Mutex<()>,
}

impl SharedEngine {
    /// Wraps an engine.
    pub fn new(engine: ChatEngine) -> Self {
        Self { engine: Arc::new(engine), server: OnceLock::new(), gate: Mutex::new(()) }
    }

    /// The engine, for calls outside the server (tokenizer, template, a verifier's re-check).
    pub fn engine(&self) -> &ChatEngine {
        &self.engine
    }

    /// Serializes work run directly on [`SharedEngine::engine`] (an auditor's re-generation)
    /// with other such work; served jobs do not take it.
    pub fn turn(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The batching server, started on first use.
    fn server(&self, job_id: &str) -> Result<&ChatServer> {
        self.server
            .get_or_init(|| ChatServer::new(Arc::clone(&self.engine), MAX_BATCH).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| MinerError::Unsupported { job_id: job_id.to_owned(), reason: reason.clone() })
    }

    /// Generates on the server (blocking), joining the jobs already in flight.
    pub fn chat(&self, request: &ChatRequest) -> heurist_inference::Result<heurist_inference::ChatOutput> {
        match self.server("") {
            Ok(server) => server.submit(request.clone()).wait(),
            Err(_) => self.engine.chat(request),
        }
    }
}

/// The chat model the workers serve now, and the others `miner_signal` may switch them to.
///
/// Workers (one per miner id) share one of these, hence one engine and one [`ModelChoice`]:
/// when any worker's signal answer names a present model, all of them move. A worker that
/// sees the choice differ from the loaded model finishes its jobs in flight, then calls
/// [`ChatModels::switch`]; the first to get there loads the new engine, the others find it
/// loaded. Each job holds the engine it was requested for, so jobs another worker still has
/// in flight finish on the old engine, which is freed when the last of them ends.
pub struct ChatModels {
    loaded: RwLock<(String, Arc<SharedEngine>)>,
    device: DeviceSpec,
    /// What it may switch to, with the models' checked files (see [`ModelChoice::file`]).
    choice: Arc<ModelChoice>,
    loading: tokio::sync::Mutex<()>,
}

impl ChatModels {
    /// One model, never switched (the signal says so with `skip_update`).
    pub fn single(model_id: impl Into<String>, engine: Arc<SharedEngine>) -> Self {
        let model_id = model_id.into();
        Self::with_choice(model_id.clone(), engine, ModelChoice::pinned(model_id), DeviceSpec::Cpu)
    }

    /// Serves `model_id` on `engine` first; may switch to any model of `others` (model id to
    /// its checked GGUF file), loaded on `device` when asked for.
    pub fn switchable(
        model_id: impl Into<String>,
        engine: Arc<SharedEngine>,
        others: HashMap<String, PathBuf>,
        device: DeviceSpec,
    ) -> Self {
        let model_id = model_id.into();
        Self::with_choice(model_id.clone(), engine, ModelChoice::new(model_id.clone(), vec![model_id]).with_files(others), device)
    }

    /// [`ChatModels::switchable`], and also to any chat model `finder` finds in the model
    /// cache (checked against the registry) when a signal names it.
    pub fn discovering(
        model_id: impl Into<String>,
        engine: Arc<SharedEngine>,
        others: HashMap<String, PathBuf>,
        device: DeviceSpec,
        finder: Arc<CacheFinder>,
    ) -> Self {
        let model_id = model_id.into();
        let choice = ModelChoice::new(model_id.clone(), vec![model_id.clone()]).with_files(others).with_finder(finder);
        Self::with_choice(model_id, engine, choice, device)
    }

    /// Serves `model_id` on `engine`, switching as `choice` says; the choice's files load on
    /// `device`.
    pub fn with_choice(model_id: impl Into<String>, engine: Arc<SharedEngine>, choice: ModelChoice, device: DeviceSpec) -> Self {
        Self {
            choice: Arc::new(choice),
            loaded: RwLock::new((model_id.into(), engine)),
            device,
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// The choice the signal loops change.
    pub fn choice(&self) -> Arc<ModelChoice> {
        self.choice.clone()
    }

    /// The loaded model's id and engine: what a job requested now runs on.
    pub fn loaded(&self) -> (String, Arc<SharedEngine>) {
        self.loaded.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether the signal asked for a model other than the loaded one.
    pub fn wants_switch(&self) -> bool {
        self.choice.current() != self.loaded.read().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Loads the model the choice names, if it is not the loaded one. A model that fails to
    /// load is logged and the choice goes back to the loaded model, which keeps serving.
    pub async fn switch(&self) {
        let _one_at_a_time = self.loading.lock().await;
        let wanted = self.choice.current();
        let from = self.loaded().0;
        if wanted == from {
            return;
        }
        let loaded = match self.choice.file(&wanted) {
            Some(path) => {
                tracing::info!(from, to = wanted, file = %path.display(), "loading the chat model the signal asked for");
                let device = self.device;
                tokio::task::spawn_blocking(move || ChatEngine::load_gguf(&path, device))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            None => Err("no file for it".to_owned()),
        };
        match loaded {
            Ok(engine) => {
                *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = (wanted.clone(), Arc::new(SharedEngine::new(engine)));
                tracing::info!(model = wanted, "now serving");
            }
            Err(error) => {
                tracing::error!(model = wanted, error, "the chat model could not be loaded; staying on {from}");
                self.choice.fall_back(&from, &wanted);
            }
        }
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

/// The engine request for a clamped chat job: its messages (tool calls and results
/// included), tools, sampling parameters and `extra_body`, and the reference's stop strings
/// plus the job's. The verifier builds its re-run from the same function
/// ([`heurist_verify::llm::chat_request`]), so that an honest answer re-checks.
pub fn request_for(params: &LlmParams) -> heurist_inference::Result<ChatRequest> {
    heurist_verify::llm::chat_request(params)
}

/// The answer as the protocol's assistant message: with tool calls, the calls and the text
/// before them (none when blank, as vLLM's Hermes parser gives it).
fn answer_message(out: &heurist_inference::ChatOutput) -> openai::ChatMessage {
    let mut message = openai::ChatMessage::text(openai::Role::Assistant, out.text.clone());
    if !out.tool_calls.is_empty() {
        if out.text.trim().is_empty() {
            message.content = None;
        }
        message.tool_calls = Some(
            out.tool_calls
                .iter()
                .map(|c| openai::ToolCall {
                    id: c.id.clone(),
                    kind: c.kind.clone(),
                    function: openai::FunctionCall { name: c.function.name.clone(), arguments: c.function.arguments.clone() },
                })
                .collect(),
        );
    }
    message
}

/// Runs a chat job on the shared engine's server, waiting on a blocking thread.
pub async fn run(engine: Arc<SharedEngine>, job_id: &str, params: &LlmParams) -> Result<ChatResult> {
    run_inner(engine, job_id, params, None).await
}

/// Runs a chat job with `use_stream`: the answer goes to `miner_submit_stream` while it is
/// generated, the request opened once the first non-empty piece exists (as the reference
/// does) and ended with `[DONE]` when the answer is complete.
///
/// The stream is the live copy for the job's client; the signed `miner_submit` that the
/// worker spools and delivers afterwards stays the record (it alone carries the signature and
/// latencies, and the local sequencer credits a streamed job only through that submission, and
/// only when it agrees with the stream). So a stream that fails (the
/// sequencer down or refusing it mid-answer) costs nothing: it is logged and the answer is
/// delivered through the spool like any other.
pub async fn run_and_stream(
    engine: Arc<SharedEngine>,
    client: &SequencerClient,
    miner_id: &MinerId,
    job_id: &str,
    params: &LlmParams,
) -> Result<ChatResult> {
    let (pieces, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (client, miner, id) = (client.clone(), miner_id.clone(), job_id.to_owned());
    let streamer = tokio::spawn(async move {
        let first = loop {
            match receiver.recv().await {
                Some(piece) if !piece.is_empty() => break piece,
                Some(_) => continue,
                None => return None, // No text at all: nothing to stream.
            }
        };
        let body = Pieces { first: Some(first), rest: Mutex::new(receiver) };
        Some(client.submit_stream(&id, &miner, body).await)
    });
    let out = run_inner(engine, job_id, params, Some(pieces)).await;
    match streamer.await {
        Ok(Some(Ok(_))) => tracing::debug!(job_id, "answer streamed"),
        Ok(Some(Err(error))) => {
            tracing::warn!(job_id, %error, "streaming the answer failed; it is delivered by miner_submit");
        }
        Ok(None) => tracing::debug!(job_id, "empty answer: nothing streamed"),
        Err(error) => tracing::warn!(job_id, %error, "the stream task died; the answer is delivered by miner_submit"),
    }
    out
}

/// A streamed answer's pieces as the request body wants them (a `Sync` stream): the first
/// piece, then the rest as generation sends them; it ends when the answer is complete.
struct Pieces {
    first: Option<String>,
    // A lock only to make the receiver `Sync`; only the body's reader polls it.
    rest: Mutex<UnboundedReceiver<String>>,
}

impl futures_util::Stream for Pieces {
    type Item = String;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<String>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(first));
        }
        self.rest.get_mut().unwrap_or_else(PoisonError::into_inner).poll_recv(cx)
    }
}

/// [`run`], sending the answer's text to `pieces` while it is generated, in the word-sized
/// pieces `miner_submit_stream` carries (each ends with a space; text a stop string later cuts
/// is never sent). The channel closes when the answer is complete.
pub async fn run_streamed(
    engine: Arc<SharedEngine>,
    job_id: &str,
    params: &LlmParams,
    pieces: UnboundedSender<String>,
) -> Result<ChatResult> {
    run_inner(engine, job_id, params, Some(pieces)).await
}

async fn run_inner(
    engine: Arc<SharedEngine>,
    job_id: &str,
    params: &LlmParams,
    pieces: Option<UnboundedSender<String>>,
) -> Result<ChatResult> {
    let id = job_id.to_owned();
    let request = request_for(params).map_err(|error| MinerError::Inference { job_id: id.clone(), error: Box::new(error) })?;
    let handle = match &pieces {
        Some(_) => engine.server(job_id)?.submit_stream(request),
        None => engine.server(job_id)?.submit(request),
    };
    // The handle lives on the blocking thread: if this future is dropped, the thread still
    // reads the answer to its end (dropping the handle there would cancel the job).
    let out = tokio::task::spawn_blocking(move || {
        let mut open_word = false;
        while let Some(event) = handle.recv() {
            match event {
                ChatEvent::Text(piece) => {
                    if let Some(pieces) = &pieces {
                        open_word = !piece.ends_with(' ');
                        // A closed receiver only means nobody streams the rest.
                        let _ = pieces.send(piece);
                    }
                }
                ChatEvent::Done(result) => {
                    // The protocol's pieces all end with a space, the last one too (the
                    // reference adds one); chunking does not matter on the wire.
                    if let Some(pieces) = pieces.as_ref().filter(|_| open_word) {
                        let _ = pieces.send(" ".to_owned());
                    }
                    return result;
                }
            }
        }
        Err(heurist_inference::InferenceError::ServerStopped)
    })
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
            message: answer_message(&out),
            finish_reason: Some(finish),
            extra: Default::default(),
        }],
        prompt_tokens: out.usage.prompt_tokens,
        completion_tokens: out.usage.completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use heurist_inference::{ChatOutput, FunctionCall, Timings, ToolCall, Usage};

    use super::*;

    fn output(text: &str, tool_calls: Vec<ToolCall>) -> ChatOutput {
        ChatOutput {
            text: text.into(),
            tool_calls,
            token_ids: Vec::new(),
            finish_reason: FinishReason::ToolCalls,
            usage: Usage { prompt_tokens: 1, completion_tokens: 1 },
            timings: Timings { time_to_first_token: Default::default(), decode: Default::default() },
        }
    }

    #[test]
    fn tool_calls_reach_the_submitted_message() {
        let call = ToolCall {
            id: "call_0".into(),
            kind: "function".into(),
            function: FunctionCall { name: "get_weather".into(), arguments: r#"{"city": "Paris"}"#.into() },
        };
        let m = answer_message(&output("", vec![call.clone()]));
        assert_eq!(m.content, None, "a blank content before the calls is null, as vLLM sends it");
        let calls = m.tool_calls.unwrap();
        assert_eq!((calls[0].id.as_str(), calls[0].function.name.as_str()), ("call_0", "get_weather"));
        assert_eq!(calls[0].function.arguments, r#"{"city": "Paris"}"#);
        let m = answer_message(&output("Let me check.", vec![call]));
        assert_eq!(m.text_content(), "Let me check.");
        assert_eq!(m.tool_calls.map(|c| c.len()), Some(1));
        let plain = answer_message(&output("Paris.", Vec::new()));
        assert_eq!((plain.text_content().as_str(), plain.tool_calls), ("Paris.", None));
    }
}
