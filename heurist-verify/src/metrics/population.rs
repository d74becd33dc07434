//! Latencies that are possible one at a time but implausible together.
//!
//! A miner who lies about latency within the physical bound passes
//! [`super::MetricsChecker::check`] job by job; over many jobs the lie shows against the other
//! miners with the same GPU and model. Each job is reduced to one dimensionless number, its
//! **bound multiple** `m = claimed latency / physical minimum` ([`super::JobMetrics`]), which
//! takes the job's size out (a long answer and a short one on the same card land near the
//! same `m`). Per miner, on `x = ln m`:
//!
//! - **faster than peers**: the miner's median `x` against the medians of its peers (the
//!   other miners with enough jobs on the same GPU and model), as a robust z-score
//!   `z = (median - median of peers' medians) / s`, where `s = 1.4826 · MAD` of the peers'
//!   medians (the MAD scaled to a normal's standard deviation), floored at
//!   [`PopulationThresholds::min_scale`] so that a very uniform population does not turn a
//!   small difference into a large z. Flagged when `z < -max_z` **and** the miner is at least
//!   `min_speedup` times faster than the peers' median: both a statistical and a practical
//!   bar.
//! - **too regular**: the miner's robust spread `1.4826 · MAD` of `x` against the median of
//!   its peers' spreads. Measured wall-clock times jitter (scheduling, clocks, prompt
//!   lengths); latencies made up by a formula do not. Flagged when the spread is below
//!   `min_spread_ratio` of the peers' median spread.
//!
//! Medians and MADs, not means and standard deviations: one stalled job (a swap, a
//! cold cache) must not move a miner's figure, and honest latency is not normally
//! distributed. Miners with fewer than `min_jobs` jobs, and groups with fewer than
//! `min_peers` other miners, are not judged: no flag rests on a handful of numbers.

use std::collections::BTreeMap;

use super::Flag;

/// One job of one miner: what the population checks compare.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The miner.
    pub miner_id: String,
    /// The catalogue name of its GPU.
    pub gpu: String,
    /// The model of the job.
    pub model_id: String,
    /// Claimed latency over the physical minimum ([`super::JobMetrics::bound_multiple`]).
    pub bound_multiple: f64,
}

/// The bars a miner must fall below to be flagged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PopulationThresholds {
    /// Jobs a miner needs (on one GPU and model) to be judged or to count as a peer.
    pub min_jobs: usize,
    /// Peers a miner needs to be judged.
    pub min_peers: usize,
    /// Flag "faster than peers" below `-max_z`.
    pub max_z: f64,
    /// ... and only when at least this many times faster than the peers' median.
    pub min_speedup: f64,
    /// Floor of the z-score's scale, in `ln` units (0.05: 5%).
    pub min_scale: f64,
    /// Flag "too regular" when the spread is below this share of the peers' median spread.
    pub min_spread_ratio: f64,
}

impl Default for PopulationThresholds {
    /// 20 jobs, 5 peers, z below -4 and 1.5x faster, scale at least 5%, spread below a tenth.
    fn default() -> Self {
        Self { min_jobs: 20, min_peers: 5, max_z: 4.0, min_speedup: 1.5, min_scale: 0.05, min_spread_ratio: 0.1 }
    }
}

/// The numbers behind a population flag.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerEvidence {
    /// The miner.
    pub miner_id: String,
    /// The GPU.
    pub gpu: String,
    /// The model.
    pub model_id: String,
    /// The miner's jobs in the group.
    pub jobs: usize,
    /// Peers compared with.
    pub peers: usize,
    /// The miner's median `ln` bound multiple.
    pub median: f64,
    /// The median of the peers' medians.
    pub peers_median: f64,
    /// The robust z-score of the miner's median.
    pub z: f64,
    /// The miner's robust spread of `ln` bound multiple.
    pub spread: f64,
    /// The median of the peers' spreads.
    pub peers_spread: f64,
}

/// Per miner of one group: its median and spread of `ln m`, and its job count.
struct MinerStats {
    median: f64,
    spread: f64,
    jobs: usize,
}

/// Flags miners whose latencies are implausible against their peers' (see the module docs).
/// Observations with a bound multiple that is not finite and positive are left out.
pub fn check_population(observations: &[Observation], thresholds: &PopulationThresholds) -> Vec<Flag> {
    let mut groups: BTreeMap<(&str, &str), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for o in observations.iter().filter(|o| o.bound_multiple.is_finite() && o.bound_multiple > 0.0) {
        groups
            .entry((o.gpu.as_str(), o.model_id.as_str()))
            .or_default()
            .entry(o.miner_id.as_str())
            .or_default()
            .push(o.bound_multiple.ln());
    }
    let mut flags = Vec::new();
    for ((gpu, model_id), miners) in groups {
        let stats: BTreeMap<&str, MinerStats> = miners
            .into_iter()
            .filter(|(_, xs)| xs.len() >= thresholds.min_jobs)
            .map(|(miner, mut xs)| {
                let median = median_of(&mut xs);
                let spread = robust_sd(&xs, median);
                (miner, MinerStats { median, spread, jobs: xs.len() })
            })
            .collect();
        for (miner, own) in &stats {
            let mut medians: Vec<f64> = stats.iter().filter(|(m, _)| *m != miner).map(|(_, s)| s.median).collect();
            if medians.len() < thresholds.min_peers {
                continue;
            }
            let mut spreads: Vec<f64> = stats.iter().filter(|(m, _)| *m != miner).map(|(_, s)| s.spread).collect();
            let peers_median = median_of(&mut medians);
            let scale = robust_sd(&medians, peers_median).max(thresholds.min_scale);
            let peers_spread = median_of(&mut spreads);
            let evidence = PeerEvidence {
                miner_id: (*miner).to_owned(),
                gpu: gpu.to_owned(),
                model_id: model_id.to_owned(),
                jobs: own.jobs,
                peers: medians.len(),
                median: own.median,
                peers_median,
                z: (own.median - peers_median) / scale,
                spread: own.spread,
                peers_spread,
            };
            let speedup = (peers_median - own.median).exp();
            let too_fast = evidence.z < -thresholds.max_z && speedup >= thresholds.min_speedup;
            let too_regular = peers_spread > 0.0 && own.spread < thresholds.min_spread_ratio * peers_spread;
            if too_fast {
                flags.push(Flag::FasterThanPeers(evidence.clone()));
            }
            if too_regular {
                flags.push(Flag::TooRegular(evidence));
            }
        }
    }
    flags
}

/// The median (sorts `xs`); 0 for none.
fn median_of(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// `1.4826 · median |x - center|`: the MAD scaled to a normal's standard deviation.
fn robust_sd(xs: &[f64], center: f64) -> f64 {
    let mut deviations: Vec<f64> = xs.iter().map(|x| (x - center).abs()).collect();
    1.4826 * median_of(&mut deviations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median_of(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_of(&mut []), 0.0);
        // |x - 2| = 1, 0, 1, 98: median 1.
        assert!((robust_sd(&[1.0, 2.0, 3.0, 100.0], 2.0) - 1.4826).abs() < 1e-12);
    }
}
