//! A real S3 server on loopback for image results, so that the demo and the tests store
//! miners' PNGs through the same protocol the network's bucket speaks: no mock.
//!
//! It embeds `s3s-fs` (objects as files under a folder: `<dir>/<bucket>/<key>`) behind
//! `s3s`'s request handling, with AWS Signature V4 checked against two kinds of keys: the
//! operator's key ([`LocalS3::grant`], which the sequencer itself reads objects with), and
//! short-lived keys minted per image job ([`LocalS3::issuer`]), each good for `PutObject`,
//! `HeadObject` and `GetObject` of that job's one object until its deadline has long passed.
//! A miner holding one cannot list the bucket, read or overwrite another miner's PNG, delete
//! anything or make buckets. A request signed with any other secret, or not signed, is
//! refused with `403`, and a PUT into a bucket that was not created with
//! [`LocalS3::create_bucket`] with `404`. Any other S3 endpoint (AWS, Garage, MinIO) can take
//! its place by configuration: the sequencer then hands out the configured key itself.
//!
//! ```no_run
//! # async fn demo() -> heurist_sequencer::Result<()> {
//! let s3 = heurist_sequencer::s3::LocalS3::start("/tmp/s3", "miner-key", "miner-secret").await?;
//! s3.create_bucket("heurist-images")?;
//! let grant = s3.grant("heurist-images");
//! assert_eq!(grant.endpoint, s3.endpoint());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use heurist_protocol::TempCredentials;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};
use s3s::service::S3ServiceBuilder;
use tokio::task::JoinSet;

use crate::config::{CredentialIssuer, Issuer, S3Grant};
use crate::error::{Result, SequencerError};

/// An S3 server on loopback, storing objects as files, serving until dropped or shut down.
pub struct LocalS3 {
    addr: SocketAddr,
    root: PathBuf,
    keys: Arc<KeyTable>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LocalS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalS3").field("addr", &self.addr).field("root", &self.root).finish_non_exhaustive()
    }
}

fn s3_err(what: &'static str, reason: impl std::fmt::Display) -> SequencerError {
    SequencerError::BadInput { what, reason: reason.to_string() }
}

/// The keys the server accepts: the operator's (every bucket that exists) and the per-job
/// ones, each scoped to one object until it expires.
struct KeyTable {
    admin_key: String,
    admin_secret: String,
    scoped: Mutex<HashMap<String, Scope>>,
}

struct Scope {
    secret: String,
    bucket: String,
    key: String,
    expires_at_ms: i64,
}

fn now_ms() -> i64 {
    crate::app::now_ms()
}

impl KeyTable {
    fn scoped(&self) -> std::sync::MutexGuard<'_, HashMap<String, Scope>> {
        self.scoped.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyTable {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.admin_key {
            return Ok(SecretKey::from(self.admin_secret.as_str()));
        }
        match self.scoped().get(access_key) {
            Some(s) if s.expires_at_ms > now_ms() => Ok(SecretKey::from(s.secret.as_str())),
            _ => Err(s3_error!(InvalidAccessKeyId, "unknown or expired access key")),
        }
    }
}

impl CredentialIssuer for KeyTable {
    fn issue(&self, bucket: &str, key: &str, expires_at_ms: i64) -> std::result::Result<TempCredentials, String> {
        let access_key = format!("HJOB{:016X}", rand::random::<u64>());
        let secret = format!("{:032x}{:08x}", rand::random::<u128>(), rand::random::<u32>());
        let mut scoped = self.scoped();
        // Expired keys go as new ones come: the table holds the live assignments only.
        let now = now_ms();
        scoped.retain(|_, s| s.expires_at_ms > now);
        scoped.insert(access_key.clone(), Scope { secret: secret.clone(), bucket: bucket.to_owned(), key: key.to_owned(), expires_at_ms });
        Ok(TempCredentials(access_key, secret, String::new()))
    }
}

/// Every request signed (s3s has checked the signature when credentials are present), only
/// into buckets that exist (`s3s-fs` would create any folder a PUT names), and a per-job key
/// only on its own object.
struct Buckets {
    root: PathBuf,
    keys: Arc<KeyTable>,
}

#[async_trait::async_trait]
impl S3Access for Buckets {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "signed requests only"));
        };
        if creds.access_key != self.keys.admin_key {
            let op = cx.s3_op().name();
            let allowed = {
                let scoped = self.keys.scoped();
                let scope = scoped.get(&creds.access_key).filter(|s| s.expires_at_ms > now_ms());
                match (scope, cx.s3_path()) {
                    (Some(s), S3Path::Object { bucket, key }) => {
                        **bucket == *s.bucket && **key == *s.key && matches!(op, "PutObject" | "HeadObject" | "GetObject")
                    }
                    _ => false,
                }
            };
            if !allowed {
                return Err(s3_error!(AccessDenied, "a job's key may only write and read that job's own object"));
            }
        }
        match cx.s3_path() {
            S3Path::Object { bucket, .. } if !self.root.join(&**bucket).is_dir() => {
                Err(s3_error!(NoSuchBucket, "no bucket {bucket:?}"))
            }
            _ => Ok(()),
        }
    }
}

/// The key table as s3s's authenticator (s3s wants an owned `S3Auth`).
struct SharedKeys(Arc<KeyTable>);

