//! A llama-architecture body for the CPU on plain f32 slices, with the hand-written quantized
//! matmuls of [`crate::llm::quant`]; one of the bodies behind [`crate::llm::model::CausalLm`].
//!
//! For a model as small as SmolLM2-135M (30 layers of width 576) a decode step is dominated by
//! per-operation overhead in a tensor library, so this body runs the whole forward pass as
//! straight loops over buffers it reuses: RMSNorm → Q/K/V (one stacked matmul) → RoPE →
//! causal grouped-query attention over an f32 KV cache → output projection → RMSNorm →
//! gate/up (one stacked matmul) → SwiGLU → down, then the final norm and the vocabulary
//! projection for the last token only (or, for teacher-forced scoring, for the last `k` tokens
//! of one pass: [`CpuLlama::forward_positions`], bitwise what decoding them one by one gives).
//! A pass may also copy out the residual stream of chosen tokens at chosen layers (`Tap`, the
//! observer's hidden states); with no tap it copies nothing. Every matmul quantizes its input to 8 bits per block
//! and multiplies in integers, as llama.cpp does. A forward pass runs inside the kernels'
//! thread pool.
//!
//! It loads GGUF llama files whose matmul weights are Q4_1 or Q8_0 (other block types, mixture
//! of experts and non-linear RoPE scaling stay with candle's body).

mod attention;
mod batch;
mod load;
mod ops;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use rayon::prelude::*;

pub(crate) use load::LoadError;
use ops::{Heads, Rope};

use crate::llm::quant::activation::Q8Activations;
use crate::llm::quant::kernels::Isa;
use crate::llm::quant::matmul::QMatrix;

/// A forward pass that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForwardError {
    /// No tokens were given.
    #[error("no tokens to run")]
    NoTokens,
    /// A token id past the embedding table.
    #[error("token id {token_id} is outside the embedding table of {vocab} rows")]
    UnknownToken {
        /// The id.
        token_id: u32,
        /// Rows of the embedding table.
        vocab: usize,
    },
    /// The tokens would start after a gap in the cache.
    #[error("tokens start at position {position} but the cache holds {cached}")]
    PositionGap {
        /// Where the tokens were to start.
        position: usize,
        /// Positions in the cache.
        cached: usize,
    },
    /// The operating system refused the matmul threads.
    #[error("the CPU thread pool could not be started")]
    NoThreads,
    /// Logits were asked for more positions than the pass runs.
    #[error("logits asked for the last {positions} positions of a pass of {tokens} tokens")]
    TooManyPositions {
        /// Positions asked for.
        positions: usize,
        /// Tokens in the pass.
        tokens: usize,
    },
    /// A batched step was given a different number of tokens than sequences.
    #[error("a batched step of {sequences} sequences was given {tokens} tokens")]
    BatchShape {
        /// Sequences in the batch.
        sequences: usize,
        /// Tokens given.
        tokens: usize,
    },
    /// Hidden states were asked for at a layer the model does not have.
    #[error("hidden states asked for at layer {layer}, but the model has {layers} layers (0 to {layers})")]
    NoSuchLayer {
        /// The layer asked for.
        layer: usize,
        /// Decoder layers.
        layers: usize,
    },
    /// A sequence in a batched step is a clone of another loaded model.
    #[error("sequence {index} of the batch belongs to another model")]
    ForeignSequence {
        /// Its place in the batch.
        index: usize,
    },
}

/// The weights, shared by every clone of a model.
#[derive(Debug)]
struct Weights {
    hidden: usize,
    ff: usize,
    heads: Heads,
    eps: f32,
    rope: Rope,
    rope_dim: usize,
    embedding: QMatrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: QMatrix,
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    /// `[q | k | v]` rows.
    qkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// `[gate | up]` rows.
    gate_up: QMatrix,
    down: QMatrix,
}

/// Keys and values of every position so far, per layer, `[position][kv_dim]`.
#[derive(Debug, Clone, Default)]
struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

