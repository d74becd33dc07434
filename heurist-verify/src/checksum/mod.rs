//! SHA-256 of model files, checked against the registry, at the speed of the CPU's SHA
//! instructions.
//!
//! Hashing uses the `sha2` crate, which picks the x86 SHA extensions (SHA-NI) or the ARMv8
//! SHA2 instructions at run time and falls back to portable code elsewhere. Each file is read
//! in large buffers ([`DEFAULT_BUFFER_BYTES`]) by a reader thread while the calling thread
//! hashes the previous buffer, so a cold disk read and the hashing overlap; several files are
//! hashed at once, up to the number of CPUs.
//!
//! Invariants: a file whose digest differs from the expected one is never reported as
//! verified ([`VerifyError::ChecksumMismatch`], with both digests); a file that changes while
//! it is hashed has no digest ([`VerifyError::FileChanged`]); a cached verdict is only used
//! while the file's size, modification time, inode and ctime are unchanged
//! ([`VerifiedCache`]). What is checked is the path at the time of the check: load the file
//! from where it was verified, and keep the model folder writable by the miner alone.

mod cache;
mod pipeline;

use std::path::{Path, PathBuf};

use heurist_protocol::Registry;

pub use cache::VerifiedCache;

use crate::error::{Result, VerifyError};

/// Bytes per read. Large reads keep the syscall count negligible (256 per 2 GiB file) and let
/// the kernel read ahead. On a page-cached 2 GiB file (`benches/benches/sha256.rs`'s sweep):
/// 8 MiB as fast as 4 MiB on the machine first measured, and 1.17x as fast on a 2-core Xeon (1.82–1.87
/// against 1.55–1.61 GB/s; 2 MiB 1.27, 16 MiB 1.51), where 4 MiB fell to 0.95x openssl's pace.
pub const DEFAULT_BUFFER_BYTES: usize = 8 << 20;

/// Buffers in flight per file: one being hashed while the other is filled (a third measured no
/// faster: 1.81 against 1.87 GB/s on that Xeon), 16 MiB per file.
pub const DEFAULT_BUFFERS: usize = 2;

/// How far a hash has got, passed to the progress callback after each buffer is hashed.
///
/// A file reports `bytes_done == bytes_total` last (an empty file reports `0 / 0` once). A
/// verification answered from the [`VerifiedCache`] hashes nothing and reports nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Position of the file in the list given ([`FileHasher::hash_files`]); 0 for one file.
    pub index: usize,
    /// The file, as given.
    pub path: &'a Path,
    /// Bytes hashed so far.
    pub bytes_done: u64,
    /// The file's size when it was opened.
    pub bytes_total: u64,
}

/// A file that matched its expected checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The file's SHA-256 (equal to the expected one).
    pub digest: [u8; 32],
    /// Whether the answer came from the [`VerifiedCache`] without reading the file.
    pub from_cache: bool,
}

/// Hashing settings: buffer size, buffers in flight, files at once. The free functions
/// ([`sha256_file`], [`sha256_files`], [`verify_file`]) use [`FileHasher::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHasher {
    buffer_bytes: usize,
    buffers: usize,
    parallel_files: usize,
}

