//! Which device each worker runs on: one worker per GPU, as the reference miner runs one
//! process per GPU with `MINER_ID_<i>` on CUDA device `i`.
//!
//! `main.rs` counts the GPUs at run time (`heurist_inference::cuda_device_count`) and asks
//! [`assign`] for a device per miner id; it then loads one engine per distinct device, so
//! CPU workers share a single engine. Kept pure so the rule is tested without a GPU.
//! [`hardware_name`] is what a worker reports as its `hardware`: the device it runs on.

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

/// What a worker on `device` reports as its `hardware`: the device it really runs on.
///
/// A CUDA GPU by the name its driver gives (what `nvidia-smi` prints, e.g. `NVIDIA GeForce
/// RTX 4090`), or `cuda:N` when the name cannot be read; the CPU as [`cpu_name`] gives it.
/// Device metrics that do not match the hardware named are a cheat the network checks for,
/// so an honest miner never claims a GPU it does not run on. `auto` names what it opens:
/// GPU 0 when one answers, else the CPU.
pub fn hardware_name(device: DeviceSpec) -> String {
    match device {
        DeviceSpec::Cpu => cpu_name(),
        DeviceSpec::Cuda { ordinal } => heurist_inference::cuda_device_name(ordinal).unwrap_or_else(|| device.to_string()),
        DeviceSpec::Auto if heurist_inference::cuda_device_count() > 0 => hardware_name(DeviceSpec::Cuda { ordinal: 0 }),
        DeviceSpec::Auto => cpu_name(),
    }
}

/// The CPU as `hardware`: `CPU: <model name>` from `/proc/cpuinfo` (e.g. `CPU: Intel(R)
/// Xeon(R) Platinum 8488C`), or `CPU` where that file or its `model name` line is missing.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model_name(&text))
        .map_or_else(|| "CPU".to_owned(), |model| format!("CPU: {model}"))
}

/// The first `model name` of a `/proc/cpuinfo` text, with runs of white space made single
/// (some CPUs pad their brand string); `None` when there is none or it is empty.
fn cpu_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, value)| value.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|name| !name.is_empty())
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

    #[test]
    fn the_cpu_is_named_by_its_model_name() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 143\n\
                    model name\t: Intel(R) Xeon(R)   CPU  E5-2670 0 @ 2.60GHz\nprocessor\t: 1\n\
                    model name\t: Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz\n";
        assert_eq!(cpu_model_name(info).as_deref(), Some("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz"));
        // `model` alone is not `model name`; an empty name or none at all (some ARM kernels)
        // gives nothing, and `cpu_name` falls back to `CPU`.
        assert_eq!(cpu_model_name("model\t: 143\nmodel name\t:   \n"), None);
        assert_eq!(cpu_model_name("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
        let here = cpu_name();
        assert!(here == "CPU" || here.starts_with("CPU: "), "{here}");
        assert_eq!(hardware_name(DeviceSpec::Cpu), here);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_whose_name_cannot_be_read_is_named_by_its_ordinal() {
        assert_eq!(hardware_name(cuda(1)), "cuda:1");
        assert_eq!(hardware_name(DeviceSpec::Auto), cpu_name());
    }
}
