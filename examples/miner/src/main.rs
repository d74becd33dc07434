//! `heurist-miner`: one native binary for Heurist LLM and image mining.
//!
//! Reads the reference miner's `config.toml` and `.env`, loads each miner id's identity from
//! `~/.heurist-keys`, fetches and checks the chat model file unless one is given, and runs per
//! miner id a worker on the chat engine and, when `--sd-checkpoint` or `--sd-model-id` names
//! image models (the latter fetched from the registry and checked), an image worker on the SD
//! engine (`sd::SdRunner`) uploading to `--s3-endpoint`. With `--device auto` miner id `i`
//! runs on CUDA GPU `i` (`devices::assign`), one engine per device. Ctrl-C finishes the
//! jobs in flight and submits them; a second Ctrl-C stops at once, the spool intact.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use heurist_inference::{ChatEngine, DeviceSpec};
use heurist_miner::config::{ReferenceConfig, expand_home, miner_ids_from_env};
use heurist_miner::spool::Spool;
use heurist_miner::worker::{LlmWorker, Stats};
use heurist_miner::discover::{CacheFinder, Family};
use heurist_miner::download::ModelStore;
use heurist_miner::estimate::Estimator;
use heurist_miner::llm::ChatModels;
use heurist_miner::signal::ModelChoice;
use heurist_miner::image::ImageWorker;
use heurist_miner::sd::SdRunner;
use heurist_miner::upload::Uploader;
use heurist_protocol::{IdentityWallet, Registry};
use heurist_protocol::client::{ClientConfig, SequencerClient};

/// `--sd-noise`: the precision whose noise image jobs draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SdNoise {
    /// Single precision (this engine's own on the CPU).
    F32,
    /// Half precision, as the reference miner's f16 pipelines draw it.
    F16,
    /// bfloat16.
    Bf16,
}

impl SdNoise {
    fn dtype(self) -> heurist_inference::image::noise::NoiseDType {
        use heurist_inference::image::noise::NoiseDType;
        match self {
            Self::F32 => NoiseDType::F32,
            Self::F16 => NoiseDType::F16,
            Self::Bf16 => NoiseDType::BF16,
        }
    }
}

