//! Dot products of quantized weight panels with quantized activations, one implementation per
//! instruction set, chosen at run time.
//!
//! [`panels_dot_into`] computes `out(r, t) = W[r] · x[t]` for the rows of a run of
//! [`super::panel`]s and `T` activation vectors, into an [`OutView`] of either layout. Every
//! kernel computes, for each (row, token), the same sequence of f32 operations over the
//! blocks `b` in order:
//!
//! ```text
//! acc = fma(d_w[b] · d_x[b], Σ q_w · q_x, acc)   then, for Q4_1,   acc = fma(m_w[b], s_x[b], acc)
//! ```
//!
//! where the block's integer sum of 32 products is exact (`s_x = d_x · Σ q_x`, so the second
//! step adds the block minimum's share). llama.cpp's reference arithmetic for `Q4_1 × Q8_1` and
//! `Q8_0 × Q8_0` is the same per block, with separate sums for the two terms. Because the
//! integers are exact and the float steps the same, a result is bit for bit the same whatever
//! the instruction set, the tile, or the number of tokens sharing the call: prefill, batched
//! decode and one-pass scoring equal a single decode step exactly (what the verifier's seeded
//! replay relies on), and a verifier on another x86 generation reproduces a miner's logits.
//!
//! A SIMD lane is a row: a panel's 16 rows fill one 512-bit register of i32 sums (AVX-512
//! VNNI), or two 256-bit ones (AVX2, AVX-VNNI), and each `vpdpbusd` (or `vpmaddubsw` +
//! `vpmaddwd`) adds four products of a token's codes, broadcast, to all of them. In prefill a
//! tile is one panel × up to eight tokens, so each weight register is loaded and unpacked once
//! for eight tokens; in decode a tile is four panels × one token, four independent chains.
//! [`Isa::detect`] picks the best the CPU has, so one binary runs everywhere without
//! `-C target-cpu=native`. The scalar code is the portable fallback and the tests' reference.

use super::activation::{Q8Activations, Q8Row};
use super::block::{QK, WeightFormat, f16_at};
use super::panel::{MINS_AT, PANEL, block_codes, panel_block_bytes};

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
    /// AVX-512 F, BW and VNNI: a panel's 16 rows in one 512-bit register (Ice Lake, Zen 4,
    /// Zen 5, Sapphire Rapids).
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

/// The weights of one call: whole panels of one matrix, of which the first `rows` rows are
/// real (the rest of the last panel is padding, never written).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Panels<'a> {
    pub(crate) format: WeightFormat,
    /// Values per row.
    pub(crate) cols: usize,
    /// Real rows, at most `16 ·` the panels in `data`.
    pub(crate) rows: usize,
    /// Whole panels ([`super::panel`]).
    pub(crate) data: &'a [u8],
}

impl Panels<'_> {
    /// Blocks per row.
    fn nb(&self) -> usize {
        self.cols / QK
    }

    /// Bytes of one panel.
    fn panel_bytes(&self) -> usize {
        self.nb() * panel_block_bytes(self.format)
    }
}

/// One call's operands as the x86 tiles read them: panel `p`'s block `b` is at `w + p ·
/// panel_bytes + b · block_bytes`; token `t`'s codes start at `t · cols`, its scales, sums and
/// `128 · Σ q` at `t · nb`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Operands {
    /// Blocks per row.
    nb: usize,
    panel_bytes: usize,
    block_bytes: usize,
    /// Values per activation vector.
    cols: usize,
    /// Real rows.
    rows: usize,
    w: *const u8,
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    c: *const i32,
    out: OutView,
}

#[cfg(target_arch = "x86_64")]
impl Operands {
    fn new(w: Panels<'_>, x: &Q8Activations, out: OutView) -> Self {
        let (qs, d, s, c) = x.raw();
        Self {
            nb: w.nb(),
            panel_bytes: w.panel_bytes(),
            block_bytes: panel_block_bytes(w.format),
            cols: w.cols,
            rows: w.rows,
            w: w.data.as_ptr(),
            qs: qs.as_ptr(),
            d: d.as_ptr(),
            s: s.as_ptr(),
            c: c.as_ptr(),
            out,
        }
    }

    /// Block `b` of panel `p`.
    ///
    /// # Safety
    /// `p` and `b` are inside the call's panels and blocks.
    #[inline(always)]
    unsafe fn block(&self, p: usize, b: usize) -> *const u8 {
        // SAFETY: the caller's promise.
        unsafe { self.w.add(p * self.panel_bytes + b * self.block_bytes) }
    }

    /// Token `t`'s four codes of block `b` starting at value `k`, as one i32.
    ///
    /// # Safety
    /// `t` and `b` are inside the call's tokens and blocks, `k ≤ 28`.
    #[inline(always)]
    unsafe fn codes4(&self, t: usize, b: usize, k: usize) -> i32 {
        // SAFETY: the caller's promise; the read is unaligned.
        unsafe { (self.qs.add(t * self.cols + b * QK + k) as *const i32).read_unaligned() }
    }

