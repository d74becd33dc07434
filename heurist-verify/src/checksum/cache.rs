//! The cache of verified files, so that a multi-gigabyte model is hashed once, not at every
//! start.
//!
//! An entry says "the file at this canonical path, while its fingerprint is this one, has this
//! SHA-256". The fingerprint is the size, the modification time, and on Unix the device, the
//! inode and the status-change time (ctime). Any difference is a miss and the file is hashed
//! again: a rewrite changes the mtime, a file swapped in by rename changes the inode, and a
//! rewrite whose mtime was set back (`touch -d`) still changes the ctime, which no user can
//! set. Filesystems with coarse timestamps (FAT: 2 s) could hide a same-size rewrite made
//! within one tick; model caches live on ext4, xfs or btrfs (nanoseconds).
//!
//! Only files that matched their expected checksum are recorded, and a hit is only taken when
//! the recorded digest equals the one now expected. The cache file is trusted: keep it where
//! the model files are, writable by the same user. It is JSON, written atomically (a temporary
//! file renamed over the old one).

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, VerifyError};

/// The version of the cache file's format; a file of another version is read as empty.
const FORMAT: u32 = 1;

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    pub(crate) size: u64,
    mtime_s: i64,
    mtime_ns: u32,
    ctime_s: i64,
    ctime_ns: u32,
    dev: u64,
    inode: u64,
}

impl Fingerprint {
    #[cfg(unix)]
    pub(crate) fn of(meta: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_s: meta.mtime(),
            mtime_ns: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            ctime_s: meta.ctime(),
            ctime_ns: u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            dev: meta.dev(),
            inode: meta.ino(),
        }
    }

    #[cfg(not(unix))]
    pub(crate) fn of(meta: &Metadata) -> Self {
        // No inode or ctime through std here: size and mtime only.
        let (mtime_s, mtime_ns) = match meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        {
            Some(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            None => (0, 0),
        };
        Self { size: meta.len(), mtime_s, mtime_ns, ctime_s: 0, ctime_ns: 0, dev: 0, inode: 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    path: PathBuf,
    #[serde(flatten)]
    fingerprint: Fingerprint,
    /// Lower-case hex.
    sha256: String,
}

#[derive(Deserialize)]
struct Header {
    format: u32,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    files: Vec<Entry>,
}

/// Files already verified, keyed by canonical path and checked against their fingerprint.
///
/// ```
/// use heurist_verify::{VerifiedCache, verify_file};
/// let dir = tempfile::tempdir()?;
/// let model = dir.path().join("model.safetensors");
/// std::fs::write(&model, b"abc")?;
/// let abc = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
///
/// let mut cache = VerifiedCache::open(dir.path().join("verified.json"))?;
/// assert!(!verify_file(&model, abc, Some(&mut cache), |_| {})?.from_cache);
/// assert!(verify_file(&model, abc, Some(&mut cache), |_| {})?.from_cache);
/// cache.save()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct VerifiedCache {
    file: Option<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
    dirty: bool,
}

impl VerifiedCache {
    /// An empty cache held in memory only ([`VerifiedCache::save`] does nothing).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Reads the cache kept in `file`; a missing file is an empty cache that
    /// [`VerifiedCache::save`] will create. A file that does not parse is an error (delete it
    /// to start afresh); one written by another format version is read as empty.
    pub fn open(file: impl Into<PathBuf>) -> Result<Self> {
        let file = file.into();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { file: Some(file), ..Self::default() });
            }
            Err(e) => return Err(VerifyError::Cache { path: file, reason: format!("cannot read: {e}") }),
        };
        let bad =
            |e: serde_json::Error| VerifyError::Cache { path: file.clone(), reason: format!("not a cache file: {e}") };
        // The version first: a file of another version may hold entries of another shape.
        let header: Header = serde_json::from_str(&text).map_err(bad)?;
        let entries = if header.format == FORMAT {
            let parsed: CacheFile = serde_json::from_str(&text).map_err(bad)?;
            parsed.files.into_iter().map(|e| (e.path.clone(), e)).collect()
        } else {
            tracing::info!(cache = %file.display(), format = header.format, "verified-files cache of another format, starting empty");
            BTreeMap::new()
        };
        Ok(Self { file: Some(file), entries, dirty: false })
    }

    /// The file this cache is kept in, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Writes the cache to its file if anything changed since it was read or last saved.
    pub fn save(&mut self) -> Result<()> {
        let Some(file) = self.file.clone() else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        self.save_to(&file)?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the cache to `file` (atomically: a temporary file beside it, then a rename).
    pub fn save_to(&self, file: &Path) -> Result<()> {
        let err = |reason: String| VerifyError::Cache { path: file.to_owned(), reason };
        let doc = CacheFile { format: FORMAT, files: self.entries.values().cloned().collect() };
        let text = serde_json::to_vec_pretty(&doc).map_err(|e| err(format!("cannot encode: {e}")))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create its folder: {e}")))?;
        }
        let mut tmp_name = file.as_os_str().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, file)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(format!("cannot write: {e}")));
        }
        Ok(())
    }

    /// How many files are recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no file is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets `path` (canonicalised if it exists), so that it is hashed at its next check.
    pub fn forget(&mut self, path: &Path) {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        self.dirty |= self.entries.remove(&key).is_some();
    }

    /// The recorded digest of `canonical` if its fingerprint is still `now`.
    pub(crate) fn lookup(&self, canonical: &Path, now: &Fingerprint) -> Option<[u8; 32]> {
        let entry = self.entries.get(canonical).filter(|e| &e.fingerprint == now)?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&entry.sha256, &mut digest).ok()?;
        Some(digest)
    }

    /// Records that `canonical`, at `fingerprint`, matched `digest`.
    pub(crate) fn record(&mut self, canonical: PathBuf, fingerprint: Fingerprint, digest: &[u8; 32]) {
        // A path that is not UTF-8 cannot be written to the JSON file; it is simply never cached.
        if canonical.to_str().is_none() {
            return;
        }
        let entry = Entry { path: canonical.clone(), fingerprint, sha256: hex::encode(digest) };
        if self.entries.get(&canonical) != Some(&entry) {
            self.entries.insert(canonical, entry);
            self.dirty = true;
        }
    }

    pub(crate) fn remove(&mut self, canonical: &Path) {
        self.dirty |= self.entries.remove(canonical).is_some();
    }
}
