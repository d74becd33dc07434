//! Ledger ingest in entries per second: SQLite (a file, WAL, `synchronous = FULL`) and
//! PostgreSQL (only when `HEURIST_TEST_POSTGRES_URL` is set and the server answers, else a
//! printed line says it was skipped; a schema of its own, dropped at the end), each batched (1,000 credits per transaction) and one by one (one credit
//! per transaction), in the same run.
//!
//! `HEURIST_TEST_POSTGRES_URL=postgres://heurist:heurist@127.0.0.1:5432/heurist_test \
//!  cargo bench -p heurist-benches --bench ledger_write`

// criterion_group! defines an undocumented pub fn.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heurist_points::ledger::{LedgerStore, NewEntry, NewPhase, PhaseEmission, PostgresLedger, SqliteLedger};
use heurist_points::{Currency, Points};

const BATCH: usize = 1000;

fn credits(next_job: &mut u64, n: usize) -> Vec<NewEntry> {
    (0..n)
        .map(|i| {
            *next_job += 1;
            NewEntry::Credit {
                job_id: format!("job-{next_job}"),
                miner_id: format!("0x{:040x}-gpu{}", i % 64, i % 4),
                points: Points::from_micro(if i % 2 == 0 { Currency::Waifu } else { Currency::Llama }, 1_875_000),
            }
        })
        .collect()
}

fn ingest(c: &mut Criterion, name: &str, ledger: &mut dyn LedgerStore) {
    ledger
        .open_phase(&NewPhase { id: "bench".into(), opened_at_ms: 0, emission: PhaseEmission::default() })
        .expect("open phase");
    let mut next_job = 0u64;
    let mut group = c.benchmark_group("ledger_write");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("{name}/batched-{BATCH}"), |b| {
        b.iter_batched(
            || credits(&mut next_job, BATCH),
            |entries| ledger.append(&entries).expect("append"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{name}/one-by-one"), |b| {
        b.iter_batched(
            || credits(&mut next_job, 1),
            |entries| ledger.append(&entries).expect("append"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sqlite = SqliteLedger::open(dir.path().join("ledger.sqlite")).expect("sqlite");
    ingest(c, "sqlite-file", &mut sqlite);

    // Beside SQLite, in the same run: PostgreSQL when a server is named and answers; a
    // printed line otherwise, so a run without one still reports SQLite.
    match std::env::var("HEURIST_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("heurist_bench_{}", std::process::id());
            match PostgresLedger::connect_in_schema(&url, &schema) {
                Ok(mut pg) => {
                    ingest(c, "postgres", &mut pg);
                    drop(pg);
                    if let Err(e) = PostgresLedger::drop_schema(&url, &schema) {
                        eprintln!("ledger_write: schema {schema} left behind: {e}");
                    }
                }
                Err(e) => eprintln!("ledger_write: PostgreSQL not reachable ({e}), skipped"),
            }
        }
        _ => eprintln!("ledger_write: HEURIST_TEST_POSTGRES_URL unset, PostgreSQL skipped"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
