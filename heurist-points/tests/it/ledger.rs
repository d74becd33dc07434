//! The ledger suite, written once over [`LedgerStore`] and run on every backend.

use heurist_points::boost::NftBoost;
use heurist_points::ledger::{
    BalanceQuery, EntryKind, EntryQuery, LedgerStore, NewEntry, NewPhase, PhaseEmission,
};
use heurist_points::rules::{BoostRules, NftTier};
use heurist_points::{Currency, Decimal, Points, PointsError};

use crate::support::Backend;

fn phase(id: &str, at: i64) -> NewPhase {
    NewPhase { id: id.into(), opened_at_ms: at, emission: PhaseEmission::default() }
}

fn credit(job: &str, miner: &str, currency: Currency, micro: u64) -> NewEntry {
    NewEntry::Credit { job_id: job.into(), miner_id: miner.into(), points: Points::from_micro(currency, micro) }
}

fn total(l: &mut dyn LedgerStore, miner: &str, currency: Currency, phase: Option<&str>) -> i64 {
    l.balance_of(miner, currency, phase).unwrap()
}

fn count(l: &mut dyn LedgerStore) -> usize {
    l.entries(&EntryQuery::default()).unwrap().len()
}

pub(crate) fn phases_open_and_close(b: &mut Backend) {
    let l = b.ledger.as_mut();
    assert!(l.current_phase().unwrap().is_none());
    assert!(matches!(l.append(&[credit("j", "0xa-1", Currency::Waifu, 1)]), Err(PointsError::NoOpenPhase)));
    let p1 = l.open_phase(&phase("p1", 1_000)).unwrap();
    assert_eq!((p1.seq, p1.closed_at_ms), (1, None));
    match l.open_phase(&phase("p2", 2_000)) {
        Err(PointsError::PhaseAlreadyOpen { open, requested }) => assert_eq!((open.as_str(), requested.as_str()), ("p1", "p2")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(l.close_phase("p1", 500), Err(PointsError::InvalidEntry { .. })));
    assert!(matches!(l.close_phase("nope", 5_000), Err(PointsError::UnknownPhase { expected: "known", .. })));
    assert_eq!(l.close_phase("p1", 2_000).unwrap().closed_at_ms, Some(2_000));
    assert!(matches!(l.close_phase("p1", 3_000), Err(PointsError::UnknownPhase { expected: "open", .. })));
    assert!(l.current_phase().unwrap().is_none());
    assert!(matches!(l.open_phase(&phase("p1", 3_000)), Err(PointsError::DuplicatePhase { .. })));
    l.open_phase(&phase("p2", 2_000)).unwrap();
    let phases = l.phases().unwrap();
    let ids: Vec<(&str, i64)> = phases.iter().map(|p| (p.id.as_str(), p.seq)).collect();
    assert_eq!(ids, [("p1", 1), ("p2", 2)]);
    assert_eq!(l.current_phase().unwrap().unwrap().id, "p2");
    // Another handle sees the same phases.
    assert_eq!(b.reopen().current_phase().unwrap().unwrap().id, "p2");
}

pub(crate) fn credits_and_balances(b: &mut Backend) {
    let l = b.ledger.as_mut();
    l.open_phase(&phase("p1", 0)).unwrap();
    let r = l
        .append(&[
            credit("j1", "0xAAA-gpu0", Currency::Waifu, 1_875_000),
            credit("j2", "0xAAA-gpu1", Currency::Waifu, 16_666_666),
            credit("j3", "0xAAA-gpu1", Currency::Llama, 360_000),
            credit("j4", "0xbbb-x", Currency::Waifu, 1),
        ])
        .unwrap();
    assert_eq!(r.entry_ids.len(), 4);
    assert!(r.entry_ids.windows(2).all(|w| w[0] < w[1]));
    let r2 = l.append(&[credit("j5", "0xbbb-x", Currency::Llama, 2_500_000)]).unwrap();
    assert!(r2.batch > r.batch);

    // Per miner: currencies stay apart.
    assert_eq!(total(l, "0xAAA-gpu1", Currency::Waifu, None), 16_666_666);
    assert_eq!(total(l, "0xAAA-gpu1", Currency::Llama, Some("p1")), 360_000);
    assert_eq!(total(l, "0xnobody-1", Currency::Llama, None), 0);
    let miners = l.balances(&BalanceQuery::miners()).unwrap();
    let rows: Vec<(&str, Currency, i64)> = miners.iter().map(|b| (b.owner.as_str(), b.currency, b.total_micro)).collect();
    assert_eq!(
        rows,
        [
            ("0xAAA-gpu0", Currency::Waifu, 1_875_000),
            ("0xAAA-gpu1", Currency::Waifu, 16_666_666),
            ("0xAAA-gpu1", Currency::Llama, 360_000),
            ("0xbbb-x", Currency::Waifu, 1),
            ("0xbbb-x", Currency::Llama, 2_500_000),
        ]
    );
    // Per wallet: the address, lowercased.
    let wallets = l.balances(&BalanceQuery::wallets().currency(Currency::Waifu)).unwrap();
    let rows: Vec<(&str, i64)> = wallets.iter().map(|b| (b.owner.as_str(), b.total_micro)).collect();
    assert_eq!(rows, [("0xaaa", 1_875_000 + 16_666_666), ("0xbbb", 1)]);
    let one = l.balances(&BalanceQuery::wallets().wallet("0xAAA")).unwrap();
    assert_eq!(one.len(), 2);
    assert_eq!(one[0].phase, None);

    // Entries carry everything, in order.
    let e = l.entries(&EntryQuery { job_id: Some("j3".into()), ..Default::default() }).unwrap();
    assert_eq!(e.len(), 1);
    let e = &e[0];
    assert_eq!(
        (e.kind, e.miner_id.as_str(), e.wallet.as_str(), e.currency, e.amount_micro, e.phase.as_str(), e.batch),
        (EntryKind::Credit, "0xAAA-gpu1", "0xaaa", Currency::Llama, 360_000, "p1", r.batch)
    );
    let page = l.entries(&EntryQuery { after_id: Some(r.entry_ids[1]), limit: Some(2), ..Default::default() }).unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [r.entry_ids[2], r.entry_ids[3]]);
    let batch = l.entries(&EntryQuery { batch: Some(r.batch), ..Default::default() }).unwrap();
    assert_eq!(batch.len(), 4);

    // Balances are per phase when asked.
    l.close_phase("p1", 10).unwrap();
    l.open_phase(&phase("p2", 10)).unwrap();
    l.append(&[credit("j6", "0xbbb-x", Currency::Waifu, 9)]).unwrap();
    assert_eq!(total(l, "0xbbb-x", Currency::Waifu, Some("p1")), 1);
    assert_eq!(total(l, "0xbbb-x", Currency::Waifu, Some("p2")), 9);
    assert_eq!(total(l, "0xbbb-x", Currency::Waifu, None), 10);
    // Durable and visible to a new handle.
    assert_eq!(b.reopen().balance_of("0xbbb-x", Currency::Waifu, None).unwrap(), 10);
}

