//! waypoint binary: logging, configuration, runtime; everything else is in [`waypoint::app`].

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // stdout carries the JSON access log; diagnostics go to stderr.
        .with_writer(std::io::stderr)
        .init();
    let cfg = waypoint::config::Config::from_source(&waypoint::config::ProcessEnv)
        .context("invalid configuration")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?
        .block_on(waypoint::app::run(cfg))
}
