//! The HTTP surface: the miner endpoints of the protocol, the client side, and the portal.
//!
//! Every handler decodes with `heurist-protocol` (so a bad body is a 4xx naming the field),
//! does its storage work on a blocking thread, and changes nothing when it refuses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use heurist_points::{JobRecord, RuleSet};
use heurist_protocol::stream::{HEADER_JOB_ID, HEADER_MINER_ID, StreamedText};
use heurist_protocol::{
    Address, Job, JobParams, MinerId, MinerRequest, MinerSignal, MinerSubmit, ModelInput, ModelKind, SignalAnswer,
    SubmitJob, SubmitResult, TempCredentials, verify_hourly,
};
use serde_json::{Value, json};

use crate::config::SequencerConfig;
use crate::error::{Result, SequencerError};
use crate::ledger::LedgerHandle;
use crate::portal;
use crate::store::{JobRow, JobStore};

/// Shared state of one sequencer.
pub(crate) struct AppState {
    pub(crate) config: SequencerConfig,
    pub(crate) store: Mutex<JobStore>,
    pub(crate) ledger: Mutex<LedgerHandle>,
    pub(crate) rules: RuleSet,
    bindings: Mutex<HashMap<Address, Address>>,
    /// The latest `miner_submit_stream` of each job (until its assignment expires), for the
    /// client to read while the miner generates, and for the signed `miner_submit` to be checked
    /// against.
    streams: Mutex<HashMap<String, LiveStream>>,
    /// The address of the `miner_request` each job was handed to (since this process
    /// started): its stream must come from there.
    handed_to: Mutex<HashMap<String, IpAddr>>,
    #[cfg(feature = "s3")]
    http: reqwest::Client,
}

impl AppState {
    pub(crate) fn new(config: SequencerConfig, store: JobStore, ledger: LedgerHandle, rules: RuleSet) -> Self {
        let bindings = Mutex::new(config.bindings.table.clone());
        Self {
            config,
            store: Mutex::new(store),
            ledger: Mutex::new(ledger),
            rules,
            bindings,
            streams: Mutex::new(HashMap::new()),
            handed_to: Mutex::new(HashMap::new()),
            #[cfg(feature = "s3")]
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default(),
        }
    }
}

impl AppState {
    /// Drops what this process keeps in memory about jobs whose assignment expired (re-queued or
    /// failed): the address each was handed to and its stream. A re-queued job is streamed
    /// afresh by its next assignee. (An accepted job keeps its stream for the client.)
    pub(crate) fn forget_assignments<'a>(&self, job_ids: impl IntoIterator<Item = &'a str>) {
        let mut handed_to = lock(&self.handed_to);
        let mut streams = lock(&self.streams);
        for id in job_ids {
            handed_to.remove(id);
            streams.remove(id);
        }
    }
}

pub(crate) type Shared = Arc<AppState>;

/// A streamed answer as it stands, and the miner id its headers named (the job's assignee
/// when it arrived). A stream carries no signature, so it is never credited itself: it is
/// what the job's client sees early, and what the assignee's signed `miner_submit` must agree
/// with.
#[derive(Clone, Debug)]
struct LiveStream {
    miner_id: String,
    text: StreamedText,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs storage work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&AppState) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.map_err(|e| SequencerError::Task(e.to_string()))?
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The router with every endpoint.
pub(crate) fn router(state: Shared) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/miner_request", post(miner_request))
        .route("/miner_submit", post(miner_submit))
        .route("/miner_submit_stream", post(miner_submit_stream))
        .route("/miner_signal", post(miner_signal))
        .route("/submit_job", post(submit_job))
        .route("/job/{job_id}", get(job_status))
        .route("/api/portal", get(portal_json))
        .route("/", get(portal_html))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<()> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(SequencerError::Unauthorized)?;
    if state.config.api_keys.iter().any(|k| k == key) { Ok(()) } else { Err(SequencerError::Unauthorized) }
}

