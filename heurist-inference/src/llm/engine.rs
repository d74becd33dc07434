//! The chat engine: a loaded model, its tokenizer and chat template, and the generation loop.
//!
//! One request runs: validate → render the template → tokenize (no BOS added; the template
//! writes it) → check it fits the context → one forward pass over the prompt → then per step
//! choose a token, tell the observer, stop on an end-of-generation token, a stop string,
//! `max_tokens` or a full context, else feed the token back. Each request clones the model
//! value, which shares the weights and owns a fresh KV cache, so `chat` takes `&self` and a
//! request's tokens do not depend on any other request. [`ChatEngine::score`] runs the
//! completion given (teacher forcing) through the model and reports each token's
//! log-probability: on the CPU body in one forward pass, with logits bitwise equal to
//! generation's.
//!
//! The per-request state of that loop lives in `generation.rs`, so that the batching server
//! ([`crate::ChatServer`]), which runs many requests' steps together, drives exactly the same
//! steps; [`ChatEngine::chat_stream`] hands the text out while it grows (`stream.rs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::device::DeviceSpec;
use crate::error::{InferenceError, Result};
use crate::llm::hf_config::HfConfig;
use crate::llm::hf_tokenizer::{self, TemplateSources};
use crate::llm::model::{CausalLm, ComputeDType, GgufBody};
use crate::llm::generation::{Generation, Next};
use crate::llm::observer::{HiddenStates, NoObserver, TokenEvent, TokenObserver};
use crate::llm::request::{ChatMessage, ChatOutput, ChatRequest, Usage};
use crate::llm::cpu_llama::ScoredRows;
use crate::llm::sampler::{log_prob, log_prob_given};
use crate::llm::stream::WordPieces;
use crate::llm::template::ChatTemplate;
use crate::llm::tokenizer::Tokenizer;
use crate::weights::gguf::GgufFile;
use crate::weights::safetensors::SafetensorsWeights;

/// A chat model ready to serve requests.
#[derive(Debug)]
pub struct ChatEngine {
    model: CausalLm,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    device: candle_core::Device,
    context_length: usize,
    source: PathBuf,
}

impl ChatEngine {
    /// Loads a GGUF chat model (llama architecture) with the tokenizer and chat template from
    /// its metadata.
    pub fn load_gguf(path: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        Self::load_gguf_with(path, device, GgufBody::Auto)
    }

    /// [`ChatEngine::load_gguf`] on the body `body` names.
    ///
    /// ```no_run
    /// use heurist_inference::{ChatEngine, DeviceSpec, GgufBody};
    /// // candle's quantized llama: the same model on other kernels.
    /// let engine = ChatEngine::load_gguf_with("model.Q4_1.gguf", DeviceSpec::Cpu, GgufBody::Candle)?;
    /// # Ok::<(), heurist_inference::InferenceError>(())
    /// ```
    pub fn load_gguf_with(path: impl AsRef<Path>, device: DeviceSpec, body: GgufBody) -> Result<Self> {
        let path = path.as_ref();
        let device = device.open()?;
        let started = Instant::now();
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let template_source = gguf
            .opt_str("tokenizer.chat_template")?
            .ok_or_else(|| InferenceError::MissingChatTemplate { path: path.to_path_buf() })?
            .to_owned();
        let mut template =
            ChatTemplate::new(template_source, tokenizer.bos_text(), tokenizer.eos_text())?;
        // llama.cpp's converter writes a named template list as `tokenizer.chat_template.NAME`.
        if let Some(tool_use) = gguf.opt_str("tokenizer.chat_template.tool_use")? {
            template = template.with_tool_use(tool_use.to_owned())?;
        }
        let loaded = CausalLm::load_gguf(gguf, &device, body)?;
        tracing::info!(
            path = %path.display(),
            device = ?device,
            context_length = loaded.context_length,
            vocab_size = tokenizer.vocab_size(),
            load_ms = started.elapsed().as_millis() as u64,
            "loaded GGUF chat model"
        );
        Ok(Self {
            model: loaded.model,
            tokenizer,
            template,
            device,
            context_length: loaded.context_length,
            source: path.to_path_buf(),
        })
    }

