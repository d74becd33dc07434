//! SHA-256 of a 2 GiB model-sized file: `heurist_verify::sha256_file` against
//! `openssl dgst -sha256` (SHA-NI assembly, the bound), Debian's `sha256sum` (no SHA-NI), and
//! a Python hashlib loop with 4 KiB reads (what the reference miner does), in the same run.
//!
//! `cargo bench -p heurist-benches --bench sha256`
//!
//! The file is written once under /tmp from a pseudo-random stream (not sparse: every byte is
//! read from the page cache, as for a model file that was just downloaded or verified before),
//! flushed to disk before timing, and deleted at the end. Peers run as subprocesses timed with
//! `Instant` around the whole process, so their start-up is included (a few ms against ~1 s).
//! Every peer's digest is checked against ours before timing. After criterion's part, a ratio
//! table comes from interleaved rounds (every contender once per round, in rotated order) so
//! that load from other processes falls on all alike; it gives medians and best runs, as
//! GB/s (10^9 bytes) and as ours / peer throughput (above 1: faster than it). Our buffer size
//! is swept there too (`HEURIST_BENCH_SHA256_SWEEP`, e.g. `64K,256K,1M,4Mx1`: sizes, and
//! after `x` the buffers in flight): that is where `DEFAULT_BUFFER_BYTES` comes from.
//!
//! `HEURIST_BENCH_SHA256_MIB` sets another file size (MiB), `HEURIST_BENCH_SHA256_ROUNDS` the
//! rounds (7); without `--bench` (a test run) the file is 64 MiB and the table is skipped.

// criterion's entry points are undocumented pub fns; benches print their tables (STYLE.md §1).
#![allow(missing_docs, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use heurist_verify::{DEFAULT_BUFFER_BYTES, DEFAULT_BUFFERS, FileHasher};

/// The reference miner's loop: hashlib over `f.read(4096)`.
const PYTHON_4K: &str = "import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], 'rb') as f:
    while True:
        b = f.read(4096)
        if not b:
            break
        h.update(b)
print(h.hexdigest())
";

const OURS: &str = "heurist-verify";

enum Contender<'a> {
    Ours(FileHasher),
    Peer(&'a Peer),
}

fn time_ours(hasher: &FileHasher, path: &Path, want: &str) -> Duration {
    let t = Instant::now();
    let d = hasher.hash_file(path, |_| {}).expect("hash the bench file");
    let e = t.elapsed();
    assert_eq!(hex::encode(d), want);
    e
}

fn time_peer(peer: &Peer, path: &Path, want: &str) -> Duration {
    let t = Instant::now();
    let d = peer.run(path).expect("the peer ran before");
    let e = t.elapsed();
    assert_eq!(d, want);
    e
}

/// `256K`, `1M`, `4Mx1`: a buffer size and, after `x`, buffers in flight (default 3).
fn parse_sweep(spec: &str) -> Option<(usize, usize)> {
    let (size, buffers) = match spec.split_once('x') {
        Some((s, n)) => (s, n.parse().ok()?),
        None => (spec, DEFAULT_BUFFERS),
    };
    let (digits, unit) = size.split_at(size.len().checked_sub(1)?);
    let shift = match unit {
        "K" => 10,
        "M" => 20,
        _ => return None,
    };
    Some((digits.parse::<usize>().ok()? << shift, buffers))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// Writes `bytes` of an xorshift64* stream to `path` and flushes it to disk.
fn write_file(path: &Path, bytes: u64) {
    let mut f = std::fs::File::create(path).expect("create the bench file under /tmp");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 8 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write the bench file");
        left -= n as u64;
    }
    // Dirty pages written back during timing would compete for the CPU and disk.
    f.sync_all().expect("flush the bench file");
}

/// A peer command: its name, program, arguments before the file, and where the hex is in
/// its output.
struct Peer {
    name: &'static str,
    program: &'static str,
    args: &'static [&'static str],
    parse: fn(&str) -> Option<String>,
}

const PEERS: &[Peer] = &[
    Peer {
        name: "openssl dgst -sha256",
        program: "openssl",
        args: &["dgst", "-sha256"],
        // `SHA2-256(path)= hex`
        parse: |out| out.split_whitespace().last().map(str::to_owned),
    },
    Peer {
        name: "sha256sum",
        program: "sha256sum",
        args: &[],
        // `hex  path`
        parse: |out| out.split_whitespace().next().map(str::to_owned),
    },
    Peer {
        name: "python hashlib 4KiB reads",
        program: "python3",
        args: &["-c", PYTHON_4K],
        parse: |out| Some(out.trim().to_owned()),
    },
];

impl Peer {
    fn run(&self, path: &Path) -> Result<String, String> {
        let out = Command::new(self.program)
            .args(self.args)
            .arg(path)
            .output()
            .map_err(|e| format!("{}: {e}", self.program))?;
        if !out.status.success() {
            return Err(format!("{}: {}", self.program, String::from_utf8_lossy(&out.stderr)));
        }
        (self.parse)(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| format!("{}: no digest in its output", self.program))
    }

