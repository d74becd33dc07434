//! Model files: fetched once into the cache folder (`[storage].base_dir`, by default
//! `~/.cache/heurist/`), checked against the registry's SHA-256 before first use, never
//! loaded otherwise.
//!
//! A registry entry's `file_url` is fetched over HTTP into `<name>.safetensors.part`,
//! resumed with a `Range` request after a cut, and renamed into place only once its digest
//! matches (`heurist-verify`). A file already in the cache is checked the same way; one that
//! does not match is deleted and fetched again. Entries without a `file_url` but with an
//! `hf_id` come from the Hugging Face hub (`hf-hub`, into `<cache>/hf`).
//!
//! ```no_run
//! # async fn demo() -> heurist_miner::Result<()> {
//! use heurist_miner::download::ModelStore;
//! let registry = heurist_protocol::Registry::bundled()?;
//! let store = ModelStore::new("/home/me/.cache/heurist/models")?.with_progress(true);
//! let path = store.ensure(&registry, "AnimagineXL").await?;
//! # let _ = path; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use heurist_protocol::Registry;
use heurist_protocol::registry::model_file_path;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

use crate::error::{MinerError, Result};

/// Attempts at one file before giving up (each resumes where the last one stopped).
const ATTEMPTS: u32 = 6;

/// The model cache.
#[derive(Clone, Debug)]
pub struct ModelStore {
    dir: PathBuf,
    http: reqwest::Client,
    progress: bool,
    retry_base: Duration,
}

fn err(model: &str, reason: impl std::fmt::Display) -> MinerError {
    MinerError::Download { model: model.to_owned(), reason: reason.to_string() }
}

/// How a fetched file stands against its expected digest.
enum Check {
    Good,
    /// Wrong digest: the file was deleted.
    Bad(String),
}

