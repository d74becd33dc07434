//! Seeded Gaussian noise for diffusion: the [`NoiseSource`] trait and [`TorchCpuGenerator`],
//! a bit-exact port of `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`.
//!
//! The reference miner draws its initial latents, and one fresh tensor per SDE solver step, from
//! a seeded CPU `torch.Generator`; a seed only means the same image if this crate draws the same
//! bits. candle's CPU RNG cannot be seeded that way, hence this port. It reproduces, from
//! PyTorch 2.4's documented behaviour and checked against its output
//! (tests/fixtures/torch/randn.json):
//! - the engine: MT19937 seeded from the low 32 bits of the seed;
//! - uniforms: f32 takes 24 random bits of one 32-bit draw, f16 takes 11, bf16 takes 8, f64
//!   takes 53 bits of a 64-bit draw made of two 32-bit draws (first one high);
//! - the normal fill, which depends on the element count: below 16 elements each value is one
//!   f64 Box-Muller draw (`log1p`, `sin`, `cos` of the C library) whose second value is cached in
//!   the generator and used by the next such draw, in any later call; from 16 elements on, torch
//!   first draws one uniform per element and then transforms blocks of 16 (8 pairs: element `j`
//!   and `j + 8`), redrawing 16 fresh uniforms for the last block when the count is not a
//!   multiple of 16. The block transform of f32 depends on the CPU: [`TorchCpuKernel`].
//! - f16 is sampled in f16, not sampled in f32 and converted: the values differ. Likewise bf16,
//!   sampled in bf16: the same block transform as f16 with every intermediate rounded to bf16
//!   (round to nearest even) instead; below 16 elements the f64 draw goes to bf16 through f32.
//!
//! Invariant: a generator's draws depend only on the seed, the kernel and the sequence of
//! `(element count, dtype)` requests, never on the shape's split into dimensions or the device.

mod cephes;
mod mt19937;

use candle_core::{DType, Device, Tensor};

use crate::error::{InferenceError, Result};
use mt19937::Mt19937;

/// The mean and standard deviation of `randn`. torch still applies them (`x * std + mean`): the
/// values do not change, but a sample of -0 (radius 0, when a uniform is exactly 0) becomes +0.
const MEAN: f64 = 0.0;
const STD: f64 = 1.0;

/// The element type noise is drawn in. torch's f16 and bf16 draws are not the f32 draws rounded
/// (except below 16 elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoiseDType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision (sampled with torch's half arithmetic).
    F16,
    /// bfloat16 (sampled with torch's bfloat16 arithmetic).
    BF16,
}

impl NoiseDType {
    /// The candle dtype of tensors drawn in this type.
    pub fn candle_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }
}

/// A source of standard normal noise, so that the image pipeline can draw from torch's generator
/// (the default, for seeds that match the reference) or from any other.
pub trait NoiseSource {
    /// Draws one standard normal tensor of `shape`, in row-major order. The values are those of
    /// `dtype`, widened to f32 (exactly: every f16 and every bf16 is an f32).
    ///
    /// # Errors
    /// [`InferenceError::InvalidNoiseShape`] when `shape` has no dimensions, a zero dimension, or
    /// more elements than `usize` counts.
    fn randn(&mut self, shape: &[usize], dtype: NoiseDType) -> Result<Vec<f32>>;

    /// [`NoiseSource::randn`] as a candle tensor of `dtype` on `device`.
    ///
    /// # Errors
    /// As [`NoiseSource::randn`], and [`InferenceError::Tensor`] when candle cannot build or move
    /// the tensor.
    fn randn_tensor(
        &mut self,
        shape: &[usize],
        dtype: NoiseDType,
        device: &Device,
    ) -> Result<Tensor> {
        let values = self.randn(shape, dtype)?;
        let tensor_error = |source| InferenceError::Tensor {
            context: format!("noise tensor {shape:?}"),
            source,
        };
        // The f16 and bf16 values are exact in f32, so this conversion rounds nothing.
        Tensor::from_vec(values, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype.candle_dtype()))
            .and_then(|t| t.to_device(device))
            .map_err(tensor_error)
    }
}