/// Buffers a forward pass reuses.
#[derive(Debug, Clone, Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q8: Q8Activations,
    wide: Vec<f32>,
    q: Vec<f32>,
    attn: Vec<f32>,
    act: Vec<f32>,
    cos_sin: Vec<(f32, f32)>,
    scores: Vec<f32>,
    logits: Vec<f32>,
}

/// The CPU llama body with its KV cache; a clone shares the weights and starts empty.
#[derive(Debug)]
pub(crate) struct CpuLlama {
    weights: Arc<Weights>,
    isa: Isa,
    cache: KvCache,
    scratch: Scratch,
}

impl Clone for CpuLlama {
    fn clone(&self) -> Self {
        Self { weights: Arc::clone(&self.weights), isa: self.isa, cache: KvCache::default(), scratch: Scratch::default() }
    }
}

impl CpuLlama {
    /// Loads the body from an open GGUF file's header and reader.
    pub(crate) fn load(content: &Content, reader: &mut BufReader<File>, path: &Path) -> Result<Self, LoadError> {
        let weights = load::load(content, reader, path)?;
        let isa = Isa::detect();
        tracing::debug!(?isa, rope_dim = weights.rope_dim, "CPU llama body");
        Ok(Self { weights: Arc::new(weights), isa, cache: KvCache::default(), scratch: Scratch::default() })
    }

    /// The kernels' instruction set.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs `tokens` at positions `position..` (the cache keeps positions before `position`)
    /// and returns the logits after the last one.
    #[cfg(test)]
    pub(crate) fn forward_last(&mut self, tokens: &[u32], position: usize) -> Result<Vec<f32>, ForwardError> {
        self.forward_last_tapped(tokens, position, &[], &mut Vec::new())
    }

    /// [`Self::forward_last`], with the last token's hidden states at `layers` (numbered as in
    /// `llm::observer`) into `hidden`, one after another in the order asked.
    pub(crate) fn forward_last_tapped(
        &mut self,
        tokens: &[u32],
        position: usize,
        layers: &[usize],
        hidden: &mut Vec<f32>,
    ) -> Result<Vec<f32>, ForwardError> {
        self.check(tokens, position)?;
        self.check_layers(layers)?;
        let pool = crate::llm::quant::pool().ok_or(ForwardError::NoThreads)?;
        let mut taps = [Tap::new(tokens.len() - 1..tokens.len(), layers, hidden, self.weights.hidden)];
        let taps = if layers.is_empty() { &mut [][..] } else { &mut taps[..] };
        pool.install(|| self.run(tokens, position, 1, taps));
        Ok(self.scratch.logits.clone())
    }

    /// Decoder layers.
    pub(crate) fn num_layers(&self) -> usize {
        self.weights.layers.len()
    }

    fn check_layers(&self, layers: &[usize]) -> Result<(), ForwardError> {
        let max = self.weights.layers.len();
        match layers.iter().find(|&&l| l > max) {
            Some(&layer) => Err(ForwardError::NoSuchLayer { layer, layers: max }),
            None => Ok(()),
        }
    }

