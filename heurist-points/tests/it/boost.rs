//! NFT boost allocation against the brute-force optimum on every small case.

use heurist_points::boost::{allocate, bonus, Boost, BoostSource, NftBoost};
use heurist_points::rules::{BoostRules, NftTier};
use heurist_points::Decimal;
use proptest::prelude::*;

/// The largest wallet total over every subset of at most `max` miners.
fn brute_force(multiplier: Decimal, max: usize, earnings: &[i64]) -> i64 {
    let n = earnings.len();
    let base: i64 = earnings.iter().sum();
    let mut best = base;
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize > max {
            continue;
        }
        let extra: i64 = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| bonus(earnings[i], multiplier)).sum();
        best = best.max(base + extra);
    }
    best
}

fn tiers() -> impl Strategy<Value = BoostRules> {
    // Three consecutive tiers 1..=a, a+1..=b, b+1.. with multipliers from 0.5 to 3.
    (1u32..3, 1u32..3, proptest::collection::vec(500_000i64..3_000_000, 3)).prop_map(|(a, b, m)| BoostRules {
        gpus_per_nft: 3,
        nft_tiers: vec![
            NftTier { min_nfts: 1, max_nfts: Some(a), multiplier: Decimal::from_millionths(m[0]) },
            NftTier { min_nfts: a + 1, max_nfts: Some(a + b), multiplier: Decimal::from_millionths(m[1]) },
            NftTier { min_nfts: a + b + 1, max_nfts: None, multiplier: Decimal::from_millionths(m[2]) },
        ],
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn allocation_is_the_brute_force_optimum(
        rules in tiers(),
        nfts in 0u32..=3,
        earnings in proptest::collection::vec(-1_000i64..5_000_000, 0..=8),
    ) {
        let miners: Vec<String> = (0..earnings.len()).map(|i| format!("0xw-{i}")).collect();
        let pairs: Vec<(&str, i64)> = miners.iter().map(String::as_str).zip(earnings.iter().copied()).collect();
        let source = NftBoost::from_tiers(rules.clone(), [("0xW".to_owned(), nfts)]);
        let total = match source.boost_for("0xw").unwrap() {
            Some(boost) => {
                let max = boost.max_miners.unwrap() as usize;
                prop_assert_eq!(max, 3 * nfts as usize);
                let a = allocate(&boost, &pairs);
                prop_assert!(a.boosted.len() <= max);
                prop_assert_eq!(a.total_micro, brute_force(boost.multiplier, max, &earnings));
                a.total_micro
            }
            None => {
                prop_assert_eq!(nfts, 0);
                earnings.iter().sum()
            }
        };
        prop_assert!(total >= earnings.iter().sum::<i64>());
    }

    #[test]
    fn allocation_with_any_multiplier_and_cap(
        multiplier in 0i64..4_000_000,
        max in 0usize..=9,
        earnings in proptest::collection::vec(-100i64..1_000, 0..=8),
    ) {
        let m = Decimal::from_millionths(multiplier);
        let boost = Boost { multiplier: m, max_miners: Some(max as u32), source: "test".into() };
        let miners: Vec<String> = (0..earnings.len()).map(|i| format!("m{i}")).collect();
        let pairs: Vec<(&str, i64)> = miners.iter().map(String::as_str).zip(earnings.iter().copied()).collect();
        prop_assert_eq!(allocate(&boost, &pairs).total_micro, brute_force(m, max, &earnings));
    }
}
