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
pub use image::{ImageAuditor, ImageRerun, RgbImage, decode_png};
#[cfg(feature = "s3")]
pub use heurist_verify::image::{ImageEvidence, ImageThresholds, ImageVerdict, Precision, PrecisionBars};

/// Image audits: the claimed PNG fetched from S3, the job re-run on the claimed model with the
/// noise of each precision a miner may run in (f32, f16, bf16: the same seed draws another
/// picture in each), the two compared by `heurist_verify::image` within that precision's bars
/// ([`PrecisionBars::NETWORK`]: calibrated on honest images of the reference miner's own
/// stack, diffusers at its pins in f32, f16 and bf16; see heurist-verify's DETECTION.md), as
/// `heurist_verify::image::rerun::check_rgb` judges.
///
/// The same seed, steps, size and sampler on the same checkpoint give the same picture up to
/// floating-point noise (thread counts, kernels, half-precision rounding); a substituted model,
/// another seed, fewer steps, another LoRA weight or a smaller image scaled up change the
/// picture itself.
#[cfg(feature = "s3")]
pub mod image {
    use std::sync::Arc;

    use heurist_protocol::{Job, MinerSubmit, SubmitResult};
    use heurist_verify::image::{Precision, PrecisionBars, rgb_image};

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

    /// Decodes a PNG (any bit depth and colour type) to 8-bit RGB.
    pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
        let img = heurist_verify::image::decode_png(bytes).map_err(|e| e.to_string())?;
        let (width, height) = img.dimensions();
        Ok(RgbImage { width, height, rgb: img.into_raw() })
    }

    /// Re-runs an image job on the model it names, as an honest miner would: the reference
    /// pixels an audit compares against.
    pub trait ImageRerun: Send + Sync {
        /// The image `job` should have produced on a miner running in `precision` (which fixes
        /// the noise it draws from the job's seed).
        fn rerun(&self, job: &Job, precision: Precision) -> Result<RgbImage, String>;
    }

    /// Audits image results: fetches the submitted object from the grant's bucket (a signed
    /// `GetObject`), re-runs the job with [`ImageRerun`] and fails the result when the two
    /// are not the same picture under the thresholds, with the SSIM and hash distance as
    /// evidence. Must be called from a blocking thread inside a tokio runtime (the sequencer
    /// calls auditors so).
    pub struct ImageAuditor {
        /// The re-run.
        pub rerun: Arc<dyn ImageRerun>,
        /// Where results are.
        pub grant: S3Grant,
        /// What counts as the same picture in each precision ([`PrecisionBars::NETWORK`]: the
        /// calibrated bars).
        pub thresholds: PrecisionBars,
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
            let claimed = match rgb_image(claimed.width, claimed.height, claimed.rgb) {
                Ok(c) => c,
                Err(e) => return AuditVerdict::Fail { evidence: format!("object {key}: {e}") },
            };
            // Each precision's re-run in turn, until one holds; the closest one is the evidence.
            let judged = self.thresholds.judge_reruns(&claimed, |precision| {
                let img = self.rerun.rerun(job, precision).map_err(|e| format!("re-running the job ({precision}): {e}"))?;
                rgb_image(img.width, img.height, img.rgb).map_err(|e| format!("re-running the job ({precision}): {e}"))
            });
            let (precision, verdict) = match judged {
                Ok(judged) => judged,
                Err(reason) => return AuditVerdict::Skipped { reason },
            };
            if verdict.holds() {
                return AuditVerdict::Pass;
            }
            AuditVerdict::Fail {
                evidence: format!(
                    "object {key} is not the image of job {} on {} in any precision; closest, {precision}: {} (bars: {})",
                    job.job_id,
                    job.model_id,
                    verdict.explain(),
                    self.thresholds.get(precision)
                ),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use super::*;

        fn png_of(a: &RgbImage) -> Vec<u8> {
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, a.width, a.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&a.rgb).unwrap();
            w.finish().unwrap();
            out
        }

        #[test]
        fn png_round_trip_and_garbage() {
            let a = RgbImage { width: 3, height: 2, rgb: (0..18).map(|i| (i * 40 % 256) as u8).collect() };
            assert_eq!(decode_png(&png_of(&a)).unwrap(), a);
            assert!(decode_png(b"not a png").unwrap_err().contains("PNG"));
        }
    }
}
