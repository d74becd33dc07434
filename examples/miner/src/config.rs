//! The miner's configuration, compatible with the reference miner's files: its `config.toml`
//! sections and its `.env` (`MINER_ID_0`, `MINER_ID_1`, ... one per GPU). Command-line flags
//! override both. A missing or malformed setting is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use heurist_protocol::{MinerId, MinerLimits};
use serde::Deserialize;

use crate::error::{MinerError, Result};

/// The reference's `config.toml`, every section optional (its defaults apply).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReferenceConfig {
    /// `[service]`.
    pub service: Service,
    /// `[versions]`.
    pub versions: Versions,
    /// `[storage]`.
    pub storage: Storage,
    /// `[model_config]`.
    pub model_config: ModelConfig,
    /// `[system]`.
    pub system: System,
    /// `[processing_limits]`.
    pub processing_limits: ProcessingLimits,
}

/// `[service]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Service {
    /// The sequencer.
    pub base_url: String,
    /// The signal service (the sequencer's when empty).
    pub signal_url: String,
    /// Seconds an image job may take.
    pub sd_timeout_seconds: u64,
    /// Seconds a chat job may take.
    pub llm_timeout_seconds: u64,
}

impl Default for Service {
    fn default() -> Self {
        let l = MinerLimits::default();
        Self {
            base_url: heurist_protocol::client::DEFAULT_BASE_URL.into(),
            signal_url: String::new(),
            sd_timeout_seconds: l.sd_timeout_seconds,
            llm_timeout_seconds: l.llm_timeout_seconds,
        }
    }
}

/// `[versions]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Versions {
    /// Sent as `version` by image workers.
    pub sd_version: String,
    /// Sent as `version` by chat workers.
    pub llm_version: String,
}

impl Default for Versions {
    fn default() -> Self {
        Self { sd_version: "sd-v1.4.0".into(), llm_version: "llm-v1.2.0".into() }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Storage {
    /// The bucket image results go to.
    pub s3_bucket: String,
    /// Where models (and our spool) live; `~` is expanded.
    pub base_dir: String,
    /// Identity key files; `~` is expanded.
    pub keys_dir: String,
}

impl Default for Storage {
    fn default() -> Self {
        Self { s3_bucket: "heurist-images".into(), base_dir: "~/.cache/heurist".into(), keys_dir: "~/.heurist-keys".into() }
    }
}

/// `[model_config]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// URL of the models registry file.
    pub model_config_url: String,
    /// URL of the VAE registry file.
    pub vae_config_url: String,
    /// URL of the LoRA registry file.
    pub lora_config_url: String,
}

/// `[system]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct System {
    /// GPUs used by image workers.
    pub num_cuda_devices: u32,
    /// Chat request pollers.
    pub num_child_process: u32,
    /// Seconds between polls when there is no job.
    pub sleep_duration: u64,
    /// `min_deadline` sent by image workers.
    pub min_deadline: u64,
    /// Seconds between registry reloads.
    pub reload_interval: u64,
    /// Seconds between `miner_signal`s.
    pub signal_interval: u64,
}

impl Default for System {
    fn default() -> Self {
        let l = MinerLimits::default();
        Self {
            num_cuda_devices: 1,
            num_child_process: l.num_child_process,
            sleep_duration: l.sleep_duration,
            min_deadline: l.min_deadline,
            reload_interval: l.reload_interval,
            signal_interval: l.signal_interval,
        }
    }
}

/// `[processing_limits]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ProcessingLimits {
    /// The most sampling steps run.
    pub max_iterations: u32,
    /// The widest image.
    pub max_width: u32,
    /// The tallest image.
    pub max_height: u32,
    /// Chat requests kept in flight.
    pub concurrency_soft_limit: u32,
}

impl Default for ProcessingLimits {
    fn default() -> Self {
        let l = MinerLimits::default();
        Self { max_iterations: l.max_iterations, max_width: l.max_width, max_height: l.max_height, concurrency_soft_limit: l.concurrency_soft_limit }
    }
}

impl ReferenceConfig {
    /// Reads a `config.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MinerError::Config { setting: path.display().to_string(), reason: e.to_string() })?;
        toml::from_str(&text).map_err(|e| MinerError::Config { setting: path.display().to_string(), reason: e.to_string() })
    }

    /// The clamping limits these settings imply.
    pub fn limits(&self) -> MinerLimits {
        MinerLimits {
            sd_timeout_seconds: self.service.sd_timeout_seconds,
            llm_timeout_seconds: self.service.llm_timeout_seconds,
            sleep_duration: self.system.sleep_duration,
            min_deadline: self.system.min_deadline,
            signal_interval: self.system.signal_interval,
            reload_interval: self.system.reload_interval,
            max_iterations: self.processing_limits.max_iterations,
            max_width: self.processing_limits.max_width,
            max_height: self.processing_limits.max_height,
            max_tokens: MinerLimits::default().max_tokens,
            concurrency_soft_limit: self.processing_limits.concurrency_soft_limit,
            num_child_process: self.system.num_child_process,
        }
    }
}

/// Reads `MINER_ID_<n>` from a `.env` file (and the process environment, which wins), in
/// index order. Every value must be a miner id.
pub fn miner_ids_from_env(env_file: Option<&Path>) -> Result<Vec<MinerId>> {
    let mut vars: BTreeMap<u32, String> = BTreeMap::new();
    if let Some(path) = env_file {
        let iter = dotenvy::from_path_iter(path).map_err(|e| MinerError::Config { setting: path.display().to_string(), reason: e.to_string() })?;
        for item in iter {
            let (k, v) = item.map_err(|e| MinerError::Config { setting: path.display().to_string(), reason: e.to_string() })?;
            if let Some(n) = k.strip_prefix("MINER_ID_").and_then(|n| n.parse().ok()) {
                vars.insert(n, v);
            }
        }
    }
    for (k, v) in std::env::vars() {
        if let Some(n) = k.strip_prefix("MINER_ID_").and_then(|n| n.parse().ok()) {
            vars.insert(n, v);
        }
    }
    vars.into_iter()
        .map(|(n, v)| v.trim().parse::<MinerId>().map_err(|e| MinerError::Config { setting: format!("MINER_ID_{n}"), reason: e.to_string() }))
        .collect()
}

/// Expands a leading `~/` with `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}
