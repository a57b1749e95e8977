//! Request tracing: W3C `traceparent` propagation with a waypoint span per request, exported
//! over OTLP/HTTP (JSON) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
//!
//! Each request gets a new span id; its parent is the incoming `traceparent`'s span (a new trace
//! when there is none or it is invalid, then `tracestate` is dropped as W3C requires). The
//! upstream request carries `traceparent` = our span. Spans are batched (up to 256, or 200 ms)
//! and posted to the collector by one task; a full queue drops spans (counted), it never slows
//! requests.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Source;
use crate::metrics::RequestRecord;

/// Environment names (OpenTelemetry's).
pub mod env {
    /// Base URL of an OTLP/HTTP collector (`/v1/traces` is appended).
    pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// Full URL of the traces endpoint (wins over the base URL).
    pub const OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    /// `service.name` of the spans (default `<gateway>.<namespace>`).
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    /// Percentage of new traces sampled (requests with a `traceparent` follow its flag).
    pub const TRACE_SAMPLING: &str = "TRACE_SAMPLING";
}

/// Spans exported (outcome: `sent`, `dropped`, `failed`).
pub const SPANS_TOTAL: &str = "waypoint_trace_spans_total";

const BATCH: usize = 256;
const BATCH_WAIT: Duration = Duration::from_millis(200);
const QUEUE: usize = 4096;

/// Tracing settings.
#[derive(Clone, Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TraceConfig {
    /// Collector traces URL (`http://host:port/v1/traces`); None = no export.
    pub endpoint: Option<String>,
    /// `service.name`.
    pub service_name: String,
    /// Percentage of new traces sampled.
    pub sampling: f64,
}

impl TraceConfig {
    /// Reads the settings; `default_service` names the spans when OTEL_SERVICE_NAME is unset.
    pub fn from_source(src: &dyn Source, default_service: &str) -> Result<Self, String> {
        let get = |k: &str| src.get(k).filter(|v| !v.trim().is_empty());
        let endpoint = get(env::OTLP_TRACES_ENDPOINT).or_else(|| {
            get(env::OTLP_ENDPOINT).map(|b| format!("{}/v1/traces", b.trim_end_matches('/')))
        });
        if let Some(e) = &endpoint {
            let ok = e.starts_with("http://") && e.parse::<http::Uri>().is_ok();
            if !ok {
                return Err(format!(
                    "{e:?} is not an http:// URL (OTLP/HTTP; https collectors are not supported)"
                ));
            }
        }
        let sampling = match get(env::TRACE_SAMPLING) {
            None => 100.0,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| {
                    format!("{}={v:?} is not a percentage 0-100", env::TRACE_SAMPLING)
                })?,
        };
        Ok(TraceConfig {
            endpoint,
            service_name: get(env::SERVICE_NAME).unwrap_or_else(|| default_service.to_string()),
            sampling,
        })
    }
}

