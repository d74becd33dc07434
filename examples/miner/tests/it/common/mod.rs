//! What the miner's integration tests share: a local sequencer (serving the real SmolLM2
//! chat model's registry name, or image models with the embedded S3 server), identities and
//! the `heurist-miner` binary set up the way an operator would, job status polling, the tiny
//! SD checkpoints, an image runner that paints a gradient (a real image, real PNG, in
//! microseconds), and a fault-injecting HTTP proxy to put between the miner and the
//! sequencer or S3.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)] // each test uses a part

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use heurist_miner::image::{Image, ImageError, ImageRunner};
use heurist_protocol::client::{ClientConfig, SequencerClient};
use heurist_protocol::{IdentityWallet, MinerId, Registry, RegistryEntry, SdParams, SubmitJob, key_file_path};
use heurist_sequencer::{RunningSequencer, SequencerConfig};
use heurist_sequencer::s3::LocalS3;
use serde_json::json;

pub const KEY: &str = "test-key";
pub const SD_MODEL: &str = "AnimagineXL";
/// Another SDXL model, for switching.
pub const SD_MODEL_2: &str = "CyberRealisticXL";
pub const BUCKET: &str = "heurist-images";

/// The pixels the gradient runner paints for a size and seed: what a stored PNG must decode to.
pub fn gradient(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            rgb.push((x * 255 / width.max(1)) as u8);
            rgb.push((y * 255 / height.max(1)) as u8);
            rgb.push((seed % 251) as u8);
        }
    }
    rgb
}

/// An image runner that paints [`gradient`], counting its calls. With a gate, each call
/// first waits for a `()` on it (the test decides when a job finishes); a job with seed
/// `poison_seed` fails, as a job an engine cannot run.
#[derive(Default)]
pub struct GradientRunner {
    pub calls: AtomicU64,
    pub gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub poison_seed: Option<u64>,
    /// Seeds painted, in order.
    pub seeds: Mutex<Vec<u64>>,
}

impl GradientRunner {
    pub fn gated() -> (Self, std::sync::mpsc::Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Self { gate: Mutex::new(Some(rx)), ..Self::default() }, tx)
    }
}

