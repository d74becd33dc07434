//! The honest images of the reference miner's stack (tests/fixtures/honest_images, made by
//! tools/make_image_honest_sets.py) and the engines that re-run their jobs: shared by the image
//! detection table (examples/image_detection_table.rs) and the tests (tests/it/image_network.rs).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use heurist_inference::DeviceSpec;
use heurist_inference::image::{ImageEngine, ImageJob, Lora, LoraScale};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The images' side in pixels.
pub const SIDE: u32 = 64;

/// One honest image and the job it answers.
#[derive(Clone, Debug)]
pub struct HonestImage {
    /// `calibration` or `evaluation`.
    pub split: String,
    /// `sd15`, `sdxl`, `lora` or `weighted`.
    pub kind: String,
    /// `sd15` or `sdxl`.
    pub family: String,
    /// The composite's LoRA weight, for `lora` jobs.
    pub lora_weight: Option<f64>,
    /// The job.
    pub job: ImageJob,
    /// The miner's precision: `f32`, `f16` or `bf16`.
    pub precision: String,
    /// 8-bit RGB, row-major.
    pub rgb: Vec<u8>,
}

/// heurist-inference's tiny SD models.
pub fn sd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../heurist-inference/tests/fixtures/sd")
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/honest_images")
}

/// Every honest image of the fixture, in its order.
pub fn load_honest() -> BoxResult<Vec<HonestImage>> {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("jobs.json"))?)?;
    let images = candle_core::safetensors::load(fixture_dir().join("images.safetensors"), &Device::Cpu)?;
    let images = &images["images"];
    let rows = meta["images"].as_array().ok_or("jobs.json: no images")?;
    let (count, h, w, _) = images.dims4()?;
    if count != rows.len() || (h, w) != (SIDE as usize, SIDE as usize) {
        return Err(format!("images.safetensors holds {count} images of {w}x{h}, jobs.json {} rows", rows.len()).into());
    }
    let text = |r: &Value, k: &str| r[k].as_str().map(str::to_owned).ok_or(format!("jobs.json: no {k}"));
    let num = |r: &Value, k: &str| r[k].as_f64().ok_or(format!("jobs.json: no {k}"));
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(HonestImage {
                split: text(r, "split")?,
                kind: text(r, "kind")?,
                family: text(r, "family")?,
                lora_weight: r["lora"].get("weight").and_then(Value::as_f64),
                job: ImageJob {
                    prompt: text(r, "prompt")?,
                    neg_prompt: text(r, "neg_prompt")?,
                    width: num(r, "width")? as u32,
                    height: num(r, "height")? as u32,
                    steps: num(r, "steps")? as usize,
                    guidance_scale: num(r, "guidance")?,
                    seed: r["seed"].as_u64().ok_or("jobs.json: no seed")?,
                    sampler: None,
                },
                precision: text(r, "precision")?,
                rgb: images.get(i)?.flatten_all()?.to_vec1::<u8>()?,
            })
        })
        .collect()
}

/// The composites' LoRA: the committed kohya file of the family with every `.alpha` times
/// `gain` (tools/make_image_honest_sets.py's LORA_ALPHA_GAIN, 8), written to `to`.
pub fn strong_lora(family: &str, gain: f64, to: &Path) -> BoxResult<()> {
    let file = sd_dir().join(format!("tiny-{family}-lora.safetensors"));
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu)?;
    for (name, t) in tensors.iter_mut() {
        if name.ends_with(".alpha") {
            *t = (t.to_dtype(DType::F32)? * gain)?.to_dtype(t.dtype())?;
        }
    }
    candle_core::safetensors::save(&tensors, to)?;
    Ok(())
}

/// `from` with the values of every UNet and text-encoder tensor shuffled: another checkpoint of
/// the same architecture and statistics.
pub fn shuffled_checkpoint(from: &Path, to: &Path) -> BoxResult<()> {
    let mut rng = StdRng::seed_from_u64(77);
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load(from, &Device::Cpu)?.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let shuffle = (name.starts_with("model.diffusion_model.")
            || name.starts_with("cond_stage_model.")
            || name.starts_with("conditioner."))
            && t.dtype().is_float()
            && t.elem_count() > 1;
        let t = if shuffle {
            let (dtype, shape) = (t.dtype(), t.shape().clone());
            let mut v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            v.shuffle(&mut rng);
            Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
        } else {
            t
        };
        out.insert(name, t);
    }
    candle_core::safetensors::save(&out, to)?;
    Ok(())
}

/// Engines by (family, shuffled checkpoint, LoRA weight), loaded on first use.
pub struct Engines {
    dir: tempfile::TempDir,
    cache: HashMap<(String, bool, Option<u64>), ImageEngine>,
}

impl Engines {
    pub fn new() -> BoxResult<Self> {
        let dir = tempfile::tempdir()?;
        for family in ["sd15", "sdxl"] {
            strong_lora(family, 8.0, &dir.path().join(format!("{family}-lora.safetensors")))?;
        }
        Ok(Self { dir, cache: HashMap::new() })
    }

    /// The checkpoint file of `family`, the shuffled copy if `shuffled`.
    fn checkpoint(&self, family: &str, shuffled: bool) -> BoxResult<PathBuf> {
        let original = sd_dir().join(format!("tiny-{family}-fp16.safetensors"));
        if !shuffled {
            return Ok(original);
        }
        let path = self.dir.path().join(format!("{family}-shuffled.safetensors"));
        if !path.exists() {
            shuffled_checkpoint(&original, &path)?;
        }
        Ok(path)
    }

    /// The engine of `family` with the composite's LoRA at `lora_weight` as the reference
    /// applies it.
    pub fn get(&mut self, family: &str, shuffled: bool, lora_weight: Option<f64>) -> BoxResult<&ImageEngine> {
        let key = (family.to_owned(), shuffled, lora_weight.map(f64::to_bits));
        if !self.cache.contains_key(&key) {
            let mut engine = ImageEngine::load_checkpoint(self.checkpoint(family, shuffled)?, DeviceSpec::Cpu)?;
            if let Some(w) = lora_weight {
                let lora = Lora::open(self.dir.path().join(format!("{family}-lora.safetensors")))?;
                engine.set_lora(Some((Arc::new(lora), LoraScale::reference(w))))?;
            }
            self.cache.insert(key.clone(), engine);
        }
        Ok(&self.cache[&key])
    }

    /// An engine with the LoRA at `scale` exactly (not cached).
    pub fn with_scale(&self, family: &str, scale: LoraScale) -> BoxResult<ImageEngine> {
        let mut engine = ImageEngine::load_checkpoint(self.checkpoint(family, false)?, DeviceSpec::Cpu)?;
        let lora = Lora::open(self.dir.path().join(format!("{family}-lora.safetensors")))?;
        engine.set_lora(Some((Arc::new(lora), scale)))?;
        Ok(engine)
    }
}
