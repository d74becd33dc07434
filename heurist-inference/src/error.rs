//! The one error type of this crate.
//!
//! Every variant names what was at fault (the file, the metadata key, the tensor, the token, the
//! value) and, where one exists, the remedy. Layers below the engine return
//! `candle_core::Result`; the engine wraps those errors here with the file or the decoding step
//! they happened in.

use std::path::PathBuf;

/// `Result` with [`InferenceError`].
pub type Result<T, E = InferenceError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model or serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferenceError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file does not start with the GGUF magic bytes.
    #[error("{path}: not a GGUF file (first bytes {found:02x?}, expected \"GGUF\")")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// The first bytes actually found (fewer than four when the file is shorter).
        found: Vec<u8>,
    },

    /// The GGUF header, metadata or tensor table could not be parsed.
    #[error("{path}: malformed GGUF header: {source}")]
    MalformedGguf {
        /// The file.
        path: PathBuf,
        /// candle's parse error.
        #[source]
        source: candle_core::Error,
    },

    /// The file ends before the data of one of its tensors does.
    #[error(
        "{path}: truncated at byte {actual_bytes} inside tensor {tensor} (the tensor table needs \
         {needed_bytes} bytes); download the file again"
    )]
    TruncatedFile {
        /// The file.
        path: PathBuf,
        /// The first tensor (in file order) whose data runs past the end.
        tensor: String,
        /// The file length the whole tensor table needs.
        needed_bytes: u64,
        /// The file's actual length.
        actual_bytes: u64,
    },

    /// A metadata key the model needs is absent.
    #[error("{path}: metadata key {key} is missing")]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The GGUF metadata key.
        key: String,
    },

    /// A metadata key holds a value of the wrong type or an impossible value.
    #[error("{path}: metadata key {key}: {problem}")]
    InvalidMetadata {
        /// The file.
        path: PathBuf,
        /// The GGUF metadata key.
        key: String,
        /// What is wrong with it and what was expected.
        problem: String,
    },

    /// The model's architecture is not one this engine runs.
    #[error("{path}: architecture {architecture} is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// `general.architecture` as found.
        architecture: String,
        /// The architectures this engine runs.
        supported: &'static str,
    },

    /// The tokenizer `tokenizer.ggml.model` names a family this crate cannot build.
    #[error("{path}: tokenizer model {model} is not supported (supported: gpt2 byte-level BPE)")]
    UnsupportedTokenizer {
        /// The file.
        path: PathBuf,
        /// `tokenizer.ggml.model` as found.
        model: String,
    },

    /// The `tokenizers` crate rejected the vocabulary or failed to encode.
    #[error("tokenizer ({context}): {source}")]
    Tokenizer {
        /// What was being done: building from a file, or encoding the prompt.
        context: String,
        /// The `tokenizers` crate's error.
        #[source]
        source: tokenizers::Error,
    },

    /// A token id outside the vocabulary.
    #[error("token id {token_id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownToken {
        /// The offending id.
        token_id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// The model has no chat template and none was given.
    #[error("{path}: no chat template (metadata key tokenizer.chat_template is missing)")]
    MissingChatTemplate {
        /// The file.
        path: PathBuf,
    },

    /// The chat template could not be compiled or rendered.
    #[error("chat template: {source:#}")]
    Template {
        /// minijinja's error (a `raise_exception` in the template lands here too).
        #[source]
        source: minijinja::Error,
    },

    /// A message role other than system, user, assistant or tool.
    #[error("message {index}: unknown role {role:?} (expected system, user, assistant or tool)")]
    UnknownRole {
        /// Position of the message in the request (0-based).
        index: usize,
        /// The role as given.
        role: String,
    },

    /// The messages are not a JSON array of `{"role": …, "content": …}` objects.
    #[error(
        "messages: {source} (expected a JSON array of {{\"role\": …, \"content\": …}} objects)"
    )]
    InvalidMessages {
        /// serde_json's error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A job's `extra_body` is not a JSON object of vLLM sampling parameters.
    #[error("extra_body: {source} (expected a JSON object such as {{\"top_p\": 0.9, \"top_k\": 40}})")]
    InvalidExtraBody {
        /// serde_json's error, naming the field, line and column.
        #[source]
        source: serde_json::Error,
    },

    /// `tools` is not a JSON array.
    #[error("tools: expected a JSON array of tool descriptions, found {found}")]
    InvalidTools {
        /// The start of what was given.
        found: String,
    },

    /// The model's logits at a step held no number (all NaN).
    #[error("decode step {step}: the model's logits are all NaN")]
    InvalidLogits {
        /// The completion token index being chosen.
        step: usize,
    },

    /// A request without messages.
    #[error("the request has no messages")]
    EmptyMessages,

    /// The templated prompt does not leave room for one generated token.
    #[error(
        "prompt is {prompt_tokens} tokens, the context holds {context_length}; shorten the \
         messages"
    )]
    PromptTooLong {
        /// Tokens in the templated prompt.
        prompt_tokens: usize,
        /// The model's usable context length.
        context_length: usize,
    },

    /// `max_tokens` is 0: nothing to generate. There is no upper bound: the context length
    /// cuts a long one short (finish reason `length`).
    #[error("max_tokens {max_tokens} is out of range (expected at least 1)")]
    InvalidMaxTokens {
        /// The requested value.
        max_tokens: usize,
    },

    /// A sampling parameter outside its range.
    #[error("sampling parameter {name} = {value} is out of range (expected {expected})")]
    InvalidSampling {
        /// The parameter's name as in the request.
        name: &'static str,
        /// The requested value.
        value: f64,
        /// The accepted range.
        expected: &'static str,
    },

    /// An empty stop string (it would match before every token).
    #[error("stop string {index} is empty")]
    EmptyStop {
        /// Position of the stop string in the request.
        index: usize,
    },

    /// A tensor operation failed while running the model.
    #[error("model forward ({step}): {source}")]
    Forward {
        /// Where: `prefill of N tokens` or `decode step N`.
        step: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },

    /// An observer asked for hidden states from a model body that hides its layers.
    #[error(
        "hidden states were asked for, but {body} does not report them; load a Q4_1 / Q8_0 GGUF \
         on the CPU or a safetensors checkpoint, or ask for none"
    )]
    HiddenStatesUnsupported {
        /// The body that was asked.
        body: &'static str,
    },

    /// An observer asked for hidden states at a layer the model does not have.
    #[error("hidden states asked for at layer {layer}, but the model has {layers} layers (expected 0 to {layers})")]
    InvalidHiddenLayer {
        /// The layer asked for.
        layer: usize,
        /// The model's decoder layers (index `layers` is the final-norm output).
        layers: usize,
    },

    /// A message of a request is well-formed JSON but not a valid message.
    #[error("message {index}: {problem}")]
    InvalidMessage {
        /// The message's place in the list.
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A chat server asked to run batches of no requests.
    #[error("a chat server's batch size must be at least 1, got {max_batch}")]
    InvalidBatchSize {
        /// The size asked for.
        max_batch: usize,
    },

    /// The chat server's worker thread could not be started.
    #[error("starting the chat server's worker thread: {source}")]
    ServerThread {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The chat server stopped before answering (it was shut down, or its worker died).
    #[error("the chat server stopped before the request was answered")]
    ServerStopped,

    /// Loading a tensor or building the model from a file failed.
    #[error("{path}: loading the model: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },

    /// A safetensors file whose header does not parse or whose data is shorter than the header
    /// says (a truncated download).
    #[error("{path}: malformed or truncated safetensors file: {source}; download it again")]
    CorruptSafetensors {
        /// The file (or the model directory when several shards were mapped together).
        path: PathBuf,
        /// candle's (safetensors') error.
        #[source]
        source: candle_core::Error,
    },

    /// A tensor the model body needs is not in the checkpoint.
    #[error("{path}: tensor {tensor} is missing from the checkpoint")]
    MissingWeight {
        /// The model directory.
        path: PathBuf,
        /// The tensor's checkpoint name.
        tensor: String,
    },

    /// A tensor whose shape does not match the model's config.
    #[error("{path}: tensor {tensor} has shape {found:?}, the config implies {expected:?}")]
    TensorShape {
        /// The shard holding it.
        path: PathBuf,
        /// The tensor's checkpoint name.
        tensor: String,
        /// The shape config.json implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A tensor stored in a dtype this engine does not run.
    #[error("{path}: tensor {tensor} has dtype {dtype}, expected f32, f16 or bf16 (all the same)")]
    UnsupportedDtype {
        /// The shard holding it.
        path: PathBuf,
        /// The tensor's checkpoint name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },

    /// A JSON file of a model directory (config, tokenizer config, shard index) does not parse
    /// or lacks a required field (serde's message names it).
    #[error("{path}: {source}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// serde_json's error, with the field, line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A model config value this engine cannot run.
    #[error("{path}: {key} = {value}: {problem}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// The config key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What is wrong and what was expected.
        problem: &'static str,
    },

    /// A CUDA device was asked for but this build has no CUDA support.
    #[error(
        "CUDA device {ordinal} requested but heurist-inference was built without the `cuda` \
         feature; rebuild with `--features cuda` or use the CPU"
    )]
    CudaNotCompiled {
        /// The requested device ordinal.
        ordinal: usize,
    },

    /// A CUDA device could not be opened.
    #[error("CUDA device {ordinal}: {source}")]
    Device {
        /// The requested device ordinal.
        ordinal: usize,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },

    /// A model the caller expects in the local cache is not there.
    #[error("model file {path} not found; fetch it with `{command}`")]
    ModelNotFetched {
        /// Where it was looked for.
        path: PathBuf,
        /// The command that puts it there.
        command: &'static str,
    },

    /// A noise tensor of this shape cannot be drawn.
    #[error("noise shape {shape:?}: {problem} (expected at least one dimension, none of them 0)")]
    InvalidNoiseShape {
        /// The shape as requested.
        shape: Vec<usize>,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A scheduler was asked for a number of inference steps it cannot make.
    #[error("{steps} inference steps is out of range (expected 1 to {train_timesteps})")]
    InvalidInferenceSteps {
        /// The requested number of steps.
        steps: usize,
        /// The scheduler's training timesteps, the most steps it can make.
        train_timesteps: usize,
    },

    /// A scheduler configuration that cannot make a schedule.
    #[error("scheduler config: {problem}")]
    InvalidSchedulerConfig {
        /// What is wrong and what was expected.
        problem: String,
    },

    /// A scheduler step was asked for after the last one.
    #[error("scheduler step {step} requested, but the schedule has {steps} steps")]
    SchedulerFinished {
        /// The 0-based step that was asked for.
        step: usize,
        /// The steps in the schedule.
        steps: usize,
    },

    /// A job named a scheduler (or scheduler options) this crate does not run.
    #[error(
        "scheduler {name} is not supported (expected DPMSolverMultistepScheduler with \
         sde-dpmsolver++ and Karras sigmas, EulerDiscreteScheduler, \
         EulerAncestralDiscreteScheduler or DDIMScheduler)"
    )]
    UnknownScheduler {
        /// The name as given, with the options that made it unsupported.
        name: String,
    },

    /// A tensor operation outside a model forward failed (noise, scheduler update).
    #[error("{context}: {source}")]
    Tensor {
        /// What was being computed.
        context: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },

    /// A file that is not a whole safetensors file (bad header length, header not JSON).
    #[error("{path}: not a valid safetensors file: {problem}")]
    MalformedSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// A file that is safetensors but not a Stable Diffusion checkpoint of a known layout.
    #[error("{path}: not a Stable Diffusion checkpoint in a known layout: {problem}")]
    UnknownCheckpointLayout {
        /// The file or folder.
        path: PathBuf,
        /// What was looked for and what was found.
        problem: String,
    },

    /// The tensors' shapes do not make a model this engine runs.
    #[error("{path}: unrecognised model architecture: {problem}")]
    UnrecognisedArchitecture {
        /// The file or folder.
        path: PathBuf,
        /// Which tensor or shape did not fit.
        problem: String,
    },

    /// A tensor the model needs is not in the file.
    #[error(
        "{path}: the {component} needs tensor {tensor} (module name {wanted}), which is missing"
    )]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// Which model: CLIP, UNet, VAE.
        component: &'static str,
        /// The name looked up in the file.
        tensor: String,
        /// The name the module asked for (diffusers naming).
        wanted: String,
    },

    /// An image side this engine cannot run: below 8 pixels (nothing is left after rounding
    /// down to 8) or above its bound ([`crate::image::MAX_IMAGE_SIDE`]).
    #[error("image {name} {value} is out of range (expected 8 to {max} pixels)")]
    InvalidImageSize {
        /// `width` or `height`.
        name: &'static str,
        /// The requested value.
        value: u32,
        /// The largest side the engine runs.
        max: u32,
    },

    /// A LoRA file that is not in a layout this crate reads.
    #[error("{path}: not a kohya LoRA: {problem}")]
    LoraFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// A LoRA whose adapters do not fit the model (another family, another architecture).
    #[error("{path}: the LoRA does not fit the model: {problem}")]
    LoraMismatch {
        /// The LoRA file.
        path: PathBuf,
        /// Which adapters fit nothing.
        problem: String,
    },

    /// A registry composite that cannot run on the loaded base: another base named, the wrong
    /// family for its type, a type that is no composite, or no LoRA weight.
    #[error("composite {composite:?}: {problem}")]
    Composite {
        /// The composite's name.
        composite: String,
        /// What does not fit, with the values.
        problem: String,
    },

    /// The PNG encoder refused the image.
    #[error("PNG encoding: {problem}")]
    ImageEncoding {
        /// The png crate's message.
        problem: String,
    },

    /// An image prompt that cannot be weighted or tokenized (a `(text:w)` weight that is not a
    /// number, SDXL's two tokenizers disagreeing, ...).
    #[error("prompt: {0}")]
    Prompt(#[from] crate::image::prompt::PromptError),

    /// Neither the model directory variable nor `HOME` is set.
    #[error("cannot locate the model cache: set {env_var} or HOME")]
    NoModelDir {
        /// The environment variable that names the directory.
        env_var: &'static str,
    },
}