/// Whether `model_id` takes image jobs (by its registry type).
fn family_of(state: &AppState, model_id: &str) -> Result<ModelKind> {
    let entry = state
        .config
        .registry
        .get(model_id)
        .map_err(|_| SequencerError::UnknownModel { model_id: model_id.to_owned() })?;
    if entry.model_type.is_image() {
        Ok(ModelKind::Sd)
    } else if matches!(entry.model_type, heurist_protocol::ModelType::Llm(_)) {
        Ok(ModelKind::Llm)
    } else {
        Err(SequencerError::UnknownModel { model_id: model_id.to_owned() })
    }
}

async fn submit_job(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>> {
    check_key(&state, &headers)?;
    let job = SubmitJob::from_slice(&body)?;
    let family = family_of(&state, &job.model_id)?;
    let got = match job.model_input {
        ModelInput::Sd(_) => ModelKind::Sd,
        ModelInput::Llm(_) => ModelKind::Llm,
    };
    if got != family {
        return Err(SequencerError::WrongFamily {
            model_id: job.model_id,
            expected: if family == ModelKind::Sd { "SD" } else { "LLM" },
            got: got.to_string(),
        });
    }
    // Refuse now what a miner would refuse later (size 0, bad prompt JSON, ...).
    let as_job = Job { job_id: job.job_id.clone(), model_id: job.model_id.clone(), model_input: job.model_input.clone(), temp_credentials: None, extra: Default::default() };
    state.config.limits.clamp(&as_job, || 0)?;
    let timeout_s = job.deadline.unwrap_or(match family {
        ModelKind::Sd => state.config.limits.sd_timeout_seconds,
        ModelKind::Llm => state.config.limits.llm_timeout_seconds,
    });
    let input = serde_json::to_value(&job.model_input).map_err(|e| SequencerError::BadInput { what: "model_input", reason: e.to_string() })?;
    let (id, model, kind, prio) = (job.job_id.clone(), job.model_id.clone(), family.to_string(), job.priority.unwrap_or(0));
    blocking(&state, move |s| {
        lock(&s.store).enqueue(&id, &model, &kind, &input, prio, (timeout_s as i64).saturating_mul(1000), now_ms())
    })
    .await?;
    Ok(Json(json!({"job_id": job.job_id, "status": "queued"})))
}

async fn job_status(State(state): State<Shared>, headers: HeaderMap, Path(job_id): Path<String>) -> Result<Json<Value>> {
    check_key(&state, &headers)?;
    let id = job_id.clone();
    let (job, result) = blocking(&state, move |s| {
        let store = lock(&s.store);
        Ok((store.job(&id)?, store.result(&id)?))
    })
    .await?;
    let job = job.ok_or(SequencerError::UnknownJob { job_id: job_id.clone() })?;
    let stream = lock(&state.streams).get(&job_id).cloned();
    Ok(Json(json!({
        "job": job,
        "result": result,
        "stream": stream.map(|s| json!({"text": s.text.text, "complete": s.text.complete, "miner_id": s.miner_id})),
    })))
}

async fn miner_request(State(state): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> Result<Response> {
    let req = MinerRequest::from_slice(&body)?;
    let miner = req.miner_id.to_string();
    let model = req.model_id.clone();
    let row = blocking(&state, move |s| {
        let mut store = lock(&s.store);
        store.touch_miner(&miner, &model, req.hardware.as_deref(), req.version.as_deref(), now_ms())?;
        store.assign_next(&model, &miner, now_ms())
    })
    .await?;
    match row {
        None => Ok(Json(Value::Null).into_response()),
        Some(row) => {
            lock(&state.handed_to).insert(row.job_id.clone(), peer.ip());
            Ok(Json(job_for_miner(&state, &row)?).into_response())
        }
    }
}

fn job_for_miner(state: &AppState, row: &JobRow) -> Result<Job> {
    let model_input: ModelInput = serde_json::from_value(row.input.clone())
        .map_err(|_| SequencerError::Corrupt { what: "job input", value: row.job_id.clone() })?;
    let temp_credentials = match (&model_input, &state.config.s3) {
        (ModelInput::Sd(_), Some(s3)) => {
            Some(TempCredentials(s3.access_key_id.clone(), s3.secret_access_key.clone(), s3.session_token.clone()))
        }
        _ => None,
    };
    Ok(Job { job_id: row.job_id.clone(), model_id: row.model_id.clone(), model_input, temp_credentials, extra: Default::default() })
}

/// Checks the signature against the identity bound to the reward wallet (binding it on first
/// use when so configured).
fn check_identity(state: &AppState, submit: &MinerSubmit, now_s: u64) -> Result<()> {
    let reward = Address::parse(submit.miner_id.reward_address())?;
    let bound = lock(&state.bindings).get(&reward).cloned();
    let expected = match bound {
        Some(b) => b,
        None if state.config.bindings.trust_on_first_use => submit.identity_address.clone(),
        None => {
            return Err(SequencerError::Refused { reason: format!("reward wallet {reward} has no bound identity") });
        }
    };
    if expected != submit.identity_address {
        return Err(SequencerError::Refused {
            reason: format!("identity {} is not the one bound to {reward} ({expected})", submit.identity_address),
        });
    }
    verify_hourly(&submit.miner_id, &expected, &submit.signature, now_s)
        .map_err(|e| SequencerError::Refused { reason: e.to_string() })?;
    lock(&state.bindings).entry(reward).or_insert(expected);
    Ok(())
}

async fn miner_submit(State(state): State<Shared>, body: Bytes) -> Result<Json<Value>> {
    let submit = MinerSubmit::from_slice(&body)?;
    let now = now_ms();
    let checked = check_identity(&state, &submit, (now / 1000) as u64);
    let miner = submit.miner_id.to_string();
    if let Err(e) = checked {
        let m = miner.clone();
        blocking(&state, move |s| lock(&s.store).count_failure(&m)).await?;
        return Err(e);
    }
    if let SubmitResult::S3Key(key) = &submit.result
        && state.config.verify_s3_objects
    {
        check_object(&state, key).await?;
    }
    check_against_stream(&state, &submit)?;
    let submission = serde_json::to_value(&submit).map_err(|e| SequencerError::BadInput { what: "body", reason: e.to_string() })?;
    let job_id = submit.job_id.clone();
    let audited = submit.clone();
    let outcome = blocking(&state, move |s| accept(s, &Answer::from(&submit), &submission, now)).await?;
    // The stream stays for the client to read beside the result; the address is not needed.
    lock(&state.handed_to).remove(&job_id);
    tracing::info!(job_id, miner, points = outcome.points, "accepted");
    if let Some(policy) = state.config.audit.clone()
        && rand::random::<f64>() < policy.rate
    {
        let s = state.clone();
        // The miner has its answer; the audit runs after, as the network's monitoring does.
        tokio::spawn(async move {
            if let Err(e) = blocking(&s, move |s| audit(s, &policy, &audited)).await {
                tracing::error!(error = %e, "audit failed to run");
            }
        });
    }
    Ok(Json(json!({"status": "accepted", "job_id": job_id, "points": outcome.points, "currency": outcome.currency})))
}

/// Refuses a chat result that contradicts what was streamed for the job under the same miner
/// id: a complete stream must be the submitted answer (up to the trailing space the pieces
/// end with), a stream cut short a beginning of it. The client read the stream; the signed
/// submission is what is credited and audited, so the two must be one answer. A job nobody
/// streamed, or streamed under another miner id (an earlier assignee), is not constrained.
fn check_against_stream(state: &AppState, submit: &MinerSubmit) -> Result<()> {
    let Some(live) = lock(&state.streams).get(&submit.job_id).cloned() else { return Ok(()) };
    if live.miner_id != submit.miner_id.to_string() {
        return Ok(());
    }
    let submitted = match submit.result.choices() {
        Some(Ok(choices)) => choices.first().map(|c| c.message.text_content()).unwrap_or_default(),
        // An image key, or choices that do not decode (refused later with their own error).
        _ => return Ok(()),
    };
    let streamed = live.text.text.trim_end();
    let agrees = if live.text.complete { submitted.trim_end() == streamed } else { submitted.starts_with(streamed) };
    if agrees {
        return Ok(());
    }
    Err(SequencerError::StreamMismatch {
        job_id: submit.job_id.clone(),
        complete: live.text.complete,
        streamed: excerpt(streamed),
        submitted: excerpt(&submitted),
    })
}

/// The first 120 characters of `s`, for an error message.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Refuses an image result whose PNG is not in the bucket; a silent S3 is a 503 (retry).
#[cfg(feature = "s3")]
async fn check_object(state: &AppState, key: &str) -> Result<()> {
    let Some(grant) = &state.config.s3 else { return Ok(()) };
    match crate::s3::object_exists(&state.http, grant, key).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(SequencerError::Refused { reason: format!("no object {key:?} in bucket {:?}: upload the image before submitting", grant.bucket) }),
        Err(reason) => Err(SequencerError::Unavailable { what: "S3", reason }),
    }
}

#[cfg(not(feature = "s3"))]
async fn check_object(_state: &AppState, _key: &str) -> Result<()> {
    Err(SequencerError::BadInput { what: "verify_s3_objects", reason: "needs heurist-sequencer built with the s3 feature".into() })
}

struct Accepted {
    points: f64,
    currency: Option<String>,
}

/// A result as the ledger and the reward rules see it: a signed `miner_submit` (a stream is
/// never one: it carries no signature).
pub(crate) struct Answer<'a> {
    pub(crate) miner_id: &'a MinerId,
    pub(crate) job_id: &'a str,
    pub(crate) result: &'a SubmitResult,
    /// The submission's other fields (`usage`, when the miner counted its tokens).
    pub(crate) extra: &'a serde_json::Map<String, Value>,
}