    /// Token `t`'s `(d_x, s_x, 128 · Σ q_x)` of block `b`.
    ///
    /// # Safety
    /// As [`Self::codes4`].
    #[inline(always)]
    unsafe fn scales(&self, t: usize, b: usize) -> (f32, f32, i32) {
        let i = t * self.nb + b;
        // SAFETY: the caller's promise.
        unsafe { (*self.d.add(i), *self.s.add(i), *self.c.add(i)) }
    }

    /// Writes token `t`'s results of rows `r0..r0 + v.len()` (a panel or half of one), only
    /// those that are real rows.
    ///
    /// # Safety
    /// `t` is inside the call's tokens, and `out` covers them.
    #[inline(always)]
    unsafe fn store(&self, r0: usize, t: usize, v: &[f32]) {
        for (i, &v) in v.iter().enumerate().take(self.rows.saturating_sub(r0)) {
            // SAFETY: (r0 + i, t) is a real (row, token) of the call.
            unsafe { self.out.write(r0 + i, t, v) };
        }
    }
}

/// `out[r · x.rows() + t] = W[r] · x[t]` for every real row (the tests and the kernel bench;
/// the matmul calls [`panels_dot_into`]).
///
/// # Panics
/// When `out` is not `rows × x.rows()` or the shapes do not match.
#[cfg(test)]
pub(crate) fn panels_dot(isa: Isa, w: Panels<'_>, x: &Q8Activations, out: &mut [f32]) {
    assert_eq!(out.len(), w.rows * x.rows());
    // SAFETY: `out` holds rows × tokens values, row-major by row, and is borrowed mutably.
    let view = unsafe { OutView::new(out.as_mut_ptr(), x.rows(), 1) };
    // SAFETY: the view covers every (row, token) of these shapes.
    unsafe { panels_dot_into(isa, w, x, view) }
}

/// `out(r, t) = W[r] · x[t]` for every real row of `w`, into any [`OutView`].
///
/// # Safety
/// `out` covers every `(r, t)` with `r < w.rows` and `t` a token of `x` (see
/// [`OutView::new`]).
///
/// # Panics
/// When the activations are not `w.cols` wide, or `w.data` is not whole panels holding
/// `w.rows` rows.
pub(crate) unsafe fn panels_dot_into(isa: Isa, w: Panels<'_>, x: &Q8Activations, out: OutView) {
    assert!(w.cols.is_multiple_of(QK) && w.cols > 0 && w.data.len().is_multiple_of(w.panel_bytes()));
    assert!(w.rows <= w.data.len() / w.panel_bytes() * PANEL && w.rows > w.data.len() / w.panel_bytes() * PANEL - PANEL);
    assert_eq!(x.cols(), w.cols);
    match isa {
        Isa::Scalar => unsafe { scalar::panels_dot(w, x, out) },
        // SAFETY (all three): `available()` only lists an instruction set after
        // `is_x86_feature_detected!` confirmed every feature its functions enable, the shapes
        // were checked above, and the caller promised `out`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::panels_dot(Operands::new(w, x, out), w.format, x.rows()) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { avxvnni::panels_dot(Operands::new(w, x, out), w.format, x.rows()) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { avx512::panels_dot(Operands::new(w, x, out), w.format, x.rows()) },
    }
}

#[cfg(target_arch = "x86_64")]
mod avx256;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
use avx256::{avx2, avxvnni};

/// The portable kernel and the tests' reference: the arithmetic of the module docs, in plain
/// Rust, one (row, token) at a time.
mod scalar {
    use super::*;

    /// # Safety
    /// `out` covers every (real row, token) of these shapes.
    pub(super) unsafe fn panels_dot(w: Panels<'_>, x: &Q8Activations, out: OutView) {
        let (nb, bb) = (w.nb(), panel_block_bytes(w.format));
        let mut codes = vec![[0i32; QK]; nb];
        let (mut dw, mut mw) = (vec![0f32; nb], vec![0f32; nb]);
        for r in 0..w.rows {
            let (p, i) = (r / PANEL, r % PANEL);
            for b in 0..nb {
                let block = &w.data[(p * nb + b) * bb..][..bb];
                block_codes(w.format, block, i, &mut codes[b]);
                dw[b] = f16_at(block, 2 * i);
                mw[b] = f16_at(block, MINS_AT + 2 * i);
            }
            for t in 0..x.rows() {
                let v = dot(w.format, &codes, &dw, &mw, x.row(t));
                // SAFETY: (r, t) is a real (row, token) of these shapes.
                unsafe { out.write(r, t, v) };
            }
        }
    }