impl ImageRunner for GradientRunner {
    fn generate(&self, model_id: &str, params: &SdParams) -> Result<Image, ImageError> {
        if model_id != SD_MODEL && model_id != SD_MODEL_2 {
            return Err(ImageError::UnknownModel(model_id.into()));
        }
        if let Some(rx) = self.gate.lock().unwrap().as_ref() {
            rx.recv().unwrap();
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.seeds.lock().unwrap().push(params.seed);
        if Some(params.seed) == self.poison_seed {
            return Err(ImageError::Png("poisoned job: the engine fails on it".into()));
        }
        Image::new(params.width, params.height, gradient(params.width, params.height, params.seed))
    }
}

/// Decodes a PNG to (width, height, RGB).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// An image job for the SD model.
pub fn sd_job(id: &str, width: u32, height: u32, seed: u64) -> SubmitJob {
    sd_job_for(SD_MODEL, id, width, height, seed)
}

/// An image job for `model`.
pub fn sd_job_for(model: &str, id: &str, width: u32, height: u32, seed: u64) -> SubmitJob {
    serde_json::from_value(json!({"job_id": id, "model_id": model,
        "model_input": {"SD": {"prompt": "a gradient", "width": width, "height": height, "num_iterations": 4, "guidance_scale": 7, "seed": seed}}}))
    .unwrap()
}

pub fn client(url: &str) -> SequencerClient {
    SequencerClient::new(ClientConfig { base_url: url.into(), timeout: Duration::from_secs(10), ..ClientConfig::default() }).unwrap()
}

/// A sequencer configuration whose image jobs get the S3 server's credentials.
pub fn sequencer_config(dir: &Path, listen: SocketAddr, s3: &LocalS3) -> SequencerConfig {
    let mut c = SequencerConfig::new(listen, dir.to_path_buf()).unwrap();
    c.api_keys = vec![KEY.into()];
    // Per-job keys for the miners; the sequencer checks the PNG is in the bucket before it
    // accepts the key.
    s3.configure(&mut c, BUCKET);
    c
}

/// The portal's JSON view.
pub async fn portal(url: &str) -> serde_json::Value {
    reqwest::get(format!("{url}/api/portal")).await.unwrap().json().await.unwrap()
}

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Forward it.
    Pass,
    /// Answer with this status without forwarding (the upstream never sees it).
    Refuse(u16),
    /// Forward it, then answer 502 instead of the upstream's answer (the answer is lost).
    LoseAnswer,
    /// Wait, then forward.
    Delay(Duration),
    /// Answer with this status and JSON body without forwarding.
    Answer(u16, &'static str),
}

type Policy = Arc<dyn Fn(&Method, &str) -> Fault + Send + Sync>;

struct ProxyState {
    upstream: String,
    policy: Mutex<Policy>,
    http: reqwest::Client,
    /// Per "METHOD path-prefix": requests seen, and faults injected.
    seen: Mutex<HashMap<String, u64>>,
    faults: AtomicU64,
    /// Per "METHOD path": upstream answers 2xx (whether or not the client got them).
    ok: Mutex<HashMap<String, u64>>,
}

/// A proxy on loopback in front of `upstream`, injecting faults by a policy that can be
/// changed while it runs. The Host header is passed on as received, so S3 signatures (which
/// cover it) hold through the proxy.
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            policy: Mutex::new(Arc::new(|_: &Method, _: &str| Fault::Pass)),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            seen: Mutex::new(HashMap::new()),
            faults: AtomicU64::new(0),
            ok: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new().fallback(forward).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, policy: impl Fn(&Method, &str) -> Fault + Send + Sync + 'static) {
        *self.state.policy.lock().unwrap() = Arc::new(policy);
    }

    pub fn pass(&self) {
        self.set(|_, _| Fault::Pass);
    }

    /// Requests seen whose path starts with `prefix` and whose method is `method`.
    pub fn seen(&self, method: &str, prefix: &str) -> u64 {
        self.state.seen.lock().unwrap().iter().filter(|(k, _)| k.starts_with(&format!("{method} {prefix}"))).map(|(_, n)| n).sum()
    }

    /// Upstream 2xx answers to requests whose path starts with `prefix`.
    pub fn ok(&self, method: &str, prefix: &str) -> u64 {
        self.state.ok.lock().unwrap().iter().filter(|(k, _)| k.starts_with(&format!("{method} {prefix}"))).map(|(_, n)| n).sum()
    }

    pub fn faults(&self) -> u64 {
        self.state.faults.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    *state.seen.lock().unwrap().entry(format!("{method} {path}")).or_default() += 1;
    let policy = state.policy.lock().unwrap().clone();
    let fault = policy(&method, &path);
    if fault != Fault::Pass {
        state.faults.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Fault::Refuse(status) => {
            return (StatusCode::from_u16(status).unwrap(), format!("injected fault: {status}")).into_response();
        }
        Fault::Answer(status, body) => {
            return (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body).into_response();
        }
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::Pass | Fault::LoseAnswer => {}
    }
    let key = format!("{method} {path}");
    let url = format!("{}{}", state.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut req = state.http.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            req = req.header(name, value);
        }
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    };
    if fault == Fault::LoseAnswer {
        if answer.status().is_success() {
            *state.ok.lock().unwrap().entry(key).or_default() += 1;
        }
        let _ = answer.bytes().await;
        return (StatusCode::BAD_GATEWAY, "injected fault: answer lost").into_response();
    }
    let status = answer.status();
    if status.is_success() {
        *state.ok.lock().unwrap().entry(key.clone()).or_default() += 1;
    }
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out = out.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    out.body(Body::from(bytes)).unwrap()
}

/// An image worker on the gradient runner.
pub fn image_worker(
    miner: &str,
    sequencer_url: &str,
    s3_endpoint: &str,
    spool: &heurist_miner::spool::Spool,
    runner: Arc<GradientRunner>,
) -> (heurist_miner::image::ImageWorker, Arc<heurist_miner::worker::Stats>) {
    let stats = Arc::new(heurist_miner::worker::Stats::default());
    let worker = heurist_miner::image::ImageWorker {
        miner_id: miner.parse().unwrap(),
        wallet: Arc::new(heurist_protocol::IdentityWallet::generate().unwrap()),
        model: Arc::new(heurist_miner::signal::ModelChoice::pinned(SD_MODEL)),
        runner,
        uploader: heurist_miner::upload::Uploader::new(s3_endpoint, heurist_miner::upload::DEFAULT_REGION, Duration::from_secs(10)).unwrap(),
        bucket: BUCKET.into(),
        client: client(sequencer_url),
        spool: spool.clone(),
        limits: heurist_protocol::MinerLimits { sleep_duration: 0, ..heurist_protocol::MinerLimits::default() },
        version: "sd-v1.4.0".into(),
        // What it runs on: the gradient runner is CPU work, so no GPU is claimed.
        hardware: heurist_miner::devices::cpu_name(),
        stats: stats.clone(),
    };
    (worker, stats)
}

/// Waits until `done() >= n`, failing the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The chat model's registry name (the real SmolLM2-135M-Instruct GGUF serves it).
pub const LLM_MODEL: &str = "smollm2-135m-instruct";
/// The tiny SD 1.5 checkpoint's registry name in these tests.
pub const TINY_SD15: &str = "tiny-sd15";

