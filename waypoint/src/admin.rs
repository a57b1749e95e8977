//! The small HTTP endpoints, on Istio's waypoint ports: Prometheus stats on 15020
//! (`/stats/prometheus`, also `/metrics`), readiness on 15021 (`/healthz/ready`) and a
//! localhost admin port (`/config_dump`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves `handler` on `listener` until `shutdown`.
pub async fn serve<F>(
    listener: TcpListener,
    name: &'static str,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    info!(server = name, addr = ?listener.local_addr().ok(), "listening");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { warn!(server = name, error = %e, "accept failed"); continue; }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

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
            let mut r = text(StatusCode::OK, handle.render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
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
        "/config_dump" => {
            let mut r = text(StatusCode::OK, app.config_dump());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "waypoint admin: /config_dump\n"),
    }
}
