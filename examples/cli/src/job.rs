//! `heurist job check`: validate a job JSON and print its clamped, typed form.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use heurist_protocol::{Job, MinerLimits};
use serde_json::Value;

use crate::Outcome;

#[derive(Subcommand, Debug)]
pub(crate) enum JobCommand {
    /// Decode a job (a `miner_request` answer, or an SD `model_input` such as the registry's
    /// example files), apply the reference's clamping rules, and print the result as JSON.
    /// A negative seed is drawn at random, as a miner would.
    Check {
        /// The job file, or - for standard input.
        file: PathBuf,
        /// The model id to use for a bare SD `model_input` (default: from the file name).
        #[arg(long)]
        model: Option<String>,
    },
}

pub(crate) fn read_input(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(cmd: JobCommand) -> anyhow::Result<Outcome> {
    let JobCommand::Check { file, model } = cmd;
    let bytes = read_input(&file)?;
    let job = decode_job(&bytes, &file, model).with_context(|| format!("{}", file.display()))?;
    let clamped = MinerLimits::default().clamp(&job, rand::random::<u64>)?;
    println!("{}", serde_json::to_string_pretty(&clamped)?);
    Ok(Outcome::Ok)
}

/// A full job, or a bare SD `model_input` (the registry's example files) wrapped into one.
fn decode_job(bytes: &[u8], file: &std::path::Path, model: Option<String>) -> anyhow::Result<Job> {
    let looks_bare = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.as_object().map(|o| !o.contains_key("model_input") && o.contains_key("prompt")))
        .unwrap_or(false);
    if !looks_bare {
        return Ok(Job::from_slice(bytes)?);
    }
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let model_id = model.unwrap_or_else(|| stem.split('-').next().unwrap_or("unknown").to_owned());
    let input: Value = serde_json::from_slice(bytes)?;
    let wrapped = serde_json::json!({"job_id": format!("local-{stem}"), "model_id": model_id, "model_input": {"SD": input}});
    Ok(Job::from_slice(&serde_json::to_vec(&wrapped)?)?)
}
