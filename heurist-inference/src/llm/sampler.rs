//! Choosing the next token from the model's logits.
//!
//! Temperature 0 is greedy: the first index of the largest logit, which is what llama.cpp's
//! greedy sampler picks, so ties resolve the same way. A positive temperature samples from
//! `softmax(logits / temperature)` with a generator seeded from the request, so a seed gives
//! the same tokens on the same machine and build. top-k, top-p, min-p and the penalties belong
//! here too (a later slice of issue 4).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A token chooser for one request.
#[derive(Debug, Clone)]
pub(crate) enum Sampler {
    /// The most likely token.
    Greedy,
    /// A draw from the tempered distribution.
    Temperature {
        /// Divides the logits; > 0.
        temperature: f64,
        /// The request's generator (boxed: it is 300+ bytes, greedy requests need none).
        rng: Box<StdRng>,
    },
}

impl Sampler {
    /// A sampler for `temperature` (0 = greedy; validated finite and ≥ 0 by the caller) and
    /// `seed` (`None` = fresh entropy).
    pub(crate) fn new(temperature: f64, seed: Option<u64>) -> Self {
        if temperature == 0.0 {
            return Sampler::Greedy;
        }
        let rng = Box::new(match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        });
        Sampler::Temperature { temperature, rng }
    }

    /// The chosen token id, `None` when no logit is a number.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        match self {
            Sampler::Greedy => argmax(logits),
            Sampler::Temperature { temperature, rng } => {
                let max = logits[argmax(logits)? as usize];
                // exp((l - max) / T) in f64: no overflow, and the largest weight is exactly 1.
                let weights: Vec<f64> = logits
                    .iter()
                    .map(|&l| if l.is_nan() { 0.0 } else { ((f64::from(l) - f64::from(max)) / *temperature).exp() })
                    .collect();
                let total: f64 = weights.iter().sum();
                let mut target = rng.random::<f64>() * total;
                for (id, w) in weights.iter().enumerate() {
                    if target < *w {
                        return u32::try_from(id).ok();
                    }
                    target -= w;
                }
                // Rounding left a sliver past the last weight: take the last non-zero one.
                weights.iter().rposition(|w| *w > 0.0).and_then(|id| u32::try_from(id).ok())
            }
        }
    }
}

/// First index of the largest logit, NaNs skipped.
pub(crate) fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.and_then(|(i, _)| u32::try_from(i).ok())
}

/// `log softmax(logits)[id]`, computed in f64.
pub(crate) fn log_prob(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .sum();
    let chosen = logits.get(id as usize).copied().unwrap_or(f32::NAN);
    (f64::from(chosen) - f64::from(max) - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(0.0, None);
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), Some(1));
        assert_eq!(s.sample(&[f32::NAN, -5.0, f32::NAN]), Some(1));
        assert_eq!(s.sample(&[f32::NAN]), None);
        assert_eq!(s.sample(&[]), None);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draws = |seed| {
            let mut s = Sampler::new(1.0, Some(seed));
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn temperature_draws_follow_the_softmax() {
        // Probabilities 0.5, 0.25, 0.25: draw 20k times, each share within 0.02 (≈ 6 sigma).
        let logits = [2f32.ln(), 0.0, 0.0];
        let mut s = Sampler::new(1.0, Some(42));
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / 20_000.0).collect();
        for (share, want) in shares.iter().zip([0.5, 0.25, 0.25]) {
            assert!((share - want).abs() < 0.02, "{shares:?}");
        }
    }

    #[test]
    fn low_temperature_is_nearly_greedy() {
        let mut s = Sampler::new(0.01, Some(1));
        assert!((0..100).all(|_| s.sample(&[1.0, 2.0, 1.5]) == Some(1)));
    }

    #[test]
    fn log_prob_is_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            let want = (f64::from(l).exp() / z).ln() as f32;
            assert!((log_prob(&logits, i as u32) - want).abs() < 1e-6);
        }
    }
}
