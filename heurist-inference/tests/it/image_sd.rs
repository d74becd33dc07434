//! The SD 1.5 engine against diffusers 0.30.2 / transformers 4.44.2 on a tiny random-weight
//! model (tests/fixtures/sd, made by tools/make_sd_models.py): the single-file LDM checkpoint in
//! f16 and converted to f32, and the diffusers-layout folder, must give diffusers' CLIP hidden
//! states, UNet output and VAE decode within 1e-4 relative (of the largest reference value), and
//! a whole seeded CFG run (DPM++ 2M SDE Karras, torch's generator) its per-step latents and its
//! final image at PSNR >= 40 dB. A real example job from the network runs on the tiny model.
//!
//! The fixture's weights are exact f16 values, so the f16 file, its f32 conversion and the f32
//! model diffusers ran are one model.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use heurist_inference::image::noise::TorchCpuGenerator;
use heurist_inference::image::{ClipActivation, ImageEngine, ImageJob, PromptEncoding, SdFamily};
use heurist_inference::{DeviceSpec, InferenceError};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

pub(crate) fn sd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

pub(crate) fn checkpoint_fp16() -> PathBuf {
    sd_dir().join("tiny-sd15-fp16.safetensors")
}

pub(crate) fn reference() -> &'static std::collections::HashMap<String, Tensor> {
    static REF: OnceLock<std::collections::HashMap<String, Tensor>> = OnceLock::new();
    REF.get_or_init(|| {
        candle_core::safetensors::load(sd_dir().join("reference.safetensors"), &Device::Cpu)
            .unwrap()
    })
}

pub(crate) fn reference_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(sd_dir().join("reference.json")).unwrap())
        .unwrap()
}

pub(crate) fn tensor(name: &str) -> Tensor {
    reference()[name].clone()
}

pub(crate) fn engine() -> &'static ImageEngine {
    static ENGINE: OnceLock<ImageEngine> = OnceLock::new();
    ENGINE.get_or_init(|| ImageEngine::load_checkpoint(checkpoint_fp16(), DeviceSpec::Cpu).unwrap())
}

/// The largest difference relative to the largest reference magnitude.
pub(crate) fn relative_error(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims());
    let a = actual.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let e = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&e)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}

/// The job of a recorded seeded run: the prompts "positive" and "negative" stand for the
/// fixture's token ids (see [`fixed_ids`]).
pub(crate) fn fixture_job(run: &Value, sampler: Option<heurist_inference::image::SchedulerKind>) -> ImageJob {
    ImageJob {
        prompt: "positive".into(),
        neg_prompt: "negative".into(),
        width: run["width"].as_u64().unwrap() as u32,
        height: run["height"].as_u64().unwrap() as u32,
        steps: run["steps"].as_u64().unwrap() as usize,
        guidance_scale: run["guidance_scale"].as_f64().unwrap(),
        seed: run["seed"].as_u64().unwrap(),
        sampler,
    }
}

/// A tokenizer that hands over the fixture's ids by prompt name: `ids[0]` for "positive",
/// `ids[1]` for "negative".
pub(crate) fn fixed_ids(ids: &[Vec<u32>]) -> impl Fn(&str) -> heurist_inference::Result<Vec<u32>> + '_ {
    move |text| {
        Ok(match text {
            "positive" => ids[0].clone(),
            "negative" => ids[1].clone(),
            other => panic!("unexpected prompt {other}"),
        })
    }
}

fn text_ids() -> Vec<Vec<u32>> {
    let ids = tensor("text_ids").to_dtype(DType::U32).unwrap();
    ids.to_vec2::<u32>().unwrap()
}

