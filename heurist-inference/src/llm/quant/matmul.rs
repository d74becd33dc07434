//! A quantized weight matrix and its product with quantized activations, rows split across
//! the CPU pool.
//!
//! `y[t][r] = W[r] · x[t]`: the matrix is held as panels of 16 rows ([`super::panel`]), cut
//! into chunks of panels that the pool's threads take (several chunks per thread so an
//! unlucky thread does not hold the others up); each chunk multiplies
//! its rows with every activation vector, so a chunk's weights are read once per matmul even
//! when the prompt has hundreds of tokens. Callers run this inside [`super::pool`]'s
//! `install`, where the current thread does its share instead of waiting.

use rayon::prelude::*;

use super::activation::Q8Activations;
use super::block::{QK, WeightFormat};
use super::kernels::{Isa, OutView, Panels, panels_dot_into};
use super::panel::{PANEL, pack, panel_block_bytes, unpack_row};

/// A matrix of `rows × cols` weights in one GGUF block format, as panels.
#[derive(Debug, Clone)]
pub(crate) struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    /// `rows.div_ceil(16)` panels.
    panels: Vec<u8>,
}

/// The bytes do not make the matrix they are said to make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MatrixError {
    /// A row length that is not a whole number of blocks.
    #[error("{cols} columns is not a multiple of the block size {QK}")]
    Cols {
        /// The row length.
        cols: usize,
    },
    /// Fewer or more bytes than the shape needs.
    #[error("{rows}×{cols} {format:?} needs {needed} bytes, found {found}")]
    Bytes {
        /// The format.
        format: WeightFormat,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes the shape needs.
        needed: usize,
        /// Bytes given.
        found: usize,
    },
    /// Matrices stacked together must share their format and row length.
    #[error("cannot stack a {0:?} matrix of {1} columns onto a {2:?} matrix of {3} columns")]
    Stack(WeightFormat, usize, WeightFormat, usize),
}

impl QMatrix {
    /// Packs `data` (GGUF rows), checking it holds `rows × cols` values in `format`.
    pub(crate) fn new(format: WeightFormat, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, MatrixError> {
        if cols == 0 || !cols.is_multiple_of(QK) {
            return Err(MatrixError::Cols { cols });
        }
        let needed = rows.saturating_mul(format.row_bytes(cols));
        if data.len() != needed {
            return Err(MatrixError::Bytes { format, rows, cols, needed, found: data.len() });
        }
        Ok(Self { format, rows, cols, panels: pack(format, rows, cols, &data) })
    }

    /// The rows of `parts`, one after another, as one matrix: one matmul instead of several
    /// over the same activations (Q, K and V; gate and up).
    pub(crate) fn stack(parts: Vec<QMatrix>) -> Result<Self, MatrixError> {
        let Some(first) = parts.first() else { return Err(MatrixError::Cols { cols: 0 }) };
        let (format, cols) = (first.format, first.cols);
        if let Some(part) = parts.iter().find(|p| (p.format, p.cols) != (format, cols)) {
            return Err(MatrixError::Stack(part.format, part.cols, format, cols));
        }
        // Back to rows and packed again: a part's last panel may be partly padding.
        let row_bytes = format.row_bytes(cols);
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let mut data = vec![0u8; rows * row_bytes];
        let mut at = data.chunks_exact_mut(row_bytes);
        for part in &parts {
            for (r, row) in (0..part.rows).zip(&mut at) {
                unpack_row(format, cols, &part.panels, r, row);
            }
        }
        Self::new(format, rows, cols, data)
    }

    /// Rows (outputs).
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    #[cfg(test)]
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// The block format.
    #[cfg(test)]
    pub(crate) fn format(&self) -> WeightFormat {
        self.format
    }

    /// Row `r`, dequantized into `out` (`cols` values).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let mut row = [0u8; 4096];
        let bytes = self.format.row_bytes(self.cols);
        if bytes <= row.len() {
            unpack_row(self.format, self.cols, &self.panels, r, &mut row[..bytes]);
            self.format.dequantize_row(&row[..bytes], out);
        } else {
            let mut row = vec![0u8; bytes];
            unpack_row(self.format, self.cols, &self.panels, r, &mut row);
            self.format.dequantize_row(&row, out);
        }
    }

