//! What a chat request asks for and what the engine answers.
//!
//! These are this crate's own types, not the network's wire types: the miner translates a
//! `heurist-protocol` job into a [`ChatRequest`] and a [`ChatOutput`] back into the reply. The
//! output carries what a verifier or a reward needs besides the text: token ids, counts over
//! the templated prompt, why generation stopped, and timings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{InferenceError, Result};

/// The largest `max_tokens` a request may ask for (the network's limit).
pub const MAX_TOKENS_LIMIT: usize = 4096;

/// `max_tokens` when a request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// The role's name as chat templates see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// The role called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// Parses an OpenAI-style messages array (`[{"role": "user", "content": "…"}, …]`).
    ///
    /// Malformed JSON is [`InferenceError::InvalidMessages`]; a role other than system, user,
    /// assistant or tool is [`InferenceError::UnknownRole`] with the message's index.
    pub fn parse_list(json: &str) -> Result<Vec<ChatMessage>> {
        #[derive(Deserialize)]
        struct Raw {
            role: String,
            content: String,
        }
        let raw: Vec<Raw> =
            serde_json::from_str(json).map_err(|source| InferenceError::InvalidMessages { source })?;
        raw.into_iter()
            .enumerate()
            .map(|(index, m)| match Role::from_name(&m.role) {
                Some(role) => Ok(ChatMessage { role, content: m.content }),
                None => Err(InferenceError::UnknownRole { index, role: m.role }),
            })
            .collect()
    }
}

/// A chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far; the completion is the assistant's next message.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate, 1 to [`MAX_TOKENS_LIMIT`]; the context length may cut it
    /// shorter (finish reason `length`).
    pub max_tokens: usize,
    /// 0 = greedy; otherwise the softmax temperature.
    pub temperature: f64,
    /// Seeds the sampler (`None` = fresh entropy); ignored when greedy.
    pub seed: Option<u64>,
    /// Generation stops before the first of these appears in the text.
    pub stop: Vec<String>,
}

impl ChatRequest {
    /// A greedy request for [`DEFAULT_MAX_TOKENS`] tokens.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self { messages, max_tokens: DEFAULT_MAX_TOKENS, temperature: 0.0, seed: None, stop: Vec::new() }
    }

    /// Sets `max_tokens`.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// Sets the temperature and seed.
    pub fn with_sampling(mut self, temperature: f64, seed: Option<u64>) -> Self {
        self.temperature = temperature;
        self.seed = seed;
        self
    }

    /// Adds stop strings.
    pub fn with_stop<I: IntoIterator<Item = S>, S: Into<String>>(mut self, stop: I) -> Self {
        self.stop.extend(stop.into_iter().map(Into::into));
        self
    }

    /// Checks everything that does not need the model.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.messages.is_empty() {
            return Err(InferenceError::EmptyMessages);
        }
        if !(1..=MAX_TOKENS_LIMIT).contains(&self.max_tokens) {
            return Err(InferenceError::InvalidMaxTokens {
                max_tokens: self.max_tokens,
                limit: MAX_TOKENS_LIMIT,
            });
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(InferenceError::InvalidSampling {
                name: "temperature",
                value: self.temperature,
                expected: "a finite number >= 0",
            });
        }
        if let Some(index) = self.stop.iter().position(String::is_empty) {
            return Err(InferenceError::EmptyStop { index });
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token, or a stop string appeared.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// Token counts, over the templated prompt and the generated tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the templated prompt.
    pub prompt_tokens: usize,
    /// Generated tokens, the end-of-generation token included.
    pub completion_tokens: usize,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timings {
    /// From the start of the prompt's forward pass to the first token chosen.
    pub time_to_first_token: Duration,
    /// From the first token chosen to the last.
    pub decode: Duration,
}

/// The answer to a [`ChatRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOutput {
    /// The assistant's message: control tokens left out, cut before a stop string.
    pub text: String,
    /// Every generated token id, the end-of-generation token included.
    pub token_ids: Vec<u32>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_messages() {
        let msgs = ChatMessage::parse_list(
            r#"[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]"#,
        )
        .unwrap();
        assert_eq!(msgs, vec![ChatMessage::system("be brief"), ChatMessage::user("hi")]);
    }

    #[test]
    fn unknown_role_names_the_message() {
        let err = ChatMessage::parse_list(
            r#"[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]"#,
        )
        .unwrap_err();
        assert!(matches!(err, InferenceError::UnknownRole { index: 1, ref role } if role == "wizard"));
    }

    #[test]
    fn malformed_json_is_typed() {
        for bad in [r#"[{"role":"user"}]"#, "{", r#"{"role":"user","content":"x"}"#] {
            assert!(matches!(
                ChatMessage::parse_list(bad),
                Err(InferenceError::InvalidMessages { .. })
            ));
        }
    }

    #[test]
    fn validation_rejects_out_of_range_values() {
        let base = ChatRequest::new(vec![ChatMessage::user("hi")]);
        assert!(base.validate().is_ok());
        assert!(matches!(
            base.clone().with_max_tokens(0).validate(),
            Err(InferenceError::InvalidMaxTokens { max_tokens: 0, .. })
        ));
        assert!(matches!(
            base.clone().with_max_tokens(1_000_000_000).validate(),
            Err(InferenceError::InvalidMaxTokens { .. })
        ));
        assert!(matches!(
            base.clone().with_sampling(f64::NAN, None).validate(),
            Err(InferenceError::InvalidSampling { name: "temperature", .. })
        ));
        assert!(matches!(
            base.clone().with_sampling(-0.5, None).validate(),
            Err(InferenceError::InvalidSampling { .. })
        ));
        assert!(matches!(
            base.clone().with_stop(["ok", ""]).validate(),
            Err(InferenceError::EmptyStop { index: 1 })
        ));
        assert!(matches!(
            ChatRequest::new(vec![]).validate(),
            Err(InferenceError::EmptyMessages)
        ));
    }
}