#[async_trait::async_trait]
impl S3Auth for SharedKeys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.get_secret_key(access_key).await
    }
}

impl LocalS3 {
    /// Starts a server on `127.0.0.1` (a free port) storing under `dir` (created), accepting
    /// requests signed with `access_key` / `secret_key` only.
    pub async fn start(dir: impl Into<PathBuf>, access_key: &str, secret_key: &str) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), dir, access_key, secret_key).await
    }

    /// As [`LocalS3::start`], listening on `listen`.
    pub async fn start_on(listen: SocketAddr, dir: impl Into<PathBuf>, access_key: &str, secret_key: &str) -> Result<Self> {
        let root = dir.into();
        if access_key.is_empty() || secret_key.is_empty() {
            return Err(s3_err("s3 credentials", "access key and secret key must both be non-empty"));
        }
        std::fs::create_dir_all(&root).map_err(|e| s3_err("s3_dir", format!("{}: {e}", root.display())))?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|e| s3_err("s3_dir", format!("{}: {e:?}", root.display())))?;
        let keys = Arc::new(KeyTable {
            admin_key: access_key.to_owned(),
            admin_secret: secret_key.to_owned(),
            scoped: Mutex::new(HashMap::new()),
        });
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SharedKeys(keys.clone()));
            b.set_access(Buckets { root: root.clone(), keys: keys.clone() });
            b.build()
        };
        let listener =
            tokio::net::TcpListener::bind(listen).await.map_err(|e| s3_err("s3_listen", format!("{listen}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| s3_err("s3_listen", e))?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Connections live in this set so that shutting down ends them too.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => {
                            let svc = service.clone();
                            conns.spawn(async move {
                                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), svc);
                                if let Err(e) = conn.await {
                                    tracing::debug!(error = %e, "s3 connection ended with an error");
                                }
                            });
                        }
                        // Out of file descriptors and the like: wait a little, keep serving.
                        Err(e) => {
                            tracing::warn!(error = %e, "s3 accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = &mut rx => break,
                }
            }
            conns.shutdown().await;
        });
        tracing::info!(%addr, root = %root.display(), "S3 server listening");
        Ok(Self {
            addr,
            root,
            keys,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, the endpoint clients sign requests for (path-style: `/<bucket>/<key>`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The folder objects are stored under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `bucket` (a folder) if it is not there. Names follow S3's rules: 3 to 63
    /// lower-case letters, digits, `-` and `.`.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.']);
        if !ok {
            return Err(s3_err("s3_bucket", format!("{bucket:?} is not a valid bucket name")));
        }
        let dir = self.root.join(bucket);
        std::fs::create_dir_all(&dir).map_err(|e| s3_err("s3_bucket", format!("{}: {e}", dir.display())))
    }

    /// Where the object `bucket/key` is stored (whether or not it exists).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// This server's endpoint and operator key for `bucket`: what the sequencer reads
    /// results with. (Miners get per-job keys from [`LocalS3::issuer`]; see
    /// [`LocalS3::configure`].)
    pub fn grant(&self, bucket: &str) -> S3Grant {
        S3Grant {
            endpoint: self.endpoint(),
            bucket: bucket.to_owned(),
            access_key_id: self.keys.admin_key.clone(),
            secret_access_key: self.keys.admin_secret.clone(),
            session_token: String::new(),
        }
    }

    /// Mints per-job keys scoped to one object of this server.
    pub fn issuer(&self) -> Issuer {
        Issuer(self.keys.clone())
    }

    /// Points `config` at this server for `bucket`: the operator key for the sequencer's own
    /// reads, per-job keys for the miners, and objects checked before a result is accepted.
    pub fn configure(&self, config: &mut crate::SequencerConfig, bucket: &str) {
        config.s3 = Some(self.grant(bucket));
        config.s3_issuer = Some(self.issuer());
        config.verify_s3_objects = true;
    }

    /// Stops accepting and ends open connections.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `key` is in the grant's bucket: a `HeadObject` signed with the grant's key, to
/// any S3 endpoint. `Err` when the endpoint does not answer or answers something else than
/// found / not found (the caller cannot tell, and should ask again later).
pub async fn object_exists(http: &reqwest::Client, grant: &S3Grant, key: &str) -> std::result::Result<bool, String> {
    use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
    let endpoint = grant.endpoint.parse().map_err(|e| format!("endpoint {:?}: {e}", grant.endpoint))?;
    let bucket = Bucket::new(endpoint, UrlStyle::Path, grant.bucket.clone(), "us-east-1").map_err(|e| format!("bucket {:?}: {e}", grant.bucket))?;
    let creds = if grant.session_token.is_empty() {
        Credentials::new(grant.access_key_id.clone(), grant.secret_access_key.clone())
    } else {
        Credentials::new_with_token(grant.access_key_id.clone(), grant.secret_access_key.clone(), grant.session_token.clone())
    };
    let url = bucket.head_object(Some(&creds), key).sign(std::time::Duration::from_secs(60));
    let r = http.head(url).send().await.map_err(|e| format!("{}: {e}", grant.endpoint))?;
    match r.status().as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        s => Err(format!("{}: HEAD {}/{key}: HTTP {s}", grant.endpoint, grant.bucket)),
    }
}
