//! Sampled chat answers judged by their likelihood under the claimed model.
//!
//! A sampled answer (temperature `T > 0`) is not a function of the prompt, and another
//! engine (vLLM, llama.cpp) draws other tokens from the same seed, so it cannot be
//! re-generated. It can be *rescored*: one teacher-forced pass of the claimed model over the
//! answer ([`ChatEngine::score`]) gives, at every position `i`, the tempered distribution
//! `p_i = softmax(logits_i / T)` the honest miner sampled from. Four tests, each with an
//! error rate on honest answers that is bounded or calibrated on honest answers of other
//! engines ([`SampledThresholds::default`]):
//!
//! - **impossible token**: some claimed token has `p_i(x_i) < ε` (`ε = e^-38.4`). Whatever
//!   engine sampled honestly, the chance of drawing any token below `ε` at one position is at
//!   most `V·ε` (`V` tokens in the vocabulary: 49,152 for SmolLM2), a bound that engine
//!   numerics (log-probabilities off by a few tenths) do not move. Random text, another
//!   model's text and edited text fail it.
//! - **likelihood z-score**: `s_i = ln p_i(x_i)` has, under honest sampling, mean
//!   `μ_i = -H(p_i)` and variance `σ_i² = Var_{p_i}[ln p_i]`; `Z = Σ(s_i - μ_i) / sqrt(Σσ_i²)`
//!   is a sum of martingale differences, close to a standard normal for answers of more than
//!   a few tokens. Answers sampled at a lower temperature (or greedily) are too likely
//!   (`Z ≫ 0`), at a higher temperature or from a perturbed model too unlikely (`Z ≪ 0`):
//!   flagged when `|Z| > 6.7`. Honest answers of another engine drift from a standard normal
//!   (transformers in bf16 reached -4.5 over 300 answers, llama.cpp -3.7): the bar is
//!   calibrated on them, and [`crate::detection`] reports what they reach.
//! - **opening z-score**: the same statistic over the first [`OPENING_TOKENS`] tokens alone,
//!   flagged below -5.4. An answer to another prompt opens on another subject, unlikely under
//!   this prompt, and the rest of it (conditioned on its own opening) does not dilute that.
//! - **premature end**: an answer that stopped before `max_tokens` must have stopped because
//!   the model ended it (an end-of-generation token, or a stop string). The probability of
//!   that end after the last claimed token is summed over every end-of-generation token and
//!   every token that begins a stop string; below `δ = 1e-5` the answer was cut. An honest
//!   answer ends there with probability at most `δ` per position.
//!
//! The answer is re-encoded with the model's tokenizer. An engine may have sampled a
//! non-canonical tokenization of the same text (transformers drew " you" + "ossible", which
//! the tokenizer splits " yo" + "uoss" + "ible", a token the model never offers there):
//! where a token is below `e^-20.7`, the check also scores the likelier split around it (the
//! model's likeliest token that spells the text's next bytes, at most four times) and keeps
//! it when its least likely token is likelier. The canonical re-encoding is at most as long,
//! so an answer the miner says hit `max_tokens` is not held to the end test when its
//! re-encoding is within a tenth of the limit. Top-k, top-p and penalties are not modelled
//! (the network's jobs send a temperature only; vLLM's defaults then sample the whole
//! tempered distribution): a request using them is refused, not misjudged.

use heurist_inference::{ChatEngine, ChatRequest, TokenEvent, TokenObserver, Tokenizer};

use crate::error::{Result, VerifyError};

/// How many of an answer's first tokens the opening z-score sums.
pub const OPENING_TOKENS: usize = 16;

/// The bars of [`check_sampled`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampledThresholds {
    /// Flag when `|Z|` exceeds this.
    pub max_abs_z: f64,
    /// Flag when the z-score of the answer's first [`OPENING_TOKENS`] tokens is below this:
    /// an answer to another prompt starts unlike any answer to this one.
    pub min_opening_z: f64,
    /// Flag when the answer's first [`OPENING_TOKENS`] tokens gain less than this in
    /// log-likelihood (nats, temperature 1) from the job's prompt over a context that asks
    /// nothing ([`ChatEngine::answer_header_ids`]): an answer to another prompt gains little
    /// from this one, or loses.
    pub min_prompt_gain: f64,
    /// `ln ε`: flag a claimed token less likely than this.
    pub min_token_log_prob: f64,
    /// `ln δ`: flag an early end less likely than this.
    pub min_end_log_prob: f64,
}

