//! `miner_signal`: every `signal_interval` a worker tells the signal service which model it
//! has loaded; the answer may name another model with more work waiting. A worker switches
//! when that model is one it has present: loaded, named on the command line and checked, or
//! found in the model cache with a matching checksum ([`CacheFinder`]); it says so in the log
//! when it is not.
//!
//! [`ModelChoice`] is the model a worker asks jobs for, shared between its poll loop (which
//! reads it before each `miner_request`) and [`signal_loop`] (which may change it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use heurist_protocol::client::SequencerClient;
use heurist_protocol::{MinerId, MinerSignal, ModelKind};
use tokio::sync::watch;

use crate::discover::CacheFinder;

/// The model a worker serves now, and those it could switch to.
#[derive(Debug)]
pub struct ModelChoice {
    current: RwLock<String>,
    present: RwLock<Vec<String>>,
    /// The checked files of present models that are not loaded yet.
    files: RwLock<HashMap<String, PathBuf>>,
    finder: Option<Arc<CacheFinder>>,
    /// Models that failed to load: never switched to again.
    failed: RwLock<Vec<String>>,
    pinned: bool,
}

impl ModelChoice {
    /// Starts on `current`; may switch to any of `present` (which should include it).
    pub fn new(current: impl Into<String>, present: Vec<String>) -> Self {
        Self {
            current: RwLock::new(current.into()),
            present: RwLock::new(present),
            files: RwLock::new(HashMap::new()),
            finder: None,
            failed: RwLock::new(Vec::new()),
            pinned: false,
        }
    }

    /// Never switches, and tells the signal service so (`skip_update`), as the reference does
    /// when the operator names a model.
    pub fn pinned(model: impl Into<String>) -> Self {
        let model = model.into();
        Self { pinned: true, ..Self::new(model.clone(), vec![model]) }
    }

    /// Also present: these models, each with its checked file (loaded when switched to).
    pub fn with_files(self, files: HashMap<String, PathBuf>) -> Self {
        {
            let mut present = self.present.write().unwrap_or_else(PoisonError::into_inner);
            let mut names: Vec<&String> = files.keys().filter(|m| !present.contains(m)).collect();
            names.sort();
            present.extend(names.into_iter().cloned());
        }
        *self.files.write().unwrap_or_else(PoisonError::into_inner) = files;
        self
    }

    /// Also present: whatever `finder` finds in the model cache when a signal names it.
    pub fn with_finder(mut self, finder: Arc<CacheFinder>) -> Self {
        self.finder = Some(finder);
        self
    }

    /// The checked file of present model `model`, when it has one (a model named with its
    /// file, or found in the cache).
    pub fn file(&self, model: &str) -> Option<PathBuf> {
        self.files.read().unwrap_or_else(PoisonError::into_inner).get(model).cloned()
    }

    /// Switches to `model` if it is present, or (with a finder) found in the model cache and
    /// checked now, and is not the current one; says whether it did.
    pub async fn offer(&self, model: &str) -> bool {
        if self.pinned || self.failed.read().unwrap_or_else(PoisonError::into_inner).iter().any(|m| m == model) {
            return false;
        }
        let known = self.present.read().unwrap_or_else(PoisonError::into_inner).iter().any(|m| m == model);
        if !known && let Some(finder) = &self.finder {
            let Some(path) = finder.find(model).await else { return false };
            self.files.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_owned(), path);
            let mut present = self.present.write().unwrap_or_else(PoisonError::into_inner);
            if !present.iter().any(|m| m == model) {
                present.push(model.to_owned());
            }
        }
        self.switch_to(model)
    }

    /// The model to ask jobs for.
    pub fn current(&self) -> String {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The models it may switch to.
    pub fn present(&self) -> Vec<String> {
        self.present.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Goes back to `loaded` after a switch to `failed` could not be completed, and takes
    /// `failed` off the present models so that the next signal does not try it again.
    pub fn fall_back(&self, loaded: &str, failed: &str) {
        self.present.write().unwrap_or_else(PoisonError::into_inner).retain(|m| m != failed);
        self.files.write().unwrap_or_else(PoisonError::into_inner).remove(failed);
        self.failed.write().unwrap_or_else(PoisonError::into_inner).push(failed.to_owned());
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded.to_owned();
    }

    /// Switches to `model` if it is present and not the current one; says whether it did.
    pub fn switch_to(&self, model: &str) -> bool {
        if self.pinned || !self.present.read().unwrap_or_else(PoisonError::into_inner).iter().any(|m| m == model) {
            return false;
        }
        let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if *cur == model {
            return false;
        }
        *cur = model.to_owned();
        true
    }
}

/// What a signal loop reports.
#[derive(Clone, Debug)]
pub struct SignalSetup {
    /// Who reports.
    pub miner_id: MinerId,
    /// `SD` or `LLM`.
    pub kind: ModelKind,
    /// The GPU's name.
    pub hardware: String,
    /// The miner's version string.
    pub version: String,
    /// Between signals.
    pub interval: Duration,
}

/// Signals every `setup.interval` (the first one at once) until `stop` turns true, switching
/// `choice` when the answer names a present model. An unreachable signal service is logged
/// and tried again at the next interval; it never stops the worker.
pub async fn signal_loop(client: SequencerClient, setup: SignalSetup, choice: Arc<ModelChoice>, mut stop: watch::Receiver<bool>) {
    let interval = setup.interval.max(Duration::from_millis(100));
    loop {
        let loaded = choice.current();
        let signal = MinerSignal {
            miner_id: setup.miner_id.clone(),
            model_type: setup.kind,
            model_id: loaded.clone(),
            hardware: Some(setup.hardware.clone()),
            version: Some(setup.version.clone()),
            options: None,
            skip_update: choice.pinned.then_some(true),
            extra: Default::default(),
        };
        match client.signal(&signal).await {
            Ok(answer) => match answer.model_id.as_deref() {
                Some(wanted) if wanted != loaded => {
                    if choice.offer(wanted).await {
                        tracing::info!(miner = %setup.miner_id, from = loaded, to = wanted, "switching model: the signal service has more work for it");
                    } else {
                        tracing::info!(miner = %setup.miner_id, wanted, "the signal service suggests a model this worker does not have");
                    }
                }
                _ => {}
            },
            Err(e) => tracing::warn!(miner = %setup.miner_id, error = %e, "miner_signal failed; trying again next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_only_to_present_models() {
        let c = ModelChoice::new("A", vec!["A".into(), "B".into()]);
        assert!(!c.switch_to("A"), "already loaded");
        assert!(!c.switch_to("C"), "not present");
        assert_eq!(c.current(), "A");
        assert!(c.switch_to("B"));
        assert_eq!(c.current(), "B");
        c.fall_back("A", "B");
        assert_eq!(c.current(), "A");
        assert!(!c.switch_to("B"), "a model that failed to load is not tried again");
        assert_eq!(c.present(), ["A"]);
        let p = ModelChoice::pinned("A");
        assert!(!p.switch_to("A"));
        assert_eq!(p.current(), "A");
    }
}
