//! Dot products of quantized weight rows with quantized activations, one implementation per
//! instruction set, chosen at run time.
//!
//! [`rows_dot`] computes `out[r · T + t] = W[r] · x[t]` for a run of weight rows and `T`
//! activation vectors. In prefill each row's blocks are unpacked once and multiplied with four
//! activation vectors, so the weights are read from memory once per four tokens; in decode four
//! rows run side by side, so four streams of weights are in flight at once.
//! Per block the integer dot product of the codes is scaled by `d_w · d_x` and accumulated in
//! f32 lanes; Q4_1's minimum adds `m_w · s_x` (`s_x = d_x · Σ q_x`). This is llama.cpp's
//! arithmetic for `Q4_1 × Q8_1` and `Q8_0 × Q8_0`.
//!
//! On x86-64 the integer products use AVX2 (`vpmaddubsw` + `vpmaddwd`), or `vpdpbusd` where
//! AVX-VNNI or AVX-512 VNNI is present; [`Isa::detect`] picks the best the CPU has, so one
//! binary runs everywhere without `-C target-cpu=native`. The scalar code is the portable
//! fallback and the tests' reference.

use super::activation::{Q8Activations, Q8Row};
use super::block::{QK, WeightFormat, f16_at};

/// An instruction set the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust, any CPU.
    Scalar,
    /// AVX2 + FMA + F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 with the VEX-encoded `vpdpbusd` (Alder Lake, Sapphire Rapids, Zen 5).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX2 with AVX-512 VNNI's `vpdpbusd` on 256-bit registers (Ice Lake, Zen 4).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    /// The fastest instruction set this CPU runs.
    pub(crate) fn detect() -> Self {
        Self::available().into_iter().next().unwrap_or(Isa::Scalar)
    }

    /// Every instruction set this CPU runs, fastest first (the tests run them all).
    pub(crate) fn available() -> Vec<Self> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avxvnni") {
                    isas.push(Isa::AvxVnni);
                }
                if has!("avx512vnni") && has!("avx512vl") {
                    isas.push(Isa::Avx512Vnni);
                }
                isas.push(Isa::Avx2);
            }
        }
        isas.push(Isa::Scalar);
        isas
    }
}

/// `out[r · x.rows() + t] = row r of rows · x[t]`, for every whole row in `rows`.
///
/// # Panics
/// When `out` is not `rows × x.rows()` or the activations are not `cols` wide; callers
/// check shapes once per matmul ([`super::matmul`]), so this is an internal invariant.
pub(crate) fn rows_dot(isa: Isa, format: WeightFormat, cols: usize, rows: &[u8], x: &Q8Activations, out: &mut [f32]) {
    let row_bytes = format.row_bytes(cols);
    assert!(cols.is_multiple_of(QK) && row_bytes > 0 && rows.len().is_multiple_of(row_bytes));
    assert_eq!(x.cols(), cols);
    assert_eq!(out.len(), rows.len() / row_bytes * x.rows());
    match isa {
        Isa::Scalar => scalar::rows_dot(format, row_bytes, rows, x, out),
        // SAFETY (all three): `available()` only lists an instruction set after
        // `is_x86_feature_detected!` confirmed every feature its functions enable, and the
        // shapes were checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::rows_dot(format, row_bytes, rows, x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { avxvnni::rows_dot(format, row_bytes, rows, x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { avx512vnni::rows_dot(format, row_bytes, rows, x, out) },
    }
}

/// The reference: the same sums, one value at a time.
mod scalar {
    use super::*;

    pub(super) fn rows_dot(format: WeightFormat, row_bytes: usize, rows: &[u8], x: &Q8Activations, out: &mut [f32]) {
        for (row, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(x.rows())) {
            for (t, o) in out.iter_mut().enumerate() {
                *o = match format {
                    WeightFormat::Q4_1 => dot_q4_1(row, &x.row(t)),
                    WeightFormat::Q8_0 => dot_q8_0(row, &x.row(t)),
                };
            }
        }
    }

