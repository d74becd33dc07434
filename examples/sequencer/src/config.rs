//! What a sequencer serves and how: models, keys, identity bindings, limits, storage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use heurist_protocol::{Address, MinerLimits, Registry, TempCredentials};

/// How long after its deadline an image job's scoped S3 key stays valid, and so how late its
/// miner may still upload and deliver while the job has no result: an hour.
pub const LATE_RESULT_GRACE_MS: i64 = 3_600_000;

/// Mints S3 credentials good for one object only: what an image job's miner gets, so that
/// no miner can read, list, overwrite or delete another's results.
pub trait CredentialIssuer: Send + Sync {
    /// Credentials allowing only `PutObject` (and `HeadObject`, `GetObject`) of `key` in
    /// `bucket`, until `expires_at_ms` (Unix ms). `Err` says why none can be made.
    fn issue(&self, bucket: &str, key: &str, expires_at_ms: i64) -> Result<TempCredentials, String>;
}

/// A shared [`CredentialIssuer`] (for instance [`crate::s3::LocalS3::issuer`]).
#[derive(Clone)]
pub struct Issuer(pub Arc<dyn CredentialIssuer>);

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issuer(..)")
    }
}

/// Temporary S3 credentials handed to image jobs, and where results go.
#[derive(Clone, Debug)]
pub struct S3Grant {
    /// The S3 endpoint miners upload to (for the record; miners are configured with it).
    pub endpoint: String,
    /// The bucket (the network's is `heurist-images`).
    pub bucket: String,
    /// Access key id handed out.
    pub access_key_id: String,
    /// Secret key handed out.
    pub secret_access_key: String,
    /// Session token handed out (empty for static keys).
    pub session_token: String,
}

/// How a reward wallet's identity is known.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    /// Reward address → identity address (the contract's `identityAddress`).
    pub table: HashMap<Address, Address>,
    /// Bind a reward wallet to the first identity that signs validly for it, as the network
    /// does for a wallet "after some compute jobs". Off: unknown wallets are refused.
    pub trust_on_first_use: bool,
}

/// The sequencer's configuration.
#[derive(Clone, Debug)]
pub struct SequencerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Folder for `jobs.sqlite` (and `ledger.sqlite` unless `ledger` says otherwise).
    pub data_dir: PathBuf,
    /// Ledger location: a file path or a `postgres://` URL.
    pub ledger: Option<String>,
    /// Reward rules: a preset name (`seed`, `later`) or a file.
    pub rules: String,
    /// The models served (jobs for others are refused).
    pub registry: Registry,
    /// API keys accepted on `submit_job` and result look-ups.
    pub api_keys: Vec<String>,
    /// Identity bindings.
    pub bindings: Bindings,
    /// The reference miner's limits (timeouts, caps).
    pub limits: MinerLimits,
    /// Assignments before a job whose miners keep vanishing is failed.
    pub max_attempts: i64,
    /// How often expired assignments are re-queued.
    pub requeue_interval: Duration,
    /// Where image results go, and the key the sequencer itself reads them with. Handed to
    /// image jobs as it is only when there is no [`SequencerConfig::s3_issuer`] (an external
    /// endpoint with a static key: then every miner holds the bucket's key; see the README).
    pub s3: Option<S3Grant>,
    /// Mints per-job keys scoped to the job's one object (the embedded S3 server does).
    pub s3_issuer: Option<Issuer>,
    /// Jobs that requests without the wallet's signature may hold at once, per client
    /// address: requests under made-up miner ids cannot take the whole queue.
    pub max_unsigned_assignments_per_peer: i64,
    /// The longest `miner_submit_stream` body: a chat answer of 4,096 tokens is well under.
    pub max_stream_bytes: usize,
    /// Refuse an image result whose object is not in the bucket (a signed `HEAD` to the S3
    /// endpoint with the grant's key, for region `us-east-1`, before accepting). Needs the
    /// `s3` feature.
    pub verify_s3_objects: bool,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Audits of accepted results (none when `None`).
    pub audit: Option<crate::audit::AuditPolicy>,
}

impl SequencerConfig {
    /// A configuration with the reference's limits, the bundled registry (today's models plus
    /// the LLMs of July 2024 that the seed's points table names), the seed rules and
    /// trust-on-first-use bindings, storing under `data_dir`, listening on `listen`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> heurist_protocol::Result<Self> {
        let mut registry = Registry::bundled()?;
        registry.extend(Registry::bundled_2024_07()?);
        Ok(Self {
            listen,
            data_dir,
            ledger: None,
            rules: "seed".into(),
            registry,
            api_keys: Vec::new(),
            bindings: Bindings { table: HashMap::new(), trust_on_first_use: true },
            limits: MinerLimits::default(),
            max_attempts: 3,
            requeue_interval: Duration::from_secs(1),
            s3: None,
            s3_issuer: None,
            max_unsigned_assignments_per_peer: 32,
            max_stream_bytes: 1 << 20,
            verify_s3_objects: false,
            max_body_bytes: heurist_protocol::DEFAULT_MAX_BODY_BYTES,
            audit: None,
        })
    }

    /// The ledger location in effect.
    pub fn ledger_location(&self) -> String {
        self.ledger.clone().unwrap_or_else(|| self.data_dir.join("ledger.sqlite").display().to_string())
    }
}
