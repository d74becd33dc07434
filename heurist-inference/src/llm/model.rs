//! The seam between the generation loop and a model body: "tokens at these positions in,
//! next-token logits out", with the KV cache inside the model value.
//!
//! The bodies: candle-transformers' quantized llama (GGUF, llama architecture: Llama, Mistral,
//! SmolLM2), and its llama / mistral / mixtral bodies for Hugging Face safetensors checkpoints
//! (see `hf_config.rs` for what is checked before they load). Per-request caches for batched
//! decoding join this enum; the engine does not change.
//!
//! A cheap clone (weights are shared `Arc`s) gives a model with its own cache, which is how each
//! request gets a fresh one.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, mistral, mixtral, quantized_llama};

use crate::error::{InferenceError, Result};
use crate::llm::hf_config::{Architecture, HfConfig};
use crate::weights::gguf::GgufFile;
use crate::weights::safetensors::SafetensorsWeights;

/// Architectures `general.architecture` may name.
const SUPPORTED_ARCHITECTURES: &str = "llama";

/// A causal LM body with its KV cache.
// One value per request, moved rarely: the size spread between the GGUF weights handle and the
// boxed safetensors bodies costs nothing worth a second allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum CausalLm {
    /// candle-transformers' GGUF llama, quantized matmuls on CPU and CUDA.
    QuantizedLlama(quantized_llama::ModelWeights),
    /// candle-transformers' Llama (safetensors); its KV cache lives beside it.
    Llama(Box<(llama::Llama, llama::Cache)>),
    /// candle-transformers' Mistral (safetensors), cache inside.
    Mistral(Box<mistral::Model>),
    /// candle-transformers' Mixtral (safetensors), cache inside.
    Mixtral(Box<mixtral::Model>),
}

/// A loaded body and the facts about it the engine needs.
#[derive(Debug)]
pub(crate) struct LoadedLm {
    pub(crate) model: CausalLm,
    /// Positions the body can attend over.
    pub(crate) context_length: usize,
}

impl CausalLm {
    /// Loads the body described by an open GGUF file onto `device`.
    pub(crate) fn load_gguf(gguf: GgufFile, device: &Device) -> Result<LoadedLm> {
        let architecture = gguf.str("general.architecture")?.to_owned();
        if architecture != "llama" {
            return Err(InferenceError::UnsupportedArchitecture {
                path: gguf.path().to_path_buf(),
                architecture,
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
        // candle precomputes RoPE tables for MAX_SEQ_LEN positions; past that its forward fails.
        let trained = gguf.opt_u32("llama.context_length")?.map_or(usize::MAX, |n| n as usize);
        let context_length = trained.min(quantized_llama::MAX_SEQ_LEN);
        let (content, mut reader, path) = gguf.into_parts();
        let weights = quantized_llama::ModelWeights::from_gguf(content, &mut reader, device)
            .map_err(|source| InferenceError::Load { path, source })?;
        Ok(LoadedLm { model: CausalLm::QuantizedLlama(weights), context_length })
    }

    /// Loads the body `config` describes from a checked checkpoint onto `device`, in the
    /// checkpoint's own dtype.
    pub(crate) fn load_safetensors(
        config: &HfConfig,
        weights: SafetensorsWeights,
        device: &Device,
    ) -> Result<LoadedLm> {
        let dtype = weights.check(&config.expected_tensors())?;
        let path = weights.dir().to_path_buf();
        let load_err = |source| InferenceError::Load { path: path.clone(), source };
        let vb = weights.into_var_builder(dtype, device);
        let model = match config.architecture {
            Architecture::Llama => {
                let cfg = config.llama();
                // candle's `Llama::load` unwraps per layer; every tensor was checked above, so
                // a panic here would be a candle bug; it still becomes an error, not an abort.
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    llama::Llama::load(vb, &cfg)
                }))
                .map_err(|_| {
                    load_err(candle_core::Error::Msg("candle's llama loader panicked".into()))
                })?
                .map_err(load_err)?;
                let cache = llama::Cache::new(true, dtype, &cfg, device).map_err(load_err)?;
                CausalLm::Llama(Box::new((loaded, cache)))
            }
            Architecture::Mistral => CausalLm::Mistral(Box::new(
                mistral::Model::new(&config.mistral(), vb).map_err(load_err)?,
            )),
            Architecture::Mixtral => CausalLm::Mixtral(Box::new(
                mixtral::Model::new(&config.mixtral()?, vb).map_err(load_err)?,
            )),
        };
        Ok(LoadedLm { model, context_length: config.context_length() })
    }

    /// Runs `tokens` at positions `position..position + tokens.len()` (the cache holds
    /// everything before `position`; `position == 0` starts over) and returns the logits that
    /// follow the last one.
    pub(crate) fn forward_last(
        &mut self,
        tokens: &[u32],
        position: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<f32>> {
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            CausalLm::QuantizedLlama(model) => model.forward(&input, position)?,
            CausalLm::Llama(body) => {
                let (model, cache) = &mut **body;
                model.forward(&input, position, cache)?
            }
            CausalLm::Mistral(model) => model.forward(&input, position)?,
            CausalLm::Mixtral(model) => model.forward(&input, position)?,
        };
        // [1, vocab] from the llama bodies, [1, 1, vocab] from mistral and mixtral.
        logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    }
}
