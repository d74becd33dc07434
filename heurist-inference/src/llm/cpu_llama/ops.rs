//! The per-token arithmetic between matmuls, on plain f32 slices: RMSNorm, rotary position
//! embedding, causal grouped-query attention over the KV cache, SwiGLU. Over several tokens
//! (a prompt) the per-token work is split across the kernels' pool.

use rayon::prelude::*;

/// `out = x / sqrt(mean(x²) + eps) · weight`, per vector of `weight.len()` values.
///
/// The sum of squares is accumulated in f64, as llama.cpp does.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let norm = |(x, out): (&[f32], &mut [f32])| {
        let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / x.len() as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * scale * w;
        }
    };
    let n = weight.len();
    if x.len() == n {
        norm((x, out));
    } else {
        x.par_chunks(n).zip(out.par_chunks_mut(n)).for_each(norm);
    }
}

/// Rotary embedding tables: `inv_freq[i] = base^(-2i / rope_dim) · freq_scale`.
#[derive(Debug, Clone)]
pub(super) struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub(super) fn new(rope_dim: usize, base: f64, freq_scale: f64) -> Self {
        let inv_freq =
            (0..rope_dim / 2).map(|i| base.powf(-2.0 * i as f64 / rope_dim as f64) * freq_scale).collect();
        Self { inv_freq }
    }

    /// Rotates each head of `x` (heads of `head_dim` values) for `position`, llama.cpp's
    /// "normal" rope for the llama architecture: pairs `(2i, 2i + 1)` of the first `rope_dim`
    /// values of a head turn by `position · inv_freq[i]` (GGUF conversion permuted Q and K so
    /// that this equals Hugging Face's half-split rotation).
    pub(super) fn apply(&self, x: &mut [f32], head_dim: usize, position: usize, cos_sin: &mut Vec<(f32, f32)>) {
        self.table(position..position + 1, cos_sin);
        Self::rotate(x, head_dim, cos_sin);
    }

    /// `(cos, sin)` of every angle of `positions`, `rope_dim / 2` per position, into `out`: a
    /// pass computes them once for all its layers and for both Q and K.
    pub(super) fn table(&self, positions: std::ops::Range<usize>, out: &mut Vec<(f32, f32)>) {
        out.clear();
        for position in positions {
            out.extend(self.inv_freq.iter().map(|&f| {
                let (s, c) = (position as f64 * f).sin_cos();
                (c as f32, s as f32)
            }));
        }
    }

    /// Angles per position in [`Self::table`].
    pub(super) fn pairs(&self) -> usize {
        self.inv_freq.len()
    }

    /// [`Self::apply`] with one position's slice of a [`Self::table`].
    pub(super) fn rotate(x: &mut [f32], head_dim: usize, cos_sin: &[(f32, f32)]) {
        for head in x.chunks_exact_mut(head_dim) {
            for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cos_sin) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
}

/// The shape of attention.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    pub(super) n_head: usize,
    pub(super) n_kv_head: usize,
    pub(super) head_dim: usize,
}

impl Heads {
    pub(super) fn q_dim(self) -> usize {
        self.n_head * self.head_dim
    }

