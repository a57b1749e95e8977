//! Golden-file assertions for rendered output: `testdata/golden/<name>`. Run the tests with
//! `UPDATE_GOLDEN=1` to rewrite the files after an intended change, then review the diff.

use std::path::PathBuf;

/// The fixture dump (`testdata/config_dump.json`).
pub const CONFIG_DUMP: &str = include_str!("../testdata/config_dump.json");
/// A dump whose only certificate and root expired in 2020/2021.
pub const CONFIG_DUMP_EXPIRED: &str = include_str!("../testdata/config_dump_expired.json");

/// Fails unless `actual` equals the golden file `name`.
pub fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// 2026-01-01T12:00:00Z: inside the fixture leaf's validity.
pub fn fixture_now() -> time::OffsetDateTime {
    time::macros::datetime!(2026-01-01 12:00:00 UTC)
}
