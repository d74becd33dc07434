//! Choosing the next token from the model's logits, with vLLM's (and so the network's)
//! sampling parameters.
//!
//! The logits go through these steps, in vLLM's order (`vllm/model_executor/layers/sampler.py`,
//! `Sampler.forward` and `_apply_penalties` / `_apply_top_k_top_p` / `_apply_min_p`, v0.5–0.6):
//! 1. repetition penalty, over every token of the prompt and the output so far: a positive logit
//!    is divided by it, a negative one multiplied (as transformers'
//!    `RepetitionPenaltyLogitsProcessor`);
//! 2. frequency then presence penalty (OpenAI's formula), over the output only:
//!    `logit -= frequency * count` and `logit -= presence * (count > 0)`;
//! 3. temperature: `logit / temperature` (skipped when greedy);
//! 4. top-k: tokens below the k-th largest logit are dropped (ties kept);
//! 5. top-p: with the softmax sorted ascending, tokens whose cumulative probability is at most
//!    `1 - top_p` are dropped, the most likely token always kept;
//! 6. min-p: tokens whose probability is below `min_p` times the largest are dropped.
//!
//! Each step equals transformers' processor of the same name (the fixtures compare them).
//! Temperature 0 is greedy: the first index of the largest logit after the penalties (vLLM
//! applies penalties to greedy requests too), which is llama.cpp's greedy pick when no penalty
//! is set. A positive temperature draws from the softmax of what is left with a generator seeded
//! from the request, so a seed gives the same tokens on the same machine and build.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen (vLLM / OpenAI semantics; see the module docs for the order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy; otherwise the softmax temperature.
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to at least this
    /// (1 = off; 0 keeps only the most likely token).
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than this share of the most likely one (0 = off).
    pub min_p: f64,
    /// Divides positive and multiplies negative logits of tokens seen in the prompt or output
    /// (1 = off).
    pub repetition_penalty: f64,
    /// Subtracted once from the logit of every token already in the output (0 = off).
    pub presence_penalty: f64,
    /// Subtracted from a token's logit per occurrence in the output (0 = off).
    pub frequency_penalty: f64,
}

impl Default for SamplingParams {
    /// Greedy, every filter and penalty off.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    /// Whether the choice is the most likely token (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The distribution the next token is drawn from, after every step of the module docs, given
    /// the prompt's and the output's tokens so far: one probability per logit, 0 for dropped
    /// tokens. For a greedy request this is the tempered-at-1 distribution the argmax is taken
    /// over. A verifier uses it to check that a sampled token was allowed.
    pub fn distribution(&self, logits: &[f32], prompt: &[u32], output: &[u32]) -> Vec<f64> {
        let mut history = History::new(prompt);
        for &token in output {
            history.push(token);
        }
        softmax(&self.process(logits, &history))
    }

