//! `heurist-demo`: the whole network on one machine.
//!
//! A local sequencer with its portal and an embedded S3 server (`s3s-fs`, loopback, a temporary
//! folder), three honest chat miners (two on this crate's CPU kernels, one on candle's quantized
//! llama, whose near-ties fall elsewhere: the greedy audit must pass it too) and one chat
//! cheater, three honest image miners (SD 1.5 twice and
//! SDXL) and an image cheater, a client feeding chat jobs and image jobs built from the
//! network's example files (SD 1.5 ones served by the tiny SD 1.5 checkpoint, SDXL ones by the
//! tiny SDXL checkpoint, each under a model id the demo registers with the example model's
//! registry type), audits of every accepted result on the claimed model, and a closing table
//! of jobs, verdicts and points.
//!
//! Image audits (`heurist_sequencer::audit::ImageAuditor`) fetch the PNG from S3, re-run the
//! job with the noise of each precision a miner may run in and compare within that precision's
//! bars ([`IMAGE_TOLERANCE`]). The honest image miners draw their noise in three precisions:
//! carol in f32, grace in f16 as the reference miner's f16 pipelines draw it, dave in bf16; the
//! same seed gives each another picture, and none may be slashed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use heurist_inference::{ChatEngine, DeviceSpec, GgufBody};
use heurist_miner::llm::SharedEngine;
use heurist_miner::spool::Spool;
use heurist_miner::worker::{LlmWorker, Stats};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::openai::{ChatMessage, Choice, FinishReason, Role};
use heurist_protocol::{
    IdentityWallet, Job, JobParams, MinerId, MinerLimits, MinerRequest, MinerSubmit, Nullable, Registry, RegistryEntry,
    RequestAnswer, SubmitJob, SubmitResult, TokenUsage,
};
use heurist_miner::image::{Image, ImageError, ImageRunner, ImageWorker};
use heurist_miner::sd::{CheckpointSpec, SdRunner};
use heurist_miner::signal::ModelChoice;
use heurist_miner::upload::{DEFAULT_REGION, Uploader};
use heurist_protocol::SdParams;
use heurist_inference::image::noise::NoiseDType;
use heurist_sequencer::audit::{ByKind, ImageAuditor, ImageRerun, Precision, PrecisionBars, RgbImage};
use heurist_sequencer::s3::LocalS3;
use heurist_sequencer::{AuditPolicy, AuditVerdict, Auditor, SequencerConfig};
use serde_json::{Value, json};

/// Where every miner of the demo runs its models; each reports this device's real name as its
/// `hardware` (`heurist_miner::devices::hardware_name`), as an honest miner must.
const DEVICE: DeviceSpec = DeviceSpec::Cpu;
/// The registry name the demo serves SmolLM2 under.
const MODEL: &str = "smollm2-135m-instruct";
/// The registry name the demo serves the tiny SD 1.5 checkpoint under (type `sd15`).
const SD_MODEL: &str = "tiny-sd15";
/// The registry name the demo serves the tiny SDXL checkpoint under (type `sdxl10`).
const SDXL_MODEL: &str = "tiny-sdxl";
/// The example files' SDXL models (registry type `sdxl10`), whose jobs the demo maps onto the
/// tiny SDXL checkpoint.
const SDXL_EXAMPLES: [&str; 4] = ["AnimagineXL", "CyberRealisticXL", "DreamShaperXL", "AAMXLAnimeMix"];
/// The network's image bucket name, on the embedded S3 server.
const BUCKET: &str = "heurist-images";
/// The example files' SD 1.5 models (registry type `sd15`), whose jobs the demo maps onto the
/// tiny checkpoint.
const SD15_EXAMPLES: [&str; 4] = ["Aurora", "BrainDance", "YamersCartoonArcadia", "ArthemyComics"];
/// What counts as the same image in an audit: the bars heurist-verify calibrated on the
/// reference miner's own stack, per precision. The engine is deterministic for a job on one
/// build (heurist-miner's test `rerun_with_another_thread_count_gives_the_same_pixels`), so the
/// demo's honest miners match their precision's re-run exactly; a cheater's image (a third of
/// the steps) sits far below every bar.
const IMAGE_TOLERANCE: PrecisionBars = PrecisionBars::NETWORK;
const API_KEY: &str = "demo-key";

