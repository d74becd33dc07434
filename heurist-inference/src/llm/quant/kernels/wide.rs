//! Tiles on full 512-bit registers (AVX-512 F, BW, DQ, VL and VNNI), for prompts and for
//! decode. In prefill a register holds two tokens, one in each 256-bit half; in decode it holds
//! two weight rows against one token copied to both halves. Either way each half runs for its
//! (row, token) exactly the lanes, integer products, roundings and additions of the 256-bit
//! kernels, and gives the same bits with half the instructions (on CPUs whose vector units are
//! 512 bits wide, such as Zen 5 and Intel's server cores, that is up to twice the multiply
//! rate; Zen 4 runs them in two halves).
//!
//! Why tokens or rows, and not the next block, in the upper half: a half holding block `b + 1`
//! would add it beside block `b` instead of after it, changing the order of the f32 additions,
//! and a prompt's logits would no longer equal a decode step's bit for bit (see
//! [`super::Tiling`]).
//!
//! A prefill tile is `R` rows × [`TOKENS`] tokens: the weights of a block are unpacked once,
//! copied to both halves, and multiplied with four registers of token pairs. Four tokens left
//! over take a tile of two registers, and the last one to three the 256-bit tiles, which give
//! the same bits. A decode tile is [`DECODE_ROWS`] rows (four register pairs) × one token; an
//! odd last row takes the 256-bit tile.

use std::arch::x86_64::*;

use super::super::activation::Q8Activations;
use super::super::block::{QK, WeightFormat};
use super::avx512vnni::{hsum, tile as narrow_tile};
use super::{Operands, OutView};

/// Tokens per full prefill tile: four registers of two tokens each (a tile of two registers
/// takes four tokens left over).
const TOKENS: usize = 8;
/// Token pairs per full tile.
const PAIRS: usize = TOKENS / 2;
/// Rows per tile: 4 × 4 accumulators, 4 activation registers and the row's weights fit in the
/// 32 registers.
const ROWS: usize = 4;
/// Rows per decode tile: four registers of two rows each.
const DECODE_ROWS: usize = 8;

/// [`super::rows_dot_into`] for four tokens or more (prompts, scoring, batched decode: two
/// tokens per register) and for fewer (decode: two weight rows per register, against the
/// token's codes copied to both halves).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/DQ/VL/VNNI; `rows` holds whole rows
/// of `row_bytes`, `out` covers rows × `x.rows()`, and `x` is `row_bytes / block_bytes` blocks
/// wide.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub(super) unsafe fn rows_dot(format: WeightFormat, row_bytes: usize, rows: &[u8], x: &Q8Activations, out: OutView) {
    let ops = Operands::new(format, row_bytes, rows, x, out);
    let (n_rows, tokens) = (ops.rows, ops.tokens);
    // SAFETY (every use): the tile's rows and tokens exist, so it stays inside `rows`, `x` and
    // `out`; the CPU supports every feature the tiles enable.
    macro_rules! wide_at {
        ($r:expr, $t:expr, $R:literal, $P:tt) => {
            unsafe { tile::<$R, $P>(&ops, $r, $t) }
        };
    }
    macro_rules! narrow_at {
        ($r:expr, $t:expr, $R:literal, $N:literal) => {
            unsafe { narrow_tile::<$R, $N>(&ops, $r, $t) }
        };
    }
    macro_rules! pairs_at {
        ($r:expr, $t:expr, $P:literal) => {
            unsafe { row_pairs::<$P>(&ops, $r, $t) }
        };
    }
    if tokens < 4 {
        let mut r = 0;
        while r + DECODE_ROWS <= n_rows {
            for t in 0..tokens {
                pairs_at!(r, t, 4);
            }
            r += DECODE_ROWS;
        }
        while r + 2 <= n_rows {
            for t in 0..tokens {
                pairs_at!(r, t, 1);
            }
            r += 2;
        }
        if r < n_rows {
            for t in 0..tokens {
                narrow_at!(r, t, 1, 1);
            }
        }
        return;
    }
    macro_rules! row_block {
        ($r:expr, $R:literal) => {{
            let mut t = 0;
            while t + TOKENS <= tokens {
                wide_at!($r, t, $R, PAIRS);
                t += TOKENS;
            }
            if t + 4 <= tokens {
                wide_at!($r, t, $R, 2);
                t += 4;
            }
            while t < tokens {
                narrow_at!($r, t, $R, 1);
                t += 1;
            }
        }};
    }
    let mut r = 0;
    while r + ROWS <= n_rows {
        row_block!(r, 4);
        r += ROWS;
    }
    for r in r..n_rows {
        row_block!(r, 1);
    }
}

