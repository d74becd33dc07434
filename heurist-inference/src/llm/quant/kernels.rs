//! Dot products of quantized weight rows with quantized activations, one implementation per
//! instruction set, chosen at run time.
//!
//! [`rows_dot_into`] computes `out(r, t) = W[r] · x[t]` for a run of weight rows and `T`
//! activation vectors, into an [`OutView`] of either layout. In prefill (and one-pass
//! scoring, and batched decode of four or more) a tile of several rows × four tokens runs at
//! once: each weight block is unpacked once for four tokens and each activation block loaded
//! once for the tile's rows (2 rows under AVX2, 3 under AVX-VNNI, 4 with AVX-512VL's 32
//! registers); in decode four rows run side by side,
//! so four streams of weights are in flight at once. Every tile keeps one accumulator per
//! (row, token) and adds the blocks in order, so a result is bit for bit the same whatever the
//! tile or the number of tokens ([`Tiling`]), and the same on every x86 instruction set (the
//! integer products are exact).
//! Per block the integer dot product of the codes is scaled by `d_w · d_x` and accumulated in
//! f32 lanes; Q4_1's minimum adds `m_w · s_x` (`s_x = d_x · Σ q_x`). This is llama.cpp's
//! arithmetic for `Q4_1 × Q8_1` and `Q8_0 × Q8_0`.
//!
//! On x86-64 the integer products use AVX2 (`vpmaddubsw` + `vpmaddwd`), or `vpdpbusd` where
//! AVX-VNNI or AVX-512 VNNI is present; with AVX-512, four tokens or more run on 512-bit
//! registers holding two tokens each, and decode on 512-bit registers holding two weight rows
//! each ([`wide`]), bit for bit the 256-bit results.
//! [`Isa::detect`] picks the best the CPU has, so one
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
    /// AVX2 with AVX-512 VNNI's `vpdpbusd` on 256-bit registers (Ice Lake, Zen 4), and on
    /// 512-bit ones for prompts ([`wide`]).
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
                // AVX-512VL first: the same 256-bit instructions, but 32 registers hold
                // larger prefill tiles (on 256-bit registers the clock does not drop).
                if has!("avx512vnni") && has!("avx512vl") && has!("avx512f") && has!("avx512bw") && has!("avx512dq") {
                    isas.push(Isa::Avx512Vnni);
                }
                if has!("avxvnni") {
                    isas.push(Isa::AvxVnni);
                }
                isas.push(Isa::Avx2);
            }
        }
        isas.push(Isa::Scalar);
        isas
    }
}

/// How a kernel walks the (row, token) grid. Every tiling gives every output bit for bit the
/// same value: a tile keeps one accumulator per (row, token) and adds the blocks into it in
/// the same order as the one-by-one kernel does, so a token's result does not depend on how
/// many tokens share the matmul (what makes prefill, batched decode and one-pass scoring equal
/// a single decode step exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // the tests walk every tiling
pub(crate) enum Tiling {
    /// The fastest: blocks of several rows × four tokens in prefill, four rows × one token in
    /// decode.
    Best,
    /// One row × four tokens in prefill (each row's weights unpacked once per four tokens),
    /// four rows × one token in decode; the kernels before row blocking, kept for comparison.
    RowTimesFour,
    /// One (row, token) at a time: the reference order.
    Single,
}

/// Where a kernel writes the dot product of row `r` and token `t`: `ptr[r · row_stride + t ·
/// token_stride]`. `[row][token]` (`token_stride` 1) is what the tests hand out; the
/// matmul has its threads write `[token][row]` (`row_stride` 1) into one buffer, each its own
/// rows, so that no transpose follows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutView {
    ptr: *mut f32,
    row_stride: usize,
    token_stride: usize,
}

// SAFETY: a view is a pointer with a promise (`new`): the matmul's tasks write disjoint
// rows of one buffer, which outlives them, and nothing reads it until they are done.
unsafe impl Send for OutView {}
// SAFETY: as for Send; a shared view is only copied, never written through concurrently at
// one cell.
unsafe impl Sync for OutView {}

