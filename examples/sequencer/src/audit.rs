//! Audits: after a result is accepted and credited, a sampled share of them is re-checked
//! (re-run, rescored) by an [`Auditor`]; a failed check becomes a slash entry in the ledger,
//! with its evidence, and the result's verdict says so.
//!
//! The sequencer does not judge results itself: `heurist-verify` does (or any other
//! implementation of the trait). Choosing the share is a trade-off the operator sets with
//! `audit_rate`: with reward R, slash S (here: the job's points, so S = R) and probability p
//! of a check, cheating on one job pays `(1 - p)·R - p·S`, negative once p > R / (R + S) —
//! one half when the slash is the job's points; a higher slash (a share of the phase
//! balance) lowers the rate needed.

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
