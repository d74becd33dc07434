//! The seam between the generation loop and a model body: "tokens at these positions in,
//! next-token logits out", with the KV cache inside the model value.
//!
//! Today the one body is candle-transformers' quantized llama (GGUF, llama architecture: Llama,
//! Mistral, SmolLM2). The safetensors Llama / Mistral / Mixtral bodies and per-request caches
//! for batched decoding join this enum; the engine does not change.
//!
//! A cheap clone (weights are shared `Arc`s) gives a model with its own cache, which is how each
//! request gets a fresh one.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama;

use crate::error::{InferenceError, Result};
use crate::weights::gguf::GgufFile;

/// Architectures `general.architecture` may name.
const SUPPORTED_ARCHITECTURES: &str = "llama";

/// A causal LM body with its KV cache.
#[derive(Debug, Clone)]
pub(crate) enum CausalLm {
    /// candle-transformers' GGUF llama, quantized matmuls on CPU and CUDA.
    QuantizedLlama(quantized_llama::ModelWeights),
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
        };
        logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()
    }
}