/// `2P` rows times one activation vector: `out(r0 + r, t0) = W[r0 + r] · x[t0]`, rows `2p`
/// and `2p + 1` in the halves of register `p`.
///
/// # Safety
/// Rows `r0..r0 + 2P` and token `t0` are inside the call's. The CPU supports the enabled
/// features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[inline]
unsafe fn row_pairs<const P: usize>(ops: &Operands, r0: usize, t0: usize) {
    // SAFETY: this function's contract.
    let (w, qs, d, s) = unsafe { ops.at(r0, t0) };
    let Operands { format, nb, row_bytes, out, .. } = *ops;
    let mut acc = [_mm512_setzero_ps(); P];
    let mut mins = [[0f32; 2]; P];
    // The scales of a row pair, each row's `dw · d_x` in its half (the 256-bit tile's
    // `set1(dw · d_x)`, the product rounded once in f32).
    let pair_scale = |a: f32, b: f32| _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b));
    let halves = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    for b in 0..nb {
        // SAFETY: the token's block b is inside `x` (this function's contract).
        let (xq, xd) = unsafe { (_mm512_broadcast_i64x4(_mm256_loadu_si256(qs.add(b * QK) as *const __m256i)), *d.add(b)) };
        match format {
            WeightFormat::Q4_1 => {
                let low = _mm256_set1_epi8(0x0f);
                // SAFETY: as above.
                let xs = unsafe { *s.add(b) };
                for p in 0..P {
                    let mut scale = [0f32; 2];
                    let mut codes = [_mm256_setzero_si256(); 2];
                    for h in 0..2 {
                        // SAFETY: block b of row 2p + h is inside `w`; the loads are unaligned.
                        let (dm, q) = unsafe {
                            let ptr = w.add((2 * p + h) * row_bytes + b * 20);
                            let dm = (ptr as *const i32).read_unaligned();
                            (_mm_cvtph_ps(_mm_cvtsi32_si128(dm)), _mm_loadu_si128(ptr.add(4) as *const __m128i))
                        };
                        scale[h] = _mm_cvtss_f32(dm) * xd;
                        mins[p][h] += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * xs;
                        // Low nibbles are values 0..16, high nibbles 16..32.
                        codes[h] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
                    }
                    let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), halves(codes[0], codes[1]), xq));
                    acc[p] = _mm512_fmadd_ps(pair_scale(scale[0], scale[1]), dot, acc[p]);
                }
            }
            WeightFormat::Q8_0 => {
                // With x + 128 as the unsigned operand, Σ (x + 128) · w − Σ 128 · w = Σ x · w
                // per lane: the 256-bit tile's integers (see the prefill tile).
                let flip = _mm512_set1_epi8(i8::MIN);
                let xu = _mm512_xor_si512(xq, flip);
                for p in 0..P {
                    let mut scale = [0f32; 2];
                    let mut codes = [_mm256_setzero_si256(); 2];
                    for h in 0..2 {
                        // SAFETY: block b of row 2p + h is inside `w` (34-byte blocks).
                        let (dw, wq) = unsafe {
                            let ptr = w.add((2 * p + h) * row_bytes + b * 34);
                            let dw = i32::from((ptr as *const u16).read_unaligned());
                            (_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dw))), _mm256_loadu_si256(ptr.add(2) as *const __m256i))
                        };
                        scale[h] = dw * xd;
                        codes[h] = wq;
                    }
                    let wq = halves(codes[0], codes[1]);
                    let offset = _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, wq);
                    let dot = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xu, wq), offset);
                    acc[p] = _mm512_fmadd_ps(pair_scale(scale[0], scale[1]), _mm512_cvtepi32_ps(dot), acc[p]);
                }
            }
        }
    }
    for p in 0..P {
        let lo = _mm512_castps512_ps256(acc[p]);
        let hi = _mm512_extractf32x8_ps::<1>(acc[p]);
        // SAFETY: inside `out` (this function's contract).
        unsafe {
            out.write(r0 + 2 * p, t0, hsum(lo) + mins[p][0]);
            out.write(r0 + 2 * p + 1, t0, hsum(hi) + mins[p][1]);
        }
    }
}