/// A native Heurist miner.
#[derive(Parser, Debug)]
#[command(name = "heurist-miner", version, about)]
struct Args {
    /// The reference miner's config.toml [default: built-in defaults].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The .env file with MINER_ID_0, MINER_ID_1, ... [default: ./.env if present].
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Miner id to serve (repeatable); overrides MINER_ID_* from .env.
    #[arg(long = "miner-id")]
    miner_ids: Vec<String>,
    /// Sequencer base URL; overrides [service].base_url.
    #[arg(long)]
    base_url: Option<String>,
    /// Folder of identity key files; overrides [storage].keys_dir.
    #[arg(long)]
    keys_dir: Option<PathBuf>,
    /// Folder for the spool of finished jobs [default: <[storage].base_dir>/spool].
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// The chat model, a GGUF file [default: the registry's file for --llm-model-id,
    /// downloaded into <[storage].base_dir>/models and checked against its checksum].
    #[arg(long)]
    llm_gguf: Option<PathBuf>,
    /// Folder with the registry's models.json (and lora.json, vae.json) used to find and
    /// check model files [default: the registry bundled with this miner].
    #[arg(long)]
    registry: Option<PathBuf>,
    /// The chat model id to ask jobs for (the registry name the sequencer knows it by);
    /// none: no chat worker (then --sd-checkpoint is needed).
    #[arg(long)]
    llm_model_id: Option<String>,
    /// Another chat model `miner_signal` may switch to, `MODEL_ID=PATH` to its GGUF or just
    /// `MODEL_ID` for the registry's file already in <[storage].base_dir>/models (nothing is
    /// downloaded for it); repeatable. Checked against the registry checksum at start; one
    /// missing or bad is left out with a warning. Models in <[storage].base_dir>/models are
    /// found without it (see --pin-models).
    #[arg(long = "llm-alt-model", value_name = "MODEL_ID[=PATH]")]
    llm_alt_models: Vec<String>,
    /// An image model to serve, `MODEL_ID=PATH` to a single-file SD 1.5 / SDXL checkpoint
    /// (.safetensors, LDM layout); repeatable. The first is asked for first; `miner_signal`
    /// answers may switch among them. Runs one image worker per miner id beside the chat one.
    #[arg(long = "sd-checkpoint", value_name = "MODEL_ID=PATH")]
    sd_checkpoints: Vec<heurist_miner::sd::CheckpointSpec>,
    /// An image model to serve by its registry name (repeatable): unless --sd-checkpoint
    /// names a file for it, the registry's `file_url` is downloaded into
    /// <[storage].base_dir>/models (resumed after a cut, checked against the registry
    /// checksum; a bad file is deleted, never loaded). Served after the --sd-checkpoint ones.
    #[arg(long = "sd-model-id", value_name = "MODEL_ID")]
    sd_model_ids: Vec<String>,
    /// The precision whose noise image jobs draw from their seed: f32, or f16 as the reference
    /// miner's f16 pipelines draw it (the same seed then gives their picture), or bf16. Each is
    /// honest: verifiers re-run every precision.
    #[arg(long, value_enum, default_value_t = SdNoise::F32)]
    sd_noise: SdNoise,
    /// Switch only among the models named on the command line (a lone chat model is then
    /// pinned: its signals carry `skip_update`). Without it, a signal naming a model that is in
    /// <[storage].base_dir>/models (where downloads go), listed by the registry with a
    /// checksum the file matches, switches to it (chat: a GGUF; image: an SD 1.5 / SDXL
    /// single-file checkpoint); nothing is downloaded for a signal.
    #[arg(long)]
    pin_models: bool,
    /// The S3 endpoint image results are uploaded to (path-style), e.g. a local sequencer's
    /// embedded server `http://127.0.0.1:9000`.
    #[arg(long, default_value = "https://s3.amazonaws.com")]
    s3_endpoint: String,
    /// The S3 region requests are signed for.
    #[arg(long, default_value = heurist_miner::upload::DEFAULT_REGION)]
    s3_region: String,
    /// Where to run: auto (one worker per CUDA GPU found at start, MINER_ID_i on GPU i;
    /// CPU workers sharing one engine where no GPU answers; more ids than GPUs is an error),
    /// cpu, or cuda / cuda:N (every worker on that one device).
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Sent as `hardware` in heartbeats and signals [default: the device each worker runs on:
    /// the GPU as nvidia-smi names it, or `CPU: <model name>`]. Name only hardware you run on:
    /// metrics that do not match it are a cheat the network checks for.
    #[arg(long)]
    hardware: Option<String>,
    /// The reward rules the status lines' points estimate uses: a preset (`seed`, `later`) or
    /// a rule-set file (TOML or JSON).
    #[arg(long, default_value = "seed")]
    points_rules: String,
    /// Seconds between status lines (0: none).
    #[arg(long, default_value_t = 30)]
    status_interval: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Image jobs on the CPU allocate and free large tensors every step: keep them warm.
    heurist_inference::tune_allocator();
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

async fn run(args: Args) -> anyhow::Result<()> {
    let reference = match &args.config {
        Some(p) => ReferenceConfig::load(p)?,
        None => ReferenceConfig::default(),
    };
    let env_file = args.env_file.clone().or_else(|| Some(PathBuf::from(".env")).filter(|p| p.exists()));
    let miner_ids = if args.miner_ids.is_empty() {
        miner_ids_from_env(env_file.as_deref())?
    } else {
        args.miner_ids.iter().map(|s| s.parse().with_context(|| format!("--miner-id {s:?}"))).collect::<Result<Vec<_>, _>>()?
    };
    anyhow::ensure!(!miner_ids.is_empty(), "no miner id: set MINER_ID_0 in .env or pass --miner-id");
    let keys_dir = args.keys_dir.clone().unwrap_or_else(|| expand_home(&reference.storage.keys_dir));
    let spool_dir = args.spool_dir.clone().unwrap_or_else(|| expand_home(&reference.storage.base_dir).join("spool"));
    let base_url = args.base_url.clone().unwrap_or_else(|| reference.service.base_url.clone());
    let limits = reference.limits();
    let client = SequencerClient::new(ClientConfig {
        base_url: base_url.clone(),
        signal_url: Some(reference.service.signal_url.clone()).filter(|s| !s.is_empty()),
        ..ClientConfig::default()
    })?;
    let spool = Spool::open(&spool_dir)?;
    anyhow::ensure!(
        args.llm_model_id.is_some() || !args.sd_checkpoints.is_empty() || !args.sd_model_ids.is_empty(),
        "nothing to serve: pass --llm-model-id, --sd-checkpoint MODEL_ID=PATH or --sd-model-id, or both kinds"
    );
    let rules = heurist_points::RuleSet::load(&args.points_rules).with_context(|| format!("--points-rules {}", args.points_rules))?;
    let estimator = Arc::new(Estimator::new(rules, &load_registry(&args)?));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    let mut all_stats = Vec::new();
    let wallets = miner_ids
        .iter()
        .map(|id| {
            let loaded = IdentityWallet::load_for(&keys_dir, id).with_context(|| format!("identity for {id}"))?;
            if let Some(l) = &loaded.loose_permissions {
                tracing::warn!(path = %loaded.path.display(), "identity key file {l}");
            }
            Ok(Arc::new(loaded.wallet))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gpus = heurist_inference::cuda_device_count();
    let devices = heurist_miner::devices::assign(miner_ids.len(), gpus, args.device)?;
    tracing::info!(gpus, flag = %args.device, devices = ?devices.iter().map(ToString::to_string).collect::<Vec<_>>(), "one worker per miner id on these devices");
    let hardware = |device: DeviceSpec| args.hardware.clone().unwrap_or_else(|| heurist_miner::devices::hardware_name(device));
    let model_store = || -> anyhow::Result<ModelStore> {
        Ok(ModelStore::new(expand_home(&reference.storage.base_dir).join("models"))?.with_progress(true))
    };
    let registry = Arc::new(load_registry(&args)?);
    let finder = |family: Family| -> anyhow::Result<Option<Arc<CacheFinder>>> {
        if args.pin_models {
            return Ok(None);
        }
        let f = CacheFinder::new(model_store()?.with_progress(false), registry.clone(), family);
        let cached = f.cached();
        if !cached.is_empty() {
            tracing::info!(family = ?family, models = ?cached, "in the model cache: miner_signal may switch to these (checked when asked)");
        }
        Ok(Some(Arc::new(f)))
    };
    let specs = if args.sd_model_ids.is_empty() {
        args.sd_checkpoints.clone()
    } else {
        heurist_miner::sd::checkpoints_for(&model_store()?, &load_registry(&args)?, &args.sd_model_ids, &args.sd_checkpoints).await?
    };
    if !specs.is_empty() {
        let first = specs[0].model_id.clone();
        let mut runners = Vec::new();
        for device in distinct(&devices) {
            tracing::info!(models = ?specs.iter().map(|s| &s.model_id).collect::<Vec<_>>(), device = %device, "loading the image models");
            let specs = specs.clone();
            let noise = args.sd_noise.dtype();
            runners.push((device, Arc::new(tokio::task::spawn_blocking(move || SdRunner::load(&specs, device)).await??.with_noise(noise))));
        }
        let uploader = Uploader::new(&args.s3_endpoint, &args.s3_region, Duration::from_secs(60))?;
        let image_finder = finder(Family::Image)?;
        for ((id, wallet), device) in miner_ids.iter().zip(&wallets).zip(&devices) {
            let runner = on_device(&runners, *device)?.clone();
            let models = runner.models();
            let stats = Arc::new(Stats::estimating(estimator.clone()));
            all_stats.push((format!("{id} (image)"), stats.clone()));
            let worker = Arc::new(ImageWorker {
                miner_id: id.clone(),
                wallet: wallet.clone(),
                model: Arc::new(match &image_finder {
                    Some(f) => ModelChoice::new(first.clone(), models.clone()).with_finder(f.clone()),
                    None => ModelChoice::new(first.clone(), models.clone()),
                }),
                runner,
                uploader: uploader.clone(),
                bucket: reference.storage.s3_bucket.clone(),
                client: client.clone(),
                spool: spool.clone(),
                limits: limits.clone(),
                version: reference.versions.sd_version.clone(),
                hardware: hardware(*device),
                stats,
            });
            workers.spawn(worker.run(stop_rx.clone()));
        }
    }
    let Some(llm_model_id) = args.llm_model_id.clone() else {
        return serve(workers, all_stats, args.status_interval, stop_tx, &spool_dir, &base_url).await;
    };
    let gguf = match &args.llm_gguf {
        Some(p) => p.clone(),
        None => {
            let registry = load_registry(&args)?;
            model_store()?.ensure(&registry, &llm_model_id).await.with_context(|| format!("--llm-model-id {llm_model_id}"))?
        }
    };
    let others = alt_chat_models(&args, &llm_model_id, &model_store).await?;
    if !others.is_empty() {
        tracing::info!(models = ?others.keys().collect::<Vec<_>>(), "miner_signal may switch the chat model to these");
    }
    let chat_finder = finder(Family::Chat)?;
    let mut chat = Vec::new();
    for device in distinct(&devices) {
        tracing::info!(model = %gguf.display(), device = %device, "loading the chat model");
        let path = gguf.clone();
        let engine = Arc::new(heurist_miner::llm::SharedEngine::new(
            tokio::task::spawn_blocking(move || ChatEngine::load_gguf(&path, device))
                .await?
                .with_context(|| format!("chat model {} on {device}", gguf.display()))?,
        ));
        let models = match &chat_finder {
            Some(f) => ChatModels::discovering(llm_model_id.clone(), engine, others.clone(), device, f.clone()),
            None if others.is_empty() => ChatModels::single(llm_model_id.clone(), engine),
            None => ChatModels::switchable(llm_model_id.clone(), engine, others.clone(), device),
        };
        chat.push((device, Arc::new(models)));
    }
    for ((id, wallet), device) in miner_ids.into_iter().zip(wallets).zip(devices) {
        let models = on_device(&chat, device)?.clone();
        let stats = Arc::new(Stats::estimating(estimator.clone()));
        all_stats.push((id.to_string(), stats.clone()));
        let worker = Arc::new(LlmWorker {
            miner_id: id,
            wallet,
            models,
            client: client.clone(),
            spool: spool.clone(),
            limits: limits.clone(),
            version: reference.versions.llm_version.clone(),
            hardware: hardware(device),
            stats,
        });
        workers.spawn(worker.run(stop_rx.clone()));
    }
    serve(workers, all_stats, args.status_interval, stop_tx, &spool_dir, &base_url).await
}

/// The distinct devices among the workers', in first-seen order: one engine is loaded on each,
/// so CPU workers (or workers pinned to one GPU) share it.
fn distinct(devices: &[DeviceSpec]) -> Vec<DeviceSpec> {
    let mut seen = Vec::new();
    for d in devices {
        if !seen.contains(d) {
            seen.push(*d);
        }
    }
    seen
}

/// The engine loaded on `device` (every worker's device had one loaded by `distinct`).
fn on_device<T>(loaded: &[(DeviceSpec, T)], device: DeviceSpec) -> anyhow::Result<&T> {
    loaded.iter().find(|(d, _)| *d == device).map(|(_, t)| t).with_context(|| format!("no engine loaded on {device}"))
}

/// The `--llm-alt-model` files that are present and match the registry's checksum, by model id.
async fn alt_chat_models(
    args: &Args,
    primary: &str,
    model_store: &impl Fn() -> anyhow::Result<ModelStore>,
) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut found = HashMap::new();
    if args.llm_alt_models.is_empty() {
        return Ok(found);
    }
    let (registry, store) = (load_registry(args)?, model_store()?);
    for spec in &args.llm_alt_models {
        let (id, given) = match spec.split_once('=') {
            Some((id, path)) => (id, Some(PathBuf::from(path))),
            None => (spec.as_str(), None),
        };
        if id == primary {
            continue;
        }
        match store.local_checked(&registry, id, given.as_deref()).await {
            Ok(Some(path)) => {
                found.insert(id.to_owned(), path);
            }
            Ok(None) => tracing::warn!(model = id, "--llm-alt-model: not in the model cache; miner_signal cannot switch to it"),
            Err(error) => tracing::warn!(model = id, %error, "--llm-alt-model: left out; miner_signal cannot switch to it"),
        }
    }
    Ok(found)
}

/// The registry model files are found and checked by: `--registry`, or the bundled one.
fn load_registry(args: &Args) -> anyhow::Result<Registry> {
    Ok(match &args.registry {
        Some(dir) => Registry::from_dir(dir).with_context(|| format!("--registry {}", dir.display()))?,
        None => {
            let mut r = Registry::bundled()?;
            r.extend(Registry::bundled_2024_07()?);
            r
        }
    })
}

/// Prints status lines and waits for the workers, or for Ctrl-C (twice: at once).
async fn serve(
    mut workers: tokio::task::JoinSet<heurist_miner::Result<()>>,
    all_stats: Vec<(String, Arc<Stats>)>,
    status_every: u64,
    stop_tx: tokio::sync::watch::Sender<bool>,
    spool_dir: &std::path::Path,
    base_url: &str,
) -> anyhow::Result<()> {
    eprintln!("heurist-miner: {} worker(s) on {base_url}; spool in {}", all_stats.len(), spool_dir.display());
    tokio::spawn(async move {
        if status_every == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(status_every));
        tick.tick().await;
        loop {
            tick.tick().await;
            for (id, s) in &all_stats {
                eprintln!("{}", s.status_line(id, id.ends_with("(image)")));
            }
        }
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopping: finishing the jobs in flight (Ctrl-C again to stop now; the spool keeps their results)");
            let _ = stop_tx.send(true);
        }
        _ = async { while workers.join_next().await.is_some() {} } => return Ok(()),
    }
    tokio::select! {
        _ = async { while workers.join_next().await.is_some() {} } => Ok(()),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopped at once; unsubmitted results stay in {}", spool_dir.display());
            std::process::exit(130);
        }
    }
}