    /// One row (its codes, scales and minimums per block) times one activation vector.
    fn dot(format: WeightFormat, codes: &[[i32; QK]], dw: &[f32], mw: &[f32], x: Q8Row<'_>) -> f32 {
        let mut acc = 0f32;
        for (b, codes) in codes.iter().enumerate() {
            let q = &x.qs[b * QK..(b + 1) * QK];
            let sum: i32 = codes.iter().zip(q).map(|(&w, &q)| w * i32::from(q)).sum();
            acc = (dw[b] * x.d[b]).mul_add(sum as f32, acc);
            if format == WeightFormat::Q4_1 {
                acc = mw[b].mul_add(x.s[b], acc);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use half::f16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::panel::pack;
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

    fn run(isa: Isa, w: Panels<'_>, x: &Q8Activations) -> Vec<f32> {
        let mut out = vec![0f32; w.rows * x.rows()];
        panels_dot(isa, w, x, &mut out);
        out
    }

    /// Every instruction set, every number of tokens sharing the call (each tile shape, the
    /// decode and prefill paths) and every token alone give each (row, token) the scalar
    /// reference's value bit for bit. Rows 39 leave a partial last panel.
    #[test]
    fn every_kernel_gives_the_references_bits_whatever_shares_the_call() {
        let mut rng = StdRng::seed_from_u64(21);
        for (n_rows, cols) in [(39, 192), (80, 64)] {
            for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
                let data = pack(format, n_rows, cols, &random_rows(format, n_rows, cols, &mut rng));
                let w = Panels { format, cols, rows: n_rows, data: &data };
                for tokens in [1, 2, 3, 4, 5, 8, 11, 13, 19] {
                    let xf = random_activations(tokens, cols, &mut rng);
                    let mut x = Q8Activations::default();
                    x.quantize(&xf, cols);
                    let reference = run(Isa::Scalar, w, &x);
                    for isa in Isa::available() {
                        let got = run(isa, w, &x);
                        let same = got.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{format:?} {isa:?} {tokens} tokens differ from the reference");
                        // Each token alone (one activation vector per call, the decode shape).
                        for t in 0..tokens {
                            let mut one = Q8Activations::default();
                            one.quantize(&xf[t * cols..(t + 1) * cols], cols);
                            let alone = run(isa, w, &one);
                            for (r, v) in alone.iter().enumerate() {
                                assert_eq!(v.to_bits(), reference[r * tokens + t].to_bits(), "{format:?} {isa:?} row {r} token {t}/{tokens}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The reference itself against the plain formula in f64 (a slip in the panel reading or
    /// the scaling would be far outside f32 rounding).
    #[test]
    fn the_reference_is_the_block_formula() {
        let mut rng = StdRng::seed_from_u64(5);
        let (n_rows, cols) = (21, 576);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let rows = random_rows(format, n_rows, cols, &mut rng);
            let data = pack(format, n_rows, cols, &rows);
            let mut x = Q8Activations::default();
            x.quantize(&random_activations(6, cols, &mut rng), cols);
            let got = run(Isa::Scalar, Panels { format, cols, rows: n_rows, data: &data }, &x);
            let row_bytes = format.row_bytes(cols);
            let mut want = Vec::new();
            for r in 0..n_rows {
                let mut w = vec![0f32; cols];
                format.dequantize_row(&rows[r * row_bytes..(r + 1) * row_bytes], &mut w);
                for t in 0..6 {
                    let xr = x.row(t);
                    want.push((0..cols).map(|j| f64::from(w[j]) * f64::from(xr.qs[j]) * f64::from(xr.d[j / QK])).sum::<f64>());
                }
            }
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            for (i, (&a, &want)) in got.iter().zip(&want).enumerate() {
                // Q4_1's minimum uses the f16-rounded block sum, like llama.cpp.
                let tol = if format == WeightFormat::Q4_1 { 2e-3 } else { 2e-5 } * scale;
                assert!((f64::from(a) - want).abs() <= tol, "{format:?} ({}, {}): {a} vs {want}", i / 6, i % 6);
            }
        }
    }

    /// Kernel micro-bench (`cargo test -p heurist-inference --release --lib kernel_speed --
    /// --ignored --nocapture`): SmolLM2-135M's matrices times a 128-token prompt, one thread,
    /// every instruction set, fastest of 15.
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
        eprintln!("{tokens} tokens, one thread, fastest of 15; load {:?}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
        for &(name, format, n_rows, cols) in &shapes {
            let data = pack(format, n_rows, cols, &random_rows(format, n_rows, cols, &mut rng));
            let w = Panels { format, cols, rows: n_rows, data: &data };
            let mut x = Q8Activations::default();
            x.quantize(&random_activations(tokens, cols, &mut rng), cols);
            let mut out = vec![0f32; n_rows * tokens];
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
                let mut best = f64::INFINITY;
                for _ in 0..15 {
                    let started = std::time::Instant::now();
                    panels_dot(isa, w, &x, &mut out);
                    best = best.min(started.elapsed().as_secs_f64());
                }
                let gmacs = (n_rows * cols * tokens) as f64 / best / 1e9;
                eprintln!("{isa:?} {name:>8}: {:.3} ms, {gmacs:.1} G MAC/s", best * 1e3);
            }
        }
    }
}
