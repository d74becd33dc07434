//! Audits: after a result is accepted and credited, a sampled share of them is re-checked
//! (re-run, rescored) by an [`Auditor`]; a failed check becomes a slash entry in the ledger,
//! with its evidence, and the result's verdict says so.
//!
//! The sequencer does not judge results itself: `heurist-verify` does (or any other
//! implementation of the trait). The share checked is the operator's `audit_rate`. Measured
//! against honest work, a cheater keeps the compute it saved and loses, when caught, the job's
//! reward and the slash; slashing only the job's points therefore deters nothing short of
//! checking every job. `heurist_verify::audit` derives the rate that makes cheating a loss
//! from the reward, the saved cost, the detection rate and a slash that includes a share of
//! the phase balance, and computes it per job from the rule set; set `audit_rate` from it.

use std::sync::Arc;

use heurist_protocol::{Job, MinerSubmit};

/// What an audit concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditVerdict {
    /// The result holds.
    Pass,
    /// The result does not hold; `evidence` says why, with the numbers.
    Fail {
        /// Why, in words and numbers.
        evidence: String,
    },
    /// The auditor could not judge this job (another model, no reference); no slash.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// Re-checks an accepted result. Runs on a blocking thread; may take as long as inference.
pub trait Auditor: Send + Sync {
    /// Judges `submit`, the accepted result of `job`.
    fn audit(&self, job: &Job, submit: &MinerSubmit) -> AuditVerdict;
}

/// How audits are run.
#[derive(Clone)]
pub struct AuditPolicy {
    /// The auditor.
    pub auditor: Arc<dyn Auditor>,
    /// The share of accepted results checked, 0 to 1.
    pub rate: f64,
}

impl std::fmt::Debug for AuditPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditPolicy").field("rate", &self.rate).finish_non_exhaustive()
    }
}

/// Sends each job to the auditor for its kind: chat jobs to one, image jobs to another. A
/// kind without an auditor is skipped, not failed.
pub struct ByKind {
    /// Audits chat (`LLM`) jobs.
    pub llm: Option<Arc<dyn Auditor>>,
    /// Audits image (`SD`) jobs.
    pub sd: Option<Arc<dyn Auditor>>,
}

impl Auditor for ByKind {
    fn audit(&self, job: &Job, submit: &MinerSubmit) -> AuditVerdict {
        let (auditor, kind) = match job.model_input {
            heurist_protocol::ModelInput::Llm(_) => (&self.llm, "chat"),
            heurist_protocol::ModelInput::Sd(_) => (&self.sd, "image"),
        };
        match auditor {
            Some(a) => a.audit(job, submit),
            None => AuditVerdict::Skipped { reason: format!("no auditor for {kind} jobs") },
        }
    }
}

#[cfg(feature = "s3")]
pub use image::{ImageAuditor, ImageDiff, ImageRerun, ImageTolerance, RgbImage, decode_png};

/// Image audits: the claimed PNG fetched from S3, the job re-run on the claimed model, the two
/// compared pixel by pixel.
///
/// The comparison is deliberately simple and sits behind [`ImageTolerance`] so that a
/// perceptual check (SSIM, a perceptual hash) can replace it: the same seed, steps, size and
/// sampler on the same checkpoint give the same image up to floating-point noise (thread
/// counts, kernels, f16 rounding), while a substituted model, another seed or fewer steps give
/// a different image altogether — on 8-bit pixels, mean differences of tens of levels.
#[cfg(feature = "s3")]
pub mod image {
    use std::sync::Arc;

    use heurist_protocol::{Job, MinerSubmit, SubmitResult};

    use super::{AuditVerdict, Auditor};
    use crate::config::S3Grant;