/// Run a local Heurist network: sequencer, honest miners, a cheater, audits, points.
#[derive(Parser, Debug)]
#[command(name = "heurist-demo", version, about)]
struct Args {
    /// Chat jobs to feed.
    #[arg(long, default_value_t = 12)]
    jobs: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 24)]
    max_tokens: u32,
    /// Image jobs to feed, built from the SD 1.5 example files in turn.
    #[arg(long, default_value_t = 4)]
    image_jobs: usize,
    /// SDXL image jobs to feed, built from the SDXL example files in turn (run on the tiny
    /// SDXL checkpoint by their own miner).
    #[arg(long, default_value_t = 2)]
    sdxl_jobs: usize,
    /// The network's example jobs (heurist-models/examples; the repository's copy by default).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../heurist-protocol/data/heurist-models/examples"))]
    examples: PathBuf,
    /// Clamp image jobs to at most this many steps (0: as the example has them). The
    /// examples' 20 to 30 steps at 512x768 take over a minute an image on 2 CPU cores, past
    /// the protocol's 18 s image deadline, hence the default.
    #[arg(long, default_value_t = 8)]
    max_image_steps: u32,
    /// Clamp image jobs to at most this width and height (0: as the example has them).
    #[arg(long, default_value_t = 192)]
    max_image_side: u32,
    /// Where the sequencer listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Keep the sequencer and its portal up after the run, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Keep the sequencer's data here instead of a temporary folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The seed's reward rules plus SmolLM2 at 0.01x (a 135M model next to Mixtral's 1x).
fn rules_file(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let mut text = heurist_points::RuleSet::preset_text("seed")?.to_owned();
    text.push_str(&format!("\n[llama.models.\"{MODEL}\"]\nmultiplier = 0.01\nvram_gb = 1\n"));
    let path = dir.join("demo-rules.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Audits greedy answers on the claimed model (`heurist-verify`'s one-pass check, with the
/// margin honest engines keep).
struct GreedyAuditor {
    engine: Arc<SharedEngine>,
    limits: MinerLimits,
}

impl Auditor for GreedyAuditor {
    fn audit(&self, job: &Job, submit: &MinerSubmit) -> AuditVerdict {
        let Ok(clamped) = self.limits.clamp(job, || 0) else { return AuditVerdict::Skipped { reason: "job does not clamp".into() } };
        let JobParams::Llm(params) = &clamped.params else { return AuditVerdict::Skipped { reason: "not a chat job".into() } };
        if params.temperature != 0.0 {
            return AuditVerdict::Skipped { reason: "sampled job: no exact reference".into() };
        }
        let (claimed, ran_to_limit) = match submit.result.choices() {
            Some(Ok(c)) if !c.is_empty() => {
                (c[0].message.text_content(), c[0].finish_reason == Some(heurist_protocol::openai::FinishReason::Length))
            }
            _ => return AuditVerdict::Fail { evidence: "the result holds no answer".into() },
        };
        let request = match heurist_miner::llm::request_for(params) {
            Ok(request) => request,
            Err(e) => return AuditVerdict::Skipped { reason: format!("the job's request does not run: {e}") },
        };
        // One generation at a time on the shared engine: see `SharedEngine`.
        let check = {
            let _turn = self.engine.turn();
            let thresholds = heurist_verify::llm::GreedyThresholds::default();
            heurist_verify::llm::check_greedy_margin(self.engine.engine(), &request, &claimed, ran_to_limit, &thresholds)
        };
        match check {
            Ok(check) if check.holds => AuditVerdict::Pass,
            Ok(check) => AuditVerdict::Fail { evidence: check.reasons.join("; ") },
            Err(e) => AuditVerdict::Skipped { reason: e.to_string() },
        }
    }
}

/// An honest image miner drawing its noise in another precision than f32 (`--sd-noise`).
struct DrawsIn(Arc<SdRunner>, NoiseDType);

impl ImageRunner for DrawsIn {
    fn generate(&self, model_id: &str, params: &SdParams) -> Result<Image, ImageError> {
        self.0.generate_drawn(model_id, params, self.1)
    }
}

/// An image cheater's engine: runs a third of the steps the job asks for (a third of the
/// work) and returns that image as the job's.
struct FewerSteps(Arc<SdRunner>);

impl ImageRunner for FewerSteps {
    fn generate(&self, model_id: &str, params: &SdParams) -> Result<Image, ImageError> {
        let cheap = SdParams { steps: (params.steps / 3).max(1), ..params.clone() };
        self.0.generate(model_id, &cheap)
    }
}

/// The auditor's re-run of an image job: the job clamped as a miner clamps it, run on the
/// claimed model's checkpoint.
struct Rerun {
    runner: Arc<SdRunner>,
    limits: MinerLimits,
}

impl ImageRerun for Rerun {
    fn rerun(&self, job: &Job, precision: Precision) -> Result<RgbImage, String> {
        let clamped = self.limits.clamp(job, || 0).map_err(|e| e.to_string())?;
        let JobParams::Sd(params) = clamped.params else { return Err("not an image job".into()) };
        let img = self.runner.generate_drawn(&job.model_id, &params, precision.into()).map_err(|e| e.to_string())?;
        Ok(RgbImage { width: img.width(), height: img.height(), rgb: img.rgb().to_vec() })
    }
}

/// The tiny SD 1.5 checkpoint (heurist-inference's test fixture, 3 MB, made by
/// tools/make_sd_models.py).
fn tiny_sd15() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../heurist-inference/tests/fixtures/sd/tiny-sd15-fp16.safetensors")
}

/// The tiny SDXL checkpoint (heurist-inference's test fixture, made by
/// tools/make_sd_models.py).
fn tiny_sdxl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../heurist-inference/tests/fixtures/sd/tiny-sdxl-fp16.safetensors")
}

