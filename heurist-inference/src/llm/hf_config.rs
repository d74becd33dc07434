//! A Hugging Face `config.json` for the three causal LM architectures the network serves
//! (`model_type` llama, mistral, mixtral), checked and turned into the decoder's runtime config
//! ([`crate::llm::decoder`]).
//!
//! The checks catch what would otherwise go wrong silently or deep inside a forward pass: sizes
//! that would divide by zero or not divide evenly, RoPE scaling kinds the decoder does not
//! implement (it would use plain RoPE), attention or MLP biases it has no weights for. Each
//! rejected value becomes [`InferenceError::InvalidConfig`] naming the key; a missing required
//! key is serde's message ("missing field `hidden_size`") in [`InferenceError::InvalidJson`].
//!
//! [`HfConfig::expected_tensors`] lists the checkpoint tensors, with shapes, that the body will
//! ask for, so a checkpoint that does not fit its config is caught before loading.

use std::path::Path;

use serde::Deserialize;

use crate::error::{InferenceError, Result};
use crate::llm::decoder::{DecoderConfig, Llama3Rope};
use crate::weights::safetensors::ExpectedTensor;

/// The `model_type`s this engine loads from safetensors.
pub(crate) const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, mixtral";

/// Which body a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Architecture {
    /// Llama 2 / Llama 3 (`LlamaForCausalLM`).
    Llama,
    /// Mistral (`MistralForCausalLM`): Llama with a sliding attention window.
    Mistral,
    /// Mixtral (`MixtralForCausalLM`): Mistral with sparse mixture-of-experts MLPs.
    Mixtral,
}

/// The fields of `config.json` the three bodies use. Optional ones default as transformers
/// defaults them.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    sliding_window: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    eos_token_id: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_hidden_act() -> String {
    "silu".to_owned()
}

/// A checked config.
#[derive(Debug, Clone)]
pub(crate) struct HfConfig {
    raw: RawConfig,
    /// The body to build.
    pub(crate) architecture: Architecture,
    head_dim: usize,
    kv_heads: usize,
}

