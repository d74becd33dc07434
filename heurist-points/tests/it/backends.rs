//! A backend left out at build time is a typed error at run time, never a panic.

#[allow(unused_imports)]
use heurist_points::{open_ledger, PointsError};

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_without_the_feature_is_a_typed_error() {
    assert!(matches!(
        open_ledger("postgres://u:p@127.0.0.1/db"),
        Err(PointsError::BackendNotCompiled { backend: "postgres", .. })
    ));
}

#[cfg(not(feature = "sqlite"))]
#[test]
fn sqlite_without_the_feature_is_a_typed_error() {
    assert!(matches!(open_ledger("ledger.sqlite"), Err(PointsError::BackendNotCompiled { backend: "sqlite", .. })));
}

#[test]
fn a_location_that_is_neither_is_refused() {
    assert!(matches!(open_ledger("mysql://x"), Err(PointsError::LedgerLocation { .. })));
    assert!(matches!(open_ledger(""), Err(PointsError::LedgerLocation { .. })));
}
