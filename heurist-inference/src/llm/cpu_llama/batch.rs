//! One decode step for several sequences at once: the serving loop's batched step
//! (see [`crate::llm::batch`]).
//!
//! Each sequence brings its own KV cache and feeds one token at the position after its cache.
//! The linear layers run as one matmul over the stacked rows, so the weights stream through
//! the caches once per step instead of once per sequence; attention runs per sequence, over
//! its own cache, sequences split across the pool.
//!
//! A sequence's logits are bitwise those of its single-sequence step ([`CpuLlama::forward_last`]
//! with one token): every per-row operation (RMSNorm, quantization, RoPE, SwiGLU) is the same
//! function on the same row, the matmul kernels accumulate each (row, token) dot product in
//! the same order whatever the number of tokens, and attention of one query is the same
//! per-head function the single step uses at any position. The serving tests rely on this:
//! a request's tokens do not depend on what shares its batch.

use std::sync::Arc;

use rayon::prelude::*;

use super::{CpuLlama, ForwardError, KvCache, Scratch, Tap, ops};

impl CpuLlama {
    /// Feeds `tokens[i]` to `seqs[i]` at `positions[i]` (its cache keeps the positions before,
    /// as in [`CpuLlama::forward_last`]) and returns each sequence's next-token logits, in order.
    ///
    /// Every sequence must be a clone of the same loaded model (they share the weights).
    #[cfg(test)]
    pub(crate) fn decode_batch(
        seqs: &mut [&mut CpuLlama],
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        Self::decode_batch_tapped(seqs, tokens, positions, &[], &mut [])
    }

    /// [`Self::decode_batch`] (the serving loop's step), with sequence `i`'s hidden states at `layers[i]` (numbered as
    /// in `llm::observer`) into `hidden[i]`, as [`CpuLlama::forward_last_tapped`] gives them;
    /// `layers` and `hidden` are empty when no sequence asks.
    pub(crate) fn decode_batch_tapped(
        seqs: &mut [&mut CpuLlama],
        tokens: &[u32],
        positions: &[usize],
        layers: &[&[usize]],
        hidden: &mut [Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let Some(first) = seqs.first() else { return Err(ForwardError::NoTokens) };
        if tokens.len() != seqs.len() || positions.len() != seqs.len() {
            return Err(ForwardError::BatchShape { sequences: seqs.len(), tokens: tokens.len().min(positions.len()) });
        }
        if let Some((s, &position)) = seqs.iter().zip(positions).find(|&(s, &p)| p > s.cache.len) {
            return Err(ForwardError::PositionGap { position, cached: s.cache.len });
        }
        let weights = Arc::clone(&first.weights);
        if let Some(index) = seqs.iter().position(|s| !Arc::ptr_eq(&s.weights, &weights)) {
            return Err(ForwardError::ForeignSequence { index });
        }
        let vocab = weights.embedding.rows();
        if let Some(&token_id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ForwardError::UnknownToken { token_id, vocab });
        }
        if !layers.is_empty() && (layers.len() != seqs.len() || hidden.len() != seqs.len()) {
            return Err(ForwardError::BatchShape { sequences: seqs.len(), tokens: layers.len().min(hidden.len()) });
        }
        for l in layers {
            first.check_layers(l)?;
        }
        let pool = crate::llm::quant::pool().ok_or(ForwardError::NoThreads)?;
        let mut taps: Vec<Tap<'_>> = layers
            .iter()
            .zip(hidden.iter_mut())
            .enumerate()
            .filter(|(_, (l, _))| !l.is_empty())
            .map(|(i, (l, out))| Tap::new(i..i + 1, l, out, weights.hidden))
            .collect();
        // The first sequence lends its buffers to the step.
        let mut scratch = std::mem::take(&mut seqs[0].scratch);
        let isa = seqs[0].isa;
        let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut s.cache).collect();
        pool.install(|| run_batch(&weights, isa, &mut caches, tokens, positions, &mut scratch, &mut taps));
        let vocab_out = weights.output.rows();
        let logits = scratch.logits.chunks_exact(vocab_out).map(<[f32]>::to_vec).collect();
        seqs[0].scratch = scratch;
        Ok(logits)
    }
}

