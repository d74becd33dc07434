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
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // Sixteen keys at a time, their lane folds done together (see `dots16_avx512`).
        done = scores.len() / LANES * LANES;
        for (i, chunk) in scores[..done].chunks_exact_mut(LANES).enumerate() {
            // SAFETY: `AVX512` is only set in `head_avx512`, on a CPU with AVX-512F.
            unsafe { dots16_avx512(q, &k[i * LANES * kv_dim..], kv_dim, off, scale, chunk) };
        }
    }
    for (p, s) in scores.iter_mut().enumerate().skip(done) {
        *s = key_score::<HD, AVX512>(q, k, kv_dim, off, p, scale);
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

/// `dot(q, key p) · scale`, in the module docs' order.
#[inline(always)]
fn key_score<const HD: usize, const AVX512: bool>(q: &[f32; HD], k: &[f32], kv_dim: usize, off: usize, p: usize, scale: f32) -> f32 {
    let key: &[f32; HD] = k[p * kv_dim + off..p * kv_dim + off + HD].try_into().expect("a key head");
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: `AVX512` is only set in `head_avx512` and `block_avx512`, on a CPU with
        // AVX-512F.
        return unsafe { dot_avx512(q, key) } * scale;
    }
    let mut lanes = [0f32; LANES];
    for (q, key) in q.chunks_exact(LANES).zip(key.chunks_exact(LANES)) {
        for i in 0..LANES {
            lanes[i] += q[i] * key[i];
        }
    }
    fold(lanes) * scale
}

/// Queries per [`head_block`]: a prompt pass's consecutive tokens share each key and value
/// they read, so the cache streams from L2 once per four queries instead of once per query
/// (what bounded a scoring pass's attention).
pub(super) const BLOCK: usize = 4;