    /// Decoded 8-bit RGB pixels.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RgbImage {
        /// Width in pixels.
        pub width: u32,
        /// Height in pixels.
        pub height: u32,
        /// `width * height * 3` bytes, row-major.
        pub rgb: Vec<u8>,
    }

    /// Decodes a PNG (any bit depth and colour type the png crate expands) to 8-bit RGB.
    pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
        let size = reader.output_buffer_size().ok_or("PNG too large to decode")?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(|e| format!("PNG frame: {e}"))?;
        buf.truncate(info.buffer_size());
        let rgb = match info.color_type {
            png::ColorType::Rgb => buf,
            png::ColorType::Rgba => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
            png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
            png::ColorType::GrayscaleAlpha => buf.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
            other => return Err(format!("PNG colour type {other:?} after expansion")),
        };
        Ok(RgbImage { width: info.width, height: info.height, rgb })
    }

    /// How far two same-sized images are apart.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct ImageDiff {
        /// The largest difference of one channel of one pixel, 0 to 255.
        pub max_abs: u8,
        /// The mean absolute difference over all channels, 0 to 255.
        pub mean_abs: f64,
    }

    impl ImageDiff {
        /// Compares `a` with `b`; `Err` when their sizes differ.
        pub fn between(a: &RgbImage, b: &RgbImage) -> Result<Self, String> {
            if (a.width, a.height) != (b.width, b.height) || a.rgb.len() != b.rgb.len() {
                return Err(format!("size {}x{} where the job gives {}x{}", a.width, a.height, b.width, b.height));
            }
            let (mut max_abs, mut sum) = (0u8, 0u64);
            for (x, y) in a.rgb.iter().zip(&b.rgb) {
                let d = x.abs_diff(*y);
                max_abs = max_abs.max(d);
                sum += u64::from(d);
            }
            Ok(Self { max_abs, mean_abs: sum as f64 / a.rgb.len().max(1) as f64 })
        }
    }

    /// What counts as the same image.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct ImageTolerance {
        /// The largest per-channel difference allowed.
        pub max_abs: u8,
        /// The largest mean difference allowed.
        pub mean_abs: f64,
    }

    impl ImageTolerance {
        /// Bit-for-bit equality.
        pub const EXACT: Self = Self { max_abs: 0, mean_abs: 0.0 };

        /// Whether `diff` is within it.
        pub fn accepts(&self, diff: &ImageDiff) -> bool {
            diff.max_abs <= self.max_abs && diff.mean_abs <= self.mean_abs
        }
    }

    /// Re-runs an image job on the model it names, as an honest miner would: the reference
    /// pixels an audit compares against.
    pub trait ImageRerun: Send + Sync {
        /// The image `job` should have produced.
        fn rerun(&self, job: &Job) -> Result<RgbImage, String>;
    }

    /// Audits image results: fetches the submitted object from the grant's bucket (a signed
    /// `GetObject`), re-runs the job with [`ImageRerun`] and fails the result when the two
    /// differ beyond the tolerance, with the numbers as evidence. Must be called from a
    /// blocking thread inside a tokio runtime (the sequencer calls auditors so).
    pub struct ImageAuditor {
        /// The re-run.
        pub rerun: Arc<dyn ImageRerun>,
        /// Where results are.
        pub grant: S3Grant,
        /// What counts as the same image.
        pub tolerance: ImageTolerance,
        /// The HTTP client for S3.
        pub http: reqwest::Client,
    }

    impl ImageAuditor {
        fn fetch(&self, key: &str) -> Result<Vec<u8>, String> {
            use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
            let g = &self.grant;
            let endpoint = g.endpoint.parse().map_err(|e| format!("endpoint {:?}: {e}", g.endpoint))?;
            let bucket = Bucket::new(endpoint, UrlStyle::Path, g.bucket.clone(), "us-east-1").map_err(|e| format!("bucket {:?}: {e}", g.bucket))?;
            let creds = if g.session_token.is_empty() {
                Credentials::new(g.access_key_id.clone(), g.secret_access_key.clone())
            } else {
                Credentials::new_with_token(g.access_key_id.clone(), g.secret_access_key.clone(), g.session_token.clone())
            };
            let url = bucket.get_object(Some(&creds), key).sign(std::time::Duration::from_secs(60));
            let handle = tokio::runtime::Handle::try_current().map_err(|e| format!("image audit outside a runtime: {e}"))?;
            let http = self.http.clone();
            handle.block_on(async move {
                let r = http.get(url).send().await.map_err(|e| format!("GET {key}: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("GET {key}: HTTP {}", r.status().as_u16()));
                }
                r.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("GET {key}: {e}"))
            })
        }
    }

    impl Auditor for ImageAuditor {
        fn audit(&self, job: &Job, submit: &MinerSubmit) -> AuditVerdict {
            let SubmitResult::S3Key(key) = &submit.result else {
                return AuditVerdict::Fail { evidence: "an image job answered with text, not an S3 key".into() };
            };
            let claimed = match self.fetch(key) {
                Ok(bytes) => bytes,
                // Accepted results were checked to be in the bucket: one gone is the store's
                // trouble, not proof against the miner.
                Err(e) => return AuditVerdict::Skipped { reason: format!("fetching the result: {e}") },
            };
            let claimed = match decode_png(&claimed) {
                Ok(img) => img,
                Err(e) => return AuditVerdict::Fail { evidence: format!("object {key}: {e}") },
            };
            let reference = match self.rerun.rerun(job) {
                Ok(img) => img,
                Err(e) => return AuditVerdict::Skipped { reason: format!("re-running the job: {e}") },
            };
            match ImageDiff::between(&claimed, &reference) {
                Err(e) => AuditVerdict::Fail { evidence: format!("object {key}: {e}") },
                Ok(diff) if self.tolerance.accepts(&diff) => AuditVerdict::Pass,
                Ok(diff) => AuditVerdict::Fail {
                    evidence: format!(
                        "object {key} is not the image of job {} on {}: re-run differs by mean {:.2} and max {} levels (tolerance mean {:.2}, max {})",
                        job.job_id, job.model_id, diff.mean_abs, diff.max_abs, self.tolerance.mean_abs, self.tolerance.max_abs
                    ),
                },
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use super::*;

        fn img(w: u32, h: u32, f: impl Fn(usize) -> u8) -> RgbImage {
            RgbImage { width: w, height: h, rgb: (0..(w * h * 3) as usize).map(f).collect() }
        }

        #[test]
        fn diff_and_tolerance() {
            let a = img(4, 2, |i| (i * 7 % 256) as u8);
            let mut b = a.clone();
            assert_eq!(ImageDiff::between(&a, &b).unwrap(), ImageDiff { max_abs: 0, mean_abs: 0.0 });
            b.rgb[5] = b.rgb[5].wrapping_add(3);
            let d = ImageDiff::between(&a, &b).unwrap();
            assert_eq!(d.max_abs, 3);
            assert!((d.mean_abs - 3.0 / 24.0).abs() < 1e-12);
            assert!(!ImageTolerance::EXACT.accepts(&d));
            assert!(ImageTolerance { max_abs: 3, mean_abs: 0.2 }.accepts(&d));
            assert!(!ImageTolerance { max_abs: 3, mean_abs: 0.1 }.accepts(&d));
            let e = ImageDiff::between(&a, &img(2, 4, |_| 0)).unwrap_err();
            assert!(e.contains("2x4") && e.contains("4x2"), "{e}");
        }

        #[test]
        fn png_round_trip_and_garbage() {
            let a = img(3, 2, |i| (i * 40 % 256) as u8);
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, 3, 2);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&a.rgb).unwrap();
            w.finish().unwrap();
            assert_eq!(decode_png(&out).unwrap(), a);
            assert!(decode_png(b"not a png").unwrap_err().contains("not a PNG"));
        }
    }
}
