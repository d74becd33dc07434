//! `heurist-sequencer`: a local reference sequencer with a points portal.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use heurist_protocol::{Address, Registry};
use heurist_sequencer::{S3Grant, SequencerConfig};

/// A local Heurist sequencer: job queues, miner endpoints, signature checks, a points ledger
/// and a portal at `/`.
#[derive(Parser, Debug)]
#[command(name = "heurist-sequencer", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder for jobs.sqlite and (by default) ledger.sqlite.
    #[arg(long, default_value = "heurist-sequencer-data")]
    data_dir: PathBuf,
    /// Ledger: a file path or a postgres:// URL [default: <data-dir>/ledger.sqlite].
    #[arg(long)]
    ledger: Option<String>,
    /// Reward rules: a preset (`seed`, `later`) or a TOML/JSON file.
    #[arg(long, default_value = "seed")]
    rules: String,
    /// Folder with models.json (and lora.json, vae.json) [default: the bundled registry].
    #[arg(long)]
    registry: Option<PathBuf>,
    /// API key accepted on submit_job (repeat for several). A key on the command line shows
    /// in `ps`: prefer $HEURIST_API_KEY or --api-key-file.
    #[arg(long = "api-key", env = "HEURIST_API_KEY", hide_env_values = true)]
    api_keys: Vec<String>,
    /// A file of API keys, one a line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Bind a reward wallet to an identity: REWARD=IDENTITY (repeat for several).
    #[arg(long = "bind", value_name = "REWARD=IDENTITY")]
    bindings: Vec<String>,
    /// Refuse reward wallets with no --bind instead of binding the first valid identity.
    #[arg(long)]
    no_trust_on_first_use: bool,
    /// S3 endpoint miners upload images to; with --s3-key and --s3-secret, handed out as
    /// the jobs' temporary credentials.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Run the embedded S3 server, storing objects under this folder, and hand its endpoint
    /// and key (--s3-key/--s3-secret, or fresh random ones) to image jobs.
    #[cfg(feature = "s3")]
    #[arg(long, conflicts_with = "s3_endpoint")]
    s3_dir: Option<PathBuf>,
    /// Port for the embedded S3 server (0: any free one).
    #[cfg(feature = "s3")]
    #[arg(long, default_value_t = 0)]
    s3_port: u16,
    /// Refuse image results whose object is not in the bucket (a signed HEAD before
    /// accepting; on by default with --s3-dir).
    #[arg(long)]
    verify_s3_objects: bool,
    /// S3 bucket for image results.
    #[arg(long, default_value = "heurist-images")]
    s3_bucket: String,
    /// S3 access key id handed to image jobs.
    #[arg(long, env = "HEURIST_S3_KEY")]
    s3_key: Option<String>,
    /// S3 secret key (shows in `ps` on the command line: prefer $HEURIST_S3_SECRET or
    /// --s3-secret-file).
    #[arg(long, env = "HEURIST_S3_SECRET", hide_env_values = true)]
    s3_secret: Option<String>,
    /// A file holding the S3 secret key (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "s3_secret")]
    s3_secret_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The lines of a secrets file that hold a value (blank lines and `#` comments skipped).
fn secret_lines(path: &std::path::Path, flag: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?;
    let lines: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    anyhow::ensure!(!lines.is_empty(), "{flag} {}: no value in the file", path.display());
    Ok(lines)
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.api_key_file {
        args.api_keys.extend(secret_lines(path, "--api-key-file")?);
    }
    if let Some(path) = &args.s3_secret_file {
        args.s3_secret = secret_lines(path, "--s3-secret-file")?.into_iter().next();
    }
    let mut config = SequencerConfig::new(args.listen, args.data_dir)?;
    config.ledger = args.ledger;
    config.rules = args.rules;
    config.api_keys = args.api_keys;
    if let Some(dir) = &args.registry {
        config.registry = Registry::from_dir(dir).with_context(|| format!("--registry {}", dir.display()))?;
    }
    for b in &args.bindings {
        let (reward, identity) = b.split_once('=').with_context(|| format!("--bind {b:?}: expected REWARD=IDENTITY"))?;
        config.bindings.table.insert(Address::parse(reward)?, Address::parse(identity)?);
    }
    config.bindings.trust_on_first_use = !args.no_trust_on_first_use;
    #[cfg(feature = "s3")]
    let _local_s3 = match &args.s3_dir {
        Some(dir) => {
            let key = args.s3_key.clone().unwrap_or_else(|| format!("heurist-{:016x}", rand::random::<u64>()));
            let secret = args.s3_secret.clone().unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
            let listen = SocketAddr::from(([127, 0, 0, 1], args.s3_port));
            let s3 = heurist_sequencer::s3::LocalS3::start_on(listen, dir, &key, &secret).await?;
            s3.create_bucket(&args.s3_bucket)?;
            eprintln!("S3 server on {} (bucket {}, objects under {})", s3.endpoint(), args.s3_bucket, dir.display());
            // Our own S3: per-job keys scoped to each job's object, and an image result
            // accepted only once its PNG is there.
            s3.configure(&mut config, &args.s3_bucket);
            Some(s3)
        }
        None => None,
    };
    if let (Some(endpoint), Some(key), Some(secret)) = (args.s3_endpoint, args.s3_key, args.s3_secret) {
        config.s3 = Some(S3Grant { endpoint, bucket: args.s3_bucket, access_key_id: key, secret_access_key: secret, session_token: String::new() });
    }
    config.verify_s3_objects |= args.verify_s3_objects;
    if config.api_keys.is_empty() {
        tracing::warn!("no --api-key: submit_job will refuse every client");
    }
    let running = heurist_sequencer::start(config).await?;
    eprintln!("heurist-sequencer listening on {} (portal: {}/)", running.addr, running.url());
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    eprintln!("shutting down: finishing requests in flight");
    running.shutdown().await?;
    Ok(())
}
