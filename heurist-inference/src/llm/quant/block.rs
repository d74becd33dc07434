//! The GGUF block formats the CPU kernels read in place, as llama.cpp writes them.
//!
//! Weights stay in the file's bytes: a row of `cols` values is `cols / 32` blocks back to back.
//! - Q4_1 (20 bytes): `d: f16`, `m: f16`, then 16 bytes of 4-bit codes; value `j < 16` is the
//!   low nibble of byte `j`, value `j + 16` its high nibble; `x = d · q + m`.
//! - Q8_0 (34 bytes): `d: f16`, then 32 signed bytes; `x = d · q`.
//!
//! The scalar dequantizers here are the reference the kernels are tested against, and how a
//! token's embedding row is read.

use half::f16;

/// Values per block, for every format here.
pub(crate) const QK: usize = 32;

/// A quantized weight format the CPU kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightFormat {
    /// 4-bit codes with a scale and a minimum per block of 32.
    Q4_1,
    /// 8-bit codes with a scale per block of 32.
    Q8_0,
}

impl WeightFormat {
    /// The format of a GGUF tensor type, `None` for one the kernels do not multiply.
    pub(crate) fn from_ggml(dtype: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType;
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one block.
    pub(crate) const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of [`QK`]).
    pub(crate) const fn row_bytes(self, cols: usize) -> usize {
        cols / QK * self.block_bytes()
    }

    /// Dequantizes one row: `row` holds `out.len() / 32` blocks.
    pub(crate) fn dequantize_row(self, row: &[u8], out: &mut [f32]) {
        let blocks = row.chunks_exact(self.block_bytes()).zip(out.chunks_exact_mut(QK));
        match self {
            Self::Q4_1 => {
                for (block, out) in blocks {
                    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                    for (j, &byte) in block[4..20].iter().enumerate() {
                        out[j] = d * f32::from(byte & 0x0f) + m;
                        out[j + 16] = d * f32::from(byte >> 4) + m;
                    }
                }
            }
            Self::Q8_0 => {
                for (block, out) in blocks {
                    let d = f16_at(block, 0);
                    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                        *o = d * f32::from(q as i8);
                    }
                }
            }
        }
    }
}

/// The little-endian f16 at `block[at..at + 2]`, widened.
pub(crate) fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantizes_hand_made_blocks() {
        let mut q41 = Vec::new();
        q41.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        q41.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; QK];
        WeightFormat::Q4_1.dequantize_row(&q41, &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[3], 0.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);

        let mut q80 = Vec::new();
        q80.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        q80.extend((0..32i8).map(|j| (j - 16) as u8));
        WeightFormat::Q8_0.dequantize_row(&q80, &mut out);
        assert_eq!(out[0], -4.0);
        assert_eq!(out[31], 3.75);
    }
}