    fn run(&mut self, tokens: &[u32], position: usize, logit_rows: usize, taps: &mut [Tap<'_>]) {
        let w = &*self.weights;
        let (isa, s, cache) = (self.isa, &mut self.scratch, &mut self.cache);
        let (hidden, heads, n_tok) = (w.hidden, w.heads, tokens.len());
        let (q_dim, kv_dim) = (heads.q_dim(), heads.kv_dim());
        cache.k.resize_with(w.layers.len(), Vec::new);
        cache.v.resize_with(w.layers.len(), Vec::new);

        s.x.resize(n_tok * hidden, 0.0);
        for (&t, x) in tokens.iter().zip(s.x.chunks_exact_mut(hidden)) {
            w.embedding.dequantize_row(t as usize, x);
        }
        tap(taps, 0, &s.x, hidden);
        w.rope.table(position..position + n_tok, &mut s.cos_sin);
        let pairs = w.rope.pairs();
        for (l, layer) in w.layers.iter().enumerate() {
            project_qkv(w, isa, layer, s);

            let (k_cache, v_cache) = (&mut cache.k[l], &mut cache.v[l]);
            k_cache.truncate(position * kv_dim);
            v_cache.truncate(position * kv_dim);
            s.q.resize(n_tok * q_dim, 0.0);
            for (t, row) in s.wide.chunks_exact(q_dim + 2 * kv_dim).enumerate() {
                let (q, kv) = row.split_at(q_dim);
                let q_out = &mut s.q[t * q_dim..(t + 1) * q_dim];
                q_out.copy_from_slice(q);
                let cos_sin = &s.cos_sin[t * pairs..(t + 1) * pairs];
                Rope::rotate(q_out, heads.head_dim, cos_sin);
                let start = k_cache.len();
                k_cache.extend_from_slice(&kv[..kv_dim]);
                Rope::rotate(&mut k_cache[start..], heads.head_dim, cos_sin);
                v_cache.extend_from_slice(&kv[kv_dim..]);
            }

            s.attn.resize(n_tok * q_dim, 0.0);
            let (k, v) = (&k_cache[..], &v_cache[..]);
            // Three schedules, one arithmetic: each head's sums run whole in `attend_head`, so a
            // token's attention is bitwise the same in a prompt pass and in a decode step.
            if n_tok == 1 && position < 64 {
                ops::attend(heads, &s.q, k, v, position, &mut s.scores, &mut s.attn);
            } else if n_tok == 1 {
                ops::attend_par(heads, &s.q, k, v, position, &mut s.attn);
            } else {
                // Blocks of consecutive tokens share the cache reads (`attention::BLOCK`); a
                // short last block goes token by token.
                const BLOCK: usize = attention::BLOCK;
                s.attn.par_chunks_mut(BLOCK * q_dim).zip(s.q.par_chunks(BLOCK * q_dim)).enumerate().for_each_init(
                    Vec::new,
                    |scores, (b, (out, q))| {
                        let first = position + b * BLOCK;
                        if out.len() == BLOCK * q_dim {
                            ops::attend_block(heads, q, k, v, first, scores, out);
                        } else {
                            for (t, (out, q)) in out.chunks_exact_mut(q_dim).zip(q.chunks_exact(q_dim)).enumerate() {
                                ops::attend(heads, q, k, v, first + t, scores, out);
                            }
                        }
                    },
                );
            }
            finish_layer(w, isa, layer, s);
            if l + 1 < w.layers.len() {
                tap(taps, l + 1, &s.x, hidden);
            }
        }
        tap_final(w, taps, &s.x);
        cache.len = position + n_tok;

        if logit_rows > 0 {
            project(w, isa, s, n_tok - logit_rows..n_tok);
        }
    }
}

/// A layer's first half up to attention: `s.wide` = the Q/K/V projection of the normed `s.x`.
/// One body for prompt passes, decode steps and batched steps, so they stay bitwise alike.
fn project_qkv(w: &Weights, isa: Isa, layer: &Layer, s: &mut Scratch) {
    ops::rms_norm(&s.x, &layer.attn_norm, w.eps, &mut s.normed);
    s.q8.quantize(&s.normed, w.hidden);
    layer.qkv.matmul(isa, &s.q8, &mut s.wide);
}

/// A layer's second half from the attention output `s.attn`: output projection and residual,
/// then the SwiGLU feed-forward and its residual, into `s.x`.
fn finish_layer(w: &Weights, isa: Isa, layer: &Layer, s: &mut Scratch) {
    s.q8.quantize(&s.attn, w.heads.q_dim());
    layer.wo.matmul(isa, &s.q8, &mut s.wide);
    add(&mut s.x, &s.wide);

    ops::rms_norm(&s.x, &layer.ffn_norm, w.eps, &mut s.normed);
    s.q8.quantize(&s.normed, w.hidden);
    layer.gate_up.matmul(isa, &s.q8, &mut s.wide);
    ops::swiglu(&s.wide, w.ff, &mut s.act);
    s.q8.quantize(&s.act, w.ff);
    layer.down.matmul(isa, &s.q8, &mut s.wide);
    add(&mut s.x, &s.wide);
}

/// Hidden states one pass copies out: the residual stream of its tokens `rows` at `layers`
/// (numbered as in `llm::observer`), into `out`, row after row, each row's layers in the order
/// asked.
pub(super) struct Tap<'a> {
    rows: std::ops::Range<usize>,
    layers: &'a [usize],
    out: &'a mut Vec<f32>,
}

