//! The panel kernels on 512-bit registers (AVX-512 F, BW and VNNI): a panel's 16 rows are
//! the 16 i32 lanes of one register, and `vpdpbusd` with a token's four codes broadcast adds
//! four products to each. On CPUs whose vector units are 512 bits wide (Zen 5, Intel's server
//! cores) that is 64 multiply-adds an instruction; Zen 4 runs them in two halves.

use std::arch::x86_64::*;

use super::super::block::WeightFormat;
use super::super::panel::{MINS_AT, PANEL, codes_at};
use super::Operands;

/// Tokens per prefill tile: eight accumulators and eight block sums, with the unpacked
/// weights, fit in the 32 registers.
const TOKENS: usize = 8;
/// Panels per decode tile: four independent chains of additions in flight.
const DECODE_PANELS: usize = 4;

/// [`super::panels_dot_into`] on 512-bit registers.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VNNI; `ops` holds whole panels of
/// `format` with `ops.rows` real rows, `tokens` activation vectors, and an `out` covering
/// them.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panels_dot(ops: Operands, format: WeightFormat, tokens: usize) {
    let panels = ops.rows.div_ceil(PANEL);
    // SAFETY (every use): the tile's panels and tokens exist, so it stays inside the weights,
    // the activations and `out`; the CPU supports every feature the tiles enable.
    macro_rules! at {
        ($p:expr, $t:expr, $P:literal, $T:literal) => {
            unsafe {
                match format {
                    WeightFormat::Q4_1 => tile::<$P, $T, true>(&ops, $p, $t),
                    WeightFormat::Q8_0 => tile::<$P, $T, false>(&ops, $p, $t),
                }
            }
        };
    }
    if tokens < 4 {
        // Decode (and batches of two or three): four panels per token, re-read from cache for
        // the next token.
        let mut p = 0;
        while p + DECODE_PANELS <= panels {
            for t in 0..tokens {
                at!(p, t, 4, 1);
            }
            p += DECODE_PANELS;
        }
        for p in p..panels {
            for t in 0..tokens {
                at!(p, t, 1, 1);
            }
        }
        return;
    }
    for p in 0..panels {
        let mut t = 0;
        while t + TOKENS <= tokens {
            at!(p, t, 1, 8);
            t += TOKENS;
        }
        match tokens - t {
            0 => {}
            1 => at!(p, t, 1, 1),
            2 => at!(p, t, 1, 2),
            3 => at!(p, t, 1, 3),
            4 => at!(p, t, 1, 4),
            5 => at!(p, t, 1, 5),
            6 => at!(p, t, 1, 6),
            _ => at!(p, t, 1, 7),
        }
    }
}

/// Panels `p0..p0 + P` times tokens `t0..t0 + T`, Q4_1 weights when `Q41`, else Q8_0.
///
/// # Safety
/// The panels and tokens are inside the call's. The CPU supports the enabled features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const P: usize, const T: usize, const Q41: bool>(ops: &Operands, p0: usize, t0: usize) {
    let format = if Q41 { WeightFormat::Q4_1 } else { WeightFormat::Q8_0 };
    let codes = codes_at(format);
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); T]; P];
    for b in 0..ops.nb {
        for (p, acc) in acc.iter_mut().enumerate() {
            // SAFETY (this loop): panel p0 + p's block b and the tokens' block b are inside
            // the call (this function's contract); the loads are unaligned.
            let blk = unsafe { ops.block(p0 + p, b) };
            let dw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i)) };
            let mut sum = [_mm512_setzero_si512(); T];
            if Q41 {
                for g in 0..4 {
                    let q = unsafe { _mm512_loadu_si512(blk.add(codes + 64 * g) as *const __m512i) };
                    // Low nibbles are values 4g.., high nibbles 16 + 4g..
                    let (lo, hi) = (_mm512_and_si512(q, low), _mm512_and_si512(_mm512_srli_epi16::<4>(q), low));
                    for (t, sum) in sum.iter_mut().enumerate() {
                        let (xl, xh) = unsafe { (ops.codes4(t0 + t, b, 4 * g), ops.codes4(t0 + t, b, 16 + 4 * g)) };
                        *sum = _mm512_dpbusd_epi32(*sum, lo, _mm512_set1_epi32(xl));
                        *sum = _mm512_dpbusd_epi32(*sum, hi, _mm512_set1_epi32(xh));
                    }
                }
                let mw = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(MINS_AT) as *const __m256i)) };
                for (t, (acc, &sum)) in acc.iter_mut().zip(&sum).enumerate() {
                    let (xd, xs, _) = unsafe { ops.scales(t0 + t, b) };
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd));
                    *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), *acc);
                    *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs), *acc);
                }
            } else {
                for g in 0..8 {
                    // The codes are stored as q + 128 (the unsigned operand).
                    let q = unsafe { _mm512_loadu_si512(blk.add(codes + 64 * g) as *const __m512i) };
                    for (t, sum) in sum.iter_mut().enumerate() {
                        let x = unsafe { ops.codes4(t0 + t, b, 4 * g) };
                        *sum = _mm512_dpbusd_epi32(*sum, q, _mm512_set1_epi32(x));
                    }
                }
                for (t, (acc, &sum)) in acc.iter_mut().zip(&sum).enumerate() {
                    let (xd, _, c) = unsafe { ops.scales(t0 + t, b) };
                    // Σ (q + 128) · x − 128 · Σ x = Σ q · x, exactly.
                    let sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(c));
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd));
                    *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), *acc);
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        for (t, &acc) in acc.iter().enumerate() {
            let mut v = [0f32; PANEL];
            // SAFETY: `v` holds 16 floats; the panel and token are inside the call.
            unsafe {
                _mm512_storeu_ps(v.as_mut_ptr(), acc);
                ops.store((p0 + p) * PANEL, t0 + t, &v);
            }
        }
    }
}