    /// Loads a Hugging Face model directory: `config.json` (Llama, Mistral or Mixtral),
    /// `model.safetensors` or the shards `model.safetensors.index.json` lists (f32, f16 or
    /// bf16, memory-mapped), `tokenizer.json`, and the chat template from
    /// `tokenizer_config.json`; computing in f32 on the CPU and in the checkpoint's dtype on a
    /// GPU ([`ComputeDType::Auto`]; [`ChatEngine::load_safetensors_with`] chooses).
    ///
    /// Every tensor the config implies is checked (name, shape, dtype) before any is loaded.
    /// The model runs on this crate's candle decoder, which applies Mistral's and Mixtral's
    /// sliding window in every step as transformers does, so the context is the trained
    /// length (`max_position_embeddings`).
    pub fn load_safetensors(dir: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        Self::load_safetensors_with(dir, device, ComputeDType::Auto)
    }

    /// [`ChatEngine::load_safetensors`], computing in `compute` (the weights converted as they
    /// load; f32 widens a bf16 or f16 checkpoint exactly).
    pub fn load_safetensors_with(dir: impl AsRef<Path>, device: DeviceSpec, compute: ComputeDType) -> Result<Self> {
        let dir = dir.as_ref();
        let device = device.open()?;
        let started = Instant::now();
        let config = HfConfig::load(&dir.join("config.json"))?;
        let (tokenizer, sources) = hf_tokenizer::load(dir, &config.eos_token_ids(), config.vocab_size())?;
        let template = template_from(sources, &tokenizer)?
            .ok_or_else(|| InferenceError::MissingChatTemplate { path: dir.join("tokenizer_config.json") })?;
        let weights = SafetensorsWeights::open(dir)?;
        let loaded = CausalLm::load_safetensors(&config, weights, &device, compute)?;
        tracing::info!(
            dir = %dir.display(),
            architecture = ?config.architecture,
            device = ?device,
            compute = ?compute,
            context_length = loaded.context_length,
            vocab_size = tokenizer.vocab_size(),
            load_ms = started.elapsed().as_millis() as u64,
            "loaded safetensors chat model"
        );
        Ok(Self {
            model: loaded.model,
            tokenizer,
            template,
            device,
            context_length: loaded.context_length,
            source: dir.to_path_buf(),
        })
    }

    /// Replaces the tokenizer with the Hugging Face `tokenizer.json` in `dir` (and the chat
    /// template with `tokenizer_config.json`'s, when that file has one), for a GGUF file whose
    /// own vocabulary or template is not the one to use.
    pub fn with_tokenizer_dir(mut self, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let eos = [self.tokenizer.eos_token_id()];
        let (tokenizer, sources) = hf_tokenizer::load(dir, &eos, self.tokenizer.vocab_size())?;
        if let Some(template) = template_from(sources, &tokenizer)? {
            self.template = template;
        }
        self.tokenizer = tokenizer;
        Ok(self)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Positions a prompt and its completion may occupy together.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The loaded body (a clone has its own, empty cache) and the candle device it runs on.
    pub(crate) fn body(&self) -> (&CausalLm, &candle_core::Device) {
        (&self.model, &self.device)
    }

    /// The file (GGUF) or directory (safetensors) the model came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The prompt text the model sees for `messages`, ending where the assistant's reply begins.
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        self.template.render(messages, true)
    }

    /// Answers `request`.
    pub fn chat(&self, request: &ChatRequest) -> Result<ChatOutput> {
        self.chat_with_observer(request, &mut NoObserver)
    }

