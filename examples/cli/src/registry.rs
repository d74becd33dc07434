//! `heurist registry`: the model registry as a table.

use std::path::PathBuf;

use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use heurist_protocol::Registry;

use crate::Outcome;

#[derive(Args, Debug)]
pub(crate) struct RegistryArgs {
    /// A registry file (models.json, lora.json or vae.json) [default: the copy bundled with
    /// heurist-protocol].
    #[arg(long)]
    file: Option<PathBuf>,
    /// A folder holding models.json (and lora.json, vae.json).
    #[arg(long, conflicts_with = "file")]
    dir: Option<PathBuf>,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: RegistryArgs) -> anyhow::Result<Outcome> {
    let registry = match (&args.file, &args.dir) {
        (Some(f), _) => Registry::from_file(f)?,
        (_, Some(d)) => Registry::from_dir(d)?,
        _ => Registry::bundled()?,
    };
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(["name", "type", "base", "vae", "size", "checksum"]);
    for e in registry.entries() {
        let base = e.base.as_deref().or(e.base_model.as_deref()).or(e.hf_id.as_deref()).unwrap_or("");
        let size = match (e.size_mb, e.extra.get("size_gb").and_then(|v| v.as_f64())) {
            (Some(mb), _) => format!("{mb} MB"),
            (None, Some(gb)) => format!("{gb} GB"),
            _ => String::new(),
        };
        let sum = e.checksum.as_deref().map(|c| c.chars().take(12).collect::<String>()).unwrap_or_default();
        table.add_row([e.name.as_str(), e.model_type.as_str(), base, e.vae.as_deref().unwrap_or(""), &size, &sum]);
    }
    println!("{table}");
    println!("{} entries", registry.entries().count());
    Ok(Outcome::Ok)
}
