//! Image results judged against a re-run of their job (feature `image`; the re-run itself with
//! `inference` as well).
//!
//! An image job is a function of the checkpoint (and LoRA), the prompts, the seed, the steps,
//! the sampler, the guidance and the size: torch's seeded CPU generator makes the noise the same
//! everywhere, so an honest miner's image and the verifier's re-run differ only by
//! floating-point noise (thread counts, kernels, f16 rounding, another engine). A cheat — another
//! checkpoint, fewer steps, another seed, another LoRA weight, a smaller image scaled up —
//! changes the trajectory of the whole denoising and so the picture itself.
//!
//! Three measures judge "the same picture", and all must agree:
//! - a structural similarity ([`image_compare`]'s mean SSIM over 8x8 windows, the smallest of
//!   the three colour channels), which sees the layout and texture at full resolution;
//! - a perceptual hash ([`image_hasher`]: the 64-bit DCT mean hash, "pHash"), whose Hamming
//!   distance sees the low frequencies and shrugs at pixel noise; and
//! - the mean absolute difference of the 8-bit values, which sees a picture that is the same
//!   in structure but not the job's: one sampling step fewer, or a LoRA at another weight,
//!   moves every pixel a little (1.3 to 13 levels on the tiny model) where honest numerics
//!   move it a fraction of a level (0.32 at most, diffusers in f16 against this engine).
//!
//! [`ImageThresholds::DEFAULT`] is calibrated on honest images (see the crate docs' image
//! detection table): honest pairs — 1 vs 2 threads, diffusers in f32 and in f16 against this
//! engine's re-run — measured SSIM ≥ 0.9999, a hash distance ≤ 1 and a mean difference ≤ 0.32
//! levels; another checkpoint, half the steps, another seed and a smaller image scaled up
//! measured SSIM ≤ 0.94, and one step fewer or another LoRA weight a mean difference ≥ 1.3
//! levels. The bars sit between with a margin on the honest side, since a false accusation
//! costs an honest miner its stake. [`ImageThresholds::STRUCTURAL`] drops the pixel bar, for
//! re-runs whose numerics nobody has measured against the miner's (another GPU stack, a real
//! model at 512 px before its own calibration): it still catches another checkpoint, seed,
//! size or half the steps, not the small cheats. [`ImageThresholds::STRICT`] trades margin for
//! smaller cheats still.
//!
//! [`compare_png`] and [`compare_rgb`] give the [`ImageEvidence`]; [`ImageThresholds::judge`]
//! turns it into an [`ImageVerdict`]. With `inference`, [`rerun::check_image`] re-runs the job
//! on a loaded `heurist_inference::image::ImageEngine` and does both.
//!
//! The network's bars are [`PrecisionBars::NETWORK`]: one PSNR bar per precision a miner may
//! run in, calibrated on honest images of the reference miner's own stack (diffusers 0.30.2
//! through its vendored pipelines, in f32, f16 and bf16, over SD 1.5, SDXL, LoRA and weighted
//! prompt jobs) and on cheats; the single-comparison bars above ([`ImageThresholds::DEFAULT`]
//! and its kin) came before them, from this engine's images and diffusers' plain pipeline, and
//! reject honest bf16 images. The crate's detection page has both tables.

#[cfg(feature = "inference")]
pub mod rerun;

use image::RgbImage;
use image_compare::Algorithm;
use image_hasher::{HashAlg, HasherConfig};

use crate::error::{Result, VerifyError};

/// How far a claimed image may be from the re-run and still hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageThresholds {
    /// The lowest structural similarity (mean SSIM, worst channel) accepted, -1 to 1.
    pub min_ssim: f64,
    /// The largest Hamming distance between the two 64-bit perceptual hashes accepted.
    pub max_hash_distance: u32,
    /// The largest mean absolute difference of the 8-bit values accepted, in levels (0 to
    /// 255); `f64::INFINITY` turns the bar off.
    pub max_mean_abs_diff: f64,
    /// The lowest peak signal-to-noise ratio accepted, in dB; `f64::NEG_INFINITY` turns the bar
    /// off.
    pub min_psnr: f64,
}

