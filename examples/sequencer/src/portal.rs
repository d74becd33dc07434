//! The points portal: miners, their hardware, jobs done and failed, latencies, points per
//! currency and phase, each miner's balance over time, slashes with their evidence — as JSON
//! (`/api/portal`) and as one HTML page (`/`) rendered on the server, with no script (the
//! chart is inline SVG), so it loads anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use heurist_points::Currency;
use heurist_points::ledger::{BalanceQuery, Entry, EntryKind, EntryQuery};
use serde::Serialize;

use crate::app::{AppState, lock};
use crate::error::Result;
use crate::store::MinerRow;

/// Chart points kept over all series together (at least 2 per series): the page and the JSON
/// stay small whatever the ledger's size.
pub const CHART_POINTS: usize = 2000;

/// Chart points kept for one series at most.
pub const SERIES_POINTS: usize = 500;

/// One miner's line.
#[derive(Clone, Debug, Serialize)]
pub struct MinerView {
    /// What the job store knows.
    #[serde(flatten)]
    pub miner: MinerRow,
    /// Waifu points, all phases.
    pub waifu_points: f64,
    /// Llama points, all phases.
    pub llama_points: f64,
}

/// One finished job's line.
#[derive(Clone, Debug, Serialize)]
pub struct ResultView {
    /// The job.
    pub job_id: String,
    /// Who did it.
    pub miner_id: String,
    /// Assignment to submission, seconds, measured by the sequencer.
    pub latency_s: f64,
    /// The verdict.
    pub verdict: serde_json::Value,
}

/// One slash with its evidence.
#[derive(Clone, Debug, Serialize)]
pub struct SlashView {
    /// The miner slashed.
    pub miner_id: String,
    /// The job, for a job slash.
    pub job_id: Option<String>,
    /// Points removed.
    pub points: f64,
    /// The currency.
    pub currency: String,
    /// The evidence.
    pub reason: Option<String>,
}

/// One miner's balance in one currency over time, from the ledger's entries (credits,
/// slashes, boosts), all phases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    /// The miner.
    pub miner_id: String,
    /// The currency.
    pub currency: Currency,
    /// The ledger entries summed, before thinning.
    pub entries: usize,
    /// `(t_ms, points)`: the balance after an entry (Unix ms), oldest first. Thinned to evenly
    /// spaced entries when long ([`CHART_POINTS`], [`SERIES_POINTS`]); the first and the last
    /// (the current balance) are always kept.
    pub points: Vec<(i64, f64)>,
}

/// Everything the portal shows.
#[derive(Clone, Debug, Serialize)]
pub struct PortalView {
    /// The open phase.
    pub phase: Option<String>,
    /// Miners.
    pub miners: Vec<MinerView>,
    /// Jobs per status.
    pub jobs: Vec<(String, i64)>,
    /// Queued jobs per model.
    pub queues: Vec<(String, i64)>,
    /// The latest results.
    pub recent: Vec<ResultView>,
    /// Slashes.
    pub slashes: Vec<SlashView>,
    /// Each miner's balance over time, per currency, ordered by miner then currency.
    pub series: Vec<Series>,
}

impl PortalView {
    /// The view with every negative zero made positive (serde writes `-0.0` as is).
    fn normalised(mut self) -> Self {
        for m in &mut self.miners {
            m.waifu_points = nz(m.waifu_points);
            m.llama_points = nz(m.llama_points);
        }
        for r in &mut self.recent {
            r.latency_s = nz(r.latency_s);
            nz_json(&mut r.verdict);
        }
        for s in &mut self.slashes {
            s.points = nz(s.points);
        }
        for s in &mut self.series {
            for p in &mut s.points {
                p.1 = nz(p.1);
            }
        }
        self
    }
}

/// The most miners the portal lists (the last seen).
pub const PORTAL_MINERS: usize = 1000;