    /// The logits after every step (dropped tokens are -inf). Arithmetic is f32 through the
    /// temperature, as torch's and vLLM's, then f64 for the probability filters.
    fn process(&self, logits: &[f32], history: &History) -> Vec<f64> {
        let mut l: Vec<f32> = logits.iter().map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect();
        if self.repetition_penalty != 1.0 {
            let penalty = self.repetition_penalty as f32;
            for &token in history.seen.iter() {
                if let Some(v) = l.get_mut(token as usize) {
                    *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
                }
            }
        }
        if self.frequency_penalty != 0.0 || self.presence_penalty != 0.0 {
            let (frequency, presence) = (self.frequency_penalty as f32, self.presence_penalty as f32);
            for (&token, &count) in &history.output_counts {
                if let Some(v) = l.get_mut(token as usize) {
                    *v -= frequency * count as f32;
                    *v -= presence;
                }
            }
        }
        if !self.is_greedy() && self.temperature != 1.0 {
            let t = self.temperature as f32;
            l.iter_mut().for_each(|v| *v /= t);
        }
        let mut l: Vec<f64> = l.into_iter().map(f64::from).collect();
        if self.top_k > 0 && self.top_k < l.len() {
            let mut sorted = l.clone();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let threshold = sorted[self.top_k - 1];
            l.iter_mut().filter(|v| **v < threshold).for_each(|v| *v = f64::NEG_INFINITY);
        }
        if self.top_p < 1.0 {
            let probs = softmax(&l);
            let mut order: Vec<usize> = (0..l.len()).collect();
            // Ascending by probability; equal ones by id so the result does not depend on the sort.
            order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]).then(a.cmp(&b)));
            let mut cumulative = 0.0;
            let last = order.len().saturating_sub(1);
            for (rank, &id) in order.iter().enumerate() {
                cumulative += probs[id];
                if rank < last && cumulative <= 1.0 - self.top_p {
                    l[id] = f64::NEG_INFINITY;
                }
            }
        }
        if self.min_p > 0.0 {
            let probs = softmax(&l);
            let threshold = self.min_p * probs.iter().copied().fold(0.0, f64::max);
            for (v, p) in l.iter_mut().zip(&probs) {
                if *p < threshold {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
        l
    }
}

/// The tokens the penalties look at.
#[derive(Debug, Clone, Default)]
struct History {
    /// Prompt and output tokens (repetition penalty).
    seen: HashSet<u32>,
    /// Output tokens with their counts (frequency and presence penalties).
    output_counts: HashMap<u32, u32>,
}

impl History {
    fn new(prompt: &[u32]) -> Self {
        Self { seen: prompt.iter().copied().collect(), output_counts: HashMap::new() }
    }

    fn push(&mut self, token: u32) {
        self.seen.insert(token);
        *self.output_counts.entry(token).or_insert(0) += 1;
    }
}

/// A token chooser for one request: its parameters, the history its penalties need, and its
/// generator.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    params: SamplingParams,
    history: History,
    /// The request's generator; `None` when greedy (boxed: it is 300+ bytes).
    rng: Option<Box<StdRng>>,
}

impl Sampler {
    /// A sampler for `params` (validated by the caller), `seed` (`None` = fresh entropy) and
    /// the prompt's token ids.
    pub(crate) fn new(params: SamplingParams, seed: Option<u64>, prompt: &[u32]) -> Self {
        let rng = (!params.is_greedy()).then(|| {
            Box::new(match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            })
        });
        // Without penalties the history is never read: skip hashing a long prompt.
        let penalised = params.repetition_penalty != 1.0
            || params.presence_penalty != 0.0
            || params.frequency_penalty != 0.0;
        let history = if penalised { History::new(prompt) } else { History::default() };
        Self { params, history, rng }
    }

    /// Chooses the next token and records it as output; `None` when no logit is a number.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        let neutral = self.params.repetition_penalty == 1.0
            && self.params.presence_penalty == 0.0
            && self.params.frequency_penalty == 0.0;
        let token = match &mut self.rng {
            None if neutral => argmax(logits),
            None => argmax_f64(&self.params.process(logits, &self.history)),
            Some(rng) => draw(&softmax(&self.params.process(logits, &self.history)), rng),
        }?;
        if !neutral {
            self.history.push(token);
        }
        Some(token)
    }
}

/// One step of [`SamplerReplay`]: what the seeded sampler drew where the answer has `claimed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayStep {
    /// The token the sampler draws from these logits with this step's uniform; `None` when no
    /// logit is a number.
    pub drawn: Option<u32>,
    /// The token the answer has here.
    pub claimed: u32,
    /// This step's uniform draw in `[0, 1)`, scaled to the distribution's total: the sampler
    /// takes the first token whose cumulative probability (in id order) exceeds it.
    pub target: f64,
    /// Where `claimed`'s probability lies on that cumulative scale: `[start, end)`; empty
    /// when the token was dropped or has no probability.
    pub claimed_range: (f64, f64),
}

impl ReplayStep {
    /// How far (on the cumulative probability scale) the draw fell from the claimed token's
    /// range: 0 when the sampler drew it. A verifier whose logits differ from the miner's by
    /// rounding only sees distances of that rounding's size; another model, sampled with the
    /// same seed, lands away from the range by a probability mass of its own.
    pub fn miss(&self) -> f64 {
        let (start, end) = self.claimed_range;
        if self.target < start {
            start - self.target
        } else if self.target >= end {
            self.target - end
        } else {
            0.0
        }
    }
}

