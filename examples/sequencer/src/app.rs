//! The HTTP surface: the miner endpoints of the protocol, the client side, and the portal.
//!
//! Every handler decodes with `heurist-protocol` (so a bad body is a 4xx naming the field),
//! does its storage work on a blocking thread, and changes nothing when it refuses.

use std::collections::HashMap;
use std::net::SocketAddr;
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
    SubmitJob, SubmitResult, TempCredentials, TokenUsage, verify_hourly,
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
    /// The latest `miner_submit_stream` of each job (until its assignment expires), for the
    /// client to read while the miner generates, and for the signed `miner_submit` to be checked
    /// against.
    streams: Mutex<HashMap<String, LiveStream>>,
    #[cfg(feature = "s3")]
    http: reqwest::Client,
}

impl AppState {
    pub(crate) fn new(config: SequencerConfig, store: JobStore, ledger: LedgerHandle, rules: RuleSet) -> Self {
        Self {
            config,
            store: Mutex::new(store),
            ledger: Mutex::new(ledger),
            rules,
            streams: Mutex::new(HashMap::new()),
            #[cfg(feature = "s3")]
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap_or_default(),
        }
    }
}

impl AppState {
    /// Drops the streams of jobs whose assignment expired (re-queued or failed): a re-queued
    /// job is streamed afresh by its next assignee. (An accepted job keeps its stream for the
    /// client.)
    pub(crate) fn forget_assignments<'a>(&self, job_ids: impl IntoIterator<Item = &'a str>) {
        let mut streams = lock(&self.streams);
        for id in job_ids {
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
    /// The bytes as they arrived: each chunk is appended (the text is decoded when read, so
    /// a long stream costs linear work, not a re-parse per chunk).
    raw: Vec<u8>,
}

impl LiveStream {
    fn text(&self) -> StreamedText {
        StreamedText::parse(&String::from_utf8_lossy(&self.raw))
    }
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
        .route("/bind_identity", post(bind_identity))
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
    // Constant time over the key's digest: the comparison says nothing of how much matched.
    let digest = |k: &str| <sha2::Sha256 as sha2::Digest>::digest(k.as_bytes());
    let given = digest(key);
    let known = state.config.api_keys.iter().fold(subtle::Choice::from(0), |any, k| {
        any | subtle::ConstantTimeEq::ct_eq(given.as_slice(), digest(k).as_slice())
    });
    if bool::from(known) { Ok(()) } else { Err(SequencerError::Unauthorized) }
}

/// The longest `hardware`, `version` or `model_id` stored for a miner (an `nvidia-smi` name is
/// under 64 bytes): every stored string is bounded, so a flood of requests cannot grow the
/// sequencer's memory or the work of each request.
pub(crate) const MAX_LABEL_BYTES: usize = 256;

fn bounded<'a>(what: &'static str, value: Option<&'a str>) -> Result<Option<&'a str>> {
    match value {
        Some(v) if v.len() > MAX_LABEL_BYTES => Err(SequencerError::BadInput {
            what,
            reason: format!("{} bytes, at most {MAX_LABEL_BYTES}", v.len()),
        }),
        v => Ok(v),
    }
}

/// Miner ids longer than this are refused (the address is 42 bytes; a tag names a GPU).
pub(crate) const MAX_MINER_ID_BYTES: usize = 128;

fn bounded_miner(id: &MinerId) -> Result<String> {
    let s = id.to_string();
    if s.len() > MAX_MINER_ID_BYTES {
        return Err(SequencerError::BadInput { what: "miner_id", reason: format!("{} bytes, at most {MAX_MINER_ID_BYTES}", s.len()) });
    }
    Ok(s)
}

/// The longest deadline a client may give a job: a week.
pub(crate) const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;

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
    // A deadline of 0, or one past i64 milliseconds, would expire the job at once and charge
    // the honest miner that took it.
    if !(1..=MAX_DEADLINE_SECS).contains(&timeout_s) {
        return Err(SequencerError::BadInput { what: "deadline", reason: format!("{timeout_s} s: expected 1 to {MAX_DEADLINE_SECS} seconds") });
    }
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
    let stream = lock(&state.streams).get(&job_id).map(|s| (s.miner_id.clone(), s.text()));
    // A client sees the answer, not the miner's signatures: an hourly signature is good for
    // every job of its hour.
    let result = result.map(|mut r| {
        if let Some(sub) = r.submission.as_object_mut() {
            for field in ["signature", MinerSubmit::JOB_SIGNATURE_FIELD] {
                sub.remove(field);
            }
        }
        r
    });
    Ok(Json(json!({
        "job": job,
        "result": result,
        "stream": stream.map(|(miner_id, t)| json!({"text": t.text, "complete": t.complete, "miner_id": miner_id})),
    })))
}