    fn version(&self) -> String {
        let arg = if self.program == "openssl" { "version" } else { "--version" };
        Command::new(self.program)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout })
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_else(|e| e.to_string())
    }
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned());
    let sha_ni = info.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    format!(
        "{} ({} CPUs, sha_ni: {sha_ni})",
        model.unwrap_or_else(|| "unknown CPU".into()),
        std::thread::available_parallelism().map_or(1, usize::from)
    )
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let load_before = load_average();
    let mib: u64 = std::env::var("HEURIST_BENCH_SHA256_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode { 2048 } else { 64 });
    let bytes = mib << 20;
    let dir =
        tempfile::Builder::new().prefix("heurist-sha256-bench").tempdir_in("/tmp").expect("a temp dir under /tmp");
    let path = dir.path().join("model.bin");
    eprintln!("writing {mib} MiB to {} ...", path.display());
    write_file(&path, bytes);

    // Our digest, which every peer must reproduce; this run also warms the page cache.
    let ours = hex::encode(heurist_verify::sha256_file(&path, |_| {}).expect("hash the bench file"));
    let mut peers = Vec::new();
    for peer in PEERS {
        match peer.run(&path) {
            Ok(d) if d == ours => peers.push(peer),
            Ok(d) => panic!("{} gives {d}, heurist-verify {ours}", peer.name),
            Err(e) => eprintln!("skipping {}: {e}", peer.name),
        }
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group(format!("sha256_cpu_{mib}MiB"));
    group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Bytes(bytes));

    // Criterion's part: ours with the defaults and without overlap, and each peer.
    let ours_variants: Vec<(String, FileHasher)> =
        vec![(OURS.to_owned(), FileHasher::new()), (format!("{OURS} no overlap"), FileHasher::new().buffers(1))];
    for (name, hasher) in &ours_variants {
        group.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| time_ours(hasher, &path, &ours)).sum())
        });
    }
    for peer in &peers {
        group.bench_function(peer.name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| time_peer(peer, &path, &ours)).sum())
        });
    }
    group.finish();
    c.final_summary();
    if !bench_mode {
        return;
    }

    // The ratio table: every contender once per round, in rotated order, so that load from
    // other processes drifting over the run falls on all of them alike. The buffer sweep is
    // here too.
    let rounds: usize = std::env::var("HEURIST_BENCH_SHA256_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let mut contenders: Vec<(String, Contender<'_>)> = vec![(OURS.to_owned(), Contender::Ours(FileHasher::new()))];
    let sweep = std::env::var("HEURIST_BENCH_SHA256_SWEEP").unwrap_or_else(|_| "256K,1M,8M,4Mx1".to_owned());
    for spec in sweep.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((buffer_bytes, buffers)) = parse_sweep(spec) else {
            eprintln!("HEURIST_BENCH_SHA256_SWEEP: skipping {spec:?} (expected e.g. 256K, 1M or 4Mx1)");
            continue;
        };
        let name = format!("{OURS} {spec}");
        contenders.push((name, Contender::Ours(FileHasher::new().buffer_bytes(buffer_bytes).buffers(buffers))));
    }
    contenders.extend(peers.iter().map(|p| (p.name.to_owned(), Contender::Peer(p))));
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..contenders.len() {
            let (name, contender) = &contenders[(k + round) % contenders.len()];
            let t = match contender {
                Contender::Ours(h) => time_ours(h, &path, &ours),
                Contender::Peer(p) => time_peer(p, &path, &ours),
            };
            times.entry(name.as_str()).or_default().push(t);
        }
    }

    let gbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    let (Some(ours_median), Some(ours_best)) =
        (times.get(OURS).and_then(|v| median(v)), times.get(OURS).and_then(|v| v.iter().min().copied()))
    else {
        return;
    };
    println!();
    println!(
        "SHA-256 of {mib} MiB from the page cache, {rounds} interleaved rounds; ratios are ours / this in throughput"
    );
    println!("CPU: {}; load average before: {load_before}, after: {}", cpu(), load_average());
    println!("default: {} MiB buffers x{DEFAULT_BUFFERS}", DEFAULT_BUFFER_BYTES >> 20);
    println!(
        "{:<34} {:>9} {:>8} {:>12} {:>7} {:>8} {:>10}",
        "", "median s", "GB/s", "ours / this", "best s", "GB/s", "best ratio"
    );
    for (name, _) in &contenders {
        let Some(v) = times.get(name.as_str()) else { continue };
        let (Some(m), Some(b)) = (median(v), v.iter().min().copied()) else { continue };
        println!(
            "{:<34} {:>9.3} {:>8.3} {:>11.2}x {:>7.3} {:>8.3} {:>9.2}x",
            name,
            m.as_secs_f64(),
            gbps(m),
            m.as_secs_f64() / ours_median.as_secs_f64(),
            b.as_secs_f64(),
            gbps(b),
            b.as_secs_f64() / ours_best.as_secs_f64()
        );
    }
    for peer in &peers {
        println!("{}: {}", peer.program, peer.version());
    }
    drop(dir);
}
