//! One file through SHA-256: a reader thread fills large buffers while the calling thread
//! hashes the previous one, the buffers going round between them through two bounded channels.
//!
//! Invariants: the digest returned covers exactly the bytes of the file as it was opened. The
//! reader ends every stream with an explicit [`Chunk::End`] carrying the file's metadata at the
//! end, so a reader that stopped early (a panic, a closed channel) is an error and never a
//! shorter digest; and the file's fingerprint at the end must equal the one at the start and
//! its size the number of bytes hashed, or the result is [`VerifyError::FileChanged`].

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use sha2::{Digest, Sha256};

use super::cache::Fingerprint;
use crate::error::{Result, VerifyError};

/// A digest with the fingerprint of the file version it belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hashed {
    pub(crate) digest: [u8; 32],
    pub(crate) fingerprint: Fingerprint,
}

enum Chunk {
    /// `buf[..len]` is the next part of the file.
    Data { buf: Vec<u8>, len: usize },
    /// The end of the file was reached; the file's metadata read at that point.
    End(io::Result<Metadata>),
    /// A read failed.
    Failed(io::Error),
}

/// Hashes the file at `path`, calling `on_chunk(bytes_done, bytes_total)` after each buffer.
pub(crate) fn hash_path(
    path: &Path,
    buffer_bytes: usize,
    buffers: usize,
    on_chunk: &mut dyn FnMut(u64, u64),
) -> Result<Hashed> {
    let file = File::open(path).map_err(VerifyError::io(path, "open"))?;
    let before = file.metadata().map_err(VerifyError::io(path, "stat"))?;
    if !before.is_file() {
        return Err(VerifyError::Io {
            path: path.to_owned(),
            action: "hash",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let before = Fingerprint::of(&before);
    let buffer_bytes = buffer_bytes.max(1);
    let buffers = buffers.max(1);

    let (digest, hashed_bytes, end_meta) = thread::scope(|scope| -> Result<([u8; 32], u64, Metadata)> {
        let (full_tx, full_rx) = sync_channel::<Chunk>(buffers);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(buffers);
        for _ in 0..buffers {
            // Cannot block: the channel holds `buffers` and nothing else sends yet.
            if empty_tx.send(vec![0u8; buffer_bytes]).is_err() {
                return Err(VerifyError::HashThread { path: path.to_owned() });
            }
        }
        thread::Builder::new()
            .name("heurist-sha256-read".to_owned())
            .spawn_scoped(scope, move || read_loop(file, &empty_rx, &full_tx))
            .map_err(VerifyError::io(path, "start a reader thread for"))?;
        hash_loop(path, before.size, &full_rx, &empty_tx, on_chunk)
        // Returning drops both channel ends held here, which ends a reader still waiting on them.
    })?;

    let after = Fingerprint::of(&end_meta);
    if after != before || hashed_bytes != before.size {
        return Err(VerifyError::FileChanged {
            path: path.to_owned(),
            before_bytes: before.size,
            after_bytes: after.size,
            hashed_bytes,
        });
    }
    Ok(Hashed { digest, fingerprint: before })
}

fn hash_loop(
    path: &Path,
    total: u64,
    full_rx: &Receiver<Chunk>,
    empty_tx: &SyncSender<Vec<u8>>,
    on_chunk: &mut dyn FnMut(u64, u64),
) -> Result<([u8; 32], u64, Metadata)> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    loop {
        match full_rx.recv() {
            Ok(Chunk::Data { buf, len }) => {
                hasher.update(&buf[..len]);
                done += len as u64;
                on_chunk(done, total);
                // The reader may have stopped after its last buffer; a refused send is fine.
                let _ = empty_tx.send(buf);
            }
            Ok(Chunk::End(meta)) => {
                let meta = meta.map_err(VerifyError::io(path, "stat"))?;
                if done == 0 {
                    on_chunk(0, total);
                }
                return Ok((hasher.finalize().into(), done, meta));
            }
            Ok(Chunk::Failed(e)) => return Err(VerifyError::io(path, "read")(e)),
            Err(_) => return Err(VerifyError::HashThread { path: path.to_owned() }),
        }
    }
}

fn read_loop(mut file: File, empty_rx: &Receiver<Vec<u8>>, full_tx: &SyncSender<Chunk>) {
    loop {
        let Ok(mut buf) = empty_rx.recv() else { return };
        match fill(&mut file, &mut buf) {
            Ok(0) => {
                let _ = full_tx.send(Chunk::End(file.metadata()));
                return;
            }
            Ok(len) => {
                let at_end = len < buf.len();
                if full_tx.send(Chunk::Data { buf, len }).is_err() {
                    return;
                }
                // `fill` only returns a short count at the end of the file: save a read call.
                if at_end {
                    let _ = full_tx.send(Chunk::End(file.metadata()));
                    return;
                }
            }
            Err(e) => {
                let _ = full_tx.send(Chunk::Failed(e));
                return;
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn fill(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