    /// Answers `request`, calling `observer` once per generated token.
    pub fn chat_with_observer(
        &self,
        request: &ChatRequest,
        observer: &mut dyn TokenObserver,
    ) -> Result<ChatOutput> {
        self.generate(request, observer, None)
    }

    /// Answers `request`, handing its text to `on_text` while it is generated, in word-sized
    /// pieces (each ends with a space, except perhaps the last).
    ///
    /// Text that a stop string may still cut is held back until the following tokens show it
    /// is not one, so everything handed out stays in the answer: the pieces concatenated are
    /// [`ChatOutput::text`] (when the request has no tools; with tools, the text before the
    /// tool calls are parsed out of it).
    pub fn chat_stream(&self, request: &ChatRequest, on_text: &mut dyn FnMut(&str)) -> Result<ChatOutput> {
        self.generate(request, &mut NoObserver, Some(on_text))
    }

    /// [`ChatEngine::chat_stream`] calling `observer` once per generated token as well.
    pub fn chat_stream_with_observer(
        &self,
        request: &ChatRequest,
        observer: &mut dyn TokenObserver,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatOutput> {
        self.generate(request, observer, Some(on_text))
    }

    /// The generation loop of one request on its own model clone (see [`Generation`]).
    fn generate(
        &self,
        request: &ChatRequest,
        observer: &mut dyn TokenObserver,
        mut on_text: Option<&mut dyn FnMut(&str)>,
    ) -> Result<ChatOutput> {
        let mut generation = Generation::new(self, request, observer.hidden_layers())?;
        let mut pieces = WordPieces::new(&request.stop);
        let mut session = Session::new(self, generation.hidden_layers());
        let mut logits = session.prefill(generation.prompt_ids())?;
        let finish_reason = loop {
            let next = generation.advance(&self.tokenizer, &logits, &session.hidden, observer)?;
            if let Some(on_text) = on_text.as_mut() {
                pieces.ready(generation.text()).iter().for_each(|p| on_text(p));
            }
            match next {
                Next::Done(reason) => break reason,
                Next::Feed { token_id, position } => {
                    logits = session.step(token_id, position - generation.prompt_ids().len())?;
                }
            }
        };
        generation.end();
        if let Some(on_text) = on_text.as_mut() {
            pieces.finish(generation.text()).iter().for_each(|p| on_text(p));
        }
        Ok(generation.into_output(finish_reason))
    }

    /// Teacher-forced scoring: the log-probability of each token of `completion` as the
    /// assistant's reply to `messages`, calling `observer` once per completion token with the
    /// logits it was scored under (and the hidden states at the observer's
    /// [`TokenObserver::hidden_layers`], as generation would give them).
    ///
    /// This is how a verifier checks a claimed completion, and how the tests compare logits with
    /// llama.cpp at every step without one near-tie derailing the rest. On the CPU body the
    /// prompt and the completion (but its last token) run in ONE forward pass, and the
    /// vocabulary projection runs for the completion's positions only: the logits are bitwise
    /// those generation saw (same kernels, same sums), at prefill speed rather than decode
    /// speed. The other bodies (candle's quantized llama, the safetensors decoder) return the
    /// last position's logits only, so there the prompt runs in one pass and the completion
    /// tokens are fed one at a time, the way generation feeds them. Hidden states asked for
    /// in the one-pass case are all held until the pass ends (completion length × layers ×
    /// hidden size values).
    pub fn score(
        &self,
        messages: &[ChatMessage],
        completion: &[u32],
        observer: &mut dyn TokenObserver,
    ) -> Result<ScoreOutput> {
        self.score_with_tools(messages, None, completion, observer)
    }

    /// [`ChatEngine::score`] of a completion to `request`, its prompt rendered as generation
    /// renders it: with the request's `tools` passed to the template (a model's `tool_use`
    /// template when it has one). What a verifier scores a job's answer with.
    pub fn score_request(
        &self,
        request: &ChatRequest,
        completion: &[u32],
        observer: &mut dyn TokenObserver,
    ) -> Result<ScoreOutput> {
        self.score_with_tools(&request.messages, request.tools.as_deref(), completion, observer)
    }

    /// The token ids of `request`'s templated prompt, as generation feeds them (the history a
    /// repetition penalty looks at, for one).
    pub fn prompt_token_ids(&self, request: &ChatRequest) -> Result<Vec<u32>> {
        if request.messages.is_empty() {
            return Err(InferenceError::EmptyMessages);
        }
        self.prompt_ids_with_tools(&request.messages, request.tools.as_deref(), 0)
    }

    fn score_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&str>,
        completion: &[u32],
        observer: &mut dyn TokenObserver,
    ) -> Result<ScoreOutput> {
        if messages.is_empty() {
            return Err(InferenceError::EmptyMessages);
        }
        for &token_id in completion {
            self.tokenizer.token_bytes(token_id)?;
        }
        let prompt_ids = self.prompt_ids_with_tools(messages, tools, completion.len().saturating_sub(1))?;
        self.score_ids(&prompt_ids, completion, observer)
    }

