//! # heurist-sequencer
//!
//! A local reference sequencer for the Heurist miner protocol: what a miner fork or a reward
//! service runs against when it is not the live network. It speaks every endpoint of the
//! protocol (`miner_request`, `miner_submit`, `miner_submit_stream`, `miner_signal`, and the
//! client's `submit_job` with results by job id), keeps a job queue per model with deadlines
//! and re-queues jobs whose miner vanished, checks every submission's signature against the
//! identity bound to its reward wallet, credits points to a `heurist-points` ledger, and
//! serves a portal.
//!
//! Its state is durable: jobs and results live in SQLite (`jobs.sqlite`), points in the
//! ledger (SQLite by default, PostgreSQL by URL). A submission is answered `200` only once
//! it is committed; a restart credits whatever a crash left uncredited.
//!
//! It composes `heurist-protocol` (wire types, signatures) and `heurist-points` (rules,
//! ledger); it runs no models.

mod app;
pub mod audit;
pub mod config;
mod ledger;
mod error;
pub mod portal;
#[cfg(feature = "s3")]
pub mod s3;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use heurist_points::RuleSet;

pub use audit::{AuditPolicy, AuditVerdict, Auditor};
pub use config::{Bindings, CredentialIssuer, Issuer, S3Grant, SequencerConfig};
pub use error::{Result, SequencerError};

use app::{AppState, Shared};

/// A sequencer bound to its port, serving in the background.
pub struct RunningSequencer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The re-queue sweep; stopped with the server so that nothing holds the stores after.
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for RunningSequencer {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl RunningSequencer {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes requests in flight, and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
        let _ = (&mut self.sweeper).await;
        match (&mut self.task).await {
            Ok(r) => r.map_err(|e| SequencerError::Task(e.to_string())),
            Err(e) => Err(SequencerError::Task(e.to_string())),
        }
    }
}

/// Opens the stores, credits what a previous run left uncredited, binds the port, and serves
/// until [`RunningSequencer::shutdown`].
pub async fn start(config: SequencerConfig) -> Result<RunningSequencer> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| SequencerError::BadInput { what: "data_dir", reason: format!("{}: {e}", config.data_dir.display()) })?;
    let rules = RuleSet::load(&config.rules)?;
    let mut store = store::JobStore::open(&config.data_dir.join("jobs.sqlite"))?;
    // The operator's bindings are final; the others (signed by a reward wallet, or first use)
    // live in the store and survive restarts.
    for (reward, identity) in &config.bindings.table {
        store.bind(reward.as_str(), identity.as_str(), store::BindingSource::Operator, 0, app::now_ms())?;
    }
    let (ledger, rules) = ledger::open(config.ledger_location(), rules, app::now_ms()).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| SequencerError::BadInput { what: "listen", reason: format!("{}: {e}", config.listen) })?;
    let addr = listener.local_addr().map_err(|e| SequencerError::Task(e.to_string()))?;
    let requeue_every = config.requeue_interval;
    let state: Shared = Arc::new(AppState::new(config, store, ledger, rules));
    reconcile(&state).await?;

    let sweeper = state.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(requeue_every);
        loop {
            tick.tick().await;
            let max = sweeper.config.max_attempts;
            let r = app::blocking(&sweeper, move |s| app::lock(&s.store).requeue_expired(app::now_ms(), max)).await;
            match r {
                Ok(ids) if !ids.is_empty() => {
                    sweeper.forget_assignments(ids.iter().map(String::as_str));
                    tracing::info!(?ids, "re-queued jobs whose miner did not submit in time");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "re-queue sweep failed"),
            }
        }
    });

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = app::router(state);
    let task = tokio::spawn(async move {
        // The peer address: a job's stream must come from where the job was handed out.
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!(%addr, "sequencer listening");
    Ok(RunningSequencer { addr, shutdown: Some(tx), task, sweeper })
}

/// Credits results a crash left between the job store and the ledger.
async fn reconcile(state: &Shared) -> Result<()> {
    app::blocking(state, |s| {
        let pending = app::lock(&s.store).uncredited()?;
        for r in pending {
            let points = r.verdict.get("record").cloned().and_then(|rec| serde_json::from_value(rec).ok()).map(|rec| s.rules.points(&rec));
            match points {
                Some(Ok(p)) => app::credit(s, &r.job_id, &r.miner_id, p)?,
                _ => app::lock(&s.store).mark_credited(&r.job_id)?,
            }
        }
        Ok(())
    })
    .await
}
