//! One head of causal attention over the KV cache: the hot loop of a long prompt pass and of
//! one-pass scoring (a quarter of a 300-token scoring pass before this module).
//!
//! The arithmetic is written once, in plain Rust on fixed groups of [`LANES`] values, and
//! compiled twice: for the baseline x86-64 CPU, and with AVX2 or AVX-512 picked at run time.
//! Rust never fuses a multiply and an add, so every build performs the same IEEE operations in
//! the same order and a head's output is bit for bit the same on every CPU, and in a prompt
//! pass, a decode step and a batched step alike (what one-pass scoring relies on).
//!
//! The order, exactly:
//! - score `s_p = dot(q, k_p) · scale`, where `dot` sums lane `i` over the elements `16c + i`
//!   in order of `c`, then the lanes pairwise (8, 4, 2, 1 apart), then adds the elements past
//!   the last whole group one by one;
//! - `e_p = exp(s_p − max_p s_p)` by [`exp_nonpositive`] (the polynomial llama.cpp's softmax
//!   also uses instead of libm: libm's `expf` is a call per value), summed in the same lanes;
//! - `out[d] = Σ_p (e_p · (1 / Σe)) · v_p[d]`, each `d` summed in order of `p` from 0.

use crate::fastmath::exp_nonpositive;

/// Values summed side by side.
const LANES: usize = 16;

/// Head `off / hd` of a query over positions `0..scores.len()` of the cache (`k`, `v`:
/// `[position][kv_dim]`, this head's values at `off..off + hd`); `scores` is scratch.
pub(super) fn head(hd: usize, kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, all the function enables.
            return unsafe { head_avx512(hd, kv_dim, off, q, k, v, scores, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, all the function enables.
            return unsafe { head_avx2(hd, kv_dim, off, q, k, v, scores, out) };
        }
    }
    body::<false>(hd, kv_dim, off, q, k, v, scores, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn head_avx512(hd: usize, kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    // The compiler splits the plain dot's lanes into pairs here; the intrinsics keep them in
    // one register, in the same order.
    body::<true>(hd, kv_dim, off, q, k, v, scores, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn head_avx2(hd: usize, kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    body::<false>(hd, kv_dim, off, q, k, v, scores, out);
}

/// The one arithmetic every build compiles (the module docs give its order); the common head
/// sizes get their own copies, where the compiler keeps a whole head in registers. `AVX512`:
/// only from [`head_avx512`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn body<const AVX512: bool>(hd: usize, kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    match hd {
        64 => sized::<64, AVX512>(kv_dim, off, q, k, v, scores, out),
        128 => sized::<128, AVX512>(kv_dim, off, q, k, v, scores, out),
        _ => any(hd, kv_dim, off, q, k, v, scores, out),
    }
}

/// A head of `HD` values (a multiple of [`LANES`]); `AVX512`: the dot products in AVX-512
/// intrinsics (only inside [`head_avx512`]).
#[inline(always)]
fn sized<const HD: usize, const AVX512: bool>(kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let scale = 1.0 / (HD as f32).sqrt();
    let q: &[f32; HD] = q.try_into().expect("a query head of HD values");
    for (p, s) in scores.iter_mut().enumerate() {
        let key: &[f32; HD] = k[p * kv_dim + off..p * kv_dim + off + HD].try_into().expect("a key head");
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: `AVX512` is only set in `head_avx512`, on a CPU with AVX-512F.
            *s = unsafe { dot_avx512(q, key) } * scale;
            continue;
        }
        let mut lanes = [0f32; LANES];
        for (q, key) in q.chunks_exact(LANES).zip(key.chunks_exact(LANES)) {
            for i in 0..LANES {
                lanes[i] += q[i] * key[i];
            }
        }
        *s = fold(lanes) * scale;
    }
    let inv = 1.0 / softmax_numerators(scores);
    for s in scores.iter_mut() {
        *s *= inv;
    }
    // Each output value sums over the positions in order; the whole head's sums stay in
    // registers while the positions stream past.
    let mut acc = [0f32; HD];
    for (p, &w) in scores.iter().enumerate() {
        let value: &[f32; HD] = v[p * kv_dim + off..p * kv_dim + off + HD].try_into().expect("a value head");
        for d in 0..HD {
            acc[d] += w * value[d];
        }
    }
    out.copy_from_slice(&acc);
}

/// The lanes of [`sized`]'s dot product in one register: products added group after group
/// (never fused), then folded 8, 4, 2 and 1 apart as [`fold`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn dot_avx512<const HD: usize>(q: &[f32; HD], k: &[f32; HD]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm512_setzero_ps();
    for c in 0..HD / LANES {
        // SAFETY: c · 16 + 16 ≤ HD values are read from each array.
        let (a, b) = unsafe { (_mm512_loadu_ps(q.as_ptr().add(c * LANES)), _mm512_loadu_ps(k.as_ptr().add(c * LANES))) };
        acc = _mm512_add_ps(acc, _mm512_mul_ps(a, b));
    }
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    let x = _mm256_add_ps(_mm512_castps512_ps256(acc), hi);
    let x = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// Any head size, in the same order as [`sized`].
#[allow(clippy::too_many_arguments)]
fn any(hd: usize, kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], out: &mut [f32]) {
    let scale = 1.0 / (hd as f32).sqrt();
    for (p, s) in scores.iter_mut().enumerate() {
        let key = &k[p * kv_dim + off..p * kv_dim + off + hd];
        let mut lanes = [0f32; LANES];
        let (qc, kc) = (q.chunks_exact(LANES), key.chunks_exact(LANES));
        let (q_tail, k_tail) = (qc.remainder(), kc.remainder());
        for (q, key) in qc.zip(kc) {
            for i in 0..LANES {
                lanes[i] += q[i] * key[i];
            }
        }
        let mut sum = fold(lanes);
        for (a, b) in q_tail.iter().zip(k_tail) {
            sum += a * b;
        }
        *s = sum * scale;
    }
    let inv = 1.0 / softmax_numerators(scores);
    for s in scores.iter_mut() {
        *s *= inv;
    }
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let value = &v[p * kv_dim + off..p * kv_dim + off + hd];
        for (o, &x) in out.iter_mut().zip(value) {
            *o += w * x;
        }
    }
}

