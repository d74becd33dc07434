//! The sequencer's durable state: jobs, their results, and the miners seen, in one SQLite file.
//!
//! A submission is accepted only once it is committed here (result row and job status in one
//! transaction), so a sequencer killed after answering 200 has the result on restart. Points
//! are credited to the ledger afterwards and the row marked `credited`; on start,
//! [`JobStore::uncredited`] lists what a crash left between the two, and the ledger's
//! one-credit-per-job rule makes crediting again harmless.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::{Result, SequencerError};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a miner.
    Queued,
    /// Handed to a miner, not yet submitted.
    Assigned,
    /// A result was accepted.
    Done,
    /// Given up on (too many miners vanished with it).
    Failed,
}

impl JobStatus {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "assigned" => Self::Assigned,
            "done" => Self::Done,
            "failed" => Self::Failed,
            other => return Err(SequencerError::Corrupt { what: "job status", value: other.to_owned() }),
        })
    }
}

/// A stored job.
#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    /// The job id.
    pub job_id: String,
    /// The model asked for.
    pub model_id: String,
    /// `SD` or `LLM`.
    pub kind: String,
    /// The `model_input` JSON.
    pub input: serde_json::Value,
    /// Higher first.
    pub priority: i64,
    /// Milliseconds a miner has from assignment to submission.
    pub timeout_ms: i64,
    /// Where it is.
    pub status: JobStatus,
    /// The miner it is (or was last) assigned to.
    pub miner_id: Option<String>,
    /// When it was last assigned, Unix ms.
    pub assigned_at_ms: Option<i64>,
    /// How many times it was assigned.
    pub attempts: i64,
    /// When it was queued, Unix ms.
    pub created_at_ms: i64,
}

/// A stored result.
#[derive(Clone, Debug, Serialize)]
pub struct ResultRow {
    /// The job.
    pub job_id: String,
    /// Who submitted it.
    pub miner_id: String,
    /// The `miner_submit` body (or, for a stream, the text) as JSON.
    pub submission: serde_json::Value,
    /// When it arrived, Unix ms.
    pub received_at_ms: i64,
    /// Assignment to arrival, measured here (not the miner's claim), ms.
    pub latency_ms: i64,
    /// The verdict and its evidence.
    pub verdict: serde_json::Value,
    /// Whether its points are in the ledger.
    pub credited: bool,
}

/// A miner as the sequencer saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MinerRow {
    /// The miner id.
    pub miner_id: String,
    /// Its GPU, from the last heartbeat.
    pub hardware: Option<String>,
    /// Its version, from the last heartbeat.
    pub version: Option<String>,
    /// The model it last asked jobs for.
    pub model_id: Option<String>,
    /// First request, Unix ms.
    pub first_seen_ms: i64,
    /// Last request, Unix ms.
    pub last_seen_ms: i64,
    /// Results accepted.
    pub jobs_done: i64,
    /// Results refused, and jobs it vanished with.
    pub jobs_failed: i64,
}

/// What [`JobStore::record_result`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored; the assignment's latency in ms.
    Stored {
        /// Assignment to arrival, ms.
        latency_ms: i64,
    },
}

/// The job, result and miner tables.
pub struct JobStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    timeout_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    miner_id TEXT,
    assigned_at_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
