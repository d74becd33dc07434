//! Dot products of quantized weight rows with quantized activations, one implementation per
//! instruction set, chosen at run time.
//!
//! [`rows_dot`] computes `out[r · T + t] = W[r] · x[t]` for a run of weight rows and `T`
//! activation vectors. Each row's blocks are unpacked once and multiplied with up to four
//! activation vectors (prefill), so the weights are read from memory once per four tokens.
//! Per block the integer dot product of the codes is scaled by `d_w · d_x` and accumulated in
//! f32 lanes; Q4_1's minimum adds `m_w · s_x` (`s_x = d_x · Σ q_x`). This is llama.cpp's
//! arithmetic for `Q4_1 × Q8_1` and `Q8_0 × Q8_0`.
//!
//! On x86-64 the integer products use AVX2 (`vpmaddubsw` + `vpmaddwd`), or `vpdpbusd` where
//! AVX-VNNI or AVX-512 VNNI is present; [`Isa::detect`] picks the best the CPU has, so one
//! binary runs everywhere without `-C target-cpu=native`. The scalar code is the portable
//! fallback and the tests' reference.

use super::activation::Q8Row;
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

/// `out[r · x.len() + t] = row r of rows · x[t]`, for every whole row in `rows`.
///
/// # Panics
/// When `out` is not `rows × x.len()` or an activation vector is shorter than a row; callers
/// check shapes once per matmul ([`super::matmul`]), so this is an internal invariant.
pub(crate) fn rows_dot(isa: Isa, format: WeightFormat, cols: usize, rows: &[u8], x: &[Q8Row<'_>], out: &mut [f32]) {
    let row_bytes = format.row_bytes(cols);
    let nb = cols / QK;
    assert!(cols % QK == 0 && row_bytes > 0 && rows.len() % row_bytes == 0);
    assert_eq!(out.len(), rows.len() / row_bytes * x.len());
    assert!(x.iter().all(|r| r.qs.len() >= cols && r.d.len() >= nb && r.s.len() >= nb));
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

    pub(super) fn rows_dot(format: WeightFormat, row_bytes: usize, rows: &[u8], x: &[Q8Row<'_>], out: &mut [f32]) {
        for (row, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(x.len())) {
            for (o, x) in out.iter_mut().zip(x) {
                *o = match format {
                    WeightFormat::Q4_1 => dot_q4_1(row, x),
                    WeightFormat::Q8_0 => dot_q8_0(row, x),
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

            use super::super::activation::Q8Row;
            use super::super::block::{QK, WeightFormat};

            $udot

            /// # Safety
            /// The CPU must support `$features`; `rows` holds whole rows of `row_bytes`, `out`
            /// is rows × `x.len()`, and every `x[t]` holds a row's blocks.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows_dot(
                format: WeightFormat,
                row_bytes: usize,
                rows: &[u8],
                x: &[Q8Row<'_>],
                out: &mut [f32],
            ) {
                let nb = row_bytes / format.block_bytes();
                let tokens = x.len();
                for (row, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(tokens)) {
                    let mut t = 0;
                    while t + 4 <= tokens {
                        // SAFETY: forwarded from this function's contract.
                        unsafe { tile::<4>(format, nb, row, &x[t..t + 4], &mut out[t..t + 4]) };
                        t += 4;
                    }
                    while t < tokens {
                        // SAFETY: as above.
                        unsafe { tile::<1>(format, nb, row, &x[t..t + 1], &mut out[t..t + 1]) };
                        t += 1;
                    }
                }
            }

            /// One row times `N` activation vectors.
            ///
            /// # Safety
            /// As [`rows_dot`], with `row` one row of `nb` blocks and `x`, `out` of length `N`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const N: usize>(format: WeightFormat, nb: usize, row: &[u8], x: &[Q8Row<'_>], out: &mut [f32]) {
                let mut acc = [_mm256_setzero_ps(); N];
                let mut mins = [0f32; N];
                match format {
                    WeightFormat::Q4_1 => {
                        let low = _mm256_set1_epi8(0x0f);
                        for b in 0..nb {
                            // SAFETY: block b lies in `row` (nb blocks of 20 bytes); the loads
                            // are unaligned.
                            let (dm, q) = unsafe {
                                let p = row.as_ptr().add(b * 20);
                                let dm = (p as *const i32).read_unaligned();
                                (_mm_cvtph_ps(_mm_cvtsi32_si128(dm)), _mm_loadu_si128(p.add(4) as *const __m128i))
                            };
                            let d = _mm_cvtss_f32(dm);
                            let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                            // Low nibbles are values 0..16, high nibbles 16..32.
                            let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
                            for t in 0..N {
                                // SAFETY: x[t] holds nb blocks of 32 codes (checked by the caller).
                                let xq = unsafe { _mm256_loadu_si256(x[t].qs.as_ptr().add(b * QK) as *const __m256i) };
                                let dot = _mm256_cvtepi32_ps(udot(w, xq));
                                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t].d[b]), dot, acc[t]);
                                mins[t] += m * x[t].s[b];
                            }
                        }
                    }
                    WeightFormat::Q8_0 => {
                        for b in 0..nb {
                            // SAFETY: block b lies in `row` (nb blocks of 34 bytes).
                            let (d, w) = unsafe {
                                let p = row.as_ptr().add(b * 34);
                                let d = i32::from((p as *const u16).read_unaligned());
                                (_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d))), _mm256_loadu_si256(p.add(2) as *const __m256i))
                            };
                            // |w| · (sign(w) · x) = w · x with an unsigned left operand.
                            let abs_w = _mm256_sign_epi8(w, w);
                            for t in 0..N {
                                // SAFETY: as for Q4_1.
                                let xq = unsafe { _mm256_loadu_si256(x[t].qs.as_ptr().add(b * QK) as *const __m256i) };
                                let dot = _mm256_cvtepi32_ps(udot(abs_w, _mm256_sign_epi8(xq, w)));
                                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t].d[b]), dot, acc[t]);
                            }
                        }
                    }
                }
                for t in 0..N {
                    out[t] = hsum(acc[t]) + mins[t];
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
