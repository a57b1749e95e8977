//! Istio's request metrics with `reporter="waypoint"` and Istio's label set, and one JSON
//! access-log line per request on stdout.
//!
//! Labels are built once per request, when it completes (the response body ended or was
//! dropped), so the duration and byte counts cover the whole exchange.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::{Arc, LazyLock, PoisonError};
use std::time::Duration;

use metrics::Label;
use serde::Serialize;

/// Requests, by Istio's label set.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// Request duration in milliseconds (histogram).
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// Request body bytes (histogram).
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// Response body bytes (histogram).
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
/// HBONE streams the waypoint could not serve (unknown authority, bad method), by reason.
pub const REJECTED_STREAMS: &str = "waypoint_rejected_streams_total";
/// Retries sent, and retries the budget refused.
pub const RETRIES_TOTAL: &str = "waypoint_retries_total";

/// Istio's duration buckets (ms).
const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes).
const BYTES_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

/// Installs the Prometheus recorder; returns the handle that renders `/stats/prometheus`.
pub fn install(
) -> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError>
{
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REQUEST_BYTES.into()), BYTES_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RESPONSE_BYTES.into()), BYTES_BUCKETS)?
        .install_recorder()?;
    metrics::describe_counter!(REQUESTS_TOTAL, "Requests handled by the waypoint");
    metrics::describe_histogram!(REQUEST_DURATION, "Request duration in milliseconds");
    metrics::describe_counter!(
        REJECTED_STREAMS,
        "HBONE streams the waypoint refused, by reason"
    );
    metrics::describe_counter!(
        RETRIES_TOTAL,
        "Retries, by outcome (sent, budget_exhausted)"
    );
    crate::security::describe_metrics();
    metrics::gauge!("istio_build", "component" => "waypoint", "tag" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    Ok(handle)
}

/// Who called (from the peer certificate and, when present, the HBONE `baggage`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Source {
    /// SPIFFE id of the mTLS peer.
    pub principal: String,
    /// Workload name (baggage `k8s.*.name`).
    pub workload: String,
    /// Namespace (baggage, else the identity's).
    pub namespace: String,
    /// Canonical service (baggage `service.name`).
    pub canonical_service: String,
    /// Canonical revision (baggage `service.version`).
    pub canonical_revision: String,
    /// Cluster (baggage `k8s.cluster.name`).
    pub cluster: String,
}

impl Source {
    /// From the peer identity and an optional `baggage` header.
    pub fn new(principal: &mesh_identity::spiffe::Identity, baggage: Option<&str>) -> Self {
        let mut s = Source {
            principal: principal.to_string(),
            namespace: principal.namespace.clone(),
            ..Default::default()
        };
        for kv in baggage.unwrap_or_default().split(',') {
            let Some((k, v)) = kv.trim().split_once('=') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "k8s.namespace.name" => s.namespace = v,
                "k8s.cluster.name" => s.cluster = v,
                "service.name" => s.canonical_service = v,
                "service.version" => s.canonical_revision = v,
                k if k.starts_with("k8s.") && k.ends_with(".name") => s.workload = v,
                _ => {}
            }
        }
        s
    }
}

/// Everything known about one request when it completes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestRecord {
    /// Caller.
    pub source: Source,
    /// Service hostname.
    pub destination_service: String,
    /// Service name.
    pub destination_service_name: String,
    /// Service namespace.
    pub destination_service_namespace: String,
    /// Backend workload.
    pub destination_workload: String,
    /// Backend namespace.
    pub destination_workload_namespace: String,
    /// Backend identity.
    pub destination_principal: String,
    /// Backend canonical service.
    pub destination_canonical_service: String,
    /// Backend canonical revision.
    pub destination_canonical_revision: String,
    /// Backend cluster.
    pub destination_cluster: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// Status sent to the client.
    pub response_code: u16,
    /// `grpc-status` of the response, when gRPC.
    pub grpc_response_status: String,
    /// Envoy response flags (`-`, `NR`, `UH`, `UF`, `UT`, `URX`, `DC`, ...).
    pub response_flags: &'static str,
    /// Method.
    pub method: String,
    /// Path (as received).
    pub path: String,
    /// Host / :authority.
    pub authority: String,
    /// Route that handled it.
    pub route: String,
    /// Upstream address.
    pub upstream: String,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Duration.
    #[serde(skip)]
    pub duration: Duration,
    /// AUDIT AuthorizationPolicies that matched (access log).
    pub audit: Vec<String>,
    /// The policy that denied the request (403), when one did.
    pub authz_policy: Option<String>,
    /// JWT `iss/sub`, when a token was validated.
    pub request_principal: Option<String>,
    /// The waypoint's trace span.
    #[serde(skip)]
    pub span: Option<crate::trace::RequestSpan>,
}

