//! What a chat request asks for and what the engine answers.
//!
//! These are this crate's own types, not the network's wire types: the miner translates a
//! `heurist-protocol` job into a [`ChatRequest`] and a [`ChatOutput`] back into the reply. The
//! output carries what a verifier or a reward needs besides the text: token ids, counts over
//! the templated prompt, why generation stopped, and timings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{InferenceError, Result};
use crate::llm::sampler::SamplingParams;
use crate::llm::template::{parse_tools, python_json};
use crate::llm::tool_calls::{FunctionCall, ToolCall};

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

/// One message of a conversation, as the chat template sees it.
///
/// Besides `role` and `content`, an assistant message may carry the OpenAI `tool_calls` it
/// made, and a tool message the `tool_call_id` it answers and the function's `name`; the
/// template sees each of these only when the message has it (`message.tool_calls is defined`
/// is how Hermes' tool_use template tells a call from a plain answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says (an OpenAI `null`, as assistant messages with tool calls send, is empty,
    /// as vLLM passes it to the template).
    pub content: String,
    /// The tool calls of an assistant message, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Which call a tool message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The function whose result a tool message holds (OpenAI's optional `name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: None, tool_call_id: None, name: None }
    }

    /// An assistant message that called tools (content empty).
    pub fn assistant_tool_calls(tool_calls: Vec<ToolCall>) -> Self {
        Self { tool_calls: Some(tool_calls), ..Self::new(Role::Assistant, "") }
    }

    /// A tool message: the result of call `tool_call_id` of function `name`.
    pub fn tool_result(tool_call_id: impl Into<String>, name: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: Some(tool_call_id.into()), name: Some(name.into()), ..Self::new(Role::Tool, content) }
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

    /// Parses an OpenAI-style messages array (`[{"role": "user", "content": "…"}, …]`), with
    /// assistant `tool_calls` (their `arguments` a JSON string, or an object, which becomes its
    /// `json.dumps` text) and tool messages' `tool_call_id` and `name`. `content` may be null
    /// or absent only on an assistant message with tool calls.
    ///
    /// Malformed JSON is [`InferenceError::InvalidMessages`]; a role other than system, user,
    /// assistant or tool is [`InferenceError::UnknownRole`] with the message's index.
    pub fn parse_list(json: &str) -> Result<Vec<ChatMessage>> {
        #[derive(Deserialize)]
        struct Raw {
            role: String,
            #[serde(default)]
            content: Option<String>,
            #[serde(default)]
            tool_calls: Option<Vec<RawToolCall>>,
            #[serde(default)]
            tool_call_id: Option<String>,
            #[serde(default)]
            name: Option<String>,
        }
        #[derive(Deserialize)]
        struct RawToolCall {
            id: String,
            #[serde(rename = "type", default = "function_kind")]
            kind: String,
            function: RawFunction,
        }
        #[derive(Deserialize)]
        struct RawFunction {
            name: String,
            // A template value keeps an object's keys in the order sent.
            arguments: minijinja::Value,
        }
        fn function_kind() -> String {
            "function".to_owned()
        }
        let raw: Vec<Raw> =
            serde_json::from_str(json).map_err(|source| InferenceError::InvalidMessages { source })?;
        raw.into_iter()
            .enumerate()
            .map(|(index, m)| {
                let role = Role::from_name(&m.role).ok_or_else(|| InferenceError::UnknownRole { index, role: m.role })?;
                let invalid = |problem: &'static str| InferenceError::InvalidMessage { index, problem };
                let content = match (m.content, &m.tool_calls) {
                    (Some(content), _) => content,
                    (None, Some(_)) if role == Role::Assistant => String::new(),
                    (None, _) => return Err(invalid("content is missing or null")),
                };
                let tool_calls = m
                    .tool_calls
                    .map(|calls| {
                        calls
                            .into_iter()
                            .map(|c| {
                                let arguments = match c.function.arguments.as_str() {
                                    Some(text) => text.to_owned(),
                                    None => python_json(&c.function.arguments)
                                        .ok_or_else(|| invalid("tool call arguments cannot be serialised"))?,
                                };
                                Ok(ToolCall {
                                    id: c.id,
                                    kind: c.kind,
                                    function: FunctionCall { name: c.function.name, arguments },
                                })
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?;
                Ok(ChatMessage { role, content, tool_calls, tool_call_id: m.tool_call_id, name: m.name })
            })
            .collect()
    }
}

/// vLLM's sampling options beyond temperature and seed, each `None` leaving the request's
/// value ([`ChatRequest::with_sampling_options`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingOptions {
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens; -1 or 0 turn it off.
    pub top_k: Option<i64>,
    /// Drop tokens below this share of the most likely one.
    pub min_p: Option<f64>,
    /// Multiplicative repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// Additive penalty for any previous occurrence.
    pub presence_penalty: Option<f64>,
    /// Additive penalty per previous occurrence.
    pub frequency_penalty: Option<f64>,
    /// Stop strings added to the request's.
    pub stop: Vec<String>,
}

/// A chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far; the completion is the assistant's next message.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate, at least 1; the context length is the engine's bound and cuts
    /// it shorter where the prompt leaves less room (finish reason `length`). The network's
    /// limit is the miner's to apply (heurist-protocol's `MinerLimits::max_tokens`), not the
    /// engine's.
    pub max_tokens: usize,
    /// 0 = greedy; otherwise the softmax temperature.
    pub temperature: f64,
    /// Nucleus sampling mass, 0 to 1 (1 = off).
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens below this share of the most likely one, 0 to 1 (0 = off).
    pub min_p: f64,
    /// Multiplicative penalty on tokens of the prompt and output, > 0 (1 = off).
    pub repetition_penalty: f64,
    /// Additive penalty on tokens already in the output, -2 to 2 (0 = off).
    pub presence_penalty: f64,
    /// Additive penalty per occurrence in the output, -2 to 2 (0 = off).
    pub frequency_penalty: f64,
    /// Seeds the sampler (`None` = fresh entropy); ignored when greedy.
    pub seed: Option<u64>,
    /// Generation stops before the first of these appears in the text.
    pub stop: Vec<String>,
    /// OpenAI `tools`: the JSON text of an array of function descriptions, passed to the chat
    /// template as `tools` (kept as text so the keys reach the template in the order sent);
    /// when present and non-empty, Hermes `<tool_call>` blocks in the answer become
    /// [`ChatOutput::tool_calls`].
    pub tools: Option<String>,
}

impl ChatRequest {
    /// A greedy request for [`DEFAULT_MAX_TOKENS`] tokens.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        let neutral = SamplingParams::default();
        Self {
            messages,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: neutral.temperature,
            top_p: neutral.top_p,
            top_k: neutral.top_k,
            min_p: neutral.min_p,
            repetition_penalty: neutral.repetition_penalty,
            presence_penalty: neutral.presence_penalty,
            frequency_penalty: neutral.frequency_penalty,
            seed: None,
            stop: Vec::new(),
            tools: None,
        }
    }

    /// Sets the OpenAI `tools` array (its JSON text; checked by validation).
    pub fn with_tools(mut self, tools: impl Into<String>) -> Self {
        self.tools = Some(tools.into());
        self
    }

    /// Whether tool calls are parsed from the answer: `tools` is a non-empty array.
    pub(crate) fn has_tools(&self) -> bool {
        self.tools
            .as_deref()
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(t).ok())
            .is_some_and(|t| !t.is_empty())
    }

    /// The sampling parameters, as the sampler takes them.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
        }
    }

    /// Sets every sampling parameter at once.
    pub fn with_sampling_params(mut self, params: SamplingParams) -> Self {
        self.temperature = params.temperature;
        self.top_p = params.top_p;
        self.top_k = params.top_k;
        self.min_p = params.min_p;
        self.repetition_penalty = params.repetition_penalty;
        self.presence_penalty = params.presence_penalty;
        self.frequency_penalty = params.frequency_penalty;
        self
    }

    /// Applies a job's `extra_body` (vLLM's extra sampling parameters, a JSON object):
    /// `top_p`, `top_k` (-1 or 0 = off), `min_p`, `repetition_penalty`, `presence_penalty`,
    /// `frequency_penalty`, and `stop` (a string or a list, added to the request's). Absent or
    /// null fields keep their values; other fields are ignored, as vLLM ignores them. JSON that
    /// is not such an object is [`InferenceError::InvalidExtraBody`]; values are range-checked
    /// with the rest of the request.
    pub fn with_extra_body(self, json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stop {
            One(String),
            Many(Vec<String>),
        }
        #[derive(Deserialize)]
        struct ExtraBody {
            top_p: Option<f64>,
            top_k: Option<i64>,
            min_p: Option<f64>,
            repetition_penalty: Option<f64>,
            presence_penalty: Option<f64>,
            frequency_penalty: Option<f64>,
            stop: Option<Stop>,
        }
        let extra: ExtraBody =
            serde_json::from_str(json).map_err(|source| InferenceError::InvalidExtraBody { source })?;
        self.with_sampling_options(SamplingOptions {
            top_p: extra.top_p,
            top_k: extra.top_k,
            min_p: extra.min_p,
            repetition_penalty: extra.repetition_penalty,
            presence_penalty: extra.presence_penalty,
            frequency_penalty: extra.frequency_penalty,
            stop: match extra.stop {
                Some(Stop::One(stop)) => vec![stop],
                Some(Stop::Many(stops)) => stops,
                None => Vec::new(),
            },
        })
    }

    /// Applies vLLM's sampling options beyond temperature and seed (typed, as a protocol
    /// decoded them): each present one replaces the request's value, `top_k` with vLLM's
    /// convention ([`ChatRequest::with_top_k`]), and `stop` strings are added.
    ///
    /// # Errors
    /// [`InferenceError::InvalidSampling`] for a `top_k` below -1; other values are
    /// range-checked with the rest of the request.
    pub fn with_sampling_options(mut self, options: SamplingOptions) -> Result<Self> {
        if let Some(top_k) = options.top_k {
            self = self.with_top_k(top_k)?;
        }
        self.top_p = options.top_p.unwrap_or(self.top_p);
        self.min_p = options.min_p.unwrap_or(self.min_p);
        self.repetition_penalty = options.repetition_penalty.unwrap_or(self.repetition_penalty);
        self.presence_penalty = options.presence_penalty.unwrap_or(self.presence_penalty);
        self.frequency_penalty = options.frequency_penalty.unwrap_or(self.frequency_penalty);
        self.stop.extend(options.stop);
        Ok(self)
    }

    /// Sets `top_k` with vLLM's convention: -1 or 0 turn it off, a positive count keeps that
    /// many tokens.
    ///
    /// # Errors
    /// [`InferenceError::InvalidSampling`] for a value below -1.
    pub fn with_top_k(mut self, top_k: i64) -> Result<Self> {
        self.top_k = match top_k {
            -1 | 0 => 0,
            k if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            k => {
                return Err(InferenceError::InvalidSampling {
                    name: "top_k",
                    value: k as f64,
                    expected: "-1, 0 (off) or a positive count",
                });
            }
        };
        Ok(self)
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
        if self.max_tokens == 0 {
            return Err(InferenceError::InvalidMaxTokens { max_tokens: self.max_tokens });
        }
        // vLLM's ranges (`SamplingParams._verify_args`), except that top_p 0 is accepted and
        // keeps the most likely token only, as transformers' TopPLogitsWarper does.
        let checks: [(&'static str, f64, bool, &'static str); 6] = [
            ("temperature", self.temperature, self.temperature >= 0.0, "a finite number >= 0"),
            ("top_p", self.top_p, (0.0..=1.0).contains(&self.top_p), "0 to 1"),
            ("min_p", self.min_p, (0.0..=1.0).contains(&self.min_p), "0 to 1"),
            ("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0.0, "a finite number > 0"),
            ("presence_penalty", self.presence_penalty, (-2.0..=2.0).contains(&self.presence_penalty), "-2 to 2"),
            ("frequency_penalty", self.frequency_penalty, (-2.0..=2.0).contains(&self.frequency_penalty), "-2 to 2"),
        ];
        for (name, value, in_range, expected) in checks {
            if !(value.is_finite() && in_range) {
                return Err(InferenceError::InvalidSampling { name, value, expected });
            }
        }
        if let Some(tools) = &self.tools {
            parse_tools(tools)?;
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
    /// The model called tools (the request had `tools` and the answer holds `<tool_call>`s).
    ToolCalls,
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
    /// The assistant's message: control tokens left out, cut before a stop string; with tool
    /// calls, the text before the first `<tool_call>` (empty when blank).
    pub text: String,
    /// The tool calls parsed from the answer (only when the request had `tools`).
    pub tool_calls: Vec<ToolCall>,
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
        for bad in ["{", r#"{"role":"user","content":"x"}"#, r#"[{"role":"tool","content":"x","tool_calls":{}}]"#] {
            assert!(matches!(
                ChatMessage::parse_list(bad),
                Err(InferenceError::InvalidMessages { .. })
            ));
        }
        // Well-formed JSON, but only an assistant message that calls tools may lack content.
        for bad in [r#"[{"role":"user"}]"#, r#"[{"role":"assistant","content":null}]"#] {
            assert!(matches!(
                ChatMessage::parse_list(bad),
                Err(InferenceError::InvalidMessage { index: 0, problem }) if problem.contains("content")
            ));
        }
    }

    #[test]
    fn tool_calls_and_results_parse() {
        let msgs = ChatMessage::parse_list(
            r#"[{"role":"assistant","tool_calls":[{"id":"call_0","type":"function",
                 "function":{"name":"f","arguments":"{\"a\": 1}"}}]},
                {"role":"tool","tool_call_id":"call_0","name":"f","content":"2"}]"#,
        )
        .unwrap();
        let call = ToolCall {
            id: "call_0".into(),
            kind: "function".into(),
            function: FunctionCall { name: "f".into(), arguments: r#"{"a": 1}"#.into() },
        };
        assert_eq!(msgs, vec![ChatMessage::assistant_tool_calls(vec![call]), ChatMessage::tool_result("call_0", "f", "2")]);
        // What the template sees: the tool fields only where a message has them.
        let json = serde_json::to_string(&msgs[1]).unwrap();
        assert_eq!(json, r#"{"role":"tool","content":"2","tool_call_id":"call_0","name":"f"}"#);
        assert_eq!(serde_json::to_string(&ChatMessage::user("x")).unwrap(), r#"{"role":"user","content":"x"}"#);
    }

    #[test]
    fn extra_body_sets_vllm_parameters() {
        let base = ChatRequest::new(vec![ChatMessage::user("hi")]).with_stop(["END"]);
        let r = base
            .clone()
            .with_extra_body(
                r#"{"top_p":0.9,"top_k":-1,"min_p":0.05,"repetition_penalty":1.1,"presence_penalty":0.5,
                   "frequency_penalty":-0.5,"stop":["a","b"],"best_of":2}"#,
            )
            .unwrap();
        assert_eq!((r.top_p, r.top_k, r.min_p), (0.9, 0, 0.05));
        assert_eq!((r.repetition_penalty, r.presence_penalty, r.frequency_penalty), (1.1, 0.5, -0.5));
        assert_eq!(r.stop, vec!["END", "a", "b"]);
        assert!(r.validate().is_ok());
        let r = base.clone().with_extra_body(r#"{"top_k":40,"stop":"x","top_p":null}"#).unwrap();
        assert_eq!((r.top_k, r.top_p), (40, 1.0));
        assert_eq!(r.stop, vec!["END", "x"]);
        for bad in [r#"{"top_p":"high"}"#, "[1]", "{", r#"{"stop":3}"#] {
            assert!(matches!(base.clone().with_extra_body(bad), Err(InferenceError::InvalidExtraBody { .. })), "{bad}");
        }
        assert!(matches!(
            base.clone().with_extra_body(r#"{"top_k":-3}"#),
            Err(InferenceError::InvalidSampling { name: "top_k", .. })
        ));
        assert!(matches!(
            base.with_extra_body(r#"{"min_p":2}"#).unwrap().validate(),
            Err(InferenceError::InvalidSampling { name: "min_p", .. })
        ));
    }

    #[test]
    fn validation_rejects_out_of_range_values() {
        let base = ChatRequest::new(vec![ChatMessage::user("hi")]);
        assert!(base.validate().is_ok());
        assert!(matches!(
            base.clone().with_max_tokens(0).validate(),
            Err(InferenceError::InvalidMaxTokens { max_tokens: 0, .. })
        ));
        // Above the network's 4096: not the engine's to refuse (the context length cuts it).
        assert!(base.clone().with_max_tokens(8192).validate().is_ok());
        assert!(base.clone().with_max_tokens(usize::MAX).validate().is_ok());
        assert!(matches!(
            base.clone().with_sampling(f64::NAN, None).validate(),
            Err(InferenceError::InvalidSampling { name: "temperature", .. })
        ));
        assert!(matches!(
            base.clone().with_sampling(-0.5, None).validate(),
            Err(InferenceError::InvalidSampling { .. })
        ));
        for (name, request) in [
            ("top_p", base.clone().with_sampling_params(SamplingParams { top_p: 1.5, ..SamplingParams::default() })),
            ("min_p", base.clone().with_sampling_params(SamplingParams { min_p: -0.1, ..SamplingParams::default() })),
            (
                "repetition_penalty",
                base.clone().with_sampling_params(SamplingParams { repetition_penalty: 0.0, ..SamplingParams::default() }),
            ),
            (
                "presence_penalty",
                base.clone().with_sampling_params(SamplingParams { presence_penalty: 2.5, ..SamplingParams::default() }),
            ),
            (
                "frequency_penalty",
                base.clone().with_sampling_params(SamplingParams { frequency_penalty: f64::INFINITY, ..SamplingParams::default() }),
            ),
        ] {
            match request.validate() {
                Err(InferenceError::InvalidSampling { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            base.clone().with_stop(["ok", ""]).validate(),
            Err(InferenceError::EmptyStop { index: 1 })
        ));
        assert!(matches!(
            base.clone().with_tools(r#"{"type": "function"}"#).validate(),
            Err(InferenceError::InvalidTools { .. })
        ));
        let with_tools = base.clone().with_tools(r#"[{"type": "function", "function": {"name": "f"}}]"#);
        assert!(with_tools.validate().is_ok() && with_tools.has_tools());
        assert!(!base.clone().with_tools("[]").has_tools());
        assert!(matches!(
            ChatRequest::new(vec![]).validate(),
            Err(InferenceError::EmptyMessages)
        ));
    }
}
