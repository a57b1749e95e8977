//! Monitoring listener (15014): `/metrics`, `/ready`, `/debug/connections`, `/debug/config`,
//! `/debug/config_dump?proxyID=...`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::source::ConfigSnapshot;
use crate::xds::registry::ClientRegistry;

/// Errors setting up metrics.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    /// The Prometheus recorder could not be built or installed.
    #[error("cannot install the Prometheus metrics recorder: {0}")]
    Recorder(String),
}

/// Installs the process-wide Prometheus recorder once (later calls return the same handle, so
/// several in-process instances in tests share it) and describes every module's metrics.
pub fn install_recorder() -> Result<PrometheusHandle, MonitoringError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let err = |e: metrics_exporter_prometheus::BuildError| MonitoringError::Recorder(e.to_string());
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::xds::PILOT_XDS_PUSH_TIME.into()),
            crate::xds::PUSH_TIME_BUCKETS,
        )
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Full(crate::xds::PILOT_XDS_CONFIG_SIZE_BYTES.into()),
            crate::xds::CONFIG_SIZE_BUCKETS,
        )
        .map_err(err)?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // If another thread raced us, keep whichever handle belongs to the installed recorder.
    let handle = HANDLE.get_or_init(|| {
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    });
    crate::source::describe_metrics();
    crate::model::describe_metrics();
    crate::xds::describe_metrics();
    crate::ca::describe_metrics();
    // Istio's build gauge, so version panels and alerts written for istiod work unchanged.
    metrics::gauge!("istio_build", "component" => "pilot", "tag" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    Ok(handle.clone())
}

/// Process metrics (`process_resident_memory_bytes`, CPU, fds), refreshed on each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    })
}

/// What the monitoring endpoints read.
#[derive(Clone)]
pub struct MonitoringState {
    /// Prometheus handle for /metrics.
    pub metrics: PrometheusHandle,
    /// Set once config is loaded and every listener is bound.
    pub ready: Arc<AtomicBool>,
    /// Connected xDS clients.
    pub clients: Arc<ClientRegistry>,
    /// Current config (for /debug/config).
    pub config: watch::Receiver<Arc<ConfigSnapshot>>,
}

/// Serves HTTP/1.1 on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: MonitoringState,
    mut shutdown: watch::Receiver<bool>,
) {
    // Histograms are only summarised on upkeep; keep them fresh between scrapes.
    let upkeep = {
        let h = state.metrics.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                t.tick().await;
                h.run_upkeep();
            }
        })
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "monitoring accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req)) }
        });
        tokio::spawn(
            async move {
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "monitoring connection error");
                }
            }
            .instrument(tracing::debug_span!("monitoring", peer = %peer)),
        );
    }
    upkeep.abort();
}

fn handle(state: &MonitoringState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            process_collector().collect();
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/ready" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
            }
        }
        "/debug/connections" => json(&state.clients.list()),
        "/debug/config" => json(&*state.config.borrow().clone()),
        "/debug/gateways" => json(&crate::model::gateway_status::waypoint_statuses(
            &state.config.borrow().clone(),
        )),
        "/debug/routes" => json(&crate::model::gateway_status::route::route_statuses(
            &state.config.borrow().clone(),
        )),
        "/debug/config_dump" => {
            let proxy_id = req.uri().query().and_then(|q| query_param(q, "proxyID"));
            match crate::xds::debug::config_dump(&state.clients, proxy_id.as_deref()) {
                Ok(dump) => json(&dump),
                Err(e @ crate::xds::debug::DumpError::MissingProxyId(_)) => {
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
                Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
            }
        }
        "/" => text(
            StatusCode::OK,
            "/metrics\n/ready\n/debug/connections\n/debug/config\n/debug/gateways\n/debug/routes\n/debug/config_dump?proxyID=<node name or node id>\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; try /\n".into()),
    }
}

/// The percent-decoded value of `key` in a query string (`+` is a space, as forms send it).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(body) => {
            let mut r = text(StatusCode::OK, body + "\n");
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode JSON: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        let q = "a=1&proxyID=ztunnel%7E0.0.0.0%7Eztunnel-node1.istio-system&x";
        assert_eq!(
            query_param(q, "proxyID").as_deref(),
            Some("ztunnel~0.0.0.0~ztunnel-node1.istio-system")
        );
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
    }
}
