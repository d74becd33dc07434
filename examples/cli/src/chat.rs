//! `heurist chat`: one chat completion on a local model, as an LLM miner would answer it.
//!
//! A thin layer over heurist-inference's `ChatEngine`: load a GGUF file or a Hugging Face
//! model directory (optionally with another `tokenizer.json`), read an OpenAI `messages` array,
//! and print the ChatCompletion (`choices` and `usage`) as JSON, with `--stream` the text as
//! it is generated, in the word-sized pieces the network streams, or with `--prompt-only` the
//! rendered prompt.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use heurist_inference::{ChatEngine, ChatMessage, ChatOutput, ChatRequest, ComputeDType, DEFAULT_MAX_TOKENS, DeviceSpec};
use serde_json::json;

use crate::Outcome;
use crate::job::read_input;

#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    /// The model: a GGUF file (llama architecture) or a Hugging Face directory
    /// (config.json, safetensors, tokenizer.json, tokenizer_config.json).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// A Hugging Face tokenizer to use instead of the model's: a `tokenizer.json` or the
    /// directory holding it (its `tokenizer_config.json`'s chat template is used too, if any).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// The OpenAI `messages` array (JSON), or - for standard input.
    #[arg(long, value_name = "FILE|-")]
    messages: PathBuf,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f64,
    /// The sampler's seed; -1 (the network's "no seed") picks one at random.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    seed: i64,
    /// Most tokens to generate (at least 1; the context length cuts it shorter).
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS)]
    max_tokens: usize,
    /// A stop string; may be given several times.
    #[arg(long = "stop", value_name = "S")]
    stops: Vec<String>,
    /// Print the text as it is generated instead of the ChatCompletion JSON.
    #[arg(long)]
    stream: bool,
    /// Print only the prompt the model's chat template renders for the messages, byte for
    /// byte (transformers' `apply_chat_template(messages, add_generation_prompt=True,
    /// tokenize=False)`), and generate nothing: for debugging templates.
    #[arg(long, conflicts_with = "stream")]
    prompt_only: bool,
    /// cpu, cuda, cuda:N or auto (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// The dtype a safetensors model computes in: auto (f32 on the CPU, the checkpoint's own
    /// on a GPU), f32, f16 or bf16. A GGUF file runs its own quantized kernels.
    #[arg(long, default_value = "auto", value_parser = parse_dtype)]
    dtype: ComputeDType,
}

fn parse_dtype(s: &str) -> Result<ComputeDType, String> {
    s.parse()
}

pub(crate) fn run(args: ChatArgs) -> anyhow::Result<Outcome> {
    let input = read_input(&args.messages)?;
    let text = std::str::from_utf8(&input).with_context(|| format!("--messages {}: not UTF-8", args.messages.display()))?;
    let messages = ChatMessage::parse_list(text).with_context(|| format!("--messages {}", args.messages.display()))?;
    let seed = match args.seed {
        -1 => None,
        s => Some(u64::try_from(s).map_err(|_| anyhow::anyhow!("--seed {s}: expected -1 or a number >= 0"))?),
    };
    let mut request = ChatRequest::new(messages)
        .with_max_tokens(args.max_tokens)
        .with_sampling(args.temperature, seed)
        .with_stop(args.stops.iter().cloned());
    request.top_p = args.top_p;

    let engine = load(&args.model, args.tokenizer.as_deref(), args.device, args.dtype)?;
    let mut stdout = std::io::stdout().lock();
    if args.prompt_only {
        // No newline of our own: the output is the prompt exactly.
        stdout.write_all(engine.render_prompt(&request.messages)?.as_bytes())?;
        stdout.flush()?;
    } else if args.stream {
        let mut failed = None;
        engine.chat_stream(&request, &mut |piece| {
            if failed.is_none()
                && let Err(err) = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush())
            {
                failed = Some(err);
            }
        })?;
        if let Some(err) = failed {
            return Err(err).context("writing the streamed text");
        }
        writeln!(stdout)?;
    } else {
        let out = engine.chat(&request)?;
        let completion = completion_json(&out, &args.model);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&completion)?)?;
    }
    Ok(Outcome::Ok)
}

fn load(model: &Path, tokenizer: Option<&Path>, device: DeviceSpec, dtype: ComputeDType) -> anyhow::Result<ChatEngine> {
    let engine = if model.is_dir() {
        ChatEngine::load_safetensors_with(model, device, dtype)
    } else {
        anyhow::ensure!(
            dtype == ComputeDType::Auto,
            "--dtype is for safetensors model directories; {} is a GGUF file, which runs its own kernels",
            model.display()
        );
        ChatEngine::load_gguf(model, device)
    }
    .with_context(|| format!("loading --model {}", model.display()))?;
    let Some(tokenizer) = tokenizer else { return Ok(engine) };
    let dir = if tokenizer.is_dir() {
        tokenizer
    } else if tokenizer.file_name().is_some_and(|n| n == "tokenizer.json") {
        tokenizer.parent().unwrap_or(Path::new("."))
    } else {
        bail!("--tokenizer {}: expected a tokenizer.json file or the directory holding one", tokenizer.display());
    };
    engine.with_tokenizer_dir(dir).with_context(|| format!("--tokenizer {}", tokenizer.display()))
}

/// The OpenAI ChatCompletion object for one answer.
fn completion_json(out: &ChatOutput, model: &Path) -> serde_json::Value {
    let mut message = json!({ "role": "assistant", "content": out.text });
    if !out.tool_calls.is_empty() {
        message["tool_calls"] = json!(out.tool_calls);
    }
    let model_name = model.file_name().map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into_owned());
    json!({
        "object": "chat.completion",
        "model": model_name,
        "choices": [{ "index": 0, "message": message, "finish_reason": out.finish_reason }],
        "usage": {
            "prompt_tokens": out.usage.prompt_tokens,
            "completion_tokens": out.usage.completion_tokens,
            "total_tokens": out.usage.prompt_tokens + out.usage.completion_tokens,
        },
    })
}