-- The queue order is (priority, arrival); SQLite appends the rowid, which grows with each
-- insert, to every index entry, so this index serves it. (An earlier index named jobs_queue
-- sorted by the millisecond clock, on which jobs queued in the same millisecond tie.)
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX IF NOT EXISTS jobs_fifo ON jobs(status, model_id, priority DESC);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
    miner_id TEXT NOT NULL,
    submission TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    credited INTEGER NOT NULL DEFAULT 0
);
-- Every assignment of a job (the latest per miner): who took it, when, from where, and
-- whether the request was signed by the wallet's bound identity. A miner that took a job
-- may still deliver it after its assignment expired, while the job has no result.
CREATE TABLE IF NOT EXISTS assignments (
    job_id TEXT NOT NULL,
    miner_id TEXT NOT NULL,
    assigned_at_ms INTEGER NOT NULL,
    peer TEXT NOT NULL,
    signed INTEGER NOT NULL,
    -- The identity whose hourly signature the request carried, bound or not: only it may
    -- deliver the job.
    identity TEXT,
    PRIMARY KEY (job_id, miner_id)
);
CREATE INDEX IF NOT EXISTS assignments_peer ON assignments(peer, signed);
-- Reward wallet -> identity wallet: set by the operator, by the reward wallet's own signed
-- binding, or by the first identity whose submission was accepted (trust on first use).
CREATE TABLE IF NOT EXISTS bindings (
    reward TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    source TEXT NOT NULL,
    signed_at INTEGER NOT NULL DEFAULT 0,
    bound_at_ms INTEGER NOT NULL,
    -- 1 once the wallet's miner has signed a job by name (`job_signature`): from then on its
    -- submissions and requests must be signed so.
    strict INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS miners (
    miner_id TEXT PRIMARY KEY,
    hardware TEXT,
    version TEXT,
    model_id TEXT,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    jobs_done INTEGER NOT NULL DEFAULT 0,
    jobs_failed INTEGER NOT NULL DEFAULT 0
);
";

impl JobStore {
    /// Opens (creating) the store at `path`, in WAL mode with full sync so that an answered
    /// submission survives a crash.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| SequencerError::store(path.display(), e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| SequencerError::store("journal_mode", e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| SequencerError::store("synchronous", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| SequencerError::store("busy_timeout", e))?;
        conn.execute_batch(SCHEMA).map_err(|e| SequencerError::store("schema", e))?;
        Ok(Self { conn })
    }

    /// Queues a job. A job id already used is [`SequencerError::DuplicateJob`].
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(&mut self, job_id: &str, model_id: &str, kind: &str, input: &serde_json::Value, priority: i64, timeout_ms: i64, now_ms: i64) -> Result<()> {
        let n = self
            .conn
            .execute(
                "INSERT INTO jobs (job_id, model_id, kind, input, priority, timeout_ms, status, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7) ON CONFLICT(job_id) DO NOTHING",
                params![job_id, model_id, kind, input.to_string(), priority, timeout_ms, now_ms],
            )
            .map_err(|e| SequencerError::store("enqueue", e))?;
        if n == 0 {
            return Err(SequencerError::DuplicateJob { job_id: job_id.to_owned() });
        }
        Ok(())
    }

    /// Hands the queued job for `model_id` that arrived first to `miner_id`, among those of
    /// the highest priority: per model and priority the queue is first in, first out, a
    /// re-queued job keeping its place. Arrival is the insert order (the rowid), not the
    /// clock: jobs queued in the same millisecond, or across a clock step, keep their order.
    ///
    /// `signed`: the request carried the signature of the wallet's bound identity. Only such
    /// assignments count towards a job's attempts (so requests under made-up miner ids cannot
    /// fail the queue's jobs) and charge the miner when they expire. Unsigned requests from
    /// one `peer` hold at most `max_unsigned_per_peer` jobs at once:
    /// [`SequencerError::TooManyAssignments`] past that.
    pub fn assign_next(&mut self, model_id: &str, miner_id: &str, now_ms: i64, take: Taker<'_>) -> Result<Option<JobRow>> {
        let tx = self.conn.transaction().map_err(|e| SequencerError::store("assign", e))?;
        if !take.signed {
            let held: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM assignments a JOIN jobs j ON j.job_id = a.job_id AND j.miner_id = a.miner_id
                     WHERE a.peer = ?1 AND a.signed = 0 AND j.status = 'assigned'",
                    params![take.peer],
                    |r| r.get(0),
                )
                .map_err(|e| SequencerError::store("assign", e))?;
            if held >= take.max_unsigned_per_peer {
                return Err(SequencerError::TooManyAssignments { peer: take.peer.to_owned(), held });
            }
        }
        let id: Option<String> = tx
            .query_row(
                "SELECT job_id FROM jobs WHERE status = 'queued' AND model_id = ?1
                 ORDER BY priority DESC, rowid LIMIT 1",
                params![model_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| SequencerError::store("assign", e))?;
        let Some(id) = id else { return Ok(None) };
        tx.execute(
            "UPDATE jobs SET status = 'assigned', miner_id = ?2, assigned_at_ms = ?3, attempts = attempts + ?4 WHERE job_id = ?1",
            params![id, miner_id, now_ms, i64::from(take.signed)],
        )
        .map_err(|e| SequencerError::store("assign", e))?;
        tx.execute(
            "INSERT OR REPLACE INTO assignments (job_id, miner_id, assigned_at_ms, peer, signed, identity) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, miner_id, now_ms, take.peer, take.signed, take.identity],
        )
        .map_err(|e| SequencerError::store("assign", e))?;
        let row = get_job(&tx, &id)?;
        tx.commit().map_err(|e| SequencerError::store("assign", e))?;
        Ok(row)
    }

    /// When `miner_id` was last handed `job_id`, if ever.
    pub fn assignment(&self, job_id: &str, miner_id: &str) -> Result<Option<Assignment>> {
        get_assignment(&self.conn, job_id, miner_id)
    }

    /// The identity bound to a reward wallet, and how it was bound.
    pub fn binding(&self, reward: &str) -> Result<Option<Binding>> {
        self.conn
            .query_row(
                "SELECT identity, source, signed_at, strict FROM bindings WHERE reward = ?1",
                params![reward],
                |r| Ok(Binding { identity: r.get(0)?, source: r.get(1)?, signed_at: r.get(2)?, strict: r.get(3)? }),
            )
            .optional()
            .map_err(|e| SequencerError::store("binding", e))
    }

    /// Marks a wallet whose miner signs jobs by name: from now on it must.
    pub fn set_strict(&mut self, reward: &str) -> Result<()> {
        self.conn
            .execute("UPDATE bindings SET strict = 1 WHERE reward = ?1", params![reward])
            .map_err(|e| SequencerError::store("strict", e))?;
        Ok(())
    }

    /// Binds `reward` to `identity` with `source` (`operator`, `reward-signature` or
    /// `first-use`), following the order of authority: the operator's word is final; a
    /// reward wallet's signed binding replaces a first-use one or an older signed one; a first
    /// use binds only a wallet that has no binding. Returns whether it changed anything.
    pub fn bind(&mut self, reward: &str, identity: &str, source: BindingSource, signed_at: u64, now_ms: i64) -> Result<bool> {
        let existing = self.binding(reward)?;
        let replace = match (source, &existing) {
            (_, None) | (BindingSource::Operator, _) => true,
            (BindingSource::RewardSignature, Some(b)) => {
                b.source != BindingSource::Operator.as_str() && (b.source == BindingSource::FirstUse.as_str() || (signed_at as i64) > b.signed_at)
            }
            (BindingSource::FirstUse, Some(_)) => false,
        };
        if !replace {
            return Ok(false);
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO bindings (reward, identity, source, signed_at, bound_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![reward, identity, source.as_str(), signed_at as i64, now_ms],
            )
            .map_err(|e| SequencerError::store("bind", e))?;
        Ok(true)
    }

    /// A job by id.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRow>> {
        get_job(&self.conn, job_id)
    }

    /// Stores a result for a job assigned to `miner_id`, marking the job done, in one
    /// transaction. Refused when the job is unknown, assigned to someone else, or already
    /// has a result.
    pub fn record_result(
        &mut self,
        job_id: &str,
        miner_id: &str,
        submission: &serde_json::Value,
        verdict: &serde_json::Value,
        now_ms: i64,
    ) -> Result<Recorded> {
        let tx = self.conn.transaction().map_err(|e| SequencerError::store("record", e))?;
        let job = get_job(&tx, job_id)?.ok_or_else(|| SequencerError::UnknownJob { job_id: job_id.to_owned() })?;
        let has_result: bool = tx
            .query_row("SELECT 1 FROM results WHERE job_id = ?1", params![job_id], |_| Ok(true))
            .optional()
            .map_err(|e| SequencerError::store("record", e))?
            .unwrap_or(false);
        if has_result {
            return Err(SequencerError::AlreadySubmitted { job_id: job_id.to_owned() });
        }
        // The current assignee, or an earlier one whose assignment expired (an upload held up
        // by an S3 outage, say): the first result of a miner that was handed the job wins.
        let assigned_at_ms = if job.status == JobStatus::Assigned && job.miner_id.as_deref() == Some(miner_id) {
            job.assigned_at_ms
        } else {
            match get_assignment(&tx, job_id, miner_id)? {
                Some(a) => Some(a.assigned_at_ms),
                None => {
                    return Err(SequencerError::NotAssigned {
                        job_id: job_id.to_owned(),
                        miner_id: miner_id.to_owned(),
                        status: job.status,
                        assigned_to: job.miner_id.clone(),
                    });
                }
            }
        };
        let latency_ms = (now_ms - assigned_at_ms.unwrap_or(now_ms)).max(0);
        tx.execute(
            "INSERT INTO results (job_id, miner_id, submission, received_at_ms, latency_ms, verdict) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job_id, miner_id, submission.to_string(), now_ms, latency_ms, verdict.to_string()],
        )
        .map_err(|e| SequencerError::store("record", e))?;
        tx.execute("UPDATE jobs SET status = 'done' WHERE job_id = ?1", params![job_id])
            .map_err(|e| SequencerError::store("record", e))?;
        tx.execute("UPDATE miners SET jobs_done = jobs_done + 1 WHERE miner_id = ?1", params![miner_id])
            .map_err(|e| SequencerError::store("record", e))?;
        tx.commit().map_err(|e| SequencerError::store("record", e))?;
        Ok(Recorded::Stored { latency_ms })
    }

    /// Replaces a result's verdict (after an audit).
    pub fn set_verdict(&mut self, job_id: &str, verdict: &serde_json::Value) -> Result<()> {
        self.conn
            .execute("UPDATE results SET verdict = ?2 WHERE job_id = ?1", params![job_id, verdict.to_string()])
            .map_err(|e| SequencerError::store("set verdict", e))?;
        Ok(())
    }

    /// Counts a refused submission against a miner.
    pub fn count_failure(&mut self, miner_id: &str) -> Result<()> {
        self.conn
            .execute("UPDATE miners SET jobs_failed = jobs_failed + 1 WHERE miner_id = ?1", params![miner_id])
            .map_err(|e| SequencerError::store("count failure", e))?;
        Ok(())
    }

    /// Marks a result's points as credited to the ledger.
    pub fn mark_credited(&mut self, job_id: &str) -> Result<()> {
        self.conn
            .execute("UPDATE results SET credited = 1 WHERE job_id = ?1", params![job_id])
            .map_err(|e| SequencerError::store("mark credited", e))?;
        Ok(())
    }

    /// Results not yet credited (after a crash between storing and crediting).
    pub fn uncredited(&self) -> Result<Vec<ResultRow>> {
        self.results_where("credited = 0", [])
    }

    /// A job's result.
    pub fn result(&self, job_id: &str) -> Result<Option<ResultRow>> {
        let mut rows = self.results_where("job_id = ?1", [job_id])?;
        Ok(rows.pop())
    }

    /// Every result, newest first (at most `limit`).
    pub fn recent_results(&self, limit: usize) -> Result<Vec<ResultRow>> {
        self.results_where("1 = 1 ORDER BY received_at_ms DESC LIMIT ?1", [limit as i64])
    }

    fn results_where<P: rusqlite::Params>(&self, clause: &str, params: P) -> Result<Vec<ResultRow>> {
        let sql = format!(
            "SELECT job_id, miner_id, submission, received_at_ms, latency_ms, verdict, credited FROM results WHERE {clause}"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| SequencerError::store("results", e))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(|e| SequencerError::store("results", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (job_id, miner_id, submission, received_at_ms, latency_ms, verdict, credited) =
                row.map_err(|e| SequencerError::store("results", e))?;
            out.push(ResultRow {
                job_id,
                miner_id,
                submission: parse_json("submission", &submission)?,
                received_at_ms,
                latency_ms,
                verdict: parse_json("verdict", &verdict)?,
                credited: credited != 0,
            });
        }
        Ok(out)
    }

    /// Puts jobs whose miner did not submit within the timeout back in the queue (or fails
    /// them after `max_attempts`); counts the failure against that miner. Returns the ids.
    pub fn requeue_expired(&mut self, now_ms: i64, max_attempts: i64) -> Result<Vec<String>> {
        let tx = self.conn.transaction().map_err(|e| SequencerError::store("requeue", e))?;
        let expired: Vec<(String, Option<String>, i64, bool)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT j.job_id, j.miner_id, j.attempts, COALESCE(a.signed, 1) FROM jobs j
                     LEFT JOIN assignments a ON a.job_id = j.job_id AND a.miner_id = j.miner_id
                     WHERE j.status = 'assigned' AND j.assigned_at_ms + j.timeout_ms < ?1",
                )
                .map_err(|e| SequencerError::store("requeue", e))?;
            let rows = stmt
                .query_map(params![now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(|e| SequencerError::store("requeue", e))?;
            rows.collect::<std::result::Result<_, _>>().map_err(|e| SequencerError::store("requeue", e))?
        };
        for (job_id, miner_id, attempts, signed) in &expired {
            let status = if *attempts >= max_attempts { "failed" } else { "queued" };
            tx.execute("UPDATE jobs SET status = ?2 WHERE job_id = ?1", params![job_id, status])
                .map_err(|e| SequencerError::store("requeue", e))?;
            // Anyone can ask for a job under any miner id: only a signed request's expiry is
            // the wallet's own failure.
            if let Some(m) = miner_id.as_ref().filter(|_| *signed) {
                tx.execute("UPDATE miners SET jobs_failed = jobs_failed + 1 WHERE miner_id = ?1", params![m])
                    .map_err(|e| SequencerError::store("requeue", e))?;
            }
        }
        tx.commit().map_err(|e| SequencerError::store("requeue", e))?;
        Ok(expired.into_iter().map(|(id, ..)| id).collect())
    }

    /// Records a miner's request (and heartbeat, when it carries one).
    pub fn touch_miner(&mut self, miner_id: &str, model_id: &str, hardware: Option<&str>, version: Option<&str>, now_ms: i64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO miners (miner_id, hardware, version, model_id, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(miner_id) DO UPDATE SET
                    hardware = COALESCE(?2, hardware), version = COALESCE(?3, version),
                    model_id = ?4, last_seen_ms = ?5",
                params![miner_id, hardware, version, model_id, now_ms],
            )
            .map_err(|e| SequencerError::store("miner", e))?;
        Ok(())
    }

    /// A miner by id.
    pub fn miner(&self, miner_id: &str) -> Result<Option<MinerRow>> {
        Ok(self.miners_where("WHERE miner_id = ?1", [miner_id])?.pop())
    }

    /// Every miner, by id.
    pub fn miners(&self) -> Result<Vec<MinerRow>> {
        self.miners_where("ORDER BY miner_id", [])
    }

    /// The `limit` miners seen last, by id (what the portal shows: made-up ids cannot make
    /// the page grow without bound).
    pub fn recent_miners(&self, limit: usize) -> Result<Vec<MinerRow>> {
        self.miners_where(
            "WHERE miner_id IN (SELECT miner_id FROM miners ORDER BY last_seen_ms DESC LIMIT ?1) ORDER BY miner_id",
            [limit as i64],
        )
    }

    fn miners_where<P: rusqlite::Params>(&self, clause: &str, params: P) -> Result<Vec<MinerRow>> {
        let sql = format!(
            "SELECT miner_id, hardware, version, model_id, first_seen_ms, last_seen_ms, jobs_done, jobs_failed FROM miners {clause}"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| SequencerError::store("miners", e))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok(MinerRow {
                    miner_id: r.get(0)?,
                    hardware: r.get(1)?,
                    version: r.get(2)?,
                    model_id: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    last_seen_ms: r.get(5)?,
                    jobs_done: r.get(6)?,
                    jobs_failed: r.get(7)?,
                })
            })
            .map_err(|e| SequencerError::store("miners", e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| SequencerError::store("miners", e))
    }

    /// Queued jobs per model.
    pub fn queue_depths(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT model_id, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY model_id ORDER BY model_id")
            .map_err(|e| SequencerError::store("queue", e))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| SequencerError::store("queue", e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| SequencerError::store("queue", e))
    }

    /// Job counts per status.
    pub fn status_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
            .map_err(|e| SequencerError::store("status", e))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| SequencerError::store("status", e))?;
        rows.collect::<std::result::Result<_, _>>().map_err(|e| SequencerError::store("status", e))
    }
}