impl Default for SampledThresholds {
    /// `|Z| > 6.7`, opening `Z < -5.4`, prompt gain below -3.85 nats, `ε = e^-38.4` (2e-17),
    /// `δ = 1e-5`: calibrated on 300
    /// honest sampled answers (T 0.7 and 1.0) of other engines on SmolLM2-135M-Instruct
    /// (llama.cpp with f16 and with f32 KV cache, transformers in f32 and in bf16; the
    /// calibration prompts of `tests/fixtures/honest/`, disjoint from the detection table's)
    /// by `examples/llm_detection_table.rs --calibrate`: each bar is 1.5 times the worst
    /// calibration answer's figure (`Z` -4.48 and opening `Z` -3.61, prompt gain -2.57, ln p
    /// -25.6 of the least likely token, ln p -6.4 of the least likely end), the end bar no
    /// stricter than
    /// `δ = 1e-5` (an honest answer of 96 tokens is then cut short with probability at most
    /// `96 δ` ≈ 1e-3 whatever the numerics). The detection table in [`crate::detection`]
    /// judges other prompts with them.
    fn default() -> Self {
        Self {
            max_abs_z: 6.71,
            min_opening_z: -5.41,
            min_prompt_gain: -3.85,
            min_token_log_prob: -38.39,
            min_end_log_prob: (1e-5f64).ln(),
        }
    }
}

impl SampledThresholds {
    /// Bars that never reject: for collecting the statistics of a calibration set.
    pub const PERMISSIVE: Self = Self {
        max_abs_z: f64::INFINITY,
        min_opening_z: f64::NEG_INFINITY,
        min_prompt_gain: f64::NEG_INFINITY,
        min_token_log_prob: f64::NEG_INFINITY,
        min_end_log_prob: f64::NEG_INFINITY,
    };
}

/// The rescoring of a sampled answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledCheck {
    /// Whether the answer holds (no reason against it).
    pub holds: bool,
    /// Tokens of the re-encoded answer.
    pub tokens: usize,
    /// The likelihood z-score.
    pub z: f64,
    /// The z-score of the first [`OPENING_TOKENS`] tokens alone.
    pub opening_z: f64,
    /// What the first [`OPENING_TOKENS`] tokens gain in log-likelihood (nats, temperature 1)
    /// from the job's prompt over a context that asks nothing.
    pub prompt_gain: f64,
    /// The least likely claimed token: its index and tempered log-probability.
    pub least_likely: Option<(usize, f64)>,
    /// Tempered log-probability that the model ends the answer where it ends; `None` when
    /// the answer ran to `max_tokens`.
    pub end_log_prob: Option<f64>,
    /// Why the answer does not hold, with the numbers; empty when it holds.
    pub reasons: Vec<String>,
}

/// Per-position figures, gathered while the engine scores.
struct Tally<'a> {
    temperature: f64,
    /// Whether each token id ends the answer (end of generation or a stop string's start).
    ends: &'a [bool],
    /// Positions scored as the answer's tokens (the rest is the appended end probe).
    answer_len: usize,
    sum_dev: f64,
    sum_var: f64,
    opening_dev: f64,
    opening_var: f64,
    /// `Σ ln softmax(logits)[x_i]` (temperature 1) over the opening.
    opening_raw: f64,
    least: Option<(usize, f64)>,
    end_log_prob: Option<f64>,
}

/// What one scored position adds to a [`Tally`]; computed apart from the others, so a batch
/// of positions is spread over threads.
enum Figures {
    /// An answer token: its tempered log-probability, and the mean and variance of that
    /// statistic under honest sampling.
    Token { index: usize, log_prob: f64, raw_log_prob: f64, mean: f64, variance: f64 },
    /// The appended end probe: the log-probability that the model ends the answer here.
    End(f64),
}