pub(crate) fn view(state: &AppState) -> Result<PortalView> {
    let (miners, jobs, queues, results) = {
        let store = lock(&state.store);
        (store.recent_miners(PORTAL_MINERS)?, store.status_counts()?, store.queue_depths()?, store.recent_results(50)?)
    };
    let mut ledger = lock(&state.ledger);
    let phase = ledger.current_phase()?.map(|p| p.id);
    let balances = ledger.balances(&BalanceQuery::miners())?;
    let entries = ledger.entries(&EntryQuery::default())?;
    drop(ledger);
    // Summed in micro-points: exact, and never the `-0.0` an empty f64 sum gives.
    let points = |miner: &str, currency: Currency| {
        let micro: i64 = balances.iter().filter(|b| b.owner == miner && b.currency == currency).map(|b| b.total_micro).sum();
        micro as f64 / 1e6
    };
    let series = series_of(&entries, CHART_POINTS);
    Ok(PortalView {
        phase,
        miners: miners
            .into_iter()
            .map(|m| MinerView {
                waifu_points: points(&m.miner_id, Currency::Waifu),
                llama_points: points(&m.miner_id, Currency::Llama),
                miner: m,
            })
            .collect(),
        jobs,
        queues,
        recent: results
            .into_iter()
            .map(|r| ResultView { job_id: r.job_id, miner_id: r.miner_id, latency_s: r.latency_ms as f64 / 1000.0, verdict: r.verdict })
            .collect(),
        slashes: entries.into_iter().filter(|e| matches!(e.kind, EntryKind::SlashJob | EntryKind::SlashShare)).map(slash_view).collect(),
        series,
    }
    .normalised())
}

fn slash_view(e: Entry) -> SlashView {
    SlashView {
        miner_id: e.miner_id,
        job_id: e.job_id,
        points: nz(-(e.amount_micro as f64) / 1e6),
        currency: e.currency.to_string(),
        reason: e.note,
    }
}

/// Each (miner, currency)'s running balance after every entry, in time order (then id order),
/// thinned so that all series together keep about `budget` points.
fn series_of(entries: &[Entry], budget: usize) -> Vec<Series> {
    let mut ordered: Vec<&Entry> = entries.iter().collect();
    ordered.sort_by_key(|e| (e.created_at_ms, e.id));
    // (miner, currency) -> (running total, (t_ms, total) after each entry), in micro-points.
    type Run = (i64, Vec<(i64, i64)>);
    let mut runs: BTreeMap<(&str, Currency), Run> = BTreeMap::new();
    for e in ordered {
        let (total, steps) = runs.entry((e.miner_id.as_str(), e.currency)).or_default();
        *total = total.saturating_add(e.amount_micro);
        steps.push((e.created_at_ms, *total));
    }
    let per_series = (budget / runs.len().max(1)).clamp(2, SERIES_POINTS);
    runs.into_iter()
        .map(|((miner_id, currency), (_, steps))| Series {
            miner_id: miner_id.to_owned(),
            currency,
            entries: steps.len(),
            points: thin(&steps, per_series).into_iter().map(|(t, micro)| (t, nz(micro as f64 / 1e6))).collect(),
        })
        .collect()
}

/// At most `n` (at least 2) evenly spaced items of `all`, the first and the last included.
fn thin<T: Copy>(all: &[T], n: usize) -> Vec<T> {
    let n = n.max(2);
    if all.len() <= n {
        return all.to_vec();
    }
    let last = all.len() - 1;
    (0..n).map(|k| all[k * last / (n - 1)]).collect()
}

/// `x` with a negative zero made positive (`-0.0 + 0.0` is `+0.0`).
fn nz(x: f64) -> f64 {
    x + 0.0
}

/// Every negative-zero number in `v` made positive.
fn nz_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.as_f64().is_some_and(|x| x == 0.0 && x.is_sign_negative()) => {
            *v = serde_json::Value::from(0.0);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(nz_json),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(nz_json),
        _ => {}
    }
}

