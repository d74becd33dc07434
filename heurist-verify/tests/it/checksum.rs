//! SHA-256 of files against Python hashlib's digests, tampering, parallel order, bad input.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use heurist_protocol::Registry;
use heurist_verify::{FileHasher, Progress, VerifyError, sha256_file, sha256_files, verify_file, verify_model_file};
use serde::Deserialize;

#[derive(Deserialize)]
struct Doc {
    stream: Stream,
    texts: Vec<Text>,
    stream_prefixes: Vec<Prefix>,
}

#[derive(Deserialize)]
struct Stream {
    multiplier: u64,
    increment: u64,
    seed: u64,
}

#[derive(Deserialize)]
struct Text {
    text: String,
    sha256: String,
}

#[derive(Deserialize)]
pub(crate) struct Prefix {
    pub(crate) len: usize,
    pub(crate) sha256: String,
}

fn doc() -> Doc {
    let text = std::fs::read_to_string(crate::fixture("python-hashlib/sha256.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's byte stream (see tools/make_checksum_fixtures.py), `len` bytes of it.
pub(crate) fn stream(len: usize) -> Vec<u8> {
    let s = doc().stream;
    let mut x = s.seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_mul(s.multiplier).wrapping_add(s.increment);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The fixture's stream prefixes, each written to its own file under `dir`.
pub(crate) fn prefix_files(dir: &Path, max_len: usize) -> Vec<(PathBuf, Prefix)> {
    let prefixes: Vec<Prefix> = doc().stream_prefixes.into_iter().filter(|p| p.len <= max_len).collect();
    let bytes = stream(prefixes.iter().map(|p| p.len).max().unwrap());
    prefixes
        .into_iter()
        .map(|p| {
            let path = dir.join(format!("stream-{}.bin", p.len));
            std::fs::write(&path, &bytes[..p.len]).unwrap();
            (path, p)
        })
        .collect()
}

fn mismatch(r: heurist_verify::Result<heurist_verify::Verified>) -> (PathBuf, String, String) {
    match r {
        Err(VerifyError::ChecksumMismatch { path, expected, actual }) => (path, expected, actual),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
}

#[test]
fn texts_match_hashlib() {
    let dir = tempfile::tempdir().unwrap();
    let doc = doc();
    assert!(doc.texts.iter().any(|t| t.text.is_empty()) && doc.texts.iter().any(|t| t.text == "abc"));
    for (i, t) in doc.texts.iter().enumerate() {
        let path = dir.path().join(format!("text-{i}"));
        std::fs::write(&path, &t.text).unwrap();
        assert_eq!(hex::encode(sha256_file(&path, |_| {}).unwrap()), t.sha256, "text {:?}", t.text);
        // The registry writes checksums in upper case; both cases verify.
        verify_file(&path, &t.sha256.to_uppercase(), None, |_| {}).unwrap();
        verify_file(&path, &t.sha256, None, |_| {}).unwrap();
    }
}

#[test]
fn stream_prefixes_match_hashlib_across_buffer_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let files = prefix_files(dir.path(), usize::MAX);
    assert!(
        files.iter().any(|(_, p)| p.len > 2 * heurist_verify::DEFAULT_BUFFER_BYTES + 1),
        "a file spanning several default buffers"
    );
    // Default settings, all files at once: results come back in input order.
    let paths: Vec<&PathBuf> = files.iter().map(|(p, _)| p).collect();
    let results = FileHasher::new().parallel_files(4).hash_files(&paths, |_| {});
    for ((_, p), r) in files.iter().zip(results) {
        assert_eq!(hex::encode(r.unwrap()), p.sha256, "stream prefix of {} bytes", p.len);
    }
    // Odd buffer sizes (not multiples of the 64-byte block), and a single buffer (no overlap).
    for (hasher, max_len) in [
        (FileHasher::new().buffer_bytes(1000).buffers(2), 100_003),
        (FileHasher::new().buffer_bytes(4096).buffers(1), 100_003),
        (FileHasher::new().buffer_bytes(65_537).buffers(5), 100_003),
        (FileHasher::new().buffer_bytes(1), 4097),
    ] {
        for (path, p) in files.iter().filter(|(_, p)| p.len <= max_len) {
            assert_eq!(
                hex::encode(hasher.hash_file(path, |_| {}).unwrap()),
                p.sha256,
                "{} bytes with {hasher:?}",
                p.len
            );
        }
    }
}

#[test]
fn progress_counts_every_byte_once_and_ends_at_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, stream(10_000)).unwrap();
    let mut seen = Vec::new();
    FileHasher::new()
        .buffer_bytes(3000)
        .hash_file(&path, |p: &Progress<'_>| {
            assert_eq!((p.index, p.path, p.bytes_total), (0, path.as_path(), 10_000));
            seen.push(p.bytes_done);
        })
        .unwrap();
    assert_eq!(seen, [3000, 6000, 9000, 10_000]);

    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let mut calls = Vec::new();
    sha256_file(&empty, |p| calls.push((p.bytes_done, p.bytes_total))).unwrap();
    assert_eq!(calls, [(0, 0)]);
}

#[test]
fn one_changed_byte_anywhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let len = 100_003;
    let good = stream(len);
    let expected = doc().stream_prefixes.into_iter().find(|p| p.len == len).unwrap().sha256;
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &good).unwrap();
    verify_file(&path, &expected, None, |_| {}).unwrap();
    let hasher = FileHasher::new().buffer_bytes(4096);
    // First and last byte, both sides of every 4 KiB buffer boundary, and a spread in between.
    let mut positions: Vec<usize> = vec![0, len - 1];
    positions.extend((4096..len).step_by(4096).flat_map(|b| [b - 1, b]));
    positions.extend((0..len).step_by(997));
    for pos in positions {
        for flip in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[pos] ^= flip;
            std::fs::write(&path, &bad).unwrap();
            let (p, e, a) = mismatch(hasher.verify_file(&path, &expected, None, |_| {}));
            assert_eq!((p.as_path(), e.as_str()), (path.as_path(), expected.as_str()));
            assert_ne!(a, expected, "byte {pos} ^ {flip:#x}");
        }
    }
}

