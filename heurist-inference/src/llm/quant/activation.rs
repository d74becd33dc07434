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

/// Quantizes one block of 32; returns `(d, s, Σ q)`.
/// One vector's blocks: codes `qs`, scales `d`, scaled sums `s` and `128 ×` code sums `c`.
// Compiled for AVX-512, for AVX2 and for the baseline, the best picked at run time (the
// baseline build did it 4 lanes wide: 6% of a scoring pass); the same operations in every
// copy, so the same codes.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], c: &mut [i32]) {
    let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(d.iter_mut().zip(s.iter_mut()).zip(c));
    for ((x, qs), ((d, s), c)) in blocks {
        let sum;
        (*d, *s, sum) = quantize_block(x, qs);
        *c = 128 * sum;
    }
}

#[inline(always)]
fn quantize_block(x: &[f32], qs: &mut [i8]) -> (f32, f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    // Adding and removing 1.5 · 2^23 rounds half to even in the default rounding mode for
    // |v| ≤ 2^22 (here |v| ≤ 127), and vectorizes where `round_ties_even` would be a libm call.
    const MAGIC: f32 = 12_582_912.0;
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = ((v * id + MAGIC) - MAGIC) as i8;
        *q = r;
        sum += i32::from(r);
    }
    (f16::from_f32(d).to_f32(), f16::from_f32(d * sum as f32).to_f32(), sum)
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
}