async fn miner_request(State(state): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> Result<Response> {
    let req = MinerRequest::from_slice(&body)?;
    let miner = bounded_miner(&req.miner_id)?;
    let model = bounded("model_id", Some(&req.model_id))?.unwrap_or_default().to_owned();
    let hardware = bounded("hardware", req.hardware.as_deref())?.map(str::to_owned);
    let version = bounded("version", req.version.as_deref())?.map(str::to_owned);
    let signed_by = match req.signed_by() {
        None => None,
        Some(r) => Some(r?),
    };
    let reward = req.miner_id.reward_address().to_owned();
    let max_unsigned = state.config.max_unsigned_assignments_per_peer;
    let row = blocking(&state, move |s| {
        let mut store = lock(&s.store);
        let binding = store.binding(&reward)?;
        // Signed by the wallet's bound identity: the wallet's own miner. Signed by another
        // key: refused. Unsigned: anyone (the reference does not sign requests), unless the
        // wallet's miner has shown that it signs.
        if let Some((sig, identity)) = &signed_by {
            verify_hourly(&req.miner_id, identity, sig, (now_ms() / 1000) as u64)
                .map_err(|e| SequencerError::Refused { reason: e.to_string() })?;
        }
        let signed = match (&signed_by, &binding) {
            (Some((_, identity)), Some(b)) => {
                if identity.as_str() != b.identity {
                    return Err(SequencerError::Refused { reason: format!("identity {identity} is not the one bound to {reward}") });
                }
                true
            }
            (None, Some(b)) if b.strict => {
                return Err(SequencerError::Refused {
                    reason: format!("the miner of {reward} signs its requests: an unsigned request for it is not its own"),
                });
            }
            _ => false,
        };
        store.touch_miner(&miner, &model, hardware.as_deref(), version.as_deref(), now_ms())?;
        let identity = signed_by.as_ref().map(|(_, i)| i.to_string());
        let take = crate::store::Taker { peer: &peer.ip().to_string(), signed, identity: identity.as_deref(), max_unsigned_per_peer: max_unsigned };
        store.assign_next(&model, &miner, now_ms(), take)
    })
    .await?;
    match row {
        None => Ok(Json(Value::Null).into_response()),
        Some(row) => Ok(Json(job_for_miner(&state, &row, true)?).into_response()),
    }
}

/// The job as a miner receives it; `with_credentials`: image jobs carry the S3 credentials for
/// their one object (scoped to it when the S3 server can issue such keys).
fn job_for_miner(state: &AppState, row: &JobRow, with_credentials: bool) -> Result<Job> {
    let model_input: ModelInput = serde_json::from_value(row.input.clone())
        .map_err(|_| SequencerError::Corrupt { what: "job input", value: row.job_id.clone() })?;
    let temp_credentials = match (&model_input, &state.config.s3, with_credentials) {
        (ModelInput::Sd(_), Some(s3), true) => Some(match (&state.config.s3_issuer, &row.miner_id) {
            (Some(issuer), Some(miner)) => {
                let miner: MinerId = miner.parse()?;
                let key = SubmitResult::s3_key_for(&row.job_id, &miner);
                // Valid past the deadline: a miner whose upload was held up by an S3 outage
                // may still deliver while the job has no result.
                let expires = row.assigned_at_ms.unwrap_or_else(now_ms).saturating_add(row.timeout_ms).saturating_add(crate::config::LATE_RESULT_GRACE_MS);
                issuer.0.issue(&s3.bucket, &key, expires).map_err(|reason| SequencerError::Unavailable { what: "S3 credentials", reason })?
            }
            _ => TempCredentials(s3.access_key_id.clone(), s3.secret_access_key.clone(), s3.session_token.clone()),
        }),
        _ => None,
    };
    Ok(Job { job_id: row.job_id.clone(), model_id: row.model_id.clone(), model_input, temp_credentials, extra: Default::default() })
}

/// Checks the hourly signature against the identity bound to the reward wallet (or, for an
/// unbound wallet under trust on first use, the identity that signed), and the per-job
/// signature where there is one or the wallet's miner is known to make one. Binds nothing:
/// a wallet is bound by an accepted result ([`accept`]), never by a refused one.
fn check_identity(state: &AppState, submit: &MinerSubmit, now_s: u64) -> Result<()> {
    let reward = Address::parse(submit.miner_id.reward_address())?;
    let bound = lock(&state.store).binding(reward.as_str())?;
    let expected = match &bound {
        Some(b) => Address::parse(&b.identity)?,
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
    match submit.verify_job_signature(&expected, now_s) {
        Some(Err(e)) => Err(SequencerError::Refused { reason: e.to_string() }),
        None if bound.is_some_and(|b| b.strict) => Err(SequencerError::Refused {
            reason: format!("the miner of {reward} signs each job by name (`job_signature`): a submission without it is not its own"),
        }),
        _ => Ok(()),
    }
}

async fn miner_submit(State(state): State<Shared>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> Result<Json<Value>> {
    let submit = MinerSubmit::from_slice(&body)?;
    bounded_miner(&submit.miner_id)?;
    let now = now_ms();
    // A refusal here charges nobody: anyone can name any miner in a forged body.
    check_identity(&state, &submit, (now / 1000) as u64)?;
    let miner = submit.miner_id.to_string();
    if let SubmitResult::S3Key(key) = &submit.result
        && state.config.verify_s3_objects
    {
        check_object(&state, key).await?;
    }
    check_against_stream(&state, &submit)?;
    let submission = serde_json::to_value(&submit).map_err(|e| SequencerError::BadInput { what: "body", reason: e.to_string() })?;
    let job_id = submit.job_id.clone();
    let audited = submit.clone();
    let peer = peer.ip().to_string();
    let outcome = blocking(&state, move |s| accept(s, &Answer::from(&submit), &peer, &submission, now)).await?;
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

/// `POST /bind_identity`: a reward wallet names its identity wallet with its own signature
/// ([`heurist_protocol::BindIdentity`]), as the network's contract records it. It replaces a
/// first-use binding (so a wallet claimed by somebody else's key is taken back) and an older
/// signed one; an operator's `--bind` stays.
async fn bind_identity(State(state): State<Shared>, body: Bytes) -> Result<Json<Value>> {
    let bind = heurist_protocol::BindIdentity::from_slice(&body)?;
    let now = now_ms();
    bind.verify((now / 1000) as u64, BIND_MAX_SKEW_SECS)?;
    let (reward, identity, ts) = (bind.reward_address.to_string(), bind.identity_address.to_string(), bind.timestamp);
    let changed = blocking(&state, move |s| {
        lock(&s.store).bind(&reward, &identity, crate::store::BindingSource::RewardSignature, ts, now)
    })
    .await?;
    if !changed {
        return Err(SequencerError::Refused {
            reason: format!("{} is bound by the operator, or by a newer signed binding", bind.reward_address),
        });
    }
    tracing::info!(reward = %bind.reward_address, identity = %bind.identity_address, "identity bound by the reward wallet's signature");
    Ok(Json(json!({"status": "bound", "reward_address": bind.reward_address, "identity_address": bind.identity_address})))
}

/// How far a binding's timestamp may be from the sequencer's clock.
pub(crate) const BIND_MAX_SKEW_SECS: u64 = 600;

/// Refuses a chat result that contradicts what was streamed for the job under the same miner
/// id: a complete stream must be the submitted answer (up to the trailing space the pieces
/// end with), a stream cut short a beginning of it. The client read the stream; the signed
/// submission is what is credited and audited, so the two must be one answer. A job nobody
/// streamed, or streamed under another miner id (an earlier assignee), is not constrained.
fn check_against_stream(state: &AppState, submit: &MinerSubmit) -> Result<()> {
    let Some((streamer, text)) = lock(&state.streams).get(&submit.job_id).map(|l| (l.miner_id.clone(), l.text())) else {
        return Ok(());
    };
    if streamer != submit.miner_id.to_string() {
        return Ok(());
    }
    let submitted = match submit.result.choices() {
        Some(Ok(choices)) => choices.first().map(|c| c.message.text_content()).unwrap_or_default(),
        // An image key, or choices that do not decode (refused later with their own error).
        _ => return Ok(()),
    };
    let streamed = text.text.trim_end();
    let agrees = if text.complete { submitted.trim_end() == streamed } else { submitted.starts_with(streamed) };
    if agrees {
        return Ok(());
    }
    Err(SequencerError::StreamMismatch {
        job_id: submit.job_id.clone(),
        complete: text.complete,
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
    /// The token counts the miner claims, when it counted them.
    pub(crate) usage: Option<TokenUsage>,
    /// The identity that signed it (checked).
    pub(crate) identity: &'a Address,
    /// Whether it carries the per-job signature (checked).
    pub(crate) job_signed: bool,
}

impl<'a> From<&'a MinerSubmit> for Answer<'a> {
    fn from(s: &'a MinerSubmit) -> Self {
        Self {
            miner_id: &s.miner_id,
            job_id: &s.job_id,
            result: &s.result,
            usage: s.usage,
            identity: &s.identity_address,
            job_signed: s.extra.contains_key(MinerSubmit::JOB_SIGNATURE_FIELD),
        }
    }
}

/// Stores the result, then credits its points. Runs on a blocking thread.
fn accept(state: &AppState, submit: &Answer<'_>, peer: &str, submission: &Value, now: i64) -> Result<Accepted> {
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
    // The binding again, under the store's lock: two identities racing for an unbound wallet
    // get one binding, and only an accepted result binds.
    let reward = submit.miner_id.reward_address();
    match store.binding(reward)? {
        Some(b) if b.identity != submit.identity.as_str() => {
            return Err(SequencerError::Refused { reason: format!("identity {} is not the one bound to {reward} ({})", submit.identity, b.identity) });
        }
        Some(_) => {}
        None if state.config.bindings.trust_on_first_use => {}
        None => return Err(SequencerError::Refused { reason: format!("reward wallet {reward} has no bound identity") }),
    }
    let assignment = store.assignment(submit.job_id, &submit.miner_id.to_string())?;
    // A job asked for with an identity's signature is delivered by that identity only (so a
    // stranger's key cannot claim an unbound wallet through a job its miner asked for).
    if let Some(requested_by) = assignment.as_ref().and_then(|a| a.identity.as_deref())
        && requested_by != submit.identity.as_str()
    {
        return Err(SequencerError::Refused {
            reason: format!("job {:?} was asked for by identity {requested_by}, not {}", submit.job_id, submit.identity),
        });
    }
    // Without a per-job signature (checked in `check_identity`: it names the job), a
    // submission must come from the address the job was handed to: the hourly signature alone
    // is good for any job of its hour, so one seen elsewhere must not let a third party
    // deliver (and be audited) in the miner's name.
    if let Some(a) = assignment.as_ref().filter(|a| !submit.job_signed && a.peer != peer) {
        return Err(SequencerError::Refused {
            reason: format!(
                "job {:?} was handed to a request from {}, and this submission, not signed by job, comes from {peer}",
                submit.job_id, a.peer
            ),
        });
    }
    let record = job_record(state, &job, submit, &store)?;
    // Verdict first, points after: the record is what the ledger credit is computed from. The
    // latency runs from this miner's own assignment (an earlier assignee may deliver late).
    let assigned_at = match &assignment {
        Some(a) => a.assigned_at_ms,
        None => job.assigned_at_ms.unwrap_or(now),
    };
    let latency_ms = (now - assigned_at).max(0);
    let record = JobRecord { latency_s: latency_ms as f64 / 1000.0, ..record };
    let points = state.rules.points(&record);
    let mut verdict = match &points {
        Ok(p) => json!({"status": "accepted", "points": p.to_f64(), "currency": p.currency().to_string(), "record": record}),
        Err(e) => json!({"status": "accepted", "points": 0.0, "note": format!("no points: {e}"), "record": record}),
    };
    // A device the GPU catalogue does not know (a CPU miner reports its CPU): the rules price
    // the job without a hardware check, and the verdict says so.
    if record.hardware.is_none()
        && let Some(h) = store.miner(&submit.miner_id.to_string())?.and_then(|m| m.hardware)
    {
        verdict["hardware_note"] = json!(format!("{h:?} is not in the GPU catalogue: priced without a hardware check"));
    }
    store.record_result(submit.job_id, &submit.miner_id.to_string(), submission, &verdict, now)?;
    store.bind(reward, submit.identity.as_str(), crate::store::BindingSource::FirstUse, 0, now)?;
    if submit.job_signed {
        store.set_strict(reward)?;
    }
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
    let job = job_for_miner(state, &row, false)?;
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
            let usage = submit.usage;
            let prompt_bytes = match &as_job.model_input {
                ModelInput::Llm(l) => l.prompt.len() as u64,
                ModelInput::Sd(_) => 0,
            };
            let answer_bytes = match submit.result {
                SubmitResult::Text(t) => t.len() as u64,
                SubmitResult::S3Key(_) => 0,
            };
            let (claimed_in, claimed_out) = (
                usage.map_or(prompt_bytes / 4, |u| u.prompt_tokens),
                usage.map_or(answer_bytes / 4, |u| u.completion_tokens),
            );
            let (input_cap, output_cap) = usage_caps(&as_job, &clamped, answer_bytes);
            record.input_tokens = claimed_in.min(input_cap);
            record.output_tokens = claimed_out.min(output_cap);
        }
    }
    Ok(record)
}

/// The most tokens a chat job's result can be credited for, whatever its `usage` claims: the
/// prompt at most one token per byte of its messages and tools (a byte-level or SentencePiece
/// token covers at least one byte; the template's own tokens are fewer than the JSON's
/// punctuation, with [`TEMPLATE_TOKENS`] to spare), and the answer at most the job's
/// `max_tokens` and one token per byte of the submitted text plus the end token.
pub(crate) fn usage_caps(job: &Job, clamped: &heurist_protocol::ClampedJob, answer_bytes: u64) -> (u64, u64) {
    let (prompt_bytes, tools_bytes) = match &job.model_input {
        ModelInput::Llm(l) => (l.prompt.len() as u64, l.tools.as_ref().map_or(0, |t| t.len() as u64)),
        ModelInput::Sd(_) => (0, 0),
    };
    let max_tokens = match &clamped.params {
        JobParams::Llm(p) => u64::from(p.max_tokens),
        JobParams::Sd(_) => 0,
    };
    (prompt_bytes + tools_bytes + TEMPLATE_TOKENS, max_tokens.min(answer_bytes + 1))
}

/// Tokens a chat template may add beyond the prompt's bytes (a default system prompt).
pub(crate) const TEMPLATE_TOKENS: u64 = 64;

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
    if job.miner_id.as_deref() != Some(miner_id.as_str()) || job.status != crate::store::JobStatus::Assigned {
        return Err(SequencerError::NotAssigned { job_id, miner_id, status: job.status, assigned_to: job.miner_id });
    }
    if job.kind != "LLM" {
        return Err(SequencerError::Refused { reason: format!("job {job_id:?} is a {} job: only chat answers stream", job.kind) });
    }
    let (id, m) = (job_id.clone(), miner_id.clone());
    let assignment = blocking(&state, move |s| lock(&s.store).assignment(&id, &m)).await?;
    if let Some(a) = assignment.filter(|a| a.peer != peer.ip().to_string()) {
        return Err(SequencerError::Refused {
            reason: format!("a stream for job {job_id:?} from {}, but the job was handed to a request from {}", peer.ip(), a.peer),
        });
    }
    let limit = state.config.max_stream_bytes;
    // A new stream for the job starts afresh; each chunk is appended where it lies.
    lock(&state.streams).insert(job_id.clone(), LiveStream { miner_id: miner_id.clone(), raw: Vec::new() });
    let mut received = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| SequencerError::BadInput { what: "body", reason: e.to_string() })?;
        received += chunk.len();
        if received > limit {
            // Nothing of a refused stream is kept.
            lock(&state.streams).remove(&job_id);
            return Err(heurist_protocol::ProtocolError::BodyTooLarge { what: "stream".into(), len: received, limit }.into());
        }
        // Visible to the client while the miner generates.
        if let Some(live) = lock(&state.streams).get_mut(&job_id) {
            live.raw.extend_from_slice(&chunk);
        }
    }
    let complete = lock(&state.streams).get(&job_id).is_some_and(|l| l.text().complete);
    tracing::info!(job_id, miner = miner_id, complete, "answer streamed; credited once the signed miner_submit agrees");
    // The job stays assigned: the signed submission completes it, or its deadline re-queues it.
    Ok(Json(json!({"job_id": job_id, "complete": complete, "status": "streamed"})))
}

async fn miner_signal(State(state): State<Shared>, body: Bytes) -> Result<Json<SignalAnswer>> {
    let signal = MinerSignal::from_slice(&body)?;
    let miner = bounded_miner(&signal.miner_id)?;
    bounded("model_id", Some(&signal.model_id))?;
    let hardware = bounded("hardware", signal.hardware.as_deref())?.map(str::to_owned);
    let version = bounded("version", signal.version.as_deref())?.map(str::to_owned);
    let model = signal.model_id.clone();
    let depths = blocking(&state, move |s| {
        let mut store = lock(&s.store);
        store.touch_miner(&miner, &model, hardware.as_deref(), version.as_deref(), now_ms())?;
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