/// The engine's seeded sampler replayed over a known answer: feed it the logits of each
/// position (from one teacher-forced pass, [`crate::ChatEngine::score`]) and the token the
/// answer has there, and it says what the sampler drew with that position's uniform.
///
/// Each step consumes exactly the draw the engine's sampler makes for one generated token, and
/// the penalties' history follows the claimed tokens, so for an answer our engine generated
/// with `seed` on the same logits every step draws its claimed token. This is how a verifier
/// re-checks a sampled answer of our engine as exactly as a greedy one, at the cost of one
/// forward pass instead of a generation.
///
/// ```
/// use heurist_inference::{SamplerReplay, SamplingParams};
///
/// let params = SamplingParams { temperature: 1.0, ..SamplingParams::default() };
/// let logits = [0.0f32, 0.0, 0.0, 0.0]; // four equally likely tokens
/// let mut replay = SamplerReplay::new(params, 42, &[]);
/// let step = replay.step(&logits, 2);
/// // The draw picked one token; token 2 holds the probability range [0.5, 0.75).
/// assert_eq!(step.claimed_range, (0.5, 0.75));
/// assert_eq!(step.drawn == Some(2), step.miss() == 0.0);
/// ```
#[derive(Debug, Clone)]
pub struct SamplerReplay {
    params: SamplingParams,
    history: History,
    rng: StdRng,
}

impl SamplerReplay {
    /// The sampler of a request with `params` (not greedy) and `seed`, over `prompt`'s ids.
    pub fn new(params: SamplingParams, seed: u64, prompt: &[u32]) -> Self {
        Self {
            params,
            history: History::new(prompt),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Replays one generated token: draws as the engine does from `logits`, and records
    /// `claimed` as the output token for the next steps' penalties.
    pub fn step(&mut self, logits: &[f32], claimed: u32) -> ReplayStep {
        let probs = softmax(&self.params.process(logits, &self.history));
        let total: f64 = probs.iter().sum();
        // As `draw`: no uniform is consumed when there is nothing to draw from.
        let (drawn, target) = if total.is_nan() || total <= 0.0 {
            (None, f64::NAN)
        } else {
            let target = self.rng.random::<f64>() * total;
            (pick(&probs, target), target)
        };
        let start: f64 = probs.iter().take(claimed as usize).sum();
        let end = start + probs.get(claimed as usize).copied().unwrap_or(0.0);
        self.history.push(claimed);
        ReplayStep {
            drawn,
            claimed,
            target,
            claimed_range: (start, end),
        }
    }
}

/// A draw from `probs` (summing to 1 up to rounding), scanning in id order.
fn draw(probs: &[f64], rng: &mut StdRng) -> Option<u32> {
    let total: f64 = probs.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    pick(probs, rng.random::<f64>() * total)
}

/// The token whose cumulative range holds `target` (in `[0, sum of probs)`).
fn pick(probs: &[f64], target: f64) -> Option<u32> {
    let mut target = target;
    for (id, p) in probs.iter().enumerate() {
        if target < *p {
            return u32::try_from(id).ok();
        }
        target -= p;
    }
    // Rounding left a sliver past the last weight: take the last non-zero one.
    probs.iter().rposition(|p| *p > 0.0).and_then(|id| u32::try_from(id).ok())
}

/// `softmax(l)` in f64; -inf entries get 0, and all -inf gives all 0.
fn softmax(l: &[f64]) -> Vec<f64> {
    let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return vec![0.0; l.len()];
    }
    let exp: Vec<f64> = l.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn argmax_f64(l: &[f64]) -> Option<u32> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in l.iter().enumerate() {
        if v > f64::NEG_INFINITY && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.and_then(|(i, _)| u32::try_from(i).ok())
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

/// `log softmax(logits)[id]`: the exponentials in f32 ([`crate::fastmath`]), their sum and the
/// logarithm in f64.
pub(crate) fn log_prob(logits: &[f32], id: u32) -> f32 {
    log_prob_given(logits, id, crate::fastmath::log_sum_exp(logits, 1.0))
}

/// [`log_prob`] with the row's `log_sum_exp(logits, 1.0)` already at hand.
pub(crate) fn log_prob_given(logits: &[f32], id: u32, log_norm: f64) -> f32 {
    let chosen = logits.get(id as usize).copied().unwrap_or(f32::NAN);
    (f64::from(chosen) - log_norm) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempered(temperature: f64) -> SamplingParams {
        SamplingParams { temperature, ..SamplingParams::default() }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default(), None, &[]);
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), Some(1));
        assert_eq!(s.sample(&[f32::NAN, -5.0, f32::NAN]), Some(1));
        assert_eq!(s.sample(&[f32::NAN]), None);
        assert_eq!(s.sample(&[]), None);
    }

