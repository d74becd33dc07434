//! candle inference engines for Heurist miners.
//!
//! Today: chat LLMs from GGUF files (llama architecture: Llama, Mistral, SmolLM2) and from
//! Hugging Face safetensors directories (Llama 3, Mistral, Mixtral; f32 / f16 / bf16), on the
//! CPU or a CUDA GPU, with the model's own tokenizer and chat template and the network's chat
//! semantics:
//! - the tokenizer is rebuilt from the GGUF metadata so prompt ids equal llama.cpp's, or loaded
//!   from `tokenizer.json` so they equal transformers';
//! - the chat template is rendered with minijinja as Hugging Face's `apply_chat_template`
//!   renders it;
//! - greedy or seeded sampling with vLLM's parameters ([`SamplingParams`]: temperature,
//!   top-p, top-k, min-p, repetition / presence / frequency penalties);
//! - stop strings, end-of-generation tokens, `max_tokens` and the context length end a
//!   completion; with OpenAI `tools` in the request, Hermes `<tool_call>` blocks in the answer
//!   become [`ToolCall`]s (finish reason `tool_calls`);
//! - the output carries token ids, counts, the finish reason and timings; an observer sees
//!   every token's logits and log-probability, and on request ([`WithHiddenStates`],
//!   [`TokenObserver::hidden_layers`]) the hidden states at chosen layers, numbered as
//!   transformers' `output_hidden_states`; [`ChatEngine::score`] scores a given completion
//!   (teacher forcing) for verifiers, with the same events;
//! - assistant messages may carry OpenAI `tool_calls` and tool messages their `tool_call_id`
//!   and `name`; a model's `tool_use` chat template renders when a request has tools;
//! - [`ChatServer`] serves many requests with continuous batching, each with its own observer
//!   if it brings one.
//!
//! Not here: the network's wire types and job handling (`heurist-protocol`, the miner in
//! `examples/miner`), judging results (`heurist-verify`, which watches generation through
//! [`TokenObserver`]), rewards (`heurist-points`). This crate uses none of its siblings;
//! `heurist-verify` (behind a feature) and the example binaries use it. The image engine,
//! [`image::ImageEngine`], runs Stable Diffusion 1.5 and SDXL from the network's single-file
//! checkpoints (with kohya LoRAs and VAE overrides) on torch-exact seeded noise and diffusers'
//! schedulers; see [`image`].
//!
//! On the CPU, Q4_1 / Q8_0 GGUF llama models run on this crate's own forward pass with integer
//! SIMD kernels picked at run time (AVX2, AVX-VNNI or AVX-512 VNNI; a scalar fallback
//! elsewhere), so no `-C target-cpu=native` is needed; other files and CUDA use
//! candle-transformers' quantized llama. `HEURIST_LLM_CPU_BODY=candle` forces candle's body on
//! the CPU too. Safetensors checkpoints run on this crate's candle decoder (Llama, Mistral with
//! its sliding window, Mixtral), on the CPU or CUDA.
//!
//! Hidden states for a verifier, from one teacher-forced pass:
//!
//! ```no_run
//! use heurist_inference::{ChatEngine, ChatMessage, DeviceSpec, TokenEvent, WithHiddenStates, smollm2_path};
//!
//! # fn main() -> heurist_inference::Result<()> {
//! let engine = ChatEngine::load_gguf(smollm2_path()?, DeviceSpec::Cpu)?;
//! let messages = vec![ChatMessage::user("Hi!")];
//! let answer = engine.tokenizer().encode("Hello! How can I help?")?;
//! // 0 = the embeddings, 15 = the output of layer 14, 30 = after SmolLM2's final norm.
//! let mut states = Vec::new();
//! let mut observer = WithHiddenStates::new([0, 15, 30], |e: &TokenEvent<'_>| {
//!     states.push(e.hidden_states.iter().map(|(layer, h)| (layer, h.to_vec())).collect::<Vec<_>>());
//! });
//! let scored = engine.score(&messages, &answer, &mut observer)?;
//! assert_eq!(states.len(), scored.log_probs.len());
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use heurist_inference::{ChatEngine, ChatMessage, ChatRequest, DeviceSpec, smollm2_path};
//!
//! # fn main() -> heurist_inference::Result<()> {
//! let engine = ChatEngine::load_gguf(smollm2_path()?, DeviceSpec::Cpu)?;
//! let request = ChatRequest::new(vec![ChatMessage::user("What is the capital of France?")])
//!     .with_max_tokens(32);
//! let output = engine.chat(&request)?;
//! println!("{} ({:?}, {} tokens)", output.text, output.finish_reason, output.usage.completion_tokens);
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//! - `cuda` (off): CUDA devices through candle. Needs nvcc at build time. Without it,
//!   [`DeviceSpec::Cuda`] is the typed error [`InferenceError::CudaNotCompiled`].

mod allocator;
mod device;
mod error;
pub mod fastmath;
pub mod image;
mod llm;
mod model_cache;
mod weights;

pub use allocator::tune_allocator;
pub use device::{DeviceSpec, ParseDeviceError, cuda_device_count, cuda_device_name};
pub use error::{InferenceError, Result};
pub use llm::batch::{ChatEvent, ChatHandle, ChatServer};
pub use llm::engine::{ChatEngine, ScoreOutput};
pub use llm::model::{ComputeDType, GgufBody};
pub use llm::observer::{HiddenStates, NoObserver, TokenEvent, TokenObserver, WithHiddenStates};
pub use llm::sampler::{ReplayStep, SamplerReplay, SamplingParams};
pub use llm::request::{
    ChatMessage, ChatOutput, ChatRequest, DEFAULT_MAX_TOKENS, FinishReason, Role, SamplingOptions, Timings,
    Usage,
};
pub use llm::template::ChatTemplate;
pub use llm::tokenizer::Tokenizer;
pub use llm::tool_calls::{FunctionCall, ParsedToolCalls, ToolCall, parse_tool_calls};
pub use model_cache::{
    MODEL_DIR_ENV, SMOLLM2_FETCH_COMMAND, SMOLLM2_FILE_NAME, model_dir, smollm2_path,
};
