//! The small HTTP endpoints: admin on localhost:15000 (`/config_dump`, `/debug/tap`,
//! `/quitquitquit`),
//! Prometheus metrics on 15020 (`/metrics`, `/stats/prometheus`) and readiness on 15021
//! (`/healthz/ready`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use mesh_admin::{json, prometheus, text};
pub use mesh_admin::{serve, Body};

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(mesh_admin::bind(addr).await?)
}

/// Everything the admin endpoints read.
pub struct AdminState {
    pub app: Arc<crate::app::Shared>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Process metrics (`process_resident_memory_bytes`, CPU, fds), refreshed on each scrape.
    pub process: metrics_process::Collector,
}

/// Admin routes (localhost only).
pub fn admin(
    state: Arc<AdminState>,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| {
        match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => json(state.app.config_dump()),
        (&Method::GET, "/debug/tap") => mesh_admin::tap(crate::tap::hub(), req.uri().query()),
        (&Method::POST, "/quitquitquit") => {
            state.app.shutdown.cancel();
            text(StatusCode::OK, "shutting down\n")
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "ztunnel admin: /config_dump, /debug/tap?namespace=&workload=&limit=&duration=, POST /quitquitquit\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
    }
}

/// Metrics routes.
pub fn stats(
    state: Arc<AdminState>,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            state.process.collect();
            prometheus(state.metrics.render())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Readiness route: 200 `ready` once nothing is pending, else 500 (as Istio) naming what is.
pub fn readiness(
    state: Arc<AdminState>,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/healthz/ready" => {
            let pending = state.app.pending();
            if pending.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("not ready: {}\n", pending.join(", ")),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