impl ImageThresholds {
    /// The calibrated bars (see the module docs): SSIM and hash far below what honest images
    /// measured (SSIM ≥ 0.9999, distance ≤ 1), and a mean difference of one level, three times
    /// the worst honest pair measured (0.32: diffusers in f16) and below every one-step-fewer
    /// or other-LoRA-weight image measured (1.3 levels and more).
    pub const DEFAULT: Self = Self {
        min_ssim: 0.95,
        max_hash_distance: 6,
        max_mean_abs_diff: 1.0,
        min_psnr: f64::NEG_INFINITY,
    };

    /// Structure only, for numerics not measured against the re-run's (GPU kernels, real
    /// models at 512 px and more): the SSIM and hash bars of [`Self::DEFAULT`], no pixel bar.
    /// Catches another checkpoint, another seed, half the steps and a smaller image scaled up;
    /// not one step fewer nor another LoRA weight.
    pub const STRUCTURAL: Self = Self {
        min_ssim: 0.95,
        max_hash_distance: 6,
        max_mean_abs_diff: f64::INFINITY,
        min_psnr: f64::NEG_INFINITY,
    };

    /// Tighter bars for re-runs whose numerics are known to be close (the same engine, or
    /// diffusers as measured on the tiny model), at a smaller margin for honest noise.
    pub const STRICT: Self = Self {
        min_ssim: 0.995,
        max_hash_distance: 2,
        max_mean_abs_diff: 0.6,
        min_psnr: f64::NEG_INFINITY,
    };

    /// Whether the evidence holds under these bars, with the reasons when it does not.
    // `!(a <= b)` is meant: a NaN measure must fail its bar, which `a > b` would let through.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn judge(&self, evidence: ImageEvidence) -> ImageVerdict {
        let mut reasons = Vec::new();
        if let Some(size) = evidence.size_mismatch {
            reasons.push(ImageReason::Size {
                claimed: size.0,
                expected: size.1,
            });
        } else {
            // NaN (which SSIM of two flat images can give) fails the check rather than pass it.
            if evidence.ssim.is_nan() || evidence.ssim < self.min_ssim {
                reasons.push(ImageReason::Ssim {
                    ssim: evidence.ssim,
                    min: self.min_ssim,
                });
            }
            if evidence.hash_distance > self.max_hash_distance {
                reasons.push(ImageReason::HashDistance {
                    distance: evidence.hash_distance,
                    max: self.max_hash_distance,
                });
            }
            // `!(a <= b)` so that a NaN difference fails too.
            if !(evidence.mean_abs_diff <= self.max_mean_abs_diff) {
                reasons.push(ImageReason::MeanDifference {
                    diff: evidence.mean_abs_diff,
                    max: self.max_mean_abs_diff,
                });
            }
            if !(evidence.psnr >= self.min_psnr) {
                reasons.push(ImageReason::Psnr {
                    psnr: evidence.psnr,
                    min: self.min_psnr,
                });
            }
        }
        if reasons.is_empty() {
            ImageVerdict::Holds(evidence)
        } else {
            ImageVerdict::Rejected { evidence, reasons }
        }
    }
}

impl std::fmt::Display for ImageThresholds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SSIM >= {}, pHash distance <= {}", self.min_ssim, self.max_hash_distance)?;
        if self.max_mean_abs_diff.is_finite() {
            write!(f, ", mean difference <= {} levels", self.max_mean_abs_diff)?;
        }
        if self.min_psnr.is_finite() {
            write!(f, ", PSNR >= {} dB", self.min_psnr)?;
        }
        Ok(())
    }
}

impl Default for ImageThresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The precision a miner's pipeline ran in, which fixes the noise it drew: diffusers draws the
/// initial latents (and most schedulers' noise) in the pipeline's dtype, and torch's f16 and
/// bf16 draws are other values than its f32 ones, so each precision gives another picture for
/// the same seed. The reference miner runs f16 (`torch_dtype=torch.float16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// Single precision.
    F32,
    /// Half precision: the reference miner's.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// Every precision, in the order a verifier tries them: f32 (this engine's own on the CPU),
    /// f16 (the network's miners), bf16.
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Bf16];

    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bars of an image check for each precision a miner may have run in: a claimed image