/// `count` image jobs from the example files of `examples` in turn (then their `-2`, `-3`
/// variants), for `model`, with ids `{prefix}-NNN`, clamped as asked.
fn image_jobs(args: &Args, examples: &[&str], count: usize, model: &str, prefix: &str) -> anyhow::Result<Vec<(String, SubmitJob)>> {
    let mut out = Vec::new();
    for i in 0..count {
        let name = examples[i % examples.len()];
        let file = match i / examples.len() {
            0 => format!("{name}.json"),
            n => format!("{name}-{}.json", n % 3 + 1),
        };
        let path = args.examples.join(&file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("example job {}", path.display()))?;
        let mut input: Value = serde_json::from_str(&text).with_context(|| format!("example job {}", path.display()))?;
        let steps = input["num_inference_steps"].take();
        let obj = input.as_object_mut().context("an example job is a JSON object")?;
        let clamp = |v: &Value, max: u32| match (v.as_u64(), max) {
            (Some(n), m) if m > 0 && n > u64::from(m) => json!(m),
            _ => v.clone(),
        };
        obj.insert("num_iterations".into(), clamp(&steps, args.max_image_steps));
        for side in ["width", "height"] {
            let v = clamp(&obj[side], args.max_image_side);
            obj.insert(side.into(), v);
        }
        let job: SubmitJob = serde_json::from_value(json!({"job_id": format!("{prefix}-{i:03}"), "model_id": model, "model_input": {"SD": input}}))?;
        out.push((file, job));
    }
    Ok(out)
}

