//! `heurist checksum`: the SHA-256 of a file, checked against an expected digest.
//!
//! Hashing is `heurist-verify`'s (the CPU's SHA instructions, reads overlapping the
//! hashing); this only prints. The output line is `sha256sum`'s (`<hex>  <path>`), so the
//! two can be compared by eye or by `diff`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use heurist_verify::{Progress, parse_sha256_hex, sha256_file};

use crate::Outcome;

/// Files at least this large show progress on standard error.
const PROGRESS_FROM_BYTES: u64 = 64 << 20;

/// Progress lines are redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Args, Debug)]
pub(crate) struct ChecksumArgs {
    /// The file to hash.
    file: PathBuf,
    /// The expected SHA-256 (64 hex digits, any case): exit 1 when the file's differs.
    #[arg(long, value_name = "HEX")]
    expect: Option<String>,
    /// Show no progress, however large the file (progress goes to standard error for files of 64 MiB or more).
    #[arg(long, short)]
    quiet: bool,
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: ChecksumArgs) -> anyhow::Result<Outcome> {
    // A malformed --expect is refused before a long hash, not after.
    let expected = args.expect.as_deref().map(parse_sha256_hex).transpose().context("--expect")?;
    let mut last = None::<Instant>;
    let mut shown = false;
    let progress = |p: &Progress<'_>| {
        if args.quiet || p.bytes_total < PROGRESS_FROM_BYTES {
            return;
        }
        let done = p.bytes_done == p.bytes_total;
        if !done && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        last = Some(Instant::now());
        shown = true;
        let pct = 100.0 * p.bytes_done as f64 / p.bytes_total as f64;
        let mut err = std::io::stderr().lock();
        // A closed standard error must not stop the hash.
        let _ = write!(err, "\r{}: {} / {} MiB ({pct:.0}%)", p.path.display(), p.bytes_done >> 20, p.bytes_total >> 20);
        let _ = err.flush();
    };
    let digest = sha256_file(&args.file, progress).with_context(|| format!("hashing {}", args.file.display()));
    if shown {
        eprintln!();
    }
    let digest = digest?;
    println!("{}  {}", hex_of(&digest), args.file.display());
    match expected {
        Some(e) if e != digest => {
            println!("mismatch: expected {}; the file is corrupt, truncated or another file", hex_of(&e));
            Ok(Outcome::Rejected)
        }
        _ => Ok(Outcome::Ok),
    }
}

fn hex_of(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