fn check_models(engine: &ImageEngine, what: &str) {
    let hidden = engine.encode_token_ids(&text_ids()).unwrap().context;
    let err = relative_error(&hidden, &tensor("text_hidden"));
    eprintln!("{what}: CLIP relative error {err:e}");
    assert!(err < TOLERANCE, "{what}: CLIP {err}");

    let timestep = reference_json()["unet_timestep"].as_f64().unwrap();
    let out = engine
        .unet_forward(
            &tensor("unet_sample"),
            timestep,
            &tensor("text_hidden"),
            None,
        )
        .unwrap();
    let err = relative_error(&out, &tensor("unet_out"));
    eprintln!("{what}: UNet relative error {err:e}");
    assert!(err < TOLERANCE, "{what}: UNet {err}");

    let image = engine.vae_decode(&tensor("vae_latent")).unwrap();
    let err = relative_error(&image, &tensor("vae_image"));
    eprintln!("{what}: VAE relative error {err:e}");
    assert!(err < TOLERANCE, "{what}: VAE {err}");
}

#[test]
fn image_sd_architecture_is_read_from_the_tensors() {
    let arch = engine().architecture();
    assert_eq!(arch.family, SdFamily::Sd15);
    assert_eq!(arch.unet_channels, [32, 32, 32]);
    assert_eq!(arch.unet_attention, [None, None, Some(1)]);
    assert_eq!((arch.layers_per_block, arch.mid_depth), (2, 1));
    assert_eq!((arch.latent_channels, arch.context_dim), (4, 8));
    assert_eq!(arch.unet_heads, [8, 8, 8]);
    assert!(!arch.linear_projection);
    assert_eq!(arch.add_embedding, None);
    assert_eq!(arch.vae_channels, [32, 32, 32, 32]);
    assert_eq!(arch.vae_layers_per_block, 1);
    assert_eq!(arch.vae_scale_factor(), 8);
    let clip = &arch.clip;
    assert_eq!((clip.vocab, clip.positions), (49408, 77));
    assert_eq!(
        (clip.hidden, clip.intermediate, clip.layers, clip.heads),
        (8, 16, 2, 1)
    );
    assert_eq!(
        (clip.projection, clip.activation),
        (None, ClipActivation::QuickGelu)
    );
    assert_eq!(arch.clip2, None);
}

#[test]
fn image_sd_single_file_fp16_matches_diffusers() {
    check_models(engine(), "LDM f16");
}

#[test]
fn image_sd_single_file_fp32_matches_diffusers() {
    // The same checkpoint with every float tensor widened to f32: candle's own save, no renaming.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-sd15-fp32.safetensors");
    let tensors = candle_core::safetensors::load(checkpoint_fp16(), &Device::Cpu).unwrap();
    let widened: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype() == DType::F16 {
                v.to_dtype(DType::F32).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&widened, &path).unwrap();
    let engine = ImageEngine::load_checkpoint(&path, DeviceSpec::Cpu).unwrap();
    check_models(&engine, "LDM f32");
}

#[test]
fn image_sd_diffusers_folder_matches_diffusers() {
    let engine =
        ImageEngine::load_diffusers(sd_dir().join("tiny-sd15-diffusers"), DeviceSpec::Cpu).unwrap();
    assert_eq!(engine.architecture(), self::engine().architecture());
    check_models(&engine, "diffusers folder");
}

/// 10 log10(255^2 / MSE) over all channels.
pub(crate) fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

#[test]
fn image_sd_seeded_run_matches_diffusers() {
    let json = reference_json();
    let run = &json["run"];
    let ids = text_ids();
    // The fixture's prompts are token ids; the tokenizer hands them over by name.
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(run, None);
    let expected = tensor("run_latents");
    let mut worst = 0f32;
    let mut steps_seen = 0;
    let mut noise = TorchCpuGenerator::new(job.seed);
    let image = engine()
        .generate_with(
            &job,
            PromptEncoding::TokenIds(&tokenizer),
            &mut noise,
            &mut |step, latents| {
                let err =
                    relative_error(latents, &expected.get(step).unwrap().unsqueeze(0).unwrap());
                eprintln!("step {step}: latents relative error {err:e}");
                worst = worst.max(err);
                steps_seen += 1;
            },
        )
        .unwrap();
    assert_eq!(steps_seen, job.steps);
    assert_eq!(image.steps, job.steps);
    assert!(worst < TOLERANCE, "trajectory relative error {worst}");

    let expected_rgb = tensor("run_image")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let psnr = psnr(&image.rgb, &expected_rgb);
    let exact = image
        .rgb
        .iter()
        .zip(&expected_rgb)
        .filter(|(a, b)| a == b)
        .count();
    eprintln!(
        "image PSNR {psnr:.1} dB, {exact}/{} bytes equal",
        expected_rgb.len()
    );
    assert!(psnr >= 40.0, "PSNR {psnr}");

    let decoded = png::Decoder::new(std::io::Cursor::new(&image.png))
        .read_info()
        .unwrap();
    assert_eq!(
        (decoded.info().width, decoded.info().height),
        (job.width, job.height)
    );
}

