//! Audits: which results to re-check, so that cheating does not pay, and what a failed
//! check costs the miner.
//!
//! Re-checking every result would double the network's work; checking none invites
//! cheating. Like Proof of Sampling (PoSP), a result is checked with a probability `p` set
//! so that a rational miner's best strategy is to be honest: the expected gain of cheating
//! on one job is negative.
//!
//! # The formula
//! For one job: `R` the reward (its points, from the rule set), `c` the cost a cheat saves
//! (running nothing, a smaller model, fewer steps), `d` the share of cheats a check detects
//! (the detection table of this crate's checks), `S` the slash on top of losing the job's
//! points (here a share `σ` of the miner's balance in the phase, `S = σ·B`). An honest miner
//! nets `R - C`; a cheat nets `R - (C - c)` when unchecked or undetected, and
//! `-(C - c) - S` when caught (the job's points are slashed, and `S`). So
//!
//! ```text
//! E[cheat] - E[honest] = (1 - p·d)·R - (C - c) - p·d·S - (R - C) = c - p·d·(R + S)
//! ```
//!
//! and cheating loses exactly when `p > p* = c / (d·(R + S))`. The verifier does not see
//! `c`, but a cheat can save at most what the job costs an honest miner, and mining at all
//! means that cost is below the reward: `c ≤ κ·R` with `κ ≤ 1` ([`AuditPolicy::saved_cost_share`],
//! 1 by default, the worst case). Hence
//!
//! ```text
//! p* = κ·R / (d·(R + σ·B))
//! ```
//!
//! and [`AuditPolicy::check_probability`] uses `p = min(1, max(floor, margin·p*))`. Two
//! readings: with no share slashed (`σ = 0`) `p* = κ/d ≥ 1`, so slashing only the job's
//! points deters nothing short of checking every job; and a miner with a large balance `B`
//! has much to lose, so a small `p` suffices, while a new miner (small `B`) is checked
//! often. Honest miners lose nothing by being checked: the checks are calibrated to accuse
//! none of them.
//!
//! # Choosing and slashing
//! [`AuditSampler`] decides per job with a keyed hash of the job and miner ids: the same
//! answer every time for whoever holds the key (an operator can show a check was drawn, not
//! aimed), unpredictable to a miner who does not. [`FailedCheck::slash_entries`] turns a
//! failed check into `heurist-points` ledger entries: the job's points slashed and, with
//! `σ > 0`, a share of the phase balance, each with the evidence as its reason.

use heurist_points::ledger::{LedgerStore, NewEntry, Receipt};
use heurist_points::{Currency, Decimal, JobRecord, RuleSet};
use sha2::{Digest, Sha256};

use crate::error::{Result, VerifyError};

/// How audits are set: the slash on a failed check, the checks' power, and margins.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AuditPolicy {
    /// `σ`: the share of the miner's phase balance slashed on a failed check, 0 to 1, on top
    /// of the job's points.
    pub slash_share: Decimal,
    /// `d`: the share of cheats a check detects, above 0 and at most 1 (this crate's
    /// detection table; 0.99 by default, the issue's bar).
    pub detection: f64,
    /// `κ`: the largest share of a job's reward a cheat can save, above 0 and at most 1.
    pub saved_cost_share: f64,
    /// `p` is `margin` times the break-even probability (at least 1).
    pub margin: f64,
    /// Every result is checked with at least this probability (0 to 1).
    pub floor: f64,
}

impl Default for AuditPolicy {
    /// A tenth of the phase balance slashed, 99% detection, the worst-case saved cost, a
    /// margin of 2 and a 1% floor.
    fn default() -> Self {
        Self {
            slash_share: Decimal::from_millionths(100_000),
            detection: 0.99,
            saved_cost_share: 1.0,
            margin: 2.0,
            floor: 0.01,
        }
    }
}

