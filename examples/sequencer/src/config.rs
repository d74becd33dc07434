//! What a sequencer serves and how: models, keys, identity bindings, limits, storage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use heurist_protocol::{Address, MinerLimits, Registry};

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
    /// Credentials for image uploads.
    pub s3: Option<S3Grant>,
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