/// Istio's request label names, in Istio's order; [`RequestRecord::label_values`] follows it.
const LABEL_NAMES: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

/// The four request metrics of one label set.
struct Handles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
    request_bytes: metrics::Histogram,
    response_bytes: metrics::Histogram,
}

/// A label set's values and its handles.
type CachedSet = (Box<[Box<str>]>, Arc<Handles>);

/// Handles by label set, so a request costs one hash and one compare instead of building and
/// registering four 25-label keys (that was a third of the waypoint's CPU under load). It grows
/// with the label sets seen, exactly as the recorder's own registry does.
#[derive(Default)]
struct HandleCache {
    by_hash: std::sync::RwLock<HashMap<u64, Vec<CachedSet>>>,
}

impl HandleCache {
    fn get(&self, values: &[&str; 25]) -> Arc<Handles> {
        let mut h = std::hash::DefaultHasher::new();
        values.hash(&mut h);
        let hash = h.finish();
        let same = |k: &[Box<str>]| k.iter().map(|b| &**b).eq(values.iter().copied());
        let read = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, found)) = read
            .get(&hash)
            .and_then(|v| v.iter().find(|(k, _)| same(k)))
        {
            return found.clone();
        }
        drop(read);
        let labels: Vec<Label> = LABEL_NAMES
            .iter()
            .zip(values.iter())
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        let handles = Arc::new(Handles {
            requests: metrics::counter!(REQUESTS_TOTAL, labels.clone()),
            duration: metrics::histogram!(REQUEST_DURATION, labels.clone()),
            request_bytes: metrics::histogram!(REQUEST_BYTES, labels.clone()),
            response_bytes: metrics::histogram!(RESPONSE_BYTES, labels),
        });
        let mut write = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        let bucket = write.entry(hash).or_default();
        if let Some((_, found)) = bucket.iter().find(|(k, _)| same(k)) {
            return found.clone();
        }
        let key = values.iter().map(|v| Box::from(*v)).collect();
        bucket.push((key, handles.clone()));
        handles
    }
}

static HANDLES: LazyLock<HandleCache> = LazyLock::new(HandleCache::default);

/// Where access-log lines go: a writer thread that gathers the lines of up to [`LOG_LINGER`]
/// (or [`LOG_BATCH`] bytes) and writes them with one call, so a busy waypoint makes a few
/// hundred writes a second instead of one per request (Envoy buffers its file access logs the
/// same way, for up to a second). A full queue makes the request wait rather than drop its line.
const LOG_LINGER: Duration = Duration::from_millis(2);
const LOG_BATCH: usize = 64 * 1024;

struct AccessLog {
    tx: std::sync::mpsc::SyncSender<LogMsg>,
}