/// The check probability of one job, with the numbers it rests on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckProbability {
    /// The probability to use, `min(1, max(floor, margin·break_even))`.
    pub probability: f64,
    /// `p*`: above it cheating loses on average (may exceed 1: then no rate deters).
    pub break_even: f64,
    /// `R`, micro-points.
    pub reward_micro: u64,
    /// `S = σ·B`, micro-points.
    pub slash_micro: u64,
    /// `c - p·d·(R + S)` at [`CheckProbability::probability`], micro-points: what cheating on
    /// the job gains on average (negative when it does not pay).
    pub cheat_gain_micro: f64,
}

impl AuditPolicy {
    /// Refuses settings out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, expected| Err(VerifyError::InvalidAudit { field, value, expected });
        if self.slash_share < Decimal::ZERO || self.slash_share > Decimal::ONE {
            return bad("slash_share", self.slash_share.to_string(), "a share from 0 to 1");
        }
        if !(self.detection > 0.0 && self.detection <= 1.0) {
            return bad("detection", self.detection.to_string(), "a probability above 0, at most 1");
        }
        if !(self.saved_cost_share > 0.0 && self.saved_cost_share <= 1.0) {
            return bad("saved_cost_share", self.saved_cost_share.to_string(), "a share above 0, at most 1");
        }
        if !(self.margin >= 1.0 && self.margin.is_finite()) {
            return bad("margin", self.margin.to_string(), "a finite number, at least 1");
        }
        if !(0.0..=1.0).contains(&self.floor) {
            return bad("floor", self.floor.to_string(), "a probability from 0 to 1");
        }
        Ok(())
    }

    /// The check probability of a job worth `reward_micro` to a miner whose balance in the
    /// phase is `balance_micro` (a negative balance counts as 0: nothing to slash).
    pub fn check_probability(&self, reward_micro: u64, balance_micro: i64) -> Result<CheckProbability> {
        self.validate()?;
        let r = reward_micro as f64;
        let balance = u64::try_from(balance_micro).unwrap_or(0);
        // σ·B in integers, rounded down as the ledger's share slash is.
        let slash_micro = u64::try_from(
            u128::from(balance) * u128::try_from(self.slash_share.millionths()).unwrap_or(0) / 1_000_000,
        )
        .unwrap_or(u64::MAX);
        let s = slash_micro as f64;
        let saved = self.saved_cost_share * r;
        let at_stake = self.detection * (r + s);
        // A job worth nothing gains a cheat nothing either: the floor applies.
        let break_even = if at_stake > 0.0 { saved / at_stake } else { 0.0 };
        let probability = (self.margin * break_even).max(self.floor).min(1.0);
        Ok(CheckProbability {
            probability,
            break_even,
            reward_micro,
            slash_micro,
            cheat_gain_micro: saved - probability * at_stake,
        })
    }

    /// [`AuditPolicy::check_probability`] with the reward of `record` under `rules`.
    pub fn check_probability_for(&self, rules: &RuleSet, record: &JobRecord, balance_micro: i64) -> Result<CheckProbability> {
        let reward = rules.points(record).map_err(|e| VerifyError::Rules { source: Box::new(e) })?;
        self.check_probability(reward.micro(), balance_micro)
    }
}

/// Draws which jobs to check: a keyed hash of the job and miner, compared with `p`.
#[derive(Clone)]
pub struct AuditSampler {
    key: [u8; 32],
}

impl std::fmt::Debug for AuditSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is what keeps the draw unpredictable to miners.
        f.debug_struct("AuditSampler").finish_non_exhaustive()
    }
}

