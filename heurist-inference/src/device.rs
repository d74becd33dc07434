//! Where the tensors live: the CPU always, a CUDA GPU when the crate is built with `cuda`.
//!
//! The choice is made at run time from a [`DeviceSpec`]. Asking for CUDA in a build without the
//! `cuda` feature is a typed error ([`InferenceError::CudaNotCompiled`]), never a panic, so a
//! miner binary built for the CPU tells its user how to get GPU support.

use std::fmt;
use std::str::FromStr;

use crate::error::{InferenceError, Result};

/// Which device an engine should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (candle's CPU backend, multi-threaded).
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal; needs the `cuda` feature.
    Cuda {
        /// The GPU's index as CUDA numbers it.
        ordinal: usize,
    },
    /// CUDA device 0 when this build has CUDA and a GPU answers, otherwise the CPU.
    Auto,
}

impl DeviceSpec {
    /// Opens the device.
    pub(crate) fn open(self) -> Result<candle_core::Device> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda { ordinal } => open_cuda(ordinal),
            DeviceSpec::Auto => match open_cuda(0) {
                Ok(device) => Ok(device),
                Err(err) => {
                    tracing::debug!(%err, "no CUDA device, using the CPU");
                    Ok(candle_core::Device::Cpu)
                }
            },
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<candle_core::Device> {
    candle_core::Device::new_cuda(ordinal)
        .map_err(|source| InferenceError::Device { ordinal, source })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<candle_core::Device> {
    Err(InferenceError::CudaNotCompiled { ordinal })
}

/// How many CUDA GPUs answer on this machine: what a miner sizes its per-GPU workers by.
///
/// Always 0 in a build without the `cuda` feature. With it, the driver's count; a missing
/// driver or any driver error is also 0 (logged at debug level), never a panic, so a CUDA
/// build still runs its CPU fallback on a machine without a GPU.
///
/// ```
/// let gpus = heurist_inference::cuda_device_count();
/// # #[cfg(not(feature = "cuda"))]
/// assert_eq!(gpus, 0);
/// ```
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        // cudarc panics when it cannot load the driver library; that is "no GPU" here.
        match std::panic::catch_unwind(CudaContext::device_count) {
            Ok(Ok(n)) => usize::try_from(n).unwrap_or(0),
            Ok(Err(err)) => {
                tracing::debug!(%err, "CUDA device count failed; counting no GPU");
                0
            }
            Err(_) => {
                tracing::debug!("CUDA driver not loadable; counting no GPU");
                0
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// The name of CUDA GPU `ordinal` as the driver (and so `nvidia-smi`) gives it, e.g.
/// `NVIDIA GeForce RTX 4090`: what a miner reports as its `hardware`.
///
/// `None` in a build without the `cuda` feature, and when the driver cannot be loaded or has
/// no such GPU (logged at debug level, never a panic).
///
/// ```
/// # #[cfg(not(feature = "cuda"))]
/// assert_eq!(heurist_inference::cuda_device_name(0), None);
/// ```
pub fn cuda_device_name(ordinal: usize) -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::result;
        let ordinal = std::os::raw::c_int::try_from(ordinal).ok()?;
        // The device query needs no context: nothing is allocated on the GPU.
        let query = || -> std::result::Result<String, result::DriverError> {
            result::init()?;
            result::device::get_name(result::device::get(ordinal)?)
        };
        // As in `cuda_device_count`: cudarc panics when it cannot load the driver library.
        match std::panic::catch_unwind(query) {
            Ok(Ok(name)) => Some(name.trim().to_owned()).filter(|n| !n.is_empty()),
            Ok(Err(err)) => {
                tracing::debug!(%err, ordinal, "CUDA device name query failed");
                None
            }
            Err(_) => {
                tracing::debug!(ordinal, "CUDA driver not loadable; no device name");
                None
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        None
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// The device name in a [`DeviceSpec`] string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {0:?}: expected cpu, cuda, cuda:N or auto")]
pub struct ParseDeviceError(pub String);

impl FromStr for DeviceSpec {
    type Err = ParseDeviceError;

    /// Parses `cpu`, `cuda` (device 0), `cuda:N` or `auto`, as a command-line flag would.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda { ordinal: 0 }),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(|ordinal| DeviceSpec::Cuda { ordinal })
                .ok_or_else(|| ParseDeviceError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda { ordinal: 0 }));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda { ordinal: 3 }));
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda { ordinal: 2 }.to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_opens() {
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(candle_core::Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_typed_error() {
        assert!(matches!(
            DeviceSpec::Cuda { ordinal: 1 }.open(),
            Err(InferenceError::CudaNotCompiled { ordinal: 1 })
        ));
        assert!(matches!(DeviceSpec::Auto.open(), Ok(candle_core::Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn no_gpu_is_counted_without_the_feature() {
        assert_eq!(cuda_device_count(), 0);
        assert_eq!(cuda_device_name(0), None);
    }
}