enum LogMsg {
    Line(Vec<u8>),
    /// Answered once every line sent before it is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl AccessLog {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<LogMsg>(8192);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 * 1024);
                let mut flushed = Vec::new();
                let mut next = rx.recv().ok();
                let mut behind = false;
                while let Some(first) = next.take() {
                    batch.clear();
                    // Sleep instead of waiting on the queue: a thread waiting on it would be
                    // woken by every line, which is the cost this thread exists to avoid. No
                    // sleep while catching up after a full batch.
                    if !behind {
                        std::thread::sleep(LOG_LINGER);
                    }
                    let mut msg = Some(first);
                    while let Some(m) = msg.take() {
                        match m {
                            LogMsg::Line(l) => batch.extend_from_slice(&l),
                            LogMsg::Flush(done) => flushed.push(done),
                        }
                        if batch.len() < LOG_BATCH {
                            msg = rx.try_recv().ok();
                        }
                    }
                    behind = batch.len() >= LOG_BATCH;
                    let mut out = std::io::stdout().lock();
                    // A closed stdout has nowhere to report to; the lines are dropped with it.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    drop(out);
                    for done in flushed.drain(..) {
                        let _ = done.send(());
                    }
                    next = rx.recv().ok();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log writer; access log lines are written inline");
        }
        AccessLog { tx }
    }

    fn write(&self, line: Vec<u8>) {
        if let Err(std::sync::mpsc::SendError(LogMsg::Line(line))) =
            self.tx.send(LogMsg::Line(line))
        {
            // The writer thread is gone: write inline so no line is lost.
            let _ = std::io::stdout().lock().write_all(&line);
        }
    }
}