impl OutView {
    /// # Safety
    /// Every `(r, t)` a kernel writes (the rows it is given × the activations' tokens) must
    /// address memory that is valid for writes and that nothing else reads or writes meanwhile.
    pub(crate) unsafe fn new(ptr: *mut f32, row_stride: usize, token_stride: usize) -> Self {
        Self { ptr, row_stride, token_stride }
    }

    /// The same view with row 0 at row `r0`.
    ///
    /// # Safety
    /// The rows the kernel then writes, shifted by `r0`, are inside what [`Self::new`] was
    /// promised.
    pub(crate) unsafe fn offset_rows(self, r0: usize) -> Self {
        // SAFETY: the caller's promise.
        Self { ptr: unsafe { self.ptr.add(r0 * self.row_stride) }, ..self }
    }

    /// The view's pointer at `(r, t)`.
    ///
    /// # Safety
    /// `(r, t)` is inside what [`Self::new`] was promised.
    #[inline(always)]
    unsafe fn at(self, r: usize, t: usize) -> *mut f32 {
        // SAFETY: the caller's promise.
        unsafe { self.ptr.add(r * self.row_stride + t * self.token_stride) }
    }

    /// Writes `(r, t)`.
    ///
    /// # Safety
    /// As [`Self::at`].
    #[inline(always)]
    unsafe fn write(self, r: usize, t: usize, v: f32) {
        // SAFETY: the caller's promise.
        unsafe { *self.at(r, t) = v };
    }
}

/// One call's operands as the x86 tiles read them: a tile at row `r0` and token `t0` finds
/// its weights, codes, scales and sums with [`Self::at`] (tokens' codes and scales are
/// contiguous: token `t` starts at `t · cols` and `t · nb`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Operands {
    format: WeightFormat,
    /// Blocks per row.
    nb: usize,
    row_bytes: usize,
    /// Values per activation vector.
    cols: usize,
    rows: usize,
    tokens: usize,
    w: *const u8,
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    out: OutView,
}

#[cfg(target_arch = "x86_64")]
impl Operands {
    fn new(format: WeightFormat, row_bytes: usize, rows: &[u8], x: &Q8Activations, out: OutView) -> Self {
        let nb = row_bytes / format.block_bytes();
        let (qs, d, s) = x.raw();
        Self {
            format,
            nb,
            row_bytes,
            cols: nb * QK,
            rows: rows.len() / row_bytes,
            tokens: x.rows(),
            w: rows.as_ptr(),
            qs: qs.as_ptr(),
            d: d.as_ptr(),
            s: s.as_ptr(),
            out,
        }
    }

    /// Row `r0`'s weights and token `t0`'s codes, scales and sums.
    ///
    /// # Safety
    /// `r0` and `t0` are inside the call's rows and tokens.
    #[inline(always)]
    unsafe fn at(&self, r0: usize, t0: usize) -> (*const u8, *const i8, *const f32, *const f32) {
        // SAFETY: the caller's promise keeps every offset inside its slice.
        unsafe { (self.w.add(r0 * self.row_bytes), self.qs.add(t0 * self.cols), self.d.add(t0 * self.nb), self.s.add(t0 * self.nb)) }
    }
}

/// `out[r · x.rows() + t] = row r of rows · x[t]`, for every whole row in `rows`, walked as
/// `tiling` says (the tests and the kernel bench; the matmul calls [`rows_dot_into`]).
///
/// # Panics
/// When `out` is not `rows × x.rows()` or the activations are not `cols` wide.
#[cfg(test)]
pub(crate) fn rows_dot_tiled(
    isa: Isa,
    format: WeightFormat,
    cols: usize,
    rows: &[u8],
    x: &Q8Activations,
    out: &mut [f32],
    tiling: Tiling,
) {
    assert_eq!(out.len(), rows.len() / format.row_bytes(cols).max(1) * x.rows());
    // SAFETY: `out` holds rows × tokens values, row-major by row, and is borrowed mutably.
    let view = unsafe { OutView::new(out.as_mut_ptr(), x.rows(), 1) };
    // SAFETY: the view covers every (row, token) of these shapes.
    unsafe { rows_dot_into(isa, format, cols, rows, x, view, tiling) }
}

