//! Which device each worker runs on: one worker per GPU, as the reference miner runs one
//! process per GPU with `MINER_ID_<i>` on CUDA device `i`.
//!
//! `main.rs` counts the GPUs at run time (`heurist_inference::cuda_device_count`) and asks
//! [`assign`] for a device per miner id; it then loads one engine per distinct device, so
//! CPU workers share a single engine. Kept pure so the rule is tested without a GPU.

use heurist_inference::DeviceSpec;

/// Miner ids could not be placed one per GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ids} miner ids but {gpus} CUDA GPU(s) answer: `--device auto` runs one miner id per GPU; \
     remove MINER_ID_{gpus} and above (or pass fewer --miner-id), or pin every worker with \
     --device cpu / cuda:N"
)]
pub struct TooManyIds {
    /// Miner ids configured.
    pub ids: usize,
    /// CUDA GPUs found.
    pub gpus: usize,
}

/// The device for each of `ids` miner ids, in order, given `gpus` CUDA GPUs and the
/// `--device` flag.
///
/// `cpu` and `cuda:N` pin every worker to that device. `auto` gives miner id `i` CUDA device
/// `i` when there are at least as many GPUs as ids, and every worker the CPU when there is no
/// GPU. Fewer GPUs than ids (but some) is an error, as in the reference miner, which refuses
/// to start when its config asks for more GPUs than answer.
///
/// ```
/// use heurist_inference::DeviceSpec;
/// use heurist_miner::devices::assign;
/// assert_eq!(assign(2, 2, DeviceSpec::Auto), Ok(vec![DeviceSpec::Cuda { ordinal: 0 }, DeviceSpec::Cuda { ordinal: 1 }]));
/// assert_eq!(assign(2, 0, DeviceSpec::Auto), Ok(vec![DeviceSpec::Cpu; 2]));
/// ```
pub fn assign(ids: usize, gpus: usize, flag: DeviceSpec) -> Result<Vec<DeviceSpec>, TooManyIds> {
    match flag {
        DeviceSpec::Cpu | DeviceSpec::Cuda { .. } => Ok(vec![flag; ids]),
        DeviceSpec::Auto if gpus == 0 => Ok(vec![DeviceSpec::Cpu; ids]),
        DeviceSpec::Auto if ids > gpus => Err(TooManyIds { ids, gpus }),
        DeviceSpec::Auto => Ok((0..ids)
            .map(|ordinal| DeviceSpec::Cuda { ordinal })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const fn cuda(ordinal: usize) -> DeviceSpec {
        DeviceSpec::Cuda { ordinal }
    }

    #[test]
    fn auto_without_a_gpu_runs_every_worker_on_the_cpu() {
        assert_eq!(assign(1, 0, DeviceSpec::Auto), Ok(vec![DeviceSpec::Cpu]));
        assert_eq!(assign(3, 0, DeviceSpec::Auto), Ok(vec![DeviceSpec::Cpu; 3]));
    }

    #[test]
    fn auto_gives_id_i_gpu_i() {
        assert_eq!(assign(1, 1, DeviceSpec::Auto), Ok(vec![cuda(0)]));
        assert_eq!(
            assign(3, 3, DeviceSpec::Auto),
            Ok(vec![cuda(0), cuda(1), cuda(2)])
        );
        // Spare GPUs stay idle: one worker per miner id.
        assert_eq!(assign(2, 3, DeviceSpec::Auto), Ok(vec![cuda(0), cuda(1)]));
    }

    #[test]
    fn more_ids_than_gpus_is_an_error_naming_both_counts() {
        let err = assign(3, 1, DeviceSpec::Auto).unwrap_err();
        assert_eq!(err, TooManyIds { ids: 3, gpus: 1 });
        let text = err.to_string();
        assert!(
            text.contains("3 miner ids") && text.contains("1 CUDA GPU"),
            "{text}"
        );
        assert!(text.contains("MINER_ID_1"), "{text}");
    }

    #[test]
    fn pinned_devices_serve_every_id_whatever_the_count() {
        for gpus in [0, 1, 3] {
            assert_eq!(
                assign(3, gpus, DeviceSpec::Cpu),
                Ok(vec![DeviceSpec::Cpu; 3])
            );
            assert_eq!(assign(3, gpus, cuda(1)), Ok(vec![cuda(1); 3]));
        }
    }
}
