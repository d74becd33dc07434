//! Activations re-quantized to 8 bits per block of 32 before each matmul, as llama.cpp does
//! (Q8_1 for Q4_1 weights, Q8_0 for Q8_0 weights; the codes and scales are the same, Q8_1 also
//! carries the block sum).
//!
//! Per block: `d = max|x| / 127` rounded to f16, codes `round_half_even(x · 127 / max|x|)`, and
//! `s = d · Σ codes` rounded to f16 (Q4_1's minimum multiplies it). The f16 roundings and the
//! rounding mode are llama.cpp's (its AVX2 quantizer), so both engines feed their integer dot
//! products the same codes for the same activations.

use half::f16;
use rayon::prelude::*;

use super::block::QK;

/// `rows` activation vectors of `cols` values each, quantized.
#[derive(Debug, Default, Clone)]
pub(crate) struct Q8Activations {
    cols: usize,
    rows: usize,
    /// `rows × cols` codes.
    qs: Vec<i8>,
    /// `rows × cols / 32` block scales.
    d: Vec<f32>,
    /// `rows × cols / 32` scaled block sums (`d · Σ q`).
    s: Vec<f32>,
    /// `rows × cols / 32` integer block sums times 128 (`128 · Σ q`): what the kernels take
    /// off a product with Q8_0 weights stored as `q + 128`.
    c: Vec<i32>,
}

/// One quantized activation vector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    /// `blocks × 32` codes.
    pub(crate) qs: &'a [i8],
    /// One scale per block.
    pub(crate) d: &'a [f32],
    /// One scaled code sum per block.
    pub(crate) s: &'a [f32],
}

impl Q8Activations {
    /// Quantizes `x`, `rows` vectors of `cols` values (`cols` a multiple of 32, checked by the
    /// caller), reusing the buffers.
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols));
        let rows = x.len() / cols;
        let blocks = x.len() / QK;
        self.cols = cols;
        self.rows = rows;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.c.resize(blocks, 0);
        let nb = cols / QK;
        type Row<'a> = ((&'a [f32], &'a mut [i8]), ((&'a mut [f32], &'a mut [f32]), &'a mut [i32]));
        let quantize_row = |((x, qs), ((d, s), c)): Row<'_>| quantize_row(x, qs, d, s, c);
        if rows == 1 {
            quantize_row(((x, &mut self.qs[..]), ((&mut self.d[..], &mut self.s[..]), &mut self.c[..])));
        } else {
            // A prompt's rows in parallel (inside the kernels' pool when the model runs).
            x.par_chunks(cols)
                .zip(self.qs.par_chunks_mut(cols))
                .zip(self.d.par_chunks_mut(nb).zip(self.s.par_chunks_mut(nb)).zip(self.c.par_chunks_mut(nb)))
                .for_each(quantize_row);
        }
    }

    /// Values per vector.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Vectors held.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// All codes, scales, scaled sums and `128 · Σ q`, vector after vector (for the SIMD
    /// kernels).
    pub(crate) fn raw(&self) -> (&[i8], &[f32], &[f32], &[i32]) {
        (&self.qs, &self.d, &self.s, &self.c)
    }

    /// Vector `t`.
    pub(crate) fn row(&self, t: usize) -> Q8Row<'_> {
        let nb = self.cols / QK;
        Q8Row {
            qs: &self.qs[t * self.cols..(t + 1) * self.cols],
            d: &self.d[t * nb..(t + 1) * nb],
            s: &self.s[t * nb..(t + 1) * nb],
        }
    }
}

/// One vector's blocks: codes `qs`, scales `d`, scaled sums `s` and `128 ×` code sums `c`.
///
/// The compiler does not vectorize [`quantize_block`] (the `max` reduction and the saturating
/// cast keep it scalar: 6% of a scoring pass), so x86 gets explicit AVX-512 and AVX2 copies
/// doing the same arithmetic lane-wise; the test below holds them to the portable codes.
fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], c: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") {
            // SAFETY: the features were detected; the slices are whole blocks (`x`, `qs`:
            // 32 per entry of `d`, `s`, `c`), which the function checks.
            return unsafe { simd::avx512(x, qs, d, s, c) };
        }
        if has!("avx2") {
            // SAFETY: as above.
            return unsafe { simd::avx2(x, qs, d, s, c) };
        }
    }
    portable(x, qs, d, s, c)
}

