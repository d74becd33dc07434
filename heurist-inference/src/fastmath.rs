//! Exponentials over whole score rows and vocabularies, in plain `f32` operations that the
//! compiler vectorizes (libm's `exp` is a call per value: over a 49,152-token vocabulary at
//! every scored position it was a tenth of a verification).
//!
//! Rust never fuses a multiply and an add, so these functions give the same bits however they
//! are compiled and on every CPU: the attention kernels rely on it.
//!
//! ```
//! use heurist_inference::fastmath::{exp_nonpositive, log_sum_exp};
//!
//! assert!((exp_nonpositive(-1.0) - (-1f32).exp()).abs() < 1e-7);
//! let logits = [1.0f32, 2.0, 3.0];
//! let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
//! assert!((log_sum_exp(&logits, 1.0) - want).abs() < 1e-6);
//! ```

/// `e^x` for `x ≤ 0` (larger `x` are not asked for), within 2 ulp, in plain operations the
/// compiler vectorizes: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, Cephes' degree-7 polynomial for
/// `e^r`, and `2^n` built from its bits. Below −87.3 (where `e^x` leaves the normal range) it
/// gives `e^−87.3`, about 1e−38, which no softmax sum can tell from 0. NaN stays NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    // 1.5 · 2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.3 { -87.3 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * (r * r) + r + 1.0;
    // n = t's bits minus ROUND's; n ≥ −126 here, so 2^n is a normal float.
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    e * f32::from_bits(((n + 127) as u32) << 23)
}

/// `ln Σ_i exp(logits[i] / temperature)`, skipping NaN logits (`−∞` when every logit is NaN
/// or `−∞`): a log-softmax's normaliser, with the exponentials in `f32` (within 2 ulp) and
/// their sum in `f64`.
pub fn log_sum_exp(logits: &[f32], temperature: f32) -> f64 {
    let max = max_finite(logits);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let inv = 1.0 / temperature;
    f64::from(max * inv) + sum_exp(logits, max, inv).ln()
}

/// The largest non-NaN logit (`−∞` when there is none), as a fold with `f32::max` gives it.
///
/// ```
/// use heurist_inference::fastmath::max_finite;
///
/// assert_eq!(max_finite(&[1.0, f32::NAN, 3.0]), 3.0);
/// assert_eq!(max_finite(&[f32::NAN]), f32::NEG_INFINITY);
/// ```
// Each row loop below is compiled for AVX-512, for AVX2 and for the baseline, and the CPU's
// best is picked at run time: the workspace builds for baseline x86-64, where these loops ran
// 2 lanes wide, and over a 49,152-token vocabulary at every scored position they were a
// sixth of a verification. The same operations run in the same order in every copy (Rust
// never fuses a multiply and an add), so every copy gives the same bits.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn max_finite(logits: &[f32]) -> f32 {
    const LANES: usize = 16;
    // max is exact and order-free, so lanes give the same answer as a fold.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            // A NaN compares false and is skipped.
            lanes[i] = if chunk[i] > lanes[i] { chunk[i] } else { lanes[i] };
        }
    }
    let tail = chunks.remainder().iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    lanes.iter().copied().fold(tail, f32::max)
}

/// `Σ_i exp((logits[i] − max) · inv)` over the non-NaN logits, in lanes of 16.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
fn sum_exp(logits: &[f32], max: f32, inv: f32) -> f64 {
    const LANES: usize = 16;
    let term = |l: f32| if l.is_nan() { 0.0 } else { exp_nonpositive((l - max) * inv) };
    let mut lanes = [0f64; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            lanes[i] += f64::from(term(chunk[i]));
        }
    }
    lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&l| f64::from(term(l))).sum::<f64>()
}

/// The figures of a tempered softmax `p = softmax(logits / temperature)` that a likelihood
/// test needs, from one exponential per logit (see [`tempered_moments`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TemperedMoments {
    /// The largest non-NaN logit (`−∞` when there is none).
    pub max: f32,
    /// `Σe` with `u = (l − max) / T` and `e = exp(u)`, over the non-NaN, finite-`u` logits.
    pub sum: f64,
    /// `Σe·u`.
    pub sum_u: f64,
    /// `Σe·u²`.
    pub sum_u2: f64,
}

impl TemperedMoments {
    /// `ln Σ exp(logit / T)` relative to the maximum: `ln p(x) = (l_x − max) / T − log_norm`.
    pub fn log_norm(&self) -> f64 {
        self.sum.ln()
    }

    /// `E_p[ln p] = −H(p)`.
    pub fn mean_log_prob(&self) -> f64 {
        self.sum_u / self.sum - self.log_norm()
    }

    /// `Var_p[ln p]`, clamped at 0 (rounding can take it a hair below).
    pub fn var_log_prob(&self) -> f64 {
        let (m1, m2) = (self.sum_u / self.sum, self.sum_u2 / self.sum);
        (m2 - m1 * m1).max(0.0)
    }
}