    /// [`ChatEngine::score`] of `completion` after `prompt_ids` as they are (no chat template):
    /// for scoring an answer in another context than its job's, such as
    /// [`ChatEngine::answer_header_ids`] alone.
    ///
    /// A prompt and completion that do not fit the context are
    /// [`InferenceError::PromptTooLong`].
    pub fn score_after_ids(
        &self,
        prompt_ids: &[u32],
        completion: &[u32],
        observer: &mut dyn TokenObserver,
    ) -> Result<ScoreOutput> {
        for &token_id in prompt_ids.iter().chain(completion) {
            self.tokenizer.token_bytes(token_id)?;
        }
        let fed = prompt_ids.len() + completion.len().saturating_sub(1);
        if prompt_ids.is_empty() || fed >= self.context_length {
            return Err(InferenceError::PromptTooLong { prompt_tokens: fed, context_length: self.context_length });
        }
        self.score_ids(prompt_ids, completion, observer)
    }

    /// The tokens the chat template puts between a user's message and the assistant's answer
    /// (ChatML's `<|im_end|>\n<|im_start|>assistant\n`): a context that asks nothing, for
    /// comparing an answer's likelihood with and without its question.
    pub fn answer_header_ids(&self) -> Result<Vec<u32>> {
        const MARK: &str = "\u{2063}heurist-question\u{2063}";
        let rendered = self.template.render_with_tools(&[ChatMessage::user(MARK)], None, true)?;
        match rendered.find(MARK) {
            Some(at) => self.tokenizer.encode(&rendered[at + MARK.len()..]),
            None => self.tokenizer.encode(&self.template.render_with_tools(&[ChatMessage::user("")], None, true)?),
        }
    }

