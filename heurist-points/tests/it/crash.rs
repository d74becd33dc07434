//! A writer killed with SIGKILL in the middle of a batch loses no committed entry and
//! leaves no half-written batch.
//!
//! The test binary runs itself as the writer (`crash::child_writer`, ignored unless the
//! parent sets `HEURIST_CRASH_CHILD`). The child appends batches of [`BATCH`] credits in a
//! loop, printing `crash-child begin N` before and `crash-child commit N` after each; the
//! parent kills it with SIGKILL right after a `begin`, then reopens the ledger and checks
//! that every reported commit is complete and every batch present is whole. Three rounds;
//! at least one kill must land inside a transaction (its batch absent afterwards), or the
//! test did not test what it claims.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use heurist_points::ledger::{EntryQuery, NewEntry, NewPhase, PhaseEmission};
use heurist_points::{Currency, Points};

use crate::support::{open_spec, Backend};

/// Entries per batch: large enough that a kill usually lands mid-transaction.
const BATCH: usize = 1000;
/// How long a child may write before it stops by itself.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
const ENV_SPEC: &str = "HEURIST_CRASH_CHILD";
const ENV_START: &str = "HEURIST_CRASH_START";

/// The writer, run only as a child process of [`check`].
#[test]
#[ignore = "the child process of the crash tests; runs only with HEURIST_CRASH_CHILD set"]
fn child_writer() {
    let Ok(spec) = std::env::var(ENV_SPEC) else {
        eprintln!("crash::child_writer is only run by the crash tests");
        return;
    };
    let start: u64 = std::env::var(ENV_START).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut ledger = open_spec(&spec);
    let mut out = std::io::stdout().lock();
    let began = Instant::now();
    let mut n = start;
    while began.elapsed() < CHILD_LIMIT {
        n += 1;
        let entries: Vec<NewEntry> = (0..BATCH)
            .map(|i| NewEntry::Credit {
                job_id: format!("b{n}-j{i}"),
                miner_id: format!("0xc{}-gpu", i % 7),
                points: Points::from_micro(Currency::Waifu, 1 + i as u64),
            })
            .collect();
        writeln!(out, "crash-child begin {n}").unwrap();
        out.flush().unwrap();
        ledger.append(&entries).unwrap();
        writeln!(out, "crash-child commit {n}").unwrap();
        out.flush().unwrap();
    }
}

/// Batch number -> entries of it in the ledger.
fn batches_in(backend: &Backend) -> BTreeMap<u64, usize> {
    let mut ledger = backend.reopen();
    let mut counts = BTreeMap::new();
    for e in ledger.entries(&EntryQuery::default()).unwrap() {
        let job = e.job_id.unwrap();
        let n: u64 = job.trim_start_matches('b').split('-').next().unwrap().parse().unwrap();
        *counts.entry(n).or_default() += 1;
    }
    counts
}

/// Kills a child mid-batch three times and checks the ledger after each.
pub(crate) fn check(backend_name: &str, fresh: impl Fn() -> Option<Backend>) {
    let Some(mut backend) = fresh() else { return };
    backend.ledger.open_phase(&NewPhase { id: "p1".into(), opened_at_ms: 0, emission: PhaseEmission::default() }).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut killed_inside = 0;
    let mut start = 0u64;
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args(["crash::child_writer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(ENV_SPEC, &backend.spec)
            .env(ENV_START, start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut committed: Vec<u64> = Vec::new();
        let mut in_flight = None;
        let deadline = Instant::now() + Duration::from_secs(45);
        // Let a few batches commit, then kill right after the next `begin`, 0-2 ms in.
        while Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else { break };
            if let Some(n) = line.strip_prefix("crash-child commit ") {
                committed.push(n.parse().unwrap());
            } else if let Some(n) = line.strip_prefix("crash-child begin ")
                && committed.len() >= 3
            {
                in_flight = Some(n.parse::<u64>().unwrap());
                std::thread::sleep(Duration::from_micros(round * 1000));
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        // Lines written before the kill are still in the pipe.
        for line in rx.try_iter() {
            if let Some(n) = line.strip_prefix("crash-child commit ") {
                committed.push(n.parse().unwrap());
            }
        }
        let in_flight = in_flight.unwrap_or_else(|| panic!("{backend_name}: the child committed {committed:?} and never began another batch"));

        let present = batches_in(&backend);
        for n in &committed {
            assert_eq!(present.get(n), Some(&BATCH), "{backend_name}: committed batch {n} lost entries");
        }
        for (n, count) in &present {
            assert_eq!(*count, BATCH, "{backend_name}: batch {n} is half-written");
        }
        if !present.contains_key(&in_flight) {
            killed_inside += 1;
        }
        start = present.keys().max().copied().unwrap_or(start).max(in_flight);
    }
    assert!(killed_inside >= 1, "{backend_name}: no kill landed inside a transaction; the test proved nothing");
}
