//! The image engine behind the worker's [`ImageRunner`] seam: Stable Diffusion checkpoints
//! loaded with `heurist-inference` ([`ImageEngine`]), one per model id. Prompts go through the
//! engine's own CLIP tokenizer and the reference's long-prompt weighting, as the network's
//! Python miners encode them.
//!
//! The worker hands over a job the protocol's limits have already clamped ([`SdParams`]); this
//! module only translates it into the engine's [`ImageJob`] (the sampler the job named
//! included) and the engine's RGB buffer back into an [`Image`]. Checkpoints are named on the
//! command line as `MODEL_ID=PATH` ([`CheckpointSpec`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use heurist_inference::image::noise::{DrawnIn, NoiseDType, TorchCpuGenerator};
use heurist_inference::image::{ImageEngine, ImageJob, PromptEncoding};
use heurist_inference::DeviceSpec;
use heurist_protocol::{Registry, SdParams};

use crate::download::ModelStore;
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

/// The checkpoints that serve `models` (registry names) and `given`: every `given` spec as
/// it is, then, for each of `models` no spec names, the registry's file for it, fetched into
/// `store` and checked against the registry checksum before it is returned (a file that does
/// not match is deleted and fetched again; one that never matches is an error, never
/// loaded). A name the registry lacks, or one that is not an image model, is an error naming
/// it.
pub async fn checkpoints_for(store: &ModelStore, registry: &Registry, models: &[String], given: &[CheckpointSpec]) -> Result<Vec<CheckpointSpec>> {
    let mut out = given.to_vec();
    for model in models {
        if out.iter().any(|s| s.model_id == *model) {
            continue;
        }
        let entry = registry.get(model).map_err(|e| MinerError::Config { setting: format!("--sd-model-id {model}"), reason: e.to_string() })?;
        if !entry.model_type.is_image() {
            return Err(MinerError::Config {
                setting: format!("--sd-model-id {model}"),
                reason: format!("the registry lists it as {:?}, not an image model", entry.model_type),
            });
        }
        tracing::info!(model, "fetching the image model named by the registry");
        let path = store.ensure(registry, model).await?;
        out.push(CheckpointSpec { model_id: model.clone(), path });
    }
    Ok(out)
}

/// SD checkpoints on one device, by model id: those named at start, and at most one more
/// loaded later ([`ImageRunner::load`], when `miner_signal` switches to a model found in the
/// cache), which the next such load replaces (a job still running on it keeps it until it
/// ends), as the protocol's "unload the current model and load that one" asks.
pub struct SdRunner {
    engines: RwLock<BTreeMap<String, Arc<ImageEngine>>>,
    device: DeviceSpec,
    /// The precision whose noise the jobs draw ([`SdRunner::with_noise`]).
    noise: NoiseDType,
    /// The model loaded after start, if any.
    extra: Mutex<Option<String>>,
}

impl std::fmt::Debug for SdRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdRunner").field("models", &self.models()).field("device", &self.device).finish_non_exhaustive()
    }
}

impl SdRunner {
    /// Loads every checkpoint on `device` (memory-mapped; a bad file fails here, naming it,
    /// before the worker asks for a job).
    pub fn load(specs: &[CheckpointSpec], device: DeviceSpec) -> Result<Self> {
        let mut engines = BTreeMap::new();
        for spec in specs {
            let engine = ImageEngine::load_checkpoint(&spec.path, device).map_err(|e| MinerError::Config {
                setting: format!("--sd-checkpoint {}={}", spec.model_id, spec.path.display()),
                reason: e.to_string(),
            })?;
            if engines.insert(spec.model_id.clone(), Arc::new(engine)).is_some() {
                return Err(MinerError::Config {
                    setting: format!("--sd-checkpoint {}", spec.model_id),
                    reason: "model id given twice".into(),
                });
            }
        }
        Ok(Self { engines: RwLock::new(engines), device, noise: NoiseDType::F32, extra: Mutex::new(None) })
    }

    /// Draws every job's noise as a diffusers pipeline running in `noise` draws it from the
    /// job's seed (the initial latents, and the schedulers' noise but DPM-Solver++ SDE's, in
    /// that precision). The default is f32; the reference miner runs f16 (`torch_dtype=
    /// torch.float16`), so [`NoiseDType::F16`] gives the seed's picture as the network's
    /// miners draw it. Verifiers re-run every precision, so each is honest.
    #[must_use]
    pub fn with_noise(mut self, noise: NoiseDType) -> Self {
        self.noise = noise;
        self
    }

    /// Runs clamped `params` on `model_id` drawing `noise`'s noise (what a verifier's re-run in
    /// each precision needs).
    ///
    /// # Errors
    /// [`ImageError::UnknownModel`] for a model not served, and the engine's errors.
    pub fn generate_drawn(&self, model_id: &str, params: &SdParams, noise: NoiseDType) -> std::result::Result<Image, ImageError> {
        // Cloned out of the lock: a load beside this job neither waits for it nor pulls the
        // engine from under it.
        let engine = self
            .engines
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model_id)
            .cloned()
            .ok_or_else(|| ImageError::UnknownModel(model_id.to_owned()))?;
        let job = image_job(params)?;
        let generator = TorchCpuGenerator::new(job.seed);
        let out = match noise {
            NoiseDType::F32 => engine.generate(&job)?,
            reduced => {
                let sampler = job.sampler.unwrap_or_else(|| engine.default_sampler());
                let mut source = DrawnIn::reduced_precision_miner(generator, sampler, reduced);
                engine.generate_with(&job, PromptEncoding::LongPromptWeighting, &mut source, &mut |_, _| {})?
            }
        };
        Image::new(out.width, out.height, out.rgb)
    }

    /// The model ids served now, sorted.
    pub fn models(&self) -> Vec<String> {
        self.engines.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }
}

/// The engine's job for clamped protocol parameters ([`heurist_verify::jobs::image_job`], the
/// one translation the verifier re-runs too); a sampler the engine does not run is refused,
/// naming it.
pub fn image_job(params: &SdParams) -> std::result::Result<ImageJob, ImageError> {
    Ok(heurist_verify::jobs::image_job(params)?)
}

impl ImageRunner for SdRunner {
    fn generate(&self, model_id: &str, params: &SdParams) -> std::result::Result<Image, ImageError> {
        self.generate_drawn(model_id, params, self.noise)
    }

    fn serves(&self, model_id: &str) -> bool {
        self.engines.read().unwrap_or_else(PoisonError::into_inner).contains_key(model_id)
    }

    fn load(&self, model_id: &str, checkpoint: &Path) -> std::result::Result<(), ImageError> {
        // One load at a time; the models named at start are never replaced.
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        if self.serves(model_id) {
            return Ok(());
        }
        let engine = Arc::new(ImageEngine::load_checkpoint(checkpoint, self.device)?);
        let mut engines = self.engines.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = extra.replace(model_id.to_owned()) {
            tracing::info!(unloaded = old, loaded = model_id, "image model replaced");
            engines.remove(&old);
        }
        engines.insert(model_id.to_owned(), engine);
        Ok(())
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
