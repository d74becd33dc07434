//! Payouts of a phase: points as earned, or a fixed emission shared pro rata.

use super::{wallet_of, Balance, Payout};

/// Per-miner payouts from per-miner balances of one phase and currency.
///
/// Without an emission a miner is owed its balance (0 if negative). With one, each miner
/// gets `floor(emission * c / C)` for its contribution `c` (its balance, 0 if negative) out
/// of the total `C`, and the micro-points left by rounding down go one each to the largest
/// remainders, ties to the smaller miner id: the payouts add up to the emission exactly,
/// and the same balances always give the same payouts. With `C = 0` nothing is paid.
pub(crate) fn pro_rata(balances: &[Balance], emission_micro: Option<i64>) -> Vec<Payout> {
    let contribution = |b: &Balance| b.total_micro.max(0);
    let payout = |b: &Balance, amount: i64| Payout {
        miner_id: b.owner.clone(),
        wallet: wallet_of(&b.owner),
        currency: b.currency,
        contribution_micro: b.total_micro,
        payout_micro: amount,
    };
    let Some(emission) = emission_micro else {
        return balances.iter().map(|b| payout(b, contribution(b))).collect();
    };
    let emission = i128::from(emission.max(0));
    let total: i128 = balances.iter().map(|b| i128::from(contribution(b))).sum();
    if total == 0 {
        return balances.iter().map(|b| payout(b, 0)).collect();
    }
    let mut shares: Vec<(i128, i128, usize)> = balances
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let n = emission * i128::from(contribution(b));
            (n / total, n % total, i)
        })
        .collect();
    let handed: i128 = shares.iter().map(|s| s.0).sum();
    let mut left = emission - handed;
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        shares[b].1.cmp(&shares[a].1).then_with(|| balances[shares[a].2].owner.cmp(&balances[shares[b].2].owner))
    });
    for i in order {
        if left == 0 {
            break;
        }
        if shares[i].1 > 0 {
            shares[i].0 += 1;
            left -= 1;
        }
    }
    shares
        .iter()
        .map(|&(amount, _, i)| payout(&balances[i], i64::try_from(amount).unwrap_or(i64::MAX)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currency::Currency;

    fn bal(owner: &str, total: i64) -> Balance {
        Balance {
            owner: owner.into(),
            currency: Currency::Waifu,
            phase: Some("p".into()),
            credits_micro: total.max(0),
            slashes_micro: (-total).max(0),
            boosts_micro: 0,
            total_micro: total,
        }
    }

    #[test]
    fn shares_add_up_to_the_emission() {
        // 100 shared 1:1:1 -> 33 each and 1 left, to the smallest miner id (all remainders equal).
        let p = pro_rata(&[bal("0xb-1", 5), bal("0xa-1", 5), bal("0xc-1", 5)], Some(100));
        let got: Vec<(&str, i64)> = p.iter().map(|p| (p.miner_id.as_str(), p.payout_micro)).collect();
        assert_eq!(got, [("0xb-1", 33), ("0xa-1", 34), ("0xc-1", 33)]);
    }

    #[test]
    fn negative_balances_get_nothing() {
        // 90 shared 1:2 between the two positive balances -> 30 and 60.
        let p = pro_rata(&[bal("m1", 10), bal("m2", 20), bal("m3", -50)], Some(90));
        let got: Vec<i64> = p.iter().map(|p| p.payout_micro).collect();
        assert_eq!(got, [30, 60, 0]);
        let p = pro_rata(&[bal("m1", 10), bal("m3", -50)], None);
        assert_eq!(p.iter().map(|p| p.payout_micro).collect::<Vec<_>>(), [10, 0]);
    }
}