impl AuditSampler {
    /// A sampler with a secret key (keep it from miners; 32 random bytes).
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The job's draw, uniform in `[0, 1)`: SHA-256 of the key and the length-prefixed ids,
    /// its first 53 bits over 2^53.
    pub fn draw(&self, job_id: &str, miner_id: &str) -> f64 {
        let mut h = Sha256::new();
        h.update(self.key);
        for part in [job_id, miner_id] {
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether to check this job at probability `probability`.
    pub fn selects(&self, job_id: &str, miner_id: &str, probability: f64) -> bool {
        self.draw(job_id, miner_id) < probability
    }
}

/// A check that found a result does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedCheck {
    /// The job.
    pub job_id: String,
    /// The miner who submitted it.
    pub miner_id: String,
    /// The currency the job earned.
    pub currency: Currency,
    /// Why, with the numbers (a check's evidence).
    pub evidence: String,
}

impl FailedCheck {
    /// The ledger entries of the slash: the job's points, and `policy.slash_share` of the
    /// miner's phase balance when above 0, each with the evidence.
    pub fn slash_entries(&self, policy: &AuditPolicy) -> Result<Vec<NewEntry>> {
        policy.validate()?;
        let reason = format!("audit of job {} failed: {}", self.job_id, self.evidence);
        let mut entries = vec![NewEntry::SlashJob { job_id: self.job_id.clone(), reason: reason.clone() }];
        if policy.slash_share > Decimal::ZERO {
            entries.push(NewEntry::SlashShare {
                miner_id: self.miner_id.clone(),
                currency: self.currency,
                share: policy.slash_share,
                reason,
            });
        }
        Ok(entries)
    }

    /// Appends [`FailedCheck::slash_entries`] to `ledger` in one batch.
    pub fn slash(&self, policy: &AuditPolicy, ledger: &mut dyn LedgerStore) -> Result<Receipt> {
        let entries = self.slash_entries(policy)?;
        ledger.append(&entries).map_err(|e| VerifyError::Rules { source: Box::new(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_share_slash_no_rate_deters() {
        let policy = AuditPolicy { slash_share: Decimal::ZERO, ..AuditPolicy::default() };
        let p = policy.check_probability(1_000_000, 50_000_000).unwrap();
        assert!(p.break_even > 1.0, "{p:?}");
        assert_eq!(p.probability, 1.0);
    }

    #[test]
    fn break_even_is_the_sign_change_of_the_gain() {
        let policy = AuditPolicy { margin: 1.0, floor: 0.0, ..AuditPolicy::default() };
        // R = 1, B = 100, σ = 0.1: S = 10, p* = 1 / (0.99 · 11).
        let p = policy.check_probability(1_000_000, 100_000_000).unwrap();
        assert_eq!(p.slash_micro, 10_000_000);
        assert!((p.break_even - 1.0 / (0.99 * 11.0)).abs() < 1e-12);
        assert!(p.cheat_gain_micro.abs() < 1e-6, "{p:?}");
        let gain = |prob: f64| 1e6 - prob * 0.99 * 11e6;
        assert!(gain(p.break_even * 0.9) > 0.0 && gain(p.break_even * 1.1) < 0.0);
        // With the default margin of 2, cheating loses.
        assert!(AuditPolicy::default().check_probability(1_000_000, 100_000_000).unwrap().cheat_gain_micro < 0.0);
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        for bad in [
            AuditPolicy { detection: 0.0, ..AuditPolicy::default() },
            AuditPolicy { detection: f64::NAN, ..AuditPolicy::default() },
            AuditPolicy { slash_share: Decimal::from_millionths(1_500_000), ..AuditPolicy::default() },
            AuditPolicy { margin: 0.5, ..AuditPolicy::default() },
            AuditPolicy { floor: -0.1, ..AuditPolicy::default() },
            AuditPolicy { saved_cost_share: 2.0, ..AuditPolicy::default() },
        ] {
            assert!(matches!(bad.check_probability(1, 1), Err(VerifyError::InvalidAudit { .. })), "{bad:?}");
        }
    }

    #[test]
    fn draws_are_uniform_and_keyed() {
        let a = AuditSampler::new([1; 32]);
        let b = AuditSampler::new([2; 32]);
        let n = 20_000;
        let picked = (0..n).filter(|i| a.selects(&format!("job-{i}"), "0xabc-1", 0.25)).count();
        // Binomial(20000, 0.25): sd 61; 5 sd either side.
        assert!((4_700..=5_300).contains(&picked), "{picked}");
        assert_eq!(a.draw("j", "m"), a.draw("j", "m"));
        assert_ne!(a.draw("j", "m"), b.draw("j", "m"));
        assert_ne!(a.draw("ab", "c"), a.draw("a", "bc"));
    }
}
