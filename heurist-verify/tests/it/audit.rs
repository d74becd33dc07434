//! Audits: check probabilities from the rules, their effect on a cheater's earnings, and a
//! failed check turned into ledger entries with its evidence.

use heurist_points::ledger::{EntryKind, EntryQuery, LedgerStore, NewPhase, SqliteLedger};
use heurist_points::{Currency, Decimal, JobRecord, Points, RuleSet};
use heurist_verify::VerifyError;
use heurist_verify::audit::{AuditPolicy, AuditSampler, FailedCheck};

const MINER: &str = "0x3f71f00ad1266be038917addd150943ca7c60f6a-gpu0";

fn sdxl_job() -> JobRecord {
    JobRecord::from_json_str(r#"{"model_id":"SDXL","width":1024,"height":1024,"steps":20,"latency_s":5}"#).unwrap()
}

#[test]
fn probability_follows_the_rules_reward_and_the_balance() {
    let rules = RuleSet::preset("seed").unwrap();
    let policy = AuditPolicy::default();
    // SDXL 1024² x 20 under the seed rules: 13.333333 Waifu Points.
    let new_miner = policy.check_probability_for(&rules, &sdxl_job(), 0).unwrap();
    assert_eq!(new_miner.reward_micro, 13_333_333);
    // Nothing to slash yet: every job is checked.
    assert_eq!(new_miner.probability, 1.0);
    // 10,000 points at stake, a tenth slashed: p* = R / (0.99 (R + 1000)) = 1.3%, doubled.
    let veteran = policy.check_probability_for(&rules, &sdxl_job(), 10_000_000_000).unwrap();
    assert_eq!(veteran.slash_micro, 1_000_000_000);
    let expected = 13.333333 / (0.99 * (13.333333 + 1000.0));
    assert!((veteran.break_even - expected).abs() < 1e-9, "{veteran:?}");
    assert!((veteran.probability - 2.0 * expected).abs() < 1e-9);
    assert!(veteran.cheat_gain_micro < 0.0);
    // The floor holds for a huge balance.
    let whale = policy.check_probability_for(&rules, &sdxl_job(), i64::MAX / 2).unwrap();
    assert_eq!(whale.probability, policy.floor);
    // A record the rules cannot price is a typed error.
    let bad = JobRecord { model_id: "NoSuchModel".into(), ..sdxl_job() };
    assert!(matches!(policy.check_probability_for(&rules, &bad, 0), Err(VerifyError::Rules { .. })));
}

/// Simulates a miner that cheats on every job for a phase, with its balance at stake growing
/// as it earns, checked at the policy's probability (drawn by the sampler) and caught with
/// probability `detection` when checked. Returns what cheating gained over honesty, micro-points.
fn cheat_for_a_phase(policy: &AuditPolicy, probability_scale: f64, jobs: usize, seed: u8) -> f64 {
    let sampler = AuditSampler::new([seed; 32]);
    let reward = 13_333_333u64;
    let saved = policy.saved_cost_share * reward as f64;
    let (mut balance, mut gain) = (5_000_000_000i64, 0.0);
    for j in 0..jobs {
        let p = policy.check_probability(reward, balance).unwrap();
        let job_id = format!("job-{j}");
        gain += saved;
        let checked = sampler.selects(&job_id, MINER, p.probability * probability_scale);
        // The detection draw, from the same sampler under another name.
        let detected = checked && sampler.draw(&job_id, "detect") < policy.detection;
        if detected {
            gain -= reward as f64 + p.slash_micro as f64;
            balance -= p.slash_micro as i64;
        } else {
            balance += reward as i64;
        }
    }
    gain
}

#[test]
fn cheating_loses_at_the_policy_rate_and_pays_below_break_even() {
    // No floor: the rate is the formula's alone (margin 2, so on average cheating loses c per job).
    let policy = AuditPolicy { floor: 0.0, ..AuditPolicy::default() };
    for seed in 0..5 {
        assert!(cheat_for_a_phase(&policy, 1.0, 20_000, seed) < 0.0, "seed {seed}");
        // A quarter of the rate (half the break-even): cheating pays. The formula is not loose.
        assert!(cheat_for_a_phase(&policy, 0.25, 20_000, seed) > 0.0, "seed {seed}");
    }
}

#[test]
fn a_failed_check_becomes_slash_entries_with_its_evidence() {
    let mut ledger = SqliteLedger::open_in_memory().unwrap();
    ledger.open_phase(&NewPhase { id: "p1".into(), opened_at_ms: 0, emission: Default::default() }).unwrap();
    ledger.credit("job-1", MINER, Points::from_micro(Currency::Waifu, 13_333_333)).unwrap();
    ledger.credit("job-2", MINER, Points::from_micro(Currency::Waifu, 86_666_667)).unwrap();
    let failed = FailedCheck {
        job_id: "job-1".into(),
        miner_id: MINER.into(),
        currency: Currency::Waifu,
        evidence: "greedy answer differs at byte 12".into(),
    };
    let policy = AuditPolicy::default();
    let receipt = failed.slash(&policy, &mut ledger).unwrap();
    assert_eq!(receipt.entry_ids.len(), 2);
    let entries = ledger.entries(&EntryQuery { batch: Some(receipt.batch), ..Default::default() }).unwrap();
    assert_eq!(entries[0].kind, EntryKind::SlashJob);
    assert_eq!(entries[0].amount_micro, -13_333_333);
    assert_eq!(entries[1].kind, EntryKind::SlashShare);
    for e in &entries {
        assert!(e.note.as_deref().unwrap().contains("greedy answer differs at byte 12"), "{e:?}");
        assert!(e.note.as_deref().unwrap().contains("job-1"));
    }
    // 100 - 13.333333 = 86.666667 left, a tenth of it slashed (rounded down by the ledger).
    assert_eq!(ledger.balance_of(MINER, Currency::Waifu, Some("p1")).unwrap(), 86_666_667 - 8_666_666);
    // A job is slashed once.
    assert!(failed.slash(&policy, &mut ledger).is_err());
    // No share slash when the policy sets none.
    let only_job = AuditPolicy { slash_share: Decimal::ZERO, ..policy };
    assert_eq!(failed.slash_entries(&only_job).unwrap().len(), 1);
}
