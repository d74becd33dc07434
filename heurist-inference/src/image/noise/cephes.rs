//! Single-precision `log` and `sincos` in the exact arithmetic of PyTorch's AVX2 normal fill.
//!
//! On an x86-64 CPU with AVX2 (and on AVX-512 CPUs, which run the same kernel), torch fills f32
//! tensors of 16 or more elements with a vectorised Box-Muller whose `log` and `sincos` are the
//! Cephes polynomials of Julien Pommier's `avx_mathfun` (aten/src/ATen/native/cpu/avx_mathfun.h),
//! not the C library's. This is a lane-by-lane re-derivation of that arithmetic from its
//! published description: same constants, same order of operations, same rounding.
//!
//! Invariant: each function rounds exactly where torch's compiled kernel rounds. torch's build
//! (GCC, `-mavx2 -mfma`, default `-ffp-contract=fast`) fuses a multiply into the add or
//! subtract that consumes it where that multiply has no other use; the places where the fusion
//! changes a result are marked `fused` below and written with `mul_add`. Products that are
//! exact (by 0.5, or by a constant with few mantissa bits times a small integer) are left
//! unfused because both forms round the same. The integration tests compare the whole
//! generator to torch's bits, so a wrong guess here fails them.

// The constants are written as the kernel publishes them (in decimal, wider than f32); the
// compiler rounds them to the same f32 values the C compiler did.
#![allow(clippy::excessive_precision)]

const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2;
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2,
    -1.151_461_031_0E-1,
    1.167_699_874_0E-1,
    -1.242_014_084_6E-1,
    1.424_932_278_7E-1,
    -1.666_805_766_5E-1,
    2.000_071_476_5E-1,
    -2.499_999_399_3E-1,
    3.333_333_117_4E-1,
];
const LOG_Q1: f32 = -2.121_944_40e-4;
const LOG_Q2: f32 = 0.693_359_375;

const MINUS_DP1: f32 = -0.785_156_25;
const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4;
const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8;
const SINCOF: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
const COSCOF: [f32; 3] = [
    2.443_315_711_809_948E-5,
    -1.388_731_625_493_765E-3,
    4.166_664_568_298_827E-2,
];
/// 4 / pi.
const FOPI: f32 = 1.273_239_544_735_16;

/// Natural logarithm; NaN for `x <= 0`, as the vector kernel gives.
pub(crate) fn log(x: f32) -> f32 {
    let invalid = x <= 0.0;
    // Denormals are cut off to the smallest normal, as the kernel does.
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = ((bits >> 23) as i32) - 0x7f;
    // Keep the mantissa, force the exponent of 0.5: m in [0.5, 1).
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = m < SQRTHF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;

    let z = m * m;
    let mut y = LOG_P[0];
    for p in &LOG_P[1..] {
        y = y.mul_add(m, *p); // fused
    }
    y *= m;
    y = y.mul_add(z, e * LOG_Q1); // fused: the earlier of the two products is folded in
    y -= z * 0.5;
    let r = (m + y) + e * LOG_Q2;
    if invalid { f32::NAN } else { r }
}

/// Sine and cosine of `x`, as the kernel's `sincos256_ps` computes them.
pub(crate) fn sincos(x: f32) -> (f32, f32) {
    let mut sign_sin = x.to_bits() & 0x8000_0000;
    let mut x = x.abs();
    // Octant index, rounded up to even (Cephes' `j = (j + 1) & ~1`).
    let mut j = (x * FOPI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let use_sin_poly = (j & 2) == 0;
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    sign_sin ^= swap_sin;

    // Extended-precision reduction x - y * pi/4 in three parts.
    x += y * MINUS_DP1;
    x += y * MINUS_DP2;
    x = y.mul_add(MINUS_DP3, x); // fused

    let z = x * x;
    let mut c = COSCOF[0];
    c = c.mul_add(z, COSCOF[1]); // fused
    c = c.mul_add(z, COSCOF[2]); // fused
    c *= z;
    c = c.mul_add(z, -(z * 0.5)); // fused
    c += 1.0;

    let mut s = SINCOF[0];
    s = s.mul_add(z, SINCOF[1]); // fused
    s = s.mul_add(z, SINCOF[2]); // fused
    s *= z;
    s = s.mul_add(x, x); // fused

    let (sin, cos) = if use_sin_poly { (s, c) } else { (c, s) };
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomials are accurate to a few ulp; a sign, octant or constant slip is not.
    #[test]
    fn close_to_the_c_library() {
        for i in 1..=4096 {
            let u = i as f32 / 4096.0;
            assert!(
                (log(u) - u.ln()).abs() <= 4.0 * f32::EPSILON * u.ln().abs().max(1.0),
                "log {u}"
            );
            let theta = 6.283_185_5 * u;
            let (s, c) = sincos(theta);
            assert!((s - theta.sin()).abs() < 1e-6, "sin {theta}");
            assert!((c - theta.cos()).abs() < 1e-6, "cos {theta}");
        }
        assert!(log(0.0).is_nan());
        assert!(log(-1.0).is_nan());
    }
}
