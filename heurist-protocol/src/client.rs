//! An async client for every sequencer endpoint (feature `client`: reqwest + tokio).
//!
//! Each call has a timeout, reads at most [`ClientConfig::max_body_bytes`] of an answer, and
//! returns a typed error naming the endpoint. Retrying is the caller's policy (a miner retries
//! submissions with backoff inside the job's deadline); this client never retries by itself,
//! so a caller always knows whether a submission may have arrived.

use std::time::Duration;

use futures_util::{Stream, StreamExt};

use crate::decode;
use crate::error::{ProtocolError, Result};
use crate::messages::{MinerRequest, MinerSignal, MinerSubmit, RequestAnswer, SignalAnswer, SubmitJob};
use crate::miner_id::MinerId;
use crate::stream::{HEADER_JOB_ID, HEADER_MINER_ID, STREAM_CONTENT_TYPE, STREAM_END};

/// The network's sequencer.
pub const DEFAULT_BASE_URL: &str = "http://sequencer.heurist.xyz";

/// Where and how to talk to a sequencer.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of the sequencer (`miner_request`, `miner_submit`, ...), no trailing slash needed.
    pub base_url: String,
    /// Base URL of the signal service (`miner_signal`); the sequencer's when `None`.
    pub signal_url: Option<String>,
    /// Timeout of one request, connection included.
    pub timeout: Duration,
    /// Timeout of a streamed submission (the whole generation).
    pub stream_timeout: Duration,
    /// The largest answer read.
    pub max_body_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            signal_url: None,
            timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(180),
            max_body_bytes: decode::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// What a sequencer answered to a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitAck {
    /// The HTTP status (2xx).
    pub status: u16,
    /// The body as text.
    pub body: String,
}

/// An async client for one sequencer.
#[derive(Clone, Debug)]
pub struct SequencerClient {
    http: reqwest::Client,
    config: ClientConfig,
}

impl SequencerClient {
    /// Builds a client.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(|error| ProtocolError::Http { endpoint: config.base_url.clone(), error })?;
        Ok(Self { http, config })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn url(&self, base: &str, endpoint: &str) -> String {
        format!("{}/{endpoint}", base.trim_end_matches('/'))
    }

    /// `miner_request`: asks for a job.
    pub async fn request_job(&self, request: &MinerRequest) -> Result<RequestAnswer> {
        let url = self.url(&self.config.base_url, "miner_request");
        let (status, body) = self.post_json(&url, request, None).await?;
        RequestAnswer::decode_with_limit(status, &body, self.config.max_body_bytes)
    }

    /// `miner_submit`: submits a finished job. A non-2xx answer is [`ProtocolError::Status`].
    pub async fn submit(&self, submit: &MinerSubmit) -> Result<SubmitAck> {
        let url = self.url(&self.config.base_url, "miner_submit");
        let (status, body) = self.post_json(&url, submit, None).await?;
        ok_ack(&url, status, body)
    }