impl<'a> Tap<'a> {
    pub(super) fn new(rows: std::ops::Range<usize>, layers: &'a [usize], out: &'a mut Vec<f32>, hidden: usize) -> Self {
        out.clear();
        out.resize(rows.len() * layers.len() * hidden, 0.0);
        Self { rows, layers, out }
    }

    /// Copies rows of `x` (the pass's `[token][hidden]` values) at layer `index`.
    fn copy(&mut self, index: usize, x: &[f32], hidden: usize, first_row: usize) {
        let n = self.layers.len();
        for (j, _) in self.layers.iter().enumerate().filter(|&(_, &l)| l == index) {
            for (r, row) in self.rows.clone().enumerate() {
                let src = &x[(row - first_row) * hidden..(row - first_row + 1) * hidden];
                self.out[(r * n + j) * hidden..(r * n + j + 1) * hidden].copy_from_slice(src);
            }
        }
    }
}

/// Copies what `taps` want of layer `index` from the residual stream `x`; nothing when no
/// tap asks (the common case costs a loop over an empty slice).
fn tap(taps: &mut [Tap<'_>], index: usize, x: &[f32], hidden: usize) {
    for tap in taps {
        tap.copy(index, x, hidden, 0);
    }
}

/// The last index: the final RMSNorm of the rows the taps want (the values the vocabulary
/// projection quantizes), as transformers reports its last hidden state.
fn tap_final(w: &Weights, taps: &mut [Tap<'_>], x: &[f32]) {
    let last = w.layers.len();
    let mut normed = Vec::new();
    for tap in taps.iter_mut().filter(|t| t.layers.contains(&last)) {
        let rows = &x[tap.rows.start * w.hidden..tap.rows.end * w.hidden];
        ops::rms_norm(rows, &w.output_norm, w.eps, &mut normed);
        let first = tap.rows.start;
        tap.copy(last, &normed, w.hidden, first);
    }
}

/// The final norm and the vocabulary projection of the hidden states of `tokens` (indices into
/// the pass's tokens), into `s.logits` (`tokens.len() × vocab`).
///
/// Every step here works per token with the same code whatever the count (each (row, token)
/// dot of [`QMatrix::matmul`] included), so a token's logits do not depend on how many were
/// projected with it: what makes one-pass scoring equal to generation bit for bit.
fn project(w: &Weights, isa: Isa, s: &mut Scratch, tokens: std::ops::Range<usize>) {
    let rows = &s.x[tokens.start * w.hidden..tokens.end * w.hidden];
    ops::rms_norm(rows, &w.output_norm, w.eps, &mut s.normed);
    s.q8.quantize(&s.normed, w.hidden);
    w.output.matmul(isa, &s.q8, &mut s.logits);
}

/// Consecutive scored positions of [`CpuLlama::forward_positions`]: row `j` is position
/// `first + j`.
pub(crate) struct ScoredRows<'a> {
    /// The first row's position among the scored ones.
    pub first: usize,
    /// Logits per row.
    pub vocab: usize,
    /// `rows × vocab` logits.
    pub logits: &'a [f32],
    /// Each row's `ln Σ exp(logits)` ([`crate::fastmath::log_sum_exp`] at temperature 1).
    pub log_norms: &'a [f64],
    /// Each row's hidden states at the asked layers, row after row (empty when none).
    pub hidden: &'a [f32],
}

impl ScoredRows<'_> {
    /// Rows held.
    pub(crate) fn len(&self) -> usize {
        self.log_norms.len()
    }
}

