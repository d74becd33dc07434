//! Group normalisation (diffusers' `GroupNorm`), optionally followed by SiLU, in one pass over
//! each group on the CPU.
//!
//! candle's `GroupNorm` is a chain of tensor ops (mean, subtract, square, mean, divide, scale,
//! shift), each a full pass over the activations and most of them on one thread, and the SiLU
//! the UNet's resnets apply next is another two. Here each (image, group) is one task: its mean
//! and variance in f64 in two reads, then one write of `silu(x · scale + shift)` with the
//! per-channel scale and shift folded. On other devices and dtypes, candle's ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::simd;

/// `GroupNorm(groups, channels, eps)` with an affine weight and bias.
pub(crate) struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Reads `weight` and `bias` (`channels` each) from `vb`.
    pub(crate) fn new(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            inner,
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// The normalised `xs`.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }

    /// `silu(norm(xs))`, as the resnets and the UNet's output take it.
    pub(crate) fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        if xs.device().is_cpu() && xs.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            let op = CpuGroupNorm {
                weight: self.weight.to_vec1()?,
                bias: self.bias.to_vec1()?,
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            return xs.contiguous()?.apply_op1_no_bwd(&op);
        }
        let ys = self.inner.forward(xs)?;
        if silu {
            candle_nn::ops::silu(&ys)
        } else {
            Ok(ys)
        }
    }
}

struct CpuGroupNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp1 for CpuGroupNorm {
    fn name(&self) -> &'static str {
        "heurist-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("group norm: the input must be f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("group norm: the input must be contiguous")
        };
        let dims = layout.dims();
        if dims.len() < 3 {
            bail!("group norm: the input must be (batch, channels, ...), not {dims:?}");
        }
        let channels = dims[1];
        if channels != self.weight.len() || !channels.is_multiple_of(self.groups) {
            bail!(
                "group norm: {channels} channels for {} weights in {} groups",
                self.weight.len(),
                self.groups
            );
        }
        let x = &data[start..end];
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let mut out = vec![0f32; x.len()];
        let avx2 = simd::avx2_available();
        if !out.is_empty() {
            out.par_chunks_mut(per_group * spatial)
                .zip(x.par_chunks(per_group * spatial))
                .enumerate()
                .for_each(|(task, (dst, src))| {
                    let n = src.len() as f64;
                    let mean = src.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                    let var = src
                        .iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    let inv_std = 1.0 / (var + self.eps).sqrt();
                    let first = (task % self.groups) * per_group;
                    for (c, (d, s)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate()
                    {
                        let scale = (f64::from(self.weight[first + c]) * inv_std) as f32;
                        let shift =
                            (f64::from(self.bias[first + c]) - mean * f64::from(scale)) as f32;
                        for (d, &s) in d.iter_mut().zip(s) {
                            *d = s.mul_add(scale, shift);
                        }
                    }
                    if self.silu {
                        simd::silu(dst, avx2);
                    }
                });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_cpu_kernel_equals_candles_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 64, 5, 7), &dev)
            .unwrap()
            .affine(3.0, 1.5)
            .unwrap();
        let weight = Tensor::randn(1f32, 0.2, 64, &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.2, 64, &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            [
                ("weight".to_owned(), weight.clone()),
                ("bias".to_owned(), bias.clone()),
            ]
            .into(),
            DType::F32,
            &dev,
        );
        let norm = GroupNorm::new(32, 64, 1e-5, vb).unwrap();
        let reference = candle_nn::GroupNorm::new(weight, bias, 64, 32, 1e-5)
            .unwrap()
            .forward(&x)
            .unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(max_diff(&norm.forward(&x).unwrap(), &reference) < 1e-5);
        let silu = candle_nn::ops::silu(&reference).unwrap();
        assert!(max_diff(&norm.forward_silu(&x).unwrap(), &silu) < 1e-5);
        // A strided input (a transposed view) is made contiguous first.
        let t = x.transpose(2, 3).unwrap();
        let want = candle_nn::GroupNorm::new(norm.weight.clone(), norm.bias.clone(), 64, 32, 1e-5)
            .unwrap()
            .forward(&t)
            .unwrap();
        assert!(max_diff(&norm.forward(&t).unwrap(), &want) < 1e-5);
        assert!(
            norm.forward(&Tensor::zeros((2, 48, 3, 3), DType::F32, &dev).unwrap())
                .is_err()
        );
    }
}