impl HfConfig {
    /// Reads and checks `config.json` at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| InferenceError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Checks the text of a `config.json` (`path` names it in errors).
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|source| InferenceError::InvalidJson { path: path.to_path_buf(), source })?;
        let invalid = |key: &'static str, value: String, problem: &'static str| InferenceError::InvalidConfig {
            path: path.to_path_buf(),
            key,
            value,
            problem,
        };
        let architecture = match raw.model_type.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "mixtral" => Architecture::Mixtral,
            other => {
                return Err(InferenceError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: other.to_owned(),
                    supported: SUPPORTED_MODEL_TYPES,
                });
            }
        };
        for (key, value) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("max_position_embeddings", raw.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(invalid(key, "0".into(), "must be at least 1"));
            }
        }
        let kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(kv_heads) {
            return Err(invalid(
                "num_key_value_heads",
                kv_heads.to_string(),
                "must be at least 1 and divide num_attention_heads",
            ));
        }
        let even_split = raw.hidden_size / raw.num_attention_heads;
        let head_dim = raw.head_dim.unwrap_or(even_split);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid("head_dim", head_dim.to_string(), "must be even and at least 2 (RoPE)"));
        }
        if raw.hidden_act != "silu" {
            return Err(invalid("hidden_act", raw.hidden_act.clone(), "only silu is supported"));
        }
        if raw.attention_bias {
            return Err(invalid("attention_bias", "true".into(), "attention biases are not supported"));
        }
        if raw.mlp_bias {
            return Err(invalid("mlp_bias", "true".into(), "MLP biases are not supported"));
        }
        if raw.sliding_window == Some(0) {
            return Err(invalid("sliding_window", "0".into(), "must be at least 1 or null"));
        }
        if raw.tie_word_embeddings && architecture != Architecture::Llama {
            return Err(invalid(
                "tie_word_embeddings",
                "true".into(),
                "tied embeddings are supported for llama only",
            ));
        }
        if let Some(scaling) = &raw.rope_scaling {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            let supported = architecture == Architecture::Llama
                && match kind {
                    "default" => true,
                    // All four llama3 parameters must be there; a partial one would otherwise
                    // fall back to plain RoPE without a word.
                    "llama3" => serde_json::from_value::<RawLlama3Rope>(scaling.clone()).is_ok(),
                    _ => false,
                };
            if !scaling.is_null() && !supported {
                return Err(invalid(
                    "rope_scaling",
                    scaling.to_string(),
                    "only llama3 RoPE scaling (llama; factor, low_freq_factor, high_freq_factor, original_max_position_embeddings) is supported",
                ));
            }
        }
        if architecture == Architecture::Mixtral {
            let experts = raw.num_local_experts.unwrap_or(0);
            let per_token = raw.num_experts_per_tok.unwrap_or(0);
            if experts == 0 {
                return Err(invalid("num_local_experts", experts.to_string(), "must be at least 1"));
            }
            if per_token == 0 || per_token > experts {
                return Err(invalid(
                    "num_experts_per_tok",
                    per_token.to_string(),
                    "must be between 1 and num_local_experts",
                ));
            }
        }
        Ok(Self { raw, architecture, head_dim, kv_heads })
    }

    /// Positions a prompt and its completion may occupy together: the trained length
    /// (Mistral's sliding window limits what a position attends to, not how many there are).
    pub(crate) fn context_length(&self) -> usize {
        self.raw.max_position_embeddings
    }

    /// The vocabulary size the embedding has.
    pub(crate) fn vocab_size(&self) -> usize {
        self.raw.vocab_size
    }

    /// `eos_token_id` (one id or a list), as ids.
    pub(crate) fn eos_token_ids(&self) -> Vec<u32> {
        match &self.raw.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The tensors the body will load, with their shapes.
    pub(crate) fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        let r = &self.raw;
        let (h, i, v) = (r.hidden_size, r.intermediate_size, r.vocab_size);
        let q = r.num_attention_heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let mut out = vec![
            ExpectedTensor::new("model.embed_tokens.weight", &[v, h]),
            ExpectedTensor::new("model.norm.weight", &[h]),
        ];
        if !(self.architecture == Architecture::Llama && r.tie_word_embeddings) {
            out.push(ExpectedTensor::new("lm_head.weight", &[v, h]));
        }
        for layer in 0..r.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            out.push(ExpectedTensor::new(format!("{p}.input_layernorm.weight"), &[h]));
            out.push(ExpectedTensor::new(format!("{p}.post_attention_layernorm.weight"), &[h]));
            out.push(ExpectedTensor::new(format!("{p}.self_attn.q_proj.weight"), &[q, h]));
            out.push(ExpectedTensor::new(format!("{p}.self_attn.k_proj.weight"), &[kv, h]));
            out.push(ExpectedTensor::new(format!("{p}.self_attn.v_proj.weight"), &[kv, h]));
            out.push(ExpectedTensor::new(format!("{p}.self_attn.o_proj.weight"), &[h, q]));
            match self.architecture {
                Architecture::Llama | Architecture::Mistral => {
                    out.push(ExpectedTensor::new(format!("{p}.mlp.gate_proj.weight"), &[i, h]));
                    out.push(ExpectedTensor::new(format!("{p}.mlp.up_proj.weight"), &[i, h]));
                    out.push(ExpectedTensor::new(format!("{p}.mlp.down_proj.weight"), &[h, i]));
                }
                Architecture::Mixtral => {
                    let experts = r.num_local_experts.unwrap_or(0);
                    let moe = format!("{p}.block_sparse_moe");
                    out.push(ExpectedTensor::new(format!("{moe}.gate.weight"), &[experts, h]));
                    for e in 0..experts {
                        out.push(ExpectedTensor::new(format!("{moe}.experts.{e}.w1.weight"), &[i, h]));
                        out.push(ExpectedTensor::new(format!("{moe}.experts.{e}.w2.weight"), &[h, i]));
                        out.push(ExpectedTensor::new(format!("{moe}.experts.{e}.w3.weight"), &[i, h]));
                    }
                }
            }
        }
        out
    }

    /// The decoder's runtime config.
    pub(crate) fn decoder(&self) -> DecoderConfig {
        let r = &self.raw;
        let rope_scaling = r
            .rope_scaling
            .as_ref()
            .filter(|s| !s.is_null())
            .and_then(|s| serde_json::from_value::<RawLlama3Rope>(s.clone()).ok())
            .map(|s| Llama3Rope {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor,
                high_freq_factor: s.high_freq_factor,
                original_max_position_embeddings: s.original_max_position_embeddings,
            });
        DecoderConfig {
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            vocab_size: r.vocab_size,
            num_layers: r.num_hidden_layers,
            num_heads: r.num_attention_heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            rms_norm_eps: r.rms_norm_eps,
            rope_theta: r.rope_theta,
            rope_scaling,
            max_positions: r.max_position_embeddings,
            tie_word_embeddings: r.tie_word_embeddings,
            sliding_window: if self.architecture == Architecture::Llama { None } else { r.sliding_window },
            experts: (self.architecture == Architecture::Mixtral)
                .then(|| (r.num_local_experts.unwrap_or(0), r.num_experts_per_tok.unwrap_or(0))),
        }
    }
}

