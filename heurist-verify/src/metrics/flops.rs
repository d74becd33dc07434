//! The FLOPs a job needs at least, per model family: the numerator of the "faster than
//! the GPU's peak" check.
//!
//! Every number here is a **lower bound** on the work an honest run does, so that dividing
//! it by the GPU's peak gives a time no honest run can beat: an honest miner is never
//! called impossible because the model over-counted.
//!
//! - **LLMs**: a forward pass costs about 2 FLOPs per parameter per token (one multiply-add
//!   per weight; Kaplan et al. 2020, "Scaling Laws for Neural Language Models", §2.1,
//!   C_forward ≈ 2N), for the prompt (prefill) and for every generated token alike. We count
//!   `2 · P · (input + output tokens)` with `P` the parameters a token passes through, read
//!   from the registry type (`llm8b16b`: 8 B; `llm8x7b4b`: a mixture of 8 experts of 7 B) and
//!   cut to [`LLM_COUNTED_SHARE`] of the nominal size (names round up, and the input
//!   embedding is a look-up, not a product: 0.53 B of Llama 3 8B's 8.03 B). A mixture of
//!   experts counts one expert's model size (Mixtral 8x7B routes each token through 12.9 B
//!   parameters, more than 7 B). Attention over the context is left out (it only adds).
//! - **SD 1.5 and SDXL**: FLOPs of one UNet evaluation, `linear · pixels + quadratic ·
//!   pixels²` (convolutions and projections grow with the pixels, self-attention with their
//!   square), times the steps, times 2 when the guidance scale is above 1 (classifier-free
//!   guidance evaluates the UNet on the prompt and on the negative prompt; diffusers does
//!   so exactly when `guidance_scale > 1`). The coefficients sit just below what PyTorch's
//!   FLOP counter measures on diffusers' UNet with each model's published config
//!   (`tools/make_unet_flops_fixtures.py`; SD 1.5 fits `3.0e9 + 2.585e6·p + 1.78·p²`
//!   exactly; the tests check the bound at every measured size). The text encoder and the
//!   VAE are left out (they only add).
//! - Other families (Flux, API-served models such as `llm` or `llmdeepseekr1` whose size the
//!   registry does not give) have no FLOPs model: [`crate::VerifyError::NoFlopsModel`].
//!
//! A memory-bandwidth bound for decoding (each generated token reads every weight once) would
//! be tighter for LLMs, but speculative decoding accepts several tokens per read, and the GPU
//! catalogue has no bandwidth figures; it is not used.

use heurist_protocol::ModelType;

use crate::error::{Result, VerifyError};

/// Share of an LLM's nominal size counted as multiplied per token (see the module docs).
pub const LLM_COUNTED_SHARE: f64 = 0.85;

/// SD 1.5 UNet FLOPs per pixel per evaluation, linear term (measured: 2.585e6).
pub const SD15_FLOPS_PER_PIXEL: f64 = 2.5e6;
/// SD 1.5 UNet FLOPs per pixel² per evaluation, self-attention term (measured: 1.78).
pub const SD15_FLOPS_PER_PIXEL_SQUARED: f64 = 1.7;
/// SDXL UNet FLOPs per pixel per evaluation (measured: 6.06e6 to 6.45e6 per pixel between
/// 512² and 1024²; SDXL has no self-attention at the full latent resolution, so the quadratic
/// term is small and left out).
pub const SDXL_FLOPS_PER_PIXEL: f64 = 5.9e6;

/// The work of a job, as claimed or as recounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// A chat job: tokens of the templated prompt and of the answer.
    Llm {
        /// Prompt tokens.
        input_tokens: u64,
        /// Answer tokens.
        output_tokens: u64,
    },
    /// An image job, after the miner's clamping.
    Image {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Sampling steps.
        steps: u32,
        /// Whether classifier-free guidance is on (guidance scale above 1).
        guided: bool,
    },
}

/// What a model costs to run, from its registry type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CostModel {
    /// An LLM through which each token passes `params` parameters (already cut to
    /// [`LLM_COUNTED_SHARE`]).
    Llm {
        /// Parameters multiplied per token.
        params: f64,
        /// The nominal size in billions, as the type names it (for messages).
        nominal_billions: f64,
        /// Weight bits, when the type names them (`llm8b16b`: 16).
        bits: Option<u32>,
    },
    /// A UNet: FLOPs per evaluation = `per_pixel · p + per_pixel_squared · p²`.
    Unet {
        /// `sd15` or `sdxl`.
        family: &'static str,
        /// Linear coefficient.
        per_pixel: f64,
        /// Quadratic coefficient.
        per_pixel_squared: f64,
    },
}