impl ModelStore {
    /// A store in `dir` (created).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir.display().to_string(), format!("cache folder: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // No overall timeout: a model is gigabytes. A stalled read is cut by this instead.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| err("http client", e))?;
        Ok(Self { dir, http, progress: false, retry_base: Duration::from_millis(500) })
    }

    /// Shows a progress bar on the terminal (hidden when stderr is not one).
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Sets the first pause between attempts (doubling after each).
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checked local file of registry model `name`, fetching it if it is missing or does
    /// not match the registry's checksum.
    pub async fn ensure(&self, registry: &Registry, name: &str) -> Result<PathBuf> {
        let entry = registry.get(name)?;
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(err(name, "not usable as a file name"));
        }
        let expected = entry.checksum.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
        if let Some(c) = &expected {
            heurist_verify::parse_sha256_hex(c).map_err(|e| err(name, e))?;
        }
        let file_url = entry.file_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        match (file_url, &entry.hf_id) {
            (Some(url), _) => {
                // The reference keeps `<name>.safetensors`; a GGUF keeps its own extension.
                let gguf = url.split(['?', '#']).next().is_some_and(|u| u.to_ascii_lowercase().ends_with(".gguf"));
                let dest = if gguf { self.dir.join(format!("{name}.gguf")) } else { model_file_path(&self.dir, name) };
                self.fetch_checked(name, url, &dest, expected.as_deref()).await?;
                Ok(dest)
            }
            (None, Some(repo)) => self.fetch_from_hub(name, repo, entry.hf_branch.as_deref(), expected.as_deref()).await,
            (None, None) => Err(err(name, "the registry gives neither file_url nor hf_id")),
        }
    }

    /// The checked local file of registry model `name`, fetching nothing: `given` if set (an
    /// operator's file, left alone if it is bad), else the file [`ModelStore::ensure`] leaves
    /// in the cache (deleted if it is bad, as `ensure` does). `None` when there is no such
    /// file; an error when it does not match the registry's checksum.
    pub async fn local_checked(&self, registry: &Registry, name: &str, given: Option<&Path>) -> Result<Option<PathBuf>> {
        let entry = registry.get(name)?;
        let expected = entry.checksum.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
        if let Some(path) = given {
            if !path.is_file() {
                return Err(err(name, format!("{}: no such file", path.display())));
            }
            if let Some(c) = expected {
                let p = path.to_owned();
                tokio::task::spawn_blocking(move || heurist_verify::verify_file(&p, &c, None, |_| {}))
                    .await
                    .map_err(|e| err(name, format!("checksum task: {e}")))?
                    .map_err(|e| err(name, format!("{}: {e}", path.display())))?;
            }
            return Ok(Some(path.to_owned()));
        }
        let Some(path) = self.cached_file(registry, name).filter(|p| p.is_file()) else { return Ok(None) };
        match self.check(name, &path, expected.as_deref()).await? {
            Check::Good => Ok(Some(path)),
            Check::Bad(why) => Err(err(name, format!("cached file deleted: {why}"))),
        }
    }

    /// Where [`ModelStore::ensure`] keeps registry model `name` in this cache (a `file_url`
    /// model: `<name>.safetensors`, or `<name>.gguf` for a GGUF URL; a hub model: the `.gguf`
    /// file the hub client left), whether or not the file is there; `None` for a name the
    /// registry lacks or one that cannot be a file name. Nothing is checked or fetched.
    pub fn cached_file(&self, registry: &Registry, name: &str) -> Option<PathBuf> {
        let entry = registry.get(name).ok()?;
        let file_url = entry.file_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        match (file_url, &entry.hf_id) {
            (Some(url), _) if !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.') => {
                let gguf = url.split(['?', '#']).next().is_some_and(|u| u.to_ascii_lowercase().ends_with(".gguf"));
                Some(if gguf { self.dir.join(format!("{name}.gguf")) } else { model_file_path(&self.dir, name) })
            }
            (None, Some(repo)) => hub_cached_gguf(&self.dir.join("hf"), repo),
            _ => None,
        }
    }

    /// Makes `dest` a checked copy of `url`: kept if it is there and matches, otherwise
    /// (re)fetched, resuming a `.part` left by an earlier attempt. Without `expected` the file
    /// is taken as it comes, with a warning.
    pub async fn fetch_checked(&self, name: &str, url: &str, dest: &Path, expected: Option<&str>) -> Result<()> {
        if dest.is_file() {
            match self.check(name, dest, expected).await? {
                Check::Good => return Ok(()),
                Check::Bad(why) => tracing::warn!(model = name, file = %dest.display(), why, "cached file deleted; fetching again"),
            }
        }
        let part = part_path(dest);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.retry_base * (1 << (attempt - 1).min(5))).await;
            }
            match self.download(name, url, &part).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(model = name, attempt, error = %e, "download interrupted; resuming");
                    last = e.to_string();
                    continue;
                }
            }
            match self.check(name, &part, expected).await? {
                Check::Good => {
                    tokio::fs::rename(&part, dest).await.map_err(|e| err(name, format!("{}: {e}", dest.display())))?;
                    return Ok(());
                }
                Check::Bad(why) => {
                    tracing::warn!(model = name, why, "downloaded file deleted; fetching again");
                    last = why;
                }
            }
        }
        Err(err(name, format!("{url}: gave up after {ATTEMPTS} attempts: {last}")))
    }

    /// Checks `path` against `expected`; a mismatch deletes it.
    async fn check(&self, name: &str, path: &Path, expected: Option<&str>) -> Result<Check> {
        let Some(expected) = expected else {
            tracing::warn!(model = name, "the registry has no checksum for this model: used unchecked");
            return Ok(Check::Good);
        };
        let (p, e) = (path.to_owned(), expected.to_owned());
        let verdict = tokio::task::spawn_blocking(move || heurist_verify::verify_file(&p, &e, None, |_| {}))
            .await
            .map_err(|e| err(name, format!("checksum task: {e}")))?;
        match verdict {
            Ok(_) => Ok(Check::Good),
            Err(e @ heurist_verify::VerifyError::ChecksumMismatch { .. }) => {
                tokio::fs::remove_file(path).await.map_err(|e| err(name, format!("{}: {e}", path.display())))?;
                Ok(Check::Bad(e.to_string()))
            }
            Err(e) => Err(err(name, e)),
        }
    }

    /// One attempt: appends to `part` from where it ends, to the end of the file.
    async fn download(&self, name: &str, url: &str, part: &Path) -> Result<()> {
        let have = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
        let mut req = self.http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = req.send().await.map_err(|e| err(name, format!("{url}: {e}")))?;
        let status = resp.status();
        let (append, total) = match status.as_u16() {
            206 => (true, resp.content_length().map(|n| n + have)),
            200 => (false, resp.content_length()),
            // The part is the whole file already (or longer): check it as it is.
            416 if have > 0 => return Ok(()),
            s => return Err(err(name, format!("{url}: HTTP {s}"))),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .await
            .map_err(|e| err(name, format!("{}: {e}", part.display())))?;
        let bar = self.bar(name, total, if append { have } else { 0 });
        let mut got = if append { have } else { 0 };
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| err(name, format!("{url}: cut after {got} bytes: {e}")))?;
            file.write_all(&chunk).await.map_err(|e| err(name, format!("{}: {e}", part.display())))?;
            got += chunk.len() as u64;
            bar.set_position(got);
        }
        file.sync_all().await.map_err(|e| err(name, format!("{}: {e}", part.display())))?;
        bar.finish_and_clear();
        if let Some(total) = total
            && got < total
        {
            return Err(err(name, format!("{url}: cut after {got} of {total} bytes")));
        }
        Ok(())
    }

    fn bar(&self, name: &str, total: Option<u64>, at: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total.unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_owned());
        bar.set_position(at);
        bar
    }

    /// A file from the Hugging Face hub: the repository's `.gguf` file if it has one (what the
    /// chat engine loads), else its `model.safetensors`; cached by `hf-hub` under `<dir>/hf`.
    async fn fetch_from_hub(&self, name: &str, repo: &str, revision: Option<&str>, expected: Option<&str>) -> Result<PathBuf> {
        use hf_hub::{Repo, RepoType};
        let api = hf_hub::api::tokio::ApiBuilder::new()
            .with_cache_dir(self.dir.join("hf"))
            .with_progress(self.progress)
            .build()
            .map_err(|e| err(name, format!("hub client: {e}")))?;
        let repo = match revision {
            Some(rev) => Repo::with_revision(repo.to_owned(), RepoType::Model, rev.to_owned()),
            None => Repo::new(repo.to_owned(), RepoType::Model),
        };
        let api = api.repo(repo);
        let info = api.info().await.map_err(|e| err(name, format!("hub: {e}")))?;
        let file = info
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .find(|f| f.ends_with(".gguf"))
            .or_else(|| info.siblings.iter().map(|s| s.rfilename.as_str()).find(|f| *f == "model.safetensors"))
            .ok_or_else(|| err(name, "the hub repository has no .gguf or model.safetensors file"))?
            .to_owned();
        for _ in 0..2 {
            let path = api.get(&file).await.map_err(|e| err(name, format!("hub {file}: {e}")))?;
            match self.check(name, &path, expected).await? {
                Check::Good => return Ok(path),
                Check::Bad(why) => tracing::warn!(model = name, why, "hub file deleted; fetching again"),
            }
        }
        Err(err(name, format!("hub {file}: does not match the registry checksum")))
    }
}

/// A `.gguf` file of hub repository `repo` in an `hf-hub` cache (`models--{owner}--{name}/
/// snapshots/{revision}/`), as [`ModelStore::ensure`] leaves it; the first by name if several.
fn hub_cached_gguf(cache: &Path, repo: &str) -> Option<PathBuf> {
    let snapshots = cache.join(format!("models--{}", repo.replace('/', "--"))).join("snapshots");
    let mut found: Vec<PathBuf> = std::fs::read_dir(snapshots)
        .ok()?
        .filter_map(|rev| std::fs::read_dir(rev.ok()?.path()).ok())
        .flatten()
        .filter_map(|f| Some(f.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// `<file>.part`, where a download grows until it is checked.
fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}