/// `out(r, t) = row r of rows · x[t]` for every whole row in `rows`, into any [`OutView`].
///
/// # Safety
/// `out` covers every `(r, t)` with `r` a row of `rows` and `t` a token of `x` (see
/// [`OutView::new`]).
///
/// # Panics
/// When the activations are not `cols` wide or `rows` is not whole rows.
pub(crate) unsafe fn rows_dot_into(
    isa: Isa,
    format: WeightFormat,
    cols: usize,
    rows: &[u8],
    x: &Q8Activations,
    out: OutView,
    tiling: Tiling,
) {
    let row_bytes = format.row_bytes(cols);
    assert!(cols.is_multiple_of(QK) && row_bytes > 0 && rows.len().is_multiple_of(row_bytes));
    assert_eq!(x.cols(), cols);
    match isa {
        Isa::Scalar => unsafe { scalar::rows_dot(format, row_bytes, rows, x, out, tiling) },
        // SAFETY (all three): `available()` only lists an instruction set after
        // `is_x86_feature_detected!` confirmed every feature its functions enable, the shapes
        // were checked above, and the caller promised `out`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::rows_dot(format, row_bytes, rows, x, out, tiling) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { avxvnni::rows_dot(format, row_bytes, rows, x, out, tiling) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if tiling == Tiling::Best => unsafe {
            wide::rows_dot(format, row_bytes, rows, x, out)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { avx512vnni::rows_dot(format, row_bytes, rows, x, out, tiling) },
    }
}

#[cfg(target_arch = "x86_64")]
mod wide;

/// The portable kernels and the tests' reference: the same sums, in plain Rust.
mod scalar {
    use super::*;

    /// Tokens one unpacked weight block is multiplied with.
    const TOKENS: usize = 4;

    /// # Safety
    /// `out` covers every (row, token) of these shapes.
    pub(super) unsafe fn rows_dot(
        format: WeightFormat,
        row_bytes: usize,
        rows: &[u8],
        x: &Q8Activations,
        out: OutView,
        tiling: Tiling,
    ) {
        let tokens = x.rows();
        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
            let mut t = 0;
            if tiling != Tiling::Single {
                while t + TOKENS <= tokens {
                    let xs: [Q8Row<'_>; TOKENS] = std::array::from_fn(|i| x.row(t + i));
                    for (i, v) in dot_many(format, row, &xs).into_iter().enumerate() {
                        // SAFETY: (r, t + i) is a (row, token) of these shapes.
                        unsafe { out.write(r, t + i, v) };
                    }
                    t += TOKENS;
                }
            }
            for t in t..tokens {
                // SAFETY: as above.
                unsafe { out.write(r, t, dot_many(format, row, &[x.row(t)])[0]) };
            }
        }
    }

    /// One weight row times `N` activation vectors: each block's codes are unpacked once, and
    /// each product keeps its own accumulators, added block after block.
    fn dot_many<const N: usize>(format: WeightFormat, row: &[u8], xs: &[Q8Row<'_>; N]) -> [f32; N] {
        let (mut acc, mut mins) = ([0f32; N], [0f32; N]);
        let mut codes = [0i32; QK];
        for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
            let d = f16_at(block, 0);
            match format {
                WeightFormat::Q4_1 => {
                    for (j, &byte) in block[4..20].iter().enumerate() {
                        codes[j] = i32::from(byte & 0x0f);
                        codes[j + 16] = i32::from(byte >> 4);
                    }
                }
                WeightFormat::Q8_0 => {
                    for (c, &w) in codes.iter_mut().zip(&block[2..34]) {
                        *c = i32::from(w as i8);
                    }
                }
            }
            for (t, x) in xs.iter().enumerate() {
                let q = &x.qs[b * QK..(b + 1) * QK];
                let sum: i32 = codes.iter().zip(q).map(|(&w, &q)| w * i32::from(q)).sum();
                acc[t] += d * x.d[b] * sum as f32;
                if format == WeightFormat::Q4_1 {
                    mins[t] += f16_at(block, 2) * x.s[b];
                }
            }
        }
        std::array::from_fn(|t| acc[t] + mins[t])
    }
}

