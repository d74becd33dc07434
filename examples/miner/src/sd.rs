//! The image engine behind the worker's [`ImageRunner`] seam: Stable Diffusion checkpoints
//! loaded with `heurist-inference` ([`ImageEngine`]), one per model id, prompts tokenized with
//! the CLIP tokenizer the crate embeds.
//!
//! The worker hands over a job the protocol's limits have already clamped ([`SdParams`]); this
//! module only translates it into the engine's [`ImageJob`] (the sampler the job named
//! included) and the engine's RGB buffer back into an [`Image`]. Checkpoints are named on the
//! command line as `MODEL_ID=PATH` ([`CheckpointSpec`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use heurist_inference::image::clip_tokenizer::ClipTokenizer;
use heurist_inference::image::{ImageEngine, ImageJob, SamplerSpec};
use heurist_inference::DeviceSpec;
use heurist_protocol::SdParams;

use crate::error::{MinerError, Result};
use crate::image::{Image, ImageError, ImageRunner};

/// A model id and the single-file checkpoint that serves it: `MODEL_ID=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSpec {
    /// The registry name jobs arrive under.
    pub model_id: String,
    /// The `.safetensors` checkpoint (LDM / A1111 layout, SD 1.5 or SDXL).
    pub path: PathBuf,
}

/// A `MODEL_ID=PATH` that is not one.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {0:?}: expected MODEL_ID=PATH, both non-empty")]
pub struct CheckpointSpecError(String);

impl FromStr for CheckpointSpec {
    type Err = CheckpointSpecError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((id, path)) if !id.trim().is_empty() && !path.is_empty() => {
                Ok(Self { model_id: id.trim().to_owned(), path: PathBuf::from(path) })
            }
            _ => Err(CheckpointSpecError(s.to_owned())),
        }
    }
}

/// SD checkpoints on one device, by model id, and the CLIP tokenizer their prompts go through.
pub struct SdRunner {
    engines: BTreeMap<String, ImageEngine>,
    tokenizer: ClipTokenizer,
}

impl std::fmt::Debug for SdRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdRunner").field("models", &self.engines.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl SdRunner {
    /// Loads every checkpoint on `device` (memory-mapped; a bad file fails here, naming it,
    /// before the worker asks for a job).
    pub fn load(specs: &[CheckpointSpec], device: DeviceSpec) -> Result<Self> {
        let tokenizer = ClipTokenizer::new()
            .map_err(|e| MinerError::Config { setting: "CLIP tokenizer".into(), reason: e.to_string() })?;
        let mut engines = BTreeMap::new();
        for spec in specs {
            let engine = ImageEngine::load_checkpoint(&spec.path, device).map_err(|e| MinerError::Config {
                setting: format!("--sd-checkpoint {}={}", spec.model_id, spec.path.display()),
                reason: e.to_string(),
            })?;
            if engines.insert(spec.model_id.clone(), engine).is_some() {
                return Err(MinerError::Config {
                    setting: format!("--sd-checkpoint {}", spec.model_id),
                    reason: "model id given twice".into(),
                });
            }
        }
        Ok(Self { engines, tokenizer })
    }

    /// The model ids served, sorted.
    pub fn models(&self) -> Vec<String> {
        self.engines.keys().cloned().collect()
    }
}

/// The engine's job for clamped protocol parameters.
pub fn image_job(params: &SdParams) -> ImageJob {
    ImageJob {
        prompt: params.prompt.clone(),
        neg_prompt: params.neg_prompt.clone(),
        width: params.width,
        height: params.height,
        steps: params.steps as usize,
        guidance_scale: params.guidance_scale,
        seed: params.seed,
        sampler: params.sampler.as_ref().map(|s| SamplerSpec {
            class_name: s.class_name.clone(),
            algorithm_type: s.algorithm_type.clone(),
            use_karras_sigmas: s.use_karras_sigmas,
        }),
    }
}

impl ImageRunner for SdRunner {
    fn generate(&self, model_id: &str, params: &SdParams) -> std::result::Result<Image, ImageError> {
        let engine = self.engines.get(model_id).ok_or_else(|| ImageError::UnknownModel(model_id.to_owned()))?;
        // The engine wants BOS, the text's ids, EOS; `encode_padded` gives that (cut to 75
        // text ids) followed by the pad token, which the engine's own padding would add. Both
        // prompts are tokenized here, first, so that a tokenizer failure is reported as one.
        let tokenize = |text: &str| {
            self.tokenizer.encode_padded(text).map_err(|e| ImageError::Prompt { text: text.to_owned(), reason: e.to_string() })
        };
        let (positive, negative) = (tokenize(&params.prompt)?, tokenize(&params.neg_prompt)?);
        let ids = |text: &str| -> heurist_inference::Result<Vec<u32>> {
            Ok(if text == params.prompt { positive.clone() } else { negative.clone() })
        };
        let out = engine.generate(&image_job(params), &ids)?;
        Image::new(out.width, out.height, out.rgb)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn checkpoint_specs_parse_and_reject() {
        let s: CheckpointSpec = "tiny-sd15=/m/a=b.safetensors".parse().unwrap();
        assert_eq!(s.model_id, "tiny-sd15");
        assert_eq!(s.path, PathBuf::from("/m/a=b.safetensors"));
        for bad in ["", "=x", "id=", "no-equals"] {
            let e = bad.parse::<CheckpointSpec>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn unknown_model_is_refused_by_name() {
        let runner = SdRunner::load(&[], DeviceSpec::Cpu).unwrap();
        let params = SdParams {
            prompt: "p".into(),
            neg_prompt: String::new(),
            width: 64,
            height: 64,
            steps: 2,
            guidance_scale: 7.0,
            seed: 1,
            seed_was_random: false,
            sampler: None,
        };
        let e = runner.generate("nope", &params).unwrap_err();
        assert!(matches!(e, ImageError::UnknownModel(ref m) if m == "nope"), "{e}");
    }
}