/// holds if it passes, against the re-run with some precision's noise, that precision's bars.
///
/// Per precision because the honest noise differs by two orders of magnitude: measured on the
/// tiny models against this engine's f32 re-run from the same noise, diffusers in f32 sits at
/// 82 dB and more, in f16 at 53 to 57 dB, in bf16 at 36 to 44 dB (heurist-verify's
/// DETECTION.md). One bar for all would either accuse bf16 miners or pass an f16 miner's
/// small cheats.
///
/// ```
/// use heurist_verify::image::{ImageThresholds, Precision, PrecisionBars};
///
/// let bars = PrecisionBars::NETWORK;
/// assert!(bars.get(Precision::F16).min_psnr > bars.get(Precision::Bf16).min_psnr);
/// // One set of bars for every precision, for re-runs nobody calibrated.
/// let loose = PrecisionBars::uniform(ImageThresholds::STRUCTURAL);
/// assert_eq!(loose.get(Precision::F32), &ImageThresholds::STRUCTURAL);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecisionBars {
    /// Against the re-run with f32 noise.
    pub f32: ImageThresholds,
    /// Against the re-run with f16 noise.
    pub f16: ImageThresholds,
    /// Against the re-run with bf16 noise.
    pub bf16: ImageThresholds,
}

impl PrecisionBars {
    /// The bars calibrated on honest images of the reference miner's stack (diffusers 0.30.2 at
    /// its pins, its vendored pipelines, f32 / f16 / bf16) and on cheats, by the rule of the
    /// image detection table (`examples/image_detection_table.rs --calibrate`): per precision,
    /// the PSNR bar is the lower of the worst honest calibration image less 3 dB and the
    /// midpoint between it and the closest calibration cheat. SSIM and the hash keep
    /// [`ImageThresholds::STRUCTURAL`]'s bars; the mean difference is left to the PSNR.
    pub const NETWORK: Self = Self {
        f32: ImageThresholds {
            min_psnr: NETWORK_MIN_PSNR[0],
            ..ImageThresholds::STRUCTURAL
        },
        f16: ImageThresholds {
            min_psnr: NETWORK_MIN_PSNR[1],
            ..ImageThresholds::STRUCTURAL
        },
        bf16: ImageThresholds {
            min_psnr: NETWORK_MIN_PSNR[2],
            ..ImageThresholds::STRUCTURAL
        },
    };

    /// The same bars for every precision.
    pub const fn uniform(thresholds: ImageThresholds) -> Self {
        Self {
            f32: thresholds,
            f16: thresholds,
            bf16: thresholds,
        }
    }

    /// The bars against the re-run with `precision`'s noise.
    pub fn get(&self, precision: Precision) -> &ImageThresholds {
        match precision {
            Precision::F32 => &self.f32,
            Precision::F16 => &self.f16,
            Precision::Bf16 => &self.bf16,
        }
    }

    /// Judges `claimed` against the re-run in each precision in turn ([`Precision::ALL`]),
    /// asking `rerun` for each only when the ones before did not hold: returns the first
    /// precision whose bars the image passes, or at once a size mismatch (wrong in every
    /// precision), or else the closest rejection (highest PSNR).
    ///
    /// # Errors
    /// The first error of `rerun`.
    pub fn judge_reruns<E>(
        &self,
        claimed: &RgbImage,
        mut rerun: impl FnMut(Precision) -> std::result::Result<RgbImage, E>,
    ) -> std::result::Result<(Precision, ImageVerdict), E> {
        let [first, rest @ ..] = Precision::ALL;
        let mut judge = |precision: Precision| -> std::result::Result<ImageVerdict, E> {
            Ok(self.get(precision).judge(compare_rgb(claimed, &rerun(precision)?)))
        };
        let mut closest = (first, judge(first)?);
        for precision in rest {
            if closest.1.holds() || closest.1.evidence().size_mismatch.is_some() {
                break;
            }
            let verdict = judge(precision)?;
            if verdict.holds() || verdict.evidence().psnr > closest.1.evidence().psnr {
                closest = (precision, verdict);
            }
        }
        Ok(closest)
    }
}