    /// `miner_submit_stream`: sends `pieces` as a chunked body as they come, then `[DONE]`.
    /// Call it once the first non-empty piece exists, as the reference does.
    pub async fn submit_stream<S>(&self, job_id: &str, miner_id: &MinerId, pieces: S) -> Result<SubmitAck>
    where
        S: Stream<Item = String> + Send + Sync + 'static,
    {
        let url = self.url(&self.config.base_url, "miner_submit_stream");
        let body = pieces
            .chain(futures_util::stream::once(async { STREAM_END.to_owned() }))
            .map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s)));
        let req = self
            .http
            .post(&url)
            .header(HEADER_JOB_ID, job_id)
            .header(HEADER_MINER_ID, miner_id.to_string())
            .header(reqwest::header::CONTENT_TYPE, STREAM_CONTENT_TYPE)
            .timeout(self.config.stream_timeout)
            .body(reqwest::Body::wrap_stream(body));
        let (status, body) = self.send(&url, req, self.config.stream_timeout).await?;
        ok_ack(&url, status, body)
    }

    /// `miner_signal`: reports the loaded model; the answer may ask for another.
    pub async fn signal(&self, signal: &MinerSignal) -> Result<SignalAnswer> {
        let base = self.config.signal_url.as_deref().unwrap_or(&self.config.base_url);
        let url = self.url(base, "miner_signal");
        let (status, body) = self.post_json(&url, signal, None).await?;
        if !(200..300).contains(&status) {
            return Err(status_error(&url, status, &body));
        }
        SignalAnswer::decode(&body)
    }

    /// `submit_job` (consumer side): queues a job with an API key; returns the answer's text.
    pub async fn submit_job(&self, api_key: &str, job: &SubmitJob) -> Result<String> {
        let url = self.url(&self.config.base_url, "submit_job");
        let (status, body) = self.post_json(&url, job, Some(api_key)).await?;
        ok_ack(&url, status, body).map(|a| a.body)
    }

    async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
        bearer: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self.http.post(url).json(body).timeout(self.config.timeout);
        if let Some(key) = bearer {
            req = req.bearer_auth(key);
        }
        self.send(url, req, self.config.timeout).await
    }

    async fn send(&self, url: &str, req: reqwest::RequestBuilder, timeout: Duration) -> Result<(u16, Vec<u8>)> {
        let map = |error: reqwest::Error| {
            if error.is_timeout() {
                ProtocolError::Timeout { endpoint: url.to_owned(), timeout_ms: timeout.as_millis() as u64 }
            } else {
                ProtocolError::Http { endpoint: url.to_owned(), error }
            }
        };
        let mut resp = req.send().await.map_err(map)?;
        let status = resp.status().as_u16();
        let limit = self.config.max_body_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(map)? {
            if body.len() + chunk.len() > limit {
                return Err(ProtocolError::BodyTooLarge {
                    what: format!("answer of {url}"),
                    len: body.len() + chunk.len(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

fn ok_ack(url: &str, status: u16, body: Vec<u8>) -> Result<SubmitAck> {
    if !(200..300).contains(&status) {
        return Err(status_error(url, status, &body));
    }
    Ok(SubmitAck { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn status_error(url: &str, status: u16, body: &[u8]) -> ProtocolError {
    ProtocolError::Status {
        endpoint: url.to_owned(),
        status,
        body: String::from_utf8_lossy(body).chars().take(500).collect(),
    }
}

#[cfg(test)]
mod tests {
    //! Against a minimal HTTP/1.1 server on loopback that records what it received.
    use super::*;
    use crate::messages::NoJob;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    #[derive(Default, Debug)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// Serves `answers` in order (status, body, delay before answering), one per connection.
    async fn serve(answers: Vec<(u16, Vec<u8>, Duration)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body, delay) in answers {
                let (sock, _) = listener.accept().await.unwrap();
                let mut r = BufReader::new(sock);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let mut got = Vec::new();
                if head.contains("transfer-encoding: chunked") {
                    loop {
                        let mut size = String::new();
                        r.read_line(&mut size).await.unwrap();
                        let n = usize::from_str_radix(size.trim(), 16).unwrap();
                        let mut chunk = vec![0; n + 2];
                        r.read_exact(&mut chunk).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&chunk[..n]);
                    }
                } else if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
                    let mut b = vec![0; len.trim().parse().unwrap()];
                    r.read_exact(&mut b).await.unwrap();
                    got = b;
                }
                log.lock().unwrap().push(Seen { head, body: got });
                tokio::time::sleep(delay).await;
                let mut sock = r.into_inner();
                let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            }
        });
        (url, seen)
    }

    fn client(url: &str) -> SequencerClient {
        SequencerClient::new(ClientConfig {
            base_url: url.to_owned(),
            timeout: Duration::from_millis(1500),
            max_body_bytes: 4096,
            ..ClientConfig::default()
        })
        .unwrap()
    }

    fn miner() -> MinerId {
        MinerId::parse("0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0").unwrap()
    }

    fn request() -> MinerRequest {
        MinerRequest {
            miner_id: miner(),
            model_id: "AAMXLAnimeMix".into(),
            min_deadline: Some(1),
            hardware: None,
            version: None,
            extra: Default::default(),
        }
    }

    #[tokio::test]
    async fn request_job_sends_the_request_and_decodes_answers() {
        let job = br#"{"job_id":"j","model_id":"m","model_input":{"SD":{"prompt":"p","height":512,"width":512,"num_iterations":20,"guidance_scale":7,"seed":1}}}"#;
        let z = Duration::ZERO;
        let (url, seen) = serve(vec![
            (200, job.to_vec(), z),
            (200, b"null".to_vec(), z),
            (200, b"\"Warning: update\"".to_vec(), z),
            (502, b"bad gateway".to_vec(), z),
        ])
        .await;
        let c = client(&url);
        assert!(matches!(c.request_job(&request()).await.unwrap(), RequestAnswer::Job(j) if j.job_id == "j"));
        assert_eq!(c.request_job(&request()).await.unwrap(), RequestAnswer::NoJob(NoJob::Null));
        assert_eq!(c.request_job(&request()).await.unwrap(), RequestAnswer::Warning("update".into()));
        assert_eq!(c.request_job(&request()).await.unwrap(), RequestAnswer::NoJob(NoJob::Status(502)));
        let seen = seen.lock().unwrap();
        assert!(seen[0].head.starts_with("post /miner_request "));
        let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(sent["miner_id"], "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0");
        assert_eq!(sent["min_deadline"], 1);
        assert!(sent.get("hardware").is_none(), "no heartbeat fields unless set");
    }

    #[tokio::test]
    async fn submit_errors_are_typed() {
        let (url, _) = serve(vec![
            (500, b"internal".to_vec(), Duration::ZERO),
            (200, vec![b'x'; 10_000], Duration::ZERO),
            (200, b"ok".to_vec(), Duration::from_secs(5)),
        ])
        .await;
        let c = client(&url);
        let job = SubmitJob {
            job_id: "j".into(),
            model_id: "m".into(),
            model_input: crate::job::ModelInput::Llm(crate::job::LlmInput {
                prompt: "[]".into(),
                temperature: None,
                max_tokens: None,
                seed: None,
                use_stream: None,
                tools: None,
                extra_body: None,
                extra: Default::default(),
            }),
            model_type: None,
            deadline: None,
            priority: None,
            extra: Default::default(),
        };
        match c.submit_job("key", &job).await.unwrap_err() {
            ProtocolError::Status { status: 500, body, endpoint } => {
                assert_eq!(body, "internal");
                assert!(endpoint.ends_with("/submit_job"));
            }
            other => panic!("{other}"),
        }
        assert!(matches!(c.submit_job("key", &job).await.unwrap_err(), ProtocolError::BodyTooLarge { .. }));
        assert!(matches!(c.submit_job("key", &job).await.unwrap_err(), ProtocolError::Timeout { .. }));
    }

    #[tokio::test]
    async fn an_unreachable_sequencer_is_an_http_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        assert!(matches!(client(&url).request_job(&request()).await.unwrap_err(), ProtocolError::Http { .. }));
    }

    #[tokio::test]
    async fn streamed_submission_is_chunked_with_headers_and_end_marker() {
        let (url, seen) = serve(vec![(200, b"{}".to_vec(), Duration::ZERO)]).await;
        let pieces = futures_util::stream::iter(vec!["Hello ".to_owned(), "world ".to_owned()]);
        let ack = client(&url).submit_stream("job-1", &miner(), pieces).await.unwrap();
        assert_eq!(ack.status, 200);
        let seen = seen.lock().unwrap();
        assert!(seen[0].head.starts_with("post /miner_submit_stream "));
        assert!(seen[0].head.contains("job_id: job-1\r\n"));
        assert!(seen[0].head.contains("miner_id: 0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0\r\n"));
        assert!(seen[0].head.contains("content-type: text/event-stream"));
        assert_eq!(seen[0].body, b"Hello world [DONE]");
    }

    #[tokio::test]
    async fn bearer_key_and_signal_url() {
        let (url, seen) = serve(vec![(200, br#"{"model_id":"AnimagineXL"}"#.to_vec(), Duration::ZERO)]).await;
        let c = SequencerClient::new(ClientConfig {
            base_url: "http://127.0.0.1:9".into(),
            signal_url: Some(url),
            ..ClientConfig::default()
        })
        .unwrap();
        let signal = MinerSignal {
            miner_id: miner(),
            model_type: crate::job::ModelKind::Sd,
            model_id: "AAMXLAnimeMix".into(),
            hardware: Some("NVIDIA GeForce RTX 4090".into()),
            version: Some("sd-v1.4.0".into()),
            options: None,
            skip_update: None,
            extra: Default::default(),
        };
        assert_eq!(c.signal(&signal).await.unwrap().model_id.as_deref(), Some("AnimagineXL"));
        assert!(seen.lock().unwrap()[0].head.starts_with("post /miner_signal "));
    }
}