impl CostModel {
    /// The cost model of a registry type (`sd15`, `composite15`, `sdxl10`, `compositexl`,
    /// `llm<size>b[<bits>b]`, `llm<experts>x<size>b[<bits>b]`).
    pub fn of(model_id: &str, model_type: &ModelType) -> Result<Self> {
        let none = || VerifyError::NoFlopsModel { model: model_id.to_owned(), model_type: model_type.as_str().to_owned() };
        match model_type {
            ModelType::Sd15 | ModelType::Composite15 => Ok(Self::Unet {
                family: "sd15",
                per_pixel: SD15_FLOPS_PER_PIXEL,
                per_pixel_squared: SD15_FLOPS_PER_PIXEL_SQUARED,
            }),
            ModelType::Sdxl10 | ModelType::CompositeXl => {
                Ok(Self::Unet { family: "sdxl", per_pixel: SDXL_FLOPS_PER_PIXEL, per_pixel_squared: 0.0 })
            }
            ModelType::Llm(ty) => {
                let size = parse_llm_type(ty).ok_or_else(none)?;
                Ok(Self::Llm {
                    params: size.active_billions * 1e9 * LLM_COUNTED_SHARE,
                    nominal_billions: size.nominal_billions,
                    bits: size.bits,
                })
            }
            _ => Err(none()),
        }
    }

    /// The FLOPs `work` needs at least on this model. Work of the other family is
    /// [`VerifyError::WorkMismatch`].
    pub fn flops(&self, model_id: &str, work: &Work) -> Result<f64> {
        match (self, work) {
            (Self::Llm { params, .. }, Work::Llm { input_tokens, output_tokens }) => {
                Ok(2.0 * params * (*input_tokens as f64 + *output_tokens as f64))
            }
            (Self::Unet { per_pixel, per_pixel_squared, .. }, Work::Image { width, height, steps, guided }) => {
                let pixels = f64::from(*width) * f64::from(*height);
                let evaluations = f64::from(*steps) * if *guided { 2.0 } else { 1.0 };
                Ok(evaluations * (per_pixel * pixels + per_pixel_squared * pixels * pixels))
            }
            (Self::Llm { .. }, Work::Image { .. }) => {
                Err(VerifyError::WorkMismatch { model: model_id.to_owned(), expected: "tokens", got: "an image size" })
            }
            (Self::Unet { .. }, Work::Llm { .. }) => {
                Err(VerifyError::WorkMismatch { model: model_id.to_owned(), expected: "an image size", got: "tokens" })
            }
        }
    }
}

/// An LLM's size as its registry type names it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LlmSize {
    /// The size the type names, experts times expert size for a mixture.
    nominal_billions: f64,
    /// Parameters a token passes through at least: the size, or one expert's for a mixture.
    active_billions: f64,
    bits: Option<u32>,
}

/// `llm8b16b` → 8 B at 16 bits; `llm8x7b4b` → 8 experts of 7 B at 4 bits; `llm70b` → 70 B;
/// `llm` or `llmdeepseekr1` → none (the type does not give a size).
fn parse_llm_type(ty: &str) -> Option<LlmSize> {
    let rest = ty.strip_prefix("llm")?;
    let (experts, rest) = match rest.split_once('x') {
        Some((n, r)) => (Some(n.parse::<u32>().ok().filter(|n| *n > 0)?), r),
        None => (None, rest),
    };
    let (size, rest) = rest.split_once('b')?;
    let size: f64 = size.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0)?;
    let bits = match rest {
        "" => None,
        b => Some(b.strip_suffix('b')?.parse::<u32>().ok().filter(|b| (1..=32).contains(b))?),
    };
    Some(LlmSize {
        nominal_billions: size * f64::from(experts.unwrap_or(1)),
        active_billions: size,
        bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_types_parse() {
        let s = parse_llm_type("llm8b16b").unwrap();
        assert_eq!((s.nominal_billions, s.active_billions, s.bits), (8.0, 8.0, Some(16)));
        let s = parse_llm_type("llm8x7b4b").unwrap();
        assert_eq!((s.nominal_billions, s.active_billions, s.bits), (56.0, 7.0, Some(4)));
        let s = parse_llm_type("llm70b").unwrap();
        assert_eq!((s.nominal_billions, s.bits), (70.0, None));
        for bad in ["llm", "llmdeepseekr1", "llmdeepseekv3", "llm0b", "llmxb", "llm8b16", "llm8bq", "llm0x7b"] {
            assert_eq!(parse_llm_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn llm_flops_are_two_per_counted_parameter_per_token() {
        let m = CostModel::of("d", &ModelType::parse("llm8b16b")).unwrap();
        let f = m.flops("d", &Work::Llm { input_tokens: 600, output_tokens: 400 }).unwrap();
        assert!((f - 2.0 * 8e9 * LLM_COUNTED_SHARE * 1000.0).abs() < 1.0);
        assert!(matches!(
            m.flops("d", &Work::Image { width: 1, height: 1, steps: 1, guided: false }),
            Err(VerifyError::WorkMismatch { .. })
        ));
        assert!(matches!(CostModel::of("f", &ModelType::FluxDev), Err(VerifyError::NoFlopsModel { .. })));
    }

    #[test]
    fn guidance_doubles_unet_work() {
        let m = CostModel::of("s", &ModelType::Sd15).unwrap();
        let one = m.flops("s", &Work::Image { width: 512, height: 512, steps: 20, guided: false }).unwrap();
        let two = m.flops("s", &Work::Image { width: 512, height: 512, steps: 20, guided: true }).unwrap();
        assert_eq!(two, 2.0 * one);
    }
}