/// One hand-out of a job to a miner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// When, Unix ms.
    pub assigned_at_ms: i64,
    /// The requesting address.
    pub peer: String,
    /// Whether the request carried the bound identity's signature.
    pub signed: bool,
    /// The identity whose signature the request carried: only it may deliver the job.
    pub identity: Option<String>,
}

/// Who asks for a job, for [`JobStore::assign_next`].
#[derive(Clone, Copy, Debug)]
pub struct Taker<'a> {
    /// The requesting address.
    pub peer: &'a str,
    /// Whether the request carried the bound identity's signature.
    pub signed: bool,
    /// The identity whose signature the request carried (bound or not).
    pub identity: Option<&'a str>,
    /// How many jobs unsigned requests from one address may hold at once.
    pub max_unsigned_per_peer: i64,
}

/// How a reward wallet came to be bound to its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingSource {
    /// The operator's `--bind` (final).
    Operator,
    /// The reward wallet's own signature ([`heurist_protocol::BindIdentity`]).
    RewardSignature,
    /// The first identity whose submission was accepted (trust on first use).
    FirstUse,
}

impl BindingSource {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::RewardSignature => "reward-signature",
            Self::FirstUse => "first-use",
        }
    }
}

/// A stored binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The identity address.
    pub identity: String,
    /// [`BindingSource::as_str`].
    pub source: String,
    /// The signed binding's timestamp (0 for the others).
    pub signed_at: i64,
    /// Whether the wallet's miner signs jobs by name (and so must).
    pub strict: bool,
}

