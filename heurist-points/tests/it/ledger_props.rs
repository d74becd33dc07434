//! Property: for every miner, currency and phase, balance = credits - slashes (+ boosts),
//! and the ledger agrees with an in-memory model, whatever the batches, the duplicates
//! and the refused batches.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::discriminant;

use heurist_points::ledger::{BalanceQuery, NewEntry, NewPhase, PhaseEmission};
use heurist_points::{Currency, Decimal, Points, PointsError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::Backend;

#[derive(Clone, Debug)]
enum Op {
    /// Credit a new job, or (with `reuse`) an id used before.
    Credit { miner: u8, llama: bool, micro: u32, reuse: Option<u16> },
    SlashJob { pick: u16 },
    SlashShare { miner: u8, llama: bool, share: u32 },
    Boost { miner: u8, llama: bool, micro: i32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..6, any::<bool>(), 0u32..5_000_000, proptest::option::weighted(0.15, any::<u16>()))
            .prop_map(|(miner, llama, micro, reuse)| Op::Credit { miner, llama, micro, reuse }),
        2 => any::<u16>().prop_map(|pick| Op::SlashJob { pick }),
        1 => (0u8..6, any::<bool>(), 0u32..=1_000_000).prop_map(|(miner, llama, share)| Op::SlashShare { miner, llama, share }),
        1 => (0u8..6, any::<bool>(), -1_000i32..100_000).prop_map(|(miner, llama, micro)| Op::Boost { miner, llama, micro }),
    ]
}

/// Batches, each maybe preceded by closing the phase and opening the next.
fn plan() -> impl Strategy<Value = Vec<(bool, Vec<Op>)>> {
    proptest::collection::vec((proptest::bool::weighted(0.15), proptest::collection::vec(op(), 1..6)), 1..14)
}

fn miner_id(m: u8) -> String {
    format!("0xw{}-gpu{m}", m % 3)
}

fn currency(llama: bool) -> Currency {
    if llama { Currency::Llama } else { Currency::Waifu }
}

type Key = (String, String, Currency); // phase, miner, currency

#[derive(Clone, Default)]
struct Model {
    /// job id -> (miner, currency, micro)
    credited: BTreeMap<String, (String, Currency, i64)>,
    slashed: BTreeSet<String>,
    boosted: BTreeSet<Key>,
    /// (credits, slashes, boosts)
    rows: BTreeMap<Key, (i64, i64, i64)>,
}

impl Model {
    fn row(&mut self, key: Key) -> &mut (i64, i64, i64) {
        self.rows.entry(key).or_default()
    }

    fn total(&self, key: &Key) -> i64 {
        self.rows.get(key).map_or(0, |(c, s, b)| c - s + b)
    }

    /// Applies one entry, or returns the error the ledger must give.
    fn apply(&mut self, phase: &str, entry: &NewEntry) -> Result<(), PointsError> {
        match entry {
            NewEntry::Credit { job_id, miner_id, points } => {
                if self.credited.contains_key(job_id) {
                    return Err(PointsError::DuplicateCredit { job_id: job_id.clone() });
                }
                let micro = points.micro() as i64;
                self.credited.insert(job_id.clone(), (miner_id.clone(), points.currency(), micro));
                self.row((phase.into(), miner_id.clone(), points.currency())).0 += micro;
            }
            NewEntry::SlashJob { job_id, .. } => {
                let Some((miner, cur, micro)) = self.credited.get(job_id).cloned() else {
                    return Err(PointsError::UnknownJob { job_id: job_id.clone() });
                };
                if !self.slashed.insert(job_id.clone()) {
                    return Err(PointsError::DuplicateSlash { job_id: job_id.clone() });
                }
                self.row((phase.into(), miner, cur)).1 += micro;
            }
            NewEntry::SlashShare { miner_id, currency, share, .. } => {
                let key = (phase.to_owned(), miner_id.clone(), *currency);
                let balance = self.total(&key).max(0);
                let slashed = (i128::from(balance) * i128::from(share.millionths()) / 1_000_000) as i64;
                self.row(key).1 += slashed;
            }
            NewEntry::Boost { miner_id, currency, amount_micro, .. } => {
                let key = (phase.to_owned(), miner_id.clone(), *currency);
                if !self.boosted.insert(key.clone()) {
                    return Err(PointsError::DuplicateBoost { miner_id: miner_id.clone(), currency: *currency, phase: phase.into() });
                }
                self.row(key).2 += *amount_micro;
            }
        }
        Ok(())
    }
}