/// `x` to `decimals` places, never printed as a negative zero (`-0.000000`), even when a
/// tiny negative rounds to zero.
fn fixed(x: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, x);
    match s.strip_prefix('-') {
        Some(abs) if abs.bytes().all(|b| b == b'0' || b == b'.') => abs.to_owned(),
        _ => s,
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (H. Hinnant's algorithm), eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Line colours, one per miner (cycled).
const PALETTE: [&str; 10] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/// The chart's width, and one currency panel's height, in pixels.
const CHART_W: f64 = 720.0;
const PANEL_H: f64 = 240.0;
/// Room around a panel's plot: the y labels on the left, the title above, the x labels below.
const LEFT: f64 = 90.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 30.0;

fn currency_name(c: Currency) -> &'static str {
    match c {
        Currency::Waifu => "Waifu",
        Currency::Llama => "Llama",
    }
}

/// The balances over time as one inline SVG, one panel per currency with entries (its own
/// y axis: the currencies are never added), a step polyline per miner and currency, the time
/// and balance ranges labelled; then a legend naming each miner. A sentence when empty.
fn chart(series: &[Series]) -> String {
    let drawn: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
    let (Some(t0), Some(t1)) = (
        drawn.iter().filter_map(|s| s.points.first()).map(|p| p.0).min(),
        drawn.iter().filter_map(|s| s.points.last()).map(|p| p.0).max(),
    ) else {
        return "<p id=\"chart-empty\">No points yet: each miner's balance over time appears here after its first credit.</p>".into();
    };
    let mut miners: Vec<&str> = drawn.iter().map(|s| s.miner_id.as_str()).collect();
    miners.sort_unstable();
    miners.dedup();
    let colour = |miner: &str| PALETTE[miners.binary_search(&miner).unwrap_or(0) % PALETTE.len()];
    let panels: Vec<Currency> = Currency::ALL.into_iter().filter(|c| drawn.iter().any(|s| s.currency == *c)).collect();
    let height = PANEL_H * panels.len() as f64;
    let (plot_w, plot_h) = (CHART_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let span_t = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / span_t * plot_w;
    let mut svg = format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_W}\" height=\"{height}\" viewBox=\"0 0 {CHART_W} {height}\" \
role=\"img\" aria-label=\"Points over time\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    for (i, &currency) in panels.iter().enumerate() {
        let top = i as f64 * PANEL_H + TOP;
        let bottom = top + plot_h;
        let lines: Vec<&Series> = drawn.iter().copied().filter(|s| s.currency == currency).collect();
        let values = lines.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let lo = values.clone().fold(0.0_f64, f64::min);
        let hi = values.fold(0.0_f64, f64::max);
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let y = |v: f64| top + (hi - v) / (hi - lo) * plot_h;
        let _ = write!(
            svg,
            "<g class=\"panel\" data-currency=\"{currency}\">\
<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\">{} points</text>\
<path d=\"M{LEFT} {top:.1}V{bottom:.1}H{:.1}\" fill=\"none\" stroke=\"#888\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><text x=\"{:.1}\" y=\"{bottom:.1}\" text-anchor=\"end\">{}</text>\
<text x=\"{LEFT}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            top - 10.0,
            currency_name(currency),
            LEFT + plot_w,
            LEFT - 6.0,
            top + 8.0,
            fixed(hi, 6),
            LEFT - 6.0,
            fixed(lo, 6),
            bottom + 16.0,
            utc(t0),
            LEFT + plot_w,
            bottom + 16.0,
            utc(t1),
        );
        if lo < 0.0 {
            let _ = write!(svg, "<path d=\"M{LEFT} {0:.1}H{1:.1}\" stroke=\"#ccc\" stroke-dasharray=\"4 3\"/>", y(0.0), LEFT + plot_w);
        }
        for s in lines {
            // Steps: a balance holds until the next entry, and until the end of the chart.
            let mut path = String::new();
            let mut prev = 0.0;
            for &(t, v) in &s.points {
                let _ = write!(path, "{:.1},{:.1} {:.1},{:.1} ", x(t), y(prev), x(t), y(v));
                prev = v;
            }
            let _ = write!(path, "{:.1},{:.1}", x(t1), y(prev));
            let _ = write!(
                svg,
                "<polyline class=\"series\" data-miner=\"{miner}\" data-currency=\"{currency}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{path}\">\
<title>{miner}: {} {} points</title></polyline>",
                colour(&s.miner_id),
                fixed(prev, 6),
                currency_name(currency),
                miner = esc(&s.miner_id),
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg><ul id=\"chart-legend\" class=\"legend\">");
    for miner in &miners {
        let _ = write!(svg, "<li><span class=\"swatch\" style=\"background:{}\"></span><code>{}</code></li>", colour(miner), esc(miner));
    }
    svg.push_str("</ul>");
    svg
}

pub(crate) fn render(v: &PortalView) -> String {
    let mut miners = String::new();
    for m in &v.miners {
        let _ = write!(
            miners,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.miner.miner_id),
            esc(m.miner.hardware.as_deref().unwrap_or("?")),
            esc(m.miner.model_id.as_deref().unwrap_or("")),
            m.miner.jobs_done,
            m.miner.jobs_failed,
            fixed(m.waifu_points, 6),
            fixed(m.llama_points, 6),
        );
    }
    let mut recent = String::new();
    for r in &v.recent {
        let _ = write!(
            recent,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.job_id),
            esc(&r.miner_id),
            fixed(r.latency_s, 3),
            esc(r.verdict["status"].as_str().unwrap_or("?")),
            // Why a job earned what it did: no points (the rules' reason), or a device the
            // GPU catalogue does not know (a CPU miner), priced without a hardware check.
            esc(&[&r.verdict["note"], &r.verdict["hardware_note"]].iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("; ")),
        );
    }
    let mut slashes = String::new();
    for s in &v.slashes {
        let _ = write!(
            slashes,
            "<tr><td><code>{}</code></td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
            esc(&s.miner_id),
            esc(s.job_id.as_deref().unwrap_or("")),
            fixed(s.points, 6),
            esc(&s.currency),
            esc(s.reason.as_deref().unwrap_or("")),
        );
    }
    let jobs: Vec<String> = v.jobs.iter().map(|(s, n)| format!("{} {n}", esc(s))).collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Heurist local sequencer — portal</title>\
<link rel=\"icon\" href=\"data:,\">\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
.legend{{list-style:none;padding:0;margin:0 0 2em;display:flex;flex-wrap:wrap;gap:4px 16px}}.swatch{{display:inline-block;width:16px;height:3px;margin-right:6px;vertical-align:middle}}</style>\
</head><body><h1>Heurist local sequencer</h1><p>Phase: <b>{}</b>. Jobs: {}.</p>\
<h2>Miners</h2><table id=\"miners\"><tr><th>miner id</th><th>hardware</th><th>model</th><th>done</th><th>failed</th><th>Waifu points</th><th>Llama points</th></tr>{miners}</table>\
<h2>Points over time</h2>{}\
<h2>Recent jobs</h2><table id=\"recent\"><tr><th>job</th><th>miner</th><th>latency (s)</th><th>verdict</th><th>note</th></tr>{recent}</table>\
<h2>Slashes</h2><table id=\"slashes\"><tr><th>miner</th><th>job</th><th>points</th><th>evidence</th></tr>{slashes}</table>\
</body></html>",
        esc(v.phase.as_deref().unwrap_or("none")),
        if jobs.is_empty() { "none".to_owned() } else { jobs.join(", ") },
        chart(&v.series),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    fn entry(id: i64, kind: EntryKind, miner: &str, currency: Currency, amount_micro: i64, t_ms: i64) -> Entry {
        Entry {
            id,
            batch: id,
            phase: "p1".into(),
            kind,
            miner_id: miner.into(),
            wallet: miner.split('-').next().unwrap_or(miner).into(),
            currency,
            amount_micro,
            job_id: Some(format!("job-{id}")),
            note: None,
            created_at_ms: t_ms,
        }
    }

    /// Every polyline coordinate in `svg` is a number inside a chart `height` high.
    fn assert_inside(svg: &str, height: f64) {
        for pts in svg.split("points=\"").skip(1).map(|r| &r[..r.find('"').unwrap()]) {
            for xy in pts.split(' ') {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=CHART_W).contains(&x) && (0.0..=height).contains(&y), "{xy}");
            }
        }
    }

    fn empty_view() -> PortalView {
        PortalView { phase: None, miners: vec![], jobs: vec![], queues: vec![], recent: vec![], slashes: vec![], series: vec![] }
    }

    #[test]
    fn no_negative_zero_in_html_or_json() {
        // The negation of a zero slash was printed `-0.000000`.
        let zero_slash = slash_view(entry(1, EntryKind::SlashShare, "0xaa-1", Currency::Llama, 0, 5));
        assert!(zero_slash.points.is_sign_positive());
        let v = PortalView {
            miners: vec![MinerView { miner: MinerRow { miner_id: "0xaa-1".into(), ..MinerRow::default() }, waifu_points: -0.0, llama_points: -0.0 }],
            recent: vec![ResultView { job_id: "j".into(), miner_id: "0xaa-1".into(), latency_s: -0.0, verdict: serde_json::json!({"status": "ok", "ssim": -0.0}) }],
            slashes: vec![zero_slash, SlashView { miner_id: "0xaa-1".into(), job_id: None, points: -0.0, currency: "waifu".into(), reason: None }],
            series: vec![Series { miner_id: "0xaa-1".into(), currency: Currency::Waifu, entries: 1, points: vec![(5, -0.0)] }],
            ..empty_view()
        }
        .normalised();
        let html = render(&v);
        assert!(!html.contains("-0.0"), "{html}");
        assert!(html.contains("<td>0.000000</td><td>0.000000</td>"), "{html}");
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("-0"), "{json}");
        assert_eq!((fixed(-0.0, 6), fixed(-1e-9, 6), fixed(-0.5, 1), fixed(2.25, 1)), ("0.000000".into(), "0.000000".into(), "-0.5".into(), "2.2".into()));
    }

    #[test]
    fn series_are_cumulative_with_slashes_per_miner_and_currency() {
        let entries = [
            entry(1, EntryKind::Credit, "0xbb-2", Currency::Waifu, 2_000_000, 1_000),
            entry(2, EntryKind::Credit, "0xaa-1", Currency::Waifu, 1_500_000, 2_000),
            entry(3, EntryKind::Credit, "0xbb-2", Currency::Llama, 250_000, 3_000),
            entry(4, EntryKind::Credit, "0xbb-2", Currency::Waifu, 3_000_000, 4_000),
            entry(5, EntryKind::SlashJob, "0xbb-2", Currency::Waifu, -2_000_000, 5_000),
            entry(6, EntryKind::SlashShare, "0xaa-1", Currency::Waifu, -1_500_000, 6_000),
            // Written by another process with an earlier clock: placed by time, not by id.
            entry(7, EntryKind::Boost, "0xbb-2", Currency::Waifu, 100_000, 3_500),
        ];
        let s = series_of(&entries, CHART_POINTS);
        let keys: Vec<(&str, Currency)> = s.iter().map(|s| (s.miner_id.as_str(), s.currency)).collect();
        assert_eq!(keys, [("0xaa-1", Currency::Waifu), ("0xbb-2", Currency::Waifu), ("0xbb-2", Currency::Llama)]);
        assert_eq!(s[0].points, [(2_000, 1.5), (6_000, 0.0)]);
        assert!(s[0].points[1].1.is_sign_positive());
        assert_eq!(s[1].points, [(1_000, 2.0), (3_500, 2.1), (4_000, 5.1), (5_000, 3.1)]);
        assert_eq!(s[1].entries, 4);
        assert_eq!(s[2].points, [(3_000, 0.25)]);
        assert!(series_of(&[], CHART_POINTS).is_empty());
    }

    #[test]
    fn series_are_thinned_to_the_budget_keeping_the_ends() {
        let entries: Vec<Entry> = (0..10_000).map(|i| entry(i, EntryKind::Credit, "0xaa-1", Currency::Waifu, 1_000_000, i * 10)).collect();
        let s = series_of(&entries, CHART_POINTS);
        assert_eq!((s.len(), s[0].entries, s[0].points.len()), (1, 10_000, SERIES_POINTS));
        assert_eq!(s[0].points.first(), Some(&(0, 1.0)));
        assert_eq!(s[0].points.last(), Some(&(99_990, 10_000.0)));
        assert!(s[0].points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        // Many miners share the budget, two points each at least.
        let many: Vec<Entry> =
            (0..20_000).map(|i| entry(i, EntryKind::Credit, &format!("0x{:02}-m", i % 100), Currency::Waifu, 1, i)).collect();
        let s = series_of(&many, CHART_POINTS);
        assert_eq!(s.len(), 100);
        assert!(s.iter().all(|s| s.points.len() == CHART_POINTS / 100 && s.points.last().map(|p| p.1) == Some(200.0 / 1e6)));
        assert_eq!(thin(&[1, 2, 3], 2), [1, 3]);
        assert_eq!(thin(&[1, 2, 3], 5), [1, 2, 3]);
    }

    #[test]
    fn chart_is_one_svg_with_a_polyline_per_series_and_escaped_labels() {
        let evil = "0xcc-<script>alert(1)</script>\"&";
        let entries = [
            entry(1, EntryKind::Credit, "0xaa-1", Currency::Waifu, 2_000_000, 1_700_000_000_000),
            entry(2, EntryKind::Credit, evil, Currency::Waifu, 1_000_000, 1_700_000_060_000),
            entry(3, EntryKind::Credit, evil, Currency::Llama, 500_000, 1_700_000_120_000),
            entry(4, EntryKind::SlashJob, "0xaa-1", Currency::Waifu, -2_000_000, 1_700_000_180_000),
        ];
        let v = PortalView { series: series_of(&entries, CHART_POINTS), ..empty_view() }.normalised();
        let html = render(&v);
        assert_eq!((html.matches("<svg").count(), html.matches("</svg>").count()), (1, 1), "{html}");
        let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert_eq!(svg.matches("</polyline>").count(), 3);
        assert_eq!(svg.matches("<g class=\"panel\"").count(), 2, "a panel per currency");
        assert!(svg.contains("height=\"480\""), "{svg}");
        assert!(svg.contains("data-miner=\"0xaa-1\" data-currency=\"waifu\""));
        assert!(svg.contains("Waifu points") && svg.contains("Llama points"));
        // Axes: the time range and each panel's balance range.
        assert!(svg.contains(">2023-11-14 22:13:20 UTC<") && svg.contains(">2023-11-14 22:16:20 UTC<"), "{svg}");
        assert!(svg.contains(">2.000000<") && svg.contains(">0.000000<") && svg.contains(">0.500000<"), "{svg}");
        // The legend names each miner once, escaped; no markup gets through.
        let legend = &html[html.find("<ul id=\"chart-legend\"").unwrap()..];
        assert_eq!(legend.matches("<li>").count(), 2);
        assert!(!html.contains("<script") && !html.contains("\"&<"), "{html}");
        assert!(html.contains("0xcc-&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;"));
        assert_inside(svg, 480.0);
        // The slashed miner's line ends at 0, on the axis, after its 2-point step.
        assert!(svg.contains("<title>0xaa-1: 0.000000 Waifu points</title>"));
    }

    #[test]
    fn chart_says_so_when_empty() {
        let html = render(&empty_view());
        assert!(html.contains("id=\"chart-empty\"") && !html.contains("<svg"), "{html}");
        // Series whose points were all thinned away draw nothing either.
        let v = PortalView { series: vec![Series { miner_id: "m".into(), currency: Currency::Waifu, entries: 0, points: vec![] }], ..empty_view() };
        assert!(render(&v).contains("id=\"chart-empty\""));
    }

    #[test]
    fn one_moment_and_flat_zero_still_draw_inside_the_chart() {
        let entries = [entry(1, EntryKind::Credit, "0xaa-1", Currency::Waifu, 0, 42)];
        let html = render(&PortalView { series: series_of(&entries, CHART_POINTS), ..empty_view() });
        assert_eq!(html.matches("<polyline").count(), 1);
        assert_inside(&html, PANEL_H);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59 UTC");
    }
}
