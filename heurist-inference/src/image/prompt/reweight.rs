//! Applying prompt weights to text-encoder outputs, the two reference pipelines' two rules.
//!
//! Both work in the embeddings' own dtype (f16 in the miner, f32 on the CPU) with the casts the
//! reference makes, so that f16 results round where torch's do:
//! - SD 1.5 (`get_weighted_text_embeddings`): the weights are cast to the embeddings' dtype;
//!   `mean` is taken in f32 over tokens and hidden units and cast back (we sum in f64, see
//!   [`apply_weights_sd15`]); then
//!   `e *= w; e *= mean_before / mean_after` (the division in the embeddings' dtype);
//! - SDXL (`get_weighted_text_embeddings_sdxl`): weights are f16 (`torch.float16` whatever the
//!   embeddings' dtype), and each position whose f16 weight is not 1.0 becomes
//!   `last + (e - last) * w`, `last` being the chunk's final (EOS) position; other positions are
//!   left bit for bit as they are.

use candle_core::{DType, Device, Tensor};

use super::PromptError;

/// SD 1.5's rule on the concatenated encoder output of one prompt: `[tokens, hidden]` or
/// `[batch, tokens, hidden]` (every batch entry weighted alike), `weights` one per token
/// ([`super::PromptChunks::flat_weights`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use heurist_inference::image::prompt::apply_weights_sd15;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let e = Tensor::new(&[[1.0f32, 1.0], [2.0, 2.0]], &Device::Cpu)?;
/// // Row 0 doubled (mean 1.5 → 2.0), then everything scaled by 1.5 / 2.0.
/// let w = apply_weights_sd15(&e, &[2.0, 1.0])?;
/// assert_eq!(w.to_vec2::<f32>()?, [[1.5, 1.5], [1.5, 1.5]]);
/// # Ok(())
/// # }
/// ```
pub fn apply_weights_sd15(embeddings: &Tensor, weights: &[f64]) -> Result<Tensor, PromptError> {
    let e = as_batch(embeddings, weights.len())?;
    let dtype = e.dtype();
    let w = weight_column(weights, e.device())?.to_dtype(dtype)?;
    // torch takes this f32 mean with a pairwise sum, nearly exact; candle's f32 sum runs in
    // order and drifts with the length. Summing in f64 and rounding to f32 lands on torch's value
    // or next to it. It matters: the mean of an embedding is small against its entries, so the
    // ratio of two means magnifies any error in them.
    let mean = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.to_dtype(DType::F32)?
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .mean_keepdim(1)?
            .unsqueeze(2)?
            .to_dtype(DType::F32)?
            .to_dtype(dtype)
    };
    let before = mean(&e)?;
    let weighted = e.broadcast_mul(&w)?;
    let after = mean(&weighted)?;
    let scaled = weighted.broadcast_mul(&(before / after)?)?;
    Ok(scaled.reshape(embeddings.shape())?)
}

/// SDXL's rule on one chunk's concatenated hidden states: `[tokens, hidden]` or
/// `[1, tokens, hidden]`, `weights` one per token of the chunk.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use heurist_inference::image::prompt::apply_weights_sdxl;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let e = Tensor::new(&[[0.0f32, 0.0], [3.0, 5.0], [1.0, 1.0]], &Device::Cpu)?;
/// let w = apply_weights_sdxl(&e, &[1.0, 1.5, 1.0])?;
/// assert_eq!(w.to_vec2::<f32>()?, [[0.0, 0.0], [4.0, 7.0], [1.0, 1.0]]);
/// # Ok(())
/// # }
/// ```
pub fn apply_weights_sdxl(embeddings: &Tensor, weights: &[f64]) -> Result<Tensor, PromptError> {
    let e = as_batch(embeddings, weights.len())?;
    let (_, tokens, _) = e.dims3()?;
    // torch.tensor(weights, dtype=torch.float16): each Python float through f32 to f16.
    let w16 = weight_column(weights, &Device::Cpu)?
        .to_dtype(DType::F16)?
        .to_dtype(DType::F32)?;
    let w16_values = w16.flatten_all()?.to_vec1::<f32>()?;
    if w16_values.iter().all(|&w| w == 1.0) {
        return Ok(embeddings.clone());
    }
    let changed: Vec<u8> = w16_values.iter().map(|&w| u8::from(w != 1.0)).collect();
    let device = e.device();
    let w = w16.to_device(device)?.to_dtype(e.dtype())?;
    let last = e.narrow(1, tokens - 1, 1)?;
    let moved = last.broadcast_add(&e.broadcast_sub(&last)?.broadcast_mul(&w)?)?;
    let mask = Tensor::from_vec(changed, (1, tokens, 1), device)?.broadcast_as(e.shape())?;
    Ok(mask.where_cond(&moved, &e)?.reshape(embeddings.shape())?)
}

/// `embeddings` as `[batch, tokens, hidden]`, checking `tokens` against the weights.
fn as_batch(embeddings: &Tensor, weights: usize) -> Result<Tensor, PromptError> {
    let shape_error = || PromptError::EmbeddingShape {
        shape: embeddings.dims().to_vec(),
        weights,
    };
    let e = match *embeddings.dims() {
        [tokens, _] if tokens == weights => embeddings.unsqueeze(0)?,
        [_, tokens, _] if tokens == weights => embeddings.clone(),
        _ => return Err(shape_error()),
    };
    if weights == 0 {
        return Err(shape_error());
    }
    Ok(e)
}

/// The weights as an f32 `[1, tokens, 1]` column (Python float to the tensor's f32, as torch).
fn weight_column(weights: &[f64], device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    Tensor::from_vec(values, (1, weights.len(), 1), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weights_leave_sdxl_chunks_untouched_and_shapes_are_checked() {
        let e = Tensor::new(&[[0.1f32, 0.2], [0.3, 0.4]], &Device::Cpu).unwrap();
        // 1.0001 rounds to 1.0 in f16, so the row is not touched at all.
        let same = apply_weights_sdxl(&e, &[1.0001, 1.0]).unwrap();
        assert_eq!(same.to_vec2::<f32>().unwrap(), e.to_vec2::<f32>().unwrap());
        assert!(matches!(
            apply_weights_sd15(&e, &[1.0, 1.0, 1.0]),
            Err(PromptError::EmbeddingShape { shape, weights: 3 }) if shape == [2, 2]
        ));
    }
}