impl Tally<'_> {
    fn figures(&self, event: &TokenEvent<'_>) -> Figures {
        let t = self.temperature;
        if event.index >= self.answer_len {
            let max = heurist_inference::fastmath::max_finite(event.logits);
            let scaled = |l: f32| if l.is_nan() { f64::NEG_INFINITY } else { (f64::from(l) - f64::from(max)) / t };
            let z_sum: f64 = event.logits.iter().map(|&l| scaled(l).exp()).sum();
            let end: f64 =
                event.logits.iter().zip(self.ends).filter(|(_, e)| **e).map(|(&l, _)| scaled(l).exp()).sum::<f64>();
            return Figures::End(end.ln() - z_sum.ln());
        }
        // One exponential per logit (this is most of a check's cost beside the scoring pass).
        let m = heurist_inference::fastmath::tempered_moments(event.logits, t);
        let log_prob = event.logits.get(event.token_id as usize).map_or(f64::NEG_INFINITY, |&l| {
            if l.is_nan() { f64::NEG_INFINITY } else { (f64::from(l) - f64::from(m.max)) / t - m.log_norm() }
        });
        Figures::Token {
            index: event.index,
            log_prob,
            raw_log_prob: f64::from(event.log_prob),
            mean: m.mean_log_prob(),
            variance: m.var_log_prob(),
        }
    }

    /// Adds one position's figures; positions come in order, so the sums do not depend on how
    /// the figures were computed.
    fn absorb(&mut self, figures: Figures) {
        match figures {
            Figures::End(lp) => self.end_log_prob = Some(lp),
            Figures::Token { index, log_prob, raw_log_prob, mean, variance } => {
                self.sum_dev += log_prob - mean;
                self.sum_var += variance;
                if index < OPENING_TOKENS {
                    self.opening_dev += log_prob - mean;
                    self.opening_var += variance;
                    self.opening_raw += raw_log_prob;
                }
                if self.least.is_none_or(|(_, v)| log_prob < v) {
                    self.least = Some((index, log_prob));
                }
            }
        }
    }
}

impl TokenObserver for Tally<'_> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        let figures = self.figures(event);
        self.absorb(figures);
    }

    fn on_tokens(&mut self, events: &[TokenEvent<'_>]) {
        use rayon::prelude::*;
        let this = &*self;
        let figures: Vec<Figures> = events.par_iter().map(|e| this.figures(e)).collect();
        for f in figures {
            self.absorb(f);
        }
    }
}

/// How many other splits of a sampled answer [`check_sampled`] scores where the canonical one
/// has an impossible token.
const MAX_RESPLITS: usize = 4;

/// A token less likely than this (`ln 1e-9`, whatever the bars) makes [`check_sampled`] look
/// for a likelier split of the text around it.
const RESPLIT_BELOW: f64 = -20.723_265_836_946_41;

/// The logits of two positions of a scoring pass.
struct Capture {
    at: [usize; 2],
    logits: Vec<(usize, Vec<f32>)>,
}

impl TokenObserver for Capture {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        if self.at.contains(&event.index) {
            self.logits.push((event.index, event.logits.to_vec()));
        }
    }
}