/// `scores[p] = exp(scores[p] − max)`; returns their sum (lanes, then the tail).
#[inline(always)]
fn softmax_numerators(scores: &mut [f32]) -> f32 {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut lanes = [0f32; LANES];
    let mut chunks = scores.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            chunk[i] = exp_nonpositive(chunk[i] - max);
            lanes[i] += chunk[i];
        }
    }
    let mut sum = fold(lanes);
    for s in chunks.into_remainder() {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    sum
}

/// The lanes summed pairwise: 8 apart, then 4, 2, 1.
#[inline(always)]
fn fold(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain reference in f64: softmax of the scaled dot products, values weighted by it.
    fn reference(hd: usize, kv_dim: usize, off: usize, q: &[f32], k: &[f32], v: &[f32], n: usize) -> Vec<f64> {
        let scale = 1.0 / (hd as f64).sqrt();
        let s: Vec<f64> = (0..n)
            .map(|p| (0..hd).map(|j| f64::from(q[j]) * f64::from(k[p * kv_dim + off + j])).sum::<f64>() * scale)
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..hd).map(|d| (0..n).map(|p| e[p] / z * f64::from(v[p * kv_dim + off + d])).sum()).collect()
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: values in [-2, 2).
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn a_head_equals_the_f64_softmax() {
        for (hd, kv_dim, off, n) in [(64, 192, 64, 1), (64, 192, 128, 37), (128, 256, 0, 70), (24, 48, 24, 19), (40, 80, 0, 5)] {
            let (q, k, v) = (data(hd, 1), data(n * kv_dim, 2), data(n * kv_dim, 3));
            let (mut scores, mut out) = (vec![0f32; n], vec![0f32; hd]);
            head(hd, kv_dim, off, &q, &k, &v, &mut scores, &mut out);
            let want = reference(hd, kv_dim, off, &q, &k, &v, n);
            for (d, (&got, &want)) in out.iter().zip(&want).enumerate() {
                assert!((f64::from(got) - want).abs() < 2e-6, "hd {hd}, {n} positions, [{d}]: {got} vs {want}");
            }
        }
    }

    /// The vectorized builds and the baseline one give the same bits (the property that lets a
    /// verifier on another CPU reproduce a miner's logits), for the sized and the general path.
    #[test]
    fn every_build_gives_the_same_bits() {
        for (hd, kv_dim, off, n) in [(64, 192, 64, 300), (128, 128, 0, 33), (40, 80, 40, 17)] {
            let (q, k, v) = (data(hd, 4), data(n * kv_dim, 5), data(n * kv_dim, 6));
            let run = |f: &dyn Fn(&mut [f32], &mut [f32])| {
                let (mut scores, mut out) = (vec![0f32; n], vec![0f32; hd]);
                f(&mut scores, &mut out);
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            let baseline = run(&|s, o| body::<false>(hd, kv_dim, off, &q, &k, &v, s, o));
            // The general path in the sized path's order.
            assert_eq!(run(&|s, o| any(hd, kv_dim, off, &q, &k, &v, s, o)), baseline, "hd {hd}: general vs sized");
            assert_eq!(run(&|s, o| head(hd, kv_dim, off, &q, &k, &v, s, o)), baseline, "hd {hd}: dispatched vs baseline");
        }
    }
}
