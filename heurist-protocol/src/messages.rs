//! The miner-side messages besides the job itself: `miner_request`, its answer,
//! `miner_submit`, `miner_signal` and its answer, and the consumer's `submit_job`.
//!
//! Strict in what we send (lower-case ids, signatures without `0x`, only the fields the
//! reference sends), tolerant in what we accept (unknown fields kept in `extra`, signatures
//! with or without `0x`, upper-case addresses).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::decode;
use crate::error::Result;
use crate::job::{Job, ModelInput, ModelKind};
use crate::miner_id::{Address, MinerId};
use crate::openai::Choice;
use crate::signature::Signature;

/// Seconds between two heartbeats (`hardware` and `version` in a `miner_request`) per miner id.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 60;

/// Body of `POST {base_url}/miner_request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinerRequest {
    /// Who asks.
    pub miner_id: MinerId,
    /// The model this miner has loaded.
    pub model_id: String,
    /// The shortest deadline the miner accepts, in seconds (SD miners send 1; LLM miners none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_deadline: Option<u64>,
    /// Heartbeat: the GPU as `nvidia-smi` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// Heartbeat: the miner's version string (`sd-v1.4.0`, `llm-v1.2.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MinerRequest {
    /// The extra field holding a signed request's hourly signature (not in the reference).
    pub const SIGNATURE_FIELD: &'static str = "signature";
    /// The extra field holding a signed request's identity address (not in the reference).
    pub const IDENTITY_FIELD: &'static str = "identity_address";

    /// Decodes a request body (sequencer side).
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        decode::json("miner_request", body, decode::DEFAULT_MAX_BODY_BYTES)
    }

    /// Adds the hourly signature of [`MinerSubmit`] to the request, as two extra fields
    /// (`signature`, `identity_address`). The reference's requests carry none and a sequencer
    /// that does not know them ignores them; one that does can tell the wallet's own miner
    /// from anyone who types its id (see the sequencer's README).
    ///
    /// ```
    /// use heurist_protocol::{IdentityWallet, MinerRequest, verify_hourly};
    /// let w = IdentityWallet::generate()?;
    /// let mut r = MinerRequest { miner_id: "0x00000000000000000000000000000000000000aa-a".parse()?,
    ///     model_id: "m".into(), min_deadline: None, hardware: None, version: None, extra: Default::default() };
    /// r.sign(&w, 1_717_300_000)?;
    /// let (sig, identity) = r.signed_by().expect("signed")?;
    /// verify_hourly(&r.miner_id, &identity, &sig, 1_717_300_000)?;
    /// # Ok::<(), heurist_protocol::ProtocolError>(())
    /// ```
    pub fn sign(&mut self, wallet: &crate::IdentityWallet, unix_time: u64) -> Result<()> {
        let sig = wallet.sign_hourly(&self.miner_id, unix_time)?;
        self.extra.insert(Self::SIGNATURE_FIELD.into(), Value::String(sig.to_hex()));
        self.extra.insert(Self::IDENTITY_FIELD.into(), Value::String(wallet.address().to_string()));
        Ok(())
    }

    /// The signature and identity a signed request carries; `None` when it carries neither,
    /// an error naming the field when one is missing or malformed.
    pub fn signed_by(&self) -> Option<Result<(Signature, Address)>> {
        let sig = self.extra.get(Self::SIGNATURE_FIELD);
        let identity = self.extra.get(Self::IDENTITY_FIELD);
        if sig.is_none() && identity.is_none() {
            return None;
        }
        fn text<'v>(field: &'static str, v: Option<&'v Value>) -> Result<&'v str> {
            v.and_then(Value::as_str).ok_or_else(|| crate::ProtocolError::invalid(field, format!("{v:?}"), "a string"))
        }
        Some((|| {
            let sig = Signature::parse(text(Self::SIGNATURE_FIELD, sig)?)?;
            let identity = Address::parse(text(Self::IDENTITY_FIELD, identity)?)?;
            Ok((sig, identity))
        })())
    }
}

/// When to attach the heartbeat to a `miner_request`: at most once per
/// [`HEARTBEAT_INTERVAL_SECS`] per miner id, and on the first request.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatClock {
    last: std::collections::HashMap<MinerId, u64>,
}

impl HeartbeatClock {
    /// Whether a request from `miner_id` at `now` (unix seconds) carries the heartbeat; if so,
    /// records it.
    pub fn due(&mut self, miner_id: &MinerId, now: u64) -> bool {
        match self.last.get(miner_id) {
            Some(&t) if now.saturating_sub(t) < HEARTBEAT_INTERVAL_SECS => false,
            _ => {
                self.last.insert(miner_id.clone(), now);
                true
            }
        }
    }
}

/// Why a `miner_request` brought no job.
#[derive(Clone, Debug, PartialEq)]
pub enum NoJob {
    /// The body was JSON `null`.
    Null,
    /// The body was an empty object or an object that is not a job.
    NotAJob(Map<String, Value>),
    /// The body was text (or a JSON string) with no job in it.
    Text(String),
    /// Any other JSON value.
    Other(Value),
    /// The sequencer answered with an error status.
    Status(u16),
}