/// Another split of `claimed` around position `at` of `answer` (its token there, or the one
/// before): the model's likeliest token there among those that spell the answer's next bytes,
/// when it is likelier than the split's own, then the rest re-encoded. `None` when there is
/// none.
fn likelier_split(
    engine: &ChatEngine,
    request: &ChatRequest,
    claimed: &str,
    answer: &[u32],
    at: usize,
) -> heurist_inference::Result<Option<Vec<u32>>> {
    let tokenizer = engine.tokenizer();
    let mut capture = Capture { at: [at.saturating_sub(1), at], logits: Vec::new() };
    engine.score_request(request, &answer[..=at.min(answer.len().saturating_sub(1))], &mut capture)?;
    for (position, logits) in &capture.logits {
        let offset: usize = answer[..*position].iter().map(|&t| tokenizer.token_bytes(t).map_or(0, <[u8]>::len)).sum();
        let Some(rest) = claimed.as_bytes().get(offset..) else { continue };
        let own = logits.get(answer[*position] as usize).copied().unwrap_or(f32::NEG_INFINITY);
        let mut best: Option<(u32, f32)> = None;
        for (id, &l) in logits.iter().enumerate() {
            let id = id as u32;
            if l.is_nan() || l <= own || best.is_some_and(|(_, b)| l <= b) {
                continue;
            }
            let bytes = tokenizer.token_bytes(id)?;
            if !bytes.is_empty() && rest.starts_with(bytes) && !tokenizer.is_control(id)? {
                best = Some((id, l));
            }
        }
        let Some((id, _)) = best else { continue };
        let spelled = offset + tokenizer.token_bytes(id)?.len();
        let Ok(tail) = std::str::from_utf8(&claimed.as_bytes()[spelled..]) else { continue };
        let mut next = answer[..*position].to_vec();
        next.push(id);
        next.extend(tokenizer.encode(tail)?);
        return Ok(Some(next));
    }
    Ok(None)
}

/// Whether each token id ends an answer: an end-of-generation token, or a token that begins a
/// stop string (or contains one from its start).
pub(crate) fn ending_tokens(tokenizer: &Tokenizer, stop: &[String]) -> Vec<bool> {
    (0..tokenizer.vocab_size())
        .map(|id| {
            let id = id as u32;
            tokenizer.is_end_of_generation(id)
                || tokenizer.token_bytes(id).is_ok_and(|b| {
                    !b.is_empty() && stop.iter().any(|s| s.as_bytes().starts_with(b) || b.starts_with(s.as_bytes()))
                })
        })
        .collect()
}