impl<'a> From<&'a MinerSubmit> for Answer<'a> {
    fn from(s: &'a MinerSubmit) -> Self {
        Self { miner_id: &s.miner_id, job_id: &s.job_id, result: &s.result, extra: &s.extra }
    }
}

/// Stores the result, then credits its points. Runs on a blocking thread.
fn accept(state: &AppState, submit: &Answer<'_>, submission: &Value, now: i64) -> Result<Accepted> {
    let mut store = lock(&state.store);
    let job = store.job(submit.job_id)?.ok_or_else(|| SequencerError::UnknownJob { job_id: submit.job_id.to_owned() })?;
    let expected_kind = match submit.result {
        SubmitResult::S3Key(key) => {
            let want = SubmitResult::s3_key_for(submit.job_id, submit.miner_id);
            if key != &want {
                return Err(SequencerError::Refused { reason: format!("S3 key {key:?}, expected {want:?}") });
            }
            "SD"
        }
        SubmitResult::Text(_) => {
            if let Some(Err(e)) = submit.result.choices() {
                return Err(SequencerError::BadRequest(e));
            }
            "LLM"
        }
    };
    if job.kind != expected_kind {
        return Err(SequencerError::Refused { reason: format!("a {} result for a {} job", expected_kind, job.kind) });
    }
    let record = job_record(state, &job, submit, &store)?;
    // Verdict first, points after: the record is what the ledger credit is computed from.
    let latency_ms = (now - job.assigned_at_ms.unwrap_or(now)).max(0);
    let record = JobRecord { latency_s: latency_ms as f64 / 1000.0, ..record };
    let points = state.rules.points(&record);
    let verdict = match &points {
        Ok(p) => json!({"status": "accepted", "points": p.to_f64(), "currency": p.currency().to_string(), "record": record}),
        Err(e) => json!({"status": "accepted", "points": 0.0, "note": format!("no points: {e}"), "record": record}),
    };
    store.record_result(submit.job_id, &submit.miner_id.to_string(), submission, &verdict, now)?;
    drop(store);
    let (value, currency) = match points {
        Ok(p) => {
            credit(state, submit.job_id, &submit.miner_id.to_string(), p)?;
            (p.to_f64(), Some(p.currency().to_string()))
        }
        Err(_) => {
            lock(&state.store).mark_credited(submit.job_id)?;
            (0.0, None)
        }
    };
    Ok(Accepted { points: value, currency })
}