    fn dot_q4_1(row: &[u8], x: &Q8Row<'_>) -> f32 {
        let (mut acc, mut mins) = (0f32, 0f32);
        for (b, block) in row.chunks_exact(20).enumerate() {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            let q = &x.qs[b * QK..(b + 1) * QK];
            let mut sum = 0i32;
            for (j, &byte) in block[4..20].iter().enumerate() {
                sum += i32::from(byte & 0x0f) * i32::from(q[j]);
                sum += i32::from(byte >> 4) * i32::from(q[j + 16]);
            }
            acc += d * x.d[b] * sum as f32;
            mins += m * x.s[b];
        }
        acc + mins
    }

    fn dot_q8_0(row: &[u8], x: &Q8Row<'_>) -> f32 {
        let mut acc = 0f32;
        for (b, block) in row.chunks_exact(34).enumerate() {
            let q = &x.qs[b * QK..(b + 1) * QK];
            let sum: i32 = block[2..34].iter().zip(q).map(|(&w, &q)| i32::from(w as i8) * i32::from(q)).sum();
            acc += f16_at(block, 0) * x.d[b] * sum as f32;
        }
        acc
    }
}

/// One x86-64 kernel set: `$features` enabled, `$udot` the unsigned × signed byte dot product
/// of 32 pairs into 8 i32 lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($module:ident, $features:literal, $udot:item) => {
        mod $module {
            use std::arch::x86_64::*;

            use super::super::activation::Q8Activations;
            use super::super::block::{QK, WeightFormat};

            $udot

            /// # Safety
            /// The CPU must support `$features`; `rows` holds whole rows of `row_bytes`, `out`
            /// is rows × `x.rows()`, and `x` has `nb` blocks per vector.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows_dot(
                format: WeightFormat,
                row_bytes: usize,
                rows: &[u8],
                x: &Q8Activations,
                out: &mut [f32],
            ) {
                let nb = row_bytes / format.block_bytes();
                let tokens = x.rows();
                let n_rows = rows.len() / row_bytes;
                let (qs, d, s) = x.raw();
                let cols = nb * QK;
                let w = rows.as_ptr();
                let o = out.as_mut_ptr();
                // Tokens' codes and scales are contiguous: token t starts at t · cols and t · nb.
                // SAFETY (every call below): rows r..r + R and tokens t..t + N exist, so the
                // pointers stay inside `rows`, `x` and `out`.
                if tokens >= 4 {
                    // Prefill: each row's blocks are unpacked once for four tokens.
                    for r in 0..n_rows {
                        let mut t = 0;
                        while t + 4 <= tokens {
                            unsafe { tile::<1, 4>(format, nb, w.add(r * row_bytes), row_bytes, qs.as_ptr().add(t * cols), d.as_ptr().add(t * nb), s.as_ptr().add(t * nb), cols, o.add(r * tokens + t), tokens) };
                            t += 4;
                        }
                        while t < tokens {
                            unsafe { tile::<1, 1>(format, nb, w.add(r * row_bytes), row_bytes, qs.as_ptr().add(t * cols), d.as_ptr().add(t * nb), s.as_ptr().add(t * nb), cols, o.add(r * tokens + t), tokens) };
                            t += 1;
                        }
                    }
                } else {
                    // Decode: four rows at once, four independent streams from memory.
                    let mut r = 0;
                    while r < n_rows {
                        let four = r + 4 <= n_rows;
                        for t in 0..tokens {
                            unsafe {
                                let args = (w.add(r * row_bytes), qs.as_ptr().add(t * cols), d.as_ptr().add(t * nb), s.as_ptr().add(t * nb), o.add(r * tokens + t));
                                if four {
                                    tile::<4, 1>(format, nb, args.0, row_bytes, args.1, args.2, args.3, cols, args.4, tokens)
                                } else {
                                    tile::<1, 1>(format, nb, args.0, row_bytes, args.1, args.2, args.3, cols, args.4, tokens)
                                }
                            };
                        }
                        r += if four { 4 } else { 1 };
                    }
                }
            }

            /// `R` rows times `N` activation vectors: `out[r · stride + t] = W[r] · x[t]`.
            ///
            /// # Safety
            /// `w` points at `R` rows of `nb` blocks (`row_bytes` apart); `qs`, `d`, `s` at `N`
            /// tokens' codes (`cols` apart) and scales and sums (`nb` apart); `out` reaches
            /// index `(R - 1) · stride + N - 1`. The CPU supports `$features`.
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn tile<const R: usize, const N: usize>(
                format: WeightFormat,
                nb: usize,
                w: *const u8,
                row_bytes: usize,
                qs: *const i8,
                d: *const f32,
                s: *const f32,
                cols: usize,
                out: *mut f32,
                stride: usize,
            ) {
                let mut acc = [[_mm256_setzero_ps(); N]; R];
                let mut mins = [[0f32; N]; R];
                match format {
                    WeightFormat::Q4_1 => {
                        let low = _mm256_set1_epi8(0x0f);
                        for b in 0..nb {
                            let mut xq = [_mm256_setzero_si256(); N];
                            let mut xd = [0f32; N];
                            let mut xs = [0f32; N];
                            for t in 0..N {
                                // SAFETY: token t's block b is inside `x` (this function's contract).
                                unsafe {
                                    xq[t] = _mm256_loadu_si256(qs.add(t * cols + b * QK) as *const __m256i);
                                    xd[t] = *d.add(t * nb + b);
                                    xs[t] = *s.add(t * nb + b);
                                }
                            }
                            for r in 0..R {
                                // SAFETY: block b of row r is inside `w`; the loads are unaligned.
                                let (dm, q) = unsafe {
                                    let p = w.add(r * row_bytes + b * 20);
                                    let dm = (p as *const i32).read_unaligned();
                                    (_mm_cvtph_ps(_mm_cvtsi32_si128(dm)), _mm_loadu_si128(p.add(4) as *const __m128i))
                                };
                                let dw = _mm_cvtss_f32(dm);
                                let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                                // Low nibbles are values 0..16, high nibbles 16..32.
                                let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
                                for t in 0..N {
                                    let dot = _mm256_cvtepi32_ps(udot(wq, xq[t]));
                                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[t]), dot, acc[r][t]);
                                    mins[r][t] += m * xs[t];
                                }
                            }
                        }
                    }
                    WeightFormat::Q8_0 => {
                        for b in 0..nb {
                            let mut xq = [_mm256_setzero_si256(); N];
                            let mut xd = [0f32; N];
                            for t in 0..N {
                                // SAFETY: as for Q4_1.
                                unsafe {
                                    xq[t] = _mm256_loadu_si256(qs.add(t * cols + b * QK) as *const __m256i);
                                    xd[t] = *d.add(t * nb + b);
                                }
                            }
                            for r in 0..R {
                                // SAFETY: block b of row r is inside `w` (34-byte blocks).
                                let (dw, wq) = unsafe {
                                    let p = w.add(r * row_bytes + b * 34);
                                    let dw = i32::from((p as *const u16).read_unaligned());
                                    (_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dw))), _mm256_loadu_si256(p.add(2) as *const __m256i))
                                };
                                // |w| · (sign(w) · x) = w · x with an unsigned left operand.
                                let abs_w = _mm256_sign_epi8(wq, wq);
                                for t in 0..N {
                                    let dot = _mm256_cvtepi32_ps(udot(abs_w, _mm256_sign_epi8(xq[t], wq)));
                                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[t]), dot, acc[r][t]);
                                }
                            }
                        }
                    }
                }
                for r in 0..R {
                    for t in 0..N {
                        // SAFETY: inside `out` (this function's contract).
                        unsafe { *out.add(r * stride + t) = hsum(acc[r][t]) + mins[r][t] };
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_kernels!(avx2, "avx2,fma,f16c",
    /// 32 u8 × i8 products summed in fours; `maddubs` cannot saturate here (|w| ≤ 128, |x| ≤ 127).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
);

#[cfg(target_arch = "x86_64")]
x86_kernels!(avxvnni, "avx2,fma,f16c,avxvnni",
    /// 32 u8 × i8 products summed in fours, in one instruction.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
);

#[cfg(target_arch = "x86_64")]
x86_kernels!(avx512vnni, "avx2,fma,f16c,avx512vnni,avx512vl",
    /// 32 u8 × i8 products summed in fours, in one instruction.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    #[inline]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
);