/// Teacher-forced scoring: logits at many positions from one pass.
impl CpuLlama {
    /// Positions whose logits are projected together in [`Self::forward_positions`]: bounds
    /// the logits buffer (64 × vocab values) however long the scored text.
    const PROJECT_CHUNK: usize = 64;

    /// Runs `tokens` at positions `position..` in one forward pass (as [`Self::forward_last`]
    /// does with a prompt) and calls `each` with the logits after each of the last `k` tokens,
    /// [`Self::PROJECT_CHUNK`] positions at a time, `i = 0..k` in order; the final norm and the
    /// vocabulary projection run for those `k` positions only.
    ///
    /// The logits are bitwise those that feeding the same tokens one step at a time gives:
    /// every operation of a pass is computed per token by the same code whatever the number of
    /// tokens (the matmul kernels keep each (row, token) sum in one order, attention never
    /// splits one head's sum), so a verifier rescoring an answer sees exactly what the
    /// generator saw.
    ///
    /// With `layers`, `each` also gets the hidden states of those positions at `layers`
    /// (numbered as in `llm::observer`, in the order asked); they are all kept until the pass
    /// ends, `k × layers.len() × hidden` values.
    pub(crate) fn forward_positions(
        &mut self,
        tokens: &[u32],
        position: usize,
        k: usize,
        layers: &[usize],
        each: &mut dyn FnMut(ScoredRows<'_>),
    ) -> Result<(), ForwardError> {
        self.check(tokens, position)?;
        self.check_layers(layers)?;
        if k > tokens.len() {
            return Err(ForwardError::TooManyPositions { positions: k, tokens: tokens.len() });
        }
        let pool = crate::llm::quant::pool().ok_or(ForwardError::NoThreads)?;
        let (n, vocab, hidden) = (tokens.len(), self.weights.output.rows(), self.weights.hidden);
        let mut states = Vec::new();
        let mut taps = [Tap::new(n - k..n, layers, &mut states, hidden)];
        let taps = if layers.is_empty() { &mut [][..] } else { &mut taps[..] };
        pool.install(|| self.run(tokens, position, 0, taps));
        let per_row = layers.len() * hidden;
        let mut log_norms = Vec::with_capacity(Self::PROJECT_CHUNK);
        for start in (n - k..n).step_by(Self::PROJECT_CHUNK) {
            let end = (start + Self::PROJECT_CHUNK).min(n);
            let (w, s) = (&*self.weights, &mut self.scratch);
            pool.install(|| {
                project(w, self.isa, s, start..end);
                // Every row's normaliser on the kernels' threads: one thread alone spent a
                // tenth of a scoring pass on them.
                s.logits.par_chunks(vocab).map(|row| crate::fastmath::log_sum_exp(row, 1.0)).collect_into_vec(&mut log_norms);
            });
            let first = start - (n - k);
            each(ScoredRows {
                first,
                vocab,
                logits: &s.logits,
                log_norms: &log_norms,
                hidden: &states[first * per_row..(first + end - start) * per_row],
            });
        }
        Ok(())
    }

    /// The checks every pass makes before touching the cache.
    fn check(&self, tokens: &[u32], position: usize) -> Result<(), ForwardError> {
        let vocab = self.weights.embedding.rows();
        if tokens.is_empty() {
            return Err(ForwardError::NoTokens);
        }
        if let Some(&token_id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ForwardError::UnknownToken { token_id, vocab });
        }
        if position > self.cache.len {
            return Err(ForwardError::PositionGap { position, cached: self.cache.len });
        }
        Ok(())
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
