//! `heurist-demo`: the whole network on one machine.
//!
//! A local sequencer with its portal, two honest miners and one cheater, a client feeding
//! chat jobs, audits of every accepted answer on the claimed model, and a closing table of
//! jobs, verdicts and points. Image jobs join once the image engine lands.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use heurist_inference::{ChatEngine, DeviceSpec};
use heurist_miner::llm::SharedEngine;
use heurist_miner::spool::Spool;
use heurist_miner::worker::{LlmWorker, Stats};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::openai::{ChatMessage, Choice, FinishReason, Role};
use heurist_protocol::{
    IdentityWallet, Job, JobParams, MinerId, MinerLimits, MinerRequest, MinerSubmit, Nullable, Registry, RegistryEntry,
    RequestAnswer, SubmitJob, SubmitResult,
};
use heurist_sequencer::{AuditPolicy, AuditVerdict, Auditor, SequencerConfig};
use serde_json::{Value, json};

/// The registry name the demo serves SmolLM2 under.
const MODEL: &str = "smollm2-135m-instruct";
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

/// Audits an answer by re-running greedy jobs on the claimed model (`heurist-verify`).
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
        let claimed = match submit.result.choices() {
            Some(Ok(c)) if !c.is_empty() => c[0].message.text_content(),
            _ => return AuditVerdict::Fail { evidence: "the result holds no answer".into() },
        };
        let request = heurist_miner::llm::request_for(params);
        // One generation at a time on the shared engine: see `SharedEngine`.
        let check = {
            let _turn = self.engine.turn();
            heurist_verify::llm::check_greedy(self.engine.engine(), &request, &claimed)
        };
        match check {
            Ok(check) if check.matches => AuditVerdict::Pass,
            Ok(check) => AuditVerdict::Fail { evidence: check.evidence(&claimed) },
            Err(e) => AuditVerdict::Skipped { reason: e.to_string() },
        }
    }
}

