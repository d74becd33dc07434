//! The spool: every finished job is written to disk before it is submitted, and removed only
//! once the sequencer has it. After a crash or restart the miner submits what the spool holds,
//! or drops (with a log line) what is past its deadline.
//!
//! One JSON file per job, written to a temporary name, synced, renamed and the folder
//! synced, so a file is either absent or whole even if the process is killed mid-write.
//! Signatures are not stored: they are hourly, so each attempt signs anew.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use heurist_protocol::{IdentityWallet, MinerId, MinerSubmit, Nullable, SubmitResult, TempCredentials, TokenUsage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{MinerError, Result};

/// A finished job waiting for its submission to be acknowledged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// The job.
    pub job_id: String,
    /// Who did it.
    pub miner_id: MinerId,
    /// The result.
    pub result: SubmitResult,
    /// Seconds the `miner_request` took.
    pub request_latency: f64,
    /// Seconds loading a model for this job.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub loading_latency: Nullable<f64>,
    /// Seconds of inference.
    pub inference_latency: f64,
    /// Seconds of the upload.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub upload_latency: Nullable<f64>,
    /// Extra submission fields, sent as they are.
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// The token counts of a chat answer (a result spooled by an older version carries them in
    /// `extra`, which is sent as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// When the job was received, Unix ms.
    pub received_at_ms: i64,
    /// After this, Unix ms, the result is worth nothing to the network: drop it.
    pub expires_at_ms: i64,
    /// For an image whose PNG (kept beside this record) is not yet in S3: where it goes.
    /// `None` once the S3 server has it (and for chat results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<PendingUpload>,
}

/// An upload still to do: the job's bucket and temporary credentials (the key is the
/// result's `S3Key`). The credentials are kept so that a restart can finish the upload; the
/// spool folder is the miner's own, like its identity keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingUpload {
    /// The bucket.
    pub bucket: String,
    /// The job's temporary credentials.
    pub credentials: TempCredentials,
}

impl Finished {
    /// The `miner_submit` body, signed for the hour of `now_s`.
    pub fn signed(&self, wallet: &IdentityWallet, now_s: u64) -> Result<MinerSubmit> {
        let mut submit = MinerSubmit {
            miner_id: self.miner_id.clone(),
            job_id: self.job_id.clone(),
            result: self.result.clone(),
            request_latency: self.request_latency,
            loading_latency: self.loading_latency,
            inference_latency: self.inference_latency,
            upload_latency: self.upload_latency,
            signature: wallet.sign_hourly(&self.miner_id, now_s)?,
            identity_address: wallet.address().clone(),
            usage: self.usage,
            extra: self.extra.clone(),
        };
        // Names the job, so the hourly signature cannot be replayed on another one.
        submit.sign_job(wallet, now_s)?;
        Ok(submit)
    }
}

/// A folder of finished jobs.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

fn spool_err(path: &Path, e: impl std::fmt::Display) -> MinerError {
    MinerError::Spool { path: path.display().to_string(), error: e.to_string() }
}

/// A file name for any job id: safe characters kept, others as `%XX`.
fn file_name(job_id: &str) -> String {
    format!("{}.json", stem(job_id))
}

/// The PNG beside a job's record.
fn image_name(job_id: &str) -> String {
    format!("{}.png", stem(job_id))
}

fn stem(job_id: &str) -> String {
    let mut s = String::with_capacity(job_id.len() + 5);
    for b in job_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' && !s.is_empty() {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Writes `bytes` to `dir/name` so that the file is absent or whole, whatever happens.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // Records of pending uploads hold the job's temporary S3 credentials: owner only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(|e| spool_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| spool_err(&tmp, e))?;
    f.sync_all().map_err(|e| spool_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| spool_err(&path, e))?;
    // The rename is durable only once the folder is synced.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| spool_err(dir, e))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(spool_err(path, e)),
    }
}

