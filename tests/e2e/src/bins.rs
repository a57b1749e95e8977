//! Locating the binaries under test.

use std::path::PathBuf;

use anyhow::Context;

/// Env var naming the directory that holds `istiod-lite` and `ztunnel`.
pub const MESH_BIN_DIR: &str = "MESH_BIN_DIR";

/// Directory of the binaries: `$MESH_BIN_DIR`, else the profile directory of the running test
/// executable (`target/debug/deps/<test>` -> `target/debug`), so a custom `CARGO_TARGET_DIR`
/// works without configuration.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os(MESH_BIN_DIR).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe
        .parent()
        .context("test executable has no parent directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of binary `name`, with an error that says how to build it.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.is_file() {
        anyhow::bail!(
            "{} not found: build the binaries first (`cargo build --bins`, or `make test`), or set {MESH_BIN_DIR}",
            p.display()
        );
    }
    Ok(p)
}