fn portable(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], c: &mut [i32]) {
    let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d.iter_mut().zip(s.iter_mut()).zip(c));
    for ((x, qs), ((d, s), c)) in blocks {
        let sum;
        (*d, *s, sum) = quantize_block(x, qs);
        *c = 128 * sum;
    }
}

/// Quantizes one block of 32; returns `(d, s, Σ q)`.
fn quantize_block(x: &[f32], qs: &mut [i8]) -> (f32, f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = scales(amax);
    // Adding and removing 1.5 · 2^23 rounds half to even in the default rounding mode for
    // |v| ≤ 2^22 (here |v| ≤ 127).
    const MAGIC: f32 = 12_582_912.0;
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = ((v * id + MAGIC) - MAGIC) as i8;
        *q = r;
        sum += i32::from(r);
    }
    finish(d, sum)
}

/// The block scale and its inverse from the largest magnitude.
#[inline(always)]
fn scales(amax: f32) -> (f32, f32) {
    (amax / 127.0, if amax != 0.0 { 127.0 / amax } else { 0.0 })
}

/// `(d, s, Σ q)` with llama.cpp's f16 roundings.
#[inline(always)]
fn finish(d: f32, sum: i32) -> (f32, f32, i32) {
    (f16::from_f32(d).to_f32(), f16::from_f32(d * sum as f32).to_f32(), sum)
}

