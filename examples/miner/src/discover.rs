//! Models already in the cache: what `miner_signal` may switch a worker to without being told
//! on the command line.
//!
//! The protocol's signal answer names a model with more work waiting; the miner switches
//! "if that model is available locally". A [`CacheFinder`] answers that for one family of
//! models (chat or image): the registry must list the model as that family and give a
//! checksum, the model's file must sit where [`ModelStore::ensure`] leaves it (in
//! `[storage].base_dir/models`, by default `~/.cache/heurist/models`), and the file must match
//! the checksum. Nothing is downloaded for a suggestion. A file that does not match is deleted,
//! as the downloader deletes one, so it is never loaded; a model whose registry entry has no
//! checksum is not taken on the signal service's word (name it with `--llm-alt-model` to
//! serve it anyway).
//!
//! The checksum is computed once per model, when a signal first names it, on a blocking
//! thread, and remembered.
//!
//! ```no_run
//! # async fn demo() -> heurist_miner::Result<()> {
//! use std::sync::Arc;
//! use heurist_miner::discover::{CacheFinder, Family};
//! use heurist_miner::download::ModelStore;
//! let registry = Arc::new(heurist_protocol::Registry::bundled()?);
//! let finder = CacheFinder::new(ModelStore::new("/home/me/.cache/heurist/models")?, registry, Family::Image);
//! println!("in the cache: {:?}", finder.cached());
//! if let Some(path) = finder.find("AnimagineXL").await {
//!     println!("checked: {}", path.display());
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use heurist_protocol::{ModelType, Registry, RegistryEntry};

use crate::download::ModelStore;

/// Which models a finder serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Chat models (registry types `llm…`), loaded from a GGUF file.
    Chat,
    /// Image base checkpoints (`sd15`, `sdxl10`), loaded from a single `.safetensors` file.
    /// Composites and LoRAs need a base and are not found this way.
    Image,
}

impl Family {
    /// Whether the registry entry is a model of this family a worker can load from one file.
    pub fn fits(self, entry: &RegistryEntry) -> bool {
        match self {
            Self::Chat => matches!(entry.model_type, ModelType::Llm(_)),
            Self::Image => matches!(entry.model_type, ModelType::Sd15 | ModelType::Sdxl10),
        }
    }
}

/// Finds checked model files of one family in the model cache.
#[derive(Debug)]
pub struct CacheFinder {
    store: ModelStore,
    registry: Arc<Registry>,
    family: Family,
    /// Models whose file was found to match its checksum. The lock is held across a check,
    /// so workers asking for the same model together hash its file once.
    checked: tokio::sync::Mutex<HashMap<String, PathBuf>>,
}

impl CacheFinder {
    /// A finder over `store`'s folder for models of `family` in `registry`.
    pub fn new(store: ModelStore, registry: Arc<Registry>, family: Family) -> Self {
        Self { store, registry, family, checked: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// The family it finds.
    pub fn family(&self) -> Family {
        self.family
    }

    fn candidate(&self, model: &str) -> Option<&RegistryEntry> {
        let entry = self.registry.get(model).ok()?;
        let has_checksum = entry.checksum.as_deref().is_some_and(|c| !c.trim().is_empty());
        (self.family.fits(entry) && has_checksum).then_some(entry)
    }

    /// The models of its family whose file is in the cache now, sorted (their checksums are
    /// checked when a signal names them, not here).
    pub fn cached(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .registry
            .entries()
            .filter(|e| self.candidate(&e.name).is_some())
            .filter(|e| self.store.cached_file(&self.registry, &e.name).is_some_and(|p| p.is_file()))
            .map(|e| e.name.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The checked file of `model` in the cache, or `None` (logged) when the registry does not
    /// list it as a model of this family with a checksum, there is no file for it, or the file
    /// does not match (then it is deleted).
    pub async fn find(&self, model: &str) -> Option<PathBuf> {
        let mut checked = self.checked.lock().await;
        if let Some(path) = checked.get(model).filter(|p| p.is_file()) {
            return Some(path.clone());
        }
        if self.candidate(model).is_none() {
            tracing::debug!(model, family = ?self.family, "not a registry model of this family with a checksum");
            return None;
        }
        match self.store.local_checked(&self.registry, model, None).await {
            Ok(Some(path)) => {
                tracing::info!(model, file = %path.display(), "found in the model cache, checksum matches");
                checked.insert(model.to_owned(), path.clone());
                Some(path)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(model, %error, "the cached file does not match the registry; it is not used");
                None
            }
        }
    }
}