    fn score_ids(&self, prompt_ids: &[u32], completion: &[u32], observer: &mut dyn TokenObserver) -> Result<ScoreOutput> {
        let layers = observer.hidden_layers().to_vec();
        self.model.check_hidden_layers(&layers)?;
        let usage = Usage { prompt_tokens: prompt_ids.len(), completion_tokens: completion.len() };
        let mut log_probs = Vec::with_capacity(completion.len());
        let mut session = Session::new(self, &layers);
        if let Some((_, fed)) = completion.split_last() {
            let tokens: Vec<u32> = prompt_ids.iter().chain(fed).copied().collect();
            let mut each = |rows: ScoredRows<'_>| {
                let mut events = Vec::with_capacity(rows.len());
                let per_row = rows.hidden.len() / rows.len().max(1);
                for j in 0..rows.len() {
                    let index = rows.first + j;
                    let token_id = completion[index];
                    let logits = &rows.logits[j * rows.vocab..(j + 1) * rows.vocab];
                    let lp = log_prob_given(logits, token_id, rows.log_norms[j]);
                    let hidden_states = HiddenStates::new(&layers, &rows.hidden[j * per_row..(j + 1) * per_row]);
                    events.push(TokenEvent { index, token_id, log_prob: lp, logits, hidden_states });
                    log_probs.push(lp);
                }
                observer.on_tokens(&events);
            };
            if let Some(done) = session.model.forward_positions(&tokens, 0, completion.len(), &layers, &mut each) {
                done.map_err(|source| InferenceError::Forward {
                    step: format!("scoring pass of {} tokens", tokens.len()),
                    source,
                })?;
                return Ok(ScoreOutput { log_probs, usage });
            }
        }
        let mut logits = session.prefill(prompt_ids)?;
        for (index, &token_id) in completion.iter().enumerate() {
            let lp = log_prob(&logits, token_id);
            let hidden_states = HiddenStates::new(&layers, &session.hidden);
            observer.on_token(&TokenEvent { index, token_id, log_prob: lp, logits: &logits, hidden_states });
            log_probs.push(lp);
            if index + 1 < completion.len() {
                logits = session.step(token_id, index)?;
            }
        }
        Ok(ScoreOutput { log_probs, usage })
    }

    /// Renders and tokenizes `messages` (with OpenAI `tools` passed to the template), checking
    /// that the prompt plus `reserve` more fed tokens fit the context.
    pub(crate) fn prompt_ids_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&str>,
        reserve: usize,
    ) -> Result<Vec<u32>> {
        let prompt = self.template.render_with_tools(messages, tools, true)?;
        let prompt_ids = self.tokenizer.encode(&prompt)?;
        if prompt_ids.len() + reserve >= self.context_length {
            return Err(InferenceError::PromptTooLong {
                prompt_tokens: prompt_ids.len() + reserve,
                context_length: self.context_length,
            });
        }
        Ok(prompt_ids)
    }
}

/// The chat template of a model directory, with its `tool_use` variant when it names one;
/// `None` without a default template.
fn template_from(sources: TemplateSources, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let Some(default) = sources.default else { return Ok(None) };
    let template = ChatTemplate::new(default, tokenizer.bos_text(), tokenizer.eos_text())?;
    Ok(Some(match sources.tool_use {
        Some(tool_use) => template.with_tool_use(tool_use)?,
        None => template,
    }))
}

/// The result of [`ChatEngine::score`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutput {
    /// `log softmax(logits)[token]` for each completion token, in order.
    pub log_probs: Vec<f32>,
    /// Prompt and completion token counts.
    pub usage: Usage,
}

/// One request's model state: its own KV cache and position, and the hidden states of the
/// last position run at the layers asked for.
struct Session<'e> {
    engine: &'e ChatEngine,
    model: CausalLm,
    prompt_len: usize,
    layers: Vec<usize>,
    hidden: Vec<f32>,
}

impl<'e> Session<'e> {
    fn new(engine: &'e ChatEngine, layers: &[usize]) -> Self {
        // A clone shares the weights and starts with an empty cache.
        Self { engine, model: engine.model.clone(), prompt_len: 0, layers: layers.to_vec(), hidden: Vec::new() }
    }

    /// Runs the prompt; returns the logits for the first completion token.
    fn prefill(&mut self, prompt_ids: &[u32]) -> Result<Vec<f32>> {
        self.prompt_len = prompt_ids.len();
        self.model
            .forward_last_tapped(prompt_ids, 0, &self.engine.device, &self.layers, &mut self.hidden)
            .map_err(|source| InferenceError::Forward { step: format!("prefill of {} tokens", prompt_ids.len()), source })
    }

    /// Feeds completion token `index`; returns the logits for the next one.
    fn step(&mut self, token_id: u32, index: usize) -> Result<Vec<f32>> {
        self.model
            .forward_last_tapped(&[token_id], self.prompt_len + index, &self.engine.device, &self.layers, &mut self.hidden)
            .map_err(|source| InferenceError::Forward { step: format!("decode step {index}"), source })
    }
}
