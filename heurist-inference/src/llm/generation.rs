//! One request's generation state, apart from the model: what [`ChatEngine::chat`] and the
//! batching server ([`crate::llm::batch`]) both drive, so a request gives the same tokens and
//! text whichever runs it.
//!
//! The driver owns the model and its cache. It prefills the prompt, then hands each step's
//! logits to [`Generation::advance`], which chooses the token (sampler, observer), updates the
//! text (incremental UTF-8, stop strings) and says whether to feed the token back or stop
//! (end-of-generation token, stop string, `max_tokens`, full context). [`Generation::end`] then
//! flushes the text and [`Generation::into_output`] builds the ChatCompletion parts.

use std::time::{Duration, Instant};

use crate::error::{InferenceError, Result};
use crate::llm::detokenize::Utf8Stream;
use crate::llm::engine::ChatEngine;
use crate::llm::observer::{HiddenStates, TokenEvent, TokenObserver};
use crate::llm::request::{ChatOutput, ChatRequest, FinishReason, Timings, Usage};
use crate::llm::sampler::{Sampler, log_prob};
use crate::llm::stop::StopStrings;
use crate::llm::tokenizer::Tokenizer;
use crate::llm::tool_calls::split_tool_calls;

/// What the driver does after [`Generation::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Feed `token_id` at `position`, then advance with the logits that follow it.
    Feed {
        /// The token just chosen.
        token_id: u32,
        /// Its position: the prompt's length plus its index in the completion.
        position: usize,
    },
    /// Generation is over.
    Done(FinishReason),
}

/// A request being answered.
#[derive(Debug)]
pub(crate) struct Generation {
    prompt_ids: Vec<u32>,
    budget: usize,
    sampler: Sampler,
    stops: StopStrings,
    utf8: Utf8Stream,
    text: String,
    token_ids: Vec<u32>,
    stopped_by_string: bool,
    ended: bool,
    has_tools: bool,
    /// The observer's hidden-state layers, checked against the body.
    hidden_layers: Vec<usize>,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl Generation {
    /// Validates `request`, renders and tokenizes its prompt and checks it fits the context,
    /// and that the model can give the hidden states at `hidden_layers` (the observer's).
    pub(crate) fn new(engine: &ChatEngine, request: &ChatRequest, hidden_layers: &[usize]) -> Result<Self> {
        request.validate()?;
        engine.body().0.check_hidden_layers(hidden_layers)?;
        let prompt_ids = engine.prompt_ids_with_tools(&request.messages, request.tools.as_deref(), 0)?;
        // Token k of the completion is fed at position prompt + k, so the context bounds
        // the count as well as max_tokens does.
        let budget = request.max_tokens.min(engine.context_length() - prompt_ids.len());
        let sampler = Sampler::new(request.sampling(), request.seed, &prompt_ids);
        Ok(Self {
            prompt_ids,
            budget,
            sampler,
            stops: StopStrings::new(&request.stop),
            utf8: Utf8Stream::default(),
            text: String::new(),
            token_ids: Vec::new(),
            stopped_by_string: false,
            ended: false,
            has_tools: request.has_tools(),
            hidden_layers: hidden_layers.to_vec(),
            started: Instant::now(),
            first_token_at: None,
        })
    }

    /// The templated prompt's tokens, to prefill.
    pub(crate) fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// The completion's text so far: cut before a stop string once one has matched, and
    /// without the bytes of a character still incomplete.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The layers whose hidden states the driver passes to [`Generation::advance`].
    pub(crate) fn hidden_layers(&self) -> &[usize] {
        &self.hidden_layers
    }

    /// Chooses the next token from `logits` (those after the prompt, then after each fed
    /// token); `hidden` holds the same position's states at [`Generation::hidden_layers`].
    pub(crate) fn advance(
        &mut self,
        tokenizer: &Tokenizer,
        logits: &[f32],
        hidden: &[f32],
        observer: &mut dyn TokenObserver,
    ) -> Result<Next> {
        let index = self.token_ids.len();
        let token_id = self.sampler.sample(logits).ok_or(InferenceError::InvalidLogits { step: index })?;
        self.first_token_at.get_or_insert_with(Instant::now);
        let hidden_states = HiddenStates::new(&self.hidden_layers, hidden);
        observer.on_token(&TokenEvent { index, token_id, log_prob: log_prob(logits, token_id), logits, hidden_states });
        self.token_ids.push(token_id);

        if tokenizer.is_end_of_generation(token_id) {
            return Ok(Next::Done(FinishReason::Stop));
        }
        if !tokenizer.is_control(token_id)? {
            let before = self.text.len();
            self.text.push_str(&self.utf8.push(tokenizer.token_bytes(token_id)?));
            if let Some(at) = self.stops.find(&self.text, before) {
                self.text.truncate(at);
                self.stopped_by_string = true;
                return Ok(Next::Done(FinishReason::Stop));
            }
        }
        if self.token_ids.len() >= self.budget {
            return Ok(Next::Done(FinishReason::Length));
        }
        Ok(Next::Feed { token_id, position: self.prompt_ids.len() + index })
    }

    /// Ends the text after the last [`Generation::advance`]: [`Generation::text`] is final.
    pub(crate) fn end(&mut self) {
        if !self.stopped_by_string && !self.ended {
            // An incomplete character at the very end is output as U+FFFD, as a one-shot
            // decode of the same tokens would; it may still complete a stop string.
            let before = self.text.len();
            self.text.push_str(&self.utf8.finish());
            if let Some(at) = self.stops.find(&self.text, before) {
                self.text.truncate(at);
            }
        }
        self.ended = true;
    }

    /// The output, once [`Generation::end`] has run; tool calls are parsed from the text when
    /// the request offered tools.
    pub(crate) fn into_output(mut self, finish_reason: FinishReason) -> ChatOutput {
        self.end();
        let finished = Instant::now();
        let first = self.first_token_at.unwrap_or(finished);
        let timings = Timings {
            time_to_first_token: first.duration_since(self.started),
            decode: finished.duration_since(first),
        };
        let usage = Usage { prompt_tokens: self.prompt_ids.len(), completion_tokens: self.token_ids.len() };
        tracing::debug!(
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ?finish_reason,
            ttft_ms = millis(timings.time_to_first_token),
            decode_ms = millis(timings.decode),
            "chat request done"
        );
        let (text, tool_calls, finish_reason) = if self.has_tools {
            split_tool_calls(self.text, finish_reason)
        } else {
            (self.text, Vec::new(), finish_reason)
        };
        ChatOutput { text, tool_calls, token_ids: self.token_ids, finish_reason, usage, timings }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