/// What a `miner_request` answer means.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestAnswer {
    /// Work to do.
    Job(Box<Job>),
    /// A message for the operator (e.g. "your miner version is outdated"); no job.
    Warning(String),
    /// No job this time: poll again after `sleep_duration`.
    NoJob(NoJob),
}

impl RequestAnswer {
    /// Interprets a `miner_request` answer from its HTTP status and body.
    ///
    /// An object with `job_id` and `model_id` is a job and must decode as one (a malformed job
    /// is an error naming the field, so the miner can report it and go on). Otherwise a body
    /// containing `Warning:` is an operator message (the text after it, quotes stripped), and
    /// anything else is no job.
    ///
    /// ```
    /// use heurist_protocol::{RequestAnswer, NoJob};
    /// assert_eq!(RequestAnswer::decode(200, b"null")?, RequestAnswer::NoJob(NoJob::Null));
    /// assert_eq!(
    ///     RequestAnswer::decode(200, br#""Warning: please update""#)?,
    ///     RequestAnswer::Warning("please update".into())
    /// );
    /// # Ok::<(), heurist_protocol::ProtocolError>(())
    /// ```
    pub fn decode(status: u16, body: &[u8]) -> Result<Self> {
        Self::decode_with_limit(status, body, decode::DEFAULT_MAX_BODY_BYTES)
    }

    /// [`RequestAnswer::decode`] with an explicit body size limit.
    pub fn decode_with_limit(status: u16, body: &[u8], limit: usize) -> Result<Self> {
        if !(200..300).contains(&status) {
            return Ok(Self::NoJob(NoJob::Status(status)));
        }
        let text = decode::text("miner_request answer", body, limit)?;
        let value: Option<Value> = serde_json::from_str(text).ok();
        if let Some(Value::Object(map)) = &value
            && map.contains_key("job_id")
            && map.contains_key("model_id")
        {
            let job: Job = decode::json_str("job", text)?;
            return Ok(Self::Job(Box::new(job)));
        }
        if let Some((_, after)) = text.split_once(WARNING) {
            let msg = after.trim().trim_matches('"').trim();
            return Ok(Self::Warning(msg.to_owned()));
        }
        Ok(Self::NoJob(match value {
            Some(Value::Null) => NoJob::Null,
            Some(Value::Object(map)) => NoJob::NotAJob(map),
            Some(Value::String(s)) => NoJob::Text(s),
            Some(other) => NoJob::Other(other),
            None => NoJob::Text(text.to_owned()),
        }))
    }
}

const WARNING: &str = "Warning:";

/// The result of a job, as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SubmitResult {
    /// An image job: the key of the PNG uploaded to S3, `<job_id>-<miner_id>.png`.
    S3Key(String),
    /// A chat job: JSON text of the ChatCompletion `choices` array.
    Text(String),
}

impl SubmitResult {
    /// The S3 key the reference uses for an image result.
    pub fn s3_key_for(job_id: &str, miner_id: &MinerId) -> String {
        format!("{job_id}-{miner_id}.png")
    }

    /// A `Text` result from a choices array.
    pub fn from_choices(choices: &[Choice]) -> Result<Self> {
        serde_json::to_string(choices)
            .map(Self::Text)
            .map_err(|e| crate::ProtocolError::invalid("result.Text", "choices", e.to_string()))
    }

    /// Decodes the choices array of a `Text` result (`None` for an `S3Key`).
    pub fn choices(&self) -> Option<Result<Vec<Choice>>> {
        match self {
            Self::Text(t) => Some(decode::embedded("result.Text", t)),
            Self::S3Key(_) => None,
        }
    }
}

/// A field that may be absent, `null`, or a value, and re-encodes as it came. The reference
/// sends `loading_latency: null` on image submissions and leaves it out on chat ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Nullable<T> {
    /// Not sent.
    #[default]
    Absent,
    /// Sent as `null`.
    Null,
    /// Sent with a value.
    Value(T),
}

impl<T> Nullable<T> {
    /// Whether the field is left out.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
    /// The value, if any.
    pub fn value(&self) -> Option<&T> {
        match self {
            Self::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Serialize> Serialize for Nullable<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nullable<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Self::Value(v),
            None => Self::Null,
        })
    }
}

impl<T> From<Option<T>> for Nullable<T> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Self::Value)
    }
}

/// The token counts a chat result claims, as vLLM's ChatCompletion `usage` reports them (its
/// `total_tokens` is their sum and is not kept). Not in the reference miner's submission, which
/// sends none; this project's miner sends it, and the sequencer credits it only up to what the
/// job allows.
///
/// ```
/// use heurist_protocol::TokenUsage;
///
/// let u: TokenUsage = serde_json::from_str(r#"{"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}"#).unwrap();
/// assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 7));
/// assert!(serde_json::from_str::<TokenUsage>(r#"{"completion_tokens": 7}"#).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub completion_tokens: u64,
}