impl Default for FileHasher {
    fn default() -> Self {
        Self {
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            buffers: DEFAULT_BUFFERS,
            parallel_files: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

impl FileHasher {
    /// The defaults: [`DEFAULT_BUFFER_BYTES`], [`DEFAULT_BUFFERS`], one file per CPU.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes per read (at least 1).
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes.max(1);
        self
    }

    /// Buffers in flight per file (at least 1; 1 means no overlap of reading and hashing).
    pub fn buffers(mut self, buffers: usize) -> Self {
        self.buffers = buffers.max(1);
        self
    }

    /// Files hashed at once by [`FileHasher::hash_files`] (at least 1).
    pub fn parallel_files(mut self, files: usize) -> Self {
        self.parallel_files = files.max(1);
        self
    }

    /// The SHA-256 of one file.
    pub fn hash_file(&self, path: impl AsRef<Path>, mut progress: impl FnMut(&Progress<'_>)) -> Result<[u8; 32]> {
        let path = path.as_ref();
        self.hash_indexed(0, path, &mut progress).map(|h| h.digest)
    }

    /// The SHA-256 of each file, in the order given, hashing up to
    /// [`FileHasher::parallel_files`] at once. One file's failure does not stop the others.
    pub fn hash_files<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        progress: impl Fn(&Progress<'_>) + Sync,
    ) -> Vec<Result<[u8; 32]>> {
        let workers = self.parallel_files.min(paths.len());
        if workers <= 1 {
            let mut progress = &progress;
            return paths
                .iter()
                .enumerate()
                .map(|(i, p)| self.hash_indexed(i, p.as_ref(), &mut progress).map(|h| h.digest))
                .collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut slots: Vec<Option<Result<[u8; 32]>>> = paths.iter().map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        let mut progress = &progress;
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(path) = paths.get(i) else { break };
                            done.push((i, self.hash_indexed(i, path.as_ref(), &mut progress).map(|h| h.digest)));
                        }
                        done
                    })
                })
                .collect();
            for handle in handles {
                // A worker that panicked leaves its slots empty: they become errors below.
                if let Ok(done) = handle.join() {
                    for (i, r) in done {
                        if let Some(slot) = slots.get_mut(i) {
                            *slot = Some(r);
                        }
                    }
                }
            }
        });
        slots
            .into_iter()
            .zip(paths)
            .map(|(slot, path)| slot.unwrap_or_else(|| Err(VerifyError::HashThread { path: path.as_ref().to_owned() })))
            .collect()
    }

    /// Checks that the file at `path` has the SHA-256 `expected_hex` (64 hex digits, any
    /// case, as the registry gives them in upper case).
    ///
    /// With a cache, a file already verified and unchanged since is not read again, and a file
    /// that verifies is recorded (call [`VerifiedCache::save`] to keep it).
    pub fn verify_file(
        &self,
        path: impl AsRef<Path>,
        expected_hex: &str,
        cache: Option<&mut VerifiedCache>,
        progress: impl FnMut(&Progress<'_>),
    ) -> Result<Verified> {
        let expected = parse_sha256_hex(expected_hex)?;
        self.verify_digest(path.as_ref(), &expected, cache, progress)
    }

    /// Checks the file of registry model `name` at `path` against the registry's checksum.
    ///
    /// Errors: [`VerifyError::Registry`] for an unknown model or a malformed checksum,
    /// [`VerifyError::NoChecksum`] for an entry without one, else as [`FileHasher::verify_file`].
    pub fn verify_model_file(
        &self,
        registry: &Registry,
        name: &str,
        path: impl AsRef<Path>,
        cache: Option<&mut VerifiedCache>,
        progress: impl FnMut(&Progress<'_>),
    ) -> Result<Verified> {
        let registry_err = |source| VerifyError::Registry { model: name.to_owned(), source: Box::new(source) };
        let entry = registry.get(name).map_err(registry_err)?;
        let expected = entry
            .checksum_bytes()
            .ok_or_else(|| VerifyError::NoChecksum { model: name.to_owned() })?
            .map_err(registry_err)?;
        self.verify_digest(path.as_ref(), &expected, cache, progress)
    }

    fn verify_digest(
        &self,
        path: &Path,
        expected: &[u8; 32],
        mut cache: Option<&mut VerifiedCache>,
        mut progress: impl FnMut(&Progress<'_>),
    ) -> Result<Verified> {
        let canonical: PathBuf = std::fs::canonicalize(path).map_err(VerifyError::io(path, "find"))?;
        if let Some(cache) = cache.as_deref() {
            let meta = std::fs::metadata(&canonical).map_err(VerifyError::io(path, "stat"))?;
            // A hit for another digest (the registry moved on) is not trusted either way: rehash.
            if cache.lookup(&canonical, &cache::Fingerprint::of(&meta)).as_ref() == Some(expected) {
                return Ok(Verified { digest: *expected, from_cache: true });
            }
        }
        let hashed = self.hash_indexed(0, path, &mut progress)?;
        if &hashed.digest != expected {
            if let Some(cache) = cache.as_deref_mut() {
                cache.remove(&canonical);
            }
            return Err(VerifyError::ChecksumMismatch {
                path: path.to_owned(),
                expected: hex::encode(expected),
                actual: hex::encode(hashed.digest),
            });
        }
        if let Some(cache) = cache {
            cache.record(canonical, hashed.fingerprint, &hashed.digest);
        }
        Ok(Verified { digest: hashed.digest, from_cache: false })
    }

    fn hash_indexed(
        &self,
        index: usize,
        path: &Path,
        progress: &mut impl FnMut(&Progress<'_>),
    ) -> Result<pipeline::Hashed> {
        let mut on_chunk = |bytes_done, bytes_total| progress(&Progress { index, path, bytes_done, bytes_total });
        pipeline::hash_path(path, self.buffer_bytes, self.buffers, &mut on_chunk)
    }
}

/// The SHA-256 of the file at `path`, with [`FileHasher::default`].
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("abc.txt");
/// std::fs::write(&path, b"abc")?;
/// let digest = heurist_verify::sha256_file(&path, |_| {})?;
/// assert_eq!(hex::encode(digest), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sha256_file(path: impl AsRef<Path>, progress: impl FnMut(&Progress<'_>)) -> Result<[u8; 32]> {
    FileHasher::default().hash_file(path, progress)
}

/// The SHA-256 of each file, in the order given, several at once ([`FileHasher::hash_files`]).
pub fn sha256_files<P: AsRef<Path> + Sync>(
    paths: &[P],
    progress: impl Fn(&Progress<'_>) + Sync,
) -> Vec<Result<[u8; 32]>> {
    FileHasher::default().hash_files(paths, progress)
}

/// Checks a file against an expected SHA-256 in hex ([`FileHasher::verify_file`]).
pub fn verify_file(
    path: impl AsRef<Path>,
    expected_hex: &str,
    cache: Option<&mut VerifiedCache>,
    progress: impl FnMut(&Progress<'_>),
) -> Result<Verified> {
    FileHasher::default().verify_file(path, expected_hex, cache, progress)
}

/// Checks the file of registry model `name` ([`FileHasher::verify_model_file`]).
///
/// ```no_run
/// use heurist_protocol::{Registry, registry::model_file_path};
/// use heurist_verify::{VerifiedCache, verify_model_file};
///
/// let registry = Registry::bundled()?;
/// let models = std::path::Path::new("/var/cache/heurist/models");
/// let mut cache = VerifiedCache::open(models.join("verified.json"))?;
/// let path = model_file_path(models, "AAMXLAnimeMix");
/// verify_model_file(&registry, "AAMXLAnimeMix", &path, Some(&mut cache), |p| {
///     eprint!("\r{} {}/{} MB", p.path.display(), p.bytes_done >> 20, p.bytes_total >> 20)
/// })?;
/// cache.save()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify_model_file(
    registry: &Registry,
    name: &str,
    path: impl AsRef<Path>,
    cache: Option<&mut VerifiedCache>,
    progress: impl FnMut(&Progress<'_>),
) -> Result<Verified> {
    FileHasher::default().verify_model_file(registry, name, path, cache, progress)
}

/// Parses a SHA-256 given as 64 hex digits, any case, surrounding spaces ignored.
///
/// ```
/// let d = heurist_verify::parse_sha256_hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")?;
/// assert_eq!(d[0], 0xba);
/// assert!(heurist_verify::parse_sha256_hex("ba78").is_err());
/// # Ok::<(), heurist_verify::VerifyError>(())
/// ```
pub fn parse_sha256_hex(value: &str) -> Result<[u8; 32]> {
    let err = |reason: String| VerifyError::ChecksumFormat { value: value.chars().take(100).collect(), reason };
    let hex = value.trim();
    if hex.len() != 64 {
        return Err(err(format!("{} characters", hex.len())));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_err(|e| err(format!("not hex: {e}")))?;
    Ok(out)
}