/// The cheater: answers every job at once with made-up text instead of running the model,
/// and signs it properly — only an audit can tell.
async fn cheat(client: SequencerClient, id: MinerId, wallet: IdentityWallet, hardware: String, stop: tokio::sync::watch::Receiver<bool>) {
    let request = MinerRequest { miner_id: id.clone(), model_id: MODEL.into(), min_deadline: None, hardware: Some(hardware), version: Some("llm-v1.2.0".into()), extra: Default::default() };
    while !*stop.borrow() {
        match client.request_job(&request).await {
            Ok(RequestAnswer::Job(job)) => {
                // A short pause so its latency looks like work.
                tokio::time::sleep(Duration::from_millis(3000)).await;
                let choices = vec![Choice { index: 0, message: ChatMessage::text(Role::Assistant, "I am not sure, but I think the answer is 42."), finish_reason: Some(FinishReason::Stop), extra: Default::default() }];
                let Ok(result) = SubmitResult::from_choices(&choices) else { continue };
                let Ok(signature) = wallet.sign_hourly(&id, now_s()) else { continue };
                // It also claims far more tokens than it made.
                let usage = Some(TokenUsage { prompt_tokens: 400, completion_tokens: 400 });
                let submit = MinerSubmit { miner_id: id.clone(), job_id: job.job_id.clone(), result, request_latency: 0.01, loading_latency: Nullable::Absent, inference_latency: 0.05, upload_latency: Nullable::Absent, signature, identity_address: wallet.address().clone(), usage, extra: serde_json::Map::new() };
                let _ = client.submit(&submit).await;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn smollm2() -> anyhow::Result<PathBuf> {
    if let Ok(p) = heurist_inference::smollm2_path() {
        return Ok(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fetch_smollm2.py");
    eprintln!("fetching SmolLM2-135M-Instruct (first run): python3 {}", script.display());
    let status = std::process::Command::new("python3").arg(&script).status().context("running python3 tools/fetch_smollm2.py")?;
    anyhow::ensure!(status.success(), "fetching SmolLM2 failed; run `python3 tools/fetch_smollm2.py` and retry");
    Ok(heurist_inference::smollm2_path()?)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The demo's miner runs image jobs on the CPU: keep their tensors' buffers warm.
    heurist_inference::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().join("sequencer"));
    std::fs::create_dir_all(&data_dir)?;
    let model_path = smollm2()?;
    println!("[1/5] loading {} on the CPU", model_path.display());
    let candle_path = model_path.clone();
    let engine = Arc::new(SharedEngine::new(tokio::task::spawn_blocking(move || ChatEngine::load_gguf(model_path, DEVICE)).await??));
    // The same model on candle's quantized llama: other kernels, other sums, other near-ties.
    let candle_engine = Arc::new(SharedEngine::new(
        tokio::task::spawn_blocking(move || ChatEngine::load_gguf_with(candle_path, DEVICE, GgufBody::Candle)).await??,
    ));

    let sd_runner = {
        let specs = [
            CheckpointSpec { model_id: SD_MODEL.into(), path: tiny_sd15() },
            CheckpointSpec { model_id: SDXL_MODEL.into(), path: tiny_sdxl() },
        ];
        Arc::new(tokio::task::spawn_blocking(move || SdRunner::load(&specs, DEVICE)).await??)
    };
    let s3 = LocalS3::start(tmp.path().join("s3"), "demo-access-key", "demo-secret-key").await?;
    s3.create_bucket(BUCKET)?;
    let grant = s3.grant(BUCKET);
    println!("      S3 server (s3s-fs) on {}, bucket {BUCKET}", s3.endpoint());

    let mut registry = Registry::bundled()?;
    registry.models.push(serde_json::from_value::<RegistryEntry>(json!({"name": MODEL, "type": "llm135m", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "bits": 4}))?);
    registry.models.push(serde_json::from_value::<RegistryEntry>(json!({"name": SD_MODEL, "type": "sd15"}))?);
    registry.models.push(serde_json::from_value::<RegistryEntry>(json!({"name": SDXL_MODEL, "type": "sdxl10"}))?);
    let mut config = SequencerConfig::new(args.listen, data_dir.clone())?;
    config.registry = registry;
    config.api_keys = vec![API_KEY.into()];
    config.rules = rules_file(tmp.path())?.display().to_string();
    let limits = MinerLimits { sleep_duration: 1, ..MinerLimits::default() };
    // Miners get per-job keys scoped to their own object; the auditor reads with the
    // operator's key.
    s3.configure(&mut config, BUCKET);
    let image_auditor = ImageAuditor {
        rerun: Arc::new(Rerun { runner: sd_runner.clone(), limits: limits.clone() }),
        grant,
        thresholds: IMAGE_TOLERANCE,
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
    };
    let auditor = ByKind { llm: Some(Arc::new(GreedyAuditor { engine: engine.clone(), limits: limits.clone() })), sd: Some(Arc::new(image_auditor)) };
    config.audit = Some(AuditPolicy { auditor: Arc::new(auditor), rate: 1.0 });
    let seq = heurist_sequencer::start(config).await?;
    let url = seq.url();
    println!("[2/5] sequencer on {url} — portal {url}/ (JSON: {url}/api/portal)");

    let client = SequencerClient::new(ClientConfig { base_url: url.clone(), timeout: Duration::from_secs(30), ..ClientConfig::default() })?;
    let prompts = [
        "What is the capital of France?",
        "Write a haiku about GPUs.",
        "Explain what a hash function is in one sentence.",
        "Name three primary colours.",
        "What is 12 times 12?",
        "Give me a tip for learning Rust.",
        "Translate 'good morning' into Spanish.",
        "What does a miner do on the Heurist network?",
    ];
    for i in 0..args.jobs {
        let messages = serde_json::to_string(&json!([{"role": "user", "content": prompts[i % prompts.len()]}]))?;
        let job: SubmitJob = serde_json::from_value(json!({"job_id": format!("demo-chat-{i:03}"), "model_id": MODEL,
            "model_input": {"LLM": {"prompt": messages, "temperature": 0, "max_tokens": args.max_tokens, "seed": i}}}))?;
        client.submit_job(API_KEY, &job).await?;
    }
    let images = image_jobs(&args, &SD15_EXAMPLES, args.image_jobs, SD_MODEL, "demo-image")?;
    let xl_images = image_jobs(&args, &SDXL_EXAMPLES, args.sdxl_jobs, SDXL_MODEL, "demo-sdxl")?;
    for (_, job) in images.iter().chain(&xl_images) {
        client.submit_job(API_KEY, job).await?;
    }
    let total = args.jobs + images.len() + xl_images.len();
    let files = |v: &[(String, SubmitJob)]| v.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", ");
    println!("[3/5] queued {} chat jobs for {MODEL}, {} image jobs for {SD_MODEL} ({}) and {} for {SDXL_MODEL} ({})", args.jobs, images.len(), files(&images), xl_images.len(), files(&xl_images));
    if args.max_image_steps > 0 || args.max_image_side > 0 {
        println!(
            "      image jobs clamped to at most {} steps and {} pixels a side (0: as the examples) to fit 2 CPU cores and the 18 s image deadline; --max-image-steps 0 --max-image-side 0 runs them as written",
            args.max_image_steps, args.max_image_side
        );
    }

    let hardware = heurist_miner::devices::hardware_name(DEVICE);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut honest = Vec::new();
    for (n, (tag, engine)) in [("alice", &engine), ("bob", &engine), ("frank", &candle_engine)].into_iter().enumerate() {
        let id: MinerId = format!("0x{:040x}-{tag}", 0xa11ce + n).parse()?;
        let stats = Arc::new(Stats::default());
        honest.push((id.clone(), stats.clone()));
        let worker = Arc::new(LlmWorker {
            miner_id: id,
            wallet: Arc::new(IdentityWallet::generate()?),
            models: Arc::new(heurist_miner::llm::ChatModels::single(MODEL, engine.clone())),
            client: client.clone(),
            spool: Spool::open(tmp.path().join(format!("spool-{tag}")))?,
            limits: MinerLimits { concurrency_soft_limit: 1, ..limits.clone() },
            version: "llm-v1.2.0".into(),
            hardware: hardware.clone(),
            stats,
        });
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _ = worker.run(stop).await;
        });
    }
    let uploader = Uploader::new(&s3.endpoint(), DEFAULT_REGION, Duration::from_secs(30))?;
    let image_miners: [(&str, u64, &str, Arc<dyn ImageRunner>); 4] = [
        ("carol", 0xca201, SD_MODEL, sd_runner.clone()),
        ("grace", 0x62ace, SD_MODEL, Arc::new(DrawsIn(sd_runner.clone(), NoiseDType::F16))),
        ("dave", 0xda7e, SDXL_MODEL, Arc::new(DrawsIn(sd_runner.clone(), NoiseDType::BF16))),
        ("eve", 0xe7e, SD_MODEL, Arc::new(FewerSteps(sd_runner.clone()))),
    ];
    let mut image_cheater = None;
    for (tag, n, model, runner) in image_miners {
        let id: MinerId = format!("0x{n:040x}-{tag}").parse()?;
        let stats = Arc::new(Stats::default());
        if tag == "eve" {
            image_cheater = Some(id.clone());
        } else {
            honest.push((id.clone(), stats.clone()));
        }
        let worker = Arc::new(ImageWorker {
            miner_id: id,
            wallet: Arc::new(IdentityWallet::generate()?),
            model: Arc::new(ModelChoice::pinned(model)),
            runner,
            uploader: uploader.clone(),
            bucket: BUCKET.into(),
            client: client.clone(),
            spool: Spool::open(tmp.path().join(format!("spool-{tag}")))?,
            limits: limits.clone(),
            version: "sd-v1.4.0".into(),
            hardware: hardware.clone(),
            stats,
        });
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _ = worker.run(stop).await;
        });
    }
    let image_cheater = image_cheater.context("the image cheater")?;
    let cheater: MinerId = "0x00000000000000000000000000000000c4ea7e55-mallory".parse()?;
    tasks.spawn(cheat(client.clone(), cheater.clone(), IdentityWallet::generate()?, hardware.clone(), stop_rx.clone()));
    println!("[4/5] miners: alice and bob (honest, SmolLM2 on this crate's CPU kernels), frank (honest, SmolLM2 on candle's quantized llama: another engine), mallory (answers without running the model);");
    println!("      carol (honest, {SD_MODEL} on this CPU, f32 noise), grace (honest, {SD_MODEL}, f16 noise as the reference miner draws it), dave (honest, {SDXL_MODEL}, bf16 noise), eve ({SD_MODEL}, runs a third of the steps an image job asks for)");
    println!("      each reports the device it runs on as its hardware: {hardware:?}");

    // Wait for every job to be done and audited.
    let mut last = String::new();
    let view = loop {
        let v: Value = get_json(&format!("{url}/api/portal")).await?;
        let recent = v["recent"].as_array().cloned().unwrap_or_default();
        let audited = recent.iter().filter(|r| r["verdict"].get("audit").is_some()).count();
        let line = format!("      {} of {total} jobs done, {audited} audited", recent.len());
        if line != last {
            println!("{line}");
            last = line;
        }
        // Done when nothing is queued or assigned (a job whose miners all ran past its deadline
        // ends failed, not waited for) and every result is audited.
        let pending: i64 = v["jobs"]
            .as_array()
            .map(|s| s.iter().filter(|p| matches!(p[0].as_str(), Some("queued" | "assigned"))).filter_map(|p| p[1].as_i64()).sum())
            .unwrap_or(1);
        if pending == 0 && audited >= recent.len() {
            break v;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "the demo did not finish in 30 minutes: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop_tx.send(true).ok();
    while tasks.join_next().await.is_some() {}

    println!("[5/5] results after {:.1} s\n", started.elapsed().as_secs_f64());
    let mut jobs = Table::new();
    jobs.load_preset(UTF8_BORDERS_ONLY).set_header(["job", "model", "miner", "latency (s)", "points", "verdict"]);
    let mut recent = view["recent"].as_array().cloned().unwrap_or_default();
    recent.sort_by(|a, b| a["job_id"].as_str().cmp(&b["job_id"].as_str()));
    for r in &recent {
        let verdict = match r["verdict"]["audit"]["status"].as_str() {
            Some("fail") => "SLASHED (audit failed)".to_owned(),
            Some("pass") => "accepted, audit passed".to_owned(),
            Some(other) => format!("accepted, audit {other}"),
            None => "accepted".to_owned(),
        };
        let miner = r["miner_id"].as_str().unwrap_or("?");
        let job_id = r["job_id"].as_str().unwrap_or("");
        let model = if job_id.starts_with("demo-image") {
            SD_MODEL
        } else if job_id.starts_with("demo-sdxl") {
            SDXL_MODEL
        } else {
            MODEL
        };
        let points = match (r["verdict"]["points"].as_f64(), r["verdict"]["currency"].as_str()) {
            (Some(p), Some(c)) => format!("{p:.4} {c}"),
            (Some(p), None) => format!("{p:.4}"),
            _ => "-".into(),
        };
        jobs.add_row([r["job_id"].as_str().unwrap_or("?"), model, miner.rsplit('-').next().unwrap_or(miner), &format!("{:.2}", r["latency_s"].as_f64().unwrap_or(0.0)), &points, &verdict]);
    }
    println!("{jobs}\n");
    let mut miners = Table::new();
    miners.load_preset(UTF8_BORDERS_ONLY).set_header(["miner", "engine", "jobs done", "failed or slashed", "Llama points", "Waifu points"]);
    for m in view["miners"].as_array().cloned().unwrap_or_default() {
        let id = m["miner_id"].as_str().unwrap_or("?");
        miners.add_row([
            id.to_owned(),
            engine_of(id.rsplit('-').next().unwrap_or("")).to_owned(),
            m["jobs_done"].to_string(),
            m["jobs_failed"].to_string(),
            // `+ 0.0` turns a slashed-to-zero -0.0 into 0.0 for display.
            format!("{:.6}", m["llama_points"].as_f64().unwrap_or(0.0) + 0.0),
            format!("{:.6}", m["waifu_points"].as_f64().unwrap_or(0.0) + 0.0),
        ]);
    }
    println!("{miners}\n");
    let slashes = view["slashes"].as_array().cloned().unwrap_or_default();
    println!("slashes ({}):", slashes.len());
    for s in &slashes {
        println!("  {} job {}: -{} {} — {}", s["miner_id"].as_str().unwrap_or("?"), s["job_id"].as_str().unwrap_or("?"), s["points"], s["currency"].as_str().unwrap_or(""), s["reason"].as_str().unwrap_or(""));
    }
    let cheaters = [cheater.to_string(), image_cheater.to_string()];
    let is_cheater = |r: &Value| cheaters.iter().any(|c| r["miner_id"] == c.as_str());
    let honest_ok = recent.iter().filter(|r| !is_cheater(r)).all(|r| r["verdict"]["audit"]["status"] == "pass");
    let honest_of = |prefix: &str| recent.iter().filter(|r| !is_cheater(r) && r["job_id"].as_str().is_some_and(|j| j.starts_with(prefix))).count();
    let (honest_images, honest_sdxl) = (honest_of("demo-image"), honest_of("demo-sdxl"));
    // Each cheater: caught on every job it took (or it took none).
    let caught_each: Vec<(String, usize, bool)> = cheaters
        .iter()
        .map(|c| {
            let theirs: Vec<_> = recent.iter().filter(|r| r["miner_id"] == c.as_str()).collect();
            (c.rsplit('-').next().unwrap_or(c).to_owned(), theirs.len(), theirs.iter().all(|r| r["verdict"]["audit"]["status"] == "fail"))
        })
        .collect();
    let caught = caught_each.iter().all(|(_, _, all)| *all);
    for (name, took, all) in &caught_each {
        println!("cheater {name}: took {took} job(s), slashed on {}", if *all { "every one" } else { "NOT every one" });
    }
    let done: u64 = honest.iter().map(|(_, s)| s.done.load(Ordering::Relaxed)).sum();
    println!("honest image jobs: {honest_images}");
    println!("honest SDXL image jobs: {honest_sdxl} of {}", xl_images.len());
    println!("\nhonest jobs accepted and passed: {} ({done} by alice, bob, frank, carol, grace and dave); cheater caught: {}", if honest_ok { "yes" } else { "NO" }, if caught { "yes" } else { "NO" });
    if args.serve {
        println!("\nportal: {url}/ — Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    seq.shutdown().await?;
    s3.shutdown().await;
    anyhow::ensure!(recent.len() >= total, "{} of {total} jobs ended without an accepted result", total - recent.len().min(total));
    anyhow::ensure!(honest_ok, "an honest job was not accepted");
    anyhow::ensure!(caught, "a cheater was not caught on every job it took");
    Ok(())
}

/// What each demo miner runs, for the miners' table.
fn engine_of(tag: &str) -> &'static str {
    match tag {
        "alice" | "bob" => "heurist-inference CPU body (honest)",
        "frank" => "candle's quantized llama (honest)",
        "mallory" => "none: made-up text (cheater)",
        "carol" => "heurist-inference SD, f32 noise (honest)",
        "grace" => "heurist-inference SD, f16 noise as a GPU miner (honest)",
        "dave" => "heurist-inference SDXL, bf16 noise (honest)",
        "eve" => "heurist-inference SD, a third of the steps (cheater)",
        _ => "?",
    }
}

async fn get_json(url: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}