impl Default for PrecisionBars {
    fn default() -> Self {
        Self::NETWORK
    }
}

impl std::fmt::Display for PrecisionBars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "f32: {}; f16: {}; bf16: {}", self.f32, self.f16, self.bf16)
    }
}

/// [`PrecisionBars::NETWORK`]'s PSNR bars in dB (f32, f16, bf16), from the calibration split.
const NETWORK_MIN_PSNR: [f64; 3] = [66.2, 50.1, 33.2];

/// What the comparison measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageEvidence {
    /// Mean SSIM over 8x8 windows, the worst of the three channels (1: identical); NaN-free
    /// unless both images are flat. 0 when the sizes differ.
    pub ssim: f64,
    /// Hamming distance of the 64-bit perceptual hashes, 0 to 64.
    pub hash_distance: u32,
    /// The mean absolute difference over all channels, 0 to 255 levels. NaN when the sizes
    /// differ.
    pub mean_abs_diff: f64,
    /// The peak signal-to-noise ratio in dB, `10 log10(255² / mean squared difference)`:
    /// infinite for identical images, NaN when the sizes differ.
    pub psnr: f64,
    /// `((claimed w, h), (expected w, h))` when the sizes differ; nothing else was compared.
    pub size_mismatch: Option<((u32, u32), (u32, u32))>,
}

impl std::fmt::Display for ImageEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.size_mismatch {
            Some(((cw, ch), (ew, eh))) => write!(f, "size {cw}x{ch} where the job gives {ew}x{eh}"),
            None => write!(
                f,
                "SSIM {:.4}, pHash distance {}/64, mean difference {:.2} levels, PSNR {:.1} dB",
                self.ssim, self.hash_distance, self.mean_abs_diff, self.psnr
            ),
        }
    }
}

/// Why an image was rejected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImageReason {
    /// The image is not of the job's size.
    Size {
        /// The claimed image's width and height.
        claimed: (u32, u32),
        /// The job's.
        expected: (u32, u32),
    },
    /// The structure differs.
    Ssim {
        /// Measured.
        ssim: f64,
        /// The bar.
        min: f64,
    },
    /// The perceptual hashes differ.
    HashDistance {
        /// Measured.
        distance: u32,
        /// The bar.
        max: u32,
    },
    /// The pixels differ by more than honest numerics do.
    MeanDifference {
        /// Measured, in 8-bit levels.
        diff: f64,
        /// The bar.
        max: f64,
    },
    /// The squared differences are larger than honest numerics give.
    Psnr {
        /// Measured, in dB.
        psnr: f64,
        /// The bar.
        min: f64,
    },
}

impl std::fmt::Display for ImageReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Size { claimed, expected } => write!(
                f,
                "size {}x{} where the job gives {}x{}",
                claimed.0, claimed.1, expected.0, expected.1
            ),
            Self::Ssim { ssim, min } => write!(f, "SSIM {ssim:.4} below {min}"),
            Self::HashDistance { distance, max } => {
                write!(f, "pHash distance {distance} above {max}")
            }
            Self::MeanDifference { diff, max } => {
                write!(f, "mean difference {diff:.2} levels above {max}")
            }
            Self::Psnr { psnr, min } => write!(f, "PSNR {psnr:.1} dB below {min}"),
        }
    }
}

/// The outcome of an image check.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageVerdict {
    /// The claimed image is the job's image.
    Holds(ImageEvidence),
    /// It is not; `reasons` are the bars it failed, `evidence` the numbers.
    Rejected {
        /// The numbers.
        evidence: ImageEvidence,
        /// The bars failed (at least one).
        reasons: Vec<ImageReason>,
    },
}