/// Audits one accepted result; a failure slashes the job's points with the evidence.
fn audit(state: &AppState, policy: &crate::audit::AuditPolicy, submit: &MinerSubmit) -> Result<()> {
    let row = lock(&state.store).job(&submit.job_id)?.ok_or_else(|| SequencerError::UnknownJob { job_id: submit.job_id.clone() })?;
    let job = job_for_miner(state, &row)?;
    let verdict = policy.auditor.audit(&job, submit);
    let mut result = lock(&state.store).result(&submit.job_id)?.map(|r| r.verdict).unwrap_or(Value::Null);
    match &verdict {
        crate::audit::AuditVerdict::Pass => result["audit"] = json!({"status": "pass"}),
        crate::audit::AuditVerdict::Skipped { reason } => result["audit"] = json!({"status": "skipped", "reason": reason}),
        crate::audit::AuditVerdict::Fail { evidence } => {
            tracing::warn!(job_id = submit.job_id, miner = %submit.miner_id, evidence, "audit failed: slashing");
            let slashed = lock(&state.ledger).append(&[heurist_points::ledger::NewEntry::SlashJob {
                job_id: submit.job_id.clone(),
                reason: evidence.clone(),
            }]);
            match slashed {
                // Nothing credited (no points for this model): nothing to take back.
                Ok(_) | Err(heurist_points::PointsError::UnknownJob { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            result["status"] = json!("slashed");
            result["audit"] = json!({"status": "fail", "evidence": evidence});
            lock(&state.store).count_failure(&submit.miner_id.to_string())?;
        }
    }
    lock(&state.store).set_verdict(&submit.job_id, &result)
}

/// Credits a stored result's points; a credit already in the ledger counts as done.
pub(crate) fn credit(state: &AppState, job_id: &str, miner_id: &str, points: heurist_points::Points) -> Result<()> {
    match lock(&state.ledger).credit(job_id, miner_id, points) {
        Ok(_) | Err(heurist_points::PointsError::DuplicateCredit { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    lock(&state.store).mark_credited(job_id)
}

/// The finished-job record the reward rules read.
pub(crate) fn job_record(state: &AppState, job: &JobRow, submit: &Answer<'_>, store: &JobStore) -> Result<JobRecord> {
    let as_job = Job {
        job_id: job.job_id.clone(),
        model_id: job.model_id.clone(),
        model_input: serde_json::from_value(job.input.clone())
            .map_err(|_| SequencerError::Corrupt { what: "job input", value: job.job_id.clone() })?,
        temp_credentials: None,
        extra: Default::default(),
    };
    let clamped = state.config.limits.clamp(&as_job, || 0)?;
    let model_type = state.config.registry.get(&job.model_id).ok().map(|e| e.model_type.as_str().to_owned());
    let hardware = store
        .miner(&submit.miner_id.to_string())?
        .and_then(|m| m.hardware)
        .filter(|h| heurist_points::GpuCatalogue::builtin().is_ok_and(|c| c.lookup(h).is_ok()));
    let mut record = JobRecord {
        model_id: job.model_id.clone(),
        model_type,
        width: 0,
        height: 0,
        steps: 0,
        input_tokens: 0,
        output_tokens: 0,
        latency_s: 0.0,
        hardware,
    };
    match clamped.params {
        JobParams::Sd(p) => {
            record.width = p.width;
            record.height = p.height;
            record.steps = p.steps;
        }
        JobParams::Llm(_) => {
            // The miner's own count (our miner sends `usage`); audits recount it with the
            // model's tokenizer. Without it, 4 bytes a token is the estimate.
            let usage = submit.extra.get("usage");
            let prompt_bytes = match &as_job.model_input {
                ModelInput::Llm(l) => l.prompt.len() as u64,
                ModelInput::Sd(_) => 0,
            };
            let answer_bytes = match submit.result {
                SubmitResult::Text(t) => t.len() as u64,
                SubmitResult::S3Key(_) => 0,
            };
            record.input_tokens = usage.and_then(|u| u["prompt_tokens"].as_u64()).unwrap_or(prompt_bytes / 4);
            record.output_tokens = usage.and_then(|u| u["completion_tokens"].as_u64()).unwrap_or(answer_bytes / 4);
        }
    }
    Ok(record)
}

/// `miner_submit_stream`: the answer of an LLM job while it is generated, from the miner the
/// job is assigned to. It is kept for the client (`GET /job/{id}` shows it as it grows) and
/// nothing is credited for it: the stream carries no signature, so anyone who knows the job
/// id and the assignee's miner id could send one. The job is credited, and audited, when the
/// assignee's signed `miner_submit` arrives, and only if that agrees with the stream (see
/// `check_against_stream`). A job that has its result already takes no stream, and a stream
/// from another address than the `miner_request` the job was handed to is refused: a third
/// party cannot put words in an honest miner's stream (and so have its signed answer refused)
/// without sending from the miner's own address.
async fn miner_submit_stream(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    let header_str = |name: &'static str| -> Result<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(SequencerError::BadInput { what: name, reason: "header missing or not text".into() })
    };
    let job_id = header_str(HEADER_JOB_ID)?;
    let miner: MinerId = header_str(HEADER_MINER_ID)?.parse()?;
    let id = job_id.clone();
    let (job, result) = blocking(&state, move |s| {
        let store = lock(&s.store);
        Ok((store.job(&id)?, store.result(&id)?))
    })
    .await?;
    let job = job.ok_or(SequencerError::UnknownJob { job_id: job_id.clone() })?;
    if result.is_some() {
        return Err(SequencerError::AlreadySubmitted { job_id });
    }
    let miner_id = miner.to_string();
    if job.miner_id.as_deref() != Some(miner_id.as_str()) {
        return Err(SequencerError::NotAssigned { job_id, miner_id, assigned_to: job.miner_id });
    }
    if job.kind != "LLM" {
        return Err(SequencerError::Refused { reason: format!("job {job_id:?} is a {} job: only chat answers stream", job.kind) });
    }
    let handed_to = lock(&state.handed_to).get(&job_id).copied();
    if let Some(ip) = handed_to.filter(|ip| *ip != peer.ip()) {
        return Err(SequencerError::Refused {
            reason: format!("a stream for job {job_id:?} from {}, but the job was handed to a request from {ip}", peer.ip()),
        });
    }
    let limit = state.config.max_body_bytes;
    let mut text = Vec::new();
    let mut stream = body.into_data_stream();
    let show = |text: &[u8]| {
        let live = LiveStream { miner_id: miner_id.clone(), text: StreamedText::parse(&String::from_utf8_lossy(text)) };
        let complete = live.text.complete;
        lock(&state.streams).insert(job_id.clone(), live);
        complete
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| SequencerError::BadInput { what: "body", reason: e.to_string() })?;
        if text.len() + chunk.len() > limit {
            return Err(heurist_protocol::ProtocolError::BodyTooLarge { what: "stream".into(), len: text.len() + chunk.len(), limit }.into());
        }
        text.extend_from_slice(&chunk);
        // Keep what has arrived visible to the client while the miner generates.
        show(&text);
    }
    let complete = show(&text);
    tracing::info!(job_id, miner = miner_id, complete, "answer streamed; credited once the signed miner_submit agrees");
    // The job stays assigned: the signed submission completes it, or its deadline re-queues it.
    Ok(Json(json!({"job_id": job_id, "complete": complete, "status": "streamed"})))
}

async fn miner_signal(State(state): State<Shared>, body: Bytes) -> Result<Json<SignalAnswer>> {
    let signal = MinerSignal::from_slice(&body)?;
    let miner = signal.miner_id.to_string();
    let model = signal.model_id.clone();
    let depths = blocking(&state, move |s| {
        let mut store = lock(&s.store);
        store.touch_miner(&miner, &model, signal.hardware.as_deref(), signal.version.as_deref(), now_ms())?;
        store.queue_depths()
    })
    .await?;
    // Suggest the busiest other model of the same family when the loaded one has no work.
    let loaded_has_work = depths.iter().any(|(m, n)| m == &signal.model_id && *n > 0);
    let suggestion = if signal.skip_update == Some(true) || loaded_has_work {
        None
    } else {
        depths
            .iter()
            .filter(|(m, n)| *n > 0 && m != &signal.model_id && family_of(&state, m).ok() == Some(signal.model_type))
            .max_by_key(|(_, n)| *n)
            .map(|(m, _)| m.clone())
    };
    Ok(Json(SignalAnswer { model_id: suggestion, extra: Default::default() }))
}

async fn portal_json(State(state): State<Shared>) -> Result<Json<portal::PortalView>> {
    Ok(Json(blocking(&state, portal::view).await?))
}

async fn portal_html(State(state): State<Shared>) -> Result<Response> {
    let view = blocking(&state, portal::view).await?;
    Ok((StatusCode::OK, Html(portal::render(&view))).into_response())
}
