//! The verified-files cache: a file is hashed once, and any change makes it hashed again.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use heurist_verify::{FileHasher, VerifiedCache, VerifyError};

const ABC: &str = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";

/// Verifies `path` and returns (the result, the bytes hashed), counted by the progress callback.
fn verify_counting(
    path: &Path,
    expected: &str,
    cache: &mut VerifiedCache,
) -> (heurist_verify::Result<heurist_verify::Verified>, u64) {
    let hashed = AtomicU64::new(0);
    let r = FileHasher::new().buffer_bytes(1 << 20).verify_file(path, expected, Some(cache), |p| {
        hashed.store(p.bytes_done, Ordering::Relaxed);
    });
    (r, hashed.load(Ordering::Relaxed))
}

/// Linux stamps files with a clock tick (a few ms), not the exact time: wait one out so that
/// a rewrite gets a new ctime.
fn next_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

struct Model {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    expected: String,
    len: u64,
    bytes: Vec<u8>,
}

fn model() -> Model {
    let dir = tempfile::tempdir().unwrap();
    let len = 4usize << 20 | 1;
    let files = crate::checksum::prefix_files(dir.path(), len);
    let (path, p) = files.into_iter().find(|(_, p)| p.len == len).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    Model { _dir: dir, path, expected: p.sha256.to_uppercase(), len: len as u64, bytes }
}

#[test]
fn an_unchanged_file_is_hashed_once_even_across_restarts() {
    let m = model();
    let cache_file = m.path.with_file_name("cache/verified.json");
    let mut cache = VerifiedCache::open(&cache_file).unwrap();
    assert!(cache.is_empty());

    let (r, hashed) = verify_counting(&m.path, &m.expected, &mut cache);
    assert!(!r.unwrap().from_cache);
    assert_eq!(hashed, m.len);
    let (r, hashed) = verify_counting(&m.path, &m.expected, &mut cache);
    assert!(r.unwrap().from_cache);
    assert_eq!(hashed, 0, "a cache hit reads nothing");
    cache.save().unwrap();

    // A new process reads the cache file back; the path may be given another way.
    let mut reopened = VerifiedCache::open(&cache_file).unwrap();
    assert_eq!(reopened.len(), 1);
    let other_spelling = m.path.parent().unwrap().join(".").join(m.path.file_name().unwrap());
    let (r, hashed) = verify_counting(&other_spelling, &m.expected.to_lowercase(), &mut reopened);
    assert!(r.unwrap().from_cache);
    assert_eq!(hashed, 0);

    // The file on disk is JSON holding the canonical path and the digest.
    let text = std::fs::read_to_string(&cache_file).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &json["files"][0];
    assert_eq!(entry["sha256"], m.expected.to_lowercase());
    assert_eq!(entry["path"], std::fs::canonicalize(&m.path).unwrap().to_str().unwrap());
}

#[test]
fn touch_or_rewrite_makes_it_hashed_again() {
    let m = model();
    let mut cache = VerifiedCache::in_memory();
    assert_eq!(verify_counting(&m.path, &m.expected, &mut cache).1, m.len);

    // touch: a new modification time, same content.
    let f = std::fs::File::options().write(true).open(&m.path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(60)).unwrap();
    drop(f);
    let (r, hashed) = verify_counting(&m.path, &m.expected, &mut cache);
    assert!(!r.unwrap().from_cache);
    assert_eq!(hashed, m.len);
    assert_eq!(verify_counting(&m.path, &m.expected, &mut cache).1, 0);

    // Rewritten in place with the same bytes: hashed again, still good.
    next_tick();
    std::fs::write(&m.path, &m.bytes).unwrap();
    let (r, hashed) = verify_counting(&m.path, &m.expected, &mut cache);
    assert!(!r.unwrap().from_cache);
    assert_eq!(hashed, m.len);
}

#[test]
fn tampering_behind_the_cache_is_caught() {
    let m = model();
    let mut cache = VerifiedCache::in_memory();
    verify_counting(&m.path, &m.expected, &mut cache).0.unwrap();
    let meta = std::fs::metadata(&m.path).unwrap();
    let mtime = meta.modified().unwrap();

    // One byte changed in place, same size, modification time set back: the ctime gives it away.
    next_tick();
    let mut bad = m.bytes.clone();
    bad[12345] ^= 1;
    std::fs::write(&m.path, &bad).unwrap();
    std::fs::File::options().write(true).open(&m.path).unwrap().set_modified(mtime).unwrap();
    assert_eq!(std::fs::metadata(&m.path).unwrap().modified().unwrap(), mtime);
    let (r, hashed) = verify_counting(&m.path, &m.expected, &mut cache);
    assert!(matches!(r, Err(VerifyError::ChecksumMismatch { .. })), "{r:?}");
    assert_eq!(hashed, m.len);
    // A refusal is not cached as good, and it forgets the old verdict.
    assert!(cache.is_empty());
    assert!(matches!(verify_counting(&m.path, &m.expected, &mut cache).0, Err(VerifyError::ChecksumMismatch { .. })));

    // Restored, verified, then another file renamed over it (new inode).
    std::fs::write(&m.path, &m.bytes).unwrap();
    verify_counting(&m.path, &m.expected, &mut cache).0.unwrap();
    let swapped = m.path.with_file_name("swap");
    std::fs::write(&swapped, &bad).unwrap();
    std::fs::rename(&swapped, &m.path).unwrap();
    let (r, hashed) = verify_counting(&m.path, &m.expected, &mut cache);
    assert!(matches!(r, Err(VerifyError::ChecksumMismatch { .. })), "{r:?}");
    assert_eq!(hashed, m.len);

    // Restored, verified, then truncated.
    std::fs::write(&m.path, &m.bytes).unwrap();
    verify_counting(&m.path, &m.expected, &mut cache).0.unwrap();
    std::fs::write(&m.path, &m.bytes[..m.bytes.len() - 1]).unwrap();
    assert!(matches!(verify_counting(&m.path, &m.expected, &mut cache).0, Err(VerifyError::ChecksumMismatch { .. })));
}

#[test]
fn a_cached_file_checked_against_another_digest_is_hashed_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abc");
    std::fs::write(&path, b"abc").unwrap();
    let mut cache = VerifiedCache::in_memory();
    verify_counting(&path, ABC, &mut cache).0.unwrap();
    let fox = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592";
    let (r, hashed) = verify_counting(&path, fox, &mut cache);
    match r {
        Err(VerifyError::ChecksumMismatch { expected, actual, .. }) => {
            assert_eq!((expected.as_str(), actual), (fox, ABC.to_lowercase()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(hashed, 3, "the file was read, not judged from the cache");
}

#[test]
fn cache_files_that_do_not_parse_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verified.json");
    std::fs::write(&file, b"{ not json").unwrap();
    match VerifiedCache::open(&file) {
        Err(VerifyError::Cache { path, .. }) => assert_eq!(path, file),
        other => panic!("{other:?}"),
    }
    // Another format version is read as empty; saving an unchanged cache writes nothing.
    std::fs::write(&file, br#"{"format": 99, "files": [{"anything": 1}]}"#).unwrap();
    let mut cache = VerifiedCache::open(&file).unwrap();
    assert!(cache.is_empty());
    cache.save().unwrap();
    assert!(std::fs::read_to_string(&file).unwrap().contains("99"));
    // `forget` drops an entry.
    let model = dir.path().join("abc");
    std::fs::write(&model, b"abc").unwrap();
    verify_counting(&model, ABC, &mut cache).0.unwrap();
    assert_eq!(cache.len(), 1);
    cache.forget(&model);
    assert!(cache.is_empty());
}