struct Exporter {
    tx: mpsc::Sender<Value>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();
static SAMPLING: OnceLock<f64> = OnceLock::new();

/// Starts the exporter task (when an endpoint is configured). Call once, inside the runtime.
pub fn init(cfg: &TraceConfig) {
    let _ = SAMPLING.set(cfg.sampling);
    metrics::describe_counter!(
        SPANS_TOTAL,
        "Trace spans, by outcome (sent, dropped, failed)"
    );
    let Some(endpoint) = cfg.endpoint.clone() else {
        return;
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    if EXPORTER.set(Exporter { tx }).is_ok() {
        info!(%endpoint, "exporting trace spans over OTLP/HTTP");
        tokio::spawn(run_exporter(endpoint, cfg.service_name.clone(), rx));
    }
}

async fn run_exporter(endpoint: String, service: String, mut rx: mpsc::Receiver<Value>) {
    while let Some(first) = rx.recv().await {
        let mut spans = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while spans.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => spans.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = spans.len() as u64;
        let body = json!({"resourceSpans": [{
            "resource": {"attributes": [kv("service.name", &service)]},
            "scopeSpans": [{"scope": {"name": "ambient-rs-waypoint", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }]});
        match post(&endpoint, body.to_string()).await {
            Ok(()) => metrics::counter!(SPANS_TOTAL, "outcome" => "sent").increment(n),
            Err(e) => {
                warn!(error = %e, spans = n, "OTLP export failed; spans dropped");
                metrics::counter!(SPANS_TOTAL, "outcome" => "failed").increment(n);
            }
        }
    }
}

async fn post(endpoint: &str, body: String) -> Result<(), String> {
    let u: http::Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
    let host = u
        .host()
        .ok_or("no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = u.port_u16().unwrap_or(80);
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::post(u.path_and_query().map_or("/v1/traces", |p| p.as_str()))
            .header(http::header::HOST, u.authority().map_or("", |a| a.as_str()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("collector answered {}", resp.status()));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "collector did not answer within 10s".to_string())?
}

fn kv(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The waypoint's span for one request.
#[derive(Clone, Debug, Default)]
pub struct RequestSpan {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Our span id.
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// Sampled flag.
    pub sampled: bool,
    start_nanos: u64,
}

/// Parses `traceparent` (version 00, or a higher version's first four fields).
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut it = v.trim().split('-');
    let version = it.next()?;
    let (t, s, f) = (it.next()?, it.next()?, it.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && it.next().is_some()) {
        return None;
    }
    let trace: [u8; 16] = unhex(t)?;
    let span: [u8; 8] = unhex(s)?;
    let flags: [u8; 1] = unhex(f)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags[0]))
}

impl RequestSpan {
    /// Starts the span for a request with `headers`, and rewrites its `traceparent` (and drops
    /// `tracestate` when the incoming context was unusable) for the upstream request.
    pub fn start(headers: &mut HeaderMap) -> Self {
        let incoming = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let mut span_id = [0u8; 8];
        while span_id == [0; 8] {
            span_id = rand::random();
        }
        let span = match incoming {
            Some((trace_id, parent, flags)) => RequestSpan {
                trace_id,
                span_id,
                parent: Some(parent),
                sampled: flags & 1 == 1,
                start_nanos: now_nanos(),
            },
            None => {
                headers.remove("tracestate");
                let mut trace_id = [0u8; 16];
                while trace_id == [0; 16] {
                    trace_id = rand::random();
                }
                let pct = SAMPLING.get().copied().unwrap_or(100.0);
                RequestSpan {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: rand::random::<f64>() * 100.0 < pct,
                    start_nanos: now_nanos(),
                }
            }
        };
        if let Ok(v) = HeaderValue::from_str(&span.traceparent()) {
            headers.insert("traceparent", v);
        }
        span
    }

    /// `00-<trace>-<our span>-<flags>`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Trace id in hex (access log).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Exports the span (when sampled and an exporter runs).
    pub fn finish(&self, rec: &RequestRecord) {
        if !self.sampled {
            return;
        }
        let Some(exp) = EXPORTER.get() else { return };
        let mut attrs = vec![
            kv("http.method", &rec.method),
            kv("http.url", &format!("http://{}{}", rec.authority, rec.path)),
            kv("http.status_code", &rec.response_code.to_string()),
            kv("http.protocol", rec.request_protocol),
            kv("response_flags", rec.response_flags),
            kv("upstream_cluster", &rec.destination_service),
            kv("upstream_address", &rec.upstream),
            kv("downstream_principal", &rec.source.principal),
            kv(
                "istio.canonical_service",
                &rec.destination_canonical_service,
            ),
            kv("istio.namespace", &rec.destination_service_namespace),
            kv("component", "proxy"),
        ];
        if !rec.grpc_response_status.is_empty() {
            attrs.push(kv("grpc.status_code", &rec.grpc_response_status));
        }
        let end = self.start_nanos + rec.duration.as_nanos() as u64;
        let mut span = json!({
            "traceId": hex(&self.trace_id),
            "spanId": hex(&self.span_id),
            "name": format!("{}:{}", rec.destination_service, rec.path),
            "kind": 2,
            "startTimeUnixNano": self.start_nanos.to_string(),
            "endTimeUnixNano": end.max(self.start_nanos).to_string(),
            "attributes": attrs,
            "status": {"code": if rec.response_code >= 500 { 2 } else { 0 }},
        });
        if let Some(p) = &self.parent {
            span["parentSpanId"] = Value::String(hex(p));
        }
        if exp.tx.try_send(span).is_err() {
            debug!("trace export queue full; span dropped");
            metrics::counter!(SPANS_TOTAL, "outcome" => "dropped").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn traceparent_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let s = RequestSpan::start(&mut h);
        assert_eq!(s.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            s.parent.map(|p| hex(&p)).as_deref(),
            Some("b7ad6b7169203331")
        );
        assert!(s.sampled);
        let out = h["traceparent"].to_str().unwrap();
        assert!(out.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(!out.contains("b7ad6b7169203331"));
        assert!(out.ends_with("-01"));
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            h.insert("tracestate", HeaderValue::from_static("a=b"));
            let s = RequestSpan::start(&mut h);
            assert!(s.parent.is_none(), "{bad}");
            assert!(h.get("tracestate").is_none(), "{bad}");
            assert!(parse_traceparent(h["traceparent"].to_str().unwrap()).is_some());
        }
    }

    #[test]
    fn config_from_env_names() {
        let m: HashMap<String, String> = [(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            "http://127.0.0.1:4318/".to_string(),
        )]
        .into();
        let c = TraceConfig::from_source(&m, "waypoint.app").unwrap();
        assert_eq!(
            c.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(c.service_name, "waypoint.app");
        let m: HashMap<String, String> = [("TRACE_SAMPLING".to_string(), "250".to_string())].into();
        assert!(TraceConfig::from_source(&m, "x").is_err());
    }
}
