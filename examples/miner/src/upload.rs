//! Image results to S3: a `PutObject` of the PNG to the job's bucket and key, signed (AWS
//! Signature V4, presigned) with the job's temporary credentials, sent with the `reqwest`
//! client the rest of the miner uses.
//!
//! `rusty-s3` does the signing and speaks the real protocol, so the endpoint is anything that
//! speaks S3: the network's bucket, the local sequencer's embedded server, MinIO, Garage.
//! One attempt is [`Uploader::put`]; retrying with backoff inside the job's deadline is
//! delivery's business (`deliver.rs`), which also knows about shutdown.

use std::time::Duration;

use heurist_protocol::TempCredentials;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

use crate::error::{MinerError, Result};

/// The network's bucket region; for other endpoints any name the server accepts.
pub const DEFAULT_REGION: &str = "us-east-1";

/// How long a presigned request stays valid: ample for one PUT of an image.
const SIGNATURE_TTL: Duration = Duration::from_secs(600);

/// Where image results go and how to reach it.
#[derive(Clone, Debug)]
pub struct Uploader {
    endpoint: Url,
    region: String,
    style: UrlStyle,
    http: reqwest::Client,
}

impl Uploader {
    /// An uploader for `endpoint` (`http://127.0.0.1:9000`, `https://s3.<region>.<aws domain>`),
    /// path-style (`/<bucket>/<key>`), which every S3 server understands. `timeout` bounds one
    /// attempt.
    pub fn new(endpoint: &str, region: &str, timeout: Duration) -> Result<Self> {
        let url: Url = endpoint
            .parse()
            .map_err(|e| MinerError::Config { setting: format!("s3 endpoint {endpoint:?}"), reason: format!("{e}") })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(MinerError::Config {
                setting: format!("s3 endpoint {endpoint:?}"),
                reason: "expected an http:// or https:// URL with a host".into(),
            });
        }
        if region.is_empty() {
            return Err(MinerError::Config { setting: "s3 region".into(), reason: "empty".into() });
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| MinerError::Config { setting: "s3 client".into(), reason: e.to_string() })?;
        Ok(Self { endpoint: url, region: region.to_owned(), style: UrlStyle::Path, http })
    }

    /// Uses virtual-host style (`<bucket>.<host>/<key>`) instead, as some providers require.
    pub fn virtual_host_style(mut self) -> Self {
        self.style = UrlStyle::VirtualHost;
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// One `PutObject` of `png` to `bucket`/`key` with `creds`. Any answer but 2xx is an
    /// error naming the key and the status.
    pub async fn put(&self, creds: &TempCredentials, bucket: &str, key: &str, png: Vec<u8>) -> Result<()> {
        let fail = |reason: String| MinerError::Upload { key: key.to_owned(), reason };
        let b = Bucket::new(self.endpoint.clone(), self.style, bucket.to_owned(), self.region.clone())
            .map_err(|e| fail(format!("bucket {bucket:?}: {e}")))?;
        let credentials = if creds.session_token().is_empty() {
            Credentials::new(creds.access_key_id(), creds.secret_access_key())
        } else {
            Credentials::new_with_token(creds.access_key_id(), creds.secret_access_key(), creds.session_token())
        };
        let mut action = b.put_object(Some(&credentials), key);
        // Signed, so the stored object is served as an image whatever the server defaults to.
        action.headers_mut().insert("content-type", "image/png");
        let url = action.sign(SIGNATURE_TTL);
        let response = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "image/png")
            .header(reqwest::header::CONTENT_LENGTH, png.len())
            .body(png)
            .send()
            .await
            .map_err(|e| fail(format!("{e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(fail(format!("HTTP {}: {}", status.as_u16(), body.chars().take(300).collect::<String>())))
    }
}