/// Body of `POST {base_url}/miner_submit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinerSubmit {
    /// Who did the job (lower case on the wire).
    pub miner_id: MinerId,
    /// Which job.
    pub job_id: String,
    /// The result.
    pub result: SubmitResult,
    /// Seconds the `miner_request` took.
    pub request_latency: f64,
    /// Seconds spent loading a model for this job; `null` when none was loaded (image jobs),
    /// absent on chat jobs.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub loading_latency: Nullable<f64>,
    /// Seconds of inference.
    pub inference_latency: f64,
    /// Seconds of the S3 upload (image jobs).
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub upload_latency: Nullable<f64>,
    /// The hourly signature by the identity key.
    pub signature: Signature,
    /// The identity address that signed, lower case.
    pub identity_address: Address,
    /// The token counts a chat result claims; absent in the reference's body. A `usage` that
    /// is not both counts as non-negative integers fails the decoding, naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MinerSubmit {
    /// The extra field holding the per-job signature (not in the reference).
    pub const JOB_SIGNATURE_FIELD: &'static str = "job_signature";

    /// Decodes a submission body (sequencer side).
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        decode::json("miner_submit", body, decode::DEFAULT_MAX_BODY_BYTES)
    }

    /// The text of the per-job signature: the hourly message, a dash, the job id. The hourly
    /// signature is the same for every job of the hour, so whoever sees one can replay it on
    /// another job; this one names its job.
    pub fn job_signing_message(miner_id: &MinerId, job_id: &str, unix_time: u64) -> String {
        format!("{}-{job_id}", crate::signing_message(miner_id, unix_time))
    }

    /// Adds the per-job signature as the extra field `job_signature` (a sequencer that does
    /// not know it ignores it).
    pub fn sign_job(&mut self, wallet: &crate::IdentityWallet, unix_time: u64) -> Result<()> {
        let sig = wallet.sign_text(&Self::job_signing_message(&self.miner_id, &self.job_id, unix_time))?;
        self.extra.insert(Self::JOB_SIGNATURE_FIELD.into(), Value::String(sig.to_hex()));
        Ok(())
    }

    /// Checks the per-job signature against `identity` for the hour of `now` or the one
    /// before: `None` when the submission carries none.
    pub fn verify_job_signature(&self, identity: &Address, now: u64) -> Option<Result<()>> {
        let v = self.extra.get(Self::JOB_SIGNATURE_FIELD)?;
        Some((|| {
            let text = v.as_str().ok_or_else(|| crate::ProtocolError::invalid("job_signature", v, "a hex string"))?;
            let sig = Signature::parse(text)?;
            for t in [Some(now), now.checked_sub(crate::SIGNING_PERIOD_SECS)].into_iter().flatten() {
                if &sig.recover(&Self::job_signing_message(&self.miner_id, &self.job_id, t))? == identity {
                    return Ok(());
                }
            }
            Err(crate::ProtocolError::invalid("job_signature", text, format!("not {identity}'s signature of job {:?} for this hour or the last", self.job_id)))
        })())
    }
}

/// Body of `POST {signal_url}/miner_signal`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinerSignal {
    /// Who reports.
    pub miner_id: MinerId,
    /// `SD` or `LLM`.
    pub model_type: ModelKind,
    /// The loaded model.
    pub model_id: String,
    /// The GPU as `nvidia-smi` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// The miner's version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// SD miner options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<SignalOptions>,
    /// Sent (true) only when the operator pinned a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_update: Option<bool>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MinerSignal {
    /// Decodes a signal body (signal service side).
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        decode::json("miner_signal", body, decode::DEFAULT_MAX_BODY_BYTES)
    }
}

/// `options` of an SD miner's signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalOptions {
    /// The miner does not serve SDXL models.
    #[serde(default)]
    pub exclude_sdxl: bool,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer to a `miner_signal`: may ask the miner to load another model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SignalAnswer {
    /// The model to switch to, if it is available locally and not loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SignalAnswer {
    /// Decodes a signal answer; an empty or non-object body means "no change".
    pub fn decode(body: &[u8]) -> Result<Self> {
        let text = decode::text("miner_signal answer", body, decode::DEFAULT_MAX_BODY_BYTES)?;
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(_)) => decode::json_str("miner_signal answer", text),
            _ => Ok(Self::default()),
        }
    }
}

/// Body of `POST {base_url}/submit_job` (the consumer side, with `Authorization: Bearer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitJob {
    /// The client's id for the job (unique).
    pub job_id: String,
    /// The model to run.
    pub model_id: String,
    /// The inputs.
    pub model_input: ModelInput,
    /// `SD` or `LLM` (implied by `model_input` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<ModelKind>,
    /// Seconds the client is willing to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// Queue priority (higher first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Fields this crate does not know, kept as received.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SubmitJob {
    /// Decodes a `submit_job` body (sequencer side).
    pub fn from_slice(body: &[u8]) -> Result<Self> {
        decode::json("submit_job", body, decode::DEFAULT_MAX_BODY_BYTES)
    }
}