fn run_case(backend: &mut Backend, plan: &[(bool, Vec<Op>)]) -> Result<(), TestCaseError> {
    let l = backend.ledger.as_mut();
    let mut phase_no = 1;
    let mut phase = "p1".to_owned();
    l.open_phase(&NewPhase { id: phase.clone(), opened_at_ms: 0, emission: PhaseEmission::default() }).unwrap();
    let mut model = Model::default();
    let mut job_ids: Vec<String> = Vec::new();
    let mut phases = vec![phase.clone()];
    for (next_phase, ops) in plan {
        if *next_phase {
            l.close_phase(&phase, phase_no).unwrap();
            phase_no += 1;
            phase = format!("p{phase_no}");
            l.open_phase(&NewPhase { id: phase.clone(), opened_at_ms: phase_no, emission: PhaseEmission::default() }).unwrap();
            phases.push(phase.clone());
        }
        let entries: Vec<NewEntry> = ops
            .iter()
            .map(|op| match op {
                Op::Credit { miner, llama, micro, reuse } => {
                    let job_id = match reuse {
                        Some(i) if !job_ids.is_empty() => job_ids[*i as usize % job_ids.len()].clone(),
                        _ => format!("job-{}", job_ids.len()),
                    };
                    job_ids.push(job_id.clone());
                    NewEntry::Credit {
                        job_id,
                        miner_id: miner_id(*miner),
                        points: Points::from_micro(currency(*llama), u64::from(*micro)),
                    }
                }
                Op::SlashJob { pick } => NewEntry::SlashJob {
                    job_id: if job_ids.is_empty() { "ghost".into() } else { job_ids[*pick as usize % job_ids.len()].clone() },
                    reason: "test".into(),
                },
                Op::SlashShare { miner, llama, share } => NewEntry::SlashShare {
                    miner_id: miner_id(*miner),
                    currency: currency(*llama),
                    share: Decimal::from_millionths(i64::from(*share)),
                    reason: "test".into(),
                },
                Op::Boost { miner, llama, micro } => NewEntry::Boost {
                    miner_id: miner_id(*miner),
                    currency: currency(*llama),
                    amount_micro: i64::from(*micro),
                    source: "test".into(),
                },
            })
            .collect();
        // The model applies the batch to a copy and keeps it only if every entry is accepted.
        let mut next = model.clone();
        let expected = entries.iter().try_for_each(|e| next.apply(&phase, e));
        let got = l.append(&entries);
        match (&expected, &got) {
            (Ok(()), Ok(receipt)) => {
                prop_assert_eq!(receipt.entry_ids.len(), entries.len());
                model = next;
            }
            (Err(want), Err(have)) => prop_assert_eq!(discriminant(want), discriminant(have), "{} vs {}", want, have),
            _ => prop_assert!(false, "model {:?}, ledger {:?}", expected, got),
        }
        // Every balance row: total = credits - slashes + boosts, and what the model says.
        for p in &phases {
            for b in l.balances(&BalanceQuery::miners().in_phase(p.clone())).unwrap() {
                prop_assert_eq!(b.total_micro, b.credits_micro - b.slashes_micro + b.boosts_micro);
                let key = (p.clone(), b.owner.clone(), b.currency);
                let want = model.rows.get(&key).copied().unwrap_or_default();
                prop_assert_eq!((b.credits_micro, b.slashes_micro, b.boosts_micro), want, "{:?}", key);
            }
        }
    }
    // Over all phases too.
    for b in l.balances(&BalanceQuery::miners()).unwrap() {
        let (c, s, bo) = model
            .rows
            .iter()
            .filter(|((_, m, cur), _)| *m == b.owner && *cur == b.currency)
            .fold((0, 0, 0), |acc, (_, r)| (acc.0 + r.0, acc.1 + r.1, acc.2 + r.2));
        prop_assert_eq!((b.credits_micro, b.slashes_micro, b.boosts_micro, b.total_micro), (c, s, bo, c - s + bo));
    }
    Ok(())
}

/// Runs the property on fresh ledgers from `fresh` (a `None` skips).
pub(crate) fn check(fresh: impl Fn() -> Option<Backend>) {
    let Some(probe) = fresh() else { return };
    // A PostgreSQL case pays for a schema of its own; fewer cases keep the suite quick.
    let cases = if probe.ledger.backend() == "postgres" { 16 } else { 32 };
    drop(probe);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&plan(), |plan| {
        let mut backend = fresh().expect("backend vanished");
        run_case(&mut backend, &plan)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