impl ImageVerdict {
    /// Whether the result holds.
    pub fn holds(&self) -> bool {
        matches!(self, Self::Holds(_))
    }

    /// The numbers either way.
    pub fn evidence(&self) -> &ImageEvidence {
        match self {
            Self::Holds(e) | Self::Rejected { evidence: e, .. } => e,
        }
    }

    /// A one-line account for a slash's evidence.
    pub fn explain(&self) -> String {
        match self {
            Self::Holds(e) => format!("image holds: {e}"),
            Self::Rejected { evidence, reasons } => {
                let why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                format!("image rejected ({}): {evidence}", why.join("; "))
            }
        }
    }
}

/// Decodes a PNG (any colour type and depth) to 8-bit RGB.
///
/// # Errors
/// [`VerifyError::ImageDecode`] when the bytes are not a PNG the `image` crate reads.
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage> {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .map(|img| img.to_rgb8())
        .map_err(|e| VerifyError::ImageDecode {
            problem: e.to_string(),
        })
}

/// Wraps 8-bit RGB pixels, row-major.
///
/// # Errors
/// [`VerifyError::ImageBuffer`] when `rgb` is not `width * height * 3` bytes.
pub fn rgb_image(width: u32, height: u32, rgb: Vec<u8>) -> Result<RgbImage> {
    let len = rgb.len();
    RgbImage::from_raw(width, height, rgb).ok_or(VerifyError::ImageBuffer { width, height, len })
}

/// Compares a claimed PNG with the re-run's pixels.
///
/// # Errors
/// As [`decode_png`].
pub fn compare_png(claimed_png: &[u8], reference: &RgbImage) -> Result<ImageEvidence> {
    Ok(compare_rgb(&decode_png(claimed_png)?, reference))
}

/// Measures how far `claimed` is from `reference` (see the module docs). Images of different
/// sizes are not compared: the evidence says so and any threshold rejects it.
pub fn compare_rgb(claimed: &RgbImage, reference: &RgbImage) -> ImageEvidence {
    if claimed.dimensions() != reference.dimensions() {
        return ImageEvidence {
            ssim: 0.0,
            hash_distance: 64,
            mean_abs_diff: f64::NAN,
            psnr: f64::NAN,
            size_mismatch: Some((claimed.dimensions(), reference.dimensions())),
        };
    }
    // The sizes are equal, which is all that the SSIM can refuse.
    let ssim = image_compare::rgb_similarity_structure(&Algorithm::MSSIMSimple, claimed, reference)
        .map_or(0.0, |s| s.score);
    let hasher = HasherConfig::new()
        .hash_size(8, 8)
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .to_hasher();
    let hash_distance = hasher
        .hash_image(claimed)
        .dist(&hasher.hash_image(reference));
    let (sum, squares) = claimed.as_raw().iter().zip(reference.as_raw()).fold(
        (0u64, 0u64),
        |(sum, squares), (a, b)| {
            let d = u64::from(a.abs_diff(*b));
            (sum + d, squares + d * d)
        },
    );
    let values = claimed.as_raw().len().max(1) as f64;
    ImageEvidence {
        ssim,
        hash_distance,
        mean_abs_diff: sum as f64 / values,
        psnr: 10.0 * (255.0f64.powi(2) * values / squares as f64).log10(),
        size_mismatch: None,
    }
}

