//! Istio's TCP metrics (`istio_tcp_*`) with Istio's label set, and the structured access log.
//! Labels are built once per connection; byte counters are recorded when the connection closes.

use std::net::SocketAddr;
use std::time::Instant;

use metrics::Label;
use serde::Serialize;

use crate::state::{Service, Workload};

/// Which side of the connection reports.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Everything known about one proxied connection, for metrics and the access log.
#[derive(Clone, Debug, Default)]
pub struct ConnectionInfo {
    pub reporter: Option<Reporter>,
    pub src_addr: Option<SocketAddr>,
    pub dst_addr: Option<SocketAddr>,
    pub hbone_addr: Option<SocketAddr>,
    pub src_workload: Option<std::sync::Arc<Workload>>,
    pub src_identity: Option<String>,
    pub dst_workload: Option<std::sync::Arc<Workload>>,
    pub dst_identity: Option<String>,
    pub dst_service: Option<std::sync::Arc<Service>>,
    pub mtls: bool,
}

const UNKNOWN: &str = "unknown";

fn or_unknown(s: Option<&str>) -> String {
    match s {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => UNKNOWN.to_string(),
    }
}

impl ConnectionInfo {
    /// Istio's full traffic label set, in Istio's order.
    pub fn labels(&self, response_flags: &str) -> Vec<Label> {
        let sw = self.src_workload.as_deref();
        let dw = self.dst_workload.as_deref();
        let ds = self.dst_service.as_deref();
        let principal = |id: &Option<String>| match id {
            Some(i) if i.starts_with("spiffe://") => i.clone(),
            Some(i) => format!("spiffe://{i}"),
            None => UNKNOWN.into(),
        };
        let l = |k: &'static str, v: String| Label::new(k, v);
        vec![
            l(
                "reporter",
                self.reporter
                    .map(Reporter::as_str)
                    .unwrap_or("source")
                    .into(),
            ),
            l(
                "source_workload",
                or_unknown(sw.map(|w| w.workload_name.as_str())),
            ),
            l(
                "source_canonical_service",
                or_unknown(sw.map(|w| w.canonical_name.as_str())),
            ),
            l(
                "source_canonical_revision",
                or_unknown(sw.map(|w| w.canonical_revision.as_str())),
            ),
            l(
                "source_workload_namespace",
                or_unknown(sw.map(|w| w.namespace.as_str())),
            ),
            l("source_principal", principal(&self.src_identity)),
            l(
                "source_app",
                or_unknown(sw.map(|w| w.canonical_name.as_str())),
            ),
            l(
                "source_version",
                or_unknown(sw.map(|w| w.canonical_revision.as_str())),
            ),
            l(
                "source_cluster",
                or_unknown(sw.map(|w| w.cluster_id.as_str())),
            ),
            l(
                "destination_service",
                or_unknown(ds.map(|s| s.hostname.as_str())),
            ),
            l(
                "destination_service_namespace",
                or_unknown(ds.map(|s| s.namespace.as_str())),
            ),
            l(
                "destination_service_name",
                or_unknown(ds.map(|s| s.name.as_str())),
            ),
            l(
                "destination_workload",
                or_unknown(dw.map(|w| w.workload_name.as_str())),
            ),
            l(
                "destination_canonical_service",
                or_unknown(dw.map(|w| w.canonical_name.as_str())),
            ),
            l(
                "destination_canonical_revision",
                or_unknown(dw.map(|w| w.canonical_revision.as_str())),
            ),
            l(
                "destination_workload_namespace",
                or_unknown(dw.map(|w| w.namespace.as_str())),
            ),
            l("destination_principal", principal(&self.dst_identity)),
            l(
                "destination_app",
                or_unknown(dw.map(|w| w.canonical_name.as_str())),
            ),
            l(
                "destination_version",
                or_unknown(dw.map(|w| w.canonical_revision.as_str())),
            ),
            l(
                "destination_cluster",
                or_unknown(dw.map(|w| w.cluster_id.as_str())),
            ),
            l("request_protocol", "tcp".into()),
            l("response_flags", response_flags.into()),
            l(
                "connection_security_policy",
                if self.mtls { "mutual_tls" } else { "unknown" }.into(),
            ),
        ]
    }
}

/// An open connection's metrics; records `closed` and bytes when finished.
pub struct ConnectionGuard {
    info: ConnectionInfo,
    labels: Vec<Label>,
    start: Instant,
}

impl ConnectionGuard {
    /// Counts the connection as opened.
    pub fn open(info: ConnectionInfo) -> Self {
        let labels = info.labels("-");
        metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
        crate::tap::publish("open", &info, crate::tap::Outcome::default());
        ConnectionGuard {
            info,
            labels,
            start: Instant::now(),
        }
    }