/// The cheater: answers every job at once with made-up text instead of running the model,
/// and signs it properly — only an audit can tell.
async fn cheat(client: SequencerClient, id: MinerId, wallet: IdentityWallet, stop: tokio::sync::watch::Receiver<bool>) {
    let request = MinerRequest { miner_id: id.clone(), model_id: MODEL.into(), min_deadline: None, hardware: Some("NVIDIA GeForce RTX 4090".into()), version: Some("llm-v1.2.0".into()), extra: Default::default() };
    while !*stop.borrow() {
        match client.request_job(&request).await {
            Ok(RequestAnswer::Job(job)) => {
                // A short pause so its latency looks like work.
                tokio::time::sleep(Duration::from_millis(3000)).await;
                let choices = vec![Choice { index: 0, message: ChatMessage::text(Role::Assistant, "I am not sure, but I think the answer is 42."), finish_reason: Some(FinishReason::Stop), extra: Default::default() }];
                let Ok(result) = SubmitResult::from_choices(&choices) else { continue };
                let Ok(signature) = wallet.sign_hourly(&id, now_s()) else { continue };
                let mut extra = serde_json::Map::new();
                // It also claims far more tokens than it made.
                extra.insert("usage".into(), json!({"prompt_tokens": 400, "completion_tokens": 400}));
                let submit = MinerSubmit { miner_id: id.clone(), job_id: job.job_id.clone(), result, request_latency: 0.01, loading_latency: Nullable::Absent, inference_latency: 0.05, upload_latency: Nullable::Absent, signature, identity_address: wallet.address().clone(), extra };
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
    let engine = Arc::new(SharedEngine::new(tokio::task::spawn_blocking(move || ChatEngine::load_gguf(model_path, DeviceSpec::Cpu)).await??));

    let mut registry = Registry::bundled()?;
    registry.models.push(serde_json::from_value::<RegistryEntry>(json!({"name": MODEL, "type": "llm135m", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "bits": 4}))?);
    let mut config = SequencerConfig::new(args.listen, data_dir.clone())?;
    config.registry = registry;
    config.api_keys = vec![API_KEY.into()];
    config.rules = rules_file(tmp.path())?.display().to_string();
    let limits = MinerLimits { sleep_duration: 1, ..MinerLimits::default() };
    config.audit = Some(AuditPolicy { auditor: Arc::new(GreedyAuditor { engine: engine.clone(), limits: limits.clone() }), rate: 1.0 });
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
    println!("[3/5] queued {} chat jobs for {MODEL}", args.jobs);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut honest = Vec::new();
    for (n, tag) in ["alice", "bob"].iter().enumerate() {
        let id: MinerId = format!("0x{:040x}-{tag}", 0xa11ce + n).parse()?;
        let stats = Arc::new(Stats::default());
        honest.push((id.clone(), stats.clone()));
        let worker = Arc::new(LlmWorker {
            miner_id: id,
            wallet: Arc::new(IdentityWallet::generate()?),
            model_id: MODEL.into(),
            engine: engine.clone(),
            client: client.clone(),
            spool: Spool::open(tmp.path().join(format!("spool-{tag}")))?,
            limits: MinerLimits { concurrency_soft_limit: 1, ..limits.clone() },
            version: "llm-v1.2.0".into(),
            hardware: "NVIDIA GeForce RTX 4090".into(),
            stats,
        });
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _ = worker.run(stop).await;
        });
    }
    let cheater: MinerId = "0x00000000000000000000000000000000c4ea7e55-mallory".parse()?;
    tasks.spawn(cheat(client.clone(), cheater.clone(), IdentityWallet::generate()?, stop_rx.clone()));
    println!("[4/5] miners: alice and bob (honest, SmolLM2 on this CPU), mallory (answers without running the model)");

    // Wait for every job to be done and audited.
    let mut last = String::new();
    let view = loop {
        let v: Value = get_json(&format!("{url}/api/portal")).await?;
        let recent = v["recent"].as_array().cloned().unwrap_or_default();
        let audited = recent.iter().filter(|r| r["verdict"].get("audit").is_some()).count();
        let line = format!("      {} of {} jobs done, {audited} audited", recent.len(), args.jobs);
        if line != last {
            println!("{line}");
            last = line;
        }
        if recent.len() >= args.jobs && audited >= args.jobs {
            break v;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "the demo did not finish in 30 minutes: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop_tx.send(true).ok();
    while tasks.join_next().await.is_some() {}

    println!("[5/5] results after {:.1} s\n", started.elapsed().as_secs_f64());
    let mut jobs = Table::new();
    jobs.load_preset(UTF8_BORDERS_ONLY).set_header(["job", "model", "miner", "latency (s)", "verdict"]);
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
        jobs.add_row([r["job_id"].as_str().unwrap_or("?"), MODEL, miner.rsplit('-').next().unwrap_or(miner), &format!("{:.2}", r["latency_s"].as_f64().unwrap_or(0.0)), &verdict]);
    }
    println!("{jobs}\n");
    let mut miners = Table::new();
    miners.load_preset(UTF8_BORDERS_ONLY).set_header(["miner", "jobs done", "failed or slashed", "Llama points", "Waifu points"]);
    for m in view["miners"].as_array().cloned().unwrap_or_default() {
        miners.add_row([
            m["miner_id"].as_str().unwrap_or("?").to_owned(),
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
    let honest_ok = recent.iter().filter(|r| r["miner_id"] != cheater.to_string()).all(|r| r["verdict"]["audit"]["status"] == "pass");
    let caught = recent.iter().any(|r| r["miner_id"] == cheater.to_string())
        && recent.iter().filter(|r| r["miner_id"] == cheater.to_string()).all(|r| r["verdict"]["audit"]["status"] == "fail");
    let done: u64 = honest.iter().map(|(_, s)| s.done.load(Ordering::Relaxed)).sum();
    println!("\nhonest jobs accepted and passed: {} ({done} by alice and bob); cheater caught: {}", if honest_ok { "yes" } else { "NO" }, if caught { "yes" } else { "NO" });
    if args.serve {
        println!("\nportal: {url}/ — Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    seq.shutdown().await?;
    anyhow::ensure!(honest_ok, "an honest job was not accepted");
    anyhow::ensure!(caught || !recent.iter().any(|r| r["miner_id"] == cheater.to_string()), "the cheater was not caught");
    Ok(())
}

async fn get_json(url: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}
