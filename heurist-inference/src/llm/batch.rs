//! Continuous batching: one engine serving many chat requests at once.
//!
//! [`ChatServer`] owns a worker thread. Requests are submitted at any time from any thread;
//! each gets a [`ChatHandle`] to read its streamed text and its answer from. Between decode
//! steps the worker takes in new requests (up to `max_batch` in flight, the rest queue),
//! prefills each one's prompt on its own model clone (its own KV cache), and then runs one
//! decode step for every request in flight together. A request leaves the batch when it
//! finishes, fails, or its handle is dropped (cancellation).
//!
//! A request may bring its own [`TokenObserver`] ([`ChatServer::submit_with_observer`]), which
//! the worker calls with exactly the events (log-probabilities, logits, hidden states) that
//! [`ChatEngine::chat_with_observer`] gives for the request alone.
//!
//! Every request keeps its own sampler, seed, stop strings and `max_tokens`: the worker drives
//! the same [`Generation`] that [`ChatEngine::chat`] drives, and on the CPU body the batched
//! step gives each sequence bitwise the logits of its own single step
//! ([`crate::llm::cpu_llama`]'s `decode_batch`), so a request's tokens and text are those it
//! gets alone. Bodies that cannot batch (candle's, CUDA) run the batch's sequences one after
//! another inside the step. An error (a bad request, a failed forward pass) ends only the
//! request it belongs to.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{InferenceError, Result};
use crate::llm::cpu_llama::CpuLlama;
use crate::llm::engine::ChatEngine;
use crate::llm::generation::{Generation, Next};
use crate::llm::model::CausalLm;
use crate::llm::observer::{NoObserver, TokenObserver};
use crate::llm::request::{ChatOutput, ChatRequest};
use crate::llm::stream::WordPieces;

/// What a request's handle receives.
#[derive(Debug)]
pub enum ChatEvent {
    /// A word-sized piece of the answer's text (streamed requests only); see
    /// [`ChatEngine::chat_stream`] for what the pieces guarantee.
    Text(String),
    /// The answer, or why there is none; always the last event.
    Done(Result<ChatOutput>),
}

/// A chat engine serving concurrent requests with continuous batching.
///
/// ```no_run
/// # fn main() -> heurist_inference::Result<()> {
/// use std::sync::Arc;
/// use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, ChatServer, DeviceSpec};
///
/// let engine = Arc::new(ChatEngine::load_gguf("model.gguf", DeviceSpec::Cpu)?);
/// let server = ChatServer::new(engine, 8)?;
/// let handles: Vec<_> = ["Hi!", "What is 2 + 2?"]
///     .iter()
///     .map(|q| server.submit(ChatRequest::new(vec![ChatMessage::user(*q)]).with_max_tokens(32)))
///     .collect();
/// for handle in handles {
///     println!("{}", handle.wait()?.text);
/// }
/// server.shutdown();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ChatServer {
    submissions: Option<Sender<Submission>>,
    worker: Option<JoinHandle<()>>,
    engine: Arc<ChatEngine>,
    max_batch: usize,
}

impl ChatServer {
    /// Starts a server running at most `max_batch` requests in one decode step.
    pub fn new(engine: Arc<ChatEngine>, max_batch: usize) -> Result<Self> {
        if max_batch == 0 {
            return Err(InferenceError::InvalidBatchSize { max_batch });
        }
        let (submissions, inbox) = mpsc::channel();
        let worker_engine = Arc::clone(&engine);
        let worker = std::thread::Builder::new()
            .name("heurist-chat-server".into())
            .spawn(move || Worker::new(worker_engine, max_batch).run(&inbox))
            .map_err(|source| InferenceError::ServerThread { source })?;
        Ok(Self { submissions: Some(submissions), worker: Some(worker), engine, max_batch })
    }

    /// The engine the server runs on (for its tokenizer, template, context length).
    pub fn engine(&self) -> &Arc<ChatEngine> {
        &self.engine
    }

    /// The most requests decoded in one step.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Queues `request`; its handle receives only the answer.
    pub fn submit(&self, request: ChatRequest) -> ChatHandle {
        self.enqueue(request, false, Box::new(NoObserver))
    }

    /// Queues `request`; its handle receives the text in word-sized pieces as it is generated
    /// ([`ChatEvent::Text`]), then the answer.
    pub fn submit_stream(&self, request: ChatRequest) -> ChatHandle {
        self.enqueue(request, true, Box::new(NoObserver))
    }

    /// [`ChatServer::submit`] with `observer` called on the server's worker thread once per
    /// generated token, with the events [`ChatEngine::chat_with_observer`] would give for this
    /// request alone (bitwise the same log-probabilities and logits on the CPU body, whatever
    /// shares the batch). Its [`TokenObserver::hidden_layers`] are honoured; a body that cannot
    /// give them fails the request. The observer is dropped when the request ends: send what it
    /// gathers through a channel or keep it behind an `Arc`.
    pub fn submit_with_observer(&self, request: ChatRequest, observer: impl TokenObserver + Send + 'static) -> ChatHandle {
        self.enqueue(request, false, Box::new(observer))
    }