/// Waits (up to `timeout`) until every access-log line logged so far is written; called at
/// shutdown so the last requests' lines are not lost with the process.
pub fn flush_access_log(timeout: Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    if ACCESS_LOG.tx.send(LogMsg::Flush(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(timeout);
    }
}

static ACCESS_LOG: LazyLock<AccessLog> = LazyLock::new(AccessLog::start);

/// One access-log line; fields borrowed from the record, optional ones left out when empty.
#[derive(Serialize)]
struct AccessLine<'a> {
    time: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    protocol: &'a str,
    response_code: u16,
    grpc_status: &'a str,
    response_flags: &'a str,
    route: &'a str,
    upstream: &'a str,
    attempts: u32,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: u64,
    src_principal: &'a str,
    dst_service: &'a str,
    dst_workload: &'a str,
    dst_principal: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audit_policies: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    rbac_denied_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

impl RequestRecord {
    /// Istio's label values, in [`LABEL_NAMES`] order (`code` is the response code as text).
    fn label_values<'a>(&'a self, code: &'a str) -> [&'a str; 25] {
        let s = &self.source;
        [
            "waypoint",
            or_unknown(&s.workload),
            or_unknown(&s.canonical_service),
            or_unknown(&s.canonical_revision),
            or_unknown(&s.namespace),
            or_unknown(&s.principal),
            or_unknown(&s.canonical_service),
            or_unknown(&s.canonical_revision),
            or_unknown(&s.cluster),
            or_unknown(&self.destination_service),
            or_unknown(&self.destination_service_namespace),
            or_unknown(&self.destination_service_name),
            or_unknown(&self.destination_workload),
            or_unknown(&self.destination_canonical_service),
            or_unknown(&self.destination_canonical_revision),
            or_unknown(&self.destination_workload_namespace),
            or_unknown(&self.destination_principal),
            or_unknown(&self.destination_canonical_service),
            or_unknown(&self.destination_canonical_revision),
            or_unknown(&self.destination_cluster),
            self.request_protocol,
            code,
            &self.grpc_response_status,
            self.response_flags,
            "mutual_tls",
        ]
    }

    /// Istio's label set, in Istio's order.
    pub fn labels(&self) -> Vec<Label> {
        let code = self.response_code.to_string();
        LABEL_NAMES
            .iter()
            .zip(self.label_values(&code))
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect()
    }

    /// Records the metrics and writes the access-log line.
    pub fn finish(&self) {
        let code = self.response_code.to_string();
        let h = HANDLES.get(&self.label_values(&code));
        h.requests.increment(1);
        h.duration.record(self.duration.as_secs_f64() * 1000.0);
        h.request_bytes.record(self.request_bytes as f64);
        h.response_bytes.record(self.response_bytes as f64);
        if let Some(s) = &self.span {
            s.finish(self);
        }
        crate::tap::request(self);
        self.access_log();
    }

    fn access_line(&self) -> Vec<u8> {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = AccessLine {
            time: &now,
            kind: "access",
            method: &self.method,
            path: &self.path,
            authority: &self.authority,
            protocol: self.request_protocol,
            response_code: self.response_code,
            grpc_status: &self.grpc_response_status,
            response_flags: self.response_flags,
            route: &self.route,
            upstream: &self.upstream,
            attempts: self.attempts,
            bytes_received: self.request_bytes,
            bytes_sent: self.response_bytes,
            duration_ms: self.duration.as_millis() as u64,
            src_principal: &self.source.principal,
            dst_service: &self.destination_service,
            dst_workload: &self.destination_workload,
            dst_principal: &self.destination_principal,
            audit_policies: &self.audit,
            rbac_denied_by: self.authz_policy.as_deref(),
            request_principal: self.request_principal.as_deref(),
            trace_id: self.span.as_ref().map(|s| s.trace_id_hex()),
        };
        let mut buf = Vec::with_capacity(512);
        // Serializing borrowed strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, &line);
        buf.push(b'\n');
        buf
    }

    fn access_log(&self) {
        ACCESS_LOG.write(self.access_line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_baggage() {
        let id = mesh_identity::spiffe::Identity::new("cluster.local", "a", "client");
        let s = Source::new(
            &id,
            Some("k8s.cluster.name=c1,k8s.namespace.name=a,k8s.deployment.name=client,service.name=client,service.version=v1"),
        );
        assert_eq!(s.workload, "client");
        assert_eq!(s.canonical_revision, "v1");
        let r = RequestRecord {
            source: s,
            response_code: 200,
            response_flags: "-",
            request_protocol: "http",
            ..Default::default()
        };
        let labels = r.labels();
        assert_eq!(labels.len(), 25);
        let get = |k: &str| {
            labels
                .iter()
                .find(|l| l.key() == k)
                .map(|l| l.value().to_string())
        };
        assert_eq!(get("reporter").as_deref(), Some("waypoint"));
        assert_eq!(
            get("source_principal").as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/client")
        );
        assert_eq!(get("destination_workload").as_deref(), Some("unknown"));
        assert_eq!(get("response_code").as_deref(), Some("200"));
    }

    #[test]
    fn handle_cache_keys_on_every_label() {
        let cache = HandleCache::default();
        let r = RequestRecord {
            response_code: 200,
            response_flags: "-",
            request_protocol: "http",
            ..Default::default()
        };
        let a = cache.get(&r.label_values("200"));
        let b = cache.get(&r.label_values("200"));
        assert!(Arc::ptr_eq(&a, &b), "same labels, same handles");
        let c = cache.get(&r.label_values("503"));
        assert!(
            !Arc::ptr_eq(&a, &c),
            "a different code is a different series"
        );
        let mut other = r.clone();
        other.destination_workload = "w".into();
        let d = cache.get(&other.label_values("200"));
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(
            cache
                .by_hash
                .read()
                .unwrap()
                .values()
                .map(Vec::len)
                .sum::<usize>(),
            3
        );
    }

    #[test]
    fn access_line_is_one_json_object_with_optional_fields_only_when_set() {
        let mut r = RequestRecord {
            method: "GET".into(),
            path: "/a\"b".into(),
            response_code: 403,
            response_flags: "-",
            request_protocol: "http",
            ..Default::default()
        };
        let line = r.access_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "access");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["response_code"], 403);
        assert!(v.get("audit_policies").is_none() && v.get("rbac_denied_by").is_none());
        r.audit = vec!["app/audit".into()];
        r.authz_policy = Some("app/deny".into());
        let v: serde_json::Value = serde_json::from_slice(&r.access_line()).unwrap();
        assert_eq!(v["audit_policies"], serde_json::json!(["app/audit"]));
        assert_eq!(v["rbac_denied_by"], "app/deny");
    }
}