/// The registry entry the chat model is known by.
pub fn llm_entry() -> RegistryEntry {
    serde_json::from_value(json!({"name": LLM_MODEL, "type": "llm135m", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "bits": 4})).unwrap()
}

/// A sequencer on loopback taking client jobs under [`KEY`] for the bundled registry plus the
/// chat model, its data under `dir`.
pub async fn llm_sequencer(dir: &Path) -> RunningSequencer {
    let mut config = SequencerConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf()).unwrap();
    config.api_keys = vec![KEY.into()];
    let mut registry = Registry::bundled().unwrap();
    registry.models.push(llm_entry());
    config.registry = registry;
    heurist_sequencer::start(config).await.unwrap()
}

/// A sequencer whose image jobs get credentials for the embedded S3 server (started here,
/// its bucket created), with `extra` registry entries (e.g. the tiny checkpoints' names).
pub async fn image_sequencer(dir: &Path, extra: &[RegistryEntry]) -> (LocalS3, RunningSequencer) {
    let s3 = LocalS3::start(dir.join("s3"), "miner-key", "miner-secret").await.unwrap();
    s3.create_bucket(BUCKET).unwrap();
    let mut config = sequencer_config(&dir.join("seq"), "127.0.0.1:0".parse().unwrap(), &s3);
    config.registry.models.extend(extra.iter().cloned());
    let seq = heurist_sequencer::start(config).await.unwrap();
    (s3, seq)
}

/// An SD 1.5 registry entry named `name`, with optional `file_url` and `checksum`.
pub fn sd15_entry(name: &str, file_url: Option<&str>, checksum: Option<&str>) -> RegistryEntry {
    let mut e = json!({"name": name, "type": "sd15"});
    if let Some(u) = file_url {
        e["file_url"] = json!(u);
    }
    if let Some(c) = checksum {
        e["checksum"] = json!(c);
    }
    serde_json::from_value(e).unwrap()
}

/// A chat job with a one-message prompt, greedy.
pub fn llm_job(id: &str, prompt: &str, max_tokens: u32, seed: u64) -> SubmitJob {
    let messages = serde_json::to_string(&json!([{"role": "user", "content": prompt}])).unwrap();
    serde_json::from_value(json!({"job_id": id, "model_id": LLM_MODEL,
        "model_input": {"LLM": {"prompt": messages, "temperature": 0, "max_tokens": max_tokens, "seed": seed}}}))
    .unwrap()
}

/// A fixture checkpoint of `heurist-inference` (`tiny-sd15-fp16.safetensors`, ...).
pub fn sd_fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../heurist-inference/tests/fixtures/sd").join(file)
}

/// The tiny SD 1.5 checkpoint.
pub fn tiny_sd15() -> PathBuf {
    sd_fixture("tiny-sd15-fp16.safetensors")
}

/// Writes a fresh identity key file for `miner` into `keys_dir` (created), as an operator's
/// `~/.heurist-keys` holds it.
pub fn write_identity(keys_dir: &Path, miner: &str) -> MinerId {
    std::fs::create_dir_all(keys_dir).unwrap();
    let id: MinerId = miner.parse().unwrap();
    IdentityWallet::generate().unwrap().write_key_file(&key_file_path(keys_dir, &id)).unwrap();
    id
}

/// The `heurist-miner` binary started in `dir` with `args`: warnings only, no status lines,
/// no `MINER_ID_*` inherited from the test's environment, stderr shown.
pub fn miner_bin<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: impl IntoIterator<Item = S>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_heurist-miner"))
        .current_dir(dir)
        .args(["--status-interval", "0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("MINER_ID_0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// `GET /job/{id}` with the client key.
pub async fn job_status(url: &str, id: &str) -> serde_json::Value {
    reqwest::Client::new().get(format!("{url}/job/{id}")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap()
}

/// Polls job `id` until it has a result, failing the test after `limit` or if `child` exits.
pub async fn wait_result(url: &str, id: &str, limit: Duration, mut child: Option<&mut Child>) -> serde_json::Value {
    let t = std::time::Instant::now();
    loop {
        let s = job_status(url, id).await;
        if !s["result"].is_null() {
            return s;
        }
        if let Some(c) = child.as_deref_mut() {
            assert!(c.try_wait().unwrap().is_none(), "the miner exited before {id} had a result");
        }
        assert!(t.elapsed() < limit, "no result for {id} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills (SIGKILL) and reaps a child.
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// An HTTP server on loopback serving `body` at `/models/{name}` (a model host, as a
/// registry's `file_url` names one); returns that URL.
pub async fn serve_file(name: &str, body: Vec<u8>) -> String {
    let body = Arc::new(body);
    let app = axum::Router::new().route(&format!("/models/{name}"), axum::routing::get(move || async move { body.as_ref().clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/models/{name}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
