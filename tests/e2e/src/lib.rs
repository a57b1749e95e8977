//! End-to-end harness for ambient-rs: runs the real `istiod-lite` and `ztunnel` binaries on
//! loopback and drives traffic through them.
//!
//! - [`Mesh`] writes a config directory from a [`Topology`], starts istiod-lite (own ports, waits
//!   for `/ready`), fetches node tokens, starts one ztunnel per node (own admin/stats/readiness/
//!   SOCKS5 addresses on `127.0.0.x`, waits for `/healthz/ready`) and kills everything on drop.
//!   Every process's output goes to a file that is printed when a test fails.
//! - Pods are `127.0.1.x` (explicit mode: apps bind their pod IP), service VIPs `127.0.2.x`,
//!   destinations outside the mesh `127.0.3.x`.
//! - Helpers: [`socks5`] client, [`apps`] (echo/bulk servers on a pod IP), [`prom`] (scrape and
//!   parse labelled Prometheus series), [`http`] (tiny HTTP/1.1 GET), [`ca`] (the CA API as a
//!   ztunnel calls it), [`netns`] (network namespaces for the root-only capture test), [`local`]
//!   (drives `meshctl local` clusters and snapshots the root network namespace), [`golden`]
//!   (golden files of command output: the normaliser, `UPDATE_GOLDEN=1`, a line diff).
//!
//! Binaries are found next to the test executable (`target/debug/{istiod-lite,ztunnel}`), or in
//! `$MESH_BIN_DIR`. Build them first: `cargo build --bins` (`make test` does).

pub mod apps;
pub mod bins;
pub mod ca;
pub mod golden;
pub mod http;
pub mod local;
pub mod mesh;
pub mod netns;
pub mod process;
pub mod prom;
pub mod socks5;
pub mod topology;
pub mod waypoint;

pub use mesh::{Mesh, MeshOptions, Ztunnel, ZtunnelOverrides};
pub use topology::{Pod, Service, Topology};

use std::future::Future;
use std::time::{Duration, Instant};

/// Client identity of the demo topology.
pub const CLIENT_SPIFFE: &str = "spiffe://cluster.local/ns/demo-a/sa/client";
/// Server identity of the demo topology.
pub const SERVER_SPIFFE: &str = "spiffe://cluster.local/ns/demo-b/sa/server";

/// Polls `check` every `every` until it returns `Ok(Some(v))`, or fails after `timeout` with the
/// last error (or `what`). Used wherever a signal is only observable by asking (readiness,
/// metrics, logs); never a bare sleep.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() >= timeout {
            let why = last
                .map(|e| format!(": last error: {e:#}"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(every).await;
    }
}

/// True when running under CI (`CI=true`), where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Skips the current test with `reason` (prints it and returns true), unless in CI, where it
/// panics: CI installs every prerequisite, so a skip there would hide a broken setup.
pub fn skip(reason: &str) -> bool {
    if in_ci() {
        panic!("CI=true but {reason}");
    }
    println!("skipping: {reason}");
    eprintln!("skipping: {reason}");
    true
}