/// [`head`] for the [`BLOCK`] queries of consecutive positions `len0 − 1, len0, …`: query `i`
/// attends over positions `0..len0 + i`. Each query's output is [`head`]'s, bit for bit: the
/// same operations in the same order, only interleaved across the queries.
#[allow(clippy::too_many_arguments)]
pub(super) fn head_block(hd: usize, kv_dim: usize, off: usize, qs: [&[f32]; BLOCK], len0: usize, k: &[f32], v: &[f32], scores: &mut Vec<f32>, outs: [&mut [f32]; BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, all the function enables.
            return unsafe { block_avx512(hd, kv_dim, off, qs, len0, k, v, scores, outs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, all the function enables.
            return unsafe { block_avx2(hd, kv_dim, off, qs, len0, k, v, scores, outs) };
        }
    }
    block_body::<false>(hd, kv_dim, off, qs, len0, k, v, scores, outs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn block_avx512(hd: usize, kv_dim: usize, off: usize, qs: [&[f32]; BLOCK], len0: usize, k: &[f32], v: &[f32], scores: &mut Vec<f32>, outs: [&mut [f32]; BLOCK]) {
    block_body::<true>(hd, kv_dim, off, qs, len0, k, v, scores, outs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn block_avx2(hd: usize, kv_dim: usize, off: usize, qs: [&[f32]; BLOCK], len0: usize, k: &[f32], v: &[f32], scores: &mut Vec<f32>, outs: [&mut [f32]; BLOCK]) {
    block_body::<false>(hd, kv_dim, off, qs, len0, k, v, scores, outs);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_body<const AVX512: bool>(hd: usize, kv_dim: usize, off: usize, qs: [&[f32]; BLOCK], len0: usize, k: &[f32], v: &[f32], scores: &mut Vec<f32>, outs: [&mut [f32]; BLOCK]) {
    let stride = len0 + BLOCK - 1;
    scores.resize(BLOCK * stride, 0.0);
    let mut rows = scores.chunks_exact_mut(stride);
    let rows: [&mut [f32]; BLOCK] = std::array::from_fn(|i| &mut rows.next().expect("BLOCK rows")[..len0 + i]);
    match hd {
        64 => block_sized::<64, AVX512>(kv_dim, off, qs, k, v, rows, outs),
        128 => block_sized::<128, AVX512>(kv_dim, off, qs, k, v, rows, outs),
        _ => {
            for ((q, scores), out) in qs.into_iter().zip(rows).zip(outs) {
                any(hd, kv_dim, off, q, k, v, scores, out);
            }
        }
    }
}

/// [`sized`] for a block of queries; `rows[i]` is query `i`'s scores, one longer than the
/// previous query's.
#[inline(always)]
fn block_sized<const HD: usize, const AVX512: bool>(kv_dim: usize, off: usize, qs: [&[f32]; BLOCK], k: &[f32], v: &[f32], mut rows: [&mut [f32]; BLOCK], outs: [&mut [f32]; BLOCK]) {
    let scale = 1.0 / (HD as f32).sqrt();
    let qs: [&[f32; HD]; BLOCK] = qs.map(|q| q.try_into().expect("a query head of HD values"));
    let len0 = rows[0].len();
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // Sixteen keys, then every query on them while they are in L1.
        done = len0 / LANES * LANES;
        for b in 0..done / LANES {
            for (q, row) in qs.iter().zip(rows.iter_mut()) {
                // SAFETY: `AVX512` is only set in `block_avx512`, on a CPU with AVX-512F.
                unsafe { dots16_avx512(q, &k[b * LANES * kv_dim..], kv_dim, off, scale, &mut row[b * LANES..][..LANES]) };
            }
        }
    }
    for (q, row) in qs.iter().zip(rows.iter_mut()) {
        for (p, s) in row.iter_mut().enumerate().skip(done) {
            *s = key_score::<HD, AVX512>(q, k, kv_dim, off, p, scale);
        }
        let inv = 1.0 / softmax_numerators(row);
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
    // The positions all queries see, each value read once for the block; then each query's
    // own last positions, still in order of position.
    let mut acc = [[0f32; HD]; BLOCK];
    for p in 0..len0 {
        let value: &[f32; HD] = v[p * kv_dim + off..p * kv_dim + off + HD].try_into().expect("a value head");
        for (acc, row) in acc.iter_mut().zip(&rows) {
            let w = row[p];
            for d in 0..HD {
                acc[d] += w * value[d];
            }
        }
    }
    for (acc, row) in acc.iter_mut().zip(&rows).skip(1) {
        for (p, &w) in row.iter().enumerate().skip(len0) {
            let value: &[f32; HD] = v[p * kv_dim + off..p * kv_dim + off + HD].try_into().expect("a value head");
            for d in 0..HD {
                acc[d] += w * value[d];
            }
        }
    }
    for (out, acc) in outs.into_iter().zip(&acc) {
        out.copy_from_slice(acc);
    }
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

/// `out[j] = dot(q, key j) · scale` for 16 consecutive keys (`keys[j · kv_dim + off..]`), each
/// in [`dot_avx512`]'s order: a key's 16 lanes are summed as before, and the pairwise folds of
/// the 16 keys run as one tree of shuffles and additions (each addition the same pair of
/// lanes as in [`fold`]) instead of 16 separate horizontal sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn dots16_avx512<const HD: usize>(q: &[f32; HD], keys: &[f32], kv_dim: usize, off: usize, scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(out.len() == LANES && keys.len() >= (LANES - 1) * kv_dim + off + HD);
    let mut acc = [_mm512_setzero_ps(); LANES];
    for c in 0..HD / LANES {
        // SAFETY: c · 16 + 16 ≤ HD values of `q`; key j's are inside `keys` (asserted).
        let a = unsafe { _mm512_loadu_ps(q.as_ptr().add(c * LANES)) };
        for (j, acc) in acc.iter_mut().enumerate() {
            let b = unsafe { _mm512_loadu_ps(keys.as_ptr().add(j * kv_dim + off + c * LANES)) };
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(a, b));
        }
    }
    // 8 apart: keys 2m and 2m + 1 share a register, lanes 0..8 each (128-bit quarters
    // [a0 + a2, a1 + a3, b0 + b2, b1 + b3]).
    let l1: [__m512; 8] = std::array::from_fn(|m| {
        let (a, b) = (acc[2 * m], acc[2 * m + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b))
    });
    // 4 apart: quarter c of register n holds key 4n + c, lanes 0..4.
    let l2: [__m512; 4] = std::array::from_fn(|n| {
        let (a, b) = (l1[2 * n], l1[2 * n + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
    });
    // 2 apart, within quarters: quarter c of register o holds keys 8o + c and 8o + 4 + c.
    let l3: [__m512; 2] = std::array::from_fn(|o| {
        let (a, b) = (l2[2 * o], l2[2 * o + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b))
    });
    // 1 apart: lane 4c + j holds key c + 4j; the permutation puts key i in lane i.
    let sums = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(l3[0], l3[1]), _mm512_shuffle_ps::<0xDD>(l3[0], l3[1]));
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let scores = _mm512_mul_ps(_mm512_permutexvar_ps(order, sums), _mm512_set1_ps(scale));
    // SAFETY: `out` holds 16 values (asserted).
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), scores) };
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

    /// A block of queries gives each query [`head`]'s bits, for the sized and general paths,
    /// short and long caches.
    #[test]
    fn a_block_of_queries_gives_each_its_own_heads_bits() {
        for (hd, kv_dim, off, len0) in [(64, 192, 64, 300), (64, 64, 0, 1), (64, 192, 128, 17), (128, 256, 128, 45), (40, 80, 40, 9)] {
            let n = len0 + BLOCK - 1;
            let (k, v) = (data(n * kv_dim, 7), data(n * kv_dim, 8));
            let qs: Vec<Vec<f32>> = (0..BLOCK).map(|i| data(hd, 9 + i as u32)).collect();
            let mut outs = vec![vec![0f32; hd]; BLOCK];
            let mut scores = Vec::new();
            let q: [&[f32]; BLOCK] = std::array::from_fn(|i| &qs[i][..]);
            let mut rows = outs.iter_mut();
            let o: [&mut [f32]; BLOCK] = std::array::from_fn(|_| &mut rows.next().expect("BLOCK outputs")[..]);
            head_block(hd, kv_dim, off, q, len0, &k, &v, &mut scores, o);
            for (i, got) in outs.iter().enumerate() {
                let (mut scores, mut want) = (vec![0f32; len0 + i], vec![0f32; hd]);
                head(hd, kv_dim, off, &qs[i], &k, &v, &mut scores, &mut want);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "hd {hd}, len0 {len0}, query {i}");
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