/// The body of [`CpuLlama::decode_batch`], inside the kernels' pool; `run` of the parent
/// module with one row per sequence and per-sequence positions and caches.
fn run_batch(
    w: &super::Weights,
    isa: crate::llm::quant::kernels::Isa,
    caches: &mut [&mut KvCache],
    tokens: &[u32],
    positions: &[usize],
    s: &mut Scratch,
    taps: &mut [Tap<'_>],
) {
    let (hidden, heads, n) = (w.hidden, w.heads, tokens.len());
    let (q_dim, kv_dim) = (heads.q_dim(), heads.kv_dim());
    for cache in caches.iter_mut() {
        cache.k.resize_with(w.layers.len(), Vec::new);
        cache.v.resize_with(w.layers.len(), Vec::new);
    }

    s.x.resize(n * hidden, 0.0);
    for (&t, x) in tokens.iter().zip(s.x.chunks_exact_mut(hidden)) {
        w.embedding.dequantize_row(t as usize, x);
    }
    super::tap(taps, 0, &s.x, hidden);
    for (l, layer) in w.layers.iter().enumerate() {
        super::project_qkv(w, isa, layer, s);

        s.q.resize(n * q_dim, 0.0);
        for (i, row) in s.wide.chunks_exact(q_dim + 2 * kv_dim).enumerate() {
            let (cache, position) = (&mut *caches[i], positions[i]);
            let (q, kv) = row.split_at(q_dim);
            let q_out = &mut s.q[i * q_dim..(i + 1) * q_dim];
            q_out.copy_from_slice(q);
            w.rope.apply(q_out, heads.head_dim, position, &mut s.cos_sin);
            let (k_cache, v_cache) = (&mut cache.k[l], &mut cache.v[l]);
            k_cache.truncate(position * kv_dim);
            v_cache.truncate(position * kv_dim);
            k_cache.extend_from_slice(&kv[..kv_dim]);
            w.rope.apply(&mut k_cache[position * kv_dim..], heads.head_dim, position, &mut s.cos_sin);
            v_cache.extend_from_slice(&kv[kv_dim..]);
        }

        s.attn.resize(n * q_dim, 0.0);
        let kv: Vec<(&[f32], &[f32], usize)> =
            caches.iter().zip(positions).map(|(c, &p)| (&c.k[l][..], &c.v[l][..], p)).collect();
        s.attn.par_chunks_mut(q_dim).zip(s.q.par_chunks(q_dim)).zip(kv.par_iter()).for_each_init(
            Vec::new,
            |scores, ((out, q), &(k, v, position))| ops::attend(heads, q, k, v, position, scores, out),
        );
        super::finish_layer(w, isa, layer, s);
        if l + 1 < w.layers.len() {
            super::tap(taps, l + 1, &s.x, hidden);
        }
    }
    super::tap_final(w, taps, &s.x);
    for (cache, &position) in caches.iter_mut().zip(positions) {
        cache.len = position + 1;
    }

    // Every row is its sequence's last token.
    ops::rms_norm(&s.x, &w.output_norm, w.eps, &mut s.normed);
    s.q8.quantize(&s.normed, hidden);
    w.output.matmul(isa, &s.q8, &mut s.logits);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::quantized::gguf_file::Content;

    use super::*;

    fn load() -> CpuLlama {
        let path = crate::smollm2_path().unwrap();
        let mut reader = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let content = Content::read(&mut reader).unwrap();
        CpuLlama::load(&content, &mut reader, &path).map_err(|_| "load").unwrap()
    }

    /// Four sequences at different positions (below and above the 64 where the single step
    /// switches to head-parallel attention), stepped together for several steps: each
    /// sequence's logits equal, bit for bit, those of its own single-sequence steps.
    #[test]
    fn batched_step_equals_single_steps_bitwise() {
        let base = load();
        let prompts: [Vec<u32>; 4] = [
            vec![1, 9690, 198],
            (0..70).map(|i| 100 + i * 7).collect(),
            vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198],
            (0..130).map(|i| 2000 + i * 3).collect(),
        ];
        let mut batched: Vec<CpuLlama> = prompts.iter().map(|_| base.clone()).collect();
        let mut single: Vec<CpuLlama> = prompts.iter().map(|_| base.clone()).collect();
        let mut next: Vec<u32> = Vec::new();
        for ((b, s), prompt) in batched.iter_mut().zip(&mut single).zip(&prompts) {
            let lb = b.forward_last(prompt, 0).unwrap();
            assert_eq!(lb, s.forward_last(prompt, 0).unwrap());
            next.push(argmax(&lb));
        }
        for step in 0..6 {
            let mut refs: Vec<&mut CpuLlama> = batched.iter_mut().collect();
            let positions: Vec<usize> = prompts.iter().map(|p| p.len() + step).collect();
            let got = CpuLlama::decode_batch(&mut refs, &next, &positions).unwrap();
            for (i, (s, prompt)) in single.iter_mut().zip(&prompts).enumerate() {
                let want = s.forward_last(&[next[i]], prompt.len() + step).unwrap();
                assert!(got[i] == want, "sequence {i} step {step}: batched logits differ from the single step");
            }
            next = got.iter().map(|l| argmax(l)).collect();
        }
        // A batch of one is the single step too.
        let mut one = [&mut batched[2]];
        let got = CpuLlama::decode_batch(&mut one, &[next[2]], &[prompts[2].len() + 6]).unwrap();
        assert_eq!(got[0], single[2].forward_last(&[next[2]], prompts[2].len() + 6).unwrap());
    }

    #[test]
    fn bad_batches_are_refused() {
        let base = load();
        let (mut a, mut b) = (base.clone(), base.clone());
        assert_eq!(CpuLlama::decode_batch(&mut [], &[], &[]), Err(ForwardError::NoTokens));
        let err = CpuLlama::decode_batch(&mut [&mut a, &mut b], &[1], &[0, 0]).unwrap_err();
        assert_eq!(err, ForwardError::BatchShape { sequences: 2, tokens: 1 });
        let err = CpuLlama::decode_batch(&mut [&mut a, &mut b], &[1, 49_152], &[0, 0]).unwrap_err();
        assert_eq!(err, ForwardError::UnknownToken { token_id: 49_152, vocab: 49_152 });
        let err = CpuLlama::decode_batch(&mut [&mut a, &mut b], &[1, 2], &[0, 3]).unwrap_err();
        assert_eq!(err, ForwardError::PositionGap { position: 3, cached: 0 });
        let mut other = load();
        let err = CpuLlama::decode_batch(&mut [&mut a, &mut other], &[1, 2], &[0, 0]).unwrap_err();
        assert_eq!(err, ForwardError::ForeignSequence { index: 1 });
    }

    fn argmax(v: &[f32]) -> u32 {
        v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap()
    }
}
