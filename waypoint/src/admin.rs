//! The small HTTP endpoints, on Istio's waypoint ports: Prometheus stats on 15020
//! (`/stats/prometheus`, also `/metrics`), readiness on 15021 (`/healthz/ready`) and a
//! localhost admin port (`/config_dump`, `/debug/tap`). The serve loop is `mesh-admin`'s.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
pub use mesh_admin::{bind, serve, Body};
use mesh_admin::{json, prometheus, text};

/// Stats routes. Process metrics (`process_resident_memory_bytes`, CPU, fds) are refreshed on
/// each scrape, as ztunnel does.
pub fn stats(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    let process = std::sync::Arc::new(metrics_process::Collector::default());
    process.describe();
    move |req| match req.uri().path() {
        "/stats/prometheus" | "/metrics" => {
            process.collect();
            prometheus(handle.render())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Readiness route: 200 once nothing is pending, else 503 naming what is (Envoy answers 503).
pub fn readiness(
    app: Arc<crate::app::Shared>,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/healthz/ready" => {
            let pending = app.pending();
            if pending.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", pending.join(", ")),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Admin routes (localhost).
pub fn admin(
    app: Arc<crate::app::Shared>,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |req| match req.uri().path() {
        "/config_dump" => json(app.config_dump()),
        "/debug/tap" => mesh_admin::tap(crate::tap::hub(), req.uri().query()),
        _ => text(
            StatusCode::NOT_FOUND,
            "waypoint admin: /config_dump, /debug/tap?namespace=&workload=&limit=&duration=\n",
        ),
    }
}