/// The moments of `softmax(logits / temperature)` in one pass:
///
/// with `u = (l − max) / T`, `e = exp(u)`, `Z = Σe` and `ln p = u − ln Z`,
/// `E[ln p] = Σe·u / Z − ln Z` and `Var[ln p] = Σe·u² / Z − (Σe·u / Z)²`. `u ≤ 0` and
/// `e ≤ 1`, so the sums stay in range, and the variance (order 1) is far from cancelling
/// against `Σe·u²/Z` (a few tens) in `f64`. `u` and `e` are `f32` ([`exp_nonpositive`]),
/// the products and sums `f64`, sixteen lanes side by side; NaN and `−∞` logits carry no
/// probability.
///
/// ```
/// use heurist_inference::fastmath::tempered_moments;
///
/// let m = tempered_moments(&[0.0, 0.0], 1.0);
/// assert!((m.mean_log_prob() + 2f64.ln()).abs() < 1e-12 && m.var_log_prob() < 1e-12);
/// ```
pub fn tempered_moments(logits: &[f32], temperature: f64) -> TemperedMoments {
    let max = max_finite(logits);
    let (sum, sum_u, sum_u2) = moments(logits, max, (1.0 / temperature) as f32);
    TemperedMoments { max, sum, sum_u, sum_u2 }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
fn moments(logits: &[f32], max: f32, inv: f32) -> (f64, f64, f64) {
    const LANES: usize = 16;
    let term = |l: f32| {
        let u = (l - max) * inv;
        if u > f32::NEG_INFINITY { (f64::from(exp_nonpositive(u)), f64::from(u)) } else { (0.0, 0.0) }
    };
    let (mut z, mut s1, mut s2) = ([0f64; LANES], [0f64; LANES], [0f64; LANES]);
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            let (e, u) = term(chunk[i]);
            z[i] += e;
            s1[i] += e * u;
            s2[i] += e * u * u;
        }
    }
    let (mut z, mut s1, mut s2) = (z.iter().sum::<f64>(), s1.iter().sum::<f64>(), s2.iter().sum::<f64>());
    for &l in chunks.remainder() {
        let (e, u) = term(l);
        z += e;
        s1 += e * u;
        s2 += e * u * u;
    }
    (z, s1, s2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = 0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulp = f32::from_bits(want.to_bits() + 1) - want;
            assert!((got - want).abs() <= 2.0 * ulp, "exp({x}) = {got}, libm {want}");
            x -= 0.013_7;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1.3e-38 && exp_nonpositive(f32::NEG_INFINITY) >= 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn log_sum_exp_matches_f64_and_skips_nan() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.3 - 12.0).collect();
        for t in [0.3f32, 0.8, 1.0, 1.7] {
            let want = logits.iter().map(|&l| (f64::from(l) / f64::from(t)).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&logits, t);
            assert!((got - want).abs() < 1e-6, "T={t}: {got} vs {want}");
        }
        assert!((log_sum_exp(&[0.0, f32::NAN, 0.0], 1.0) - 2f64.ln()).abs() < 1e-7);
        assert_eq!(log_sum_exp(&[f32::NAN, f32::NEG_INFINITY], 1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn tempered_moments_match_a_direct_f64_softmax() {
        // 1,003 logits: whole lanes and a tail; a NaN and a −∞ in each.
        let mut logits: Vec<f32> = (0..1003).map(|i| ((i * 53) % 97) as f32 * 0.21 - 9.0).collect();
        logits[17] = f32::NAN;
        logits[1001] = f32::NAN;
        logits[40] = f32::NEG_INFINITY;
        for t in [0.5f64, 0.8, 1.0, 1.4] {
            let finite: Vec<f64> = logits.iter().filter(|l| l.is_finite()).map(|&l| f64::from(l) / t).collect();
            let log_z = finite.iter().map(|u| u.exp()).sum::<f64>().ln();
            let log_p: Vec<f64> = finite.iter().map(|u| u - log_z).collect();
            let mean: f64 = log_p.iter().map(|lp| lp.exp() * lp).sum();
            let var: f64 = log_p.iter().map(|lp| lp.exp() * (lp - mean).powi(2)).sum();
            let m = tempered_moments(&logits, t);
            assert_eq!(m.max, 0.21 * 96.0 - 9.0);
            assert!((m.mean_log_prob() - mean).abs() < 1e-5, "T={t}: {} vs {mean}", m.mean_log_prob());
            assert!((m.var_log_prob() - var).abs() < 1e-5 * var.max(1.0), "T={t}: {} vs {var}", m.var_log_prob());
            // ln p of one logit through the moments' normaliser.
            let want = f64::from(logits[5]) / t - log_z;
            let got = f64::from((logits[5] - m.max) / t as f32) - m.log_norm();
            assert!((got - want).abs() < 1e-5);
        }
        let empty = tempered_moments(&[f32::NAN, f32::NEG_INFINITY], 1.0);
        assert_eq!((empty.max, empty.sum), (f32::NEG_INFINITY, 0.0));
    }
}
