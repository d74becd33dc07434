//! Weights as the kernels read them: the GGUF blocks of 16 rows interleaved into panels.
//!
//! A GGUF row is its blocks back to back ([`super::block`]), so a kernel that wants a whole
//! block's integer dot product in one SIMD lane has to sum lanes across the register. In a
//! panel the same bytes are reordered so that one 64-byte load holds four codes of each of 16
//! rows: a lane is a row, `vpdpbusd` with a token's four codes broadcast adds four products
//! to each row's sum, and eight of them give every row's block sum with no horizontal step.
//! The tokens of a prompt then share each loaded weight register, and the scaling by
//! `d_w · d_x` is one multiply and one fused add per 16 (row, token) results instead of per
//! 64 products.
//!
//! Block `b` of a panel is `block_bytes · 16` bytes, the panel's blocks back to back:
//! - Q4_1 (320 bytes): the 16 rows' `d` (f16), their 16 `m` (f16), then four groups of 64
//!   bytes; group `g` holds code bytes `4g..4g + 4` of each row in turn (row `i` at `64g +
//!   4i`). A byte's low nibble is value `k`, its high nibble value `k + 16`, as in the file.
//! - Q8_0 (544 bytes): the 16 `d` (f16), then eight groups of 64 bytes, group `g` values
//!   `4g..4g + 4` of each row, each stored as `q + 128` (`q ^ 0x80`), the unsigned operand
//!   `vpdpbusd` multiplies (the kernels take `128 · Σ x` back off).
//!
//! Rows past the last are zero (a zero scale and minimum), and no kernel writes them. The
//! sizes equal the file's, so decode streams as many bytes as it would from the GGUF layout.

use super::block::{QK, WeightFormat};

/// Rows per panel: one 512-bit register of i32 lanes.
pub(crate) const PANEL: usize = 16;

/// Bytes of the codes of four values of every row of a panel.
const GROUP: usize = 4 * PANEL;

/// Bytes of a block's scales (and Q4_1's minimums) in a panel: 16 f16 each.
const SCALES: usize = 2 * PANEL;

/// Bytes one block of a panel takes.
pub(crate) const fn panel_block_bytes(format: WeightFormat) -> usize {
    format.block_bytes() * PANEL
}

/// Offset of the code groups in a panel block.
pub(crate) const fn codes_at(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q4_1 => 2 * SCALES,
        WeightFormat::Q8_0 => SCALES,
    }
}

/// Offset of Q4_1's minimums in a panel block.
pub(crate) const MINS_AT: usize = SCALES;

