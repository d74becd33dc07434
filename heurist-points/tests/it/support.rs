//! Fresh ledgers for the shared suite: an SQLite file in a temporary directory, and a
//! PostgreSQL schema of its own on the server named by `HEURIST_TEST_POSTGRES_URL`.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};

use heurist_points::ledger::LedgerStore;

/// A ledger under test, a way to open it again, and what keeps its storage alive.
pub(crate) struct Backend {
    pub(crate) ledger: Box<dyn LedgerStore>,
    /// Where the ledger lives, for [`open_spec`] in another process.
    pub(crate) spec: String,
    reopen: Box<dyn Fn() -> Box<dyn LedgerStore>>,
    _guard: Box<dyn Any>,
}

impl Backend {
    /// A second, independent handle on the same ledger (a restart, or another process).
    pub(crate) fn reopen(&self) -> Box<dyn LedgerStore> {
        (self.reopen)()
    }
}

/// An SQLite ledger in a fresh file.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite() -> Option<Backend> {
    use heurist_points::ledger::SqliteLedger;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    let ledger = Box::new(SqliteLedger::open(&path).unwrap());
    let reopen = Box::new(move || Box::new(SqliteLedger::open(&path).unwrap()) as Box<dyn LedgerStore>);
    let spec = format!("sqlite\n{}", dir.path().join("ledger.sqlite").display());
    Some(Backend { ledger, spec, reopen, _guard: Box::new(dir) })
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
/// The PostgreSQL server's URL. Unset: under CI (`CI=true`) a failure, so that the
/// PostgreSQL half of the suite can never be skipped silently; elsewhere a skip.
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var("HEURIST_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("HEURIST_TEST_POSTGRES_URL is unset under CI; .ci/run must start PostgreSQL and set it");
            }
            eprintln!("skipped: set HEURIST_TEST_POSTGRES_URL=postgres://... to run the PostgreSQL ledger tests");
            None
        }
    }
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
/// A schema name no other test, run or process uses.
pub(crate) fn unique_schema(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("heurist_test_{tag}_{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Drops a test schema when the test ends, passed or failed.
#[cfg(feature = "postgres")]
pub(crate) struct SchemaGuard {
    pub(crate) url: String,
    pub(crate) schema: String,
}

#[cfg(feature = "postgres")]
impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let _ = heurist_points::ledger::PostgresLedger::drop_schema(&self.url, &self.schema);
    }
}

/// A PostgreSQL ledger in a fresh schema, or `None` (skip) outside CI without a server.
#[cfg(feature = "postgres")]
pub(crate) fn postgres() -> Option<Backend> {
    use heurist_points::ledger::PostgresLedger;
    let url = postgres_url()?;
    let schema = unique_schema("suite");
    let ledger = Box::new(PostgresLedger::connect_in_schema(&url, &schema).unwrap());
    let (u, s) = (url.clone(), schema.clone());
    let spec = format!("postgres\n{url}\n{schema}");
    let reopen = Box::new(move || Box::new(PostgresLedger::connect_in_schema(&u, &s).unwrap()) as Box<dyn LedgerStore>);
    Some(Backend { ledger, spec, reopen, _guard: Box::new(SchemaGuard { url, schema }) })
}

/// Opens the ledger a [`Backend::spec`] names (in a child process).
pub(crate) fn open_spec(spec: &str) -> Box<dyn LedgerStore> {
    let parts: Vec<&str> = spec.split('\n').collect();
    match parts.as_slice() {
        #[cfg(feature = "sqlite")]
        ["sqlite", path] => Box::new(heurist_points::ledger::SqliteLedger::open(path).unwrap()),
        #[cfg(feature = "postgres")]
        ["postgres", url, schema] => Box::new(heurist_points::ledger::PostgresLedger::connect_in_schema(url, schema).unwrap()),
        _ => panic!("bad ledger spec {spec:?}"),
    }
}