/// [`portable`] lane-wise. Codes: `v · id` rounded half to even by the rounding instruction
/// (the default mode, as the portable trick), converted exactly (|v · id| ≤ 127) and narrowed.
/// A NaN activation converts to `i32::MIN`, whose low byte is 0: the portable cast's 0.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{QK, finish, scales};

    fn check(x: &[f32], qs: &[i8], d: &[f32], s: &[f32], c: &[i32]) -> usize {
        let nb = d.len();
        assert!(x.len() == nb * QK && qs.len() == nb * QK && s.len() == nb && c.len() == nb);
        nb
    }

    /// # Safety
    /// The CPU supports AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn avx512(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], c: &mut [i32]) {
        let nb = check(x, qs, d, s, c);
        for b in 0..nb {
            // SAFETY: block b's 32 values and codes are inside `x` and `qs` (checked).
            let (v0, v1) = unsafe {
                let p = x.as_ptr().add(b * QK);
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            };
            // NaNs count as 0 in the maximum, as `f32::max` skips them in the portable fold.
            let abs = |v| _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), _mm512_abs_ps(v));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(v0), abs(v1)));
            let (db, id) = scales(amax);
            let id = _mm512_set1_ps(id);
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(v0, id)));
            let q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(v1, id)));
            // SAFETY: as above; the stores are unaligned.
            unsafe {
                let p = qs.as_mut_ptr().add(b * QK);
                _mm_storeu_si128(p as *mut __m128i, _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128(p.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
            }
            // The narrowed codes' sum (a NaN's i32::MIN counts as its byte, 0).
            let narrow = |q| _mm512_cvtepi8_epi32(_mm512_cvtepi32_epi8(q));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(narrow(q0), narrow(q1)));
            let (dd, ss, sum) = finish(db, sum);
            (d[b], s[b], c[b]) = (dd, ss, 128 * sum);
        }
    }

    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], c: &mut [i32]) {
        let nb = check(x, qs, d, s, c);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        for b in 0..nb {
            // SAFETY: block b's 32 values are inside `x` (checked).
            let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(b * QK + 8 * i)) });
            // NaNs count as 0 (the ordered mask clears them), as in the portable fold.
            let abs = |v| _mm256_and_ps(_mm256_and_ps(v, abs_mask), _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
            let amax = lanes.iter().fold(0f32, |a, &v| a.max(v));
            let (db, id) = scales(amax);
            let id = _mm256_set1_ps(id);
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            let q = v.map(|v| _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v, id))));
            let mut wide = [0i32; QK];
            // SAFETY: `wide` holds 32 i32.
            for (i, q) in q.iter().enumerate() {
                unsafe { _mm256_storeu_si256(wide.as_mut_ptr().add(8 * i) as *mut __m256i, *q) };
            }
            let mut sum = 0i32;
            for (code, &w) in qs[b * QK..(b + 1) * QK].iter_mut().zip(&wide) {
                *code = w as i8;
                sum += i32::from(*code);
            }
            let (dd, ss, sum) = finish(db, sum);
            (d[b], s[b], c[b]) = (dd, ss, 128 * sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_scales_and_sums_follow_llama_cpp() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.5) * 0.37).collect();
        let mut q = Q8Activations::default();
        q.quantize(&x, 64);
        let row = q.row(0);
        let amax = 20.5f32 * 0.37; // |x[0]|, the largest of block 0
        let d = f16::from_f32(amax / 127.0).to_f32();
        assert_eq!(row.d[0], d);
        assert_eq!(row.qs[0], -127);
        for (j, &code) in row.qs[..32].iter().enumerate() {
            let exact = x[j] * 127.0 / amax;
            assert!((f32::from(code) - exact).abs() <= 0.5, "{j}: {code} vs {exact}");
        }
        let sum: i32 = row.qs[..32].iter().map(|&c| i32::from(c)).sum();
        assert_eq!(row.s[0], f16::from_f32(amax / 127.0 * sum as f32).to_f32());
        // Ties go to the even code: 0.5 · 127/127 = 0.5 → 0, 2.5 → 2.
        let mut t = [0f32; 32];
        t[0] = 127.0;
        t[1] = 0.5;
        t[2] = 2.5;
        t[3] = -1.5;
        q.quantize(&t, 32);
        assert_eq!(&q.row(0).qs[..4], &[127, 0, 2, -2]);
        // An all-zero block has scale 0 and codes 0, not NaN.
        q.quantize(&[0.0; 32], 32);
        assert_eq!((q.row(0).d[0], q.row(0).qs[5]), (0.0, 0));
    }

    /// Every x86 copy gives the portable codes, scales and sums on activations with ties,
    /// zeros, outliers, infinities and NaNs.
    #[test]
    fn simd_quantizers_match_the_portable_one() {
        let nb = 9;
        let mut x: Vec<f32> = (0..nb * QK).map(|i| ((i * 7919) % 523) as f32 * 0.0137 - 3.1).collect();
        x[5] = 0.5;
        x[40] = 300.0;
        for v in &mut x[64..96] {
            *v = 0.0;
        }
        x[100] = f32::INFINITY;
        x[140] = f32::NAN;
        // A block whose largest magnitude makes exact ties: codes k + 0.5.
        for (k, v) in x[160..192].iter_mut().enumerate() {
            *v = if k == 0 { 127.0 } else { (k as f32 - 16.0) + 0.5 };
        }
        type Quantizer<'a> = &'a dyn Fn(&[f32], &mut [i8], &mut [f32], &mut [f32], &mut [i32]);
        let run = |f: Quantizer<'_>| {
            let (mut qs, mut d, mut s, mut c) = (vec![0i8; nb * QK], vec![0f32; nb], vec![0f32; nb], vec![0i32; nb]);
            f(&x, &mut qs, &mut d, &mut s, &mut c);
            (qs, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), c)
        };
        let expected = run(&portable);
        // The NaN block's other codes are what they are; its NaN code is 0 in every copy.
        assert_eq!(expected.0[140], 0);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") {
                // SAFETY: detected.
                assert_eq!(run(&|x, q, d, s, c| unsafe { simd::avx512(x, q, d, s, c) }), expected, "AVX-512");
            }
            if has!("avx2") {
                // SAFETY: detected.
                assert_eq!(run(&|x, q, d, s, c| unsafe { simd::avx2(x, q, d, s, c) }), expected, "AVX2");
            }
        }
        assert_eq!(run(&quantize_row), expected);
    }
}