    /// Records close, bytes, and writes the access-log line. `sent` = bytes sent to the client
    /// (downstream), `received` = bytes received from it.
    pub fn close(self, received: u64, sent: u64, error: Option<&str>) {
        metrics::counter!("istio_tcp_received_bytes_total", self.labels.clone())
            .increment(received);
        metrics::counter!("istio_tcp_sent_bytes_total", self.labels.clone()).increment(sent);
        metrics::counter!("istio_tcp_connections_closed_total", self.labels).increment(1);
        let elapsed = self.start.elapsed();
        crate::tap::publish(
            "close",
            &self.info,
            crate::tap::Outcome {
                received: Some(received),
                sent: Some(sent),
                duration: Some(elapsed),
                flags: "-",
                error,
            },
        );
        access_log(&self.info, received, sent, elapsed, error);
    }
}

/// Workloads ztunnel proxies for (Istio's in-pod gauges; in shared mode, the per-workload
/// HBONE listeners): `active` are served, `pending` were handed to us but are not yet known to
/// the control plane.
pub fn proxies(active: usize, pending: usize) {
    metrics::gauge!("workload_manager_active_proxy_count").set(active as f64);
    metrics::gauge!("workload_manager_pending_proxy_count").set(pending as f64);
}

/// A workload's proxy (its listeners) started or stopped.
pub fn proxy_started(started: bool) {
    if started {
        metrics::counter!("workload_manager_proxies_started_total").increment(1);
    } else {
        metrics::counter!("workload_manager_proxies_stopped_total").increment(1);
    }
}

/// Counts a connection that was refused before it opened, with Istio's response flag.
pub fn failed(info: &ConnectionInfo, flag: &str, error: &str) {
    let labels = info.labels(flag);
    metrics::counter!("istio_tcp_connections_failed_total", labels).increment(1);
    crate::tap::publish(
        "refused",
        info,
        crate::tap::Outcome {
            flags: flag,
            error: Some(error),
            ..Default::default()
        },
    );
    access_log(info, 0, 0, std::time::Duration::ZERO, Some(error));
}

fn access_log(
    info: &ConnectionInfo,
    received: u64,
    sent: u64,
    duration: std::time::Duration,
    error: Option<&str>,
) {
    let direction = match info.reporter {
        Some(Reporter::Destination) => "inbound",
        _ => "outbound",
    };
    let fmt_addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let wname = |w: &Option<std::sync::Arc<Workload>>| {
        w.as_ref().map(|w| w.name.clone()).unwrap_or_default()
    };
    let wns = |w: &Option<std::sync::Arc<Workload>>| {
        w.as_ref().map(|w| w.namespace.clone()).unwrap_or_default()
    };
    let (src_addr, dst_addr, hbone_addr) = (
        fmt_addr(info.src_addr),
        fmt_addr(info.dst_addr),
        fmt_addr(info.hbone_addr),
    );
    let (src_workload, src_namespace) = (wname(&info.src_workload), wns(&info.src_workload));
    let (dst_workload, dst_namespace) = (wname(&info.dst_workload), wns(&info.dst_workload));
    let src_identity = info.src_identity.as_deref().unwrap_or_default();
    let dst_identity = info.dst_identity.as_deref().unwrap_or_default();
    let dst_service = info
        .dst_service
        .as_ref()
        .map(|s| s.hostname.as_str())
        .unwrap_or_default();
    let policy = if info.mtls { "mutual_tls" } else { "unknown" };
    let duration_ms = duration.as_millis() as u64;
    let error = error.unwrap_or_default();
    // `event!` rather than `info!`: the latter cannot parse a dotted first field name.
    tracing::event!(
        target: "access",
        tracing::Level::INFO,
        src.addr = src_addr,
        src.workload = src_workload,
        src.namespace = src_namespace,
        src.identity = src_identity,
        dst.addr = dst_addr,
        dst.hbone_addr = hbone_addr,
        dst.service = dst_service,
        dst.workload = dst_workload,
        dst.namespace = dst_namespace,
        dst.identity = dst_identity,
        direction,
        connection_security_policy = policy,
        bytes_sent = sent,
        bytes_recv = received,
        duration_ms,
        error,
        "connection complete"
    );
}

/// Installs the Prometheus recorder; returns the handle that renders `/metrics`.
pub fn install(
) -> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError>
{
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(crate::dns::UPSTREAM_DURATION.into()),
            &crate::dns::UPSTREAM_DURATION_BUCKETS,
        )?
        .install_recorder()?;
    metrics::gauge!("istio_build", "component" => "ztunnel", "tag" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_set_has_istio_names_and_unknown_defaults() {
        let info = ConnectionInfo {
            reporter: Some(Reporter::Destination),
            src_identity: Some("spiffe://cluster.local/ns/a/sa/b".into()),
            mtls: true,
            ..Default::default()
        };
        let labels = info.labels("-");
        let get = |k: &str| {
            labels
                .iter()
                .find(|l| l.key() == k)
                .map(|l| l.value().to_string())
        };
        assert_eq!(labels.len(), 23);
        assert_eq!(get("reporter").as_deref(), Some("destination"));
        assert_eq!(
            get("source_principal").as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        assert_eq!(get("destination_workload").as_deref(), Some("unknown"));
        assert_eq!(
            get("connection_security_policy").as_deref(),
            Some("mutual_tls")
        );
    }
}
