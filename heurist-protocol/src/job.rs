//! Jobs: what `miner_request` answers with when there is work.
//!
//! `model_input` is externally tagged, exactly one key `SD` or `LLM`. The LLM fields `prompt`,
//! `tools` and `extra_body` are JSON documents inside strings; the wire types keep those
//! strings as received (so a job re-encodes to the same JSON value) and
//! [`LlmInput::decode`] turns them into typed OpenAI messages, tools and sampling parameters.
//! Numbers that the network sends as integers or floats interchangeably (guidance, temperature)
//! are kept as [`serde_json::Number`] for the same reason; [`crate::limits`] turns a job into
//! its clamped, typed form.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::decode;
use crate::error::{ProtocolError, Result};
use crate::openai::{ChatMessage, SamplingParams, Tool};

/// A job handed to a miner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The sequencer's id for this job (e.g. `sdk-image-1a2b3c4d5e`).
    pub job_id: String,
    /// The model to run: a base checkpoint, a LoRA, a composite, or an LLM.
    pub model_id: String,
    /// The inputs, `SD` or `LLM`.
    pub model_input: ModelInput,
    /// Temporary AWS credentials for the image upload (SD jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_credentials: Option<TempCredentials>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Job {
    /// Decodes a job from JSON bytes (at most [`decode::DEFAULT_MAX_BODY_BYTES`]).
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        decode::json("job", body, decode::DEFAULT_MAX_BODY_BYTES)
    }

    /// `SD` or `LLM`.
    pub fn kind(&self) -> ModelKind {
        match self.model_input {
            ModelInput::Sd(_) => ModelKind::Sd,
            ModelInput::Llm(_) => ModelKind::Llm,
        }
    }
}

/// The two job families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelKind {
    /// Image generation (Waifu points).
    #[serde(rename = "SD")]
    Sd,
    /// Chat completion (Llama points).
    #[serde(rename = "LLM")]
    Llm,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sd => "SD",
            Self::Llm => "LLM",
        })
    }
}

/// The inputs of a job, tagged by family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelInput {
    /// An image job.
    #[serde(rename = "SD")]
    Sd(SdInput),
    /// A chat job.
    #[serde(rename = "LLM")]
    Llm(LlmInput),
}

/// An image job's inputs as sent. Real example files (`examples/*.json` of the model registry)
/// name the step count `num_inference_steps` and carry a `sampler`; sequencer jobs name it
/// `num_iterations`. Both are accepted and kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SdInput {
    /// The prompt (long prompt weighting syntax allowed).
    pub prompt: String,
    /// The negative prompt (ignored for Flux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neg_prompt: Option<String>,
    /// Height in pixels, before clamping.
    pub height: u32,
    /// Width in pixels, before clamping.
    pub width: u32,
    /// Sampling steps, before clamping (sequencer jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_iterations: Option<u32>,
    /// Sampling steps (the registry's example files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_inference_steps: Option<u32>,
    /// Classifier-free guidance scale.
    pub guidance_scale: Number,
    /// The seed; negative means "choose one at random". Up to 2^53 - 1 in SDK jobs.
    pub seed: i64,
    /// The scheduler the example was made with, when named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerSpec>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SdInput {
    /// The step count asked for: `num_iterations`, else `num_inference_steps`.
    pub fn steps(&self) -> Option<u32> {
        self.num_iterations.or(self.num_inference_steps)
    }
}

/// A diffusers scheduler named by class and options, as in the registry's example jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerSpec {
    /// e.g. `DPMSolverMultistepScheduler`.
    pub class_name: String,
    /// Karras sigma spacing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_karras_sigmas: Option<bool>,
    /// e.g. `sde-dpmsolver++`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm_type: Option<String>,
    /// Other scheduler options, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A chat job's inputs as sent: `prompt`, `tools` and `extra_body` are JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmInput {
    /// JSON text of an OpenAI `messages` array.
    pub prompt: String,
    /// Sampling temperature (0 = greedy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Number>,
    /// Completion length limit, before the miner's cap of 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// The seed; -1 means "choose one at random".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Stream the answer through `miner_submit_stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_stream: Option<bool>,
    /// JSON text of an OpenAI `tools` array (may be empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<String>,
    /// JSON text of extra sampling parameters (may be empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_body: Option<String>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The typed content of an [`LlmInput`]'s JSON strings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmPayload {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tools offered to the model (empty when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Sampling parameters from `extra_body`.
    pub sampling: SamplingParams,
}

impl LlmInput {
    /// Decodes `prompt`, `tools` and `extra_body`. Empty or whitespace-only `tools` and
    /// `extra_body` mean "none", as the reference treats them.
    pub fn decode(&self) -> Result<LlmPayload> {
        let messages: Vec<ChatMessage> = decode::embedded("prompt", &self.prompt)?;
        if messages.is_empty() {
            return Err(ProtocolError::invalid("prompt", "[]", "the messages array is empty"));
        }
        let tools = match self.tools.as_deref().map(str::trim) {
            None | Some("") | Some("null") => Vec::new(),
            Some(t) => decode::embedded("tools", t)?,
        };
        let sampling = match self.extra_body.as_deref().map(str::trim) {
            None | Some("") | Some("null") => SamplingParams::default(),
            Some(t) => decode::embedded("extra_body", t)?,
        };
        Ok(LlmPayload { messages, tools, sampling })
    }
}

/// Temporary AWS credentials for the image upload: access key id, secret key, session token.
/// On the wire, a three-string array. `Debug` hides the secret and the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempCredentials(pub String, pub String, pub String);

impl TempCredentials {
    /// The AWS access key id.
    pub fn access_key_id(&self) -> &str {
        &self.0
    }
    /// The AWS secret access key.
    pub fn secret_access_key(&self) -> &str {
        &self.1
    }
    /// The AWS session token.
    pub fn session_token(&self) -> &str {
        &self.2
    }
}

impl std::fmt::Debug for TempCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TempCredentials({}, <secret>, <token>)", self.0)
    }
}