fn get_assignment(conn: &Connection, job_id: &str, miner_id: &str) -> Result<Option<Assignment>> {
    conn.query_row(
        "SELECT assigned_at_ms, peer, signed, identity FROM assignments WHERE job_id = ?1 AND miner_id = ?2",
        params![job_id, miner_id],
        |r| Ok(Assignment { assigned_at_ms: r.get(0)?, peer: r.get(1)?, signed: r.get(2)?, identity: r.get(3)? }),
    )
    .optional()
    .map_err(|e| SequencerError::store("assignment", e))
}

fn get_job(conn: &Connection, job_id: &str) -> Result<Option<JobRow>> {
    let row = conn
        .query_row(
            "SELECT job_id, model_id, kind, input, priority, timeout_ms, status, miner_id, assigned_at_ms, attempts, created_at_ms
             FROM jobs WHERE job_id = ?1",
            params![job_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                ))
            },
        )
        .optional()
        .map_err(|e| SequencerError::store("job", e))?;
    let Some((job_id, model_id, kind, input, priority, timeout_ms, status, miner_id, assigned_at_ms, attempts, created_at_ms)) = row
    else {
        return Ok(None);
    };
    Ok(Some(JobRow {
        job_id,
        model_id,
        kind,
        input: parse_json("job input", &input)?,
        priority,
        timeout_ms,
        status: JobStatus::parse(&status)?,
        miner_id,
        assigned_at_ms,
        attempts,
        created_at_ms,
    }))
}

fn parse_json(what: &'static str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|_| SequencerError::Corrupt { what, value: text.chars().take(80).collect() })
}
