//! Boosts: a multiplier on the points of some of a wallet's GPUs.
//!
//! A wallet runs several GPUs as several miner ids (`0xaddr-tag`). Before TGE, holders of
//! Heurist Imaginaries NFTs get a multiplier that depends on how many NFTs the wallet
//! holds (the rule set's `boost.nft_tiers`), and each NFT boosts at most 3 GPUs. After
//! TGE, stHEU staking will boost by rules not yet published. Both are a [`BoostSource`]:
//! "what multiplier does this wallet get, on how many miner ids at most". [`allocate`]
//! then picks the miner ids that make the wallet's total the largest, and
//! [`boost_entries`] turns that into ledger entries.
//!
//! Allocation is per currency: Waifu and Llama points are never added together, so "the
//! largest total" is only defined within one currency. A boosted miner's bonus is
//! `floor(balance * multiplier) - balance` micro-points (rounded down like every reward);
//! the optimum is the `max_miners` largest positive bonuses, ties broken by miner id.

use std::collections::BTreeMap;

use crate::currency::Currency;
use crate::decimal::{Decimal, SCALE};
use crate::error::Result;
use crate::ledger::{wallet_of, Balance, NewEntry};
use crate::rules::{BoostRules, RuleSet};

/// The boost a wallet gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boost {
    /// The multiplier on a boosted miner's points (1.5 adds half).
    pub multiplier: Decimal,
    /// How many of the wallet's miner ids it may boost; none means all.
    pub max_miners: Option<u32>,
    /// Where the boost comes from, recorded in the ledger (`nft`, `stheu`...).
    pub source: String,
}

/// Where boosts come from. Implement it to add a source (stHEU staking) without touching
/// allocation or the ledger.
pub trait BoostSource {
    /// The boost of `wallet` (a lowercase `0x` address), none if it has none.
    fn boost_for(&self, wallet: &str) -> Result<Option<Boost>>;
}

/// Heurist Imaginaries NFT boosts: the rule set's tiers and each wallet's NFT count.
#[derive(Clone, Debug)]
pub struct NftBoost {
    rules: BoostRules,
    holdings: BTreeMap<String, u32>,
}

impl NftBoost {
    /// NFT boosts under `rules`' tiers for wallets holding the given NFT counts.
    pub fn new(rules: &RuleSet, holdings: impl IntoIterator<Item = (String, u32)>) -> Self {
        Self::from_tiers(rules.data().boost.clone(), holdings)
    }

    /// NFT boosts under explicit boost rules.
    pub fn from_tiers(rules: BoostRules, holdings: impl IntoIterator<Item = (String, u32)>) -> Self {
        let holdings = holdings.into_iter().map(|(w, n)| (wallet_of(&w), n)).collect();
        Self { rules, holdings }
    }
}

impl BoostSource for NftBoost {
    fn boost_for(&self, wallet: &str) -> Result<Option<Boost>> {
        let Some(&nfts) = self.holdings.get(&wallet_of(wallet)) else {
            return Ok(None);
        };
        let Some(tier) = self.rules.nft_tiers.iter().find(|t| t.contains(nfts)) else {
            return Ok(None);
        };
        Ok(Some(Boost {
            multiplier: tier.multiplier,
            max_miners: Some(nfts.saturating_mul(self.rules.gpus_per_nft)),
            source: "nft".to_owned(),
        }))
    }
}

/// One boosted miner id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinerBoost {
    /// The miner id.
    pub miner_id: String,
    /// Its points before the boost, micro-points.
    pub base_micro: i64,
    /// What the boost adds, micro-points.
    pub bonus_micro: i64,
}

/// The chosen miner ids of one wallet and currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// The boosted miner ids, largest bonus first.
    pub boosted: Vec<MinerBoost>,
    /// The wallet's total before boosts, micro-points.
    pub base_total_micro: i64,
    /// The wallet's total with the boosts, micro-points.
    pub total_micro: i64,
}

/// What boosting a miner with `base_micro` points by `multiplier` adds: `floor(base *
/// multiplier) - base`, or 0 for a balance of 0 or less (a slashed-out miner is not boosted).
pub fn bonus(base_micro: i64, multiplier: Decimal) -> i64 {
    if base_micro <= 0 {
        return 0;
    }
    let boosted = (i128::from(base_micro) * i128::from(multiplier.millionths())).div_euclid(i128::from(SCALE));
    let bonus = boosted - i128::from(base_micro);
    i64::try_from(bonus).unwrap_or(if bonus > 0 { i64::MAX } else { i64::MIN })
}

