//! The panel kernels on 256-bit registers: AVX2 (`vpmaddubsw` + `vpmaddwd`, every x86-64 CPU
//! since Haswell and Zen 1) and AVX-VNNI (`vpdpbusd`, Alder Lake and later). A register holds
//! eight rows, half a panel: rows 0..8 are the first 32 bytes of each 64-byte code group and
//! of the scales, rows 8..16 the second.

/// One 256-bit kernel set: `$features` enabled; `$q41` adds a Q4_1 group's products
/// (`u8` codes × `i8` activations) into i32 row sums, `$q80` a Q8_0 group's (codes stored as
/// `q + 128`); `$offset` says whether `$q80` leaves `128 · Σ x` for the tile to take off.
macro_rules! x86_256 {
    ($module:ident, $features:literal, $offset:literal, $q41:item, $q80:item) => {
        pub(super) mod $module {
            use std::arch::x86_64::*;

            use super::super::super::block::WeightFormat;
            use super::super::super::panel::{MINS_AT, PANEL, codes_at};
            use super::super::Operands;

            /// Tokens per prefill tile (four sums, four accumulators and the unpacked weights
            /// fit in the 16 registers).
            const TOKENS: usize = 4;
            /// Half panels per decode tile: four independent chains of additions.
            const DECODE_HALVES: usize = 4;

            $q41
            $q80

            /// [`super::super::panels_dot_into`] on 256-bit registers.
            ///
            /// # Safety
            /// The CPU must support `$features`; `ops` holds whole panels of `format` with
            /// `ops.rows` real rows, `tokens` activation vectors, and an `out` covering them.
            #[target_feature(enable = $features)]
            pub(in super::super) unsafe fn panels_dot(ops: Operands, format: WeightFormat, tokens: usize) {
                let halves = 2 * ops.rows.div_ceil(PANEL);
                // SAFETY (every use): the tile's half panels and tokens exist, so it stays
                // inside the weights, the activations and `out`; the CPU supports every
                // feature the tile enables.
                macro_rules! at {
                    ($h:expr, $t:expr, $H:literal, $T:literal) => {
                        unsafe {
                            match format {
                                WeightFormat::Q4_1 => tile::<$H, $T, true>(&ops, $h, $t),
                                WeightFormat::Q8_0 => tile::<$H, $T, false>(&ops, $h, $t),
                            }
                        }
                    };
                }
                if tokens < 4 {
                    let mut h = 0;
                    while h + DECODE_HALVES <= halves {
                        for t in 0..tokens {
                            at!(h, t, 4, 1);
                        }
                        h += DECODE_HALVES;
                    }
                    for h in h..halves {
                        for t in 0..tokens {
                            at!(h, t, 1, 1);
                        }
                    }
                    return;
                }
                for h in 0..halves {
                    let mut t = 0;
                    while t + TOKENS <= tokens {
                        at!(h, t, 1, 4);
                        t += TOKENS;
                    }
                    for t in t..tokens {
                        at!(h, t, 1, 1);
                    }
                }
            }

            /// Half panels `h0..h0 + H` times tokens `t0..t0 + T`, Q4_1 weights when `Q41`,
            /// else Q8_0.
            ///
            /// # Safety
            /// The half panels and tokens are inside the call's. The CPU supports `$features`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const H: usize, const T: usize, const Q41: bool>(ops: &Operands, h0: usize, t0: usize) {
                let format = if Q41 { WeightFormat::Q4_1 } else { WeightFormat::Q8_0 };
                let codes = codes_at(format);
                let low = _mm256_set1_epi8(0x0f);
                let mut acc = [[_mm256_setzero_ps(); T]; H];
                for b in 0..ops.nb {
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let (p, half) = ((h0 + h) / 2, (h0 + h) % 2);
                        // SAFETY (this loop): block b of panel p and the tokens' block b are
                        // inside the call (this function's contract); the loads are unaligned.
                        let blk = unsafe { ops.block(p, b) };
                        let dw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * half) as *const __m128i)) };
                        let mut sum = [_mm256_setzero_si256(); T];
                        if Q41 {
                            for g in 0..4 {
                                let q = unsafe { _mm256_loadu_si256(blk.add(codes + 64 * g + 32 * half) as *const __m256i) };
                                // Low nibbles are values 4g.., high nibbles 16 + 4g..
                                let (lo, hi) = (_mm256_and_si256(q, low), _mm256_and_si256(_mm256_srli_epi16::<4>(q), low));
                                for (t, sum) in sum.iter_mut().enumerate() {
                                    let (xl, xh) = unsafe { (ops.codes4(t0 + t, b, 4 * g), ops.codes4(t0 + t, b, 16 + 4 * g)) };
                                    *sum = q41_add(*sum, lo, _mm256_set1_epi32(xl));
                                    *sum = q41_add(*sum, hi, _mm256_set1_epi32(xh));
                                }
                            }
                            let mw = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(blk.add(MINS_AT + 16 * half) as *const __m128i)) };
                            for (t, (acc, &sum)) in acc.iter_mut().zip(&sum).enumerate() {
                                let (xd, xs, _) = unsafe { ops.scales(t0 + t, b) };
                                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd));
                                *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), *acc);
                                *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs), *acc);
                            }
                        } else {
                            for g in 0..8 {
                                let q = unsafe { _mm256_loadu_si256(blk.add(codes + 64 * g + 32 * half) as *const __m256i) };
                                for (t, sum) in sum.iter_mut().enumerate() {
                                    let x = unsafe { ops.codes4(t0 + t, b, 4 * g) };
                                    *sum = q80_add(*sum, q, _mm256_set1_epi32(x));
                                }
                            }
                            for (t, (acc, &sum)) in acc.iter_mut().zip(&sum).enumerate() {
                                let (xd, _, c) = unsafe { ops.scales(t0 + t, b) };
                                let sum = if $offset { _mm256_sub_epi32(sum, _mm256_set1_epi32(c)) } else { sum };
                                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd));
                                *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), *acc);
                            }
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (t, &acc) in acc.iter().enumerate() {
                        let mut v = [0f32; PANEL / 2];
                        // SAFETY: `v` holds 8 floats; the rows and token are inside the call.
                        unsafe {
                            _mm256_storeu_ps(v.as_mut_ptr(), acc);
                            ops.store((h0 + h) * PANEL / 2, t0 + t, &v);
                        }
                    }
                }
            }
        }
    };
}

x86_256!(avx2, "avx2,fma,f16c", false,
    /// `sum + Σ u · s` in fours: `maddubs` cannot saturate on 4-bit codes (2 · 15 · 127).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q41_add(sum: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    },
    /// `sum + Σ q · x` in fours, from the stored `q + 128`: `|q| · (sign(q) · x)` keeps the
    /// unsigned operand at most 128, so `maddubs` cannot saturate (2 · 128 · 127).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q80_add(sum: __m256i, stored: __m256i, x: __m256i) -> __m256i {
        let q = _mm256_xor_si256(stored, _mm256_set1_epi8(i8::MIN));
        let prod = _mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q));
        _mm256_add_epi32(sum, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)))
    }
);

x86_256!(avxvnni, "avx2,fma,f16c,avxvnni", true,
    /// `sum + Σ u · s` in fours, in one instruction.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline]
    fn q41_add(sum: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(sum, u, s)
    },
    /// `sum + Σ (q + 128) · x` in fours (the tile takes `128 · Σ x` off).
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline]
    fn q80_add(sum: __m256i, stored: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(sum, stored, x)
    }
);