    /// `out[t · rows + r] = W[r] · x[t]` for every activation vector in `x`.
    ///
    /// The row range is split among the pool's threads; each writes its rows of every token
    /// straight into `out` (`[token][row]`, the layout the next operation reads), so no
    /// transpose follows, and a (row, token) sum is the same whoever computes it.
    ///
    /// # Panics
    /// When `x` does not have `cols` values per vector (the model's shapes make it so).
    pub(crate) fn matmul(&self, isa: Isa, x: &Q8Activations, out: &mut Vec<f32>) {
        assert_eq!(x.cols(), self.cols, "activation width");
        let tokens = x.rows();
        // Every cell is written below: what a reused buffer held does not matter.
        out.resize(tokens * self.rows, 0.0);
        let panel_bytes = self.cols / QK * panel_block_bytes(self.format);
        let threads = rayon::current_num_threads().max(1);
        let chunk_panels = self.rows.div_ceil(PANEL).div_ceil(threads * 8).max(1);
        // SAFETY: `out` holds tokens × rows values and stays borrowed until every task is done;
        // task i writes only the real rows of its chunk's panels (disjoint cells).
        let view = unsafe { OutView::new(out.as_mut_ptr(), 1, self.rows) };
        self.panels.par_chunks(chunk_panels * panel_bytes).enumerate().for_each(|(i, data)| {
            let r0 = i * chunk_panels * PANEL;
            let w = Panels { format: self.format, cols: self.cols, rows: (self.rows - r0).min(data.len() / panel_bytes * PANEL), data };
            // SAFETY: this chunk's rows, offset to their place, × every token: inside `out`.
            let view = unsafe { view.offset_rows(r0) };
            // SAFETY: as above; the shapes were checked.
            unsafe { panels_dot_into(isa, w, x, view) };
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Random weights quantized by candle (an independent quantizer), as `QMatrix` and QTensor.
    fn weights(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> (QMatrix, QTensor) {
        let mut rng = StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0f32)).collect();
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let dtype = match format {
            WeightFormat::Q4_1 => GgmlDType::Q4_1,
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
        };
        let q = QTensor::quantize(&t, dtype).unwrap();
        (QMatrix::new(format, rows, cols, q.data().unwrap().into_owned()).unwrap(), q)
    }

    fn activations(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        // Mixed magnitudes per block, a zero block, and large outliers, as real activations have.
        (0..tokens * cols)
            .map(|i| match i % 97 {
                0 => 40.0,
                _ if (i / 32) % 7 == 3 => 0.0,
                _ => rng.random_range(-3.0..3.0f32),
            })
            .collect()
    }

    /// `Σ_j W[r][j] · x̂[t][j]` in f64 with candle's dequantized weights and our dequantized
    /// activations: what the integer kernels must equal up to f32 rounding.
    fn exact(q: &QTensor, x: &Q8Activations) -> Vec<f64> {
        let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let mut out = Vec::new();
        for t in 0..x.rows() {
            let row = x.row(t);
            let xh: Vec<f64> =
                row.qs.iter().enumerate().map(|(j, &c)| f64::from(c) * f64::from(row.d[j / QK])).collect();
            for wr in &w {
                out.push(wr.iter().zip(&xh).map(|(&a, &b)| f64::from(a) * b).sum());
            }
        }
        out
    }

    #[test]
    fn every_kernel_equals_the_exact_quantized_product() {
        let (rows, cols) = (37, 160);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let (m, q) = weights(format, rows, cols, 7);
            for tokens in [1, 3, 4, 9] {
                let mut x = Q8Activations::default();
                x.quantize(&activations(tokens, cols, tokens as u64), cols);
                let want = exact(&q, &x);
                let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
                for isa in Isa::available() {
                    let mut out = Vec::new();
                    m.matmul(isa, &x, &mut out);
                    assert_eq!(out.len(), tokens * rows);
                    for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                        // Q4_1's minimum uses the f16-rounded block sum, like llama.cpp.
                        let tol = if format == WeightFormat::Q4_1 { 2e-3 } else { 2e-5 } * scale;
                        assert!(
                            (f64::from(got) - want).abs() <= tol,
                            "{format:?} {isa:?} {tokens} tokens, output {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_kernels_equal_the_scalar_reference() {
        let (rows, cols) = (64, 576);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let (m, _) = weights(format, rows, cols, 3);
            let mut x = Q8Activations::default();
            x.quantize(&activations(6, cols, 5), cols);
            let mut reference = Vec::new();
            m.matmul(Isa::Scalar, &x, &mut reference);
            for isa in Isa::available() {
                let mut out = Vec::new();
                m.matmul(isa, &x, &mut out);
                for (i, (&a, &b)) in out.iter().zip(&reference).enumerate() {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{format:?} {isa:?} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn matmul_agrees_with_candles_quantized_matmul() {
        let (rows, cols, tokens) = (48, 256, 5);
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let (m, q) = weights(format, rows, cols, 11);
            let xf = activations(tokens, cols, 13);
            let mut x = Q8Activations::default();
            x.quantize(&xf, cols);
            let mut ours = Vec::new();
            m.matmul(Isa::detect(), &x, &mut ours);
            let input = Tensor::from_vec(xf.clone(), (tokens, cols), &Device::Cpu).unwrap();
            let w = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let theirs = QMatMul::from_qtensor(q).unwrap().forward(&input).unwrap();
            let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // candle may or may not quantize the activations; either way both results lie
            // within the activation rounding bound Σ |w_j| · d_j / 2 of the exact product.
            for (i, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
                let (t, r) = (i / rows, i % rows);
                let row = x.row(t);
                let bound: f32 = w[r].iter().enumerate().map(|(j, wj)| wj.abs() * row.d[j / QK] / 2.0).sum();
                assert!((a - b).abs() <= 2.0 * bound + 1e-3, "{format:?} [{i}]: {a} vs {b} (bound {bound})");
            }
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert_eq!(QMatrix::new(WeightFormat::Q4_1, 2, 40, vec![0; 40]).unwrap_err(), MatrixError::Cols { cols: 40 });
        assert!(matches!(
            QMatrix::new(WeightFormat::Q8_0, 2, 32, vec![0; 67]),
            Err(MatrixError::Bytes { needed: 68, found: 67, .. })
        ));
        let a = QMatrix::new(WeightFormat::Q8_0, 1, 32, vec![0; 34]).unwrap();
        let b = QMatrix::new(WeightFormat::Q4_1, 1, 32, vec![0; 20]).unwrap();
        assert!(matches!(QMatrix::stack(vec![a.clone(), b]), Err(MatrixError::Stack(..))));
        let stacked = QMatrix::stack(vec![a.clone(), a]).unwrap();
        assert_eq!((stacked.rows(), stacked.cols(), stacked.format()), (2, 32, WeightFormat::Q8_0));
    }
}

