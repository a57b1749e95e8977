//! Istio's request metrics with `reporter="waypoint"` and Istio's label set, and one JSON
//! access-log line per request on stdout.
//!
//! Labels are built once per request, when it completes (the response body ended or was
//! dropped), so the duration and byte counts cover the whole exchange.

use std::io::Write;
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

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

impl RequestRecord {
    /// Istio's label set, in Istio's order.
    pub fn labels(&self) -> Vec<Label> {
        let l = |k: &'static str, v: String| Label::new(k, v);
        let s = &self.source;
        vec![
            l("reporter", "waypoint".into()),
            l("source_workload", or_unknown(&s.workload)),
            l("source_canonical_service", or_unknown(&s.canonical_service)),
            l(
                "source_canonical_revision",
                or_unknown(&s.canonical_revision),
            ),
            l("source_workload_namespace", or_unknown(&s.namespace)),
            l("source_principal", or_unknown(&s.principal)),
            l("source_app", or_unknown(&s.canonical_service)),
            l("source_version", or_unknown(&s.canonical_revision)),
            l("source_cluster", or_unknown(&s.cluster)),
            l("destination_service", or_unknown(&self.destination_service)),
            l(
                "destination_service_namespace",
                or_unknown(&self.destination_service_namespace),
            ),
            l(
                "destination_service_name",
                or_unknown(&self.destination_service_name),
            ),
            l(
                "destination_workload",
                or_unknown(&self.destination_workload),
            ),
            l(
                "destination_canonical_service",
                or_unknown(&self.destination_canonical_service),
            ),
            l(
                "destination_canonical_revision",
                or_unknown(&self.destination_canonical_revision),
            ),
            l(
                "destination_workload_namespace",
                or_unknown(&self.destination_workload_namespace),
            ),
            l(
                "destination_principal",
                or_unknown(&self.destination_principal),
            ),
            l(
                "destination_app",
                or_unknown(&self.destination_canonical_service),
            ),
            l(
                "destination_version",
                or_unknown(&self.destination_canonical_revision),
            ),
            l("destination_cluster", or_unknown(&self.destination_cluster)),
            l("request_protocol", self.request_protocol.into()),
            l("response_code", self.response_code.to_string()),
            l("grpc_response_status", self.grpc_response_status.clone()),
            l("response_flags", self.response_flags.into()),
            l("connection_security_policy", "mutual_tls".into()),
        ]
    }

    /// Records the metrics and writes the access-log line.
    pub fn finish(&self) {
        let labels = self.labels();
        metrics::counter!(REQUESTS_TOTAL, labels.clone()).increment(1);
        metrics::histogram!(REQUEST_DURATION, labels.clone())
            .record(self.duration.as_secs_f64() * 1000.0);
        metrics::histogram!(REQUEST_BYTES, labels.clone()).record(self.request_bytes as f64);
        metrics::histogram!(RESPONSE_BYTES, labels).record(self.response_bytes as f64);
        if let Some(s) = &self.span {
            s.finish(self);
        }
        crate::tap::request(self);
        self.access_log();
    }

    fn access_log(&self) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut line = serde_json::json!({
            "time": now,
            "type": "access",
            "method": self.method,
            "path": self.path,
            "authority": self.authority,
            "protocol": self.request_protocol,
            "response_code": self.response_code,
            "grpc_status": self.grpc_response_status,
            "response_flags": self.response_flags,
            "route": self.route,
            "upstream": self.upstream,
            "attempts": self.attempts,
            "bytes_received": self.request_bytes,
            "bytes_sent": self.response_bytes,
            "duration_ms": self.duration.as_millis() as u64,
            "src_principal": self.source.principal,
            "dst_service": self.destination_service,
            "dst_workload": self.destination_workload,
            "dst_principal": self.destination_principal,
        });
        // L7 security and tracing fields, only when they say something.
        if !self.audit.is_empty() {
            line["audit_policies"] = serde_json::json!(self.audit);
        }
        if let Some(p) = &self.authz_policy {
            line["rbac_denied_by"] = serde_json::json!(p);
        }
        if let Some(p) = &self.request_principal {
            line["request_principal"] = serde_json::json!(p);
        }
        if let Some(s) = &self.span {
            line["trace_id"] = serde_json::json!(s.trace_id_hex());
        }
        // One write per line so concurrent requests never interleave within a line.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
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
}