/// One x86-64 kernel set: `$features` enabled, `$rows` rows per prefill tile (as many as the
/// registers hold: 16 ymm registers under AVX2, 32 with AVX-512VL), `$udot` the unsigned ×
/// signed byte dot product of 32 pairs into 8 i32 lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($module:ident, $features:literal, $rows:literal, $udot:item) => {
        mod $module {
            use std::arch::x86_64::*;

            use super::super::activation::Q8Activations;
            use super::super::block::{QK, WeightFormat};
            use super::{Operands, OutView, Tiling};

            $udot

            /// # Safety
            /// The CPU must support `$features`; `rows` holds whole rows of `row_bytes`, `out`
            /// covers rows × `x.rows()`, and `x` has `nb` blocks per vector.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows_dot(
                format: WeightFormat,
                row_bytes: usize,
                rows: &[u8],
                x: &Q8Activations,
                out: OutView,
                tiling: Tiling,
            ) {
                let ops = Operands::new(format, row_bytes, rows, x, out);
                let (n_rows, tokens) = (ops.rows, ops.tokens);
                // SAFETY (every use): rows r..r + R and tokens t..t + N exist, so the tile stays
                // inside `rows`, `x` and `out`.
                macro_rules! tile_at {
                    ($r:expr, $t:expr, $R:literal, $N:literal) => {
                        unsafe { tile::<$R, $N>(&ops, $r, $t) }
                    };
                }
                match tiling {
                    Tiling::Single => {
                        for r in 0..n_rows {
                            for t in 0..tokens {
                                tile_at!(r, t, 1, 1);
                            }
                        }
                        return;
                    }
                    Tiling::Best if tokens >= 4 => {
                        // Prefill: a block of $rows rows × four tokens per tile, each weight
                        // block unpacked once for four tokens and each activation block loaded
                        // once for $rows rows.
                        let mut r = 0;
                        while r + $rows <= n_rows {
                            let mut t = 0;
                            while t + 4 <= tokens {
                                tile_at!(r, t, $rows, 4);
                                t += 4;
                            }
                            while t < tokens {
                                tile_at!(r, t, $rows, 1);
                                t += 1;
                            }
                            r += $rows;
                        }
                        for r in r..n_rows {
                            let mut t = 0;
                            while t + 4 <= tokens {
                                tile_at!(r, t, 1, 4);
                                t += 4;
                            }
                            for t in t..tokens {
                                tile_at!(r, t, 1, 1);
                            }
                        }
                        return;
                    }
                    _ => {}
                }
                if tokens >= 4 {
                    // Prefill: each row's blocks are unpacked once for four tokens.
                    for r in 0..n_rows {
                        let mut t = 0;
                        while t + 4 <= tokens {
                            tile_at!(r, t, 1, 4);
                            t += 4;
                        }
                        for t in t..tokens {
                            tile_at!(r, t, 1, 1);
                        }
                    }
                } else {
                    // Decode: four rows at once, four independent streams from memory.
                    let mut r = 0;
                    while r + 4 <= n_rows {
                        for t in 0..tokens {
                            tile_at!(r, t, 4, 1);
                        }
                        r += 4;
                    }
                    for r in r..n_rows {
                        for t in 0..tokens {
                            tile_at!(r, t, 1, 1);
                        }
                    }
                }
            }

            /// `R` rows times `N` activation vectors: `out(r0 + r, t0 + t) = W[r0 + r] · x[t0 + t]`.
            ///
            /// # Safety
            /// Rows `r0..r0 + R` and tokens `t0..t0 + N` are inside the call's. The CPU supports
            /// `$features`.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) unsafe fn tile<const R: usize, const N: usize>(ops: &Operands, r0: usize, t0: usize) {
                // SAFETY: this function's contract.
                let (w, qs, d, s) = unsafe { ops.at(r0, t0) };
                let Operands { format, nb, row_bytes, cols, out, .. } = *ops;
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
                        unsafe { out.write(r0 + r, t0 + t, hsum(acc[r][t]) + mins[r][t]) };
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            pub(super) fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_kernels!(avx2, "avx2,fma,f16c", 2,
    /// 32 u8 × i8 products summed in fours; `maddubs` cannot saturate here (|w| ≤ 128, |x| ≤ 127).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
);