/// Which of torch's CPU kernels transforms f32 blocks of 16 uniforms into normals.
///
/// torch compiles its kernels once per CPU capability and picks one at start-up (overridable
/// with `ATEN_CPU_CAPABILITY`). With AVX2 (which AVX-512 CPUs also run for this kernel) the block
/// transform uses Cephes polynomial `log`/`sincos` in f32; without it, the C library's `logf`,
/// `sinf`, `cosf` with the angle computed in f64. About a third of the values differ by a few
/// ulp between the two. Draws of fewer than 16 elements, and all f16 and bf16 draws, are the same
/// on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TorchCpuKernel {
    /// torch on x86-64 CPUs with AVX2 and FMA, or AVX-512: every GPU server the network's miners
    /// run on. The default.
    #[default]
    Avx2,
    /// torch's portable kernel (`ATEN_CPU_CAPABILITY=default`, or an x86-64 CPU without AVX2).
    Default,
}

impl TorchCpuKernel {
    /// The kernel torch would choose on this machine: [`TorchCpuKernel::Avx2`] on an x86-64 CPU
    /// with AVX2 and FMA, else [`TorchCpuKernel::Default`]. Note that a verifier re-running a job
    /// wants the kernel of the machine that made it, not its own.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Default
    }
}

/// torch's seeded CPU generator and its `randn`, bit for bit.
///
/// ```
/// use heurist_inference::image::noise::{NoiseDType, NoiseSource, TorchCpuGenerator};
///
/// # fn main() -> heurist_inference::Result<()> {
/// // torch.randn(3, generator=torch.Generator("cpu").manual_seed(0))
/// let mut generator = TorchCpuGenerator::new(0);
/// let noise = generator.randn(&[3], NoiseDType::F32)?;
/// assert_eq!(noise, [1.5409961f32, -0.29342890, -2.1787894]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TorchCpuGenerator {
    seed: u64,
    kernel: TorchCpuKernel,
    engine: Mt19937,
    /// The second value of the last f64 Box-Muller pair, which torch keeps in the generator
    /// (`next_double_normal_sample`) and hands to the next scalar draw.
    cached_normal: Option<f64>,
}