/// `rope_scaling` of `rope_type` `llama3`: all four parameters are required.
#[derive(Debug, Clone, Deserialize)]
struct RawLlama3Rope {
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_position_embeddings: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
        "max_position_embeddings":32,"rms_norm_eps":1e-5}"#;

    fn parse(text: &str) -> Result<HfConfig> {
        HfConfig::parse(Path::new("config.json"), text)
    }

    fn with(key: &str, value: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(LLAMA).unwrap();
        v[key] = value;
        v.to_string()
    }

    #[test]
    fn llama_tensors_follow_the_config() {
        let cfg = parse(LLAMA).unwrap();
        let tensors = cfg.expected_tensors();
        assert_eq!(tensors.len(), 3 + 9);
        let k = tensors.iter().find(|t| t.name == "model.layers.0.self_attn.k_proj.weight").unwrap();
        assert_eq!(k.shape, vec![4, 8]);
    }

    #[test]
    fn missing_field_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(LLAMA).unwrap();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = parse(&v.to_string()).unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
    }

    #[test]
    fn bad_values_are_typed() {
        let cases = [
            ("num_key_value_heads", serde_json::json!(3), "num_key_value_heads"),
            ("num_attention_heads", serde_json::json!(0), "num_attention_heads"),
            ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
            ("rope_scaling", serde_json::json!({"type": "linear", "factor": 2.0}), "rope_scaling"),
            ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0}), "rope_scaling"),
            ("attention_bias", serde_json::json!(true), "attention_bias"),
            ("head_dim", serde_json::json!(5), "head_dim"),
        ];
        for (key, value, named) in cases {
            match parse(&with(key, value)) {
                Err(InferenceError::InvalidConfig { key, .. }) => assert_eq!(key, named),
                other => panic!("{named}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(&with("model_type", serde_json::json!("gpt2"))),
            Err(InferenceError::UnsupportedArchitecture { ref architecture, .. }) if architecture == "gpt2"
        ));
    }

    #[test]
    fn sliding_window_reaches_the_decoder() {
        let mistral = with("model_type", serde_json::json!("mistral"));
        let mut v: serde_json::Value = serde_json::from_str(&mistral).unwrap();
        v["sliding_window"] = serde_json::json!(20);
        let cfg = parse(&v.to_string()).unwrap();
        assert_eq!((cfg.context_length(), cfg.decoder().sliding_window), (32, Some(20)));
        v["sliding_window"] = serde_json::Value::Null;
        assert_eq!(parse(&v.to_string()).unwrap().decoder().sliding_window, None);
        // Llama has no window, whatever the file says.
        let mut v: serde_json::Value = serde_json::from_str(LLAMA).unwrap();
        v["sliding_window"] = serde_json::json!(4);
        assert_eq!(parse(&v.to_string()).unwrap().decoder().sliding_window, None);
    }
}