#[test]
fn truncated_extended_and_swapped_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = prefix_files(dir.path(), 4 << 20 | 1);
    let (path, big) = files.iter().find(|(_, p)| p.len == 4 << 20 | 1).unwrap();
    let bytes = std::fs::read(path).unwrap();
    verify_file(path, &big.sha256, None, |_| {}).unwrap();

    for cut in [1usize, 64, 4 << 20, bytes.len()] {
        std::fs::write(path, &bytes[..bytes.len() - cut]).unwrap();
        let (_, _, actual) = mismatch(verify_file(path, &big.sha256, None, |_| {}));
        assert_ne!(actual, big.sha256, "truncated by {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(path, &longer).unwrap();
    mismatch(verify_file(path, &big.sha256, None, |_| {}));

    // Another file swapped in under the same name: refused, and its own digest is reported.
    for (other, p) in files.iter().filter(|(o, _)| o != path) {
        std::fs::copy(other, path).unwrap();
        let (_, expected, actual) = mismatch(verify_file(path, &big.sha256, None, |_| {}));
        assert_eq!((expected.as_str(), actual.as_str()), (big.sha256.as_str(), p.sha256.as_str()));
    }
}

#[test]
fn parallel_results_keep_input_order_and_per_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = prefix_files(dir.path(), 8 << 20 | 3);
    // Largest first, so later (small) files finish first; a missing file and a folder in between.
    let mut list: Vec<(PathBuf, Option<String>)> =
        files.iter().rev().map(|(p, x)| (p.clone(), Some(x.sha256.clone()))).collect();
    list.insert(2, (dir.path().join("missing.safetensors"), None));
    list.insert(5, (dir.path().to_owned(), None));
    let paths: Vec<&PathBuf> = list.iter().map(|(p, _)| p).collect();
    let indices = Mutex::new(Vec::new());
    for hasher in [FileHasher::new().parallel_files(3).buffer_bytes(1 << 20), FileHasher::new().parallel_files(1)] {
        let results = hasher.hash_files(&paths, |p| indices.lock().unwrap().push(p.index));
        assert_eq!(results.len(), list.len());
        for ((path, want), got) in list.iter().zip(&results) {
            match (want, got) {
                (Some(w), Ok(d)) => assert_eq!(&hex::encode(d), w, "{}", path.display()),
                (None, Err(VerifyError::Io { path: p, .. })) => assert_eq!(p, path),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let seen = std::mem::take(&mut *indices.lock().unwrap());
        assert!(seen.iter().all(|&i| i < list.len() && list[i].1.is_some()));
    }
    // The free function agrees.
    let free: Vec<_> = sha256_files(&paths, |_| {}).into_iter().map(|r| r.ok().map(hex::encode)).collect();
    let want: Vec<_> = list.iter().map(|(_, w)| w.clone()).collect();
    assert_eq!(free, want);
}

#[test]
fn a_missing_file_is_a_typed_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.safetensors");
    match sha256_file(&missing, |_| {}) {
        Err(VerifyError::Io { path, action, source }) => {
            assert_eq!(
                (path.as_path(), action, source.kind()),
                (missing.as_path(), "open", std::io::ErrorKind::NotFound)
            );
        }
        other => panic!("{other:?}"),
    }
    let e = verify_file(&missing, &"0".repeat(64), None, |_| {}).unwrap_err();
    assert!(matches!(&e, VerifyError::Io { path, .. } if path == &missing), "{e:?}");
    assert!(e.to_string().contains("nowhere.safetensors"), "{e}");
    // A folder is not a model file.
    assert!(matches!(sha256_file(dir.path(), |_| {}), Err(VerifyError::Io { action: "hash", .. })));
}

#[test]
fn malformed_expected_checksums_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"abc").unwrap();
    for bad in ["", "abc", &"g".repeat(64), &"0".repeat(63), &"0".repeat(65)] {
        match verify_file(&path, bad, None, |_| {}) {
            Err(VerifyError::ChecksumFormat { value, .. }) => assert_eq!(value, *bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // Surrounding whitespace (a pasted line) is fine.
    verify_file(&path, " ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n", None, |_| {}).unwrap();
}

#[test]
fn a_file_changing_while_hashed_has_no_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing");
    std::fs::write(&path, stream(40_000)).unwrap();
    // One buffer: the reader reads the next one only after the callback returns.
    let mut appended = false;
    let r = FileHasher::new().buffer_bytes(4096).buffers(1).hash_file(&path, |_| {
        if !appended {
            appended = true;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            std::io::Write::write_all(&mut f, b"more").unwrap();
        }
    });
    match r {
        Err(VerifyError::FileChanged { before_bytes, after_bytes, .. }) => {
            assert_eq!((before_bytes, after_bytes), (40_000, 40_004))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn model_files_are_checked_against_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Abc.safetensors");
    std::fs::write(&path, b"abc").unwrap();
    let models = br#"[
      {"name": "Abc", "type": "sd15", "checksum": "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"},
      {"name": "Fox", "type": "sd15", "checksum": "D7A8FBB307D7809469CA9ABCB0082E4F8D5651E46D3CDB762D02D0BF37C9E592"},
      {"name": "NoSum", "type": "sd15"},
      {"name": "BadSum", "type": "sd15", "checksum": "XYZ"}
    ]"#;
    let registry = Registry::from_slices(models, None, None).unwrap();
    let ok = verify_model_file(&registry, "Abc", &path, None, |_| {}).unwrap();
    assert_eq!(hex::encode(ok.digest), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let (_, expected, _) = mismatch(verify_model_file(&registry, "Fox", &path, None, |_| {}));
    assert_eq!(expected, "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592");
    assert!(
        matches!(verify_model_file(&registry, "NoSum", &path, None, |_| {}), Err(VerifyError::NoChecksum { model }) if model == "NoSum")
    );
    assert!(
        matches!(verify_model_file(&registry, "BadSum", &path, None, |_| {}), Err(VerifyError::Registry { model, .. }) if model == "BadSum")
    );
    assert!(
        matches!(verify_model_file(&registry, "Nope", &path, None, |_| {}), Err(VerifyError::Registry { model, .. }) if model == "Nope")
    );

    // The bundled registry's checksums are well-formed and upper case.
    let bundled = Registry::bundled().unwrap();
    let sums: Vec<_> = bundled.entries().filter_map(|e| e.checksum.as_deref()).collect();
    assert!(!sums.is_empty());
    for s in sums {
        heurist_verify::parse_sha256_hex(s).unwrap();
    }
}
