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
    let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let inv = 1.0 / temperature;
    f64::from(max * inv) + sum_exp(logits, max, inv).ln()
}

/// `Σ_i exp((logits[i] − max) · inv)` over the non-NaN logits, in lanes of 16.
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
}
