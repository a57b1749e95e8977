//! The small HTTP endpoints: admin on localhost:15000 (`/config_dump`, `/debug/tap`,
//! `/quitquitquit`),
//! Prometheus metrics on 15020 (`/metrics`, `/stats/prometheus`) and readiness on 15021
//! (`/healthz/ready`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

fn json(body: String) -> Response<Body> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
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
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
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
        (&Method::GET, "/debug/tap") => match crate::tap::Filter::from_query(req.uri().query()) {
            Ok(f) => {
                use futures_util::StreamExt;
                let frames = crate::tap::stream(f)
                    .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
                let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-ndjson"),
                );
                r
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
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
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
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