impl std::fmt::Debug for TorchCpuGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchCpuGenerator")
            .field("seed", &self.seed)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl TorchCpuGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)` on a CPU with AVX2 (see [`TorchCpuKernel`]).
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, TorchCpuKernel::Avx2)
    }

    /// `torch.Generator("cpu").manual_seed(seed)` as torch runs it with `kernel`.
    pub fn with_kernel(seed: u64, kernel: TorchCpuKernel) -> Self {
        Self {
            seed,
            kernel,
            engine: Mt19937::new(seed),
            cached_normal: None,
        }
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The kernel whose arithmetic this generator reproduces.
    pub fn kernel(&self) -> TorchCpuKernel {
        self.kernel
    }

    /// A uniform f32 in [0, 1) from 24 bits of one draw (`uniform_real_distribution<float>`).
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A uniform f16 in [0, 1) from 11 bits of one draw, held exactly in an f32.
    fn uniform_f16(&mut self) -> f32 {
        (self.engine.next_u32() & 0x07ff) as f32 * (1.0 / 2048.0)
    }

    /// A uniform bf16 in [0, 1) from 8 bits of one draw, held exactly in an f32.
    fn uniform_bf16(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff) as f32 * (1.0 / 256.0)
    }

    /// A uniform f64 in [0, 1) from 53 bits of a 64-bit draw.
    fn uniform_f64(&mut self) -> f64 {
        (self.engine.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One standard normal as torch's `normal_distribution<double>` draws it: the cached second
    /// value of the previous pair if there is one, else a fresh Box-Muller pair.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached * STD + MEAN;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos() * STD + MEAN
    }

    fn fill_f32(&mut self, numel: usize) -> Vec<f32> {
        if numel < 16 {
            // torch's scalar path for tensors too small for a block: f64 draws, rounded.
            return (0..numel).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        let block = match self.kernel {
            TorchCpuKernel::Avx2 => box_muller_16_avx2,
            TorchCpuKernel::Default => box_muller_16_scalar,
        };
        fill_blocks(&mut data, block, |g| g.uniform_f32(), self);
        data
    }

    fn fill_f16(&mut self, numel: usize) -> Vec<f32> {
        self.fill_reduced(numel, round_to_f16, Self::uniform_f16, box_muller_16_f16)
    }

    fn fill_bf16(&mut self, numel: usize) -> Vec<f32> {
        self.fill_reduced(numel, round_to_bf16, Self::uniform_bf16, box_muller_16_bf16)
    }

    /// A 16-bit type's fill: below 16 elements the f64 draw cast through float (two roundings,
    /// as torch casts it), else its own uniforms and its own rounded block transform.
    fn fill_reduced(
        &mut self,
        numel: usize,
        round: fn(f32) -> f32,
        uniform: fn(&mut Self) -> f32,
        block: fn(&mut [f32]),
    ) -> Vec<f32> {
        if numel < 16 {
            return (0..numel).map(|_| round(self.normal_f64() as f32)).collect();
        }
        let mut data: Vec<f32> = (0..numel).map(|_| uniform(self)).collect();
        fill_blocks(&mut data, block, uniform, self);
        data
    }
}

/// Transforms `data` (uniforms) in blocks of 16; when the length is not a multiple of 16, the
/// last 16 elements get fresh uniforms and are transformed again. This overlap is torch's: it
/// keeps the vector kernel on whole blocks at the cost of redrawing up to 15 values.
fn fill_blocks(
    data: &mut [f32],
    block: fn(&mut [f32]),
    mut uniform: impl FnMut(&mut TorchCpuGenerator) -> f32,
    generator: &mut TorchCpuGenerator,
) {
    let numel = data.len();
    for chunk in data.chunks_exact_mut(16) {
        block(chunk);
    }
    if !numel.is_multiple_of(16) {
        let tail = &mut data[numel - 16..];
        for value in tail.iter_mut() {
            *value = uniform(generator);
        }
        block(tail);
    }
}

/// torch's AVX2 block: f32 Box-Muller with Cephes `log`/`sincos`, angle `(f32)2pi * u2` in f32.
fn box_muller_16_avx2(block: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * cephes::log(u1)).sqrt();
        let (sin, cos) = cephes::sincos(two_pi * u2);
        // torch's final `fmadd(n, std, mean)`: exact for std 1, mean 0, but -0 becomes +0.
        block[j] = (radius * cos).mul_add(STD as f32, MEAN as f32);
        block[j + 8] = (radius * sin).mul_add(STD as f32, MEAN as f32);
    }
}

/// torch's portable f32 block: C library `logf`/`sinf`/`cosf`; the angle is computed in f64
/// (`2.0f * pi<double> * u2`) and rounded to f32.
fn box_muller_16_scalar(block: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
        block[j] = radius * theta.cos() * STD as f32 + MEAN as f32;
        block[j + 8] = radius * theta.sin() * STD as f32 + MEAN as f32;
    }
}

/// torch's f16 block: the portable kernel instantiated for `c10::Half`. c10's `log`, `sqrt`,
/// `cos`, `sin` of a half compute in f32 and return a half, and half-by-half products round to
/// half, so every intermediate (log, radius, angle, cos, sin, product) is rounded to f16.
fn box_muller_16_f16(block: &mut [f32]) {
    box_muller_16_rounded(block, round_to_f16);
}

/// torch's bf16 block: the portable kernel instantiated for `c10::BFloat16`, whose arithmetic
/// and math functions round exactly where `c10::Half`'s do (f32 computation, result rounded to
/// bf16, nearest even).
fn box_muller_16_bf16(block: &mut [f32]) {
    box_muller_16_rounded(block, round_to_bf16);
}

/// The portable block in a 16-bit type whose rounding of an f32 is `round`: the uniforms in
/// `block` are values of that type; every intermediate is rounded to it.
fn box_muller_16_rounded(block: &mut [f32], round: fn(f32) -> f32) {
    for j in 0..8 {
        // `1 - u` is exact in the type (rounded all the same, as torch does); `-2 * log(u1)`
        // is too, being a power-of-two multiple of a value of the type.
        let u1 = round(1.0 - block[j]);
        let u2 = block[j + 8];
        let radius = round((-2.0 * round(u1.ln())).sqrt());
        // `2.0f * pi<double> * u2` is a double, assigned to the type through float.
        let theta = round((2.0 * std::f64::consts::PI * f64::from(u2)) as f32);
        let cos = round(radius * round(theta.cos()));
        let sin = round(radius * round(theta.sin()));
        block[j] = round(round(cos * STD as f32) + MEAN as f32);
        block[j + 8] = round(round(sin * STD as f32) + MEAN as f32);
    }
}

/// `x` rounded to the nearest bf16 (ties to even, as `c10::BFloat16`), returned as the f32
/// holding that bf16 exactly.
pub(crate) fn round_to_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// `x` rounded to the nearest f16 (ties to even), returned as the f32 holding that f16 exactly.
pub(crate) fn round_to_f16(x: f32) -> f32 {
    f16_bits_to_f32(f32_to_f16_bits(x))
}

/// IEEE binary32 to binary16, round to nearest even (what `c10::Half` and F16C do).
pub(crate) fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        // Inf stays inf; NaN stays a quiet NaN.
        return sign | 0x7c00 | if man != 0 { 0x0200 } else { 0 };
    }
    let half_exp = exp - 127 + 15;
    if half_exp >= 0x1f {
        return sign | 0x7c00;
    }
    if half_exp <= 0 {
        // Subnormal half (or zero): shift the full significand into place, then round.
        if half_exp < -10 {
            return sign;
        }
        let full = man | 0x0080_0000;
        let shift = (14 - half_exp) as u32;
        let mut value = full >> shift;
        let rest = full & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        if rest > halfway || (rest == halfway && value & 1 == 1) {
            value += 1;
        }
        return sign | value as u16;
    }
    let mut value = ((half_exp as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && value & 1 == 1) {
        // A carry out of the mantissa bumps the exponent, up to inf: still correct.
        value += 1;
    }
    sign | value as u16
}

/// IEEE binary16 to binary32 (exact).
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24, exact in f32.
            let value = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -value } else { value };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The element count of `shape`, or the reason it cannot be drawn.
fn element_count(shape: &[usize]) -> Result<usize> {
    let invalid = |problem| InferenceError::InvalidNoiseShape {
        shape: shape.to_vec(),
        problem,
    };
    if shape.is_empty() {
        return Err(invalid("it has no dimensions"));
    }
    if shape.contains(&0) {
        return Err(invalid("it has a zero dimension"));
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid("its element count overflows usize"))
}

impl NoiseSource for TorchCpuGenerator {
    fn randn(&mut self, shape: &[usize], dtype: NoiseDType) -> Result<Vec<f32>> {
        let numel = element_count(shape)?;
        Ok(match dtype {
            NoiseDType::F32 => self.fill_f32(numel),
            NoiseDType::F16 => self.fill_f16(numel),
            NoiseDType::BF16 => self.fill_bf16(numel),
        })
    }
}

/// Draws as a miner whose diffusers pipeline runs in another precision does.
///
/// A pipeline in f16 (what GPU miners run) draws its initial latents in f16
/// (`prepare_latents(dtype=prompt_embeds.dtype)`), and torch's f16 draws are other values than
/// its f32 ones: the same seed gives another image. The schedulers' later draws follow each
/// scheduler: DPM-Solver++ SDE draws in f32 whatever the model (`dtype=torch.float32`), Euler,
/// Euler ancestral and DDIM in the model output's dtype. This engine keeps latents and the
/// scheduler in f32, so to reproduce such a miner (a verifier re-running its job) it draws from
/// [`DrawnIn::half_precision_miner`]; the f16 values widen to f32 exactly. A bf16 pipeline draws
/// the same way in bf16: [`DrawnIn::reduced_precision_miner`].
#[derive(Debug, Clone)]
pub struct DrawnIn<N> {
    /// The source.
    pub inner: N,
    /// The dtype of the first draw (the initial latents); `None`: as asked.
    pub initial: Option<NoiseDType>,
    /// The dtype of every later draw (the schedulers'); `None`: as asked.
    pub steps: Option<NoiseDType>,
    draws: usize,
}

impl<N: NoiseSource> DrawnIn<N> {
    /// Draws the initial latents in `initial` and the rest in `steps` (`None`: as asked).
    pub fn new(inner: N, initial: Option<NoiseDType>, steps: Option<NoiseDType>) -> Self {
        Self {
            inner,
            initial,
            steps,
            draws: 0,
        }
    }

    /// The draws of a miner running `sampler` in f16: latents in f16; the scheduler's noise in
    /// f32 for DPM-Solver++ SDE, else in f16.
    pub fn half_precision_miner(inner: N, sampler: crate::image::SchedulerKind) -> Self {
        Self::reduced_precision_miner(inner, sampler, NoiseDType::F16)
    }

    /// The draws of a miner running `sampler` in `dtype` (f16, or bf16): latents in `dtype`; the
    /// scheduler's noise in f32 for DPM-Solver++ SDE, else in `dtype`.
    pub fn reduced_precision_miner(
        inner: N,
        sampler: crate::image::SchedulerKind,
        dtype: NoiseDType,
    ) -> Self {
        let steps = match sampler {
            crate::image::SchedulerKind::DpmSolverSdeKarras => None,
            _ => Some(dtype),
        };
        Self::new(inner, Some(dtype), steps)
    }
}

impl<N: NoiseSource> NoiseSource for DrawnIn<N> {
    fn randn(&mut self, shape: &[usize], asked: NoiseDType) -> Result<Vec<f32>> {
        let forced = if self.draws == 0 {
            self.initial
        } else {
            self.steps
        };
        self.draws += 1;
        self.inner.randn(shape, forced.unwrap_or(asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_in_overrides_the_first_and_later_draws() {
        let mut miner = DrawnIn::new(TorchCpuGenerator::new(5), Some(NoiseDType::F16), None);
        let mut plain = TorchCpuGenerator::new(5);
        let a = miner.randn(&[2, 20], NoiseDType::F32).unwrap();
        assert_eq!(a, plain.randn(&[2, 20], NoiseDType::F16).unwrap());
        assert_ne!(
            a,
            TorchCpuGenerator::new(5)
                .randn(&[2, 20], NoiseDType::F32)
                .unwrap()
        );
        // Later draws as asked.
        let b = miner.randn(&[20], NoiseDType::F32).unwrap();
        assert_eq!(b, plain.randn(&[20], NoiseDType::F32).unwrap());
        let mut ancestral = DrawnIn::half_precision_miner(
            TorchCpuGenerator::new(5),
            crate::image::SchedulerKind::EulerAncestralDiscrete,
        );
        let mut plain = TorchCpuGenerator::new(5);
        for _ in 0..2 {
            assert_eq!(
                ancestral.randn(&[20], NoiseDType::F32).unwrap(),
                plain.randn(&[20], NoiseDType::F16).unwrap()
            );
        }
    }

    #[test]
    fn f16_conversion_round_trips_and_rounds_to_even() {
        for h in 0u16..=0xffff {
            let exp = (h >> 10) & 0x1f;
            if exp == 0x1f && h & 0x3ff != 0 {
                continue; // NaN payloads are not preserved bit for bit
            }
            assert_eq!(f32_to_f16_bits(f16_bits_to_f32(h)), h, "{h:#06x}");
        }
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even 1.
        assert_eq!(f32_to_f16_bits(1.0 + 1.0 / 2048.0), 0x3c00);
        assert_eq!(f32_to_f16_bits(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7c00);
        assert_eq!(f32_to_f16_bits(1e-8), 0);
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let mut g = TorchCpuGenerator::new(0);
        for shape in [&[][..], &[4, 0, 2][..], &[usize::MAX, 2][..]] {
            assert!(matches!(
                g.randn(shape, NoiseDType::F32),
                Err(InferenceError::InvalidNoiseShape { .. })
            ));
        }
    }
}