#[cfg(target_arch = "x86_64")]
x86_kernels!(avxvnni, "avx2,fma,f16c,avxvnni", 3,
    /// 32 u8 × i8 products summed in fours, in one instruction.
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    #[inline]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
);

#[cfg(target_arch = "x86_64")]
x86_kernels!(avx512vnni, "avx2,fma,f16c,avx512vnni,avx512vl", 4,
    /// 32 u8 × i8 products summed in fours, in one instruction.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    #[inline]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use half::f16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// `rows` random rows of `format` blocks (scales of realistic size), as a GGUF file has them.
    fn random_rows(format: WeightFormat, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
        let mut data = Vec::with_capacity(rows * format.row_bytes(cols));
        for _ in 0..rows * cols / QK {
            data.extend_from_slice(&f16::from_f32(rng.random_range(0.001..0.05f32)).to_le_bytes());
            let codes = match format {
                WeightFormat::Q4_1 => {
                    data.extend_from_slice(&f16::from_f32(rng.random_range(-0.2..0.0f32)).to_le_bytes());
                    16
                }
                WeightFormat::Q8_0 => 32,
            };
            data.extend((0..codes).map(|_| rng.random::<u8>()));
        }
        data
    }

    fn random_activations(tokens: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..tokens * cols).map(|i| if i % 61 == 0 { 30.0 } else { rng.random_range(-2.0..2.0f32) }).collect()
    }

    fn run(isa: Isa, format: WeightFormat, cols: usize, rows: &[u8], x: &Q8Activations, tiling: Tiling) -> Vec<f32> {
        let mut out = vec![0f32; rows.len() / format.row_bytes(cols) * x.rows()];
        rows_dot_tiled(isa, format, cols, rows, x, &mut out, tiling);
        out
    }

    /// Every tiling, and every number of tokens sharing the call, gives each (row, token) the
    /// value a lone (row, token) gets, bit for bit, on every instruction set this CPU runs.
    #[test]
    fn outputs_do_not_depend_on_tiling_or_token_count() {
        let mut rng = StdRng::seed_from_u64(21);
        let (n_rows, cols) = (39, 192);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let rows = random_rows(format, n_rows, cols, &mut rng);
            for tokens in [1, 2, 3, 4, 5, 8, 11, 13, 19] {
                let xf = random_activations(tokens, cols, &mut rng);
                let mut x = Q8Activations::default();
                x.quantize(&xf, cols);
                for isa in Isa::available() {
                    let single = run(isa, format, cols, &rows, &x, Tiling::Single);
                    // The integer dot products are exact and the float steps the same, so
                    // every x86 instruction set gives the same bits: a verifier on another
                    // CPU generation reproduces a miner's logits exactly.
                    if isa != Isa::Scalar {
                        let first = run(Isa::detect(), format, cols, &rows, &x, Tiling::Single);
                        assert!(single.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()), "{format:?} {isa:?} vs {:?}", Isa::detect());
                    }
                    for tiling in [Tiling::Best, Tiling::RowTimesFour] {
                        let got = run(isa, format, cols, &rows, &x, tiling);
                        let same = got.iter().zip(&single).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{format:?} {isa:?} {tiling:?} {tokens} tokens differ from one by one");
                    }
                    // Each token alone (one activation vector per call, the decode shape).
                    for t in 0..tokens {
                        let mut one = Q8Activations::default();
                        one.quantize(&xf[t * cols..(t + 1) * cols], cols);
                        let alone = run(isa, format, cols, &rows, &one, Tiling::Best);
                        for (r, v) in alone.iter().enumerate() {
                            assert_eq!(v.to_bits(), single[r * tokens + t].to_bits(), "{format:?} {isa:?} row {r} token {t}/{tokens}");
                        }
                    }
                }
            }
        }
    }

    /// SIMD kernels against the scalar reference (another summation order, so within rounding).
    #[test]
    fn simd_equals_scalar_within_rounding() {
        let mut rng = StdRng::seed_from_u64(5);
        let (n_rows, cols) = (21, 576);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let rows = random_rows(format, n_rows, cols, &mut rng);
            let mut x = Q8Activations::default();
            x.quantize(&random_activations(6, cols, &mut rng), cols);
            let reference = run(Isa::Scalar, format, cols, &rows, &x, Tiling::Single);
            for isa in Isa::available() {
                let got = run(isa, format, cols, &rows, &x, Tiling::Best);
                for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{format:?} {isa:?} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    /// Kernel micro-bench (`cargo test -p heurist-inference --release --lib kernel_speed --
    /// --ignored --nocapture`): SmolLM2-135M's matrices times a 128-token prompt, one thread,
    /// the best tiles against one row × four tokens (four rows × one in decode), interleaved.
    #[test]
    #[ignore = "a timing, not a check"]
    fn kernel_speed() {
        let mut rng = StdRng::seed_from_u64(1);
        // `HEURIST_KERNEL_TOKENS=1` times decode, 4 a batched step.
        let tokens = std::env::var("HEURIST_KERNEL_TOKENS").ok().and_then(|t| t.parse().ok()).unwrap_or(128);
        // (name, format, rows, cols): q|k|v, o, gate|up, down, the vocabulary projection.
        let shapes = [
            ("qkv", WeightFormat::Q4_1, 960, 576),
            ("wo", WeightFormat::Q4_1, 576, 576),
            ("gate_up", WeightFormat::Q4_1, 3072, 576),
            ("down", WeightFormat::Q4_1, 576, 1536),
            ("output", WeightFormat::Q8_0, 8192, 576),
        ];
        eprintln!("{tokens} tokens, one thread, fastest of 15 interleaved; load {:?}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
        for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
            for &(name, format, n_rows, cols) in &shapes {
                let rows = random_rows(format, n_rows, cols, &mut rng);
                let mut x = Q8Activations::default();
                x.quantize(&random_activations(tokens, cols, &mut rng), cols);
                let mut out = vec![0f32; n_rows * tokens];
                let mut best = [f64::INFINITY; 2];
                for _ in 0..15 {
                    for (i, tiling) in [Tiling::RowTimesFour, Tiling::Best].into_iter().enumerate() {
                        let started = std::time::Instant::now();
                        rows_dot_tiled(isa, format, cols, &rows, &x, &mut out, tiling);
                        best[i] = best[i].min(started.elapsed().as_secs_f64());
                    }
                }
                let [before, after] = best;
                let gmacs = |t: f64| (n_rows * cols * tokens) as f64 / t / 1e9;
                eprintln!(
                    "{isa:?} {name:>8}: 1 row × 4 {:.2} ms ({:.1} G MAC/s), blocked {:.2} ms ({:.1} G MAC/s): {:.2}x",
                    before * 1e3,
                    gmacs(before),
                    after * 1e3,
                    gmacs(after),
                    before / after
                );
            }
        }
    }
}