/// Rescores `claimed`, the answer to the sampled `request`, on `engine`.
///
/// `ran_to_limit`: the miner says generation stopped at `max_tokens` (finish reason
/// `length`). A greedy request is [`VerifyError::NotSampled`] (use [`super::check_greedy`]);
/// one with top-k, top-p, min-p or a penalty is [`VerifyError::UnmodelledSampling`].
pub fn check_sampled(
    engine: &ChatEngine,
    request: &ChatRequest,
    claimed: &str,
    ran_to_limit: bool,
    thresholds: &SampledThresholds,
) -> Result<SampledCheck> {
    if !(request.temperature.is_finite() && request.temperature > 0.0) {
        return Err(VerifyError::NotSampled { temperature: request.temperature });
    }
    let neutral = heurist_inference::SamplingParams::default();
    for (name, value, off) in [
        ("top_p", request.top_p, neutral.top_p),
        ("top_k", request.top_k as f64, neutral.top_k as f64),
        ("min_p", request.min_p, neutral.min_p),
        ("repetition_penalty", request.repetition_penalty, neutral.repetition_penalty),
        ("presence_penalty", request.presence_penalty, neutral.presence_penalty),
        ("frequency_penalty", request.frequency_penalty, neutral.frequency_penalty),
    ] {
        if value != off {
            return Err(VerifyError::UnmodelledSampling { name, value });
        }
    }
    let inference = |e: heurist_inference::InferenceError| VerifyError::Inference { reason: e.to_string() };
    let tokenizer = engine.tokenizer();
    let limit = request.max_tokens;
    let ends = ending_tokens(tokenizer, &request.stop);
    let score = |answer: &[u32]| -> Result<Tally<'_>> {
        let answer_len = answer.len();
        let at_limit = answer_len >= limit || (ran_to_limit && answer_len * 10 + 10 >= limit * 9);
        let mut tokens = answer.to_vec();
        if !at_limit {
            // One more position, scored under the logits after the last claimed token.
            tokens.push(tokenizer.eos_token_id());
        }
        let mut tally = Tally {
            temperature: request.temperature,
            ends: &ends,
            answer_len,
            sum_dev: 0.0,
            sum_var: 0.0,
            opening_dev: 0.0,
            opening_var: 0.0,
            opening_raw: 0.0,
            least: None,
            end_log_prob: None,
        };
        engine.score_request(request, &tokens, &mut tally).map_err(inference)?;
        Ok(tally)
    };
    let mut answer = tokenizer.encode(claimed).map_err(inference)?;
    let mut tally = score(&answer)?;
    // A sampler may have drawn a split of the text other than the canonical one (" you" +
    // "ossible" where the tokenizer gives " yo" + "uoss" + "ible"); the canonical split then
    // has a token the model never offered. Follow the more likely split there, and keep it
    // when its least likely token is likelier.
    let mut resplits = 0;
    while resplits < MAX_RESPLITS {
        let Some((at, lp)) = tally.least.filter(|(_, lp)| *lp < RESPLIT_BELOW) else { break };
        let Some(next) = likelier_split(engine, request, claimed, &answer, at).map_err(inference)? else { break };
        resplits += 1;
        let next_tally = score(&next)?;
        if next_tally.least.is_none_or(|(_, l)| l <= lp) {
            break;
        }
        (answer, tally) = (next, next_tally);
    }
    let answer_len = answer.len();
    let z = if tally.sum_var > 0.0 { tally.sum_dev / tally.sum_var.sqrt() } else { 0.0 };
    let opening_z = if tally.opening_var > 0.0 { tally.opening_dev / tally.opening_var.sqrt() } else { 0.0 };
    // The opening once more, after a context that asks nothing: a short pass (the header and
    // at most OPENING_TOKENS tokens).
    let opening = &answer[..answer.len().min(OPENING_TOKENS)];
    let prompt_gain = if opening.is_empty() {
        0.0
    } else {
        let header = engine.answer_header_ids().map_err(inference)?;
        let neutral = engine.score_after_ids(&header, opening, &mut heurist_inference::NoObserver).map_err(inference)?;
        tally.opening_raw - neutral.log_probs.iter().map(|&lp| f64::from(lp)).sum::<f64>()
    };
    let mut reasons = Vec::new();
    if let Some((index, lp)) = tally.least.filter(|(_, lp)| *lp < thresholds.min_token_log_prob) {
        reasons.push(format!(
            "token {index} of {answer_len} has probability {:.1e} at temperature {} under the claimed model (below {:.0e}: no honest sampler draws it)",
            lp.exp(),
            request.temperature,
            thresholds.min_token_log_prob.exp()
        ));
    }
    if z.abs() > thresholds.max_abs_z {
        reasons.push(format!(
            "likelihood z-score {z:.1} over {answer_len} tokens at temperature {} (honest answers stay within ±{}): {}",
            request.temperature,
            thresholds.max_abs_z,
            if z > 0.0 { "too likely: sampled colder or greedily" } else { "too unlikely: another model or a hotter sampler" }
        ));
    }
    if opening_z < thresholds.min_opening_z {
        reasons.push(format!(
            "the answer's first {} tokens have likelihood z-score {opening_z:.1} (honest answers stay above {}): it does not answer this prompt",
            answer_len.min(OPENING_TOKENS),
            thresholds.min_opening_z
        ));
    }
    if prompt_gain < thresholds.min_prompt_gain {
        reasons.push(format!(
            "the answer's first {} tokens are {:.1} nats {} under this prompt than under no question at all (honest answers gain at least {:.1}): it answers another prompt",
            opening.len(),
            prompt_gain.abs(),
            if prompt_gain < 0.0 { "less likely" } else { "only more likely" },
            thresholds.min_prompt_gain
        ));
    }
    if let Some(lp) = tally.end_log_prob.filter(|lp| *lp < thresholds.min_end_log_prob) {
        reasons.push(format!(
            "the answer stops after {answer_len} of {limit} tokens where the model ends it with probability {:.1e} (below {:.0e}): cut short",
            lp.exp(),
            thresholds.min_end_log_prob.exp()
        ));
    }
    Ok(SampledCheck {
        holds: reasons.is_empty(),
        tokens: answer_len,
        z,
        opening_z,
        prompt_gain,
        least_likely: tally.least,
        end_log_prob: tally.end_log_prob,
        reasons,
    })
}