/// `R` rows times `2P` activation vectors (`P` ≤ 4 registers of token pairs):
/// `out(r0 + r, t0 + t) = W[r0 + r] · x[t0 + t]`.
///
/// # Safety
/// Rows `r0..r0 + R` and tokens `t0..t0 + 2P` are inside the call's. The CPU supports the
/// enabled features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile<const R: usize, const P: usize>(ops: &Operands, r0: usize, t0: usize) {
    // SAFETY: this function's contract.
    let (w, qs, d, s) = unsafe { ops.at(r0, t0) };
    let Operands { format, nb, row_bytes, cols, out, .. } = *ops;
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // Q4_1's minimum terms, the tile's tokens in one register per row (lanes past 2P repeat
    // the last token and are not stored).
    let mut mins = [_mm256_setzero_ps(); R];
    // Token t's block sums are nb apart.
    let sum_at: [i32; TOKENS] = std::array::from_fn(|t| (t.min(2 * P - 1) * nb) as i32);
    // SAFETY: `sum_at` holds eight i32.
    let sum_index = unsafe { _mm256_loadu_si256(sum_at.as_ptr() as *const __m256i) };
    for b in 0..nb {
        let mut xq = [_mm512_setzero_si512(); P];
        let mut xd = [_mm512_setzero_ps(); P];
        for p in 0..P {
            let (t0, t1) = (2 * p, 2 * p + 1);
            // SAFETY: tokens t0 and t1's block b are inside `x` (this function's contract).
            unsafe {
                let lo = _mm256_loadu_si256(qs.add(t0 * cols + b * QK) as *const __m256i);
                let hi = _mm256_loadu_si256(qs.add(t1 * cols + b * QK) as *const __m256i);
                xq[p] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                let (d0, d1) = (*d.add(t0 * nb + b), *d.add(t1 * nb + b));
                xd[p] = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(d0)), _mm256_set1_ps(d1));
            }
        }
        match format {
            WeightFormat::Q4_1 => {
                let low = _mm256_set1_epi8(0x0f);
                // SAFETY: the eight tokens' sums of block b are inside `x`.
                let xs = unsafe { _mm256_i32gather_ps::<4>(s.add(b), sum_index) };
                for r in 0..R {
                    // SAFETY: block b of row r is inside `w`; the loads are unaligned.
                    let (dm, q) = unsafe {
                        let p = w.add(r * row_bytes + b * 20);
                        let dm = (p as *const i32).read_unaligned();
                        (_mm_cvtph_ps(_mm_cvtsi32_si128(dm)), _mm_loadu_si128(p.add(4) as *const __m128i))
                    };
                    let dw = _mm512_set1_ps(_mm_cvtss_f32(dm));
                    let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                    // Low nibbles are values 0..16, high nibbles 16..32; the same codes in
                    // both halves.
                    let wq = _mm512_broadcast_i64x4(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low));
                    for p in 0..P {
                        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xq[p]));
                        // dw · d_x per lane is the 256-bit kernels' `set1(dw · d_x)`.
                        acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd[p]), dot, acc[r][p]);
                    }
                    mins[r] = _mm256_add_ps(mins[r], _mm256_mul_ps(_mm256_set1_ps(m), xs));
                }
            }
            WeightFormat::Q8_0 => {
                // AVX-512 has no byte `sign`: with x + 128 as the unsigned operand,
                // Σ (x + 128) · w − Σ 128 · w = Σ x · w, exactly the 256-bit kernels' integers.
                let flip = _mm512_set1_epi8(i8::MIN);
                let xu: [__m512i; P] = std::array::from_fn(|p| _mm512_xor_si512(xq[p], flip));
                for r in 0..R {
                    // SAFETY: block b of row r is inside `w` (34-byte blocks).
                    let (dw, wq) = unsafe {
                        let p = w.add(r * row_bytes + b * 34);
                        let dw = i32::from((p as *const u16).read_unaligned());
                        (_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dw))), _mm256_loadu_si256(p.add(2) as *const __m256i))
                    };
                    let dw = _mm512_set1_ps(dw);
                    let wq = _mm512_broadcast_i64x4(wq);
                    let offset = _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, wq);
                    for p in 0..P {
                        let dot = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xu[p], wq), offset);
                        acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd[p]), _mm512_cvtepi32_ps(dot), acc[r][p]);
                    }
                }
            }
        }
    }
    for r in 0..R {
        let mut m = [0f32; TOKENS];
        // SAFETY: `m` holds eight floats.
        unsafe { _mm256_storeu_ps(m.as_mut_ptr(), mins[r]) };
        for p in 0..P {
            let lo = _mm512_castps512_ps256(acc[r][p]);
            let hi = _mm512_extractf32x8_ps::<1>(acc[r][p]);
            // SAFETY: inside `out` (this function's contract).
            unsafe {
                out.write(r0 + r, t0 + 2 * p, hsum(lo) + m[2 * p]);
                out.write(r0 + r, t0 + 2 * p + 1, hsum(hi) + m[2 * p + 1]);
            }
        }
    }
}
