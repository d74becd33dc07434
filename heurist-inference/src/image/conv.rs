//! 2-D convolutions for the UNet: on the CPU in f32, an im2col in candle's weight order
//! feeding one gemm per tile of output rows that writes straight into the NCHW output.
//!
//! candle 0.11's CPU `conv2d` re-lays its input out as NHWC and its weights as (out, kh, kw,
//! in) on every call, on one thread, builds its im2col tiles element by element with strided
//! writes, and copies the gemm's result into place one value at a time: at SD 1.5's shapes
//! that bookkeeping is about a sixth of a UNet step. Here the weights are used as they are
//! ((out, in · kh · kw) rows, the natural layout), the im2col rows are built in parallel as
//! contiguous copies of input rows, the bias is the gemm's starting value, and 1x1
//! convolutions read the input directly. Other devices, dtypes, groups and dilations go
//! through candle.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::{Conv2dConfig, VarBuilder};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Floats of im2col per tile (16 MiB): large enough for the gemm to run at speed, small
/// enough not to fault in fresh pages for every convolution.
const TILE_FLOATS: usize = 4 << 20;

/// A convolution with diffusers' `weight` (out, in, kh, kw) and `bias` (out).
pub(crate) struct Conv2d {
    inner: candle_nn::Conv2d,
}

impl Conv2d {
    /// Reads the weights from `vb`, as `candle_nn::conv2d`.
    pub(crate) fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        config: Conv2dConfig,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::conv2d(c_in, c_out, kernel, config, vb)?,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let config = self.inner.config();
        let weight = self.inner.weight();
        if xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && config.groups == 1
            && config.dilation == 1
            && config.stride > 0
        {
            let op = CpuConv {
                bias: self.inner.bias().map(Tensor::to_vec1).transpose()?,
                padding: config.padding,
                stride: config.stride,
            };
            return xs
                .contiguous()?
                .apply_op2_no_bwd(&weight.contiguous()?, &op);
        }
        self.inner.forward(xs)
    }
}

struct CpuConv {
    bias: Option<Vec<f32>>,
    padding: usize,
    stride: usize,
}

/// The contiguous f32 data and dims of a rank-4 tensor.
fn data4<'a>(
    what: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<(&'a [f32], (usize, usize, usize, usize))> {
    let CpuStorage::F32(data) = storage else {
        bail!("conv2d: the {what} must be f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("conv2d: the {what} must be contiguous")
    };
    Ok((&data[start..end], layout.shape().dims4()?))
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        "heurist-conv2d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, (batch, c_in, h, w)) = data4("input", sx, lx)?;
        let (weight, (c_out, w_in, kh, kw)) = data4("weight", sw, lw)?;
        let (pad, stride) = (self.padding, self.stride);
        if w_in != c_in || h + 2 * pad < kh || w + 2 * pad < kw || kh == 0 || kw == 0 {
            bail!(
                "conv2d: a ({c_out}, {w_in}, {kh}, {kw}) kernel does not fit a ({batch}, {c_in}, {h}, {w}) input padded by {pad}"
            );
        }
        if self.bias.as_ref().is_some_and(|b| b.len() != c_out) {
            bail!("conv2d: {c_out} output channels but a bias of another length");
        }
        let (out_h, out_w) = (
            (h + 2 * pad - kh) / stride + 1,
            (w + 2 * pad - kw) / stride + 1,
        );
        let geometry = Geometry {
            h,
            w,
            kh,
            kw,
            pad,
            stride,
            out_w,
        };
        let k = c_in * kh * kw;
        let plane = out_h * out_w;
        let mut out = vec![0f32; batch * c_out * plane];
        let pointwise = kh == 1 && kw == 1 && stride == 1 && pad == 0;
        let tile_rows = (TILE_FLOATS / (k * out_w).max(1)).clamp(1, out_h.max(1));
        let mut col = if pointwise {
            Vec::new()
        } else {
            vec![0f32; k * tile_rows * out_w]
        };
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        for (b, dst) in out.chunks_mut(c_out * plane).enumerate() {
            let image = &x[b * c_in * h * w..][..c_in * h * w];
            if let Some(bias) = &self.bias {
                for (row, &v) in dst.chunks_mut(plane).zip(bias) {
                    row.fill(v);
                }
            }
            for y0 in (0..out_h).step_by(tile_rows) {
                let rows = tile_rows.min(out_h - y0);
                let n = rows * out_w;
                let (rhs, rhs_rs) = if pointwise {
                    (&image[y0 * out_w..], plane)
                } else {
                    geometry.im2col(image, y0, rows, &mut col[..k * n]);
                    (&col[..], n)
                };
                // SAFETY: dst is c_out × plane (row stride plane) and this tile writes columns
                // y0·out_w .. y0·out_w + n of it; weight is c_out × k (row stride k); rhs is k × n
                // with row stride rhs_rs, inside its slice (the im2col buffer holds k · n
                // floats, the pointwise input c_in · plane from this offset).
                unsafe {
                    gemm(
                        c_out,
                        n,
                        k,
                        dst.as_mut_ptr().add(y0 * out_w),
                        1,
                        plane as isize,
                        self.bias.is_some(),
                        weight.as_ptr(),
                        1,
                        k as isize,
                        rhs.as_ptr(),
                        1,
                        rhs_rs as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, c_out, out_h, out_w)),
        ))
    }
}

