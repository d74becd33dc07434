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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::device::DeviceSpec;
use crate::error::{InferenceError, Result};
use crate::llm::detokenize::Utf8Stream;
use crate::llm::hf_config::HfConfig;
use crate::llm::hf_tokenizer;
use crate::llm::model::CausalLm;
use crate::llm::observer::{NoObserver, TokenEvent, TokenObserver};
use crate::llm::request::{ChatMessage, ChatOutput, ChatRequest, FinishReason, Timings, Usage};
use crate::llm::sampler::{Sampler, log_prob};
use crate::llm::stop::StopStrings;
use crate::llm::template::ChatTemplate;
use crate::llm::tokenizer::Tokenizer;
use crate::llm::tool_calls::split_tool_calls;
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
        let path = path.as_ref();
        let device = device.open()?;
        let started = Instant::now();
        let gguf = GgufFile::open(path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let template_source = gguf
            .opt_str("tokenizer.chat_template")?
            .ok_or_else(|| InferenceError::MissingChatTemplate { path: path.to_path_buf() })?
            .to_owned();
        let template =
            ChatTemplate::new(template_source, tokenizer.bos_text(), tokenizer.eos_text())?;
        let loaded = CausalLm::load_gguf(gguf, &device)?;
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
    /// bf16, memory-mapped, run in that dtype), `tokenizer.json`, and the chat template from
    /// `tokenizer_config.json`.
    ///
    /// Every tensor the config implies is checked (name, shape, dtype) before any is loaded.
    /// Mistral's and Mixtral's context is capped at their sliding window (see
    /// [`ChatEngine::context_length`]).
    pub fn load_safetensors(dir: impl AsRef<Path>, device: DeviceSpec) -> Result<Self> {
        let dir = dir.as_ref();
        let device = device.open()?;
        let started = Instant::now();
        let config = HfConfig::load(&dir.join("config.json"))?;
        let (tokenizer, template_source) =
            hf_tokenizer::load(dir, &config.eos_token_ids(), config.vocab_size())?;
        let template_source = template_source.ok_or_else(|| InferenceError::MissingChatTemplate {
            path: dir.join("tokenizer_config.json"),
        })?;
        let template =
            ChatTemplate::new(template_source, tokenizer.bos_text(), tokenizer.eos_text())?;
        let weights = SafetensorsWeights::open(dir)?;
        let loaded = CausalLm::load_safetensors(&config, weights, &device)?;
        tracing::info!(
            dir = %dir.display(),
            architecture = ?config.architecture,
            device = ?device,
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
        request.validate()?;
        let prompt_ids = self.prompt_ids_with_tools(&request.messages, request.tools.as_deref(), 0)?;
        // Token k of the completion is fed at position prompt + k, so the context bounds
        // the count as well as max_tokens does.
        let budget = request.max_tokens.min(self.context_length - prompt_ids.len());

        let mut sampler = Sampler::new(request.sampling(), request.seed, &prompt_ids);
        let stops = StopStrings::new(&request.stop);
        let mut utf8 = Utf8Stream::default();
        let mut text = String::new();
        let mut token_ids = Vec::new();

        let started = Instant::now();
        let mut session = Session::new(self);
        let mut logits = session.prefill(&prompt_ids)?;
        let mut first_token_at: Option<Instant> = None;
        let mut stopped_by_string = false;
        let finish_reason = loop {
            let index = token_ids.len();
            let token_id =
                sampler.sample(&logits).ok_or(InferenceError::InvalidLogits { step: index })?;
            first_token_at.get_or_insert_with(Instant::now);
            observer.on_token(&TokenEvent {
                index,
                token_id,
                log_prob: log_prob(&logits, token_id),
                logits: &logits,
            });
            token_ids.push(token_id);

            if self.tokenizer.is_end_of_generation(token_id) {
                break FinishReason::Stop;
            }
            if !self.tokenizer.is_control(token_id)? {
                let before = text.len();
                text.push_str(&utf8.push(self.tokenizer.token_bytes(token_id)?));
                if let Some(at) = stops.find(&text, before) {
                    text.truncate(at);
                    stopped_by_string = true;
                    break FinishReason::Stop;
                }
            }
            if token_ids.len() >= budget {
                break FinishReason::Length;
            }
            logits = session.step(token_id, index)?;
        };
        if !stopped_by_string {
            // An incomplete character at the very end is output as U+FFFD, as a one-shot
            // decode of the same tokens would; it may still complete a stop string.
            let before = text.len();
            text.push_str(&utf8.finish());
            if let Some(at) = stops.find(&text, before) {
                text.truncate(at);
            }
        }

        let finished = Instant::now();
        let first = first_token_at.unwrap_or(finished);
        let timings = Timings {
            time_to_first_token: first.duration_since(started),
            decode: finished.duration_since(first),
        };
        let usage = Usage { prompt_tokens: prompt_ids.len(), completion_tokens: token_ids.len() };
        tracing::debug!(
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ?finish_reason,
            ttft_ms = millis(timings.time_to_first_token),
            decode_ms = millis(timings.decode),
            "chat request done"
        );
        let (text, tool_calls, finish_reason) = if request.has_tools() {
            split_tool_calls(text, finish_reason)
        } else {
            (text, Vec::new(), finish_reason)
        };
        Ok(ChatOutput { text, tool_calls, token_ids, finish_reason, usage, timings })
    }

    /// Teacher-forced scoring: the log-probability of each token of `completion` as the
    /// assistant's reply to `messages`, calling `observer` once per completion token with the
    /// logits it was scored under.
    ///
    /// This is how a verifier checks a claimed completion, and how the tests compare logits with
    /// llama.cpp at every step without one near-tie derailing the rest. On the CPU body the
    /// prompt and the completion (but its last token) run in ONE forward pass, and the
    /// vocabulary projection runs for the completion's positions only: the logits are bitwise
    /// those generation saw (same kernels, same sums), at prefill speed rather than decode
    /// speed. candle's bodies (CUDA, safetensors checkpoints, other block types) return the
    /// last position's logits only, so there the prompt runs in one pass and the completion
    /// tokens are fed one at a time, the way generation feeds them.
    pub fn score(
        &self,
        messages: &[ChatMessage],
        completion: &[u32],
        observer: &mut dyn TokenObserver,
    ) -> Result<ScoreOutput> {
        if messages.is_empty() {
            return Err(InferenceError::EmptyMessages);
        }
        for &token_id in completion {
            self.tokenizer.token_bytes(token_id)?;
        }
        let prompt_ids = self.prompt_ids(messages, completion.len().saturating_sub(1))?;
        let usage = Usage { prompt_tokens: prompt_ids.len(), completion_tokens: completion.len() };
        let mut log_probs = Vec::with_capacity(completion.len());
        let mut session = Session::new(self);
        if let Some((_, fed)) = completion.split_last() {
            let tokens: Vec<u32> = prompt_ids.iter().chain(fed).copied().collect();
            let mut each = |index: usize, logits: &[f32]| {
                let token_id = completion[index];
                let lp = log_prob(logits, token_id);
                observer.on_token(&TokenEvent { index, token_id, log_prob: lp, logits });
                log_probs.push(lp);
            };
            if let Some(done) = session.model.forward_positions(&tokens, 0, completion.len(), &mut each) {
                done.map_err(|source| InferenceError::Forward {
                    step: format!("scoring pass of {} tokens", tokens.len()),
                    source,
                })?;
                return Ok(ScoreOutput { log_probs, usage });
            }
        }
        let mut logits = session.prefill(&prompt_ids)?;
        for (index, &token_id) in completion.iter().enumerate() {
            let lp = log_prob(&logits, token_id);
            observer.on_token(&TokenEvent { index, token_id, log_prob: lp, logits: &logits });
            log_probs.push(lp);
            if index + 1 < completion.len() {
                logits = session.step(token_id, index)?;
            }
        }
        Ok(ScoreOutput { log_probs, usage })
    }

    /// Renders and tokenizes `messages`, checking that the prompt plus `reserve` more fed
    /// tokens fit the context.
    fn prompt_ids(&self, messages: &[ChatMessage], reserve: usize) -> Result<Vec<u32>> {
        self.prompt_ids_with_tools(messages, None, reserve)
    }

    /// [`ChatEngine::prompt_ids`] with OpenAI `tools` passed to the template.
    fn prompt_ids_with_tools(
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

/// The result of [`ChatEngine::score`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutput {
    /// `log softmax(logits)[token]` for each completion token, in order.
    pub log_probs: Vec<f32>,
    /// Prompt and completion token counts.
    pub usage: Usage,
}

/// One request's model state: its own KV cache and position.
struct Session<'e> {
    engine: &'e ChatEngine,
    model: CausalLm,
    prompt_len: usize,
}

impl<'e> Session<'e> {
    fn new(engine: &'e ChatEngine) -> Self {
        // A clone shares the weights and starts with an empty cache.
        Self { engine, model: engine.model.clone(), prompt_len: 0 }
    }

    /// Runs the prompt; returns the logits for the first completion token.
    fn prefill(&mut self, prompt_ids: &[u32]) -> Result<Vec<f32>> {
        self.prompt_len = prompt_ids.len();
        self.model.forward_last(prompt_ids, 0, &self.engine.device).map_err(|source| {
            InferenceError::Forward { step: format!("prefill of {} tokens", prompt_ids.len()), source }
        })
    }

    /// Feeds completion token `index`; returns the logits for the next one.
    fn step(&mut self, token_id: u32, index: usize) -> Result<Vec<f32>> {
        self.model
            .forward_last(&[token_id], self.prompt_len + index, &self.engine.device)
            .map_err(|source| InferenceError::Forward { step: format!("decode step {index}"), source })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