/// Rows `rows` of `data` (GGUF layout, `cols` values each) as panels; the last panel is padded
/// with zero rows.
pub(crate) fn pack(format: WeightFormat, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let (nb, bb) = (cols / QK, format.block_bytes());
    let row_bytes = nb * bb;
    let panels = rows.div_ceil(PANEL);
    let mut out = vec![0u8; panels * nb * panel_block_bytes(format)];
    for (r, row) in data.chunks_exact(row_bytes).take(rows).enumerate() {
        let (p, i) = (r / PANEL, r % PANEL);
        for (b, block) in row.chunks_exact(bb).enumerate() {
            let at = (p * nb + b) * panel_block_bytes(format);
            let dst = &mut out[at..at + panel_block_bytes(format)];
            dst[2 * i..2 * i + 2].copy_from_slice(&block[..2]);
            let codes = codes_at(format);
            match format {
                WeightFormat::Q4_1 => {
                    dst[MINS_AT + 2 * i..MINS_AT + 2 * i + 2].copy_from_slice(&block[2..4]);
                    for g in 0..4 {
                        let o = codes + g * GROUP + 4 * i;
                        dst[o..o + 4].copy_from_slice(&block[4 + 4 * g..8 + 4 * g]);
                    }
                }
                WeightFormat::Q8_0 => {
                    for g in 0..8 {
                        let o = codes + g * GROUP + 4 * i;
                        for (d, &q) in dst[o..o + 4].iter_mut().zip(&block[2 + 4 * g..6 + 4 * g]) {
                            *d = q ^ 0x80;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Row `r` back in the GGUF layout (`row` is one row's bytes): what [`pack`] took.
pub(crate) fn unpack_row(format: WeightFormat, cols: usize, panels: &[u8], r: usize, row: &mut [u8]) {
    let (nb, bb) = (cols / QK, format.block_bytes());
    let (p, i) = (r / PANEL, r % PANEL);
    for (b, block) in row.chunks_exact_mut(bb).enumerate().take(nb) {
        let at = (p * nb + b) * panel_block_bytes(format);
        let src = &panels[at..at + panel_block_bytes(format)];
        block[..2].copy_from_slice(&src[2 * i..2 * i + 2]);
        let codes = codes_at(format);
        match format {
            WeightFormat::Q4_1 => {
                block[2..4].copy_from_slice(&src[MINS_AT + 2 * i..MINS_AT + 2 * i + 2]);
                for g in 0..4 {
                    let o = codes + g * GROUP + 4 * i;
                    block[4 + 4 * g..8 + 4 * g].copy_from_slice(&src[o..o + 4]);
                }
            }
            WeightFormat::Q8_0 => {
                for g in 0..8 {
                    let o = codes + g * GROUP + 4 * i;
                    for (d, &q) in block[2 + 4 * g..6 + 4 * g].iter_mut().zip(&src[o..o + 4]) {
                        *d = q ^ 0x80;
                    }
                }
            }
        }
    }
}

/// The 32 integer codes of row `i` of a panel block (Q4_1: 0..16, Q8_0: −128..128), in
/// value order: the scalar kernel's view.
pub(crate) fn block_codes(format: WeightFormat, block: &[u8], i: usize, codes: &mut [i32; QK]) {
    let at = codes_at(format);
    match format {
        WeightFormat::Q4_1 => {
            for g in 0..4 {
                for j in 0..4 {
                    let byte = block[at + g * GROUP + 4 * i + j];
                    codes[4 * g + j] = i32::from(byte & 0x0f);
                    codes[16 + 4 * g + j] = i32::from(byte >> 4);
                }
            }
        }
        WeightFormat::Q8_0 => {
            for g in 0..8 {
                for j in 0..4 {
                    codes[4 * g + j] = i32::from((block[at + g * GROUP + 4 * i + j] ^ 0x80) as i8);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing then unpacking gives back every row's bytes, for a row count that leaves a
    /// partial last panel.
    #[test]
    fn pack_then_unpack_is_the_identity() {
        for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
            let (rows, cols) = (37, 96);
            let row_bytes = format.row_bytes(cols);
            let data: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 7 + i / 13) as u8).collect();
            let panels = pack(format, rows, cols, &data);
            assert_eq!(panels.len(), 3 * (cols / QK) * panel_block_bytes(format));
            let mut row = vec![0u8; row_bytes];
            for r in 0..rows {
                unpack_row(format, cols, &panels, r, &mut row);
                assert_eq!(row, data[r * row_bytes..(r + 1) * row_bytes], "{format:?} row {r}");
            }
            // Row 5's block 1 codes, read from the panel, are the file's.
            let mut codes = [0i32; QK];
            let block = &panels[panel_block_bytes(format)..2 * panel_block_bytes(format)];
            block_codes(format, block, 5, &mut codes);
            let file = &data[5 * row_bytes + format.block_bytes()..][..format.block_bytes()];
            match format {
                WeightFormat::Q4_1 => {
                    assert_eq!(codes[3], i32::from(file[4 + 3] & 0x0f));
                    assert_eq!(codes[19], i32::from(file[4 + 3] >> 4));
                }
                WeightFormat::Q8_0 => assert_eq!(codes[30], i32::from(file[2 + 30] as i8)),
            }
        }
    }
}
