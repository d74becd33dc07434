//! The points portal: miners, their hardware, jobs done and failed, latencies, points per
//! currency and phase, slashes with their evidence — as JSON (`/api/portal`) and as one HTML
//! page (`/`) rendered on the server, with no script, so it loads anywhere.

use heurist_points::ledger::{BalanceQuery, EntryKind, EntryQuery};
use serde::Serialize;

use crate::app::{AppState, lock};
use crate::error::Result;
use crate::store::MinerRow;

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
}

pub(crate) fn view(state: &AppState) -> Result<PortalView> {
    let (miners, jobs, queues, results) = {
        let store = lock(&state.store);
        (store.miners()?, store.status_counts()?, store.queue_depths()?, store.recent_results(50)?)
    };
    let mut ledger = lock(&state.ledger);
    let phase = ledger.current_phase()?.map(|p| p.id);
    let balances = ledger.balances(&BalanceQuery::miners())?;
    let entries = ledger.entries(&EntryQuery::default())?;
    drop(ledger);
    let points = |miner: &str, currency: &str| {
        balances
            .iter()
            .filter(|b| b.owner == miner && b.currency.to_string() == currency)
            .map(|b| b.total_micro as f64 / 1e6)
            .sum::<f64>()
    };
    Ok(PortalView {
        phase,
        miners: miners
            .into_iter()
            .map(|m| MinerView { waifu_points: points(&m.miner_id, "waifu"), llama_points: points(&m.miner_id, "llama"), miner: m })
            .collect(),
        jobs,
        queues,
        recent: results
            .into_iter()
            .map(|r| ResultView { job_id: r.job_id, miner_id: r.miner_id, latency_s: r.latency_ms as f64 / 1000.0, verdict: r.verdict })
            .collect(),
        slashes: entries
            .into_iter()
            .filter(|e| matches!(e.kind, EntryKind::SlashJob | EntryKind::SlashShare))
            .map(|e| SlashView {
                miner_id: e.miner_id,
                job_id: e.job_id,
                points: -(e.amount_micro as f64) / 1e6,
                currency: e.currency.to_string(),
                reason: e.note,
            })
            .collect(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(crate) fn render(v: &PortalView) -> String {
    let mut miners = String::new();
    for m in &v.miners {
        miners.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}</td><td>{:.6}</td></tr>",
            esc(&m.miner.miner_id),
            esc(m.miner.hardware.as_deref().unwrap_or("?")),
            esc(m.miner.model_id.as_deref().unwrap_or("")),
            m.miner.jobs_done,
            m.miner.jobs_failed,
            m.waifu_points,
            m.llama_points
        ));
    }
    let mut recent = String::new();
    for r in &v.recent {
        recent.push_str(&format!(
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{:.3}</td><td>{}</td></tr>",
            esc(&r.job_id),
            esc(&r.miner_id),
            r.latency_s,
            esc(r.verdict["status"].as_str().unwrap_or("?")),
        ));
    }
    let mut slashes = String::new();
    for s in &v.slashes {
        slashes.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{:.6} {}</td><td>{}</td></tr>",
            esc(&s.miner_id),
            esc(s.job_id.as_deref().unwrap_or("")),
            s.points,
            esc(&s.currency),
            esc(s.reason.as_deref().unwrap_or("")),
        ));
    }
    let jobs: Vec<String> = v.jobs.iter().map(|(s, n)| format!("{} {n}", esc(s))).collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Heurist local sequencer — portal</title>\
<link rel=\"icon\" href=\"data:,\">\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>\
</head><body><h1>Heurist local sequencer</h1><p>Phase: <b>{}</b>. Jobs: {}.</p>\
<h2>Miners</h2><table id=\"miners\"><tr><th>miner id</th><th>hardware</th><th>model</th><th>done</th><th>failed</th><th>Waifu points</th><th>Llama points</th></tr>{miners}</table>\
<h2>Recent jobs</h2><table id=\"recent\"><tr><th>job</th><th>miner</th><th>latency (s)</th><th>verdict</th></tr>{recent}</table>\
<h2>Slashes</h2><table id=\"slashes\"><tr><th>miner</th><th>job</th><th>points</th><th>evidence</th></tr>{slashes}</table>\
</body></html>",
        esc(v.phase.as_deref().unwrap_or("none")),
        if jobs.is_empty() { "none".to_owned() } else { jobs.join(", ") },
    )
}