/// Scales `img` to `width` x `height` with a Lanczos filter: what a miner that made a smaller
/// image and scaled it up would submit (the detection table's cheat).
pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    image::imageops::resize(img, width, height, image::imageops::FilterType::Lanczos3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A smooth picture with structure: gradients and a disc.
    fn picture(w: u32, h: u32, shift: f64) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
            let d = ((fx - 0.5 - shift).powi(2) + (fy - 0.4).powi(2)).sqrt();
            let disc = if d < 0.25 { 180.0 } else { 40.0 };
            image::Rgb([
                (255.0 * fx) as u8,
                (255.0 * fy) as u8,
                (disc + 30.0 * (fx * 9.0).sin()) as u8,
            ])
        })
    }

    #[test]
    fn identical_and_slightly_noisy_images_hold() {
        let a = picture(64, 64, 0.0);
        let e = compare_rgb(&a, &a);
        assert_eq!((e.hash_distance, e.mean_abs_diff), (0, 0.0));
        assert!((e.ssim - 1.0).abs() < 1e-12, "{e}");
        // One level of rounding noise on a tenth of the values: what other kernels give.
        let mut b = a.clone();
        for (i, v) in b.iter_mut().enumerate() {
            if i % 10 == 3 {
                *v = v.saturating_add(1);
            }
        }
        let v = ImageThresholds::DEFAULT.judge(compare_rgb(&b, &a));
        assert!(v.holds(), "{}", v.explain());
    }

    #[test]
    fn the_same_structure_two_levels_off_is_rejected_by_the_pixel_bar_alone() {
        let a = picture(64, 64, 0.0);
        // The same picture two levels brighter: what another sampling step or LoRA weight does
        // to a smooth region.
        let b = RgbImage::from_fn(64, 64, |x, y| image::Rgb(a.get_pixel(x, y).0.map(|v| v.saturating_add(2))));
        let e = compare_rgb(&b, &a);
        assert!(ImageThresholds::STRUCTURAL.judge(e).holds(), "{e}");
        let v = ImageThresholds::DEFAULT.judge(e);
        let ImageVerdict::Rejected { reasons, .. } = &v else {
            panic!("two levels off held: {}", v.explain());
        };
        assert!(matches!(reasons[..], [ImageReason::MeanDifference { diff, max: 1.0 }] if diff > 1.5), "{reasons:?}");
        assert!(v.explain().contains("mean difference"), "{}", v.explain());
    }

    #[test]
    fn thresholds_print_their_bars() {
        assert_eq!(
            ImageThresholds::DEFAULT.to_string(),
            "SSIM >= 0.95, pHash distance <= 6, mean difference <= 1 levels"
        );
        assert_eq!(ImageThresholds::STRUCTURAL.to_string(), "SSIM >= 0.95, pHash distance <= 6");
    }

    #[test]
    fn another_picture_is_rejected_with_numbers() {
        let a = picture(64, 64, 0.0);
        let b = picture(64, 64, 0.3);
        let v = ImageThresholds::DEFAULT.judge(compare_rgb(&b, &a));
        let ImageVerdict::Rejected { evidence, reasons } = &v else {
            panic!("moved disc held: {}", v.explain());
        };
        assert!(evidence.ssim < 0.95, "{evidence}");
        assert!(!reasons.is_empty());
        assert!(v.explain().contains("SSIM"), "{}", v.explain());
    }

    #[test]
    fn size_mismatch_is_rejected_not_compared() {
        let v = ImageThresholds::DEFAULT.judge(compare_rgb(&picture(32, 64, 0.0), &picture(64, 64, 0.0)));
        let ImageVerdict::Rejected { evidence, reasons } = &v else {
            panic!("a smaller image held: {}", v.explain());
        };
        assert_eq!(evidence.size_mismatch, Some(((32, 64), (64, 64))));
        assert_eq!(
            reasons,
            &[ImageReason::Size {
                claimed: (32, 64),
                expected: (64, 64)
            }]
        );
        assert!(v.explain().contains("32x64"), "{}", v.explain());
    }

    #[test]
    fn png_round_trip_and_bad_bytes() {
        let a = picture(24, 16, 0.1);
        let mut png = Vec::new();
        a.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let e = compare_png(&png, &a).unwrap();
        assert_eq!((e.hash_distance, e.mean_abs_diff), (0, 0.0));
        assert!(matches!(
            decode_png(b"GIF89a not a png"),
            Err(VerifyError::ImageDecode { .. })
        ));
        let err = rgb_image(4, 4, vec![0; 47]).unwrap_err();
        assert!(err.to_string().contains("47"), "{err}");
    }
}