pub(crate) fn duplicate_credit_is_refused_atomically(b: &mut Backend) {
    let mut other = b.reopen();
    let l = b.ledger.as_mut();
    l.open_phase(&phase("p1", 0)).unwrap();
    l.credit("job-1", "0xa-1", Points::from_micro(Currency::Waifu, 100)).unwrap();
    let before = count(l);
    // The duplicate is the second entry: the first must not land either.
    match l.append(&[credit("job-2", "0xa-1", Currency::Waifu, 5), credit("job-1", "0xa-2", Currency::Llama, 7)]) {
        Err(PointsError::DuplicateCredit { job_id }) => assert_eq!(job_id, "job-1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(l), before);
    // A duplicate inside one batch.
    match l.append(&[credit("job-3", "0xa-1", Currency::Waifu, 5), credit("job-3", "0xa-1", Currency::Waifu, 5)]) {
        Err(PointsError::DuplicateCredit { job_id }) => assert_eq!(job_id, "job-3"),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(l), before);
    // A job id stays taken in a later phase, and through another handle.
    l.close_phase("p1", 1).unwrap();
    l.open_phase(&phase("p2", 1)).unwrap();
    assert!(matches!(
        other.credit("job-1", "0xa-1", Points::from_micro(Currency::Waifu, 1)),
        Err(PointsError::DuplicateCredit { .. })
    ));
    // The ledger still works after a refused batch.
    l.append(&[credit("job-2", "0xa-1", Currency::Waifu, 5)]).unwrap();
    assert_eq!(total(l, "0xa-1", Currency::Waifu, None), 105);
    assert!(matches!(
        l.append(&[credit(" ", "0xa-1", Currency::Waifu, 5)]),
        Err(PointsError::InvalidEntry { field: "job_id", .. })
    ));
}

pub(crate) fn slashes_are_entries(b: &mut Backend) {
    let l = b.ledger.as_mut();
    l.open_phase(&phase("p1", 0)).unwrap();
    l.append(&[
        credit("j1", "0xa-1", Currency::Waifu, 1_000_000),
        credit("j2", "0xa-1", Currency::Waifu, 2_000_001),
        credit("j3", "0xa-1", Currency::Llama, 500),
    ])
    .unwrap();
    l.append(&[NewEntry::SlashJob { job_id: "j1".into(), reason: "bad image".into() }]).unwrap();
    assert_eq!(total(l, "0xa-1", Currency::Waifu, Some("p1")), 2_000_001);
    assert!(matches!(
        l.append(&[NewEntry::SlashJob { job_id: "j1".into(), reason: "again".into() }]),
        Err(PointsError::DuplicateSlash { .. })
    ));
    assert!(matches!(
        l.append(&[NewEntry::SlashJob { job_id: "nope".into(), reason: "x".into() }]),
        Err(PointsError::UnknownJob { .. })
    ));
    // Half of 2,000,001 rounded down is 1,000,000: the miner keeps 1,000,001.
    let half = Decimal::from_millionths(500_000);
    l.append(&[NewEntry::SlashShare { miner_id: "0xa-1".into(), currency: Currency::Waifu, share: half, reason: "tamper".into() }])
        .unwrap();
    assert_eq!(total(l, "0xa-1", Currency::Waifu, Some("p1")), 1_000_001);
    // The Llama balance was not touched.
    assert_eq!(total(l, "0xa-1", Currency::Llama, Some("p1")), 500);
    assert!(matches!(
        l.append(&[NewEntry::SlashShare {
            miner_id: "0xa-1".into(),
            currency: Currency::Waifu,
            share: Decimal::from_millionths(1_000_001),
            reason: "x".into()
        }]),
        Err(PointsError::InvalidEntry { field: "share", .. })
    ));
    // The audit trail: credits and slashes stay separate.
    let bal = &l.balances(&BalanceQuery::miners().currency(Currency::Waifu)).unwrap()[0];
    assert_eq!((bal.credits_micro, bal.slashes_micro, bal.total_micro), (3_000_001, 2_000_000, 1_000_001));
    let slashes: Vec<(EntryKind, i64, Option<String>)> = l
        .entries(&EntryQuery::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.kind != EntryKind::Credit)
        .map(|e| (e.kind, e.amount_micro, e.note))
        .collect();
    assert_eq!(
        slashes,
        [(EntryKind::SlashJob, -1_000_000, Some("bad image".into())), (EntryKind::SlashShare, -1_000_000, Some("tamper".into()))]
    );
    // A slash after the phase closed lands in the open phase; the closed one stays as it was.
    l.close_phase("p1", 1).unwrap();
    l.open_phase(&phase("p2", 1)).unwrap();
    l.append(&[NewEntry::SlashJob { job_id: "j3".into(), reason: "late".into() }]).unwrap();
    assert_eq!(total(l, "0xa-1", Currency::Llama, Some("p1")), 500);
    assert_eq!(total(l, "0xa-1", Currency::Llama, Some("p2")), -500);
    assert_eq!(total(l, "0xa-1", Currency::Llama, None), 0);
}

pub(crate) fn boosts_go_to_the_top_earners(b: &mut Backend) {
    let l = b.ledger.as_mut();
    l.open_phase(&phase("p1", 0)).unwrap();
    l.append(&[
        credit("j1", "0xa-1", Currency::Waifu, 100),
        credit("j2", "0xa-2", Currency::Waifu, 400),
        credit("j3", "0xa-3", Currency::Waifu, 300),
        credit("j4", "0xa-4", Currency::Waifu, 200),
        credit("j5", "0xa-5", Currency::Llama, 50),
        credit("j6", "0xb-1", Currency::Waifu, 1000),
    ])
    .unwrap();
    let rules = BoostRules {
        gpus_per_nft: 3,
        nft_tiers: vec![NftTier { min_nfts: 1, max_nfts: None, multiplier: Decimal::from_millionths(1_500_000) }],
    };
    // 0xa holds one NFT: three GPUs per currency. 0xb holds none.
    let source = NftBoost::from_tiers(rules, [("0xA".to_owned(), 1)]);
    let r = l.apply_boosts(&source).unwrap();
    // Waifu: 0xa-2, 0xa-3, 0xa-4 get half again (200 + 150 + 100); 0xa-1 is left out. Llama: 0xa-5 gets 25.
    assert_eq!(r.entry_ids.len(), 4);
    let wallets = l.balances(&BalanceQuery::wallets().in_phase("p1")).unwrap();
    let rows: Vec<(&str, Currency, i64, i64)> =
        wallets.iter().map(|b| (b.owner.as_str(), b.currency, b.boosts_micro, b.total_micro)).collect();
    assert_eq!(
        rows,
        [("0xa", Currency::Waifu, 450, 1_450), ("0xa", Currency::Llama, 25, 75), ("0xb", Currency::Waifu, 0, 1_000)]
    );
    assert_eq!(total(l, "0xa-1", Currency::Waifu, None), 100);
    // Once per phase.
    assert!(matches!(l.apply_boosts(&source), Err(PointsError::DuplicateBoost { .. })));
}

pub(crate) fn payouts_as_earned_or_pro_rata(b: &mut Backend) {
    let l = b.ledger.as_mut();
    l.open_phase(&phase("p1", 0)).unwrap();
    l.append(&[credit("j1", "0xa-1", Currency::Waifu, 1), credit("j2", "0xb-1", Currency::Waifu, 2)]).unwrap();
    let p = l.payouts("p1", Currency::Waifu).unwrap();
    assert_eq!(p.iter().map(|p| p.payout_micro).collect::<Vec<_>>(), [1, 2]);
    l.close_phase("p1", 1).unwrap();
    // Phase 2 emits 100 Waifu Points, shared 1:2 -> 33.333333 and 66.666666, and the
    // micro-point left over goes to the larger remainder (2/3 > 1/3): 66.666667.
    let emission = PhaseEmission { waifu_micro: Some(100_000_000), llama_micro: None };
    l.open_phase(&NewPhase { id: "p2".into(), opened_at_ms: 1, emission }).unwrap();
    l.append(&[credit("j3", "0xa-1", Currency::Waifu, 10), credit("j4", "0xb-1", Currency::Waifu, 20)]).unwrap();
    let p = l.payouts("p2", Currency::Waifu).unwrap();
    let rows: Vec<(&str, i64, i64)> = p.iter().map(|p| (p.miner_id.as_str(), p.contribution_micro, p.payout_micro)).collect();
    assert_eq!(rows, [("0xa-1", 10, 33_333_333), ("0xb-1", 20, 66_666_667)]);
    assert_eq!(p.iter().map(|p| p.payout_micro).sum::<i64>(), 100_000_000);
    assert_eq!(l.phases().unwrap()[1].emission, emission);
    assert!(matches!(l.payouts("p9", Currency::Waifu), Err(PointsError::UnknownPhase { .. })));
}

pub(crate) fn open_ledger_by_location(b: &mut Backend) {
    let l = b.ledger.as_mut();
    l.open_phase(&phase("p1", 0)).unwrap();
    l.credit("j1", "0xa-1", Points::from_micro(Currency::Llama, 3)).unwrap();
    let mut again = b.reopen();
    assert_eq!(again.backend(), b.ledger.backend());
    assert_eq!(again.balances(&BalanceQuery::wallets()).unwrap()[0].total_micro, 3);
}

/// Instantiates the suite for one backend: `$fresh` yields `Option<Backend>` (`None`: skip).
macro_rules! ledger_suite {
    ($backend:ident, $fresh:expr) => {
        mod $backend {
            fn run(test: fn(&mut crate::support::Backend)) {
                if let Some(mut backend) = $fresh {
                    test(&mut backend);
                }
            }
            #[test]
            fn phases_open_and_close() {
                run(crate::ledger::phases_open_and_close)
            }
            #[test]
            fn credits_and_balances() {
                run(crate::ledger::credits_and_balances)
            }
            #[test]
            fn duplicate_credit_is_refused_atomically() {
                run(crate::ledger::duplicate_credit_is_refused_atomically)
            }
            #[test]
            fn slashes_are_entries() {
                run(crate::ledger::slashes_are_entries)
            }
            #[test]
            fn boosts_go_to_the_top_earners() {
                run(crate::ledger::boosts_go_to_the_top_earners)
            }
            #[test]
            fn payouts_as_earned_or_pro_rata() {
                run(crate::ledger::payouts_as_earned_or_pro_rata)
            }
            #[test]
            fn open_ledger_by_location() {
                run(crate::ledger::open_ledger_by_location)
            }
            #[test]
            fn balance_is_credits_minus_slashes() {
                crate::ledger_props::check(|| $fresh);
            }
            #[test]
            fn killed_mid_batch_loses_nothing_committed() {
                crate::crash::check(stringify!($backend), || $fresh);
            }
        }
    };
}

#[cfg(feature = "sqlite")]
ledger_suite!(sqlite, crate::support::sqlite());
#[cfg(feature = "postgres")]
ledger_suite!(postgres, crate::support::postgres());

#[cfg(feature = "sqlite")]
#[test]
fn open_ledger_takes_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let mut l = heurist_points::open_ledger(path.to_str().unwrap()).unwrap();
    assert_eq!(l.backend(), "sqlite");
    assert!(l.phases().unwrap().is_empty());
    assert!(matches!(heurist_points::open_ledger("mysql://x"), Err(PointsError::LedgerLocation { .. })));
}

#[cfg(feature = "postgres")]
#[test]
fn open_ledger_takes_a_postgres_url() {
    let Some(url) = crate::support::postgres_url() else { return };
    // The URL's own search_path option selects the schema.
    let schema = crate::support::unique_schema("url");
    let _guard = crate::support::SchemaGuard { url: url.clone(), schema: schema.clone() };
    drop(heurist_points::ledger::PostgresLedger::connect_in_schema(&url, &schema).unwrap());
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut l = heurist_points::open_ledger(&format!("{url}{sep}options=-csearch_path%3D{schema}")).unwrap();
    assert_eq!(l.backend(), "postgres");
    l.open_phase(&phase("p1", 0)).unwrap();
    assert_eq!(l.current_phase().unwrap().unwrap().id, "p1");
}