/// What im2col needs to know of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    stride: usize,
    out_w: usize,
}

impl Geometry {
    /// Fills `col` (k × rows·out_w, row r = (channel, ky, kx) as the weights are laid out) with
    /// the input pixels each output pixel of rows `y0 ..` sees, zeros for the padding.
    fn im2col(&self, image: &[f32], y0: usize, rows: usize, col: &mut [f32]) {
        let Self {
            h,
            w,
            kh,
            kw,
            pad,
            stride,
            out_w,
        } = *self;
        let n = rows * out_w;
        col.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
            let (channel, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
            let plane = &image[channel * h * w..][..h * w];
            // Output columns whose input column lies inside the image: kx + ox·stride − pad in 0..w.
            let first = pad.saturating_sub(kx).div_ceil(stride).min(out_w);
            let last = if w + pad > kx {
                ((w + pad - kx - 1) / stride + 1).min(out_w)
            } else {
                0
            };
            let last = last.max(first);
            for (oy, line) in (y0..y0 + rows).zip(dst.chunks_mut(out_w)) {
                let iy = (oy * stride + ky).checked_sub(pad).filter(|&iy| iy < h);
                let Some(iy) = iy else {
                    line.fill(0.0);
                    continue;
                };
                let src = &plane[iy * w..][..w];
                line[..first].fill(0.0);
                line[last..].fill(0.0);
                if first == last {
                    continue;
                }
                let ix0 = first * stride + kx - pad;
                if stride == 1 {
                    line[first..last].copy_from_slice(&src[ix0..ix0 + (last - first)]);
                } else {
                    for (d, s) in line[first..last]
                        .iter_mut()
                        .zip(src[ix0..].iter().step_by(stride))
                    {
                        *d = *s;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_cpu_kernel_equals_candles_conv2d() {
        let dev = Device::Cpu;
        // 3x3 padded (the resnets), stride 2 (the downsamplers), 1x1 (shortcuts, projections),
        // odd sizes, no bias, and a kernel as large as the padded input.
        for &(c_in, c_out, k, pad, stride, h, w, bias) in &[
            (5, 7, 3, 1, 1, 9, 11, true),
            (6, 4, 3, 1, 2, 9, 10, true),
            (8, 3, 1, 0, 1, 4, 6, false),
            (3, 2, 3, 0, 1, 3, 3, true),
            (4, 4, 3, 1, 2, 1, 2, false),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev).unwrap();
            let b = bias.then(|| Tensor::randn(0f32, 1.0, c_out, &dev).unwrap());
            let config = Conv2dConfig {
                padding: pad,
                stride,
                ..Default::default()
            };
            let reference = candle_nn::Conv2d::new(weight.clone(), b.clone(), config);
            let want = reference.forward(&x).unwrap();
            let ours = Conv2d { inner: reference }.forward(&x).unwrap();
            assert_eq!(ours.dims(), want.dims());
            let diff = (ours - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(
                diff < 1e-4,
                "{:?}: {diff}",
                (c_in, c_out, k, pad, stride, h, w)
            );
        }
    }

    #[test]
    fn a_kernel_larger_than_the_input_is_an_error() {
        let dev = Device::Cpu;
        let weight = Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap();
        let conv = Conv2d {
            inner: candle_nn::Conv2d::new(weight, None, Conv2dConfig::default()),
        };
        assert!(
            conv.forward(&Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap())
                .is_err()
        );
        assert!(
            conv.forward(&Tensor::zeros((1, 4, 5, 5), DType::F32, &dev).unwrap())
                .is_err()
        );
    }
}