    pub(super) fn kv_dim(self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// Causal attention of one query vector (all heads) at absolute position `position` over the
/// cached keys and values of positions `0..=position` (`[position][kv_dim]` each); writes all
/// heads' outputs to `out`.
pub(super) fn attend(heads: Heads, q: &[f32], k: &[f32], v: &[f32], position: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = heads.head_dim;
    scores.resize(position + 1, 0.0);
    for (h, (q, out)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        attend_head(heads, h, q, k, v, scores, out);
    }
}

/// [`attend`] with the heads split across the pool: one token's attention over a long cache
/// is worth sharing out in decode.
pub(super) fn attend_par(heads: Heads, q: &[f32], k: &[f32], v: &[f32], position: usize, out: &mut [f32]) {
    let hd = heads.head_dim;
    q.par_chunks(hd).zip(out.par_chunks_mut(hd)).enumerate().for_each_init(Vec::new, |scores, (h, (q, out))| {
        scores.resize(position + 1, 0.0);
        attend_head(heads, h, q, k, v, scores, out);
    });
}

/// [`attend`] for [`BLOCK`](super::attention::BLOCK) consecutive tokens, the first at
/// `position` (`q` and `out`: their rows of `q_dim`), head by head: each token's output is
/// what [`attend`] gives it, bit for bit.
pub(super) fn attend_block(heads: Heads, q: &[f32], k: &[f32], v: &[f32], position: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    use super::attention::{BLOCK, head_block};
    let (hd, q_dim) = (heads.head_dim, heads.q_dim());
    let group = heads.n_head / heads.n_kv_head;
    let mut rows = out.chunks_exact_mut(q_dim);
    let mut rows: [&mut [f32]; BLOCK] = std::array::from_fn(|_| rows.next().expect("BLOCK output rows"));
    for h in 0..heads.n_head {
        let qs: [&[f32]; BLOCK] = std::array::from_fn(|i| &q[i * q_dim + h * hd..][..hd]);
        let outs = rows.each_mut().map(|row| &mut row[h * hd..(h + 1) * hd]);
        head_block(hd, heads.kv_dim(), (h / group) * hd, qs, position + 1, k, v, scores, outs);
    }
}

/// Head `h` of [`attend`]; `scores` holds one value per cached position.
fn attend_head(heads: Heads, h: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let group = heads.n_head / heads.n_kv_head;
    let off = (h / group) * heads.head_dim;
    super::attention::head(heads.head_dim, heads.kv_dim(), off, q, k, v, scores, out);
}

/// SwiGLU: `out[i] = silu(gate[i]) · up[i]` for each token's `[gate | up]` row of `2 · ff`.
pub(super) fn swiglu(gate_up: &[f32], ff: usize, out: &mut Vec<f32>) {
    out.resize(gate_up.len() / 2, 0.0);
    let act = |(gu, out): (&[f32], &mut [f32])| {
        let (gate, up) = gu.split_at(ff);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    };
    if gate_up.len() == 2 * ff {
        act((gate_up, out));
    } else {
        gate_up.par_chunks(2 * ff).zip(out.par_chunks_mut(ff)).for_each(act);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_normalizes_each_vector() {
        let mut out = Vec::new();
        rms_norm(&[3.0, 4.0, 0.0, 2.0], &[1.0, 2.0], 0.0, &mut out);
        let s = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / s).abs() < 1e-6 && (out[1] - 8.0 / s).abs() < 1e-6);
        assert!((out[2]).abs() < 1e-6 && (out[3] - 4.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn rope_turns_pairs_by_position_times_frequency() {
        let rope = Rope::new(4, 100.0, 1.0);
        let mut x = [1.0, 0.0, 0.0, 1.0];
        rope.apply(&mut x, 4, 3, &mut Vec::new());
        // Pair 0 turns by 3 rad, pair 1 by 3 · 100^(-1/2) = 0.3 rad.
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        assert!((x[2] + 0.3f32.sin()).abs() < 1e-6 && (x[3] - 0.3f32.cos()).abs() < 1e-6);
    }

    #[test]
    fn attention_weights_values_by_softmax_of_scaled_scores() {
        // Two heads sharing one KV head of dim 2, three positions.
        let heads = Heads { n_head: 2, n_kv_head: 1, head_dim: 2 };
        let k = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let q = [2.0, 0.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        attend(heads, &q, &k, &v, 1, &mut Vec::new(), &mut out);
        let s = 1.0 / 2f32.sqrt();
        let (e0, e1) = ((2.0 * s).exp(), 1.0f32);
        let w0 = e0 / (e0 + e1);
        assert!((out[0] - (w0 * 1.0 + (1.0 - w0) * 3.0)).abs() < 1e-5);
        // The second head's query is zero: a plain average of positions 0 and 1 (not 2).
        assert!((out[2] - 2.0).abs() < 1e-6 && (out[3] - 3.0).abs() < 1e-6);
    }

    #[test]
    fn swiglu_gates_up_with_silu() {
        let mut out = Vec::new();
        swiglu(&[0.0, 2.0, 3.0, 5.0], 2, &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2f32).exp()) * 5.0).abs() < 1e-6);
    }
}