    #[test]
    fn greedy_applies_penalties() {
        // Token 1 leads, but it is in the prompt and the penalty halves it.
        let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::default() };
        let mut s = Sampler::new(params, None, &[1]);
        assert_eq!(s.sample(&[1.0, 1.5, 0.0]), Some(0));
        // Token 0 is now in the output too, so both are penalised: 0.5 vs 0.75.
        assert_eq!(s.sample(&[1.0, 1.5, 0.0]), Some(1));
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draws = |seed| {
            let mut s = Sampler::new(tempered(1.0), Some(seed), &[]);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn the_replay_draws_what_the_sampler_drew() {
        // Penalties and filters on, so the replay must follow the history and every step.
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.95,
            repetition_penalty: 1.2,
            frequency_penalty: 0.3,
            presence_penalty: 0.1,
            ..SamplingParams::default()
        };
        let prompt = [3, 4, 5];
        let logits: Vec<Vec<f32>> = (0..40)
            .map(|t| {
                (0..64)
                    .map(|i| ((i * 7 + t * 13) as f32 * 0.31).sin() * 3.0)
                    .collect()
            })
            .collect();
        let mut sampler = Sampler::new(params, Some(9), &prompt);
        let tokens: Vec<u32> = logits.iter().map(|l| sampler.sample(l).unwrap()).collect();
        let mut replay = SamplerReplay::new(params, 9, &prompt);
        for (l, &t) in logits.iter().zip(&tokens) {
            let step = replay.step(l, t);
            assert_eq!((step.drawn, step.miss()), (Some(t), 0.0), "{step:?}");
        }
        // Another token at one position: the draw misses its range, by a positive distance,
        // and the steps after still replay (the history follows the claimed tokens).
        let other = (0..64).find(|&c| c != tokens[0]).unwrap();
        let mut replay = SamplerReplay::new(params, 9, &prompt);
        let wrong = replay.step(&logits[0], other);
        assert_eq!(wrong.drawn, Some(tokens[0]));
        assert!(wrong.miss() > 0.0, "{wrong:?}");
        // Another seed draws other tokens at most positions.
        let mut replay = SamplerReplay::new(params, 10, &prompt);
        let misses = logits
            .iter()
            .zip(&tokens)
            .filter(|(l, t)| replay.step(l, **t).miss() > 0.0)
            .count();
        assert!(misses > 10, "{misses} of 40");
    }

    #[test]
    fn temperature_draws_follow_the_softmax() {
        // Probabilities 0.5, 0.25, 0.25: draw 20k times, each share within 0.02 (≈ 6 sigma).
        let logits = [2f32.ln(), 0.0, 0.0];
        let mut s = Sampler::new(tempered(1.0), Some(42), &[]);
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
    fn draws_stay_in_the_kept_set() {
        let logits = [3.0f32, 2.9, 2.8, -1.0, -1.0, -1.0];
        let params = SamplingParams { temperature: 5.0, top_k: 2, ..SamplingParams::default() };
        let mut s = Sampler::new(params, Some(3), &[]);
        assert!((0..500).all(|_| matches!(s.sample(&logits), Some(0 | 1))));
    }

    #[test]
    fn low_temperature_is_nearly_greedy() {
        let mut s = Sampler::new(tempered(0.01), Some(1), &[]);
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