/// A stand-in for the CLIP tokenizer (issue 7's other half), enough to turn a real job's text
/// into ids in the vocabulary: start token, one id per word, end token.
fn word_ids(text: &str) -> heurist_inference::Result<Vec<u32>> {
    let mut ids = vec![49406];
    ids.extend(text.split_whitespace().map(|w| {
        w.bytes()
            .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 49406
    }));
    ids.push(49407);
    Ok(ids)
}

#[test]
fn image_sd_real_example_job_writes_a_png() {
    // The network's example jobs, as the repository carries them (heurist-protocol's data).
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../heurist-protocol/data/heurist-models/examples/ChilloutMix.json");
    let job: ImageJob = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!((job.width, job.height, job.steps), (512, 768, 20));
    let image = engine().generate_with_ids(&job, &word_ids).unwrap();
    assert_eq!(
        (image.width, image.height, image.steps, image.seed),
        (512, 768, 20, job.seed)
    );
    assert_eq!(image.latents.len(), 4 * 96 * 64);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("ChilloutMix.png");
    std::fs::write(&file, &image.png).unwrap();
    let decoded = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&file).unwrap()))
        .read_info()
        .unwrap();
    assert_eq!((decoded.info().width, decoded.info().height), (512, 768));
    eprintln!(
        "512x768, 20 steps on the tiny model: encode {:?}, denoise {:?}, decode {:?}",
        image.timings.encode, image.timings.denoise, image.timings.decode
    );
    // A different seed is a different image.
    let other = engine()
        .generate_with_ids(
            &ImageJob {
                seed: job.seed + 1,
                steps: 2,
                ..job.clone()
            },
            &word_ids,
        )
        .unwrap();
    assert_ne!(other.rgb, image.rgb);
}

#[test]
fn image_sd_bad_jobs_are_typed_errors() {
    let job = ImageJob {
        prompt: "a".into(),
        neg_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 2,
        guidance_scale: 7.0,
        seed: 1,
        sampler: None,
    };
    let err = engine()
        .generate_with_ids(
            &ImageJob {
                width: 0,
                ..job.clone()
            },
            &word_ids,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::InvalidImageSize {
                name: "width",
                value: 0,
                ..
            }
        ),
        "{err}"
    );
    let err = engine()
        .generate_with_ids(
            &ImageJob {
                steps: 0,
                ..job.clone()
            },
            &word_ids,
        )
        .unwrap_err();
    assert!(
        matches!(err, InferenceError::InvalidInferenceSteps { steps: 0, .. }),
        "{err}"
    );
    let err = engine()
        .generate_with_ids(
            &ImageJob {
                guidance_scale: f64::NAN,
                ..job.clone()
            },
            &word_ids,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::InvalidSampling {
                name: "guidance_scale",
                ..
            }
        ),
        "{err}"
    );
    let err = engine()
        .encode_token_ids(&[vec![49406, 60000, 49407]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::UnknownToken {
                token_id: 60000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn image_sd_latent_of_odd_size_matches_diffusers() {
    // 72 x 64 pixels: a 9 x 8 latent, not a multiple of the UNet's downscale.
    let json = reference_json();
    let run = &json["odd_run"];
    let ids = text_ids();
    let tokenizer = fixed_ids(&ids);
    let job = fixture_job(run, None);
    let image = engine().generate_with_ids(&job, &tokenizer).unwrap();
    assert_eq!((image.width, image.height), (72, 64));
    let expected = tensor("odd_run_image")
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let psnr = psnr(&image.rgb, &expected);
    eprintln!("72x64 image PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "PSNR {psnr}");
}
