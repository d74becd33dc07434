//! Where downloaded models live on this machine, and the one model tests, benches and the demo
//! rely on: SmolLM2-135M-Instruct (Q4_1 GGUF).
//!
//! The rule is the one `tools/fetch_smollm2.py` follows: the directory named by
//! `HEURIST_MODEL_DIR`, else `~/.cache/heurist/models/`. Nothing here downloads; a missing file
//! is an error that names the fetch command.

use std::path::PathBuf;

use crate::error::{InferenceError, Result};

/// The environment variable that overrides the model directory.
pub const MODEL_DIR_ENV: &str = "HEURIST_MODEL_DIR";

/// File name of SmolLM2-135M-Instruct, Q4_1, as the fetch script stores it.
pub const SMOLLM2_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The command that puts SmolLM2 into the model directory.
pub const SMOLLM2_FETCH_COMMAND: &str = "python3 tools/fetch_smollm2.py";

/// The model directory: `$HEURIST_MODEL_DIR`, else `$HOME/.cache/heurist/models`.
pub fn model_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("heurist").join("models"))
        .ok_or(InferenceError::NoModelDir { env_var: MODEL_DIR_ENV })
}

/// The path of the fetched SmolLM2 GGUF, or [`InferenceError::ModelNotFetched`] naming the
/// fetch command when it is not there.
pub fn smollm2_path() -> Result<PathBuf> {
    let path = model_dir()?.join(SMOLLM2_FILE_NAME);
    if path.is_file() {
        Ok(path)
    } else {
        Err(InferenceError::ModelNotFetched { path, command: SMOLLM2_FETCH_COMMAND })
    }
}