    /// [`ChatServer::submit_stream`] with an observer, as [`ChatServer::submit_with_observer`].
    pub fn submit_stream_with_observer(
        &self,
        request: ChatRequest,
        observer: impl TokenObserver + Send + 'static,
    ) -> ChatHandle {
        self.enqueue(request, true, Box::new(observer))
    }

    fn enqueue(&self, request: ChatRequest, stream: bool, observer: Box<dyn TokenObserver + Send>) -> ChatHandle {
        let (events, receiver) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let submission = Submission { request, stream, observer, events, cancelled: Arc::clone(&cancelled) };
        if let Some(submissions) = &self.submissions
            && let Err(mpsc::SendError(submission)) = submissions.send(submission)
        {
            // The worker is gone; the handle reports it.
            let _ = submission.events.send(ChatEvent::Done(Err(InferenceError::ServerStopped)));
        }
        ChatHandle { events: receiver, cancelled }
    }

    /// Stops taking requests, finishes those already submitted (queued ones included) and
    /// waits for the worker to end. Dropping the server does the same.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.submissions = None;
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!("the chat server's worker panicked");
        }
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One submitted request's side of the server: its streamed text and its answer. Dropping it
/// cancels the request (it leaves the batch before the next decode step).
#[derive(Debug)]
pub struct ChatHandle {
    events: Receiver<ChatEvent>,
    cancelled: Arc<AtomicBool>,
}

impl ChatHandle {
    /// The next event, waiting for it; `None` after [`ChatEvent::Done`] has been received.
    pub fn recv(&self) -> Option<ChatEvent> {
        self.events.recv().ok()
    }

    /// The next event if one comes within `timeout`; `Ok(None)` after the last one.
    ///
    /// # Errors
    /// `Err(())` when `timeout` passed first.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Option<ChatEvent>, ()> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Err(()),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
        }
    }

    /// Waits for the answer, skipping any streamed text.
    pub fn wait(self) -> Result<ChatOutput> {
        while let Ok(event) = self.events.recv() {
            if let ChatEvent::Done(result) = event {
                return result;
            }
        }
        Err(InferenceError::ServerStopped)
    }
}

impl Drop for ChatHandle {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

struct Submission {
    request: ChatRequest,
    stream: bool,
    observer: Box<dyn TokenObserver + Send>,
    events: Sender<ChatEvent>,
    cancelled: Arc<AtomicBool>,
}

/// A request in the batch: its generation state, its model clone (own KV cache), the token
/// to feed next, and its observer with the hidden states of the position run last.
struct Active {
    generation: Generation,
    model: CausalLm,
    token_id: u32,
    position: usize,
    observer: Box<dyn TokenObserver + Send>,
    hidden: Vec<f32>,
    pieces: Option<WordPieces>,
    events: Sender<ChatEvent>,
    cancelled: Arc<AtomicBool>,
}

impl Active {
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

struct Worker {
    engine: Arc<ChatEngine>,
    max_batch: usize,
    queue: VecDeque<Submission>,
    batch: Vec<Active>,
}

impl Worker {
    fn new(engine: Arc<ChatEngine>, max_batch: usize) -> Self {
        Self { engine, max_batch, queue: VecDeque::new(), batch: Vec::new() }
    }