impl Spool {
    /// Opens (creating) the spool folder.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| spool_err(&dir, e))?;
        Ok(Self { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a finished job durably.
    pub fn put(&self, job: &Finished) -> Result<()> {
        let name = file_name(&job.job_id);
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| spool_err(&self.dir.join(&name), e))?;
        write_durably(&self.dir, &name, &bytes)
    }

    /// Writes an image result durably: its PNG first, then its record, so that a record
    /// never names a PNG that is not there.
    pub fn put_with_image(&self, job: &Finished, png: &[u8]) -> Result<()> {
        write_durably(&self.dir, &image_name(&job.job_id), png)?;
        self.put(job)
    }

    /// The PNG kept for an image result.
    pub fn image(&self, job_id: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(image_name(job_id));
        fs::read(&path).map_err(|e| spool_err(&path, e))
    }

    /// Forgets a job once the sequencer has it (its record first: a PNG left alone by a
    /// crash is swept by [`Spool::pending`]).
    pub fn remove(&self, job_id: &str) -> Result<()> {
        remove_if_there(&self.dir.join(file_name(job_id)))?;
        remove_if_there(&self.dir.join(image_name(job_id)))
    }

    /// Moves a job the sequencer refused for good to `refused/`, for the operator to see.
    pub fn set_aside(&self, job_id: &str) -> Result<()> {
        let dir = self.dir.join("refused");
        fs::create_dir_all(&dir).map_err(|e| spool_err(&dir, e))?;
        // The PNG first: the record is what says there is something to look at.
        for name in [image_name(job_id), file_name(job_id)] {
            let from = self.dir.join(&name);
            match fs::rename(&from, dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(spool_err(&from, e)),
            }
        }
        Ok(())
    }

    /// Every finished job waiting, oldest first. Unreadable files are reported, not dropped.
    pub fn pending(&self) -> Result<Vec<Finished>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| spool_err(&self.dir, e))? {
            let path = entry.map_err(|e| spool_err(&self.dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(stem) = name.strip_suffix(".png") {
                // A PNG whose record was removed (delivered) before a crash took the PNG. One
                // written this minute may be a record still being written beside it: kept.
                let old = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(60)));
                if old && !name.starts_with('.') && !self.dir.join(format!("{stem}.json")).exists() {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let bytes = fs::read(&path).map_err(|e| spool_err(&path, e))?;
            match serde_json::from_slice::<Finished>(&bytes) {
                Ok(f) => out.push(f),
                Err(e) => tracing::error!(path = %path.display(), error = %e, "unreadable spool file left in place"),
            }
        }
        out.sort_by_key(|f| f.received_at_ms);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(id: &str) -> Finished {
        Finished {
            job_id: id.into(),
            miner_id: "0x3f71f00ad1266be038917addd150943ca7c60f6a-g".parse().unwrap(),
            result: SubmitResult::Text("[]".into()),
            request_latency: 0.1,
            loading_latency: Nullable::Absent,
            inference_latency: 1.5,
            upload_latency: Nullable::Null,
            usage: None,
            extra: Map::new(),
            received_at_ms: 5,
            expires_at_ms: 10,
            upload: None,
        }
    }

    #[test]
    fn put_pending_remove_round_trip_with_odd_ids() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for id in ["plain-1", "../etc/passwd", "a/b c", ".hidden", "ünï"] {
            spool.put(&finished(id)).unwrap();
        }
        let p = spool.pending().unwrap();
        assert_eq!(p.len(), 5);
        let one = p.iter().find(|f| f.job_id == "../etc/passwd").unwrap();
        assert_eq!(one, &finished("../etc/passwd"), "Absent and Null survive");
        for id in ["plain-1", "../etc/passwd", "a/b c", ".hidden", "ünï"] {
            spool.remove(id).unwrap();
        }
        assert!(spool.pending().unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 0, "nothing escaped the folder");
    }

    #[test]
    fn images_beside_records_and_orphans_swept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut job = finished("img/1");
        job.upload = Some(PendingUpload { bucket: "b".into(), credentials: TempCredentials("k".into(), "s".into(), String::new()) });
        spool.put_with_image(&job, b"png bytes").unwrap();
        assert_eq!(spool.image("img/1").unwrap(), b"png bytes");
        assert_eq!(spool.pending().unwrap(), [job.clone()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file_name("img/1"))).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "credentials readable by the owner only");
        }
        spool.set_aside("img/1").unwrap();
        assert!(spool.pending().unwrap().is_empty());
        assert!(dir.path().join("refused").join(image_name("img/1")).exists(), "the PNG goes with its record");

        // A PNG without a record, old enough not to be one being written: swept.
        let orphan = dir.path().join(image_name("gone"));
        std::fs::write(&orphan, b"x").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        std::fs::File::options().write(true).open(&orphan).unwrap().set_modified(old).unwrap();
        let fresh = dir.path().join(image_name("being-written"));
        std::fs::write(&fresh, b"y").unwrap();
        spool.pending().unwrap();
        assert!(!orphan.exists());
        assert!(fresh.exists(), "a fresh PNG may be a record still being written");
    }
}