/// Chooses which of a wallet's miner ids (with their points in one currency) to boost so
/// that the wallet's total is the largest.
///
/// ```
/// use heurist_points::boost::{allocate, Boost};
/// let boost = Boost { multiplier: "1.5".parse()?, max_miners: Some(1), source: "nft".into() };
/// let a = allocate(&boost, &[("0xa-1", 10), ("0xa-2", 30)]);
/// assert_eq!(a.boosted[0].miner_id, "0xa-2");
/// assert_eq!(a.total_micro, 10 + 30 + 15);
/// # Ok::<(), heurist_points::PointsError>(())
/// ```
pub fn allocate(boost: &Boost, earnings: &[(&str, i64)]) -> Allocation {
    let base_total: i64 = earnings.iter().map(|(_, p)| *p).fold(0i64, i64::saturating_add);
    let mut candidates: Vec<MinerBoost> = earnings
        .iter()
        .map(|(m, p)| MinerBoost { miner_id: (*m).to_owned(), base_micro: *p, bonus_micro: bonus(*p, boost.multiplier) })
        .filter(|b| b.bonus_micro > 0)
        .collect();
    candidates.sort_by(|a, b| b.bonus_micro.cmp(&a.bonus_micro).then_with(|| a.miner_id.cmp(&b.miner_id)));
    if let Some(max) = boost.max_miners {
        candidates.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    }
    let total = candidates.iter().map(|b| b.bonus_micro).fold(base_total, i64::saturating_add);
    Allocation { boosted: candidates, base_total_micro: base_total, total_micro: total }
}

/// The boost-adjustment entries for per-miner balances of one phase (as
/// [`BalanceQuery::miners`](crate::ledger::BalanceQuery::miners) returns them), grouped by
/// wallet and currency and allocated with [`allocate`].
pub fn boost_entries(balances: &[Balance], source: &dyn BoostSource) -> Result<Vec<NewEntry>> {
    let mut by_wallet: BTreeMap<(String, Currency), Vec<(&str, i64)>> = BTreeMap::new();
    for b in balances {
        by_wallet.entry((wallet_of(&b.owner), b.currency)).or_default().push((b.owner.as_str(), b.total_micro));
    }
    let mut entries = Vec::new();
    for ((wallet, currency), miners) in by_wallet {
        let Some(boost) = source.boost_for(&wallet)? else { continue };
        for m in allocate(&boost, &miners).boosted {
            entries.push(NewEntry::Boost {
                miner_id: m.miner_id,
                currency,
                amount_micro: m.bonus_micro,
                source: boost.source.clone(),
            });
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::NftTier;

    fn tiers() -> BoostRules {
        BoostRules {
            gpus_per_nft: 3,
            nft_tiers: vec![
                NftTier { min_nfts: 1, max_nfts: Some(2), multiplier: "1.1".parse().unwrap() },
                NftTier { min_nfts: 3, max_nfts: None, multiplier: "1.5".parse().unwrap() },
            ],
        }
    }

    #[test]
    fn nft_source_reads_tiers_and_caps_miners() {
        let src = NftBoost::from_tiers(tiers(), [("0xAbC".to_owned(), 2), ("0xdef".to_owned(), 5)]);
        let b = src.boost_for("0xabc").unwrap().unwrap();
        assert_eq!((b.multiplier.millionths(), b.max_miners), (1_100_000, Some(6)));
        let b = src.boost_for("0xdef").unwrap().unwrap();
        assert_eq!((b.multiplier.millionths(), b.max_miners), (1_500_000, Some(15)));
        assert!(src.boost_for("0x999").unwrap().is_none());
    }

    #[test]
    fn bonus_rounds_down_and_skips_non_positive() {
        // 7 * 1.1 = 7.7 -> 7, bonus 0; 10 * 1.1 = 11, bonus 1.
        assert_eq!(bonus(7, "1.1".parse().unwrap()), 0);
        assert_eq!(bonus(10, "1.1".parse().unwrap()), 1);
        assert_eq!(bonus(-10, "2".parse().unwrap()), 0);
    }

    #[test]
    fn allocation_takes_the_largest_earners() {
        let boost = Boost { multiplier: "2".parse().unwrap(), max_miners: Some(3), source: "nft".into() };
        let earnings = [("m1", 5), ("m2", 50), ("m3", 20), ("m4", 40), ("m5", 0)];
        let a = allocate(&boost, &earnings);
        let ids: Vec<&str> = a.boosted.iter().map(|b| b.miner_id.as_str()).collect();
        assert_eq!(ids, ["m2", "m4", "m3"]);
        // 115 base + (50 + 40 + 20) bonus.
        assert_eq!((a.base_total_micro, a.total_micro), (115, 225));
    }
}