    fn run(mut self, inbox: &Receiver<Submission>) {
        let mut open = true;
        loop {
            if self.batch.is_empty() && self.queue.is_empty() {
                // Idle: wait for work, or end once the server has been dropped.
                match inbox.recv() {
                    Ok(submission) => self.queue.push_back(submission),
                    Err(_) => return,
                }
            }
            while open {
                match inbox.try_recv() {
                    Ok(submission) => self.queue.push_back(submission),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.queue.retain(|s| !s.cancelled.load(Ordering::Relaxed));
            self.batch.retain(|a| !a.cancelled());
            while self.batch.len() < self.max_batch {
                let Some(submission) = self.queue.pop_front() else { break };
                self.admit(submission);
            }
            if !self.batch.is_empty() {
                self.decode_step();
            }
        }
    }

    /// Prefills a new request and chooses its first token.
    fn admit(&mut self, submission: Submission) {
        let Submission { request, stream, observer, events, cancelled } = submission;
        let mut hidden = Vec::new();
        let prefilled = Generation::new(&self.engine, &request, observer.hidden_layers()).and_then(|generation| {
            let (body, device) = self.engine.body();
            let mut model = body.clone();
            let prompt = generation.prompt_ids();
            let logits = model
                .forward_last_tapped(prompt, 0, device, generation.hidden_layers(), &mut hidden)
                .map_err(|source| InferenceError::Forward { step: format!("prefill of {} tokens", prompt.len()), source })?;
            Ok((generation, model, logits))
        });
        match prefilled {
            Ok((generation, model, logits)) => {
                let pieces = stream.then(|| WordPieces::new(&request.stop));
                let active =
                    Active { generation, model, token_id: 0, position: 0, observer, hidden, pieces, events, cancelled };
                if let Some(active) = self.advance(active, &logits) {
                    self.batch.push(active);
                }
            }
            Err(error) => {
                let _ = events.send(ChatEvent::Done(Err(error)));
            }
        }
    }

    /// One decode step for every request in the batch.
    fn decode_step(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let logits = self.forward(batch);
        for (active, logits) in logits {
            match logits {
                Ok(logits) => {
                    if let Some(active) = self.advance(active, &logits) {
                        self.batch.push(active);
                    }
                }
                Err(error) => {
                    let _ = active.events.send(ChatEvent::Done(Err(error)));
                }
            }
        }
    }

    /// Runs the batch's pending tokens: one batched step when every sequence is on the CPU
    /// body, else (or when the batched step fails) one sequence after another, so that an
    /// error belongs to the sequence that caused it. Each sequence's hidden states (if its
    /// observer wants some) land in its `hidden`.
    fn forward(&self, mut batch: Vec<Active>) -> Vec<(Active, Result<Vec<f32>>)> {
        let device = self.engine.body().1;
        let tokens: Vec<u32> = batch.iter().map(|a| a.token_id).collect();
        let positions: Vec<usize> = batch.iter().map(|a| a.position).collect();
        let tapped = batch.iter().any(|a| !a.generation.hidden_layers().is_empty());
        let layers: Vec<Vec<usize>> =
            if tapped { batch.iter().map(|a| a.generation.hidden_layers().to_vec()).collect() } else { Vec::new() };
        let layer_refs: Vec<&[usize]> = layers.iter().map(Vec::as_slice).collect();
        let mut hidden: Vec<Vec<f32>> =
            if tapped { batch.iter_mut().map(|a| std::mem::take(&mut a.hidden)).collect() } else { Vec::new() };
        let mut cpu: Vec<&mut CpuLlama> =
            batch.iter_mut().filter_map(|a| if let CausalLm::CpuLlama(m) = &mut a.model { Some(m) } else { None }).collect();
        if batch_len_matches(cpu.len(), tokens.len()) {
            match CpuLlama::decode_batch_tapped(&mut cpu, &tokens, &positions, &layer_refs, &mut hidden) {
                Ok(logits) => {
                    for (a, h) in batch.iter_mut().zip(hidden) {
                        a.hidden = h;
                    }
                    return batch.into_iter().zip(logits.into_iter().map(Ok)).collect();
                }
                Err(err) => tracing::warn!(%err, "batched decode step failed; running its sequences one by one"),
            }
        }
        batch
            .into_iter()
            .map(|mut a| {
                let Active { model, generation, hidden, token_id, position, .. } = &mut a;
                let logits = model
                    .forward_last_tapped(&[*token_id], *position, device, generation.hidden_layers(), hidden)
                    .map_err(|source| InferenceError::Forward {
                        step: format!("decode step {}", *position - generation.prompt_ids().len()),
                        source,
                    });
                (a, logits)
            })
            .collect()
    }

    /// Chooses the request's next token from `logits`, streams its new text, and returns it
    /// if it stays in the batch (else it has been answered, has failed or was cancelled).
    fn advance(&self, mut active: Active, logits: &[f32]) -> Option<Active> {
        let Active { generation, hidden, observer, .. } = &mut active;
        let next = match generation.advance(self.engine.tokenizer(), logits, hidden, observer.as_mut()) {
            Ok(next) => next,
            Err(error) => {
                let _ = active.events.send(ChatEvent::Done(Err(error)));
                return None;
            }
        };
        if let Some(pieces) = &mut active.pieces {
            for piece in pieces.ready(active.generation.text()) {
                if active.events.send(ChatEvent::Text(piece)).is_err() {
                    return None; // The handle is gone: nobody wants the rest.
                }
            }
        }
        match next {
            Next::Feed { token_id, position } => {
                active.token_id = token_id;
                active.position = position;
                (!active.cancelled()).then_some(active)
            }
            Next::Done(reason) => {
                let Active { mut generation, pieces, events, .. } = active;
                generation.end();
                if let Some(mut pieces) = pieces {
                    for piece in pieces.finish(generation.text()) {
                        let _ = events.send(ChatEvent::Text(piece));
                    }
                }
                let _ = events.send(ChatEvent::Done(Ok(generation.into_output(reason))));
                None
            }
        }
    }
}

/// Whether every sequence of the batch is on the CPU body (so one batched step can run).
fn batch_len_matches(cpu: usize, all: usize) -> bool {
    cpu == all && all > 0
}
