//! The latency curve: the reward factor as a function of latency inside the timeout.
//!
//! Piecewise linear between [`CurvePoint`]s, flat before the first and after the last, 1
//! when there are none (the default: full reward up to the deadline). Interpolation is in
//! integers and rounds down to a millionth, so a factor never exceeds what the curve says.

use super::CurvePoint;
use crate::decimal::{Decimal, SCALE};

/// The factor, in millionths, at `latency`.
pub(crate) fn factor_at(curve: &[CurvePoint], latency: Decimal) -> i64 {
    let (Some(first), Some(last)) = (curve.first(), curve.last()) else {
        return SCALE;
    };
    if latency <= first.latency_s {
        return first.factor.millionths();
    }
    if latency >= last.latency_s {
        return last.factor.millionths();
    }
    for pair in curve.windows(2) {
        let [a, b] = pair else { continue };
        if latency <= b.latency_s {
            let t = i128::from(latency.millionths() - a.latency_s.millionths());
            let span = i128::from(b.latency_s.millionths() - a.latency_s.millionths());
            let rise = i128::from(b.factor.millionths() - a.factor.millionths());
            // span > 0: validation keeps latencies strictly increasing.
            let step = (rise * t).div_euclid(span.max(1));
            return a.factor.millionths() + step as i64;
        }
    }
    last.factor.millionths()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(latency_s: &str, factor: &str) -> CurvePoint {
        CurvePoint { latency_s: latency_s.parse().unwrap(), factor: factor.parse().unwrap() }
    }

    #[test]
    fn flat_without_points() {
        assert_eq!(factor_at(&[], Decimal::from_millionths(17_999_999)), SCALE);
    }

    #[test]
    fn linear_between_points_rounded_down() {
        let curve = [pt("2", "1"), pt("8", "0.5")];
        assert_eq!(factor_at(&curve, "1".parse().unwrap()), 1_000_000);
        assert_eq!(factor_at(&curve, "5".parse().unwrap()), 750_000);
        // 1 + (0.5 - 1) * (3 - 2) / 6 = 0.916666..., rounded down.
        assert_eq!(factor_at(&curve, "3".parse().unwrap()), 916_666);
        assert_eq!(factor_at(&curve, "100".parse().unwrap()), 500_000);
    }
}
